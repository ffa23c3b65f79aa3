//! Unit tests of what `payment` keeps to itself: failure codes, the idempotency hash, a
//! channel's paid answer checked against the order.

use super::*;

#[test]
fn every_channel_failure_has_an_api_code() {
    let e = |k| ChannelError::new(k, "x");
    assert_eq!(failure_of(&e(ErrorKind::Timeout)), ChannelFailure::Timeout);
    assert_eq!(
        failure_of(&e(ErrorKind::NothingSent)),
        ChannelFailure::Unavailable
    );
    assert_eq!(
        failure_of(&e(ErrorKind::Rejected("PARAM_ERROR".into()))),
        ChannelFailure::Rejected
    );
    assert_eq!(
        failure_of(&e(ErrorKind::BadSignature)),
        ChannelFailure::Error
    );
    // An open breaker after a 5xx: the order may exist, the shop must hear "timeout".
    let mut open = e(ErrorKind::CircuitOpen);
    open.maybe_sent = true;
    assert_eq!(failure_of(&open), ChannelFailure::Timeout);
}

#[test]
fn the_idempotency_hash_includes_the_shop() {
    let request = json!({"merchant_id": "m", "out_trade_no": "o", "amount": 100});
    let hash = request_hash("shop-a", &request);
    assert_ne!(hash, request_hash("shop-b", &request));
    assert!(same_request(
        &hash,
        &request_hash("shop-a", &request),
        &request
    ));
    assert!(!same_request(
        &hash,
        &request_hash("shop-b", &request),
        &request
    ));
    // A record hashed before the shop was part of it still matches the same request.
    let legacy = sha256_hex(request.to_string().as_bytes());
    assert!(same_request(&legacy, &hash, &request));
    let other = json!({"merchant_id": "m", "out_trade_no": "o", "amount": 101});
    assert!(!same_request(
        &legacy,
        &request_hash("shop-a", &other),
        &other
    ));
}

fn record() -> PaymentRecord {
    PaymentRecord {
        payment_id: "pay_1".into(),
        merchant_id: "m".into(),
        shop_id: "s".into(),
        out_trade_no: "o".into(),
        amount: 100,
        currency: "CNY".into(),
        method: Method::WechatNative,
        status: PaymentStatus::Pending,
        channel: "c".into(),
        account: None,
        rule: "r".into(),
        action: None,
        provider_trade_no: None,
        refunded_amount: 0,
        request_hash: String::new(),
        request: json!({}),
        error_code: None,
        error_message: None,
        attempt_until: None,
        created_at: 0,
        updated_at: 0,
        paid_at: None,
        expires_at: 0,
        version: 0,
        late: false,
    }
}

#[test]
fn a_paid_answer_must_state_amount_and_currency() {
    let state = |status, amount, currency: Option<&str>| OrderState {
        status,
        provider_state: String::new(),
        provider_trade_no: None,
        amount,
        currency: currency.map(str::to_string),
        paid_at: None,
    };
    let rec = record();
    use PaymentStatus::*;
    assert!(cross_check(&rec, &state(Succeeded, Some(100), Some("CNY"))).is_ok());
    assert!(cross_check(&rec, &state(Succeeded, None, Some("CNY"))).is_err());
    assert!(cross_check(&rec, &state(Succeeded, Some(100), None)).is_err());
    assert!(cross_check(&rec, &state(Succeeded, Some(100), Some("USD"))).is_err());
    assert!(cross_check(&rec, &state(Succeeded, Some(99), Some("CNY"))).is_err());
    // An unpaid order's answer may omit the amount (WeChat Pay does), not misstate it.
    assert!(cross_check(&rec, &state(Pending, None, None)).is_ok());
    assert!(cross_check(&rec, &state(Closed, Some(5), None)).is_err());
}
