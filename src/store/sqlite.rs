//! The embedded store: one SQLite file in WAL mode, one writer thread with group commit, a
//! few reader threads, each with its own connection (see [`SqliteStore`]).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    account_json, claim_token, failure, open_recheck_at, parse_account, rebound_seller, CheckClaim,
    CheckOf, Delivery, Due, DueLimits, EventFilter, EventRecord, OpenAtAccount, OutboxStats,
    PaymentFilter, PaymentRecord, RefundFilter, RefundRecord, Resend, Reservation, Store,
    StoreError, StoreMetrics, LEGACY_SELLER_FILTER, OPEN_PAYMENT, OPEN_REFUND,
};
use crate::domain::{EventStatus, EventType, Method, PaymentStatus, RefundStatus};

/// The store: one writer thread that commits every pending write in one transaction (group
/// commit), and a few reader threads beside it, each with its own connection (WAL lets
/// readers run while the writer writes). No SQLite call runs on a tokio worker.
///
/// # Durability
/// `synchronous=FULL`: a write is answered only after the transaction that holds it has
/// committed, so an acknowledged write survives `kill -9` and power loss — at the cost of one
/// fsync per batch instead of one per write. Each write runs in its own savepoint: one that
/// fails is rolled back alone, the rest of its batch still commits.
pub struct SqliteStore {
    writer: std::sync::mpsc::Sender<Job>,
    /// Writes asked for, and transactions the writer has committed (each one batch).
    metrics: StoreMetrics,
    /// Whether the last batch committed without an I/O failure (disk full, I/O error): what
    /// `/readyz` reports, so a load balancer stops sending writes that cannot be kept.
    healthy: Arc<AtomicBool>,
    readers: Readers,
    /// The latest claim on each due check handed out, by record: in memory, so that handing
    /// checks out stays a plain read (a store that cannot write still answers it).
    claims: CheckClaims,
}

/// The latest claim token on each record's check ([`Store::schedule_claimed_check`]).
///
/// # Limits
/// An entry lives from its check being handed out to its next check being written (by its
/// holder or by a payment flow); one whose holder never wrote stays until the record is
/// handed out again. Kept by the writer thread's closures, so a check of a claim and its
/// write are one step among the writes.
type CheckClaims = Arc<Mutex<HashMap<(CheckOf, String), String>>>;

/// The claims, past a poisoned lock: only plain map operations run under it.
fn lock(claims: &CheckClaims) -> MutexGuard<'_, HashMap<(CheckOf, String), String>> {
    claims.lock().unwrap_or_else(|p| p.into_inner())
}

/// One read waiting for a reader thread; it answers its caller itself.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The reader threads' queue. Threads of their own rather than `spawn_blocking`: a read is
/// then one boxed closure and a oneshot, not a blocking-pool task, a join handle, a permit
/// and a connection taken from and put back into a locked pool; and a reader that finishes
/// a read takes the next one queued without being woken for it.
struct ReadQueue {
    state: Mutex<ReadState>,
    ready: Condvar,
    /// Signalled as each reader thread exits, its connection closed (see [`writer_loop`]).
    exited: Condvar,
}

#[derive(Default)]
struct ReadState {
    jobs: VecDeque<ReadJob>,
    /// Readers waiting on `ready`.
    sleeping: usize,
    /// Readers signalled that have not woken yet: they will take a job, so another wake-up
    /// for it would be wasted.
    signalled: usize,
    closed: bool,
    /// Reader threads whose connection is still open.
    running: usize,
}

impl ReadQueue {
    fn lock(&self) -> MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle to the reader threads; dropping it (with the store) lets them finish the
/// reads queued and exit.
struct Readers(Arc<ReadQueue>);

impl Readers {
    fn start(connections: Vec<Connection>) -> Result<Readers, StoreError> {
        let queue = Arc::new(ReadQueue {
            state: Mutex::new(ReadState::default()),
            ready: Condvar::new(),
            exited: Condvar::new(),
        });
        // The handle first: if a later reader cannot start, dropping it ends the ones that did.
        let readers = Readers(queue);
        for (i, conn) in connections.into_iter().enumerate() {
            let q = readers.0.clone();
            q.lock().running += 1;
            let exit = ReaderExit(q.clone());
            std::thread::Builder::new()
                .name(format!("payroute-sqlite-reader-{i}"))
                .spawn(move || {
                    let _exit = exit;
                    reader_loop(conn, &q)
                })
                .map_err(|e| StoreError::Backend(format!("starting a reader: {e}")))?;
        }
        Ok(readers)
    }

    fn submit(&self, job: ReadJob) {
        let q = &self.0;
        let mut st = q.lock();
        st.jobs.push_back(job);
        // Readers awake and not yet signalled take queued jobs before they sleep: wake one
        // only for a job that no one awake-and-idle or already signalled will reach.
        if st.sleeping > st.signalled && st.jobs.len() > st.signalled {
            st.signalled += 1;
            q.ready.notify_one();
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

/// Counts a reader thread out once its connection is closed (`reader_loop` owns and drops
/// it), even if the thread unwinds; dropped unspawned, it counts out a reader never started.
struct ReaderExit(Arc<ReadQueue>);

impl Drop for ReaderExit {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.exited.notify_all();
    }
}

impl ReadQueue {
    /// Waits until every reader thread has closed its connection (after `closed`).
    fn wait_for_readers(&self) {
        let mut st = self.lock();
        while st.running > 0 {
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn reader_loop(conn: Connection, queue: &ReadQueue) {
    loop {
        let job = {
            let mut st = queue.lock();
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                if st.closed {
                    return;
                }
                st.sleeping += 1;
                st = queue.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                st.sleeping -= 1;
                st.signalled = st.signalled.saturating_sub(1);
            }
        };
        // A read that panics loses its answer (its caller gets an internal error), not
        // the reader.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&conn)));
    }
}

/// One write waiting for the writer.
type Job = Box<dyn WriteJob>;
/// Answers a write's caller once its batch's commit is known (`Some`: it failed).
type Answer = Box<dyn FnOnce(Option<StoreError>) + Send>;

trait WriteJob: Send {
    /// Runs on the writer's connection inside the job's savepoint: how it failed, if it did,
    /// and what answers the caller after the commit.
    fn run(self: Box<Self>, conn: &Connection) -> (Option<StoreError>, Answer);
    /// The batch could not even begin: answer with its error, nothing ran.
    fn refuse(self: Box<Self>, error: StoreError);
}

struct Write<T, F> {
    f: F,
    tx: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Write<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (Option<StoreError>, Answer) {
        let Write { f, tx } = *self;
        // A write that panics is a bug in that write: it is answered as one (500), its
        // savepoint rolled back like any failed write's, and the writer goes on with the
        // rest of the batch instead of unwinding out of it (which would fail every write
        // from then on).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| {
                Err(StoreError::Backend(
                    "a store write failed (panicked)".into(),
                ))
            });
        let failed = result.as_ref().err().cloned();
        let answer: Answer = Box::new(move |commit_error| {
            let _ = tx.send(match commit_error {
                Some(e) => Err(e),
                None => result,
            });
        });
        (failed, answer)
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.tx.send(Err(error));
    }
}

/// Writes committed together at most.
const MAX_BATCH: usize = 512;
/// Reader threads, each with its connection, one per core between these bounds. Reads are
/// CPU work on cached pages: more readers than cores add no throughput, and each costs a
/// malloc arena and a page cache (RSS); two at least, so that a point read passes a long
/// one (an export page).
const MIN_READERS: usize = 2;
const MAX_READERS: usize = 8;

fn readers() -> usize {
    std::thread::available_parallelism()
        .map_or(MIN_READERS, |n| n.get())
        .clamp(MIN_READERS, MAX_READERS)
}
/// The readiness probe's write while writes fail: a few pages' worth, so that it needs
/// space as a payment's write would.
const PROBE_BYTES: i64 = 64 * 1024;

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    // Every statement of the hot paths stays prepared (rusqlite's default keeps 16).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One statement without rows, kept prepared: the writer runs the same few per batch and
/// per job (`execute_batch` would parse each of them every time).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer thread: takes every write waiting, runs each in a savepoint of one
/// transaction, commits once, then answers them all.
///
/// A failed write is undone alone (`ROLLBACK TO` its savepoint) — except when SQLite has
/// rolled back the whole transaction itself, as it may on `SQLITE_FULL`, `SQLITE_IOERR` or
/// `SQLITE_NOMEM` (<https://www.sqlite.org/lang_transaction.html>, "Response To Errors
/// Within A Transaction"). The writer checks after every write that its transaction is still
/// open; when it is not, the writes that ran before in it are lost and answered
/// `Unavailable` (retryable: nothing of them is stored), and the rest of the batch runs in a
/// new transaction — never in autocommit, where each would be stored and then, at the
/// batch's failed `COMMIT`, answered as a failure.
///
/// When the store is dropped it closes its connection last, once every reader has closed
/// theirs: SQLite checkpoints the WAL into the file and deletes it only in a connection that
/// finds itself alone at close, and connections closing at the same moment can each see
/// another still open, leaving the WAL behind (7 closes in 1,000 on two cores here). The file
/// alone then lacks the last commits: a copy of it (a cold backup, the notify bench's seed)
/// would miss them.
///
/// If the thread ends any other way (a panic outside a write), [`WriterExit`] marks the store
/// unable to write: `writes_ok` is false, `/readyz` 503, and every later write `Unavailable`
/// at once (the queue's receiver is gone).
fn writer_loop(
    conn: Connection,
    jobs: std::sync::mpsc::Receiver<Job>,
    commits: prometheus::IntCounter,
    healthy: Arc<AtomicBool>,
    readers: Arc<ReadQueue>,
) {
    let _exit = WriterExit(healthy.clone());
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let io_failed = run_batch(&conn, batch, &commits);
        healthy.store(!io_failed, Ordering::Relaxed);
    }
    readers.wait_for_readers();
    drop(conn);
}

/// Runs a batch (see [`writer_loop`]) and answers every job of it; whether the store failed
/// on the way (I/O, or a transaction SQLite rolled back), so that `/readyz` probes.
fn run_batch(conn: &Connection, batch: Vec<Job>, commits: &prometheus::IntCounter) -> bool {
    let mut jobs = batch.into_iter();
    let mut io_failed = false;
    // One transaction per pass: a pass ends at the batch's end, or where SQLite dropped its
    // transaction and the rest of the batch needs a new one.
    loop {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE").map_err(backend) {
            io_failed |= e.is_unavailable();
            for job in jobs {
                job.refuse(e.clone());
            }
            return io_failed;
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
        let mut lost = false;
        for job in jobs.by_ref() {
            if let Err(e) = exec(conn, "SAVEPOINT job").map_err(backend) {
                io_failed |= e.is_unavailable();
                job.refuse(e);
                if conn.is_autocommit() {
                    lose(conn, std::mem::take(&mut answers));
                    lost = true;
                    break;
                }
                continue;
            }
            let (failed, answer) = job.run(conn);
            io_failed |= failed.as_ref().is_some_and(StoreError::is_unavailable);
            // Still in the transaction, with this job's savepoint undone (if it failed) and
            // released; else the transaction is gone, or in a state no one can tell.
            let kept = !conn.is_autocommit()
                && match failed {
                    Some(_) => exec(conn, "ROLLBACK TO job"),
                    None => Ok(()),
                }
                .and_then(|()| exec(conn, "RELEASE job"))
                .is_ok();
            if kept {
                answers.push(answer);
                continue;
            }
            // A failed job is answered with its own error; one that succeeded in the
            // transaction now gone was lost with it.
            let own = match failed {
                Some(_) => Some(answer),
                None => {
                    answers.push(answer);
                    None
                }
            };
            lose(conn, std::mem::take(&mut answers));
            if let Some(answer) = own {
                answer(None);
            }
            lost = true;
            break;
        }
        if lost {
            io_failed = true;
            if jobs.len() == 0 {
                return io_failed;
            }
            continue;
        }
        let committed = exec(conn, "COMMIT").map_err(backend);
        match &committed {
            Ok(()) => commits.inc(),
            Err(e) => {
                io_failed |= e.is_unavailable();
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        let error = committed.err();
        for answer in answers {
            answer(error.clone());
        }
        return io_failed;
    }
}

/// The transaction the writes of `answers` ran in is gone (SQLite rolled it back), or in a
/// state no one can tell (a savepoint that could not be undone or released): it is rolled
/// back, if still open, and each write answered `Unavailable` — nothing of it is stored, and
/// the caller may retry.
fn lose(conn: &Connection, answers: Vec<Answer>) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    if answers.is_empty() {
        return;
    }
    tracing::warn!(
        writes = answers.len(),
        "store: SQLite rolled back a batch's transaction after a failed write; its writes are answered as retryable"
    );
    let error = StoreError::Unavailable(
        "the store's transaction was rolled back after another write failed; this write was not stored".into(),
    );
    for answer in answers {
        answer(Some(error.clone()));
    }
}

/// Held by the writer thread: when the thread ends — the store dropped, or a panic outside
/// any write — the store is marked unable to write, so `writes_ok`, `ping` and `/readyz` say
/// so instead of answering from the readers while every write fails.
struct WriterExit(Arc<AtomicBool>);

impl Drop for WriterExit {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
        if std::thread::panicking() {
            tracing::error!("store: the SQLite writer thread stopped (panicked); every write fails from now on, restart payroute");
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_id        TEXT PRIMARY KEY,
    merchant_id       TEXT NOT NULL,
    shop_id           TEXT NOT NULL,
    out_trade_no      TEXT NOT NULL,
    amount            INTEGER NOT NULL CHECK (amount > 0),
    currency          TEXT NOT NULL,
    method            TEXT NOT NULL,
    status            TEXT NOT NULL,
    channel           TEXT NOT NULL,
    rule              TEXT NOT NULL,
    action            TEXT,
    provider_trade_no TEXT,
    refunded_amount   INTEGER NOT NULL DEFAULT 0,
    request_hash      TEXT NOT NULL,
    request           TEXT NOT NULL,
    error_code        TEXT,
    error_message     TEXT,
    attempt_until     INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    paid_at           INTEGER,
    expires_at        INTEGER NOT NULL,
    version           INTEGER NOT NULL,
    account           TEXT,
    UNIQUE (merchant_id, out_trade_no)
);
CREATE INDEX IF NOT EXISTS payments_status ON payments (status, updated_at);
CREATE TABLE IF NOT EXISTS refunds (
    refund_id          TEXT PRIMARY KEY,
    merchant_id        TEXT NOT NULL,
    shop_id            TEXT NOT NULL,
    out_trade_no       TEXT NOT NULL,
    out_refund_no      TEXT NOT NULL,
    payment_id         TEXT NOT NULL REFERENCES payments (payment_id),
    channel            TEXT NOT NULL,
    amount             INTEGER NOT NULL CHECK (amount > 0),
    reason             TEXT,
    status             TEXT NOT NULL,
    provider_refund_no TEXT,
    request_hash       TEXT NOT NULL,
    error_code         TEXT,
    error_message      TEXT,
    attempt_until      INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    succeeded_at       INTEGER,
    version            INTEGER NOT NULL,
    UNIQUE (merchant_id, out_refund_no)
);
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (payment_id, status);
CREATE INDEX IF NOT EXISTS payments_trade_no ON payments (out_trade_no);
CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at, payment_id);
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    shop_id         TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    payment_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS events_payment ON events (payment_id, status, seq);
CREATE INDEX IF NOT EXISTS events_age ON events (status, created_at);
CREATE INDEX IF NOT EXISTS events_shop_due ON events (shop_id, next_attempt_at, seq)
    WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, pad BLOB);
";

/// Columns added after the first release, for files created before them.
const ADDED_COLUMNS: [(&str, &str, &str); 4] = [
    ("payments", "account", "TEXT"),
    // The reconciliation schedule (unix ms; NULL: not checked any more).
    ("payments", "next_check_at", "INTEGER"),
    ("refunds", "next_check_at", "INTEGER"),
    // Paid after the order had ended (issue 15): 1.
    ("payments", "late", "INTEGER NOT NULL DEFAULT 0"),
];

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = conn
            .query_row(
                &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                params![column],
                |row| row.get(0),
            )
            .map_err(backend)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(backend)?;
            if column == "next_check_at" {
                // Open records from before the schedule existed are checked at once.
                conn.execute_batch(&format!(
                    "UPDATE {table} SET next_check_at = updated_at
                     WHERE status IN ('pending', 'unknown', 'abnormal')"
                ))
                .map_err(backend)?;
            }
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS payments_check ON payments (next_check_at);
         CREATE INDEX IF NOT EXISTS refunds_check ON refunds (next_check_at);",
    )
    .map_err(backend)?;
    // An open record left with no next check (by a payroute before issue 16, whose
    // reconciler dropped an order whose check met an open breaker past its expiry) is
    // checked at once; none is left so since. Every start: the index finds them.
    conn.execute_batch(&format!(
        "UPDATE payments SET next_check_at = updated_at WHERE next_check_at IS NULL AND {OPEN_PAYMENT};
         UPDATE refunds SET next_check_at = updated_at WHERE next_check_at IS NULL AND {OPEN_REFUND};"
    ))
    .map_err(backend)?;
    Ok(())
}

const EVENT_COLUMNS: &str = "seq, event_id, shop_id, merchant_id, payment_id, event_type, body, status, attempts, next_attempt_at, created_at, delivered_at, last_error";

fn read_event(row: &Row) -> rusqlite::Result<Result<EventRecord, StoreError>> {
    let event_type: String = row.get(5)?;
    let status: String = row.get(7)?;
    let attempts: i64 = row.get(8)?;
    Ok((|| {
        Ok(EventRecord {
            seq: row.get(0).map_err(backend)?,
            event_id: row.get(1).map_err(backend)?,
            shop_id: row.get(2).map_err(backend)?,
            merchant_id: row.get(3).map_err(backend)?,
            payment_id: row.get(4).map_err(backend)?,
            event_type: EventType::parse(&event_type)
                .ok_or_else(|| StoreError::Corrupt(format!("event_type {event_type}")))?,
            body: row.get(6).map_err(backend)?,
            status: EventStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("event status {status}")))?,
            attempts: u32::try_from(attempts)
                .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
            next_attempt_at: row.get(9).map_err(backend)?,
            created_at: row.get(10).map_err(backend)?,
            delivered_at: row.get(11).map_err(backend)?,
            last_error: row.get(12).map_err(backend)?,
            claim: None,
        })
    })())
}

fn insert_event(conn: &Connection, e: &EventRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (event_id, shop_id, merchant_id, payment_id, event_type, body, status,
         attempts, next_attempt_at, created_at, delivered_at, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .map_err(backend)?
    .execute(params![
        e.event_id,
        e.shop_id,
        e.merchant_id,
        e.payment_id,
        e.event_type.as_str(),
        e.body,
        e.status.as_str(),
        e.attempts,
        e.next_attempt_at,
        e.created_at,
        e.delivered_at,
        e.last_error,
    ])
    .map_err(backend)?;
    Ok(())
}

fn get_event(conn: &Connection, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?1"),
        params![event_id],
        read_event,
    )
    .optional()
    .map_err(backend)?
    .transpose()
}

fn collect<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T, StoreError>>>,
) -> Result<Vec<T>, StoreError> {
    rows.map(|r| r.map_err(backend).and_then(|rec| rec))
        .collect()
}

const REFUND_COLUMNS: &str = "refund_id, merchant_id, shop_id, out_trade_no, out_refund_no, payment_id, channel, amount, reason, status, provider_refund_no, request_hash, error_code, error_message, attempt_until, created_at, updated_at, succeeded_at, version";

fn read_refund(row: &Row) -> rusqlite::Result<Result<RefundRecord, StoreError>> {
    let amount: i64 = row.get(7)?;
    let status: String = row.get(9)?;
    Ok((|| {
        Ok(RefundRecord {
            refund_id: row.get(0).map_err(backend)?,
            merchant_id: row.get(1).map_err(backend)?,
            shop_id: row.get(2).map_err(backend)?,
            out_trade_no: row.get(3).map_err(backend)?,
            out_refund_no: row.get(4).map_err(backend)?,
            payment_id: row.get(5).map_err(backend)?,
            channel: row.get(6).map_err(backend)?,
            amount: u64::try_from(amount)
                .map_err(|_| StoreError::Corrupt(format!("refund amount {amount}")))?,
            reason: row.get(8).map_err(backend)?,
            status: RefundStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("refund status {status}")))?,
            provider_refund_no: row.get(10).map_err(backend)?,
            request_hash: row.get(11).map_err(backend)?,
            error_code: failure(row.get(12).map_err(backend)?)?,
            error_message: row.get(13).map_err(backend)?,
            attempt_until: row.get(14).map_err(backend)?,
            created_at: row.get(15).map_err(backend)?,
            updated_at: row.get(16).map_err(backend)?,
            succeeded_at: row.get(17).map_err(backend)?,
            version: row.get(18).map_err(backend)?,
        })
    })())
}

fn get_refund(
    conn: &Connection,
    merchant_id: &str,
    out_refund_no: &str,
) -> Result<Option<RefundRecord>, StoreError> {
    conn.query_row(
        &format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant_id = ?1 AND out_refund_no = ?2"
        ),
        params![merchant_id, out_refund_no],
        read_refund,
    )
    .optional()
    .map_err(backend)?
    .transpose()
}

/// The payments columns in [`read_row`]'s order (a macro, so that the hot statements are
/// string literals the statement cache keys on without a `format!`).
macro_rules! payment_columns {
    () => {
        "payment_id, merchant_id, shop_id, out_trade_no, amount, currency, method, status, channel, rule, action, provider_trade_no, refunded_amount, request_hash, request, error_code, error_message, attempt_until, created_at, updated_at, paid_at, expires_at, version, account, late"
    };
}
const COLUMNS: &str = payment_columns!();

impl SqliteStore {
    /// Opens (or creates) the file, counting into metrics registered nowhere.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let metrics = StoreMetrics::new(&prometheus::Registry::new())
            .map_err(|e| StoreError::Backend(format!("metrics: {e}")))?;
        SqliteStore::open_counted(path, metrics).await
    }

    pub async fn open_counted(
        path: &Path,
        metrics: StoreMetrics,
    ) -> Result<SqliteStore, StoreError> {
        let at = path.to_path_buf();
        let (conn, readers) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = at.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
            }
            let conn = open_connection(&at)?;
            conn.execute_batch(SCHEMA).map_err(backend)?;
            migrate(&conn)?;
            let readers = (0..readers())
                .map(|_| open_connection(&at))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>((conn, readers))
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        // The readers first: the writer waits for them to close before it closes.
        let readers = Readers::start(readers)?;
        let (writer, jobs) = std::sync::mpsc::channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let (counted, health, queue) =
            (metrics.commits.clone(), healthy.clone(), readers.0.clone());
        std::thread::Builder::new()
            .name("payroute-sqlite-writer".into())
            .spawn(move || writer_loop(conn, jobs, counted, health, queue))
            .map_err(|e| StoreError::Backend(format!("starting the writer: {e}")))?;
        Ok(SqliteStore {
            writer,
            metrics,
            healthy,
            readers,
            claims: CheckClaims::default(),
        })
    }

    /// Hands out `due` with a fresh claim each, the latest on its record from now on.
    fn claim<T>(
        &self,
        of: CheckOf,
        due: Vec<T>,
        id: impl Fn(&T) -> String,
    ) -> Result<Vec<Due<T>>, StoreError> {
        let token = claim_token()?;
        let mut claims = lock(&self.claims);
        Ok(due
            .into_iter()
            .map(|record| {
                let claim = CheckClaim::new(of, id(&record), token.clone());
                claims.insert((of, claim.id.clone()), token.clone());
                Due { record, claim }
            })
            .collect())
    }

    /// Writes a record's next check: under `claim` only while it is the record's latest
    /// (whether it was written); without one always, ending any claim. `None` for an open
    /// record becomes [`super::OPEN_RECHECK`] from now.
    async fn write_check(
        &self,
        of: CheckOf,
        id: &str,
        at: Option<i64>,
        claim: Option<CheckClaim>,
    ) -> Result<bool, StoreError> {
        let (table, id_column, open) = of.table();
        let sql = format!(
            "UPDATE {table} SET next_check_at = CASE WHEN ?2 IS NULL AND {open} THEN ?3 ELSE ?2 END
             WHERE {id_column} = ?1"
        );
        let (id, claims, backstop) = (id.to_string(), self.claims.clone(), open_recheck_at());
        self.write(move |conn| {
            let key = (of, id);
            if let Some(claim) = &claim {
                if lock(&claims).get(&key) != Some(&claim.token) {
                    return Ok(false);
                }
            }
            conn.prepare_cached(&sql)
                .map_err(backend)?
                .execute(params![key.1, at, backstop])
                .map_err(backend)?;
            lock(&claims).remove(&key);
            Ok(true)
        })
        .await
    }

    /// Transactions committed so far (one per batch of writes).
    pub fn commits(&self) -> u64 {
        self.metrics.commits.get()
    }

    /// Runs `f` on the writer's connection, in the next batch; answers after its commit.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(Write { f, tx });
        self.metrics.writes.inc();
        let started = tokio::time::Instant::now();
        self.writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        let answer = rx
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        self.metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    /// Runs `f` on a reader thread's connection (never blocking a tokio worker).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.readers.submit(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        }));
        rx.await
            // Only a read that panicked drops its answer: a bug to report (500), not a store
            // that is away (a 503 would invite retrying the same read for ever).
            .map_err(|_| StoreError::Backend("a store read failed (panicked)".into()))?
    }
}

/// SQLite's error, sorted: what the disk or the OS refused is `Unavailable` (retryable, and
/// `/readyz` says so); the rest is a bug or bad data.
fn backend(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DiskFull
            | SystemIoFailure
            | CannotOpen
            | ReadOnly
            | DatabaseBusy
            | DatabaseLocked
            | OutOfMemory
            | FileLockingProtocolFailed
            | PermissionDenied,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn read_row(row: &Row) -> rusqlite::Result<Result<PaymentRecord, StoreError>> {
    let method: String = row.get(6)?;
    let status: String = row.get(7)?;
    let action: Option<String> = row.get(10)?;
    let request: String = row.get(14)?;
    let amount: i64 = row.get(4)?;
    let refunded: i64 = row.get(12)?;
    let build = || -> Result<PaymentRecord, StoreError> {
        Ok(PaymentRecord {
            payment_id: row.get(0).map_err(backend)?,
            merchant_id: row.get(1).map_err(backend)?,
            shop_id: row.get(2).map_err(backend)?,
            out_trade_no: row.get(3).map_err(backend)?,
            amount: u64::try_from(amount)
                .map_err(|_| StoreError::Corrupt(format!("amount {amount}")))?,
            currency: row.get(5).map_err(backend)?,
            method: Method::parse(&method)
                .ok_or_else(|| StoreError::Corrupt(format!("method {method}")))?,
            status: PaymentStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
            channel: row.get(8).map_err(backend)?,
            rule: row.get(9).map_err(backend)?,
            action: action
                .map(|a| serde_json::from_str(&a))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("action: {e}")))?,
            provider_trade_no: row.get(11).map_err(backend)?,
            refunded_amount: u64::try_from(refunded)
                .map_err(|_| StoreError::Corrupt(format!("refunded {refunded}")))?,
            request_hash: row.get(13).map_err(backend)?,
            request: serde_json::from_str(&request)
                .map_err(|e| StoreError::Corrupt(format!("request: {e}")))?,
            error_code: failure(row.get(15).map_err(backend)?)?,
            error_message: row.get(16).map_err(backend)?,
            attempt_until: row.get(17).map_err(backend)?,
            created_at: row.get(18).map_err(backend)?,
            updated_at: row.get(19).map_err(backend)?,
            paid_at: row.get(20).map_err(backend)?,
            expires_at: row.get(21).map_err(backend)?,
            version: row.get(22).map_err(backend)?,
            account: parse_account(row.get(23).map_err(backend)?)?,
            late: row.get(24).map_err(backend)?,
        })
    };
    Ok(build())
}

fn get(
    conn: &Connection,
    merchant_id: &str,
    out_trade_no: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE merchant_id = ?1 AND out_trade_no = ?2"
    ))
    .map_err(backend)?
    .query_row(params![merchant_id, out_trade_no], read_row)
    .optional()
    .map_err(backend)?
    .transpose()
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_payment(&self, p: &PaymentRecord) -> Result<Option<PaymentRecord>, StoreError> {
        let p = p.clone();
        self.write(move |conn| {
            if let Some(existing) = get(conn, &p.merchant_id, &p.out_trade_no)? {
                return Ok(Some(existing));
            }
            conn.prepare_cached(
                // Due for reconciliation at once: the worker sets the real first check.
                concat!("INSERT INTO payments (", payment_columns!(), ", next_check_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?19)"),
            )
            .map_err(backend)?
            .execute(params![
                    p.payment_id, p.merchant_id, p.shop_id, p.out_trade_no, p.amount as i64, p.currency,
                    p.method.as_str(), p.status.as_str(), p.channel, p.rule,
                    p.action.as_ref().map(|a| a.to_string()), p.provider_trade_no, p.refunded_amount as i64,
                    p.request_hash, p.request.to_string(), p.error_code.map(|c| c.as_str()), p.error_message,
                    p.attempt_until, p.created_at, p.updated_at, p.paid_at, p.expires_at, p.version,
                    account_json(&p.account), p.late,
                ],
            )
            .map_err(backend)?;
            Ok(None)
        })
        .await
    }

    async fn get_payment(
        &self,
        merchant_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        let (m, o) = (merchant_id.to_string(), out_trade_no.to_string());
        self.read(move |conn| get(conn, &m, &o)).await
    }

    async fn update_payment_emitting(
        &self,
        p: &mut PaymentRecord,
        event: Option<&EventRecord>,
    ) -> Result<bool, StoreError> {
        let rec = p.clone();
        let event = event.cloned();
        let updated = self
            .write(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE payments SET status = ?1, channel = ?2, rule = ?3, action = ?4, provider_trade_no = ?5,
                         refunded_amount = ?6, error_code = ?7, error_message = ?8, attempt_until = ?9, updated_at = ?10,
                         paid_at = ?11, account = ?14, late = ?15, version = version + 1
                         WHERE payment_id = ?12 AND version = ?13",
                    )
                    .map_err(backend)?
                    .execute(params![
                            rec.status.as_str(), rec.channel, rec.rule, rec.action.as_ref().map(|a| a.to_string()),
                            rec.provider_trade_no, rec.refunded_amount as i64, rec.error_code.map(|c| c.as_str()),
                            rec.error_message, rec.attempt_until, rec.updated_at, rec.paid_at, rec.payment_id,
                            rec.version, account_json(&rec.account), rec.late,
                        ],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    if let Some(e) = &event {
                        insert_event(conn, e)?;
                    }
                }
                Ok(n == 1)
            })
            .await?;
        if updated {
            p.version += 1;
        }
        Ok(updated)
    }

    async fn payments_by_trade_no(
        &self,
        out_trade_no: &str,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let no = out_trade_no.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM payments WHERE out_trade_no = ?1 ORDER BY created_at, payment_id"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map(params![no], read_row).map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn list_payments(
        &self,
        filter: &PaymentFilter,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        let f = filter.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM payments
                     WHERE (?1 IS NULL OR merchant_id = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR created_at >= ?3)
                       AND (?4 IS NULL OR created_at < ?4)
                       AND (?5 IS NULL OR created_at < ?5 OR (created_at = ?5 AND payment_id < ?6))
                     ORDER BY created_at DESC, payment_id DESC LIMIT ?7"
                ))
                .map_err(backend)?;
            let (after_at, after_id) = f.after.clone().unzip();
            let rows = stmt
                .query_map(
                    params![
                        f.merchant_id,
                        f.status.map(|s| s.as_str()),
                        f.since,
                        f.until,
                        after_at,
                        after_id,
                        f.limit
                    ],
                    read_row,
                )
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(|rec| rec)).collect()
        })
        .await
    }

    async fn list_refunds(&self, filter: &RefundFilter) -> Result<Vec<RefundRecord>, StoreError> {
        let f = filter.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds
                     WHERE (?1 IS NULL OR merchant_id = ?1) AND (?2 IS NULL OR status = ?2)
                     ORDER BY created_at DESC LIMIT ?3"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![f.merchant_id, f.status.map(|s| s.as_str()), f.limit],
                    read_refund,
                )
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(|rec| rec))
                .collect()
        })
        .await
    }

    async fn open_by_account(&self) -> Result<Vec<OpenAtAccount>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT channel, account, SUM(open_payment), SUM(open_refunds) FROM (
                       SELECT channel, account, status IN ('pending', 'unknown') AS open_payment,
                              (SELECT COUNT(*) FROM refunds r WHERE r.payment_id = p.payment_id
                                 AND r.status IN ('pending', 'abnormal')) AS open_refunds
                       FROM payments p WHERE status IN ('pending', 'unknown', 'succeeded'))
                     GROUP BY channel, account HAVING SUM(open_payment) + SUM(open_refunds) > 0",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|r| {
                let (channel, account, payments, refunds) = r.map_err(backend)?;
                Ok(OpenAtAccount {
                    channel,
                    account: parse_account(account)?,
                    payments: payments.max(0) as u64,
                    refunds: refunds.max(0) as u64,
                })
            })
            .collect()
        })
        .await
    }

    async fn reserve_refund(&self, r: &RefundRecord, paid: u64) -> Result<Reservation, StoreError> {
        let r = r.clone();
        self.write(move |conn| {
            // The one writer runs writes one after another: two refunds cannot both pass the
            // guard.
            if let Some(existing) = get_refund(conn, &r.merchant_id, &r.out_refund_no)? {
                return Ok(Reservation::Exists(Box::new(existing)));
            }
            let taken: i64 = conn
                .query_row(
                    "SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = ?1 AND status IN ('pending', 'succeeded', 'abnormal')",
                    params![r.payment_id],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            let available = paid.saturating_sub(taken.max(0) as u64);
            if r.amount > available {
                return Ok(Reservation::Exceeds { available });
            }
            conn.execute(
                &format!("INSERT INTO refunds ({REFUND_COLUMNS}, next_check_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?16)"),
                params![
                    r.refund_id, r.merchant_id, r.shop_id, r.out_trade_no, r.out_refund_no, r.payment_id,
                    r.channel, r.amount as i64, r.reason, r.status.as_str(), r.provider_refund_no,
                    r.request_hash, r.error_code.map(|c| c.as_str()), r.error_message, r.attempt_until, r.created_at,
                    r.updated_at, r.succeeded_at, r.version,
                ],
            )
            .map_err(backend)?;
            Ok(Reservation::Reserved)
        })
        .await
    }

    async fn get_refund(
        &self,
        merchant_id: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let (m, o) = (merchant_id.to_string(), out_refund_no.to_string());
        self.read(move |conn| get_refund(conn, &m, &o)).await
    }

    async fn update_refund_emitting(
        &self,
        r: &mut RefundRecord,
        event: Option<&EventRecord>,
    ) -> Result<bool, StoreError> {
        let rec = r.clone();
        let event = event.cloned();
        let updated = self
            .write(move |conn| {
                let n = conn
                    .execute(
                        "UPDATE refunds SET status = ?1, provider_refund_no = ?2, error_code = ?3, error_message = ?4,
                         attempt_until = ?5, updated_at = ?6, succeeded_at = ?7, version = version + 1
                         WHERE refund_id = ?8 AND version = ?9",
                        params![
                            rec.status.as_str(), rec.provider_refund_no, rec.error_code.map(|c| c.as_str()), rec.error_message,
                            rec.attempt_until, rec.updated_at, rec.succeeded_at, rec.refund_id, rec.version,
                        ],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    conn.execute(
                        "UPDATE payments SET refunded_amount = (SELECT COALESCE(SUM(amount), 0) FROM refunds
                         WHERE payment_id = ?1 AND status = 'succeeded'), updated_at = ?2, version = version + 1
                         WHERE payment_id = ?1",
                        params![rec.payment_id, rec.updated_at],
                    )
                    .map_err(backend)?;
                    if let Some(e) = &event {
                        insert_event(conn, e)?;
                    }
                }
                Ok(n == 1)
            })
            .await?;
        if updated {
            r.version += 1;
        }
        Ok(updated)
    }

    async fn due_events(
        &self,
        now: i64,
        limits: &DueLimits,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let limits = limits.clone();
        self.read(move |conn| {
            // One process, one outbox: nothing is claimed, what the caller holds is left out.
            let holding = serde_json::to_string(&limits.holding)
                .map_err(|e| StoreError::Backend(format!("held events: {e}")))?;
            // The shops with pending events, one index probe each (a loose index scan), then
            // each shop's oldest due heads up to its free slots: a shop's backlog is never
            // read past its slots, and never takes another shop's places.
            let shops = {
                let mut stmt = conn
                    .prepare_cached(
                        "WITH RECURSIVE shops(shop_id) AS (
                           SELECT (SELECT MIN(shop_id) FROM events WHERE status = 'pending')
                           UNION ALL
                           SELECT (SELECT MIN(e.shop_id) FROM events e
                                   WHERE e.status = 'pending' AND e.shop_id > shops.shop_id)
                           FROM shops WHERE shops.shop_id IS NOT NULL)
                         SELECT shop_id FROM shops WHERE shop_id IS NOT NULL",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| row.get::<_, String>(0))
                    .map_err(backend)?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
                    .map_err(backend)?
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e
                     WHERE e.status = 'pending' AND e.shop_id = ?1 AND e.next_attempt_at <= ?2
                       AND e.seq = (SELECT MIN(x.seq) FROM events x
                                    WHERE x.payment_id = e.payment_id AND x.status = 'pending')
                       AND e.event_id NOT IN (SELECT value FROM json_each(?4))
                     ORDER BY e.next_attempt_at, e.seq LIMIT ?3"
                ))
                .map_err(backend)?;
            let mut due = Vec::new();
            for shop in shops {
                let free = limits.free(&shop).min(limits.total);
                if free == 0 {
                    continue;
                }
                let rows = stmt
                    .query_map(params![shop, now, free, holding], read_event)
                    .map_err(backend)?;
                due.extend(collect(rows)?);
            }
            due.sort_by_key(|e| (e.next_attempt_at, e.seq));
            due.truncate(limits.total as usize);
            Ok(due)
        })
        .await
    }

    async fn record_delivery(
        &self,
        event: &EventRecord,
        delivery: Delivery,
    ) -> Result<bool, StoreError> {
        // No claims here (one process): the caller's claim token is trivially its own.
        let id = event.event_id.clone();
        self.write(move |conn| {
            let n = match delivery {
                Delivery::Delivered { at } => conn.execute(
                    "UPDATE events SET status = 'delivered', attempts = attempts + 1, delivered_at = ?2,
                     last_error = NULL WHERE event_id = ?1 AND status = 'pending'",
                    params![id, at],
                ),
                Delivery::Retry { next_attempt_at, error } => conn.execute(
                    "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
                     WHERE event_id = ?1 AND status = 'pending'",
                    params![id, next_attempt_at, error],
                ),
                Delivery::Dead { error } => conn.execute(
                    "UPDATE events SET status = 'dead', attempts = attempts + 1, last_error = ?2
                     WHERE event_id = ?1 AND status = 'pending'",
                    params![id, error],
                ),
            }
            .map_err(backend)?;
            if n == 0 {
                tracing::debug!(event_id = %id, "delivery recorded for an event no longer pending");
            }
            Ok(n == 1)
        })
        .await
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        let f = filter.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events
                     WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR merchant_id = ?2)
                     ORDER BY seq DESC LIMIT ?3"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![f.status.map(|s| s.as_str()), f.merchant_id, f.limit],
                    read_event,
                )
                .map_err(backend)?;
            collect(rows)
        })
        .await
    }

    async fn resend_event(&self, event_id: &str, now: i64) -> Result<Resend, StoreError> {
        let id = event_id.to_string();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                     delivered_at = NULL WHERE event_id = ?1 AND status <> 'pending'",
                    params![id, now],
                )
                .map_err(backend)?;
            Ok(match get_event(conn, &id)? {
                Some(e) if n == 1 => Resend::Resent(e),
                Some(e) => Resend::Pending(e),
                None => Resend::Unknown,
            })
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM events WHERE status = 'pending'),
                        (SELECT MIN(created_at) FROM events WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM events WHERE status = 'dead')",
                [],
                |row| {
                    Ok(OutboxStats {
                        pending: row.get::<_, i64>(0)?.max(0) as u64,
                        oldest_pending_created_at: row.get(1)?,
                        dead: row.get::<_, i64>(2)?.max(0) as u64,
                    })
                },
            )
            .map_err(backend)
        })
        .await
    }

    async fn claim_due_payments(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Due<PaymentRecord>>, StoreError> {
        let due = self
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM payments
                         WHERE next_check_at <= ?1
                           AND (status IN ('pending', 'unknown', 'closed', 'failed') OR late = 1)
                         ORDER BY next_check_at LIMIT ?2"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![now, limit], read_row)
                    .map_err(backend)?;
                collect(rows)
            })
            .await?;
        self.claim(CheckOf::Payment, due, |p| p.payment_id.clone())
    }

    async fn claim_due_refunds(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Due<RefundRecord>>, StoreError> {
        let due = self
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {REFUND_COLUMNS} FROM refunds
                         WHERE next_check_at <= ?1 AND {OPEN_REFUND}
                         ORDER BY next_check_at LIMIT ?2"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![now, limit], read_refund)
                    .map_err(backend)?;
                collect(rows)
            })
            .await?;
        self.claim(CheckOf::Refund, due, |r| r.refund_id.clone())
    }

    async fn schedule_claimed_check(
        &self,
        claim: &CheckClaim,
        at: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.write_check(claim.of, &claim.id, at, Some(claim.clone()))
            .await
    }

    async fn schedule_payment_check(
        &self,
        payment_id: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write_check(CheckOf::Payment, payment_id, at, None)
            .await
            .map(|_| ())
    }

    async fn schedule_refund_check(
        &self,
        refund_id: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write_check(CheckOf::Refund, refund_id, at, None)
            .await
            .map(|_| ())
    }

    async fn import_event(&self, e: &EventRecord) -> Result<bool, StoreError> {
        let e = e.clone();
        self.write(move |conn| {
            let there = conn
                .prepare_cached("SELECT 1 FROM events WHERE event_id = ?1")
                .map_err(backend)?
                .query_row([&e.event_id], |_| Ok(()))
                .optional()
                .map_err(backend)?
                .is_some();
            if there {
                return Ok(false);
            }
            insert_event(conn, &e)?;
            Ok(true)
        })
        .await
    }

    async fn rebind_legacy_sellers(
        &self,
        merchant_id: &str,
        seller_id: &str,
    ) -> Result<u64, StoreError> {
        let (merchant, seller) = (merchant_id.to_string(), seller_id.to_string());
        self.write(move |conn| {
            let rows = conn
                .prepare(&format!(
                    "SELECT payment_id, account FROM payments WHERE merchant_id = ?1 AND {LEGACY_SELLER_FILTER}"
                ))
                .map_err(backend)?
                .query_map(params![merchant], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            let mut rebound = 0;
            for (id, old) in rows {
                if let Some(new) = rebound_seller(&old, &seller)? {
                    rebound += conn
                        .execute(
                            "UPDATE payments SET account = ?2, version = version + 1
                             WHERE payment_id = ?1 AND account = ?3",
                            params![id, new, old],
                        )
                        .map_err(backend)? as u64;
                }
            }
            Ok(rebound)
        })
        .await
    }

    /// While the last write failed on I/O, a write that needs new space proves it is back:
    /// a probe row of [`PROBE_BYTES`], written and then deleted (each its own commit, so
    /// the space is really taken). Otherwise a read.
    fn writes_ok(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.healthy.load(Ordering::Relaxed) {
            return self
                .read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
                .await;
        }
        self.write(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO probe (id, pad) VALUES (1, zeroblob(?1))",
                [PROBE_BYTES],
            )
            .map_err(backend)
        })
        .await?;
        self.write(|conn| conn.execute("DELETE FROM probe", []).map_err(backend))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Account;

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
            .execute_batch("ALTER TABLE payments DROP COLUMN late")
            .unwrap();
        let store = SqliteStore::open(&path).await.unwrap();
        let mut p = store.get_payment("m_1", "old").await.unwrap().unwrap();
        assert!(!p.late);
        p.status = PaymentStatus::Succeeded;
        p.late = true;
        assert!(store.update_payment(&mut p).await.unwrap());
        assert!(store.get_payment("m_1", "old").await.unwrap().unwrap().late);
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

    // The store's behaviour is tested in tests/store_suite.rs, against both stores; what
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
            let job = tokio::task::block_in_place(|| {
                jobs.recv_timeout(std::time::Duration::from_secs(5))
            })
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
        let (seen, _, commits) =
            one_batch_on_a_full_file(&["a", "b-large", "c", "e-large", "f"]).await;
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
}
