//! Late payments (issue 15 item 5; ARCHITECTURE.md, "Money rules") through real sockets: an order payroute
//! had closed is paid anyway at the provider (the sandbox's `?late=true`, the provider-side
//! race). The payment becomes `succeeded` with `late: true`, the shop hears `payment.late`
//! (never `payment.succeeded`) with the action taken, and by `late_payments` (default
//! `refund`) payroute refunds it in full, once, at the bound account — however often the
//! news arrives, and even when the refund call fails at first or the notification is lost.

use crate::support;

use http::Method;
use serde_json::{json, Value};
use support::{payment, wait_until, Harness};

/// Checks every second for the first ten minutes (the default is every minute).
const FAST: &str =
    "reconcile: { tiers: [ { until: 10m, every: 1s }, { until: 24h, every: 1h } ] }\n";

/// `POST /sandbox/pay/{no}?late=true`: pays the order even though it was closed.
async fn pay_late(h: &Harness, no: &str) -> Value {
    let r = h
        .send(
            Method::POST,
            &format!("{}/sandbox/pay/{no}?late=true", h.sandbox_url),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

/// Creates the order and closes it through the API (the shop is told `payment.closed`);
/// its payment id.
async fn closed_order(h: &Harness, merchant: &str, no: &str, method: &str, amount: u64) -> String {
    let r = h
        .create(&payment(merchant, no, method, amount, json!({})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let c = h.close(merchant, no).await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["status"], "closed", "{}", c.text);
    h.receiver.event("payment.closed", no).await;
    r.body["payment_id"].as_str().unwrap().to_string()
}

/// The refunds the sandbox holds for the order, as `[out_refund_no, amount, …]`.
async fn provider_refunds(h: &Harness, no: &str) -> Vec<Value> {
    let orders = h.sandbox_orders(no).await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    orders[0]["refunds"].as_array().cloned().unwrap_or_default()
}

/// `payroute_late_payments_total{channel,action}` (the text format sorts labels by name).
fn late_count(metrics: &str, channel: &str, action: &str) -> Option<f64> {
    support::metric(
        metrics,
        &format!(r#"payroute_late_payments_total{{action="{action}",channel="{channel}"}}"#),
    )
}

#[tokio::test]
async fn a_payment_of_a_closed_order_is_late_told_and_refunded_once_in_both_providers() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let fresh = h.metrics().await;
    for channel in ["m1001_wechat", "m2002_alipay"] {
        for action in ["refund", "keep"] {
            assert_eq!(
                late_count(&fresh, channel, action),
                Some(0.0),
                "{channel} {action}"
            );
        }
    }
    // Providers resend: every notification arrives twice.
    h.faults(json!({ "duplicate_notifications": true })).await;
    let cases = [
        ("m_1001", "late-wx", "wechat_native", "m1001_wechat"),
        ("m_2002", "late-ali", "alipay_precreate", "m2002_alipay"),
    ];
    for (merchant, no, method, channel) in cases {
        let payment_id = closed_order(&h, merchant, no, method, 1500).await;
        pay_late(&h, no).await;
        // No refresh: the provider's notification alone brings the news.
        let late = h.receiver.event("payment.late", no).await;
        assert_eq!(late["data"]["status"], "succeeded", "{late}");
        assert_eq!(late["data"]["late"], true, "{late}");
        assert_eq!(late["data"]["late_action"], "refund", "{late}");
        assert_eq!(late["data"]["channel"], channel, "{late}");
        let refunded = h.receiver.event("refund.succeeded", no).await;
        let out_refund_no = format!("late_{payment_id}");
        assert_eq!(refunded["data"]["out_refund_no"], out_refund_no.as_str());
        assert_eq!(refunded["data"]["amount"], 1500);
        assert_eq!(refunded["data"]["channel"], channel);
        // A refresh asks the provider again: still one refund.
        let q = h.get_payment(merchant, no, true).await;
        assert_eq!(q.status, 200, "{}", q.text);
        assert_eq!(q.body["status"], "succeeded");
        assert_eq!(q.body["late"], true);
        assert_eq!(q.body["refunded_amount"], 1500);
        let r = h.get_refund(merchant, &out_refund_no, false).await;
        assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    }
    // Every notification (payment and refund) was sent and answered twice...
    wait_until("every notification answered twice", || async {
        let list = h.sandbox_notifications().await;
        list.iter().filter(|n| n["answered_ok"] == true).count() == 2 * 2 * cases.len()
    })
    .await;
    for (merchant, no, _, channel) in cases {
        // ...and the provider holds exactly one refund, of the whole amount.
        let refunds = provider_refunds(&h, no).await;
        assert_eq!(refunds.len(), 1, "{no}: {refunds:?}");
        assert_eq!(refunds[0][1], 1500, "{no}: {refunds:?}");
        assert_eq!(h.receiver.told("payment.late", no), 1, "{no}");
        assert_eq!(h.receiver.told("refund.succeeded", no), 1, "{no}");
        // The shop was told the order was over; it is never told it succeeded.
        assert_eq!(h.receiver.told("payment.succeeded", no), 0, "{no}");
        let m = h.metrics().await;
        assert_eq!(late_count(&m, channel, "refund"), Some(1.0), "{channel}");
        assert_eq!(late_count(&m, channel, "keep"), Some(0.0), "{channel}");
        // The admin ledger and the export show the flag.
        let ledger = h
            .admin_get(&format!("/admin/payments?merchant_id={merchant}"))
            .await;
        assert_eq!(ledger.status, 200, "{}", ledger.text);
        let row = ledger.body["payments"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["out_trade_no"] == no).cloned())
            .unwrap_or_else(|| panic!("{no} in the ledger: {}", ledger.text));
        assert_eq!(row["late"], true, "{row}");
    }
    let csv = h.admin_get("/admin/payments/export?format=csv").await;
    assert_eq!(csv.status, 200, "{}", csv.text);
    let header = csv.text.lines().next().unwrap_or_default();
    assert!(header.ends_with(",late"), "{header}");
    for (_, no, _, _) in cases {
        let line = csv.text.lines().find(|l| l.contains(no)).unwrap();
        assert!(line.ends_with(",true"), "{line}");
    }
    h.shutdown().await;
}

/// Adds `late_payments: <policy>` to one merchant's line of the config file, and reloads.
async fn set_merchant_policy(h: &Harness, merchant: &str, policy: &str) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let prefix = format!("  {merchant}: {{ ");
    assert!(text.contains(&prefix), "{merchant} in the config");
    let edited = text.replace(&prefix, &format!("{prefix}late_payments: {policy}, "));
    support::write_atomically(&h.config_path, &edited);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn keep_leaves_the_money_top_level_or_per_merchant() {
    // Top level `keep`; m_4004 overrides it with `refund`.
    let h = Harness::start_with(
        false,
        &format!("{}late_payments: keep\n", support::RULES),
        "",
    )
    .await;
    set_merchant_policy(&h, "m_4004", "refund").await;
    closed_order(&h, "m_1001", "keep-1", "wechat_native", 800).await;
    closed_order(&h, "m_4004", "keep-2", "wechat_jsapi", 900).await;
    pay_late(&h, "keep-1").await;
    pay_late(&h, "keep-2").await;
    let kept = h.receiver.event("payment.late", "keep-1").await;
    assert_eq!(kept["data"]["late_action"], "keep", "{kept}");
    assert_eq!(kept["data"]["late"], true, "{kept}");
    let refunded = h.receiver.event("payment.late", "keep-2").await;
    assert_eq!(refunded["data"]["late_action"], "refund", "{refunded}");
    h.receiver.event("refund.succeeded", "keep-2").await;
    // A refresh does not change its mind.
    let q = h.get_payment("m_1001", "keep-1", true).await;
    assert_eq!(q.body["late"], true, "{}", q.text);
    assert_eq!(q.body["refunded_amount"], 0, "{}", q.text);
    assert!(provider_refunds(&h, "keep-1").await.is_empty());
    assert_eq!(provider_refunds(&h, "keep-2").await.len(), 1);
    let m = h.metrics().await;
    assert_eq!(late_count(&m, "m1001_wechat", "keep"), Some(1.0));
    assert_eq!(late_count(&m, "platform_wechat", "refund"), Some(1.0));

    // The default (`refund`) with one merchant keeping: m_1001 keeps, m_4004 is refunded.
    h.write_config(support::RULES, "");
    set_merchant_policy(&h, "m_1001", "keep").await;
    closed_order(&h, "m_1001", "keep-3", "wechat_native", 700).await;
    closed_order(&h, "m_4004", "keep-4", "wechat_jsapi", 600).await;
    pay_late(&h, "keep-3").await;
    pay_late(&h, "keep-4").await;
    let kept = h.receiver.event("payment.late", "keep-3").await;
    assert_eq!(kept["data"]["late_action"], "keep", "{kept}");
    let refunded = h.receiver.event("payment.late", "keep-4").await;
    assert_eq!(refunded["data"]["late_action"], "refund", "{refunded}");
    h.receiver.event("refund.succeeded", "keep-4").await;
    assert!(provider_refunds(&h, "keep-3").await.is_empty());
    assert_eq!(provider_refunds(&h, "keep-4").await.len(), 1);
    assert_eq!(h.receiver.told("refund.succeeded", "keep-3"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn the_reconciler_finds_a_late_payment_whose_notification_was_lost() {
    // Checks every 2s: the late payment below comes well within the interval after the close
    // (so the one more look, 2s after it, finds it paid).
    let tiers = "reconcile: { tiers: [ { until: 10m, every: 2s }, { until: 24h, every: 1h } ] }\n";
    let h = Harness::start_with(false, &format!("{}{tiers}", support::RULES), "").await;
    h.faults(json!({ "drop_notifications": true })).await;
    let r = h
        .create(&payment(
            "m_1001",
            "late-lost",
            "wechat_native",
            1200,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let payment_id = r.body["payment_id"].as_str().unwrap().to_string();
    assert_eq!(
        h.close("m_1001", "late-lost").await.body["status"],
        "closed"
    );
    // Paid as it closed; the provider's notification never arrives, nobody refreshes.
    pay_late(&h, "late-lost").await;
    h.receiver.event("payment.closed", "late-lost").await;
    let late = h.receiver.event("payment.late", "late-lost").await;
    assert_eq!(late["data"]["late"], true, "{late}");
    assert_eq!(late["data"]["late_action"], "refund", "{late}");
    let refunded = h.receiver.event("refund.succeeded", "late-lost").await;
    assert_eq!(
        refunded["data"]["out_refund_no"],
        format!("late_{payment_id}").as_str()
    );
    let m = h.metrics().await;
    assert!(
        support::metric(&m, r#"payroute_reconcile_actions_total{action="late"}"#)
            .is_some_and(|n| n >= 1.0),
        "the reconciler found it"
    );
    assert_eq!(provider_refunds(&h, "late-lost").await.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_late_refund_that_fails_stays_pending_and_the_reconciler_sends_it_once() {
    let h = Harness::start_with(false, &format!("{}{FAST}", support::RULES), "").await;
    let payment_id = closed_order(&h, "m_1001", "late-fail", "wechat_native", 1300).await;
    // Every refund call fails (5xx: it may have arrived) until the faults are lifted.
    h.faults(json!({ "fail_next": 1000, "fail_ops": ["refund"], "fail_status": 500 }))
        .await;
    pay_late(&h, "late-fail").await;
    h.receiver.event("payment.late", "late-fail").await;
    let out_refund_no = format!("late_{payment_id}");
    wait_until(
        "the late refund stored, pending, with its failure",
        || async {
            let l = h.admin_get("/admin/refunds?merchant_id=m_1001").await;
            l.body["refunds"].as_array().is_some_and(|l| {
                l.iter().any(|r| {
                    r["out_refund_no"] == out_refund_no.as_str()
                        && r["status"] == "pending"
                        && r["last_error"].is_string()
                })
            })
        },
    )
    .await;
    assert!(provider_refunds(&h, "late-fail").await.is_empty());
    h.faults(json!({})).await;
    // Nobody asks again: the reconciler sends it, with the same out_refund_no.
    let refunded = h.receiver.event("refund.succeeded", "late-fail").await;
    assert_eq!(refunded["data"]["out_refund_no"], out_refund_no.as_str());
    let refunds = provider_refunds(&h, "late-fail").await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0][0], out_refund_no.as_str());
    let q = h.get_payment("m_1001", "late-fail", false).await;
    assert_eq!(q.body["refunded_amount"], 1300, "{}", q.text);
    h.shutdown().await;
}

#[tokio::test]
async fn on_postgres_a_late_payment_is_flagged_and_refunded_once() {
    let Some(h) = Harness::start_on_postgres().await else {
        return;
    };
    h.faults(json!({ "duplicate_notifications": true })).await;
    let payment_id = closed_order(&h, "m_4004", "late-pg", "wechat_jsapi", 2100).await;
    pay_late(&h, "late-pg").await;
    let late = h.receiver.event("payment.late", "late-pg").await;
    assert_eq!(late["data"]["late"], true, "{late}");
    assert_eq!(late["data"]["late_action"], "refund", "{late}");
    let refunded = h.receiver.event("refund.succeeded", "late-pg").await;
    assert_eq!(
        refunded["data"]["out_refund_no"],
        format!("late_{payment_id}").as_str()
    );
    let q = h.get_payment("m_4004", "late-pg", true).await;
    assert_eq!(q.body["late"], true, "{}", q.text);
    wait_until("both notifications answered twice", || async {
        let list = h.sandbox_notifications().await;
        list.iter().filter(|n| n["answered_ok"] == true).count() == 4
    })
    .await;
    assert_eq!(provider_refunds(&h, "late-pg").await.len(), 1);
    assert_eq!(h.receiver.told("payment.late", "late-pg"), 1);
    assert_eq!(h.receiver.told("payment.succeeded", "late-pg"), 0);
    h.shutdown().await;
}

/// A late payment's refund is numbered `late_<payment id>`: a shop cannot take that number
/// first (its refund would stand in for payroute's, and the late payment would never be
/// refunded), so the prefix is refused on the API.
#[tokio::test]
async fn the_late_refund_number_is_reserved() {
    let h = Harness::start().await;
    let paid = h
        .paid("m_1001", "late-reserved-1", "wechat_native", 500)
        .await;
    let reserved = format!("late_{}", paid["payment_id"].as_str().unwrap());
    let r = h
        .refund(&json!({
            "merchant_id": "m_1001", "out_trade_no": "late-reserved-1",
            "out_refund_no": reserved, "amount": 500,
        }))
        .await;
    r.expect_error(400, "invalid_request");
    assert_eq!(r.body["error"]["field"], "out_refund_no", "{}", r.text);
    assert!(provider_refunds(&h, "late-reserved-1").await.is_empty());
    h.shutdown().await;
}
