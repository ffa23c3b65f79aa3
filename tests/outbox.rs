//! The outbox through real sockets: a shop that is down gets its events `dead` after the
//! schedule and a resend delivers them; a flapping shop gets every event at least once and in
//! order per payment; a `kill -9` loses no pending event.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{wait_until, Binary, Harness};

/// Retries after 100ms and 100ms, then dead.
const SHORT: &str = "webhooks: { schedule: [100ms, 100ms] }\n";

/// Creates, pays and refreshes an order: its `payment.succeeded` event is written.
async fn paid(h: &Harness, no: &str) {
    h.paid("m_1001", no, "wechat_native", 500).await;
}

async fn events(h: &Harness, query: &str) -> Vec<Value> {
    let r = h.admin_get(&format!("/admin/events{query}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["events"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_shop_down_for_the_whole_schedule_gets_dead_events_and_a_resend_delivers_them() {
    let h = Harness::start_with(false, &format!("{}{SHORT}", support::RULES), "").await;
    h.faults(json!({"drop_notifications": true})).await;
    h.receiver.answer_with(500);
    paid(&h, "ob-dead").await;
    wait_until("the event is dead", || async {
        events(&h, "?status=dead").await.len() == 1
    })
    .await;
    let dead = events(&h, "?status=dead").await.remove(0);
    assert_eq!(dead["type"], "payment.succeeded");
    assert_eq!(dead["attempts"], 3, "the first try and the two retries");
    assert_eq!(h.receiver.received().len(), 3);
    wait_until("the dead gauge shows it", || async {
        support::metric(&h.metrics().await, "payroute_events_dead") == Some(1.0)
    })
    .await;
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_webhook_deliveries_total{result="dead",shop="test-shop"}"#
        ),
        Some(1.0)
    );

    h.receiver.answer_with(200);
    let id = dead["id"].as_str().unwrap();
    let r = h
        .admin_post(&format!("/admin/events/{id}/resend"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let delivered = h.receiver.event("payment.succeeded", "ob-dead").await;
    assert_eq!(
        delivered["id"], id,
        "the same event id, so the shop can dedupe"
    );
    wait_until("the event is delivered", || async {
        events(&h, "?status=delivered").await.len() == 1
    })
    .await;
    h.admin_post("/admin/events/evt_nope/resend", &json!({}))
        .await
        .expect_error(404, "not_found");
    h.shutdown().await;
}

#[tokio::test]
async fn a_flapping_shop_gets_every_event_at_least_once_in_order_per_payment() {
    let h = Harness::start_with(
        false,
        &format!(
            "{}webhooks: {{ schedule: [20ms, 20ms, 20ms, 20ms, 20ms, 20ms, 20ms, 20ms, 20ms, 20ms, 20ms, 20ms] }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    h.faults(json!({"drop_notifications": true})).await;
    // The shop answers 500 and 200 in turn, 15ms each.
    let rx = h.receiver.clone();
    let flapping = tokio::spawn(async move {
        for i in 0.. {
            rx.answer_with(if i % 2 == 0 { 500 } else { 200 });
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    let orders = ["ob-flap-1", "ob-flap-2", "ob-flap-3"];
    for no in orders {
        paid(&h, no).await;
        for (i, amount) in [100, 200].into_iter().enumerate() {
            let r = h
                .refund(&json!({"merchant_id": "m_1001", "out_trade_no": no, "out_refund_no": format!("{no}-r{i}"), "amount": amount}))
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
    }
    let written = events(&h, "?limit=1000").await;
    assert_eq!(
        written.len(),
        9,
        "one payment and two refund events per order"
    );
    wait_until("every event delivered", || async {
        events(&h, "?status=delivered&limit=1000").await.len() == 9
    })
    .await;
    flapping.abort();
    let accepted = h.receiver.accepted();
    for e in &written {
        assert!(
            accepted.iter().any(|a| a["id"] == e["id"]),
            "event {} arrived",
            e["id"]
        );
    }
    for no in orders {
        let seen: Vec<String> = accepted
            .iter()
            .filter(|e| e["data"]["out_trade_no"] == no)
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["data"]["out_refund_no"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                "payment.succeeded ".to_string(),
                format!("refund.succeeded {no}-r0"),
                format!("refund.succeeded {no}-r1"),
            ],
            "{no}: in order, each once after its first acceptance"
        );
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_kill_9_loses_no_pending_event() {
    // The in-process proxy only sets the scene (sandbox, receiver, config); the process
    // that is killed is the real binary on the same config and database.
    // Retries every 300ms: after the restart the pending events go out at once.
    let mut h = Harness::start_with(
        false,
        &format!("{}webhooks: {{ schedule: [300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms] }}\n", support::RULES),
        "",
    )
    .await;
    h.faults(json!({"drop_notifications": true})).await;
    let mut binary = Binary::take_over(&mut h).await;
    h.receiver.answer_with(503);
    let orders = ["ob-kill-1", "ob-kill-2", "ob-kill-3"];
    for no in orders {
        paid(&h, no).await;
    }
    wait_until("every event tried once", || async {
        h.receiver.received().len() >= orders.len()
    })
    .await;
    binary.signal("KILL");
    binary.exited().await;

    h.receiver.answer_with(200);
    binary.restart().await;
    for no in orders {
        h.receiver.event("payment.succeeded", no).await;
        assert_eq!(
            h.get_payment("m_1001", no, false).await.body["status"],
            "succeeded"
        );
    }
}

#[tokio::test]
async fn a_slow_shop_never_delays_another_shops_events() {
    let h = Harness::start_with(
        false,
        &format!(
            "{}webhooks: {{ per_shop_concurrency: 1, timeout: 10s }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    h.faults(json!({"drop_notifications": true})).await;
    // other-shop (merchant m_9009) gets its own receiver; test-shop's answers take 5s.
    let other = support::Receiver::start().await;
    let yaml = std::fs::read_to_string(&h.config_path).unwrap();
    let (head, tail) = yaml.split_once("id: other-shop").unwrap();
    let tail = tail.replacen(&h.receiver.url, &other.url, 1);
    support::write_atomically(&h.config_path, &format!("{head}id: other-shop{tail}"));
    assert_eq!(h.admin_post("/admin/reload", &json!({})).await.status, 200);
    h.receiver.answer_after(5_000);

    for no in ["slow-1", "slow-2"] {
        paid(&h, no).await;
    }
    // m_9009 belongs to other-shop, which is not configured with a rule of its own: it
    // goes to the platform channel by default.
    let auth = "Bearer other-shop-key-0123456789";
    let r = h
        .send(
            http::Method::POST,
            &format!("{}/v1/payments", h.api),
            &[("authorization", auth)],
            &support::payment("m_9009", "fast-1", "wechat_native", 500, json!({})).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(h.pay("fast-1").await.status, 200);
    let q = h
        .send(
            http::Method::GET,
            &format!("{}/v1/payments/m_9009/fast-1?refresh=true", h.api),
            &[("authorization", auth)],
            "",
        )
        .await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
    // other-shop is told while test-shop's first delivery still hangs, and test-shop's
    // second event waits for its one slot.
    other.event("payment.succeeded", "fast-1").await;
    assert!(
        h.receiver.accepted().is_empty(),
        "the slow shop has answered nothing yet"
    );
    h.shutdown().await;
}
