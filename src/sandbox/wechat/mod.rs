//! The sandbox's WeChat Pay API v3: signature checks, orders in direct and partner mode,
//! close, refunds, and signed answers.

mod checks;
mod order;
mod statement;
#[cfg(test)]
mod tests;
mod tradebill;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::notify::{self, Kind, Notification, Provider, WechatSigning};
use super::settings::SandboxMerchant;
use super::shared::{
    count_call, query_param, Answer, Faults, Op, Orders, Outcome, Shared, Signing, Simulator,
};
use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
use crate::channel::wechatpay::{china_time, sign};
use crate::domain::FeeRate;
use crate::sandbox::statement::{self as bills, BadDay, Files, Kept};
use crate::secret::Secret;
use checks::{account_ids, check_create, documented_status, param_error, ValidCreate};
pub(super) use order::Order;
use order::Refund;

/// The id under which channels pin the sandbox's WeChat Pay public key.
pub const PUBLIC_KEY_ID: &str = "PUB_KEY_ID_SANDBOX_TEST_ONLY";

/// TEST-ONLY: the sandbox's "WeChat Pay" signing key, public in this repository.
pub(super) const PLATFORM_KEY_PEM: &str =
    include_str!("../../../config/sandbox/wechatpay_platform_key.pem");
pub(super) const PLATFORM_CERT_PEM: &str =
    include_str!("../../../config/sandbox/wechatpay_platform_cert.pem");

/// The simulated WeChat Pay: its merchants' keys, its orders, its signer and its `/v3` routes.
pub(super) struct WechatSim {
    shared: Arc<Shared>,
    /// (mchid, certificate serial) → the merchant's public key.
    merchants: ArcSwap<HashMap<(String, String), RsaVerifier>>,
    /// mchid (the signing one: `sp_mchid` in partner mode) → APIv3 key.
    apiv3_keys: ArcSwap<HashMap<String, Secret>>,
    /// mchid (the signing one) → the channel's fee rate, charged in its trade bills.
    fee_rates: ArcSwap<HashMap<String, FeeRate>>,
    /// Trade bills asked for, kept for `/v3/billdownload/file?token=…`.
    bills: Files,
    /// By (mchid, or `mchid/sub_mchid` in partner mode; out_trade_no).
    orders: Orders<Order>,
    /// Create requests that passed the signature check, by the same key as `orders`.
    creates: Orders<u32>,
    /// Queries that found their order, by the same key.
    queries: Orders<u32>,
    signer: RsaSigner,
    cert_serial: String,
}

impl WechatSim {
    pub(super) fn new(shared: Arc<Shared>) -> WechatSim {
        let cert = Certificate::from_pem(PLATFORM_CERT_PEM)
            .expect("the bundled sandbox certificate parses");
        WechatSim {
            shared,
            merchants: ArcSwap::from_pointee(HashMap::new()),
            apiv3_keys: ArcSwap::from_pointee(HashMap::new()),
            fee_rates: ArcSwap::from_pointee(HashMap::new()),
            bills: Files::default(),
            orders: DashMap::new(),
            creates: DashMap::new(),
            queries: DashMap::new(),
            signer: RsaSigner::from_text(PLATFORM_KEY_PEM).expect("the bundled sandbox key parses"),
            cert_serial: cert.serial,
        }
    }

    fn view(&self, key: &(String, String), o: &Order) -> Value {
        let mut v = o.view();
        v["create_calls"] = json!(self.creates.get(key).map_or(0, |n| *n));
        v["query_calls"] = json!(self.queries.get(key).map_or(0, |n| *n));
        v
    }
}

impl Simulator for WechatSim {
    fn set_merchants(&self, merchants: &[SandboxMerchant]) {
        let (mut keys, mut apiv3_keys, mut fee_rates) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        for m in merchants {
            if let SandboxMerchant::Wechat {
                mchid,
                serial_no,
                key,
                apiv3_key,
                fee_rate,
            } = m
            {
                if let Some(k) = apiv3_key {
                    apiv3_keys.entry(mchid.clone()).or_insert(k.clone());
                }
                fee_rates.entry(mchid.clone()).or_insert(*fee_rate);
                keys.insert((mchid.clone(), serial_no.clone()), key.clone());
            }
        }
        self.merchants.store(Arc::new(keys));
        self.apiv3_keys.store(Arc::new(apiv3_keys));
        self.fee_rates.store(Arc::new(fee_rates));
    }

    fn pay(
        &self,
        no: &str,
        only: Option<&str>,
        late: bool,
        faults: &Faults,
    ) -> (Vec<Value>, Vec<Notification>) {
        let (mut paid, mut notes) = (Vec::new(), Vec::new());
        for mut o in self.orders.iter_mut() {
            if o.key().1 != no || only.is_some_and(|m| m != o.mchid()) {
                continue;
            }
            let n = self.shared.next_id();
            if late {
                o.reopen_closed();
            }
            if o.mark_paid(n) {
                notes.extend(self.wechat_payment_notification(&o, faults));
            }
            paid.push(self.view(o.key(), &o));
        }
        (paid, notes)
    }

    fn orders(&self, no: &str) -> Vec<Value> {
        self.orders
            .iter()
            .filter(|o| o.key().1 == no)
            .map(|o| self.view(o.key(), &o))
            .collect()
    }
}

/// A `/v3` API the sandbox knows, routed once.
enum Call<'a> {
    Create { partner: bool, kind: &'a str },
    Query { partner: bool, no: String },
    Close { partner: bool, no: String },
    Refund,
    RefundQuery { no: String },
    Tradebill,
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
            (&Method::GET, ["v3", "bill", "tradebill"]) => Call::Tradebill,
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
            Call::Tradebill => Op::Statement,
        }
    }
}

impl WechatSim {
    /// Answers a `/v3` call through the shared answer → latency → sign path (a bill
    /// download: the file unsigned); `req.base` is the sandbox's own `scheme://host`, where a
    /// trade bill's `download_url` points.
    pub(super) async fn v3(
        &self,
        req: V3Request<'_>,
        path_and_query: &str,
        seg: &[&str],
        body: &[u8],
    ) -> Answer {
        if (req.method, seg) == (&Method::GET, &["v3", "billdownload", "file"][..]) {
            return self.bill_download(req, path_and_query).await;
        }
        self.shared
            .respond(
                |faults| self.v3_answer(req, path_and_query, seg, body, faults),
                |(status, answer), signing| self.signed(status, answer, signing),
            )
            .await
    }

    fn v3_answer(
        &self,
        V3Request {
            method,
            headers,
            base,
        }: V3Request<'_>,
        path_and_query: &str,
        seg: &[&str],
        body: &[u8],
        faults: &Faults,
    ) -> Outcome<(StatusCode, Value)> {
        let mchid = match self.check_signature(method, headers, path_and_query, body) {
            Ok(m) => m,
            Err(why) => {
                return Outcome::done(
                    (
                        StatusCode::UNAUTHORIZED,
                        json!({"code":"SIGN_ERROR","message":why.to_string()}),
                    ),
                    true,
                )
            }
        };
        let call = Call::route(method, seg);
        let ids = if faults.accounts.is_some() {
            account_ids(&mchid, path_and_query, body)
        } else {
            Vec::new()
        };
        if let Some(f) = self.shared.take_failure(call.as_ref().map(Call::op), &ids) {
            let code = f.code.unwrap_or_else(|| "SYSTEM_ERROR".into());
            let status = StatusCode::from_u16(f.status.unwrap_or_else(|| documented_status(&code)))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
            Some(Call::Tradebill) => self.tradebill(&mchid, path_and_query, base, faults),
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
    ) -> Result<String, SignatureRefused> {
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignatureRefused::NoAuthorization)?;
        let f = sign::parse_authorization(auth).ok_or(SignatureRefused::NotWechatpay)?;
        let get = |k: &'static str| f.get(k).cloned().ok_or(SignatureRefused::NoField(k));
        let (mchid, serial, nonce, ts, signature) = (
            get("mchid")?,
            get("serial_no")?,
            get("nonce_str")?,
            get("timestamp")?,
            get("signature")?,
        );
        let ts: i64 = ts.parse().map_err(|_| SignatureRefused::BadTimestamp)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if now.abs_diff(ts) > sign::MAX_SKEW_SECS {
            return Err(SignatureRefused::Stale);
        }
        let merchants = self.merchants.load();
        let key = merchants
            .get(&(mchid.clone(), serial.clone()))
            .ok_or_else(|| SignatureRefused::UnknownCertificate {
                serial: serial.clone(),
                mchid: mchid.clone(),
            })?;
        let msg = sign::request_message(method.as_str(), path_and_query, ts, &nonce, body);
        if key.verify_b64(&msg, &signature) {
            Ok(mchid)
        } else {
            Err(SignatureRefused::DoesNotVerify)
        }
    }

    fn create(
        &self,
        auth_mchid: &str,
        partner: bool,
        kind: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let req = serde_json::from_slice::<Value>(body).ok();
        // Every signed create for (account, out_trade_no) counts, whatever it is answered.
        if let Some(req) = &req {
            self.count_create(auth_mchid, partner, req);
        }
        if !["jsapi", "native", "h5", "app"].contains(&kind) {
            return (
                StatusCode::NOT_FOUND,
                json!({"code":"NOT_FOUND","message":"unknown trade type"}),
            );
        }
        let Some(req) = req else {
            return param_error("body is not JSON");
        };
        match check_create(&req, auth_mchid, partner, kind) {
            Ok(valid) => self.open_order(auth_mchid, kind, req, valid),
            Err(answer) => answer,
        }
    }

    fn count_create(&self, auth_mchid: &str, partner: bool, req: &Value) {
        let s = |k: &str| req[k].as_str().filter(|v| !v.is_empty());
        if let Some(no) = s("out_trade_no") {
            let sub = if partner { s("sub_mchid") } else { None };
            count_call(&self.creates, &order_key(auth_mchid, sub), no);
        }
    }

    /// Opens the order a valid create asks for, or answers as for a create repeated.
    fn open_order(
        &self,
        auth_mchid: &str,
        kind: &str,
        req: Value,
        valid: ValidCreate,
    ) -> (StatusCode, Value) {
        let ValidCreate { sub_mchid, total } = valid;
        let out_trade_no = req["out_trade_no"].as_str().unwrap_or_default().to_string();
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
        let n = self.shared.next_id();
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
        count_call(&self.queries, &order_key(mchid, sub_mchid), no);
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
        let status = faults
            .refund_status
            .clone()
            .unwrap_or_else(|| "SUCCESS".into());
        let r = Refund {
            out_refund_no: refund_no.to_string(),
            amount: refund,
            refund_id: format!("50300{:024}", self.shared.next_id()),
            success_time: (status == "SUCCESS").then(|| china_time(OffsetDateTime::now_utc())),
            status,
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
            self.shared.notify(n, faults.plan());
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
    fn wechat_payment_notification(&self, o: &Order, faults: &Faults) -> Option<Notification> {
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
            self.shared.notifier.not_sent(&n, &why);
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
                self.shared.notifier.not_sent(&n, &e.to_string());
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
        h.insert(
            "Request-ID",
            val(&format!("sandbox-{}", self.shared.next_id())),
        );
        resp
    }
}

/// A `/v3` request as the listener got it, besides its path and body.
#[derive(Clone, Copy)]
pub(super) struct V3Request<'a> {
    pub(super) method: &'a Method,
    pub(super) headers: &'a http::HeaderMap,
    /// The sandbox's own `scheme://host[:port]`, as the request reached it.
    pub(super) base: &'a str,
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
    if let Some(t) = &r.success_time {
        v["success_time"] = json!(t);
    }
    v
}

fn order_key(mchid: &str, sub_mchid: Option<&str>) -> String {
    match sub_mchid {
        Some(sub) => format!("{mchid}/{sub}"),
        None => mchid.to_string(),
    }
}

/// Why a request's `Authorization` was refused; the text is the `SIGN_ERROR` message.
#[derive(Debug, thiserror::Error)]
enum SignatureRefused {
    #[error("missing Authorization")]
    NoAuthorization,
    #[error("Authorization is not WECHATPAY2-SHA256-RSA2048")]
    NotWechatpay,
    #[error("Authorization has no {0}")]
    NoField(&'static str),
    #[error("bad timestamp")]
    BadTimestamp,
    #[error("timestamp too far from now")]
    Stale,
    #[error("no certificate {serial} for merchant {mchid}")]
    UnknownCertificate { serial: String, mchid: String },
    #[error("signature does not verify")]
    DoesNotVerify,
}
