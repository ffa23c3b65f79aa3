//! Reconciliation through real sockets: with no notification at all, every paid payment
//! still becomes `succeeded` and the shop is told; a create left `unknown` is resolved; an
//! expired order is closed — unless it was paid, in which case it is `succeeded`.

mod support;

use serde_json::json;
use support::{payment, wait_until, Harness};

/// Checks every 200ms for the first ten minutes (the default is every minute).
const FAST: &str =
    "reconcile: { tiers: [ { until: 10m, every: 200ms }, { until: 24h, every: 1h } ] }\n";

fn rules() -> String {
    format!("{}{FAST}", support::RULES)
}

async fn status(h: &Harness, merchant: &str, no: &str) -> String {
    h.get_payment(merchant, no, false).await.body["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_paid_payment_whose_notification_never_came_is_found_and_told() {
    let h = Harness::start_with(false, &rules(), "").await;
    h.faults(json!({"drop_notifications": true})).await;
    for (m, no, method) in [
        ("m_1001", "rc-direct", "wechat_native"),
        ("m_4004", "rc-partner", "wechat_jsapi"),
    ] {
        let r = h.create(&payment(m, no, method, 300, json!({}))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(h.pay(no).await.status, 200);
    }
    // No refresh, no notification: the worker asks the bound account.
    for (m, no) in [("m_1001", "rc-direct"), ("m_4004", "rc-partner")] {
        wait_until(&format!("{no} reconciled"), || async {
            status(&h, m, no).await == "succeeded"
        })
        .await;
        let e = h.receiver.event("payment.succeeded", no).await;
        assert_eq!(e["data"]["merchant_id"], m);
    }
    let m = h.metrics().await;
    assert!(
        support::metric(&m, r#"payroute_reconcile_actions_total{action="resolved"}"#).unwrap()
            >= 2.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_create_left_unknown_is_resolved_within_the_first_tier() {
    let h = Harness::start_with(false, &rules(), "").await;
    // The sandbox creates the order, then answers after the 2s deadline: `unknown`.
    h.faults(json!({"latency_ms": 2500, "drop_notifications": true}))
        .await;
    let r = h
        .create(&payment(
            "m_1001",
            "rc-unknown",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(504, "channel_timeout");
    h.faults(json!({"drop_notifications": true})).await;
    assert_eq!(h.pay("rc-unknown").await.status, 200);
    wait_until("the unknown create resolved", || async {
        status(&h, "m_1001", "rc-unknown").await == "succeeded"
    })
    .await;
    h.receiver.event("payment.succeeded", "rc-unknown").await;
    h.shutdown().await;
}

#[tokio::test]
async fn expired_orders_are_closed_and_paid_ones_never_are() {
    let h = Harness::start_with(false, &rules(), "").await;
    h.faults(json!({"drop_notifications": true})).await;
    for no in ["rc-exp-unpaid", "rc-exp-paid"] {
        let r = h
            .create(&payment("m_1001", no, "wechat_native", 100, json!({})))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_eq!(h.pay("rc-exp-paid").await.status, 200);
    // Both orders' expiry passes (written in the store, as time would).
    rusqlite::Connection::open(h.db_path())
        .unwrap()
        .execute(
            "UPDATE payments SET expires_at = 1000 WHERE out_trade_no LIKE 'rc-exp-%'",
            [],
        )
        .unwrap();
    wait_until("both expired orders settled", || async {
        status(&h, "m_1001", "rc-exp-unpaid").await == "closed"
            && status(&h, "m_1001", "rc-exp-paid").await == "succeeded"
    })
    .await;
    h.receiver.event("payment.closed", "rc-exp-unpaid").await;
    h.receiver.event("payment.succeeded", "rc-exp-paid").await;
    assert!(
        !h.receiver
            .accepted()
            .iter()
            .any(|e| e["type"] == "payment.closed" && e["data"]["out_trade_no"] == "rc-exp-paid"),
        "a paid order is never told closed"
    );
    h.shutdown().await;
}

/// Issue 16 item 1: an open order is never dropped from the schedule. A refund left `pending`
/// (Alipay `fund_change=N`) whose queries fail past the last tier (one tier of a second here)
/// is asked about again at the last tier's interval, and settles once the provider answers
/// (before: its next check was none past the last tier, so it stayed `pending` for good).
#[tokio::test]
async fn an_open_refund_past_the_last_tier_is_still_checked() {
    const ONE_TIER: &str = "reconcile: { tiers: [ { until: 1s, every: 200ms } ] }\n";
    let h = Harness::start_alipay(&format!("{}{ONE_TIER}", support::MIXED_RULES)).await;
    h.paid("m_4004", "rc-open-refund", "alipay_precreate", 800)
        .await;
    // Five checks at least 200 ms apart: the fifth comes at an age of a second or more, past
    // the only tier, and fails like the four before it.
    h.faults(json!({
        "alipay_refund_pending": true,
        "fail_next": 5,
        "fail_ops": ["refund_query"],
        "fail_code": "ACQ.INVALID_PARAMETER",
    }))
    .await;
    let r = h
        .refund(&json!({
            "merchant_id": "m_4004", "out_trade_no": "rc-open-refund",
            "out_refund_no": "rc-open-refund-r1", "amount": 800,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    h.receiver.event("refund.succeeded", "rc-open-refund").await;
    h.shutdown().await;
}
