//! What the integration tests share: the constants of the test config, deadlines for every
//! wait, and one module per concern — [`harness`] (the real proxy on its own listeners, with
//! an HTTP client), [`receiver`] (the shop's webhook endpoint), [`yaml`] (config builders),
//! [`pg`] (PostgreSQL schemas, a forwarder, a private server), [`binary`] (the `payroute`
//! binary as a process) and [`disk`] (a small full disk).

pub mod binary;
pub mod disk;
pub mod harness;
pub mod pg;
pub mod receiver;
pub mod yaml;

pub use binary::*;
pub use harness::*;
pub use pg::*;
pub use receiver::*;
pub use yaml::*;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payroute::app::{Listeners, Running};
use payroute::config::Config;
use payroute::sandbox::Sandbox;
use serde_json::Value;
use tokio::net::TcpListener;

pub const SHOP_KEY: &str = "test-shop-key-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";
/// `peer-shop`'s key: a second shop acting for `m_1001` beside `test-shop`.
pub const PEER_SHOP_KEY: &str = "peer-shop-key-0123456789";

pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sandbox")
}

pub fn key(name: &str) -> String {
    keys_dir().join(name).display().to_string()
}

/// The deadline of one wait in a test: long enough for a slow shared machine, short enough
/// that a bug fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
#[track_caller]
pub fn within<T>(what: &str, fut: impl Future<Output = T>) -> impl Future<Output = T> {
    let what = what.to_string();
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what} ({caller})"),
        }
    }
}

/// Polls `check` until it is true, failing the test after [`WAIT`].
#[track_caller]
pub fn wait_until<F, Fut>(what: &str, mut check: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async move {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// A create body with sensible defaults; `extra` overrides or adds fields.
pub fn payment(merchant: &str, no: &str, method: &str, amount: u64, extra: Value) -> Value {
    let mut v = serde_json::json!({
        "merchant_id": merchant, "out_trade_no": no, "amount": amount, "currency": "CNY",
        "method": method, "description": "Test mug",
    });
    if method == "wechat_jsapi" {
        v["payer"] = serde_json::json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" });
    }
    if method == "wechat_h5" {
        v["payer"] = serde_json::json!({ "client_ip": "203.0.113.7" });
    }
    if let Value::Object(m) = extra {
        for (k, val) in m {
            v[k] = val;
        }
    }
    v
}

/// Replace by rename, as editors and config management do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A series as the Prometheus text format writes it: labels sorted by name.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut labels = labels.to_vec();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// A metric sample's value from Prometheus text, e.g. `payroute_config_reloads_total{result="error"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
