//! The payment and refund objects as the shop sees them: in every API answer and in every
//! webhook event (ARCHITECTURE.md, "The unified API and its errors", "Shop events and webhooks").

use serde::Serialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{PaymentRecord, RefundRecord};

/// The payment object of every response, borrowed from the record: serialised straight to
/// bytes on the API's hot paths (no `Value` tree built and then re-serialised). Fields in
/// alphabetical order, the order of `serde_json::Map`, so the bytes are those of
/// [`payment_json`].
#[derive(Serialize)]
pub struct PaymentView<'a> {
    action: &'a Option<Value>,
    amount: u64,
    channel: &'a str,
    created_at: String,
    currency: &'a str,
    expires_at: String,
    /// Paid after the shop was told the order was over (ARCHITECTURE.md, "Money rules": late and
    /// duplicate payments).
    late: bool,
    merchant_id: &'a str,
    method: crate::domain::Method,
    out_trade_no: &'a str,
    paid_at: Option<String>,
    payment_id: &'a str,
    provider_trade_no: &'a Option<String>,
    refunded_amount: u64,
    rule: &'a str,
    status: crate::domain::PaymentStatus,
    updated_at: String,
}

impl<'a> PaymentView<'a> {
    pub fn of(p: &'a PaymentRecord) -> PaymentView<'a> {
        PaymentView {
            action: &p.action,
            amount: p.amount,
            channel: &p.channel,
            created_at: rfc3339(p.created_at),
            currency: &p.currency,
            expires_at: rfc3339(p.expires_at),
            late: p.late,
            merchant_id: &p.merchant_id,
            method: p.method,
            out_trade_no: &p.out_trade_no,
            paid_at: p.paid_at.map(rfc3339),
            payment_id: &p.payment_id,
            provider_trade_no: &p.provider_trade_no,
            refunded_amount: p.refunded_amount,
            rule: &p.rule,
            status: p.status,
            updated_at: rfc3339(p.updated_at),
        }
    }
}

/// The payment object as JSON bytes (the body of a payment answer).
pub fn payment_bytes(p: &PaymentRecord) -> Vec<u8> {
    // A struct of strings, numbers and a `Value`: serialising it cannot fail.
    serde_json::to_vec(&PaymentView::of(p)).unwrap_or_default()
}

/// The payment object of every response.
pub fn payment_json(p: &PaymentRecord) -> Value {
    serde_json::to_value(PaymentView::of(p)).unwrap_or(Value::Null)
}

/// The refund object of every refund response.
pub fn refund_json(r: &RefundRecord) -> Value {
    json!({
        "refund_id": r.refund_id,
        "merchant_id": r.merchant_id,
        "out_trade_no": r.out_trade_no,
        "out_refund_no": r.out_refund_no,
        "payment_id": r.payment_id,
        "amount": r.amount,
        "reason": r.reason,
        "status": r.status,
        "channel": r.channel,
        "provider_refund_no": r.provider_refund_no,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
        "succeeded_at": r.succeeded_at.map(rfc3339),
    })
}

/// Unix ms as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_bytes_are_the_payment_object() {
        let rec = PaymentRecord {
            payment_id: "pay_1".into(),
            merchant_id: "m_1".into(),
            shop_id: "s".into(),
            out_trade_no: "O-1".into(),
            amount: 1999,
            currency: "CNY".into(),
            method: crate::domain::Method::WechatNative,
            status: crate::domain::PaymentStatus::Succeeded,
            channel: "ch".into(),
            account: None,
            rule: "r".into(),
            action: Some(json!({"type": "qr_code", "code_url": "weixin://x"})),
            provider_trade_no: Some("42".into()),
            refunded_amount: 5,
            request_hash: "h".into(),
            request: json!({}),
            error_code: None,
            error_message: None,
            attempt_until: None,
            created_at: 1_795_000_000_000,
            updated_at: 1_795_000_001_000,
            paid_at: Some(1_795_000_002_000),
            expires_at: 1_795_007_200_000,
            version: 3,
            late: false,
        };
        let expected = json!({
            "payment_id": "pay_1", "merchant_id": "m_1", "out_trade_no": "O-1", "amount": 1999,
            "currency": "CNY", "method": "wechat_native", "status": "succeeded", "channel": "ch",
            "rule": "r", "action": {"type": "qr_code", "code_url": "weixin://x"},
            "provider_trade_no": "42", "refunded_amount": 5,
            "created_at": rfc3339(rec.created_at), "updated_at": rfc3339(rec.updated_at),
            "paid_at": rfc3339(1_795_000_002_000), "expires_at": rfc3339(rec.expires_at),
            "late": false,
        });
        assert_eq!(payment_json(&rec), expected);
        // The same bytes as the Value tree would have been serialised to.
        assert_eq!(payment_bytes(&rec), expected.to_string().into_bytes());
    }
}
