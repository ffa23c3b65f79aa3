//! The built-in sandbox provider: faithful-enough WeChat Pay API v3 (`wechat`) and Alipay
//! classic gateway (`alipay`) for local runs, tests and benchmarks.
//!
//! Both check each request's signature with the configured merchant's (or app's) public key,
//! validate the fields of each mode, keep orders and refunds in memory, and sign every answer
//! with their own test key. This module holds what they share: the routes, the test knobs
//! (`POST /sandbox/pay/{out_trade_no}` marks an order paid, `GET /sandbox/orders/{no}` shows
//! what arrived, `/sandbox/faults` injects latency, failures and tampered signatures) and the
//! keys. Every key it holds is TEST-ONLY (`config/sandbox/`).
//!
//! # Limits
//! No asynchronous notifications yet.

mod alipay;
mod wechat;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::server::TlsSettings;

/// The id under which channels pin the sandbox's WeChat Pay public key.
pub const PUBLIC_KEY_ID: &str = "PUB_KEY_ID_SANDBOX_TEST_ONLY";
/// TEST-ONLY: the sandbox's "WeChat Pay" signing key, public in this repository.
const PLATFORM_KEY_PEM: &str = include_str!("../../config/sandbox/wechatpay_platform_key.pem");
const PLATFORM_CERT_PEM: &str = include_str!("../../config/sandbox/wechatpay_platform_cert.pem");
/// TEST-ONLY: the sandbox's "Alipay" signing key.
const ALIPAY_KEY_PEM: &str = include_str!("../../config/sandbox/alipay_sandbox_key.pem");
/// TEST-ONLY: the sandbox's HTTPS certificate (localhost, 127.0.0.1) and key.
pub const TLS_CERT_PEM: &str = include_str!("../../config/sandbox/tls_server_cert.pem");
pub const TLS_KEY_PEM: &str = include_str!("../../config/sandbox/tls_server_key.pem");
/// TEST-ONLY: the CA that signed [`TLS_CERT_PEM`].
pub const TLS_CA_PEM: &str = include_str!("../../config/sandbox/tls_ca.pem");

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
    Wechat {
        mchid: String,
        serial_no: String,
        key: RsaVerifier,
    },
    /// Alipay: `app_id` → the app's public key.
    Alipay { app_id: String, key: RsaVerifier },
}

/// Knobs for tests and benchmarks (`POST /sandbox/faults`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every `/v3` answer.
    pub latency_ms: u64,
    /// Flip a byte of every answer's signature.
    pub tamper_signature: bool,
    /// Fail this many of the next `/v3` requests with `fail_status` / `fail_code`.
    pub fail_next: u32,
    pub fail_status: Option<u16>,
    pub fail_code: Option<String>,
    /// Name the platform certificate's serial instead of the public key id.
    pub sign_with_certificate: bool,
}

pub struct Sandbox {
    merchants: RwLock<HashMap<(String, String), RsaVerifier>>,
    orders: Mutex<HashMap<(String, String), wechat::Order>>,
    alipay_apps: RwLock<HashMap<String, RsaVerifier>>,
    /// By (seller: app_auth_token or app_id, out_trade_no).
    alipay_orders: Mutex<HashMap<(String, String), alipay::AliOrder>>,
    alipay_signer: RsaSigner,
    faults: Mutex<Faults>,
    signer: RsaSigner,
    cert_serial: String,
    counter: std::sync::atomic::AtomicU64,
}

type Answer = Response<Full<Bytes>>;

impl Sandbox {
    pub fn new(merchants: Vec<SandboxMerchant>) -> Arc<Sandbox> {
        let signer =
            RsaSigner::from_text(PLATFORM_KEY_PEM).expect("the bundled sandbox key parses");
        let cert = Certificate::from_pem(PLATFORM_CERT_PEM)
            .expect("the bundled sandbox certificate parses");
        let sb = Sandbox {
            merchants: RwLock::new(HashMap::new()),
            orders: Mutex::new(HashMap::new()),
            alipay_apps: RwLock::new(HashMap::new()),
            alipay_orders: Mutex::new(HashMap::new()),
            alipay_signer: RsaSigner::from_text(ALIPAY_KEY_PEM)
                .expect("the bundled sandbox Alipay key parses"),
            faults: Mutex::new(Faults::default()),
            signer,
            cert_serial: cert.serial,
            counter: std::sync::atomic::AtomicU64::new(1),
        };
        sb.set_merchants(merchants);
        Arc::new(sb)
    }

    /// Replaces the accepted merchant keys (after a config reload).
    pub fn set_merchants(&self, merchants: Vec<SandboxMerchant>) {
        let (mut wechat, mut alipay) = (HashMap::new(), HashMap::new());
        for m in merchants {
            match m {
                SandboxMerchant::Wechat {
                    mchid,
                    serial_no,
                    key,
                } => {
                    wechat.insert((mchid, serial_no), key);
                }
                SandboxMerchant::Alipay { app_id, key } => {
                    alipay.insert(app_id, key);
                }
            }
        }
        *self.merchants.write().unwrap_or_else(|p| p.into_inner()) = wechat;
        *self.alipay_apps.write().unwrap_or_else(|p| p.into_inner()) = alipay;
    }

    /// The platform certificate (PEM), for channels in certificate mode.
    pub fn platform_certificate_pem() -> &'static str {
        PLATFORM_CERT_PEM
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsSettings>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let handler = move |req: Request<Incoming>, _peer| {
            let sb = self.clone();
            async move { sb.handle(req).await }
        };
        crate::server::serve(listener, tls, handler, shutdown, Duration::from_secs(5)).await;
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"code":"PARAM_ERROR","message":"body too large"}),
                )
            }
        };
        let path = parts.uri.path().to_string();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or(path.clone(), |p| p.to_string());
        let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&parts.method, seg.as_slice()) {
            (&Method::POST, ["sandbox", "pay", no]) => {
                self.pay(&crate::server::decode(no), parts.uri.query())
            }
            (&Method::GET, ["sandbox", "orders", no]) => {
                self.orders_json(&crate::server::decode(no))
            }
            (&Method::POST, ["sandbox", "faults"]) => match serde_json::from_slice::<Faults>(&body)
            {
                Ok(f) => {
                    *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = f.clone();
                    plain(StatusCode::OK, json!(f))
                }
                Err(e) => plain(
                    StatusCode::BAD_REQUEST,
                    json!({"code":"PARAM_ERROR","message":e.to_string()}),
                ),
            },
            (_, ["gateway.do"]) => {
                self.alipay_gateway(&parts.method, parts.uri.query(), &body)
                    .await
            }
            (_, ["v3", ..]) => {
                self.v3(&parts.method, &parts.headers, &path_and_query, &seg, &body)
                    .await
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"no such sandbox route"}),
            ),
        }
    }

    /// Marks every open order with this out_trade_no paid (or only `?mchid=`'s).
    fn pay(&self, no: &str, query: Option<&str>) -> Answer {
        let only = query.and_then(|q| query_param(&format!("?{q}"), "mchid"));
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let mut paid = Vec::new();
        for ((_, o_no), o) in orders.iter_mut() {
            if o_no != no || only.as_deref().is_some_and(|m| m != o.mchid()) {
                continue;
            }
            o.mark_paid(
                self.counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            );
            paid.push(json!(o));
        }
        drop(orders);
        let mut ali = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, o_no), o) in ali.iter_mut() {
            if o_no == no && only.is_none() {
                o.mark_paid(
                    self.counter
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                );
                paid.push(json!(o));
            }
        }
        if paid.is_empty() {
            return plain(
                StatusCode::NOT_FOUND,
                json!({"code":"ORDER_NOT_EXIST","message":"no open order with that out_trade_no"}),
            );
        }
        plain(StatusCode::OK, json!({ "orders": paid }))
    }

    fn orders_json(&self, no: &str) -> Answer {
        let orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<Value> = orders
            .iter()
            .filter(|((_, o), _)| o == no)
            .map(|(_, o)| json!(o))
            .collect();
        drop(orders);
        let ali = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        found.extend(
            ali.iter()
                .filter(|((_, o), _)| o == no)
                .map(|(_, o)| json!(o)),
        );
        plain(StatusCode::OK, json!({ "orders": found }))
    }
}

/// Changes one base64 character so the signature no longer verifies but still decodes.
fn tamper(sig: &str) -> String {
    let mut chars: Vec<char> = sig.chars().collect();
    if let Some(c) = chars.get_mut(10) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

fn query_param(path_and_query: &str, name: &str) -> Option<String> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn plain(status: StatusCode, body: Value) -> Answer {
    crate::server::json_response(status, &body)
}
