//! What is SQLite's own: group commit, the reader and writer threads, opening old files.
//! The store's behaviour is tested in tests/it/store/, against both stores.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;

use super::readers::{ReadQueue, ReadState, Readers, MAX_READERS};
use super::writer::{writer_loop, Answer, Job, WriteJob};
use super::*;
use crate::domain::{Account, Method, PaymentStatus};
use crate::store::{Drains, Ledger, PaymentRecord, Reports, Schedule, StoreError, StoreMetrics};

/// A read that panics is a bug to report, not a store that is away: a 500, not a
/// retryable 503; and the reader survives it.
#[tokio::test]
async fn a_read_that_panics_is_an_internal_error_and_the_reader_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).await.unwrap();
    for _ in 0..MAX_READERS + 1 {
        let r: Result<(), StoreError> = store.read(|_| panic!("a bug in a read")).await;
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    }
    assert!(store.get_payment("m_1", "none").await.unwrap().is_none());
}

/// A file written before the `late` column existed gains it on open: its payments read
/// as not late, and the flag is stored from then on.
#[tokio::test]
async fn a_file_from_before_late_payments_gains_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        assert!(store
            .insert_payment(&record("old"))
            .await
            .unwrap()
            .is_none());
    }
    Connection::open(&path)
        .unwrap()
        // As a file from before the column (and before `schema_migrations`) is.
        .execute_batch("ALTER TABLE payments DROP COLUMN late; DROP TABLE schema_migrations")
        .unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let mut p = store.get_payment("m_1", "old").await.unwrap().unwrap();
    assert!(!p.late);
    p.status = PaymentStatus::Succeeded;
    p.late = true;
    assert!(store.update_payment(&mut p).await.unwrap());
    assert!(store.get_payment("m_1", "old").await.unwrap().unwrap().late);
}

/// The migrations a store records.
fn versions(path: &Path) -> Vec<i32> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap();
    let versions = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<Vec<i32>, _>>()
        .unwrap();
    versions
}

/// A file in the first release's layout (no account, no schedule, no `late`, no
/// `schema_migrations`) is brought to the current columns once and every migration recorded
/// as applied: its open payment is due for a check at once, reads as not late, and the
/// store writes as on a new file. A new file records the same versions, and reopening either
/// runs nothing again (a second `ADD COLUMN late` would fail the open).
#[tokio::test]
async fn a_file_from_before_schema_migrations_records_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("first.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE payments (
                 payment_id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, shop_id TEXT NOT NULL,
                 out_trade_no TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0),
                 currency TEXT NOT NULL, method TEXT NOT NULL, status TEXT NOT NULL,
                 channel TEXT NOT NULL, rule TEXT NOT NULL, action TEXT, provider_trade_no TEXT,
                 refunded_amount INTEGER NOT NULL DEFAULT 0, request_hash TEXT NOT NULL,
                 request TEXT NOT NULL, error_code TEXT, error_message TEXT,
                 attempt_until INTEGER, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                 paid_at INTEGER, expires_at INTEGER NOT NULL, version INTEGER NOT NULL,
                 UNIQUE (merchant_id, out_trade_no));
             CREATE TABLE refunds (
                 refund_id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, shop_id TEXT NOT NULL,
                 out_trade_no TEXT NOT NULL, out_refund_no TEXT NOT NULL,
                 payment_id TEXT NOT NULL REFERENCES payments (payment_id),
                 channel TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0), reason TEXT,
                 status TEXT NOT NULL, provider_refund_no TEXT, request_hash TEXT NOT NULL,
                 error_code TEXT, error_message TEXT, attempt_until INTEGER,
                 created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, succeeded_at INTEGER,
                 version INTEGER NOT NULL, UNIQUE (merchant_id, out_refund_no));
             CREATE TABLE events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
                 shop_id TEXT NOT NULL, merchant_id TEXT NOT NULL, payment_id TEXT NOT NULL,
                 event_type TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
                 attempts INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL,
                 created_at INTEGER NOT NULL, delivered_at INTEGER, last_error TEXT);
             CREATE TABLE probe (id INTEGER PRIMARY KEY, pad BLOB);
             INSERT INTO payments VALUES ('pay_old', 'm_1', 's', 'old', 100, 'CNY',
                 'wechat_native', 'pending', 'ch', 'r', NULL, NULL, 0, 'h', '{}', NULL, NULL,
                 NULL, 7, 7, NULL, 9, 0);",
        )
        .unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(versions(&path), every_version());
    // The steps newer than the ledger ran on it (recorded only once run): the drain tables
    // and the quota index.
    assert!(store.drained().await.unwrap().is_empty());
    let indexed: bool = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = 'payments_account_created'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(indexed, "the quota index of a file from before the ledger");
    let old = store.get_payment("m_1", "old").await.unwrap().unwrap();
    assert!(!old.late && old.account.is_none());
    let due = store.due_payments(7, 10).await.unwrap();
    assert_eq!(due.len(), 1, "the open payment is due at once");
    assert!(store
        .insert_payment(&record("new"))
        .await
        .unwrap()
        .is_none());
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(store.get_payment("m_1", "new").await.unwrap().is_some());
    assert_eq!(versions(&path), every_version());

    let fresh = dir.path().join("fresh.db");
    drop(SqliteStore::open(&fresh).await.unwrap());
    drop(SqliteStore::open(&fresh).await.unwrap());
    assert_eq!(versions(&fresh), every_version());
}

/// Every migration's version, in order.
fn every_version() -> Vec<i32> {
    crate::store::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect()
}

fn record(no: &str) -> PaymentRecord {
    PaymentRecord {
        payment_id: format!("pay_{no}"),
        merchant_id: "m_1".into(),
        shop_id: "s".into(),
        out_trade_no: no.into(),
        amount: 100,
        currency: "CNY".into(),
        method: Method::WechatNative,
        status: PaymentStatus::Pending,
        channel: "ch".into(),
        rule: "r".into(),
        action: None,
        provider_trade_no: None,
        refunded_amount: 0,
        request_hash: "h".into(),
        request: serde_json::json!({"a": 1}),
        error_code: None,
        error_message: None,
        attempt_until: Some(5),
        created_at: 1,
        updated_at: 1,
        paid_at: None,
        expires_at: 9,
        version: 0,
        late: false,
        account: Some(Account {
            provider: "wechatpay_v3".into(),
            mode: "partner".into(),
            mchid: Some("1900000100".into()),
            sub_mchid: Some("1900000109".into()),
            app_id: Some("wx1".into()),
            seller: None,
        }),
    }
}

// The store's behaviour is tested in tests/it/store/, against both stores; what
// is SQLite's own (group commit) is tested here.

/// Each write's answer set beside what the file holds: (out_trade_no, stored, answer).
type Outcomes = Vec<(String, bool, &'static str)>;

fn kind<T>(r: &Result<T, StoreError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Backend(_)) => "backend",
        Err(StoreError::Corrupt(_)) => "corrupt",
    }
}

/// The store at `path` with no writer thread: its writes queue on the receiver returned,
/// for a test to hand to [`writer_loop`] as one batch.
fn store_without_writer(path: &Path) -> (SqliteStore, std::sync::mpsc::Receiver<Job>) {
    let (writer, jobs) = std::sync::mpsc::channel();
    let store = SqliteStore {
        writer,
        metrics: StoreMetrics::new(&prometheus::Registry::new()).unwrap(),
        healthy: Arc::new(AtomicBool::new(true)),
        readers: Readers::start(vec![open_connection(path).unwrap()]).unwrap(),
        claims: CheckClaims::default(),
    };
    (store, jobs)
}

/// Inserts `nos` in that order, in one batch of [`writer_loop`] over a fresh file with
/// room for a few pages more (the ones named `*-large` do not fit): each one's outcome,
/// whether the writer ended the batch healthy, and its commits.
async fn one_batch_on_a_full_file(nos: &[&'static str]) -> (Outcomes, bool, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lost.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let (store, jobs) = store_without_writer(&path);
    let store = Arc::new(store);
    // The file may grow by a few pages: the small rows fit, the large one cannot.
    let conn = open_connection(&path).unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "max_page_count", pages + 8)
        .unwrap();
    let mut writes = Vec::new();
    let (batch, queued) = std::sync::mpsc::channel();
    for no in nos {
        let mut rec = record(no);
        if no.ends_with("-large") {
            rec.request = serde_json::json!({ "pad": "x".repeat(256 * 1024) });
        }
        let s = store.clone();
        writes.push(tokio::spawn(async move { s.insert_payment(&rec).await }));
        // One at a time, so that the batch holds them in this order.
        let job =
            tokio::task::block_in_place(|| jobs.recv_timeout(std::time::Duration::from_secs(5)))
                .expect("the write to be queued");
        batch.send(job).unwrap();
    }
    drop(batch);
    let healthy = Arc::new(AtomicBool::new(true));
    let (commits, health) = (store.metrics.commits.clone(), healthy.clone());
    let idle = Arc::new(ReadQueue {
        state: Mutex::new(ReadState::default()),
        ready: Condvar::new(),
        exited: Condvar::new(),
    });
    tokio::task::spawn_blocking(move || writer_loop(conn, queued, commits, health, idle))
        .await
        .unwrap();
    let check = Connection::open(&path).unwrap();
    let mut seen: Outcomes = Vec::new();
    for (no, write) in nos.iter().zip(writes) {
        let answer = write.await.unwrap();
        let stored: bool = check
            .query_row(
                "SELECT COUNT(*) > 0 FROM payments WHERE out_trade_no = ?1",
                [no],
                |r| r.get(0),
            )
            .unwrap();
        seen.push((no.to_string(), stored, kind(&answer)));
    }
    let healthy = healthy.load(Ordering::Relaxed);
    (seen, healthy, store.commits())
}

fn outcomes(expected: &[(&str, bool, &'static str)]) -> Outcomes {
    expected
        .iter()
        .map(|(no, stored, answer)| (no.to_string(), *stored, *answer))
        .collect()
}

/// A job whose SQLITE_FULL rolls back the whole batch transaction (a statement without a
/// statement journal: SQLite undoes the transaction, not just the statement — see
/// <https://www.sqlite.org/lang_transaction.html>, "Response To Errors Within A
/// Transaction"): the jobs before it in the batch are lost, and each answer says what
/// the file holds — committed ⇒ Ok, not committed ⇒ Unavailable (retryable), never a 500.
/// The jobs after it run in a transaction of their own, never in autocommit.
///
/// Before: the writer ignored the failed `ROLLBACK TO`/`RELEASE`, ran c and d in
/// autocommit (each committed by its `RELEASE`), then its `COMMIT` failed ("no
/// transaction is active") and all four were answered `Backend` — a 500 for c and d,
/// which are in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_transaction_is_lost_answers_each_write_as_the_file_holds_it() {
    let (seen, healthy, commits) = one_batch_on_a_full_file(&["a", "b-large", "c", "d"]).await;
    assert!(
        !seen[0].1,
        "a was committed: the failure did not roll back the transaction ({seen:?})"
    );
    assert_eq!(
        seen,
        outcomes(&[
            ("a", false, "unavailable"),
            ("b-large", false, "unavailable"),
            ("c", true, "ok"),
            ("d", true, "ok"),
        ])
    );
    assert_eq!(commits, 1, "c and d committed together");
    assert!(
        !healthy,
        "a lost transaction is a store fault: /readyz must probe"
    );
}

/// Transactions lost twice in one batch, and a batch whose last job loses it: each
/// new transaction holds only the jobs after the last loss, and none is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lost_transaction_of_a_batch_is_answered_and_the_rest_begins_again() {
    let (seen, _, commits) = one_batch_on_a_full_file(&["a", "b-large", "c", "e-large", "f"]).await;
    assert_eq!(
        seen,
        outcomes(&[
            ("a", false, "unavailable"),
            ("b-large", false, "unavailable"),
            ("c", false, "unavailable"),
            ("e-large", false, "unavailable"),
            ("f", true, "ok"),
        ])
    );
    assert_eq!(commits, 1);
    let (seen, healthy, commits) = one_batch_on_a_full_file(&["a", "b-large"]).await;
    assert_eq!(
        seen,
        outcomes(&[
            ("a", false, "unavailable"),
            ("b-large", false, "unavailable")
        ])
    );
    assert_eq!(commits, 0, "no empty transaction after the last job");
    assert!(!healthy);
}

/// A write that panics is a bug to report (500), not a store that is away; its savepoint
/// is rolled back, the rest of its batch commits, and the writer lives on.
///
/// Before: the panic ended the writer thread; the write was answered `Unavailable` and
/// so was every later one, while `/readyz` said 200.
#[tokio::test]
async fn a_write_that_panics_is_an_internal_error_and_the_writer_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).await.unwrap();
    let r: Result<(), StoreError> = store
        .write(|conn| {
            conn.execute("DELETE FROM payments", []).map_err(backend)?;
            panic!("a bug in a write")
        })
        .await;
    assert_eq!(kind(&r), "backend", "{r:?}");
    assert!(store
        .insert_payment(&record("after"))
        .await
        .unwrap()
        .is_none());
    assert!(store.get_payment("m_1", "after").await.unwrap().is_some());
    assert!(store.writes_ok());
    store.ping().await.unwrap();
}

/// A job that brings the writer thread down (here one that panics outside any write's
/// own guard): the store says at once that it cannot write — `writes_ok` false, the
/// readiness check (`ping`, what `/readyz` asks) `Unavailable`, and so is every later
/// write, promptly.
///
/// Before: `writes_ok` stayed true and `ping` answered from a reader (200 on `/readyz`)
/// while every write failed.
#[tokio::test]
async fn a_writer_that_dies_makes_the_store_unready_and_every_write_unavailable() {
    struct Fatal;
    impl WriteJob for Fatal {
        fn run(self: Box<Self>, _: &Connection) -> (Option<StoreError>, Answer) {
            panic!("the writer thread goes down")
        }
        fn refuse(self: Box<Self>, _: StoreError) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("d.db")).await.unwrap();
    assert!(store
        .insert_payment(&record("before"))
        .await
        .unwrap()
        .is_none());
    store.writer.send(Box::new(Fatal)).unwrap();
    let soon = std::time::Duration::from_secs(5);
    tokio::time::timeout(soon, async {
        while store.writes_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("writes_ok to turn false once the writer is gone");
    let ping = tokio::time::timeout(soon, store.ping()).await.unwrap();
    assert_eq!(kind(&ping), "unavailable", "{ping:?}");
    let write = tokio::time::timeout(soon, store.insert_payment(&record("later")))
        .await
        .unwrap();
    assert_eq!(kind(&write), "unavailable", "{write:?}");
    // Reads still work: what was stored can be looked up.
    assert!(store.get_payment("m_1", "before").await.unwrap().is_some());
}

/// A dropped store leaves the file alone, its WAL checkpointed and deleted, so a copy of
/// the file holds every commit (benches/notify.rs seeds this way). Its connections used
/// to close all at once and, now and then, none found itself alone to checkpoint: 7
/// stores in 1,000 left their WAL on two cores, so this runs a few hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_leaves_no_wal_behind() {
    const STORES: usize = 300;
    let base = std::path::Path::new("/dev/shm");
    let dir = if base.is_dir() {
        tempfile::tempdir_in(base).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    for i in 0..STORES {
        let path = dir.path().join(format!("w{i}.db"));
        {
            let store = SqliteStore::open(&path).await.unwrap();
            assert!(store.insert_payment(&record("w")).await.unwrap().is_none());
            assert!(store.get_payment("m_1", "w").await.unwrap().is_some());
        }
        // The threads close their connections just after the drop.
        let wal = path.with_extension("db-wal");
        let closed = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while wal.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "store {i} of {STORES} left its WAL behind");
        let conn = Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the file alone holds the commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_a_failing_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
    let writes: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rec = record(&format!("g{i}"));
                if i == 7 {
                    rec.amount = 0; // violates CHECK (amount > 0)
                }
                store.insert_payment(&rec).await
            })
        })
        .collect();
    let mut failed = 0;
    for w in writes {
        if w.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "only the invalid write fails");
    for i in (0..64).filter(|i| *i != 7) {
        assert!(
            store
                .get_payment("m_1", &format!("g{i}"))
                .await
                .unwrap()
                .is_some(),
            "g{i} committed beside the failed write"
        );
    }
    assert!(store.get_payment("m_1", "g7").await.unwrap().is_none());
    // The first write commits alone; the rest queue behind its fsync and share commits.
    eprintln!("64 concurrent writes: {} commits", store.commits());
    assert!(
        store.commits() <= 8,
        "{} commits (fsyncs) for 64 concurrent writes: they were not grouped",
        store.commits()
    );
}
