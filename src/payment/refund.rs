//! Refunds: only of a succeeded payment, only at its bound channel, never more than was paid.
//!
//! # Safety of retries
//! The guard (succeeded + pending refunds + this ≤ paid) and the uniqueness of
//! `out_refund_no` are checked and the refund stored in one store transaction before the
//! channel is called. Every retry — ours within the deadline, or the shop's with the same
//! `out_refund_no` — sends the same `out_refund_no`, which the provider deduplicates on.
//! A refund whose outcome is unknown stays `pending` and keeps its amount reserved.

use serde_json::json;

use super::{now_ms, sha256_hex, with_retries, PaymentError, PaymentService, Routes};
use crate::channel::{ChannelError, ErrorKind, RefundRequest, RefundState};
use crate::domain::{PaymentStatus, RefundStatus};
use crate::store::{RefundRecord, Reservation};

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
        let payment = self
            .store
            .get_payment(&req.merchant_id, &req.out_trade_no)
            .await?
            .ok_or(PaymentError::NotFound)?;
        let hash = sha256_hex(
            json!([
                req.merchant_id,
                req.out_trade_no,
                req.out_refund_no,
                req.amount,
                req.reason
            ])
            .to_string()
            .as_bytes(),
        );
        let now = now_ms();
        let rec = RefundRecord {
            refund_id: super::new_id("ref"),
            merchant_id: req.merchant_id.clone(),
            shop_id: shop_id.to_string(),
            out_trade_no: req.out_trade_no.clone(),
            out_refund_no: req.out_refund_no.clone(),
            payment_id: payment.payment_id.clone(),
            // Refunds go back the way the money came: the payment's bound channel.
            channel: payment.channel.clone(),
            amount: req.amount,
            reason: req.reason.clone(),
            status: RefundStatus::Pending,
            provider_refund_no: None,
            request_hash: hash,
            error_code: None,
            error_message: None,
            attempt_until: Some(now + super::attempt_window_ms(routes, &payment.channel)),
            created_at: now,
            updated_at: now,
            succeeded_at: None,
            version: 0,
        };
        if payment.status != PaymentStatus::Succeeded {
            // A replay of an earlier refund still answers with that refund.
            if let Some(existing) = self
                .store
                .get_refund(&req.merchant_id, &req.out_refund_no)
                .await?
            {
                return self
                    .replay_refund(routes, existing, &rec.request_hash, &payment)
                    .await;
            }
            return Err(PaymentError::InvalidState {
                message: format!(
                    "the payment is {}; only a succeeded payment can be refunded",
                    payment.status.as_str()
                ),
                payment: Box::new(payment),
            });
        }
        match self.store.reserve_refund(&rec, payment.amount).await? {
            Reservation::Reserved => self.attempt_refund(routes, rec, &payment).await.map(RefundOutcome::Created),
            Reservation::Exists(existing) => self.replay_refund(routes, *existing, &rec.request_hash, &payment).await,
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
        hash: &str,
        payment: &crate::store::PaymentRecord,
    ) -> Result<RefundOutcome, PaymentError> {
        let now = now_ms();
        super::check_replay(
            (&existing.request_hash, hash),
            existing.attempt_until,
            existing.status == RefundStatus::Failed,
            (&existing.error_code, &existing.error_message),
        )?;
        if existing.status != RefundStatus::Pending || existing.provider_refund_no.is_some() {
            return Ok(RefundOutcome::Replayed(existing));
        }
        // The last attempt ended without an answer: ask again with the same out_refund_no.
        existing.attempt_until = Some(now + super::attempt_window_ms(routes, &existing.channel));
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
        payment: &crate::store::PaymentRecord,
    ) -> Result<RefundRecord, PaymentError> {
        let Some(channel) = routes.channels.get(&rec.channel) else {
            rec.attempt_until = None;
            self.save_refund(&mut rec).await?;
            return Err(PaymentError::ChannelMissing(rec.channel.clone()));
        };
        let sub = routes.sub_merchant(&rec.merchant_id);
        let notify_url = format!("{}/notify/{}", routes.public_base_url, rec.channel);
        let request = RefundRequest {
            out_trade_no: &rec.out_trade_no,
            out_refund_no: &rec.out_refund_no,
            amount: rec.amount,
            total: payment.amount,
            currency: &payment.currency,
            reason: rec.reason.as_deref(),
            notify_url: &notify_url,
            sub: &sub,
        };
        let result = with_retries(channel, |d| channel.refund(&request, d)).await;
        rec.attempt_until = None;
        rec.updated_at = now_ms();
        match result {
            Ok(state) => {
                self.apply_refund_state(&mut rec, state);
                self.save_refund(&mut rec).await?;
                Ok(rec)
            }
            Err(error) => {
                let code = super::api_code(&error);
                if matches!(error.kind, ErrorKind::Rejected(_)) {
                    // Final: nothing was refunded; the reserved amount is free again.
                    rec.status = RefundStatus::Failed;
                }
                rec.error_code = Some(code.to_string());
                rec.error_message = Some(error.to_string());
                tracing::warn!(refund_id = %rec.refund_id, channel = %rec.channel, %error, "refund call failed");
                self.save_refund(&mut rec).await?;
                Err(refund_error(error, payment))
            }
        }
    }

    /// The refund's stored state; with `refresh`, its channel is asked first.
    pub async fn get_refund(
        &self,
        routes: &Routes<'_>,
        merchant_id: &str,
        out_refund_no: &str,
        refresh: bool,
    ) -> Result<RefundRecord, PaymentError> {
        let mut rec = self
            .store
            .get_refund(merchant_id, out_refund_no)
            .await?
            .ok_or(PaymentError::NotFound)?;
        if !refresh || rec.status != RefundStatus::Pending {
            return Ok(rec);
        }
        let (channel, sub) = routes.bound(&rec.channel, merchant_id)?;
        let state = match with_retries(channel, |d| {
            channel.refund_query(&rec.out_trade_no, out_refund_no, &sub, d)
        })
        .await
        {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(rec),
            Err(error) => {
                let payment = self
                    .store
                    .get_payment(merchant_id, &rec.out_trade_no)
                    .await?
                    .ok_or(PaymentError::NotFound)?;
                return Err(refund_error(error, &payment));
            }
        };
        let before = rec.status;
        self.apply_refund_state(&mut rec, state);
        if rec.status == before {
            return Ok(rec);
        }
        rec.updated_at = now_ms();
        if !self.store.update_refund(&mut rec).await? {
            return self
                .store
                .get_refund(merchant_id, out_refund_no)
                .await?
                .ok_or(PaymentError::NotFound);
        }
        Ok(rec)
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

    async fn save_refund(&self, rec: &mut RefundRecord) -> Result<(), PaymentError> {
        if self.store.update_refund(rec).await? {
            Ok(())
        } else {
            Err(PaymentError::InProgress)
        }
    }
}

fn refund_error(error: ChannelError, payment: &crate::store::PaymentRecord) -> PaymentError {
    PaymentError::Channel {
        error,
        payment: Box::new(payment.clone()),
    }
}
