//! `FileConfig` → [`Config`]: every check of ARCHITECTURE.md, "Configuration and reload", errors
//! collected, never a panic.
//!
//! This module orchestrates; the checks live by concern: `server` (server, admin, store,
//! shops, merchants, limits, sandbox), `channels`, `routing`, `insecure`
//! (plain HTTP and sandbox keys off loopback), `merchants` (each provider id names one
//! merchant), `reach` (which channels each merchant can reach, so which sub-merchant ids are
//! needed and that no merchant reaches another's own account), and `workers`
//! (reconciliation tiers, webhook delivery, that every shop can be told, and that a shared
//! store's claims outlast the work they cover). Redaction is `config::redact`.

mod channels;
mod insecure;
mod late;
mod merchants;
mod reach;
mod routing;
mod server;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;

use super::file::{FileConfig, TlsFile};
use super::redact::redact;
use super::{Config, ConfigError, Locator};
use crate::secret::{self, Secret};
use crate::server::TlsSettings;
use crate::shops::ShopDirectory;

pub use server::sandbox_merchants;

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

    let server = server::server(&f, &mut errs);
    let admin_token = server::admin_token(&f, &mut errs);
    let store = server::store(&f, &mut errs);
    let shops = server::shops(&f, &mut errs);
    let merchants = server::merchants(&f, &mut errs);
    merchants::check_merchant_ids(&f, &merchants, &mut errs);
    let channels = channels::channels(&f, &mut errs);
    merchants::check_own_accounts(&f, &channels, &merchants, &mut errs);
    merchants::check_alipay_apps(&channels, &mut errs);
    let limits = server::limits(&f, &mut errs);
    let redis = server::redis(&f, &mut errs);
    let log = server::log(&f, &mut errs);
    let (rules, health) = routing::routing(&f, &channels, &merchants, &shops, &mut errs);
    let sandbox = server::sandbox(&f, &channels, &merchants, &mut errs);
    let reconcile = workers::reconcile(&f, &mut errs);
    let webhooks = workers::webhooks(&f, &mut errs);
    workers::shops_have_webhooks(&f, &mut errs);
    let late_payments = late::late_payments(&f, &mut errs);

    // Each builder reports why it returns None, so these are Some without errors; if one
    // ever is not, that is an error message, not a panic.
    let (Some(server), Some(store)) = (server, store) else {
        if errs.list.is_empty() {
            errs.push(
                "server",
                "server / store settings could not be built".into(),
            );
        }
        return Err(errs.list);
    };
    workers::lease_outlasts_the_work(&store, &webhooks, &channels, &mut errs);
    if !errs.list.is_empty() {
        return Err(errs.list);
    }
    Ok(Config {
        path: PathBuf::new(),
        version: String::new(),
        server,
        admin_token,
        store,
        shops: ShopDirectory::new(shops),
        merchants,
        channels,
        rules,
        health,
        limits,
        redis,
        log,
        sandbox,
        reconcile,
        webhooks,
        late_payments,
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
    let client_ca = match &t.client_ca {
        None => None,
        Some(ca) => Some(secret_value(ca, &format!("{path}.client_ca"), errs)?),
    };
    match TlsSettings::with_client_ca(
        cert.expose(),
        key.expose(),
        client_ca.as_ref().map(|c| c.expose()),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            errs.push(path, format!("{path}: {e}"));
            None
        }
    }
}
