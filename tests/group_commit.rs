//! Group commit through the API: concurrent creates share commits (each one fsync).
//!
//! Alone in its file so that no other test of this binary competes for the CPU: how many
//! writes meet in one commit depends on how closely they arrive.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::{metric, payment, within, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_commits() {
    let h = Arc::new(Harness::start().await);
    // Like a promotion's first second: the creates arrive together, and their channel calls
    // take as long as a provider's.
    h.faults(json!({ "latency_ms": 100 })).await;
    const N: usize = 64;
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let creates: Vec<_> = (0..N)
        .map(|i| {
            let (h, start) = (h.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                h.create(&payment(
                    "m_1001",
                    &format!("gc-{i}"),
                    "wechat_native",
                    100,
                    json!({}),
                ))
                .await
                .status
            })
        })
        .collect();
    for c in creates {
        assert_eq!(within("a create", c).await.unwrap(), 201);
    }
    let text = h.metrics().await;
    let writes = metric(&text, "payroute_store_writes_total").unwrap();
    let commits = metric(&text, "payroute_store_commits_total").unwrap();
    eprintln!("{N} creates: {writes} writes in {commits} commits");
    // Each create writes its binding before the channel call and its outcome after.
    assert!(writes >= 2.0 * N as f64, "{writes} writes");
    // One commit per write without group commit. How many meet in a commit depends on how
    // closely they arrive (the RSA work of each create spreads them out) against one fsync.
    assert!(
        commits * 2.0 < writes,
        "group commit: {commits} commits (fsyncs) for {writes} writes of {N} creates"
    );
}
