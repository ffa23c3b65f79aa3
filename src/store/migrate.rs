//! `payroute store migrate --from sqlite:PATH --to postgres://…`: one instance's SQLite store
//! copied into the PostgreSQL store that several will share.
//!
//! # Idempotent
//! Each record is written only if it is not there yet (payments by `(merchant_id,
//! out_trade_no)`, refunds by `(merchant_id, out_refund_no)`, events by id, drained channels
//! by name — a channel already drained in the target keeps its own drain), so a copy that
//! stopped half-way is finished by running it again. Stop the proxy on the source first:
//! what it writes during the copy may be missed (the counts below would then disagree).
//!
//! # Limits
//! Delivered and dead events are not copied (they are history, not work); the
//! reconciliation schedule restarts: every open order is due for a check at once.

use super::{EventFilter, PaymentFilter, RefundFilter, Reservation, Store, StoreError};
use crate::domain::EventStatus;

/// Records read from the source per page.
const PAGE: u32 = 1_000;
/// Refunds and pending events are listed in one call each: a single instance's open work.
const ALL: u32 = u32::MAX;

/// What a copy did, and what the target holds of it afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub payments: u64,
    pub payments_new: u64,
    pub refunds: u64,
    pub refunds_new: u64,
    pub pending_events: u64,
    pub pending_events_new: u64,
    /// Channels ops drained: a move to PostgreSQL must not put one back into routing.
    pub drains: u64,
    pub drains_new: u64,
}

/// Copies every payment, refund and pending event of `from` into `to`, then checks that `to`
/// holds each of them.
pub async fn copy(from: &dyn Store, to: &dyn Store) -> Result<Copied, StoreError> {
    let mut copied = Copied::default();
    let mut filter = PaymentFilter {
        limit: PAGE,
        ..PaymentFilter::default()
    };
    loop {
        let page = from.list_payments(&filter).await?;
        for p in &page {
            copied.payments += 1;
            if to.insert_payment(p).await?.is_none() {
                copied.payments_new += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                filter.after = Some((last.created_at, last.payment_id.clone()));
            }
            _ => break,
        }
    }
    let refunds = from
        .list_refunds(&RefundFilter {
            limit: ALL,
            ..RefundFilter::default()
        })
        .await?;
    for r in refunds.iter().rev() {
        copied.refunds += 1;
        let payment = to
            .get_payment(&r.merchant_id, &r.out_trade_no)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("refund {} has no payment", r.refund_id)))?;
        match to.reserve_refund(r, payment.amount).await? {
            Reservation::Reserved => copied.refunds_new += 1,
            Reservation::Exists(_) => {}
            Reservation::Exceeds { available } => {
                return Err(StoreError::Corrupt(format!(
                    "refund {} ({} fen) exceeds what the target allows ({available})",
                    r.refund_id, r.amount
                )))
            }
        }
    }
    let events = from
        .list_events(&EventFilter {
            status: Some(EventStatus::Pending),
            limit: ALL,
            ..EventFilter::default()
        })
        .await?;
    // Oldest first: the target numbers them in that order, which keeps each payment's order.
    for e in events.iter().rev() {
        copied.pending_events += 1;
        if to.import_event(e).await? {
            copied.pending_events_new += 1;
        }
    }
    let drained_there = to.drained().await?;
    for d in from.drained().await? {
        copied.drains += 1;
        if drained_there.iter().all(|t| t.channel != d.channel) {
            to.drain(&d.channel, &d.reason, &d.by, d.since_ms).await?;
            copied.drains_new += 1;
        }
    }
    verify(from, to, &copied).await?;
    Ok(copied)
}

/// Every payment and refund of the source is in the target, with the same binding.
async fn verify(from: &dyn Store, to: &dyn Store, copied: &Copied) -> Result<(), StoreError> {
    let mut filter = PaymentFilter {
        limit: PAGE,
        ..PaymentFilter::default()
    };
    let mut seen = 0;
    loop {
        let page = from.list_payments(&filter).await?;
        for p in &page {
            let there = to.get_payment(&p.merchant_id, &p.out_trade_no).await?;
            match there {
                Some(t) if t.payment_id == p.payment_id && t.account == p.account => seen += 1,
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "payment {} is not in the target as it is in the source",
                        p.payment_id
                    )))
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => {
                filter.after = Some((last.created_at, last.payment_id.clone()));
            }
            _ => break,
        }
    }
    if seen != copied.payments {
        return Err(StoreError::Corrupt(format!(
            "{seen} payments verified of {} copied: the source changed during the copy",
            copied.payments
        )));
    }
    let target_refunds = to
        .list_refunds(&RefundFilter {
            limit: ALL,
            ..RefundFilter::default()
        })
        .await?
        .len() as u64;
    if target_refunds < copied.refunds {
        return Err(StoreError::Corrupt(format!(
            "the target holds {target_refunds} refunds, fewer than the {} copied",
            copied.refunds
        )));
    }
    Ok(())
}
