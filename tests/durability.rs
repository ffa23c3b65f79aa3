//! What the store and the process promise under stress: an acknowledged create survives
//! `kill -9`, SIGTERM during a stream of creates loses none, and a full disk is
//! `503 store_unavailable` with nothing sent, visible on `/readyz`, until space returns.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use support::disk::SmallDisk;
use support::{payment, wait_until, within, Binary, Harness};

/// What a create in a stream came to.
#[derive(Debug)]
enum Outcome {
    Answered(u16),
    /// The connection failed or closed before an answer.
    NoAnswer(String),
}

/// `workers` shops creating orders `{prefix}-{w}-{i}` back to back until `stop`, or until
/// the proxy stops answering; every order with its outcome.
async fn stream_of_creates(
    h: &Arc<Harness>,
    prefix: &str,
    workers: usize,
    stop: &Arc<AtomicBool>,
    answered: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, Outcome)>>> {
    (0..workers)
        .map(|w| {
            let (h, stop, answered) = (h.clone(), stop.clone(), answered.clone());
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let no = format!("{prefix}-{w}-{i}");
                    let body = payment("m_1001", &no, "wechat_native", 100, json!({}));
                    match h.try_create(&body).await {
                        Ok(reply) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            seen.push((no, Outcome::Answered(reply.status)));
                        }
                        Err(e) => {
                            seen.push((no, Outcome::NoAnswer(e)));
                            break;
                        }
                    }
                    i += 1;
                }
                seen
            })
        })
        .collect()
}

async fn outcomes(
    workers: Vec<tokio::task::JoinHandle<Vec<(String, Outcome)>>>,
) -> Vec<(String, Outcome)> {
    let mut all = Vec::new();
    for w in workers {
        all.extend(within("a create stream to end", w).await.unwrap());
    }
    all
}

/// Starts the real binary on `h`'s config and streams creates at it until it has answered
/// `before` of them, then sends `signal`; then serves the same database in-process again.
/// Returns the harness and every order with its outcome.
async fn creates_cut_by(
    mut h: Harness,
    signal: &str,
    before: usize,
) -> (Harness, Vec<(String, Outcome)>) {
    // Each create spends a while at the channel, so some are in flight at the signal.
    h.faults(json!({ "latency_ms": 30 })).await;
    let mut binary = Binary::take_over(&mut h).await;
    let h = Arc::new(h);
    let (stop, answered) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let workers = stream_of_creates(&h, signal, 6, &stop, &answered).await;
    wait_until("creates to be answered", || async {
        answered.load(Ordering::Relaxed) >= before
    })
    .await;
    binary.signal(signal);
    let exited_cleanly = binary.exited().await;
    if signal == "TERM" {
        assert!(exited_cleanly, "SIGTERM: the binary drains and exits 0");
    }
    // A worker still going meets a closed port and stops; stop the rest by hand.
    stop.store(true, Ordering::Relaxed);
    let all = outcomes(workers).await;
    drop(binary);
    let mut h = Arc::into_inner(h).expect("the workers are done");
    h.faults(json!({ "latency_ms": 0 })).await;
    h.restart().await;
    (h, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stream_of_creates_loses_none() {
    let (h, all) = creates_cut_by(Harness::start().await, "TERM", 60).await;
    let (mut done, mut refused) = (0, 0);
    for (no, outcome) in &all {
        let stored = h.get_payment("m_1001", no, false).await;
        let at_channel = h.sandbox_orders(no).await.len();
        match outcome {
            Outcome::Answered(status) => {
                // Drained: every request the proxy took was carried to its end.
                assert_eq!(*status, 201, "{no}");
                assert_eq!(stored.status, 200, "{no}: acknowledged, so stored");
                assert_eq!(at_channel, 1, "{no}: created once at the channel");
                done += 1;
            }
            Outcome::NoAnswer(e) => {
                // Refused before it was accepted: nothing of it anywhere.
                assert_eq!(stored.status, 404, "{no}: unanswered ({e}) yet stored");
                assert_eq!(at_channel, 0, "{no}: unanswered ({e}) yet sent");
                refused += 1;
            }
        }
    }
    eprintln!("SIGTERM: {done} creates completed, {refused} refused before acceptance");
    assert!(done >= 60);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_create_survives_kill_9() {
    let (h, all) = creates_cut_by(Harness::start().await, "KILL", 60).await;
    let mut acknowledged = 0;
    for (no, outcome) in &all {
        if let Outcome::Answered(status) = outcome {
            assert_eq!(*status, 201, "{no}");
            let stored = h.get_payment("m_1001", no, false).await;
            assert_eq!(stored.status, 200, "{no}: acknowledged, then lost");
            assert_eq!(stored.body["channel"], "m1001_wechat");
            acknowledged += 1;
        }
    }
    eprintln!("kill -9: all {acknowledged} acknowledged creates survived");
    assert!(acknowledged >= 60);
    h.shutdown().await;
}

#[tokio::test]
async fn a_full_disk_is_503_with_nothing_sent_and_readyz_says_so_until_space_returns() {
    let mut h = Harness::start().await;
    let Some(disk) = SmallDisk::mount(&h.dir.path().join("small"), "2m") else {
        return;
    };
    disk.move_store(&mut h).await;
    h.create(&payment(
        "m_1001",
        "full-0",
        "wechat_native",
        100,
        json!({}),
    ))
    .await
    .expect_created_on("m1001_wechat");
    assert_eq!(h.ready().await, 200);

    disk.fill();
    // The first failing write may come after a channel call (the outcome's); from then on
    // every create fails at its first write, the binding, before any channel is called.
    let mut i = 1;
    loop {
        let no = format!("full-{i}");
        let r = h
            .create(&payment("m_1001", &no, "wechat_native", 100, json!({})))
            .await;
        if r.status == 503 {
            r.expect_error(503, "store_unavailable");
            assert_eq!(r.body["error"]["retryable"], true);
            break;
        }
        assert_eq!(r.status, 201, "{}", r.text);
        i += 1;
        assert!(i < 50, "the store never reported the full disk");
    }
    for j in 0..3 {
        let no = format!("full-after-{j}");
        h.create(&payment("m_1001", &no, "wechat_native", 100, json!({})))
            .await
            .expect_error(503, "store_unavailable");
        assert!(h.sandbox_orders(&no).await.is_empty(), "{no}: sent");
    }
    assert_eq!(h.ready().await, 503, "/readyz while writes fail");

    disk.free();
    wait_until("/readyz to recover", || async { h.ready().await == 200 }).await;
    h.create(&payment(
        "m_1001",
        "full-back",
        "wechat_native",
        100,
        json!({}),
    ))
    .await
    .expect_created_on("m1001_wechat");
    // Nothing acknowledged before the disk filled was lost.
    assert_eq!(h.get_payment("m_1001", "full-0", false).await.status, 200);
    h.shutdown().await;
    drop(disk);
}
