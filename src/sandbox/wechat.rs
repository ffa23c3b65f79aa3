//! The sandbox's WeChat Pay API v3: signature checks, orders in direct and partner mode,
//! close, refunds, and signed answers.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{query_param, tamper, Answer, Faults, Sandbox, PUBLIC_KEY_ID};
use crate::channel::wechatpay::{china_time, sign};

#[derive(Clone, Debug, Serialize)]
pub(super) struct Order {
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

impl Order {
    pub(super) fn mchid(&self) -> &str {
        &self.mchid
    }

    /// The payer paid: only an open (`NOTPAY`) order can be.
    pub(super) fn mark_paid(&mut self, n: u64) -> bool {
        if self.state != "NOTPAY" {
            return false;
        }
        self.state = "SUCCESS".into();
        self.transaction_id = Some(format!("42000{n:023}"));
        self.success_time = Some(china_time(OffsetDateTime::now_utc()));
        true
    }
}

impl Sandbox {
    /// Answers a `/v3` call. Injected latency comes after the work and before the answer, so
    /// a caller that times out has still created the order — as with the real provider,
    /// which is what makes a timeout dangerous.
    pub(super) async fn v3(
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
        let (status, answer) = self.v3_answer(method, headers, path_and_query, seg, body, &faults);
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        self.signed(status, answer, &faults)
    }

    fn v3_answer(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        path_and_query: &str,
        seg: &[&str],
        body: &[u8],
        faults: &Faults,
    ) -> (StatusCode, Value) {
        let mchid = match self.check_signature(method, headers, path_and_query, body) {
            Ok(m) => m,
            Err(msg) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    json!({"code":"SIGN_ERROR","message":msg}),
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
            return (
                status,
                json!({"code": code, "message": "injected by /sandbox/faults"}),
            );
        }
        match (method, seg) {
            (&Method::POST, ["v3", "pay", "transactions", kind]) => {
                self.create(&mchid, false, kind, body)
            }
            (&Method::POST, ["v3", "pay", "partner", "transactions", kind]) => {
                self.create(&mchid, true, kind, body)
            }
            (&Method::POST, ["v3", "pay", "transactions", "out-trade-no", no, "close"]) => {
                self.close(&mchid, false, &crate::server::decode(no), body)
            }
            (
                &Method::POST,
                ["v3", "pay", "partner", "transactions", "out-trade-no", no, "close"],
            ) => self.close(&mchid, true, &crate::server::decode(no), body),
            (&Method::POST, ["v3", "refund", "domestic", "refunds"]) => self.refund(&mchid, body),
            (&Method::GET, ["v3", "refund", "domestic", "refunds", no]) => {
                let sub = query_param(path_and_query, "sub_mchid");
                self.refund_query(&mchid, sub.as_deref(), &crate::server::decode(no))
            }
            (&Method::GET, ["v3", "pay", "transactions", "out-trade-no", no]) => {
                self.query(&mchid, None, &crate::server::decode(no))
            }
            (&Method::GET, ["v3", "pay", "partner", "transactions", "out-trade-no", no]) => {
                let sub = query_param(path_and_query, "sub_mchid");
                self.query(&mchid, sub.as_deref(), &crate::server::decode(no))
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"no such API in the sandbox"}),
            ),
        }
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
        if now.abs_diff(ts) > sign::MAX_SKEW_SECS {
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

fn order_key(mchid: &str, sub_mchid: Option<&str>) -> String {
    match sub_mchid {
        Some(sub) => format!("{mchid}/{sub}"),
        None => mchid.to_string(),
    }
}
