//! The manual drain switch's stored state (ARCHITECTURE.md, "The manual switch"): which
//! channels ops have taken out of routing, why, by whom and since when — and a log of every
//! drain and resume. Stored, so that a restart keeps a drain and every instance on one
//! PostgreSQL database sees it (the drain switch keeps it in memory and reloads it).
//!
//! # Atomic
//! A drain or resume and its log line are one transaction (SQLite: one write on its writer;
//! PostgreSQL: one transaction). A second drain of a drained channel keeps its `since`: the
//! channel has been out since the first, and the alert on a long drain counts from there.
//!
//! # Times
//! The caller passes the time (`at_ms`, its own clock) rather than the database's clock
//! (`DB_NOW_MS`) being used: `since` is a record of when a person acted, shown to people and
//! judged by an alert in hours; instances' clocks that disagree by seconds change nothing
//! there (unlike a lease, where they would let two instances hold one claim). It also keeps
//! both engines the same and the records exact in tests.

use async_trait::async_trait;

use super::StoreError;

/// One drained channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainRecord {
    pub channel: String,
    /// Why, as the operator wrote it.
    pub reason: String,
    /// Who drained it (the operator's name, or `admin`).
    pub by: String,
    /// Unix ms: drained since (the first drain; a later one only changes the reason).
    pub since_ms: i64,
}

/// What [`Drains::drain`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drained {
    /// The drain as stored now.
    pub record: DrainRecord,
    /// The channel was drained already: its reason and operator were updated, its `since`
    /// kept.
    pub already: bool,
}

/// One line of the drain log: a drain or a resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainLogEntry {
    pub channel: String,
    /// `drain` or `resume`.
    pub action: String,
    /// The drain's reason (for a resume: the reason of the drain it ended, if any).
    pub reason: Option<String>,
    pub by: String,
    /// Unix ms.
    pub at_ms: i64,
}

/// The drained channels and their log.
///
/// # Limits
/// The log grows by one row per drain or resume (ops actions, a handful a day) and is never
/// pruned.
#[async_trait]
pub trait Drains: Send + Sync {
    /// Drains `channel` (the caller checked that it exists): stored with `reason`, `by` and
    /// `since_ms = at_ms` — or, if it was drained already, its reason and operator replaced and
    /// its `since_ms` kept.
    async fn drain(
        &self,
        channel: &str,
        reason: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<Drained, StoreError>;

    /// Ends `channel`'s drain: the drain it ended, `None` if it was not drained (nothing is
    /// written then, not even a log line).
    async fn resume(
        &self,
        channel: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<Option<DrainRecord>, StoreError>;

    /// Every drained channel, by name.
    async fn drained(&self) -> Result<Vec<DrainRecord>, StoreError>;

    /// The drain log, newest first, at most `limit` lines.
    async fn drain_log(&self, limit: u32) -> Result<Vec<DrainLogEntry>, StoreError>;
}

/// Both engines' columns, in the order the decoders read them.
const DRAIN_COLUMNS: &str = "channel, reason, drained_by, since";
const LOG_COLUMNS: &str = "channel, action, reason, drained_by, at";

mod on_sqlite {
    use async_trait::async_trait;
    use rusqlite::{params, Connection, OptionalExtension, Row};

    use super::{DrainLogEntry, DrainRecord, Drained, Drains, DRAIN_COLUMNS, LOG_COLUMNS};
    use crate::store::sqlite::{backend, SqliteStore};
    use crate::store::StoreError;

    fn read_drain(row: &Row) -> rusqlite::Result<DrainRecord> {
        Ok(DrainRecord {
            channel: row.get(0)?,
            reason: row.get(1)?,
            by: row.get(2)?,
            since_ms: row.get(3)?,
        })
    }

    fn get(conn: &Connection, channel: &str) -> Result<Option<DrainRecord>, StoreError> {
        conn.prepare_cached(&format!(
            "SELECT {DRAIN_COLUMNS} FROM channel_drains WHERE channel = ?1"
        ))
        .map_err(backend)?
        .query_row(params![channel], read_drain)
        .optional()
        .map_err(backend)
    }

    fn log(
        conn: &Connection,
        channel: &str,
        action: &str,
        reason: Option<&str>,
        by: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        conn.prepare_cached(
            "INSERT INTO channel_drain_log (channel, action, reason, drained_by, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(backend)?
        .execute(params![channel, action, reason, by, at])
        .map_err(backend)
        .map(drop)
    }

    #[async_trait]
    impl Drains for SqliteStore {
        async fn drain(
            &self,
            channel: &str,
            reason: &str,
            by: &str,
            at_ms: i64,
        ) -> Result<Drained, StoreError> {
            let (channel, reason, by) = (channel.to_string(), reason.to_string(), by.to_string());
            // One writer: the read and the upsert below see no other write between them.
            self.write(move |conn| {
                let before = get(conn, &channel)?;
                let since_ms = before.as_ref().map_or(at_ms, |d| d.since_ms);
                conn.prepare_cached(
                    "INSERT INTO channel_drains (channel, reason, drained_by, since)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (channel) DO UPDATE SET reason = excluded.reason,
                                                         drained_by = excluded.drained_by",
                )
                .map_err(backend)?
                .execute(params![channel, reason, by, since_ms])
                .map_err(backend)?;
                log(conn, &channel, "drain", Some(&reason), &by, at_ms)?;
                Ok(Drained {
                    record: DrainRecord {
                        channel,
                        reason,
                        by,
                        since_ms,
                    },
                    already: before.is_some(),
                })
            })
            .await
        }

        async fn resume(
            &self,
            channel: &str,
            by: &str,
            at_ms: i64,
        ) -> Result<Option<DrainRecord>, StoreError> {
            let (channel, by) = (channel.to_string(), by.to_string());
            self.write(move |conn| {
                let Some(ended) = get(conn, &channel)? else {
                    return Ok(None);
                };
                conn.prepare_cached("DELETE FROM channel_drains WHERE channel = ?1")
                    .map_err(backend)?
                    .execute(params![channel])
                    .map_err(backend)?;
                log(conn, &channel, "resume", Some(&ended.reason), &by, at_ms)?;
                Ok(Some(ended))
            })
            .await
        }

        async fn drained(&self) -> Result<Vec<DrainRecord>, StoreError> {
            self.read(|conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {DRAIN_COLUMNS} FROM channel_drains ORDER BY channel"
                    ))
                    .map_err(backend)?;
                let rows = stmt.query_map([], read_drain).map_err(backend)?;
                rows.map(|r| r.map_err(backend)).collect()
            })
            .await
        }

        async fn drain_log(&self, limit: u32) -> Result<Vec<DrainLogEntry>, StoreError> {
            self.read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {LOG_COLUMNS} FROM channel_drain_log ORDER BY id DESC LIMIT ?1"
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![limit], |row| {
                        Ok(DrainLogEntry {
                            channel: row.get(0)?,
                            action: row.get(1)?,
                            reason: row.get(2)?,
                            by: row.get(3)?,
                            at_ms: row.get(4)?,
                        })
                    })
                    .map_err(backend)?;
                rows.map(|r| r.map_err(backend)).collect()
            })
            .await
        }
    }
}

mod on_postgres {
    use async_trait::async_trait;
    use deadpool_postgres::GenericClient;
    use tokio_postgres::Row;

    use super::{DrainLogEntry, DrainRecord, Drained, Drains, DRAIN_COLUMNS, LOG_COLUMNS};
    use crate::store::postgres::{execute, get, pg, query, PostgresStore};
    use crate::store::StoreError;

    fn read_drain(row: &Row) -> Result<DrainRecord, StoreError> {
        Ok(DrainRecord {
            channel: get(row, 0)?,
            reason: get(row, 1)?,
            by: get(row, 2)?,
            since_ms: get(row, 3)?,
        })
    }

    async fn log<C: GenericClient>(
        c: &C,
        channel: &str,
        action: &str,
        reason: Option<&str>,
        by: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        execute(
            c,
            "INSERT INTO channel_drain_log (channel, action, reason, drained_by, at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&channel, &action, &reason, &by, &at],
        )
        .await
        .map(drop)
    }

    #[async_trait]
    impl Drains for PostgresStore {
        async fn drain(
            &self,
            channel: &str,
            reason: &str,
            by: &str,
            at_ms: i64,
        ) -> Result<Drained, StoreError> {
            let started = tokio::time::Instant::now();
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            // One statement for both cases, so that two instances draining at once cannot
            // both insert: the second updates, keeping the first's `since`. `xmax = 0` is
            // true only for a row this statement inserted (an updated row carries this
            // transaction's id there): whether the channel was drained already.
            let rows = query(
                &tx,
                &format!(
                    "INSERT INTO channel_drains (channel, reason, drained_by, since)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (channel) DO UPDATE SET reason = EXCLUDED.reason,
                                                         drained_by = EXCLUDED.drained_by
                     RETURNING {DRAIN_COLUMNS}, (xmax = 0) AS inserted"
                ),
                &[&channel, &reason, &by, &at_ms],
            )
            .await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Backend("a drain's upsert returned no row".into()))?;
            let record = read_drain(row)?;
            let inserted: bool = get(row, 4)?;
            log(&tx, channel, "drain", Some(reason), by, at_ms).await?;
            tx.commit().await.map_err(pg)?;
            self.committed(started);
            Ok(Drained {
                record,
                already: !inserted,
            })
        }

        async fn resume(
            &self,
            channel: &str,
            by: &str,
            at_ms: i64,
        ) -> Result<Option<DrainRecord>, StoreError> {
            let started = tokio::time::Instant::now();
            let mut c = self.conn().await?;
            let tx = c.transaction().await.map_err(pg)?;
            let rows = query(
                &tx,
                &format!("DELETE FROM channel_drains WHERE channel = $1 RETURNING {DRAIN_COLUMNS}"),
                &[&channel],
            )
            .await?;
            let Some(ended) = rows.first().map(read_drain).transpose()? else {
                // Nothing deleted, nothing to log: the transaction ends without a commit.
                return Ok(None);
            };
            log(&tx, channel, "resume", Some(&ended.reason), by, at_ms).await?;
            tx.commit().await.map_err(pg)?;
            self.committed(started);
            Ok(Some(ended))
        }

        async fn drained(&self) -> Result<Vec<DrainRecord>, StoreError> {
            let c = self.conn().await?;
            let rows = query(
                &c,
                &format!("SELECT {DRAIN_COLUMNS} FROM channel_drains ORDER BY channel"),
                &[],
            )
            .await?;
            rows.iter().map(read_drain).collect()
        }

        async fn drain_log(&self, limit: u32) -> Result<Vec<DrainLogEntry>, StoreError> {
            let c = self.conn().await?;
            let rows = query(
                &c,
                &format!("SELECT {LOG_COLUMNS} FROM channel_drain_log ORDER BY id DESC LIMIT $1"),
                &[&i64::from(limit)],
            )
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(DrainLogEntry {
                        channel: get(row, 0)?,
                        action: get(row, 1)?,
                        reason: get(row, 2)?,
                        by: get(row, 3)?,
                        at_ms: get(row, 4)?,
                    })
                })
                .collect()
        }
    }
}
