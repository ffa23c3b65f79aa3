//! What ops read: the ledgers listed, open orders grouped by account, and the store's own
//! health (`/readyz`). Nothing here writes a record.

use async_trait::async_trait;

use super::{OpenAtAccount, PaymentFilter, PaymentRecord, RefundFilter, RefundRecord, StoreError};

/// Reads for ops and the store's health.
///
/// # Limits
/// `list_refunds` and `list_events` take a limit but no page cursor; `open_by_account`
/// reads every open and succeeded payment.
#[async_trait]
pub trait Reports: Send + Sync {
    /// The ledger for ops, newest first.
    async fn list_payments(&self, filter: &PaymentFilter)
        -> Result<Vec<PaymentRecord>, StoreError>;

    /// The refund ledger for ops, newest first.
    async fn list_refunds(&self, filter: &RefundFilter) -> Result<Vec<RefundRecord>, StoreError>;

    /// Open payments and refunds grouped by bound channel and account.
    async fn open_by_account(&self) -> Result<Vec<OpenAtAccount>, StoreError>;

    /// Reachable and writable: for `/readyz`. After a write failed on I/O (disk full), this
    /// must prove that a write succeeds again.
    async fn ping(&self) -> Result<(), StoreError>;

    /// No I/O: whether the store's last write went through, as far as it knows (SQLite: the
    /// writer's last batch met no I/O failure). A worker that sees `false` asks [`Reports::ping`]
    /// before it runs ([`super::pause::Pause`]).
    fn writes_ok(&self) -> bool {
        true
    }
}

mod on_sqlite {
    use std::sync::atomic::Ordering;

    use async_trait::async_trait;
    use rusqlite::params;

    use super::Reports;
    use crate::store::codec::{PAYMENT_COLUMNS, REFUND_COLUMNS};
    use crate::store::sqlite::{backend, read_refund, read_row, SqliteStore};
    use crate::store::{
        parse_account, OpenAtAccount, PaymentFilter, PaymentRecord, RefundFilter, RefundRecord,
        StoreError,
    };

    /// The readiness probe's write while writes fail: a few pages' worth, so that it needs
    /// space as a payment's write would.
    const PROBE_BYTES: i64 = 64 * 1024;

    #[async_trait]
    impl Reports for SqliteStore {
        async fn list_payments(
            &self,
            filter: &PaymentFilter,
        ) -> Result<Vec<PaymentRecord>, StoreError> {
            let f = filter.clone();
            self.read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments
                         WHERE (?1 IS NULL OR merchant_id = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR created_at >= ?3)
                           AND (?4 IS NULL OR created_at < ?4)
                           AND (?5 IS NULL OR created_at < ?5 OR (created_at = ?5 AND payment_id < ?6))
                         ORDER BY created_at DESC, payment_id DESC LIMIT ?7"
                    ))
                    .map_err(backend)?;
                let (after_at, after_id) = f.after.clone().unzip();
                let rows = stmt
                    .query_map(
                        params![
                            f.merchant_id,
                            f.status.map(|s| s.as_str()),
                            f.since,
                            f.until,
                            after_at,
                            after_id,
                            f.limit
                        ],
                        read_row,
                    )
                    .map_err(backend)?;
                rows.map(|r| r.map_err(backend).and_then(|rec| rec)).collect()
            })
            .await
        }

        async fn list_refunds(
            &self,
            filter: &RefundFilter,
        ) -> Result<Vec<RefundRecord>, StoreError> {
            let f = filter.clone();
            self.read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {REFUND_COLUMNS} FROM refunds
                         WHERE (?1 IS NULL OR merchant_id = ?1) AND (?2 IS NULL OR status = ?2)
                         ORDER BY created_at DESC LIMIT ?3"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(
                        params![f.merchant_id, f.status.map(|s| s.as_str()), f.limit],
                        read_refund,
                    )
                    .map_err(backend)?;
                rows.map(|r| r.map_err(backend).and_then(|rec| rec))
                    .collect()
            })
            .await
        }

        async fn open_by_account(&self) -> Result<Vec<OpenAtAccount>, StoreError> {
            self.read(|conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT channel, account, SUM(open_payment), SUM(open_refunds) FROM (
                           SELECT channel, account, status IN ('pending', 'unknown') AS open_payment,
                                  (SELECT COUNT(*) FROM refunds r WHERE r.payment_id = p.payment_id
                                     AND r.status IN ('pending', 'abnormal')) AS open_refunds
                           FROM payments p WHERE status IN ('pending', 'unknown', 'succeeded'))
                         GROUP BY channel, account HAVING SUM(open_payment) + SUM(open_refunds) > 0",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, Option<String>>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(backend)?;
                rows.map(|r| {
                    let (channel, account, payments, refunds) = r.map_err(backend)?;
                    Ok(OpenAtAccount {
                        channel,
                        account: parse_account(account)?,
                        payments: payments.max(0) as u64,
                        refunds: refunds.max(0) as u64,
                    })
                })
                .collect()
            })
            .await
        }

        /// While the last write failed on I/O, a write that needs new space proves it is back:
        /// a probe row of `PROBE_BYTES`, written and then deleted (each its own commit, so
        /// the space is really taken). Otherwise a read.
        async fn ping(&self) -> Result<(), StoreError> {
            if self.healthy.load(Ordering::Relaxed) {
                return self
                    .read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
                    .await;
            }
            self.write(|conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO probe (id, pad) VALUES (1, zeroblob(?1))",
                    [PROBE_BYTES],
                )
                .map_err(backend)
            })
            .await?;
            self.write(|conn| conn.execute("DELETE FROM probe", []).map_err(backend))
                .await
                .map(drop)
        }

        fn writes_ok(&self) -> bool {
            self.healthy.load(Ordering::Relaxed)
        }
    }
}

mod on_postgres {
    use async_trait::async_trait;

    use super::Reports;
    use crate::store::codec::{PAYMENT_COLUMNS, REFUND_COLUMNS};
    use crate::store::postgres::{
        collect, execute, get, query, read_payment, read_refund, unix_ms, PostgresStore,
    };
    use crate::store::{
        parse_account, OpenAtAccount, PaymentFilter, PaymentRecord, RefundFilter, RefundRecord,
        StoreError,
    };

    #[async_trait]
    impl Reports for PostgresStore {
        async fn list_payments(
            &self,
            filter: &PaymentFilter,
        ) -> Result<Vec<PaymentRecord>, StoreError> {
            let c = self.conn().await?;
            let status = filter.status.map(|s| s.as_str());
            let limit = i64::from(filter.limit);
            // Keyset paging for exports: strictly after `(created_at, payment_id)` in this order.
            let (after_at, after_id) = filter.after.clone().unzip();
            let rows = query(
                &c,
                &format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments
                     WHERE ($1::text IS NULL OR merchant_id = $1) AND ($2::text IS NULL OR status = $2)
                       AND ($3::bigint IS NULL OR created_at >= $3)
                       AND ($4::bigint IS NULL OR created_at < $4)
                       AND ($5::bigint IS NULL OR created_at < $5
                            OR (created_at = $5 AND payment_id < $6::text))
                     ORDER BY created_at DESC, payment_id DESC LIMIT $7"
                ),
                &[
                    &filter.merchant_id,
                    &status,
                    &filter.since,
                    &filter.until,
                    &after_at,
                    &after_id,
                    &limit,
                ],
            )
            .await?;
            collect(rows, read_payment)
        }

        async fn list_refunds(
            &self,
            filter: &RefundFilter,
        ) -> Result<Vec<RefundRecord>, StoreError> {
            let c = self.conn().await?;
            let status = filter.status.map(|s| s.as_str());
            let limit = i64::from(filter.limit);
            let rows = query(
                &c,
                &format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds
                     WHERE ($1::text IS NULL OR merchant_id = $1) AND ($2::text IS NULL OR status = $2)
                     ORDER BY created_at DESC LIMIT $3"
                ),
                &[&filter.merchant_id, &status, &limit],
            )
            .await?;
            collect(rows, read_refund)
        }

        async fn open_by_account(&self) -> Result<Vec<OpenAtAccount>, StoreError> {
            let c = self.conn().await?;
            let rows = query(
                &c,
                "SELECT channel, account, SUM(open_payment)::BIGINT, SUM(open_refunds)::BIGINT FROM (
                   SELECT channel, account,
                          CASE WHEN status IN ('pending', 'unknown') THEN 1 ELSE 0 END AS open_payment,
                          (SELECT COUNT(*) FROM refunds r WHERE r.payment_id = p.payment_id
                             AND r.status IN ('pending', 'abnormal')) AS open_refunds
                   FROM payments p WHERE status IN ('pending', 'unknown', 'succeeded')) t
                 GROUP BY channel, account HAVING SUM(open_payment) + SUM(open_refunds) > 0
                 ORDER BY channel, account NULLS FIRST",
                &[],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    let payments: i64 = get(row, 2)?;
                    let refunds: i64 = get(row, 3)?;
                    Ok(OpenAtAccount {
                        channel: get(row, 0)?,
                        account: parse_account(get(row, 1)?)?,
                        payments: payments.max(0) as u64,
                        refunds: refunds.max(0) as u64,
                    })
                })
                .collect()
        }

        async fn ping(&self) -> Result<(), StoreError> {
            let c = self.conn().await?;
            // Writable, not only reachable: one small committed write (a standby refuses it, a
            // full disk fails it), so `/readyz` says whether payments can be stored now.
            execute(
                &c,
                "INSERT INTO store_probe (id, at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at",
                &[&unix_ms()],
            )
            .await?;
            Ok(())
        }
    }
}
