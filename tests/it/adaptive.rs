//! Adaptive routing end to end: an own account that fails for its own fault is eliminated,
//! probed and readmitted; `choose` prefers the cheaper of two healthy channels; explain says
//! what it saw. The real proxy, the sandbox as upstream (its per-account faults), SQLite.

use crate::support;

use serde_json::json;
use support::{payment, Harness};

/// m_1001's own WeChat channel with the platform as its fallback, judged on a short window.
/// The threshold (0.8) sits well above the fault's 50% so that elimination after
/// `min_samples` is not a coin toss; `readmit_after: 6` keeps a 50%-failing channel from
/// being readmitted by chance while few probes reach it.
const OWN_WITH_FALLBACK: &str = r#"
  health: { window: 40, min_samples: 20, eliminate_below: 0.8, probe: 5%, readmit_after: 6 }
  rules:
    - name: m1001-own-wechat
      when: { merchant: [m_1001], method: [wechat_native] }
      to: m1001_wechat
      fallback: [platform_wechat]
  default: { wechat: platform_wechat }
"#;

/// m_1001's own account (by its appid: its mchid is also its sub-merchant id at the
/// platform) refuses this share of its creates with `NO_AUTH`, its own fault.
fn own_account_refuses(rate: f64) -> serde_json::Value {
    json!({
        "accounts": ["wx2421b1c4370ec43b"],
        "fail_rate": rate,
        "fail_code": "NO_AUTH",
        "fail_ops": ["create"],
    })
}

async fn create(h: &Harness, no: &str) -> support::Reply {
    h.create(&payment("m_1001", no, "wechat_native", 1999, json!({})))
        .await
}

async fn own_eliminated(h: &Harness) -> bool {
    let r = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": 1999}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .any(|c| c["channel"] == "m1001_wechat" && c["health"]["eliminated"] == true)
}

#[tokio::test]
async fn a_failing_own_account_is_eliminated_probed_and_readmitted() {
    let h = Harness::start_with(false, OWN_WITH_FALLBACK, "").await;
    h.faults(own_account_refuses(0.5)).await;

    // Until the window holds min_samples the own account takes every order, and half are
    // refused with its own NO_AUTH (final: never failed over, the shop sees 402).
    let mut sent = 0;
    while !own_eliminated(&h).await {
        sent += 1;
        assert!(sent <= 200, "still not eliminated after {sent} orders");
        let r = create(&h, &format!("elim-{sent}")).await;
        match r.status {
            201 => assert_eq!(r.body["channel"], "m1001_wechat", "{}", r.text),
            _ => {
                r.expect_error(402, "channel_rejected");
                assert!(r.error_message().contains("NO_AUTH"), "{}", r.text);
            }
        }
    }
    assert!(sent >= 20, "eliminated after {sent} < min_samples orders");

    // Eliminated: the fallback takes the orders (only a probe share still tries the own).
    let mut on_platform = 0;
    for i in 0..40 {
        let r = create(&h, &format!("after-{i}")).await;
        if r.status == 201 && r.body["channel"] == "platform_wechat" {
            on_platform += 1;
        }
    }
    assert!(
        on_platform >= 32,
        "only {on_platform} of 40 orders landed on the platform with 201"
    );
    let skipped = h
        .metric(
            "payroute_route_skipped_total",
            &[
                ("rule", "m1001-own-wechat"),
                ("channel", "m1001_wechat"),
                ("reason", "eliminated"),
            ],
        )
        .await
        .unwrap_or(0.0);
    assert!(skipped >= 32.0, "skips counted: {skipped}");
    let ratio = h
        .metric(
            "payroute_channel_success_ratio",
            &[("channel", "m1001_wechat")],
        )
        .await
        .expect("the own channel's success ratio");
    assert!(ratio < 0.8, "{ratio}");

    // The fault clears: probes succeed, and after readmit_after of them in a row the own
    // account is readmitted with a fresh window and takes its orders back.
    h.faults(json!({})).await;
    let mut n = 0;
    while own_eliminated(&h).await {
        n += 1;
        assert!(n <= 1000, "not readmitted after {n} orders");
        create(&h, &format!("probe-{n}")).await;
    }
    for i in 0..20 {
        create(&h, &format!("back-{i}"))
            .await
            .expect_created_on("m1001_wechat");
    }
    h.shutdown().await;
}

/// The shop's errors are not the channel's: a stream of final business refusals of the
/// order's own fields (PARAM_ERROR) never eliminates the account.
#[tokio::test]
async fn the_shops_errors_do_not_count_against_the_channel() {
    let h = Harness::start_with(false, OWN_WITH_FALLBACK, "").await;
    h.faults(json!({
        "accounts": ["wx2421b1c4370ec43b"],
        "fail_rate": 1.0,
        "fail_code": "PARAM_ERROR",
        "fail_ops": ["create"],
    }))
    .await;
    for i in 0..30 {
        create(&h, &format!("param-{i}"))
            .await
            .expect_error(402, "channel_rejected");
    }
    assert!(!own_eliminated(&h).await);
    assert_eq!(
        h.metric(
            "payroute_channel_success_ratio",
            &[("channel", "m1001_wechat")]
        )
        .await,
        Some(1.0),
        "no sample counted"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn choose_by_value_prefers_the_cheaper_of_two_healthy_channels() {
    // m1001_wechat charges 0.38%, the platform 0.6%: at equal health the own account's
    // expected value is higher; 5% explore keeps the platform's score fresh.
    let rules = r#"
  rules:
    - name: m1001-by-value
      when: { merchant: [m_1001], family: wechat }
      choose: { from: [platform_wechat, m1001_wechat], by: value, explore: 5% }
  default: { wechat: platform_wechat }
"#;
    let h = Harness::start_with(false, rules, "").await;
    let mut own = 0;
    for i in 0..100 {
        let r = create(&h, &format!("value-{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text);
        own += (r.body["channel"] == "m1001_wechat") as u32;
    }
    assert!(own >= 85, "only {own} of 100 went to the cheaper channel");
    assert!(own < 100, "explore sent none elsewhere");

    let r = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": 10000, "out_trade_no": "x-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["by"], "value", "{}", r.text);
    let c = r.body["candidates"].as_array().expect("candidates");
    let own = c
        .iter()
        .find(|c| c["channel"] == "m1001_wechat")
        .expect("own");
    let platform = c
        .iter()
        .find(|c| c["channel"] == "platform_wechat")
        .expect("platform");
    assert_eq!(
        (own["fee"].as_u64(), platform["fee"].as_u64()),
        (Some(38), Some(60))
    );
    assert!(
        own["value"].as_u64() > platform["value"].as_u64(),
        "{}",
        r.text
    );
    assert_eq!(own["health"]["eliminated"], false);
    assert_eq!(platform["circuit"], "closed");
    h.shutdown().await;
}

/// What explain says of `channel` for an m_1001 payment of `amount`.
async fn explained(h: &Harness, amount: u64, channel: &str) -> serde_json::Value {
    let r = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": amount}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["candidates"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == channel))
        .unwrap_or_else(|| panic!("no candidate {channel}: {}", r.text))
        .clone()
}

#[tokio::test]
async fn a_drained_channel_takes_no_new_payment_and_its_orders_go_on() {
    let h = Harness::start_with(false, OWN_WITH_FALLBACK, "").await;
    let older = h
        .paid("m_1001", "before-drain", "wechat_native", 1999)
        .await;
    assert_eq!(older["channel"], "m1001_wechat");

    let r = h
        .admin_post(
            "/admin/channels/m1001_wechat/drain",
            &json!({"reason": "appid rebinding", "by": "ops-test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..10 {
        create(&h, &format!("drained-{i}"))
            .await
            .expect_created_on("platform_wechat");
    }
    assert_eq!(
        h.metric(
            "payroute_route_skipped_total",
            &[
                ("rule", "m1001-own-wechat"),
                ("channel", "m1001_wechat"),
                ("reason", "drained")
            ],
        )
        .await,
        Some(10.0)
    );
    let own = explained(&h, 1999, "m1001_wechat").await;
    assert_eq!(
        (own["verdict"].as_str(), own["why"].as_str()),
        (Some("skipped"), Some("drained")),
        "{own}"
    );
    assert_eq!(own["drained"], true);

    // The older order stays at the drained account: its refund goes there.
    let refund = h
        .refund(&json!({"merchant_id": "m_1001", "out_trade_no": "before-drain", "out_refund_no": "before-drain-r1", "amount": 500}))
        .await;
    assert_eq!(
        (refund.status, refund.body["channel"].as_str()),
        (201, Some("m1001_wechat")),
        "{}",
        refund.text
    );
    assert_eq!(refund.body["status"], "succeeded", "{}", refund.text);
    h.get_payment("m_1001", "before-drain", true).await;

    let r = h
        .admin_post("/admin/channels/m1001_wechat/resume", &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    create(&h, "after-resume")
        .await
        .expect_created_on("m1001_wechat");
    h.shutdown().await;
}

#[tokio::test]
async fn a_drain_with_nowhere_else_to_go_sends_nothing() {
    // m_3003's small amounts go to its own account only, no fallback.
    let h = Harness::start().await;
    let r = h
        .admin_post(
            "/admin/channels/m3003_wechat/drain",
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = h
        .create(&payment(
            "m_3003",
            "nowhere-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(503, "channel_unavailable");
    assert!(r.error_message().contains("nothing was sent"), "{}", r.text);
    assert!(
        h.sandbox_orders("nowhere-1").await.is_empty(),
        "nothing reached the sandbox"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_daily_quota_moves_the_order_that_would_exceed_it() {
    // m_1001's own account under a second name, with a daily room of 5000 fen.
    let rules = r#"
  rules:
    - name: m1001-own-quota
      when: { merchant: [m_1001], method: [wechat_native] }
      to: m1001_quota
      fallback: [platform_wechat]
  default: { wechat: platform_wechat }
"#;
    let h = Harness::start().await;
    let own = support::wechat_direct(
        &h.upstream,
        "m1001_quota",
        "1900000109",
        "wx2421b1c4370ec43b",
        "3775B6A45ACD588826D15E583A95F5DD",
        "m1001_apiclient_key.pem",
    )
    .with("quota", "{ daily: 5000, single: 3000 }");
    h.reload_with(rules, &own.to_string()).await;

    create(&h, "q-1").await.expect_created_on("m1001_quota");
    create(&h, "q-2").await.expect_created_on("m1001_quota");
    // 2 × 1999 taken: a third would make 5997 > 5000.
    let third = explained(&h, 1999, "m1001_quota").await;
    assert_eq!(
        (third["verdict"].as_str(), third["why"].as_str()),
        (Some("skipped"), Some("quota")),
        "{third}"
    );
    assert_eq!(
        third["quota"]["daily"],
        json!({"limit": 5000, "used": 3998, "left": 1002})
    );
    let r = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": 1999}),
        )
        .await;
    assert_eq!(r.body["channel"], "platform_wechat", "{}", r.text);
    let text = r.body["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("candidate \"m1001_quota\" skipped")
            && text.contains("→ after quotas: channel \"platform_wechat\""),
        "{text}"
    );
    create(&h, "q-3").await.expect_created_on("platform_wechat");
    // A smaller payment still fits the room left.
    h.create(&payment("m_1001", "q-4", "wechat_native", 1000, json!({})))
        .await
        .expect_created_on("m1001_quota");
    // Above `single` skips at once, whatever the room.
    h.create(&payment("m_1001", "q-5", "wechat_native", 3001, json!({})))
        .await
        .expect_created_on("platform_wechat");
    // A closed order frees its room.
    assert_eq!(h.close("m_1001", "q-1").await.status, 200);
    create(&h, "q-6").await.expect_created_on("m1001_quota");
    assert_eq!(
        h.metric(
            "payroute_route_skipped_total",
            &[
                ("rule", "m1001-own-quota"),
                ("channel", "m1001_quota"),
                ("reason", "quota")
            ],
        )
        .await,
        Some(2.0)
    );
    h.shutdown().await;
}
