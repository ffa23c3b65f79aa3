//! End to end on either store: the state-touching flows (create, replay, pay, refund, shop
//! events, restart) run against SQLite and against PostgreSQL; and, on PostgreSQL, two
//! proxy instances on one database behave as one.
//!
//! PostgreSQL unreachable: see the store suite, `store/mod.rs` (fail with `PAYROUTE_REQUIRE_PG=1`,
//! else a loud SKIPPED and a pass).

use crate::support;

use http::Method;
use serde_json::{json, Value};
use support::{payment, Harness, PgOptions, SHOP_KEY};

/// Create, replay, a different body, pay, refund (and its replay and guard), the shop's
/// events, and a restart that keeps it all.
async fn create_replay_refund(mut h: Harness) {
    let body = payment("m_1001", "ss-1", "wechat_native", 1000, json!({}));
    let first = h.create(&body).await;
    first.expect_created_on("m1001_wechat");
    // The binding and the answer: two writes, each timed to its commit.
    let waited = h.metric("payroute_store_write_seconds_count", &[]).await;
    assert!(waited.unwrap_or(0.0) >= 2.0, "{waited:?}");
    let again = h.create(&body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["payment_id"], first.body["payment_id"]);
    h.create(&payment("m_1001", "ss-1", "wechat_native", 1001, json!({})))
        .await
        .expect_error(409, "idempotency_mismatch");

    assert_eq!(h.pay("ss-1").await.status, 200);
    h.receiver.event("payment.succeeded", "ss-1").await;
    let paid = h.get_payment("m_1001", "ss-1", true).await;
    assert_eq!(paid.body["status"], "succeeded", "{}", paid.text);

    let refund = json!({"merchant_id": "m_1001", "out_trade_no": "ss-1", "out_refund_no": "ss-1-r", "amount": 400});
    let r = h.refund(&refund).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        r.text
    );
    assert_eq!(r.body["channel"], "m1001_wechat");
    let replay = h.refund(&refund).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.body["refund_id"], r.body["refund_id"]);
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "ss-1", "out_refund_no": "ss-1-r2", "amount": 601}))
        .await
        .expect_error(409, "invalid_state");
    h.receiver.event("refund.succeeded", "ss-1").await;
    let orders = h.sandbox_orders("ss-1").await;
    assert_eq!(orders.len(), 1);
    assert_eq!(
        orders[0]["create_calls"], 1,
        "the replay never reached the channel"
    );
    assert_eq!(orders[0]["refunds"].as_array().map(Vec::len), Some(1));

    // A restart reads it all back from the store.
    h.restart().await;
    let after = h.get_payment("m_1001", "ss-1", false).await;
    assert_eq!(after.body["status"], "succeeded");
    assert_eq!(after.body["refunded_amount"], 400);
    assert_eq!(after.body["payment_id"], first.body["payment_id"]);
    let ledger = h.admin_get("/admin/payments?merchant_id=m_1001").await;
    assert_eq!(ledger.status, 200, "{}", ledger.text);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_replay_refund_on_sqlite() {
    create_replay_refund(Harness::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_replay_refund_on_postgres() {
    if let Some(h) = Harness::start_on_postgres().await {
        create_replay_refund(h).await;
    }
}

/// `POST /v1/payments` at another instance's API.
async fn create_at(h: &Harness, api: &str, body: &Value) -> support::Reply {
    create_at_try(h, api, body)
        .await
        .unwrap_or_else(|e| panic!("no answer from {api}: {e}"))
}

/// [`create_at`], an instance that does not answer (killed) being an `Err`.
async fn create_at_try(h: &Harness, api: &str, body: &Value) -> Result<support::Reply, String> {
    let auth = format!("Bearer {SHOP_KEY}");
    h.try_send(
        Method::POST,
        &format!("{api}/v1/payments"),
        &[("authorization", &auth)],
        &body.to_string(),
    )
    .await
}

/// Waits until the store shows `nos`' `payment.succeeded` events delivered, then asserts
/// that A's and B's outboxes counted between them exactly one delivery per delivered event of
/// `test-shop` (a second delivery of any, by either instance, is counted on top), and that
/// the shop heard each of `nos` once. The store marks an event delivered after the instance
/// that sent it counted the delivery, and no outbox round takes a delivered event again.
async fn delivered_once_each(h: &Harness, b: &payroute::app::Running, nos: &[&str]) {
    let series = r#"payroute_webhook_deliveries_total{result="delivered",shop="test-shop"}"#;
    let b_metrics = format!("http://{}/metrics", b.admin_addr);
    let delivered_events = || async {
        let events = h.admin_get("/admin/events?limit=1000").await.body["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        events
            .into_iter()
            .filter(|e| e["shop_id"] == "test-shop" && e["status"] == "delivered")
            .collect::<Vec<Value>>()
    };
    support::wait_until("the events delivered in the store", || async {
        let delivered = delivered_events().await;
        nos.iter().all(|no| {
            delivered.iter().any(|e| {
                e["type"] == "payment.succeeded" && e["body"]["data"]["out_trade_no"] == *no
            })
        })
    })
    .await;
    let delivered = delivered_events().await.len() as f64;
    let on_b = h.send(Method::GET, &b_metrics, &[], "").await.text;
    let counted = h
        .metric(
            "payroute_webhook_deliveries_total",
            &[("result", "delivered"), ("shop", "test-shop")],
        )
        .await
        .unwrap_or(0.0)
        + support::metric(&on_b, series).unwrap_or(0.0);
    assert_eq!(
        counted, delivered,
        "deliveries counted by A and B vs events delivered"
    );
    for no in nos {
        let told = h.receiver.told("payment.succeeded", no);
        assert_eq!(told, 1, "{no}: one event, delivered once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_act_as_one() {
    let Some(h) = Harness::start_on_postgres().await else {
        return;
    };
    let (b_api, b) = h.another_instance().await;
    let apis = [h.api.clone(), b_api.clone()];

    // Identical creates spread over both instances: one channel call, one binding.
    let body = payment("m_1001", "two-1", "wechat_native", 1999, json!({}));
    let h = std::sync::Arc::new(h);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (h, api, body) = (h.clone(), apis[i % 2].clone(), body.clone());
            tokio::spawn(async move { create_at(&h, &api, &body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 200 || r.status == 201 {
            ids.insert(
                r.body["payment_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        } else {
            r.expect_error(409, "request_in_progress");
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(ids.len(), 1, "every answer names the one payment");
    let orders = h.sandbox_orders("two-1").await;
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(
        orders[0]["create_calls"], 1,
        "exactly one create reached the channel"
    );

    // Paid; a refund sent to B goes to the account A bound, once.
    assert_eq!(h.pay("two-1").await.status, 200);
    let paid = h.get_payment("m_1001", "two-1", true).await;
    assert_eq!(paid.body["status"], "succeeded", "{}", paid.text);
    let auth = format!("Bearer {SHOP_KEY}");
    let refund = h
        .send(
            Method::POST,
            &format!("{b_api}/v1/refunds"),
            &[("authorization", &auth)],
            &json!({"merchant_id": "m_1001", "out_trade_no": "two-1", "out_refund_no": "two-1-r", "amount": 1999}).to_string(),
        )
        .await;
    assert_eq!(refund.status, 201, "{}", refund.text);
    assert_eq!(refund.body["channel"], "m1001_wechat");
    // A sees B's refund: nothing is left to refund.
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "two-1", "out_refund_no": "two-1-r2", "amount": 1}))
        .await
        .expect_error(409, "invalid_state");
    let orders = h.sandbox_orders("two-1").await;
    assert_eq!(orders[0]["mchid"], "1900000109", "the bound account");
    assert_eq!(orders[0]["refunds"].as_array().map(Vec::len), Some(1));

    // The shop hears of the payment once, though two outboxes poll one database.
    h.receiver.event("refund.succeeded", "two-1").await;
    delivered_once_each(&h, &b, &["two-1"]).await;

    b.shutdown().await;
    Harness::shutdown_shared(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_for_an_order_created_on_a_that_arrives_at_b_reaches_the_shop_once() {
    // The providers' notify_url names instance B, as when the load balancer hands the
    // provider's call to the instance that did not create the order.
    let b_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    let Some(h) = Harness::start_on_postgres_opts(PgOptions {
        public_base_url: Some(format!("http://{b_addr}")),
        ..PgOptions::default()
    })
    .await
    else {
        return;
    };
    let (_b_api, b) = h.another_instance_on(b_listener).await;
    // Providers may send a notification more than once: both copies arrive at B.
    h.faults(json!({"duplicate_notifications": true})).await;
    let created = h
        .create(&payment("m_1001", "nb-1", "wechat_native", 1500, json!({})))
        .await;
    created.expect_created_on("m1001_wechat");
    assert_eq!(h.pay("nb-1").await.status, 200);

    let event = h.receiver.event("payment.succeeded", "nb-1").await;
    assert_eq!(event["data"]["payment_id"], created.body["payment_id"]);
    support::wait_until("both copies answered by B", || async {
        h.sandbox_notifications()
            .await
            .iter()
            .filter(|n| n["out_trade_no"] == "nb-1" && n["answered_ok"] == true)
            .count()
            == 2
    })
    .await;
    for n in h.sandbox_notifications().await {
        let url = n["url"].as_str().unwrap_or_default();
        assert!(url.starts_with(&format!("http://{b_addr}/notify/")), "{n}");
    }
    // A, which created the order, sees it paid from the shared store.
    let on_a = h.get_payment("m_1001", "nb-1", false).await;
    assert_eq!(on_a.body["status"], "succeeded", "{}", on_a.text);
    let a_metrics = h.metrics().await;
    let b_metrics = h
        .send(
            Method::GET,
            &format!("http://{}/metrics", b.admin_addr),
            &[],
            "",
        )
        .await
        .text;
    let verified =
        "payroute_notifications_received_total{channel=\"m1001_wechat\",result=\"verified\"}";
    assert!(
        support::metric(&b_metrics, verified).unwrap_or(0.0) >= 1.0,
        "{b_metrics}"
    );
    assert_eq!(
        support::metric(&a_metrics, verified),
        Some(0.0),
        "A took none"
    );

    // Two copies, two outboxes polling one database: one event, told once.
    delivered_once_each(&h, &b, &["nb-1"]).await;
    let told: Vec<Value> = h
        .receiver
        .accepted()
        .into_iter()
        .filter(|e| e["data"]["out_trade_no"] == "nb-1")
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    b.shutdown().await;
    h.shutdown().await;
}

/// One shop's view of one create in the stream of the SIGKILL test.
struct Order {
    no: String,
    /// Every payment_id answered for it (a 200 or 201), across retries.
    ids: Vec<String>,
    /// The first attempt was answered (not cut off by the kill).
    first_answered: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_one_instance_mid_stream_loses_nothing_and_the_other_delivers_its_events() {
    // Claims last 12s; a delivery gives up after 5s (the lease must outlast it and the write
    // of its outcome: config validation holds it to that); failed deliveries retry after 300ms.
    let rules = format!(
        "{}webhooks: {{ timeout: 5s, schedule: [300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms] }}\n",
        support::RULES
    );
    let Some(mut h) = Harness::start_on_postgres_opts(PgOptions {
        rules: &rules,
        store_extra: ", lease: 12s",
        ..PgOptions::default()
    })
    .await
    else {
        return;
    };
    // Instance A is the real binary, on the providers' notify_url; B comes later.
    let mut a = support::Binary::take_over(&mut h).await;

    // The shop hangs: A takes the events of four paid orders and holds them, delivering.
    h.receiver.answer_with(503);
    h.receiver.answer_after(60_000);
    let paid = ["kill-paid-1", "kill-paid-2", "kill-paid-3", "kill-paid-4"];
    for no in paid {
        h.create(&payment("m_1001", no, "wechat_native", 800, json!({})))
            .await
            .expect_created_on("m1001_wechat");
        assert_eq!(h.pay(no).await.status, 200);
    }
    support::wait_until("A to be delivering all four", || async {
        h.receiver.arrivals() >= paid.len()
    })
    .await;
    let claimed_at = std::time::Instant::now();
    let (b_api, b) = h.another_instance().await;

    // Four shops stream creates over both instances; each retries at B what A never answered.
    let h = std::sync::Arc::new(h);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cut_off = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let shops: Vec<_> = (0..4)
        .map(|shop| {
            let (h, b_api) = (h.clone(), b_api.clone());
            let (acked, cut_off) = (acked.clone(), cut_off.clone());
            tokio::spawn(async move {
                let mut orders = Vec::new();
                for i in 0..15 {
                    let no = format!("kill-{shop}-{i}");
                    let body = payment("m_1001", &no, "wechat_native", 100 + i, json!({}));
                    let mut api = if (shop + i as usize) % 2 == 0 {
                        h.api.clone()
                    } else {
                        b_api.clone()
                    };
                    let mut order = Order {
                        no: no.clone(),
                        ids: Vec::new(),
                        first_answered: true,
                    };
                    loop {
                        match create_at_try(&h, &api, &body).await {
                            Ok(r) if r.status == 200 || r.status == 201 => {
                                order.ids.push(
                                    r.body["payment_id"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_string(),
                                );
                                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                break;
                            }
                            // A twin still holds the order (A died holding its claim): later.
                            Ok(r) if r.status == 409 || r.status == 503 => {
                                assert_eq!(r.body["error"]["retryable"], true, "{}", r.text);
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            }
                            Ok(r) => panic!("{no}: {} {}", r.status, r.text),
                            // A is gone: the shop retries the same order at B.
                            Err(_) => {
                                if order.ids.is_empty() {
                                    order.first_answered = false;
                                }
                                cut_off.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                api = b_api.clone();
                            }
                        }
                    }
                    orders.push(order);
                }
                orders
            })
        })
        .collect();

    // Mid-stream, while A still holds the four events (its deliveries wait up to 5s).
    support::wait_until("some creates acknowledged", || async {
        acked.load(std::sync::atomic::Ordering::SeqCst) >= 16
            || claimed_at.elapsed() > std::time::Duration::from_secs(3)
    })
    .await;
    assert_eq!(
        h.receiver.arrivals(),
        paid.len(),
        "nobody else took A's events yet"
    );
    a.signal("KILL");
    assert!(!a.exited().await, "killed, not exited");
    h.receiver.answer_after(0);
    h.receiver.answer_with(200);

    let mut orders = Vec::new();
    for s in shops {
        orders.extend(support::within("the shops' streams", s).await.unwrap());
    }
    assert!(
        cut_off.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the kill cut some creates off"
    );
    for o in &orders {
        // Every order ends with one payment, named by every answer and found at B.
        assert!(!o.ids.is_empty(), "{}: never acknowledged", o.no);
        assert!(
            o.ids.iter().all(|id| *id == o.ids[0]),
            "{}: {:?}",
            o.no,
            o.ids
        );
        let r = h
            .send(
                Method::GET,
                &format!("{b_api}/v1/payments/m_1001/{}", o.no),
                &[("authorization", &format!("Bearer {SHOP_KEY}"))],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{}: {}", o.no, r.text);
        assert_eq!(r.body["payment_id"], o.ids[0].as_str(), "{}", o.no);
        let at_channel = h.sandbox_orders(&o.no).await;
        assert_eq!(at_channel.len(), 1, "{}: one order at the channel", o.no);
        if o.first_answered {
            assert_eq!(at_channel[0]["create_calls"], 1, "{}: created once", o.no);
        }
    }

    // A's four events: B delivers each once A's claims ran out (12s from when A took them,
    // just before `claimed_at`), and not before: each arrived at the shop (accepted) no
    // earlier than 11s after `claimed_at`.
    for no in paid {
        h.receiver.event("payment.succeeded", no).await;
    }
    let lease_end = claimed_at + std::time::Duration::from_millis(11_000);
    for r in h.receiver.received() {
        if r.status == 200 && r.body["type"] == "payment.succeeded" {
            let no = r.body["data"]["out_trade_no"].as_str().unwrap_or_default();
            assert!(
                !paid.contains(&no) || r.arrived >= lease_end,
                "{no} delivered {:?} before A's claim ran out",
                lease_end.saturating_duration_since(r.arrived)
            );
        }
    }
    // Once the store records them delivered nobody sends them again: then each was told once.
    let b_events = format!("http://{}/admin/events?limit=1000", b.admin_addr);
    let admin = format!("Bearer {}", support::ADMIN_TOKEN);
    support::wait_until("B to record A's four events delivered", || async {
        let r = h
            .send(Method::GET, &b_events, &[("authorization", &admin)], "")
            .await;
        let events = r.body["events"].as_array().cloned().unwrap_or_default();
        paid.iter().all(|no| {
            events.iter().any(|e| {
                e["type"] == "payment.succeeded"
                    && e["body"]["data"]["out_trade_no"] == *no
                    && e["status"] == "delivered"
            })
        })
    })
    .await;
    for no in paid {
        let told = h.receiver.told("payment.succeeded", no);
        assert_eq!(told, 1, "{no}");
    }
    b.shutdown().await;
    Harness::shutdown_shared(h).await;
}

/// Both instances' reconcilers race for the due checks; each order is resolved once, by one
/// of them. Orders are added one at a time until each instance has resolved at least one (a
/// wait with the test's deadline: each order goes to whichever instance looks first), so
/// the test shows B's reconciler ran, not only A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_reconcilers_on_one_database_resolve_an_order_once() {
    // Checks every 200ms: both instances' workers look for due orders all the time.
    let rules = format!(
        "{}reconcile: {{ tiers: [ {{ until: 10m, every: 200ms }}, {{ until: 24h, every: 1h }} ] }}\n",
        support::RULES
    );
    let Some(h) = Harness::start_on_postgres_with(&rules).await else {
        return;
    };
    let (_b_api, b) = h.another_instance().await;
    let b_metrics = format!("http://{}/metrics", b.admin_addr);
    let resolved = |text: &str| {
        support::metric(
            text,
            &support::series(
                "payroute_reconcile_actions_total",
                &[("action", "resolved")],
            ),
        )
        .unwrap_or(0.0)
    };
    h.faults(json!({"drop_notifications": true})).await;
    // No notification: the workers find the payments paid, and the shop is told once each.
    let mut nos: Vec<String> = Vec::new();
    support::within("each instance's reconciler to resolve an order", async {
        loop {
            let no = format!("rc2-{}", nos.len() + 1);
            h.create(&payment("m_1001", &no, "wechat_native", 300, json!({})))
                .await
                .expect_created_on("m1001_wechat");
            assert_eq!(h.pay(&no).await.status, 200);
            h.receiver.event("payment.succeeded", &no).await;
            nos.push(no);
            let on_a = resolved(&h.metrics().await);
            let on_b = resolved(&h.send(Method::GET, &b_metrics, &[], "").await.text);
            if on_a >= 1.0 && on_b >= 1.0 {
                break;
            }
        }
    })
    .await;
    let nos: Vec<&str> = nos.iter().map(String::as_str).collect();
    delivered_once_each(&h, &b, &nos).await;
    // Each order resolved once, by one instance or the other.
    let on_a = resolved(&h.metrics().await);
    let on_b = resolved(&h.send(Method::GET, &b_metrics, &[], "").await.text);
    assert_eq!(on_a + on_b, nos.len() as f64, "A {on_a}, B {on_b}: {nos:?}");
    for no in &nos {
        assert_eq!(
            h.get_payment("m_1001", no, false).await.body["status"],
            "succeeded"
        );
    }
    b.shutdown().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_away_answers_503_sends_nothing_and_recovers() {
    let forwarder = support::PgForwarder::start().await;
    let url = forwarder.url(&support::pg_url());
    let Some(h) = Harness::start_on_postgres_at(support::RULES, Some(url)).await else {
        return;
    };
    h.create(&payment(
        "m_1001",
        "away-1",
        "wechat_native",
        100,
        json!({}),
    ))
    .await
    .expect_created_on("m1001_wechat");

    // The database goes away (as in a restart): clear 503s, nothing sent to the channel.
    forwarder.cut();
    let started = std::time::Instant::now();
    let r = h
        .create(&payment(
            "m_1001",
            "away-2",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(503, "store_unavailable");
    assert_eq!(r.body["error"]["retryable"], true, "{}", r.text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(
        h.sandbox_orders("away-2").await.is_empty(),
        "no create reached the channel"
    );
    let ready = h
        .send(Method::GET, &format!("{}/readyz", h.admin), &[], "")
        .await;
    assert_eq!(ready.status, 503, "{}", ready.text);

    // Back: the same request now goes through, and what was written before is there.
    forwarder.restore().await;
    support::wait_until("the store to be ready again", || async {
        h.ready().await == 200
    })
    .await;
    h.create(&payment(
        "m_1001",
        "away-2",
        "wechat_native",
        100,
        json!({}),
    ))
    .await
    .expect_created_on("m1001_wechat");
    assert_eq!(
        h.get_payment("m_1001", "away-1", false).await.body["status"],
        "pending"
    );
    h.shutdown().await;
    forwarder.cut();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_migrate_moves_a_sqlite_store_and_the_proxy_serves_it_unchanged() {
    let Some(pg) = support::PgSchema::create("payroute_migrate_").await else {
        return;
    };
    // Retries every 300ms, for long enough that an event stays pending across the move.
    let rules = format!(
        "{}webhooks: {{ schedule: [300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms, 300ms] }}\n",
        support::RULES
    );
    let mut h = Harness::start_with(false, &rules, "").await;
    let paid = h.paid("m_1001", "mig-1", "wechat_native", 1000).await;
    let r = h
        .refund(&json!({"merchant_id": "m_1001", "out_trade_no": "mig-1", "out_refund_no": "mig-1-r", "amount": 300}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    h.create(&payment("m_2002", "mig-2", "wechat_native", 700, json!({})))
        .await;
    // The shop is down: the events stay pending in the outbox.
    h.receiver.answer_with(500);
    h.pay("mig-2").await;
    h.get_payment("m_2002", "mig-2", true).await;
    support::wait_until("a delivery to fail", || async {
        h.receiver.received().iter().any(|r| r.status == 500)
    })
    .await;
    let before: Vec<Value> = answers_of(&h).await;
    // Ops drained a channel: the move must keep it out of routing.
    let d = h
        .admin_post(
            "/admin/channels/m2002_wechat/drain",
            &json!({"reason": "moving stores", "by": "ops"}),
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.text);
    if let Some(r) = h.running.take() {
        support::within("the proxy to stop", r.shutdown()).await;
    }

    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_payroute"))
            .args(["store", "migrate", "--config"])
            .arg(&h.config_path)
            .arg("--from")
            .arg(format!("sqlite:{}", h.db_path().display()))
            .args(["--to", &pg.url, "--schema", &pg.name])
            .output()
            .unwrap()
    };
    let first = migrate();
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        out.contains("2 payments (2 new), 1 refunds (1 new)")
            && out.contains("1 drained channels (1 new)"),
        "{out}"
    );
    let again = migrate();
    let out = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success());
    assert!(
        out.contains("2 payments (0 new), 1 refunds (0 new)") && out.contains("(0 new)\n"),
        "run twice, copied once: {out}"
    );

    // The proxy on PostgreSQL now: the same answers, and the pending events go out.
    let yaml = std::fs::read_to_string(&h.config_path).unwrap().replace(
        &format!("store: {{ kind: sqlite, path: {} }}", h.db_path().display()),
        &format!(
            "store: {{ kind: postgres, url: \"{}\", schema: {} }}",
            pg.url, pg.name
        ),
    );
    assert!(yaml.contains("kind: postgres"));
    support::write_atomically(&h.config_path, &yaml);
    h.receiver.answer_with(200);
    h.restart().await;
    assert_eq!(answers_of(&h).await, before, "served unchanged");
    assert_eq!(paid["payment_id"], before[0]["payment_id"]);
    let channels = h.admin_get("/admin/channels").await;
    let m2002 = channels.body["channels"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "m2002_wechat"))
        .expect("m2002_wechat");
    assert_eq!(
        (
            m2002["drained"]["reason"].as_str(),
            m2002["drained"]["by"].as_str()
        ),
        (Some("moving stores"), Some("ops")),
        "the drain moved with the store: {}",
        channels.text
    );
    let refund = h.get_refund("m_1001", "mig-1-r", false).await;
    for k in [
        "refund_id",
        "status",
        "amount",
        "channel",
        "provider_refund_no",
    ] {
        assert_eq!(refund.body[k], r.body[k], "the refund's {k} as it was");
    }
    h.receiver.event("payment.succeeded", "mig-2").await;
    h.shutdown().await;
}

/// The two payments of the migration test as the API answers them.
async fn answers_of(h: &Harness) -> Vec<Value> {
    let mut out = Vec::new();
    for (m, no) in [("m_1001", "mig-1"), ("m_2002", "mig-2")] {
        let r = h.get_payment(m, no, false).await;
        assert_eq!(r.status, 200, "{}", r.text);
        out.push(r.body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_stream_answers_clear_503s_duplicates_nothing_and_recovers() {
    // A server of the test's own: stopping the shared one would fail the other tests.
    let Some(pg) = support::PrivatePg::start() else {
        return;
    };
    let Some(h) = Harness::start_on_postgres_opts(PgOptions {
        url: Some(pg.url()),
        ..PgOptions::default()
    })
    .await
    else {
        return;
    };
    let h = std::sync::Arc::new(h);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Four shops stream creates; a 503 or 409 is retried with the same body, as the API says.
    let shops: Vec<_> = (0..4)
        .map(|shop| {
            let h = h.clone();
            let (acked, refused) = (acked.clone(), refused.clone());
            tokio::spawn(async move {
                let mut orders = Vec::new();
                for i in 0..20u64 {
                    let no = format!("pgr-{shop}-{i}");
                    let body = payment("m_1001", &no, "wechat_native", 100 + i, json!({}));
                    let mut ids = Vec::new();
                    loop {
                        let r = h.create(&body).await;
                        match r.status {
                            200 | 201 => {
                                ids.push(
                                    r.body["payment_id"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_string(),
                                );
                                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                break;
                            }
                            503 | 409 | 504 => {
                                assert_eq!(r.body["error"]["retryable"], true, "{}", r.text);
                                if r.status == 503 {
                                    let code = r.body["error"]["code"].as_str().unwrap_or_default();
                                    assert!(
                                        code == "store_unavailable" || code == "overloaded",
                                        "{no}: {}",
                                        r.text
                                    );
                                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                }
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                            _ => panic!("{no}: {} {}", r.status, r.text),
                        }
                    }
                    orders.push((no, ids));
                }
                orders
            })
        })
        .collect();

    support::wait_until("creates to flow", || async {
        acked.load(std::sync::atomic::Ordering::SeqCst) >= 10
    })
    .await;
    // The restart, mid-stream: down until creates have been refused and /readyz says so.
    let stop = std::time::Instant::now();
    pg.stop_server();
    support::wait_until("creates to be refused", || async {
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
    support::wait_until("/readyz to say the store is away", || async {
        h.ready().await == 503
    })
    .await;
    let acked_while_down = acked.load(std::sync::atomic::Ordering::SeqCst);
    pg.start_server();
    eprintln!("PostgreSQL was down for {:?}", stop.elapsed());
    support::wait_until("the store to be ready again", || async {
        h.ready().await == 200
    })
    .await;

    let mut orders = Vec::new();
    for s in shops {
        orders.extend(support::within("the shops' streams", s).await.unwrap());
    }
    assert!(
        acked.load(std::sync::atomic::Ordering::SeqCst) > acked_while_down,
        "creates went through again after the restart"
    );
    for (no, ids) in &orders {
        // One payment per order, every answer naming it, one order at the channel.
        assert!(ids.iter().all(|id| *id == ids[0]), "{no}: {ids:?}");
        let r = h.get_payment("m_1001", no, false).await;
        assert_eq!(r.body["payment_id"], ids[0].as_str(), "{no}: {}", r.text);
        let at_channel = h.sandbox_orders(no).await;
        assert_eq!(at_channel.len(), 1, "{no}: {at_channel:?}");
    }
    Harness::shutdown_shared(h).await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_whose_timeouts_outgrow_the_running_lease_is_refused() {
    let Some(h) = Harness::start_on_postgres_opts(PgOptions {
        store_extra: ", lease: 12s",
        ..PgOptions::default()
    })
    .await
    else {
        return;
    };
    let before = h.admin_get("/admin/config").await.body["version"].clone();
    // Valid as a file (a 20s lease for 10s calls), but the running store keeps its 12s lease
    // until a restart: calls of 10s would outlive their claims.
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("timeout: 2s", "timeout: 10s")
        .replace("lease: 12s", "lease: 20s");
    support::write_atomically(&h.config_path, &text);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_ne!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("running store.lease"), "{}", r.text);
    assert_eq!(h.admin_get("/admin/config").await.body["version"], before);
    h.shutdown().await;
}

/// Issue 16 item 6, two instances on one database: A (the real binary) takes an event and
/// stalls (SIGSTOP) past its lease mid-delivery; B takes the event over and records its own
/// attempt (the shop failed it: a retry, far off). When A wakes and writes its outcome under
/// its stale claim, nothing changes: B's claim, attempt and schedule stand, and A counts the
/// outcome as superseded. (Before: A's write landed over B's — attempts 2, or `delivered` for
/// an event whose last attempt failed — and a stale retry would have cleared B's lease.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_stalled_past_its_lease_writes_nothing_over_the_one_that_took_over() {
    let rules = format!(
        "{}webhooks: {{ timeout: 5s, schedule: [10m] }}\n",
        support::RULES
    );
    let Some(mut h) = Harness::start_on_postgres_opts(PgOptions {
        rules: &rules,
        store_extra: ", lease: 12s",
        ..PgOptions::default()
    })
    .await
    else {
        return;
    };
    let a = support::Binary::take_over(&mut h).await;
    // A's delivery is held by the shop, then accepted.
    h.receiver.answer_after(1_000);
    let no = "fence-1";
    h.create(&payment("m_1001", no, "wechat_native", 800, json!({})))
        .await
        .expect_created_on("m1001_wechat");
    assert_eq!(h.pay(no).await.status, 200);
    support::wait_until("A is delivering", || async { h.receiver.arrivals() == 1 }).await;
    a.signal("STOP");
    // B takes the event over once A's lease runs out; the shop fails B's attempt.
    h.receiver.answer_after(0);
    h.receiver.answer_with(500);
    let (_b_api, b) = h.another_instance().await;
    let b_admin = format!("http://{}", b.admin_addr);
    let event = || async {
        let auth = format!("Bearer {}", support::ADMIN_TOKEN);
        let r = h
            .send(
                Method::GET,
                &format!("{b_admin}/admin/events?limit=10"),
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let events = r.body["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "{}", r.text);
        events[0].clone()
    };
    support::wait_until("B records its failed attempt", || async {
        event().await["attempts"] == 1
    })
    .await;
    assert_eq!(h.receiver.arrivals(), 2, "A's attempt and B's");

    a.signal("CONT");
    // A's write lands (before the fix: the event changes) or is superseded (counted by A).
    support::wait_until("A writes its outcome", || async {
        h.metric("payroute_outbox_held_total", &[("reason", "superseded")])
            .await
            == Some(1.0)
            || event().await["attempts"] != 1
    })
    .await;
    let e = event().await;
    assert_eq!(e["status"], "pending", "{e}");
    assert_eq!(e["attempts"], 1, "only B's attempt is recorded: {e}");
    assert_eq!(e["last_error"], "HTTP 500", "{e}");
    assert_eq!(h.receiver.arrivals(), 2, "nobody sent it again");
    b.shutdown().await;
    drop(a);
    h.shutdown().await;
}

/// A login role with only what a running payroute needs on one schema (issue 16 item 7a):
/// USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on its tables, USAGE/SELECT on its
/// sequences — no CREATE on the database or the schema. Dropped (its grants revoked first)
/// when this is dropped, also when the test panics.
struct RuntimeRole {
    name: String,
    /// The test database's url as the owner (the trust-auth superuser).
    owner_url: String,
    /// The same database as this role.
    url: String,
}

impl RuntimeRole {
    async fn grant(owner_url: &str, schema: &str) -> RuntimeRole {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("payroute_rt_{}_{nanos}", std::process::id());
        let (scheme, rest) = owner_url.split_once("://").expect("a postgres:// url");
        let host = rest.split_once('@').map_or(rest, |(_, host)| host);
        let role = RuntimeRole {
            url: format!("{scheme}://{name}@{host}"),
            owner_url: owner_url.to_string(),
            name,
        };
        let owner = owner(owner_url).await;
        owner
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN;
                 GRANT USAGE ON SCHEMA \"{schema}\" TO {role};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO {role};
                 GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO {role};",
                role = role.name
            ))
            .await
            .unwrap();
        // Least privilege for real: the role can create nothing, here or in the database.
        let row = owner
            .query_one(
                "SELECT has_database_privilege($1, current_database(), 'CREATE'),
                        has_schema_privilege($1, $2, 'CREATE')",
                &[&role.name, &schema],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, bool>(0), row.get::<_, bool>(1)),
            (false, false),
            "the runtime role may create"
        );
        role
    }
}

/// A session of the owner on the test database.
async fn owner(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

impl Drop for RuntimeRole {
    fn drop(&mut self) {
        let name = &self.name;
        support::execute_detached(
            &self.owner_url,
            &format!("DROP OWNED BY {name}; DROP ROLE {name};"),
        );
    }
}

/// The owner migrates the schema (here: the harness's start, as `payroute store migrate`
/// would); a runtime role with no CREATE anywhere then starts payroute on it and serves
/// payments, refunds and shop events (issue 16 item 7a).
///
/// Before: the start ran `CREATE SCHEMA IF NOT EXISTS`, which needs CREATE on the database
/// even when the schema exists, and `CREATE TABLE IF NOT EXISTS schema_migrations`, which
/// needs CREATE on the schema: the runtime role could not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runtime_role_without_create_starts_on_a_schema_the_owner_migrated() {
    let Some(mut h) = Harness::start_on_postgres().await else {
        return;
    };
    let (owner_url, schema) = {
        let pg = h.pg.as_ref().unwrap();
        (pg.url.clone(), pg.name.clone())
    };
    let role = RuntimeRole::grant(&owner_url, &schema).await;
    payroute::store::postgres::PostgresStore::open(
        &payroute::secret::Secret::new(role.url.clone()),
        1,
        &schema,
    )
    .await
    .unwrap_or_else(|e| panic!("the runtime role cannot open the migrated schema: {e}"));
    let yaml = std::fs::read_to_string(&h.config_path).unwrap();
    let owned = format!("url: \"{owner_url}\"");
    assert!(yaml.contains(&owned), "{yaml}");
    support::write_atomically(
        &h.config_path,
        &yaml.replace(&owned, &format!("url: \"{}\"", role.url)),
    );
    h.restart().await;
    assert_eq!(h.ready().await, 200, "/readyz as the runtime role");
    create_replay_refund(h).await;
    drop(role);
}

/// The runtime role meeting a schema that still needs a migration (a payroute newer than the
/// schema) cannot apply it, and the error tells ops who can: the owner, through
/// `payroute store migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runtime_role_meeting_an_unmigrated_schema_is_told_who_migrates() {
    let Some(pg) = support::PgSchema::create("payroute_lp_").await else {
        return;
    };
    owner(&pg.url)
        .await
        .batch_execute(&format!("CREATE SCHEMA \"{}\"", pg.name))
        .await
        .unwrap();
    let role = RuntimeRole::grant(&pg.url, &pg.name).await;
    let opened = payroute::store::postgres::PostgresStore::open(
        &payroute::secret::Secret::new(role.url.clone()),
        1,
        &pg.name,
    )
    .await;
    let error = opened
        .err()
        .expect("the runtime role migrated a schema")
        .to_string();
    assert!(error.contains("permission denied"), "{error}");
    assert!(error.contains("payroute store migrate"), "{error}");
    drop(role);
    drop(pg);
}
