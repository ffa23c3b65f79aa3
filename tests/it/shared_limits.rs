//! `scope: global` limits shared by two instances through the real Redis on 127.0.0.1:6379,
//! and failing open when Redis is gone.
//!
//! Without a Redis these tests say so loudly and pass, unless `PAYROUTE_REQUIRE_REDIS=1`
//! (as `.ci/run` sets), where they fail.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{payment, within, Harness};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Whether the test Redis answers; a loud skip (or a failure, when it is required) if not.
async fn redis_here() -> bool {
    let up = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect("127.0.0.1:6379"),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    if !up {
        assert!(
            std::env::var("PAYROUTE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "Redis is required (PAYROUTE_REQUIRE_REDIS=1) but not reachable at 127.0.0.1:6379"
        );
        // Written to the process's stderr itself: the test harness captures `eprintln!` of a
        // passing test, and a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: Redis not reachable at 127.0.0.1:6379; start one and run with \
             PAYROUTE_REQUIRE_REDIS=1 to make this test count ***\n"
        );
    }
    up
}

/// The standard rules plus one limit on every merchant and the `redis:` block.
fn rules_with(limit: &str, redis_url: &str, prefix: &str) -> String {
    format!(
        "{}limits:\n  - {limit}\nredis: {{ url: \"{redis_url}\", key_prefix: \"{prefix}\" }}\n",
        support::RULES
    )
}

/// A prefix no other run shares, so leftover keys cannot skew a count.
fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("payroute-test-{}-{nanos}:", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_across_two_instances() {
    if !redis_here().await {
        return;
    }
    const RATE: f64 = 40.0;
    const BURST: f64 = 4.0;
    let rules = rules_with(
        "{ name: per-merchant, key: merchant, rate: 40/s, burst: 4, scope: global }",
        REDIS_URL,
        &fresh_prefix(),
    );
    let a = Arc::new(Harness::start_with(false, &rules, "").await);
    let b = Arc::new(Harness::start_with(false, &rules, "").await);
    let (admitted, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = tokio::time::Instant::now();
    let run_for = Duration::from_secs(2);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let h = if w % 2 == 0 { a.clone() } else { b.clone() };
            let (admitted, limited) = (admitted.clone(), limited.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while started.elapsed() < run_for {
                    let no = format!("gl-{w}-{i}");
                    let r = h
                        .create(&payment("m_1001", &no, "wechat_native", 100, json!({})))
                        .await;
                    match r.status {
                        201 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        other => panic!("{no}: {other} {}", r.text),
                    };
                    i += 1;
                }
            })
        })
        .collect();
    for w in workers {
        within("a worker", w).await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (admitted, limited) = (
        admitted.load(Ordering::Relaxed) as f64,
        limited.load(Ordering::Relaxed) as f64,
    );
    let allowed = BURST + RATE * elapsed;
    eprintln!(
        "global 40/s over {elapsed:.2}s on two instances: {admitted} admitted (the limit allows {allowed:.1}), {limited} limited"
    );
    assert!(limited > 0.0, "the load exceeded the limit");
    // Each instance alone would let ~40/s through: two local limits would admit twice this,
    // so the bound that proves the limit is shared is the upper one, kept tight.
    assert!(
        admitted <= 1.1 * allowed,
        "{admitted} admitted where {allowed:.1} are allowed"
    );
    // The lower bound only says the shared limit does not starve the two instances. On a
    // busy machine (the whole suite sharing two cores) admissions ran ~11% under the rate
    // (75 of 84.2 in one CI run): the local limit in front spends cells on requests the
    // global one then refuses. Tight enough to catch a limit that refuses all or most.
    assert!(
        admitted >= 0.75 * allowed,
        "only {admitted} admitted where {allowed:.1} are allowed"
    );
    for h in [&a, &b] {
        assert_eq!(h.metric("payroute_shared_limits_up", &[]).await, Some(1.0));
    }
}

#[tokio::test]
async fn with_redis_gone_global_limits_fail_open_and_say_so() {
    // Nothing listens on port 1: every Redis call fails at once.
    let rules = rules_with(
        "{ name: per-merchant, key: merchant, rate: 100/s, scope: global }",
        "redis://127.0.0.1:1",
        &fresh_prefix(),
    );
    let h = Harness::start_with(false, &rules, "").await;
    for i in 0..3 {
        h.create(&payment(
            "m_1001",
            &format!("open-{i}"),
            "wechat_native",
            100,
            json!({}),
        ))
        .await
        .expect_created_on("m1001_wechat");
    }
    assert_eq!(h.metric("payroute_shared_limits_up", &[]).await, Some(0.0));
    h.shutdown().await;
}
