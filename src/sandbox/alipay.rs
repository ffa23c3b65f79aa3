//! The sandbox's Alipay classic gateway (`/gateway.do`): checks RSA2 request signatures with
//! the app's public key, answers signed JSON whose `<method>_response` keeps Alipay's own key
//! order (so a verifier that re-serialises fails, as it would against Alipay), and keeps
//! orders in memory. Page, WAP and App orders come into being when the payer opens them
//! (a GET of the signed URL or order string), as at Alipay.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{Faults, Sandbox};
use crate::channel::alipay::{china_datetime, sign};
use crate::domain::{parse_yuan, yuan};

#[derive(Clone, Debug, Serialize)]
pub(super) struct AliOrder {
    app_id: String,
    /// `app_auth_token` in ISV mode: whose money it is.
    app_auth_token: Option<String>,
    pub(super) out_trade_no: String,
    method: String,
    amount: u64,
    subject: String,
    pub(super) state: String,
    trade_no: Option<String>,
    send_pay_date: Option<String>,
    /// Every request parameter as received except `sign` (biz_content parsed).
    request: Value,
    /// Refunds: (out_request_no, amount).
    refunds: Vec<(String, u64)>,
}

impl AliOrder {
    pub(super) fn mark_paid(&mut self, n: u64) -> bool {
        if self.state != "WAIT_BUYER_PAY" {
            return false;
        }
        self.state = "TRADE_SUCCESS".into();
        self.trade_no = Some(format!("2026{n:024}"));
        self.send_pay_date = Some(china_datetime(OffsetDateTime::now_utc()));
        true
    }
}

type Answer = Response<Full<Bytes>>;

/// What the gateway answers: signed JSON, or the cashier page a payer's browser sees.
enum Gateway {
    Json { key: String, inner: String },
    Cashier(String),
}

impl Sandbox {
    /// Answers a gateway call. As for WeChat Pay, injected latency comes after the work.
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
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let answer = self.gateway_answer(method, &params, &faults);
        if faults.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(faults.latency_ms)).await;
        }
        match answer {
            Gateway::Json { key, inner } => self.alipay_answer(&key, &inner, &faults),
            Gateway::Cashier(inner) => {
                cashier(&serde_json::from_str(&inner).unwrap_or(Value::Null))
            }
        }
    }

    fn gateway_answer(
        &self,
        method: &Method,
        params: &BTreeMap<String, String>,
        faults: &Faults,
    ) -> Gateway {
        let api = params.get("method").cloned().unwrap_or_default();
        let json = |key: String, inner: String| Gateway::Json { key, inner };
        if let Err(why) = self.check_alipay_signature(params) {
            let inner = error_body("40002", "Invalid Arguments", "isv.invalid-signature", &why);
            return json("error_response".into(), inner);
        }
        if faults.fail_next > 0 {
            let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            f.fail_next = f.fail_next.saturating_sub(1);
            let sub = faults
                .fail_code
                .clone()
                .unwrap_or_else(|| "ACQ.SYSTEM_ERROR".into());
            let inner = error_body(
                "40004",
                "Business Failed",
                &sub,
                "injected by /sandbox/faults",
            );
            return json(response_key(&api), inner);
        }
        let biz: Value = params
            .get("biz_content")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        let seller = params
            .get("app_auth_token")
            .cloned()
            .unwrap_or_else(|| params.get("app_id").cloned().unwrap_or_default());
        let inner = match api.as_str() {
            "alipay.trade.precreate" => self.ali_create(params, &biz, &seller),
            "alipay.trade.page.pay" | "alipay.trade.wap.pay" | "alipay.trade.app.pay"
                if *method == Method::GET =>
            {
                return Gateway::Cashier(self.ali_create(params, &biz, &seller));
            }
            "alipay.trade.query" => self.ali_query(&biz, &seller),
            "alipay.trade.close" => self.ali_close(&biz, &seller),
            "alipay.trade.refund" => self.ali_refund(&biz, &seller),
            "alipay.trade.fastpay.refund.query" => self.ali_refund_query(&biz, &seller),
            _ => error_body(
                "40004",
                "Business Failed",
                "ACQ.INVALID_PARAMETER",
                "method not supported by the sandbox",
            ),
        };
        json(response_key(&api), inner)
    }

    fn check_alipay_signature(&self, params: &BTreeMap<String, String>) -> Result<(), String> {
        let app_id = params.get("app_id").ok_or("app_id is missing")?;
        if params.get("sign_type").map(String::as_str) != Some("RSA2") {
            return Err("sign_type must be RSA2".into());
        }
        let apps = self.alipay_apps.read().unwrap_or_else(|p| p.into_inner());
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
        if params.get("notify_url").is_none_or(|u| u.is_empty()) {
            return error_body(
                "40002",
                "Invalid Arguments",
                "isv.missing-parameter",
                "notify_url is required by the sandbox",
            );
        }
        let api = params.get("method").cloned().unwrap_or_default();
        let mut orders = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        let key = (seller.to_string(), no.to_string());
        if let Some(o) = orders.get(&key) {
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
        } else {
            let mut request: serde_json::Map<String, Value> = params
                .iter()
                .filter(|(k, _)| k.as_str() != "sign")
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            request.insert("biz_content".into(), biz.clone());
            orders.insert(
                key,
                AliOrder {
                    app_id: params.get("app_id").cloned().unwrap_or_default(),
                    app_auth_token: params.get("app_auth_token").cloned(),
                    out_trade_no: no.to_string(),
                    method: api,
                    amount,
                    subject: subject.to_string(),
                    state: "WAIT_BUYER_PAY".into(),
                    trade_no: None,
                    send_pay_date: None,
                    request: Value::Object(request),
                    refunds: Vec::new(),
                },
            );
        }
        format!(
            r#"{{"code":"10000","msg":"Success","out_trade_no":{},"qr_code":{}}}"#,
            json!(no),
            json!(format!("https://qr.alipay.com/sandbox{}", no.len() * 7919))
        )
    }

    fn ali_query(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let orders = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
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

    fn ali_close(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let mut orders = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get_mut(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        if o.state == "TRADE_SUCCESS" {
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

    fn ali_refund(&self, biz: &Value, seller: &str) -> String {
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
        let mut orders = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get_mut(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        let fund_change = if let Some((_, a)) = o.refunds.iter().find(|(n, _)| n == request_no) {
            if *a != amount {
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
            let refunded: u64 = o.refunds.iter().map(|(_, a)| a).sum();
            if refunded + amount > o.amount {
                return error_body(
                    "40004",
                    "Business Failed",
                    "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                    "退款金额超限",
                );
            }
            o.refunds.push((request_no.to_string(), amount));
            "Y"
        };
        let refund_fee: u64 = o.refunds.iter().map(|(_, a)| a).sum();
        format!(
            r#"{{"code":"10000","msg":"Success","buyer_logon_id":"san***@sandbox.example","fund_change":"{fund_change}","out_trade_no":{},"refund_fee":"{}","trade_no":{}}}"#,
            json!(no),
            yuan(refund_fee),
            json!(o.trade_no)
        )
    }

    fn ali_refund_query(&self, biz: &Value, seller: &str) -> String {
        let no = biz["out_trade_no"].as_str().unwrap_or("");
        let request_no = biz["out_request_no"].as_str().unwrap_or("");
        let orders = self.alipay_orders.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = orders.get(&(seller.to_string(), no.to_string())) else {
            return error_body(
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
        };
        match o.refunds.iter().find(|(n, _)| n == request_no) {
            Some((_, amount)) => format!(
                r#"{{"code":"10000","msg":"Success","out_request_no":{},"out_trade_no":{},"refund_amount":"{}","refund_status":"REFUND_SUCCESS","total_amount":"{}","trade_no":{}}}"#,
                json!(request_no),
                json!(no),
                yuan(*amount),
                yuan(o.amount),
                json!(o.trade_no)
            ),
            // As Alipay: success code, no refund_status, when there is no such refund.
            None => format!(
                r#"{{"code":"10000","msg":"Success","out_trade_no":{}}}"#,
                json!(no)
            ),
        }
    }

    /// `{"<key>":<inner>,"sign":"…"}` with the signature over the exact bytes of `inner`.
    fn alipay_answer(&self, key: &str, inner: &str, faults: &Faults) -> Answer {
        let mut signature = self.alipay_signer.sign_b64(inner.as_bytes());
        if faults.tamper_signature {
            signature = super::tamper(&signature);
        }
        let body = format!(r#"{{"{key}":{inner},"sign":"{signature}"}}"#);
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html;charset=utf-8"),
        );
        resp
    }
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
