//! Close: claim the record, close the order at its bound account, and never close a paid
//! one.

use super::*;

impl PaymentService {
    /// Closes an unpaid order at its bound account. Never closes a paid one: when the
    /// channel says it was paid, the payment becomes `succeeded` and the close is refused.
    /// The close claims the record first, so no create retry runs beside it. Another shop's
    /// order is not found.
    pub async fn close(
        &self,
        routes: &Routes<'_>,
        asker: Asker<'_>,
        merchant_id: &str,
        out_trade_no: &str,
    ) -> Result<PaymentRecord, PaymentError> {
        let refuse = |message: &str, rec: PaymentRecord| PaymentError::InvalidState {
            message: message.to_string(),
            payment: Box::new(rec),
        };
        // Claim the record; a notification that moved it meanwhile is read again.
        let mut claimed = None;
        for _ in 0..CLAIM_TRIES {
            let mut rec = self
                .store
                .get_payment(merchant_id, out_trade_no)
                .await?
                .filter(|rec| asker.owns(&rec.shop_id))
                .ok_or(PaymentError::NotFound)?;
            match rec.status {
                PaymentStatus::Closed => return Ok(rec),
                PaymentStatus::Succeeded => {
                    return Err(refuse("the payment succeeded; refund it instead", rec))
                }
                _ => {}
            }
            if claim_live(rec.attempt_until) {
                return Err(PaymentError::InProgress);
            }
            let (channel, sub) = self.bound(routes, &rec, "close")?;
            rec.attempt_until = Some(now_ms() + claim_window_ms(channel));
            rec.updated_at = now_ms();
            if self.store.update_payment(&mut rec).await? {
                claimed = Some((rec, channel, sub));
                break;
            }
        }
        let Some((mut rec, channel, sub)) = claimed else {
            return Err(PaymentError::InProgress);
        };
        match channel.close(out_trade_no, &sub).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind, ErrorKind::AlreadyPaid | ErrorKind::NotCloseable) => {
                // Refused because of the order's state: which state, a verified query says.
                let state = match channel.query(out_trade_no, &sub).await {
                    Ok(state) => state,
                    Err(error) => {
                        let rec = self.release(rec).await;
                        return Err(PaymentError::Channel {
                            error,
                            payment: Box::new(rec),
                        });
                    }
                };
                let rec = self
                    .apply_state(routes, rec, state, channel, Claim::Ours)
                    .await?;
                return match rec.status {
                    PaymentStatus::Succeeded => Err(refuse(
                        "the channel says the order was paid; it was not closed",
                        rec,
                    )),
                    PaymentStatus::Closed => Ok(rec),
                    other => Err(refuse(
                        &format!(
                            "the channel refused to close the order ({e}); it is {}",
                            other.as_str()
                        ),
                        rec,
                    )),
                };
            }
            // A verified "no such order" for an order never created there, or one whose payer
            // never opened it before it expired: nothing is or can be paid, nothing to close.
            Err(e)
                if e.kind == ErrorKind::NotFound
                    && (rec.action.is_none() || rec.expires_at <= now_ms()) => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                let rec = self.release(rec).await;
                return Err(refuse(
                    "the channel does not know the order yet (the payer has not opened it); it expires at expires_at",
                    rec,
                ));
            }
            Err(error) => {
                let rec = self.release(rec).await;
                return Err(PaymentError::Channel {
                    error,
                    payment: Box::new(rec),
                });
            }
        }
        let before = rec.status;
        let claim = rec.attempt_until;
        rec.status = PaymentStatus::Closed;
        rec.attempt_until = None;
        rec.updated_at = now_ms();
        match self.commits.commit_claimed(&mut rec, before, claim).await {
            Ok(_) => {}
            // Another request took the order over meanwhile: the record says what it is.
            Err(PaymentError::Superseded(fresh)) if fresh.status == PaymentStatus::Closed => {
                return Ok(*fresh)
            }
            Err(PaymentError::Superseded(_)) => return Err(PaymentError::InProgress),
            Err(e) => return Err(e),
        }
        self.metrics.outcome(&rec, "closed");
        Ok(rec)
    }
}
