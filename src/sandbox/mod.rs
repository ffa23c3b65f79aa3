//! The built-in sandbox provider: a faithful-enough WeChat Pay API v3 for local runs, tests
//! and benchmarks.
//!
//! It checks each request's `WECHATPAY2-SHA256-RSA2048` signature with the merchant's
//! configured public key (401 `SIGN_ERROR` otherwise), validates the order fields of direct
//! and partner mode, keeps orders in memory, and signs every answer with its own test key.
//! `POST /sandbox/pay/{out_trade_no}` marks an order paid; `/sandbox/faults` injects latency,
//! failures and tampered signatures. Every key it holds is TEST-ONLY (`config/sandbox/`).
//!
//! It speaks Alipay's classic gateway too (`alipay`).
//!
//! # Limits
//! No asynchronous notifications yet.

mod alipay;

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
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::channel::wechatpay::{china_time, sign};
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

#[derive(Clone, Debug, Serialize)]
struct Order {
    mchid: String,
    sub_mchid: Option<String>,
    out_trade_no: String,
    trade_type: String,
    amount: u64,
    currency: String,
    state: String,
    prepay_id: String,
    transaction_id: Option<String>,
    success_time: Option<String>,
    /// The create request body exactly as received, for tests that check its shape.
    request: Value,
    /// Refunds of this order: (out_refund_no, amount, refund_id).
    refunds: Vec<(String, u64, String)>,
}

pub struct Sandbox {
    merchants: RwLock<HashMap<(String, String), RsaVerifier>>,
    orders: Mutex<HashMap<(String, String), Order>>,
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
                self.pay(&crate::api::decode(no), parts.uri.query())
            }
            (&Method::GET, ["sandbox", "orders", no]) => self.orders_json(&crate::api::decode(no)),
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

    async fn v3(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        path_and_query: &str,
        seg: &[&str],
        body: &[u8],
    ) -> Answer {
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let mchid = match self.check_signature(method, headers, path_and_query, body) {
            Ok(m) => m,
            Err(msg) => {
                return self.signed(
                    StatusCode::UNAUTHORIZED,
                    json!({"code":"SIGN_ERROR","message":msg}),
                    &faults,
                )
            }
        };
        if faults.fail_next > 0 {
            let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            f.fail_next = f.fail_next.saturating_sub(1);
            let status = StatusCode::from_u16(faults.fail_status.unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = faults
                .fail_code
                .clone()
                .unwrap_or_else(|| "SYSTEM_ERROR".into());
            return self.signed(
                status,
                json!({"code": code, "message": "injected by /sandbox/faults"}),
                &faults,
            );
        }
        let (status, answer) = match (method, seg) {
            (&Method::POST, ["v3", "pay", "transactions", kind]) => {
                self.create(&mchid, false, kind, body)
            }
            (&Method::POST, ["v3", "pay", "partner", "transactions", kind]) => {
                self.create(&mchid, true, kind, body)
            }
            (&Method::POST, ["v3", "pay", "transactions", "out-trade-no", no, "close"]) => {
                self.close(&mchid, false, &crate::api::decode(no), body)
            }
            (
                &Method::POST,
                ["v3", "pay", "partner", "transactions", "out-trade-no", no, "close"],
            ) => self.close(&mchid, true, &crate::api::decode(no), body),
            (&Method::POST, ["v3", "refund", "domestic", "refunds"]) => self.refund(&mchid, body),
            (&Method::GET, ["v3", "refund", "domestic", "refunds", no]) => {
                let sub = query_param(path_and_query, "sub_mchid");
                self.refund_query(&mchid, sub.as_deref(), &crate::api::decode(no))
            }
            (&Method::GET, ["v3", "pay", "transactions", "out-trade-no", no]) => {
                self.query(&mchid, None, &crate::api::decode(no))
            }
            (&Method::GET, ["v3", "pay", "partner", "transactions", "out-trade-no", no]) => {
                let sub = query_param(path_and_query, "sub_mchid");
                self.query(&mchid, sub.as_deref(), &crate::api::decode(no))
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"no such API in the sandbox"}),
            ),
        };
        self.signed(status, answer, &faults)
    }

    /// Verifies the Authorization header as WeChat Pay does; returns the signing mchid.
    fn check_signature(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<String, String> {
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("missing Authorization")?;
        let f = sign::parse_authorization(auth)
            .ok_or("Authorization is not WECHATPAY2-SHA256-RSA2048")?;
        let get = |k: &str| f.get(k).cloned().ok_or(format!("Authorization has no {k}"));
        let (mchid, serial, nonce, ts, signature) = (
            get("mchid")?,
            get("serial_no")?,
            get("nonce_str")?,
            get("timestamp")?,
            get("signature")?,
        );
        let ts: i64 = ts.parse().map_err(|_| "bad timestamp".to_string())?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if (now - ts).abs() > sign::MAX_SKEW_SECS {
            return Err("timestamp too far from now".into());
        }
        let merchants = self.merchants.read().unwrap_or_else(|p| p.into_inner());
        let key = merchants
            .get(&(mchid.clone(), serial.clone()))
            .ok_or_else(|| format!("no certificate {serial} for merchant {mchid}"))?;
        let msg = sign::request_message(method.as_str(), path_and_query, ts, &nonce, body);
        if key.verify_b64(&msg, &signature) {
            Ok(mchid)
        } else {
            Err("signature does not verify".into())
        }
    }

    fn create(
        &self,
        auth_mchid: &str,
        partner: bool,
        kind: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let bad = |m: &str| {
            (
                StatusCode::BAD_REQUEST,
                json!({"code":"PARAM_ERROR","message":m}),
            )
        };
        if !["jsapi", "native", "h5", "app"].contains(&kind) {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"unknown trade type"}),
            );
        }
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return bad("body is not JSON");
        };
        let s = |k: &str| req[k].as_str().filter(|v| !v.is_empty());
        let (mchid_field, app_field) = if partner {
            ("sp_mchid", "sp_appid")
        } else {
            ("mchid", "appid")
        };
        if s(mchid_field) != Some(auth_mchid) {
            return bad(&format!("{mchid_field} must equal the signing merchant"));
        }
        if s(app_field).is_none() {
            return bad(&format!("{app_field} is required"));
        }
        let sub_mchid = if partner {
            match s("sub_mchid") {
                Some(v) => Some(v.to_string()),
                None => return bad("sub_mchid is required"),
            }
        } else {
            if req.get("sub_mchid").is_some() {
                return bad("sub_mchid is not a direct-mode field");
            }
            None
        };
        for k in ["description", "out_trade_no", "notify_url"] {
            if s(k).is_none() {
                return bad(&format!("{k} is required"));
            }
        }
        let Some(total) = req["amount"]["total"].as_u64().filter(|t| *t > 0) else {
            return bad("amount.total must be a positive integer");
        };
        if kind == "jsapi" {
            let payer = &req["payer"];
            let ok = if partner {
                payer["sp_openid"].is_string() || payer["sub_openid"].is_string()
            } else {
                payer["openid"].is_string()
            };
            if !ok {
                return bad("payer openid is required for jsapi");
            }
        }
        if kind == "h5" && !req["scene_info"]["payer_client_ip"].is_string() {
            return bad("scene_info.payer_client_ip is required for h5");
        }
        let out_trade_no = s("out_trade_no").unwrap_or_default().to_string();
        let key = (
            order_key(auth_mchid, sub_mchid.as_deref()),
            out_trade_no.clone(),
        );
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = orders.get(&key) {
            match existing.state.as_str() {
                "SUCCESS" => {
                    return (
                        StatusCode::FORBIDDEN,
                        json!({"code":"ORDERPAID","message":"该订单已支付"}),
                    )
                }
                "CLOSED" => {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"code":"ORDER_CLOSED","message":"订单已关闭"}),
                    )
                }
                _ if existing.amount != total || existing.trade_type != kind.to_uppercase() => {
                    return (
                        StatusCode::BAD_REQUEST,
                        json!({"code":"INVALID_REQUEST","message":"out_trade_no used with different parameters"}),
                    )
                }
                _ => {
                    return (
                        StatusCode::OK,
                        self.create_answer(kind, &existing.prepay_id),
                    )
                }
            }
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prepay_id = format!("wx{}{n:010}", OffsetDateTime::now_utc().unix_timestamp());
        orders.insert(
            key,
            Order {
                mchid: auth_mchid.to_string(),
                sub_mchid,
                out_trade_no,
                trade_type: kind.to_uppercase(),
                amount: total,
                currency: req["amount"]["currency"]
                    .as_str()
                    .unwrap_or("CNY")
                    .to_string(),
                state: "NOTPAY".into(),
                prepay_id: prepay_id.clone(),
                transaction_id: None,
                success_time: None,
                request: req.clone(),
                refunds: Vec::new(),
            },
        );
        (StatusCode::OK, self.create_answer(kind, &prepay_id))
    }

    fn create_answer(&self, kind: &str, prepay_id: &str) -> Value {
        match kind {
            "native" => json!({ "code_url": format!("weixin://wxpay/bizpayurl?pr={prepay_id}") }),
            "h5" => {
                json!({ "h5_url": format!("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}") })
            }
            _ => json!({ "prepay_id": prepay_id }),
        }
    }

    fn query(&self, mchid: &str, sub_mchid: Option<&str>, no: &str) -> (StatusCode, Value) {
        let orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get(&(order_key(mchid, sub_mchid), no.to_string())) else {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"ORDER_NOT_EXIST","message":"订单不存在"}),
            );
        };
        let mut v = json!({
            "out_trade_no": o.out_trade_no, "trade_type": o.trade_type, "trade_state": o.state,
            "trade_state_desc": o.state,
            "amount": { "total": o.amount, "currency": o.currency, "payer_total": o.amount, "payer_currency": o.currency },
        });
        match &o.sub_mchid {
            None => v["mchid"] = json!(o.mchid),
            Some(sub) => {
                v["sp_mchid"] = json!(o.mchid);
                v["sub_mchid"] = json!(sub);
            }
        }
        if let Some(t) = &o.transaction_id {
            v["transaction_id"] = json!(t);
        }
        if let Some(t) = &o.success_time {
            v["success_time"] = json!(t);
        }
        (StatusCode::OK, v)
    }

    fn close(&self, auth_mchid: &str, partner: bool, no: &str, body: &[u8]) -> (StatusCode, Value) {
        let bad = |m: &str| {
            (
                StatusCode::BAD_REQUEST,
                json!({"code":"PARAM_ERROR","message":m}),
            )
        };
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return bad("body is not JSON");
        };
        let field = if partner { "sp_mchid" } else { "mchid" };
        if req[field].as_str() != Some(auth_mchid) {
            return bad(&format!("{field} must equal the signing merchant"));
        }
        let sub = if partner {
            match req["sub_mchid"].as_str() {
                Some(s) => Some(s.to_string()),
                None => return bad("sub_mchid is required"),
            }
        } else {
            None
        };
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get_mut(&(order_key(auth_mchid, sub.as_deref()), no.to_string()))
        else {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"ORDER_NOT_EXIST","message":"订单不存在"}),
            );
        };
        if o.state == "SUCCESS" {
            return (
                StatusCode::BAD_REQUEST,
                json!({"code":"ORDERPAID","message":"订单已支付"}),
            );
        }
        o.state = "CLOSED".into();
        (StatusCode::NO_CONTENT, Value::Null)
    }

    fn refund(&self, auth_mchid: &str, body: &[u8]) -> (StatusCode, Value) {
        let bad = |m: &str| {
            (
                StatusCode::BAD_REQUEST,
                json!({"code":"PARAM_ERROR","message":m}),
            )
        };
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return bad("body is not JSON");
        };
        let (Some(no), Some(refund_no)) =
            (req["out_trade_no"].as_str(), req["out_refund_no"].as_str())
        else {
            return bad("out_trade_no and out_refund_no are required");
        };
        let (Some(refund), Some(total)) = (
            req["amount"]["refund"].as_u64(),
            req["amount"]["total"].as_u64(),
        ) else {
            return bad("amount.refund and amount.total are required");
        };
        if req["notify_url"].as_str().is_none() {
            return bad("notify_url is required by the sandbox");
        }
        let key = (
            order_key(auth_mchid, req["sub_mchid"].as_str()),
            no.to_string(),
        );
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get_mut(&key) else {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"RESOURCE_NOT_EXISTS","message":"订单不存在"}),
            );
        };
        if let Some((_, amount, _)) = o.refunds.iter().find(|(n, _, _)| n == refund_no) {
            if *amount != refund {
                return bad("out_refund_no used with another amount");
            }
            return (StatusCode::OK, refund_answer(o, refund_no));
        }
        if o.state != "SUCCESS" && o.state != "REFUND" {
            return (
                StatusCode::FORBIDDEN,
                json!({"code":"INVALID_REQUEST","message":"订单未支付"}),
            );
        }
        if total != o.amount {
            return bad("amount.total is not the order's amount");
        }
        let refunded: u64 = o.refunds.iter().map(|(_, a, _)| a).sum();
        if refund == 0 || refunded + refund > o.amount {
            return (
                StatusCode::FORBIDDEN,
                json!({"code":"NOT_ENOUGH","message":"可退金额不足"}),
            );
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        o.refunds
            .push((refund_no.to_string(), refund, format!("50300{n:024}")));
        o.state = "REFUND".into();
        (StatusCode::OK, refund_answer(o, refund_no))
    }

    fn refund_query(
        &self,
        auth_mchid: &str,
        sub_mchid: Option<&str>,
        refund_no: &str,
    ) -> (StatusCode, Value) {
        let merchant = order_key(auth_mchid, sub_mchid);
        let orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        orders
            .iter()
            .find(|((m, _), o)| *m == merchant && o.refunds.iter().any(|(n, _, _)| n == refund_no))
            .map(|(_, o)| (StatusCode::OK, refund_answer(o, refund_no)))
            .unwrap_or((
                StatusCode::NOT_FOUND,
                json!({"code":"RESOURCE_NOT_EXISTS","message":"退款单不存在"}),
            ))
    }

    /// Marks every open order with this out_trade_no paid (or only `?mchid=`'s).
    fn pay(&self, no: &str, query: Option<&str>) -> Answer {
        let only = query.and_then(|q| query_param(&format!("?{q}"), "mchid"));
        let mut orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
        let mut paid = Vec::new();
        for ((_, o_no), o) in orders.iter_mut() {
            if o_no != no || only.as_deref().is_some_and(|m| m != o.mchid) {
                continue;
            }
            if o.state == "NOTPAY" {
                let n = self
                    .counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                o.state = "SUCCESS".into();
                o.transaction_id = Some(format!("42000{n:023}"));
                o.success_time = Some(china_time(OffsetDateTime::now_utc()));
            }
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

    /// A WeChat Pay style answer: JSON body (none for 204) with signature headers.
    fn signed(&self, status: StatusCode, body: Value, faults: &Faults) -> Answer {
        let bytes = if status == StatusCode::NO_CONTENT {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let ts = OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = sign::nonce();
        let mut signature = self
            .signer
            .sign_b64(&sign::response_message(&ts, &nonce, &bytes));
        if faults.tamper_signature {
            signature = tamper(&signature);
        }
        let serial = if faults.sign_with_certificate {
            self.cert_serial.clone()
        } else {
            PUBLIC_KEY_ID.to_string()
        };
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        let val = |s: &str| {
            http::HeaderValue::from_str(s)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
        };
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert("Wechatpay-Timestamp", val(&ts));
        h.insert("Wechatpay-Nonce", val(&nonce));
        h.insert("Wechatpay-Signature", val(&signature));
        h.insert("Wechatpay-Serial", val(&serial));
        h.insert(
            "Request-ID",
            val(&format!(
                "sandbox-{}",
                self.counter
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
        );
        resp
    }
}

fn refund_answer(o: &Order, refund_no: &str) -> Value {
    let (_, amount, id) = o
        .refunds
        .iter()
        .find(|(n, _, _)| n == refund_no)
        .cloned()
        .unwrap_or_default();
    json!({
        "refund_id": id, "out_refund_no": refund_no, "out_trade_no": o.out_trade_no,
        "transaction_id": o.transaction_id, "channel": "ORIGINAL", "status": "SUCCESS",
        "success_time": china_time(OffsetDateTime::now_utc()),
        "amount": { "total": o.amount, "refund": amount, "payer_total": o.amount, "payer_refund": amount, "currency": o.currency },
    })
}

/// Changes one base64 character so the signature no longer verifies but still decodes.
fn tamper(sig: &str) -> String {
    let mut chars: Vec<char> = sig.chars().collect();
    if let Some(c) = chars.get_mut(10) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

fn order_key(mchid: &str, sub_mchid: Option<&str>) -> String {
    match sub_mchid {
        Some(sub) => format!("{mchid}/{sub}"),
        None => mchid.to_string(),
    }
}

fn query_param(path_and_query: &str, name: &str) -> Option<String> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn plain(status: StatusCode, body: Value) -> Answer {
    crate::api::error::json_response(status, &body)
}
