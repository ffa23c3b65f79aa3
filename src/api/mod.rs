//! The unified API (DESIGN.md §2): authenticate the shop, check the merchant, validate the
//! body, hand over to `payment`, answer in one JSON shape.

pub mod error;
pub mod types;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use time::OffsetDateTime;

use crate::live::{Live, LiveConfig};
use crate::payment::view::refund_json;
use crate::payment::{CreateOutcome, PaymentService, RefundOutcome, Routes};
use crate::resilience::Resilience;
use crate::server::{decode, json_response};
use crate::shops::Shop;
use error::{ApiError, ErrorCode};

/// HTTP metrics of the API listener.
pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(ApiMetrics { requests, duration })
    }
}

/// What the API needs: the live config, the payment lifecycle, the inbound limits, its metrics.
pub struct ApiState {
    pub live: Arc<LiveConfig>,
    pub payments: Arc<PaymentService>,
    pub resilience: Arc<Resilience>,
    pub metrics: ApiMetrics,
    /// Provider notifications arrive on this listener too (`/notify/{channel}`).
    pub notify: Arc<crate::notify::inbound::Inbound>,
}

/// Entry point for every API request.
pub async fn handle(app: Arc<ApiState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = tokio::time::Instant::now();
    // In-flight requests keep the config they started with, across reloads.
    let live = app.live.load();
    let (route, result) = route(&app, &live, req).await;
    let resp = result.unwrap_or_else(ApiError::into_response);
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let m = &app.metrics;
    m.requests.with_label_values(&[route, class]).inc();
    m.duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

type Answer = Result<Response<Full<Bytes>>, ApiError>;

async fn route(app: &ApiState, live: &Live, req: Request<Incoming>) -> (&'static str, Answer) {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::POST, ["v1", "payments"]) => ("create_payment", create(app, live, req).await),
        // Providers, not shops: verified by their signatures, answered in their format.
        (&Method::POST, ["notify", channel]) => {
            let channel = decode(channel);
            ("notify", Ok(app.notify.handle(&channel, req).await))
        }
        (&Method::GET, ["v1", "payments", merchant, out_trade_no]) => {
            let refresh = query_flag(req.uri().query(), "refresh");
            let (m, o) = (decode(merchant), decode(out_trade_no));
            ("get_payment", get(app, live, &req, &m, &o, refresh).await)
        }
        (&Method::POST, ["v1", "payments", merchant, out_trade_no, "close"]) => {
            let (m, o) = (decode(merchant), decode(out_trade_no));
            ("close_payment", close(app, live, &req, &m, &o).await)
        }
        (&Method::POST, ["v1", "refunds"]) => {
            ("create_refund", create_refund(app, live, req).await)
        }
        (&Method::GET, ["v1", "refunds", merchant, out_refund_no]) => {
            let refresh = query_flag(req.uri().query(), "refresh");
            let (m, o) = (decode(merchant), decode(out_refund_no));
            (
                "get_refund",
                get_refund(app, live, &req, &m, &o, refresh).await,
            )
        }
        (_, ["v1", "payments" | "refunds"])
        | (_, ["v1", "payments" | "refunds", _, _])
        | (_, ["v1", "payments", _, _, "close"]) => (
            "other",
            Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} is not allowed on {path}", req.method()),
            )),
        ),
        _ => (
            "other",
            Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no route for {path}"),
            )),
        ),
    }
}

fn routes(live: &Live) -> Routes<'_> {
    Routes {
        rules: &live.config.rules,
        channels: &live.channels,
        merchants: &live.config.merchants,
        public_base_url: &live.config.server.public_base_url,
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
fn admit(app: &ApiState, shop: &Shop, merchant: &str) -> Result<(), ApiError> {
    if shop.merchants.contains(merchant) {
        app.resilience.check_inbound(&shop.id, merchant)?;
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
    admit(app, &shop, &new.merchant_id)?;
    Ok(
        match app.payments.create(&routes(live), &shop.id, new).await? {
            CreateOutcome::Created(rec) => created(false, payment_body(&rec)),
            CreateOutcome::Replayed(rec) => created(true, payment_body(&rec)),
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
    admit(app, &shop, merchant)?;
    let rec = app
        .payments
        .get(&routes(live), merchant, out_trade_no, refresh)
        .await?;
    Ok(body_response(StatusCode::OK, payment_body(&rec)))
}

async fn close(
    app: &ApiState,
    live: &Live,
    req: &Request<Incoming>,
    merchant: &str,
    out_trade_no: &str,
) -> Answer {
    let shop = authorize(live, req)?;
    admit(app, &shop, merchant)?;
    let rec = app
        .payments
        .close(&routes(live), merchant, out_trade_no)
        .await?;
    Ok(body_response(StatusCode::OK, payment_body(&rec)))
}

async fn create_refund(app: &ApiState, live: &Live, req: Request<Incoming>) -> Answer {
    let shop = authorize(live, &req)?;
    let limit = live.config.server.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    let new = types::parse_refund(&body)?;
    admit(app, &shop, &new.merchant_id)?;
    Ok(
        match app.payments.refund(&routes(live), &shop.id, new).await? {
            RefundOutcome::Created(r) => created(false, json_body(&refund_json(&r))),
            RefundOutcome::Replayed(r) => created(true, json_body(&refund_json(&r))),
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
    admit(app, &shop, merchant)?;
    let rec = app
        .payments
        .get_refund(&routes(live), merchant, out_refund_no, refresh)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &crate::payment::view::refund_json(&rec),
    ))
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
