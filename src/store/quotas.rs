//! Quotas ("bank limits", 单日限额): how much a provider account has taken in the China calendar
//! day and month, and the guard that the ledger's guarded writes
//! ([`super::Ledger::insert_payment_within`], [`super::Ledger::update_payment_within`]) check
//! in the same transaction as the write (DESIGN.md §13).
//!
//! What counts: the `amount` of every payment bound to the account (its stored `account`,
//! which for a partner / ISV channel names the sub-merchant), created at or after the
//! period's start, whose status is not `failed` or `closed` — every payment that is or may
//! become paid. A failover moves a payment to its new account by itself, since the sum is by
//! the record's account; a payment that fails or closes frees its room by itself, with no
//! write of its own here.
//!
//! # Atomic
//! The check and the write are one transaction. SQLite: the one writer runs writes one after
//! another, so two guarded inserts never both see the same room. PostgreSQL: each guarded
//! write first takes a transaction-scoped advisory lock keyed on the account
//! (`lock_key`), so guarded writes of one account queue — on every instance — and each
//! sums after the one before it committed. Reductions (a payment becoming failed or closed)
//! take no lock: they only free room.
//!
//! # Limits
//! The sum is a range scan of the account's payments since the earliest period's start (its
//! month's, when a monthly limit is set) on the index `payments_account_created`
//! (`payments (account, created_at)`), run by every guarded write and every
//! `GET /admin/quotas` row: cheap for thousands of payments a month, linear in them. An account whose monthly count grows large (hundreds of thousands) would want a
//! counter table instead — `(account, period, start) → amount`, moved in the same transaction
//! as each insert, rebind and status change into or out of `failed`/`closed` — at the cost of
//! a write per status change. The sum has no upper bound: a payment stamped later than `now`
//! (an instance whose clock runs ahead) counts in today's room, on the safe side.
//!
//! On PostgreSQL guarded writes of one account queue on its lock (never those of other
//! accounts): each holds it for a few round trips (lock, replay check, sum, write, commit), so
//! one account takes some hundreds of guarded creates a second at most, and a write that
//! waits longer than the session's `lock_timeout` (2s) fails as `Unavailable` (retryable,
//! `503 store_unavailable`), nothing written. Quotas are meant for accounts with bank limits,
//! far below that.

use async_trait::async_trait;
use serde::Serialize;

use super::{account_json, StoreError};
use crate::domain::Account;

/// Which limit a payment would exceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// The China calendar day's sum.
    Daily,
    /// The China calendar month's sum.
    Monthly,
    /// The payment alone is above the channel's `single` limit (checked without the store).
    Single,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
            Period::Single => "single",
        }
    }
}

/// A payment that does not fit: `used` (fen, without this payment; 0 for `single`) plus its
/// amount would pass `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Over {
    pub period: Period,
    pub used: u64,
    pub limit: u64,
}

/// Whether a payment fits an account's room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    Fits,
    Over(Over),
}

/// What an account has taken (fen): since the day's start, and since the month's start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuotaUse {
    pub day: u64,
    pub month: u64,
}

/// The room a guarded write checks, in its transaction: the payment (its `account` must be
/// the record's) and each limit with its period's start (Unix ms; China calendar, see
/// `crate::clock::china_day_start_ms`). `payment::quota::guard_for` builds it from a
/// channel's quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaGuard {
    pub account: Account,
    /// The payment's amount (fen).
    pub amount: u64,
    /// `(limit, day_start_ms)`.
    pub daily: Option<(u64, i64)>,
    /// `(limit, month_start_ms)`.
    pub monthly: Option<(u64, i64)>,
}

impl QuotaGuard {
    /// Whether `amount` fits beside `used` (of the others); the daily limit is judged first.
    pub fn room(&self, used: QuotaUse) -> Room {
        let over = |period, used: u64, limit: u64| {
            (used.saturating_add(self.amount) > limit).then_some(Over {
                period,
                used,
                limit,
            })
        };
        self.daily
            .and_then(|(limit, _)| over(Period::Daily, used.day, limit))
            .or_else(|| {
                self.monthly
                    .and_then(|(limit, _)| over(Period::Monthly, used.month, limit))
            })
            .map_or(Room::Fits, Room::Over)
    }

    /// The starts the sum takes: `(day, month)`; a period without a limit takes the other's
    /// start (its sum is then not looked at).
    fn starts(&self) -> (i64, i64) {
        match (self.daily, self.monthly) {
            (Some((_, d)), Some((_, m))) => (d, m),
            (Some((_, d)), None) => (d, d),
            (None, Some((_, m))) => (m, m),
            // A guard without limits always fits; nothing since the end of time.
            (None, None) => (i64::MAX, i64::MAX),
        }
    }

    /// The account as stored, checked to be the record's: a guard built for another account
    /// than the one written would guard nothing.
    pub(super) fn stored_account(&self, record: &Option<Account>) -> Result<String, StoreError> {
        let mine = account_json(&Some(self.account.clone()));
        match mine {
            Some(text) if mine == account_json(record) => Ok(text),
            _ => Err(StoreError::Backend(
                "quota guard: its account is not the payment's".into(),
            )),
        }
    }
}

/// Reads of what accounts have taken (`GET /admin/quotas`).
///
/// # Limits
/// Each read is a range scan of the account's payments since the earlier start (see the
/// module's `# Limits`: a counter table would replace it for an account with a large monthly
/// count).
#[async_trait]
pub trait Quotas: Send + Sync {
    /// The sums of the payments bound to `account` created at or after `day_start_ms` and
    /// `month_start_ms`, whose status is not `failed` or `closed` (see the module's docs,
    /// and its `# Limits` for the cost).
    async fn quota_used(
        &self,
        account: &Account,
        day_start_ms: i64,
        month_start_ms: i64,
    ) -> Result<QuotaUse, StoreError>;
}

/// The sum, both engines: `?1`/`$1` the account's text, `2` the day's start, `3` the month's,
/// `4` the earlier of the two (so the scan is one index range), `5` a payment id left out
/// (a rebind's own record; `''` for none — no payment has an empty id).
/// (A macro over the engine's parameter sign, so each engine's text is one literal.)
macro_rules! used_where {
    ($p:literal) => {
        concat!(
            "account = ",
            $p,
            "1 AND created_at >= ",
            $p,
            "4",
            " AND status NOT IN ('failed', 'closed') AND payment_id <> ",
            $p,
            "5"
        )
    };
}

/// The advisory lock key of an account (PostgreSQL): the first 64 bits of the SHA-256 of
/// its stored text, under a prefix of its own so that no other lock of payroute shares it.
/// Stable across instances and versions (a key that differed between two instances would
/// let both take the last room).
pub(super) fn lock_key(account_text: &str) -> i64 {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("payroute.quota\n{account_text}").as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

fn unsigned(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("quota sum {v}")))
}

pub(super) mod on_sqlite {
    use async_trait::async_trait;
    use rusqlite::{params, Connection};

    use super::{unsigned, QuotaGuard, QuotaUse, Quotas};
    use crate::domain::Account;
    use crate::store::sqlite::{backend, SqliteStore};
    use crate::store::{account_json, StoreError};

    /// What `account_text` has taken since each start, leaving out `excluding` (on the
    /// writer's connection inside a write, or on a reader's).
    pub(in crate::store) fn used(
        conn: &Connection,
        account_text: &str,
        (day_start, month_start): (i64, i64),
        excluding: Option<&str>,
    ) -> Result<QuotaUse, StoreError> {
        const SQL: &str = concat!(
            "SELECT COALESCE(SUM(CASE WHEN created_at >= ?2 THEN amount ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN created_at >= ?3 THEN amount ELSE 0 END), 0)
             FROM payments WHERE ",
            used_where!("?")
        );
        let (day, month): (i64, i64) = conn
            .prepare_cached(SQL)
            .map_err(backend)?
            .query_row(
                params![
                    account_text,
                    day_start,
                    month_start,
                    day_start.min(month_start),
                    excluding.unwrap_or(""),
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(backend)?;
        Ok(QuotaUse {
            day: unsigned(day)?,
            month: unsigned(month)?,
        })
    }

    /// [`used`] for a guard's account and starts.
    pub(in crate::store) fn used_by(
        conn: &Connection,
        account_text: &str,
        guard: &QuotaGuard,
        excluding: Option<&str>,
    ) -> Result<QuotaUse, StoreError> {
        used(conn, account_text, guard.starts(), excluding)
    }

    #[async_trait]
    impl Quotas for SqliteStore {
        async fn quota_used(
            &self,
            account: &Account,
            day_start_ms: i64,
            month_start_ms: i64,
        ) -> Result<QuotaUse, StoreError> {
            let Some(text) = account_json(&Some(account.clone())) else {
                return Ok(QuotaUse::default());
            };
            self.read(move |conn| used(conn, &text, (day_start_ms, month_start_ms), None))
                .await
        }
    }
}

pub(super) mod on_postgres {
    use async_trait::async_trait;
    use deadpool_postgres::GenericClient;

    use super::{lock_key, unsigned, QuotaGuard, QuotaUse, Quotas};
    use crate::domain::Account;
    use crate::store::postgres::{execute, get, query, PostgresStore};
    use crate::store::{account_json, StoreError};

    /// A guarded write's transaction, READ COMMITTED whatever the database's default: each
    /// statement after the lock must see what the lock's previous holder committed (under
    /// REPEATABLE READ the snapshot would predate the wait, and two writers could both take
    /// the last room).
    pub(in crate::store) async fn guarded_transaction(
        c: &mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
        c.build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(crate::store::postgres::pg)
    }

    /// Takes the account's quota lock until the end of the transaction `tx`: guarded writes of
    /// one account, on any instance, run one after another from here.
    pub(in crate::store) async fn lock_account<C: GenericClient>(
        tx: &C,
        account_text: &str,
    ) -> Result<(), StoreError> {
        execute(
            tx,
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key(account_text)],
        )
        .await?;
        Ok(())
    }

    /// What `account_text` has taken since each start, leaving out `excluding`. Sums are
    /// `BIGINT` (PostgreSQL's `SUM(bigint)` is `numeric`: cast back, never through a float).
    pub(in crate::store) async fn used<C: GenericClient>(
        c: &C,
        account_text: &str,
        (day_start, month_start): (i64, i64),
        excluding: Option<&str>,
    ) -> Result<QuotaUse, StoreError> {
        const SQL: &str = concat!(
            "SELECT COALESCE(SUM(amount) FILTER (WHERE created_at >= $2), 0)::BIGINT,
                    COALESCE(SUM(amount) FILTER (WHERE created_at >= $3), 0)::BIGINT
             FROM payments WHERE ",
            used_where!("$")
        );
        let since = day_start.min(month_start);
        let excluding = excluding.unwrap_or("");
        let rows = query(
            c,
            SQL,
            &[&account_text, &day_start, &month_start, &since, &excluding],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(QuotaUse::default());
        };
        Ok(QuotaUse {
            day: unsigned(get(row, 0)?)?,
            month: unsigned(get(row, 1)?)?,
        })
    }

    /// [`used`] for a guard's account and starts.
    pub(in crate::store) async fn used_by<C: GenericClient>(
        c: &C,
        account_text: &str,
        guard: &QuotaGuard,
        excluding: Option<&str>,
    ) -> Result<QuotaUse, StoreError> {
        used(c, account_text, guard.starts(), excluding).await
    }

    #[async_trait]
    impl Quotas for PostgresStore {
        async fn quota_used(
            &self,
            account: &Account,
            day_start_ms: i64,
            month_start_ms: i64,
        ) -> Result<QuotaUse, StoreError> {
            let Some(text) = account_json(&Some(account.clone())) else {
                return Ok(QuotaUse::default());
            };
            let c = self.conn().await?;
            used(&c, &text, (day_start_ms, month_start_ms), None).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            provider: "wechatpay_v3".into(),
            mode: "partner".into(),
            mchid: Some("1900000100".into()),
            sub_mchid: Some("1900000109".into()),
            app_id: Some("wx1".into()),
            seller: None,
        }
    }

    fn guard(amount: u64, daily: Option<u64>, monthly: Option<u64>) -> QuotaGuard {
        QuotaGuard {
            account: account(),
            amount,
            daily: daily.map(|l| (l, 100)),
            monthly: monthly.map(|l| (l, 10)),
        }
    }

    #[test]
    fn room_is_judged_daily_first_and_exactly_at_the_limit() {
        let g = guard(10, Some(100), Some(1000));
        assert_eq!(
            g.room(QuotaUse {
                day: 90,
                month: 990
            }),
            Room::Fits
        );
        assert_eq!(
            g.room(QuotaUse {
                day: 91,
                month: 991
            }),
            Room::Over(Over {
                period: Period::Daily,
                used: 91,
                limit: 100
            })
        );
        assert_eq!(
            g.room(QuotaUse { day: 0, month: 991 }),
            Room::Over(Over {
                period: Period::Monthly,
                used: 991,
                limit: 1000
            })
        );
        // No limit: always fits, whatever was used (and no overflow at the top).
        let none = guard(u64::MAX, None, None);
        assert_eq!(
            none.room(QuotaUse {
                day: u64::MAX,
                month: u64::MAX
            }),
            Room::Fits
        );
        assert_eq!(none.starts(), (i64::MAX, i64::MAX));
        assert_eq!(guard(1, Some(5), None).starts(), (100, 100));
        assert_eq!(guard(1, None, Some(5)).starts(), (10, 10));
        assert_eq!(guard(1, Some(5), Some(6)).starts(), (100, 10));
    }

    #[test]
    fn a_guard_guards_only_its_own_account() {
        let g = guard(1, Some(5), None);
        assert!(g.stored_account(&Some(account())).is_ok());
        let mut other = account();
        other.sub_mchid = Some("1900000209".into());
        assert!(g.stored_account(&Some(other)).is_err());
        assert!(g.stored_account(&None).is_err());
    }

    #[test]
    fn the_lock_key_is_stable_and_per_account() {
        let a = account_json(&Some(account())).unwrap();
        let mut other = account();
        other.sub_mchid = Some("1900000209".into());
        let b = account_json(&Some(other)).unwrap();
        assert_eq!(lock_key(&a), lock_key(&a));
        assert_ne!(lock_key(&a), lock_key(&b));
        // Pinned: instances of different versions must agree on it (SHA-256 of
        // "payroute.quota\nx", its first 8 bytes big-endian).
        assert_eq!(lock_key("x"), 2_409_914_400_875_154_255);
    }
}
