//! The admin listener (ARCHITECTURE.md, "The admin listener"): metrics and health for everyone on
//! that port, the rest under `Authorization: Bearer <admin.token>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{json, Value};

use crate::api::error::{ApiError, ErrorCode};
use crate::domain::{EventStatus, Method as PayMethod, PaymentStatus, RefundStatus};
use crate::drains::{check_operator, check_reason, DrainSwitch, DEFAULT_OPERATOR};
use crate::live::LiveConfig;
use crate::payment::export::{parse_time, Format, Selection};
use crate::routing::PaymentFacts;
use crate::secret::token_matches;
use crate::server::json_response;
use crate::store::{
    EventFilter, EventRecord, PaymentFilter, Quotas, RefundFilter, Reports, Resend, StoreError,
};
use crate::stranded::StrandedWatch;
use crate::webhooks::outbox::Outbox;

/// What actually serves, for `/admin/config`: the bound addresses, whether the API listener
/// speaks TLS and whether shops need a client certificate there, the store the process
/// opened (never its url: it may hold a password). `config` is the file as loaded; a key in
/// `pending_restart` differs between the two until a restart.
fn running(live_config: &LiveConfig, live: &crate::live::Live) -> Value {
    let started = live_config.started();
    let (api, admin) = match live_config.bound() {
        Some(b) => (b.api, b.admin),
        None => (started.listen, started.admin_listen),
    };
    let store = match &started.store {
        crate::store::StoreSettings::Sqlite { path } => {
            json!({ "kind": "sqlite", "path": path.display().to_string() })
        }
        crate::store::StoreSettings::Postgres {
            pool_size,
            schema,
            lease,
            ..
        } => {
            json!({ "kind": "postgres", "schema": schema, "pool_size": pool_size, "lease": format!("{lease:?}") })
        }
    };
    json!({
        "started_version": started.version,
        "listen": api.to_string(),
        "admin_listen": admin.to_string(),
        "tls": started.tls,
        "client_certificate_required": live.client_certificate_required(),
        "store": store,
    })
}

/// What the admin port needs: the live config (and its reload), the store's ledgers (read
/// only), the outbox (to resend), the drain switch, the metrics.
pub struct AdminState {
    pub live: Arc<LiveConfig>,
    /// Read for the ledgers, their export and `/readyz`; never written here.
    pub store: Arc<dyn Reports>,
    /// The events' ledger and resends go through it (a resend wakes it).
    pub outbox: Arc<Outbox>,
    /// What accounts have taken of their quotas (`GET /admin/quotas`); read only.
    pub quotas: Arc<dyn Quotas>,
    pub registry: Registry,
    /// Open orders at accounts no channel holds, as judged on load and the last reload.
    pub stranded: Arc<StrandedWatch>,
    /// What creates route by now (health windows, drains), for explain.
    pub signals: Arc<dyn crate::routing::Signals + Send + Sync>,
    /// Drains and resumes channels; `/admin/channels` shows its state.
    pub drains: Arc<DrainSwitch>,
}

impl AdminState {
    /// Ready when the store answers (and can write).
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}

pub async fn handle(app: Arc<AdminState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(&app),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        // The console's files carry no data: it asks for the token and uses /admin/* with it.
        (&Method::GET, "/ui" | "/ui/") => ui(UI_HTML, "text/html; charset=utf-8"),
        (&Method::GET, "/ui/app.js") => ui(UI_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/ui/app.css") => ui(UI_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/readyz") => match app.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => {
                tracing::warn!(error = %e, "not ready");
                text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        },
        (_, p) if p.starts_with("/admin/") => {
            let live = app.live.load();
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match &live.config.admin_token {
                None => {
                    return error(
                        ErrorCode::Forbidden,
                        "no admin.token is configured; the admin API is off",
                    )
                }
                Some(t) if !token_matches(auth, t) => {
                    return error(ErrorCode::Unauthorized, "missing or wrong admin token")
                }
                Some(_) => {}
            }
            match (req.method(), p) {
                (&Method::POST, "/admin/reload") => match app.live.reload(false).await {
                    Ok(version) => json_response(
                        StatusCode::OK,
                        &json!({ "result": "success", "version": version, "pending_restart": app.live.pending_restart(), "stranded": stranded(&app) }),
                    ),
                    Err(e) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({ "result": "error", "errors": e.to_string().lines().collect::<Vec<_>>(), "version": live.config.version }),
                    ),
                },
                (&Method::GET, "/admin/config") => json_response(
                    StatusCode::OK,
                    &json!({
                        "version": live.config.version,
                        "config": live.config.redacted,
                        "running": running(&app.live, &live),
                        "pending_restart": app.live.started().pending_restart(&live.config),
                        "stranded": stranded(&app),
                    }),
                ),
                (&Method::GET, "/admin/channels") => channels(&app),
                (&Method::POST, p)
                    if p.starts_with("/admin/channels/")
                        && (p.ends_with("/drain") || p.ends_with("/resume")) =>
                {
                    let rest = &p["/admin/channels/".len()..];
                    let Some((name, action)) = rest.rsplit_once('/') else {
                        return error(ErrorCode::NotFound, format!("no admin route POST {p}"));
                    };
                    let (name, action) = (crate::server::decode(name), action.to_string());
                    let operator = req
                        .headers()
                        .get(OPERATOR_HEADER)
                        .map(|v| v.to_str().map(str::to_string));
                    let limit = live.config.server.max_body_bytes;
                    let body = match Limited::new(req.into_body(), limit).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return error(ErrorCode::PayloadTooLarge, "body too large"),
                    };
                    switch(&app, &live, &name, &action, operator, &body).await
                }
                (&Method::GET, "/admin/quotas") => quotas(&app).await,
                (&Method::GET, "/admin/payments") => payments(&app, req.uri().query()).await,
                (&Method::GET, "/admin/payments/export") => export(&app, req.uri().query()).await,
                (&Method::GET, "/admin/refunds") => refunds(&app, req.uri().query()).await,
                (&Method::GET, "/admin/events") => events(&app, req.uri().query()).await,
                (&Method::POST, p) if p.starts_with("/admin/events/") && p.ends_with("/resend") => {
                    let id = &p["/admin/events/".len()..p.len() - "/resend".len()];
                    resend(&app, &crate::server::decode(id)).await
                }
                (&Method::POST, "/admin/explain") => {
                    let limit = live.config.server.max_body_bytes;
                    let body = match Limited::new(req.into_body(), limit).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => return error(ErrorCode::PayloadTooLarge, "body too large"),
                    };
                    explain(&app, &body).await
                }
                _ => error(
                    ErrorCode::NotFound,
                    format!("no admin route {} {p}", req.method()),
                ),
            }
        }
        _ => error(ErrorCode::NotFound, format!("no route {path}")),
    }
}

/// The ops console (`/ui`): static files built into the binary, no build step, no CDN.
const UI_HTML: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");
const UI_CSS: &str = include_str!("ui/app.css");

fn ui(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    // Only its own files and the admin API: no inline script, nothing from elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn metrics(app: &AdminState) -> Response<Full<Bytes>> {
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

fn channels(app: &AdminState) -> Response<Full<Bytes>> {
    let live = app.live.load();
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
                "drained": app.drains.get(&c.name).as_ref().map(drain_json),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "version": live.config.version, "channels": list }),
    )
}

/// Names the operator of a drain or resume whose body names none.
const OPERATOR_HEADER: &str = "x-payroute-operator";

/// A drain as the admin API shows it (times RFC 3339, as everywhere here).
fn drain_json(d: &crate::store::DrainRecord) -> Value {
    json!({ "reason": d.reason, "by": d.by, "since": crate::payment::view::rfc3339(d.since_ms) })
}

/// `POST /admin/channels/{name}/drain` `{"reason", "by"?}` and `POST
/// /admin/channels/{name}/resume` `{"by"?}` (an empty body too). The operator is `by`, else the
/// `X-Payroute-Operator` header, else `admin`. A drain of a drained channel replaces its
/// reason (its `since` stays); a resume of one not drained changes nothing. Both answer 200
/// with `was_drained`.
async fn switch(
    app: &AdminState,
    live: &crate::live::Live,
    name: &str,
    action: &str,
    header: Option<Result<String, http::header::ToStrError>>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Drain {
        reason: String,
        by: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Resume {
        by: Option<String>,
    }
    let bad = |m: String| error(ErrorCode::InvalidRequest, m);
    // A removed channel may still hold a stored drain: it can be resumed (cleared), not
    // drained.
    let known = live.config.channels.contains_key(name);
    let header = match header.transpose() {
        Ok(h) => h,
        Err(_) => return bad(format!("{OPERATOR_HEADER} must be visible ASCII")),
    };
    let operator = |by: Option<String>| -> Result<String, String> {
        let by = by
            .or(header)
            .unwrap_or_else(|| DEFAULT_OPERATOR.to_string());
        check_operator(&by).map(|()| by)
    };
    match action {
        "drain" => {
            if !known {
                return error(ErrorCode::NotFound, format!("no channel {name:?}"));
            }
            let d: Drain = match serde_json::from_slice(body) {
                Ok(d) => d,
                Err(e) => {
                    return bad(format!(
                        "body must be {{\"reason\": \"…\", \"by\"?: \"…\"}}: {e}"
                    ))
                }
            };
            if let Err(m) = check_reason(&d.reason) {
                return bad(m);
            }
            let by = match operator(d.by) {
                Ok(by) => by,
                Err(m) => return bad(m),
            };
            match app.drains.drain(name, &d.reason, &by).await {
                Ok(done) => json_response(
                    StatusCode::OK,
                    &json!({ "channel": name, "drained": drain_json(&done.record), "was_drained": done.already }),
                ),
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        "resume" => {
            if !known && app.drains.get(name).is_none() {
                return error(ErrorCode::NotFound, format!("no channel {name:?}"));
            }
            let r: Resume = if body.iter().all(u8::is_ascii_whitespace) {
                Resume::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => return bad(format!("body must be {{\"by\"?: \"…\"}} or empty: {e}")),
                }
            };
            let by = match operator(r.by) {
                Ok(by) => by,
                Err(m) => return bad(m),
            };
            match app.drains.resume(name, &by).await {
                Ok(ended) => json_response(
                    StatusCode::OK,
                    &json!({ "channel": name, "drained": null, "was_drained": ended.is_some(), "ended": ended.as_ref().map(drain_json) }),
                ),
                Err(e) => ApiError::from(e).into_response(),
            }
        }
        _ => error(
            ErrorCode::NotFound,
            format!("no admin route POST /admin/channels/{name}/{action}"),
        ),
    }
}

/// `GET /admin/quotas`: for each channel with a `quota`, each account it holds for the
/// configured merchants (a direct channel: its one account, for its owners; a partner / ISV
/// channel: one per merchant with a sub-merchant id, which is that merchant's account there),
/// what the account has taken today and this month (China calendar) against each limit.
/// Accounts are shown by their ids, never a token.
///
/// # Limits
/// One sum per account (a range scan of its month, see `store::quotas`), one after another.
async fn quotas(app: &AdminState) -> Response<Full<Bytes>> {
    use crate::clock::{china_day_start_ms, china_month_start_ms, now_ms};
    let live = app.live.load();
    let now = now_ms();
    let (day, month) = (china_day_start_ms(now), china_month_start_ms(now));
    let mut merchants: Vec<_> = live.config.merchants.iter().collect();
    merchants.sort_by(|a, b| a.0.cmp(b.0));
    let mut rows = Vec::new();
    for c in live.config.channels.values() {
        let Some(quota) = c.quota else {
            continue;
        };
        // Each account once, with the merchants whose payments it takes.
        let mut accounts: Vec<(crate::domain::Account, Vec<String>)> = Vec::new();
        if c.needs_sub_merchant() {
            for (id, sub) in &merchants {
                let account = c.account(sub);
                if !c.serves(id) || (account.sub_mchid.is_none() && account.seller.is_none()) {
                    continue;
                }
                match accounts.iter_mut().find(|(a, _)| *a == account) {
                    Some((_, ids)) => ids.push(id.to_string()),
                    None => accounts.push((account, vec![id.to_string()])),
                }
            }
        } else {
            let owners = c.owners.iter().flatten().cloned().collect();
            accounts.push((c.account(&Default::default()), owners));
        }
        for (account, merchants) in accounts {
            let used = match app.quotas.quota_used(&account, day, month).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(error = %e, channel = %c.name, "reading quota use");
                    return error(ErrorCode::StoreUnavailable, "store unavailable");
                }
            };
            let period = |limit: Option<u64>, used: u64| json!({ "limit": limit, "used": used, "left": limit.map(|l| l.saturating_sub(used)) });
            rows.push(json!({
                "channel": c.name,
                "account": account,
                "merchants": merchants,
                "daily": period(quota.daily, used.day),
                "monthly": period(quota.monthly, used.month),
                "single": quota.single,
            }));
        }
    }
    let rfc = crate::payment::view::rfc3339;
    json_response(
        StatusCode::OK,
        &json!({
            "version": live.config.version,
            "day_start": rfc(day),
            "month_start": rfc(month),
            "quotas": rows,
        }),
    )
}

/// The parameters every ledger takes: `merchant_id`, `status`, `limit` (1 to 1000, default 100).
struct Listing<S> {
    merchant_id: Option<String>,
    status: Option<S>,
    limit: u32,
}

/// Parses a ledger's query: the common parameters, and those `own` accepts (it answers
/// `None` for a name it does not know). Anything else, or a bad value, is a 400.
fn listing<S>(
    query: Option<&str>,
    parse_status: fn(&str) -> Option<S>,
    mut own: impl FnMut(&str, &str) -> Option<Result<(), ApiError>>,
) -> Result<Listing<S>, ApiError> {
    let mut l = Listing {
        merchant_id: None,
        status: None,
        limit: 100,
    };
    let bad = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "merchant_id" => l.merchant_id = Some(v.into_owned()),
            "status" => match parse_status(&v) {
                Some(s) => l.status = Some(s),
                None => return Err(bad(format!("unknown status {v:?}"))),
            },
            "limit" => match v.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => l.limit = n,
                _ => return Err(bad("limit must be 1 to 1000".into())),
            },
            other => match own(other, &v) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(bad(format!("unknown parameter {other:?}"))),
            },
        }
    }
    Ok(l)
}

/// A ledger's answer: `{"<key>": [items]}`, or 503 when the store cannot be read.
fn ledger<T>(
    key: &str,
    list: Result<Vec<T>, crate::store::StoreError>,
    item: impl Fn(&T) -> Value,
) -> Response<Full<Bytes>> {
    match list {
        Ok(list) => {
            let items: Vec<Value> = list.iter().map(item).collect();
            json_response(StatusCode::OK, &json!({ key: items }))
        }
        Err(e) => {
            tracing::error!(error = %e, ledger = key, "listing from the store");
            error(ErrorCode::StoreUnavailable, "store unavailable")
        }
    }
}

/// `GET /admin/payments?merchant_id=&status=&since=<RFC 3339>&limit=<1..=1000>`.
async fn payments(app: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut since = None;
    let l = match listing(query, PaymentStatus::parse, |k, v| {
        (k == "since").then(|| {
            since = Some(parse_time(v).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidRequest, "since must be an RFC 3339 time")
            })?);
            Ok(())
        })
    }) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let filter = PaymentFilter {
        merchant_id: l.merchant_id,
        status: l.status,
        since,
        limit: l.limit,
        ..PaymentFilter::default()
    };
    ledger("payments", app.store.list_payments(&filter).await, |p| {
        let mut v = crate::payment::view::payment_json(p);
        v["shop_id"] = json!(p.shop_id);
        v["last_error"] = json!(p.error_message);
        v
    })
}

/// Rows one `GET /admin/payments/export` answers at most: the answer is built in memory.
/// `payroute payments export` streams any number.
pub const EXPORT_MAX_ROWS: u64 = 100_000;

/// `GET /admin/payments/export?since=&until=&merchant_id=&format=csv|jsonl` (times RFC 3339):
/// the ledger as a file, newest first, at most [`EXPORT_MAX_ROWS`] rows.
async fn export(app: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut selection = Selection::default();
    let mut format = Format::Csv;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let parsed = match k.as_ref() {
            "since" => parse_time(&v).map(|t| selection.since = Some(t)),
            "until" => parse_time(&v).map(|t| selection.until = Some(t)),
            "merchant_id" => {
                selection.merchant_id = Some(v.to_string());
                Some(())
            }
            "format" => Format::parse(&v).map(|f| format = f),
            other => {
                return error(
                    ErrorCode::InvalidRequest,
                    format!("unknown parameter {other:?}"),
                )
            }
        };
        if parsed.is_none() {
            return error(
                ErrorCode::InvalidRequest,
                format!("{k}: {v:?} is not valid (times are RFC 3339, format csv or jsonl)"),
            );
        }
    }
    let mut body = Vec::new();
    let mut sink = |chunk: &[u8]| {
        body.extend_from_slice(chunk);
        Ok(())
    };
    match crate::payment::export::export(
        app.store.as_ref(),
        &selection,
        format,
        EXPORT_MAX_ROWS,
        &mut sink,
    )
    .await
    {
        Ok(_) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "exporting the ledger");
            error(ErrorCode::StoreUnavailable, "store unavailable")
        }
    }
}

/// `GET /admin/refunds?merchant_id=&status=pending|succeeded|failed|abnormal&limit=<1..=1000>`:
/// the refund ledger, newest first — `abnormal` ones (money left the merchant, did not reach
/// the payer) need ops.
async fn refunds(app: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let l = match listing(query, RefundStatus::parse, |_, _| None) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let filter = RefundFilter {
        merchant_id: l.merchant_id,
        status: l.status,
        limit: l.limit,
    };
    ledger("refunds", app.store.list_refunds(&filter).await, |r| {
        let mut v = crate::payment::view::refund_json(r);
        v["shop_id"] = json!(r.shop_id);
        v["last_error"] = json!(r.error_message);
        v
    })
}

/// `GET /admin/events?status=pending|delivered|dead&merchant_id=&limit=<1..=1000>`: the
/// outbox of shop events, newest first.
async fn events(app: &AdminState, query: Option<&str>) -> Response<Full<Bytes>> {
    let l = match listing(query, EventStatus::parse, |_, _| None) {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let filter = EventFilter {
        merchant_id: l.merchant_id,
        status: l.status,
        limit: l.limit,
    };
    ledger("events", app.outbox.list(&filter).await, event_json)
}

/// `POST /admin/events/{id}/resend`: a dead or delivered event back in the queue, due now,
/// its schedule afresh. A pending one is refused (`409 event_pending`): it is already queued
/// and may be in flight right now, and a resend would start a second delivery beside it.
async fn resend(app: &AdminState, id: &str) -> Response<Full<Bytes>> {
    match app.outbox.resend(id, crate::clock::now_ms()).await {
        Ok(Resend::Resent(e)) => json_response(StatusCode::OK, &event_json(&e)),
        Ok(Resend::Pending(_)) => error(
            ErrorCode::EventPending,
            format!("event {id:?} is pending: it will be delivered on its schedule"),
        ),
        Ok(Resend::Unknown) => error(ErrorCode::NotFound, format!("no event {id:?}")),
        Err(e) => {
            tracing::error!(error = %e, "resending an event");
            error(ErrorCode::StoreUnavailable, "store unavailable")
        }
    }
}

fn event_json(e: &EventRecord) -> Value {
    let rfc = crate::payment::view::rfc3339;
    json!({
        "id": e.event_id,
        "type": e.event_type.as_str(),
        "status": e.status.as_str(),
        "shop_id": e.shop_id,
        "merchant_id": e.merchant_id,
        "payment_id": e.payment_id,
        "attempts": e.attempts,
        "next_attempt_at": rfc(e.next_attempt_at),
        "created_at": rfc(e.created_at),
        "delivered_at": e.delivered_at.map(rfc),
        "last_error": e.last_error,
        "body": serde_json::from_str::<Value>(&e.body).unwrap_or(Value::Null),
    })
}

fn stranded(app: &AdminState) -> Vec<Value> {
    app.stranded.last().iter().map(|g| g.to_json()).collect()
}

/// `POST /admin/explain` `{"merchant_id","method","amount","shop_id"?,"currency"?,
/// "metadata"?,"out_trade_no"?,"china_time"?: "HH:MM"}`.
async fn explain(app: &AdminState, body: &[u8]) -> Response<Full<Bytes>> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(ErrorCode::InvalidRequest, format!("body is not JSON: {e}")),
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let Some(method) = PayMethod::parse(&s("method")) else {
        return error(ErrorCode::InvalidRequest, "method is missing or unknown");
    };
    let max = crate::domain::MAX_AMOUNT;
    let Some(amount) = v["amount"].as_u64().filter(|a| (1..=max).contains(a)) else {
        return error(
            ErrorCode::InvalidAmount,
            format!("amount must be an integer from 1 to {max} (fen), as on create"),
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
        None => crate::clock::china_minute(crate::clock::now_ms()),
        Some(t) => match crate::routing::parse_hhmm(t) {
            Some(m) => m,
            None => return error(ErrorCode::InvalidRequest, "china_time must be HH:MM"),
        },
    };
    let live = app.live.load();
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
    let ex = live.config.rules.explain(&facts, &*app.signals);
    let mut out = explained(&live, &ex);
    if let Err(e) = with_quotas(app, &live, &merchant, amount, &mut out).await {
        tracing::error!(error = %e, "reading quota use for explain");
        return error(ErrorCode::StoreUnavailable, "store unavailable");
    }
    json_response(StatusCode::OK, &out)
}

/// Adds each candidate's quota (used and left today and this month) and, as a create would,
/// passes over the candidates the payment would take over a limit: the first one left is the
/// channel.
async fn with_quotas(
    app: &AdminState,
    live: &crate::live::Live,
    merchant: &str,
    amount: u64,
    out: &mut Value,
) -> Result<(), StoreError> {
    use crate::clock::{china_day_start_ms, china_month_start_ms, now_ms};
    let now = now_ms();
    let (day, month) = (china_day_start_ms(now), china_month_start_ms(now));
    let sub = live
        .config
        .merchants
        .get(merchant)
        .cloned()
        .unwrap_or_default();
    let Some(candidates) = out["candidates"].as_array_mut() else {
        return Ok(());
    };
    let mut order: Vec<String> = Vec::new();
    for c in candidates.iter_mut() {
        let name = c["channel"].as_str().unwrap_or_default().to_string();
        let Some(settings) = live.config.channels.get(&name) else {
            continue;
        };
        let Some(quota) = settings.quota else {
            c["quota"] = Value::Null;
            if c["verdict"] != "skipped" {
                order.push(name);
            }
            continue;
        };
        let used = app
            .quotas
            .quota_used(&settings.account(&sub), day, month)
            .await?;
        let period = |limit: Option<u64>, used: u64| {
            limit.map(|l| json!({ "limit": l, "used": used, "left": l.saturating_sub(used) }))
        };
        let over = quota.single.is_some_and(|l| amount > l)
            || quota
                .daily
                .is_some_and(|l| used.day.saturating_add(amount) > l)
            || quota
                .monthly
                .is_some_and(|l| used.month.saturating_add(amount) > l);
        c["quota"] = json!({
            "daily": period(quota.daily, used.day),
            "monthly": period(quota.monthly, used.month),
            "single": quota.single,
            "over": over,
        });
        if c["verdict"] == "skipped" {
            continue;
        }
        if over {
            c["verdict"] = json!("skipped");
            c["why"] = json!(crate::routing::SkipReason::Quota.as_str());
            c["position"] = Value::Null;
        } else {
            order.push(name);
        }
    }
    for c in candidates.iter_mut() {
        if let Some(i) = order.iter().position(|n| c["channel"] == n.as_str()) {
            c["position"] = json!(i);
            c["verdict"] = json!(if i == 0 { "chosen" } else { "next" });
        }
    }
    // What routing alone said (`text`) did not know quotas: say what they changed.
    let over: Vec<String> = candidates
        .iter()
        .filter(|c| c["why"] == crate::routing::SkipReason::Quota.as_str())
        .filter_map(|c| c["channel"].as_str().map(str::to_string))
        .collect();
    if !over.is_empty() {
        let mut text = out["text"].as_str().unwrap_or_default().to_string();
        for c in &over {
            text.push_str(&format!(
                "  quota: candidate {c:?} skipped: this payment would pass its account's quota\n"
            ));
        }
        text.push_str(&match order.first() {
            Some(c) => format!("→ after quotas: channel {c:?}\n"),
            None => {
                "→ after quotas: no channel left (503 channel_unavailable, nothing sent)\n".into()
            }
        });
        out["text"] = json!(text);
    }
    out["channel"] = json!(order.first());
    out["fallback"] = json!(order.iter().skip(1).collect::<Vec<_>>());
    Ok(())
}

/// An explanation as JSON, with what only the live channels know (their circuit).
fn explained(live: &crate::live::Live, ex: &crate::routing::Explanation<'_>) -> Value {
    let skipped: Vec<Value> = ex
        .skipped
        .iter()
        .map(|(r, why)| json!({ "rule": r, "reason": why }))
        .collect();
    let candidates: Vec<Value> = ex
        .candidates
        .iter()
        .map(|c| {
            let (verdict, why, position) = match c.verdict {
                Ok((i, why)) => (
                    if i == 0 { "chosen" } else { "next" },
                    why.as_str(),
                    Some(i),
                ),
                Err(reason) => ("skipped", reason.as_str(), None),
            };
            json!({
                "channel": c.channel,
                "verdict": verdict,
                "why": why,
                "position": position,
                "health": {
                    "ratio": c.sample.ratio(),
                    "successes": c.sample.successes,
                    "samples": c.sample.samples,
                    "eliminated": c.eliminated,
                },
                "drained": c.drained,
                "circuit": live.channels.get(c.channel).map(|ch| ch.breaker_state()),
                "fee": c.fee,
                "value": c.value,
            })
        })
        .collect();
    let mut out = json!({
        "version": live.config.version,
        "skipped": skipped,
        "candidates": candidates,
        "by": ex.by.map(|b| b.as_str()),
        "text": ex.to_text(),
    });
    match &ex.decision {
        Ok(d) => {
            out["channel"] = json!(d.channel());
            out["rule"] = json!(d.rule_label());
            out["fallback"] = json!(d
                .candidates
                .iter()
                .skip(1)
                .map(|p| p.channel)
                .collect::<Vec<_>>());
        }
        Err(e) => out["no_route"] = json!(e.to_string()),
    }
    out
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

/// Admin errors answer like the API's: `{"error":{"code","message","retryable"}}`.
fn error(code: ErrorCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    ApiError::new(code, message).into_response()
}
