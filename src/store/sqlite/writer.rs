//! The writer thread and its group commit (see [`writer_loop`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::Connection;

use super::backend;
use super::readers::ReadQueue;
use crate::store::StoreError;

/// One write waiting for the writer.
pub(super) type Job = Box<dyn WriteJob>;
/// Answers a write's caller once its batch's commit is known (`Some`: it failed).
pub(super) type Answer = Box<dyn FnOnce(Option<StoreError>) + Send>;

pub(super) trait WriteJob: Send {
    /// Runs on the writer's connection inside the job's savepoint: how it failed, if it did,
    /// and what answers the caller after the commit.
    fn run(self: Box<Self>, conn: &Connection) -> (Option<StoreError>, Answer);
    /// The batch could not even begin: answer with its error, nothing ran.
    fn refuse(self: Box<Self>, error: StoreError);
}

pub(super) struct Write<T, F> {
    pub(super) f: F,
    pub(super) tx: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
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
pub(super) fn writer_loop(
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
