//! The shop's webhook endpoint: records every request, answers as the test says.

use super::*;

/// One request the shop's webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub raw: String,
    pub body: Value,
    pub signature: String,
    /// Its `X-Request-Id` header, if any.
    pub request_id: Option<String>,
    /// What the receiver answered.
    pub status: u16,
    /// When it arrived (not when it was answered: an answer may be held back).
    pub arrived: std::time::Instant,
}

impl Received {
    /// `Payroute-Signature` is `t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<raw body>")>`: checked
    /// here the way a shop would, from the header alone.
    pub fn signature_verifies(&self) -> bool {
        let Some((t, _)) = self
            .signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(','))
        else {
            return false;
        };
        let Ok(t) = t.parse::<i64>() else {
            return false;
        };
        payroute::webhooks::signature(WEBHOOK_SECRET.as_bytes(), t, self.raw.as_bytes())
            == self.signature
    }
}

/// A shop's webhook endpoint on 127.0.0.1:0 that records every request and answers with a
/// status the test sets (200 unless told otherwise).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<std::sync::Mutex<Vec<Received>>>,
    answer: Arc<std::sync::atomic::AtomicU16>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Requests that arrived, answered or not yet.
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/payroute/events", listener.local_addr().unwrap());
        let rx = Receiver {
            url,
            got: Arc::default(),
            answer: Arc::new(std::sync::atomic::AtomicU16::new(200)),
            delay_ms: Arc::default(),
            arrived: Arc::default(),
        };
        let me = rx.clone();
        let handler = move |req: Request<hyper::body::Incoming>, _peer| {
            let me = me.clone();
            async move {
                let signature = req
                    .headers()
                    .get("payroute-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let arrived = std::time::Instant::now();
                let raw = req.into_body().collect().await.unwrap().to_bytes();
                let raw = String::from_utf8_lossy(&raw).into_owned();
                me.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The answer is decided on arrival: a stalled request answered later is not
                // counted as accepted because the shop came back meanwhile.
                let status = me.answer.load(std::sync::atomic::Ordering::SeqCst);
                let delay = me.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                me.got.lock().unwrap().push(Received {
                    body: serde_json::from_str(&raw).unwrap_or(Value::Null),
                    raw,
                    signature,
                    request_id,
                    status,
                    arrived,
                });
                let mut resp = http::Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                resp
            }
        };
        tokio::spawn(payroute::server::serve(
            listener,
            None,
            handler,
            std::future::pending(),
            Default::default(),
            std::sync::Arc::new(payroute::api::error::refusal),
        ));
        rx
    }

    /// From now on answer every delivery that arrives with `status` (500: the shop is down).
    pub fn answer_with(&self, status: u16) {
        self.answer
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on answer each delivery only after `ms` (a slow shop).
    pub fn answer_after(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many requests arrived so far, answered or still held by [`Receiver::answer_after`].
    pub fn arrivals(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request answered so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events the receiver accepted (answered 2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }

    /// How many events of `kind` for the order `out_trade_no` the shop accepted so far.
    pub fn told(&self, kind: &str, out_trade_no: &str) -> usize {
        self.accepted()
            .into_iter()
            .filter(|e| e["type"] == kind && e["data"]["out_trade_no"] == out_trade_no)
            .count()
    }

    /// Waits (with the test deadline) until `accepted()` holds an event of `kind` for the
    /// order `out_trade_no`; returns it.
    pub async fn event(&self, kind: &str, out_trade_no: &str) -> Value {
        let found = || {
            self.accepted()
                .into_iter()
                .find(|e| e["type"] == kind && e["data"]["out_trade_no"] == out_trade_no)
        };
        wait_until(&format!("a {kind} event for {out_trade_no}"), || async {
            found().is_some()
        })
        .await;
        found().unwrap()
    }
}
