//! The ledger: payments and refunds — binding, compare-and-set, the refund reservation, the
//! events written with the update that wins, and what a claim holder may write after its call.

use super::*;

both_stores!(
    binding_is_unique_and_round_trips,
    payments_by_trade_no_oldest_first,
    concurrent_creates_bind_once,
    stale_writer_is_fenced,
    refund_guard_and_refunded_amount,
    concurrent_refunds_never_over_refund,
    concurrent_twins_of_one_refund_reserve_once,
    events_are_written_with_the_update_that_wins,
    legacy_isv_sellers_are_rebound_to_the_merchants_user_id,
    a_stale_claim_holder_never_rebinds_the_order,
    a_live_claim_holder_merges_what_a_notification_wrote,
);

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
