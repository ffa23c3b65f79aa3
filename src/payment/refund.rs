//! Refunds: only of a succeeded payment, only at its bound account, never more than was paid.
//!
//! # Safety of retries
//! The guard (succeeded + open refunds + this ≤ paid) and the uniqueness of `out_refund_no`
//! are checked and the refund stored in one store transaction before the channel is called.
//! Every retry — the channel's within the deadline, or the shop's with the same
//! `out_refund_no` — sends the same `out_refund_no`, which the provider deduplicates on.
//! Only a verified, final refusal frees the reserved amount; a refund whose outcome is
//! unknown stays `pending`, and an `abnormal` one (money left, did not arrive) stays
//! reserved until ops settle it.
//!
//! A refund's own write that lost the compare-and-set (its notification came first) is merged
//! under its claim, as a payment's is (`commit`); a holder whose claim ran out while a replay
//! took the refund over leaves the record as the replay left it, and is answered
//! `request_in_progress` (the replay sent the same `out_refund_no`).

use serde_json::json;

use super::commit::Committed;
use super::{
    check_replay, claim_live, claim_window_ms, failure_of, refund_event, request_hash,
    same_request, Asker, PaymentError, PaymentService, Routes,
};
use crate::channel::{ChannelError, ErrorKind, RefundRequest, RefundState};
use crate::clock::now_ms;
use crate::domain::{PaymentStatus, RefundStatus};
use crate::ids::new_id;
use crate::store::{PaymentRecord, RefundRecord, Reservation};

/// A validated refund request.
#[derive(Clone, Debug)]
pub struct NewRefund {
    pub merchant_id: String,
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub amount: u64,
    pub reason: Option<String>,
}

#[derive(Debug)]
pub enum RefundOutcome {
    Created(RefundRecord),
    Replayed(RefundRecord),
}

impl PaymentService {
    pub async fn refund(
        &self,
        routes: &Routes<'_>,
        shop_id: &str,
        req: NewRefund,
    ) -> Result<RefundOutcome, PaymentError> {
        // Another shop's payment is not found: nothing of it shows, nothing is refunded.
        let payment = self
            .store
            .get_payment(&req.merchant_id, &req.out_trade_no)
            .await?
            .filter(|p| p.shop_id == shop_id)
            .ok_or(PaymentError::NotFound)?;
        let request = json!([
            req.merchant_id,
            req.out_trade_no,
            req.out_refund_no,
            req.amount,
            req.reason
        ]);
        let hash = request_hash(shop_id, &request);
        // A replay of an earlier refund answers with that refund, whatever happened since.
        if let Some(existing) = self
            .store
            .get_refund(&req.merchant_id, &req.out_refund_no)
            .await?
        {
            return self
                .replay_refund(routes, existing, shop_id, (&hash, &request), &payment)
                .await;
        }
        if payment.status != PaymentStatus::Succeeded {
            return Err(PaymentError::InvalidState {
                message: format!(
                    "the payment is {}; only a succeeded payment can be refunded",
                    payment.status.as_str()
                ),
                payment: Box::new(payment),
            });
        }
        // Refunds go back the way the money came: the payment's bound account.
        let (channel, _) = self.bound(routes, &payment, "refund")?;
        let now = now_ms();
        let rec = RefundRecord {
            refund_id: new_id("ref"),
            merchant_id: req.merchant_id.clone(),
            shop_id: shop_id.to_string(),
            out_trade_no: req.out_trade_no.clone(),
            out_refund_no: req.out_refund_no.clone(),
            payment_id: payment.payment_id.clone(),
            channel: payment.channel.clone(),
            amount: req.amount,
            reason: req.reason.clone(),
            status: RefundStatus::Pending,
            provider_refund_no: None,
            request_hash: hash,
            error_code: None,
            error_message: None,
            attempt_until: Some(now + claim_window_ms(channel)),
            created_at: now,
            updated_at: now,
            succeeded_at: None,
            version: 0,
        };
        match self.store.reserve_refund(&rec, payment.amount).await? {
            Reservation::Reserved => self.attempt_refund(routes, rec, &payment).await.map(RefundOutcome::Created),
            Reservation::Exists(existing) => self.replay_refund(routes, *existing, shop_id, (&rec.request_hash, &request), &payment).await,
            Reservation::Exceeds { available } => Err(PaymentError::InvalidState {
                message: format!(
                    "refund of {} exceeds what is left to refund ({available} of {} paid, counting refunds in flight)",
                    req.amount, payment.amount
                ),
                payment: Box::new(payment),
            }),
        }
    }

    async fn replay_refund(
        &self,
        routes: &Routes<'_>,
        mut existing: RefundRecord,
        shop_id: &str,
        (hash, request): (&str, &serde_json::Value),
        payment: &PaymentRecord,
    ) -> Result<RefundOutcome, PaymentError> {
        // Another shop's refund (of another payment of the merchant): nothing of it shows.
        if existing.shop_id != shop_id {
            return Err(PaymentError::OutRefundNoTaken);
        }
        check_replay(
            same_request(&existing.request_hash, hash, request),
            existing.attempt_until,
            existing.status == RefundStatus::Failed,
            (&existing.error_code, &existing.error_message),
        )?;
        if existing.status != RefundStatus::Pending || existing.provider_refund_no.is_some() {
            return Ok(RefundOutcome::Replayed(existing));
        }
        // The last attempt ended without an answer: ask again with the same out_refund_no.
        let (channel, _) = self.bound(routes, payment, "refund")?;
        let now = now_ms();
        existing.attempt_until = Some(now + claim_window_ms(channel));
        existing.updated_at = now;
        if !self.store.update_refund(&mut existing).await? {
            return Err(PaymentError::InProgress);
        }
        self.attempt_refund(routes, existing, payment)
            .await
            .map(RefundOutcome::Created)
    }

    async fn attempt_refund(
        &self,
        routes: &Routes<'_>,
        mut rec: RefundRecord,
        payment: &PaymentRecord,
    ) -> Result<RefundRecord, PaymentError> {
        // Ours as reserved (or taken over by a replay): our writes merge only while the
        // refund still holds it.
        let claim = rec.attempt_until;
        let (channel, sub) = match self.bound(routes, payment, "refund") {
            Ok(b) => b,
            Err(refusal) => {
                // Nothing was sent; the refund stays pending (and reserved) for a retry once
                // the account is configured again.
                rec.attempt_until = None;
                let before = rec.status;
                self.save_refund(&mut rec, before, claim).await?;
                return Err(refusal);
            }
        };
        let notify_url = format!("{}/notify/{}", routes.public_base_url, payment.channel);
        let request = RefundRequest {
            out_trade_no: &rec.out_trade_no,
            provider_trade_no: payment.provider_trade_no.as_deref(),
            out_refund_no: &rec.out_refund_no,
            amount: rec.amount,
            total: payment.amount,
            currency: &payment.currency,
            reason: rec.reason.as_deref(),
            notify_url: &notify_url,
            sub: &sub,
        };
        let result = channel
            .refund(&request)
            .await
            .and_then(|state| refund_cross_check(&rec, payment, state));
        rec.attempt_until = None;
        rec.updated_at = now_ms();
        match result {
            Ok(state) => {
                let before = rec.status;
                self.apply_refund_state(&mut rec, state);
                self.save_refund(&mut rec, before, claim).await?;
                Ok(rec)
            }
            Err(error) => {
                let before = rec.status;
                if error.is_final_refusal() {
                    // The provider's verified, final refusal: nothing was refunded, the
                    // reserved amount is free again.
                    rec.status = RefundStatus::Failed;
                }
                rec.error_code = Some(failure_of(&error));
                rec.error_message = Some(error.to_string());
                tracing::warn!(refund_id = %rec.refund_id, channel = %rec.channel, %error, "refund call failed");
                self.save_refund(&mut rec, before, claim).await?;
                Err(refund_error(error, payment))
            }
        }
    }

    /// The refund's stored state; with `refresh`, its bound account is asked first. A shop
    /// sees only its own refunds of its own payments.
    pub async fn get_refund(
        &self,
        routes: &Routes<'_>,
        asker: Asker<'_>,
        merchant_id: &str,
        out_refund_no: &str,
        refresh: bool,
    ) -> Result<RefundRecord, PaymentError> {
        let rec = self
            .store
            .get_refund(merchant_id, out_refund_no)
            .await?
            .filter(|r| asker.owns(&r.shop_id))
            .ok_or(PaymentError::NotFound)?;
        let refreshing = refresh && rec.status.is_open() && !claim_live(rec.attempt_until);
        if !refreshing && asker == Asker::Payroute {
            return Ok(rec);
        }
        // A shop sees only refunds of its own payments (one made of another shop's payment
        // before payments had owners stays hidden from both).
        let payment = self
            .store
            .get_payment(merchant_id, &rec.out_trade_no)
            .await?
            .filter(|p| asker.owns(&p.shop_id))
            .ok_or(PaymentError::NotFound)?;
        if !refreshing {
            return Ok(rec);
        }
        let (channel, sub) = self.bound(routes, &payment, "refund_query")?;
        let state = match channel
            .refund_query(&rec.out_trade_no, out_refund_no, &sub)
            .await
            .and_then(|state| refund_cross_check(&rec, &payment, state))
        {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(rec),
            Err(error) => return Err(refund_error(error, &payment)),
        };
        self.apply_refund_change(rec, state).await
    }

    /// Applies a verified refund state (compare-and-set, with its shop event). A lost race
    /// answers with the winner's record.
    pub(super) async fn apply_refund_change(
        &self,
        mut rec: RefundRecord,
        state: RefundState,
    ) -> Result<RefundRecord, PaymentError> {
        let before = rec.status;
        self.apply_refund_state(&mut rec, state);
        if rec.status == before {
            return Ok(rec);
        }
        rec.updated_at = now_ms();
        let event = refund_event(&rec, before);
        if let Committed::Lost(fresh) = self.commits.commit(&mut rec, event).await? {
            return Ok(fresh);
        }
        self.count_refund(&rec, before);
        Ok(rec)
    }

    /// Applies a verified refund notification (cross-checked against the refund and its
    /// payment), with the shop event if the refund reached a reportable state.
    pub async fn apply_notified_refund(
        &self,
        rec: RefundRecord,
        payment: &PaymentRecord,
        state: RefundState,
    ) -> Result<RefundRecord, PaymentError> {
        let state =
            refund_cross_check(&rec, payment, state).map_err(|e| refund_error(e, payment))?;
        self.apply_refund_change(rec, state).await
    }

    fn apply_refund_state(&self, rec: &mut RefundRecord, state: RefundState) {
        // A refund that succeeded stays succeeded.
        if rec.status != RefundStatus::Succeeded {
            rec.status = state.status;
        }
        if rec.status == RefundStatus::Succeeded && rec.succeeded_at.is_none() {
            rec.succeeded_at = Some(now_ms());
        }
        rec.provider_refund_no = state.provider_refund_no.or(rec.provider_refund_no.take());
        rec.error_code = None;
        rec.error_message = None;
    }

    fn count_refund(&self, rec: &RefundRecord, before: RefundStatus) {
        if rec.status != before && rec.status != RefundStatus::Pending {
            if rec.status == RefundStatus::Abnormal {
                tracing::error!(refund_id = %rec.refund_id, channel = %rec.channel, "refund ABNORMAL: the money left but did not reach the payer; ops must act");
            }
            self.metrics
                .refunds
                .with_label_values(&[rec.channel.as_str(), rec.status.as_str()])
                .inc();
        }
    }

    /// The claim holder's write of `rec` (see [`super::commit::Commits::commit_claimed`]),
    /// with the shop event of a move from `before`, if any; `claim` is the refund's
    /// `attempt_until` as the caller claimed it. Counted as the move it was written as.
    async fn save_refund(
        &self,
        rec: &mut RefundRecord,
        before: RefundStatus,
        claim: Option<i64>,
    ) -> Result<(), PaymentError> {
        let from = self.commits.commit_claimed(rec, before, claim).await?;
        self.count_refund(rec, from);
        Ok(())
    }
}

/// The provider's answer is about this refund: its amount, and a running total that fits
/// the order, where the provider states them.
fn refund_cross_check(
    rec: &RefundRecord,
    payment: &PaymentRecord,
    state: RefundState,
) -> Result<RefundState, ChannelError> {
    let mismatch = |m: String| Err(ChannelError::new(ErrorKind::Protocol, m));
    if let Some(a) = state.amount.filter(|a| *a != rec.amount) {
        return mismatch(format!(
            "channel reports refund amount {a}, the refund is for {}",
            rec.amount
        ));
    }
    // A total that left this refund out is fine while the refund is still processing.
    let succeeded = state.status == RefundStatus::Succeeded;
    if let Some(t) = state
        .refunded_total
        .filter(|t| *t > payment.amount || (succeeded && *t < rec.amount))
    {
        return mismatch(format!(
            "channel reports {t} refunded in all, which cannot hold a refund of {} of an order of {}",
            rec.amount, payment.amount
        ));
    }
    Ok(state)
}

fn refund_error(error: ChannelError, payment: &PaymentRecord) -> PaymentError {
    PaymentError::Channel {
        error,
        payment: Box::new(payment.clone()),
    }
}
