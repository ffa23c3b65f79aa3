//! Refunds end to end: only succeeded payments, only at the bound channel, never more than
//! was paid — in WeChat Pay direct/partner and Alipay direct/ISV mode.

use crate::support;

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use support::{payment, wait_until, Harness};

#[tokio::test]
async fn partial_refunds_up_to_the_paid_amount_in_every_mode() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let cases = [
        ("m_1001", "rf-wx-direct", "wechat_native", "m1001_wechat"),
        ("m_4004", "rf-wx-partner", "wechat_jsapi", "platform_wechat"),
        (
            "m_2002",
            "rf-ali-direct",
            "alipay_precreate",
            "m2002_alipay",
        ),
        (
            "m_4004",
            "rf-ali-isv",
            "alipay_precreate",
            "platform_alipay",
        ),
    ];
    for (merchant, no, method, channel) in cases {
        let p = h.paid(merchant, no, method, 1999).await;
        assert_eq!(p["channel"], channel);
        let first = h.refund(&json!({"merchant_id": merchant, "out_trade_no": no, "out_refund_no": format!("{no}-r1"), "amount": 500, "reason": "退货"})).await;
        assert_eq!(
            (first.status, first.body["status"].as_str()),
            (201, Some("succeeded")),
            "{no}: {}",
            first.text
        );
        assert_eq!(
            first.body["channel"], channel,
            "a refund goes back the way the money came"
        );
        let rest = h.refund(&json!({"merchant_id": merchant, "out_trade_no": no, "out_refund_no": format!("{no}-r2"), "amount": 1499})).await;
        assert_eq!(rest.status, 201, "{no}: {}", rest.text);
        // Nothing is left: one more fen is refused before any channel call.
        let over = h.refund(&json!({"merchant_id": merchant, "out_trade_no": no, "out_refund_no": format!("{no}-r3"), "amount": 1})).await;
        over.expect_error(409, "invalid_state");
        assert!(over.error_message().contains("exceeds"), "{}", over.text);
        let p = h.get_payment(merchant, no, false).await;
        assert_eq!(p.body["refunded_amount"], 1999, "{no}");
        assert_eq!(p.body["status"], "succeeded");
        let q = h.get_refund(merchant, &format!("{no}-r1"), true).await;
        assert_eq!(
            (q.status, q.body["status"].as_str()),
            (200, Some("succeeded")),
            "{no}: {}",
            q.text
        );
        assert_eq!(q.body["amount"], 500);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn refund_guards_and_idempotency() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    // Unpaid and unknown payments.
    assert_eq!(
        h.create(&payment(
            "m_1001",
            "rg-unpaid",
            "wechat_native",
            100,
            json!({})
        ))
        .await
        .status,
        201
    );
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "rg-unpaid", "out_refund_no": "x1", "amount": 100}))
        .await
        .expect_error(409, "invalid_state");
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "nope", "out_refund_no": "x2", "amount": 100}))
        .await
        .expect_error(404, "not_found");
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "rg-unpaid", "out_refund_no": "x3", "amount": 1.5}))
        .await
        .expect_error(400, "invalid_amount");
    h.refund(&json!({"merchant_id": "m_9009", "out_trade_no": "rg-unpaid", "out_refund_no": "x4", "amount": 1}))
        .await
        .expect_error(403, "forbidden_merchant");

    h.paid("m_1001", "rg-1", "wechat_native", 1000).await;
    let body = json!({"merchant_id": "m_1001", "out_trade_no": "rg-1", "out_refund_no": "rg-1-a", "amount": 300});
    let first = h.refund(&body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = h.refund(&body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body["refund_id"], first.body["refund_id"]);
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "rg-1", "out_refund_no": "rg-1-a", "amount": 301}))
        .await
        .expect_error(409, "idempotency_mismatch");
    let orders = h.sandbox_orders("rg-1").await;
    assert_eq!(
        orders[0]["refunds"].as_array().unwrap().len(),
        1,
        "the replay never reached the channel"
    );
    assert_eq!(
        h.get_payment("m_1001", "rg-1", false).await.body["refunded_amount"],
        300
    );

    // Two refunds racing for the whole remaining amount: exactly one wins.
    let b1 = json!({"merchant_id": "m_1001", "out_trade_no": "rg-1", "out_refund_no": "rg-1-b", "amount": 700});
    let b2 = json!({"merchant_id": "m_1001", "out_trade_no": "rg-1", "out_refund_no": "rg-1-c", "amount": 700});
    let (a, b) = tokio::join!(h.refund(&b1), h.refund(&b2));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{} / {}", a.text, b.text);
    let lost = if a.status == 409 { &a } else { &b };
    // Refused for the amount (nothing left to refund), not as a replay or a race on a key.
    lost.expect_error(409, "invalid_state");
    assert_eq!(
        h.get_payment("m_1001", "rg-1", false).await.body["refunded_amount"],
        1000
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_rejected_refund_frees_its_amount() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.paid("m_4004", "rr-1", "wechat_jsapi", 800).await;
    h.faults(json!({ "fail_next": 1, "fail_status": 403, "fail_code": "NOT_ENOUGH" }))
        .await;
    let r = h.refund(&json!({"merchant_id": "m_4004", "out_trade_no": "rr-1", "out_refund_no": "rr-1-a", "amount": 800})).await;
    r.expect_error(402, "channel_rejected");
    assert!(r.error_message().contains("NOT_ENOUGH"));
    assert_eq!(
        h.get_refund("m_4004", "rr-1-a", false).await.body["status"],
        "failed"
    );
    let ok = h.refund(&json!({"merchant_id": "m_4004", "out_trade_no": "rr-1", "out_refund_no": "rr-1-b", "amount": 800})).await;
    assert_eq!(
        (ok.status, ok.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        ok.text
    );
    assert_eq!(
        h.get_payment("m_4004", "rr-1", false).await.body["refunded_amount"],
        800
    );
    h.shutdown().await;
}

/// A refund whose own write lost the compare-and-set to the provider's notification — applied
/// while the refund call was still out, under the refund's live claim — is merged into it
/// (ARCHITECTURE.md, "Money rules": a holder that lost the compare-and-set merges while the
/// claim is still its own): the shop's refund answers `succeeded`, the claim ends (a replay
/// answers at once), and the change is written, counted and told once.
#[tokio::test]
async fn a_refund_that_lost_its_write_to_the_notification_merges_under_its_claim() {
    let h = Harness::start().await;
    h.paid("m_1001", "rf-lost", "wechat_native", 1000).await;
    // The sandbox makes the refund and sends its notification at once, but answers the refund
    // call 1.5 s later (within the channel's 2 s deadline).
    h.faults(json!({"latency_ms": 1500})).await;
    let body = json!({"merchant_id": "m_1001", "out_trade_no": "rf-lost", "out_refund_no": "rf-lost-1", "amount": 400});
    let answered = AtomicBool::new(false);
    let refund = async {
        let r = h.refund(&body).await;
        answered.store(true, Ordering::SeqCst);
        r
    };
    let meanwhile = async {
        wait_until("the refund notification applied", || async {
            h.get_refund("m_1001", "rf-lost-1", false).await.body["status"] == "succeeded"
        })
        .await;
        answered.load(Ordering::SeqCst)
    };
    let (r, answered_first) = tokio::join!(refund, meanwhile);
    assert!(
        !answered_first,
        "the notification must be applied while the refund call is out, so that the call's write loses"
    );
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        r.text
    );
    let claim: Option<i64> = rusqlite::Connection::open(h.db_path())
        .unwrap()
        .query_row(
            "SELECT attempt_until FROM refunds WHERE out_refund_no = 'rf-lost-1'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        claim, None,
        "the refund's claim ended with its merged write"
    );
    let replay = h.refund(&body).await;
    assert_eq!(
        (replay.status, replay.body["status"].as_str()),
        (200, Some("succeeded")),
        "{}",
        replay.text
    );
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    let events = h.admin_get("/admin/events?limit=1000").await.body["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let told: Vec<&str> = events
        .iter()
        .filter(|e| e["body"]["data"]["out_trade_no"] == "rf-lost")
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.starts_with("refund."))
        .collect();
    assert_eq!(told, ["refund.succeeded"], "one event for one change");
    assert_eq!(
        support::metric(
            &h.metrics().await,
            r#"payroute_refunds_total{channel="m1001_wechat",outcome="succeeded"}"#
        ),
        Some(1.0)
    );
    h.receiver.event("refund.succeeded", "rf-lost").await;
    h.shutdown().await;
}
