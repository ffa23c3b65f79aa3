//! One behavioural suite, two stores: every test body here runs against SQLite (a temp file)
//! and against PostgreSQL (a fresh schema `payroute_test_<random>` in the database of
//! `PAYROUTE_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`, dropped after).
//!
//! PostgreSQL unreachable: with `PAYROUTE_REQUIRE_PG=1` (CI) the PostgreSQL tests fail;
//! otherwise they say loudly on stderr that they skipped, and pass.
//!
//! Tests of claims (two instances taking the same due work) run against PostgreSQL only:
//! SQLite serves one instance and hands due work to whoever asks.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use payroute::domain::{
    Account, ChannelFailure, EventStatus, EventType, Method, PaymentStatus, RefundStatus,
};
use payroute::secret::Secret;
use payroute::store::postgres::PostgresStore;
use payroute::store::sqlite::SqliteStore;
use payroute::store::{
    Delivery, Due, DueLimits, EventFilter, EventRecord, Ledger, PaymentFilter, PaymentRecord,
    RefundFilter, RefundRecord, Reports, Resend, Reservation, Store, StoreError, OPEN_RECHECK,
};

// ---------------------------------------------------------------------------------------
// The two stores.

/// One store under test, and a way to open another instance on the same data.
struct Ctx {
    store: Arc<dyn Store>,
    /// A second, independent instance on the same data (PostgreSQL: its own pool; SQLite:
    /// the same store, since one file has one writer).
    other: Arc<dyn Store>,
    kind: &'static str,
    /// Where the data lives, to open yet another instance on it.
    place: Place,
    _dir: Option<tempfile::TempDir>,
}

enum Place {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Place {
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Place::Sqlite(path) => Arc::new(SqliteStore::open(path).await.expect("reopen sqlite")),
            Place::Postgres(schema) => open_pg(schema).await,
        }
    }
}

async fn sqlite() -> Ctx {
    let dir = tempfile::tempdir().expect("tempdir");
    let place = Place::Sqlite(dir.path().join("suite.db"));
    let store = place.open().await;
    Ctx {
        other: store.clone(),
        store,
        kind: "sqlite",
        place,
        _dir: Some(dir),
    }
}

fn pg_url() -> String {
    std::env::var("PAYROUTE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A connection for the suite's own housekeeping (creating and dropping schemas); `None`
/// (after saying so) when PostgreSQL is not there and not required.
async fn admin_client() -> Option<tokio_postgres::Client> {
    let url = pg_url();
    let shown = shown(&url);
    let attempt = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio_postgres::connect(&url, tokio_postgres::NoTls),
    )
    .await;
    let error = match attempt {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Some(client);
        }
        Ok(Err(e)) => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
        Err(_) => "no answer within 5s".to_string(),
    };
    if std::env::var("PAYROUTE_REQUIRE_PG").as_deref() == Ok("1") {
        panic!("PostgreSQL not reachable at {shown} ({error}) and PAYROUTE_REQUIRE_PG=1");
    }
    // Written to the process's stderr itself: the test harness captures `eprintln!` of a
    // passing test, and this must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: PostgreSQL not reachable at {shown} ({error}); run with \
         PAYROUTE_REQUIRE_PG=1 (and PAYROUTE_TEST_PG_URL=postgres://…) against a PostgreSQL \
         server to run the PostgreSQL store tests ***\n"
    );
    None
}

/// The url as the skip message shows it: without a password.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The lease the suite's PostgreSQL stores claim with: not the default (120s), so the expiry
/// tests also show that `store.lease` is the one applied.
const LEASE: std::time::Duration = std::time::Duration::from_secs(7);
const LEASE_MS: i64 = LEASE.as_millis() as i64;

async fn open_pg(schema: &str) -> Arc<dyn Store> {
    open_pg_leased(schema, LEASE).await
}

async fn open_pg_leased(schema: &str, lease: std::time::Duration) -> Arc<dyn Store> {
    Arc::new(
        PostgresStore::open(&Secret::new(pg_url()), 8, schema)
            .await
            .expect("open postgres store")
            .with_lease(lease),
    )
}

/// A lease that runs out within a test: a claimer that stalled past it. Leases are timed by
/// the database's clock, so running one out takes real time.
const SHORT_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `sql` on the data behind the store directly, as an older payroute (or ops) would
/// have left it.
async fn raw_sql(place: &Place, sql: &str) {
    match place {
        Place::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(sql)
            .unwrap(),
        Place::Postgres(schema) => {
            let admin = admin_client().await.expect("postgres is there");
            admin
                .batch_execute(&format!("SET search_path TO \"{schema}\"; {sql}"))
                .await
                .unwrap();
        }
    }
}

/// What `claim` hands out at `now`, by `out_trade_no` (payments) or `out_refund_no`.
async fn due_payment_nos(store: &dyn Store, now: i64) -> Vec<String> {
    let mut nos: Vec<String> = store
        .claim_due_payments(now, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.record.out_trade_no)
        .collect();
    nos.sort();
    nos
}

async fn due_refund_nos(store: &dyn Store, now: i64) -> Vec<String> {
    let mut nos: Vec<String> = store
        .claim_due_refunds(now, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.record.out_refund_no)
        .collect();
    nos.sort();
    nos
}

/// Runs `body` against a fresh schema, then drops the schema (also when the body fails).
async fn with_pg<F, Fut>(body: F)
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(admin) = admin_client().await else {
        return;
    };
    let schema = unique("payroute_test_");
    let run = {
        let schema = schema.clone();
        tokio::spawn(async move {
            let store = open_pg(&schema).await;
            let other = open_pg(&schema).await;
            body(Ctx {
                store,
                other,
                kind: "postgres",
                place: Place::Postgres(schema),
                _dir: None,
            })
            .await
        })
    };
    let outcome = run.await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop the test schema");
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task: {e}");
    }
}

/// Generates `sqlite::name` and `postgres::name` for each body `name(Ctx)`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_pg(super::$name).await;
                }
            )*
        }
    };
}

/// Generates `postgres_only::name` for behaviours only a shared store has.
macro_rules! postgres_only {
    ($($name:ident),* $(,)?) => {
        mod on_postgres_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::with_pg(super::$name).await;
                }
            )*
        }
    };
}

both_stores!(
    binding_is_unique_and_round_trips,
    payments_by_trade_no_oldest_first,
    concurrent_creates_bind_once,
    stale_writer_is_fenced,
    finds_and_lists_payments,
    refund_guard_and_refunded_amount,
    concurrent_refunds_never_over_refund,
    concurrent_twins_of_one_refund_reserve_once,
    events_are_written_with_the_update_that_wins,
    events_go_out_in_order_per_payment,
    dead_and_resent_events,
    a_shops_backlog_never_takes_another_shops_places,
    reconciliation_schedule,
    an_open_record_always_keeps_a_next_check,
    a_stale_claim_writes_nothing,
    open_orders_by_account,
    reachable,
    reopening_keeps_everything,
    legacy_isv_sellers_are_rebound_to_the_merchants_user_id,
    a_stale_claim_holder_never_rebinds_the_order,
    a_live_claim_holder_merges_what_a_notification_wrote,
    late_payments_are_flagged_and_ended_ones_due,
);

postgres_only!(
    two_claimers_of_a_due_event_only_one_gets_it,
    claimed_events_are_given_back_or_expire,
    due_checks_are_claimed_once,
    instances_starting_together_migrate_once,
    tls_is_rustls_and_verified,
    connections_killed_by_the_server_are_replaced,
    a_row_lock_held_by_a_stalled_peer_is_waited_for_a_bounded_time,
    an_instance_waits_out_a_long_migration_of_another,
);

// ---------------------------------------------------------------------------------------
// Records.

fn payment(no: &str) -> PaymentRecord {
    PaymentRecord {
        payment_id: format!("pay_{no}"),
        merchant_id: "m_1".into(),
        shop_id: "s".into(),
        out_trade_no: no.into(),
        amount: 1_000,
        currency: "CNY".into(),
        method: Method::WechatNative,
        status: PaymentStatus::Pending,
        channel: "ch".into(),
        rule: "r".into(),
        action: Some(serde_json::json!({"type": "qr_code", "code_url": "weixin://x"})),
        provider_trade_no: None,
        refunded_amount: 0,
        request_hash: "h".into(),
        request: serde_json::json!({"amount": 1000, "description": "tea 茶"}),
        error_code: None,
        error_message: None,
        attempt_until: Some(5),
        created_at: 1_000,
        updated_at: 1_000,
        paid_at: None,
        expires_at: 9_000_000,
        version: 0,
        late: false,
        account: Some(Account {
            provider: "wechatpay_v3".into(),
            mode: "partner".into(),
            mchid: Some("1900000100".into()),
            sub_mchid: Some("1900000109".into()),
            app_id: Some("wx1".into()),
            seller: None,
        }),
    }
}

/// A payment stored as succeeded (paid), ready for refunds.
async fn paid(store: &dyn Store, no: &str) -> PaymentRecord {
    let p = payment(no);
    assert!(store.insert_payment(&p).await.unwrap().is_none());
    let mut p = store.get_payment("m_1", no).await.unwrap().unwrap();
    p.status = PaymentStatus::Succeeded;
    p.paid_at = Some(2_000);
    assert!(store.update_payment(&mut p).await.unwrap());
    p
}

fn refund(p: &PaymentRecord, no: &str, amount: u64) -> RefundRecord {
    RefundRecord {
        refund_id: format!("ref_{no}"),
        merchant_id: p.merchant_id.clone(),
        shop_id: p.shop_id.clone(),
        out_trade_no: p.out_trade_no.clone(),
        out_refund_no: no.into(),
        payment_id: p.payment_id.clone(),
        channel: p.channel.clone(),
        amount,
        reason: Some("broken cup".into()),
        status: RefundStatus::Pending,
        provider_refund_no: None,
        request_hash: format!("rh_{no}"),
        error_code: None,
        error_message: None,
        attempt_until: None,
        created_at: 3_000,
        updated_at: 3_000,
        succeeded_at: None,
        version: 0,
    }
}

fn event(payment_id: &str, id: &str, at: i64) -> EventRecord {
    EventRecord {
        event_id: id.into(),
        shop_id: "s".into(),
        merchant_id: "m_1".into(),
        payment_id: payment_id.into(),
        event_type: EventType::PaymentSucceeded,
        body: format!("{{\"id\":\"{id}\"}}"),
        status: EventStatus::Pending,
        attempts: 0,
        next_attempt_at: at,
        created_at: at,
        delivered_at: None,
        last_error: None,
        seq: 0,
        claim: None,
    }
}

/// Stores `ev` through a winning update of its payment (the only way events are written).
async fn emit(store: &dyn Store, merchant: &str, no: &str, ev: &EventRecord) {
    let mut p = store.get_payment(merchant, no).await.unwrap().unwrap();
    p.updated_at += 1;
    assert!(store
        .update_payment_emitting(&mut p, Some(ev))
        .await
        .unwrap());
}

/// Every shop up to `n` events, `n` in all.
fn every_shop(n: u32) -> DueLimits {
    DueLimits::per_shop(n, n)
}

fn ids(events: &[EventRecord]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Bodies, both stores.

async fn binding_is_unique_and_round_trips(ctx: Ctx) {
    let store = ctx.store;
    let rec = payment("o1");
    assert!(store.insert_payment(&rec).await.unwrap().is_none());
    let mut twin = payment("o1");
    twin.payment_id = "pay_other".into();
    twin.channel = "other".into();
    let existing = store.insert_payment(&twin).await.unwrap().unwrap();
    assert_eq!(existing, rec, "the first binding is returned whole");

    let mut got = store.get_payment("m_1", "o1").await.unwrap().unwrap();
    assert_eq!(got, rec, "{}: every field round-trips", ctx.kind);
    got.status = PaymentStatus::Succeeded;
    got.provider_trade_no = Some("4200000001".into());
    got.error_code = Some(ChannelFailure::Timeout);
    got.error_message = Some("slow".into());
    got.paid_at = Some(7);
    got.attempt_until = None;
    got.account = None;
    assert!(store.update_payment(&mut got).await.unwrap());
    assert_eq!(got.version, 1);
    assert_eq!(store.get_payment("m_1", "o1").await.unwrap().unwrap(), got);
    assert!(store.get_payment("m_1", "nope").await.unwrap().is_none());
    assert!(store.get_payment("m_2", "o1").await.unwrap().is_none());

    // Money is exact at the top of the range (minor units, never floats).
    let mut big = payment("o2");
    big.amount = 10_000_000_000;
    assert!(store.insert_payment(&big).await.unwrap().is_none());
    assert_eq!(
        store
            .get_payment("m_1", "o2")
            .await
            .unwrap()
            .unwrap()
            .amount,
        10_000_000_000
    );
    // A record the schema refuses fails alone.
    let mut bad = payment("o3");
    bad.amount = 0;
    assert!(store.insert_payment(&bad).await.is_err());
    assert!(store.get_payment("m_1", "o3").await.unwrap().is_none());
}

async fn concurrent_creates_bind_once(ctx: Ctx) {
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 {
                ctx.store.clone()
            } else {
                ctx.other.clone()
            };
            tokio::spawn(async move {
                let mut p = payment("same");
                p.payment_id = format!("pay_{i}");
                p.channel = format!("ch{i}");
                store.insert_payment(&p).await.unwrap()
            })
        })
        .collect();
    let mut won = 0;
    let mut channels = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            None => won += 1,
            Some(existing) => {
                channels.insert(existing.channel);
            }
        }
    }
    assert_eq!(won, 1, "exactly one create binds the order");
    let bound = ctx.store.get_payment("m_1", "same").await.unwrap().unwrap();
    assert_eq!(channels.len(), 1);
    assert!(
        channels.contains(&bound.channel),
        "every loser sees the winner"
    );
}

async fn stale_writer_is_fenced(ctx: Ctx) {
    let store = ctx.store.clone();
    store.insert_payment(&payment("f1")).await.unwrap();
    let read = store.get_payment("m_1", "f1").await.unwrap().unwrap();
    // Many writers holding the same version: one wins, every other is refused.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 {
                ctx.store.clone()
            } else {
                ctx.other.clone()
            };
            let mut p = read.clone();
            tokio::spawn(async move {
                p.error_message = Some(format!("writer {i}"));
                store.update_payment(&mut p).await.unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "compare-and-set lets one writer of a version win");
    // A claim holder that stalled past its lease comes back with its old version: refused,
    // and the newer holder's result stands.
    let mut newer = store.get_payment("m_1", "f1").await.unwrap().unwrap();
    let mut stalled = read.clone();
    newer.status = PaymentStatus::Succeeded;
    assert!(store.update_payment(&mut newer).await.unwrap());
    stalled.status = PaymentStatus::Failed;
    assert!(!ctx.other.update_payment(&mut stalled).await.unwrap());
    assert_eq!(
        stalled.version, read.version,
        "a lost race leaves the version"
    );
    let now = store.get_payment("m_1", "f1").await.unwrap().unwrap();
    assert_eq!(now.status, PaymentStatus::Succeeded);
    assert_eq!(now.version, read.version + 2);
}

/// One out_trade_no at three merchants, written out of order: always the same order back,
/// oldest first (then by payment id), whatever order the rows lie in.
async fn payments_by_trade_no_oldest_first(ctx: Ctx) {
    let store = ctx.store;
    for (merchant, id, created_at) in [
        ("m_3", "pay_3", 30),
        ("m_1", "pay_z", 20),
        ("m_2", "pay_b", 20),
    ] {
        let mut p = payment("same");
        p.merchant_id = merchant.into();
        p.payment_id = id.into();
        p.created_at = created_at;
        store.insert_payment(&p).await.unwrap();
    }
    let mut first = store.get_payment("m_3", "same").await.unwrap().unwrap();
    first.status = PaymentStatus::Succeeded;
    assert!(store.update_payment(&mut first).await.unwrap());
    for _ in 0..2 {
        let order: Vec<String> = store
            .payments_by_trade_no("same")
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.merchant_id)
            .collect();
        assert_eq!(order, ["m_2", "m_1", "m_3"]);
    }
}

async fn finds_and_lists_payments(ctx: Ctx) {
    let store = ctx.store;
    for (i, (merchant, no)) in [("m_1", "a"), ("m_2", "a"), ("m_1", "b"), ("m_1", "c")]
        .into_iter()
        .enumerate()
    {
        let mut p = payment(no);
        p.merchant_id = merchant.into();
        p.payment_id = format!("pay_{merchant}_{no}");
        p.created_at = 10 + i as i64;
        store.insert_payment(&p).await.unwrap();
    }
    let mut b = store.get_payment("m_1", "b").await.unwrap().unwrap();
    b.status = PaymentStatus::Succeeded;
    assert!(store.update_payment(&mut b).await.unwrap());

    let mut by_no: Vec<_> = store
        .payments_by_trade_no("a")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.merchant_id)
        .collect();
    by_no.sort();
    assert_eq!(by_no, ["m_1", "m_2"]);
    assert!(store.payments_by_trade_no("zz").await.unwrap().is_empty());

    let list = |filter: PaymentFilter| {
        let store = store.clone();
        async move {
            store
                .list_payments(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.payment_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(PaymentFilter {
            limit: 10,
            ..Default::default()
        })
        .await,
        ["pay_m_1_c", "pay_m_1_b", "pay_m_2_a", "pay_m_1_a"],
        "newest first"
    );
    assert_eq!(
        list(PaymentFilter {
            merchant_id: Some("m_1".into()),
            limit: 2,
            ..Default::default()
        })
        .await,
        ["pay_m_1_c", "pay_m_1_b"]
    );
    assert_eq!(
        list(PaymentFilter {
            status: Some(PaymentStatus::Succeeded),
            limit: 10,
            ..Default::default()
        })
        .await,
        ["pay_m_1_b"]
    );
    assert_eq!(
        list(PaymentFilter {
            since: Some(12),
            limit: 10,
            ..Default::default()
        })
        .await,
        ["pay_m_1_c", "pay_m_1_b"]
    );
    assert_eq!(
        list(PaymentFilter {
            until: Some(12),
            limit: 10,
            ..Default::default()
        })
        .await,
        ["pay_m_2_a", "pay_m_1_a"]
    );
    // Keyset paging (the ledger export): ties on created_at are ordered by payment_id, and
    // page after page reads every payment once.
    for i in 0..5 {
        let mut p = payment(&format!("t{i}"));
        p.payment_id = format!("pay_t{i}");
        p.created_at = 20;
        store.insert_payment(&p).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_payments(&PaymentFilter {
                after: after.clone(),
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.payment_id.clone()));
        seen.extend(page.into_iter().map(|p| p.payment_id));
    }
    assert_eq!(
        seen,
        [
            "pay_t4",
            "pay_t3",
            "pay_t2",
            "pay_t1",
            "pay_t0",
            "pay_m_1_c",
            "pay_m_1_b",
            "pay_m_2_a",
            "pay_m_1_a"
        ]
    );
}

async fn refund_guard_and_refunded_amount(ctx: Ctx) {
    let store = ctx.store;
    let p = paid(store.as_ref(), "r1").await;
    let r1 = refund(&p, "rf1", 600);
    assert!(matches!(
        store.reserve_refund(&r1, p.amount).await.unwrap(),
        Reservation::Reserved
    ));
    // The same out_refund_no again: the earlier refund, whatever this one asks.
    match store
        .reserve_refund(&refund(&p, "rf1", 1), p.amount)
        .await
        .unwrap()
    {
        Reservation::Exists(existing) => assert_eq!(*existing, r1),
        other => panic!("expected Exists, got {other:?}"),
    }
    // Pending refunds count against the payment.
    match store
        .reserve_refund(&refund(&p, "rf2", 500), p.amount)
        .await
        .unwrap()
    {
        Reservation::Exceeds { available } => assert_eq!(available, 400),
        other => panic!("expected Exceeds, got {other:?}"),
    }
    let r2 = refund(&p, "rf2", 400);
    assert!(matches!(
        store.reserve_refund(&r2, p.amount).await.unwrap(),
        Reservation::Reserved
    ));

    // r1 succeeds: refunded_amount follows in the same transaction; a stale update loses.
    let mut got = store.get_refund("m_1", "rf1").await.unwrap().unwrap();
    assert_eq!(got, r1);
    let stale = got.clone();
    got.status = RefundStatus::Succeeded;
    got.succeeded_at = Some(4_000);
    got.updated_at = 4_000;
    got.provider_refund_no = Some("50300001".into());
    assert!(store.update_refund(&mut got).await.unwrap());
    assert_eq!(got.version, 1);
    let mut stale = stale;
    stale.status = RefundStatus::Failed;
    assert!(!store.update_refund(&mut stale).await.unwrap());
    let now = store.get_payment("m_1", "r1").await.unwrap().unwrap();
    assert_eq!(now.refunded_amount, 600);
    assert_eq!(
        now.version,
        p.version + 1,
        "the payment's version moves too"
    );

    // r2 fails: its amount is free again.
    let mut r2 = store.get_refund("m_1", "rf2").await.unwrap().unwrap();
    r2.status = RefundStatus::Failed;
    r2.error_code = Some(ChannelFailure::Rejected);
    r2.error_message = Some("NOT_ENOUGH".into());
    assert!(store.update_refund(&mut r2).await.unwrap());
    assert_eq!(
        store.get_refund("m_1", "rf2").await.unwrap().unwrap(),
        r2,
        "every field round-trips"
    );
    assert!(matches!(
        store
            .reserve_refund(&refund(&p, "rf3", 400), p.amount)
            .await
            .unwrap(),
        Reservation::Reserved
    ));
    assert_eq!(
        store
            .get_payment("m_1", "r1")
            .await
            .unwrap()
            .unwrap()
            .refunded_amount,
        600
    );

    let all: Vec<_> = store
        .list_refunds(&RefundFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let failed = store
        .list_refunds(&RefundFilter {
            status: Some(RefundStatus::Failed),
            merchant_id: Some("m_1".into()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].out_refund_no, "rf2");
    assert!(store.get_refund("m_1", "nope").await.unwrap().is_none());
}

async fn concurrent_refunds_never_over_refund(ctx: Ctx) {
    let p = paid(ctx.store.as_ref(), "cr").await;
    // 50 refunds of 100 against 1000 paid, from two instances at once.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = if i % 2 == 0 {
                ctx.store.clone()
            } else {
                ctx.other.clone()
            };
            let r = refund(&p, &format!("c{i}"), 100);
            let paid = p.amount;
            tokio::spawn(async move { store.reserve_refund(&r, paid).await.unwrap() })
        })
        .collect();
    let (mut reserved, mut exceeded) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Reservation::Reserved => reserved += 1,
            Reservation::Exceeds { .. } => exceeded += 1,
            Reservation::Exists(_) => panic!("distinct refund numbers"),
        }
    }
    assert_eq!(
        reserved, 10,
        "{}: exactly the paid amount is reserved",
        ctx.kind
    );
    assert_eq!(exceeded, 40);
    let total: u64 = ctx
        .store
        .list_refunds(&RefundFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.amount)
        .sum();
    assert_eq!(total, p.amount);

    // Succeeding them concurrently keeps refunded_amount the exact sum.
    let open = ctx
        .store
        .list_refunds(&RefundFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let tasks: Vec<_> = open
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let store = if i % 2 == 0 {
                ctx.store.clone()
            } else {
                ctx.other.clone()
            };
            tokio::spawn(async move {
                r.status = RefundStatus::Succeeded;
                store.update_refund(&mut r).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(
        ctx.store
            .get_payment("m_1", "cr")
            .await
            .unwrap()
            .unwrap()
            .refunded_amount,
        p.amount
    );
}

async fn concurrent_twins_of_one_refund_reserve_once(ctx: Ctx) {
    let p = paid(ctx.store.as_ref(), "tw").await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 {
                ctx.store.clone()
            } else {
                ctx.other.clone()
            };
            let mut r = refund(&p, "twin", 300);
            r.refund_id = format!("ref_twin_{i}");
            let paid = p.amount;
            tokio::spawn(async move { store.reserve_refund(&r, paid).await.unwrap() })
        })
        .collect();
    let (mut reserved, mut exists) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Reservation::Reserved => reserved += 1,
            Reservation::Exists(_) => exists += 1,
            Reservation::Exceeds { .. } => panic!("300 of 1000 fits once"),
        }
    }
    assert_eq!((reserved, exists), (1, 19));
}

async fn events_are_written_with_the_update_that_wins(ctx: Ctx) {
    let store = ctx.store;
    store.insert_payment(&payment("e1")).await.unwrap();
    let read = store.get_payment("m_1", "e1").await.unwrap().unwrap();
    let (mut winner, mut loser) = (read.clone(), read.clone());
    winner.status = PaymentStatus::Succeeded;
    assert!(store
        .update_payment_emitting(&mut winner, Some(&event(&read.payment_id, "evt_win", 10)))
        .await
        .unwrap());
    loser.status = PaymentStatus::Closed;
    assert!(!store
        .update_payment_emitting(&mut loser, Some(&event(&read.payment_id, "evt_lose", 10)))
        .await
        .unwrap());
    let all = store
        .list_events(&EventFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&all),
        ["evt_win"],
        "only the winning update's event exists"
    );
    assert_eq!(all[0].body, "{\"id\":\"evt_win\"}");
    assert_eq!(all[0].status, EventStatus::Pending);

    // An update whose event cannot be stored (a duplicate id) is not stored either.
    let mut again = store.get_payment("m_1", "e1").await.unwrap().unwrap();
    let before = again.clone();
    again.status = PaymentStatus::Closed;
    assert!(store
        .update_payment_emitting(&mut again, Some(&event(&read.payment_id, "evt_win", 11)))
        .await
        .is_err());
    assert_eq!(
        store.get_payment("m_1", "e1").await.unwrap().unwrap(),
        before
    );

    // Refund updates carry their event the same way.
    let p = paid(store.as_ref(), "e2").await;
    store
        .reserve_refund(&refund(&p, "er", 100), p.amount)
        .await
        .unwrap();
    let mut r = store.get_refund("m_1", "er").await.unwrap().unwrap();
    r.status = RefundStatus::Succeeded;
    let mut ev = event(&p.payment_id, "evt_refund", 20);
    ev.event_type = EventType::RefundSucceeded;
    assert!(store
        .update_refund_emitting(&mut r, Some(&ev))
        .await
        .unwrap());
    let refunds = store
        .list_events(&EventFilter {
            merchant_id: Some("m_1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&refunds), ["evt_refund", "evt_win"], "newest first");
    assert_eq!(refunds[0].event_type, EventType::RefundSucceeded);
    assert!(refunds[0].seq > refunds[1].seq);
}

async fn events_go_out_in_order_per_payment(ctx: Ctx) {
    let store = ctx.store;
    for no in ["q1", "q2"] {
        store.insert_payment(&payment(no)).await.unwrap();
    }
    emit(store.as_ref(), "m_1", "q1", &event("pay_q1", "a1", 100)).await;
    emit(store.as_ref(), "m_1", "q1", &event("pay_q1", "a2", 100)).await;
    emit(store.as_ref(), "m_1", "q2", &event("pay_q2", "b1", 150)).await;
    emit(
        store.as_ref(),
        "m_1",
        "q2",
        &event("pay_q2", "later", 10_000),
    )
    .await;

    assert!(
        store
            .due_events(99, &every_shop(10))
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let due = store.due_events(200, &every_shop(10)).await.unwrap();
    assert_eq!(
        ids(&due),
        ["a1", "b1"],
        "only the head of each payment's queue"
    );
    let (a1, b1) = (due[0].clone(), due[1].clone());
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 4);
    assert_eq!(stats.oldest_pending_created_at, Some(100));
    assert_eq!(stats.dead, 0);

    // a1 fails: retried later, and a2 still waits behind it.
    store
        .record_delivery(
            &a1,
            Delivery::Retry {
                next_attempt_at: 500,
                error: "HTTP 500".into(),
            },
        )
        .await
        .unwrap();
    assert!(store
        .record_delivery(&b1, Delivery::Delivered { at: 201 })
        .await
        .unwrap());
    assert!(
        store
            .due_events(300, &every_shop(10))
            .await
            .unwrap()
            .is_empty(),
        "a1 waits for its retry, a2 waits for a1, `later` is not due"
    );
    let due = store.due_events(600, &every_shop(10)).await.unwrap();
    assert_eq!(ids(&due), ["a1"]);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].last_error.as_deref(), Some("HTTP 500"));
    let a1 = due[0].clone();
    assert!(store
        .record_delivery(&a1, Delivery::Delivered { at: 601 })
        .await
        .unwrap());
    let due = store.due_events(700, &every_shop(10)).await.unwrap();
    assert_eq!(
        ids(&due),
        ["a2"],
        "the next in line once the head is delivered"
    );

    let delivered = store
        .list_events(&EventFilter {
            status: Some(EventStatus::Delivered),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&delivered), ["b1", "a1"]);
    assert_eq!(delivered[1].delivered_at, Some(601));
    assert_eq!(delivered[1].attempts, 2);
    assert_eq!(delivered[1].last_error, None);
    // A delivery recorded twice (a late answer) changes nothing.
    assert!(!store
        .record_delivery(&a1, Delivery::Dead { error: "x".into() })
        .await
        .unwrap());
    assert_eq!(
        store
            .list_events(&EventFilter {
                status: Some(EventStatus::Dead),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .len(),
        0
    );
}

async fn dead_and_resent_events(ctx: Ctx) {
    let store = ctx.store;
    store.insert_payment(&payment("d1")).await.unwrap();
    emit(store.as_ref(), "m_1", "d1", &event("pay_d1", "d_a", 100)).await;
    emit(store.as_ref(), "m_1", "d1", &event("pay_d1", "d_b", 100)).await;
    let due = store.due_events(100, &every_shop(10)).await.unwrap();
    assert_eq!(ids(&due), ["d_a"]);
    store
        .record_delivery(
            &due[0],
            Delivery::Dead {
                error: "gave up".into(),
            },
        )
        .await
        .unwrap();
    // A dead event no longer holds back its payment's later events.
    let due = store.due_events(100, &every_shop(10)).await.unwrap();
    assert_eq!(ids(&due), ["d_b"]);
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (1, 1));
    // Pending (and handed out: maybe being delivered right now), it is not resent.
    match store.resend_event("d_b", 5_000).await.unwrap() {
        Resend::Pending(e) => {
            assert_eq!((e.status, e.next_attempt_at), (EventStatus::Pending, 100))
        }
        other => panic!("a pending event was resent: {other:?}"),
    }
    assert!(
        store
            .record_delivery(&due[0], Delivery::Delivered { at: 150 })
            .await
            .unwrap(),
        "the refused resend left the holder's claim alone"
    );

    let Resend::Resent(resent) = store.resend_event("d_a", 5_000).await.unwrap() else {
        panic!("a dead event is resent");
    };
    assert_eq!(resent.status, EventStatus::Pending);
    assert_eq!((resent.attempts, resent.next_attempt_at), (0, 5_000));
    assert_eq!(resent.last_error.as_deref(), Some("gave up"));
    assert!(store
        .due_events(4_999, &every_shop(10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&store.due_events(5_000, &every_shop(10)).await.unwrap()),
        ["d_a"]
    );
    // A delivered event can be sent again too; an unknown one is Unknown.
    let Resend::Resent(again) = store.resend_event("d_b", 6_000).await.unwrap() else {
        panic!("a delivered event is resent");
    };
    assert_eq!(again.delivered_at, None);
    assert_eq!(
        store.resend_event("nope", 1).await.unwrap(),
        Resend::Unknown
    );
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 0));
}

/// Issue 16: a shop with a backlog far larger than one round's batch, and no free slot,
/// never takes another shop's places: each shop is handed at most its free slots.
async fn a_shops_backlog_never_takes_another_shops_places(ctx: Ctx) {
    let store = ctx.store;
    let at_shop = |shop: &str, i: usize, at: i64| EventRecord {
        shop_id: shop.into(),
        ..event(&format!("pay_{shop}_{i}"), &format!("{shop}_{i}"), at)
    };
    // 300 due events at the slow shop (each heading its own payment's queue), older than the
    // one event of the other shop.
    for i in 0..300 {
        assert!(store
            .import_event(&at_shop("slow", i, 100 + i as i64))
            .await
            .unwrap());
    }
    assert!(store
        .import_event(&at_shop("fast", 0, 1_000))
        .await
        .unwrap());
    let now = 2_000;
    // The slow shop's every slot is taken: only the other shop's event is handed out.
    let busy = DueLimits {
        per_shop: 2,
        busy: vec![("slow".into(), 0)],
        holding: Vec::new(),
        total: 256,
    };
    let only_fast = store.due_events(now, &busy).await.unwrap();
    assert_eq!(ids(&only_fast), ["fast_0"]);
    // Given back (a store that claims handed it out) for what follows.
    store.release_events(&only_fast).await.unwrap();
    // Every shop up to its slots, oldest first across shops; what the caller holds already
    // (in flight) is neither handed out again nor counted against its shop's slots.
    let limits = DueLimits {
        per_shop: 2,
        busy: Vec::new(),
        holding: Vec::new(),
        total: 256,
    };
    let first = store.due_events(now + 1, &limits).await.unwrap();
    assert!(
        ids(&first).contains(&"fast_0"),
        "the other shop's event goes out beside the backlog: {:?}",
        ids(&first)
    );
    let slow: Vec<&str> = ids(&first).into_iter().filter(|i| *i != "fast_0").collect();
    assert!(
        slow.len() <= 2,
        "the slow shop got at most its 2 slots: {slow:?}"
    );
    let holding = DueLimits {
        holding: first.iter().map(|e| e.event_id.clone()).collect(),
        ..limits.clone()
    };
    let next = store.due_events(now + 1, &holding).await.unwrap();
    assert_eq!(next.len(), 2, "two more of the slow shop: {:?}", ids(&next));
    assert!(next
        .iter()
        .all(|e| e.shop_id == "slow" && !slow.contains(&e.event_id.as_str())));
    // At most `total` in all.
    let capped = DueLimits {
        per_shop: 100,
        total: 5,
        holding: first
            .iter()
            .chain(&next)
            .map(|e| e.event_id.clone())
            .collect(),
        busy: Vec::new(),
    };
    assert_eq!(store.due_events(now + 1, &capped).await.unwrap().len(), 5);
}

async fn reconciliation_schedule(ctx: Ctx) {
    let store = ctx.store;
    let mut p1 = payment("s1");
    p1.created_at = 100;
    let mut p2 = payment("s2");
    p2.created_at = 200;
    store.insert_payment(&p1).await.unwrap();
    store.insert_payment(&p2).await.unwrap();
    // New payments are due at once (at their creation), oldest first.
    assert!(store.due_payments(99, 10).await.unwrap().is_empty());
    let due: Vec<_> = store
        .due_payments(300, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.out_trade_no)
        .collect();
    assert_eq!(due, ["s1", "s2"]);
    store
        .schedule_payment_check("pay_s1", Some(1_000))
        .await
        .unwrap();
    store.schedule_payment_check("pay_s2", None).await.unwrap();
    assert!(store.due_payments(999, 10).await.unwrap().is_empty());
    assert_eq!(store.due_payments(1_000, 10).await.unwrap().len(), 1);
    // A final payment is never due.
    let mut s1 = store.get_payment("m_1", "s1").await.unwrap().unwrap();
    s1.status = PaymentStatus::Succeeded;
    assert!(store.update_payment(&mut s1).await.unwrap());
    store
        .schedule_payment_check("pay_s1", Some(1_000))
        .await
        .unwrap();
    assert!(store.due_payments(5_000, 10).await.unwrap().is_empty());
    // `unknown` is open, like pending.
    let mut s2 = store.get_payment("m_1", "s2").await.unwrap().unwrap();
    s2.status = PaymentStatus::Unknown;
    assert!(store.update_payment(&mut s2).await.unwrap());
    store
        .schedule_payment_check("pay_s2", Some(2_000))
        .await
        .unwrap();
    assert_eq!(store.due_payments(2_000, 10).await.unwrap()[0], s2);

    // Refunds: due at creation while pending or abnormal.
    let p = paid(store.as_ref(), "s3").await;
    store
        .reserve_refund(&refund(&p, "sr", 100), p.amount)
        .await
        .unwrap();
    assert!(store.due_refunds(2_999, 10).await.unwrap().is_empty());
    let due = store.due_refunds(3_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    store
        .schedule_refund_check("ref_sr", Some(8_000))
        .await
        .unwrap();
    assert!(store.due_refunds(7_999, 10).await.unwrap().is_empty());
    let mut r = store.get_refund("m_1", "sr").await.unwrap().unwrap();
    r.status = RefundStatus::Abnormal;
    assert!(store.update_refund(&mut r).await.unwrap());
    assert_eq!(store.due_refunds(8_000, 10).await.unwrap()[0], r);
    store
        .schedule_refund_check("ref_sr", Some(9_000))
        .await
        .unwrap();
    r.status = RefundStatus::Succeeded;
    assert!(store.update_refund(&mut r).await.unwrap());
    assert!(store.due_refunds(10_000, 10).await.unwrap().is_empty());
    // The limit is honoured.
    for i in 0..5 {
        store
            .insert_payment(&payment(&format!("lim{i}")))
            .await
            .unwrap();
    }
    assert_eq!(store.due_payments(50_000, 3).await.unwrap().len(), 3);
}

/// Issue 16 item 1: the store never leaves an open record — a payment `pending` / `unknown`,
/// a refund `pending` / `abnormal` — with no next check. A write of none for one (claimed or
/// not) keeps it scheduled, [`OPEN_RECHECK`] from now; an ended record's none ends its
/// checks. Records an older payroute left open with none are due again once the store is
/// opened (SQLite) or migrated (PostgreSQL, migration 4). Before: `next_check_at` NULL, the
/// record never handed out again, whatever the provider said later.
async fn an_open_record_always_keeps_a_next_check(ctx: Ctx) {
    let store = ctx.store.clone();
    let recheck = OPEN_RECHECK.as_millis() as i64;
    let mut unknown = payment("o_unknown");
    unknown.status = PaymentStatus::Unknown;
    let mut closed = payment("o_closed");
    closed.status = PaymentStatus::Closed;
    for p in [payment("o_pending"), unknown, closed] {
        assert!(store.insert_payment(&p).await.unwrap().is_none());
    }
    let p = paid(store.as_ref(), "o_paid").await;
    for no in ["o_r_pending", "o_r_abnormal", "o_r_done"] {
        store
            .reserve_refund(&refund(&p, no, 10), p.amount)
            .await
            .unwrap();
    }
    for (no, status) in [
        ("o_r_abnormal", RefundStatus::Abnormal),
        ("o_r_done", RefundStatus::Succeeded),
    ] {
        let mut r = store.get_refund("m_1", no).await.unwrap().unwrap();
        r.status = status;
        assert!(store.update_refund(&mut r).await.unwrap());
    }
    let before = now_ms();
    // A payment flow's none, and a claim holder's none.
    store
        .schedule_payment_check("pay_o_pending", None)
        .await
        .unwrap();
    store
        .schedule_refund_check("ref_o_r_pending", None)
        .await
        .unwrap();
    for d in store.claim_due_payments(1_000, 10).await.unwrap() {
        assert!(store.schedule_claimed_check(&d.claim, None).await.unwrap());
    }
    for d in store.claim_due_refunds(3_000, 10).await.unwrap() {
        assert!(store.schedule_claimed_check(&d.claim, None).await.unwrap());
    }
    let after = now_ms();
    assert!(due_payment_nos(store.as_ref(), before + recheck - 1_000)
        .await
        .is_empty());
    assert!(due_refund_nos(store.as_ref(), before + recheck - 1_000)
        .await
        .is_empty());
    // Each claim of these ends with a write, so the next one can take them again.
    let open_payments = ["o_pending", "o_unknown"];
    let open_refunds = ["o_r_abnormal", "o_r_pending"];
    let claimed = store.claim_due_payments(after + recheck, 10).await.unwrap();
    let mut nos: Vec<_> = claimed
        .iter()
        .map(|d| d.record.out_trade_no.as_str())
        .collect();
    nos.sort();
    assert_eq!(
        nos, open_payments,
        "the open payments keep a check, the closed one none"
    );
    let claimed_refunds = store.claim_due_refunds(after + recheck, 10).await.unwrap();
    let mut nos: Vec<_> = claimed_refunds
        .iter()
        .map(|d| d.record.out_refund_no.as_str())
        .collect();
    nos.sort();
    assert_eq!(
        nos, open_refunds,
        "the open refunds keep a check, the succeeded one none"
    );
    for d in &claimed {
        store
            .schedule_claimed_check(&d.claim, Some(5_000))
            .await
            .unwrap();
    }
    for d in &claimed_refunds {
        store
            .schedule_claimed_check(&d.claim, Some(5_000))
            .await
            .unwrap();
    }

    // Left open with none by a payroute before issue 16.
    let stranded = "UPDATE payments SET next_check_at = NULL;
                    UPDATE refunds SET next_check_at = NULL;";
    let Ctx {
        store: s,
        other,
        place,
        _dir,
        ..
    } = ctx;
    drop((s, other, store));
    match &place {
        Place::Sqlite(_) => raw_sql(&place, stranded).await,
        // A schema as migration 2 left it.
        Place::Postgres(_) => {
            raw_sql(
                &place,
                &format!(
                    "{stranded}
                     ALTER TABLE payments DROP COLUMN check_claim;
                     ALTER TABLE refunds DROP COLUMN check_claim;
                     DELETE FROM schema_migrations WHERE version = 4;"
                ),
            )
            .await
        }
    }
    let again = place.open().await;
    assert_eq!(
        due_payment_nos(again.as_ref(), now_ms()).await,
        open_payments
    );
    assert_eq!(due_refund_nos(again.as_ref(), now_ms()).await, open_refunds);
}

/// Issue 16 item 6: a check's next time is written only under the check's latest claim. A
/// holder that stalled past its lease while another instance claimed the check again
/// writes nothing (the new holder's schedule stands, and so does its lease); a payment
/// flow's write, which holds no claim, ends any claim. SQLite serves one instance and has
/// no lease: a second claim is simply the latest. Before: any write went through, so a
/// stale holder overwrote the new holder's schedule and ended its lease.
async fn a_stale_claim_writes_nothing(ctx: Ctx) {
    let (stale, fresh) = match &ctx.place {
        Place::Postgres(schema) => (open_pg_leased(schema, SHORT_LEASE).await, ctx.other.clone()),
        Place::Sqlite(_) => (ctx.store.clone(), ctx.other.clone()),
    };
    assert!(stale
        .insert_payment(&payment("fence"))
        .await
        .unwrap()
        .is_none());
    let p = paid(stale.as_ref(), "fence_paid").await;
    stale
        .reserve_refund(&refund(&p, "fence_r", 10), p.amount)
        .await
        .unwrap();
    let now = 10_000;
    let old = stale.claim_due_payments(now, 10).await.unwrap();
    let old_refund = stale.claim_due_refunds(now, 10).await.unwrap();
    assert_eq!((old.len(), old_refund.len()), (1, 1));
    // Taken over once the stalled holder's lease ran out (by the database's clock).
    let (new, new_refund) = support::within("the stale lease to run out", async {
        let (mut p, mut r) = (Vec::new(), Vec::new());
        while p.is_empty() || r.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            p.extend(fresh.claim_due_payments(now, 10).await.unwrap());
            r.extend(fresh.claim_due_refunds(now, 10).await.unwrap());
        }
        (p, r)
    })
    .await;
    assert!(
        !stale
            .schedule_claimed_check(&old[0].claim, Some(111))
            .await
            .unwrap(),
        "a stale claim writes nothing"
    );
    assert!(!stale
        .schedule_claimed_check(&old_refund[0].claim, Some(111))
        .await
        .unwrap());
    if ctx.kind == "postgres" {
        assert!(
            due_payment_nos(stale.as_ref(), now).await.is_empty(),
            "the new holder's lease stands"
        );
    }
    assert!(fresh
        .schedule_claimed_check(&new[0].claim, Some(222))
        .await
        .unwrap());
    assert!(fresh
        .schedule_claimed_check(&new_refund[0].claim, Some(222))
        .await
        .unwrap());
    // Late again, the stale write still changes nothing: due at 222, not at 111.
    assert!(!stale
        .schedule_claimed_check(&old[0].claim, Some(111))
        .await
        .unwrap());
    assert!(due_payment_nos(fresh.as_ref(), 221).await.is_empty());
    assert!(due_refund_nos(fresh.as_ref(), 221).await.is_empty());
    let held: Vec<Due<PaymentRecord>> = fresh.claim_due_payments(222, 10).await.unwrap();
    let held_refund = fresh.claim_due_refunds(222, 10).await.unwrap();
    assert_eq!((held.len(), held_refund.len()), (1, 1));
    // A payment flow schedules the check meanwhile (a late payment's refund, say): the
    // holder's write then changes nothing.
    stale
        .schedule_payment_check("pay_fence", Some(333))
        .await
        .unwrap();
    stale
        .schedule_refund_check("ref_fence_r", Some(333))
        .await
        .unwrap();
    assert!(!fresh
        .schedule_claimed_check(&held[0].claim, Some(444))
        .await
        .unwrap());
    assert!(!fresh
        .schedule_claimed_check(&held_refund[0].claim, Some(444))
        .await
        .unwrap());
    assert!(due_payment_nos(fresh.as_ref(), 332).await.is_empty());
    assert_eq!(due_payment_nos(fresh.as_ref(), 333).await, ["fence"]);
    assert_eq!(due_refund_nos(fresh.as_ref(), 333).await, ["fence_r"]);
}

async fn open_orders_by_account(ctx: Ctx) {
    let store = ctx.store;
    store.insert_payment(&payment("o1")).await.unwrap();
    let mut other = payment("o2");
    other.channel = "ch2".into();
    other.account = None;
    store.insert_payment(&other).await.unwrap();
    let p = paid(store.as_ref(), "o3").await;
    store
        .reserve_refund(&refund(&p, "or", 10), p.amount)
        .await
        .unwrap();
    let mut closed = payment("o4");
    closed.status = PaymentStatus::Closed;
    store.insert_payment(&closed).await.unwrap();

    let mut open = store.open_by_account().await.unwrap();
    open.sort_by(|a, b| a.channel.cmp(&b.channel));
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].channel, "ch");
    assert_eq!(open[0].account, payment("x").account);
    assert_eq!((open[0].payments, open[0].refunds), (1, 1));
    assert_eq!(open[1].channel, "ch2");
    assert_eq!(open[1].account, None);
    assert_eq!((open[1].payments, open[1].refunds), (1, 0));
}

/// Orders bound to an ISV seller by token fingerprint (before sellers were stored) are rebound
/// to the merchant's Alipay user id — only that merchant's, only ISV ones, once.
async fn legacy_isv_sellers_are_rebound_to_the_merchants_user_id(ctx: Ctx) {
    let store = ctx.store;
    let alipay = |mode: &str, seller: Option<&str>| Account {
        provider: "alipay".into(),
        mode: mode.into(),
        mchid: None,
        sub_mchid: None,
        app_id: Some("2021000000000001".into()),
        seller: seller.map(str::to_string),
    };
    let with = |no: &str, merchant: &str, account: Account| {
        let mut p = payment(no);
        p.merchant_id = merchant.into();
        p.account = Some(account);
        p
    };
    let legacy = with("l1", "m_1", alipay("isv", Some("8a25c0ffee123456")));
    let current = with("l2", "m_1", alipay("isv", Some("2088000000007007")));
    let direct = with("l3", "m_1", alipay("direct", None));
    let wechat = payment("l4");
    let others = with("l5", "m_2", alipay("isv", Some("8a25c0ffee123456")));
    for p in [&legacy, &current, &direct, &wechat, &others] {
        assert!(store.insert_payment(p).await.unwrap().is_none());
    }

    let seller = "2088000000001001";
    assert_eq!(store.rebind_legacy_sellers("m_1", seller).await.unwrap(), 1);
    let got = store.get_payment("m_1", "l1").await.unwrap().unwrap();
    assert_eq!(
        got.account,
        Some(alipay("isv", Some(seller))),
        "{}",
        ctx.kind
    );
    assert_eq!(
        got.version,
        legacy.version + 1,
        "a rebinding is a write like any other"
    );
    // A seller that already is a user id is an account of its own: never rewritten.
    for (merchant, no, before) in [
        ("m_1", "l2", &current),
        ("m_1", "l3", &direct),
        ("m_1", "l4", &wechat),
        ("m_2", "l5", &others),
    ] {
        let got = store.get_payment(merchant, no).await.unwrap().unwrap();
        assert_eq!(&got, before, "{no} on {}", ctx.kind);
    }
    assert_eq!(store.rebind_legacy_sellers("m_1", seller).await.unwrap(), 0);
    // Rebound rows group with new ones of the same account (the stranded-orders view).
    store
        .insert_payment(&with("l6", "m_1", alipay("isv", Some(seller))))
        .await
        .unwrap();
    let open = store.open_by_account().await.unwrap();
    let at_seller = open
        .iter()
        .filter(|o| o.account == Some(alipay("isv", Some(seller))))
        .collect::<Vec<_>>();
    assert_eq!(at_seller.len(), 1, "{open:?}");
    assert_eq!(at_seller[0].payments, 2);
}

async fn reachable(ctx: Ctx) {
    ctx.store.ping().await.unwrap();
    ctx.other.ping().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Bodies, PostgreSQL only: several instances on one database.

async fn two_claimers_of_a_due_event_only_one_gets_it(ctx: Ctx) {
    let store = ctx.store.clone();
    for i in 0..30 {
        let no = format!("cl{i}");
        store.insert_payment(&payment(&no)).await.unwrap();
        emit(
            store.as_ref(),
            "m_1",
            &no,
            &event(&format!("pay_{no}"), &format!("ev{i}"), 100),
        )
        .await;
    }
    // Two instances ask at the same moment, over and over: each event goes to one of them.
    let claim = |s: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                got.extend(
                    s.due_events(1_000, &every_shop(4))
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|e| e.event_id),
                );
            }
            got
        })
    };
    let (a, b) = (claim(ctx.store.clone()), claim(ctx.other.clone()));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut all: Vec<_> = a.iter().chain(b.iter()).cloned().collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(
        n,
        all.len(),
        "an event was handed to two claimers: {a:?} / {b:?}"
    );
    assert_eq!(n, 30, "every due event was handed out once");
    assert!(ctx
        .other
        .due_events(1_000, &every_shop(100))
        .await
        .unwrap()
        .is_empty());
}

/// Another instance on `ctx`'s PostgreSQL schema whose claims hold for [`SHORT_LEASE`].
async fn short_lease_instance(ctx: &Ctx) -> Arc<dyn Store> {
    let Place::Postgres(schema) = &ctx.place else {
        panic!("claims are a shared store's");
    };
    Arc::new(
        PostgresStore::open(&Secret::new(pg_url()), 4, schema)
            .await
            .expect("open postgres store")
            .with_lease(SHORT_LEASE),
    )
}

async fn claimed_events_are_given_back_or_expire(ctx: Ctx) {
    let (a, b) = (
        short_lease_instance(&ctx).await,
        short_lease_instance(&ctx).await,
    );
    a.insert_payment(&payment("lz")).await.unwrap();
    emit(a.as_ref(), "m_1", "lz", &event("pay_lz", "l1", 100)).await;
    emit(a.as_ref(), "m_1", "lz", &event("pay_lz", "l2", 100)).await;
    let now = 1_000;
    let held_by_a = a.due_events(now, &every_shop(10)).await.unwrap();
    assert_eq!(ids(&held_by_a), ["l1"]);
    assert!(held_by_a[0].claim.is_some(), "a claim carries its token");
    // Claimed by A: B gets nothing of that payment, not even the next event.
    assert!(b.due_events(now, &every_shop(10)).await.unwrap().is_empty());
    // A gives it back (it skipped it): B takes it at once, under a new token.
    a.release_events(&held_by_a).await.unwrap();
    let held_by_b = b.due_events(now, &every_shop(10)).await.unwrap();
    let taken = tokio::time::Instant::now();
    assert_eq!(ids(&held_by_b), ["l1"]);
    assert_ne!(held_by_b[0].claim, held_by_a[0].claim);
    // B's lease runs on the database's clock: a caller whose own clock is far ahead does not
    // see it run out.
    assert!(
        a.due_events(now + 100 * LEASE_MS, &every_shop(10))
            .await
            .unwrap()
            .is_empty(),
        "a live lease was taken over by a caller whose clock runs ahead"
    );
    // B stalls holding it: once its lease runs out, A takes it over.
    let retaken = support::within("B's lease runs out", async {
        loop {
            let got = a.due_events(now, &every_shop(10)).await.unwrap();
            if !got.is_empty() {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        taken.elapsed() >= SHORT_LEASE - std::time::Duration::from_millis(100),
        "taken over after {:?}, before the lease of {SHORT_LEASE:?} ran out",
        taken.elapsed()
    );
    assert_eq!(ids(&retaken), ["l1"]);
    // B wakes up: whatever it writes under its stale claim changes nothing — neither a retry
    // (which would clear A's lease while A sends) nor an outcome, nor a release.
    assert!(!b
        .record_delivery(
            &held_by_b[0],
            Delivery::Retry {
                next_attempt_at: now,
                error: "HTTP 503".into(),
            },
        )
        .await
        .unwrap());
    assert!(!b
        .record_delivery(&held_by_b[0], Delivery::Delivered { at: now })
        .await
        .unwrap());
    b.release_events(&held_by_b).await.unwrap();
    assert!(
        b.due_events(now, &every_shop(10)).await.unwrap().is_empty(),
        "A's claim stands after B's stale writes"
    );
    let pending = a
        .list_events(&EventFilter {
            status: Some(EventStatus::Pending),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        2,
        "l1 is still pending: B's outcome was not written"
    );
    assert!(pending.iter().all(|e| e.attempts == 0));
    // A records a retry: the claim ends with it, and the event is due at its new time.
    let later = now + 10;
    assert!(a
        .record_delivery(
            &retaken[0],
            Delivery::Retry {
                next_attempt_at: later,
                error: "HTTP 503".into(),
            },
        )
        .await
        .unwrap());
    let due = b.due_events(later, &every_shop(10)).await.unwrap();
    assert_eq!(ids(&due), ["l1"]);
    assert!(b
        .record_delivery(&due[0], Delivery::Delivered { at: later })
        .await
        .unwrap());
    assert_eq!(
        ids(&a.due_events(later, &every_shop(10)).await.unwrap()),
        ["l2"]
    );
}

async fn due_checks_are_claimed_once(ctx: Ctx) {
    let (a, b) = (ctx.store.clone(), ctx.other.clone());
    for i in 0..20 {
        a.insert_payment(&payment(&format!("dc{i}"))).await.unwrap();
    }
    let p = paid(a.as_ref(), "dcr").await;
    a.reserve_refund(&refund(&p, "dcr1", 10), p.amount)
        .await
        .unwrap();
    let now = 10_000;
    let (x, y) = tokio::join!(a.due_payments(now, 15), b.due_payments(now, 15));
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<_> = x
        .iter()
        .chain(y.iter())
        .map(|p| p.payment_id.clone())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        x.len() + y.len(),
        "a payment checked twice at once"
    );
    assert_eq!(all.len(), 20);
    assert!(a.due_payments(now, 100).await.unwrap().is_empty());
    // Scheduling the next check ends the claim.
    a.schedule_payment_check("pay_dc0", Some(now))
        .await
        .unwrap();
    assert_eq!(b.due_payments(now, 100).await.unwrap().len(), 1);
    // Leases are timed by the database's clock: a caller whose own clock runs ahead (by far
    // more than the lease) takes no live claim over. Before: the caller's `now` ended them.
    assert_eq!(
        b.due_payments(now + 1_000 * LEASE_MS, 100)
            .await
            .unwrap()
            .len(),
        0,
        "live claims taken over by a caller whose clock runs ahead"
    );
    // An instance that died holding claims loses them once its lease runs out by that clock.
    let Place::Postgres(schema) = &ctx.place else {
        unreachable!("postgres only")
    };
    let short = open_pg_leased(schema, SHORT_LEASE).await;
    for i in 0..3 {
        short
            .insert_payment(&payment(&format!("dcs{i}")))
            .await
            .unwrap();
    }
    assert_eq!(short.due_payments(now, 100).await.unwrap().len(), 3);
    assert!(b.due_payments(now, 100).await.unwrap().is_empty());
    support::wait_until("the dead instance's short lease to run out", || async {
        b.due_payments(now, 100).await.unwrap().len() == 3
    })
    .await;
    // Refunds alike.
    assert_eq!(a.due_refunds(now, 10).await.unwrap().len(), 1);
    assert!(b.due_refunds(now, 10).await.unwrap().is_empty());
    b.schedule_refund_check("ref_dcr1", Some(now))
        .await
        .unwrap();
    assert_eq!(b.due_refunds(now, 10).await.unwrap().len(), 1);
}

async fn instances_starting_together_migrate_once(ctx: Ctx) {
    drop(ctx);
    let Some(admin) = admin_client().await else {
        return;
    };
    let schema = unique("payroute_test_mig_");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let schema = schema.clone();
            tokio::spawn(async move {
                PostgresStore::open(&Secret::new(pg_url()), 2, &schema)
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut results = Vec::new();
    for o in opens {
        results.push(o.await.unwrap());
    }
    // One instance alone migrates a reference schema: the four together must leave the same.
    let reference = unique("payroute_test_mig_ref_");
    let alone = PostgresStore::open(&Secret::new(pg_url()), 2, &reference)
        .await
        .map(|_| ());
    let versions = admin
        .query(
            &format!(
                "SELECT version, applied_at FROM \"{schema}\".schema_migrations ORDER BY version"
            ),
            &[],
        )
        .await;
    let columns = |schema: String| {
        let admin = &admin;
        async move {
            admin
                .query(
                    "SELECT table_name::text, column_name::text, data_type::text, \
                            COALESCE(column_default, '') FROM information_schema.columns \
                     WHERE table_schema = $1 ORDER BY 1, 2",
                    &[&schema],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            let c: (String, String, String, String) =
                                (r.get(0), r.get(1), r.get(2), r.get(3));
                            c
                        })
                        .collect::<Vec<_>>()
                })
        }
    };
    let (together, single) = (
        columns(schema.clone()).await,
        columns(reference.clone()).await,
    );
    for s in [&schema, &reference] {
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .await
            .unwrap();
    }
    // A migration run twice (two instances past the lock) fails the second's ALTER TABLE …
    // ADD COLUMN: every instance must start.
    for r in results {
        r.expect("every instance starts");
    }
    alone.expect("one instance alone starts");
    let rows = versions.unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1, 2, 3, 4], "each migration recorded");
    // Applied one after another, in order (under the lock, not interleaved).
    let applied_at: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        applied_at.windows(2).all(|w| w[0] <= w[1]),
        "migrations applied out of order: {applied_at:?}"
    );
    // Each migration's effects once: the same tables and columns as one instance alone makes.
    let (together, single) = (together.unwrap(), single.unwrap());
    assert!(single.len() > 10, "the reference schema: {single:?}");
    assert_eq!(together, single, "four instances together vs one alone");
}

/// Issue 15 item 5: the `late` flag round-trips (and survives a reopen); an ended order
/// (closed, failed) is handed to the reconciler once more, a late payment until its refund is
/// under way, a succeeded one that is not late never.
async fn late_payments_are_flagged_and_ended_ones_due(ctx: Ctx) {
    let store = ctx.store.clone();
    for no in ["late_c", "late_f", "late_ok"] {
        assert!(store.insert_payment(&payment(no)).await.unwrap().is_none());
        let p = store.get_payment("m_1", no).await.unwrap().unwrap();
        assert!(!p.late, "{no}");
        store
            .schedule_payment_check(&p.payment_id, None)
            .await
            .unwrap();
    }
    let mut closed = store.get_payment("m_1", "late_c").await.unwrap().unwrap();
    closed.status = PaymentStatus::Closed;
    assert!(store.update_payment(&mut closed).await.unwrap());
    let mut failed = store.get_payment("m_1", "late_f").await.unwrap().unwrap();
    failed.status = PaymentStatus::Failed;
    assert!(store.update_payment(&mut failed).await.unwrap());
    let mut ok = store.get_payment("m_1", "late_ok").await.unwrap().unwrap();
    ok.status = PaymentStatus::Succeeded;
    ok.paid_at = Some(2_000);
    assert!(store.update_payment(&mut ok).await.unwrap());
    for id in ["pay_late_c", "pay_late_f", "pay_late_ok"] {
        store.schedule_payment_check(id, Some(5_000)).await.unwrap();
    }
    let due = |at: i64| {
        let store = store.clone();
        async move {
            let mut nos: Vec<String> = store
                .due_payments(at, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.out_trade_no)
                .collect();
            nos.sort();
            nos
        }
    };
    assert!(due(4_999).await.is_empty());
    assert_eq!(due(5_000).await, ["late_c", "late_f"]);
    // Its one more look done, the failed order is never due again.
    store
        .schedule_payment_check("pay_late_f", None)
        .await
        .unwrap();
    // The closed order is paid late.
    let mut late = store.get_payment("m_1", "late_c").await.unwrap().unwrap();
    late.status = PaymentStatus::Succeeded;
    late.paid_at = Some(6_000);
    late.late = true;
    assert!(store.update_payment(&mut late).await.unwrap());
    let read = store.get_payment("m_1", "late_c").await.unwrap().unwrap();
    assert!(read.late);
    assert_eq!(read, late);
    assert_eq!(
        store.payments_by_trade_no("late_c").await.unwrap(),
        [late.clone()]
    );
    let listed = store
        .list_payments(&PaymentFilter {
            merchant_id: Some("m_1".into()),
            limit: 10,
            ..PaymentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().filter(|p| p.late).count(), 1);
    // (Scheduling it again also ends the claim `due_payments` took in a shared store.)
    store
        .schedule_payment_check("pay_late_c", Some(6_000))
        .await
        .unwrap();
    assert_eq!(due(6_000).await, ["late_c"]);
    store
        .schedule_payment_check("pay_late_c", None)
        .await
        .unwrap();
    assert!(due(1_000_000_000).await.is_empty(), "no check left");
    // Kept through a restart (SQLite) or by another instance (PostgreSQL).
    let Ctx {
        store: s,
        other,
        place,
        _dir,
        ..
    } = ctx;
    drop((s, other, store));
    let again = place.open().await;
    assert!(
        again
            .get_payment("m_1", "late_c")
            .await
            .unwrap()
            .unwrap()
            .late
    );
    assert!(
        !again
            .get_payment("m_1", "late_ok")
            .await
            .unwrap()
            .unwrap()
            .late
    );
}

async fn reopening_keeps_everything(ctx: Ctx) {
    let p = paid(ctx.store.as_ref(), "keep").await;
    ctx.store
        .reserve_refund(&refund(&p, "keep_r", 10), p.amount)
        .await
        .unwrap();
    let Ctx {
        store,
        other,
        place,
        _dir,
        ..
    } = ctx;
    drop((store, other));
    // A restart (SQLite) or another instance starting (PostgreSQL, migrations already
    // applied) reads everything written before.
    let again = place.open().await;
    assert_eq!(again.get_payment("m_1", "keep").await.unwrap().unwrap(), p);
    assert_eq!(
        again
            .get_refund("m_1", "keep_r")
            .await
            .unwrap()
            .unwrap()
            .amount,
        10
    );
}

async fn tls_is_rustls_and_verified(ctx: Ctx) {
    drop(ctx);
    // The machine's PostgreSQL serves Debian's self-signed "snakeoil" certificate for
    // `localhost`: trusted through sslrootcert it verifies; against the default roots it
    // must be refused.
    let Some(admin) = admin_client().await else {
        return;
    };
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let url = pg_url();
    if ssl != "on" || !std::path::Path::new(snakeoil).exists() || !url.contains("@127.0.0.1") {
        // CI's PostgreSQL (Debian's, as `.ci/run` starts it) has ssl=on with the snakeoil
        // certificate: where PostgreSQL is required, so is this test.
        assert!(
            std::env::var("PAYROUTE_REQUIRE_PG").as_deref() != Ok("1"),
            "tls_is_rustls_and_verified needs ssl=on (is {ssl}), {snakeoil} and a 127.0.0.1 url \
             (is {}) and PAYROUTE_REQUIRE_PG=1",
            shown(&url)
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "*** SKIPPED tls_is_rustls_and_verified: needs ssl=on, {snakeoil} and a 127.0.0.1 url ***"
        );
        return;
    }
    let local = url.replace("@127.0.0.1", "@localhost");
    let sep = if local.contains('?') { '&' } else { '?' };
    let schema = unique("payroute_test_tls_");
    let verified = PostgresStore::open(
        &Secret::new(format!(
            "{local}{sep}sslmode=verify-full&sslrootcert={snakeoil}"
        )),
        2,
        &schema,
    )
    .await;
    let refused = PostgresStore::open(
        &Secret::new(format!("{local}{sep}sslmode=require")),
        2,
        &schema,
    )
    .await;
    let checked = async {
        let verified = verified.expect("verify-full against the server's own certificate");
        assert!(
            verified.tls_in_use().await.unwrap(),
            "the connection is encrypted"
        );
        verified.ping().await.unwrap();
    };
    let checked = tokio::spawn(checked).await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
    if let Err(e) = checked {
        std::panic::resume_unwind(e.into_panic());
    }
    let e = refused
        .err()
        .expect("a self-signed certificate is not trusted by default");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(
        !e.to_string().contains("postgres://"),
        "the url leaked: {e}"
    );
}

async fn connections_killed_by_the_server_are_replaced(ctx: Ctx) {
    let Place::Postgres(schema) = &ctx.place else {
        return;
    };
    let Some(admin) = admin_client().await else {
        return;
    };
    // An instance of its own, named so that only its connections are killed.
    let app = unique("payroute_kill_");
    let url = pg_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = PostgresStore::open(
        &Secret::new(format!("{url}{sep}application_name={app}")),
        4,
        schema,
    )
    .await
    .expect("open");
    store.insert_payment(&payment("k1")).await.unwrap();
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the instance had connections");
    // What a restart of PostgreSQL does to an instance: every pooled connection is dead.
    // Calls may fail while the pool finds out (a clear error, never a hang), then the pool
    // connects afresh and nothing written before is lost.
    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store.get_payment("m_1", "k1").await {
            Ok(Some(p)) => {
                assert_eq!(p.out_trade_no, "k1");
                break;
            }
            Ok(None) => panic!("the payment is gone"),
            Err(e) => {
                failures += 1;
                assert!(!e.to_string().contains("postgres://"), "{e}");
                assert!(
                    e.is_unavailable(),
                    "a lost connection is store_unavailable: {e}"
                );
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        failures <= 4,
        "{failures} failed calls: at most one per dead connection"
    );
    store.ping().await.unwrap();
    drop(ctx);
}

async fn a_row_lock_held_by_a_stalled_peer_is_waited_for_a_bounded_time(ctx: Ctx) {
    let Place::Postgres(schema) = &ctx.place else {
        return;
    };
    let Some(peer) = admin_client().await else {
        return;
    };
    let store = ctx.store;
    let p = paid(store.as_ref(), "lk1").await;
    // Another instance, paused in the middle of a refund: it holds the payment's row lock
    // and says nothing more.
    peer.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM \"{schema}\".payments WHERE payment_id = '{}' FOR UPDATE",
        p.payment_id
    ))
    .await
    .unwrap();
    // A refund needs that lock: it waits, but not without end, and says the store is busy
    // (retryable) rather than that the request is wrong.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.reserve_refund(&refund(&p, "lk1-r", 100), p.amount),
    )
    .await
    .expect("the refund waited for the lock without end");
    match r {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("55P03"), "{why}"),
        other => panic!("expected Unavailable (lock timeout), got {other:?}"),
    }
    eprintln!("refused after {:?}", started.elapsed());
    // The peer goes on (or its transaction is ended): the same refund then goes through.
    peer.batch_execute("ROLLBACK").await.unwrap();
    assert!(matches!(
        store
            .reserve_refund(&refund(&p, "lk1-r", 100), p.amount)
            .await
            .unwrap(),
        Reservation::Reserved
    ));
}

async fn an_instance_waits_out_a_long_migration_of_another(ctx: Ctx) {
    let Place::Postgres(_) = &ctx.place else {
        return;
    };
    let Some(peer) = admin_client().await else {
        return;
    };
    // Another instance migrating a fresh schema holds the migration lock for 3s, longer than
    // the sessions' lock_timeout: starting meanwhile waits for it instead of failing.
    let schema = unique("payroute_slowmig_");
    let key = format!("payroute.migrate.{schema}");
    peer.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let released = std::time::Instant::now();
        peer.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])
            .await
            .unwrap();
        (peer, released)
    });
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        PostgresStore::open(&Secret::new(pg_url()), 2, &schema),
    )
    .await
    .expect("open waited without end");
    let open_returned = std::time::Instant::now();
    let (peer, released) = release.await.unwrap();
    let served = match &opened {
        Ok(store) => store.get_payment("m_1", "none").await.map(|p| p.is_none()),
        Err(_) => Ok(false),
    };
    let _ = peer
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
    opened.expect("the instance started once the migration lock was free");
    // It waited: its start ended only after the other instance let go of the lock (the
    // instant is taken before the unlock is sent, so an open that returned earlier did not
    // wait for it).
    assert!(
        open_returned > released,
        "the instance started {:?} before the migration lock was released",
        released.saturating_duration_since(open_returned)
    );
    assert!(served.unwrap(), "and serves from the migrated schema");
}

// ---------------------------------------------------------------------------------------
// The payment service over the store: what a claim holder writes after its channel call.

/// A [`PaymentService`] over the store under test, with the harness's channels (test config)
/// on an in-process sandbox: one proxy instance, without its listeners.
struct Payments {
    service: payroute::payment::PaymentService,
    live: Arc<payroute::live::Live>,
    sandbox_url: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    _dir: tempfile::TempDir,
}

impl Payments {
    async fn start(store: Arc<dyn Store>) -> Arc<Payments> {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox_url = format!("http://{}", listener.local_addr().unwrap());
        let site = support::Site {
            public_base_url: "http://127.0.0.1:9".into(),
            webhook_url: "http://127.0.0.1:9/events".into(),
        };
        let yaml = support::config_yaml(
            &support::Upstream::plain(&sandbox_url),
            &format!(
                "{{ kind: sqlite, path: {} }}",
                dir.path().join("unused.db").display()
            ),
            &site,
            support::RULES,
            "",
        );
        let path = dir.path().join("payroute.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = payroute::config::Config::load(&path).expect("test config");
        let sandbox = payroute::sandbox::Sandbox::new(payroute::config::sandbox_merchants(
            &config.channels,
            &config.merchants,
        ));
        tokio::spawn(sandbox.serve(listener, None, std::future::pending()));
        let registry = prometheus::Registry::new();
        let resilience = Arc::new(payroute::resilience::Resilience::new(&registry).unwrap());
        let live = payroute::live::LiveConfig::new(config, &registry, resilience)
            .expect("live config")
            .load();
        Arc::new(Payments {
            service: payroute::payment::PaymentService::new(store, &registry).unwrap(),
            live,
            sandbox_url,
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
            _dir: dir,
        })
    }

    fn routes(&self) -> payroute::payment::Routes<'_> {
        self.live.routes()
    }

    /// `test-shop`'s create of `no` for `m_1001` (its rule: `m1001_wechat`).
    async fn create(
        &self,
        no: &str,
    ) -> Result<payroute::payment::CreateOutcome, payroute::payment::PaymentError> {
        let req = payroute::payment::NewPayment {
            merchant_id: "m_1001".into(),
            out_trade_no: no.into(),
            amount: 100,
            currency: "CNY".into(),
            method: Method::WechatNative,
            description: "Test mug".into(),
            openid: None,
            client_ip: None,
            expires_at: None,
            return_url: None,
            attach: None,
            metadata: Default::default(),
        };
        self.service.create(&self.routes(), "test-shop", req).await
    }

    async fn sandbox(&self, method: http::Method, path: &str, body: &str) -> serde_json::Value {
        use http_body_util::BodyExt;
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.sandbox_url))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let resp = support::within("the sandbox's answer", self.client.request(req))
            .await
            .unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Starts test-shop's create of `no` with the sandbox holding its answer, and returns once
    /// the order is at the channel (the answer still held back).
    async fn create_held_at_the_channel(
        self: &Arc<Self>,
        no: &str,
    ) -> tokio::task::JoinHandle<
        Result<payroute::payment::CreateOutcome, payroute::payment::PaymentError>,
    > {
        // Under the channel's 2s timeout: the answer comes, late.
        self.sandbox(
            http::Method::POST,
            "/sandbox/faults",
            r#"{"latency_ms": 1500}"#,
        )
        .await;
        let (me, no_) = (self.clone(), no.to_string());
        let call = tokio::spawn(async move { me.create(&no_).await });
        support::wait_until("the order to reach the channel", || async {
            let at = self
                .sandbox(http::Method::GET, &format!("/sandbox/orders/{no}"), "")
                .await;
            at["orders"].as_array().is_some_and(|o| !o.is_empty())
        })
        .await;
        call
    }
}

fn now_ms() -> i64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()) as i64
}

/// An instance whose call outlived its claim comes back after another instance took the
/// order over (claimed the record, rebound it to another account, created it there): it
/// must not write its channel, account or claim over that binding — the order would then
/// be sent to two accounts — and answers from the record.
async fn a_stale_claim_holder_never_rebinds_the_order(ctx: Ctx) {
    let a = Payments::start(ctx.store.clone()).await;
    let call = a.create_held_at_the_channel("stale-1").await;
    // Instance B (the same data through another store instance), once A's window ran out.
    let mut rec = ctx
        .other
        .get_payment("m_1001", "stale-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.channel, "m1001_wechat");
    let a_claim = rec.attempt_until.expect("A's claim");
    let routes = a.routes();
    let platform = routes.channels.get("platform_wechat").unwrap();
    let platform_account = platform.account(&routes.sub_merchant("m_1001"));
    rec.attempt_until = Some(now_ms() + 60_000);
    rec.channel = "platform_wechat".into();
    rec.account = Some(platform_account.clone());
    assert!(
        ctx.other.update_payment(&mut rec).await.unwrap(),
        "B claims"
    );
    let b_action = serde_json::json!({"type": "qr_code", "code_url": "weixin://b-at-the-platform"});
    rec.attempt_until = None;
    rec.action = Some(b_action.clone());
    assert!(
        ctx.other.update_payment(&mut rec).await.unwrap(),
        "B's result"
    );
    assert!(
        !call.is_finished(),
        "A's call ended before B took over: the sandbox's latency did not hold it"
    );
    assert_ne!(Some(a_claim), rec.attempt_until);

    let answer = support::within("A's create", call).await.unwrap();
    let stored = ctx
        .store
        .get_payment("m_1001", "stale-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.channel.as_str(), stored.account.as_ref()),
        ("platform_wechat", Some(&platform_account)),
        "{}: the stale claim holder rebound the order",
        ctx.kind
    );
    assert_eq!(stored.action, Some(b_action.clone()), "{}", ctx.kind);
    assert_eq!(stored.attempt_until, None, "{}", ctx.kind);
    // A answers from the record: B's binding and payer action.
    match answer {
        Ok(payroute::payment::CreateOutcome::Replayed(p)) => {
            assert_eq!(
                (p.channel.as_str(), p.action),
                ("platform_wechat", Some(b_action))
            );
        }
        other => panic!("{}: A answered {other:?}", ctx.kind),
    }
}

/// The other side of the rule: while the claim is still the caller's, what a verified
/// notification wrote meanwhile (paid, the provider's number) stays and the call's result
/// (the payer action) is added, on the same binding.
async fn a_live_claim_holder_merges_what_a_notification_wrote(ctx: Ctx) {
    let a = Payments::start(ctx.store.clone()).await;
    let call = a.create_held_at_the_channel("live-1").await;
    // A notification (it never takes or clears a live claim) marks the order paid.
    let mut rec = ctx
        .other
        .get_payment("m_1001", "live-1")
        .await
        .unwrap()
        .unwrap();
    let a_claim = rec.attempt_until;
    rec.status = PaymentStatus::Succeeded;
    rec.paid_at = Some(now_ms());
    rec.provider_trade_no = Some("4200000000000000000000000042".into());
    assert!(ctx.other.update_payment(&mut rec).await.unwrap());
    assert!(
        !call.is_finished(),
        "the sandbox's latency did not hold A's call"
    );
    assert_eq!(rec.attempt_until, a_claim);

    let answer = support::within("A's create", call).await.unwrap();
    let stored = ctx
        .store
        .get_payment("m_1001", "live-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, PaymentStatus::Succeeded, "{}", ctx.kind);
    assert_eq!(stored.channel, "m1001_wechat");
    assert_eq!(
        stored.provider_trade_no.as_deref(),
        Some("4200000000000000000000000042")
    );
    let code_url = stored.action.as_ref().map(|a| a["code_url"].clone());
    assert!(
        code_url
            .as_ref()
            .and_then(|u| u.as_str())
            .is_some_and(|u| u.starts_with("weixin://wxpay/")),
        "{}: the call's payer action was dropped: {:?}",
        ctx.kind,
        stored.action
    );
    assert_eq!(stored.attempt_until, None, "the claim ends");
    match answer {
        Ok(payroute::payment::CreateOutcome::Created(p)) => {
            assert_eq!(p.status, PaymentStatus::Succeeded)
        }
        other => panic!("{}: A answered {other:?}", ctx.kind),
    }
}
