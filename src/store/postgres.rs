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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    account_json, claim_token, failure, parse_account, rebound_seller, CheckClaim, CheckOf,
    Delivery, Due, DueLimits, EventFilter, EventRecord, OpenAtAccount, OutboxStats, PaymentFilter,
    PaymentRecord, RefundFilter, RefundRecord, Resend, Reservation, Store, StoreError,
    StoreMetrics, LEGACY_SELLER_FILTER, OPEN_RECHECK, OPEN_REFUND,
};
use crate::domain::{EventStatus, EventType, Method, PaymentStatus, RefundStatus};
use crate::secret::Secret;

use crate::defaults::DEFAULT_PG_LEASE as DEFAULT_LEASE;

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

/// Versioned schema migrations, applied in order, each in one transaction. Never edit one
/// that has shipped: add the next.
const MIGRATIONS: [(i32, &str); 4] = [
    (1, V1),
    (2, V2_LATE),
    (3, V3_EVENT_CLAIMS),
    (4, V4_CHECK_CLAIMS),
];

const V1: &str = "
CREATE TABLE payments (
    payment_id        TEXT PRIMARY KEY,
    merchant_id       TEXT NOT NULL,
    shop_id           TEXT NOT NULL,
    out_trade_no      TEXT NOT NULL,
    amount            BIGINT NOT NULL CHECK (amount > 0),
    currency          TEXT NOT NULL,
    method            TEXT NOT NULL,
    status            TEXT NOT NULL,
    channel           TEXT NOT NULL,
    rule              TEXT NOT NULL,
    action            TEXT,
    provider_trade_no TEXT,
    refunded_amount   BIGINT NOT NULL DEFAULT 0,
    request_hash      TEXT NOT NULL,
    request           TEXT NOT NULL,
    error_code        TEXT,
    error_message     TEXT,
    attempt_until     BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    paid_at           BIGINT,
    expires_at        BIGINT NOT NULL,
    version           BIGINT NOT NULL,
    account           TEXT,
    next_check_at     BIGINT,
    check_lease_until BIGINT,
    UNIQUE (merchant_id, out_trade_no)
);
CREATE INDEX payments_trade_no ON payments (out_trade_no);
CREATE INDEX payments_created ON payments (created_at, payment_id);
CREATE INDEX payments_check ON payments (next_check_at) WHERE next_check_at IS NOT NULL;
CREATE TABLE refunds (
    refund_id          TEXT PRIMARY KEY,
    merchant_id        TEXT NOT NULL,
    shop_id            TEXT NOT NULL,
    out_trade_no       TEXT NOT NULL,
    out_refund_no      TEXT NOT NULL,
    payment_id         TEXT NOT NULL REFERENCES payments (payment_id),
    channel            TEXT NOT NULL,
    amount             BIGINT NOT NULL CHECK (amount > 0),
    reason             TEXT,
    status             TEXT NOT NULL,
    provider_refund_no TEXT,
    request_hash       TEXT NOT NULL,
    error_code         TEXT,
    error_message      TEXT,
    attempt_until      BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    succeeded_at       BIGINT,
    version            BIGINT NOT NULL,
    next_check_at      BIGINT,
    check_lease_until  BIGINT,
    UNIQUE (merchant_id, out_refund_no)
);
CREATE INDEX refunds_payment ON refunds (payment_id, status);
CREATE INDEX refunds_created ON refunds (created_at);
CREATE INDEX refunds_check ON refunds (next_check_at) WHERE next_check_at IS NOT NULL;
CREATE TABLE events (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    shop_id         TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    payment_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT,
    lease_until     BIGINT
);
CREATE INDEX events_due ON events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX events_payment ON events (payment_id, seq) WHERE status = 'pending';
CREATE INDEX events_age ON events (status, created_at);
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL
);
";

/// Issue 16: an event's claim carries a fencing token (only its holder records the
/// delivery), and due events are claimed per shop in `(next_attempt_at, seq)` order: the
/// index serves both the walk over the shops with pending events and each shop's oldest.
const V3_EVENT_CLAIMS: &str = "
ALTER TABLE events ADD COLUMN claim TEXT;
CREATE INDEX events_shop_due ON events (shop_id, next_attempt_at, seq) WHERE status = 'pending';
";

/// Now in unix ms by the database's clock: every lease is set and compared by this one clock,
/// so instances whose clocks disagree still agree on whose lease has run out. (`now()` is the
/// transaction's start: one value throughout a statement.)
const DB_NOW_MS: &str = "(extract(epoch from now()) * 1000)::bigint";

/// A schema name payroute accepts: a plain lower-case identifier, so that it needs no
/// quoting rules of its own and cannot inject SQL.
pub fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// A parsed `store.url`: the connection settings, and whether (and against which roots) TLS
/// is required.
///
/// `sslmode` and `sslrootcert` are read here rather than by tokio-postgres, which knows
/// neither `verify-ca`/`verify-full` nor `sslrootcert`:
/// - `disable`, `allow`, `prefer` (and no `sslmode`): no TLS.
/// - `require`, `verify-ca`, `verify-full`: TLS through rustls, the server's certificate
///   verified (chain and host name) against the Mozilla roots, or against `sslrootcert`
///   when given. That is stricter than libpq's `require`, which does not verify: a payment
///   system does not send its database password to an unverified peer.
pub struct ConnectSpec {
    config: tokio_postgres::Config,
    /// `Some`: TLS required, with these roots (`None`: the Mozilla roots).
    tls: Option<Option<PathBuf>>,
}

impl ConnectSpec {
    /// Errors never quote the url: it may hold a password.
    pub fn parse(url: &str) -> Result<ConnectSpec, String> {
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let mut sslmode: Option<String> = None;
        let mut rootcert: Option<String> = None;
        let rest = if is_url {
            match url.split_once('?') {
                None => url.to_string(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let decoded = form_urlencoded::parse(pair.as_bytes()).next();
                        match decoded {
                            Some((k, v)) if k == "sslmode" => sslmode = Some(v.into_owned()),
                            Some((k, v)) if k == "sslrootcert" => rootcert = Some(v.into_owned()),
                            _ => kept.push(pair),
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            // key=value form: the two keys are taken out where they stand, the rest untouched.
            let mut rest = url.to_string();
            for token in url.split_whitespace() {
                if let Some(v) = token.strip_prefix("sslmode=") {
                    sslmode = Some(v.trim_matches('\'').to_string());
                } else if let Some(v) = token.strip_prefix("sslrootcert=") {
                    rootcert = Some(v.trim_matches('\'').to_string());
                } else {
                    continue;
                }
                rest = rest.replacen(token, "", 1);
            }
            rest
        };
        let tls = match sslmode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => false,
            Some("require" | "verify-ca" | "verify-full") => true,
            Some(other) => {
                return Err(format!(
                    "sslmode {other:?} is not disable, prefer, require, verify-ca or verify-full"
                ))
            }
        };
        if rootcert.is_some() && !tls {
            return Err("sslrootcert needs sslmode=require or verify-full".into());
        }
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            if is_url {
                // The cause names the option (`port`, an unknown key), never its value.
                match std::error::Error::source(&e) {
                    Some(cause) => format!("not a valid PostgreSQL url: {e} ({cause})"),
                    None => format!("not a valid PostgreSQL url: {e}"),
                }
            } else {
                // The key=value form's parser may quote a piece of the password back.
                "not a valid PostgreSQL connection string (the reason is not shown: it could quote the password)".to_string()
            }
        })?;
        config.ssl_mode(if tls {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        Ok(ConnectSpec {
            config,
            tls: tls.then(|| rootcert.map(PathBuf::from)),
        })
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn tls_config(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let roots = match root_cert {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            // As libpq: the file replaces the default roots.
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Backend(format!("sslrootcert {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Backend(format!("sslrootcert {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Backend(format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(format!(
                    "sslrootcert {}: no certificate found",
                    path.display()
                )));
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The store: a pool of connections to one schema of one database.
pub struct PostgresStore {
    pool: Pool,
    metrics: StoreMetrics,
    /// `store.lease` in ms: how long a claim on an event or a check holds.
    lease_ms: i64,
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
        };
        store.migrate(schema).await?;
        Ok(store)
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

    async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// One write committed, asked for at `started`.
    fn committed(&self, started: tokio::time::Instant) {
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
            Some(applied) => MIGRATIONS.iter().all(|(v, _)| applied.contains(v)),
            None => false,
        };
        let lock_key = format!("payroute.migrate.{schema}");
        for (version, sql) in MIGRATIONS.iter().filter(|_| !current) {
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
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
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

fn pg(e: tokio_postgres::Error) -> StoreError {
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

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// Now, in unix ms (the store keeps no clock of its own otherwise: callers pass times in).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A duration as the store's unit of time (ms), saturating.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} {v} is out of range")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(pg)
}

/// Issue 15: a payment reported after the order had ended is flagged `late`; ended orders
/// (closed, failed) and late ones are checked by the reconciler too.
const V2_LATE: &str = "
ALTER TABLE payments ADD COLUMN late BOOLEAN NOT NULL DEFAULT false;
";

/// Issue 16: a check's claim is fenced by a token (`check_claim`), and an open record is
/// never left with no next check — those a payroute before it dropped are checked at once.
/// (Number 3 is the outbox's migration of the same issue.)
const V4_CHECK_CLAIMS: &str = "
ALTER TABLE payments ADD COLUMN IF NOT EXISTS check_claim TEXT;
ALTER TABLE refunds ADD COLUMN IF NOT EXISTS check_claim TEXT;
UPDATE payments SET next_check_at = updated_at
 WHERE next_check_at IS NULL AND status IN ('pending', 'unknown');
UPDATE refunds SET next_check_at = updated_at
 WHERE next_check_at IS NULL AND status IN ('pending', 'abnormal');
";

const COLUMNS: &str = "payment_id, merchant_id, shop_id, out_trade_no, amount, currency, method, status, channel, rule, action, provider_trade_no, refunded_amount, request_hash, request, error_code, error_message, attempt_until, created_at, updated_at, paid_at, expires_at, version, account, late";

fn read_payment(row: &Row) -> Result<PaymentRecord, StoreError> {
    let method: String = get(row, 6)?;
    let status: String = get(row, 7)?;
    let action: Option<String> = get(row, 10)?;
    let request: String = get(row, 14)?;
    Ok(PaymentRecord {
        payment_id: get(row, 0)?,
        merchant_id: get(row, 1)?,
        shop_id: get(row, 2)?,
        out_trade_no: get(row, 3)?,
        amount: to_u64(get(row, 4)?, "amount")?,
        currency: get(row, 5)?,
        method: Method::parse(&method)
            .ok_or_else(|| StoreError::Corrupt(format!("method {method}")))?,
        status: PaymentStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        channel: get(row, 8)?,
        rule: get(row, 9)?,
        action: action
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("action: {e}")))?,
        provider_trade_no: get(row, 11)?,
        refunded_amount: to_u64(get(row, 12)?, "refunded")?,
        request_hash: get(row, 13)?,
        request: serde_json::from_str(&request)
            .map_err(|e| StoreError::Corrupt(format!("request: {e}")))?,
        error_code: failure(get(row, 15)?)?,
        error_message: get(row, 16)?,
        attempt_until: get(row, 17)?,
        created_at: get(row, 18)?,
        updated_at: get(row, 19)?,
        paid_at: get(row, 20)?,
        expires_at: get(row, 21)?,
        version: get(row, 22)?,
        account: parse_account(get(row, 23)?)?,
        late: get(row, 24)?,
    })
}

const REFUND_COLUMNS: &str = "refund_id, merchant_id, shop_id, out_trade_no, out_refund_no, payment_id, channel, amount, reason, status, provider_refund_no, request_hash, error_code, error_message, attempt_until, created_at, updated_at, succeeded_at, version";

fn read_refund(row: &Row) -> Result<RefundRecord, StoreError> {
    let status: String = get(row, 9)?;
    Ok(RefundRecord {
        refund_id: get(row, 0)?,
        merchant_id: get(row, 1)?,
        shop_id: get(row, 2)?,
        out_trade_no: get(row, 3)?,
        out_refund_no: get(row, 4)?,
        payment_id: get(row, 5)?,
        channel: get(row, 6)?,
        amount: to_u64(get(row, 7)?, "refund amount")?,
        reason: get(row, 8)?,
        status: RefundStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("refund status {status}")))?,
        provider_refund_no: get(row, 10)?,
        request_hash: get(row, 11)?,
        error_code: failure(get(row, 12)?)?,
        error_message: get(row, 13)?,
        attempt_until: get(row, 14)?,
        created_at: get(row, 15)?,
        updated_at: get(row, 16)?,
        succeeded_at: get(row, 17)?,
        version: get(row, 18)?,
    })
}

const EVENT_COLUMNS: &str = "seq, event_id, shop_id, merchant_id, payment_id, event_type, body, status, attempts, next_attempt_at, created_at, delivered_at, last_error, claim";

fn read_event(row: &Row) -> Result<EventRecord, StoreError> {
    let event_type: String = get(row, 5)?;
    let status: String = get(row, 7)?;
    let attempts: i64 = get(row, 8)?;
    Ok(EventRecord {
        seq: get(row, 0)?,
        event_id: get(row, 1)?,
        shop_id: get(row, 2)?,
        merchant_id: get(row, 3)?,
        payment_id: get(row, 4)?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| StoreError::Corrupt(format!("event_type {event_type}")))?,
        body: get(row, 6)?,
        status: EventStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("event status {status}")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
        next_attempt_at: get(row, 9)?,
        created_at: get(row, 10)?,
        delivered_at: get(row, 11)?,
        last_error: get(row, 12)?,
        claim: get(row, 13)?,
    })
}

fn collect<T>(
    rows: Vec<Row>,
    read: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(read).collect()
}

/// What the reconciliation worker checks in one table: open records whose check is due.
struct DueChecks {
    of: CheckOf,
    table: &'static str,
    id: &'static str,
    /// Which records are checked, as an SQL condition.
    open: &'static str,
    columns: &'static str,
}

const DUE_PAYMENTS: DueChecks = DueChecks {
    of: CheckOf::Payment,
    table: "payments",
    id: "payment_id",
    // Ended ones get one more look (a late payment); late ones until their refund is sent.
    open: "status IN ('pending', 'unknown', 'closed', 'failed') OR late",
    columns: COLUMNS,
};

const DUE_REFUNDS: DueChecks = DueChecks {
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
async fn claim_due<C: GenericClient, T>(
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
async fn write_check<C: GenericClient>(
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

async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&stmt, params).await.map_err(pg)
}

async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&stmt, params).await.map_err(pg)
}

async fn get_payment<C: GenericClient>(
    c: &C,
    merchant_id: &str,
    out_trade_no: &str,
) -> Result<Option<PaymentRecord>, StoreError> {
    let rows = query(
        c,
        &format!("SELECT {COLUMNS} FROM payments WHERE merchant_id = $1 AND out_trade_no = $2"),
        &[&merchant_id, &out_trade_no],
    )
    .await?;
    rows.first().map(read_payment).transpose()
}

async fn get_refund<C: GenericClient>(
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

async fn insert_event<C: GenericClient>(c: &C, e: &EventRecord) -> Result<(), StoreError> {
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

/// Takes the row lock on a payment: every refund write of one payment holds it, so each sees
/// the refunds committed before it (statements after the lock read a fresh snapshot).
async fn lock_payment<C: GenericClient>(c: &C, payment_id: &str) -> Result<(), StoreError> {
    query(
        c,
        "SELECT 1 FROM payments WHERE payment_id = $1 FOR UPDATE",
        &[&payment_id],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_payment(&self, p: &PaymentRecord) -> Result<Option<PaymentRecord>, StoreError> {
        let started = tokio::time::Instant::now();
        let c = self.conn().await?;
        let amount = to_i64(p.amount, "amount")?;
        let refunded = to_i64(p.refunded_amount, "refunded_amount")?;
        let action = p.action.as_ref().map(|a| a.to_string());
        let request = p.request.to_string();
        let error_code = p.error_code.map(|c| c.as_str());
        let account = account_json(&p.account);
        // The unique key decides between concurrent creates, on any instance: the loser's
        // insert waits for the winner's commit, then does nothing and reads the winner.
        let n = execute(
            &c,
            // Due for reconciliation at once: the worker sets the real first check.
            &format!(
                "INSERT INTO payments ({COLUMNS}, next_check_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $19)
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
        .await?;
        if n == 1 {
            self.committed(started);
            return Ok(None);
        }
        match get_payment(&c, &p.merchant_id, &p.out_trade_no).await? {
            Some(existing) => Ok(Some(existing)),
            None => Err(StoreError::Backend(
                "insert_payment: conflicting payment vanished".into(),
            )),
        }
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
        let refunded = to_i64(p.refunded_amount, "refunded_amount")?;
        let action = p.action.as_ref().map(|a| a.to_string());
        let error_code = p.error_code.map(|c| c.as_str());
        let account = account_json(&p.account);
        // Compare-and-set: a concurrent writer of the same version blocks on the row, then
        // finds the version moved on and updates nothing.
        let n = execute(
            &tx,
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
        .await?;
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
                "SELECT {COLUMNS} FROM payments WHERE out_trade_no = $1 ORDER BY created_at, payment_id"
            ),
            &[&out_trade_no],
        )
        .await?;
        collect(rows, read_payment)
    }

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
                "SELECT {COLUMNS} FROM payments
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

    async fn list_refunds(&self, filter: &RefundFilter) -> Result<Vec<RefundRecord>, StoreError> {
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

    async fn reserve_refund(&self, r: &RefundRecord, paid: u64) -> Result<Reservation, StoreError> {
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
                 RETURNING {EVENT_COLUMNS}"
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
        let mut events = collect(rows, read_event)?;
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
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR merchant_id = $2)
                 ORDER BY seq DESC LIMIT $3"
            ),
            &[&status, &filter.merchant_id, &limit],
        )
        .await?;
        collect(rows, read_event)
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
                 RETURNING {EVENT_COLUMNS}"
            ),
            &[&event_id, &now],
        )
        .await?;
        self.committed(started);
        if let Some(row) = rows.first() {
            return Ok(Resend::Resent(read_event(row)?));
        }
        let rows = query(
            &c,
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1"),
            &[&event_id],
        )
        .await?;
        Ok(match rows.first() {
            Some(row) => Resend::Pending(read_event(row)?),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_without_quoting_the_password() {
        let plain = ConnectSpec::parse("postgres://app:s3cret@db.example:5432/pay").unwrap();
        assert!(!plain.tls());
        let tls = ConnectSpec::parse(
            "postgres://app:s3cret@db.example/pay?sslmode=verify-full&connect_timeout=3",
        )
        .unwrap();
        assert!(tls.tls());
        assert_eq!(
            tls.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert!(ConnectSpec::parse("postgres://db/pay?sslmode=require")
            .unwrap()
            .tls());
        assert!(
            ConnectSpec::parse("host=db user=app password=s3cret sslmode=verify-full")
                .unwrap()
                .tls()
        );
        let e = ConnectSpec::parse("postgres://app:s3cret@db/pay?sslmode=bogus")
            .err()
            .unwrap();
        assert!(e.contains("bogus") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("postgres://app:s3cret@db/pay?sslrootcert=/x.pem")
            .err()
            .unwrap();
        assert!(e.contains("sslrootcert") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("postgres://app:s3cret@db:s3cret/pay")
            .err()
            .unwrap();
        assert!(e.contains("`port`") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("postgres://app:s3cret@db/pay?bogus=1")
            .err()
            .unwrap();
        assert!(e.contains("`bogus`") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("host=db password=s3cret bogus_key=1")
            .err()
            .unwrap();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("payroute"));
        assert!(valid_schema("payroute_test_01"));
        assert!(!valid_schema(""));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("Pay"));
        assert!(!valid_schema("a\";drop"));
        assert!(!valid_schema(&"a".repeat(64)));
    }
}
