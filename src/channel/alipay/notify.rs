//! Alipay asynchronous notifications (classic gateway): a form-encoded POST, RSA2-signed over
//! every field but `sign` and `sign_type` ([`super::sign::verify_notification`]).
//! `notify_type=trade_status_sync` reports a trade's state with the fields of a trade query
//! answer (parsed by the same code); one that carries `out_biz_no` + `refund_fee` +
//! `gmt_refund` reports a refund.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::{parse_china_datetime, parse_trade, sign, yuan_field, AlipaySettings};
use crate::channel::notification::{Notification, NotifiedAccount, NotifyError};
use crate::channel::RefundState;
use crate::domain::{PaymentStatus, RefundStatus};

pub(super) fn verify(s: &AlipaySettings, body: &[u8]) -> Result<Notification, NotifyError> {
    let fields = sign::verify_notification(&sign::decode(body), &s.alipay_key)
        .map_err(NotifyError::BadSignature)?;
    // Empty values are not signed (they are left out of the string to sign): absent.
    let f = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let need = |name: &str| {
        f(name).ok_or_else(|| NotifyError::Malformed(format!("notification has no {name}")))
    };
    // The app that the notification is for: in ISV mode too this is the platform's app
    // (`auth_app_id` names the merchant's).
    let app_id = need("app_id")?;
    if app_id != s.app_id {
        return Err(NotifyError::NotForThisApp(format!(
            "notification is for app_id {app_id:?}, this channel is {:?}",
            s.app_id
        )));
    }
    let notify_type = need("notify_type")?;
    if notify_type != "trade_status_sync" {
        return Err(NotifyError::Malformed(format!(
            "unknown notify_type {notify_type:?}"
        )));
    }
    let out_trade_no = need("out_trade_no")?.to_string();
    let account = NotifiedAccount {
        mchid: None,
        sub_mchid: None,
        app_id: Some(app_id.to_string()),
    };
    let v = as_json(&fields);
    let malformed = |e: crate::channel::ChannelError| NotifyError::Malformed(e.message);

    if f("refund_fee").is_some() && f("gmt_refund").is_some() {
        // A refund: `out_biz_no` is the refund's out_request_no, our out_refund_no. Alipay
        // notifies only refunds that moved money. Its `refund_fee` is everything refunded on
        // the trade so far, not this refund's amount, which the notification does not state.
        let out_refund_no = need("out_biz_no")?.to_string();
        let state = RefundState {
            status: RefundStatus::Succeeded,
            provider_state: need("trade_status")?.to_string(),
            provider_refund_no: f("trade_no").map(str::to_string),
            amount: None,
            refunded_total: yuan_field(&v, "refund_fee").map_err(malformed)?,
        };
        return Ok(Notification::Refund {
            out_trade_no,
            out_refund_no,
            state,
            account,
        });
    }

    let mut state = parse_trade(&v, &out_trade_no).map_err(malformed)?;
    // A notification states the payment time as `gmt_payment` (a query as `send_pay_date`).
    if state.paid_at.is_none() && state.status == PaymentStatus::Succeeded {
        state.paid_at = f("gmt_payment").and_then(parse_china_datetime);
    }
    Ok(Notification::Payment {
        out_trade_no,
        state,
        account,
    })
}

/// The verified fields (empty ones left out) as a JSON object of strings, the shape
/// [`parse_trade`] reads.
fn as_json(fields: &BTreeMap<String, String>) -> Value {
    Value::Object(
        fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// `200 text/plain` `success` (the 7 bytes Alipay looks for) or `fail`, which makes Alipay
/// retry.
pub(super) fn answer(ok: bool) -> Response<Full<Bytes>> {
    let body = if ok { "success" } else { "fail" };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
