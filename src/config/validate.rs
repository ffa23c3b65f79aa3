//! `FileConfig` → [`Config`]: every check of DESIGN.md §5, errors collected, never a panic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::file::{ChannelFile, FileConfig, RuleFile, TlsFile};
use super::{Config, ConfigError, Locator};
use crate::channel::alipay::{AlipayMode, AlipaySettings};
use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::channel::wechatpay::{WechatMode, WechatPaySettings, WechatVerifier};
use crate::channel::{ChannelSettings, ConnectorSettings, SubMerchant};
use crate::domain::{Family, FeeRate, Method};
use crate::resilience::{parse_duration, LimitKey, LimitSettings, RateSpec};
use crate::routing::{Conditions, HoursRange, Rule, Rules, Target};
use crate::sandbox::{SandboxMerchant, SandboxSettings};
use crate::secret::{self, Secret};
use crate::server::{ServerSettings, TlsSettings};
use crate::shops::{Shop, ShopDirectory, Webhook};
use crate::store::StoreSettings;

/// Keys whose literal values are secrets; `/admin/config` redacts them.
const SECRET_KEYS: [&str; 7] = [
    "api_key",
    "secret",
    "token",
    "private_key",
    "apiv3_key",
    "alipay_app_auth_token",
    "key",
];

struct Errors<'l> {
    list: Vec<ConfigError>,
    locator: &'l Locator,
}

impl Errors<'_> {
    /// `yaml_path` locates the error; `message` is what ops read.
    fn push(&mut self, yaml_path: &str, message: String) {
        self.list.push(ConfigError {
            location: self.locator.find(yaml_path),
            message,
        });
    }
}

pub(super) fn validate(f: FileConfig, locator: &Locator) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors {
        list: Vec::new(),
        locator,
    };
    let redacted = redact(serde_json::to_value(&f).unwrap_or_default());

    let server = server(&f, &mut errs);
    let admin_token = f.admin.as_ref().and_then(|a| {
        secret_value(&a.token, "admin.token", &mut errs).and_then(|t| {
            if t.expose().len() < 16 {
                errs.push(
                    "admin.token",
                    "admin.token: must be at least 16 characters".into(),
                );
                None
            } else {
                Some(t)
            }
        })
    });
    let store = store(&f, &mut errs);
    let shops = shops(&f, &mut errs);
    let merchants = merchants(&f, &mut errs);
    let channels = channels(&f, &mut errs);
    let limits = limits(&f, &mut errs);
    let rules = routing(&f, &channels, &merchants, &shops, &mut errs);
    let sandbox = sandbox(&f, &channels, &mut errs);

    if !errs.list.is_empty() {
        return Err(errs.list);
    }
    Ok(Config {
        path: PathBuf::new(),
        version: String::new(),
        server: server.expect("no errors means server settings were built"),
        admin_token,
        store: store.expect("no errors means store settings were built"),
        shops: ShopDirectory::new(shops),
        merchants,
        channels,
        rules,
        limits,
        sandbox,
        redacted,
    })
}

fn secret_value(value: &str, path: &str, errs: &mut Errors) -> Option<Secret> {
    match secret::resolve(value) {
        Ok(v) if v.is_empty() => {
            errs.push(path, format!("{path}: is empty"));
            None
        }
        Ok(v) => Some(Secret::new(v)),
        Err(e) => {
            errs.push(path, format!("{path}: {e}"));
            None
        }
    }
}

fn addr(value: &str, path: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match value.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("{path}: {value:?} is not an address like 127.0.0.1:8080"),
            );
            None
        }
    }
}

fn tls(t: &TlsFile, path: &str, errs: &mut Errors) -> Option<TlsSettings> {
    let cert = secret_value(&t.cert, &format!("{path}.cert"), errs)?;
    let key = secret_value(&t.key, &format!("{path}.key"), errs)?;
    match TlsSettings::new(cert.expose(), key.expose()) {
        Ok(s) => Some(s),
        Err(e) => {
            errs.push(path, format!("{path}: {e}"));
            None
        }
    }
}

fn server(f: &FileConfig, errs: &mut Errors) -> Option<ServerSettings> {
    let s = &f.server;
    let listen = addr(&s.listen, "server.listen", errs);
    let admin_listen = addr(&s.admin_listen, "server.admin_listen", errs);
    let base = s.public_base_url.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        errs.push(
            "server.public_base_url",
            format!("server.public_base_url: {base:?} must start with http:// or https://"),
        );
    }
    let max_body_bytes = s.max_body_bytes.unwrap_or(65_536);
    if !(1024..=16 << 20).contains(&max_body_bytes) {
        errs.push(
            "server.max_body_bytes",
            "server.max_body_bytes: must be between 1024 and 16777216".into(),
        );
    }
    let drain_timeout = match &s.drain_timeout {
        None => Some(Duration::from_secs(30)),
        Some(d) => parse_duration(d)
            .map_err(|e| errs.push("server.drain_timeout", format!("server.drain_timeout: {e}")))
            .ok(),
    };
    let tls = match &s.tls {
        None => Some(None),
        Some(t) => tls(t, "server.tls", errs).map(Some),
    };
    Some(ServerSettings {
        listen: listen?,
        admin_listen: admin_listen?,
        public_base_url: base,
        max_body_bytes,
        drain_timeout: drain_timeout?,
        tls: tls?,
    })
}

fn store(f: &FileConfig, errs: &mut Errors) -> Option<StoreSettings> {
    let Some(s) = &f.store else {
        return Some(StoreSettings::Sqlite {
            path: PathBuf::from("data/payroute.db"),
        });
    };
    match s.kind.as_str() {
        "sqlite" => {
            if s.url.is_some() {
                errs.push(
                    "store.url",
                    "store.url: is for kind redis; sqlite uses path".into(),
                );
            }
            Some(StoreSettings::Sqlite {
                path: PathBuf::from(s.path.as_deref().unwrap_or("data/payroute.db")),
            })
        }
        "redis" => {
            errs.push(
                "store.kind",
                "store.kind: redis is not built yet; use sqlite".into(),
            );
            None
        }
        other => {
            errs.push(
                "store.kind",
                format!("store.kind: {other:?} is not sqlite or redis"),
            );
            None
        }
    }
}

fn shops(f: &FileConfig, errs: &mut Errors) -> Vec<Shop> {
    let mut out: Vec<Shop> = Vec::new();
    let mut keys = HashSet::new();
    for (i, s) in f.shops.iter().enumerate() {
        let at = format!("shops[{i}]");
        let label = format!("shops[{i}] {:?}", s.id);
        if s.id.is_empty() {
            errs.push(&at, format!("{label}: id is empty"));
        }
        if out.iter().any(|o| o.id == s.id) {
            errs.push(&format!("{at}.id"), format!("{label}: duplicate shop id"));
        }
        let key = secret_value(&s.api_key, &format!("{at}.api_key"), errs);
        if let Some(k) = &key {
            if k.expose().len() < 16 {
                errs.push(
                    &format!("{at}.api_key"),
                    format!("{label}: api_key must be at least 16 characters"),
                );
            }
            if !keys.insert(k.expose().to_string()) {
                errs.push(
                    &format!("{at}.api_key"),
                    format!("{label}: api_key is the same as another shop's"),
                );
            }
        }
        let webhook = s.webhook.as_ref().and_then(|w| {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                errs.push(
                    &format!("{at}.webhook.url"),
                    format!("{label}: webhook.url must be http(s)"),
                );
            }
            let secret = secret_value(&w.secret, &format!("{at}.webhook.secret"), errs)?;
            Some(Webhook {
                url: w.url.clone(),
                secret,
            })
        });
        if let Some(api_key) = key {
            out.push(Shop {
                id: s.id.clone(),
                api_key,
                merchants: s.merchants.iter().cloned().collect(),
                webhook,
            });
        }
    }
    out
}

fn merchants(f: &FileConfig, errs: &mut Errors) -> HashMap<String, SubMerchant> {
    let mut out = HashMap::new();
    for (id, m) in &f.merchants {
        let token = m
            .alipay_app_auth_token
            .as_ref()
            .and_then(|t| secret_value(t, &format!("merchants.{id}.alipay_app_auth_token"), errs));
        out.insert(
            id.clone(),
            SubMerchant {
                wechat_sub_mchid: m.wechat_sub_mchid.clone(),
                wechat_sub_appid: m.wechat_sub_appid.clone(),
                alipay_app_auth_token: token,
            },
        );
    }
    out
}

fn channels(f: &FileConfig, errs: &mut Errors) -> BTreeMap<String, Arc<ChannelSettings>> {
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
                if v.expose().len() != 32 {
                    errs.push(
                        &format!("{at}.apiv3_key"),
                        format!(
                            "channels.{name}: apiv3_key must be 32 bytes, not {}",
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
        "alipay" => "https://openapi.alipay.com/gateway.do",
        _ => "https://api.mch.weixin.qq.com",
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
        None => Duration::from_secs(5),
        Some(t) => parse_duration(t)
            .map_err(|e| {
                errs.push(
                    &format!("{at}.timeout"),
                    format!("channels.{name}: timeout {e}"),
                )
            })
            .unwrap_or_default(),
    };
    if c.timeout.is_some()
        && (timeout < Duration::from_millis(50) || timeout > Duration::from_secs(60))
    {
        errs.push(
            &format!("{at}.timeout"),
            format!("channels.{name}: timeout must be between 50ms and 60s"),
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
        connector: connector?,
    })
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

fn limits(f: &FileConfig, errs: &mut Errors) -> Vec<LimitSettings> {
    let mut out: Vec<LimitSettings> = Vec::new();
    for (i, l) in f.limits.iter().enumerate() {
        let at = format!("limits[{i}]");
        let label = format!("limits[{i}] {:?}", l.name);
        if out.iter().any(|o| o.name == l.name) {
            errs.push(
                &format!("{at}.name"),
                format!("{label}: duplicate limit name"),
            );
        }
        let key = match l.key.as_str() {
            "merchant" => Some(LimitKey::Merchant),
            "shop" => Some(LimitKey::Shop),
            other => {
                errs.push(
                    &format!("{at}.key"),
                    format!("{label}: key {other:?} is not merchant or shop"),
                );
                None
            }
        };
        let rate = RateSpec::parse(&l.rate, l.burst)
            .map_err(|e| errs.push(&format!("{at}.rate"), format!("{label}: rate {e}")))
            .ok();
        if let (Some(key), Some(rate)) = (key, rate) {
            out.push(LimitSettings {
                name: l.name.clone(),
                key,
                rate,
            });
        }
    }
    out
}

fn routing(
    f: &FileConfig,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    shops: &[Shop],
    errs: &mut Errors,
) -> Rules {
    // A channel that failed its own validation still exists for routing purposes: report
    // its errors once, not again as "unknown channel" in every rule that names it.
    let family_of = |name: &str| -> Option<Option<Family>> {
        if let Some(c) = channels.get(name) {
            return Some(Some(c.family()));
        }
        f.channels.get(name).map(|c| match c.kind.as_str() {
            "wechatpay_v3" => Some(Family::Wechat),
            "alipay" => Some(Family::Alipay),
            _ => None,
        })
    };
    let all_merchants: BTreeSet<&str> = shops
        .iter()
        .flat_map(|s| s.merchants.iter().map(String::as_str))
        .collect();

    let mut defaults = HashMap::new();
    for (fam, ch) in &f.routing.default {
        let at = format!("routing.default.{fam}");
        let Some(family) = Family::parse(fam) else {
            errs.push(
                &at,
                format!("routing.default: {fam:?} is not a family (wechat, alipay)"),
            );
            continue;
        };
        match family_of(ch) {
            None => errs.push(
                &at,
                format!("routing.default.{fam}: unknown channel {ch:?}"),
            ),
            Some(Some(cf)) if cf != family => errs.push(
                &at,
                format!("routing.default.{fam}: channel {ch:?} is in the {cf} family"),
            ),
            _ => {
                defaults.insert(family, ch.clone());
                let reachable: Vec<&str> = all_merchants.iter().copied().collect();
                check_sub_merchants(
                    &format!("routing.default.{fam}"),
                    &at,
                    ch,
                    &reachable,
                    channels,
                    merchants,
                    errs,
                );
            }
        }
    }
    for family in Family::ALL {
        let has_channels = f
            .channels
            .keys()
            .any(|c| family_of(c) == Some(Some(family)));
        if has_channels
            && !defaults.contains_key(&family)
            && !f.routing.default.contains_key(family.as_str())
        {
            errs.push(
                "routing",
                format!("routing.default: the {family} family has channels but no default"),
            );
        }
    }

    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in f.routing.rules.iter().enumerate() {
        let at = format!("routing.rules[{i}]");
        let label = format!("rules[{i}] {:?}", r.name);
        if r.name.is_empty() {
            errs.push(&at, format!("rules[{i}]: name is empty"));
        }
        if !names.insert(r.name.as_str()) {
            errs.push(
                &format!("{at}.name"),
                format!("{label}: duplicate rule name"),
            );
        }
        if let Some(rule) = rule(r, &at, &label, &family_of, errs) {
            let reachable: Vec<&str> = match &rule.when.merchants {
                Some(ms) => {
                    let mut v: Vec<&str> = ms.iter().map(String::as_str).collect();
                    v.sort_unstable();
                    v
                }
                None => shops
                    .iter()
                    .filter(|s| rule.when.shops.as_ref().is_none_or(|ss| ss.contains(&s.id)))
                    .flat_map(|s| s.merchants.iter().map(String::as_str))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            };
            for ch in rule.channels() {
                check_sub_merchants(&label, &at, ch, &reachable, channels, merchants, errs);
            }
            rules.push(rule);
        }
    }
    Rules::new(rules, defaults)
}

fn rule(
    r: &RuleFile,
    at: &str,
    label: &str,
    family_of: &dyn Fn(&str) -> Option<Option<Family>>,
    errs: &mut Errors,
) -> Option<Rule> {
    let n = errs.list.len();
    let mut targets: Vec<(String, &str)> = Vec::new(); // (yaml path, channel)
    let target = match (&r.to, &r.split) {
        (Some(to), None) => {
            targets.push((format!("{at}.to"), to));
            Some(Target::To(to.clone()))
        }
        (None, Some(split)) => {
            if split.is_empty() {
                errs.push(&format!("{at}.split"), format!("{label}: split is empty"));
            }
            let total: u64 = split.iter().map(|s| s.weight as u64).sum();
            if total == 0 && !split.is_empty() {
                errs.push(
                    &format!("{at}.split"),
                    format!("{label}: split weights sum to 0"),
                );
            }
            for (j, s) in split.iter().enumerate() {
                targets.push((format!("{at}.split[{j}].to"), &s.to));
            }
            Some(Target::Split {
                choices: split.iter().map(|s| (s.to.clone(), s.weight)).collect(),
                total,
            })
        }
        (Some(_), Some(_)) => {
            errs.push(at, format!("{label}: has both to and split; use one"));
            None
        }
        (None, None) => {
            errs.push(at, format!("{label}: needs to or split"));
            None
        }
    };
    for (j, fb) in r.fallback.iter().enumerate() {
        targets.push((format!("{at}.fallback[{j}]"), fb));
    }
    // `to`, `split[1].to`, `fallback[0]`: the key within the rule.
    let key_of = |path: &str| {
        path.strip_prefix(at)
            .unwrap_or(path)
            .trim_start_matches('.')
            .to_string()
    };
    let mut families = BTreeSet::new();
    let mut known: Vec<(String, &str, Family)> = Vec::new();
    for (path, ch) in &targets {
        match family_of(ch) {
            None => errs.push(
                path,
                format!("{label}: {}: unknown channel {ch:?}", key_of(path)),
            ),
            Some(Some(fam)) => {
                families.insert(fam);
                known.push((path.clone(), ch, fam));
            }
            Some(None) => {} // its own kind error is reported under channels
        }
    }

    let w = &r.when;
    let mut explicit: Option<u16> = None;
    if let Some(methods) = &w.method {
        let mut bits = 0;
        for m in methods.values() {
            match Method::parse(&m) {
                Some(m) => bits |= m.bit(),
                None => errs.push(
                    &format!("{at}.when.method"),
                    format!("{label}: when.method: unknown method {m:?}"),
                ),
            }
        }
        explicit = Some(bits);
    }
    if let Some(fams) = &w.family {
        let mut bits = 0;
        for fam in fams.values() {
            match Family::parse(&fam) {
                Some(f) => bits |= f.method_bits(),
                None => errs.push(
                    &format!("{at}.when.family"),
                    format!("{label}: when.family: {fam:?} is not wechat or alipay"),
                ),
            }
        }
        explicit = Some(explicit.unwrap_or(u16::MAX) & bits);
    }
    let methods = match explicit {
        Some(bits) => {
            for m in Method::from_bits(bits) {
                for (path, ch, fam) in &known {
                    if *fam != m.family() {
                        errs.push(
                            path,
                            format!(
                                "{label}: {}: channel {ch:?} ({fam}) cannot serve method {m}",
                                key_of(path)
                            ),
                        );
                    }
                }
            }
            bits
        }
        // No method condition: the rule applies to the methods its channels can serve.
        None => match families.len() {
            0 => 0,
            1 => families.first().map_or(0, |f| f.method_bits()),
            _ => {
                errs.push(at, format!("{label}: sends to both wechat and alipay channels; add when.method or when.family"));
                0
            }
        },
    };
    let amount = w.amount.as_ref();
    let (amount_min, amount_max) = (amount.and_then(|a| a.min), amount.and_then(|a| a.max));
    if let (Some(min), Some(max)) = (amount_min, amount_max) {
        if min > max {
            errs.push(
                &format!("{at}.when.amount"),
                format!("{label}: when.amount: min {min} is above max {max}"),
            );
        }
    }
    let hours = w.hours.as_ref().and_then(|h| {
        HoursRange::parse(h)
            .map_err(|e| {
                errs.push(
                    &format!("{at}.when.hours"),
                    format!("{label}: when.hours: {e}"),
                )
            })
            .ok()
    });
    if errs.list.len() > n {
        return None;
    }
    Some(Rule {
        name: r.name.clone(),
        when: Conditions {
            merchants: w
                .merchant
                .as_ref()
                .map(|m| m.values().into_iter().collect()),
            shops: w.shop.as_ref().map(|s| s.values().into_iter().collect()),
            methods,
            amount_min,
            amount_max,
            currencies: w.currency.as_ref().map(|c| c.values()),
            metadata: w
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.values()))
                .collect(),
            hours,
        },
        target: target?,
        fallback: r.fallback.clone(),
    })
}

/// A partner / ISV channel reachable for a merchant must have that merchant's sub-merchant id.
fn check_sub_merchants(
    label: &str,
    at: &str,
    channel: &str,
    reachable: &[&str],
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    errs: &mut Errors,
) {
    let Some(c) = channels.get(channel) else {
        return;
    };
    if !c.needs_sub_merchant() {
        return;
    }
    let (key, has): (&str, fn(&SubMerchant) -> bool) = match c.family() {
        Family::Wechat => ("wechat_sub_mchid", |m| m.wechat_sub_mchid.is_some()),
        Family::Alipay => ("alipay_app_auth_token", |m| {
            m.alipay_app_auth_token.is_some()
        }),
    };
    let missing: Vec<&str> = reachable
        .iter()
        .copied()
        .filter(|m| !merchants.get(*m).is_some_and(has))
        .collect();
    if !missing.is_empty() {
        errs.push(at, format!(
            "{label}: channel {channel:?} is {} mode but merchant(s) {} have no {key} under merchants:",
            c.mode(),
            missing.join(", ")
        ));
    }
}

fn sandbox(
    f: &FileConfig,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    errs: &mut Errors,
) -> Option<SandboxSettings> {
    let s = f.sandbox.as_ref()?;
    let listen = addr(&s.listen, "sandbox.listen", errs)?;
    let tls = match &s.tls {
        None => None,
        Some(t) => Some(tls(t, "sandbox.tls", errs)?),
    };
    Some(SandboxSettings {
        listen,
        tls,
        merchants: sandbox_merchants(channels),
    })
}

/// The sandbox knows each configured merchant's (or app's) public key, as WeChat Pay does once
/// the merchant uploads its certificate and Alipay once the app's key is set in its console.
pub fn sandbox_merchants(
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
) -> Vec<SandboxMerchant> {
    channels
        .values()
        .map(|c| match &c.connector {
            ConnectorSettings::WechatPay(w) => SandboxMerchant::Wechat {
                mchid: w.signing_mchid().to_string(),
                serial_no: w.serial_no.clone(),
                key: w.signer.verifier(),
            },
            ConnectorSettings::Alipay(a) => SandboxMerchant::Alipay {
                app_id: a.app_id.clone(),
                key: a.signer.verifier(),
            },
        })
        .collect()
}

/// Replaces literal secret values with `<redacted>`; `env:`/`file:` references stay, since
/// they name where the secret lives, not what it is.
fn redact(mut v: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if SECRET_KEYS.contains(&k.as_str()) {
                        if let serde_json::Value::String(s) = val {
                            if !secret::is_reference(s) {
                                *s = "<redacted>".into();
                            }
                            continue;
                        }
                    }
                    walk(val);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}
