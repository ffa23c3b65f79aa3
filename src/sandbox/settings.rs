//! Config `sandbox:` as the simulator takes it: built by config validation, so it is compiled
//! with or without the `sandbox` feature (without it, validation refuses the section).

use std::net::SocketAddr;

use crate::channel::keys::RsaVerifier;
use crate::domain::FeeRate;
use crate::secret::Secret;
use crate::server::TlsSettings;

/// Config `sandbox:`.
#[derive(Debug)]
pub struct SandboxSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsSettings>,
    pub merchants: Vec<SandboxMerchant>,
}

/// A key the sandbox accepts request signatures from.
#[derive(Clone, Debug)]
pub enum SandboxMerchant {
    /// WeChat Pay: `mchid` + merchant certificate serial → public key.
    /// `apiv3_key` (the channel's) encrypts the notification resources sent for this
    /// `mchid`'s orders; without one no WeChat Pay notification is sent. `fee_rate` (the
    /// channel's) is the fee its trade statements charge.
    Wechat {
        mchid: String,
        serial_no: String,
        key: RsaVerifier,
        apiv3_key: Option<Secret>,
        fee_rate: FeeRate,
    },
    /// Alipay: `app_id` → the app's public key; `fee_rate` (the channel's) is the fee its
    /// trade statements charge.
    Alipay {
        app_id: String,
        key: RsaVerifier,
        fee_rate: FeeRate,
    },
    /// Alipay ISV: a merchant's grant to the platform's app — its `app_auth_token` acts for
    /// the seller `seller_id` (the merchant's Alipay user id). A refreshed token maps to the
    /// same seller, so orders (kept by seller) survive it, as at Alipay.
    AlipayGrant {
        app_auth_token: Secret,
        seller_id: String,
    },
}
