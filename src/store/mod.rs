//! Durable state: payments with their bound channel and account, refunds, the outbox of shop
//! events and the reconciliation schedule, one trait per concern — [`Ledger`] (payments and
//! refunds), [`Outbox`] (shop events), [`Schedule`] (reconciliation checks and their
//! claims), [`Reports`] (what ops read, health), [`Drains`] (channels ops took out of routing),
//! [`Quotas`] (what accounts have taken of their bank limits) — and [`Store`], all six in one.
//!
//! Two implementations with the same behaviour (one test suite, `tests/it/store/`, runs
//! against both): SQLite (`sqlite`, the default, one instance) and PostgreSQL (`postgres`,
//! shared by several instances: where the trait hands out work — due events, due checks —
//! it claims it with a lease, so one instance works an item at a time).
//!
//! Each concern's file holds its trait and both engines' implementations of it, side by side;
//! `sqlite/` and `postgres/` hold what an engine shares across concerns (connections,
//! threads, pool, errors); `schema.rs` the one list of migrations, each with both engines'
//! texts; `codec.rs` each table's columns and decoder once.

mod codec;
pub mod drains;
pub mod ledger;
pub mod migrate;
pub mod outbox;
pub mod pause;
pub mod postgres;
pub mod quotas;
pub mod reports;
pub mod schedule;
mod schema;
pub mod sqlite;

pub use drains::{DrainLogEntry, DrainRecord, Drained, Drains};
pub use ledger::{Inserted, Ledger, Updated};
pub use outbox::Outbox;
pub use quotas::{Over, Period, QuotaGuard, QuotaUse, Quotas, Room};
pub use reports::Reports;
pub use schedule::Schedule;

use std::path::PathBuf;

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use crate::secret::Secret;

use crate::domain::{
    Account, ChannelFailure, EventStatus, EventType, Method, PaymentStatus, RefundStatus,
};

/// Where state lives (config `store:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSettings {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        /// May hold a password: a [`Secret`], so that it never prints.
        url: Secret,
        pool_size: u32,
        /// Every table lives in this schema (created if missing).
        schema: String,
        /// How long an instance's claim on an event or a reconciliation check holds before
        /// another instance may take the work over.
        lease: std::time::Duration,
    },
}

/// One payment as stored: the request, the binding to its channel, and what happened.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentRecord {
    pub payment_id: String,
    pub merchant_id: String,
    pub shop_id: String,
    pub out_trade_no: String,
    pub amount: u64,
    pub currency: String,
    pub method: Method,
    pub status: PaymentStatus,
    /// The bound channel: every later operation on this order goes here.
    pub channel: String,
    /// The provider account the order was created at (`None` only for records written
    /// before accounts were stored). A channel whose account differs never sees the order.
    pub account: Option<Account>,
    /// The rule that chose the channel (`default` for a family default).
    pub rule: String,
    pub action: Option<serde_json::Value>,
    pub provider_trade_no: Option<String>,
    pub refunded_amount: u64,
    /// SHA-256 of the canonical create request, to tell a replay from a different request.
    pub request_hash: String,
    /// The canonical create request, so that a retry can call the channel again.
    pub request: serde_json::Value,
    /// The last channel failure and its message, for replays and ops.
    pub error_code: Option<ChannelFailure>,
    pub error_message: Option<String>,
    /// Unix ms until which a channel call is in flight for this payment.
    pub attempt_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub paid_at: Option<i64>,
    pub expires_at: i64,
    /// Optimistic concurrency: bumped by every update.
    pub version: i64,
    /// Paid after payroute had told the shop the order was over (closed or failed): a late payment
    /// (ARCHITECTURE.md, "Money rules": late and duplicate payments), refunded or kept by
    /// `late_payments`.
    pub late: bool,
}

/// Which payments `GET /admin/payments` lists, newest first.
#[derive(Clone, Debug, Default)]
pub struct PaymentFilter {
    pub merchant_id: Option<String>,
    pub status: Option<PaymentStatus>,
    /// Unix ms: created at or after.
    pub since: Option<i64>,
    /// Unix ms: created before.
    pub until: Option<i64>,
    /// Keyset paging: only payments listed after this `(created_at, payment_id)` in the
    /// newest-first order, so a long ledger reads page by page without gaps or repeats.
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

/// One refund: bound to its payment's channel, its amount reserved while pending.
#[derive(Clone, Debug, PartialEq)]
pub struct RefundRecord {
    pub refund_id: String,
    pub merchant_id: String,
    pub shop_id: String,
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub payment_id: String,
    pub channel: String,
    pub amount: u64,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub provider_refund_no: Option<String>,
    pub request_hash: String,
    pub error_code: Option<ChannelFailure>,
    pub error_message: Option<String>,
    pub attempt_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub succeeded_at: Option<i64>,
    pub version: i64,
}

/// Which refunds the refund ledger lists, newest first.
#[derive(Clone, Debug, Default)]
pub struct RefundFilter {
    pub merchant_id: Option<String>,
    pub status: Option<RefundStatus>,
    pub limit: u32,
}

/// Orders still open at one bound (channel, account): what a change of the account's
/// identity in the config would strand.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAtAccount {
    pub channel: String,
    pub account: Option<Account>,
    /// Payments `pending` or `unknown`.
    pub payments: u64,
    /// Refunds `pending` or `abnormal` of payments bound there.
    pub refunds: u64,
}

/// A shop event in the outbox (ARCHITECTURE.md, "Shop events and webhooks"): written in the same
/// transaction as the state change it tells of, delivered at least once, in order per payment.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    pub event_id: String,
    pub shop_id: String,
    pub merchant_id: String,
    /// Events of one payment are delivered in `seq` order, one at a time.
    pub payment_id: String,
    pub event_type: EventType,
    /// The webhook body exactly as it is signed and sent.
    pub body: String,
    pub status: EventStatus,
    pub attempts: u32,
    /// Unix ms.
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub last_error: Option<String>,
    /// Assigned by the store on insert.
    pub seq: i64,
    /// The claim token [`Outbox::due_events`] handed this event out with (a shared store's
    /// fencing token: random per claim, stored in the event's row); `None` where the store
    /// does not claim (SQLite, one process) and on events read any other way.
    /// [`Outbox::record_delivery`] and [`Outbox::release_events`] write only while the row
    /// still holds this token: a holder whose lease ran out and was taken over changes
    /// nothing.
    pub claim: Option<String>,
}

/// How many due events [`Outbox::due_events`] may hand out: each shop at most its free
/// delivery slots, so that one shop's backlog never takes the places of another's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueLimits {
    /// A shop's free slots when `busy` does not name it (`webhooks.per_shop_concurrency`).
    pub per_shop: u32,
    /// Shops with deliveries in flight in this caller, and their free slots (0: none now).
    pub busy: Vec<(String, u32)>,
    /// Events this caller holds already (in flight, or an outcome not yet recorded): never
    /// handed out again to it, and not counted against their shop's slots. A store that
    /// claims excludes them by their claim anyway.
    pub holding: Vec<String>,
    /// In all, at most this many (oldest due first across shops).
    pub total: u32,
}

impl DueLimits {
    /// Every shop at most `per_shop`, at most `total` in all, nothing held.
    pub fn per_shop(per_shop: u32, total: u32) -> DueLimits {
        DueLimits {
            per_shop,
            total,
            ..DueLimits::default()
        }
    }

    /// The slots `due_events` may fill for `shop`.
    pub fn free(&self, shop: &str) -> u32 {
        self.busy
            .iter()
            .find(|(s, _)| s == shop)
            .map_or(self.per_shop, |(_, free)| *free)
    }
}

/// What [`Outbox::resend_event`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Resend {
    /// Back in the queue, due at the time asked, its schedule afresh.
    Resent(EventRecord),
    /// Still pending (waiting for its next attempt, or being delivered right now): left as
    /// it is, since a resend would start a second delivery beside the one under way.
    Pending(EventRecord),
    /// No such event.
    Unknown,
}

/// Which events `GET /admin/events` lists, newest first.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub status: Option<EventStatus>,
    pub merchant_id: Option<String>,
    pub limit: u32,
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Delivered { at: i64 },
    Retry { next_attempt_at: i64, error: String },
    Dead { error: String },
}

/// The outbox at a glance, for its gauges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    pub oldest_pending_created_at: Option<i64>,
    pub dead: u64,
}

/// Which record a reconciliation check is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckOf {
    Payment,
    Refund,
}

/// The claim on one reconciliation check that [`Schedule::claim_due_payments`] /
/// [`Schedule::claim_due_refunds`] handed out: its record, and a token drawn afresh for each
/// claim. Only the latest claim on a record writes its next check
/// ([`Schedule::schedule_claimed_check`]): a holder that stalled past its lease while another
/// instance claimed the check again writes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckClaim {
    pub of: CheckOf,
    /// The payment's or refund's id.
    pub id: String,
    token: String,
}

impl CheckClaim {
    fn new(of: CheckOf, id: String, token: String) -> CheckClaim {
        CheckClaim { of, id, token }
    }
}

/// A due check handed out with its claim.
#[derive(Clone, Debug, PartialEq)]
pub struct Due<T> {
    pub record: T,
    pub claim: CheckClaim,
}

/// A fresh claim token: 96 random bits in hex, so that no two claims — of any instance —
/// share one.
fn claim_token() -> Result<String, StoreError> {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| StoreError::Backend("no system randomness for a claim token".into()))?;
    Ok(crate::ids::hex(&b))
}

/// An open record's next check when a writer names none: an open payment (`pending`,
/// `unknown`) or refund (`pending`, `abnormal`) always has a next check, or nothing would
/// ever settle it, whatever the provider says later. The store enforces it on every
/// schedule write: `None` for an open record becomes this long from now — the default last
/// reconciliation tier's interval (the store does not know the configured tiers; the
/// reconciler itself never names none for an open record).
pub const OPEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// [`OPEN_RECHECK`] from now (unix ms), by this instance's clock.
fn open_recheck_at() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now + OPEN_RECHECK.as_millis() as i64
}

/// Payments and refunds whose checks never end while they are in these states, as SQL
/// (both engines): [`OPEN_RECHECK`].
const OPEN_PAYMENT: &str = "status IN ('pending', 'unknown')";
const OPEN_REFUND: &str = "status IN ('pending', 'abnormal')";

impl CheckOf {
    /// The table, its id column and its open states, as SQL.
    fn table(self) -> (&'static str, &'static str, &'static str) {
        match self {
            CheckOf::Payment => ("payments", "payment_id", OPEN_PAYMENT),
            CheckOf::Refund => ("refunds", "refund_id", OPEN_REFUND),
        }
    }
}

/// The outcome of [`Ledger::reserve_refund`].
#[derive(Debug)]
pub enum Reservation {
    /// Stored as pending; its amount now counts against the payment.
    Reserved,
    /// `(merchant_id, out_refund_no)` is taken: the earlier refund.
    Exists(Box<RefundRecord>),
    /// Refunded + in flight + this would exceed the paid amount.
    Exceeds { available: u64 },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (disk full, I/O error, unreachable): retryable, and the
    /// write it refused did not happen.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Backend(String),
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The store, not the request, is at fault: answer `503 store_unavailable`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Every concern of the store in one: what a caller that needs the whole store holds
/// (`Arc<dyn Store>`). Its methods are the concern traits' (a method call on `dyn Store`
/// reaches them without importing those traits); a part that needs one concern only may
/// take that trait instead (`Arc<dyn Store>` upcasts to `Arc<dyn Outbox>`).
pub trait Store: Ledger + Outbox + Schedule + Reports + Drains + Quotas {}

impl<T: Ledger + Outbox + Schedule + Reports + Drains + Quotas + ?Sized> Store for T {}

/// What a store counts: writes asked for and the commits (each one fsync) that made them
/// durable, so group commit shows in `/metrics`; and how long each write waited for its
/// commit, the store's share of a request's own time (`payroute_overhead_seconds`).
#[derive(Clone)]
pub struct StoreMetrics {
    pub writes: IntCounter,
    pub commits: IntCounter,
    pub write_seconds: Histogram,
}

/// `payroute_store_write_seconds` buckets: a commit is one fsync, from about 100 µs on a
/// fast disk to tens of ms on a slow or busy one.
const WRITE_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl StoreMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<StoreMetrics> {
        let writes = IntCounter::new(
            "payroute_store_writes_total",
            "Writes (each a state change with its event) the store was asked to make durable.",
        )?;
        let commits = IntCounter::new(
            "payroute_store_commits_total",
            "Transactions committed, each one fsync: with group commit, far fewer than writes.",
        )?;
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "payroute_store_write_seconds",
                "From a write being asked for to its commit being durable (waiting for the batch before it included).",
            )
            .buckets(WRITE_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(commits.clone()))?;
        registry.register(Box::new(write_seconds.clone()))?;
        Ok(StoreMetrics {
            writes,
            commits,
            write_seconds,
        })
    }
}

// Column encodings both stores share.

/// A stored `error_code` back to its failure.
fn failure(code: Option<String>) -> Result<Option<ChannelFailure>, StoreError> {
    code.map(|c| {
        ChannelFailure::parse(&c).ok_or_else(|| StoreError::Corrupt(format!("error_code {c}")))
    })
    .transpose()
}

/// The bound account as stored (JSON text).
fn account_json(a: &Option<Account>) -> Option<String> {
    a.as_ref().and_then(|a| serde_json::to_string(a).ok())
}

/// The candidates of [`Ledger::rebind_legacy_sellers`] (both engines): a merchant's ISV
/// accounts whose seller is not an Alipay user id, as text; [`rebound_seller`] decides.
const LEGACY_SELLER_FILTER: &str =
    r#"account LIKE '%"mode":"isv"%' AND account NOT LIKE '%"seller":"2088%'"#;

/// A bound account (JSON text) that names an Alipay ISV seller the old way, rebound to
/// `seller_id`; `None` for any other account, which stays as it is.
fn rebound_seller(text: &str, seller_id: &str) -> Result<Option<String>, StoreError> {
    let Some(mut account) = parse_account(Some(text.to_string()))? else {
        return Ok(None);
    };
    if !account.names_seller_by_token() {
        return Ok(None);
    }
    account.seller = Some(seller_id.to_string());
    Ok(account_json(&Some(account)))
}

fn parse_account(text: Option<String>) -> Result<Option<Account>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("account: {e}"))))
        .transpose()
}

/// Opens the configured store, counting into `metrics`.
pub async fn open(
    settings: &StoreSettings,
    metrics: StoreMetrics,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match settings {
        StoreSettings::Sqlite { path } => Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open_counted(path, metrics).await?,
        )),
        StoreSettings::Postgres {
            url,
            pool_size,
            schema,
            lease,
        } => Ok(std::sync::Arc::new(
            postgres::PostgresStore::open_counted(url, *pool_size, schema, metrics)
                .await?
                .with_lease(*lease),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A part handed one concern only: the whole store upcasts to it, and calls through it
    /// reach the same store.
    #[tokio::test]
    async fn the_store_upcasts_to_each_concern() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            sqlite::SqliteStore::open(&dir.path().join("u.db"))
                .await
                .unwrap(),
        );
        let outbox: Arc<dyn Outbox> = store.clone();
        let reports: Arc<dyn Reports> = store.clone();
        let schedule: Arc<dyn Schedule> = store.clone();
        let ledger: Arc<dyn Ledger> = store;
        assert_eq!(outbox.outbox_stats().await.unwrap(), OutboxStats::default());
        reports.ping().await.unwrap();
        assert!(schedule
            .due_payments(i64::MAX, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(ledger.get_payment("m", "none").await.unwrap().is_none());
    }
}
