//! Quotas (issue 18, "bank limits"): the guarded insert and rebind take an account's room
//! atomically — per account, over the China calendar day and month, counting every payment
//! that is or may become paid — and `quota_used` reads what was taken.

use super::*;

use payroute::clock::{china_day_start_ms, china_month_start_ms};
use payroute::store::{Inserted, Over, Period, QuotaGuard, QuotaUse, Updated};

both_stores!(
    a_payment_within_the_room_is_inserted_and_one_over_it_refused,
    failed_and_closed_payments_free_their_room,
    yesterdays_payments_count_for_the_month_not_today,
    another_sub_merchant_has_a_room_of_its_own,
    a_replay_is_never_refused_for_quota,
    the_guarded_rebind_leaves_the_record_itself_out,
    a_guard_must_name_the_payments_account,
    two_instances_never_take_more_than_the_room,
);

/// 2024-03-15T04:00Z: noon in China on 15 March; every payment here is created around it.
const NOON: i64 = 1_710_475_200_000;

fn day() -> i64 {
    china_day_start_ms(NOON)
}

fn month() -> i64 {
    china_month_start_ms(NOON)
}

/// `payment(no)` (bound to sub-merchant 1900000109) of `amount` fen, created at `at`.
fn at(no: &str, amount: u64, at: i64) -> PaymentRecord {
    let mut p = payment(no);
    p.amount = amount;
    p.created_at = at;
    p.updated_at = at;
    p
}

/// `at(…)` bound to another sub-merchant of the same partner account.
fn at_other_sub(no: &str, amount: u64, created: i64) -> PaymentRecord {
    let mut p = at(no, amount, created);
    if let Some(a) = p.account.as_mut() {
        a.sub_mchid = Some("1900000209".into());
    }
    p
}

/// The guard of `p`'s account: `daily` and `monthly` limits (fen) with today's and this
/// month's China starts.
fn guard(p: &PaymentRecord, daily: Option<u64>, monthly: Option<u64>) -> QuotaGuard {
    QuotaGuard {
        account: p.account.clone().unwrap(),
        amount: p.amount,
        daily: daily.map(|l| (l, day())),
        monthly: monthly.map(|l| (l, month())),
    }
}

async fn used(store: &dyn Store, p: &PaymentRecord) -> QuotaUse {
    store
        .quota_used(p.account.as_ref().unwrap(), day(), month())
        .await
        .unwrap()
}

async fn insert(store: &dyn Store, p: &PaymentRecord, g: &QuotaGuard) -> Inserted {
    store.insert_payment_within(p, Some(g)).await.unwrap()
}

async fn a_payment_within_the_room_is_inserted_and_one_over_it_refused(ctx: Ctx) {
    let store = ctx.store.as_ref();
    for i in 0..3 {
        let p = at(&format!("q{i}"), 1_000, NOON + i);
        assert_eq!(
            insert(store, &p, &guard(&p, Some(3_000), None)).await,
            Inserted::New
        );
    }
    // Exactly at the limit is in; one fen more is not, and nothing of it is stored.
    let over = at("q3", 1, NOON + 3);
    assert_eq!(
        insert(store, &over, &guard(&over, Some(3_000), Some(1_000_000))).await,
        Inserted::OverQuota(Over {
            period: Period::Daily,
            used: 3_000,
            limit: 3_000
        }),
        "{}",
        ctx.kind
    );
    assert!(store.get_payment("m_1", "q3").await.unwrap().is_none());
    assert_eq!(
        used(store, &over).await,
        QuotaUse {
            day: 3_000,
            month: 3_000
        }
    );
    // Without a guard nothing is checked (a channel with no quota).
    assert_eq!(
        store.insert_payment_within(&over, None).await.unwrap(),
        Inserted::New
    );
}

async fn failed_and_closed_payments_free_their_room(ctx: Ctx) {
    let store = ctx.store.as_ref();
    let statuses = [
        PaymentStatus::Failed,
        PaymentStatus::Closed,
        PaymentStatus::Succeeded,
        PaymentStatus::Unknown,
    ];
    for (i, status) in statuses.into_iter().enumerate() {
        let p = at(&format!("f{i}"), 1_000, NOON + i as i64);
        assert_eq!(
            insert(store, &p, &guard(&p, Some(4_000), None)).await,
            Inserted::New
        );
        let mut p = store
            .get_payment("m_1", &p.out_trade_no)
            .await
            .unwrap()
            .unwrap();
        p.status = status;
        assert!(store.update_payment(&mut p).await.unwrap());
    }
    // Succeeded and unknown count (paid, or may be); failed and closed never will be.
    let p = at("f4", 2_000, NOON + 10);
    assert_eq!(used(store, &p).await.day, 2_000, "{}", ctx.kind);
    assert_eq!(
        insert(store, &p, &guard(&p, Some(4_000), None)).await,
        Inserted::New
    );
    let more = at("f5", 1, NOON + 11);
    assert!(matches!(
        insert(store, &more, &guard(&more, Some(4_000), None)).await,
        Inserted::OverQuota(Over { used: 4_000, .. })
    ));
}

async fn yesterdays_payments_count_for_the_month_not_today(ctx: Ctx) {
    let store = ctx.store.as_ref();
    // 23:59:59.999 China time yesterday, and last month's last moment.
    let yesterday = at("y1", 3_000, day() - 1);
    let last_month = at("y0", 50_000, month() - 1);
    for p in [&yesterday, &last_month] {
        assert!(store.insert_payment(p).await.unwrap().is_none());
    }
    assert_eq!(
        used(store, &yesterday).await,
        QuotaUse {
            day: 0,
            month: 3_000
        },
        "{}",
        ctx.kind
    );
    // Today's room is whole; the month's holds yesterday's payment.
    let today = at("y2", 3_000, day());
    assert_eq!(
        insert(store, &today, &guard(&today, Some(3_000), Some(6_000))).await,
        Inserted::New
    );
    let again = at("y3", 1_000, NOON);
    assert_eq!(
        insert(store, &again, &guard(&again, None, Some(6_000))).await,
        Inserted::OverQuota(Over {
            period: Period::Monthly,
            used: 6_000,
            limit: 6_000
        })
    );
}

async fn another_sub_merchant_has_a_room_of_its_own(ctx: Ctx) {
    let store = ctx.store.as_ref();
    let first = at("s1", 3_000, NOON);
    assert_eq!(
        insert(store, &first, &guard(&first, Some(3_000), None)).await,
        Inserted::New
    );
    let other = at_other_sub("s2", 3_000, NOON);
    assert_eq!(
        insert(store, &other, &guard(&other, Some(3_000), None)).await,
        Inserted::New,
        "{}",
        ctx.kind
    );
    assert_eq!(used(store, &first).await.day, 3_000);
    assert_eq!(used(store, &other).await.day, 3_000);
    let full = at("s3", 1, NOON);
    assert!(matches!(
        insert(store, &full, &guard(&full, Some(3_000), None)).await,
        Inserted::OverQuota(_)
    ));
}

async fn a_replay_is_never_refused_for_quota(ctx: Ctx) {
    let store = ctx.store.as_ref();
    let p = at("r1", 3_000, NOON);
    assert_eq!(
        insert(store, &p, &guard(&p, Some(3_000), None)).await,
        Inserted::New
    );
    // The same order again (a shop's retry) with the room full: its record, not a refusal.
    let mut twin = p.clone();
    twin.payment_id = "pay_twin".into();
    match insert(store, &twin, &guard(&twin, Some(3_000), None)).await {
        Inserted::Existing(existing) => assert_eq!(*existing, p, "{}", ctx.kind),
        other => panic!("{}: {other:?}", ctx.kind),
    }
}

async fn the_guarded_rebind_leaves_the_record_itself_out(ctx: Ctx) {
    let store = ctx.store.as_ref();
    // Another sub-merchant's account holds 2500 already.
    let there = at_other_sub("b0", 2_500, NOON);
    assert!(store.insert_payment(&there).await.unwrap().is_none());
    let p = at("b1", 1_000, NOON);
    assert_eq!(
        insert(store, &p, &guard(&p, Some(3_000), None)).await,
        Inserted::New
    );
    let mut rec = store.get_payment("m_1", "b1").await.unwrap().unwrap();
    // A failover to the other account: 2500 + 1000 is over 3000; nothing is written.
    rec.account = there.account.clone();
    rec.channel = "fallback".into();
    let g = |limit| guard(&rec, Some(limit), None);
    let (tight, roomy) = (g(3_000), g(3_500));
    assert_eq!(
        store
            .update_payment_within(&mut rec, Some(&tight))
            .await
            .unwrap(),
        Updated::OverQuota(Over {
            period: Period::Daily,
            used: 2_500,
            limit: 3_000
        }),
        "{}",
        ctx.kind
    );
    let stored = store.get_payment("m_1", "b1").await.unwrap().unwrap();
    assert_eq!(
        stored.account, p.account,
        "an over-quota rebind writes nothing"
    );
    assert_eq!((stored.version, rec.version), (0, 0));
    assert_eq!(
        store
            .update_payment_within(&mut rec, Some(&roomy))
            .await
            .unwrap(),
        Updated::Won
    );
    assert_eq!(rec.version, 1);
    let stored = store.get_payment("m_1", "b1").await.unwrap().unwrap();
    assert_eq!(
        (stored.account, stored.channel),
        (there.account.clone(), "fallback".into())
    );
    assert_eq!(used(store, &there).await.day, 3_500);
    // Written again at the same account (its claim renewed): the sum leaves the record
    // itself out, so it still fits exactly.
    rec.attempt_until = Some(NOON + 5_000);
    assert_eq!(
        store
            .update_payment_within(&mut rec, Some(&roomy))
            .await
            .unwrap(),
        Updated::Won
    );
    // A stale writer loses, whatever the room.
    let mut stale = rec.clone();
    stale.version -= 1;
    assert_eq!(
        store
            .update_payment_within(&mut stale, Some(&roomy))
            .await
            .unwrap(),
        Updated::Lost
    );
    assert_eq!(
        store
            .update_payment_within(&mut stale, Some(&tight))
            .await
            .unwrap(),
        Updated::Lost
    );
    // Unguarded, as update_payment.
    assert_eq!(
        store.update_payment_within(&mut rec, None).await.unwrap(),
        Updated::Won
    );
}

async fn a_guard_must_name_the_payments_account(ctx: Ctx) {
    let store = ctx.store.as_ref();
    let p = at("g1", 100, NOON);
    let wrong = guard(&at_other_sub("g1", 100, NOON), Some(1_000), None);
    assert!(
        store.insert_payment_within(&p, Some(&wrong)).await.is_err(),
        "{}",
        ctx.kind
    );
    assert!(store.get_payment("m_1", "g1").await.unwrap().is_none());
    assert!(store.insert_payment(&p).await.unwrap().is_none());
    let mut rec = store.get_payment("m_1", "g1").await.unwrap().unwrap();
    assert!(store
        .update_payment_within(&mut rec, Some(&wrong))
        .await
        .is_err());
}

/// Two instances (PostgreSQL: two pools, as two processes would have) race 20 guarded
/// inserts each for a room of exactly 10 payments: exactly 10 are stored.
async fn two_instances_never_take_more_than_the_room(ctx: Ctx) {
    const EACH: usize = 20;
    let mut tasks = Vec::new();
    for (n, store) in [ctx.store.clone(), ctx.other.clone()]
        .into_iter()
        .enumerate()
    {
        for i in 0..EACH {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let p = at(&format!("race{n}_{i}"), 100, NOON + i as i64);
                let g = guard(&p, Some(1_000), Some(1_000_000));
                store.insert_payment_within(&p, Some(&g)).await
            }));
        }
    }
    let (mut new, mut over) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Inserted::New) => new += 1,
            Ok(Inserted::OverQuota(o)) => {
                assert_eq!((o.period, o.used, o.limit), (Period::Daily, 1_000, 1_000));
                over += 1
            }
            other => panic!("{}: {other:?}", ctx.kind),
        }
    }
    eprintln!("{}: race: {new} inserted, {over} over quota", ctx.kind);
    assert_eq!((new, over), (10, 2 * EACH - 10), "{}", ctx.kind);
    let p = at("race_probe", 100, NOON);
    assert_eq!(
        used(ctx.store.as_ref(), &p).await,
        QuotaUse {
            day: 1_000,
            month: 1_000
        }
    );
}
