//! The admin listener (DESIGN.md §4): metrics and health for everyone on that port, the
//! rest under `Authorization: Bearer <admin.token>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{Encoder, TextEncoder};
use serde_json::{json, Value};

use crate::api::auth::token_matches;
use crate::app::App;
use crate::domain::{Method as PayMethod, PaymentStatus};
use crate::routing::PaymentFacts;
use crate::server::json_response;
use crate::store::PaymentFilter;

pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(&app),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match app.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => {
                tracing::warn!(error = %e, "not ready");
                text(StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n")
            }
        },
        (_, p) if p.starts_with("/admin/") => {
            let live = app.live();
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match &live.config.admin_token {
                None => {
                    return error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "no admin.token is configured; the admin API is off",
                    )
                }
                Some(t) if !token_matches(auth, t) => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "missing or wrong admin token",
                    )
                }
                Some(_) => {}
            }
            match (req.method(), p) {
                (&Method::POST, "/admin/reload") => match app.reload(false).await {
                    Ok(version) => json_response(
                        StatusCode::OK,
                        &json!({ "result": "success", "version": version }),
                    ),
                    Err(e) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({ "result": "error", "errors": e.lines().collect::<Vec<_>>(), "version": live.config.version }),
                    ),
                },
                (&Method::GET, "/admin/config") => json_response(
                    StatusCode::OK,
                    &json!({ "version": live.config.version, "config": live.config.redacted }),
                ),
                (&Method::GET, "/admin/channels") => channels(&app),
                (&Method::GET, "/admin/payments") => payments(&app, req.uri().query()).await,
                (&Method::POST, "/admin/explain") => {
                    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return error(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "payload_too_large",
                                "body too large",
                            )
                        }
                    };
                    explain(&app, &body)
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no admin route {} {p}", req.method()),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {path}"),
        ),
    }
}

fn metrics(app: &App) -> Response<Full<Bytes>> {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&app.registry.gather(), &mut buf) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding metrics: {e}\n"),
        );
    }
    let mut resp = Response::new(Full::new(Bytes::from(buf)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

fn channels(app: &App) -> Response<Full<Bytes>> {
    let live = app.live();
    let list: Vec<Value> = live
        .config
        .channels
        .values()
        .map(|c| {
            json!({
                "name": c.name, "kind": c.kind(), "mode": c.mode(), "family": c.family(),
                "base_url": c.base_url, "timeout_ms": c.timeout.as_millis() as u64,
                "fee_rate_ppm": c.fee.ppm,
                "circuit": live.channels.get(&c.name).map(|ch| ch.breaker_state()),
                "limit": c.limit.map(|l| json!({ "count": l.count, "per_seconds": l.per.as_secs(), "burst": l.burst })),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "version": live.config.version, "channels": list }),
    )
}

/// `GET /admin/payments?merchant_id=&status=&since=<RFC 3339>&limit=<1..=1000>`.
async fn payments(app: &App, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut filter = PaymentFilter {
        limit: 100,
        ..PaymentFilter::default()
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "merchant_id" => filter.merchant_id = Some(v.into_owned()),
            "status" => match PaymentStatus::parse(&v) {
                Some(s) => filter.status = Some(s),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        &format!("unknown status {v:?}"),
                    )
                }
            },
            "since" => match time::OffsetDateTime::parse(
                &v,
                &time::format_description::well_known::Rfc3339,
            ) {
                Ok(t) => filter.since = Some((t.unix_timestamp_nanos() / 1_000_000) as i64),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "since must be an RFC 3339 time",
                    )
                }
            },
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => filter.limit = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "limit must be 1 to 1000",
                    )
                }
            },
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("unknown parameter {other:?}"),
                )
            }
        }
    }
    match app.payments.store().list_payments(&filter).await {
        Ok(list) => {
            let items: Vec<Value> = list
                .iter()
                .map(|p| {
                    let mut v = crate::api::types::payment_json(p);
                    v["shop_id"] = json!(p.shop_id);
                    v["last_error"] = json!(p.error_message);
                    v
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "payments": items }))
        }
        Err(e) => {
            tracing::error!(error = %e, "listing payments");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal_error",
                "store unavailable",
            )
        }
    }
}

/// `POST /admin/explain` `{"merchant_id","method","amount","shop_id"?,"currency"?,
/// "metadata"?,"out_trade_no"?,"china_time"?: "HH:MM"}`.
fn explain(app: &App, body: &[u8]) -> Response<Full<Bytes>> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("body is not JSON: {e}"),
            )
        }
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let Some(method) = PayMethod::parse(&s("method")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "method is missing or unknown",
        );
    };
    let Some(amount) = v["amount"].as_u64().filter(|a| *a > 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_amount",
            "amount must be a positive integer (fen)",
        );
    };
    let metadata: BTreeMap<String, String> = v["metadata"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let china_minute = match v["china_time"].as_str() {
        None => crate::payment::china_minute(crate::payment::now_ms()),
        Some(t) => match crate::routing::parse_hhmm(t) {
            Some(m) => m,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "china_time must be HH:MM",
                )
            }
        },
    };
    let live = app.live();
    let (merchant, shop, currency, out_trade_no) = (
        s("merchant_id"),
        s("shop_id"),
        s("currency"),
        s("out_trade_no"),
    );
    let facts = PaymentFacts {
        merchant: &merchant,
        shop: &shop,
        method,
        amount,
        currency: if currency.is_empty() {
            "CNY"
        } else {
            &currency
        },
        metadata: &metadata,
        out_trade_no: &out_trade_no,
        china_minute,
    };
    let ex = live.config.rules.explain(&facts);
    let skipped: Vec<Value> = ex
        .skipped
        .iter()
        .map(|(r, why)| json!({ "rule": r, "reason": why }))
        .collect();
    let mut out =
        json!({ "version": live.config.version, "skipped": skipped, "text": ex.to_text() });
    match &ex.decision {
        Ok(d) => {
            out["channel"] = json!(d.channel);
            out["rule"] = json!(d.rule_label());
            out["fallback"] = json!(d.fallback);
        }
        Err(e) => out["no_route"] = json!(e.to_string()),
    }
    json_response(StatusCode::OK, &out)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message, "retryable": false } }),
    )
}
