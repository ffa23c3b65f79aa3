//! The sandbox's Alipay classic gateway (`/gateway.do`): checks RSA2 request signatures with
//! the app's public key, answers signed JSON whose `<method>_response` keeps Alipay's own key
//! order (so a verifier that re-serialises fails, as it would against Alipay), and keeps
//! orders in memory. Page, WAP and App orders come into being when the payer opens them
//! (a GET of the signed URL or order string), as at Alipay.

mod order;
mod statement;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::notify::{Kind, Notification, Provider};
use super::settings::SandboxMerchant;
use super::shared::{count_call, Answer, Faults, Op, Orders, Outcome, Shared, Signing, Simulator};
use crate::channel::alipay::{china_datetime, sign};
use crate::channel::keys::{RsaSigner, RsaVerifier};
use crate::domain::{parse_yuan, yuan, FeeRate};
use crate::sandbox::statement::{self as bills, BadDay, Files, Kept};
pub(super) use order::AliOrder;
use order::AliRefund;

/// TEST-ONLY: the sandbox's "Alipay" signing key.
const ALIPAY_KEY_PEM: &str = include_str!("../../../config/sandbox/alipay_sandbox_key.pem");

/// The simulated Alipay: its apps' keys and ISV grants, its trades, its signer and its gateway.
pub(super) struct AlipaySim {
    shared: Arc<Shared>,
    apps: ArcSwap<HashMap<String, RsaVerifier>>,
    /// ISV: each granted `app_auth_token` (exposed) → the seller id it acts for.
    grants: ArcSwap<HashMap<String, String>>,
    /// app_id → the channel's fee rate, charged in its trade statements.
    fee_rates: ArcSwap<HashMap<String, FeeRate>>,
    /// Statement zips asked for, kept for `/sandbox/alipay/bill/download?token=…`.
    bills: Files,
    /// By (seller: the seller id an app_auth_token acts for, or the app_id in direct mode;
    /// out_trade_no).
    orders: Orders<AliOrder>,
    /// Create requests that passed the signature check, by the same key as `orders`.
    creates: Orders<u32>,
    /// Queries that found their order, by the same key.
    queries: Orders<u32>,
    signer: RsaSigner,
}

impl AlipaySim {
    pub(super) fn new(shared: Arc<Shared>) -> AlipaySim {
        AlipaySim {
            shared,
            apps: ArcSwap::from_pointee(HashMap::new()),
            grants: ArcSwap::from_pointee(HashMap::new()),
            fee_rates: ArcSwap::from_pointee(HashMap::new()),
            bills: Files::default(),
            orders: DashMap::new(),
            creates: DashMap::new(),
            queries: DashMap::new(),
            signer: RsaSigner::from_text(ALIPAY_KEY_PEM)
                .expect("the bundled sandbox Alipay key parses"),
        }
    }

    fn view(&self, key: &(String, String), o: &AliOrder) -> Value {
        let mut v = o.view();
        v["create_calls"] = json!(self.creates.get(key).map_or(0, |n| *n));
        v["query_calls"] = json!(self.queries.get(key).map_or(0, |n| *n));
        v
    }
}

impl Simulator for AlipaySim {
    fn set_merchants(&self, merchants: &[SandboxMerchant]) {
        let (mut apps, mut grants, mut fee_rates) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        for m in merchants {
            match m {
                SandboxMerchant::Alipay {
                    app_id,
                    key,
                    fee_rate,
                } => {
                    apps.insert(app_id.clone(), key.clone());
                    fee_rates.entry(app_id.clone()).or_insert(*fee_rate);
                }
                SandboxMerchant::AlipayGrant {
                    app_auth_token,
                    seller_id,
                } => {
                    grants.insert(app_auth_token.expose().to_string(), seller_id.clone());
                }
                SandboxMerchant::Wechat { .. } => {}
            }
        }
        self.apps.store(Arc::new(apps));
        self.grants.store(Arc::new(grants));
        self.fee_rates.store(Arc::new(fee_rates));
    }

    fn pay(
        &self,
        no: &str,
        only: Option<&str>,
        late: bool,
        _faults: &Faults,
    ) -> (Vec<Value>, Vec<Notification>) {
        let (mut paid, mut notes) = (Vec::new(), Vec::new());
        // `?mchid=` names a WeChat Pay merchant: it leaves every Alipay trade as it is.
        if only.is_some() {
            return (paid, notes);
        }
        for mut o in self.orders.iter_mut() {
            if o.key().1 == no {
                let n = self.shared.next_id();
                if late {
                    o.reopen_closed();
                }
                if o.mark_paid(n) {
                    notes.extend(self.alipay_notification(&o, None));
                }
                paid.push(self.view(o.key(), &o));
            }
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

/// What the gateway answers: signed JSON, or the cashier page a payer's browser sees.
enum Gateway {
    Json { key: String, inner: String },
    Cashier(String),
}

impl AlipaySim {
    /// Answers a gateway call through the shared answer → latency → sign path; `base` is
    /// the sandbox's own `scheme://host` (a statement's download url points there).
    pub(super) async fn gateway(
        &self,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
        base: &str,
    ) -> Answer {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in sign::decode(query.unwrap_or("").as_bytes())
            .into_iter()
            .chain(sign::decode(body))
        {
            params.insert(k, v);
        }
        self.shared
            .respond(
                |faults| {
                    let out = self.gateway_answer(method, &params, faults, base);
                    let error = match &out.answer {
                        Gateway::Json { inner, .. } | Gateway::Cashier(inner) => {
                            serde_json::from_str::<Value>(inner)
                                .map_or(true, |v| v["code"] != "10000")
                        }
                    };
                    Outcome { error, ..out }
                },
                |answer, signing| match answer {
                    Gateway::Json { key, inner } => self.alipay_answer(&key, &inner, signing),
                    Gateway::Cashier(inner) => {
                        cashier(&serde_json::from_str(&inner).unwrap_or(Value::Null))
                    }
                },
            )
            .await
    }

    fn gateway_answer(
        &self,
        method: &Method,
        params: &BTreeMap<String, String>,
        faults: &Faults,
        base: &str,
    ) -> Outcome<Gateway> {
        let api = params.get("method").cloned().unwrap_or_default();
        let json = |key: String, inner: String| Gateway::Json { key, inner };
        if let Err(why) = self.check_alipay_signature(params) {
            let why = why.to_string();
            let inner = error_body("40002", "Invalid Arguments", "isv.invalid-signature", &why);
            return Outcome::done(json("error_response".into(), inner), true);
        }
        let op = match api.as_str() {
            "alipay.trade.precreate"
            | "alipay.trade.page.pay"
            | "alipay.trade.wap.pay"
            | "alipay.trade.app.pay" => Some(Op::Create),
            "alipay.trade.query" => Some(Op::Query),
            "alipay.trade.close" => Some(Op::Close),
            "alipay.trade.refund" => Some(Op::Refund),
            "alipay.trade.fastpay.refund.query" => Some(Op::RefundQuery),
            "alipay.data.dataservice.bill.downloadurl.query" => Some(Op::Statement),
            _ => None,
        };
        let ids = if faults.accounts.is_some() {
            self.account_ids(params)
        } else {
            Vec::new()
        };
        if let Some(f) = self.shared.take_failure(op, &ids) {
            let sub = f.code.unwrap_or_else(|| "ACQ.SYSTEM_ERROR".into());
            let (code, msg) = gateway_code(&sub);
            let inner = error_body(code, msg, &sub, "injected by /sandbox/faults");
            return Outcome::injected(json(response_key(&api), inner));
        }
        let biz: Value = params
            .get("biz_content")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        // ISV: the token stands for a seller (a refreshed token for the same one); an
        // unknown token is refused, as Alipay refuses a revoked or made-up grant.
        let seller = match params.get("app_auth_token") {
            Some(token) => match self.grants.load().get(token) {
                Some(seller) => seller.clone(),
                None => {
                    let inner = error_body(
                        "20001",
                        "Insufficient Token Permissions",
                        "aop.invalid-app-auth-token",
                        "无效的应用授权令牌",
                    );
                    return Outcome::done(json(response_key(&api), inner), true);
                }
            },
            None => params.get("app_id").cloned().unwrap_or_default(),
        };
        let inner = match api.as_str() {
            "alipay.trade.precreate" => self.ali_create(params, &biz, &seller),
            "alipay.trade.page.pay" | "alipay.trade.wap.pay" | "alipay.trade.app.pay"
                if *method == Method::GET =>
            {
                let inner = self.ali_create(params, &biz, &seller);
                return Outcome::done(Gateway::Cashier(inner), false);
            }
            "alipay.trade.query" => self.ali_query(&biz, &seller),
            "alipay.trade.close" => self.ali_close(&biz, &seller),
            "alipay.trade.refund" => self.ali_refund(&biz, &seller, faults),
            "alipay.trade.fastpay.refund.query" => self.ali_refund_query(&biz, &seller),
            "alipay.data.dataservice.bill.downloadurl.query" => {
                let direct = !params.contains_key("app_auth_token");
                self.ali_bill(&biz, &seller, direct, base, faults)
            }
            _ => error_body(
                "40004",
                "Business Failed",
                "ACQ.INVALID_PARAMETER",
                "method not supported by the sandbox",
            ),
        };
        // `error` is filled in from the inner code by the caller.
        Outcome::done(json(response_key(&api), inner), false)
    }

    /// The account ids a signed gateway request names, for [`Faults::accounts`]: its
    /// `app_id`, and the seller it acts for — ISV: the seller id its `app_auth_token` is
    /// granted for (none for an unknown token); direct: the made-up seller id the app's
    /// orders show.
    fn account_ids(&self, params: &BTreeMap<String, String>) -> Vec<String> {
        let app_id = params.get("app_id").cloned().unwrap_or_default();
        let seller = match params.get("app_auth_token") {
            Some(token) => self.grants.load().get(token).cloned(),
            None => Some(direct_seller_id(&app_id)),
        };
        std::iter::once(app_id).chain(seller).collect()
    }

    fn check_alipay_signature(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<(), SignatureRefused> {
        let app_id = params.get("app_id").ok_or(SignatureRefused::NoAppId)?;
        if params.get("sign_type").map(String::as_str) != Some("RSA2") {
            return Err(SignatureRefused::SignType);
        }
        let apps = self.apps.load();
        let key = apps
            .get(app_id)
            .ok_or_else(|| SignatureRefused::UnknownApp(app_id.clone()))?;
        if sign::verify_params(params, key) {
            Ok(())
        } else {
            Err(SignatureRefused::DoesNotVerify)
        }
    }

    /// The inner response object, as JSON text in Alipay's own field order.
    fn ali_create(&self, params: &BTreeMap<String, String>, biz: &Value, seller: &str) -> String {
        let s = |k: &str| biz[k].as_str().filter(|v| !v.is_empty());
        // Every signed create for (seller, out_trade_no) counts, whatever it is answered.
        if let Some(no) = s("out_trade_no") {
            count_call(&self.creates, seller, no);
        }
        let (Some(no), Some(total), Some(subject)) =
            (s("out_trade_no"), s("total_amount"), s("subject"))
        else {
            return error_body(
                "40002",
                "Invalid Arguments",
                "isv.missing-parameter",
                "out_trade_no, total_amount and subject are required",
            );
        };
        let Some(amount) = positive_yuan(total) else {
            return invalid_amount("total_amount");
        };
        // notify_url is optional at Alipay: without it, no notification is sent.
        let api = params.get("method").cloned().unwrap_or_default();
        let key = (seller.to_string(), no.to_string());
        match self.orders.entry(key) {
            dashmap::Entry::Occupied(o) => {
                let o = o.get();
                if o.state == "TRADE_SUCCESS" {
                    return error_body(
                        "40004",
                        "Business Failed",
                        "ACQ.TRADE_HAS_SUCCESS",
                        "交易已被支付",
                    );
                }
                if o.state == "TRADE_CLOSED" {
                    return error_body(
                        "40004",
                        "Business Failed",
                        "ACQ.TRADE_HAS_CLOSE",
                        "交易已经关闭",
                    );
                }
                if o.amount != amount {
                    return error_body(
                        "40004",
                        "Business Failed",
                        "ACQ.INVALID_PARAMETER",
                        "out_trade_no used with another amount",
                    );
                }
            }
            dashmap::Entry::Vacant(slot) => {
                let mut request: serde_json::Map<String, Value> = params
                    .iter()
                    .filter(|(k, _)| k.as_str() != "sign")
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                request.insert("biz_content".into(), biz.clone());
                let app_auth_token = params.get("app_auth_token").cloned();
                slot.insert(AliOrder {
                    seller_id: match app_auth_token {
                        Some(_) => seller.to_string(),
                        None => direct_seller_id(seller),
                    },
                    app_id: params.get("app_id").cloned().unwrap_or_default(),
                    app_auth_token,
                    out_trade_no: no.to_string(),
                    method: api,
                    amount,
                    subject: subject.to_string(),
                    state: "WAIT_BUYER_PAY".into(),
                    trade_no: None,
                    gmt_create: china_datetime(OffsetDateTime::now_utc()),
                    send_pay_date: None,
                    request: Value::Object(request),
                    refunds: Vec::new(),
                });
            }
        }
        format!(
            r#"{{"code":"10000","msg":"Success","out_trade_no":{},"qr_code":{}}}"#,
            json!(no),
            json!(format!("https://qr.alipay.com/sandbox{}", no.len() * 7919))
        )
    }

    fn ali_query(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let Some(o) = self.orders.get(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        count_call(&self.queries, seller, no);
        // Fields in Alipay's order (not sorted), some with non-ASCII text.
        let mut s = format!(
            r#"{{"code":"10000","msg":"Success","buyer_logon_id":"san***@sandbox.example","buyer_pay_amount":"{}","out_trade_no":{},"subject":{},"total_amount":"{}","trade_status":"{}""#,
            yuan(o.amount),
            json!(o.out_trade_no),
            json!(o.subject),
            yuan(o.amount),
            o.state
        );
        if let Some(t) = &o.trade_no {
            s.push_str(&format!(r#","trade_no":"{t}""#));
        }
        if let Some(d) = &o.send_pay_date {
            s.push_str(&format!(r#","send_pay_date":"{d}""#));
        }
        s.push('}');
        s
    }

    /// Only an unpaid trade closes; a paid or already closed one answers
    /// `ACQ.TRADE_STATUS_ERROR`, as Alipay does.
    fn ali_close(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let Some(mut o) = self.orders.get_mut(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        if o.state != "WAIT_BUYER_PAY" {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_STATUS_ERROR",
                "交易状态不合法",
            );
        }
        o.state = "TRADE_CLOSED".into();
        format!(
            r#"{{"code":"10000","msg":"Success","out_trade_no":{}}}"#,
            json!(no)
        )
    }

    /// `fund_change` is `Y` when this call moved money; `N` for a repeat of the same
    /// out_request_no (never refunded twice) or a refund left processing
    /// (`Faults::alipay_refund_pending`). `refund_fee` is what has been refunded on the trade
    /// so far (settled refunds); processing ones still count against the refundable amount.
    fn ali_refund(&self, biz: &Value, seller: &str, faults: &Faults) -> String {
        let s = |k: &str| biz[k].as_str().filter(|v| !v.is_empty());
        let (Some(no), Some(amount), Some(request_no)) =
            (s("out_trade_no"), s("refund_amount"), s("out_request_no"))
        else {
            return error_body(
                "40002",
                "Invalid Arguments",
                "isv.missing-parameter",
                "out_trade_no, refund_amount and out_request_no are required",
            );
        };
        let Some(amount) = positive_yuan(amount) else {
            return invalid_amount("refund_amount");
        };
        // With trade_no too, Alipay refunds that trade only: another trade of this seller's
        // under the same out_trade_no does not exist for this request.
        let Some(mut o) = self
            .orders
            .get_mut(&(seller.to_string(), no.to_string()))
            .filter(|o| s("trade_no").is_none_or(|t| o.trade_no.as_deref() == Some(t)))
        else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        let mut note = None;
        let fund_change = if let Some(r) = o.refunds.iter().find(|r| r.out_request_no == request_no)
        {
            if r.amount != amount {
                return error_body(
                    "40004",
                    "Business Failed",
                    "ACQ.INVALID_PARAMETER",
                    "out_request_no used with another amount",
                );
            }
            "N"
        } else {
            if o.state != "TRADE_SUCCESS" {
                return error_body(
                    "40004",
                    "Business Failed",
                    "ACQ.TRADE_STATUS_ERROR",
                    "交易状态不合法",
                );
            }
            let held: u64 = o.refunds.iter().map(|r| r.amount).sum();
            if held + amount > o.amount {
                return error_body(
                    "40004",
                    "Business Failed",
                    "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                    "退款金额超限",
                );
            }
            let settled = !faults.alipay_refund_pending;
            let r = AliRefund {
                out_request_no: request_no.to_string(),
                amount,
                settled,
                gmt_refund: settled.then(|| china_datetime(OffsetDateTime::now_utc())),
            };
            o.refunds.push(r.clone());
            if settled {
                note = self.alipay_notification(&o, Some(&r));
                "Y"
            } else {
                "N"
            }
        };
        let answer = format!(
            r#"{{"code":"10000","msg":"Success","buyer_logon_id":"san***@sandbox.example","fund_change":"{fund_change}","out_trade_no":{},"refund_fee":"{}","trade_no":{}}}"#,
            json!(no),
            yuan(o.refunded()),
            json!(o.trade_no)
        );
        drop(o);
        if let Some(n) = note {
            self.shared.notify(n, faults.plan());
        }
        answer
    }

    /// A refund left processing has settled by the time it is queried.
    fn ali_refund_query(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let request_no = biz["out_request_no"].as_str().unwrap_or("");
        let Some(mut o) = self.orders.get_mut(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        let total = o.amount;
        let mut note = None;
        let answer = match o
            .refunds
            .iter_mut()
            .find(|r| r.out_request_no == request_no)
        {
            Some(r) => {
                let settles = !r.settled;
                r.settled = true;
                if settles {
                    r.gmt_refund = Some(china_datetime(OffsetDateTime::now_utc()));
                }
                let r = r.clone();
                if settles {
                    note = self.alipay_notification(&o, Some(&r));
                }
                format!(
                    r#"{{"code":"10000","msg":"Success","out_request_no":{},"out_trade_no":{},"refund_amount":"{}","refund_status":"REFUND_SUCCESS","total_amount":"{}","trade_no":{}}}"#,
                    json!(request_no),
                    json!(no),
                    yuan(r.amount),
                    yuan(total),
                    json!(o.trade_no)
                )
            }
            // As Alipay: success code, no refund_status, when there is no such refund.
            None => format!(
                r#"{{"code":"10000","msg":"Success","out_trade_no":{}}}"#,
                json!(no)
            ),
        };
        drop(o);
        if let Some(n) = note {
            let plan = self.shared.faults().plan();
            self.shared.notify(n, plan);
        }
        answer
    }

    /// The `trade_status_sync` notification of a just-paid order, or (with `refund`) of a
    /// refund that just settled: `TRADE_SUCCESS`, `TRADE_CLOSED` once fully refunded, with
    /// `out_biz_no`, `refund_fee` (all refunded so far) and `gmt_refund`. To the create
    /// request's `notify_url`; none without one, as at Alipay. Signed RSA2 with the sandbox's
    /// TEST-ONLY Alipay key over the sorted fields but `sign` and `sign_type`.
    fn alipay_notification(
        &self,
        o: &AliOrder,
        refund: Option<&AliRefund>,
    ) -> Option<Notification> {
        let url = o.request["notify_url"].as_str().filter(|u| !u.is_empty())?;
        let now = OffsetDateTime::now_utc();
        let mut p: BTreeMap<String, String> = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            p.insert(k.to_string(), v);
        };
        put("notify_time", china_datetime(now));
        put("notify_type", "trade_status_sync".into());
        put(
            "notify_id",
            crate::channel::wechatpay::sign::nonce().to_lowercase(),
        );
        put("app_id", o.app_id.clone());
        // ISV: the merchant's own app (a stable made-up one, kept by a token refresh);
        // direct: the app itself.
        put(
            "auth_app_id",
            match &o.app_auth_token {
                Some(_) => format!("2021{:012}", stable_digits(&o.seller_id)),
                None => o.app_id.clone(),
            },
        );
        put("charset", "utf-8".into());
        put("version", "1.0".into());
        put("trade_no", o.trade_no.clone().unwrap_or_default());
        put("out_trade_no", o.out_trade_no.clone());
        put("buyer_id", "2088102177846880".into());
        put("seller_id", o.seller_id.clone());
        put("subject", o.subject.clone());
        put("total_amount", yuan(o.amount));
        put("receipt_amount", yuan(o.amount));
        put("buyer_pay_amount", yuan(o.amount));
        put("gmt_create", o.gmt_create.clone());
        put("gmt_payment", o.send_pay_date.clone().unwrap_or_default());
        let mut status = "TRADE_SUCCESS";
        if let Some(r) = refund {
            let refunded = o.refunded();
            if refunded >= o.amount {
                status = "TRADE_CLOSED";
                put("gmt_close", china_datetime(now));
            }
            put("out_biz_no", r.out_request_no.clone());
            put("refund_fee", yuan(refunded));
            let ms = now.millisecond();
            // The settlement time the statement shows too.
            let at = r.gmt_refund.clone().unwrap_or_else(|| china_datetime(now));
            put("gmt_refund", format!("{at}.{ms:03}"));
        }
        put("trade_status", status.into());
        let sign = self.signer.sign_b64(sign::string_to_sign(&p).as_bytes());
        p.insert("sign_type".into(), "RSA2".into());
        p.insert("sign".into(), sign);
        Some(Notification {
            provider: Provider::Alipay,
            kind: if refund.is_some() {
                Kind::Refund
            } else {
                Kind::Payment
            },
            out_trade_no: o.out_trade_no.clone(),
            out_refund_no: refund.map(|r| r.out_request_no.clone()),
            url: url.to_string(),
            body: Bytes::from(sign::encode(&p)),
            wechat: None,
        })
    }

    /// `{"<key>":<inner>,"sign":"…"}` with the signature over the exact bytes of `inner`;
    /// `{"<key>":<inner>}` when the answer goes unsigned.
    fn alipay_answer(&self, key: &str, inner: &str, signing: &Signing) -> Answer {
        let body = match signing.signature(&self.signer, inner.as_bytes()) {
            Some(signature) => format!(r#"{{"{key}":{inner},"sign":"{signature}"}}"#),
            None => format!(r#"{{"{key}":{inner}}}"#),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html;charset=utf-8"),
        );
        resp
    }
}

impl AlipaySim {
    /// `alipay.data.dataservice.bill.downloadurl.query` with `bill_type` `trade`: the
    /// statement of the seller's trades (ISV: the `app_auth_token`'s seller; direct: the
    /// app's own) paid on that China day and its refunds settled that day, kept as a zip
    /// for `/sandbox/alipay/bill/download?token=…`; answers its `bill_download_url`. A day
    /// after today is `isp.bill_not_exist`; `corrupt_statements` keeps the zip truncated.
    fn ali_bill(
        &self,
        biz: &Value,
        seller: &str,
        direct: bool,
        base: &str,
        faults: &Faults,
    ) -> String {
        let invalid =
            |why: &str| error_body("40002", "Invalid Arguments", "isv.invalid-arguments", why);
        if biz["bill_type"].as_str() != Some("trade") {
            return invalid("the sandbox serves bill_type trade only");
        }
        let day = match bills::statement_day(biz["bill_date"].as_str().unwrap_or_default()) {
            Ok(day) => day,
            Err(BadDay::Malformed) => return invalid("bill_date must be a day yyyy-MM-dd"),
            Err(BadDay::Future) => {
                return error_body(
                    "40004",
                    "Business Failed",
                    "isp.bill_not_exist",
                    "账单不存在",
                )
            }
        };
        let pid = if direct {
            direct_seller_id(seller)
        } else {
            seller.to_string()
        };
        let override_rate = faults.statement_fee_rate();
        let rates = self.fee_rates.load();
        let rows = self
            .orders
            .iter()
            .filter(|o| o.key().0 == seller)
            .flat_map(|o| {
                let rate = override_rate
                    .or_else(|| rates.get(&o.app_id).copied())
                    .unwrap_or_default();
                statement::rows(&o, day, rate)
            })
            .collect();
        let mut zip = match statement::zip(&pid, day, rows) {
            Ok(z) => z,
            Err(e) => {
                return error_body(
                    "20000",
                    "Service Currently Unavailable",
                    "isp.unknow-error",
                    &e.to_string(),
                )
            }
        };
        if faults.corrupt_statements {
            zip.truncate(zip.len() / 2);
        }
        let token = self.bills.keep(Kept {
            owner: None,
            bytes: Bytes::from(zip),
            content_type: "application/zip",
            filename: statement::zip_name(&pid, day),
        });
        format!(
            r#"{{"code":"10000","msg":"Success","bill_download_url":{}}}"#,
            json!(format!("{base}/sandbox/alipay/bill/download?token={token}"))
        )
    }

    /// `GET /sandbox/alipay/bill/download?token=…` (no signature, as at Alipay): the zip.
    pub(super) fn bill_download(&self, token: &str) -> Answer {
        match self.bills.get(token) {
            Some(f) => bills::file_answer(&f),
            None => super::shared::plain(
                StatusCode::NOT_FOUND,
                json!({"code": "NOT_FOUND", "message": "no statement for this token"}),
            ),
        }
    }
}

/// The seller id a direct app's orders show: a stable made-up one.
fn direct_seller_id(app_id: &str) -> String {
    format!("2088{:012}", stable_digits(app_id))
}

/// The gateway `code` and `msg` Alipay answers with a `sub_code`: `isp.*` are its own
/// failures, `aop.*` token errors, `isv.*` the caller's arguments or permissions; the rest
/// (`ACQ.*`, …) business failures.
fn gateway_code(sub_code: &str) -> (&'static str, &'static str) {
    if sub_code == "isp.bill_not_exist" {
        ("40004", "Business Failed")
    } else if sub_code.starts_with("isp.") {
        ("20000", "Service Currently Unavailable")
    } else if sub_code.starts_with("aop.") {
        ("20001", "Insufficient Token Permissions")
    } else if sub_code.starts_with("isv.insufficient-") {
        ("40006", "Insufficient Permissions")
    } else if sub_code.starts_with("isv.") {
        ("40002", "Invalid Arguments")
    } else {
        ("40004", "Business Failed")
    }
}

/// 12 digits that stay the same for the same text (FNV-1a), for made-up Alipay ids.
fn stable_digits(text: &str) -> u64 {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h % 1_000_000_000_000
}

/// A positive yuan amount in fen.
fn positive_yuan(value: &str) -> Option<u64> {
    parse_yuan(value).ok().filter(|a| *a > 0)
}

/// The error answer Alipay gives for an amount that is not a positive yuan amount.
fn invalid_amount(field: &str) -> String {
    error_body(
        "40004",
        "Business Failed",
        "ACQ.INVALID_PARAMETER",
        &format!("{field} is not a valid amount"),
    )
}

/// Why the gateway refused a request's signature; the text is the `sub_msg` it answers.
#[derive(Debug, thiserror::Error)]
enum SignatureRefused {
    #[error("app_id is missing")]
    NoAppId,
    #[error("sign_type must be RSA2")]
    SignType,
    #[error("no public key for app {0}")]
    UnknownApp(String),
    #[error("验签出错 (signature does not verify)")]
    DoesNotVerify,
}

fn response_key(api: &str) -> String {
    if api.is_empty() {
        return "error_response".into();
    }
    format!("{}_response", api.replace('.', "_"))
}

fn error_body(code: &str, msg: &str, sub_code: &str, sub_msg: &str) -> String {
    format!(
        r#"{{"code":{},"msg":{},"sub_code":{},"sub_msg":{}}}"#,
        json!(code),
        json!(msg),
        json!(sub_code),
        json!(sub_msg)
    )
}

/// What a payer's browser sees after opening a signed page/WAP/App order.
fn cashier(inner: &Value) -> Answer {
    let (status, text) = if inner["code"] == "10000" {
        (
            StatusCode::OK,
            format!(
                "payroute sandbox cashier (TEST ONLY): order {} is waiting for payment\n",
                inner["out_trade_no"]
            ),
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "payroute sandbox cashier: {} {}\n",
                inner["sub_code"], inner["sub_msg"]
            ),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}
