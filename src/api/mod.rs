//! The unified API (ARCHITECTURE.md, "The unified API and its errors"): authenticate the shop,
//! check the merchant, validate the body, hand over to `payment`, answer in one JSON shape.

pub mod error;
pub mod types;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use time::OffsetDateTime;

use crate::context;
use crate::live::{Live, LiveConfig};
use crate::payment::view::refund_json;
use crate::payment::{Asker, CreateOutcome, PaymentService, RefundOutcome};
use crate::resilience::Resilience;
use crate::server::{decode, ClientCertificate, Refusal};
use crate::shops::Shop;
use error::{ApiError, ErrorCode};

/// Buckets of `payroute_overhead_seconds`: payroute's own share of a request is mostly well
/// under the 1 ms where the latency buckets start.
pub const OVERHEAD_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The API's routes, as their metrics and access-log lines name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    CreatePayment,
    OpenApi,
    Notify,
    GetPayment,
    ClosePayment,
    CreateRefund,
    GetRefund,
    Other,
}

const ROUTES: usize = 8;
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The listeners whose refusals are counted (`payroute_http_refused_total{listener}`).
pub const API_LISTENER: &str = "api";
pub const ADMIN_LISTENER: &str = "admin";

impl Route {
    const ALL: [Route; ROUTES] = [
        Route::CreatePayment,
        Route::OpenApi,
        Route::Notify,
        Route::GetPayment,
        Route::ClosePayment,
        Route::CreateRefund,
        Route::GetRefund,
        Route::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Route::CreatePayment => "create_payment",
            Route::OpenApi => "openapi",
            Route::Notify => "notify",
            Route::GetPayment => "get_payment",
            Route::ClosePayment => "close_payment",
            Route::CreateRefund => "create_refund",
            Route::GetRefund => "get_refund",
            Route::Other => "other",
        }
    }
}

/// One route's series, looked up in their vectors on first use only: `with_label_values`
/// hashes the labels and takes a lock on every call. The request counters exist from the
/// start, at 0 (see [`ApiMetrics::new`]); the histograms appear with a route's first request.
#[derive(Default)]
struct RouteSeries {
    requests: [OnceLock<IntCounter>; 5],
    duration: OnceLock<Histogram>,
    overhead: OnceLock<Histogram>,
}

/// HTTP metrics of the API listener.
pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    overhead: HistogramVec,
    refused: IntCounterVec,
    series: [RouteSeries; ROUTES],
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<ApiMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "payroute_http_requests_total",
                "API requests by route and status class.",
            ),
            &["route", "status_class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "payroute_http_request_duration_seconds",
                "API request latency by route.",
            )
            .buckets(crate::LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "payroute_overhead_seconds",
                "Time spent in payroute itself per API request: the request's latency minus \
                 its waits on channels (the wire and retry backoff).",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["route"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "payroute_http_refused_total",
                "Requests the listener answered itself: shed at max_in_flight, past \
                 request_timeout, or a failed handler.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        // Counters start at 0 for every route and reason, so that a panel shows 0 and a
        // rate() alert sees the first error rather than a series born with it. The latency
        // histograms do not: with no request there is no latency to show.
        for route in Route::ALL {
            for class in STATUS_CLASSES {
                requests.with_label_values(&[route.as_str(), class]);
            }
        }
        for listener in [API_LISTENER, ADMIN_LISTENER] {
            for r in Refusal::ALL {
                refused.with_label_values(&[listener, refusal_reason(r)]);
            }
        }
        Ok(ApiMetrics {
            requests,
            duration,
            overhead,
            refused,
            series: Default::default(),
        })
    }

    /// Counts one answered request of `route`.
    fn observe(&self, route: Route, status: StatusCode, elapsed: Duration, overhead: Duration) {
        let class = usize::from((status.as_u16() / 100).clamp(1, 5) - 1);
        let name = route.as_str();
        let series = &self.series[route as usize];
        series.requests[class]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[name, STATUS_CLASSES[class]])
            })
            .inc();
        series
            .duration
            .get_or_init(|| self.duration.with_label_values(&[name]))
            .observe(elapsed.as_secs_f64());
        series
            .overhead
            .get_or_init(|| self.overhead.with_label_values(&[name]))
            .observe(overhead.as_secs_f64());
    }

    /// The listener's answer to `r`, counted (see [`crate::server::serve`]).
    pub fn refuse(&self, listener: &'static str, r: Refusal) -> Response<Full<Bytes>> {
        self.refused
            .with_label_values(&[listener, refusal_reason(r)])
            .inc();
        error::refusal(r)
    }
}

/// `payroute_http_refused_total{reason}`.
fn refusal_reason(r: Refusal) -> &'static str {
    match r {
        Refusal::Overloaded => "overloaded",
        Refusal::TimedOut => "timed_out",
        Refusal::Failed => "failed",
    }
}

/// What the API needs: the live config, the payment lifecycle, the inbound limits, its metrics.
pub struct ApiState {
    pub live: Arc<LiveConfig>,
    pub payments: Arc<PaymentService>,
    pub resilience: Arc<Resilience>,
    pub metrics: ApiMetrics,
    /// Provider notifications arrive on this listener too (`/notify/{channel}`).
    pub notify: Arc<crate::inbound::Inbound>,
}

/// Entry point for every API request.
pub async fn handle(app: Arc<ApiState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = tokio::time::Instant::now();
    // In-flight requests keep the config they started with, across reloads.
    let live = app.live.load();
    let id = context::request_id_from(
        req.headers()
            .get(context::REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    );
    let ((route, result), waited, mut note) =
        context::scope(id.clone(), route(&app, &live, req)).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            note.outcome = Some(e.code.as_str());
            if let Some(p) = &e.payment {
                note.rule = p["rule"].as_str().map(str::to_string);
                note.channel = p["channel"].as_str().map(str::to_string);
            }
            e.into_response()
        }
    };
    if let Ok(v) = http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert(context::REQUEST_ID, v);
    }
    let elapsed = started.elapsed();
    let overhead = elapsed.saturating_sub(waited);
    app.metrics.observe(route, resp.status(), elapsed, overhead);
    tracing::info!(
        target: "payroute::access",
        request_id = %id,
        route = route.as_str(),
        rule = note.rule.as_deref().unwrap_or("-"),
        channel = note.channel.as_deref().unwrap_or("-"),
        outcome = note.outcome.unwrap_or("-"),
        status = resp.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1e3,
        overhead_ms = overhead.as_secs_f64() * 1e3,
        "request"
    );
    resp
}

type Answer = Result<Response<Full<Bytes>>, ApiError>;

/// The arms that call channels are boxed: a future is as large as its largest arm, and
/// every request's task would otherwise be sized for a create (tens of KiB each, held by
/// every connection with a request in flight).
async fn route(app: &ApiState, live: &Live, req: Request<Incoming>) -> (Route, Answer) {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments[0] == "v1" && !client_certificate_ok(live, &req) {
        return (
            Route::Other,
            Err(ApiError::new(
                ErrorCode::ClientCertificateRequired,
                "server.tls.client_ca is set: connect with a client certificate it issued",
            )),
        );
    }
    match (req.method(), segments.as_slice()) {
        (&Method::POST, ["v1", "payments"]) => {
            (Route::CreatePayment, Box::pin(create(app, live, req)).await)
        }
        (&Method::GET, ["openapi.json"]) => (Route::OpenApi, Ok(openapi())),
        // Providers, not shops: verified by their signatures, answered in their format.
        (&Method::POST, ["notify", channel]) => {
            let channel = decode(channel);
            (
                Route::Notify,
                Ok(Box::pin(app.notify.handle(&channel, req)).await),
            )
        }
        (&Method::GET, ["v1", "payments", merchant, out_trade_no]) => {
            let refresh = query_flag(req.uri().query(), "refresh");
            let (m, o) = (decode(merchant), decode(out_trade_no));
            (
                Route::GetPayment,
                get(app, live, &req, &m, &o, refresh).await,
            )
        }
        (&Method::POST, ["v1", "payments", merchant, out_trade_no, "close"]) => {
            let (m, o) = (decode(merchant), decode(out_trade_no));
            (
                Route::ClosePayment,
                Box::pin(close(app, live, &req, &m, &o)).await,
            )
        }
        (&Method::POST, ["v1", "refunds"]) => (
            Route::CreateRefund,
            Box::pin(create_refund(app, live, req)).await,
        ),
        (&Method::GET, ["v1", "refunds", merchant, out_refund_no]) => {
            let refresh = query_flag(req.uri().query(), "refresh");
            let (m, o) = (decode(merchant), decode(out_refund_no));
            (
                Route::GetRefund,
                Box::pin(get_refund(app, live, &req, &m, &o, refresh)).await,
            )
        }
        (_, ["v1", "payments" | "refunds"])
        | (_, ["v1", "payments" | "refunds", _, _])
        | (_, ["v1", "payments", _, _, "close"]) => (
            Route::Other,
            Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} is not allowed on {path}", req.method()),
            )),
        ),
        _ => (
            Route::Other,
            Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no route for {path}"),
            )),
        ),
    }
}

/// Shops (`/v1/*`) need a verified client certificate when `client_ca` is set; providers
/// (`/notify/*`) share the listener and have none, so the handshake only asks for one. The
/// live config decides ([`Live::client_certificate_required`]), so a reload that adds
/// `client_ca` also holds connections opened before it (they were never asked) to it. A
/// plain connection carries no [`ClientCertificate`]: TLS added by a reload to a listener
/// started plain serves only after a restart, and until then such a connection is refused
/// too (closed, not open, is what ops asked for with `client_ca`).
fn client_certificate_ok(live: &Live, req: &Request<Incoming>) -> bool {
    let asked = live.client_certificate_required();
    match req.extensions().get::<ClientCertificate>() {
        Some(client) => !asked || client.verified,
        None => !asked,
    }
}

/// The shop behind the request.
fn authorize(live: &Live, req: &Request<Incoming>) -> Result<Arc<Shop>, ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let shop = live.config.shops.authenticate(header).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "missing or unknown API key (Authorization: Bearer <key>)",
        )
    })?;
    Ok(shop)
}

/// The shop may act for `merchant`, and neither is over its rate limits.
async fn admit(app: &ApiState, shop: &Shop, merchant: &str) -> Result<(), ApiError> {
    if shop.merchants.contains(merchant) {
        app.resilience.check_inbound(&shop.id, merchant).await?;
        return Ok(());
    }
    Err(ApiError::field(
        ErrorCode::ForbiddenMerchant,
        "merchant_id",
        format!("shop {:?} may not act for merchant {merchant:?}", shop.id),
    ))
}

async fn create(app: &ApiState, live: &Live, req: Request<Incoming>) -> Answer {
    // Authenticate before reading the body: unknown callers get nothing parsed.
    let shop = authorize(live, &req)?;
    let limit = live.config.server.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    let new = types::parse_create(&body, OffsetDateTime::now_utc())?;
    admit(app, &shop, &new.merchant_id).await?;
    Ok(
        match app.payments.create(&live.routes(), &shop.id, new).await? {
            CreateOutcome::Created(rec) => created(false, payment_view(&rec)),
            CreateOutcome::Replayed(rec) => created(true, payment_view(&rec)),
        },
    )
}

async fn get(
    app: &ApiState,
    live: &Live,
    req: &Request<Incoming>,
    merchant: &str,
    out_trade_no: &str,
    refresh: bool,
) -> Answer {
    let shop = authorize(live, req)?;
    admit(app, &shop, merchant).await?;
    let rec = app
        .payments
        .get(
            &live.routes(),
            Asker::Shop(&shop.id),
            merchant,
            out_trade_no,
            refresh,
        )
        .await?;
    Ok(body_response(StatusCode::OK, payment_view(&rec)))
}

async fn close(
    app: &ApiState,
    live: &Live,
    req: &Request<Incoming>,
    merchant: &str,
    out_trade_no: &str,
) -> Answer {
    let shop = authorize(live, req)?;
    admit(app, &shop, merchant).await?;
    let rec = app
        .payments
        .close(
            &live.routes(),
            Asker::Shop(&shop.id),
            merchant,
            out_trade_no,
        )
        .await?;
    Ok(body_response(StatusCode::OK, payment_view(&rec)))
}

async fn create_refund(app: &ApiState, live: &Live, req: Request<Incoming>) -> Answer {
    let shop = authorize(live, &req)?;
    let limit = live.config.server.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    let new = types::parse_refund(&body)?;
    admit(app, &shop, &new.merchant_id).await?;
    Ok(
        match app.payments.refund(&live.routes(), &shop.id, new).await? {
            RefundOutcome::Created(r) => created(false, refund_view(&r)),
            RefundOutcome::Replayed(r) => created(true, refund_view(&r)),
        },
    )
}

async fn get_refund(
    app: &ApiState,
    live: &Live,
    req: &Request<Incoming>,
    merchant: &str,
    out_refund_no: &str,
    refresh: bool,
) -> Answer {
    let shop = authorize(live, req)?;
    admit(app, &shop, merchant).await?;
    let rec = app
        .payments
        .get_refund(
            &live.routes(),
            Asker::Shop(&shop.id),
            merchant,
            out_refund_no,
            refresh,
        )
        .await?;
    Ok(body_response(StatusCode::OK, refund_view(&rec)))
}

/// The OpenAPI 3.1 description of this API, as built into the binary.
const OPENAPI: &str = include_str!("openapi.json");

fn openapi() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A payment's answer, noted for the access log.
fn payment_view(rec: &crate::store::PaymentRecord) -> Bytes {
    context::note(Some(&rec.rule), &rec.channel, rec.status.as_str());
    payment_body(rec)
}

/// A refund's answer, noted for the access log.
fn refund_view(rec: &crate::store::RefundRecord) -> Bytes {
    context::note(None, &rec.channel, rec.status.as_str());
    json_body(&refund_json(rec))
}

/// The payment object, serialised once, straight from the record.
fn payment_body(rec: &crate::store::PaymentRecord) -> Bytes {
    Bytes::from(crate::payment::view::payment_bytes(rec))
}

fn json_body(v: &serde_json::Value) -> Bytes {
    Bytes::from(v.to_string())
}

/// A JSON answer whose body is already serialised.
fn body_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// 201 for a new object; 200 with `Idempotent-Replayed: true` for a replay.
fn created(replayed: bool, body: Bytes) -> Response<Full<Bytes>> {
    if !replayed {
        return body_response(StatusCode::CREATED, body);
    }
    let mut resp = body_response(StatusCode::OK, body);
    resp.headers_mut().insert(
        "Idempotent-Replayed",
        http::HeaderValue::from_static("true"),
    );
    resp
}

async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("reading body: {e}"),
        )),
    }
}

fn query_flag(query: Option<&str>, name: &str) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .any(|(k, v)| k == name && (v == "true" || v == "1"))
}
