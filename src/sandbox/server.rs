//! The sandbox's listener: its routes and test knobs; provider calls go to the two simulators
//! (`WechatSim`, `AlipaySim`), and `pay` / `orders` reach both through `Simulator`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::alipay::AlipaySim;
use super::notify::{self, Notifier};
use super::settings::SandboxMerchant;
use super::shared::{plain, query_param, Answer, Faults, Shared, Simulator};
use super::wechat::{self, V3Request, WechatSim};
use crate::server::TlsSettings;

/// TEST-ONLY: the sandbox's HTTPS certificate (localhost, 127.0.0.1) and key.
pub const TLS_CERT_PEM: &str = include_str!("../../config/sandbox/tls_server_cert.pem");
pub const TLS_KEY_PEM: &str = include_str!("../../config/sandbox/tls_server_key.pem");
/// TEST-ONLY: the CA that signed [`TLS_CERT_PEM`].
pub const TLS_CA_PEM: &str = include_str!("../../config/sandbox/tls_ca.pem");

pub struct Sandbox {
    pub(super) shared: Arc<Shared>,
    pub(super) wechat: WechatSim,
    pub(super) alipay: AlipaySim,
    /// `X-Request-Id`s of the provider calls (not `/sandbox/*`), newest last, bounded.
    request_ids: Mutex<std::collections::VecDeque<String>>,
    /// Served over TLS (`serve` with TLS): the urls it hands out (statement downloads) are
    /// `https://`.
    https: AtomicBool,
}

/// Provider-call request ids kept for `GET /sandbox/request_ids`.
const KEPT_REQUEST_IDS: usize = 1_000;

impl Sandbox {
    pub fn new(merchants: Vec<SandboxMerchant>) -> Arc<Sandbox> {
        Sandbox::with_transport(merchants, Arc::new(notify::HttpTransport::default()))
    }

    /// A sandbox whose notifications go through `transport` (tests substitute their own).
    pub fn with_transport(
        merchants: Vec<SandboxMerchant>,
        transport: Arc<dyn notify::Transport>,
    ) -> Arc<Sandbox> {
        let shared = Arc::new(Shared::new(Notifier::new(transport)));
        let sb = Sandbox {
            wechat: WechatSim::new(shared.clone()),
            alipay: AlipaySim::new(shared.clone()),
            shared,
            request_ids: Mutex::new(std::collections::VecDeque::new()),
            https: AtomicBool::new(false),
        };
        sb.set_merchants(merchants);
        Arc::new(sb)
    }

    /// Each simulator, in the order `pay` and `orders` list them: the one place that names
    /// both providers.
    fn sims(&self) -> [&dyn Simulator; 2] {
        [&self.wechat, &self.alipay]
    }

    /// Replaces the accepted merchant keys and Alipay grants (after a config reload: a
    /// refreshed token replaces the old one).
    pub fn set_merchants(&self, merchants: Vec<SandboxMerchant>) {
        for sim in self.sims() {
            sim.set_merchants(&merchants);
        }
    }

    /// The platform certificate (PEM), for channels in certificate mode.
    pub fn platform_certificate_pem() -> &'static str {
        wechat::PLATFORM_CERT_PEM
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsSettings>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        self.https.store(tls.is_some(), Ordering::Relaxed);
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
        let base = self.base_url(&parts);
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
                plain(StatusCode::OK, json!(self.shared.notifier.attempts()))
            }
            (&Method::GET, ["sandbox", "orders", no]) => {
                self.orders_json(&crate::server::decode(no))
            }
            (&Method::POST, ["sandbox", "faults"]) => {
                match serde_json::from_slice::<Faults>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|f| f.check().map(|()| f).map_err(|e| e.to_string()))
                {
                    Ok(f) => {
                        *self.shared.faults() = f.clone();
                        plain(StatusCode::OK, json!(f))
                    }
                    Err(e) => plain(
                        StatusCode::BAD_REQUEST,
                        json!({"code":"PARAM_ERROR","message":e}),
                    ),
                }
            }
            (&Method::GET, ["sandbox", "alipay", "bill", "download"]) => {
                let token = query_param(&path_and_query, "token").unwrap_or_default();
                self.alipay.bill_download(&token)
            }
            (_, ["gateway.do"]) => {
                self.alipay
                    .gateway(&parts.method, parts.uri.query(), &body, &base)
                    .await
            }
            (_, ["v3", ..]) => {
                let req = V3Request {
                    method: &parts.method,
                    headers: &parts.headers,
                    base: &base,
                };
                self.wechat.v3(req, &path_and_query, &seg, &body).await
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"no such sandbox route"}),
            ),
        }
    }

    /// `scheme://host[:port]` of the sandbox as this request reached it (its authority, else
    /// its `Host`), for the urls it hands out.
    fn base_url(&self, parts: &http::request::Parts) -> String {
        let scheme = if self.https.load(Ordering::Relaxed) {
            "https"
        } else {
            "http"
        };
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "127.0.0.1".into());
        format!("{scheme}://{host}")
    }

    /// Marks every open order with this out_trade_no paid (or only `?mchid=`'s); with
    /// `?late=true`, closed unpaid ones too.
    pub(super) fn pay(&self, no: &str, query: Option<&str>) -> Answer {
        let only = query.and_then(|q| query_param(&format!("?{q}"), "mchid"));
        let late = query
            .and_then(|q| query_param(&format!("?{q}"), "late"))
            .as_deref()
            == Some("true");
        let faults = self.shared.faults().clone();
        let (mut paid, mut notes) = (Vec::new(), Vec::new());
        for sim in self.sims() {
            let (p, n) = sim.pay(no, only.as_deref(), late, &faults);
            paid.extend(p);
            notes.extend(n);
        }
        // Sent once no order is locked any more.
        for n in notes {
            self.shared.notify(n, faults.plan());
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
        let found: Vec<Value> = self.sims().iter().flat_map(|s| s.orders(no)).collect();
        plain(StatusCode::OK, json!({ "orders": found }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::shared::Outcome;

    #[tokio::test]
    async fn injected_failures_can_go_unsigned_with_retry_after() {
        let sb = Sandbox::new(Vec::new());
        *sb.shared.faults() =
            serde_json::from_value(json!({ "retry_after_secs": 7, "fail_unsigned": true }))
                .unwrap();
        let failed = sb
            .shared
            .respond(
                |_| Outcome::injected((StatusCode::SERVICE_UNAVAILABLE, json!({"code": "X"}))),
                |(status, body), signing| sb.wechat.signed(status, body, signing),
            )
            .await;
        assert_eq!(failed.headers()["retry-after"], "7");
        assert!(failed
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("wechatpay-")));
        // A real error is signed, and carries no Retry-After.
        let real = sb
            .shared
            .respond(
                |_| Outcome::done((StatusCode::NOT_FOUND, json!({"code": "X"})), true),
                |(status, body), signing| sb.wechat.signed(status, body, signing),
            )
            .await;
        assert!(real.headers().get("retry-after").is_none());
        assert_eq!(
            real.headers()["wechatpay-signature-type"],
            "WECHATPAY2-SHA256-RSA2048"
        );
    }
}
