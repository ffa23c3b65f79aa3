//! The store's one schema: a numbered list of migrations, each with its SQLite text and its
//! PostgreSQL text, recorded in `schema_migrations` by both engines (ARCHITECTURE.md, "The
//! store"). Never edit a migration that has shipped: add the next.
//!
//! The two texts of one step differ where the engines do: types (`INTEGER` / `BIGINT`,
//! `BOOLEAN`), and what PostgreSQL stores to share work between instances (leases and claim
//! tokens) that SQLite, serving one process, keeps in memory.
//!
//! PostgreSQL applies them in `PostgresStore::migrate` (an advisory lock, a transaction
//! each); SQLite in `sqlite::schema` (one `BEGIN IMMEDIATE` transaction). This file is data only:
//! both engines read it, it imports neither.

/// One step of the schema, for each engine. An empty text: the engine needs nothing at
/// that step (why is said beside it).
pub(super) struct Migration {
    pub(super) version: i32,
    pub(super) sqlite: &'static str,
    pub(super) postgres: &'static str,
}

/// Applied in order. The numbers are PostgreSQL's since the shared store shipped: a
/// database that applied them runs none again.
pub(super) const MIGRATIONS: [Migration; 6] = [
    Migration {
        version: 1,
        sqlite: SQLITE_V1,
        postgres: PG_V1,
    },
    Migration {
        version: 2,
        sqlite: SQLITE_V2_LATE,
        postgres: PG_V2_LATE,
    },
    Migration {
        version: 3,
        // SQLite claims no events (one process: handing due events out is a plain read), so
        // its events need no claim column; its per-shop index is in its V1 (it came with
        // the table there).
        sqlite: "",
        postgres: PG_V3_EVENT_CLAIMS,
    },
    Migration {
        version: 4,
        // No `check_claim` column: SQLite keeps its check claims in memory.
        sqlite: SQLITE_V4_OPEN_CHECKS,
        postgres: PG_V4_CHECK_CLAIMS,
    },
    Migration {
        version: 5,
        sqlite: SQLITE_V5_DRAINS,
        postgres: PG_V5_DRAINS,
    },
    // Self-contained: one index.
    Migration {
        version: 6,
        sqlite: SQLITE_QUOTA_INDEX,
        postgres: PG_QUOTA_INDEX,
    },
];

/// The tables, their indexes and the schedule's columns; the readiness probe's own table
/// (`probe` here, `store_probe` on PostgreSQL). `IF NOT EXISTS` throughout: a file from
/// before `schema_migrations` runs it too, to gain the indexes added since.
pub(super) const SQLITE_V1: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_id        TEXT PRIMARY KEY,
    merchant_id       TEXT NOT NULL,
    shop_id           TEXT NOT NULL,
    out_trade_no      TEXT NOT NULL,
    amount            INTEGER NOT NULL CHECK (amount > 0),
    currency          TEXT NOT NULL,
    method            TEXT NOT NULL,
    status            TEXT NOT NULL,
    channel           TEXT NOT NULL,
    rule              TEXT NOT NULL,
    action            TEXT,
    provider_trade_no TEXT,
    refunded_amount   INTEGER NOT NULL DEFAULT 0,
    request_hash      TEXT NOT NULL,
    request           TEXT NOT NULL,
    error_code        TEXT,
    error_message     TEXT,
    attempt_until     INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    paid_at           INTEGER,
    expires_at        INTEGER NOT NULL,
    version           INTEGER NOT NULL,
    account           TEXT,
    next_check_at     INTEGER,
    UNIQUE (merchant_id, out_trade_no)
);
CREATE INDEX IF NOT EXISTS payments_status ON payments (status, updated_at);
CREATE TABLE IF NOT EXISTS refunds (
    refund_id          TEXT PRIMARY KEY,
    merchant_id        TEXT NOT NULL,
    shop_id            TEXT NOT NULL,
    out_trade_no       TEXT NOT NULL,
    out_refund_no      TEXT NOT NULL,
    payment_id         TEXT NOT NULL REFERENCES payments (payment_id),
    channel            TEXT NOT NULL,
    amount             INTEGER NOT NULL CHECK (amount > 0),
    reason             TEXT,
    status             TEXT NOT NULL,
    provider_refund_no TEXT,
    request_hash       TEXT NOT NULL,
    error_code         TEXT,
    error_message      TEXT,
    attempt_until      INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    succeeded_at       INTEGER,
    version            INTEGER NOT NULL,
    next_check_at      INTEGER,
    UNIQUE (merchant_id, out_refund_no)
);
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (payment_id, status);
CREATE INDEX IF NOT EXISTS payments_trade_no ON payments (out_trade_no);
CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at, payment_id);
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    shop_id         TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    payment_id      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS events_due ON events (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS events_payment ON events (payment_id, status, seq);
CREATE INDEX IF NOT EXISTS events_age ON events (status, created_at);
CREATE INDEX IF NOT EXISTS events_shop_due ON events (shop_id, next_attempt_at, seq)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS payments_check ON payments (next_check_at);
CREATE INDEX IF NOT EXISTS refunds_check ON refunds (next_check_at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, pad BLOB);
";

/// Issue 15: a payment reported after the order had ended is flagged `late`.
const SQLITE_V2_LATE: &str = "
ALTER TABLE payments ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
";

/// Issue 18: the manual drain switch (`store::drains`): the drained channels, and a log of
/// every drain and resume. `IF NOT EXISTS`: safe to run over a file that has them.
pub(super) const SQLITE_V5_DRAINS: &str = "
CREATE TABLE IF NOT EXISTS channel_drains (
    channel    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    drained_by TEXT NOT NULL,
    since      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_drain_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('drain', 'resume')),
    reason     TEXT,
    drained_by TEXT NOT NULL,
    at         INTEGER NOT NULL
);
";

/// Issue 16: an open record left with no next check (by a payroute before it, whose
/// reconciler dropped an order whose check met an open breaker past its expiry) is checked
/// at once. Also run at every start, as before this list existed: a file a payroute older
/// than the list wrote to since (a rollback) may hold such records again; the index finds
/// them.
pub(super) const SQLITE_V4_OPEN_CHECKS: &str = "
UPDATE payments SET next_check_at = updated_at
 WHERE next_check_at IS NULL AND status IN ('pending', 'unknown');
UPDATE refunds SET next_check_at = updated_at
 WHERE next_check_at IS NULL AND status IN ('pending', 'abnormal');
";

/// Issue 18 (quotas): what an account has taken in a China day or month is the sum of its
/// payments created since the period's start (`store::quotas`): a range scan of this index,
/// the account's rows only, covering (status and amount in the index: no table read per
/// payment). A plain `CREATE INDEX` in the migration's transaction: on a large payments
/// table build it beforehand (`CREATE INDEX CONCURRENTLY` under the same name) so the
/// upgrade does not block writes while it builds.
const SQLITE_QUOTA_INDEX: &str = "
CREATE INDEX IF NOT EXISTS payments_account_created ON payments (account, created_at, status, amount);
";

const PG_QUOTA_INDEX: &str = "
CREATE INDEX IF NOT EXISTS payments_account_created ON payments (account, created_at) INCLUDE (status, amount);
";

const PG_V1: &str = "
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

/// Issue 15: a payment reported after the order had ended is flagged `late`; ended orders
/// (closed, failed) and late ones are checked by the reconciler too.
const PG_V2_LATE: &str = "
ALTER TABLE payments ADD COLUMN late BOOLEAN NOT NULL DEFAULT false;
";

/// Issue 16: an event's claim carries a fencing token (only its holder records the
/// delivery), and due events are claimed per shop in `(next_attempt_at, seq)` order: the
/// index serves both the walk over the shops with pending events and each shop's oldest.
const PG_V3_EVENT_CLAIMS: &str = "
ALTER TABLE events ADD COLUMN claim TEXT;
CREATE INDEX events_shop_due ON events (shop_id, next_attempt_at, seq) WHERE status = 'pending';
";

/// Issue 16: a check's claim is fenced by a token (`check_claim`), and an open record is
/// never left with no next check — those a payroute before it dropped are checked at once.
/// (Number 3 is the outbox's migration of the same issue.)
const PG_V4_CHECK_CLAIMS: &str = "
ALTER TABLE payments ADD COLUMN IF NOT EXISTS check_claim TEXT;
ALTER TABLE refunds ADD COLUMN IF NOT EXISTS check_claim TEXT;
UPDATE payments SET next_check_at = updated_at
 WHERE next_check_at IS NULL AND status IN ('pending', 'unknown');
UPDATE refunds SET next_check_at = updated_at
 WHERE next_check_at IS NULL AND status IN ('pending', 'abnormal');
";

/// Issue 18: the manual drain switch (`store::drains`), shared by every instance on the
/// database: the drained channels, and a log of every drain and resume.
const PG_V5_DRAINS: &str = "
CREATE TABLE channel_drains (
    channel    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    drained_by TEXT NOT NULL,
    since      BIGINT NOT NULL
);
CREATE TABLE channel_drain_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel    TEXT NOT NULL,
    action     TEXT NOT NULL CHECK (action IN ('drain', 'resume')),
    reason     TEXT,
    drained_by TEXT NOT NULL,
    at         BIGINT NOT NULL
);
";
