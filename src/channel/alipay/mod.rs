//! The `alipay` connector: the classic gateway (`…/gateway.do`), RSA2, modes `direct` (the
//! merchant's own app) and `isv` (the platform's app acting with the merchant's
//! `app_auth_token`).
//!
//! `alipay_page`, `alipay_wap` and `alipay_app` are signed locally and handed to the payer
//! (a signed gateway URL, or the App SDK's order string): Alipay first hears of such an order
//! when the payer opens it. `alipay_precreate` and the lifecycle calls go to the gateway.
//!
//! Amounts cross the wire as yuan strings with two decimals, converted exactly
//! ([`crate::domain::yuan`], [`crate::domain::parse_yuan`]).

mod notify;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method as HttpMethod, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::http::HttpClient;
use super::keys::{RsaSigner, RsaVerifier};
use super::{
    statement_day, ChannelError, Created, ErrorKind, Notification, NotifyAnswer, NotifyError,
    OrderRequest, OrderState, RefundRequest, RefundState, StatementFile, SubMerchant,
};
use crate::domain::{parse_yuan, yuan, Method, PaymentStatus, RefundStatus};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlipayMode {
    Direct,
    Isv,
}

#[derive(Debug)]
pub struct AlipaySettings {
    pub mode: AlipayMode,
    pub app_id: String,
    /// The app's private key: signs requests.
    pub signer: RsaSigner,
    /// Alipay's public key: verifies answers and notifications.
    pub alipay_key: RsaVerifier,
}

/// `sub_code`s (and gateway codes) Alipay documents as "try again" (ARCHITECTURE.md, "What is safe
/// to retry").
const RETRYABLE: [&str; 3] = ["ACQ.SYSTEM_ERROR", "20000", "isp.unknow-error"];

/// `sub_code`s that say the account itself cannot take payments (no permission for the
/// product, an app id or signature the gateway does not accept, an ISV token that is invalid
/// or expired, a seller that may not trade): final, and the channel's fault, not the order's.
const ACCOUNT_CODES: [&str; 9] = [
    "ACQ.ACCESS_FORBIDDEN",
    "ACQ.PARTNER_ERROR",
    "ACQ.SELLER_BEEN_BLOCKED",
    "isv.invalid-app-id",
    "isv.invalid-signature",
    "isv.insufficient-isv-permissions",
    "isv.insufficient-user-permissions",
    "aop.invalid-auth-token",
    "aop.auth-token-time-out",
];

pub struct Alipay {
    /// The gateway, ending in `/gateway.do`.
    base_url: String,
    settings: Arc<AlipaySettings>,
    http: HttpClient,
}

impl Alipay {
    pub fn new(base_url: String, settings: Arc<AlipaySettings>, http: HttpClient) -> Alipay {
        Alipay {
            base_url,
            settings,
            http,
        }
    }

    fn settings(&self) -> &AlipaySettings {
        &self.settings
    }

    /// The common parameters of every gateway call, `app_auth_token` included in ISV mode.
    fn params(
        &self,
        method: &str,
        sub: &SubMerchant,
        biz: &Value,
    ) -> Result<BTreeMap<String, String>, ChannelError> {
        let s = self.settings();
        let mut p: BTreeMap<String, String> = [
            ("app_id", s.app_id.as_str()),
            ("method", method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("version", "1.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        p.insert(
            "timestamp".into(),
            china_datetime(OffsetDateTime::now_utc()),
        );
        p.insert("biz_content".into(), biz.to_string());
        if s.mode == AlipayMode::Isv {
            let token = sub.alipay_app_auth_token.as_ref().ok_or_else(|| {
                ChannelError::new(
                    ErrorKind::Local,
                    "isv channel without the merchant's alipay_app_auth_token",
                )
            })?;
            p.insert(TOKEN_PARAM.into(), token.expose().to_string());
        }
        Ok(p)
    }

    /// Signs, POSTs to the gateway, verifies the answer over its raw bytes and maps codes.
    async fn call(
        &self,
        method: &str,
        mut params: BTreeMap<String, String>,
        deadline: Duration,
    ) -> Result<Value, ChannelError> {
        sign::sign_params(&mut params, &self.settings().signer);
        let req = Request::builder()
            .method(HttpMethod::POST)
            .uri(format!("{}?charset=utf-8", self.base_url))
            .header(
                header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("payroute/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(sign::encode(&params))))
            .map_err(|e| ChannelError::new(ErrorKind::Local, format!("building request: {e}")))?;
        let resp = self.http.send(req, deadline).await?;
        if resp.status.is_server_error() {
            return Err(ChannelError::new(
                ErrorKind::ServerError,
                format!("HTTP {}", resp.status.as_u16()),
            ));
        }
        if !resp.status.is_success() {
            return Err(ChannelError::new(
                ErrorKind::Protocol,
                format!("HTTP {}", resp.status.as_u16()),
            ));
        }
        let answer = sign::split_answer(&resp.body, method)
            .map_err(|e| ChannelError::new(ErrorKind::Protocol, e.to_string()))?;
        let Some(signature) = &answer.sign else {
            // Alipay leaves some gateway-level errors unsigned; they may say why, but they
            // cannot be trusted to change a payment.
            let hint: Value = serde_json::from_str(&answer.raw).unwrap_or(Value::Null);
            return Err(ChannelError::new(
                if answer.is_error_response {
                    ErrorKind::Protocol
                } else {
                    ErrorKind::BadSignature
                },
                format!("unsigned answer {} {}", hint["code"], hint["sub_code"]),
            ));
        };
        if !self
            .settings()
            .alipay_key
            .verify_b64(answer.raw.as_bytes(), signature)
        {
            return Err(ChannelError::new(
                ErrorKind::BadSignature,
                "answer signature does not verify",
            ));
        }
        let v: Value = serde_json::from_str(&answer.raw).map_err(|e| {
            ChannelError::new(ErrorKind::Protocol, format!("response is not JSON: {e}"))
        })?;
        match v["code"].as_str() {
            Some("10000") => Ok(v),
            _ => Err(map_error(&v)),
        }
    }

    fn biz_content(&self, o: &OrderRequest<'_>) -> Result<(&'static str, Value), ChannelError> {
        let (method, product_code) = match o.method {
            Method::AlipayPage => ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
            Method::AlipayWap => ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),
            Method::AlipayApp => ("alipay.trade.app.pay", "QUICK_MSECURITY_PAY"),
            Method::AlipayPrecreate => ("alipay.trade.precreate", "FACE_TO_FACE_PAYMENT"),
            other => {
                return Err(ChannelError::new(
                    ErrorKind::Local,
                    format!("{other} is not an Alipay method"),
                ))
            }
        };
        if o.currency != "CNY" {
            return Err(ChannelError::new(
                ErrorKind::Local,
                format!("Alipay takes CNY, not {}", o.currency),
            ));
        }
        let mut biz = json!({
            "out_trade_no": o.out_trade_no,
            "total_amount": yuan(o.amount),
            "subject": o.description,
            "product_code": product_code,
            "time_expire": china_datetime(o.expires_at),
        });
        if let Some(a) = o.attach {
            biz["passback_params"] = json!(a);
        }
        Ok((method, biz))
    }
}

#[async_trait]
impl super::Connector for Alipay {
    async fn create(
        &self,
        order: &OrderRequest<'_>,
        deadline: Duration,
    ) -> Result<Created, ChannelError> {
        let (method, biz) = self.biz_content(order)?;
        let mut params = self.params(method, order.sub, &biz)?;
        params.insert("notify_url".into(), order.notify_url.to_string());
        if order.method == Method::AlipayPrecreate {
            let v = self.call(method, params, deadline).await?;
            if v["out_trade_no"].as_str() != Some(order.out_trade_no) {
                return Err(ChannelError::new(
                    ErrorKind::Protocol,
                    "answer is for another out_trade_no",
                ));
            }
            let qr = v["qr_code"]
                .as_str()
                .ok_or_else(|| ChannelError::new(ErrorKind::Protocol, "answer has no qr_code"))?;
            return Ok(Created {
                action: json!({ "type": "qr_code", "code_url": qr }),
                provider_trade_no: None,
            });
        }
        if let (Some(url), Method::AlipayPage | Method::AlipayWap) =
            (order.return_url, order.method)
        {
            params.insert("return_url".into(), url.to_string());
        }
        sign::sign_params(&mut params, &self.settings().signer);
        let encoded = sign::encode(&params);
        let action = match order.method {
            Method::AlipayApp => json!({ "type": "app", "order_string": encoded }),
            _ => json!({ "type": "redirect", "url": format!("{}?{encoded}", self.base_url) }),
        };
        Ok(Created {
            action,
            provider_trade_no: None,
        })
    }

    async fn query(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<OrderState, ChannelError> {
        let method = "alipay.trade.query";
        let params = self.params(method, sub, &json!({ "out_trade_no": out_trade_no }))?;
        let v = self.call(method, params, deadline).await?;
        parse_trade(&v, out_trade_no)
    }

    async fn close(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<(), ChannelError> {
        let method = "alipay.trade.close";
        let params = self.params(method, sub, &json!({ "out_trade_no": out_trade_no }))?;
        self.call(method, params, deadline).await?;
        Ok(())
    }

    /// `alipay.trade.refund`: code 10000 with `fund_change = "Y"` means this call moved the
    /// money. `"N"` means it did not (yet): a repeat of an earlier request, or a refund still
    /// being processed — the refund stays pending until a refund query confirms it.
    async fn refund(
        &self,
        r: &RefundRequest<'_>,
        deadline: Duration,
    ) -> Result<RefundState, ChannelError> {
        let method = "alipay.trade.refund";
        let mut biz = json!({
            "out_trade_no": r.out_trade_no,
            "refund_amount": yuan(r.amount),
            "out_request_no": r.out_refund_no,
        });
        if let Some(reason) = r.reason {
            biz["refund_reason"] = json!(reason);
        }
        // With both, Alipay refunds the trade `trade_no` names: under credentials that reach
        // another merchant's `out_trade_no` (an ISV token given to the wrong merchant) it is
        // ACQ.TRADE_NOT_EXIST, not that merchant's buyer refunded.
        if let Some(trade_no) = r.provider_trade_no {
            biz["trade_no"] = json!(trade_no);
        }
        let params = self.params(method, r.sub, &biz)?;
        let v = self.call(method, params, deadline).await?;
        if v["out_trade_no"].as_str() != Some(r.out_trade_no) {
            return Err(ChannelError::new(
                ErrorKind::Protocol,
                "answer is for another out_trade_no",
            ));
        }
        if let (Some(sent), Some(answered)) = (r.provider_trade_no, v["trade_no"].as_str()) {
            if sent != answered {
                return Err(ChannelError::new(
                    ErrorKind::Protocol,
                    "answer is for another trade_no",
                ));
            }
        }
        let fund_change = v["fund_change"].as_str().unwrap_or("");
        let refunded_total = yuan_field(&v, "refund_fee")?;
        Ok(RefundState {
            status: if fund_change == "Y" {
                RefundStatus::Succeeded
            } else {
                RefundStatus::Pending
            },
            provider_state: format!("fund_change={fund_change}"),
            provider_refund_no: v["trade_no"].as_str().map(str::to_string),
            amount: None,
            refunded_total,
        })
    }

    /// `alipay.data.dataservice.bill.downloadurl.query` (signed answer: where the day's zip
    /// is), then a plain `GET` of that url, as Alipay serves it: the url comes from a
    /// verified answer and is short-lived; the zip carries no signature of its own.
    async fn trade_statement(
        &self,
        date: time::Date,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<StatementFile, ChannelError> {
        let started = tokio::time::Instant::now();
        let method = "alipay.data.dataservice.bill.downloadurl.query";
        let biz = json!({ "bill_type": "trade", "bill_date": statement_day(date)? });
        let params = self.params(method, sub, &biz)?;
        let v = match self.call(method, params, deadline).await {
            Err(e) if matches!(&e.kind, ErrorKind::Rejected(c) if c == "isp.bill_not_exist") => {
                return Err(ChannelError::new(ErrorKind::NotFound, e.message));
            }
            other => other?,
        };
        let url = v["bill_download_url"].as_str().ok_or_else(|| {
            ChannelError::new(ErrorKind::Protocol, "answer has no bill_download_url")
        })?;
        let req = Request::builder()
            .method(HttpMethod::GET)
            .uri(url)
            .header(
                header::USER_AGENT,
                concat!("payroute/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| {
                ChannelError::new(ErrorKind::Protocol, format!("bill_download_url: {e}"))
            })?;
        let resp = self
            .http
            .send(req, deadline.saturating_sub(started.elapsed()))
            .await?;
        match resp.status {
            s if s.is_success() => Ok(StatementFile::Alipay { bytes: resp.body }),
            s if s.is_server_error() => Err(ChannelError::new(
                ErrorKind::ServerError,
                format!("statement download: HTTP {}", s.as_u16()),
            )),
            s => Err(ChannelError::new(
                ErrorKind::Protocol,
                format!("statement download: HTTP {}", s.as_u16()),
            )),
        }
    }

    async fn refund_query(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<RefundState, ChannelError> {
        let method = "alipay.trade.fastpay.refund.query";
        let biz = json!({ "out_trade_no": out_trade_no, "out_request_no": out_refund_no });
        let params = self.params(method, sub, &biz)?;
        let v = self.call(method, params, deadline).await?;
        // No refund_status: Alipay has no successful refund under this out_request_no.
        let state = v["refund_status"].as_str().unwrap_or("");
        Ok(RefundState {
            status: if state == "REFUND_SUCCESS" {
                RefundStatus::Succeeded
            } else {
                RefundStatus::Pending
            },
            provider_state: state.to_string(),
            provider_refund_no: v["trade_no"].as_str().map(str::to_string),
            amount: yuan_field(&v, "refund_amount")?,
            refunded_total: None,
        })
    }

    /// Alipay signs no timestamp that could be checked (it retries a notification for a
    /// day): `now_unix` is not used.
    fn may_be_for_this_account(&self, _headers: &http::HeaderMap, body: &[u8]) -> bool {
        sign::decode(body)
            .iter()
            .any(|(k, v)| k == "app_id" && *v == self.settings().app_id)
    }

    fn verify_notification(
        &self,
        _headers: &http::HeaderMap,
        body: &[u8],
        _now_unix: i64,
    ) -> Result<Notification, NotifyError> {
        notify::verify(self.settings(), body)
    }

    /// Alipay's protocol has one failure word, whoever's fault: `fail`, with 200.
    fn notification_answer(
        &self,
        answer: NotifyAnswer,
        _message: &str,
    ) -> http::Response<Full<Bytes>> {
        notify::answer(answer == NotifyAnswer::Acknowledged)
    }

    /// ISV page/WAP/App actions carry the merchant's `app_auth_token` to the payer (the
    /// protocol wants it there): stored without it and without the `sign` over it.
    fn storable_action(&self, action: &Value) -> Value {
        if self.settings().mode != AlipayMode::Isv {
            return action.clone();
        }
        match signed_params(action) {
            Some((field, prefix, mut params)) => {
                params.remove(TOKEN_PARAM);
                params.remove("sign");
                with_params(action, field, &prefix, &params)
            }
            None => action.clone(),
        }
    }

    /// The stored ISV action with the merchant's current `app_auth_token` put back and
    /// signed again (a refreshed token is the one the payer needs now).
    fn payer_action(&self, stored: &Value, sub: &SubMerchant) -> Result<Value, ChannelError> {
        if self.settings().mode != AlipayMode::Isv {
            return Ok(stored.clone());
        }
        let Some((field, prefix, mut params)) = signed_params(stored) else {
            return Ok(stored.clone());
        };
        let token = sub.alipay_app_auth_token.as_ref().ok_or_else(|| {
            ChannelError::new(
                ErrorKind::Local,
                "isv channel without the merchant's alipay_app_auth_token",
            )
        })?;
        params.insert(TOKEN_PARAM.into(), token.expose().to_string());
        params.remove("sign");
        sign::sign_params(&mut params, &self.settings().signer);
        Ok(with_params(stored, field, &prefix, &params))
    }
}

/// The gateway parameter that names the merchant's grant in ISV mode.
const TOKEN_PARAM: &str = "app_auth_token";

/// The signed gateway parameters of a page/WAP (`redirect` url) or App (`order_string`)
/// action: the field holding them, what precedes them (the gateway url and `?`), and the
/// parameters. None for other actions (a precreate's QR code carries none).
fn signed_params(action: &Value) -> Option<(&'static str, String, BTreeMap<String, String>)> {
    let (field, text) = match action["type"].as_str()? {
        "redirect" => ("url", action["url"].as_str()?),
        "app" => ("order_string", action["order_string"].as_str()?),
        _ => return None,
    };
    let (prefix, query) = match field {
        "url" => {
            let at = text.find('?')? + 1;
            (text[..at].to_string(), &text[at..])
        }
        _ => (String::new(), text),
    };
    Some((
        field,
        prefix,
        sign::decode(query.as_bytes()).into_iter().collect(),
    ))
}

fn with_params(
    action: &Value,
    field: &str,
    prefix: &str,
    params: &BTreeMap<String, String>,
) -> Value {
    let mut out = action.clone();
    out[field] = json!(format!("{prefix}{}", sign::encode(params)));
    out
}

/// An optional yuan amount field, converted exactly; a malformed one is a protocol error.
fn yuan_field(v: &Value, field: &str) -> Result<Option<u64>, ChannelError> {
    v[field]
        .as_str()
        .map(|s| {
            parse_yuan(s)
                .map_err(|e| ChannelError::new(ErrorKind::Protocol, format!("{field}: {e}")))
        })
        .transpose()
}

fn parse_trade(v: &Value, out_trade_no: &str) -> Result<OrderState, ChannelError> {
    let protocol = |m: String| ChannelError::new(ErrorKind::Protocol, m);
    let state = super::order_answer(v, out_trade_no, "trade_status")?;
    let status = match state {
        "TRADE_SUCCESS" | "TRADE_FINISHED" => PaymentStatus::Succeeded,
        "WAIT_BUYER_PAY" => PaymentStatus::Pending,
        "TRADE_CLOSED" => PaymentStatus::Closed,
        other => return Err(protocol(format!("unknown trade_status {other:?}"))),
    };
    let amount = yuan_field(v, "total_amount")?;
    Ok(OrderState {
        status,
        provider_state: state.to_string(),
        provider_trade_no: v["trade_no"].as_str().map(str::to_string),
        amount,
        // The classic gateway trades in CNY only (`biz_content` refuses anything else);
        // `trans_currency` appears only for cross-border trades.
        currency: Some(v["trans_currency"].as_str().unwrap_or("CNY").to_string()),
        paid_at: v["send_pay_date"].as_str().and_then(parse_china_datetime),
    })
}

/// `code`/`sub_code` to the retry classes of ARCHITECTURE.md, "What is safe to retry".
fn map_error(v: &Value) -> ChannelError {
    let code = v["code"].as_str().unwrap_or("");
    let sub_code = v["sub_code"].as_str().unwrap_or("");
    let message = v["sub_msg"]
        .as_str()
        .or(v["msg"].as_str())
        .unwrap_or("")
        .to_string();
    let name = if sub_code.is_empty() { code } else { sub_code }.to_string();
    if RETRYABLE.contains(&sub_code) || RETRYABLE.contains(&code) {
        return ChannelError::new(ErrorKind::ProviderRetryable(name), message);
    }
    match sub_code {
        "ACQ.TRADE_NOT_EXIST" => return ChannelError::new(ErrorKind::NotFound, message),
        "ACQ.TRADE_HAS_SUCCESS" => return ChannelError::new(ErrorKind::AlreadyPaid, message),
        // Closing a trade that is paid, finished or already closed: which, a query says.
        "ACQ.TRADE_STATUS_ERROR" => return ChannelError::new(ErrorKind::NotCloseable, message),
        _ => {}
    }
    if name.is_empty() {
        return ChannelError::new(ErrorKind::Protocol, "answer without code");
    }
    if ACCOUNT_CODES.contains(&name.as_str()) {
        return ChannelError::new(ErrorKind::AccountRefused(name), message);
    }
    ChannelError::new(ErrorKind::Rejected(name), message)
}

fn china() -> UtcOffset {
    UtcOffset::from_hms(8, 0, 0).expect("+08:00 is a valid offset")
}

/// `yyyy-MM-dd HH:mm:ss` in China time, as the gateway wants `timestamp` and `time_expire`.
pub fn china_datetime(t: OffsetDateTime) -> String {
    t.to_offset(china())
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

pub fn parse_china_datetime(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(
        s,
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
    .ok()
    .map(|t| t.assume_offset(china()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A go-live misconfiguration counts against the channel; the order's own errors do not.
    #[test]
    fn account_refusals_are_the_channels_fault() {
        let e = map_error(
            &json!({"code":"40004","sub_code":"ACQ.ACCESS_FORBIDDEN","sub_msg":"无权限"}),
        );
        assert_eq!(
            e.kind,
            ErrorKind::AccountRefused("ACQ.ACCESS_FORBIDDEN".into())
        );
        assert!(e.is_channel_fault() && e.is_final_refusal() && !e.retryable());
        let e = map_error(&json!({"code":"40002","sub_code":"isv.invalid-app-id"}));
        assert!(e.is_channel_fault());
        for buyer in [
            "ACQ.TRADE_HAS_SUCCESS",
            "ACQ.INVALID_PARAMETER",
            "ACQ.BUYER_BALANCE_NOT_ENOUGH",
        ] {
            let e = map_error(&json!({"code":"40004","sub_code":buyer}));
            assert!(!e.is_channel_fault(), "{buyer} is not the channel's fault");
        }
    }

    #[test]
    fn codes_map_to_the_retry_table() {
        let e = map_error(
            &json!({"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error"}),
        );
        assert!(e.retryable());
        let e = map_error(
            &json!({"code":"40004","msg":"Business Failed","sub_code":"ACQ.SYSTEM_ERROR","sub_msg":"系统错误"}),
        );
        assert_eq!(
            e.kind,
            ErrorKind::ProviderRetryable("ACQ.SYSTEM_ERROR".into())
        );
        let e = map_error(
            &json!({"code":"40004","sub_code":"ACQ.TRADE_HAS_SUCCESS","sub_msg":"交易已被支付"}),
        );
        assert_eq!(e.kind, ErrorKind::AlreadyPaid);
        assert!(!e.retryable());
        let e = map_error(&json!({"code":"40004","sub_code":"ACQ.INVALID_PARAMETER"}));
        assert_eq!(e.kind, ErrorKind::Rejected("ACQ.INVALID_PARAMETER".into()));
        assert_eq!(
            map_error(&json!({"code":"40004","sub_code":"ACQ.TRADE_NOT_EXIST"})).kind,
            ErrorKind::NotFound
        );
        // Not "paid": the trade may as well be closed already.
        assert_eq!(
            map_error(&json!({"code":"40004","sub_code":"ACQ.TRADE_STATUS_ERROR"})).kind,
            ErrorKind::NotCloseable
        );
    }

    #[test]
    fn trade_states_and_amounts_map_exactly() {
        let v = json!({"code":"10000","out_trade_no":"o1","trade_no":"2019","trade_status":"TRADE_SUCCESS","total_amount":"88.88","send_pay_date":"2019-08-15 15:56:24"});
        let s = parse_trade(&v, "o1").unwrap();
        assert_eq!((s.status, s.amount), (PaymentStatus::Succeeded, Some(8888)));
        assert_eq!(s.paid_at.unwrap().unix_timestamp(), 1_565_855_784);
        let mut bad = v.clone();
        bad["total_amount"] = json!("88.888");
        assert!(parse_trade(&bad, "o1").is_err());
        assert!(parse_trade(&v, "o2").is_err());
        let wait = json!({"out_trade_no":"o1","trade_status":"WAIT_BUYER_PAY"});
        assert_eq!(
            parse_trade(&wait, "o1").unwrap().status,
            PaymentStatus::Pending
        );
    }

    #[test]
    fn gateway_times_are_china_time() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(china_datetime(t), "2023-11-15 06:13:20");
        assert_eq!(parse_china_datetime("2023-11-15 06:13:20"), Some(t));
    }
}
