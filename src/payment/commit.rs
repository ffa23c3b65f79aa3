//! The one commit path for a state change (ARCHITECTURE.md, "Money rules": one call at a time
//! per record; compare-and-set, events in the same transaction; the outbox). Every write of a
//! payment's or a refund's state goes through [`Commits`]:
//!
//! - compare-and-set on `version`, with the shop event that tells of the change in the same
//!   transaction (no change without its event, no event without its change);
//! - the outbox is woken after a commit that wrote an event — here and nowhere else;
//! - a write that loses the compare-and-set reads the record again: a writer without a claim
//!   (a notification, a refresh) answers with it ([`Commits::commit`]); the claim holder's
//!   result ([`Commits::commit_claimed`]) is merged into it once, and only while the record
//!   still holds the claim the holder took. A holder that stalled past its window finds
//!   another request's claim (or none) and leaves the record as that request left it.
//!
//! A claim holder that re-applies a channel's word rather than merging its own result (a
//! payment's [`super::PaymentService`] `apply_state`, up to `CLAIM_TRIES` times) asks
//! [`still_ours`] the same question.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;

use super::PaymentError;
use crate::domain::{PaymentStatus, RefundStatus};
use crate::store::{
    EventRecord, Over, PaymentRecord, QuotaGuard, RefundRecord, Store, StoreError, Updated,
};

/// A store call as the store's trait returns it (already boxed: no second allocation).
type StoreCall<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A record whose state changes go through the commit path: payments and refunds. What
/// differs between them — the store calls, the event, the merge rule — and nothing else.
pub(super) trait Committable: Sized + Send + Sync {
    type Status: Copy + PartialEq + Send + Sync;

    fn status(&self) -> Self::Status;

    /// The record's claim (`attempt_until`) as stored.
    fn claim(&self) -> Option<i64>;

    /// The shop event of a move from `before` to the record's status, if it tells of one.
    fn event(&self, before: Self::Status) -> Option<EventRecord>;

    /// `ours` (the claim holder's result) laid over `fresh` (the record as another writer
    /// left it meanwhile).
    fn merge(fresh: Self, ours: &Self) -> Self;

    /// What the holder of a claim that ran out answers; `self` is its result, dropped.
    fn superseded(&self, fresh: Self) -> PaymentError;

    /// Compare-and-set of the record with `event` in the same transaction.
    fn write<'a>(
        &'a mut self,
        store: &'a dyn Store,
        event: Option<&'a EventRecord>,
    ) -> StoreCall<'a, bool>;

    /// The record as the store holds it now.
    fn read_again<'a>(&'a self, store: &'a dyn Store) -> StoreCall<'a, Option<Self>>;
}

/// How one compare-and-set ended.
pub(super) enum Committed<R> {
    /// Written, with its event if it had one.
    Written,
    /// Another writer moved the record first: the record as it left it.
    Lost(R),
}

/// The commit path: the store's compare-and-set with events, and the outbox's wake-up.
pub(super) struct Commits {
    store: Arc<dyn Store>,
    /// Woken after a shop event is committed (the outbox waits on it).
    events_written: Arc<Notify>,
}

impl Commits {
    pub(super) fn new(store: Arc<dyn Store>) -> Commits {
        Commits {
            store,
            events_written: Arc::new(Notify::new()),
        }
    }

    /// What the outbox waits on: notified whenever a shop event has been committed.
    pub(super) fn events_written(&self) -> Arc<Notify> {
        self.events_written.clone()
    }

    /// One compare-and-set of `rec` with `event`; the outbox is woken if the event went in.
    /// Whether it was written.
    async fn write<R: Committable>(
        &self,
        rec: &mut R,
        event: Option<EventRecord>,
    ) -> Result<bool, PaymentError> {
        let written = rec.write(self.store.as_ref(), event.as_ref()).await?;
        if written && event.is_some() {
            self.events_written.notify_one();
        }
        Ok(written)
    }

    /// Writes `rec` with `event` (compare-and-set); a lost race answers the record as the
    /// winner left it, to be judged by the caller (a writer without a claim takes it as the
    /// answer: the winner's word is at least as new).
    pub(super) async fn commit<R: Committable>(
        &self,
        rec: &mut R,
        event: Option<EventRecord>,
    ) -> Result<Committed<R>, PaymentError> {
        if self.write(rec, event).await? {
            return Ok(Committed::Written);
        }
        match rec.read_again(self.store.as_ref()).await? {
            Some(fresh) => Ok(Committed::Lost(fresh)),
            None => Err(PaymentError::NotFound),
        }
    }

    /// The claim holder's result, with the shop event of its move from `before`. `claim` is
    /// the record's claim as the holder took it. Only the claim holder writes a call's
    /// result, but a verified notification (or a refund's total) may have moved the record
    /// while the call was out: on a lost race the word that is further along is kept, ours
    /// fills the rest and our claim ends — once, and only while the record still holds our
    /// claim. Notifications never take or clear a live claim, so a claim that is not ours
    /// any more ran out while we stalled: another request holds or held the record since
    /// (and may have bound a payment elsewhere and created the order there), and writing our
    /// result over it could send that order to a second account ([`Committable::superseded`]).
    /// A second lost race means two writers, and is refused rather than overwritten.
    ///
    /// Answers the status the written record moved from: `before`, or the status it was
    /// merged into.
    pub(super) async fn commit_claimed<R: Committable>(
        &self,
        rec: &mut R,
        before: R::Status,
        claim: Option<i64>,
    ) -> Result<R::Status, PaymentError> {
        let event = rec.event(before);
        let fresh = match self.commit(rec, event).await? {
            Committed::Written => return Ok(before),
            Committed::Lost(fresh) => fresh,
        };
        if !still_ours(claim, fresh.claim()) {
            return Err(rec.superseded(fresh));
        }
        let fresh_before = fresh.status();
        let mut merged = R::merge(fresh, rec);
        let event = merged.event(fresh_before);
        if !self.write(&mut merged, event).await? {
            return Err(PaymentError::InProgress);
        }
        *rec = merged;
        Ok(fresh_before)
    }
}

impl Commits {
    /// Rebinds a claimed payment to the account `rec` now names (a create failing over while
    /// nothing was sent), within that account's quota when `guard` is given: the room check
    /// and the write are one store transaction. No event: nothing the shop sees changed. A
    /// lost race is merged once while the claim is still ours, as [`Commits::commit_claimed`]
    /// does. `Ok(Err(over))`: the account has no room; nothing was written.
    pub(super) async fn rebind(
        &self,
        rec: &mut PaymentRecord,
        claim: Option<i64>,
        guard: Option<&QuotaGuard>,
    ) -> Result<Result<(), Over>, PaymentError> {
        match self.store.update_payment_within(rec, guard).await? {
            Updated::Won => return Ok(Ok(())),
            Updated::OverQuota(over) => return Ok(Err(over)),
            Updated::Lost => {}
        }
        let fresh = rec
            .read_again(self.store.as_ref())
            .await?
            .ok_or(PaymentError::NotFound)?;
        if !still_ours(claim, fresh.claim()) {
            return Err(rec.superseded(fresh));
        }
        let mut merged = PaymentRecord::merge(fresh, rec);
        match self.store.update_payment_within(&mut merged, guard).await? {
            Updated::Won => {
                *rec = merged;
                Ok(Ok(()))
            }
            Updated::OverQuota(over) => Ok(Err(over)),
            Updated::Lost => Err(PaymentError::InProgress),
        }
    }
}

/// Whether the record still holds the claim its holder took (`claim`): a claim holder may
/// write over another writer's change only then.
pub(super) fn still_ours(claim: Option<i64>, now_held: Option<i64>) -> bool {
    claim.is_some() && now_held == claim
}

impl Committable for PaymentRecord {
    type Status = PaymentStatus;

    fn status(&self) -> PaymentStatus {
        self.status
    }

    fn claim(&self) -> Option<i64> {
        self.attempt_until
    }

    fn event(&self, before: PaymentStatus) -> Option<EventRecord> {
        super::payment_event(self, before)
    }

    /// The status that is further along (money is the truth: a paid order stays paid), what
    /// either learnt (the payer's action, the provider's number), and our claim's end.
    fn merge(fresh: PaymentRecord, ours: &PaymentRecord) -> PaymentRecord {
        let mut m = fresh;
        if m.status.may_become(ours.status) {
            m.status = ours.status;
            m.paid_at = ours.paid_at.or(m.paid_at);
            m.error_code = ours.error_code;
            m.error_message = ours.error_message.clone();
        }
        m.action = m.action.or_else(|| ours.action.clone());
        m.provider_trade_no = m
            .provider_trade_no
            .or_else(|| ours.provider_trade_no.clone());
        m.channel = ours.channel.clone();
        m.account = ours.account.clone();
        m.attempt_until = ours.attempt_until;
        m.updated_at = ours.updated_at.max(m.updated_at);
        m
    }

    fn superseded(&self, fresh: PaymentRecord) -> PaymentError {
        tracing::warn!(payment_id = %self.payment_id, channel = %self.channel, bound = %fresh.channel, "our claim on the payment ran out before our write; the record stands as another request left it");
        PaymentError::Superseded(Box::new(fresh))
    }

    fn write<'a>(
        &'a mut self,
        store: &'a dyn Store,
        event: Option<&'a EventRecord>,
    ) -> StoreCall<'a, bool> {
        store.update_payment_emitting(self, event)
    }

    fn read_again<'a>(&'a self, store: &'a dyn Store) -> StoreCall<'a, Option<PaymentRecord>> {
        store.get_payment(&self.merchant_id, &self.out_trade_no)
    }
}

impl Committable for RefundRecord {
    type Status = RefundStatus;

    fn status(&self) -> RefundStatus {
        self.status
    }

    fn claim(&self) -> Option<i64> {
        self.attempt_until
    }

    fn event(&self, before: RefundStatus) -> Option<EventRecord> {
        super::refund_event(self, before)
    }

    /// A succeeded or failed word stays (the provider's final one); ours fills the rest, our
    /// claim ends.
    fn merge(fresh: RefundRecord, ours: &RefundRecord) -> RefundRecord {
        let mut m = fresh;
        if !matches!(m.status, RefundStatus::Succeeded | RefundStatus::Failed) {
            m.status = ours.status;
            m.succeeded_at = ours.succeeded_at.or(m.succeeded_at);
            m.error_code = ours.error_code;
            m.error_message = ours.error_message.clone();
        }
        m.provider_refund_no = m
            .provider_refund_no
            .or_else(|| ours.provider_refund_no.clone());
        m.attempt_until = ours.attempt_until;
        m.updated_at = ours.updated_at.max(m.updated_at);
        m
    }

    /// Another request took the refund over (ours ran out; it sends the same
    /// `out_refund_no`, which the provider deduplicates on): its call's result stands, and
    /// the shop's retry is answered from the record as a replay.
    fn superseded(&self, fresh: RefundRecord) -> PaymentError {
        tracing::warn!(refund_id = %self.refund_id, channel = %self.channel, status = fresh.status.as_str(), "our claim on the refund ran out before our write; the record stands as another request left it");
        PaymentError::InProgress
    }

    fn write<'a>(
        &'a mut self,
        store: &'a dyn Store,
        event: Option<&'a EventRecord>,
    ) -> StoreCall<'a, bool> {
        store.update_refund_emitting(self, event)
    }

    fn read_again<'a>(&'a self, store: &'a dyn Store) -> StoreCall<'a, Option<RefundRecord>> {
        store.get_refund(&self.merchant_id, &self.out_refund_no)
    }
}
