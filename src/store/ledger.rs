//! Payments and refunds: the ledger's records, each written compare-and-set on its `version`,
//! with the shop event that tells of a change in the same transaction.
//!
//! # Atomic
//! Each method is one transaction: an update and its event (`*_emitting`); a refund's
//! reservation and its over-refund guard; a refund's update and its payment's
//! `refunded_amount`; a guarded insert or rebind and its quota check (`super::quotas`).
//! SQLite runs them one after another on its one writer; PostgreSQL locks the payment's row
//! first for every refund write, and the account's quota lock for every guarded write.

use async_trait::async_trait;

use super::quotas::{Over, QuotaGuard};
use super::{EventRecord, PaymentRecord, RefundRecord, Reservation, StoreError};

/// What [`Ledger::insert_payment_within`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Inserted {
    /// Stored.
    New,
    /// `(merchant_id, out_trade_no)` is taken: the record that holds it (a replay, never
    /// refused for quota).
    Existing(Box<PaymentRecord>),
    /// Not stored: the payment does not fit its account's room.
    OverQuota(Over),
}

/// What [`Ledger::update_payment_within`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Updated {
    /// Written; `version` bumped.
    Won,
    /// Someone changed the record since it was read: nothing written.
    Lost,
    /// Not written: the payment does not fit its (new) account's room.
    OverQuota(Over),
}

/// Payments and refunds (see the module's docs for what is atomic).
///
/// # Limits
/// On SQLite every write waits for its batch's commit on the one writer thread (group
/// commit); on PostgreSQL each write is its own transaction, refund writes of one payment
/// queue on its row lock, and guarded writes of one account on its quota lock. A guarded
/// write sums the account's month (see `super::quotas`, `# Limits`).
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Inserts a new payment, or returns the one that already has its
    /// `(merchant_id, out_trade_no)` — the unique key that binds an order to one channel.
    /// [`Ledger::insert_payment_within`] without a guard.
    async fn insert_payment(&self, p: &PaymentRecord) -> Result<Option<PaymentRecord>, StoreError> {
        match self.insert_payment_within(p, None).await? {
            Inserted::New => Ok(None),
            Inserted::Existing(existing) => Ok(Some(*existing)),
            Inserted::OverQuota(_) => Err(StoreError::Backend(
                "insert_payment: refused for quota without a guard".into(),
            )),
        }
    }

    /// Inserts a new payment if it fits `guard`'s room (`None`: no quota), in one
    /// transaction with the check; or returns the record that already has its
    /// `(merchant_id, out_trade_no)` — looked for first, so a replay is never refused for
    /// quota. `guard.account` must be `p.account` (an error otherwise). Atomic across
    /// instances: two creates never both take the last room (see `super::quotas`).
    async fn insert_payment_within(
        &self,
        p: &PaymentRecord,
        guard: Option<&QuotaGuard>,
    ) -> Result<Inserted, StoreError>;

    /// [`Ledger::update_payment`] that, with a guard, writes only if the payment fits the
    /// room of its account as written (`p.account`, which `guard.account` must be) — the
    /// sum leaving the record itself out — in one transaction with the check: a create
    /// failing over to a fallback rebinds its record this way. A lost compare-and-set is
    /// `Lost`, whatever the room.
    async fn update_payment_within(
        &self,
        p: &mut PaymentRecord,
        guard: Option<&QuotaGuard>,
    ) -> Result<Updated, StoreError> {
        match guard {
            Some(guard) => self.update_payment_guarded(p, guard).await,
            None => Ok(match self.update_payment_emitting(p, None).await? {
                true => Updated::Won,
                false => Updated::Lost,
            }),
        }
    }

    /// [`Ledger::update_payment_within`] with a guard: each engine's transaction.
    async fn update_payment_guarded(
        &self,
        p: &mut PaymentRecord,
        guard: &QuotaGuard,
    ) -> Result<Updated, StoreError>;

    async fn get_payment(
        &self,
        merchant_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<PaymentRecord>, StoreError>;

    /// Writes `p` if nobody else changed it since it was read (same `version`); bumps
    /// `p.version` and returns true on success, false on a lost race.
    async fn update_payment(&self, p: &mut PaymentRecord) -> Result<bool, StoreError> {
        self.update_payment_emitting(p, None).await
    }

    /// [`Ledger::update_payment`], and in the same transaction (only if the update wins) the
    /// shop event that tells of it.
    async fn update_payment_emitting(
        &self,
        p: &mut PaymentRecord,
        event: Option<&EventRecord>,
    ) -> Result<bool, StoreError>;

    /// Every payment with this out_trade_no (one per merchant), for notifications, which
    /// name the order but not our merchant id; oldest first (`created_at`, then
    /// `payment_id`), so that the same question always gets the same answer. The caller
    /// must pick by account: the number alone is unique per merchant only.
    async fn payments_by_trade_no(
        &self,
        out_trade_no: &str,
    ) -> Result<Vec<PaymentRecord>, StoreError>;

    /// Atomically checks the refund guard (succeeded + open refunds + this ≤ `paid`) and
    /// the uniqueness of `out_refund_no`, then stores the refund as pending.
    async fn reserve_refund(&self, r: &RefundRecord, paid: u64) -> Result<Reservation, StoreError>;

    async fn get_refund(
        &self,
        merchant_id: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError>;

    /// Compare-and-set like [`Ledger::update_payment`]; in the same transaction the payment's
    /// `refunded_amount` becomes the sum of its succeeded refunds.
    async fn update_refund(&self, r: &mut RefundRecord) -> Result<bool, StoreError> {
        self.update_refund_emitting(r, None).await
    }

    /// [`Ledger::update_refund`] with the shop event that tells of it, in one transaction.
    async fn update_refund_emitting(
        &self,
        r: &mut RefundRecord,
        event: Option<&EventRecord>,
    ) -> Result<bool, StoreError>;

    /// Binds `merchant_id`'s Alipay ISV orders that name their seller the old way (a
    /// fingerprint of the merchant's `app_auth_token`, which a token refresh breaks) to the
    /// merchant's Alipay user id `seller_id`; how many were rebound. An ISV order's seller is
    /// by construction its own merchant, so the rebinding moves no order to another account.
    ///
    /// # Limits
    /// Reads every ISV record of the merchant whose seller is not an Alipay user id: after
    /// the first run that is none, but the merchant's rows are still scanned once (its index
    /// narrows them to the merchant, a text match to the old ones).
    async fn rebind_legacy_sellers(
        &self,
        merchant_id: &str,
        seller_id: &str,
    ) -> Result<u64, StoreError>;
}

mod on_sqlite {
    use async_trait::async_trait;
    use rusqlite::{params, Connection, OptionalExtension};

    use super::{Inserted, Ledger, Updated};
    use crate::store::codec::{payment_columns, PAYMENT_COLUMNS, REFUND_COLUMNS};
    use crate::store::quotas::{on_sqlite as quotas, QuotaGuard, Room};
    use crate::store::sqlite::{
        backend, collect, get, get_refund, insert_event, read_row, SqliteStore,
    };
    use crate::store::{
        account_json, rebound_seller, EventRecord, PaymentRecord, RefundRecord, Reservation,
        StoreError, LEGACY_SELLER_FILTER,
    };

    /// Stores `p` (due for reconciliation at once: the worker sets the real first check).
    fn insert_row(conn: &Connection, p: &PaymentRecord) -> Result<(), StoreError> {
        conn.prepare_cached(
            concat!("INSERT INTO payments (", payment_columns!(), ", next_check_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?19)"),
        )
        .map_err(backend)?
        .execute(params![
                p.payment_id, p.merchant_id, p.shop_id, p.out_trade_no, p.amount as i64, p.currency,
                p.method.as_str(), p.status.as_str(), p.channel, p.rule,
                p.action.as_ref().map(|a| a.to_string()), p.provider_trade_no, p.refunded_amount as i64,
                p.request_hash, p.request.to_string(), p.error_code.map(|c| c.as_str()), p.error_message,
                p.attempt_until, p.created_at, p.updated_at, p.paid_at, p.expires_at, p.version,
                account_json(&p.account), p.late,
            ],
        )
        .map_err(backend)?;
        Ok(())
    }

    /// Compare-and-set on `version`: how many rows it wrote (0 or 1).
    fn update_row(conn: &Connection, rec: &PaymentRecord) -> Result<usize, StoreError> {
        conn.prepare_cached(
            "UPDATE payments SET status = ?1, channel = ?2, rule = ?3, action = ?4, provider_trade_no = ?5,
             refunded_amount = ?6, error_code = ?7, error_message = ?8, attempt_until = ?9, updated_at = ?10,
             paid_at = ?11, account = ?14, late = ?15, version = version + 1
             WHERE payment_id = ?12 AND version = ?13",
        )
        .map_err(backend)?
        .execute(params![
                rec.status.as_str(), rec.channel, rec.rule, rec.action.as_ref().map(|a| a.to_string()),
                rec.provider_trade_no, rec.refunded_amount as i64, rec.error_code.map(|c| c.as_str()),
                rec.error_message, rec.attempt_until, rec.updated_at, rec.paid_at, rec.payment_id,
                rec.version, account_json(&rec.account), rec.late,
            ],
        )
        .map_err(backend)
    }

    #[async_trait]
    impl Ledger for SqliteStore {
        async fn insert_payment_within(
            &self,
            p: &PaymentRecord,
            guard: Option<&QuotaGuard>,
        ) -> Result<Inserted, StoreError> {
            let p = p.clone();
            let guard = guard
                .map(|g| g.stored_account(&p.account).map(|text| (g.clone(), text)))
                .transpose()?;
            // The one writer runs writes one after another: the check and the insert see
            // every write before them, and none comes between.
            self.write(move |conn| {
                if let Some(existing) = get(conn, &p.merchant_id, &p.out_trade_no)? {
                    return Ok(Inserted::Existing(Box::new(existing)));
                }
                if let Some((guard, account)) = &guard {
                    let used = quotas::used_by(conn, account, guard, None)?;
                    if let Room::Over(over) = guard.room(used) {
                        return Ok(Inserted::OverQuota(over));
                    }
                }
                insert_row(conn, &p)?;
                Ok(Inserted::New)
            })
            .await
        }

        async fn update_payment_guarded(
            &self,
            p: &mut PaymentRecord,
            guard: &QuotaGuard,
        ) -> Result<Updated, StoreError> {
            let account = guard.stored_account(&p.account)?;
            let (rec, guard) = (p.clone(), guard.clone());
            let updated = self
                .write(move |conn| {
                    let version: Option<i64> = conn
                        .prepare_cached("SELECT version FROM payments WHERE payment_id = ?1")
                        .map_err(backend)?
                        .query_row(params![rec.payment_id], |row| row.get(0))
                        .optional()
                        .map_err(backend)?;
                    if version != Some(rec.version) {
                        return Ok(Updated::Lost);
                    }
                    let used = quotas::used_by(conn, &account, &guard, Some(&rec.payment_id))?;
                    if let Room::Over(over) = guard.room(used) {
                        return Ok(Updated::OverQuota(over));
                    }
                    Ok(match update_row(conn, &rec)? {
                        1 => Updated::Won,
                        _ => Updated::Lost,
                    })
                })
                .await?;
            if updated == Updated::Won {
                p.version += 1;
            }
            Ok(updated)
        }

        async fn get_payment(
            &self,
            merchant_id: &str,
            out_trade_no: &str,
        ) -> Result<Option<PaymentRecord>, StoreError> {
            let (m, o) = (merchant_id.to_string(), out_trade_no.to_string());
            self.read(move |conn| get(conn, &m, &o)).await
        }

        async fn update_payment_emitting(
            &self,
            p: &mut PaymentRecord,
            event: Option<&EventRecord>,
        ) -> Result<bool, StoreError> {
            let rec = p.clone();
            let event = event.cloned();
            let updated = self
                .write(move |conn| {
                    let n = update_row(conn, &rec)?;
                    if n == 1 {
                        if let Some(e) = &event {
                            insert_event(conn, e)?;
                        }
                    }
                    Ok(n == 1)
                })
                .await?;
            if updated {
                p.version += 1;
            }
            Ok(updated)
        }

        async fn payments_by_trade_no(
            &self,
            out_trade_no: &str,
        ) -> Result<Vec<PaymentRecord>, StoreError> {
            let no = out_trade_no.to_string();
            self.read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE out_trade_no = ?1 ORDER BY created_at, payment_id"
                    ))
                    .map_err(backend)?;
                let rows = stmt.query_map(params![no], read_row).map_err(backend)?;
                collect(rows)
            })
            .await
        }

        async fn reserve_refund(
            &self,
            r: &RefundRecord,
            paid: u64,
        ) -> Result<Reservation, StoreError> {
            let r = r.clone();
            self.write(move |conn| {
                // The one writer runs writes one after another: two refunds cannot both pass the
                // guard.
                if let Some(existing) = get_refund(conn, &r.merchant_id, &r.out_refund_no)? {
                    return Ok(Reservation::Exists(Box::new(existing)));
                }
                let taken: i64 = conn
                    .query_row(
                        "SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = ?1 AND status IN ('pending', 'succeeded', 'abnormal')",
                        params![r.payment_id],
                        |row| row.get(0),
                    )
                    .map_err(backend)?;
                let available = paid.saturating_sub(taken.max(0) as u64);
                if r.amount > available {
                    return Ok(Reservation::Exceeds { available });
                }
                conn.execute(
                    &format!("INSERT INTO refunds ({REFUND_COLUMNS}, next_check_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?16)"),
                    params![
                        r.refund_id, r.merchant_id, r.shop_id, r.out_trade_no, r.out_refund_no, r.payment_id,
                        r.channel, r.amount as i64, r.reason, r.status.as_str(), r.provider_refund_no,
                        r.request_hash, r.error_code.map(|c| c.as_str()), r.error_message, r.attempt_until, r.created_at,
                        r.updated_at, r.succeeded_at, r.version,
                    ],
                )
                .map_err(backend)?;
                Ok(Reservation::Reserved)
            })
            .await
        }

        async fn get_refund(
            &self,
            merchant_id: &str,
            out_refund_no: &str,
        ) -> Result<Option<RefundRecord>, StoreError> {
            let (m, o) = (merchant_id.to_string(), out_refund_no.to_string());
            self.read(move |conn| get_refund(conn, &m, &o)).await
        }

        async fn update_refund_emitting(
            &self,
            r: &mut RefundRecord,
            event: Option<&EventRecord>,
        ) -> Result<bool, StoreError> {
            let rec = r.clone();
            let event = event.cloned();
            let updated = self
                .write(move |conn| {
                    let n = conn
                        .execute(
                            "UPDATE refunds SET status = ?1, provider_refund_no = ?2, error_code = ?3, error_message = ?4,
                             attempt_until = ?5, updated_at = ?6, succeeded_at = ?7, version = version + 1
                             WHERE refund_id = ?8 AND version = ?9",
                            params![
                                rec.status.as_str(), rec.provider_refund_no, rec.error_code.map(|c| c.as_str()), rec.error_message,
                                rec.attempt_until, rec.updated_at, rec.succeeded_at, rec.refund_id, rec.version,
                            ],
                        )
                        .map_err(backend)?;
                    if n == 1 {
                        conn.execute(
                            "UPDATE payments SET refunded_amount = (SELECT COALESCE(SUM(amount), 0) FROM refunds
                             WHERE payment_id = ?1 AND status = 'succeeded'), updated_at = ?2, version = version + 1
                             WHERE payment_id = ?1",
                            params![rec.payment_id, rec.updated_at],
                        )
                        .map_err(backend)?;
                        if let Some(e) = &event {
                            insert_event(conn, e)?;
                        }
                    }
                    Ok(n == 1)
                })
                .await?;
            if updated {
                r.version += 1;
            }
            Ok(updated)
        }

        async fn rebind_legacy_sellers(
            &self,
            merchant_id: &str,
            seller_id: &str,
        ) -> Result<u64, StoreError> {
            let (merchant, seller) = (merchant_id.to_string(), seller_id.to_string());
            self.write(move |conn| {
                let rows = conn
                    .prepare(&format!(
                        "SELECT payment_id, account FROM payments WHERE merchant_id = ?1 AND {LEGACY_SELLER_FILTER}"
                    ))
                    .map_err(backend)?
                    .query_map(params![merchant], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                    })
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                let mut rebound = 0;
                for (id, old) in rows {
                    if let Some(new) = rebound_seller(&old, &seller)? {
                        rebound += conn
                            .execute(
                                "UPDATE payments SET account = ?2, version = version + 1
                                 WHERE payment_id = ?1 AND account = ?3",
                                params![id, new, old],
                            )
                            .map_err(backend)? as u64;
                    }
                }
                Ok(rebound)
            })
            .await
        }
    }
}

mod on_postgres {
    use async_trait::async_trait;
    use deadpool_postgres::GenericClient;

    use super::{Inserted, Ledger, Updated};
    use crate::store::codec::{PAYMENT_COLUMNS, REFUND_COLUMNS};
    use crate::store::postgres::claims::lock_payment;
    use crate::store::postgres::{
        collect, execute, get, get_payment, get_refund, insert_event, is_unique_violation, pg,
        query, read_payment, to_i64, PostgresStore,
    };
    use crate::store::quotas::{on_postgres as quotas, QuotaGuard, Room};
    use crate::store::{
        account_json, rebound_seller, EventRecord, PaymentRecord, RefundRecord, Reservation,
        StoreError, LEGACY_SELLER_FILTER,
    };

    /// Stores `p` unless its `(merchant_id, out_trade_no)` is taken (due for reconciliation
    /// at once: the worker sets the real first check): how many rows it wrote.
    async fn insert_row<C: GenericClient>(c: &C, p: &PaymentRecord) -> Result<u64, StoreError> {
        let amount = to_i64(p.amount, "amount")?;
        let refunded = to_i64(p.refunded_amount, "refunded_amount")?;
        let action = p.action.as_ref().map(|a| a.to_string());
        let request = p.request.to_string();
        let error_code = p.error_code.map(|c| c.as_str());
        let account = account_json(&p.account);
        // The unique key decides between concurrent creates, on any instance: the loser's
        // insert waits for the winner's commit, then does nothing and reads the winner.
        execute(
            c,
            &format!(
                "INSERT INTO payments ({PAYMENT_COLUMNS}, next_check_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $19)
                 ON CONFLICT (merchant_id, out_trade_no) DO NOTHING"
            ),
            &[
                &p.payment_id, &p.merchant_id, &p.shop_id, &p.out_trade_no, &amount, &p.currency,
                &p.method.as_str(), &p.status.as_str(), &p.channel, &p.rule, &action,
                &p.provider_trade_no, &refunded, &p.request_hash, &request, &error_code,
                &p.error_message, &p.attempt_until, &p.created_at, &p.updated_at, &p.paid_at,
                &p.expires_at, &p.version, &account, &p.late,
            ],
        )
        .await
    }

    /// Compare-and-set on `version`: how many rows it wrote (0 or 1). A concurrent writer of
    /// the same version blocks on the row, then finds the version moved on and updates
    /// nothing.
    async fn update_row<C: GenericClient>(c: &C, p: &PaymentRecord) -> Result<u64, StoreError> {
        let refunded = to_i64(p.refunded_amount, "refunded_amount")?;
        let action = p.action.as_ref().map(|a| a.to_string());
        let error_code = p.error_code.map(|c| c.as_str());
        let account = account_json(&p.account);
        execute(
            c,
            "UPDATE payments SET status = $1, channel = $2, rule = $3, action = $4, provider_trade_no = $5,
             refunded_amount = $6, error_code = $7, error_message = $8, attempt_until = $9, updated_at = $10,
             paid_at = $11, account = $14, late = $15, version = version + 1
             WHERE payment_id = $12 AND version = $13",
            &[
                &p.status.as_str(), &p.channel, &p.rule, &action, &p.provider_trade_no, &refunded,
                &error_code, &p.error_message, &p.attempt_until, &p.updated_at, &p.paid_at,
                &p.payment_id, &p.version, &account, &p.late,
            ],
        )
        .await
    }

    #[async_trait]
    impl Ledger for PostgresStore {
        async fn insert_payment_within(
            &self,
            p: &PaymentRecord,
            guard: Option<&QuotaGuard>,
        ) -> Result<Inserted, StoreError> {
            let started = tokio::time::Instant::now();
            let account = guard.map(|g| g.stored_account(&p.account)).transpose()?;
            let _queued = match &account {
                Some(a) => {
                    // A replay answers from its record without queueing for the account
                    // (under contention that wait could fail an order that exists).
                    let c = self.conn().await?;
                    if let Some(existing) = get_payment(&c, &p.merchant_id, &p.out_trade_no).await?
                    {
                        return Ok(Inserted::Existing(Box::new(existing)));
                    }
                    drop(c);
                    Some(self.quota_queue(a).lock_owned().await)
                }
                None => None,
            };
            let mut c = self.conn().await?;
            let n = match (guard, &account) {
                (Some(guard), Some(account)) => {
                    let tx = quotas::guarded_transaction(&mut c).await?;
                    // Guarded inserts of this account, on every instance, queue here: each
                    // sums after the one before it has committed.
                    quotas::lock_account(&tx, account).await?;
                    // A replay first: never refused for quota. (Rolled back on return.)
                    if let Some(existing) =
                        get_payment(&tx, &p.merchant_id, &p.out_trade_no).await?
                    {
                        return Ok(Inserted::Existing(Box::new(existing)));
                    }
                    let used = quotas::used_by(&tx, account, guard, None).await?;
                    if let Room::Over(over) = guard.room(used) {
                        return Ok(Inserted::OverQuota(over));
                    }
                    let n = insert_row(&tx, p).await?;
                    tx.commit().await.map_err(pg)?;
                    n
                }
                _ => insert_row(&c, p).await?,
            };
            if n == 1 {
                self.committed(started);
                return Ok(Inserted::New);
            }
            // Taken meanwhile (a create of the same order bound to another account, under
            // another lock): that record is the answer.
            match get_payment(&c, &p.merchant_id, &p.out_trade_no).await? {
                Some(existing) => Ok(Inserted::Existing(Box::new(existing))),
                None => Err(StoreError::Backend(
                    "insert_payment: conflicting payment vanished".into(),
                )),
            }
        }

        async fn update_payment_guarded(
            &self,
            p: &mut PaymentRecord,
            guard: &QuotaGuard,
        ) -> Result<Updated, StoreError> {
            let account = guard.stored_account(&p.account)?;
            let started = tokio::time::Instant::now();
            let _queued = self.quota_queue(&account).lock_owned().await;
            let mut c = self.conn().await?;
            let tx = quotas::guarded_transaction(&mut c).await?;
            quotas::lock_account(&tx, &account).await?;
            // Written first (the compare-and-set decides a race whatever the room), then
            // judged: the sum leaves this record out, and an over-quota rebind is rolled back
            // when `tx` drops.
            if update_row(&tx, p).await? != 1 {
                return Ok(Updated::Lost);
            }
            let used = quotas::used_by(&tx, &account, guard, Some(&p.payment_id)).await?;
            if let Room::Over(over) = guard.room(used) {
                return Ok(Updated::OverQuota(over));
            }
            tx.commit().await.map_err(pg)?;
            self.committed(started);
            p.version += 1;
            Ok(Updated::Won)
        }

        async fn get_payment(
            &self,
            merchant_id: &str,
            out_trade_no: &str,
        ) -> Result<Option<PaymentRecord>, StoreError> {
            let c = self.conn().await?;
            get_payment(&c, merchant_id, out_trade_no).await
        }

        async fn update_payment_emitting(
            &self,
            p: &mut PaymentRecord,
            event: Option<&EventRecord>,
        ) -> Result<bool, StoreError> {
            let started = tokio::time::Instant::now();
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let n = update_row(&tx, p).await?;
            if n == 1 {
                if let Some(e) = event {
                    insert_event(&tx, e).await?;
                }
            }
            tx.commit().await.map_err(pg)?;
            self.committed(started);
            if n == 1 {
                p.version += 1;
            }
            Ok(n == 1)
        }

        async fn payments_by_trade_no(
            &self,
            out_trade_no: &str,
        ) -> Result<Vec<PaymentRecord>, StoreError> {
            let c = self.conn().await?;
            let rows = query(
                &c,
                &format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE out_trade_no = $1 ORDER BY created_at, payment_id"
                ),
                &[&out_trade_no],
            )
            .await?;
            collect(rows, read_payment)
        }

        async fn reserve_refund(
            &self,
            r: &RefundRecord,
            paid: u64,
        ) -> Result<Reservation, StoreError> {
            let started = tokio::time::Instant::now();
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            // Two instances reserving refunds of one payment queue here: the second sums after
            // the first has committed, so together they cannot pass the guard.
            lock_payment(&tx, &r.payment_id).await?;
            if let Some(existing) = get_refund(&tx, &r.merchant_id, &r.out_refund_no).await? {
                return Ok(Reservation::Exists(Box::new(existing)));
            }
            let rows = query(
                &tx,
                "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM refunds
                 WHERE payment_id = $1 AND status IN ('pending', 'succeeded', 'abnormal')",
                &[&r.payment_id],
            )
            .await?;
            let taken: i64 = match rows.first() {
                Some(row) => get(row, 0)?,
                None => 0,
            };
            let available = paid.saturating_sub(taken.max(0) as u64);
            if r.amount > available {
                return Ok(Reservation::Exceeds { available });
            }
            let amount = to_i64(r.amount, "refund amount")?;
            let error_code = r.error_code.map(|c| c.as_str());
            let stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO refunds ({REFUND_COLUMNS}, next_check_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $16)"
                ))
                .await
                .map_err(pg)?;
            let inserted = tx
                .execute(
                    &stmt,
                    &[
                        &r.refund_id,
                        &r.merchant_id,
                        &r.shop_id,
                        &r.out_trade_no,
                        &r.out_refund_no,
                        &r.payment_id,
                        &r.channel,
                        &amount,
                        &r.reason,
                        &r.status.as_str(),
                        &r.provider_refund_no,
                        &r.request_hash,
                        &error_code,
                        &r.error_message,
                        &r.attempt_until,
                        &r.created_at,
                        &r.updated_at,
                        &r.succeeded_at,
                        &r.version,
                    ],
                )
                .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await.map_err(pg)?;
                    self.committed(started);
                    Ok(Reservation::Reserved)
                }
                // The same out_refund_no, committed meanwhile for another payment of the
                // merchant (whose row lock this one does not share): that refund is the answer.
                Err(e) if is_unique_violation(&e) => {
                    drop(tx);
                    match get_refund(&c, &r.merchant_id, &r.out_refund_no).await? {
                        Some(existing) => Ok(Reservation::Exists(Box::new(existing))),
                        None => Err(pg(e)),
                    }
                }
                Err(e) => Err(pg(e)),
            }
        }

        async fn get_refund(
            &self,
            merchant_id: &str,
            out_refund_no: &str,
        ) -> Result<Option<RefundRecord>, StoreError> {
            let c = self.conn().await?;
            get_refund(&c, merchant_id, out_refund_no).await
        }

        async fn update_refund_emitting(
            &self,
            r: &mut RefundRecord,
            event: Option<&EventRecord>,
        ) -> Result<bool, StoreError> {
            let started = tokio::time::Instant::now();
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            // Locked first, so that the sum below counts a refund another instance has just
            // marked succeeded.
            lock_payment(&tx, &r.payment_id).await?;
            let error_code = r.error_code.map(|c| c.as_str());
            let n = execute(
                &tx,
                "UPDATE refunds SET status = $1, provider_refund_no = $2, error_code = $3, error_message = $4,
                 attempt_until = $5, updated_at = $6, succeeded_at = $7, version = version + 1
                 WHERE refund_id = $8 AND version = $9",
                &[
                    &r.status.as_str(), &r.provider_refund_no, &error_code, &r.error_message,
                    &r.attempt_until, &r.updated_at, &r.succeeded_at, &r.refund_id, &r.version,
                ],
            )
            .await?;
            if n == 1 {
                execute(
                    &tx,
                    "UPDATE payments SET refunded_amount = (SELECT COALESCE(SUM(amount), 0) FROM refunds
                     WHERE payment_id = $1 AND status = 'succeeded'), updated_at = $2, version = version + 1
                     WHERE payment_id = $1",
                    &[&r.payment_id, &r.updated_at],
                )
                .await?;
                if let Some(e) = event {
                    insert_event(&tx, e).await?;
                }
            }
            tx.commit().await.map_err(pg)?;
            self.committed(started);
            if n == 1 {
                r.version += 1;
            }
            Ok(n == 1)
        }

        async fn rebind_legacy_sellers(
            &self,
            merchant_id: &str,
            seller_id: &str,
        ) -> Result<u64, StoreError> {
            let started = tokio::time::Instant::now();
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let rows = query(
                &tx,
                &format!(
                    "SELECT payment_id, account FROM payments WHERE merchant_id = $1 AND {LEGACY_SELLER_FILTER}"
                ),
                &[&merchant_id],
            )
            .await?;
            let mut rebound = 0;
            for row in rows {
                let (id, old): (String, String) = (get(&row, 0)?, get(&row, 1)?);
                if let Some(new) = rebound_seller(&old, seller_id)? {
                    // Compare-and-set on the text: another instance rebinding at its start
                    // writes the same, and a row changed meanwhile is left to the next start.
                    rebound += execute(
                        &tx,
                        "UPDATE payments SET account = $2, version = version + 1
                         WHERE payment_id = $1 AND account = $3",
                        &[&id, &new, &old],
                    )
                    .await?;
                }
            }
            tx.commit().await.map_err(pg)?;
            self.committed(started);
            Ok(rebound)
        }
    }
}
