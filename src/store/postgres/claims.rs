//! Claims on due work, shared by several instances: leases timed by the database's clock,
//! fencing tokens, and the row lock every refund write of one payment takes.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{duration_ms, execute, get, query};
use crate::store::codec::{PAYMENT_COLUMNS, REFUND_COLUMNS};
use crate::store::{claim_token, CheckClaim, CheckOf, Due, StoreError, OPEN_RECHECK, OPEN_REFUND};

/// Now in unix ms by the database's clock: every lease is set and compared by this one clock,
/// so instances whose clocks disagree still agree on whose lease has run out. (`now()` is the
/// transaction's start: one value throughout a statement.) Floored, as the process's own
/// `now_ms` truncates: `::bigint` alone rounds half up, putting the database up to half a
/// millisecond ahead of a caller's clock read just after — enough for a check scheduled
/// "now + recheck" to be not yet due at the caller's "now + recheck" (seen once in CI).
pub(in crate::store) const DB_NOW_MS: &str = "floor(extract(epoch from now()) * 1000)::bigint";

/// What the reconciliation worker checks in one table: open records whose check is due.
pub(in crate::store) struct DueChecks {
    of: CheckOf,
    table: &'static str,
    id: &'static str,
    /// Which records are checked, as an SQL condition.
    open: &'static str,
    columns: &'static str,
}

pub(in crate::store) const DUE_PAYMENTS: DueChecks = DueChecks {
    of: CheckOf::Payment,
    table: "payments",
    id: "payment_id",
    // Ended ones get one more look (a late payment); late ones until their refund is sent.
    open: "status IN ('pending', 'unknown', 'closed', 'failed') OR late",
    columns: PAYMENT_COLUMNS,
};

pub(in crate::store) const DUE_REFUNDS: DueChecks = DueChecks {
    of: CheckOf::Refund,
    table: "refunds",
    id: "refund_id",
    open: OPEN_REFUND,
    columns: REFUND_COLUMNS,
};

/// Claims up to `limit` due checks, oldest due first, like events: one instance checks a
/// record at a time. Each claim stores a fresh token (`check_claim`) and a lease timed by the
/// database's clock; it ends with the next check being written under that token, or the
/// lease running out.
pub(in crate::store) async fn claim_due<C: GenericClient, T>(
    c: &C,
    due: &DueChecks,
    now: i64,
    limit: u32,
    lease_ms: i64,
    read: fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<Due<T>>, StoreError> {
    let DueChecks {
        of,
        table,
        id,
        open,
        columns,
    } = due;
    let token = claim_token()?;
    let rows = query(
        c,
        &format!(
            "WITH due AS (
               SELECT {id} AS id FROM {table}
               WHERE next_check_at <= $1 AND ({open})
                 AND (check_lease_until IS NULL OR check_lease_until <= {DB_NOW_MS})
               ORDER BY next_check_at LIMIT $2
               FOR UPDATE SKIP LOCKED)
             UPDATE {table} SET check_lease_until = {DB_NOW_MS} + $3, check_claim = $4
             FROM due WHERE {table}.{id} = due.id
             RETURNING {columns}, next_check_at, {table}.{id}"
        ),
        &[&now, &i64::from(limit), &lease_ms, &token],
    )
    .await?;
    // next_check_at and the id follow the record's own columns.
    let at = columns.split(',').count();
    let mut claimed = rows
        .iter()
        .map(|row| {
            let claim = CheckClaim::new(*of, get(row, at + 1)?, token.clone());
            Ok((
                get::<i64>(row, at)?,
                Due {
                    record: read(row)?,
                    claim,
                },
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    claimed.sort_by_key(|(at, _)| *at);
    Ok(claimed.into_iter().map(|(_, d)| d).collect())
}

/// Writes a record's next check: under `claim` only while it is the record's latest (how
/// many rows were written); without one always. Either way the claim ends. `None` for an
/// open record becomes [`OPEN_RECHECK`] from now (the database's clock).
pub(in crate::store) async fn write_check<C: GenericClient>(
    c: &C,
    of: CheckOf,
    id: &str,
    at: Option<i64>,
    claim: Option<&str>,
) -> Result<u64, StoreError> {
    let (table, id_column, open) = of.table();
    let recheck_ms = duration_ms(OPEN_RECHECK);
    let fence = if claim.is_some() {
        "AND check_claim = $4"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE {table}
         SET next_check_at = CASE WHEN $2::BIGINT IS NULL AND {open} THEN {DB_NOW_MS} + $3
                                  ELSE $2::BIGINT END,
             check_lease_until = NULL, check_claim = NULL
         WHERE {id_column} = $1 {fence}"
    );
    match claim {
        Some(token) => execute(c, &sql, &[&id, &at, &recheck_ms, &token]).await,
        None => execute(c, &sql, &[&id, &at, &recheck_ms]).await,
    }
}

/// Takes the row lock on a payment: every refund write of one payment holds it, so each sees
/// the refunds committed before it (statements after the lock read a fresh snapshot).
pub(in crate::store) async fn lock_payment<C: GenericClient>(
    c: &C,
    payment_id: &str,
) -> Result<(), StoreError> {
    query(
        c,
        "SELECT 1 FROM payments WHERE payment_id = $1 FOR UPDATE",
        &[&payment_id],
    )
    .await?;
    Ok(())
}
