//! The outbox: events due in order per payment, dead and resent events, fair places per shop,
//! and (PostgreSQL) claims of due events between instances.

use super::*;

both_stores!(
    events_go_out_in_order_per_payment,
    dead_and_resent_events,
    a_shops_backlog_never_takes_another_shops_places,
);

postgres_only!(
    two_claimers_of_a_due_event_only_one_gets_it,
    claimed_events_are_given_back_or_expire,
);

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
