//! The manual drain switch's state: drain, drain again, resume, the log, a restart, and two
//! instances on one database.

use super::*;

use payroute::store::DrainRecord;

both_stores!(
    drain_resume_and_the_log,
    a_drain_survives_reopening,
    another_instance_sees_a_drain,
);

postgres_only!(concurrent_drains_keep_one_since,);

fn record(channel: &str, reason: &str, by: &str, since_ms: i64) -> DrainRecord {
    DrainRecord {
        channel: channel.into(),
        reason: reason.into(),
        by: by.into(),
        since_ms,
    }
}

async fn drain_resume_and_the_log(ctx: Ctx) {
    let store = ctx.store;
    assert!(store.drained().await.unwrap().is_empty());
    // Resuming a channel that is not drained writes nothing, not even a log line.
    assert_eq!(store.resume("a", "ops", 50).await.unwrap(), None);
    assert!(store.drain_log(10).await.unwrap().is_empty());

    let first = store
        .drain("b", "provider incident 茶", "alice", 100)
        .await
        .unwrap();
    assert!(!first.already);
    assert_eq!(
        first.record,
        record("b", "provider incident 茶", "alice", 100)
    );
    store.drain("a", "cert rotation", "bob", 150).await.unwrap();
    // A second drain replaces the reason and the operator and keeps `since`.
    let again = store.drain("b", "still down", "carol", 200).await.unwrap();
    assert!(again.already);
    assert_eq!(again.record, record("b", "still down", "carol", 100));
    assert_eq!(
        store.drained().await.unwrap(),
        [
            record("a", "cert rotation", "bob", 150),
            record("b", "still down", "carol", 100)
        ],
        "by channel name"
    );

    let ended = store.resume("b", "dave", 300).await.unwrap();
    assert_eq!(ended, Some(record("b", "still down", "carol", 100)));
    assert_eq!(store.resume("b", "dave", 301).await.unwrap(), None);
    assert_eq!(
        store.drained().await.unwrap(),
        [record("a", "cert rotation", "bob", 150)]
    );
    // Drained again after a resume: a new `since`.
    let back = store.drain("b", "again", "erin", 400).await.unwrap();
    assert!(!back.already);
    assert_eq!(back.record.since_ms, 400);

    let log: Vec<_> = store
        .drain_log(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.channel, e.action, e.reason, e.by, e.at_ms))
        .collect();
    let line = |c: &str, a: &str, r: &str, by: &str, at| {
        (c.into(), a.into(), Some(r.to_string()), by.into(), at)
    };
    assert_eq!(
        log,
        [
            line("b", "drain", "again", "erin", 400),
            line("b", "resume", "still down", "dave", 300),
            line("b", "drain", "still down", "carol", 200),
            line("a", "drain", "cert rotation", "bob", 150),
            line("b", "drain", "provider incident 茶", "alice", 100),
        ],
        "newest first, one line per change"
    );
    assert_eq!(store.drain_log(2).await.unwrap().len(), 2);
}

async fn a_drain_survives_reopening(ctx: Ctx) {
    ctx.store
        .drain("a", "maintenance", "ops", 10)
        .await
        .unwrap();
    drop(ctx.store);
    drop(ctx.other);
    let reopened = ctx.place.open().await;
    assert_eq!(
        reopened.drained().await.unwrap(),
        [record("a", "maintenance", "ops", 10)],
        "{}",
        ctx.kind
    );
}

async fn another_instance_sees_a_drain(ctx: Ctx) {
    ctx.store
        .drain("a", "maintenance", "ops", 10)
        .await
        .unwrap();
    assert_eq!(
        ctx.other.drained().await.unwrap(),
        [record("a", "maintenance", "ops", 10)]
    );
    assert!(ctx.other.resume("a", "ops2", 20).await.unwrap().is_some());
    assert!(ctx.store.drained().await.unwrap().is_empty());
}

/// Two instances draining one channel at the same moment: one inserts, the other updates and
/// keeps the first's `since`; exactly one says the channel was not drained before.
async fn concurrent_drains_keep_one_since(ctx: Ctx) {
    for round in 0..20 {
        let channel = format!("c{round}");
        let (a, b) = (ctx.store.clone(), ctx.other.clone());
        let (ca, cb) = (channel.clone(), channel.clone());
        let ta = tokio::spawn(async move { a.drain(&ca, "from a", "a", 1_000).await.unwrap() });
        let tb = tokio::spawn(async move { b.drain(&cb, "from b", "b", 2_000).await.unwrap() });
        let (da, db) = (ta.await.unwrap(), tb.await.unwrap());
        assert_eq!(
            [da.already, db.already].iter().filter(|x| !**x).count(),
            1,
            "one insert: {da:?} {db:?}"
        );
        let first = if da.already { 2_000 } else { 1_000 };
        let stored = ctx.store.drained().await.unwrap();
        let stored = stored.iter().find(|d| d.channel == channel).unwrap();
        assert_eq!(stored.since_ms, first, "the first drain's since is kept");
    }
}
