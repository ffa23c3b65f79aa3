//! The payment and refund objects as the shop sees them: in every API answer and in every
//! webhook event (DESIGN.md §2, §3).

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{PaymentRecord, RefundRecord};

/// The payment object of every response.
pub fn payment_json(p: &PaymentRecord) -> Value {
    json!({
        "payment_id": p.payment_id,
        "merchant_id": p.merchant_id,
        "out_trade_no": p.out_trade_no,
        "amount": p.amount,
        "currency": p.currency,
        "method": p.method,
        "status": p.status,
        "channel": p.channel,
        "rule": p.rule,
        "action": p.action,
        "provider_trade_no": p.provider_trade_no,
        "refunded_amount": p.refunded_amount,
        "created_at": rfc3339(p.created_at),
        "updated_at": rfc3339(p.updated_at),
        "paid_at": p.paid_at.map(rfc3339),
        "expires_at": rfc3339(p.expires_at),
    })
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
