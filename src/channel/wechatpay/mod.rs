//! The `wechatpay_v3` connector: WeChat Pay API v3, direct and partner (service provider)
//! modes.
//!
//! Direct mode speaks for the merchant's own `mchid`/`appid` on `/v3/pay/transactions/…`;
//! partner mode speaks for the platform's `sp_mchid`/`sp_appid` on behalf of a sub-merchant
//! (`sub_mchid`) on `/v3/pay/partner/transactions/…`.

mod notify;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method as HttpMethod, Request};
use http_body_util::Full;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::http::{HttpClient, HttpResponse};
use super::keys::RsaSigner;
use super::{
    statement_day, ChannelError, Created, ErrorKind, Notification, NotifyAnswer, NotifyError,
    OrderRequest, OrderState, RefundRequest, RefundState, StatementFile, SubMerchant,
};
use crate::domain::{Method, PaymentStatus, RefundStatus};
use crate::secret::Secret;
pub use sign::WechatVerifier;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WechatMode {
    Direct { mchid: String, appid: String },
    Partner { sp_mchid: String, sp_appid: String },
}

#[derive(Debug)]
pub struct WechatPaySettings {
    pub mode: WechatMode,
    /// Serial number of the merchant API certificate that `signer` belongs to.
    pub serial_no: String,
    pub signer: RsaSigner,
    /// Decrypts notification resources (used by the notifications work).
    pub apiv3_key: Option<Secret>,
    pub verifier: WechatVerifier,
}

impl WechatPaySettings {
    /// The merchant id that signs requests: `mchid`, or `sp_mchid` in partner mode.
    pub fn signing_mchid(&self) -> &str {
        match &self.mode {
            WechatMode::Direct { mchid, .. } => mchid,
            WechatMode::Partner { sp_mchid, .. } => sp_mchid,
        }
    }
}

/// Codes WeChat Pay documents as "try again" (ARCHITECTURE.md, "What is safe to retry").
const RETRYABLE_CODES: [&str; 3] = ["SYSTEM_ERROR", "FREQUENCY_LIMITED", "BANKERROR"];

/// Final refusals that say the account itself cannot take payments (not the order's or the
/// buyer's fault): no permission for the product, appid and mchid not bound to each other,
/// an unknown or frozen merchant, our signature refused (a key or serial pasted wrong). A
/// misconfigured own account trips exactly these at go-live; they count against its health.
const ACCOUNT_CODES: [&str; 6] = [
    "NO_AUTH",
    "APPID_MCHID_NOT_MATCH",
    "MCH_NOT_EXISTS",
    "SIGN_ERROR",
    "ACCOUNT_ERROR",
    "INVALID_REQUEST_MCH_FROZEN",
];

pub struct WechatPay {
    base_url: String,
    settings: Arc<WechatPaySettings>,
    http: HttpClient,
}

impl WechatPay {
    pub fn new(base_url: String, settings: Arc<WechatPaySettings>, http: HttpClient) -> WechatPay {
        WechatPay {
            base_url,
            settings,
            http,
        }
    }

    fn settings(&self) -> &WechatPaySettings {
        &self.settings
    }

    /// Signs, sends, verifies a 2xx answer's signature, and maps error answers.
    async fn call(
        &self,
        method: HttpMethod,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<HttpResponse, ChannelError> {
        let resp = self
            .send_signed(method, path_and_query, body, deadline)
            .await?;
        if resp.status.is_success() {
            self.verify(&resp)?;
            return Ok(resp);
        }
        Err(self.error_answer(&resp))
    }

    /// An error answer mapped: WeChat Pay signs its error answers too. A signed one must
    /// verify; an unsigned one (a load balancer's 502, or someone in the path) may say
    /// "retry" but never anything that would make a payment or a refund final.
    fn error_answer(&self, resp: &HttpResponse) -> ChannelError {
        let verified = if resp.headers.contains_key("Wechatpay-Signature") {
            if let Err(e) = self.verify(resp) {
                return e;
            }
            true
        } else {
            false
        };
        map_error(resp, verified)
    }

    /// Signs and sends one request; the answer as it came.
    async fn send_signed(
        &self,
        method: HttpMethod,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<HttpResponse, ChannelError> {
        let s = self.settings();
        let body = body.unwrap_or_default();
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let nonce = sign::nonce();
        let auth = sign::authorization(
            &s.signer,
            s.signing_mchid(),
            &s.serial_no,
            method.as_str(),
            path_and_query,
            ts,
            &nonce,
            &body,
        );
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base_url, path_and_query))
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("payroute/", env!("CARGO_PKG_VERSION")),
            );
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ChannelError::new(ErrorKind::Local, format!("building request: {e}")))?;
        self.http.send(req, deadline).await
    }

    fn verify(&self, resp: &HttpResponse) -> Result<(), ChannelError> {
        let h = |name: &str| {
            resp.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    ChannelError::new(
                        ErrorKind::BadSignature,
                        format!("answer has no {name} header"),
                    )
                })
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.settings()
            .verifier
            .verify(
                h("Wechatpay-Serial")?,
                h("Wechatpay-Timestamp")?,
                h("Wechatpay-Nonce")?,
                h("Wechatpay-Signature")?,
                &resp.body,
                now,
            )
            .map_err(|e| ChannelError::new(ErrorKind::BadSignature, e.to_string()))
    }

    fn create_body(&self, o: &OrderRequest<'_>) -> Result<(String, Value), ChannelError> {
        let kind = match o.method {
            Method::WechatJsapi => "jsapi",
            Method::WechatNative => "native",
            Method::WechatH5 => "h5",
            Method::WechatApp => "app",
            other => {
                return Err(ChannelError::new(
                    ErrorKind::Local,
                    format!("method {other} is not a WeChat Pay method"),
                ))
            }
        };
        let mut body = json!({
            "description": o.description,
            "out_trade_no": o.out_trade_no,
            "time_expire": china_time(o.expires_at),
            "notify_url": o.notify_url,
            "amount": { "total": o.amount, "currency": o.currency },
        });
        if let Some(a) = o.attach {
            body["attach"] = json!(a);
        }
        let path = match &self.settings().mode {
            WechatMode::Direct { mchid, appid } => {
                body["appid"] = json!(appid);
                body["mchid"] = json!(mchid);
                if o.method == Method::WechatJsapi {
                    body["payer"] = json!({ "openid": require(o.openid, "payer.openid")? });
                }
                format!("/v3/pay/transactions/{kind}")
            }
            WechatMode::Partner { sp_mchid, sp_appid } => {
                body["sp_appid"] = json!(sp_appid);
                body["sp_mchid"] = json!(sp_mchid);
                body["sub_mchid"] = json!(sub_mchid(o.sub)?);
                if let Some(sub_appid) = &o.sub.wechat_sub_appid {
                    body["sub_appid"] = json!(sub_appid);
                }
                if o.method == Method::WechatJsapi {
                    let openid = require(o.openid, "payer.openid")?;
                    // An openid belongs to one appid: the sub-merchant's when it has one.
                    body["payer"] = match o.sub.wechat_sub_appid {
                        Some(_) => json!({ "sub_openid": openid }),
                        None => json!({ "sp_openid": openid }),
                    };
                }
                format!("/v3/pay/partner/transactions/{kind}")
            }
        };
        if o.method == Method::WechatH5 {
            body["scene_info"] = json!({
                "payer_client_ip": require(o.client_ip, "payer.client_ip")?,
                "h5_info": { "type": "Wap" },
            });
        }
        Ok((path, body))
    }

    /// The appid the payer's client runs under.
    fn payer_appid<'a>(&'a self, sub: &'a SubMerchant) -> &'a str {
        match &self.settings().mode {
            WechatMode::Direct { appid, .. } => appid,
            WechatMode::Partner { sp_appid, .. } => {
                sub.wechat_sub_appid.as_deref().unwrap_or(sp_appid)
            }
        }
    }

    fn action(&self, o: &OrderRequest<'_>, answer: &Value) -> Result<Value, ChannelError> {
        let field = |name: &str| {
            answer[name].as_str().map(str::to_string).ok_or_else(|| {
                ChannelError::new(ErrorKind::Protocol, format!("answer has no {name}"))
            })
        };
        let signer = &self.settings().signer;
        let ts = OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = sign::nonce();
        Ok(match o.method {
            Method::WechatNative => json!({ "type": "qr_code", "code_url": field("code_url")? }),
            Method::WechatH5 => json!({ "type": "redirect", "url": field("h5_url")? }),
            Method::WechatJsapi => {
                let appid = self.payer_appid(o.sub);
                let package = format!("prepay_id={}", field("prepay_id")?);
                let pay_sign =
                    signer.sign_b64(format!("{appid}\n{ts}\n{nonce}\n{package}\n").as_bytes());
                json!({
                    "type": "jsapi", "appId": appid, "timeStamp": ts, "nonceStr": nonce,
                    "package": package, "signType": "RSA", "paySign": pay_sign,
                })
            }
            Method::WechatApp => {
                let appid = self.payer_appid(o.sub);
                let prepay_id = field("prepay_id")?;
                let partnerid = match &self.settings().mode {
                    WechatMode::Direct { mchid, .. } => mchid.clone(),
                    WechatMode::Partner { .. } => sub_mchid(o.sub)?.to_string(),
                };
                let sign =
                    signer.sign_b64(format!("{appid}\n{ts}\n{nonce}\n{prepay_id}\n").as_bytes());
                json!({
                    "type": "app", "appid": appid, "partnerid": partnerid, "prepayid": prepay_id,
                    "package": "Sign=WXPay", "noncestr": nonce, "timestamp": ts, "sign": sign,
                })
            }
            other => {
                return Err(ChannelError::new(
                    ErrorKind::Local,
                    format!("{other} is not a WeChat Pay method"),
                ))
            }
        })
    }
}

#[async_trait]
impl super::Connector for WechatPay {
    async fn create(
        &self,
        order: &OrderRequest<'_>,
        deadline: Duration,
    ) -> Result<Created, ChannelError> {
        let (path, body) = self.create_body(order)?;
        let body = serde_json::to_vec(&body)
            .map_err(|e| ChannelError::new(ErrorKind::Local, e.to_string()))?;
        let resp = self
            .call(HttpMethod::POST, &path, Some(body), deadline)
            .await?;
        let answer: Value = serde_json::from_slice(&resp.body).map_err(|e| {
            ChannelError::new(ErrorKind::Protocol, format!("answer is not JSON: {e}"))
        })?;
        Ok(Created {
            action: self.action(order, &answer)?,
            provider_trade_no: None,
        })
    }

    /// `GET /v3/bill/tradebill` (signed answer: the file's SHA-1 and where to get it), then
    /// a signed `GET` of the download url, gzipped. The download answer is not signed: the
    /// stated SHA-1 is what vouches for it, checked by the parser before anything else. The
    /// url is followed only on the channel's own host, so a signed request never goes
    /// anywhere the channel was not configured to send to.
    async fn trade_statement(
        &self,
        date: time::Date,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<StatementFile, ChannelError> {
        let started = tokio::time::Instant::now();
        let day = statement_day(date)?;
        let mut path = format!("/v3/bill/tradebill?bill_date={day}&bill_type=ALL&tar_type=GZIP");
        if let WechatMode::Partner { .. } = &self.settings().mode {
            path.push_str(&format!("&sub_mchid={}", sub_mchid(sub)?));
        }
        let resp = match self.call(HttpMethod::GET, &path, None, deadline).await {
            Err(e) if matches!(&e.kind, ErrorKind::Rejected(c) if c == "NO_STATEMENT_EXIST") => {
                return Err(ChannelError::new(ErrorKind::NotFound, e.message));
            }
            other => other?,
        };
        let v: Value = serde_json::from_slice(&resp.body).map_err(|e| {
            ChannelError::new(ErrorKind::Protocol, format!("answer is not JSON: {e}"))
        })?;
        let field = |name: &str| {
            v[name].as_str().map(str::to_string).ok_or_else(|| {
                ChannelError::new(ErrorKind::Protocol, format!("bill answer has no {name}"))
            })
        };
        if field("hash_type")? != "SHA1" {
            return Err(ChannelError::new(
                ErrorKind::Protocol,
                format!("bill hash_type {} is not SHA1", v["hash_type"]),
            ));
        }
        let sha1_hex = field("hash_value")?;
        let url = field("download_url")?;
        let Some(download) = url
            .strip_prefix(self.base_url.as_str())
            .filter(|rest| rest.starts_with('/'))
        else {
            return Err(ChannelError::new(
                ErrorKind::Protocol,
                "bill download_url is not on the channel's host",
            ));
        };
        let left = deadline.saturating_sub(started.elapsed());
        let file = self
            .send_signed(HttpMethod::GET, download, None, left)
            .await?;
        if !file.status.is_success() {
            return Err(self.error_answer(&file));
        }
        Ok(StatementFile::Wechat {
            bytes: file.body,
            gzip: true,
            sha1_hex,
        })
    }

    async fn query(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<OrderState, ChannelError> {
        let no = encode_path_segment(out_trade_no);
        let path = match &self.settings().mode {
            WechatMode::Direct { mchid, .. } => {
                format!("/v3/pay/transactions/out-trade-no/{no}?mchid={mchid}")
            }
            WechatMode::Partner { sp_mchid, .. } => format!(
                "/v3/pay/partner/transactions/out-trade-no/{no}?sp_mchid={sp_mchid}&sub_mchid={}",
                sub_mchid(sub)?
            ),
        };
        let resp = self.call(HttpMethod::GET, &path, None, deadline).await?;
        parse_order_state(&resp.body, out_trade_no)
    }

    async fn close(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<(), ChannelError> {
        let no = encode_path_segment(out_trade_no);
        let (path, body) = match &self.settings().mode {
            WechatMode::Direct { mchid, .. } => (
                format!("/v3/pay/transactions/out-trade-no/{no}/close"),
                json!({ "mchid": mchid }),
            ),
            WechatMode::Partner { sp_mchid, .. } => (
                format!("/v3/pay/partner/transactions/out-trade-no/{no}/close"),
                json!({ "sp_mchid": sp_mchid, "sub_mchid": sub_mchid(sub)? }),
            ),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| ChannelError::new(ErrorKind::Local, e.to_string()))?;
        self.call(HttpMethod::POST, &path, Some(body), deadline)
            .await?;
        Ok(())
    }

    async fn refund(
        &self,
        r: &RefundRequest<'_>,
        deadline: Duration,
    ) -> Result<RefundState, ChannelError> {
        let mut body = json!({
            "out_trade_no": r.out_trade_no,
            "out_refund_no": r.out_refund_no,
            "notify_url": r.notify_url,
            "amount": { "refund": r.amount, "total": r.total, "currency": r.currency },
        });
        if let Some(reason) = r.reason {
            body["reason"] = json!(reason);
        }
        if let WechatMode::Partner { .. } = self.settings().mode {
            body["sub_mchid"] = json!(sub_mchid(r.sub)?);
        }
        let body = serde_json::to_vec(&body)
            .map_err(|e| ChannelError::new(ErrorKind::Local, e.to_string()))?;
        let resp = self
            .call(
                HttpMethod::POST,
                "/v3/refund/domestic/refunds",
                Some(body),
                deadline,
            )
            .await?;
        parse_refund(&resp.body, r.out_refund_no)
    }

    async fn refund_query(
        &self,
        _out_trade_no: &str,
        out_refund_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<RefundState, ChannelError> {
        let no = encode_path_segment(out_refund_no);
        let path = match self.settings().mode {
            WechatMode::Direct { .. } => format!("/v3/refund/domestic/refunds/{no}"),
            WechatMode::Partner { .. } => {
                format!(
                    "/v3/refund/domestic/refunds/{no}?sub_mchid={}",
                    sub_mchid(sub)?
                )
            }
        };
        let resp = self.call(HttpMethod::GET, &path, None, deadline).await?;
        parse_refund(&resp.body, out_refund_no)
    }

    fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Notification, NotifyError> {
        notify::verify(self.settings(), headers, body, now_unix)
    }

    fn notification_answer(
        &self,
        answer: NotifyAnswer,
        message: &str,
    ) -> http::Response<Full<Bytes>> {
        notify::answer(answer, message)
    }
}

fn parse_refund(body: &[u8], out_refund_no: &str) -> Result<RefundState, ChannelError> {
    let protocol = |m: String| ChannelError::new(ErrorKind::Protocol, m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| protocol(format!("answer is not JSON: {e}")))?;
    if v["out_refund_no"].as_str() != Some(out_refund_no) {
        return Err(protocol(format!(
            "answer is for out_refund_no {}",
            v["out_refund_no"]
        )));
    }
    let state = v["status"]
        .as_str()
        .ok_or_else(|| protocol("answer has no status".into()))?;
    refund_state(&v, state)
}

/// A refund object's state (`state`: its `status`, or a notification's `refund_status`):
/// shared by refund answers and refund notifications.
fn refund_state(v: &Value, state: &str) -> Result<RefundState, ChannelError> {
    let protocol = |m: String| ChannelError::new(ErrorKind::Protocol, m);
    let status = match state {
        "SUCCESS" => RefundStatus::Succeeded,
        "PROCESSING" => RefundStatus::Pending,
        // The money left the merchant but did not reach the payer (a closed bank card): ops
        // must act, and the amount stays reserved.
        "ABNORMAL" => RefundStatus::Abnormal,
        "CLOSED" => RefundStatus::Failed,
        other => return Err(protocol(format!("unknown refund status {other:?}"))),
    };
    Ok(RefundState {
        status,
        provider_state: state.to_string(),
        provider_refund_no: v["refund_id"].as_str().map(str::to_string),
        amount: v["amount"]["refund"].as_u64(),
        refunded_total: None,
    })
}

fn parse_order_state(body: &[u8], out_trade_no: &str) -> Result<OrderState, ChannelError> {
    let protocol = |m: String| ChannelError::new(ErrorKind::Protocol, m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| protocol(format!("answer is not JSON: {e}")))?;
    let state = super::order_answer(&v, out_trade_no, "trade_state")?;
    order_state(&v, state)
}

/// A transaction object's state: shared by query answers and payment notifications.
fn order_state(v: &Value, state: &str) -> Result<OrderState, ChannelError> {
    let protocol = |m: String| ChannelError::new(ErrorKind::Protocol, m);
    let status = match state {
        "SUCCESS" | "REFUND" => PaymentStatus::Succeeded,
        "NOTPAY" | "USERPAYING" => PaymentStatus::Pending,
        "CLOSED" | "REVOKED" => PaymentStatus::Closed,
        "PAYERROR" => PaymentStatus::Failed,
        other => return Err(protocol(format!("unknown trade_state {other:?}"))),
    };
    let paid_at = v["success_time"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    Ok(OrderState {
        status,
        provider_state: state.to_string(),
        provider_trade_no: v["transaction_id"].as_str().map(str::to_string),
        amount: v["amount"]["total"].as_u64(),
        currency: v["amount"]["currency"].as_str().map(str::to_string),
        paid_at,
    })
}

/// Maps a non-2xx answer (`{"code","message"}`) to the retry classes of ARCHITECTURE.md, "What is
/// safe to retry". `verified`: the answer carried a signature that verified. Only then may it say
/// something final (paid, not found, refused); an unverified answer is at most "try again".
fn map_error(resp: &HttpResponse, verified: bool) -> ChannelError {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let code = v["code"].as_str().unwrap_or("").to_string();
    let message = v["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {}", resp.status.as_u16()));
    let retry_after = resp
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let error = if RETRYABLE_CODES.contains(&code.as_str()) {
        ChannelError::new(ErrorKind::ProviderRetryable(code), message)
    } else if resp.status.is_server_error() {
        ChannelError::new(
            ErrorKind::ServerError,
            format!("HTTP {} {code} {message}", resp.status.as_u16()),
        )
    } else if !verified {
        ChannelError::new(
            ErrorKind::BadSignature,
            format!(
                "unsigned error answer HTTP {} {code}: not trusted to change anything",
                resp.status.as_u16()
            ),
        )
    } else if code == "ORDERPAID" {
        ChannelError::new(ErrorKind::AlreadyPaid, message)
    } else if resp.status == http::StatusCode::NOT_FOUND
        && (code == "ORDER_NOT_EXIST" || code == "ORDERNOTEXIST" || code == "RESOURCE_NOT_EXISTS")
    {
        ChannelError::new(ErrorKind::NotFound, message)
    } else if code.is_empty() {
        ChannelError::new(
            ErrorKind::Protocol,
            format!("HTTP {} without an error code", resp.status.as_u16()),
        )
    } else if ACCOUNT_CODES.contains(&code.as_str()) {
        ChannelError::new(ErrorKind::AccountRefused(code), message)
    } else {
        ChannelError::new(ErrorKind::Rejected(code), message)
    };
    error.with_retry_after(retry_after)
}

fn sub_mchid(sub: &SubMerchant) -> Result<&str, ChannelError> {
    sub.wechat_sub_mchid.as_deref().ok_or_else(|| {
        ChannelError::new(
            ErrorKind::Local,
            "partner channel without the merchant's wechat_sub_mchid",
        )
    })
}

fn require<'a>(v: Option<&'a str>, field: &str) -> Result<&'a str, ChannelError> {
    v.ok_or_else(|| {
        ChannelError::new(
            ErrorKind::Local,
            format!("{field} is required for this method"),
        )
    })
}

/// RFC 3339 in China time, whole seconds: what `time_expire` expects.
pub fn china_time(t: OffsetDateTime) -> String {
    let offset = UtcOffset::from_hms(8, 0, 0).expect("+08:00 is a valid offset");
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .to_offset(offset)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// out_trade_no allows `|`, which is not a legal URL character.
pub fn encode_path_segment(s: &str) -> String {
    s.replace('|', "%7C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping_follows_the_retry_table() {
        let resp = |status: u16, body: &str| HttpResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        };
        let map_error = |r: &HttpResponse| map_error(r, true);
        let e = map_error(&resp(500, r#"{"code":"SYSTEM_ERROR","message":"busy"}"#));
        assert_eq!(e.kind, ErrorKind::ProviderRetryable("SYSTEM_ERROR".into()));
        assert!(e.retryable() && !e.nothing_sent());
        let e = map_error(&resp(
            429,
            r#"{"code":"FREQUENCY_LIMITED","message":"slow"}"#,
        ));
        assert!(e.retryable());
        let e = map_error(&resp(403, r#"{"code":"ORDERPAID","message":"paid"}"#));
        assert_eq!(e.kind, ErrorKind::AlreadyPaid);
        assert!(!e.retryable());
        let e = map_error(&resp(400, r#"{"code":"PARAM_ERROR","message":"bad"}"#));
        assert_eq!(e.to_string(), "PARAM_ERROR: bad");
        assert_eq!(map_error(&resp(502, "<html>")).kind, ErrorKind::ServerError);
        assert_eq!(
            map_error(&resp(404, r#"{"code":"ORDER_NOT_EXIST","message":"x"}"#)).kind,
            ErrorKind::NotFound
        );
        assert_eq!(map_error(&resp(400, "")).kind, ErrorKind::Protocol);
    }

    /// A go-live misconfiguration counts against the channel; the order's own errors do not.
    #[test]
    fn account_refusals_are_the_channels_fault() {
        let resp = |status: u16, code: &str| HttpResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::from(format!(r#"{{"code":"{code}","message":"m"}}"#)),
        };
        let e = map_error(&resp(403, "NO_AUTH"), true);
        assert_eq!(e.kind, ErrorKind::AccountRefused("NO_AUTH".into()));
        assert!(e.is_channel_fault() && e.is_final_refusal() && !e.retryable());
        assert!(map_error(&resp(400, "APPID_MCHID_NOT_MATCH"), true).is_channel_fault());
        assert!(map_error(&resp(500, "SYSTEM_ERROR"), true).is_channel_fault());
        for shop in ["PARAM_ERROR", "ORDERPAID", "OUT_TRADE_NO_USED", "NOTENOUGH"] {
            let e = map_error(&resp(400, shop), true);
            assert!(!e.is_channel_fault(), "{shop} is not the channel's fault");
        }
    }

    #[test]
    fn an_unverified_error_answer_is_never_final() {
        let resp = |status: u16, body: &str| HttpResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        };
        for (status, body) in [
            (403, r#"{"code":"ORDERPAID","message":"paid"}"#),
            (400, r#"{"code":"PARAM_ERROR","message":"bad"}"#),
            (404, r#"{"code":"ORDER_NOT_EXIST","message":"x"}"#),
        ] {
            let e = map_error(&resp(status, body), false);
            assert_eq!(e.kind, ErrorKind::BadSignature, "{body}");
            assert!(e.maybe_sent);
        }
        // "Try again" needs no trust: it changes nothing.
        let e = map_error(&resp(503, "<html>"), false);
        assert_eq!(e.kind, ErrorKind::ServerError);
        let mut r = resp(429, r#"{"code":"FREQUENCY_LIMITED","message":"slow"}"#);
        r.headers.insert(header::RETRY_AFTER, "3".parse().unwrap());
        let e = map_error(&r, false);
        assert!(e.retryable());
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
    }

    #[test]
    fn trade_states_map_to_statuses() {
        let st = |s: &str| {
            parse_order_state(
                format!(r#"{{"out_trade_no":"o1","trade_state":"{s}","amount":{{"total":5}}}}"#)
                    .as_bytes(),
                "o1",
            )
        };
        assert_eq!(st("SUCCESS").unwrap().status, PaymentStatus::Succeeded);
        assert_eq!(st("NOTPAY").unwrap().status, PaymentStatus::Pending);
        assert_eq!(st("CLOSED").unwrap().status, PaymentStatus::Closed);
        assert_eq!(st("PAYERROR").unwrap().status, PaymentStatus::Failed);
        assert_eq!(st("SUCCESS").unwrap().amount, Some(5));
        assert!(st("WHAT").is_err());
        assert!(
            parse_order_state(br#"{"out_trade_no":"o2","trade_state":"SUCCESS"}"#, "o1").is_err()
        );
    }

    #[test]
    fn time_expire_is_china_time() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(china_time(t), "2023-11-15T06:13:20+08:00");
    }
}
