//! Server, admin, store, shops, merchants, limits and the built-in sandbox.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::{addr, secret_value, tls, Errors};
use crate::channel::{ChannelSettings, ConnectorSettings, SubMerchant};
use crate::config::file::FileConfig;
use crate::defaults::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_LOG_LEVEL, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PG_LEASE, DEFAULT_PG_POOL_SIZE,
    DEFAULT_PG_SCHEMA, DEFAULT_REDIS_KEY_PREFIX, DEFAULT_REQUEST_TIMEOUT, DEFAULT_STORE_PATH,
    MAX_MAX_BODY_BYTES, MAX_PG_POOL_SIZE, MIN_ADMIN_TOKEN_LEN, MIN_MAX_BODY_BYTES, MIN_PG_LEASE,
    MIN_SHOP_API_KEY_LEN,
};
use crate::logging::{check_level, LogFormat, LogSettings};
use crate::resilience::{
    parse_duration, LimitKey, LimitScope, LimitSettings, RateSpec, RedisSettings,
};
use crate::sandbox::{SandboxMerchant, SandboxSettings};
use crate::secret::Secret;
use crate::server::{ListenerLimits, ServerSettings};
use crate::shops::{Shop, Webhook};
use crate::store::StoreSettings;

pub(super) fn server(f: &FileConfig, errs: &mut Errors) -> Option<ServerSettings> {
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
    let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(MIN_MAX_BODY_BYTES..=MAX_MAX_BODY_BYTES).contains(&max_body_bytes) {
        errs.push(
            "server.max_body_bytes",
            format!("server.max_body_bytes: must be between {MIN_MAX_BODY_BYTES} and {MAX_MAX_BODY_BYTES}"),
        );
    }
    let drain_timeout = match &s.drain_timeout {
        None => Some(DEFAULT_DRAIN_TIMEOUT),
        Some(d) => parse_duration(d)
            .map_err(|e| errs.push("server.drain_timeout", format!("server.drain_timeout: {e}")))
            .ok(),
    };
    let header_read_timeout = positive_duration(
        s.header_read_timeout.as_deref(),
        "server.header_read_timeout",
        DEFAULT_HEADER_READ_TIMEOUT,
        errs,
    );
    let request_timeout = positive_duration(
        s.request_timeout.as_deref(),
        "server.request_timeout",
        DEFAULT_REQUEST_TIMEOUT,
        errs,
    );
    let max_connections = at_least_one(
        s.max_connections,
        "server.max_connections",
        DEFAULT_MAX_CONNECTIONS,
        errs,
    );
    let max_in_flight = at_least_one(
        s.max_in_flight,
        "server.max_in_flight",
        DEFAULT_MAX_IN_FLIGHT,
        errs,
    );
    let tls = match &s.tls {
        None => Some(None),
        Some(t) => tls(t, "server.tls", errs).map(Some),
    };
    let drain_timeout = drain_timeout?;
    Some(ServerSettings {
        listen: listen?,
        admin_listen: admin_listen?,
        public_base_url: base,
        max_body_bytes,
        drain_timeout,
        tls: tls?,
        limits: ListenerLimits {
            header_read_timeout: header_read_timeout?,
            max_connections,
            max_in_flight,
            request_timeout: request_timeout?,
            drain: drain_timeout,
        },
    })
}

/// A duration key that must be above zero, or its default when absent.
fn positive_duration(
    value: Option<&str>,
    key: &str,
    default: std::time::Duration,
    errs: &mut Errors,
) -> Option<std::time::Duration> {
    match value.map(parse_duration) {
        None => Some(default),
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) => {
            errs.push(key, format!("{key}: must be above zero"));
            None
        }
        Some(Err(e)) => {
            errs.push(key, format!("{key}: {e}"));
            None
        }
    }
}

/// A count key that must be at least 1, or its default when absent.
fn at_least_one(value: Option<usize>, key: &str, default: usize, errs: &mut Errors) -> usize {
    let n = value.unwrap_or(default);
    if n == 0 {
        errs.push(key, format!("{key}: must be at least 1"));
    }
    n
}

pub(super) fn admin_token(f: &FileConfig, errs: &mut Errors) -> Option<Secret> {
    f.admin.as_ref().and_then(|a| {
        secret_value(&a.token, "admin.token", errs).and_then(|t| {
            if t.expose().len() < MIN_ADMIN_TOKEN_LEN {
                errs.push(
                    "admin.token",
                    format!("admin.token: must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
                );
                None
            } else {
                Some(t)
            }
        })
    })
}

pub(super) fn store(f: &FileConfig, errs: &mut Errors) -> Option<StoreSettings> {
    let Some(s) = &f.store else {
        return Some(StoreSettings::Sqlite {
            path: PathBuf::from(DEFAULT_STORE_PATH),
        });
    };
    // Keys of the other kind are errors: a `path` under postgres is a mistake, not a hint.
    let misplaced = |key: &str, present: bool, kind: &str, errs: &mut Errors| {
        if present {
            errs.push(
                &format!("store.{key}"),
                format!("store.{key}: is not a key of kind {kind}"),
            );
        }
    };
    match s.kind.as_str() {
        "sqlite" => {
            misplaced("url", s.url.is_some(), "sqlite (it uses path)", errs);
            misplaced("pool_size", s.pool_size.is_some(), "sqlite", errs);
            misplaced("schema", s.schema.is_some(), "sqlite", errs);
            misplaced(
                "lease",
                s.lease.is_some(),
                "sqlite (one instance claims nothing)",
                errs,
            );
            Some(StoreSettings::Sqlite {
                path: PathBuf::from(s.path.as_deref().unwrap_or(DEFAULT_STORE_PATH)),
            })
        }
        "postgres" => {
            misplaced("path", s.path.is_some(), "postgres (it uses url)", errs);
            let url = match &s.url {
                None => {
                    errs.push("store", "store.url: is required for kind postgres".into());
                    None
                }
                Some(u) => secret_value(u, "store.url", errs).and_then(|url| {
                    // Parsed now, so that `payroute check` catches a bad url without connecting.
                    match crate::store::postgres::ConnectSpec::parse(url.expose()) {
                        Ok(_) => Some(url),
                        Err(e) => {
                            errs.push("store.url", format!("store.url: {e}"));
                            None
                        }
                    }
                }),
            };
            let pool_size = s.pool_size.unwrap_or(DEFAULT_PG_POOL_SIZE);
            if !(1..=MAX_PG_POOL_SIZE).contains(&pool_size) {
                errs.push(
                    "store.pool_size",
                    format!("store.pool_size: must be between 1 and {MAX_PG_POOL_SIZE}"),
                );
            }
            let schema = s.schema.as_deref().unwrap_or(DEFAULT_PG_SCHEMA);
            let schema_ok = crate::store::postgres::valid_schema(schema);
            if !schema_ok {
                errs.push(
                    "store.schema",
                    format!("store.schema: {schema:?} must be 1 to 63 of a-z, 0-9 and _, not starting with a digit"),
                );
            }
            let lease = match &s.lease {
                None => Some(DEFAULT_PG_LEASE),
                Some(l) => match parse_duration(l) {
                    Ok(d) if d >= MIN_PG_LEASE => Some(d),
                    Ok(_) => {
                        errs.push(
                            "store.lease",
                            format!("store.lease: must be at least {MIN_PG_LEASE:?}"),
                        );
                        None
                    }
                    Err(e) => {
                        errs.push("store.lease", format!("store.lease: {e}"));
                        None
                    }
                },
            };
            let (url, lease) = (url?, lease?);
            (schema_ok && (1..=MAX_PG_POOL_SIZE).contains(&pool_size)).then(|| {
                StoreSettings::Postgres {
                    url,
                    pool_size,
                    schema: schema.to_string(),
                    lease,
                }
            })
        }
        other => {
            errs.push(
                "store.kind",
                format!("store.kind: {other:?} is not sqlite or postgres"),
            );
            None
        }
    }
}

pub(super) fn shops(f: &FileConfig, errs: &mut Errors) -> Vec<Shop> {
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
            if k.expose().len() < MIN_SHOP_API_KEY_LEN {
                errs.push(
                    &format!("{at}.api_key"),
                    format!("{label}: api_key must be at least {MIN_SHOP_API_KEY_LEN} characters"),
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

pub(super) fn merchants(f: &FileConfig, errs: &mut Errors) -> HashMap<String, SubMerchant> {
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
                alipay_seller_id: m.alipay_seller_id.clone(),
            },
        );
    }
    out
}

pub(super) fn limits(f: &FileConfig, errs: &mut Errors) -> Vec<LimitSettings> {
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
        let scope = match l.scope.as_deref() {
            None | Some("local") => Some(LimitScope::Local),
            Some("global") if f.redis.is_some() => Some(LimitScope::Global),
            Some("global") => {
                errs.push(
                    &format!("{at}.scope"),
                    format!("{label}: scope global needs redis: (where the limit is shared)"),
                );
                None
            }
            Some(other) => {
                errs.push(
                    &format!("{at}.scope"),
                    format!("{label}: scope {other:?} is not local or global"),
                );
                None
            }
        };
        if let (Some(key), Some(rate), Some(scope)) = (key, rate, scope) {
            out.push(LimitSettings {
                name: l.name.clone(),
                key,
                rate,
                scope,
            });
        }
    }
    out
}

pub(super) fn log(f: &FileConfig, errs: &mut Errors) -> LogSettings {
    let Some(l) = &f.log else {
        return LogSettings::default();
    };
    let format = match l.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errs.push(
                "log.format",
                format!("log.format: {other:?} is not text or json"),
            );
            LogFormat::Text
        }
    };
    let level = l
        .level
        .clone()
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
    if let Err(e) = check_level(&level) {
        errs.push("log.level", format!("log.level: {level:?}: {e}"));
    }
    LogSettings { format, level }
}

pub(super) fn redis(f: &FileConfig, errs: &mut Errors) -> Option<RedisSettings> {
    let r = f.redis.as_ref()?;
    let url = secret_value(&r.url, "redis.url", errs)?;
    if let Err(e) = crate::resilience::shared::check_url(url.expose()) {
        errs.push("redis.url", format!("redis.url: {e}"));
        return None;
    }
    Some(RedisSettings {
        url,
        key_prefix: r
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_string()),
    })
}

pub(super) fn sandbox(
    f: &FileConfig,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    errs: &mut Errors,
) -> Option<SandboxSettings> {
    let s = f.sandbox.as_ref()?;
    if !cfg!(feature = "sandbox") {
        errs.push(
            "sandbox",
            "sandbox: this payroute was built without the sandbox (cargo feature `sandbox`); \
             remove the section, or build with the default features"
                .to_string(),
        );
        return None;
    }
    let listen = addr(&s.listen, "sandbox.listen", errs)?;
    let tls = match &s.tls {
        None => None,
        Some(t) => Some(tls(t, "sandbox.tls", errs)?),
    };
    Some(SandboxSettings {
        listen,
        tls,
        merchants: sandbox_merchants(channels, merchants),
    })
}

/// The sandbox knows each configured merchant's (or app's) public key, as WeChat Pay does once
/// the merchant uploads its certificate and Alipay once the app's key is set in its console;
/// and, as Alipay does, whose account each granted `app_auth_token` is (the merchant's
/// `alipay_seller_id`); and each account's fee rate (the channel's `fee_rate`), which its
/// trade statements charge.
pub fn sandbox_merchants(
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
) -> Vec<SandboxMerchant> {
    let keys = channels.values().map(|c| match &c.connector {
        ConnectorSettings::WechatPay(w) => SandboxMerchant::Wechat {
            mchid: w.signing_mchid().to_string(),
            serial_no: w.serial_no.clone(),
            key: w.signer.verifier(),
            apiv3_key: w.apiv3_key.clone(),
            fee_rate: c.fee,
        },
        ConnectorSettings::Alipay(a) => SandboxMerchant::Alipay {
            app_id: a.app_id.clone(),
            key: a.signer.verifier(),
            fee_rate: c.fee,
        },
    });
    let grants = merchants.values().filter_map(|m| {
        Some(SandboxMerchant::AlipayGrant {
            app_auth_token: m.alipay_app_auth_token.clone()?,
            seller_id: m.alipay_seller_id.clone()?,
        })
    });
    keys.chain(grants).collect()
}
