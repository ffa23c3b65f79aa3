//! The reconciliation schedule: when each payment and refund is checked next, and the claims
//! on due checks (ARCHITECTURE.md, "Reconciliation").
//!
//! # Atomic
//! A claimed check's next time is written only under the record's latest claim, in one step
//! with the check of the claim (SQLite: on its one writer, the claims in memory; PostgreSQL:
//! one statement fenced by `check_claim`).

use async_trait::async_trait;

use super::{CheckClaim, Due, PaymentRecord, RefundRecord, StoreError};

/// The reconciliation schedule and the claims on due checks (see the module's docs for what
/// is atomic).
///
/// # Limits
/// SQLite keeps its claims in memory and hands due checks to whoever asks: it fences one
/// process's own workers, not a second process on the same file.
#[async_trait]
pub trait Schedule: Send + Sync {
    /// Payments whose reconciliation check is due at `now` (the caller's clock, which wrote
    /// the schedule): open ones (`pending`, `unknown`), ended ones (`closed`, `failed`: looked
    /// at once more, for a late payment) and late ones (until their refund is under way);
    /// oldest due first, each with a fresh claim.
    ///
    /// A store shared by several instances claims them for this caller with a lease timed by
    /// the database's clock (not the caller's): until [`Schedule::schedule_claimed_check`] or
    /// the lease running out, no other caller gets them. SQLite serves one instance and
    /// hands due checks to whoever asks, with a plain read (so a store that cannot write
    /// still answers it); its claims live in memory.
    async fn claim_due_payments(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Due<PaymentRecord>>, StoreError>;

    /// Open refunds (`pending`, `abnormal`) whose reconciliation check is due at `now`,
    /// claimed like [`Schedule::claim_due_payments`].
    async fn claim_due_refunds(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Due<RefundRecord>>, StoreError>;

    /// [`Schedule::claim_due_payments`] without the claims, for tools and tests: a check taken
    /// so is rescheduled with the unclaimed [`Schedule::schedule_payment_check`] (or its claim
    /// runs out). The reconciler uses the claims.
    async fn due_payments(&self, now: i64, limit: u32) -> Result<Vec<PaymentRecord>, StoreError> {
        let due = self.claim_due_payments(now, limit).await?;
        Ok(due.into_iter().map(|d| d.record).collect())
    }

    /// [`Schedule::claim_due_refunds`] without the claims.
    async fn due_refunds(&self, now: i64, limit: u32) -> Result<Vec<RefundRecord>, StoreError> {
        let due = self.claim_due_refunds(now, limit).await?;
        Ok(due.into_iter().map(|d| d.record).collect())
    }

    /// The next check of a claimed record, written only while `claim` is the record's latest
    /// claim (fencing): whether it was written. `false` — another caller claimed the check
    /// since, or a payment flow scheduled it ([`Schedule::schedule_payment_check`]) — changes
    /// nothing; that writer's schedule stands. The claim ends with the write.
    ///
    /// `None` means no more checks — except for an open record, which always keeps one
    /// ([`OPEN_RECHECK`](super::OPEN_RECHECK)).
    async fn schedule_claimed_check(
        &self,
        claim: &CheckClaim,
        at: Option<i64>,
    ) -> Result<bool, StoreError>;

    /// When to check a payment next, written by a payment flow that holds no claim (a late
    /// payment's refund, say): always written, and it ends any claim on the check, so a
    /// holder's later write changes nothing. `None`: never again — except for an open
    /// payment, which always keeps a check ([`OPEN_RECHECK`](super::OPEN_RECHECK)).
    async fn schedule_payment_check(
        &self,
        payment_id: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError>;

    /// [`Schedule::schedule_payment_check`] for a refund.
    async fn schedule_refund_check(
        &self,
        refund_id: &str,
        at: Option<i64>,
    ) -> Result<(), StoreError>;
}

mod on_sqlite {
    use async_trait::async_trait;
    use rusqlite::params;

    use super::Schedule;
    use crate::store::codec::{PAYMENT_COLUMNS, REFUND_COLUMNS};
    use crate::store::sqlite::{backend, collect, lock, read_refund, read_row, SqliteStore};
    use crate::store::{
        claim_token, open_recheck_at, CheckClaim, CheckOf, Due, PaymentRecord, RefundRecord,
        StoreError, OPEN_REFUND,
    };

    impl SqliteStore {
        /// Hands out `due` with a fresh claim each, the latest on its record from now on.
        fn claim<T>(
            &self,
            of: CheckOf,
            due: Vec<T>,
            id: impl Fn(&T) -> String,
        ) -> Result<Vec<Due<T>>, StoreError> {
            let token = claim_token()?;
            let mut claims = lock(&self.claims);
            Ok(due
                .into_iter()
                .map(|record| {
                    let claim = CheckClaim::new(of, id(&record), token.clone());
                    claims.insert((of, claim.id.clone()), token.clone());
                    Due { record, claim }
                })
                .collect())
        }

        /// Writes a record's next check: under `claim` only while it is the record's latest
        /// (whether it was written); without one always, ending any claim. `None` for an open
        /// record becomes [`crate::store::OPEN_RECHECK`] from now.
        async fn write_check(
            &self,
            of: CheckOf,
            id: &str,
            at: Option<i64>,
            claim: Option<CheckClaim>,
        ) -> Result<bool, StoreError> {
            let (table, id_column, open) = of.table();
            let sql = format!(
            "UPDATE {table} SET next_check_at = CASE WHEN ?2 IS NULL AND {open} THEN ?3 ELSE ?2 END
             WHERE {id_column} = ?1"
        );
            let (id, claims, backstop) = (id.to_string(), self.claims.clone(), open_recheck_at());
            self.write(move |conn| {
                let key = (of, id);
                if let Some(claim) = &claim {
                    if lock(&claims).get(&key) != Some(&claim.token) {
                        return Ok(false);
                    }
                }
                conn.prepare_cached(&sql)
                    .map_err(backend)?
                    .execute(params![key.1, at, backstop])
                    .map_err(backend)?;
                lock(&claims).remove(&key);
                Ok(true)
            })
            .await
        }
    }

    #[async_trait]
    impl Schedule for SqliteStore {
        async fn claim_due_payments(
            &self,
            now: i64,
            limit: u32,
        ) -> Result<Vec<Due<PaymentRecord>>, StoreError> {
            let due = self
                .read(move |conn| {
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {PAYMENT_COLUMNS} FROM payments
                             WHERE next_check_at <= ?1
                               AND (status IN ('pending', 'unknown', 'closed', 'failed') OR late = 1)
                             ORDER BY next_check_at LIMIT ?2"
                        ))
                        .map_err(backend)?;
                    let rows = stmt
                        .query_map(params![now, limit], read_row)
                        .map_err(backend)?;
                    collect(rows)
                })
                .await?;
            self.claim(CheckOf::Payment, due, |p| p.payment_id.clone())
        }

        async fn claim_due_refunds(
            &self,
            now: i64,
            limit: u32,
        ) -> Result<Vec<Due<RefundRecord>>, StoreError> {
            let due = self
                .read(move |conn| {
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {REFUND_COLUMNS} FROM refunds
                             WHERE next_check_at <= ?1 AND {OPEN_REFUND}
                             ORDER BY next_check_at LIMIT ?2"
                        ))
                        .map_err(backend)?;
                    let rows = stmt
                        .query_map(params![now, limit], read_refund)
                        .map_err(backend)?;
                    collect(rows)
                })
                .await?;
            self.claim(CheckOf::Refund, due, |r| r.refund_id.clone())
        }

        async fn schedule_claimed_check(
            &self,
            claim: &CheckClaim,
            at: Option<i64>,
        ) -> Result<bool, StoreError> {
            self.write_check(claim.of, &claim.id, at, Some(claim.clone()))
                .await
        }

        async fn schedule_payment_check(
            &self,
            payment_id: &str,
            at: Option<i64>,
        ) -> Result<(), StoreError> {
            self.write_check(CheckOf::Payment, payment_id, at, None)
                .await
                .map(|_| ())
        }

        async fn schedule_refund_check(
            &self,
            refund_id: &str,
            at: Option<i64>,
        ) -> Result<(), StoreError> {
            self.write_check(CheckOf::Refund, refund_id, at, None)
                .await
                .map(|_| ())
        }
    }
}

mod on_postgres {
    use async_trait::async_trait;

    use super::Schedule;
    use crate::store::postgres::claims::{claim_due, write_check, DUE_PAYMENTS, DUE_REFUNDS};
    use crate::store::postgres::{read_payment, read_refund, PostgresStore};
    use crate::store::{CheckClaim, CheckOf, Due, PaymentRecord, RefundRecord, StoreError};

    #[async_trait]
    impl Schedule for PostgresStore {
        async fn claim_due_payments(
            &self,
            now: i64,
            limit: u32,
        ) -> Result<Vec<Due<PaymentRecord>>, StoreError> {
            let c = self.conn().await?;
            claim_due(&c, &DUE_PAYMENTS, now, limit, self.lease_ms, read_payment).await
        }

        async fn claim_due_refunds(
            &self,
            now: i64,
            limit: u32,
        ) -> Result<Vec<Due<RefundRecord>>, StoreError> {
            let c = self.conn().await?;
            claim_due(&c, &DUE_REFUNDS, now, limit, self.lease_ms, read_refund).await
        }

        async fn schedule_claimed_check(
            &self,
            claim: &CheckClaim,
            at: Option<i64>,
        ) -> Result<bool, StoreError> {
            let started = tokio::time::Instant::now();
            let c = self.conn().await?;
            let written = write_check(&c, claim.of, &claim.id, at, Some(&claim.token)).await?;
            self.committed(started);
            Ok(written > 0)
        }

        async fn schedule_payment_check(
            &self,
            payment_id: &str,
            at: Option<i64>,
        ) -> Result<(), StoreError> {
            let started = tokio::time::Instant::now();
            let c = self.conn().await?;
            write_check(&c, CheckOf::Payment, payment_id, at, None).await?;
            self.committed(started);
            Ok(())
        }

        async fn schedule_refund_check(
            &self,
            refund_id: &str,
            at: Option<i64>,
        ) -> Result<(), StoreError> {
            let started = tokio::time::Instant::now();
            let c = self.conn().await?;
            write_check(&c, CheckOf::Refund, refund_id, at, None).await?;
            self.committed(started);
            Ok(())
        }
    }
}
