//! The outbox of shop events (ARCHITECTURE.md, "Shop events and webhooks"): events written
//! beside the state change they tell of (by [`super::Ledger`]), handed out for delivery,
//! their attempts recorded.
//!
//! # Atomic
//! Handing out (`due_events`) is one read on SQLite (one process, nothing to claim) and one
//! claiming statement on PostgreSQL; each delivery's record is one statement, fenced by the
//! event's claim where the store claims.

use async_trait::async_trait;

use super::{Delivery, DueLimits, EventFilter, EventRecord, OutboxStats, Resend, StoreError};

/// The outbox: delivery at least once, in order per payment (see the module's docs for what
/// is atomic).
///
/// # Limits
/// SQLite claims nothing (one process): a second process on the same file would deliver the
/// same events twice. A stalled PostgreSQL holder's delivery may still reach the shop after
/// its lease ran out and another instance delivered the event too (at least once, not
/// exactly once); its record then changes nothing.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Pending events due at `now` (the caller's clock, as `next_attempt_at` is written) that
    /// head their payment's queue, oldest first: per shop at most its free slots in
    /// `limits`, so a shop's backlog costs only that shop.
    ///
    /// A store shared by several instances claims them for this caller, each with a fresh
    /// [`EventRecord::claim`] token and a lease timed by the database's own clock: until
    /// [`Outbox::record_delivery`] (or [`Outbox::release_events`], or the lease running out)
    /// no other caller gets them.
    async fn due_events(
        &self,
        now: i64,
        limits: &DueLimits,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// Gives back events [`Outbox::due_events`] handed out that the caller will not deliver
    /// now, so that the next round (of any instance) may take them at once; only those whose
    /// claim the caller still holds. A store that does not claim has nothing to give back.
    async fn release_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let _ = events;
        Ok(())
    }

    /// Records one delivery attempt of a pending event handed out by [`Outbox::due_events`]:
    /// true if written; false (nothing changed) if the event is no longer pending or another
    /// caller has claimed it since (its [`EventRecord::claim`] is no longer the row's).
    async fn record_delivery(
        &self,
        event: &EventRecord,
        delivery: Delivery,
    ) -> Result<bool, StoreError>;

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError>;

    /// Puts an event that is dead or delivered back in the queue, due at `now`; a pending one
    /// is left alone ([`Resend::Pending`]).
    async fn resend_event(&self, event_id: &str, now: i64) -> Result<Resend, StoreError>;

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Copies an event as it is (id, body, status, attempts) for `payroute store migrate`;
    /// one already there is left alone. Whether it was written.
    async fn import_event(&self, e: &EventRecord) -> Result<bool, StoreError>;
}

mod on_sqlite {
    use async_trait::async_trait;
    use rusqlite::{params, OptionalExtension};

    use super::Outbox;
    use crate::store::codec::EVENT_COLUMNS;
    use crate::store::sqlite::{
        backend, collect, get_event, insert_event, read_event, SqliteStore,
    };
    use crate::store::{
        Delivery, DueLimits, EventFilter, EventRecord, OutboxStats, Resend, StoreError,
    };

    #[async_trait]
    impl Outbox for SqliteStore {
        async fn due_events(
            &self,
            now: i64,
            limits: &DueLimits,
        ) -> Result<Vec<EventRecord>, StoreError> {
            let limits = limits.clone();
            self.read(move |conn| {
                // One process, one outbox: nothing is claimed, what the caller holds is left out.
                let holding = serde_json::to_string(&limits.holding)
                    .map_err(|e| StoreError::Backend(format!("held events: {e}")))?;
                // The shops with pending events, one index probe each (a loose index scan), then
                // each shop's oldest due heads up to its free slots: a shop's backlog is never
                // read past its slots, and never takes another shop's places.
                let shops = {
                    let mut stmt = conn
                        .prepare_cached(
                            "WITH RECURSIVE shops(shop_id) AS (
                               SELECT (SELECT MIN(shop_id) FROM events WHERE status = 'pending')
                               UNION ALL
                               SELECT (SELECT MIN(e.shop_id) FROM events e
                                       WHERE e.status = 'pending' AND e.shop_id > shops.shop_id)
                               FROM shops WHERE shops.shop_id IS NOT NULL)
                             SELECT shop_id FROM shops WHERE shop_id IS NOT NULL",
                        )
                        .map_err(backend)?;
                    let rows = stmt
                        .query_map([], |row| row.get::<_, String>(0))
                        .map_err(backend)?;
                    rows.collect::<rusqlite::Result<Vec<String>>>()
                        .map_err(backend)?
                };
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events e
                         WHERE e.status = 'pending' AND e.shop_id = ?1 AND e.next_attempt_at <= ?2
                           AND e.seq = (SELECT MIN(x.seq) FROM events x
                                        WHERE x.payment_id = e.payment_id AND x.status = 'pending')
                           AND e.event_id NOT IN (SELECT value FROM json_each(?4))
                         ORDER BY e.next_attempt_at, e.seq LIMIT ?3"
                    ))
                    .map_err(backend)?;
                let mut due = Vec::new();
                for shop in shops {
                    let free = limits.free(&shop).min(limits.total);
                    if free == 0 {
                        continue;
                    }
                    let rows = stmt
                        .query_map(params![shop, now, free, holding], read_event)
                        .map_err(backend)?;
                    due.extend(collect(rows)?);
                }
                due.sort_by_key(|e| (e.next_attempt_at, e.seq));
                due.truncate(limits.total as usize);
                Ok(due)
            })
            .await
        }

        async fn record_delivery(
            &self,
            event: &EventRecord,
            delivery: Delivery,
        ) -> Result<bool, StoreError> {
            // No claims here (one process): the caller's claim token is trivially its own.
            let id = event.event_id.clone();
            self.write(move |conn| {
                let n = match delivery {
                    Delivery::Delivered { at } => conn.execute(
                        "UPDATE events SET status = 'delivered', attempts = attempts + 1, delivered_at = ?2,
                         last_error = NULL WHERE event_id = ?1 AND status = 'pending'",
                        params![id, at],
                    ),
                    Delivery::Retry { next_attempt_at, error } => conn.execute(
                        "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3
                         WHERE event_id = ?1 AND status = 'pending'",
                        params![id, next_attempt_at, error],
                    ),
                    Delivery::Dead { error } => conn.execute(
                        "UPDATE events SET status = 'dead', attempts = attempts + 1, last_error = ?2
                         WHERE event_id = ?1 AND status = 'pending'",
                        params![id, error],
                    ),
                }
                .map_err(backend)?;
                if n == 0 {
                    tracing::debug!(event_id = %id, "delivery recorded for an event no longer pending");
                }
                Ok(n == 1)
            })
            .await
        }

        async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
            let f = filter.clone();
            self.read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events
                         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR merchant_id = ?2)
                         ORDER BY seq DESC LIMIT ?3"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(
                        params![f.status.map(|s| s.as_str()), f.merchant_id, f.limit],
                        read_event,
                    )
                    .map_err(backend)?;
                collect(rows)
            })
            .await
        }

        async fn resend_event(&self, event_id: &str, now: i64) -> Result<Resend, StoreError> {
            let id = event_id.to_string();
            self.write(move |conn| {
                let n = conn
                    .execute(
                        "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                         delivered_at = NULL WHERE event_id = ?1 AND status <> 'pending'",
                        params![id, now],
                    )
                    .map_err(backend)?;
                Ok(match get_event(conn, &id)? {
                    Some(e) if n == 1 => Resend::Resent(e),
                    Some(e) => Resend::Pending(e),
                    None => Resend::Unknown,
                })
            })
            .await
        }

        async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
            self.read(|conn| {
                conn.query_row(
                    "SELECT (SELECT COUNT(*) FROM events WHERE status = 'pending'),
                            (SELECT MIN(created_at) FROM events WHERE status = 'pending'),
                            (SELECT COUNT(*) FROM events WHERE status = 'dead')",
                    [],
                    |row| {
                        Ok(OutboxStats {
                            pending: row.get::<_, i64>(0)?.max(0) as u64,
                            oldest_pending_created_at: row.get(1)?,
                            dead: row.get::<_, i64>(2)?.max(0) as u64,
                        })
                    },
                )
                .map_err(backend)
            })
            .await
        }

        async fn import_event(&self, e: &EventRecord) -> Result<bool, StoreError> {
            let e = e.clone();
            self.write(move |conn| {
                let there = conn
                    .prepare_cached("SELECT 1 FROM events WHERE event_id = ?1")
                    .map_err(backend)?
                    .query_row([&e.event_id], |_| Ok(()))
                    .optional()
                    .map_err(backend)?
                    .is_some();
                if there {
                    return Ok(false);
                }
                insert_event(conn, &e)?;
                Ok(true)
            })
            .await
        }
    }
}

mod on_postgres {
    use async_trait::async_trait;

    use super::Outbox;
    use crate::store::codec::CLAIMED_EVENT_COLUMNS;
    use crate::store::postgres::claims::DB_NOW_MS;
    use crate::store::postgres::{
        collect, execute, get, insert_event, pg, query, read_claimed_event, PostgresStore,
    };
    use crate::store::{
        Delivery, DueLimits, EventFilter, EventRecord, OutboxStats, Resend, StoreError,
    };

    #[async_trait]
    impl Outbox for PostgresStore {
        async fn due_events(
            &self,
            now: i64,
            limits: &DueLimits,
        ) -> Result<Vec<EventRecord>, StoreError> {
            let c = self.conn().await?;
            let (busy, free): (Vec<&str>, Vec<i64>) = limits
                .busy
                .iter()
                .map(|(shop, free)| (shop.as_str(), i64::from(*free)))
                .unzip();
            // Claim → lease → ack, per shop: the shops with pending events are walked one index
            // probe each (a loose index scan); each gives at most its free slots of its oldest due
            // heads, so a shop's backlog is read no further than its slots and never takes
            // another shop's places. Rows another instance is claiming right now are skipped, not
            // waited for (and the slot goes to the shop's next event); a claimed event stays
            // pending (it still heads its payment's queue, so the events behind it wait) until
            // its delivery is recorded or its lease runs out. Each claim gets a fresh token.
            let rows = query(
                &c,
                &format!(
                    "WITH RECURSIVE shops(shop_id) AS (
                       SELECT (SELECT MIN(shop_id) FROM events WHERE status = 'pending')
                       UNION ALL
                       SELECT (SELECT MIN(e.shop_id) FROM events e
                               WHERE e.status = 'pending' AND e.shop_id > shops.shop_id)
                       FROM shops WHERE shops.shop_id IS NOT NULL),
                     slots AS (
                       SELECT s.shop_id, LEAST(COALESCE(b.free, $2), $5) AS free
                       FROM shops s LEFT JOIN unnest($3::text[], $4::bigint[]) AS b(shop_id, free)
                         USING (shop_id)
                       WHERE s.shop_id IS NOT NULL),
                     due AS (
                       SELECT d.seq AS id FROM slots CROSS JOIN LATERAL (
                         SELECT e.seq, e.next_attempt_at FROM events e
                         WHERE e.shop_id = slots.shop_id AND e.status = 'pending'
                           AND e.next_attempt_at <= $1
                           AND (e.lease_until IS NULL OR e.lease_until <= {DB_NOW_MS})
                           AND NOT EXISTS (SELECT 1 FROM events x
                                           WHERE x.payment_id = e.payment_id
                                             AND x.status = 'pending' AND x.seq < e.seq)
                         ORDER BY e.next_attempt_at, e.seq LIMIT slots.free
                         FOR UPDATE SKIP LOCKED) d
                       ORDER BY d.next_attempt_at, d.seq LIMIT $5)
                     UPDATE events SET lease_until = {DB_NOW_MS} + $6, claim = gen_random_uuid()::text
                     FROM due WHERE events.seq = due.id
                     RETURNING {CLAIMED_EVENT_COLUMNS}"
                ),
                &[
                    &now,
                    &i64::from(limits.per_shop),
                    &busy,
                    &free,
                    &i64::from(limits.total),
                    &self.lease_ms,
                ],
            )
            .await?;
            let mut events = collect(rows, read_claimed_event)?;
            events.sort_by_key(|e| (e.next_attempt_at, e.seq));
            Ok(events)
        }

        async fn release_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
            let (ids, claims): (Vec<&str>, Vec<Option<&str>>) = events
                .iter()
                .map(|e| (e.event_id.as_str(), e.claim.as_deref()))
                .unzip();
            if ids.is_empty() {
                return Ok(());
            }
            let c = self.conn().await?;
            // Only claims still the caller's: one taken over since belongs to its new holder.
            execute(
                &c,
                "UPDATE events SET lease_until = NULL, claim = NULL
                 FROM unnest($1::text[], $2::text[]) AS r(event_id, claim)
                 WHERE events.event_id = r.event_id AND events.claim = r.claim
                   AND events.status = 'pending'",
                &[&ids, &claims],
            )
            .await?;
            Ok(())
        }

        async fn record_delivery(
            &self,
            event: &EventRecord,
            delivery: Delivery,
        ) -> Result<bool, StoreError> {
            let started = tokio::time::Instant::now();
            let c = self.conn().await?;
            let (event_id, claim) = (&event.event_id, &event.claim);
            // Every outcome ends the claim, and only its holder's does: a holder that stalled past
            // its lease while another instance took the event over changes nothing (the other
            // one's claim, lease and outcome stand). A lease that ran out but was not taken over
            // is still its holder's: recording that outcome is right, and saves a resend.
            let n = match delivery {
                Delivery::Delivered { at } => {
                    execute(
                        &c,
                        "UPDATE events SET status = 'delivered', attempts = attempts + 1, delivered_at = $2,
                         last_error = NULL, lease_until = NULL, claim = NULL
                         WHERE event_id = $1 AND status = 'pending' AND claim IS NOT DISTINCT FROM $3",
                        &[event_id, &at, claim],
                    )
                    .await?
                }
                Delivery::Retry {
                    next_attempt_at,
                    error,
                } => {
                    execute(
                        &c,
                        "UPDATE events SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3,
                         lease_until = NULL, claim = NULL
                         WHERE event_id = $1 AND status = 'pending' AND claim IS NOT DISTINCT FROM $4",
                        &[event_id, &next_attempt_at, &error, claim],
                    )
                    .await?
                }
                Delivery::Dead { error } => {
                    execute(
                        &c,
                        "UPDATE events SET status = 'dead', attempts = attempts + 1, last_error = $2,
                         lease_until = NULL, claim = NULL
                         WHERE event_id = $1 AND status = 'pending' AND claim IS NOT DISTINCT FROM $3",
                        &[event_id, &error, claim],
                    )
                    .await?
                }
            };
            self.committed(started);
            if n == 0 {
                tracing::debug!(event_id = %event_id, "delivery not recorded: the event is no longer pending or no longer this caller's claim");
            }
            Ok(n == 1)
        }

        async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
            let c = self.conn().await?;
            let status = filter.status.map(|s| s.as_str());
            let limit = i64::from(filter.limit);
            let rows = query(
                &c,
                &format!(
                    "SELECT {CLAIMED_EVENT_COLUMNS} FROM events
                     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR merchant_id = $2)
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[&status, &filter.merchant_id, &limit],
            )
            .await?;
            collect(rows, read_claimed_event)
        }

        async fn resend_event(&self, event_id: &str, now: i64) -> Result<Resend, StoreError> {
            let started = tokio::time::Instant::now();
            let c = self.conn().await?;
            // A pending event is left alone: it may be in an instance's hands right now, and
            // clearing its claim would let a second delivery start beside that one.
            let rows = query(
                &c,
                &format!(
                    "UPDATE events SET status = 'pending', attempts = 0, next_attempt_at = $2,
                     delivered_at = NULL, lease_until = NULL, claim = NULL
                     WHERE event_id = $1 AND status <> 'pending'
                     RETURNING {CLAIMED_EVENT_COLUMNS}"
                ),
                &[&event_id, &now],
            )
            .await?;
            self.committed(started);
            if let Some(row) = rows.first() {
                return Ok(Resend::Resent(read_claimed_event(row)?));
            }
            let rows = query(
                &c,
                &format!("SELECT {CLAIMED_EVENT_COLUMNS} FROM events WHERE event_id = $1"),
                &[&event_id],
            )
            .await?;
            Ok(match rows.first() {
                Some(row) => Resend::Pending(read_claimed_event(row)?),
                None => Resend::Unknown,
            })
        }

        async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
            let c = self.conn().await?;
            let rows = query(
                &c,
                "SELECT (SELECT COUNT(*) FROM events WHERE status = 'pending'),
                        (SELECT MIN(created_at) FROM events WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM events WHERE status = 'dead')",
                &[],
            )
            .await?;
            let Some(row) = rows.first() else {
                return Ok(OutboxStats::default());
            };
            let pending: i64 = get(row, 0)?;
            let dead: i64 = get(row, 2)?;
            Ok(OutboxStats {
                pending: pending.max(0) as u64,
                oldest_pending_created_at: get(row, 1)?,
                dead: dead.max(0) as u64,
            })
        }

        async fn import_event(&self, e: &EventRecord) -> Result<bool, StoreError> {
            let started = tokio::time::Instant::now();
            let c = self.conn().await?;
            let there = c
                .query_opt("SELECT 1 FROM events WHERE event_id = $1", &[&e.event_id])
                .await
                .map_err(pg)?
                .is_some();
            if there {
                return Ok(false);
            }
            insert_event(&c, e).await?;
            self.committed(started);
            Ok(true)
        }
    }
}
