//! The sandbox's Alipay classic gateway (`/gateway.do`): checks RSA2 request signatures with
//! the app's public key, answers signed JSON whose `<method>_response` keeps Alipay's own key
//! order (so a verifier that re-serialises fails, as it would against Alipay), and keeps
//! orders in memory. Page, WAP and App orders come into being when the payer opens them
//! (a GET of the signed URL or order string), as at Alipay.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::notify::{Kind, Notification, Provider};
use super::{count_call, Faults, Op, Outcome, Sandbox, Signing};
use crate::channel::alipay::{china_datetime, sign};
use crate::domain::{parse_yuan, yuan};

#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct AliOrder {
    app_id: String,
    /// `app_auth_token` in ISV mode, as the create came.
    app_auth_token: Option<String>,
    /// Whose money it is: the seller the ISV token acts for, or (direct) a stable made-up
    /// user id of the app's owner. Signed into every notification as `seller_id`.
    seller_id: String,
    pub(super) out_trade_no: String,
    method: String,
    amount: u64,
    subject: String,
    pub(super) state: String,
    trade_no: Option<String>,
    /// When the order came into being (`gmt_create` of its notifications).
    gmt_create: String,
    send_pay_date: Option<String>,
    /// Every request parameter as received except `sign` (biz_content parsed).
    request: Value,
    /// Refunds, each shown as `[out_request_no, amount, status]`.
    refunds: Vec<AliRefund>,
}

#[derive(Clone, Debug)]
pub(super) struct AliRefund {
    out_request_no: String,
    amount: u64,
    /// False while processing (`Faults::alipay_refund_pending`): no money moved yet.
    settled: bool,
}

/// As the tuple the orders view has always shown, with the status appended.
impl Serialize for AliRefund {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.out_request_no)?;
        t.serialize_element(&self.amount)?;
        t.serialize_element(if self.settled {
            "REFUND_SUCCESS"
        } else {
            "REFUND_PROCESSING"
        })?;
        t.end()
    }
}

impl AliOrder {
    /// `?late=true`: a closed trade that was never paid takes a payment after all.
    pub(super) fn reopen_closed(&mut self) {
        if self.state == "TRADE_CLOSED" && self.trade_no.is_none() {
            self.state = "WAIT_BUYER_PAY".into();
        }
    }

    pub(super) fn mark_paid(&mut self, n: u64) -> bool {
        if self.state != "WAIT_BUYER_PAY" {
            return false;
        }
        self.state = "TRADE_SUCCESS".into();
        self.trade_no = Some(format!("2026{n:024}"));
        self.send_pay_date = Some(china_datetime(OffsetDateTime::now_utc()));
        true
    }

    /// The order as `GET /sandbox/orders` shows it: every field, plus the account (which
    /// says whether an app_auth_token came, never the token).
    pub(super) fn view(&self) -> Value {
        let mut v = json!(self);
        v["account"] = json!({
            "provider": "alipay",
            "app_id": self.app_id,
            "app_auth_token_present": self.app_auth_token.is_some(),
        });
        v
    }

    /// What has been refunded so far: settled refunds only.
    fn refunded(&self) -> u64 {
        self.refunds
            .iter()
            .filter(|r| r.settled)
            .map(|r| r.amount)
            .sum()
    }
}

type Answer = Response<Full<Bytes>>;

/// What the gateway answers: signed JSON, or the cashier page a payer's browser sees.
enum Gateway {
    Json { key: String, inner: String },
    Cashier(String),
}

impl Sandbox {
    /// Answers a gateway call through the shared answer → latency → sign path.
    pub(super) async fn alipay_gateway(
        &self,
        method: &Method,
        query: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in sign::decode(query.unwrap_or("").as_bytes())
            .into_iter()
            .chain(sign::decode(body))
        {
            params.insert(k, v);
        }
        self.respond(
            |faults| {
                let out = self.gateway_answer(method, &params, faults);
                let error = match &out.answer {
                    Gateway::Json { inner, .. } | Gateway::Cashier(inner) => {
                        serde_json::from_str::<Value>(inner).map_or(true, |v| v["code"] != "10000")
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
    ) -> Outcome<Gateway> {
        let api = params.get("method").cloned().unwrap_or_default();
        let json = |key: String, inner: String| Gateway::Json { key, inner };
        if let Err(why) = self.check_alipay_signature(params) {
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
            _ => None,
        };
        if let Some(f) = self.take_failure(op) {
            let sub = f.code.unwrap_or_else(|| "ACQ.SYSTEM_ERROR".into());
            let inner = error_body(
                "40004",
                "Business Failed",
                &sub,
                "injected by /sandbox/faults",
            );
            return Outcome::injected(json(response_key(&api), inner));
        }
        let biz: Value = params
            .get("biz_content")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        // ISV: the token stands for a seller (a refreshed token for the same one); an
        // unknown token is refused, as Alipay refuses a revoked or made-up grant.
        let seller = match params.get("app_auth_token") {
            Some(token) => match self.alipay_grants.load().get(token) {
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

    fn check_alipay_signature(&self, params: &BTreeMap<String, String>) -> Result<(), String> {
        let app_id = params.get("app_id").ok_or("app_id is missing")?;
        if params.get("sign_type").map(String::as_str) != Some("RSA2") {
            return Err("sign_type must be RSA2".into());
        }
        let apps = self.alipay_apps.load();
        let key = apps
            .get(app_id)
            .ok_or_else(|| format!("no public key for app {app_id}"))?;
        if sign::verify_params(params, key) {
            Ok(())
        } else {
            Err("验签出错 (signature does not verify)".into())
        }
    }

    /// The inner response object, as JSON text in Alipay's own field order.
    fn ali_create(&self, params: &BTreeMap<String, String>, biz: &Value, seller: &str) -> String {
        let s = |k: &str| biz[k].as_str().filter(|v| !v.is_empty());
        // Every signed create for (seller, out_trade_no) counts, whatever it is answered.
        if let Some(no) = s("out_trade_no") {
            count_call(&self.alipay_creates, seller, no);
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
        let amount = match positive_yuan(total, "total_amount") {
            Ok(a) => a,
            Err(body) => return body,
        };
        // notify_url is optional at Alipay: without it, no notification is sent.
        let api = params.get("method").cloned().unwrap_or_default();
        let key = (seller.to_string(), no.to_string());
        match self.alipay_orders.entry(key) {
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
                        None => format!("2088{:012}", stable_digits(seller)),
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
        let Some(o) = self
            .alipay_orders
            .get(&(seller.to_string(), no.to_string()))
        else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        count_call(&self.alipay_queries, seller, no);
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
        let Some(mut o) = self
            .alipay_orders
            .get_mut(&(seller.to_string(), no.to_string()))
        else {
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
        let amount = match positive_yuan(amount, "refund_amount") {
            Ok(a) => a,
            Err(body) => return body,
        };
        // With trade_no too, Alipay refunds that trade only: another trade of this seller's
        // under the same out_trade_no does not exist for this request.
        let Some(mut o) = self
            .alipay_orders
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
            self.notify(n, faults.plan());
        }
        answer
    }

    /// A refund left processing has settled by the time it is queried.
    fn ali_refund_query(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let request_no = biz["out_request_no"].as_str().unwrap_or("");
        let Some(mut o) = self
            .alipay_orders
            .get_mut(&(seller.to_string(), no.to_string()))
        else {
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
            let plan = self.faults().plan();
            self.notify(n, plan);
        }
        answer
    }

    /// The `trade_status_sync` notification of a just-paid order, or (with `refund`) of a
    /// refund that just settled: `TRADE_SUCCESS`, `TRADE_CLOSED` once fully refunded, with
    /// `out_biz_no`, `refund_fee` (all refunded so far) and `gmt_refund`. To the create
    /// request's `notify_url`; none without one, as at Alipay. Signed RSA2 with the sandbox's
    /// TEST-ONLY Alipay key over the sorted fields but `sign` and `sign_type`.
    pub(super) fn alipay_notification(
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
            put("gmt_refund", format!("{}.{ms:03}", china_datetime(now)));
        }
        put("trade_status", status.into());
        let sign = self
            .alipay_signer
            .sign_b64(sign::string_to_sign(&p).as_bytes());
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
        let body = match signing.signature(&self.alipay_signer, inner.as_bytes()) {
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

/// 12 digits that stay the same for the same text (FNV-1a), for made-up Alipay ids.
fn stable_digits(text: &str) -> u64 {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h % 1_000_000_000_000
}

/// A positive yuan amount in fen, or the error answer Alipay gives for it.
fn positive_yuan(value: &str, field: &str) -> Result<u64, String> {
    match parse_yuan(value) {
        Ok(a) if a > 0 => Ok(a),
        _ => Err(error_body(
            "40004",
            "Business Failed",
            "ACQ.INVALID_PARAMETER",
            &format!("{field} is not a valid amount"),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::super::Sandbox;
    use super::*;

    const APP: &str = "2021000000009999";

    fn params(token: Option<&str>) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert("app_id".to_string(), APP.to_string());
        p.insert("method".to_string(), "alipay.trade.precreate".to_string());
        if let Some(t) = token {
            p.insert("app_auth_token".to_string(), t.to_string());
        }
        p
    }

    fn v(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn paid_order(sb: &Sandbox, no: &str, total: &str) {
        let biz = json!({"out_trade_no": no, "total_amount": total, "subject": "s"});
        assert_eq!(v(&sb.ali_create(&params(None), &biz, APP))["code"], "10000");
        sb.alipay_orders
            .get_mut(&(APP.into(), no.into()))
            .unwrap()
            .mark_paid(7);
    }

    fn refund(sb: &Sandbox, no: &str, req: &str, amount: &str, faults: &Faults) -> Value {
        let biz = json!({"out_trade_no": no, "out_request_no": req, "refund_amount": amount});
        v(&sb.ali_refund(&biz, APP, faults))
    }

    #[test]
    fn create_needs_no_notify_url_counts_calls_and_shows_the_account_without_a_token() {
        let sb = Sandbox::new(Vec::new());
        let biz = json!({"out_trade_no": "a-1", "total_amount": "1.00", "subject": "s"});
        let seller = "tok_SECRET";
        assert_eq!(
            v(&sb.ali_create(&params(Some(seller)), &biz, seller))["code"],
            "10000"
        );
        assert_eq!(
            v(&sb.ali_create(&params(Some(seller)), &biz, seller))["code"],
            "10000"
        );
        let key = (seller.to_string(), "a-1".to_string());
        sb.alipay_orders.get_mut(&key).unwrap().mark_paid(1);
        let again = v(&sb.ali_create(&params(Some(seller)), &biz, seller));
        assert_eq!(again["sub_code"], "ACQ.TRADE_HAS_SUCCESS");
        let view = sb.alipay_view(&key, &sb.alipay_orders.get(&key).unwrap());
        assert_eq!(view["create_calls"], 3);
        assert_eq!(
            view["account"],
            json!({"provider": "alipay", "app_id": APP, "app_auth_token_present": true})
        );
        assert_eq!(view["state"], "TRADE_SUCCESS");
        assert_eq!(view["request"]["biz_content"]["total_amount"], "1.00");
    }

    #[test]
    fn close_of_a_closed_or_paid_trade_is_a_status_error() {
        let sb = Sandbox::new(Vec::new());
        let biz = json!({"out_trade_no": "c-1", "total_amount": "1.00", "subject": "s"});
        sb.ali_create(&params(None), &biz, APP);
        let close = |no: &str| v(&sb.ali_close(&json!({ "out_trade_no": no }), APP));
        assert_eq!(close("c-1")["code"], "10000");
        assert_eq!(close("c-1")["sub_code"], "ACQ.TRADE_STATUS_ERROR");
        paid_order(&sb, "c-2", "1.00");
        assert_eq!(close("c-2")["sub_code"], "ACQ.TRADE_STATUS_ERROR");
        assert_eq!(close("c-3")["sub_code"], "ACQ.TRADE_NOT_EXIST");
    }

    #[test]
    fn refunds_answer_fund_change_and_the_total_refunded() {
        let sb = Sandbox::new(Vec::new());
        let none = Faults::default();
        paid_order(&sb, "r-1", "1.00");
        let r = refund(&sb, "r-1", "r-1-a", "0.30", &none);
        assert_eq!(
            (r["fund_change"].as_str(), r["refund_fee"].as_str()),
            (Some("Y"), Some("0.30"))
        );
        let r = refund(&sb, "r-1", "r-1-b", "0.20", &none);
        assert_eq!(
            (r["fund_change"].as_str(), r["refund_fee"].as_str()),
            (Some("Y"), Some("0.50"))
        );
        // A repeat refunds nothing twice.
        let r = refund(&sb, "r-1", "r-1-a", "0.30", &none);
        assert_eq!(
            (r["fund_change"].as_str(), r["refund_fee"].as_str()),
            (Some("N"), Some("0.50"))
        );
        let r = refund(&sb, "r-1", "r-1-c", "0.51", &none);
        assert_eq!(r["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
        let q = v(&sb.ali_refund_query(
            &json!({"out_trade_no": "r-1", "out_request_no": "r-1-b"}),
            APP,
        ));
        assert_eq!(
            (
                q["refund_status"].as_str(),
                q["refund_amount"].as_str(),
                q["total_amount"].as_str()
            ),
            (Some("REFUND_SUCCESS"), Some("0.20"), Some("1.00"))
        );
        let q = v(&sb.ali_refund_query(
            &json!({"out_trade_no": "r-1", "out_request_no": "nope"}),
            APP,
        ));
        assert_eq!(
            (q["code"].as_str(), q.get("refund_status")),
            (Some("10000"), None)
        );
    }

    #[test]
    fn a_pending_refund_moves_no_money_until_it_settles() {
        let sb = Sandbox::new(Vec::new());
        let pending = Faults {
            alipay_refund_pending: true,
            ..Faults::default()
        };
        paid_order(&sb, "p-1", "1.00");
        let r = refund(&sb, "p-1", "p-1-a", "0.60", &pending);
        assert_eq!(
            (r["code"].as_str(), r["fund_change"].as_str()),
            (Some("10000"), Some("N"))
        );
        assert_eq!(r["refund_fee"], "0.00", "nothing refunded yet");
        // Processing still holds the amount.
        let r = refund(&sb, "p-1", "p-1-b", "0.50", &Faults::default());
        assert_eq!(r["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
        let key = (APP.to_string(), "p-1".to_string());
        let view = sb.alipay_view(&key, &sb.alipay_orders.get(&key).unwrap());
        assert_eq!(
            view["refunds"][0],
            json!(["p-1-a", 60, "REFUND_PROCESSING"])
        );
        let q = v(&sb.ali_refund_query(
            &json!({"out_trade_no": "p-1", "out_request_no": "p-1-a"}),
            APP,
        ));
        assert_eq!(
            (q["refund_status"].as_str(), q["refund_amount"].as_str()),
            (Some("REFUND_SUCCESS"), Some("0.60"))
        );
        let r = refund(&sb, "p-1", "p-1-a", "0.60", &Faults::default());
        assert_eq!(
            (r["fund_change"].as_str(), r["refund_fee"].as_str()),
            (Some("N"), Some("0.60"))
        );
    }

    #[tokio::test]
    async fn injected_failures_can_go_unsigned_and_errors_tampered() {
        let sb = Sandbox::new(Vec::new());
        let key = sb.alipay_signer.verifier();
        let answer = |out: Outcome<String>| {
            sb.respond(
                move |_| out,
                |inner, signing| sb.alipay_answer("k_response", &inner, signing),
            )
        };
        let body = |resp: Answer| async move {
            use http_body_util::BodyExt;
            let b = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(b.to_vec()).unwrap()
        };
        let err = error_body("40004", "Business Failed", "ACQ.SYSTEM_ERROR", "x");
        *sb.faults() =
            serde_json::from_value(json!({"fail_unsigned": true, "retry_after_secs": 2})).unwrap();
        let resp = answer(Outcome::injected(err.clone())).await;
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(body(resp).await, format!(r#"{{"k_response":{err}}}"#));

        *sb.faults() = serde_json::from_value(json!({"tamper_errors": true})).unwrap();
        let split = |text: &str| v(text)["sign"].as_str().unwrap().to_string();
        let text = body(answer(Outcome::done(err.clone(), true)).await).await;
        assert!(!key.verify_b64(err.as_bytes(), &split(&text)));
        let ok = r#"{"code":"10000","msg":"Success"}"#.to_string();
        let text = body(answer(Outcome::done(ok.clone(), false)).await).await;
        assert!(key.verify_b64(ok.as_bytes(), &split(&text)));
    }

    mod notifications {
        use std::sync::Arc;

        use super::super::super::notify::testing::Fake;
        use super::*;

        fn sandbox(fake: &Arc<Fake>) -> Arc<Sandbox> {
            Sandbox::with_transport(Vec::new(), fake.clone())
        }

        /// Creates an order (ISV with `token`) whose create named `notify_url`.
        fn order(sb: &Sandbox, no: &str, token: Option<&str>, notify_url: Option<&str>) {
            let mut p = params(token);
            if let Some(u) = notify_url {
                p.insert("notify_url".into(), u.into());
            }
            let biz = json!({"out_trade_no": no, "total_amount": "1.00", "subject": "书"});
            let seller = token.unwrap_or(APP);
            assert_eq!(v(&sb.ali_create(&p, &biz, seller))["code"], "10000");
        }

        /// The i-th received form, verified with the sandbox's Alipay public key.
        fn form(sb: &Sandbox, fake: &Fake, i: usize) -> BTreeMap<String, String> {
            let r = &fake.received.lock().unwrap()[i];
            assert_eq!(
                r.headers["content-type"],
                "application/x-www-form-urlencoded; charset=utf-8"
            );
            let fields = sign::decode(&r.body);
            assert!(fields.iter().any(|(k, v)| k == "sign_type" && v == "RSA2"));
            let key = sb.alipay_signer.verifier();
            let map = sign::verify_notification(&fields, &key).unwrap();
            // Any field changed: it no longer verifies.
            let mut tampered = fields.clone();
            let amount = tampered
                .iter_mut()
                .find(|(k, _)| k == "total_amount")
                .unwrap();
            amount.1 = "100.00".into();
            assert!(sign::verify_notification(&tampered, &key).is_err());
            map
        }

        #[tokio::test(start_paused = true)]
        async fn pay_and_refunds_are_notified_signed_until_closed() {
            let fake = Arc::new(Fake::new(&[], (200, "success")));
            let sb = sandbox(&fake);
            order(
                &sb,
                "a-1",
                Some("tok_x"),
                Some("http://127.0.0.1:9/notify/ali"),
            );
            assert_eq!(sb.pay("a-1", None).status(), 200);
            fake.wait_for(1).await;
            assert_eq!(
                fake.received.lock().unwrap()[0].uri,
                "http://127.0.0.1:9/notify/ali"
            );
            let f = form(&sb, &fake, 0);
            let get = |f: &BTreeMap<String, String>, k: &str| f.get(k).cloned().unwrap_or_default();
            for (k, want) in [
                ("notify_type", "trade_status_sync"),
                ("app_id", APP),
                ("charset", "utf-8"),
                ("version", "1.0"),
                ("out_trade_no", "a-1"),
                ("trade_status", "TRADE_SUCCESS"),
                ("total_amount", "1.00"),
                ("receipt_amount", "1.00"),
                ("buyer_pay_amount", "1.00"),
                ("subject", "书"),
            ] {
                assert_eq!(get(&f, k), want, "{k}");
            }
            let auth_app_id = get(&f, "auth_app_id");
            assert!(
                auth_app_id.len() == 16 && auth_app_id != APP,
                "{auth_app_id}"
            );
            for k in [
                "notify_time",
                "notify_id",
                "trade_no",
                "buyer_id",
                "seller_id",
                "gmt_create",
                "gmt_payment",
            ] {
                assert!(!get(&f, k).is_empty(), "{k}");
            }
            assert!(!f.contains_key("refund_fee"));

            let none = Faults::default();
            let refund = |req: &str, amount: &str| {
                let biz =
                    json!({"out_trade_no": "a-1", "out_request_no": req, "refund_amount": amount});
                v(&sb.ali_refund(&biz, "tok_x", &none))
            };
            assert_eq!(refund("a-1-r1", "0.30")["fund_change"], "Y");
            fake.wait_for(2).await;
            let f1 = form(&sb, &fake, 1);
            assert_eq!(
                (
                    get(&f1, "trade_status"),
                    get(&f1, "out_biz_no"),
                    get(&f1, "refund_fee")
                ),
                ("TRADE_SUCCESS".into(), "a-1-r1".into(), "0.30".into())
            );
            assert_eq!(
                get(&f1, "gmt_refund").len(),
                "2026-01-01 00:00:00.000".len()
            );
            assert_eq!(get(&f1, "auth_app_id"), auth_app_id, "stable");
            // A repeat moves no money and is not notified; the rest closes the trade.
            assert_eq!(refund("a-1-r1", "0.30")["fund_change"], "N");
            assert_eq!(refund("a-1-r2", "0.70")["fund_change"], "Y");
            fake.wait_for(3).await;
            tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
            assert_eq!(fake.count(), 3);
            let f2 = form(&sb, &fake, 2);
            assert_eq!(
                (
                    get(&f2, "trade_status"),
                    get(&f2, "out_biz_no"),
                    get(&f2, "refund_fee")
                ),
                ("TRADE_CLOSED".into(), "a-1-r2".into(), "1.00".into())
            );
            let log = sb.notifier.attempts();
            assert!(log.iter().all(|a| a.answered_ok && a.attempt == 1));
            assert_eq!(json!(log[2])["provider"], "alipay");
            assert_eq!(log[2].out_refund_no.as_deref(), Some("a-1-r2"));
        }

        #[tokio::test(start_paused = true)]
        async fn a_pending_refund_is_notified_when_it_settles_and_no_url_no_notification() {
            let fake = Arc::new(Fake::new(&[], (200, "success")));
            let sb = sandbox(&fake);
            order(&sb, "n-1", None, None);
            sb.pay("n-1", None);
            order(&sb, "p-1", None, Some("http://127.0.0.1:9/n"));
            sb.pay("p-1", None);
            fake.wait_for(1).await;
            let pending = Faults {
                alipay_refund_pending: true,
                ..Faults::default()
            };
            let biz =
                json!({"out_trade_no": "p-1", "out_request_no": "p-1-a", "refund_amount": "0.40"});
            assert_eq!(v(&sb.ali_refund(&biz, APP, &pending))["fund_change"], "N");
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            assert_eq!(fake.count(), 1, "nothing settled yet");
            let q = json!({"out_trade_no": "p-1", "out_request_no": "p-1-a"});
            sb.ali_refund_query(&q, APP);
            fake.wait_for(2).await;
            sb.ali_refund_query(&q, APP);
            tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
            assert_eq!(fake.count(), 2, "settles once");
            let f = form(&sb, &fake, 1);
            assert_eq!(f["refund_fee"], "0.40");
            assert_eq!(f["trade_status"], "TRADE_SUCCESS");
            assert_eq!(f["auth_app_id"], APP, "direct: the app itself");
            let nos: Vec<String> = sb
                .notifier
                .attempts()
                .iter()
                .map(|a| a.out_trade_no.clone())
                .collect();
            assert_eq!(nos, ["p-1", "p-1"], "n-1 had no notify_url");
        }
    }
}
