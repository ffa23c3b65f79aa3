//! The sandbox's asynchronous notifications: built by the simulators (`wechat`, `alipay`),
//! delivered here to each order's `notify_url` on the provider's own retry schedule, every
//! attempt recorded for `GET /sandbox/notifications`. Signed with the sandbox's TEST-ONLY keys.
//!
//! One spawned task per notification: wait `notify_delay_ms`, send (each send bounded by
//! [`SEND_TIMEOUT`]), and until the receiver answers as the provider wants — WeChat Pay any
//! 2xx, Alipay the body `success` — wait the next step of the schedule (tokio time, so tests
//! can pause it) and send again. WeChat Pay notifications are signed anew at every attempt
//! (fresh `Wechatpay-Timestamp` / `-Nonce`), so a late retry still passes the clock-skew check;
//! the body, and so its `id` / `notify_id`, stays the same.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::channel::http::{ClientError, HttpClient};
use crate::channel::keys::RsaSigner;
use crate::channel::wechatpay::sign;

/// WeChat Pay's retry schedule after an attempt not answered 2xx.
pub const WECHAT_SCHEDULE_SECS: [u64; 15] = [
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
];
/// Alipay's retry schedule after an attempt not answered `success`.
pub const ALIPAY_SCHEDULE_SECS: [u64; 7] = [240, 600, 600, 3600, 7200, 21600, 54000];
/// Each send, answer included, is bounded by this.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The attempt log keeps this many entries, oldest dropped first.
const LOG_CAP: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Wechatpay,
    Alipay,
}

impl Provider {
    fn schedule(self) -> &'static [u64] {
        match self {
            Provider::Wechatpay => &WECHAT_SCHEDULE_SECS,
            Provider::Alipay => &ALIPAY_SCHEDULE_SECS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Payment,
    Refund,
}

/// How WeChat Pay notifications are signed at each attempt (TEST-ONLY platform key).
#[derive(Clone)]
pub struct WechatSigning {
    pub(super) signer: RsaSigner,
    /// The public key id, or the platform certificate's serial (`sign_with_certificate`).
    pub(super) serial: String,
}

/// Why no request could be made of a notification (recorded as the attempt's status).
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    #[error("bad notify_url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("building the request: {0}")]
    Build(#[source] http::Error),
}

/// One notification, as built by a simulator.
#[derive(Clone)]
pub struct Notification {
    pub(super) provider: Provider,
    pub(super) kind: Kind,
    pub(super) out_trade_no: String,
    pub(super) out_refund_no: Option<String>,
    pub(super) url: String,
    /// The exact body of every attempt.
    pub(super) body: Bytes,
    /// `Some` for WeChat Pay: signature headers are made per attempt.
    pub(super) wechat: Option<WechatSigning>,
}

impl Notification {
    /// The HTTP request of one attempt: WeChat Pay JSON with fresh `Wechatpay-*` headers, or
    /// the Alipay form.
    pub(super) fn request(&self) -> Result<Request<Full<Bytes>>, RequestError> {
        let uri: http::Uri = self.url.parse().map_err(|e| RequestError::Url {
            url: self.url.clone(),
            reason: format!("{e}"),
        })?;
        let mut b = Request::post(uri).header(http::header::USER_AGENT, "Mozilla/4.0");
        match &self.wechat {
            Some(w) => {
                let ts = OffsetDateTime::now_utc().unix_timestamp().to_string();
                let nonce = sign::nonce();
                let signature = w
                    .signer
                    .sign_b64(&sign::response_message(&ts, &nonce, &self.body));
                b = b
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("Wechatpay-Serial", &w.serial)
                    .header("Wechatpay-Timestamp", ts)
                    .header("Wechatpay-Nonce", nonce)
                    .header("Wechatpay-Signature", signature)
                    .header("Wechatpay-Signature-Type", sign::AUTH_SCHEME);
            }
            None => {
                b = b.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded; charset=utf-8",
                );
            }
        }
        b.body(Full::new(self.body.clone()))
            .map_err(RequestError::Build)
    }

    /// Whether the receiver answered as the provider wants: WeChat Pay any 2xx (200 or 204
    /// documented), Alipay the body `success`.
    pub(super) fn answered_ok(&self, status: StatusCode, body: &[u8]) -> bool {
        match self.provider {
            Provider::Wechatpay => status.is_success(),
            Provider::Alipay => {
                status.is_success() && String::from_utf8_lossy(body).trim() == "success"
            }
        }
    }
}

/// The knobs that shape one delivery, taken from the faults when the notification is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plan {
    pub(super) drop: bool,
    pub(super) duplicate: bool,
    pub(super) delay_ms: u64,
}

/// What one send got back.
pub enum Reply {
    Answered { status: StatusCode, body: Bytes },
    Failed(String),
}

/// Sends one attempt. The real one is HTTP; unit tests substitute their own.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, req: Request<Full<Bytes>>) -> Reply;
}

/// hyper-util's pooled client, plain HTTP and HTTPS (web roots plus the sandbox's own
/// TEST-ONLY CA), made on first use.
#[derive(Default)]
pub struct HttpTransport {
    client: OnceLock<Result<HttpClient, ClientError>>,
}

#[async_trait]
impl Transport for HttpTransport {
    async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let client = self
            .client
            .get_or_init(|| HttpClient::new(Some(super::TLS_CA_PEM)));
        let client = match client {
            Ok(c) => c,
            Err(e) => return Reply::Failed(format!("no HTTP client: {e}")),
        };
        match client.send(req, SEND_TIMEOUT).await {
            Ok(r) => Reply::Answered {
                status: r.status,
                body: r.body,
            },
            Err(e) => Reply::Failed(e.to_string()),
        }
    }
}

/// One line of `GET /sandbox/notifications`. `attempt` counts from 1; 0 marks a
/// notification that was not sent at all (`status` says why: `dropped`, or `not sent: …`).
/// The copy `duplicate_notifications` sends numbers on after the answered attempt.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub out_trade_no: String,
    pub out_refund_no: Option<String>,
    pub kind: Kind,
    pub provider: Provider,
    pub url: String,
    pub attempt: u32,
    /// The HTTP status answered, or the error text when there was no answer.
    pub status: Value,
    pub answered_ok: bool,
}

/// Delivers notifications and keeps the log of every attempt.
pub struct Notifier {
    transport: Arc<dyn Transport>,
    log: Mutex<VecDeque<Attempt>>,
}

impl Notifier {
    pub fn new(transport: Arc<dyn Transport>) -> Arc<Notifier> {
        Arc::new(Notifier {
            transport,
            log: Mutex::new(VecDeque::new()),
        })
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.log().iter().cloned().collect()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, VecDeque<Attempt>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, n: &Notification, attempt: u32, status: Value, answered_ok: bool) {
        let mut log = self.log();
        if log.len() >= LOG_CAP {
            log.pop_front();
        }
        log.push_back(Attempt {
            out_trade_no: n.out_trade_no.clone(),
            out_refund_no: n.out_refund_no.clone(),
            kind: n.kind,
            provider: n.provider,
            url: n.url.clone(),
            attempt,
            status,
            answered_ok,
        });
    }

    /// A notification the sandbox would send but cannot (no APIv3 key, …): logged and
    /// recorded with attempt 0.
    pub(super) fn not_sent(&self, n: &Notification, why: &str) {
        tracing::warn!(
            out_trade_no = %n.out_trade_no, provider = ?n.provider,
            "sandbox: notification not sent: {why}"
        );
        self.record(n, 0, json!(format!("not sent: {why}")), false);
    }

    /// Starts delivering `n` in its own task, or records it dropped (`drop_notifications`).
    /// Outside a tokio runtime (plain unit tests) nothing is sent.
    pub(super) fn dispatch(self: &Arc<Self>, n: Notification, plan: Plan) {
        if plan.drop {
            tracing::info!(out_trade_no = %n.out_trade_no, "sandbox: notification dropped (drop_notifications)");
            self.record(&n, 0, json!("dropped"), false);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("sandbox: no runtime, notification not sent");
            return;
        };
        rt.spawn(self.clone().deliver(n, plan));
    }

    /// The delivery loop: delay, then attempts on the provider's schedule until answered as
    /// it wants; with `duplicate`, one more send right after the answered one.
    pub(super) async fn deliver(self: Arc<Self>, n: Notification, plan: Plan) {
        if plan.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
        }
        let mut attempt = 0;
        let mut waits = n.provider.schedule().iter();
        loop {
            attempt += 1;
            match self.attempt(&n, attempt).await {
                Some(true) => break,
                Some(false) => {}
                // The request cannot even be built: no retry will do better.
                None => return,
            }
            match waits.next() {
                Some(secs) => tokio::time::sleep(Duration::from_secs(*secs)).await,
                None => {
                    tracing::warn!(
                        out_trade_no = %n.out_trade_no, attempts = attempt,
                        "sandbox: notification never answered; giving up as the provider does"
                    );
                    return;
                }
            }
        }
        if plan.duplicate {
            self.attempt(&n, attempt + 1).await;
        }
    }

    /// One send, recorded. `Some(answered_ok)`, or `None` when no request could be built.
    async fn attempt(&self, n: &Notification, attempt: u32) -> Option<bool> {
        let req = match n.request() {
            Ok(r) => r,
            Err(e) => {
                self.record(n, attempt, json!(e.to_string()), false);
                return None;
            }
        };
        let reply = match tokio::time::timeout(SEND_TIMEOUT, self.transport.send(req)).await {
            Ok(r) => r,
            Err(_) => Reply::Failed(format!("no answer within {SEND_TIMEOUT:?}")),
        };
        let ok = match reply {
            Reply::Answered { status, body } => {
                let ok = n.answered_ok(status, &body);
                self.record(n, attempt, json!(status.as_u16()), ok);
                ok
            }
            Reply::Failed(e) => {
                self.record(n, attempt, json!(e.to_string()), false);
                false
            }
        };
        Some(ok)
    }
}

/// A random id shaped like a UUID (8-4-4-4-12 lower-case hex), for WeChat Pay's `id`.
pub(super) fn uuid_like() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    let h = crate::ids::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A random 12-character nonce for AEAD_AES_256_GCM (upper-case hex).
pub(super) fn aead_nonce() -> String {
    sign::nonce()[..12].to_string()
}

/// A scripted receiver for unit tests: records every request (with the tokio time it came)
/// and answers from a script, then with the default answer.
#[cfg(test)]
pub(super) mod testing {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use http::{HeaderMap, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use tokio::time::Instant;

    use super::{Reply, Transport};

    pub struct Received {
        pub at: Instant,
        pub uri: String,
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    pub struct Fake {
        pub received: Mutex<Vec<Received>>,
        script: Mutex<VecDeque<(u16, &'static str)>>,
        default: (u16, &'static str),
        arrived: tokio::sync::Notify,
    }

    impl Fake {
        pub fn new(script: &[(u16, &'static str)], default: (u16, &'static str)) -> Fake {
            Fake {
                received: Mutex::new(Vec::new()),
                script: Mutex::new(script.iter().copied().collect()),
                default,
                arrived: tokio::sync::Notify::new(),
            }
        }

        pub fn count(&self) -> usize {
            self.received.lock().unwrap().len()
        }

        /// Waits until `n` requests have arrived, bounded by 8 days of (paused) tokio time:
        /// longer than either provider's whole schedule.
        pub async fn wait_for(&self, n: usize) {
            tokio::time::timeout(Duration::from_secs(8 * 24 * 3600), async {
                loop {
                    let arrived = self.arrived.notified();
                    if self.count() >= n {
                        break;
                    }
                    arrived.await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{} of {n} notifications arrived", self.count()));
        }
    }

    #[async_trait]
    impl Transport for Fake {
        async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("a Full body").to_bytes();
            self.received.lock().unwrap().push(Received {
                at: Instant::now(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            self.arrived.notify_waiters();
            let (status, body) = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(self.default);
            Reply::Answered {
                status: StatusCode::from_u16(status).unwrap(),
                body: Bytes::from_static(body.as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Fake;
    use super::*;

    fn note(provider: Provider, url: &str) -> Notification {
        Notification {
            provider,
            kind: Kind::Payment,
            out_trade_no: "n-1".into(),
            out_refund_no: None,
            url: url.into(),
            body: Bytes::from_static(b"{}"),
            wechat: (provider == Provider::Wechatpay).then(|| WechatSigning {
                signer: RsaSigner::from_text(super::super::wechat::PLATFORM_KEY_PEM).unwrap(),
                serial: super::super::PUBLIC_KEY_ID.into(),
            }),
        }
    }

    fn offsets(fake: &Fake, start: tokio::time::Instant) -> Vec<u64> {
        let r = fake.received.lock().unwrap();
        r.iter().map(|r| (r.at - start).as_secs()).collect()
    }

    /// 500, 500, then 204: sent at 0, 15 s and 30 s, then never again.
    #[tokio::test(start_paused = true)]
    async fn wechat_retries_on_its_schedule_until_a_2xx() {
        let fake = Arc::new(Fake::new(&[(500, ""), (500, "")], (204, "")));
        let notifier = Notifier::new(fake.clone());
        let start = tokio::time::Instant::now();
        notifier.dispatch(
            note(Provider::Wechatpay, "http://127.0.0.1:9/n"),
            Plan::default(),
        );
        fake.wait_for(3).await;
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert_eq!(offsets(&fake, start), [0, 15, 30]);
        let log = notifier.attempts();
        let seen: Vec<_> = log
            .iter()
            .map(|a| (a.attempt, a.status.clone(), a.answered_ok))
            .collect();
        assert_eq!(
            seen,
            [
                (1, json!(500), false),
                (2, json!(500), false),
                (3, json!(204), true)
            ]
        );
        assert_eq!(json!(log[0])["kind"], "payment");
        assert_eq!(json!(log[0])["provider"], "wechatpay");
        assert_eq!(log[0].url, "http://127.0.0.1:9/n");
    }

    /// A receiver that never answers well gets the whole schedule, then no more.
    #[tokio::test(start_paused = true)]
    async fn the_schedules_end() {
        for (provider, schedule) in [
            (Provider::Wechatpay, &WECHAT_SCHEDULE_SECS[..]),
            (Provider::Alipay, &ALIPAY_SCHEDULE_SECS[..]),
        ] {
            // Alipay wants the body `success`: a 200 `fail` is no answer.
            let fake = Arc::new(Fake::new(&[], (200, "fail")));
            let fake = if provider == Provider::Wechatpay {
                Arc::new(Fake::new(&[], (503, "")))
            } else {
                fake
            };
            let notifier = Notifier::new(fake.clone());
            let start = tokio::time::Instant::now();
            notifier.dispatch(note(provider, "http://127.0.0.1:9/n"), Plan::default());
            fake.wait_for(schedule.len() + 1).await;
            tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
            let expected: Vec<u64> = std::iter::once(0)
                .chain(schedule.iter().scan(0, |t, s| {
                    *t += s;
                    Some(*t)
                }))
                .collect();
            assert_eq!(offsets(&fake, start), expected, "{provider:?}");
            assert!(notifier.attempts().iter().all(|a| !a.answered_ok));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn alipay_needs_the_body_success() {
        let fake = Arc::new(Fake::new(
            &[(200, "fail"), (500, "success")],
            (200, " success\n"),
        ));
        let notifier = Notifier::new(fake.clone());
        let start = tokio::time::Instant::now();
        notifier.dispatch(
            note(Provider::Alipay, "http://127.0.0.1:9/n"),
            Plan::default(),
        );
        fake.wait_for(3).await;
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert_eq!(offsets(&fake, start), [0, 240, 840]);
        let r = fake.received.lock().unwrap();
        assert_eq!(r[2].uri, "http://127.0.0.1:9/n");
        assert_eq!(
            r[0].headers["content-type"],
            "application/x-www-form-urlencoded; charset=utf-8"
        );
        assert!(r[0].headers.get("wechatpay-signature").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn drop_sends_nothing_duplicate_sends_twice_delay_waits() {
        let fake = Arc::new(Fake::new(&[], (204, "")));
        let notifier = Notifier::new(fake.clone());
        let dropped = Plan {
            drop: true,
            ..Plan::default()
        };
        notifier.dispatch(note(Provider::Wechatpay, "http://127.0.0.1:9/n"), dropped);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(fake.count(), 0, "dropped: nothing sent");
        let log = notifier.attempts();
        assert_eq!(
            (log.len(), log[0].attempt, &log[0].status),
            (1, 0, &json!("dropped"))
        );

        let start = tokio::time::Instant::now();
        let plan = Plan {
            duplicate: true,
            delay_ms: 2500,
            ..Plan::default()
        };
        notifier.dispatch(note(Provider::Wechatpay, "http://127.0.0.1:9/n"), plan);
        fake.wait_for(2).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let r = fake.received.lock().unwrap();
        assert_eq!(r.len(), 2, "sent twice, no more");
        assert_eq!((r[0].at - start).as_millis(), 2500, "after the delay");
        assert_eq!(r[1].at, r[0].at, "the copy right after the answer");
        assert_eq!(r[0].body, r[1].body, "the same notification");
        assert_ne!(
            r[0].headers["wechatpay-nonce"], r[1].headers["wechatpay-nonce"],
            "signed anew"
        );
        let attempts: Vec<u32> = notifier.attempts()[1..].iter().map(|a| a.attempt).collect();
        assert_eq!(attempts, [1, 2]);
    }

    /// An unusable URL is recorded once and not retried.
    #[tokio::test(start_paused = true)]
    async fn a_bad_url_is_recorded_not_retried() {
        let fake = Arc::new(Fake::new(&[], (204, "")));
        let notifier = Notifier::new(fake.clone());
        notifier.dispatch(note(Provider::Wechatpay, "not a url"), Plan::default());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(fake.count(), 0);
        let log = notifier.attempts();
        assert_eq!(log.len(), 1);
        assert!(log[0].status.as_str().unwrap().contains("bad notify_url"));
    }

    /// The real transport over loopback HTTP (real time): a 204 ends it; a refused
    /// connection is recorded as an error.
    #[tokio::test]
    async fn http_transport_sends_to_a_local_receiver() {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            tx.send((parts, body)).ok();
                            let mut resp = http::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = StatusCode::NO_CONTENT;
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let notifier = Notifier::new(Arc::new(HttpTransport::default()));
        let url = format!("http://{addr}/notify/wx?x=1");
        notifier.dispatch(note(Provider::Wechatpay, &url), Plan::default());
        let (parts, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the receiver got it in time")
            .unwrap();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(
            parts.uri.path_and_query().unwrap().as_str(),
            "/notify/wx?x=1"
        );
        assert_eq!(&body[..], b"{}");
        assert_eq!(parts.headers["wechatpay-signature-type"], sign::AUTH_SCHEME);
        tokio::time::timeout(Duration::from_secs(10), async {
            while notifier.attempts().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        let a = &notifier.attempts()[0];
        assert_eq!(
            (a.attempt, &a.status, a.answered_ok),
            (1, &json!(204), true)
        );

        // Nothing listens there (the port was just released): an error, recorded.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let notifier = Notifier::new(Arc::new(HttpTransport::default()));
        let n = note(Provider::Alipay, &format!("http://127.0.0.1:{port}/n"));
        assert_eq!(notifier.attempt(&n, 1).await, Some(false));
        let a = &notifier.attempts()[0];
        assert!(a.status.is_string() && !a.answered_ok, "{a:?}");
    }
}
