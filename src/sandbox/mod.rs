//! The built-in sandbox provider: faithful-enough WeChat Pay API v3 (`wechat`) and Alipay
//! classic gateway (`alipay`) for local runs, tests and benchmarks.
//!
//! Both check each request's signature with the configured merchant's (or app's) public key,
//! validate the fields of each mode, keep orders and refunds in memory, and sign every answer
//! with their own test key — WeChat Pay answers, errors included, carry `Wechatpay-Serial`,
//! `-Timestamp`, `-Nonce`, `-Signature` and `-Signature-Type: WECHATPAY2-SHA256-RSA2048`, as the
//! official SDKs expect. Every key it holds is TEST-ONLY (`config/sandbox/`).
//!
//! Both simulators answer through one path (`Sandbox::respond`): signature check, then an
//! injected failure if one is due (taken atomically), else the work; then the injected latency
//! (after the work, as a real late answer); then the signature as the faults say.
//!
//! Alipay ISV as at Alipay: each merchant's `app_auth_token` is a grant for its seller
//! ([`SandboxMerchant::AlipayGrant`], from `merchants.<id>.alipay_seller_id`, replaced at each
//! reload); orders are kept by that seller, so a refreshed token reaches the same orders, and
//! an unknown token is refused (`aop.invalid-app-auth-token`).
//!
//! # Test knobs
//! - `POST /sandbox/pay/{out_trade_no}` marks open orders paid (`?mchid=` for one merchant's);
//!   with `?late=true` a closed, never-paid order is paid too (the provider-side race of a
//!   payment taken as the order closed: payroute sees a late payment), and notified as usual.
//! - `GET /sandbox/orders/{out_trade_no}` shows every order with that number at any account:
//!   its fields as stored (`mchid`, `sub_mchid`, `state`, `request` — the create request as
//!   received —, `refunds` as `[no, amount, id, status]` / `[no, amount, status]`, …), plus
//!   `create_calls`, how many create requests that passed the signature check arrived for that
//!   (account, out_trade_no) — duplicates and ones answered `ORDERPAID` /
//!   `ACQ.TRADE_HAS_SUCCESS` included, fault-failed ones not (the fault answers before the
//!   work) —, `query_calls`, the same count of order queries (`GET …/out-trade-no/{no}`,
//!   `alipay.trade.query`) that found the order, and `account`: `{"provider":"wechatpay","mode":"direct"|"partner","mchid",
//!   "sub_mchid"}` or `{"provider":"alipay","app_id","app_auth_token_present"}` (never a token).
//! - `POST /sandbox/faults` replaces the [`Faults`] (unknown fields refused; omitted = off):
//!   `latency_ms`; `tamper_signature` (every answer) and `tamper_errors` (error answers only);
//!   `sign_with_certificate` (WeChat Pay: name the platform certificate's serial); `fail_next`
//!   requests fail with `fail_status` (WeChat Pay, default 500) and `fail_code` (default
//!   `SYSTEM_ERROR` / `ACQ.SYSTEM_ERROR`), only of the operations in `fail_ops` when set
//!   (`create`, `query`, `close`, `refund`, `refund_query`), unsigned with `fail_unsigned`,
//!   with `Retry-After` given `retry_after_secs`; `refund_status` (WeChat Pay refunds created
//!   `PROCESSING` / `ABNORMAL` / `CLOSED` and kept so); `alipay_refund_pending` (refunds
//!   accepted with `fund_change: "N"`, settled by the next refund query);
//!   `drop_notifications` (none sent, as if lost), `duplicate_notifications` (each sent once
//!   more right after its first answered attempt), `notify_delay_ms` (wait before the first
//!   attempt). The notification knobs apply to notifications made while they are set.
//! - `GET /sandbox/notifications` lists every notification attempt, oldest first:
//!   `{"out_trade_no", "out_refund_no" (null for payments), "kind": "payment"|"refund",
//!   "provider": "wechatpay"|"alipay", "url", "attempt" (from 1), "status" (the HTTP status,
//!   or the error text), "answered_ok"}`. `attempt` 0 marks one never sent: `status`
//!   `"dropped"` or `"not sent: …"` (e.g. no APIv3 key).
//! - `GET /sandbox/request_ids` lists the `X-Request-Id` of the latest provider calls (up to
//!   1,000, oldest first): payroute passes the shop's request id on.
//!
//! # Notifications (`notify`)
//! Signed with the same TEST-ONLY keys as the answers, to the `notify_url` of the create
//! request (WeChat Pay refunds: of the refund request; Alipay: optional — none without it):
//! - WeChat Pay, after `POST /sandbox/pay` and after a refund is created settled (`SUCCESS`,
//!   or `ABNORMAL` / `CLOSED` by `refund_status`; `PROCESSING` never settles): a JSON body
//!   `{"id","create_time","resource_type":"encrypt-resource","event_type":
//!   "TRANSACTION.SUCCESS"|"REFUND.SUCCESS"|"REFUND.ABNORMAL"|"REFUND.CLOSED","summary",
//!   "resource":{"original_type","algorithm":"AEAD_AES_256_GCM","ciphertext",
//!   "associated_data","nonce"}}` whose resource is the transaction (as the query answers it)
//!   or the refund, sealed with the merchant's APIv3 key (the `sp_mchid`'s in partner mode,
//!   from [`SandboxMerchant::Wechat`]; no key → not sent) and `associated_data` =
//!   `original_type` (`transaction` / `refund`); headers `Wechatpay-Serial` (public key id,
//!   or the certificate serial with `sign_with_certificate`), `-Timestamp`, `-Nonce`,
//!   `-Signature` over `TS\nNONCE\nBODY\n`, `-Signature-Type`, signed anew at each attempt.
//!   Answered by any 2xx; else retried after 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/
//!   3h/6h/6h.
//! - Alipay, after pay and after a refund settles: an RSA2-signed `trade_status_sync` form
//!   (`sign` over the sorted fields but `sign` and `sign_type`) naming the order's seller as
//!   `seller_id` (ISV: the merchant's; direct: a stable made-up one); a refund adds `out_biz_no`,
//!   `refund_fee` (all refunded so far), `gmt_refund`, and says `TRADE_CLOSED` once the
//!   whole amount is refunded. Answered by the body `success`; else retried after 4m, 10m,
//!   10m, 1h, 2h, 6h, 15h.
//!
//! Each notification is one spawned task on tokio time (tests pause it); each send is
//! bounded by 5 s. Plain HTTP and HTTPS (web roots plus the sandbox's TEST-ONLY CA).
//!
//! # Limits
//! Refund statuses never change by themselves, except a pending Alipay refund, which settles
//! when queried. No automatic payment after a delay yet: orders are paid by
//! `POST /sandbox/pay`. Notification tasks live until answered or their schedule ends.

mod alipay;
pub mod notify;
mod wechat;

use std::collections::HashMap;
use std::net::SocketAddr;
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

use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::secret::Secret;
use crate::server::TlsSettings;
use notify::{Notification, Notifier, Plan};

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
    /// `apiv3_key` (the channel's) encrypts the notification resources sent for this
    /// `mchid`'s orders; without one no WeChat Pay notification is sent.
    Wechat {
        mchid: String,
        serial_no: String,
        key: RsaVerifier,
        apiv3_key: Option<Secret>,
    },
    /// Alipay: `app_id` → the app's public key.
    Alipay { app_id: String, key: RsaVerifier },
    /// Alipay ISV: a merchant's grant to the platform's app — its `app_auth_token` acts for
    /// the seller `seller_id` (the merchant's Alipay user id). A refreshed token maps to the
    /// same seller, so orders (kept by seller) survive it, as at Alipay.
    AlipayGrant {
        app_auth_token: Secret,
        seller_id: String,
    },
}

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
type Orders<O> = DashMap<(String, String), O>;

pub struct Sandbox {
    /// WeChat Pay: (mchid, certificate serial) → the merchant's public key.
    merchants: ArcSwap<HashMap<(String, String), RsaVerifier>>,
    /// WeChat Pay: mchid (the signing one: `sp_mchid` in partner mode) → APIv3 key.
    apiv3_keys: ArcSwap<HashMap<String, Secret>>,
    /// By (mchid, or `mchid/sub_mchid` in partner mode; out_trade_no).
    orders: Orders<wechat::Order>,
    /// Create requests that passed the signature check, by the same key as `orders`.
    wechat_creates: Orders<u32>,
    /// Queries that found their order, by the same key.
    wechat_queries: Orders<u32>,
    alipay_apps: ArcSwap<HashMap<String, RsaVerifier>>,
    /// ISV: each granted `app_auth_token` (exposed) → the seller id it acts for.
    alipay_grants: ArcSwap<HashMap<String, String>>,
    /// By (seller: the seller id an app_auth_token acts for, or the app_id in direct mode;
    /// out_trade_no).
    alipay_orders: Orders<alipay::AliOrder>,
    /// Create requests that passed the signature check, by the same key as `alipay_orders`.
    alipay_creates: Orders<u32>,
    /// Queries that found their order, by the same key.
    alipay_queries: Orders<u32>,
    alipay_signer: RsaSigner,
    faults: Mutex<Faults>,
    signer: RsaSigner,
    cert_serial: String,
    counter: AtomicU64,
    notifier: Arc<Notifier>,
    /// `X-Request-Id`s of the provider calls (not `/sandbox/*`), newest last, bounded.
    request_ids: Mutex<std::collections::VecDeque<String>>,
}

/// Provider-call request ids kept for `GET /sandbox/request_ids`.
const KEPT_REQUEST_IDS: usize = 1_000;

type Answer = Response<Full<Bytes>>;

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
    fn faults(&self) -> MutexGuard<'_, Faults> {
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

    fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks every open order with this out_trade_no paid (or only `?mchid=`'s); with
    /// `?late=true`, closed unpaid ones too.
    fn pay(&self, no: &str, query: Option<&str>) -> Answer {
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

    fn wechat_view(&self, key: &(String, String), o: &wechat::Order) -> Value {
        let mut v = o.view();
        v["create_calls"] = json!(self.wechat_creates.get(key).map_or(0, |n| *n));
        v["query_calls"] = json!(self.wechat_queries.get(key).map_or(0, |n| *n));
        v
    }

    fn alipay_view(&self, key: &(String, String), o: &alipay::AliOrder) -> Value {
        let mut v = o.view();
        v["create_calls"] = json!(self.alipay_creates.get(key).map_or(0, |n| *n));
        v["query_calls"] = json!(self.alipay_queries.get(key).map_or(0, |n| *n));
        v
    }
}

/// Counts one call (a create, a query) for (account, out_trade_no).
fn count_call(calls: &Orders<u32>, account: &str, no: &str) {
    *calls
        .entry((account.to_string(), no.to_string()))
        .or_insert(0) += 1;
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
