//! Time a request spends waiting on channels (the wire and retry backoff), so that the API can
//! report payroute's own cost apart from the providers' (`payroute_overhead_seconds`).

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static WAITED: Cell<Duration>;
}

/// Runs `f`, returning its output and the time it spent in [`waiting`] sections.
///
/// # Limits
/// Counts only waits on the task that runs `f`; work handed to other tasks is not seen.
pub async fn measured<F: Future>(f: F) -> (F::Output, Duration) {
    WAITED
        .scope(Cell::new(Duration::ZERO), async {
            let out = f.await;
            (out, WAITED.with(Cell::get))
        })
        .await
}

/// Runs `f` as time spent waiting on a channel (outside a [`measured`] scope: just runs it).
pub(crate) async fn waiting<F: Future>(f: F) -> F::Output {
    let started = tokio::time::Instant::now();
    let out = f.await;
    let _ = WAITED.try_with(|w| w.set(w.get() + started.elapsed()));
    out
}
