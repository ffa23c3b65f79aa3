//! Late payments (ARCHITECTURE.md, "Money rules": late and duplicate payments): a payment the
//! provider reports for an order payroute had already ended (`closed`, `failed` — an expired order
//! is closed by the reconciler), after the shop was told it was over.
//!
//! The payment becomes `succeeded` with `late: true`, and the shop gets `payment.late`
//! instead of `payment.succeeded` (a shop that ships on `payment.succeeded` must not ship an
//! order it cancelled), with `late_action`: what payroute does about it by `late_payments`.
//!
//! # Safety of the refund (`late_action: "refund"`)
//! - It is an ordinary refund through the refund path: reserved in the store before the
//!   call, sent to the payment's bound account only, reconciled, told as `refund.succeeded`.
//! - Its `out_refund_no` is derived from the payment id ([`late_refund_no`]): however often
//!   the news arrives (duplicate notifications, a refresh, the reconciler), the reservation
//!   finds the same refund and never makes a second one; a resend carries the same number,
//!   which the provider deduplicates on (§7).
//! - Nothing is lost to a crash or a failed call: the payment's reconciliation check is
//!   scheduled before the late state is committed, and the reconciler settles a late payment
//!   (sends its refund, and again with the same number) until its refund has reached the
//!   provider. The notification or refresh that found it does not send the refund itself, so
//!   the provider's answer never waits for a refund call (only when that check could not be
//!   scheduled is the refund sent at once).
//!
//! # Limits
//! The refund leaves about [`LATE_BACKSTOP_MS`] after the late payment was found (plus the
//! reconciler's poll), not at once.

use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::Value;

use super::{new_event, view, NewRefund, PaymentError, PaymentService, Routes};
use crate::clock::now_ms;
use crate::config::Config;
use crate::domain::{EventType, LatePolicy, RefundStatus};
use crate::store::{EventRecord, PaymentRecord};

/// Prefix of the refund number of a late payment's refund: `late_` + the payment id.
pub const LATE_REFUND_PREFIX: &str = "late_";
/// The reason sent with a late payment's refund (shown to the payer by some providers).
pub const LATE_REFUND_REASON: &str = "late payment: the order had ended";
/// When the reconciler first looks at a late payment whose refund is being sent here: a
/// backstop for a call that fails or a process that stops (the refund normally settles at
/// once; a look while it is in flight only reschedules).
pub(super) const LATE_BACKSTOP_MS: i64 = 5_000;

/// The `out_refund_no` of a late payment's refund: one per payment, so it is sent once.
pub fn late_refund_no(payment_id: &str) -> String {
    format!("{LATE_REFUND_PREFIX}{payment_id}")
}

/// `payroute_late_payments_total{channel,action}`.
pub(super) struct LateMetrics {
    late: IntCounterVec,
}

impl LateMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<LateMetrics> {
        let late = IntCounterVec::new(
            Opts::new(
                "payroute_late_payments_total",
                "Payments reported after their order had ended (closed or failed), by bound channel and the action taken (refund, keep).",
            ),
            &["channel", "action"],
        )?;
        registry.register(Box::new(late.clone()))?;
        Ok(LateMetrics { late })
    }
}

/// How settling a late payment ended, for the reconciler's schedule.
#[derive(Debug, PartialEq, Eq)]
pub enum LateSettled {
    /// Not late, or kept: nothing to do.
    Nothing,
    /// The refund reached the provider (or a final state): its own checks follow it.
    RefundSent(RefundStatus),
    /// The refund could not be sent now; it stays reserved and is sent again later.
    RetryLater(String),
}

impl PaymentService {
    /// Every series of `payroute_late_payments_total` for the config's channels, at zero
    /// (a dashboard and an alert see 0, not an absent series).
    pub fn late_labels(&self, config: &Config) {
        for channel in config.channels.keys() {
            for action in LatePolicy::ALL {
                self.metrics
                    .late
                    .late
                    .with_label_values(&[channel.as_str(), action.as_str()]);
            }
        }
    }

    /// The `payment.late` event of `rec` (just made late), saying what is done about it.
    pub(super) fn late_event(&self, rec: &PaymentRecord, action: LatePolicy) -> EventRecord {
        let mut data = view::payment_json(rec);
        if let Value::Object(map) = &mut data {
            map.insert("late_action".into(), Value::from(action.as_str()));
        }
        new_event(
            EventType::PaymentLate,
            &rec.shop_id,
            &rec.merchant_id,
            &rec.payment_id,
            data,
        )
    }

    /// Before a late state is committed: the payment's next reconciliation check, which sends
    /// the refund (and sends it again after a failed call or a crash). Whether it is
    /// scheduled: if not, the refund is sent at once instead.
    pub(super) async fn late_backstop(&self, rec: &PaymentRecord, action: LatePolicy) -> bool {
        if action != LatePolicy::Refund {
            return false;
        }
        match self
            .store
            .schedule_payment_check(&rec.payment_id, Some(now_ms() + LATE_BACKSTOP_MS))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(payment_id = %rec.payment_id, error = %e, "late payment: cannot schedule its check; the refund is sent now");
                false
            }
        }
    }

    /// After a late state was committed: counted, logged, and refunded by policy — by the
    /// reconciler when its check is scheduled (`scheduled`), so that neither the provider's
    /// notification nor a shop's refresh waits for a refund call; here otherwise.
    pub(super) async fn late_committed(
        &self,
        routes: &Routes<'_>,
        rec: &PaymentRecord,
        action: LatePolicy,
        scheduled: bool,
    ) {
        self.metrics
            .late
            .late
            .with_label_values(&[rec.channel.as_str(), action.as_str()])
            .inc();
        tracing::warn!(payment_id = %rec.payment_id, channel = %rec.channel, merchant_id = %rec.merchant_id, action = action.as_str(), "late payment: paid after the order had ended");
        if action == LatePolicy::Refund && !scheduled {
            self.settle_late(routes, rec).await;
        }
    }

    /// Makes sure a late payment's refund is under way when its merchant's policy is
    /// `refund`: reserves it (once: the refund number is the payment's) and sends it to the
    /// bound account, or sends a reserved one that did not reach the provider again.
    pub async fn settle_late(&self, routes: &Routes<'_>, rec: &PaymentRecord) -> LateSettled {
        if !rec.late || routes.late_payments.for_merchant(&rec.merchant_id) != LatePolicy::Refund {
            return LateSettled::Nothing;
        }
        let req = NewRefund {
            merchant_id: rec.merchant_id.clone(),
            out_trade_no: rec.out_trade_no.clone(),
            out_refund_no: late_refund_no(&rec.payment_id),
            amount: rec.amount,
            reason: Some(LATE_REFUND_REASON.into()),
        };
        let outcome = match self.refund(routes, &rec.shop_id, req).await {
            // Answered by the provider: the refund's own checks follow it from here.
            Ok(super::RefundOutcome::Created(r) | super::RefundOutcome::Replayed(r)) => {
                LateSettled::RefundSent(r.status)
            }
            // Nothing left to refund (the shop refunded it meanwhile, say).
            Err(PaymentError::InvalidState { message, .. }) => {
                tracing::warn!(payment_id = %rec.payment_id, %message, "late payment: not refunded by payroute");
                LateSettled::Nothing
            }
            // The shop took the number for a refund of its own: never a second refund.
            Err(PaymentError::IdempotencyMismatch) => {
                tracing::error!(payment_id = %rec.payment_id, "late payment: its out_refund_no is taken by another refund of this merchant; not refunded by payroute, ops must check");
                LateSettled::Nothing
            }
            // The provider's final refusal of this very refund: told as `refund.failed`, left
            // to ops; sending it again would be refused again.
            Err(PaymentError::Stored { message, .. }) => {
                tracing::error!(payment_id = %rec.payment_id, %message, "late payment: its refund was refused by the provider; ops must act");
                LateSettled::RefundSent(RefundStatus::Failed)
            }
            Err(e) => LateSettled::RetryLater(e.to_string()),
        };
        if let LateSettled::RetryLater(why) = &outcome {
            tracing::warn!(payment_id = %rec.payment_id, channel = %rec.channel, error = %why, "late payment: refund not sent now; the reconciler sends it again");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_late_refund_number_is_the_payments_and_fits_both_providers() {
        let id = "pay_0123456789abcdef01234567";
        assert_eq!(late_refund_no(id), late_refund_no(id));
        assert_ne!(
            late_refund_no(id),
            late_refund_no("pay_0123456789abcdef01234568")
        );
        // WeChat Pay's out_refund_no and Alipay's out_request_no: at most 64 characters.
        assert!(late_refund_no(id).len() <= 64);
    }
}
