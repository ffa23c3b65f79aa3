//! The sandbox's WeChat Pay API v3: signature checks, orders in direct and partner mode,
//! close, refunds, and signed answers.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::notify::{self, Kind, Notification, Provider, WechatSigning};
use super::{
    count_call, query_param, Answer, Faults, Op, Outcome, Sandbox, Signing, PUBLIC_KEY_ID,
};
use crate::channel::wechatpay::{china_time, sign};

#[derive(Clone, Debug, serde::Serialize)]
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
    /// Refunds of this order, each shown as `[out_refund_no, amount, refund_id, status]`.
    refunds: Vec<Refund>,
}

#[derive(Clone, Debug)]
struct Refund {
    out_refund_no: String,
    amount: u64,
    refund_id: String,
    /// `SUCCESS`, or what `Faults::refund_status` said.
    status: String,
    /// Where its notification goes: the refund request's `notify_url`.
    notify_url: String,
}

impl Refund {
    /// A `CLOSED` refund gave the money back to the refundable amount.
    fn holds_money(&self) -> bool {
        self.status != "CLOSED"
    }
}

/// As the tuple the orders view has always shown, with the status appended.
impl Serialize for Refund {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(&self.out_refund_no)?;
        t.serialize_element(&self.amount)?;
        t.serialize_element(&self.refund_id)?;
        t.serialize_element(&self.status)?;
        t.end()
    }
}

impl Order {
    pub(super) fn mchid(&self) -> &str {
        &self.mchid
    }

    /// The transaction object as WeChat Pay shows it: the query answer, and the plaintext
    /// of a `TRANSACTION.SUCCESS` notification.
    fn transaction(&self) -> Value {
        let req = &self.request;
        let mut v = json!({
            "out_trade_no": self.out_trade_no, "trade_type": self.trade_type,
            "trade_state": self.state, "trade_state_desc": self.state,
            "amount": { "total": self.amount, "currency": self.currency, "payer_total": self.amount, "payer_currency": self.currency },
        });
        match &self.sub_mchid {
            None => {
                v["mchid"] = json!(self.mchid);
                v["appid"] = req["appid"].clone();
            }
            Some(sub) => {
                v["sp_mchid"] = json!(self.mchid);
                v["sp_appid"] = req["sp_appid"].clone();
                v["sub_mchid"] = json!(sub);
                if let Some(a) = req["sub_appid"].as_str() {
                    v["sub_appid"] = json!(a);
                }
            }
        }
        if let Some(a) = req["attach"].as_str() {
            v["attach"] = json!(a);
        }
        if let Some(t) = &self.transaction_id {
            v["transaction_id"] = json!(t);
            v["bank_type"] = json!("OTHERS");
            // The payer the request named, else a made-up (TEST-ONLY) one.
            v["payer"] = match req["payer"].as_object() {
                Some(p) if !p.is_empty() => Value::Object(p.clone()),
                _ if self.sub_mchid.is_some() => json!({"sp_openid": "oSandboxPayerTestOnly"}),
                _ => json!({"openid": "oSandboxPayerTestOnly"}),
            };
        }
        if let Some(t) = &self.success_time {
            v["success_time"] = json!(t);
        }
        v
    }

    /// `?late=true`: a closed order that was never paid takes a payment after all.
    pub(super) fn reopen_closed(&mut self) {
        if self.state == "CLOSED" && self.transaction_id.is_none() {
            self.state = "NOTPAY".into();
        }
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

    /// The order as `GET /sandbox/orders` shows it: every field, plus the account.
    pub(super) fn view(&self) -> Value {
        let mut v = json!(self);
        v["account"] = json!({
            "provider": "wechatpay",
            "mode": if self.sub_mchid.is_some() { "partner" } else { "direct" },
            "mchid": self.mchid,
            "sub_mchid": self.sub_mchid,
        });
        v
    }
}

/// A `/v3` API the sandbox knows, routed once.
enum Call<'a> {
    Create { partner: bool, kind: &'a str },
    Query { partner: bool, no: String },
    Close { partner: bool, no: String },
    Refund,
    RefundQuery { no: String },
}

impl<'a> Call<'a> {
    fn route(method: &Method, seg: &[&'a str]) -> Option<Call<'a>> {
        let d = crate::server::decode;
        Some(match (method, seg) {
            (&Method::POST, ["v3", "pay", "transactions", kind]) => Call::Create {
                partner: false,
                kind,
            },
            (&Method::POST, ["v3", "pay", "partner", "transactions", kind]) => Call::Create {
                partner: true,
                kind,
            },
            (&Method::POST, ["v3", "pay", "transactions", "out-trade-no", no, "close"]) => {
                Call::Close {
                    partner: false,
                    no: d(no),
                }
            }
            (
                &Method::POST,
                ["v3", "pay", "partner", "transactions", "out-trade-no", no, "close"],
            ) => Call::Close {
                partner: true,
                no: d(no),
            },
            (&Method::POST, ["v3", "refund", "domestic", "refunds"]) => Call::Refund,
            (&Method::GET, ["v3", "refund", "domestic", "refunds", no]) => {
                Call::RefundQuery { no: d(no) }
            }
            (&Method::GET, ["v3", "pay", "transactions", "out-trade-no", no]) => Call::Query {
                partner: false,
                no: d(no),
            },
            (&Method::GET, ["v3", "pay", "partner", "transactions", "out-trade-no", no]) => {
                Call::Query {
                    partner: true,
                    no: d(no),
                }
            }
            _ => return None,
        })
    }

    fn op(&self) -> Op {
        match self {
            Call::Create { .. } => Op::Create,
            Call::Query { .. } => Op::Query,
            Call::Close { .. } => Op::Close,
            Call::Refund => Op::Refund,
            Call::RefundQuery { .. } => Op::RefundQuery,
        }
    }
}

impl Sandbox {
    /// Answers a `/v3` call through the shared answer → latency → sign path.
    pub(super) async fn v3(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        path_and_query: &str,
        seg: &[&str],
        body: &[u8],
    ) -> Answer {
        self.respond(
            |faults| self.v3_answer(method, headers, path_and_query, seg, body, faults),
            |(status, answer), signing| self.signed(status, answer, signing),
        )
        .await
    }

    fn v3_answer(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        path_and_query: &str,
        seg: &[&str],
        body: &[u8],
        faults: &Faults,
    ) -> Outcome<(StatusCode, Value)> {
        let mchid = match self.check_signature(method, headers, path_and_query, body) {
            Ok(m) => m,
            Err(msg) => {
                return Outcome::done(
                    (
                        StatusCode::UNAUTHORIZED,
                        json!({"code":"SIGN_ERROR","message":msg}),
                    ),
                    true,
                )
            }
        };
        let call = Call::route(method, seg);
        if let Some(f) = self.take_failure(call.as_ref().map(Call::op)) {
            let status = StatusCode::from_u16(f.status.unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = f.code.unwrap_or_else(|| "SYSTEM_ERROR".into());
            return Outcome::injected((
                status,
                json!({"code": code, "message": "injected by /sandbox/faults"}),
            ));
        }
        let sub_query = || query_param(path_and_query, "sub_mchid");
        let (status, answer) = match call {
            Some(Call::Create { partner, kind }) => self.create(&mchid, partner, kind, body),
            Some(Call::Close { partner, no }) => self.close(&mchid, partner, &no, body),
            Some(Call::Refund) => self.refund(&mchid, body, faults),
            Some(Call::RefundQuery { no }) => {
                self.refund_query(&mchid, sub_query().as_deref(), &no)
            }
            Some(Call::Query { partner, no }) => {
                let sub = if partner { sub_query() } else { None };
                self.query(&mchid, sub.as_deref(), &no)
            }
            None => (
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"no such API in the sandbox"}),
            ),
        };
        Outcome::done((status, answer), !status.is_success())
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
        let merchants = self.merchants.load();
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
        let req = serde_json::from_slice::<Value>(body).ok();
        // Every signed create for (account, out_trade_no) counts, whatever it is answered.
        if let Some(req) = &req {
            let s = |k: &str| req[k].as_str().filter(|v| !v.is_empty());
            if let Some(no) = s("out_trade_no") {
                let sub = if partner { s("sub_mchid") } else { None };
                count_call(&self.wechat_creates, &order_key(auth_mchid, sub), no);
            }
        }
        if !["jsapi", "native", "h5", "app"].contains(&kind) {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"unknown trade type"}),
            );
        }
        let Some(req) = req else {
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
        let slot = match self.orders.entry(key) {
            dashmap::Entry::Occupied(existing) => {
                return self.create_again(existing.get(), kind, total)
            }
            dashmap::Entry::Vacant(slot) => slot,
        };
        let n = self.next_id();
        let prepay_id = format!("wx{}{n:010}", OffsetDateTime::now_utc().unix_timestamp());
        slot.insert(Order {
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
            request: req,
            refunds: Vec::new(),
        });
        (StatusCode::OK, self.create_answer(kind, &prepay_id))
    }

    /// A create for an out_trade_no the account already has: paid (or refunded) answers
    /// `ORDERPAID`, closed `ORDER_CLOSED`, an open one with the same parameters its prepay id.
    fn create_again(&self, existing: &Order, kind: &str, total: u64) -> (StatusCode, Value) {
        match existing.state.as_str() {
            "SUCCESS" | "REFUND" => (
                StatusCode::FORBIDDEN,
                json!({"code":"ORDERPAID","message":"该订单已支付"}),
            ),
            "CLOSED" => (
                StatusCode::BAD_REQUEST,
                json!({"code":"ORDER_CLOSED","message":"订单已关闭"}),
            ),
            _ if existing.amount != total || existing.trade_type != kind.to_uppercase() => (
                StatusCode::BAD_REQUEST,
                json!({"code":"INVALID_REQUEST","message":"out_trade_no used with different parameters"}),
            ),
            _ => (
                StatusCode::OK,
                self.create_answer(kind, &existing.prepay_id),
            ),
        }
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
        let Some(o) = self
            .orders
            .get(&(order_key(mchid, sub_mchid), no.to_string()))
        else {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"ORDER_NOT_EXIST","message":"订单不存在"}),
            );
        };
        count_call(&self.wechat_queries, &order_key(mchid, sub_mchid), no);
        (StatusCode::OK, o.transaction())
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
        let Some(mut o) = self
            .orders
            .get_mut(&(order_key(auth_mchid, sub.as_deref()), no.to_string()))
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

    /// A refund is created with `SUCCESS`, or with the status `Faults::refund_status` names,
    /// and keeps it; all but `CLOSED` refunds count against the refundable amount.
    fn refund(&self, auth_mchid: &str, body: &[u8], faults: &Faults) -> (StatusCode, Value) {
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
        let Some(mut o) = self.orders.get_mut(&key) else {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"RESOURCE_NOT_EXISTS","message":"订单不存在"}),
            );
        };
        if let Some(r) = o.refunds.iter().find(|r| r.out_refund_no == refund_no) {
            if r.amount != refund {
                return bad("out_refund_no used with another amount");
            }
            return (StatusCode::OK, refund_answer(&o, r));
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
        let refunded: u64 = o
            .refunds
            .iter()
            .filter(|r| r.holds_money())
            .map(|r| r.amount)
            .sum();
        if refund == 0 || refunded + refund > o.amount {
            return (
                StatusCode::FORBIDDEN,
                json!({"code":"NOT_ENOUGH","message":"可退金额不足"}),
            );
        }
        let r = Refund {
            out_refund_no: refund_no.to_string(),
            amount: refund,
            refund_id: format!("50300{:024}", self.next_id()),
            status: faults
                .refund_status
                .clone()
                .unwrap_or_else(|| "SUCCESS".into()),
            notify_url: req["notify_url"].as_str().unwrap_or_default().to_string(),
        };
        if r.holds_money() {
            o.state = "REFUND".into();
        }
        let answer = refund_answer(&o, &r);
        // A settled refund is notified; one left PROCESSING never settles, so never is.
        let note = if ["SUCCESS", "ABNORMAL", "CLOSED"].contains(&r.status.as_str()) {
            self.wechat_refund_notification(&o, &r, &answer, faults)
        } else {
            None
        };
        o.refunds.push(r);
        drop(o);
        if let Some(n) = note {
            self.notify(n, faults.plan());
        }
        (StatusCode::OK, answer)
    }

    fn refund_query(
        &self,
        auth_mchid: &str,
        sub_mchid: Option<&str>,
        refund_no: &str,
    ) -> (StatusCode, Value) {
        let merchant = order_key(auth_mchid, sub_mchid);
        self.orders
            .iter()
            .filter(|o| o.key().0 == merchant)
            .find_map(|o| {
                let r = o.refunds.iter().find(|r| r.out_refund_no == refund_no)?;
                Some((StatusCode::OK, refund_answer(&o, r)))
            })
            .unwrap_or((
                StatusCode::NOT_FOUND,
                json!({"code":"RESOURCE_NOT_EXISTS","message":"退款单不存在"}),
            ))
    }

    /// The `TRANSACTION.SUCCESS` notification of a just-paid order, to the create
    /// request's `notify_url`.
    pub(super) fn wechat_payment_notification(
        &self,
        o: &Order,
        faults: &Faults,
    ) -> Option<Notification> {
        let url = o.request["notify_url"].as_str().unwrap_or_default();
        let event = WechatEvent {
            kind: Kind::Payment,
            event_type: "TRANSACTION.SUCCESS",
            summary: "支付成功",
            original_type: "transaction",
        };
        self.wechat_notification(o, None, url, &event, &o.transaction(), faults)
    }

    /// The `REFUND.SUCCESS` / `REFUND.ABNORMAL` / `REFUND.CLOSED` notification of a
    /// settled refund, to the refund request's `notify_url`; `answer` is the refund answer.
    fn wechat_refund_notification(
        &self,
        o: &Order,
        r: &Refund,
        answer: &Value,
        faults: &Faults,
    ) -> Option<Notification> {
        let (event_type, summary) = match r.status.as_str() {
            "SUCCESS" => ("REFUND.SUCCESS", "退款成功"),
            "ABNORMAL" => ("REFUND.ABNORMAL", "退款异常"),
            _ => ("REFUND.CLOSED", "退款关闭"),
        };
        let mut plain = json!({
            "out_trade_no": o.out_trade_no, "transaction_id": o.transaction_id,
            "out_refund_no": r.out_refund_no, "refund_id": r.refund_id,
            "refund_status": r.status, "user_received_account": "支付用户零钱",
            "amount": { "total": o.amount, "refund": r.amount, "payer_total": o.amount, "payer_refund": r.amount },
        });
        match &o.sub_mchid {
            None => plain["mchid"] = json!(o.mchid),
            Some(sub) => {
                plain["sp_mchid"] = json!(o.mchid);
                plain["sub_mchid"] = json!(sub);
            }
        }
        if let Some(t) = answer.get("success_time") {
            plain["success_time"] = t.clone();
        }
        let event = WechatEvent {
            kind: Kind::Refund,
            event_type,
            summary,
            original_type: "refund",
        };
        self.wechat_notification(
            o,
            Some(&r.out_refund_no),
            &r.notify_url,
            &event,
            &plain,
            faults,
        )
    }

    /// The notification body: `resource` is `plaintext` sealed with the merchant's APIv3 key
    /// (the `sp_mchid`'s in partner mode), `associated_data` = `original_type`; the fields in
    /// WeChat Pay's order. `None` (recorded as not sent) without a key.
    fn wechat_notification(
        &self,
        o: &Order,
        out_refund_no: Option<&str>,
        url: &str,
        event: &WechatEvent,
        plaintext: &Value,
        faults: &Faults,
    ) -> Option<Notification> {
        let serial = if faults.sign_with_certificate {
            self.cert_serial.clone()
        } else {
            PUBLIC_KEY_ID.to_string()
        };
        let mut n = Notification {
            provider: Provider::Wechatpay,
            kind: event.kind,
            out_trade_no: o.out_trade_no.clone(),
            out_refund_no: out_refund_no.map(str::to_string),
            url: url.to_string(),
            body: Bytes::new(),
            wechat: Some(WechatSigning {
                signer: self.signer.clone(),
                serial,
            }),
        };
        let keys = self.apiv3_keys.load();
        let Some(key) = keys.get(&o.mchid) else {
            let why = format!("no apiv3_key configured for mchid {}", o.mchid);
            self.notifier.not_sent(&n, &why);
            return None;
        };
        let nonce = notify::aead_nonce();
        let sealed = sign::aead_encrypt(
            key.expose().as_bytes(),
            &nonce,
            event.original_type,
            plaintext.to_string().as_bytes(),
        );
        let ciphertext = match sealed {
            Ok(c) => c,
            Err(e) => {
                self.notifier.not_sent(&n, &e);
                return None;
            }
        };
        let body = format!(
            r#"{{"id":{},"create_time":{},"resource_type":"encrypt-resource","event_type":{},"summary":{},"resource":{{"original_type":{},"algorithm":"AEAD_AES_256_GCM","ciphertext":{},"associated_data":{},"nonce":{}}}}}"#,
            json!(notify::uuid_like()),
            json!(china_time(OffsetDateTime::now_utc())),
            json!(event.event_type),
            json!(event.summary),
            json!(event.original_type),
            json!(ciphertext),
            json!(event.original_type),
            json!(nonce),
        );
        n.body = Bytes::from(body);
        Some(n)
    }

    /// A WeChat Pay style answer: JSON body (none for 204) with the `Wechatpay-*` signature
    /// headers — on errors too, as WeChat Pay does — unless it goes unsigned.
    pub(super) fn signed(&self, status: StatusCode, body: Value, signing: &Signing) -> Answer {
        let bytes = if status == StatusCode::NO_CONTENT {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let ts = OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = sign::nonce();
        let signature =
            signing.signature(&self.signer, &sign::response_message(&ts, &nonce, &bytes));
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
        if let Some(signature) = signature {
            let serial = if signing.with_certificate {
                self.cert_serial.as_str()
            } else {
                PUBLIC_KEY_ID
            };
            h.insert("Wechatpay-Timestamp", val(&ts));
            h.insert("Wechatpay-Nonce", val(&nonce));
            h.insert("Wechatpay-Signature", val(&signature));
            h.insert("Wechatpay-Serial", val(serial));
            h.insert(
                "Wechatpay-Signature-Type",
                http::HeaderValue::from_static("WECHATPAY2-SHA256-RSA2048"),
            );
        }
        h.insert("Request-ID", val(&format!("sandbox-{}", self.next_id())));
        resp
    }
}

/// What a WeChat Pay notification announces.
struct WechatEvent {
    kind: Kind,
    event_type: &'static str,
    summary: &'static str,
    /// `transaction` or `refund`: also the resource's `associated_data`.
    original_type: &'static str,
}

fn refund_answer(o: &Order, r: &Refund) -> Value {
    let mut v = json!({
        "refund_id": r.refund_id, "out_refund_no": r.out_refund_no, "out_trade_no": o.out_trade_no,
        "transaction_id": o.transaction_id, "channel": "ORIGINAL", "status": r.status,
        "amount": { "total": o.amount, "refund": r.amount, "payer_total": o.amount, "payer_refund": r.amount, "currency": o.currency },
    });
    if r.status == "SUCCESS" {
        v["success_time"] = json!(china_time(OffsetDateTime::now_utc()));
    }
    v
}

fn order_key(mchid: &str, sub_mchid: Option<&str>) -> String {
    match sub_mchid {
        Some(sub) => format!("{mchid}/{sub}"),
        None => mchid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sandbox;
    use super::*;

    const MCH: &str = "1900000001";

    fn order_body(no: &str, total: u64) -> Vec<u8> {
        json!({
            "appid": "wx_sandbox", "mchid": MCH, "description": "d", "out_trade_no": no,
            "notify_url": "https://shop.example/n", "amount": { "total": total, "currency": "CNY" },
        })
        .to_string()
        .into_bytes()
    }

    fn refund_body(no: &str, refund_no: &str, refund: u64, total: u64) -> Vec<u8> {
        json!({
            "out_trade_no": no, "out_refund_no": refund_no, "notify_url": "https://shop.example/r",
            "amount": { "refund": refund, "total": total, "currency": "CNY" },
        })
        .to_string()
        .into_bytes()
    }

    fn faults(v: Value) -> Faults {
        serde_json::from_value(v).unwrap()
    }

    fn view(sb: &Sandbox, no: &str) -> Value {
        let key = (MCH.to_string(), no.to_string());
        sb.wechat_view(&key, &sb.orders.get(&key).unwrap())
    }

    #[test]
    fn create_calls_count_every_signed_create_and_the_account_is_shown() {
        let sb = Sandbox::new(Vec::new());
        assert_eq!(
            sb.create(MCH, false, "native", &order_body("c-1", 100)).0,
            200
        );
        assert_eq!(
            sb.create(MCH, false, "native", &order_body("c-1", 100)).0,
            200
        );
        // Another amount is refused, but it arrived: it counts.
        assert_eq!(
            sb.create(MCH, false, "native", &order_body("c-1", 5)).0,
            400
        );
        let mut o = sb.orders.get_mut(&(MCH.into(), "c-1".into())).unwrap();
        o.mark_paid(1);
        drop(o);
        let (status, v) = sb.create(MCH, false, "native", &order_body("c-1", 100));
        assert_eq!(
            (status.as_u16(), v["code"].as_str()),
            (403, Some("ORDERPAID"))
        );
        let v = view(&sb, "c-1");
        assert_eq!(v["create_calls"], 4);
        assert_eq!(
            v["account"],
            json!({"provider": "wechatpay", "mode": "direct", "mchid": MCH, "sub_mchid": null})
        );
        assert_eq!(
            (v["mchid"].as_str(), v["state"].as_str()),
            (Some(MCH), Some("SUCCESS"))
        );
        assert_eq!(v["request"]["out_trade_no"], "c-1");
    }

    #[test]
    fn refund_status_is_kept_and_holds_money_unless_closed() {
        let sb = Sandbox::new(Vec::new());
        sb.create(MCH, false, "native", &order_body("r-1", 100));
        sb.orders
            .get_mut(&(MCH.into(), "r-1".into()))
            .unwrap()
            .mark_paid(1);
        let abnormal = faults(json!({ "refund_status": "ABNORMAL" }));
        let (status, v) = sb.refund(MCH, &refund_body("r-1", "r-1-a", 60, 100), &abnormal);
        assert_eq!(
            (status.as_u16(), v["status"].as_str()),
            (200, Some("ABNORMAL"))
        );
        assert!(v.get("success_time").is_none());
        let (_, q) = sb.refund_query(MCH, None, "r-1-a");
        assert_eq!(q["status"], "ABNORMAL");
        // The ABNORMAL refund still holds 60 of the 100.
        let (status, v) = sb.refund(MCH, &refund_body("r-1", "r-1-b", 50, 100), &abnormal);
        assert_eq!(
            (status.as_u16(), v["code"].as_str()),
            (403, Some("NOT_ENOUGH"))
        );
        // A CLOSED refund gives its amount back.
        let closed = faults(json!({ "refund_status": "CLOSED" }));
        let (_, v) = sb.refund(MCH, &refund_body("r-1", "r-1-c", 40, 100), &closed);
        assert_eq!(v["status"], "CLOSED");
        let (status, v) = sb.refund(
            MCH,
            &refund_body("r-1", "r-1-d", 40, 100),
            &Faults::default(),
        );
        assert_eq!(
            (status.as_u16(), v["status"].as_str()),
            (200, Some("SUCCESS"))
        );
        assert!(v["success_time"].is_string());
        assert_eq!(
            view(&sb, "r-1")["refunds"][0],
            json!(["r-1-a", 60, q["refund_id"], "ABNORMAL"])
        );
    }

    #[tokio::test]
    async fn every_answer_is_signed_with_its_type_and_tamper_errors_only_spoils_errors() {
        let sb = Sandbox::new(Vec::new());
        *sb.faults() = faults(json!({ "tamper_errors": true }));
        let key = sb.signer.verifier();
        let answer = |status: StatusCode, body: Value| {
            sb.respond(
                move |_| Outcome::done((status, body), !status.is_success()),
                |(status, body), signing| sb.signed(status, body, signing),
            )
        };
        let verifies = |resp: &Answer, body: &Value| {
            let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
            assert_eq!(h("wechatpay-signature-type"), "WECHATPAY2-SHA256-RSA2048");
            assert_eq!(h("wechatpay-serial"), PUBLIC_KEY_ID);
            let body = body.to_string();
            let msg = sign::response_message(
                &h("wechatpay-timestamp"),
                &h("wechatpay-nonce"),
                body.as_bytes(),
            );
            key.verify_b64(&msg, &h("wechatpay-signature"))
        };
        let ok = json!({"a": 1});
        assert!(verifies(&answer(StatusCode::OK, ok.clone()).await, &ok));
        let err = json!({"code": "SYSTEM_ERROR"});
        let resp = answer(StatusCode::INTERNAL_SERVER_ERROR, err.clone()).await;
        assert!(!verifies(&resp, &err), "tamper_errors spoils errors");
        *sb.faults() = Faults::default();
        let resp = answer(StatusCode::INTERNAL_SERVER_ERROR, err.clone()).await;
        assert!(verifies(&resp, &err), "errors are signed too");
    }

    #[test]
    fn a_hostile_timestamp_is_refused_without_overflow() {
        let sb = Sandbox::new(Vec::new());
        for ts in [i64::MIN, i64::MAX] {
            let mut headers = http::HeaderMap::new();
            let auth = format!(
                r#"WECHATPAY2-SHA256-RSA2048 mchid="{MCH}",nonce_str="N",timestamp="{ts}",serial_no="S",signature="x""#
            );
            headers.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
            let err = sb
                .check_signature(&Method::GET, &headers, "/v3/x", b"")
                .unwrap_err();
            assert!(err.contains("timestamp"), "{err}");
        }
    }

    mod notifications {
        use std::sync::Arc;

        use super::super::super::notify::testing::Fake;
        use super::super::super::{SandboxMerchant, PLATFORM_KEY_PEM};
        use super::*;
        use crate::channel::keys::RsaSigner;
        use crate::channel::wechatpay::WechatVerifier;
        use crate::secret::Secret;

        const KEY: &str = "0123456789abcdefSANDBOXtestONLY!";
        const SP: &str = "1900000100";

        fn sandbox(fake: &Arc<Fake>, keyed: &[&str]) -> Arc<Sandbox> {
            let verifier = RsaSigner::from_text(PLATFORM_KEY_PEM).unwrap().verifier();
            let merchants = keyed
                .iter()
                .map(|m| SandboxMerchant::Wechat {
                    mchid: m.to_string(),
                    serial_no: "S".into(),
                    key: verifier.clone(),
                    apiv3_key: Some(Secret::new(KEY)),
                })
                .collect();
            Sandbox::with_transport(merchants, fake.clone())
        }

        /// Checks the signature headers and returns (body, decrypted resource).
        fn open(sb: &Sandbox, fake: &Fake, i: usize, serial: &str) -> (Value, Value) {
            let r = &fake.received.lock().unwrap()[i];
            let h = |n: &str| r.headers[n].to_str().unwrap().to_string();
            assert_eq!(h("content-type"), "application/json");
            assert_eq!(h("wechatpay-signature-type"), "WECHATPAY2-SHA256-RSA2048");
            assert_eq!(h("wechatpay-serial"), serial);
            let verifier = WechatVerifier {
                public_key: Some((PUBLIC_KEY_ID.into(), sb.signer.verifier())),
                certificates: [(sb.cert_serial.clone(), sb.signer.verifier())].into(),
            };
            let now = OffsetDateTime::now_utc().unix_timestamp();
            verifier
                .verify(
                    serial,
                    &h("wechatpay-timestamp"),
                    &h("wechatpay-nonce"),
                    &h("wechatpay-signature"),
                    &r.body,
                    now,
                )
                .unwrap();
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let res = &body["resource"];
            assert_eq!(res["algorithm"], "AEAD_AES_256_GCM");
            assert_eq!(res["associated_data"], res["original_type"]);
            let nonce = res["nonce"].as_str().unwrap();
            assert_eq!(nonce.len(), 12);
            let plain = sign::aead_decrypt(
                KEY.as_bytes(),
                nonce,
                res["associated_data"].as_str().unwrap(),
                res["ciphertext"].as_str().unwrap(),
            )
            .unwrap();
            (body, serde_json::from_slice(&plain).unwrap())
        }

        #[tokio::test(start_paused = true)]
        async fn a_payment_is_notified_signed_and_encrypted_as_the_query_answers_it() {
            let fake = Arc::new(Fake::new(&[], (204, "")));
            let sb = sandbox(&fake, &[MCH]);
            let mut body: Value = serde_json::from_slice(&order_body("w-1", 100)).unwrap();
            body["notify_url"] = json!("http://127.0.0.1:9/notify/wx");
            body["payer"] = json!({"openid": "o-payer"});
            assert_eq!(
                sb.create(MCH, false, "jsapi", &body.to_string().into_bytes())
                    .0,
                200
            );
            assert_eq!(sb.pay("w-1", None).status(), 200);
            fake.wait_for(1).await;
            // Paid already: paying again sends nothing more.
            sb.pay("w-1", None);
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            assert_eq!(fake.count(), 1);
            assert_eq!(
                fake.received.lock().unwrap()[0].uri,
                "http://127.0.0.1:9/notify/wx"
            );
            let (body, plain) = open(&sb, &fake, 0, PUBLIC_KEY_ID);
            assert_eq!(body["event_type"], "TRANSACTION.SUCCESS");
            assert_eq!(body["resource_type"], "encrypt-resource");
            assert_eq!(body["summary"], "支付成功");
            assert_eq!(body["resource"]["original_type"], "transaction");
            assert_eq!(body["id"].as_str().unwrap().len(), 36);
            assert!(body["create_time"].as_str().unwrap().ends_with("+08:00"));
            assert_eq!(plain, sb.query(MCH, None, "w-1").1);
            assert_eq!(plain["trade_state"], "SUCCESS");
            assert_eq!(plain["mchid"], MCH);
            assert_eq!(plain["appid"], "wx_sandbox");
            assert_eq!(plain["payer"], json!({"openid": "o-payer"}));
            assert_eq!(plain["amount"]["payer_total"], 100);
            assert!(plain["transaction_id"].is_string() && plain["success_time"].is_string());
            let log = sb.notifier.attempts();
            assert_eq!((log.len(), log[0].answered_ok), (1, true));
        }

        /// `?late=true` is the provider-side race: without it a closed order stays closed.
        #[tokio::test(start_paused = true)]
        async fn a_closed_order_is_paid_only_late_and_then_notified() {
            let fake = Arc::new(Fake::new(&[], (204, "")));
            let sb = sandbox(&fake, &[MCH]);
            let mut body: Value = serde_json::from_slice(&order_body("w-late", 100)).unwrap();
            body["notify_url"] = json!("http://127.0.0.1:9/notify/wx");
            let created = sb.create(MCH, false, "native", &body.to_string().into_bytes());
            assert_eq!(created.0, 200);
            let close = json!({ "mchid": MCH }).to_string();
            assert!(sb
                .close(MCH, false, "w-late", close.as_bytes())
                .0
                .is_success());
            sb.pay("w-late", None);
            assert_eq!(sb.query(MCH, None, "w-late").1["trade_state"], "CLOSED");
            assert_eq!(sb.pay("w-late", Some("late=true")).status(), 200);
            fake.wait_for(1).await;
            let paid = sb.query(MCH, None, "w-late").1;
            assert_eq!(paid["trade_state"], "SUCCESS");
            assert!(paid["transaction_id"].is_string());
            assert_eq!(fake.count(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn settled_partner_refunds_are_notified_with_the_sp_key() {
            let fake = Arc::new(Fake::new(&[], (200, "")));
            let sb = sandbox(&fake, &[SP]);
            let order = json!({
                "sp_appid": "wx_sp", "sp_mchid": SP, "sub_mchid": "1900000109",
                "description": "d", "out_trade_no": "p-1", "notify_url": "http://127.0.0.1:9/pay",
                "amount": { "total": 100, "currency": "CNY" },
            });
            assert_eq!(
                sb.create(SP, true, "native", order.to_string().as_bytes())
                    .0,
                200
            );
            sb.pay("p-1", None);
            fake.wait_for(1).await;
            let (_, plain) = open(&sb, &fake, 0, PUBLIC_KEY_ID);
            assert_eq!(
                (
                    plain["sp_mchid"].as_str(),
                    plain["sub_mchid"].as_str(),
                    plain.get("mchid")
                ),
                (Some(SP), Some("1900000109"), None)
            );
            assert_eq!(plain["sp_appid"], "wx_sp");
            assert_eq!(
                plain["payer"],
                json!({"sp_openid": "oSandboxPayerTestOnly"})
            );

            let refund = |no: &str, amount: u64, faults: &Faults| {
                let mut b: Value =
                    serde_json::from_slice(&refund_body("p-1", no, amount, 100)).unwrap();
                b["sub_mchid"] = json!("1900000109");
                b["notify_url"] = json!("http://127.0.0.1:9/refund");
                sb.refund(SP, b.to_string().as_bytes(), faults)
            };
            // PROCESSING never settles: no notification.
            let processing = faults(json!({ "refund_status": "PROCESSING" }));
            assert_eq!(refund("p-1-a", 10, &processing).1["status"], "PROCESSING");
            let cert = faults(json!({ "sign_with_certificate": true }));
            let (_, answer) = refund("p-1-b", 30, &cert);
            fake.wait_for(2).await;
            let abnormal = faults(json!({ "refund_status": "ABNORMAL" }));
            refund("p-1-c", 20, &abnormal);
            fake.wait_for(3).await;
            // A repeat of a known refund is not notified again.
            refund("p-1-b", 30, &Faults::default());
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            assert_eq!(fake.count(), 3);
            assert_eq!(
                fake.received.lock().unwrap()[1].uri,
                "http://127.0.0.1:9/refund"
            );

            let (body, plain) = open(&sb, &fake, 1, &sb.cert_serial);
            assert_eq!(body["event_type"], "REFUND.SUCCESS");
            assert_eq!(body["summary"], "退款成功");
            assert_eq!(body["resource"]["associated_data"], "refund");
            assert_eq!(plain["sp_mchid"], SP);
            assert_eq!(plain["sub_mchid"], "1900000109");
            assert_eq!(plain["out_trade_no"], "p-1");
            assert_eq!(plain["out_refund_no"], "p-1-b");
            assert_eq!(plain["refund_id"], answer["refund_id"]);
            assert_eq!(plain["transaction_id"], answer["transaction_id"]);
            assert_eq!(plain["refund_status"], "SUCCESS");
            assert_eq!(plain["success_time"], answer["success_time"]);
            assert_eq!(plain["user_received_account"], "支付用户零钱");
            assert_eq!(
                plain["amount"],
                json!({"total": 100, "refund": 30, "payer_total": 100, "payer_refund": 30})
            );
            let (body, plain) = open(&sb, &fake, 2, PUBLIC_KEY_ID);
            assert_eq!(body["event_type"], "REFUND.ABNORMAL");
            assert_eq!(plain["refund_status"], "ABNORMAL");
            assert!(plain.get("success_time").is_none());
            let kinds: Vec<Value> = sb
                .notifier
                .attempts()
                .iter()
                .map(|a| json!(a.kind))
                .collect();
            assert_eq!(kinds, [json!("payment"), json!("refund"), json!("refund")]);
        }

        #[tokio::test(start_paused = true)]
        async fn no_apiv3_key_no_notification_and_dropped_ones_are_not_sent() {
            let fake = Arc::new(Fake::new(&[], (204, "")));
            let sb = sandbox(&fake, &[]);
            sb.create(MCH, false, "native", &order_body("k-1", 100));
            sb.pay("k-1", None);
            let sb2 = sandbox(&fake, &[MCH]);
            *sb2.faults() = faults(json!({ "drop_notifications": true }));
            sb2.create(MCH, false, "native", &order_body("k-2", 100));
            sb2.pay("k-2", None);
            tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
            assert_eq!(fake.count(), 0);
            let a = &sb.notifier.attempts()[0];
            assert_eq!(a.attempt, 0);
            assert!(a.status.as_str().unwrap().contains("no apiv3_key"), "{a:?}");
            let a = &sb2.notifier.attempts()[0];
            assert_eq!((a.attempt, &a.status), (0, &json!("dropped")));
        }
    }
}
