//! The embedded store: one SQLite file in WAL mode, one writer thread with group commit, a
//! few reader threads, each with its own connection (see [`SqliteStore`]).

mod readers;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::codec::{self, payment_columns, Cells, EVENT_COLUMNS, REFUND_COLUMNS};
use super::{CheckOf, EventRecord, PaymentRecord, RefundRecord, StoreError, StoreMetrics};
use readers::{readers, Readers};
use writer::{writer_loop, Job, Write};

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
    pub(super) healthy: Arc<AtomicBool>,
    readers: Readers,
    /// The latest claim on each due check handed out, by record: in memory, so that handing
    /// checks out stays a plain read (a store that cannot write still answers it).
    pub(super) claims: CheckClaims,
}

/// The latest claim token on each record's check ([`Store::schedule_claimed_check`]).
///
/// # Limits
/// An entry lives from its check being handed out to its next check being written (by its
/// holder or by a payment flow); one whose holder never wrote stays until the record is
/// handed out again. Kept by the writer thread's closures, so a check of a claim and its
/// write are one step among the writes.
pub(super) type CheckClaims = Arc<Mutex<HashMap<(CheckOf, String), String>>>;

/// The claims, past a poisoned lock: only plain map operations run under it.
pub(super) fn lock(claims: &CheckClaims) -> MutexGuard<'_, HashMap<(CheckOf, String), String>> {
    claims.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
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

pub(super) fn insert_event(conn: &Connection, e: &EventRecord) -> Result<(), StoreError> {
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

pub(super) fn get_event(
    conn: &Connection,
    event_id: &str,
) -> Result<Option<EventRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?1"),
        params![event_id],
        read_event,
    )
    .optional()
    .map_err(backend)?
    .transpose()
}

pub(super) fn collect<T>(
    rows: impl Iterator<Item = rusqlite::Result<Result<T, StoreError>>>,
) -> Result<Vec<T>, StoreError> {
    rows.map(|r| r.map_err(backend).and_then(|rec| rec))
        .collect()
}

pub(super) fn get_refund(
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
            schema::migrate_sqlite(&conn)?;
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

    /// Transactions committed so far (one per batch of writes).
    pub fn commits(&self) -> u64 {
        self.metrics.commits.get()
    }

    /// Runs `f` on the writer's connection, in the next batch; answers after its commit.
    pub(super) async fn write<T: Send + 'static>(
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
    pub(super) async fn read<T: Send + 'static>(
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
pub(super) fn backend(e: rusqlite::Error) -> StoreError {
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

pub(super) fn get(
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

// The decoders of codec.rs, in the shape rusqlite's `query_row`/`query_map` take: a decoding
// failure is the record's own error, not the statement's.

pub(super) fn read_row(row: &Row) -> rusqlite::Result<Result<PaymentRecord, StoreError>> {
    Ok(codec::read_payment(row))
}

pub(super) fn read_refund(row: &Row) -> rusqlite::Result<Result<RefundRecord, StoreError>> {
    Ok(codec::read_refund(row))
}

pub(super) fn read_event(row: &Row) -> rusqlite::Result<Result<EventRecord, StoreError>> {
    Ok(codec::read_event(row))
}

impl Cells for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.get(i).map_err(backend)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).map_err(backend)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.get(i).map_err(backend)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).map_err(backend)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        self.get(i).map_err(backend)
    }
}
