//! The reader threads: a queue of reads, each taken by the next idle reader on its own
//! connection.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::store::StoreError;

/// One read waiting for a reader thread; it answers its caller itself.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The reader threads' queue. Threads of their own rather than `spawn_blocking`: a read is
/// then one boxed closure and a oneshot, not a blocking-pool task, a join handle, a permit
/// and a connection taken from and put back into a locked pool; and a reader that finishes
/// a read takes the next one queued without being woken for it.
pub(super) struct ReadQueue {
    pub(super) state: Mutex<ReadState>,
    pub(super) ready: Condvar,
    /// Signalled as each reader thread exits, its connection closed (see [`super::writer::writer_loop`]).
    pub(super) exited: Condvar,
}

#[derive(Default)]
pub(super) struct ReadState {
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
pub(super) struct Readers(pub(super) Arc<ReadQueue>);

impl Readers {
    pub(super) fn start(connections: Vec<Connection>) -> Result<Readers, StoreError> {
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

    pub(super) fn submit(&self, job: ReadJob) {
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
    pub(super) fn wait_for_readers(&self) {
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

/// Reader threads, each with its connection, one per core between these bounds. Reads are
/// CPU work on cached pages: more readers than cores add no throughput, and each costs a
/// malloc arena and a page cache (RSS); two at least, so that a point read passes a long
/// one (an export page).
const MIN_READERS: usize = 2;
pub(super) const MAX_READERS: usize = 8;

pub(super) fn readers() -> usize {
    std::thread::available_parallelism()
        .map_or(MIN_READERS, |n| n.get())
        .clamp(MIN_READERS, MAX_READERS)
}
