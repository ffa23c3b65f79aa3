//! The reconciliation schedule: due checks, the next check an open record always keeps, late
//! payments, and claims of due checks.

use super::*;

both_stores!(
    reconciliation_schedule,
    an_open_record_always_keeps_a_next_check,
    a_stale_claim_writes_nothing,
    late_payments_are_flagged_and_ended_ones_due,
);

postgres_only!(due_checks_are_claimed_once,);

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
