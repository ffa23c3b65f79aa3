//! Reports: finding and listing payments, open orders by account, and the readiness ping.

use super::*;

both_stores!(finds_and_lists_payments, open_orders_by_account, reachable,);

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

async fn reachable(ctx: Ctx) {
    ctx.store.ping().await.unwrap();
    ctx.other.ping().await.unwrap();
}
