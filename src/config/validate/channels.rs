//! Channels: one provider account each, keys parsed, keys the kind does not use rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{insecure, secret_value, Errors};
use crate::channel::alipay::{AlipayMode, AlipaySettings};
use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::channel::wechatpay::{WechatMode, WechatPaySettings, WechatVerifier};
use crate::channel::{ChannelSettings, ConnectorSettings, Quota};
use crate::config::file::{ChannelFile, FileConfig, QuotaFile};
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
    let k = Keys::new(name, c);
    let n = errs.list.len();
    let connector = match c.kind.as_str() {
        "wechatpay_v3" => wechatpay(&k, errs),
        "alipay" => alipay(&k, errs),
        other => {
            k.push(
                "kind",
                format!("channels.{name}: kind {other:?} is not wechatpay_v3 or alipay"),
                errs,
            );
            None
        }
    };
    let base_url = base_url(&k, errs);
    insecure::check_channel(name, c, &base_url, errs);
    let fee = c
        .fee_rate
        .as_ref()
        .and_then(|r| k.parsed("fee_rate", " ", FeeRate::parse(r), errs))
        .unwrap_or_default();
    let timeout = match &c.timeout {
        None => DEFAULT_CHANNEL_TIMEOUT,
        Some(t) => k
            .parsed("timeout", " ", parse_duration(t), errs)
            .unwrap_or_default(),
    };
    if c.timeout.is_some() && (timeout < MIN_CHANNEL_TIMEOUT || timeout > MAX_CHANNEL_TIMEOUT) {
        k.push(
            "timeout",
            format!("channels.{name}: timeout must be between {MIN_CHANNEL_TIMEOUT:?} and {MAX_CHANNEL_TIMEOUT:?}"),
            errs,
        );
    }
    let ca_pem = c.ca_file.as_ref().and_then(|p| {
        let read = std::fs::read_to_string(p.strip_prefix("file:").unwrap_or(p))
            .map_err(|e| format!("cannot read {p}: {e}"));
        k.parsed("ca_file", ": ", read, errs)
    });
    let limit = c
        .limit
        .as_ref()
        .and_then(|l| k.parsed("limit", ": ", RateSpec::parse(&l.rate, l.burst), errs));
    let owners = owners(name, c, errs);
    let quota = c.quota.as_ref().and_then(|q| quota(&k, q, errs));
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
        quota,
        connector: connector?,
    })
}

/// One channel's keys as the checks read them: every message names the channel and the key.
struct Keys<'a> {
    name: &'a str,
    c: &'a ChannelFile,
    at: String,
}

impl<'a> Keys<'a> {
    fn new(name: &'a str, c: &'a ChannelFile) -> Keys<'a> {
        Keys {
            name,
            c,
            at: format!("channels.{name}"),
        }
    }

    /// An error at `channels.<name>.<key>` (or at the channel itself for an empty key).
    fn push(&self, key: &str, message: String, errs: &mut Errors) {
        if key.is_empty() {
            errs.push(&self.at, message);
        } else {
            errs.push(&format!("{}.{key}", self.at), message);
        }
    }

    /// A key the kind and mode need, present and not empty.
    fn need(&self, key: &str, v: &Option<String>, errs: &mut Errors) -> Option<String> {
        match v {
            Some(v) if !v.is_empty() => Some(v.clone()),
            _ => {
                let (name, c) = (self.name, self.c);
                self.push(
                    "",
                    format!(
                        "channels.{name}: {key} is required for kind {} mode {}",
                        c.kind, c.mode
                    ),
                    errs,
                );
                None
            }
        }
    }

    /// A key the kind or mode does not use, refused rather than ignored.
    fn forbid(&self, key: &str, present: bool, why: &str, errs: &mut Errors) {
        if present {
            self.push(key, format!("channels.{}: {key} {why}", self.name), errs);
        }
    }

    /// A parsed value, or its parser's message under the key (`sep` joins them as each key's
    /// message always has).
    fn parsed<T, E: std::fmt::Display>(
        &self,
        key: &str,
        sep: &str,
        parsed: Result<T, E>,
        errs: &mut Errors,
    ) -> Option<T> {
        parsed
            .map_err(|e| self.push(key, format!("channels.{}: {key}{sep}{e}", self.name), errs))
            .ok()
    }
}

fn wechatpay(k: &Keys, errs: &mut Errors) -> Option<ConnectorSettings> {
    let (name, c) = (k.name, k.c);
    let mode = wechat_mode(k, errs);
    k.forbid(
        "app_id",
        c.app_id.is_some(),
        "is an alipay key; wechatpay_v3 uses appid",
        errs,
    );
    k.forbid(
        "alipay_public_key",
        c.alipay_public_key.is_some(),
        "is an alipay key",
        errs,
    );
    let serial_no = k.need("serial_no", &c.serial_no, errs);
    let signer = k
        .need("private_key", &c.private_key, errs)
        .and_then(|key| private_key(name, &key, errs));
    let apiv3_key = c.apiv3_key.as_ref().and_then(|key| {
        let v = secret_value(key, &format!("{}.apiv3_key", k.at), errs)?;
        if v.expose().len() != WECHAT_APIV3_KEY_LEN {
            k.push(
                "apiv3_key",
                format!(
                    "channels.{name}: apiv3_key must be {WECHAT_APIV3_KEY_LEN} bytes, not {}",
                    v.expose().len()
                ),
                errs,
            );
            return None;
        }
        Some(v)
    });
    let verifier = wechat_verifier(name, c, errs);
    let (mode, serial_no, signer, verifier) = (mode?, serial_no?, signer?, verifier?);
    Some(ConnectorSettings::WechatPay(Arc::new(WechatPaySettings {
        mode,
        serial_no,
        signer,
        apiv3_key,
        verifier,
    })))
}

/// Direct (the merchant's own account: `mchid` + `appid`) or partner (a service provider's:
/// `sp_mchid` + `sp_appid`, the sub-merchant per merchant).
fn wechat_mode(k: &Keys, errs: &mut Errors) -> Option<WechatMode> {
    let c = k.c;
    match c.mode.as_str() {
        "direct" => {
            k.forbid(
                "sp_mchid",
                c.sp_mchid.is_some(),
                "is for mode partner; direct uses mchid",
                errs,
            );
            k.forbid(
                "sp_appid",
                c.sp_appid.is_some(),
                "is for mode partner; direct uses appid",
                errs,
            );
            let mchid = k.need("mchid", &c.mchid, errs);
            let appid = k.need("appid", &c.appid, errs);
            Some(WechatMode::Direct {
                mchid: mchid?,
                appid: appid?,
            })
        }
        "partner" => {
            k.forbid(
                "mchid",
                c.mchid.is_some(),
                "is for mode direct; partner uses sp_mchid (sub_mchid comes from merchants:)",
                errs,
            );
            k.forbid(
                "appid",
                c.appid.is_some(),
                "is for mode direct; partner uses sp_appid",
                errs,
            );
            let sp_mchid = k.need("sp_mchid", &c.sp_mchid, errs);
            let sp_appid = k.need("sp_appid", &c.sp_appid, errs);
            Some(WechatMode::Partner {
                sp_mchid: sp_mchid?,
                sp_appid: sp_appid?,
            })
        }
        other => {
            k.push(
                "mode",
                format!(
                    "channels.{}: mode {other:?} is not direct or partner",
                    k.name
                ),
                errs,
            );
            None
        }
    }
}

fn alipay(k: &Keys, errs: &mut Errors) -> Option<ConnectorSettings> {
    let (name, c) = (k.name, k.c);
    let mode = match c.mode.as_str() {
        "direct" => Some(AlipayMode::Direct),
        "isv" => Some(AlipayMode::Isv),
        other => {
            k.push(
                "mode",
                format!("channels.{name}: mode {other:?} is not direct or isv"),
                errs,
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
        k.forbid(
            key,
            present,
            "is a wechatpay_v3 key; alipay uses app_id, private_key, alipay_public_key",
            errs,
        );
    }
    let app_id = k.need("app_id", &c.app_id, errs);
    let signer = k
        .need("private_key", &c.private_key, errs)
        .and_then(|key| private_key(name, &key, errs));
    let alipay_key = k
        .need("alipay_public_key", &c.alipay_public_key, errs)
        .and_then(|key| {
            let text = secret_value(&key, &format!("{}.alipay_public_key", k.at), errs)?;
            k.parsed(
                "alipay_public_key",
                ": ",
                RsaVerifier::from_text(text.expose()),
                errs,
            )
        });
    if let Some(base) = &c.base_url {
        if !base.trim_end_matches('/').ends_with("/gateway.do") {
            k.push(
                "base_url",
                format!("channels.{name}: base_url {base:?} must end in /gateway.do (the classic gateway)"),
                errs,
            );
        }
    }
    let (mode, app_id, signer, alipay_key) = (mode?, app_id?, signer?, alipay_key?);
    Some(ConnectorSettings::Alipay(Arc::new(AlipaySettings {
        mode,
        app_id,
        signer,
        alipay_key,
    })))
}

/// The provider's gateway (its public one unless the channel names another, e.g. the
/// sandbox), without a trailing slash.
fn base_url(k: &Keys, errs: &mut Errors) -> String {
    let default_base = match k.c.kind.as_str() {
        "alipay" => DEFAULT_ALIPAY_BASE_URL,
        _ => DEFAULT_WECHATPAY_BASE_URL,
    };
    let base_url =
        k.c.base_url
            .clone()
            .unwrap_or_else(|| default_base.into())
            .trim_end_matches('/')
            .to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        k.push(
            "base_url",
            format!(
                "channels.{}: base_url {base_url:?} must start with http:// or https://",
                k.name
            ),
            errs,
        );
    }
    base_url
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

/// `quota:` — each limit a positive integer of fen, at least one, and `single ≤ daily ≤
/// monthly` where both of a pair are set (a larger one could never be reached).
fn quota(k: &Keys, q: &QuotaFile, errs: &mut Errors) -> Option<Quota> {
    let name = k.name;
    let n = errs.list.len();
    let mut limit = |key: &str, v: &Option<serde_json::Value>| -> Option<u64> {
        let v = v.as_ref()?;
        match v.as_u64().filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => {
                k.push(
                    &format!("quota.{key}"),
                    format!(
                        "channels.{name}.quota.{key}: must be a positive integer (fen), not {v}"
                    ),
                    errs,
                );
                None
            }
        }
    };
    let quota = Quota {
        daily: limit("daily", &q.daily),
        monthly: limit("monthly", &q.monthly),
        single: limit("single", &q.single),
    };
    if q.daily.is_none() && q.monthly.is_none() && q.single.is_none() {
        k.push(
            "quota",
            format!(
                "channels.{name}.quota: is empty; set at least one of daily, monthly, single (fen)"
            ),
            errs,
        );
    }
    if let (Some(single), Some(daily)) = (quota.single, quota.daily) {
        if single > daily {
            k.push(
                "quota.single",
                format!("channels.{name}.quota.single: {single} is more than daily {daily}; no payment that large could ever fit"),
                errs,
            );
        }
    }
    if let (Some(daily), Some(monthly)) = (quota.daily, quota.monthly) {
        if daily > monthly {
            k.push(
                "quota.daily",
                format!("channels.{name}.quota.daily: {daily} is more than monthly {monthly}; a day could never use it"),
                errs,
            );
        }
    }
    if let (Some(single), None, Some(monthly)) = (quota.single, quota.daily, quota.monthly) {
        if single > monthly {
            k.push(
                "quota.single",
                format!("channels.{name}.quota.single: {single} is more than monthly {monthly}; no payment that large could ever fit"),
                errs,
            );
        }
    }
    (errs.list.len() == n).then_some(quota)
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
