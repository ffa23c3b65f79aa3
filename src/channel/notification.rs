//! Provider notifications — what a provider POSTs to `{public_base_url}/notify/{channel}` —
//! verified and parsed into payroute's vocabulary (ARCHITECTURE.md, "The request path").
//!
//! The connector of the channel does the provider work (signature, freshness, decryption,
//! field names, state words); [`Channel`] delegates to it. Nothing of the provider's wire
//! format leaves this module: the rest of payroute sees a [`Notification`] or a
//! [`NotifyError`], and asks the channel for the answer the provider expects
//! ([`Channel::notification_answer`]).
//!
//! A verified notification is a claim by the provider, not yet a fact about one of our
//! payments: the payment layer still cross-checks its out_trade_no, amount and account
//! against the stored payment before it changes anything.

use std::fmt;

use bytes::Bytes;
use http_body_util::Full;

use super::{Channel, OrderState, RefundState};

/// A verified provider notification, in payroute's vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub enum Notification {
    /// A payment changed state (WeChat `TRANSACTION.*`, Alipay `trade_status_sync`).
    /// `state.amount` and `state.currency` are filled from the notification.
    Payment {
        out_trade_no: String,
        state: OrderState,
        account: NotifiedAccount,
    },
    /// A refund changed state (WeChat `REFUND.*`; Alipay a `trade_status_sync` carrying
    /// `out_biz_no` + `refund_fee` + `gmt_refund`).
    Refund {
        out_trade_no: String,
        out_refund_no: String,
        state: RefundState,
        account: NotifiedAccount,
    },
}

impl Notification {
    pub fn out_trade_no(&self) -> &str {
        match self {
            Notification::Payment { out_trade_no, .. }
            | Notification::Refund { out_trade_no, .. } => out_trade_no,
        }
    }

    pub fn account(&self) -> &NotifiedAccount {
        match self {
            Notification::Payment { account, .. } | Notification::Refund { account, .. } => account,
        }
    }
}

/// Who the provider says the order belongs to (what the notification names). Compare with
/// the stored [`crate::domain::Account`]: WeChat names `mchid` (the `sp_mchid` in partner
/// mode), `sub_mchid` in partner mode, and the `appid` / `sp_appid` on payments (refund
/// notifications name no app); Alipay names its `app_id` (the platform's app in ISV mode,
/// shared by every merchant), the signed `seller_id` (the merchant's Alipay user id: what
/// an ISV order is bound to) and `auth_app_id` (the merchant's own app).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifiedAccount {
    pub mchid: Option<String>,
    pub sub_mchid: Option<String>,
    pub app_id: Option<String>,
    /// Alipay: the seller's user id (`2088…`); WeChat Pay: None.
    pub seller_id: Option<String>,
    /// Alipay: the app the merchant authorised (its own in ISV mode, `app_id` in direct
    /// mode); for logs, as no merchant's config names one.
    pub auth_app_id: Option<String>,
}

/// Why a notification was refused. None of these may change a payment; the provider is
/// answered "not ok" and retries (a probe expects exactly that answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyError {
    /// Unsigned, signed by a key we do not hold, or not matching its signature.
    BadSignature(String),
    /// Genuinely signed, but its timestamp is outside the allowed clock skew (a replay).
    Stale(String),
    /// WeChat Pay's signature probe (`WECHATPAY/SIGNTEST/…`): it checks that we refuse
    /// what we cannot verify.
    Probe,
    /// Verified, but not what the protocol promises (missing fields, unknown states or
    /// event types).
    Malformed(String),
    /// Verified, but its resource does not decrypt with the channel's APIv3 key (or the
    /// channel has none).
    Decrypt(String),
    /// Verified, but addressed to another app / merchant account than this channel's.
    NotForThisApp(String),
}

/// How a notification is answered: whether the provider should stop sending it, and, when
/// not, whose side the trouble is on — so that the 5xx answers (which API 5xx alerts watch)
/// are payroute's own faults only. Every answer but [`NotifyAnswer::Acknowledged`] makes the
/// provider resend (WeChat Pay resends on any non-2xx; Alipay's protocol has one failure
/// word for all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyAnswer {
    /// Applied, or nothing a resend would change: the provider stops.
    Acknowledged,
    /// It does not verify: a signature that is wrong or by a key we do not hold, a stale
    /// timestamp, WeChat Pay's signature probe, a resource our APIv3 key does not decrypt.
    /// Forged, or our keys disagree with the provider's after a rotation: a resend helps
    /// once the keys agree. WeChat Pay: `401`.
    Unverifiable,
    /// Not what the protocol promises (a body that cannot be read, missing fields, unknown
    /// states). WeChat Pay: `400`.
    Malformed,
    /// payroute could not take it now (the store, an order's account that no channel holds,
    /// several orders matching): a resend may help. WeChat Pay: `500`.
    Failed,
}

impl NotifyError {
    /// The answer to a notification refused with this error.
    pub fn answer(&self) -> NotifyAnswer {
        match self {
            NotifyError::BadSignature(_)
            | NotifyError::Stale(_)
            | NotifyError::Probe
            | NotifyError::Decrypt(_) => NotifyAnswer::Unverifiable,
            NotifyError::Malformed(_) => NotifyAnswer::Malformed,
            // Signed by the provider for an app that is not this channel's: no resend helps.
            NotifyError::NotForThisApp(_) => NotifyAnswer::Acknowledged,
        }
    }

    /// Bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            NotifyError::BadSignature(_) => "bad_signature",
            NotifyError::Stale(_) => "stale",
            NotifyError::Probe => "probe",
            NotifyError::Malformed(_) => "malformed",
            NotifyError::Decrypt(_) => "decrypt",
            NotifyError::NotForThisApp(_) => "wrong_app",
        }
    }
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::Probe => write!(f, "probe: signature probe"),
            NotifyError::BadSignature(m)
            | NotifyError::Stale(m)
            | NotifyError::Malformed(m)
            | NotifyError::Decrypt(m)
            | NotifyError::NotForThisApp(m) => write!(f, "{}: {m}", self.label()),
        }
    }
}

impl std::error::Error for NotifyError {}

impl Channel {
    /// Verifies and parses a notification for this channel's account keys. `now_unix`:
    /// seconds.
    pub fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Notification, NotifyError> {
        self.connector.verify_notification(headers, body, now_unix)
    }

    /// Whether a notification could be for this channel's account, before any signature
    /// check ([`super::Connector::may_be_for_this_account`]).
    pub fn may_be_for_this_account(&self, headers: &http::HeaderMap, body: &[u8]) -> bool {
        self.connector.may_be_for_this_account(headers, body)
    }

    /// What the provider must be answered: acknowledged → WeChat `204` empty / Alipay `200
    /// text/plain "success"`; otherwise WeChat `401`, `400` or `500` (see [`NotifyAnswer`])
    /// with JSON `{"code":"FAIL","message":message}` / Alipay `200 "fail"` — so the provider
    /// retries.
    pub fn notification_answer(
        &self,
        answer: NotifyAnswer,
        message: &str,
    ) -> http::Response<Full<Bytes>> {
        self.connector.notification_answer(answer, message)
    }
}
