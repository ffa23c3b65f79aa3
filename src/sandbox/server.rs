//! The sandbox's listener: its routes, the test knobs, faults and the one answer path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::notify::{self, Notification, Notifier, Plan};
use super::{alipay, wechat, SandboxMerchant};
use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::secret::Secret;
use crate::server::TlsSettings;

/// The id under which channels pin the sandbox's WeChat Pay public key.
pub const PUBLIC_KEY_ID: &str = "PUB_KEY_ID_SANDBOX_TEST_ONLY";
/// TEST-ONLY: the sandbox's "WeChat Pay" signing key, public in this repository.
pub(super) const PLATFORM_KEY_PEM: &str =
    include_str!("../../config/sandbox/wechatpay_platform_key.pem");
pub(super) const PLATFORM_CERT_PEM: &str =
    include_str!("../../config/sandbox/wechatpay_platform_cert.pem");
/// TEST-ONLY: the sandbox's "Alipay" signing key.
pub(super) const ALIPAY_KEY_PEM: &str = include_str!("../../config/sandbox/alipay_sandbox_key.pem");
/// TEST-ONLY: the sandbox's HTTPS certificate (localhost, 127.0.0.1) and key.
pub const TLS_CERT_PEM: &str = include_str!("../../config/sandbox/tls_server_cert.pem");
pub const TLS_KEY_PEM: &str = include_str!("../../config/sandbox/tls_server_key.pem");
/// TEST-ONLY: the CA that signed [`TLS_CERT_PEM`].
pub const TLS_CA_PEM: &str = include_str!("../../config/sandbox/tls_ca.pem");

/// Knobs for tests and benchmarks (`POST /sandbox/faults`); each POST replaces them all.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every `/v3` and gateway answer, after the work.
    pub latency_ms: u64,
    /// Flip a byte of every answer's signature.
    pub tamper_signature: bool,
    /// Fail this many of the next signed `/v3` / gateway requests (of `fail_ops` when set)
    /// with `fail_status` / `fail_code`. Each failure is taken atomically: N concurrent
    /// requests consume at most `fail_next` failures between them.
    pub fail_next: u32,
    pub fail_status: Option<u16>,
    pub fail_code: Option<String>,
    /// Name the platform certificate's serial instead of the public key id.
    pub sign_with_certificate: bool,
    /// When set, `fail_next` only applies to (and is only consumed by) these operations:
    /// `create`, `query`, `close`, `refund`, `refund_query`.
    pub fail_ops: Option<Vec<String>>,
    /// Injected failures go unsigned (WeChat: no `Wechatpay-*` headers; Alipay: no `sign`).
    pub fail_unsigned: bool,
    /// Tamper the signature of error answers only (non-2xx WeChat, code ≠ 10000 Alipay).
    pub tamper_errors: bool,
    /// Injected failures carry `Retry-After: N`.
    pub retry_after_secs: Option<u64>,
    /// WeChat refunds are created with this `status` (`PROCESSING`, `ABNORMAL`, `CLOSED`)
    /// instead of `SUCCESS`, and keep it. All but `CLOSED` count against the refundable amount.
    pub refund_status: Option<String>,
    /// `alipay.trade.refund` accepts with `fund_change: "N"` and records the refund as
    /// processing; the next `alipay.trade.fastpay.refund.query` finds it settled.
    pub alipay_refund_pending: bool,
    /// Notifications are not sent at all, as if lost (recorded with attempt 0, `dropped`).
    pub drop_notifications: bool,
    /// Each notification is sent once more right after the first answered attempt.
    pub duplicate_notifications: bool,
    /// Wait this long before the first attempt of each notification.
    pub notify_delay_ms: u64,
}

impl Faults {
    /// How notifications made now are to be delivered.
    pub(super) fn plan(&self) -> Plan {
        Plan {
            drop: self.drop_notifications,
            duplicate: self.duplicate_notifications,
            delay_ms: self.notify_delay_ms,
        }
    }

    fn check(&self) -> Result<(), String> {
        for op in self.fail_ops.iter().flatten() {
            if Op::from_name(op).is_none() {
                return Err(format!(
                    "unknown fail_ops entry {op:?} (create, query, close, refund, refund_query)"
                ));
            }
        }
        Ok(())
    }
}

/// The operations `fail_ops` names, the same for both providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Create,
    Query,
    Close,
    Refund,
    RefundQuery,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "create" => Op::Create,
            "query" => Op::Query,
            "close" => Op::Close,
            "refund" => Op::Refund,
            "refund_query" => Op::RefundQuery,
            _ => return None,
        })
    }
}

/// An injected failure taken from [`Faults::fail_next`]: what to answer instead of the work.
pub(super) struct Injected {
    pub(super) status: Option<u16>,
    pub(super) code: Option<String>,
}

/// What a simulator's work produced, before latency and signing.
pub(super) struct Outcome<T> {
    pub(super) answer: T,
    /// Answered by an injected failure, before any work was done.
    pub(super) injected: bool,
    /// An error answer: non-2xx at WeChat Pay, code ≠ 10000 at Alipay.
    pub(super) error: bool,
}

impl<T> Outcome<T> {
    pub(super) fn done(answer: T, error: bool) -> Self {
        Outcome {
            answer,
            injected: false,
            error,
        }
    }

    pub(super) fn injected(answer: T) -> Self {
        Outcome {
            answer,
            injected: true,
            error: true,
        }
    }
}

/// How one answer is to be signed, decided from the faults and the outcome.
pub(super) struct Signing {
    /// False: the answer goes out with no signature at all (`fail_unsigned`).
    pub(super) sign: bool,
    pub(super) tamper: bool,
    /// WeChat Pay: name the platform certificate's serial.
    pub(super) with_certificate: bool,
}

impl Signing {
    /// The base64 signature of `msg`, tampered when asked; `None` for an unsigned answer.
    pub(super) fn signature(&self, signer: &RsaSigner, msg: &[u8]) -> Option<String> {
        if !self.sign {
            return None;
        }
        let sig = signer.sign_b64(msg);
        Some(if self.tamper { tamper(&sig) } else { sig })
    }
}

/// Orders and create-call counts, keyed by (account, out_trade_no).
pub(super) type Orders<O> = DashMap<(String, String), O>;

pub struct Sandbox {
    /// WeChat Pay: (mchid, certificate serial) → the merchant's public key.
    pub(super) merchants: ArcSwap<HashMap<(String, String), RsaVerifier>>,
    /// WeChat Pay: mchid (the signing one: `sp_mchid` in partner mode) → APIv3 key.
    pub(super) apiv3_keys: ArcSwap<HashMap<String, Secret>>,
    /// By (mchid, or `mchid/sub_mchid` in partner mode; out_trade_no).
    pub(super) orders: Orders<wechat::Order>,
    /// Create requests that passed the signature check, by the same key as `orders`.
    pub(super) wechat_creates: Orders<u32>,
    /// Queries that found their order, by the same key.
    pub(super) wechat_queries: Orders<u32>,
    pub(super) alipay_apps: ArcSwap<HashMap<String, RsaVerifier>>,
    /// ISV: each granted `app_auth_token` (exposed) → the seller id it acts for.
    pub(super) alipay_grants: ArcSwap<HashMap<String, String>>,
    /// By (seller: the seller id an app_auth_token acts for, or the app_id in direct mode;
    /// out_trade_no).
    pub(super) alipay_orders: Orders<alipay::AliOrder>,
    /// Create requests that passed the signature check, by the same key as `alipay_orders`.
    pub(super) alipay_creates: Orders<u32>,
    /// Queries that found their order, by the same key.
    pub(super) alipay_queries: Orders<u32>,
    pub(super) alipay_signer: RsaSigner,
    pub(super) faults: Mutex<Faults>,
    pub(super) signer: RsaSigner,
    pub(super) cert_serial: String,
    pub(super) counter: AtomicU64,
    pub(super) notifier: Arc<Notifier>,
    /// `X-Request-Id`s of the provider calls (not `/sandbox/*`), newest last, bounded.
    pub(super) request_ids: Mutex<std::collections::VecDeque<String>>,
}

/// Provider-call request ids kept for `GET /sandbox/request_ids`.
const KEPT_REQUEST_IDS: usize = 1_000;

pub(super) type Answer = Response<Full<Bytes>>;

impl Sandbox {
    pub fn new(merchants: Vec<SandboxMerchant>) -> Arc<Sandbox> {
        Sandbox::with_transport(merchants, Arc::new(notify::HttpTransport::default()))
    }

    /// A sandbox whose notifications go through `transport` (tests substitute their own).
    pub fn with_transport(
        merchants: Vec<SandboxMerchant>,
        transport: Arc<dyn notify::Transport>,
    ) -> Arc<Sandbox> {
        let signer =
            RsaSigner::from_text(PLATFORM_KEY_PEM).expect("the bundled sandbox key parses");
        let cert = Certificate::from_pem(PLATFORM_CERT_PEM)
            .expect("the bundled sandbox certificate parses");
        let sb = Sandbox {
            merchants: ArcSwap::from_pointee(HashMap::new()),
            apiv3_keys: ArcSwap::from_pointee(HashMap::new()),
            orders: DashMap::new(),
            wechat_creates: DashMap::new(),
            wechat_queries: DashMap::new(),
            alipay_apps: ArcSwap::from_pointee(HashMap::new()),
            alipay_grants: ArcSwap::from_pointee(HashMap::new()),
            alipay_orders: DashMap::new(),
            alipay_creates: DashMap::new(),
            alipay_queries: DashMap::new(),
            alipay_signer: RsaSigner::from_text(ALIPAY_KEY_PEM)
                .expect("the bundled sandbox Alipay key parses"),
            faults: Mutex::new(Faults::default()),
            request_ids: Mutex::new(std::collections::VecDeque::new()),
            signer,
            cert_serial: cert.serial,
            counter: AtomicU64::new(1),
            notifier: Notifier::new(transport),
        };
        sb.set_merchants(merchants);
        Arc::new(sb)
    }

    /// Replaces the accepted merchant keys and Alipay grants (after a config reload: a
    /// refreshed token replaces the old one).
    pub fn set_merchants(&self, merchants: Vec<SandboxMerchant>) {
        let (mut wechat, mut alipay) = (HashMap::new(), HashMap::new());
        let mut grants = HashMap::new();
        let mut apiv3_keys = HashMap::new();
        for m in merchants {
            match m {
                SandboxMerchant::Wechat {
                    mchid,
                    serial_no,
                    key,
                    apiv3_key,
                } => {
                    if let Some(k) = apiv3_key {
                        apiv3_keys.entry(mchid.clone()).or_insert(k);
                    }
                    wechat.insert((mchid, serial_no), key);
                }
                SandboxMerchant::Alipay { app_id, key } => {
                    alipay.insert(app_id, key);
                }
                SandboxMerchant::AlipayGrant {
                    app_auth_token,
                    seller_id,
                } => {
                    grants.insert(app_auth_token.expose().to_string(), seller_id);
                }
            }
        }
        self.merchants.store(Arc::new(wechat));
        self.apiv3_keys.store(Arc::new(apiv3_keys));
        self.alipay_apps.store(Arc::new(alipay));
        self.alipay_grants.store(Arc::new(grants));
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
        // Answered as a provider would: a system error the client may retry.
        let refuse: crate::server::Refuse = Arc::new(|r| {
            let status = match r {
                crate::server::Refusal::TimedOut => http::StatusCode::GATEWAY_TIMEOUT,
                _ => http::StatusCode::SERVICE_UNAVAILABLE,
            };
            crate::server::json_response(
                status,
                &serde_json::json!({"code": "SYSTEM_ERROR", "message": format!("sandbox: {r:?}")}),
            )
        });
        let tls = tls.as_ref().map(crate::server::TlsSource::new);
        crate::server::serve(listener, tls, handler, shutdown, Default::default(), refuse).await;
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
        if seg.first() != Some(&"sandbox") {
            if let Some(id) = parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
            {
                let mut ids = self.request_ids.lock().unwrap_or_else(|p| p.into_inner());
                if ids.len() == KEPT_REQUEST_IDS {
                    ids.pop_front();
                }
                ids.push_back(id.to_string());
            }
        }
        match (&parts.method, seg.as_slice()) {
            (&Method::POST, ["sandbox", "pay", no]) => {
                self.pay(&crate::server::decode(no), parts.uri.query())
            }
            (&Method::GET, ["sandbox", "request_ids"]) => {
                let ids = self.request_ids.lock().unwrap_or_else(|p| p.into_inner());
                plain(StatusCode::OK, json!(*ids))
            }
            (&Method::GET, ["sandbox", "notifications"]) => {
                plain(StatusCode::OK, json!(self.notifier.attempts()))
            }
            (&Method::GET, ["sandbox", "orders", no]) => {
                self.orders_json(&crate::server::decode(no))
            }
            (&Method::POST, ["sandbox", "faults"]) => {
                match serde_json::from_slice::<Faults>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|f| f.check().map(|()| f))
                {
                    Ok(f) => {
                        *self.faults() = f.clone();
                        plain(StatusCode::OK, json!(f))
                    }
                    Err(e) => plain(
                        StatusCode::BAD_REQUEST,
                        json!({"code":"PARAM_ERROR","message":e}),
                    ),
                }
            }
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

    /// The faults; the one place that gets past a poisoned lock (nothing panics under it).
    pub(super) fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one injected failure for `op` if one is due. The check and the decrement are one
    /// critical section, so concurrent requests never take more failures than `fail_next`.
    /// With `fail_ops` set, only those operations take (and consume) failures; a request of
    /// no known operation (`op` None) then takes none.
    pub(super) fn take_failure(&self, op: Option<Op>) -> Option<Injected> {
        let mut f = self.faults();
        if f.fail_next == 0 {
            return None;
        }
        if let Some(ops) = &f.fail_ops {
            let op = op?;
            if !ops.iter().any(|o| Op::from_name(o) == Some(op)) {
                return None;
            }
        }
        f.fail_next -= 1;
        Some(Injected {
            status: f.fail_status,
            code: f.fail_code.clone(),
        })
    }

    /// The path every simulated API answer takes: the work (signature check, injected
    /// failure or the real work), then the injected latency — after the work, as a real late
    /// answer comes after the provider acted, which is what makes a timeout dangerous — then
    /// the signature as the faults say, then `Retry-After` on an injected failure.
    pub(super) async fn respond<T>(
        &self,
        work: impl FnOnce(&Faults) -> Outcome<T>,
        finish: impl FnOnce(T, &Signing) -> Answer,
    ) -> Answer {
        let faults = self.faults().clone();
        let out = work(&faults);
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let signing = Signing {
            sign: !(out.injected && faults.fail_unsigned),
            tamper: faults.tamper_signature || (faults.tamper_errors && out.error),
            with_certificate: faults.sign_with_certificate,
        };
        let mut resp = finish(out.answer, &signing);
        if let (true, Some(secs)) = (out.injected, faults.retry_after_secs) {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }

    /// Starts delivering a notification as the faults planned.
    pub(super) fn notify(&self, n: Notification, plan: Plan) {
        self.notifier.dispatch(n, plan);
    }

    pub(super) fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks every open order with this out_trade_no paid (or only `?mchid=`'s); with
    /// `?late=true`, closed unpaid ones too.
    pub(super) fn pay(&self, no: &str, query: Option<&str>) -> Answer {
        let only = query.and_then(|q| query_param(&format!("?{q}"), "mchid"));
        let late = query
            .and_then(|q| query_param(&format!("?{q}"), "late"))
            .as_deref()
            == Some("true");
        let faults = self.faults().clone();
        let mut paid = Vec::new();
        let mut notes = Vec::new();
        for mut o in self.orders.iter_mut() {
            if o.key().1 != no || only.as_deref().is_some_and(|m| m != o.mchid()) {
                continue;
            }
            let n = self.next_id();
            if late {
                o.reopen_closed();
            }
            if o.mark_paid(n) {
                notes.push(self.wechat_payment_notification(&o, &faults));
            }
            paid.push(self.wechat_view(o.key(), &o));
        }
        if only.is_none() {
            for mut o in self.alipay_orders.iter_mut() {
                if o.key().1 == no {
                    let n = self.next_id();
                    if late {
                        o.reopen_closed();
                    }
                    if o.mark_paid(n) {
                        notes.push(self.alipay_notification(&o, None));
                    }
                    paid.push(self.alipay_view(o.key(), &o));
                }
            }
        }
        // Sent once no order is locked any more.
        for n in notes.into_iter().flatten() {
            self.notify(n, faults.plan());
        }
        if paid.is_empty() {
            return plain(
                StatusCode::NOT_FOUND,
                json!({"code":"ORDER_NOT_EXIST","message":"no open order with that out_trade_no"}),
            );
        }
        plain(StatusCode::OK, json!({ "orders": paid }))
    }

    /// `GET /sandbox/orders/{no}`: every order with this out_trade_no at any account.
    fn orders_json(&self, no: &str) -> Answer {
        let mut found: Vec<Value> = self
            .orders
            .iter()
            .filter(|o| o.key().1 == no)
            .map(|o| self.wechat_view(o.key(), &o))
            .collect();
        found.extend(
            self.alipay_orders
                .iter()
                .filter(|o| o.key().1 == no)
                .map(|o| self.alipay_view(o.key(), &o)),
        );
        plain(StatusCode::OK, json!({ "orders": found }))
    }

    pub(super) fn wechat_view(&self, key: &(String, String), o: &wechat::Order) -> Value {
        let mut v = o.view();
        v["create_calls"] = json!(self.wechat_creates.get(key).map_or(0, |n| *n));
        v["query_calls"] = json!(self.wechat_queries.get(key).map_or(0, |n| *n));
        v
    }

    pub(super) fn alipay_view(&self, key: &(String, String), o: &alipay::AliOrder) -> Value {
        let mut v = o.view();
        v["create_calls"] = json!(self.alipay_creates.get(key).map_or(0, |n| *n));
        v["query_calls"] = json!(self.alipay_queries.get(key).map_or(0, |n| *n));
        v
    }
}

/// Counts one call (a create, a query) for (account, out_trade_no).
pub(super) fn count_call(calls: &Orders<u32>, account: &str, no: &str) {
    *calls
        .entry((account.to_string(), no.to_string()))
        .or_insert(0) += 1;
}

/// Changes one base64 character so the signature no longer verifies but still decodes.
pub(super) fn tamper(sig: &str) -> String {
    let mut chars: Vec<char> = sig.chars().collect();
    if let Some(c) = chars.get_mut(10) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

pub(super) fn query_param(path_and_query: &str, name: &str) -> Option<String> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(super) fn plain(status: StatusCode, body: Value) -> Answer {
    crate::server::json_response(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(sb: &Sandbox, faults: Value) {
        let f: Faults = serde_json::from_value(faults).unwrap();
        f.check().unwrap();
        *sb.faults() = f;
    }

    /// Concurrent takers never get more failures than `fail_next` between them.
    #[test]
    fn fail_next_is_taken_atomically() {
        for (fail_next, takers) in [(1u32, 16usize), (3, 16), (0, 8)] {
            let sb = Sandbox::new(Vec::new());
            set(&sb, json!({ "fail_next": fail_next }));
            let barrier = Arc::new(std::sync::Barrier::new(takers));
            let handles: Vec<_> = (0..takers)
                .map(|_| {
                    let (sb, barrier) = (sb.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        (0..4)
                            .filter(|_| sb.take_failure(Some(Op::Create)).is_some())
                            .count()
                    })
                })
                .collect();
            let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(taken, fail_next as usize);
            assert_eq!(sb.faults().fail_next, 0);
        }
    }

    #[test]
    fn fail_ops_limits_which_operations_take_failures() {
        let sb = Sandbox::new(Vec::new());
        set(
            &sb,
            json!({ "fail_next": 1, "fail_ops": ["refund"], "fail_status": 503, "fail_code": "X" }),
        );
        assert!(sb.take_failure(Some(Op::Create)).is_none());
        assert!(sb.take_failure(Some(Op::RefundQuery)).is_none());
        assert!(sb.take_failure(None).is_none(), "an unknown API takes none");
        assert_eq!(sb.faults().fail_next, 1, "not consumed by other operations");
        let f = sb
            .take_failure(Some(Op::Refund))
            .expect("a refund takes it");
        assert_eq!((f.status, f.code.as_deref()), (Some(503), Some("X")));
        assert!(sb.take_failure(Some(Op::Refund)).is_none());

        // Without fail_ops every request takes one, even of an unknown API.
        set(&sb, json!({ "fail_next": 2 }));
        assert!(sb.take_failure(None).is_some());
        assert!(sb.take_failure(Some(Op::Query)).is_some());
        assert!(sb.take_failure(Some(Op::Query)).is_none());
    }

    #[test]
    fn faults_reject_unknown_knobs_and_operations() {
        assert!(serde_json::from_value::<Faults>(json!({ "fail_nxet": 1 })).is_err());
        let f: Faults = serde_json::from_value(json!({ "fail_ops": ["create", "pay"] })).unwrap();
        assert!(f.check().unwrap_err().contains("pay"));
        let all = json!({
            "latency_ms": 5, "tamper_signature": false, "fail_next": 2, "fail_status": 500,
            "fail_code": "SYSTEM_ERROR", "sign_with_certificate": false,
            "fail_ops": ["create", "query", "close", "refund", "refund_query"],
            "fail_unsigned": true, "tamper_errors": true, "retry_after_secs": 3,
            "refund_status": "ABNORMAL", "alipay_refund_pending": true,
            "drop_notifications": true, "duplicate_notifications": true, "notify_delay_ms": 9,
        });
        let f: Faults = serde_json::from_value(all.clone()).unwrap();
        f.check().unwrap();
        assert_eq!(json!(f), all);
    }

    #[tokio::test]
    async fn injected_failures_can_go_unsigned_with_retry_after() {
        let sb = Sandbox::new(Vec::new());
        set(&sb, json!({ "retry_after_secs": 7, "fail_unsigned": true }));
        let failed = sb
            .respond(
                |_| Outcome::injected((StatusCode::SERVICE_UNAVAILABLE, json!({"code": "X"}))),
                |(status, body), signing| sb.signed(status, body, signing),
            )
            .await;
        assert_eq!(failed.headers()["retry-after"], "7");
        assert!(failed
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("wechatpay-")));
        // A real error is signed, and carries no Retry-After.
        let real = sb
            .respond(
                |_| Outcome::done((StatusCode::NOT_FOUND, json!({"code": "X"})), true),
                |(status, body), signing| sb.signed(status, body, signing),
            )
            .await;
        assert!(real.headers().get("retry-after").is_none());
        assert_eq!(
            real.headers()["wechatpay-signature-type"],
            "WECHATPAY2-SHA256-RSA2048"
        );
    }
}
