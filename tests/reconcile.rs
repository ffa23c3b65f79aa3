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
