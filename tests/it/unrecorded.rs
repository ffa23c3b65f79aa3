//! A store write that fails after the channel may have the order: the shop hears that the
//! order may exist (`503`, payment `unknown`, retry with the same `out_trade_no`), not the
//! "nothing was sent" of a create refused at its binding.

use crate::support;

use std::sync::Arc;

use serde_json::json;
use support::{payment, wait_until, within, Harness};

/// Another connection holding SQLite's write lock: every write of the proxy waits out its
/// busy timeout and fails (`database is locked`), as on a store that cannot take writes.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(h: &Harness) -> WriteLock {
        let conn = rusqlite::Connection::open(h.db_path()).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_after_the_channel_call_says_the_order_may_exist() {
    let h = Arc::new(Harness::start().await);
    // The channel's answer is held back (under its 2s timeout) while the store is locked.
    h.faults(json!({ "latency_ms": 1000 })).await;
    let body = payment("m_1001", "unrec-1", "wechat_native", 100, json!({}));
    let call = {
        let (h, body) = (h.clone(), body.clone());
        tokio::spawn(async move { h.create(&body).await })
    };
    wait_until("the order to reach the channel", || async {
        !h.sandbox_orders("unrec-1").await.is_empty()
    })
    .await;
    let lock = WriteLock::take(&h);
    assert!(
        !call.is_finished(),
        "the channel's latency did not hold the call"
    );
    let r = within("the create's answer", call).await.unwrap();
    r.expect_error(503, "store_unavailable");
    assert_eq!(r.body["error"]["retryable"], true);
    assert_eq!(r.body["payment"]["status"], "unknown", "{}", r.text);
    assert_eq!(r.body["payment"]["channel"], "m1001_wechat");
    let message = r.error_message();
    assert!(
        message.contains("may have the order") && message.contains("same out_trade_no"),
        "{message}"
    );
    assert_eq!(
        h.sandbox_orders("unrec-1").await.len(),
        1,
        "the order is there"
    );

    // Beside it, a create refused at its binding (the store is still locked): nothing was
    // sent, and the answer does not pretend otherwise.
    h.faults(json!({})).await;
    let r = h
        .create(&payment(
            "m_1001",
            "unrec-2",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(503, "store_unavailable");
    assert!(r.body.get("payment").is_none(), "{}", r.text);
    assert!(!r.error_message().contains("may have"), "{}", r.text);
    assert!(
        h.sandbox_orders("unrec-2").await.is_empty(),
        "unrec-2 was sent"
    );
    drop(lock);

    // The binding made before the call holds: the order stays with that channel.
    let g = h.get_payment("m_1001", "unrec-1", false).await;
    assert_eq!(
        (g.status, g.body["channel"].as_str()),
        (200, Some("m1001_wechat")),
        "{}",
        g.text
    );
    Harness::shutdown_shared(h).await;
}

/// The same after a create whose call may have reached the channel and ended without an
/// answer (5xx until the deadline, then a query that does not tell): its `unknown` outcome
/// cannot be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_create_whose_outcome_cannot_be_stored_says_the_order_may_exist() {
    let h = Arc::new(Harness::start().await);
    h.faults(json!({
        "latency_ms": 700, "fail_next": 100, "fail_status": 500, "fail_code": "SYSTEM_ERROR",
        "fail_ops": ["create"],
    }))
    .await;
    let body = payment("m_1001", "unrec-3", "wechat_native", 100, json!({}));
    let call = {
        let (h, body) = (h.clone(), body.clone());
        tokio::spawn(async move { h.create(&body).await })
    };
    // The binding is stored before the first attempt, which the sandbox holds back.
    wait_until("the binding to be stored", || async {
        h.get_payment("m_1001", "unrec-3", false).await.status == 200
    })
    .await;
    let lock = WriteLock::take(&h);
    assert!(
        !call.is_finished(),
        "the channel's latency did not hold the call"
    );
    let r = within("the create's answer", call).await.unwrap();
    r.expect_error(503, "store_unavailable");
    assert_eq!(r.body["payment"]["status"], "unknown", "{}", r.text);
    assert!(
        r.error_message().contains("may have the order"),
        "{}",
        r.text
    );
    drop(lock);
    Harness::shutdown_shared(h).await;
}
