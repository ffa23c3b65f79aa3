//! The shared store: PostgreSQL, for several proxy instances on one database (ARCHITECTURE.md, "The
//! store").
//!
//! Same behaviour as the SQLite store, method for method; what differs is how concurrency
//! is held, since the writers are now many connections of many processes:
//! - A write that SQLite does in one transaction is one transaction here too (an update and
//!   the shop event that tells of it; a refund reservation and its guard).
//! - Updates are compare-and-set on `version` (a stalled writer cannot overwrite a newer
//!   one: fencing); `insert_payment` relies on the `(merchant_id, out_trade_no)` unique key.
//! - Refund writes lock their payment's row first (`FOR UPDATE`), so the over-refund guard
//!   and `refunded_amount` see every refund committed before them, whichever instance wrote it.
//! - Work handed out (`due_events`, `claim_due_payments`, `claim_due_refunds`) is claimed with
//!   `FOR UPDATE SKIP LOCKED` and a lease column: one instance works an item at a time, and
//!   a dead instance's claims run out after the lease (`store.lease`, [`DEFAULT_LEASE`]).
//!   Only the oldest pending event of a payment is ever due, claimed or
//!   not, so events of one payment still go out one at a time, in order. Events are claimed
//!   per shop, each shop at most its free delivery slots (`DueLimits`), so one shop's
//!   backlog never fills another's places.
//! - An event's claim is fenced: each carries a random token (`events.claim`, handed out in
//!   `EventRecord::claim`), and `record_delivery` / `release_events` write only while the row
//!   still holds it, so a holder that stalled past its lease changes nothing once another
//!   instance has taken the event over. Event leases are set and compared on the database's
//!   clock (`now()`), never an instance's own: instances whose clocks disagree still agree
//!   on when a lease ran out. (`gen_random_uuid()` makes the tokens: PostgreSQL 13 or later.)
//! - A reconciliation check's claim carries a token (`check_claim`, fresh per claim), and
//!   its lease is taken and judged by the database's clock (`now()`), not the
//!   instances': the next check is written only under the latest claim, so a holder that
//!   stalled past its lease while another took the check over writes nothing.
//! - Schema changes are versioned migrations (`schema_migrations`), each in one transaction
//!   under an advisory lock, applied at start: instances starting together do not race. A
//!   schema already current is only read at start, so the runtime role needs no CREATE
//!   privilege: the owner migrates (`payroute store migrate`), the runtime role only reads
//!   and writes rows (see `PostgresStore::migrate`).
//!
//! Money is `BIGINT` minor units; times are unix ms (`BIGINT`), as in SQLite.

pub(in crate::store) mod claims;
mod connect;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::schema::MIGRATIONS;
use super::{EventRecord, PaymentRecord, RefundRecord, StoreError, StoreMetrics};
use crate::secret::Secret;

pub(in crate::store) use super::codec::{read_claimed_event, read_payment, read_refund};
use super::codec::{Cells, PAYMENT_COLUMNS, REFUND_COLUMNS};
use crate::defaults::DEFAULT_PG_LEASE as DEFAULT_LEASE;
use connect::tls_config;
pub use connect::{valid_schema, ConnectSpec, UrlError};

/// Connecting, and waiting for a pooled connection, give up after this: a request then fails
/// with a clear store error instead of hanging while PostgreSQL is away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may go without a sign of life from the server while it waits.
const LOST_PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-side bounds on every session, so that a stalled peer cannot make a request wait
/// without end: a row lock held elsewhere (another instance paused mid-transaction) is waited
/// for at most `lock_timeout`; one statement runs at most `statement_timeout`; a transaction
/// left open by a client that stopped talking is ended after
/// `idle_in_transaction_session_timeout`, releasing its locks. Each refusal is a retryable
/// `503 store_unavailable`. Payroute's own row locks last milliseconds.
const SESSION_BOUNDS: &str =
    "-c lock_timeout=2s -c statement_timeout=10s -c idle_in_transaction_session_timeout=30s";

/// The store: a pool of connections to one schema of one database.
pub struct PostgresStore {
    pool: Pool,
    metrics: StoreMetrics,
    /// `store.lease` in ms: how long a claim on an event or a check holds.
    pub(in crate::store) lease_ms: i64,
    /// This instance's queue per quota account, taken before a pool connection: guarded
    /// writes of one busy account wait here, not on the database's lock with a connection
    /// each, so they cannot drain the pool every other write needs.
    pub(in crate::store) quota_queues: dashmap::DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl PostgresStore {
    /// Connects, creates `schema` if missing and applies the migrations it lacks; counts
    /// into metrics registered nowhere.
    pub async fn open(
        url: &Secret,
        pool_size: u32,
        schema: &str,
    ) -> Result<PostgresStore, StoreError> {
        let metrics = StoreMetrics::new(&prometheus::Registry::new())
            .map_err(|e| StoreError::Backend(format!("metrics: {e}")))?;
        PostgresStore::open_counted(url, pool_size, schema, metrics).await
    }

    /// [`PostgresStore::open`], counting writes and commits into `metrics` (each write is
    /// its own transaction here: one commit each).
    pub async fn open_counted(
        url: &Secret,
        pool_size: u32,
        schema: &str,
        metrics: StoreMetrics,
    ) -> Result<PostgresStore, StoreError> {
        if !valid_schema(schema) {
            return Err(StoreError::Backend(format!(
                "store.schema {schema:?} is not a plain identifier"
            )));
        }
        let spec = ConnectSpec::parse(url.expose())
            .map_err(|e| StoreError::Backend(format!("store.url: {e}")))?;
        let mut config = spec.config;
        // The bounds first, so that the url's own `options` may change them; the schema
        // last, so that nothing does: the tables' names stay unqualified.
        let path = format!("-c search_path=\"{schema}\"");
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{SESSION_BOUNDS} {o} {path}"),
            _ => format!("{SESSION_BOUNDS} {path}"),
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that vanishes without closing the connection (a partition, a dead
        // host) must fail the call, not hang it: data unacknowledged for 30s, or an idle
        // connection without keepalive answers for about a minute, ends the connection.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(LOST_PEER_TIMEOUT);
        }
        if config.get_keepalives_idle() > LOST_PEER_TIMEOUT {
            config.keepalives_idle(LOST_PEER_TIMEOUT);
            config.keepalives_interval(Duration::from_secs(10));
            config.keepalives_retries(3);
        }
        if config.get_application_name().is_none() {
            config.application_name("payroute");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &spec.tls {
            None => Manager::from_config(config, NoTls, manager_config),
            Some(roots) => Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(roots.as_deref())?),
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1) as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))?;
        let store = PostgresStore {
            pool,
            metrics,
            lease_ms: duration_ms(DEFAULT_LEASE),
            quota_queues: dashmap::DashMap::new(),
        };
        store.migrate(schema).await?;
        Ok(store)
    }

    /// This instance's queue for guarded writes of `account_text` (one per account with a
    /// quota, kept for the process's life: a handful).
    pub(in crate::store) fn quota_queue(&self, account_text: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.quota_queues
            .entry(account_text.to_string())
            .or_default()
            .clone()
    }

    /// Claims on events and checks hold for `lease` instead of [`DEFAULT_LEASE`].
    pub fn with_lease(mut self, lease: Duration) -> PostgresStore {
        self.lease_ms = duration_ms(lease);
        self
    }

    /// Whether this instance's connections to PostgreSQL are encrypted (for ops and tests).
    pub async fn tls_in_use(&self) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_one(
                "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map_err(pg)?;
        get(&row, 0)
    }

    pub(in crate::store) async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// One write committed, asked for at `started`.
    pub(in crate::store) fn committed(&self, started: tokio::time::Instant) {
        self.metrics.writes.inc();
        self.metrics.commits.inc();
        self.metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Applies each missing migration in its own transaction, under an advisory lock held
    /// to the end of that transaction: a second instance starting at the same moment waits,
    /// then sees the migration applied and skips it.
    ///
    /// A schema already current is only read: the start then needs no more than the
    /// runtime role's grants (USAGE on the schema, SELECT on `schema_migrations`) — no
    /// CREATE on the database (which `CREATE SCHEMA IF NOT EXISTS` checks even when the
    /// schema exists) nor on the schema (which `CREATE TABLE IF NOT EXISTS` checks likewise).
    /// A missing schema or ledger is created only when missing, so an owner with CREATE on
    /// its schema but not on the database can migrate it.
    ///
    /// # Limits
    /// A role without CREATE cannot apply a migration: a payroute newer than the schema fails
    /// to start until `payroute store migrate` runs as the owner (the error says so).
    async fn migrate(&self, schema: &str) -> Result<(), StoreError> {
        let mut client = self.conn().await?;
        let current = match applied_migrations(&client, schema).await? {
            Some(applied) => MIGRATIONS.iter().all(|m| applied.contains(&m.version)),
            None => false,
        };
        let lock_key = format!("payroute.migrate.{schema}");
        for (version, sql) in MIGRATIONS
            .iter()
            .filter(|_| !current)
            .map(|m| (&m.version, m.postgres))
        {
            let tx = client.transaction().await.map_err(pg)?;
            // A migration may take long, and so may waiting for another instance's: the
            // session bounds, meant for requests, do not apply here.
            tx.batch_execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
                .await
                .map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
                .await
                .map_err(pg)?;
            // Under the lock, so that instances starting together do not both create.
            if !exists(&tx, SCHEMA_EXISTS, schema).await? {
                tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                    .await
                    .map_err(|e| migrating("creating the schema", &e))?;
            }
            if !exists(&tx, LEDGER_EXISTS, schema).await? {
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                         version    INTEGER PRIMARY KEY,
                         applied_at BIGINT NOT NULL
                     )",
                )
                .await
                .map_err(|e| migrating("creating schema_migrations", &e))?;
            }
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[version],
                )
                .await
                .map_err(pg)?
                .is_some();
            if !applied {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| migrating(&format!("migration {version}"), &e))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    &[version, &unix_ms()],
                )
                .await
                .map_err(pg)?;
                tracing::info!(version, schema, "store: migration applied");
            }
            tx.commit().await.map_err(pg)?;
        }
        // A newer payroute migrated this schema (a rolling upgrade in progress): this one
        // still works on the tables it knows, but ops should finish the upgrade.
        let newest: Option<i32> = client
            .query_one("SELECT MAX(version) FROM schema_migrations", &[])
            .await
            .map_err(pg)
            .and_then(|row| get(&row, 0))?;
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if newest.is_some_and(|n| n > known) {
            tracing::warn!(
                schema,
                newest,
                known,
                "store: the schema has migrations this payroute does not know; upgrade every instance"
            );
        }
        Ok(())
    }
}

/// Whether `schema` exists (`$1`): `pg_namespace` is readable by every role.
const SCHEMA_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)";
/// Whether `schema` (`$1`) holds the migrations' ledger, `schema_migrations`.
const LEDGER_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_class c
     JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relname = 'schema_migrations')";

/// What `query` (one of [`SCHEMA_EXISTS`], [`LEDGER_EXISTS`]) says of `schema`.
async fn exists(
    client: &impl GenericClient,
    query: &str,
    schema: &str,
) -> Result<bool, StoreError> {
    let row = client.query_one(query, &[&schema]).await.map_err(pg)?;
    get(&row, 0)
}

/// The versions applied to `schema`, read without writing or locking anything; `None` when
/// it has no ledger yet (or does not exist).
async fn applied_migrations(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Option<Vec<i32>>, StoreError> {
    if !exists(client, LEDGER_EXISTS, schema).await? {
        return Ok(None);
    }
    let rows = client
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(|e| migrating("reading schema_migrations", &e))?;
    rows.iter()
        .map(|row| get(row, 0))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// A failed step of [`PostgresStore::migrate`]; a missing privilege says who may do it.
fn migrating(step: &str, e: &tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        return StoreError::Backend(format!(
            "{step}: {}; the schema's owner applies migrations (`payroute store migrate` with \
             the owner's store.url), the runtime role needs USAGE on the schema and SELECT, \
             INSERT, UPDATE, DELETE on its tables and USAGE, SELECT on its sequences",
            describe(e)
        ));
    }
    let described = describe(e);
    if unavailable(e) {
        StoreError::Unavailable(format!("{step}: {described}"))
    } else {
        StoreError::Backend(format!("{step}: {described}"))
    }
}

/// An error as ops read it: PostgreSQL's SQLSTATE and message, never the connection url.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "postgres {} {}: {}",
                db.code().code(),
                db.severity(),
                db.message()
            );
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        // "error connecting to server" says little without its cause ("Connection refused").
        None => match std::error::Error::source(e) {
            Some(cause) => format!("postgres: {e}: {cause}"),
            None => format!("postgres: {e}"),
        },
    }
}

/// The database cannot serve now, rather than refusing this request: the connection is
/// gone or was never made (no SQLSTATE), or PostgreSQL says so — class 08 (connection),
/// 53 (out of resources: disk full, too many connections), 57P01-57P05 (shutting down,
/// starting up), 25006 (a read-only standby), 55P03 / 57014 (a lock or a statement that
/// outwaited [`SESSION_BOUNDS`]), 40001 / 40P01 (serialization failure, deadlock: the
/// transaction was rolled back, and trying again is how PostgreSQL asks to be used). The
/// API answers those `503 store_unavailable`.
fn unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code, "25006" | "55P03" | "57014" | "40001" | "40P01")
        }
    }
}

pub(in crate::store) fn pg(e: tokio_postgres::Error) -> StoreError {
    if unavailable(&e) {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Backend(describe(&e))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        // No connection within the wait: the database is away or overloaded.
        other => StoreError::Unavailable(format!("postgres pool: {other}")),
    }
}

pub(in crate::store) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// Now, in unix ms (the store keeps no clock of its own otherwise: callers pass times in).
pub(in crate::store) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A duration as the store's unit of time (ms), saturating.
pub(in crate::store) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(in crate::store) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

pub(in crate::store) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(pg)
}

pub(in crate::store) fn collect<T>(
    rows: Vec<Row>,
    read: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(read).collect()
}

pub(in crate::store) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&stmt, params).await.map_err(pg)
}

pub(in crate::store) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&stmt, params).await.map_err(pg)
}

pub(in crate::store) async fn get_payment<C: GenericClient>(
    c: &C,
    merchant_id: &str,
    out_trade_no: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    let rows = query(
        c,
        &format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE merchant_id = $1 AND out_trade_no = $2"
        ),
        &[&merchant_id, &out_trade_no],
    )
    .await?;
    rows.first().map(read_payment).transpose()
}

pub(in crate::store) async fn get_refund<C: GenericClient>(
    c: &C,
    merchant_id: &str,
    out_refund_no: &str,
) -> Result<Option<RefundRecord>, StoreError> {
    let rows = query(
        c,
        &format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant_id = $1 AND out_refund_no = $2"
        ),
        &[&merchant_id, &out_refund_no],
    )
    .await?;
    rows.first().map(read_refund).transpose()
}

pub(in crate::store) async fn insert_event<C: GenericClient>(
    c: &C,
    e: &EventRecord,
) -> Result<(), StoreError> {
    let attempts = i64::from(e.attempts);
    execute(
        c,
        "INSERT INTO events (event_id, shop_id, merchant_id, payment_id, event_type, body, status,
         attempts, next_attempt_at, created_at, delivered_at, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &e.event_id,
            &e.shop_id,
            &e.merchant_id,
            &e.payment_id,
            &e.event_type.as_str(),
            &e.body,
            &e.status.as_str(),
            &attempts,
            &e.next_attempt_at,
            &e.created_at,
            &e.delivered_at,
            &e.last_error,
        ],
    )
    .await?;
    Ok(())
}

impl Cells for tokio_postgres::Row {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        get(self, i)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        get(self, i)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        get(self, i)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        get(self, i)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        get(self, i)
    }
}
