//! Reconciliation through real sockets: with no notification at all, every paid payment
//! still becomes `succeeded` and the shop is told; a create left `unknown` is resolved; an
//! expired order is closed — unless it was paid, in which case it is `succeeded`.

use crate::support;

use std::time::{Duration, Instant};

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

/// Issue 16 item 2: a check whose next time the store does not take is not redone every
/// round. A trigger makes the store refuse this one order's schedule — a write that fails
/// while the store is otherwise healthy, so the worker does not pause — and with checks every
/// 2 s the order is still asked about at that pace, not at every 500 ms round (before: the
/// three checks after the first came within 1.5 s).
#[tokio::test]
async fn a_check_the_store_did_not_take_is_not_redone_every_round() {
    const EVERY_MS: u64 = 2_000;
    let tiers = format!("reconcile: {{ tiers: [ {{ until: 10m, every: {EVERY_MS}ms }} ] }}\n");
    let h = Harness::start_with(false, &format!("{}{tiers}", support::RULES), "").await;
    let r = h
        .create(&payment(
            "m_1001",
            "rc-unstored",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["payment_id"].as_str().unwrap().to_string();
    rusqlite::Connection::open(h.db_path())
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER refuse_schedule BEFORE UPDATE OF next_check_at ON payments
             WHEN NEW.payment_id = '{id}'
             BEGIN SELECT RAISE(ABORT, 'test: this schedule is not taken'); END;"
        ))
        .unwrap();
    let queries = || async {
        h.metric("payroute_reconcile_actions_total", &[("action", "query")])
            .await
            .unwrap_or(0.0)
    };
    wait_until("the first check", || async { queries().await >= 1.0 }).await;
    let (first, since) = (queries().await, Instant::now());
    wait_until("three more checks", || async {
        queries().await >= first + 3.0
    })
    .await;
    // Three more checks, each at least an interval after the one before: 6 s after the
    // first, less however late the first was seen.
    let took = since.elapsed();
    assert!(
        took >= Duration::from_millis(2 * EVERY_MS),
        "three more checks within {took:?}: the order was asked about every round"
    );
    let m = h.metrics().await;
    assert_eq!(
        support::metric(&m, r#"payroute_worker_paused{worker="reconcile"}"#),
        Some(0.0),
        "the store was healthy: the hold kept the pace, not a pause"
    );
    assert!(
        support::metric(&m, r#"payroute_reconcile_actions_total{action="held"}"#).unwrap() >= 1.0,
        "the rounds that passed the order over are counted"
    );
    h.shutdown().await;
}

/// Where a test reads and writes the proxy's store directly.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl Db {
    fn of(h: &Harness) -> Db {
        match &h.pg {
            Some(pg) => Db::Postgres {
                url: pg.url.clone(),
                schema: pg.name.clone(),
            },
            None => Db::Sqlite(h.db_path()),
        }
    }

    /// The `payments` table as SQL names it on this store.
    fn payments(&self) -> String {
        match self {
            Db::Sqlite(_) => "payments".into(),
            Db::Postgres { schema, .. } => format!("\"{schema}\".payments"),
        }
    }

    async fn execute(&self, sql: &str) {
        match self {
            Db::Sqlite(path) => {
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap();
            }
            Db::Postgres { url, .. } => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
            }
        }
    }

    /// An order's `next_check_at` (`None`: never checked again).
    async fn next_check_at(&self, out_trade_no: &str) -> Option<i64> {
        let sql = format!(
            "SELECT next_check_at FROM {} WHERE out_trade_no = '{out_trade_no}'",
            self.payments()
        );
        match self {
            Db::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(&sql, [], |row| row.get(0))
                .unwrap(),
            Db::Postgres { url, .. } => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client.query_one(&sql, &[]).await.unwrap().get(0)
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Checks every 200 ms in an order's first second, then hourly: past the last tier, checks
/// come an hour apart.
const PAST_THE_TIERS_HOURLY: &str =
    "reconcile: { tiers: [ { until: 1s, every: 200ms }, { until: 1h, every: 1h } ] }\n";

fn channel_is_open(channels: &serde_json::Value, name: &str) -> bool {
    channels["channels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == name && c["circuit"] == "open")
}

/// Issue 16 item 1: a paid order (its notification lost) past the last tier and past its
/// expiry, whose check meets its channel's breaker open, keeps a next check — when the
/// breaker lets a probe through (30 s), not the last tier's hour — and is settled then, the
/// shop told. Before: its next check was none (`next_check_at` NULL, `pending` for good); then
/// an hour later (the last tier's interval).
async fn an_expired_order_meeting_an_open_breaker_is_settled_when_it_reopens(h: Harness) {
    let db = Db::of(&h);
    // Notifications lost, and every query and close answered 500.
    h.faults(json!({
        "drop_notifications": true,
        "fail_next": 1_000,
        "fail_status": 500,
        "fail_code": "INTERNAL",
        "fail_ops": ["query", "close"],
    }))
    .await;
    let r = h
        .create(&payment(
            "m_1001",
            "rc-breaker",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let channel = r.body["channel"].as_str().unwrap().to_string();
    assert_eq!(h.pay("rc-breaker").await.status, 200);
    // Past its expiry and every tier, as time would make it: the worker's next look at it (a
    // close, failing) is an hour later.
    db.execute(&format!(
        "UPDATE {} SET created_at = 1000, expires_at = 2000 WHERE out_trade_no = 'rc-breaker'",
        db.payments()
    ))
    .await;
    // The shop's own refreshes fail too, and open the channel's breaker (5 in a row).
    wait_until("the channel's breaker open", || async {
        h.get_payment("m_1001", "rc-breaker", true).await;
        channel_is_open(&h.admin_get("/admin/channels").await.body, &channel)
    })
    .await;
    // Due now: the worker's check meets the breaker open.
    db.execute(&format!(
        "UPDATE {} SET next_check_at = 0 WHERE out_trade_no = 'rc-breaker'",
        db.payments()
    ))
    .await;
    wait_until("a check that met the breaker open", || async {
        h.metric(
            "payroute_reconcile_actions_total",
            &[("action", "breaker_open")],
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    // That check's schedule, once stored.
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match db.next_check_at("rc-breaker").await {
                Some(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                next => return next,
            }
        }
    })
    .await
    .expect("the worker's check stored no schedule within 5 s")
    .expect("an open order left with no next check");
    let ahead = next - now_ms();
    // The breaker opened for 30 s moments ago.
    assert!(
        (5_000..=31_000).contains(&ahead),
        "next check {ahead} ms ahead, not when the breaker lets a probe through"
    );
    assert_eq!(status(&h, "m_1001", "rc-breaker").await, "pending");
    // The channel recovers; once the breaker lets a probe through, the close finds the
    // order paid.
    h.faults(json!({"drop_notifications": true})).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        while status(&h, "m_1001", "rc-breaker").await != "succeeded" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("settled within 60 s once the channel recovered");
    h.receiver.event("payment.succeeded", "rc-breaker").await;
    h.shutdown().await;
}

#[tokio::test]
async fn an_expired_order_meeting_an_open_breaker_is_settled_when_it_reopens_sqlite() {
    let h = Harness::start_with(
        false,
        &format!("{}{PAST_THE_TIERS_HOURLY}", support::RULES),
        "",
    )
    .await;
    an_expired_order_meeting_an_open_breaker_is_settled_when_it_reopens(h).await;
}

#[tokio::test]
async fn an_expired_order_meeting_an_open_breaker_is_settled_when_it_reopens_postgres() {
    let Some(h) =
        Harness::start_on_postgres_with(&format!("{}{PAST_THE_TIERS_HOURLY}", support::RULES))
            .await
    else {
        return;
    };
    an_expired_order_meeting_an_open_breaker_is_settled_when_it_reopens(h).await;
}

/// The reconciler's refund checks: a pending refund whose channel's breaker is open is not
/// asked about — the check is counted `breaker_open` (not `query`) and the refund stays
/// pending. (Its settling once the breaker lets a probe through, 30 s later, is what the
/// payment test above shows.)
#[tokio::test]
async fn a_pending_refund_meeting_an_open_breaker_is_not_asked() {
    let h = Harness::start_with(
        false,
        &format!(
            "{}reconcile: {{ tiers: [ {{ until: 10m, every: 200ms }} ] }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    h.paid("m_1001", "rc-rb", "wechat_native", 500).await;
    // The refund stays PROCESSING at the provider, and every refund query fails.
    let failing = json!({
        "refund_status": "PROCESSING",
        "fail_next": 1_000,
        "fail_status": 500,
        "fail_code": "SYSTEM_ERROR",
        "fail_ops": ["refund_query"],
    });
    h.faults(failing).await;
    let r = h
        .refund(&json!({
            "merchant_id": "m_1001", "out_trade_no": "rc-rb",
            "out_refund_no": "rc-rb-r1", "amount": 500,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "pending", "{}", r.text);
    let channel = r.body["channel"].as_str().unwrap().to_string();
    // The shop's refreshes (and the worker's checks) fail, and open the channel's breaker.
    wait_until("the channel's breaker open", || async {
        h.get_refund("m_1001", "rc-rb-r1", true).await;
        channel_is_open(&h.admin_get("/admin/channels").await.body, &channel)
    })
    .await;
    let breaker_open = || async {
        h.metric(
            "payroute_reconcile_actions_total",
            &[("action", "breaker_open")],
        )
        .await
        .unwrap_or(0.0)
    };
    wait_until("a refund check that met the breaker open", || async {
        breaker_open().await >= 1.0
    })
    .await;
    assert_eq!(
        h.get_refund("m_1001", "rc-rb-r1", false).await.body["status"],
        "pending"
    );
    h.shutdown().await;
}
