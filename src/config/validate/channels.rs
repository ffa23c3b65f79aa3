//! Channels: one provider account each, keys parsed, keys the kind does not use rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{insecure, secret_value, Errors};
use crate::channel::alipay::{AlipayMode, AlipaySettings};
use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::channel::wechatpay::{WechatMode, WechatPaySettings, WechatVerifier};
use crate::channel::{ChannelSettings, ConnectorSettings};
use crate::config::file::{ChannelFile, FileConfig};
use crate::defaults::{
    DEFAULT_ALIPAY_BASE_URL, DEFAULT_CHANNEL_TIMEOUT, DEFAULT_WECHATPAY_BASE_URL,
    MAX_CHANNEL_TIMEOUT, MIN_CHANNEL_TIMEOUT, WECHAT_APIV3_KEY_LEN,
};
use crate::domain::FeeRate;
use crate::resilience::{parse_duration, RateSpec};

pub(super) fn channels(
    f: &FileConfig,
    errs: &mut Errors,
) -> BTreeMap<String, Arc<ChannelSettings>> {
    let mut out = BTreeMap::new();
    for (name, c) in &f.channels {
        if let Some(s) = channel(name, c, errs) {
            out.insert(name.clone(), Arc::new(s));
        }
    }
    out
}

fn channel(name: &str, c: &ChannelFile, errs: &mut Errors) -> Option<ChannelSettings> {
    let at = format!("channels.{name}");
    let n = errs.list.len();
    let need = |key: &str, v: &Option<String>, errs: &mut Errors| -> Option<String> {
        match v {
            Some(v) if !v.is_empty() => Some(v.clone()),
            _ => {
                errs.push(
                    &at,
                    format!(
                        "channels.{name}: {key} is required for kind {} mode {}",
                        c.kind, c.mode
                    ),
                );
                None
            }
        }
    };
    let forbid = |key: &str, present: bool, why: &str, errs: &mut Errors| {
        if present {
            errs.push(
                &format!("{at}.{key}"),
                format!("channels.{name}: {key} {why}"),
            );
        }
    };
    let connector = match c.kind.as_str() {
        "wechatpay_v3" => {
            let mode = match c.mode.as_str() {
                "direct" => {
                    forbid(
                        "sp_mchid",
                        c.sp_mchid.is_some(),
                        "is for mode partner; direct uses mchid",
                        errs,
                    );
                    forbid(
                        "sp_appid",
                        c.sp_appid.is_some(),
                        "is for mode partner; direct uses appid",
                        errs,
                    );
                    let mchid = need("mchid", &c.mchid, errs);
                    let appid = need("appid", &c.appid, errs);
                    mchid
                        .zip(appid)
                        .map(|(mchid, appid)| WechatMode::Direct { mchid, appid })
                }
                "partner" => {
                    forbid("mchid", c.mchid.is_some(), "is for mode direct; partner uses sp_mchid (sub_mchid comes from merchants:)", errs);
                    forbid(
                        "appid",
                        c.appid.is_some(),
                        "is for mode direct; partner uses sp_appid",
                        errs,
                    );
                    let sp_mchid = need("sp_mchid", &c.sp_mchid, errs);
                    let sp_appid = need("sp_appid", &c.sp_appid, errs);
                    sp_mchid
                        .zip(sp_appid)
                        .map(|(sp_mchid, sp_appid)| WechatMode::Partner { sp_mchid, sp_appid })
                }
                other => {
                    errs.push(
                        &format!("{at}.mode"),
                        format!("channels.{name}: mode {other:?} is not direct or partner"),
                    );
                    None
                }
            };
            forbid(
                "app_id",
                c.app_id.is_some(),
                "is an alipay key; wechatpay_v3 uses appid",
                errs,
            );
            forbid(
                "alipay_public_key",
                c.alipay_public_key.is_some(),
                "is an alipay key",
                errs,
            );
            let serial_no = need("serial_no", &c.serial_no, errs);
            let signer =
                need("private_key", &c.private_key, errs).and_then(|k| private_key(name, &k, errs));
            let apiv3_key = c.apiv3_key.as_ref().and_then(|k| {
                let v = secret_value(k, &format!("{at}.apiv3_key"), errs)?;
                if v.expose().len() != WECHAT_APIV3_KEY_LEN {
                    errs.push(
                        &format!("{at}.apiv3_key"),
                        format!(
                            "channels.{name}: apiv3_key must be {WECHAT_APIV3_KEY_LEN} bytes, not {}",
                            v.expose().len()
                        ),
                    );
                    return None;
                }
                Some(v)
            });
            let verifier = wechat_verifier(name, c, errs);
            match (mode, serial_no, signer, verifier) {
                (Some(mode), Some(serial_no), Some(signer), Some(verifier)) => {
                    Some(ConnectorSettings::WechatPay(Arc::new(WechatPaySettings {
                        mode,
                        serial_no,
                        signer,
                        apiv3_key,
                        verifier,
                    })))
                }
                _ => None,
            }
        }
        "alipay" => {
            let mode = match c.mode.as_str() {
                "direct" => Some(AlipayMode::Direct),
                "isv" => Some(AlipayMode::Isv),
                other => {
                    errs.push(
                        &format!("{at}.mode"),
                        format!("channels.{name}: mode {other:?} is not direct or isv"),
                    );
                    None
                }
            };
            for (key, present) in [
                ("mchid", c.mchid.is_some()),
                ("appid", c.appid.is_some()),
                ("sp_mchid", c.sp_mchid.is_some()),
                ("sp_appid", c.sp_appid.is_some()),
                ("serial_no", c.serial_no.is_some()),
                ("apiv3_key", c.apiv3_key.is_some()),
                ("wechatpay_public_key", c.wechatpay_public_key.is_some()),
                (
                    "wechatpay_public_key_id",
                    c.wechatpay_public_key_id.is_some(),
                ),
                ("platform_certificates", !c.platform_certificates.is_empty()),
            ] {
                forbid(
                    key,
                    present,
                    "is a wechatpay_v3 key; alipay uses app_id, private_key, alipay_public_key",
                    errs,
                );
            }
            let app_id = need("app_id", &c.app_id, errs);
            let signer =
                need("private_key", &c.private_key, errs).and_then(|k| private_key(name, &k, errs));
            let alipay_key = need("alipay_public_key", &c.alipay_public_key, errs).and_then(|k| {
                let text = secret_value(&k, &format!("{at}.alipay_public_key"), errs)?;
                RsaVerifier::from_text(text.expose())
                    .map_err(|e| {
                        errs.push(
                            &format!("{at}.alipay_public_key"),
                            format!("channels.{name}: alipay_public_key: {e}"),
                        )
                    })
                    .ok()
            });
            if let Some(base) = &c.base_url {
                if !base.trim_end_matches('/').ends_with("/gateway.do") {
                    errs.push(&format!("{at}.base_url"), format!("channels.{name}: base_url {base:?} must end in /gateway.do (the classic gateway)"));
                }
            }
            match (mode, app_id, signer, alipay_key) {
                (Some(mode), Some(app_id), Some(signer), Some(alipay_key)) => {
                    Some(ConnectorSettings::Alipay(Arc::new(AlipaySettings {
                        mode,
                        app_id,
                        signer,
                        alipay_key,
                    })))
                }
                _ => None,
            }
        }
        other => {
            errs.push(
                &format!("{at}.kind"),
                format!("channels.{name}: kind {other:?} is not wechatpay_v3 or alipay"),
            );
            None
        }
    };
    let default_base = match c.kind.as_str() {
        "alipay" => DEFAULT_ALIPAY_BASE_URL,
        _ => DEFAULT_WECHATPAY_BASE_URL,
    };
    let base_url = c
        .base_url
        .clone()
        .unwrap_or_else(|| default_base.into())
        .trim_end_matches('/')
        .to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        errs.push(
            &format!("{at}.base_url"),
            format!("channels.{name}: base_url {base_url:?} must start with http:// or https://"),
        );
    }
    insecure::check_channel(name, c, &base_url, errs);
    let fee = match &c.fee_rate {
        None => FeeRate::default(),
        Some(r) => FeeRate::parse(r)
            .map_err(|e| {
                errs.push(
                    &format!("{at}.fee_rate"),
                    format!("channels.{name}: fee_rate {e}"),
                )
            })
            .unwrap_or_default(),
    };
    let timeout = match &c.timeout {
        None => DEFAULT_CHANNEL_TIMEOUT,
        Some(t) => parse_duration(t)
            .map_err(|e| {
                errs.push(
                    &format!("{at}.timeout"),
                    format!("channels.{name}: timeout {e}"),
                )
            })
            .unwrap_or_default(),
    };
    if c.timeout.is_some() && (timeout < MIN_CHANNEL_TIMEOUT || timeout > MAX_CHANNEL_TIMEOUT) {
        errs.push(
            &format!("{at}.timeout"),
            format!("channels.{name}: timeout must be between {MIN_CHANNEL_TIMEOUT:?} and {MAX_CHANNEL_TIMEOUT:?}"),
        );
    }
    let ca_pem = c.ca_file.as_ref().and_then(|p| {
        match std::fs::read_to_string(p.strip_prefix("file:").unwrap_or(p)) {
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(
                    &format!("{at}.ca_file"),
                    format!("channels.{name}: ca_file: cannot read {p}: {e}"),
                );
                None
            }
        }
    });
    let limit = c.limit.as_ref().and_then(|l| {
        RateSpec::parse(&l.rate, l.burst)
            .map_err(|e| {
                errs.push(
                    &format!("{at}.limit"),
                    format!("channels.{name}: limit: {e}"),
                )
            })
            .ok()
    });
    let owners = owners(name, c, errs);
    if errs.list.len() > n {
        return None;
    }
    Some(ChannelSettings {
        name: name.to_string(),
        fee,
        timeout,
        base_url,
        ca_pem,
        limit,
        owners,
        connector: connector?,
    })
}

/// `merchants:` of a direct-mode channel: the merchant whose own account it is (a list of
/// one). Required there, since without it any rule could send anyone's money to that
/// account; refused on a partner / ISV channel, which collects for every merchant through its
/// sub-merchant ids.
fn owners(name: &str, c: &ChannelFile, errs: &mut Errors) -> Option<BTreeSet<String>> {
    let at = format!("channels.{name}.merchants");
    match (c.mode.as_str(), &c.merchants) {
        ("direct", None) => {
            errs.push(
                &format!("channels.{name}"),
                format!("channels.{name}: merchants is required for mode direct: the merchant(s) whose own account this is, e.g. merchants: [m_1001]"),
            );
            None
        }
        ("direct", Some(list)) => {
            if list.is_empty() {
                errs.push(
                    &at,
                    format!("channels.{name}: merchants is empty; name the merchant(s) whose own account this is"),
                );
            }
            if list.iter().any(String::is_empty) {
                errs.push(&at, format!("channels.{name}: merchants has an empty id"));
            }
            // The provider keys an account's orders by out_trade_no alone, which is unique
            // per merchant only: two merchants' `X` would be one order there, paid once and
            // settled, closed or refunded for either.
            if list.len() > 1 {
                errs.push(
                    &at,
                    format!(
                        "channels.{name}: merchants names {} merchants ({}); a merchant's own account serves one merchant, since the provider keys its orders by out_trade_no, which is unique per merchant only",
                        list.len(),
                        list.join(", ")
                    ),
                );
            }
            Some(list.iter().cloned().collect())
        }
        ("partner" | "isv", Some(_)) => {
            errs.push(
                &at,
                format!(
                    "channels.{name}: merchants is for mode direct (a merchant's own account); mode {} serves every merchant through its ids under the top-level merchants:",
                    c.mode
                ),
            );
            None
        }
        _ => None, // an unknown mode is reported with the mode
    }
}

/// A channel's signing key, from its (possibly `env:`/`file:`) config value.
fn private_key(name: &str, value: &str, errs: &mut Errors) -> Option<RsaSigner> {
    let at = format!("channels.{name}.private_key");
    let text = secret_value(value, &at, errs)?;
    RsaSigner::from_text(text.expose())
        .map_err(|e| errs.push(&at, format!("channels.{name}: private_key: {e}")))
        .ok()
}

fn wechat_verifier(name: &str, c: &ChannelFile, errs: &mut Errors) -> Option<WechatVerifier> {
    let at = format!("channels.{name}");
    let mut v = WechatVerifier::default();
    let mut ok = true;
    match (&c.wechatpay_public_key, &c.wechatpay_public_key_id) {
        (Some(key), Some(id)) => {
            match secret_value(key, &format!("{at}.wechatpay_public_key"), errs)
                .map(|k| RsaVerifier::from_text(k.expose()))
            {
                Some(Ok(k)) => v.public_key = Some((id.clone(), k)),
                Some(Err(e)) => {
                    errs.push(
                        &format!("{at}.wechatpay_public_key"),
                        format!("channels.{name}: wechatpay_public_key: {e}"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        (Some(_), None) => {
            errs.push(
                &at,
                format!("channels.{name}: wechatpay_public_key needs wechatpay_public_key_id"),
            );
            ok = false;
        }
        (None, Some(_)) => {
            errs.push(
                &at,
                format!("channels.{name}: wechatpay_public_key_id needs wechatpay_public_key"),
            );
            ok = false;
        }
        (None, None) => {}
    }
    for (i, cert) in c.platform_certificates.iter().enumerate() {
        let p = format!("{at}.platform_certificates[{i}]");
        match secret_value(cert, &p, errs).map(|t| Certificate::from_pem(t.expose())) {
            Some(Ok(cert)) => {
                v.certificates.insert(cert.serial, cert.key);
            }
            Some(Err(e)) => {
                errs.push(
                    &p,
                    format!("channels.{name}: platform_certificates[{i}]: {e}"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if ok && v.public_key.is_none() && v.certificates.is_empty() {
        errs.push(&at, format!("channels.{name}: needs wechatpay_public_key (+ _id) or platform_certificates to verify WeChat Pay's answers"));
        ok = false;
    }
    ok.then_some(v)
}
