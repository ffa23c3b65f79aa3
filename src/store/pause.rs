//! A background worker's pause while the store cannot write (ARCHITECTURE.md, "Background work
//! under trouble"): the outbox and the reconciler read due work and must record what they did; with
//! reads working and writes failing (disk full, read-only file, I/O error, a standby), every round
//! would find the same work due again and redo it — a resend storm at the shops, a query storm at
//! the channels.
//!
//! A worker asks [`Pause::may_run`] before each round and tells [`Pause::saw`] every store
//! error it meets. Once the store is seen unhealthy (the worker's own write failed as
//! `Unavailable`, or the store itself says its last write failed), rounds are skipped — and
//! counted — until [`Reports::ping`](super::Reports::ping) (the same writable check `/readyz` makes) succeeds again.
//!
//! # Limits
//! - The pause covers whole rounds. A single item whose write failed while the store still
//!   looked healthy is the worker's own business (it keeps a "not before" for it in memory).
//! - While paused the worker pings once per round (its poll interval), no more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, Opts, Registry};

use super::{Reports, StoreError};

/// One worker's pause, with its two metrics (`worker` label: its name).
pub struct Pause {
    store: Arc<dyn Reports>,
    worker: &'static str,
    paused: AtomicBool,
    paused_gauge: IntGauge,
    skipped: IntCounter,
}

impl Pause {
    /// `worker` names it in logs and in the `worker` label of
    /// `payroute_worker_paused{worker}` and `payroute_worker_rounds_skipped_total{worker}`.
    pub fn new(
        store: Arc<dyn Reports>,
        worker: &'static str,
        registry: &Registry,
    ) -> prometheus::Result<Pause> {
        let paused_gauge = IntGauge::with_opts(
            Opts::new(
                "payroute_worker_paused",
                "1 while a background worker is paused because the store cannot write.",
            )
            .const_label("worker", worker),
        )?;
        let skipped = IntCounter::with_opts(
            Opts::new(
                "payroute_worker_rounds_skipped_total",
                "Rounds a background worker skipped because the store could not write.",
            )
            .const_label("worker", worker),
        )?;
        registry.register(Box::new(paused_gauge.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        Ok(Pause {
            store,
            worker,
            paused: AtomicBool::new(false),
            paused_gauge,
            skipped,
        })
    }

    /// Whether the worker may run a round now. While paused (or once the store says its last
    /// write failed), a writable check decides: it resumes the worker, or the round is
    /// skipped and counted.
    pub async fn may_run(&self) -> bool {
        if !self.paused.load(Ordering::Relaxed) && self.store.writes_ok() {
            return true;
        }
        match self.store.ping().await {
            Ok(()) => {
                if self.paused.swap(false, Ordering::Relaxed) {
                    tracing::info!(worker = self.worker, "store writable again: worker resumed");
                }
                self.paused_gauge.set(0);
                true
            }
            Err(e) => {
                self.pause(&e);
                self.skipped.inc();
                false
            }
        }
    }

    /// Tells the pause of a store error the worker met: one that says the store cannot serve
    /// now pauses the worker from its next round.
    pub fn saw(&self, e: &StoreError) {
        if e.is_unavailable() {
            self.pause(e);
        }
    }

    /// Whether the worker is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    fn pause(&self, e: &StoreError) {
        if !self.paused.swap(true, Ordering::Relaxed) {
            tracing::warn!(worker = self.worker, error = %e, "store cannot write: worker paused until it can");
        }
        self.paused_gauge.set(1);
    }
}
