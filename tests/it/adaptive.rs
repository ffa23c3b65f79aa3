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
