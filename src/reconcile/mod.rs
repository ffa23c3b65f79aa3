//! The reconciliation worker (ARCHITECTURE.md, "Money rules": the reconciler's promise): no lost
//! orders. It asks the bound account about every payment still `pending` or `unknown` and every
//! refund still `pending` or `abnormal`, on a schedule by age (`reconcile.tiers`), and closes
//! payments whose `expires_at` has passed. It changes state only through `payment`, so every change
//! emits the same shop event a notification would, and a "paid" answer to a close makes the payment
//! `succeeded`.
//!
//! # Limits
//! - The schedule lives in the store (`next_check_at`): a restart resumes it. Each check is
//!   claimed as it is handed out, and its next time is written under that claim only: on a
//!   store shared by several instances, one whose claim ran out (a stall past `store.lease`)
//!   while another instance took the check over writes nothing, and the other's schedule
//!   stands.
//! - Bounded concurrency; a channel whose breaker is open is not asked: the order is checked
//!   again when the breaker lets a probe through, or at its tier's time if that comes first
//!   (an order past the last tier waits the breaker's 30 s, not an hour); the channel's own
//!   limit applies to these calls too. When a breaker reopens, the orders that waited for it
//!   are due together: one is the probe, the others are refused by the half-open breaker and
//!   come back at their tier's interval.
//! - An open payment or refund is never dropped from the schedule: past the last tier it is
//!   checked at `expires_at` while that is ahead, then at the last tier's interval (hourly by
//!   default) until it ends; a refund still open then is logged for ops
//!   (`GET /admin/refunds`).
//! - A check whose next time the store did not take (the write failed) is held in memory until that
//!   time, so a store that reads but cannot write never makes the worker ask the channel every
//!   round (ARCHITECTURE.md, "Background work under trouble"): while it stays due it is not
//!   checked, only its next time written again (one store write per round, no channel call), and
//!   counted (`payroute_reconcile_actions_total{action="held"}`). The hold is per instance and
//!   forgotten on restart, when the stored schedule (on PostgreSQL also the claim's lease) governs
//!   again; a hold is dropped once its time has passed or its write went through, so at most the
//!   checks that failed within one interval are held.
//! - A payment that ended (`closed`, `failed`) is asked about once more, one tier interval
//!   after it ended (the interval of its age then): the provider may have taken a payment as
//!   the order closed (a *late payment*, `payment::late`), and its notification may be lost.
//! - A late payment is looked at until its refund (by policy) has reached the provider: a
//!   refund that could not be sent is sent again, with the same `out_refund_no`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clock::now_ms;
pub use crate::config::workers::{ReconcileSettings, Tier, DEFAULT_TIERS};
use crate::domain::{PaymentStatus, RefundStatus};
use crate::live::{Live, LiveConfig};
use crate::payment::{Asker, LateSettled, PaymentError, PaymentService};
use crate::store::pause::Pause;
use crate::store::{
    CheckClaim, CheckOf, Due, PaymentRecord, RefundRecord, Reports, Schedule, StoreError,
};

/// How often the worker looks for due checks.
const POLL: Duration = Duration::from_millis(500);
/// Due records taken per round.
const BATCH: u32 = 128;
/// A record with a call in flight is looked at again this much later.
const BUSY_RETRY_MS: i64 = 1_000;
pub struct Reconciler {
    live: Arc<LiveConfig>,
    payments: Arc<PaymentService>,
    /// The schedule: due checks claimed, next times written under their claim.
    /// The schedule of checks, and nothing else of the store.
    store: Arc<dyn Schedule>,
    actions: IntCounterVec,
    /// Skips rounds while the store cannot record a check (no query storm).
    pause: Pause,
    /// Checks whose next time the store did not take: not before then (module `# Limits`).
    held: Mutex<Held>,
}

/// Checks held in memory, by record id.
#[derive(Default)]
struct Held {
    payments: HashMap<String, HeldCheck>,
    refunds: HashMap<String, HeldCheck>,
}

/// A check whose next time the store did not take.
#[derive(Clone, Copy)]
struct HeldCheck {
    /// The next time as decided (`None`: no more checks), written again while held.
    next: Option<i64>,
    /// Not checked again before this.
    until: i64,
}

impl Held {
    fn of(&mut self, of: CheckOf) -> &mut HashMap<String, HeldCheck> {
        match of {
            CheckOf::Payment => &mut self.payments,
            CheckOf::Refund => &mut self.refunds,
        }
    }

    /// Drops the holds whose time has passed.
    fn prune(&mut self, now: i64) {
        self.payments.retain(|_, h| h.until > now);
        self.refunds.retain(|_, h| h.until > now);
    }

    /// Takes the held checks out of `due`: their claims, each with its next time to write
    /// again.
    fn take_held<T>(&mut self, due: &mut Vec<Due<T>>) -> Vec<(CheckClaim, HeldCheck)> {
        let mut again = Vec::new();
        let mut checked = Vec::with_capacity(due.len());
        for d in due.drain(..) {
            match self.of(d.claim.of).get(&d.claim.id) {
                Some(h) => again.push((d.claim, *h)),
                None => checked.push(d),
            }
        }
        *due = checked;
        again
    }
}

/// Every `action` the worker counts; a new one must be listed here to start at 0.
const ACTIONS: [&str; 8] = [
    "query",
    "close",
    "resolved",
    "busy",
    "breaker_open",
    "error",
    "late",
    "held",
];

impl Reconciler {
    pub fn new(
        live: Arc<LiveConfig>,
        payments: Arc<PaymentService>,
        store: Arc<dyn Schedule>,
        health: Arc<dyn Reports>,
        registry: &Registry,
    ) -> prometheus::Result<Reconciler> {
        let actions = IntCounterVec::new(
            Opts::new(
                "payroute_reconcile_actions_total",
                "What the reconciliation worker did: query, close, resolved (a final state learnt), late (an ended order found paid), busy, breaker_open, error, held (a due check passed over: its last schedule was not stored).",
            ),
            &["action"],
        )?;
        registry.register(Box::new(actions.clone()))?;
        // Each starts at 0: a panel shows 0 and a rate() alert sees the first one.
        for action in ACTIONS {
            actions.with_label_values(&[action]);
        }
        let pause = Pause::new(health, "reconcile", registry)?;
        Ok(Reconciler {
            live,
            payments,
            store,
            actions,
            pause,
            held: Mutex::default(),
        })
    }

    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = self.clone().round() => {}
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Checks everything due now, `reconcile.concurrency` at a time.
    pub async fn round(self: Arc<Self>) {
        if !self.pause.may_run().await {
            return;
        }
        let now = now_ms();
        let live = self.live.load();
        let settings = live.config.reconcile.clone();
        let store = &self.store;
        let (mut payments, mut refunds) = match (
            store.claim_due_payments(now, BATCH).await,
            store.claim_due_refunds(now, BATCH).await,
        ) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) | (_, Err(e)) => {
                self.pause.saw(&e);
                tracing::warn!(error = %e, "reconcile: cannot read due orders");
                return;
            }
        };
        let again = {
            let mut held = self.held();
            held.prune(now);
            let mut again = held.take_held(&mut payments);
            again.extend(held.take_held(&mut refunds));
            again
        };
        for (claim, held) in again {
            self.count("held");
            let stored = store.schedule_claimed_check(&claim, held.next).await;
            self.stored(&claim, held, stored);
        }
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for p in payments {
            let (me, live, settings, slots) =
                (self.clone(), live.clone(), settings.clone(), slots.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire().await;
                me.check_payment(&live, &settings, p).await;
            });
        }
        for r in refunds {
            let (me, live, settings, slots) =
                (self.clone(), live.clone(), settings.clone(), slots.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire().await;
                me.check_refund(&live, &settings, r).await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn check_payment(
        &self,
        live: &Live,
        settings: &ReconcileSettings,
        due: Due<PaymentRecord>,
    ) {
        let Due { record: p, claim } = due;
        let now = now_ms();
        let store = &self.store;
        let first = settings.first_check(p.created_at);
        let ended = matches!(p.status, PaymentStatus::Closed | PaymentStatus::Failed);
        let next = if p.late {
            self.settle_late(live, settings, &p, now).await
        } else if ended {
            self.check_ended(live, settings, &p, now).await
        } else if now < first {
            // Not yet checked: its first time comes one tier interval after creation.
            Some(first)
        } else if p.attempt_until.is_some_and(|t| t > now) {
            self.count("busy");
            Some(now + BUSY_RETRY_MS)
        } else if let Some(wait) = reopens_in(live, &p.channel) {
            self.count("breaker_open");
            Some(
                settings
                    .next_check(p.created_at, now, Some(p.expires_at))
                    .min(now + wait),
            )
        } else {
            let routes = live.routes();
            let expired = now >= p.expires_at;
            let result = if expired {
                self.count("close");
                self.payments
                    .close(&routes, Asker::Payroute, &p.merchant_id, &p.out_trade_no)
                    .await
            } else {
                self.count("query");
                self.payments
                    .get(
                        &routes,
                        Asker::Payroute,
                        &p.merchant_id,
                        &p.out_trade_no,
                        true,
                    )
                    .await
            };
            match result {
                Ok(rec) if rec.status.is_final() => {
                    self.count("resolved");
                    tracing::info!(payment_id = %rec.payment_id, status = rec.status.as_str(), "reconciled");
                    // An ended order gets its one more look (a late payment) later.
                    (rec.status != PaymentStatus::Succeeded)
                        .then(|| now + interval_at(settings, now - rec.created_at))
                }
                Ok(rec) => Some(settings.next_check(rec.created_at, now, Some(rec.expires_at))),
                // A paid order refused to close: it is `succeeded` now.
                Err(PaymentError::InvalidState { payment, .. })
                    if payment.status == PaymentStatus::Succeeded =>
                {
                    self.count("resolved");
                    None
                }
                Err(e) => {
                    self.count("error");
                    tracing::warn!(payment_id = %p.payment_id, error = %e, "reconcile: check failed; trying again later");
                    Some(settings.next_check(p.created_at, now, Some(p.expires_at)))
                }
            }
        };
        let stored = store.schedule_claimed_check(&claim, next).await;
        self.stored(&claim, hold(settings, next, now), stored);
    }

    /// The one more look at an ended order, one tier interval after it ended (`updated_at`):
    /// a payment the provider took as it closed makes it late (refunded by policy at once).
    async fn check_ended(
        &self,
        live: &Live,
        settings: &ReconcileSettings,
        p: &PaymentRecord,
        now: i64,
    ) -> Option<i64> {
        let at = p.updated_at + interval_at(settings, p.updated_at - p.created_at);
        if now < at {
            return Some(at);
        }
        // Ended longer ago than the tiers reach (closed before this check existed, say): a
        // payment now is beyond any provider's race, and asking about every old order at
        // once would flood the channels.
        if now - p.updated_at > last_until(settings) {
            return None;
        }
        if p.attempt_until.is_some_and(|t| t > now) {
            self.count("busy");
            return Some(now + BUSY_RETRY_MS);
        }
        if let Some(wait) = reopens_in(live, &p.channel) {
            self.count("breaker_open");
            return Some((now + interval_at(settings, now - p.created_at)).min(now + wait));
        }
        self.count("query");
        let routes = live.routes();
        match self
            .payments
            .get(
                &routes,
                Asker::Payroute,
                &p.merchant_id,
                &p.out_trade_no,
                true,
            )
            .await
        {
            Ok(rec) if rec.late => {
                self.count("late");
                self.settle_late(live, settings, &rec, now).await
            }
            // Still ended: that was its last look.
            Ok(_) => None,
            Err(e) => {
                self.count("error");
                tracing::warn!(payment_id = %p.payment_id, error = %e, "reconcile: check of an ended order failed; trying again later");
                Some(now + interval_at(settings, now - p.created_at))
            }
        }
    }

    /// A late payment's refund (by policy) is under way, or is sent again later.
    async fn settle_late(
        &self,
        live: &Live,
        settings: &ReconcileSettings,
        p: &PaymentRecord,
        now: i64,
    ) -> Option<i64> {
        match self.payments.settle_late(&live.routes(), p).await {
            LateSettled::Nothing | LateSettled::RefundSent(_) => None,
            LateSettled::RetryLater(_) => {
                self.count("error");
                Some(now + interval_at(settings, now - p.created_at))
            }
        }
    }

    async fn check_refund(
        &self,
        live: &Live,
        settings: &ReconcileSettings,
        due: Due<RefundRecord>,
    ) {
        let Due { record: r, claim } = due;
        let now = now_ms();
        let first = settings.first_check(r.created_at);
        let next = if now < first {
            Some(first)
        } else if r.attempt_until.is_some_and(|t| t > now) {
            self.count("busy");
            Some(now + BUSY_RETRY_MS)
        } else if let Some(wait) = reopens_in(live, &r.channel) {
            self.count("breaker_open");
            Some(settings.next_check(r.created_at, now, None).min(now + wait))
        } else {
            self.count("query");
            match self
                .payments
                .get_refund(
                    &live.routes(),
                    Asker::Payroute,
                    &r.merchant_id,
                    &r.out_refund_no,
                    true,
                )
                .await
            {
                Ok(rec) if !rec.status.is_open() => {
                    self.count("resolved");
                    None
                }
                Ok(rec) => Some(settings.next_check(rec.created_at, now, None)),
                Err(e) => {
                    self.count("error");
                    tracing::warn!(refund_id = %r.refund_id, error = %e, "reconcile: refund check failed; trying again later");
                    Some(settings.next_check(r.created_at, now, None))
                }
            }
        };
        if r.status == RefundStatus::Abnormal && now - r.created_at > last_until(settings) {
            tracing::warn!(refund_id = %r.refund_id, "refund still abnormal after the last reconciliation tier (checked at the last tier's interval); ops must settle it");
        }
        let stored = self.store.schedule_claimed_check(&claim, next).await;
        self.stored(&claim, hold(settings, next, now), stored);
    }

    /// After a check's next time was written under its claim: a failed write holds the
    /// check in memory (`held`, kept as it was if it is held already); a write that went
    /// through lets it go, and so does one the claim no longer allowed — another instance
    /// took the check over (ours ran out) or a payment flow scheduled it, and that schedule
    /// stands.
    fn stored(&self, claim: &CheckClaim, held: HeldCheck, stored: Result<bool, StoreError>) {
        match stored {
            Ok(true) => {
                self.held().of(claim.of).remove(&claim.id);
            }
            Ok(false) => {
                tracing::info!(id = %claim.id, "reconcile: the check was taken over (our claim ran out) or rescheduled meanwhile; its schedule stands");
                self.held().of(claim.of).remove(&claim.id);
            }
            Err(e) => {
                self.pause.saw(&e);
                tracing::warn!(id = %claim.id, error = %e, "reconcile: cannot store the next check; not checked again before it is due");
                self.held()
                    .of(claim.of)
                    .entry(claim.id.clone())
                    .or_insert(held);
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Only plain map operations happen under the lock: a poisoned one is still whole.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, action: &str) {
        self.actions.with_label_values(&[action]).inc();
    }
}

/// The hold of a check whose next time `next` the store may not take: not checked again
/// before then — for one that needs no more checks, for one last-tier interval (it stays due
/// in the store meanwhile, and is looked at once more then).
fn hold(settings: &ReconcileSettings, next: Option<i64>, now: i64) -> HeldCheck {
    HeldCheck {
        next,
        until: next.unwrap_or_else(|| now + settings.last_every()),
    }
}

/// In milliseconds, how long until `channel`'s open breaker admits a call; `None` when it may
/// be asked now (closed, half-open, or a channel no longer configured).
fn reopens_in(live: &Live, channel: &str) -> Option<i64> {
    live.channels
        .get(channel)
        .and_then(|c| c.breaker_reopens_in())
        .map(|wait| wait.as_millis() as i64)
}

/// The interval of the tier an order of this age is in; past the last tier, the last one's.
fn interval_at(settings: &ReconcileSettings, age_ms: i64) -> i64 {
    let age = Duration::from_millis(age_ms.max(0) as u64);
    settings
        .tiers
        .iter()
        .find(|t| age < t.until)
        .map_or_else(|| settings.last_every(), |t| t.every.as_millis() as i64)
}

/// How far the tiers reach (a day by default).
fn last_until(settings: &ReconcileSettings) -> i64 {
    settings
        .tiers
        .last()
        .map_or(DEFAULT_TIERS[DEFAULT_TIERS.len() - 1].until, |t| t.until)
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn an_ended_order_is_looked_at_one_tier_interval_later() {
        let s = ReconcileSettings::default();
        assert_eq!(interval_at(&s, 5 * MIN), MIN);
        assert_eq!(interval_at(&s, 30 * MIN), 10 * MIN);
        // Past the last tier: its interval still.
        assert_eq!(interval_at(&s, 25 * 60 * MIN), 60 * MIN);
        assert_eq!(last_until(&s), 24 * 60 * MIN);
    }

    #[test]
    fn checks_follow_the_tiers_and_never_stop_while_open() {
        let s = ReconcileSettings::default();
        let created = 1_000_000;
        assert_eq!(s.first_check(created), created + MIN);
        // At 5 minutes: every minute; at 30 minutes: every 10; at 5 hours: hourly.
        assert_eq!(
            s.next_check(created, created + 5 * MIN, None),
            created + 6 * MIN
        );
        assert_eq!(
            s.next_check(created, created + 30 * MIN, None),
            created + 40 * MIN
        );
        assert_eq!(
            s.next_check(created, created + 300 * MIN, None),
            created + 360 * MIN
        );
        // Past a day: at the expiry while it is ahead, else hourly (the last tier's interval):
        // an open order is never dropped from the schedule.
        assert_eq!(
            s.next_check(created, created + 25 * 60 * MIN, None),
            created + 26 * 60 * MIN
        );
        let exp = created + 30 * 60 * MIN;
        assert_eq!(
            s.next_check(created, created + 25 * 60 * MIN, Some(exp)),
            exp
        );
        // Never later than the expiry while it is ahead.
        let soon = created + 5 * MIN + 10_000;
        assert_eq!(s.next_check(created, created + 5 * MIN, Some(soon)), soon);
        // Past a day and past its expiry (its close met an open breaker, say): hourly.
        assert_eq!(
            s.next_check(created, created + 25 * 60 * MIN, Some(created)),
            created + 26 * 60 * MIN
        );
    }
}
