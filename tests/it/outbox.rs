//! The outbox through real sockets: a shop that is down gets its events `dead` after the
//! schedule and a resend delivers them; a flapping shop gets every event at least once and in
//! order per payment; a `kill -9` loses no pending event.

use crate::support;

use std::time::Duration;

use serde_json::{json, Value};
use support::disk::SmallDisk;
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
        h.metric("payroute_events_dead", &[]).await == Some(1.0)
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

/// How long the slow shop holds each delivery in the backlog test: far longer than the test
/// gives the other shop's event.
const SLOW_SHOP_HOLDS_MS: u64 = 5_000;
/// The other shop's event must arrive within this of being written (issue 16's "done when").
const OTHER_SHOP_WITHIN: Duration = Duration::from_secs(1);

/// Points other-shop (merchant m_9009) at a receiver of its own; returns it.
async fn other_shop_receiver(h: &Harness) -> support::Receiver {
    let other = support::Receiver::start().await;
    let yaml = std::fs::read_to_string(&h.config_path).unwrap();
    let (head, tail) = yaml.split_once("id: other-shop").unwrap();
    let tail = tail.replacen(&h.receiver.url, &other.url, 1);
    support::write_atomically(&h.config_path, &format!("{head}id: other-shop{tail}"));
    assert_eq!(h.admin_post("/admin/reload", &json!({})).await.status, 200);
    other
}

/// Creates and pays other-shop's order `no`: its `payment.succeeded` event is written when
/// this returns.
async fn other_shop_paid(h: &Harness, no: &str) {
    let auth = "Bearer other-shop-key-0123456789";
    let r = h
        .send(
            http::Method::POST,
            &format!("{}/v1/payments", h.api),
            &[("authorization", auth)],
            &support::payment("m_9009", no, "wechat_native", 500, json!({})).to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(h.pay(no).await.status, 200);
    let q = h
        .send(
            http::Method::GET,
            &format!("{}/v1/payments/m_9009/{no}?refresh=true", h.api),
            &[("authorization", auth)],
            "",
        )
        .await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
}

/// Issue 16 item 3: 1,000 due events at a shop whose webhook holds every request for seconds
/// (four times the 256 a round takes) leave another shop's event delivered within a second.
#[tokio::test]
async fn a_backlog_of_1000_at_a_slow_shop_leaves_another_shops_event_on_time() {
    let h = Harness::start_with(
        false,
        &format!(
            "{}webhooks: {{ per_shop_concurrency: 2, timeout: 10s }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    h.faults(json!({"drop_notifications": true})).await;
    let other = other_shop_receiver(&h).await;
    h.receiver.answer_after(SLOW_SHOP_HOLDS_MS);
    // The backlog, written straight into the store (as 1,000 payments would have left it):
    // each event heads its own payment's queue, all due, all older than the other shop's.
    {
        let mut db = rusqlite::Connection::open(h.db_path()).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for i in 0..1_000 {
            let id = format!("evt_backlog_{i:04}");
            let body = json!({"id": id, "type": "payment.succeeded", "data": {"out_trade_no": format!("backlog-{i}")}});
            tx.execute(
                "INSERT INTO events (event_id, shop_id, merchant_id, payment_id, event_type, body,
                 status, attempts, next_attempt_at, created_at)
                 VALUES (?1, 'test-shop', 'm_1001', ?2, 'payment.succeeded', ?3, 'pending', 0, ?4, ?4)",
                rusqlite::params![id, format!("pay_backlog_{i}"), body.to_string(), now - 60_000 + i],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    wait_until("the slow shop's two slots are taken", || async {
        h.receiver.arrivals() >= 2
    })
    .await;

    other_shop_paid(&h, "fast-after-backlog").await;
    let written = tokio::time::Instant::now();
    other.event("payment.succeeded", "fast-after-backlog").await;
    let took = written.elapsed();
    eprintln!(
        "other shop's event delivered {took:?} after it was written, beside a backlog of 1,000"
    );
    assert!(
        took < OTHER_SHOP_WITHIN,
        "the other shop's event took {took:?} behind the slow shop's backlog"
    );
    assert_eq!(
        h.receiver.arrivals(),
        2,
        "the slow shop never has more than its 2 slots in flight"
    );
    h.shutdown().await;
}

/// How long the shop holds the delivery in flight while the test fills the disk.
const HOLD_WHILE_FILLING_MS: u64 = 4_000;
/// How long the disk stays full with the delivery's outcome unrecorded: many poll rounds.
const FULL_FOR: Duration = Duration::from_secs(3);

/// Issue 16 item 2: a delivery whose outcome cannot be written (the disk filled while it was
/// in flight) is not sent again — neither while the disk is full nor once space returns — and
/// its outcome is recorded then.
#[tokio::test]
async fn a_full_disk_never_resends_a_delivered_event_and_its_outcome_is_recorded_once_space_returns(
) {
    let mut h = Harness::start_with(
        false,
        &format!(
            "{}webhooks: {{ schedule: [1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], timeout: 10s }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    let Some(disk) = SmallDisk::mount(&h.dir.path().join("small"), "2m") else {
        return;
    };
    disk.move_store(&mut h).await;
    h.faults(json!({"drop_notifications": true})).await;
    h.receiver.answer_after(HOLD_WHILE_FILLING_MS);
    paid(&h, "ob-full").await;
    wait_until("the delivery reaches the shop", || async {
        h.receiver.arrivals() == 1
    })
    .await;

    // The disk fills while the shop holds the delivery: writes fail from the first that needs
    // a new page on.
    disk.fill();
    let mut i = 0;
    loop {
        let r = h
            .create(&support::payment(
                "m_1001",
                &format!("ob-full-{i}"),
                "wechat_native",
                100,
                json!({}),
            ))
            .await;
        if r.status == 503 {
            break;
        }
        i += 1;
        assert!(i < 50, "the store never reported the full disk");
    }
    wait_until("the shop answers the delivery (200)", || async {
        h.receiver.received().len() == 1
    })
    .await;
    // From now on the shop answers at once: a resend loop would show as thousands.
    h.receiver.answer_after(0);
    // Many rounds with the event pending in the store, its delivery unrecorded.
    tokio::time::sleep(FULL_FOR).await;
    assert_eq!(
        h.receiver.arrivals(),
        1,
        "sent again while its outcome could not be written"
    );

    disk.free();
    wait_until("the delivery is recorded", || async {
        events(&h, "?status=delivered").await.len() == 1
    })
    .await;
    let delivered = events(&h, "?status=delivered").await.remove(0);
    assert_eq!(
        h.receiver.arrivals(),
        1,
        "sent again once space returned, before its outcome was recorded"
    );
    assert_eq!(delivered["attempts"], 1);
    assert!(
        events(&h, "?status=pending").await.is_empty(),
        "nothing lost or left over"
    );
    let m = h.metrics().await;
    for reason in ["unrecorded", "superseded"] {
        assert!(
            support::metric(
                &m,
                &format!(r#"payroute_outbox_held_total{{reason="{reason}"}}"#)
            )
            .is_some(),
            "{reason} is listed"
        );
    }
    assert_eq!(support::metric(&m, "payroute_outbox_unrecorded"), Some(0.0));
    h.shutdown().await;
    drop(disk);
}

/// Issue 16 item 6: an event still pending — here in the middle of its delivery — is not
/// resent (a resend would start a second delivery beside the one under way): `409
/// event_pending`, and the shop gets it once.
#[tokio::test]
async fn resending_an_event_in_the_middle_of_its_delivery_is_refused() {
    let h = Harness::start_with(false, &format!("{}{SHORT}", support::RULES), "").await;
    h.faults(json!({"drop_notifications": true})).await;
    h.receiver.answer_after(1_000);
    paid(&h, "ob-mid").await;
    wait_until("the delivery reaches the shop", || async {
        h.receiver.arrivals() == 1
    })
    .await;
    let pending = events(&h, "?status=pending").await;
    assert_eq!(pending.len(), 1);
    let id = pending[0]["id"].as_str().unwrap();
    h.admin_post(&format!("/admin/events/{id}/resend"), &json!({}))
        .await
        .expect_error(409, "event_pending");
    wait_until("the event is delivered", || async {
        events(&h, "?status=delivered").await.len() == 1
    })
    .await;
    assert_eq!(h.receiver.arrivals(), 1, "delivered once");
    // Delivered, it may be resent.
    let r = h
        .admin_post(&format!("/admin/events/{id}/resend"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    h.shutdown().await;
}

/// A shop that never answers: each delivery is given up at `webhooks.timeout` (500 ms here)
/// and tried again on the schedule. The second attempt comes well before the 5 s default
/// timeout could let it (`payroute::defaults::DEFAULT_WEBHOOK_TIMEOUT`).
#[tokio::test]
async fn a_delivery_the_shop_never_answers_is_given_up_at_webhooks_timeout() {
    let h = Harness::start_with(
        false,
        &format!(
            "{}webhooks: {{ timeout: 500ms, schedule: [100ms, 100ms, 100ms, 100ms, 100ms, 100ms] }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    h.faults(json!({"drop_notifications": true})).await;
    // Answers after ten minutes: never, within the test.
    h.receiver.answer_after(600_000);
    paid(&h, "wt-1").await;
    wait_until("the first attempt", || async { h.receiver.arrivals() >= 1 }).await;
    let first = std::time::Instant::now();
    wait_until("a second attempt", || async { h.receiver.arrivals() >= 2 }).await;
    let between = first.elapsed();
    assert!(
        between < Duration::from_secs(4),
        "the first attempt was given up only after {between:?}"
    );
    // Given up, not answered: nothing counts as delivered.
    assert!(h.receiver.accepted().is_empty());
    let ev = events(&h, "").await;
    assert!(ev.iter().all(|e| e["status"] != "delivered"), "{ev:?}");
    h.shutdown().await;
}
