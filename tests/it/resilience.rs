//! Resilience through real sockets: inbound rate limits (429 + Retry-After), channel limits
//! and the circuit breaker (refused before sending, so failover is safe).

use crate::support;

use serde_json::json;
use support::{payment, Harness};

fn rules(limits: &str) -> String {
    format!(
        r#"
  rules:
    - name: m1001-limited
      when: {{ merchant: [m_1001], method: [wechat_native] }}
      to: limited_wechat
      fallback: [platform_wechat]
  default: {{ wechat: platform_wechat }}
limits:
{limits}
"#
    )
}

const PER_MERCHANT: &str = "  - { name: per-merchant, key: merchant, rate: 2/h, burst: 2 }";

fn limited_channel(up: &support::Upstream) -> support::ChannelYaml {
    support::wechat_direct(
        up,
        "limited_wechat",
        "1900000109",
        "wx2421b1c4370ec43b",
        "0C0C0C0C",
        "m1001_apiclient_key.pem",
    )
    .with("limit", "{ rate: 1/h, burst: 1 }")
}

#[tokio::test]
async fn inbound_limits_answer_429_with_retry_after_and_survive_reloads() {
    let h = Harness::start_with(
        false,
        &rules(PER_MERCHANT).replace("limited_wechat", "m1001_wechat"),
        "",
    )
    .await;
    assert_eq!(
        h.create(&payment("m_1001", "lim-1", "wechat_native", 100, json!({})))
            .await
            .status,
        201
    );
    assert_eq!(h.get_payment("m_1001", "lim-1", false).await.status, 200);
    let r = h
        .create(&payment("m_1001", "lim-2", "wechat_native", 100, json!({})))
        .await;
    r.expect_error(429, "rate_limited");
    assert_eq!(r.body["error"]["retryable"], true);
    let after: u64 = r
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1000..=1800).contains(&after), "Retry-After {after}");
    assert!(
        h.sandbox_orders("lim-2").await.is_empty(),
        "a limited request reaches no channel"
    );
    // Another merchant has its own budget.
    assert_eq!(
        h.create(&payment("m_4004", "lim-3", "wechat_native", 100, json!({})))
            .await
            .status,
        201
    );

    // A reload that keeps the limit keeps its state; a new rate starts afresh.
    let same = rules(PER_MERCHANT).replace("limited_wechat", "m1001_wechat") + "\n";
    h.write_config(&same, "");
    assert_eq!(h.admin_post("/admin/reload", &json!({})).await.status, 200);
    h.create(&payment("m_1001", "lim-4", "wechat_native", 100, json!({})))
        .await
        .expect_error(429, "rate_limited");
    let wider = rules("  - { name: per-merchant, key: merchant, rate: 5/h, burst: 5 }")
        .replace("limited_wechat", "m1001_wechat");
    h.write_config(&wider, "");
    assert_eq!(h.admin_post("/admin/reload", &json!({})).await.status, 200);
    assert_eq!(
        h.create(&payment("m_1001", "lim-5", "wechat_native", 100, json!({})))
            .await
            .status,
        201
    );

    let m = h.metrics().await;
    assert_eq!(
        support::metric(&m, r#"payroute_rate_limited_total{limit="per-merchant"}"#),
        Some(2.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_channel_over_its_limit_fails_over_because_nothing_was_sent() {
    let h = Harness::start_with(false, support::RULES, "").await;
    h.reload_with(&rules("  []"), &limited_channel(&h.upstream).to_string())
        .await;
    let first = h
        .create(&payment("m_1001", "cl-1", "wechat_native", 100, json!({})))
        .await;
    first.expect_created_on("limited_wechat");
    let second = h
        .create(&payment("m_1001", "cl-2", "wechat_native", 100, json!({})))
        .await;
    second.expect_created_on("platform_wechat");
    let m = h.metrics().await;
    assert!(support::metric(&m, r#"payroute_channel_requests_total{channel="limited_wechat",operation="create",result="channel_limit"}"#).unwrap() >= 1.0);
    assert!(
        support::metric(
            &m,
            r#"payroute_rate_limited_total{limit="channel:limited_wechat"}"#
        )
        .unwrap()
            >= 1.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_dead_channel_opens_its_circuit_and_is_skipped() {
    let dead = limited_channel(&support::Upstream::dead())
        .without("limit")
        .to_string();
    let rules = r#"
  rules:
    - name: m1001-limited
      when: { merchant: [m_1001], method: [wechat_native] }
      to: limited_wechat
      fallback: [platform_wechat]
    - name: m1001-dead-app
      when: { merchant: [m_1001], method: [wechat_app] }
      to: limited_wechat
  default: { wechat: platform_wechat }
"#;
    let h = Harness::start_with(false, rules, &dead).await;
    // Each create tries the dead channel three times (two retries): two creates trip it.
    for i in 0..2 {
        let r = h
            .create(&payment(
                "m_1001",
                &format!("cb-{i}"),
                "wechat_native",
                100,
                json!({}),
            ))
            .await;
        r.expect_created_on("platform_wechat");
    }
    let ch = h.admin_get("/admin/channels").await;
    let state = ch.body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "limited_wechat")
        .unwrap()["circuit"]
        .clone();
    assert_eq!(state, "open");
    let m = h.metrics().await;
    assert_eq!(
        support::metric(&m, r#"payroute_circuit_open{channel="limited_wechat"}"#),
        Some(1.0)
    );
    let tried = support::metric(&m, r#"payroute_channel_requests_total{channel="limited_wechat",operation="create",result="nothing_sent"}"#).unwrap();
    // Open: the next payment goes straight to the fallback without touching the dead channel…
    let r = h
        .create(&payment("m_1001", "cb-2", "wechat_native", 100, json!({})))
        .await;
    r.expect_created_on("platform_wechat");
    // …and without a fallback the shop hears 503 at once.
    let r = h
        .create(&payment("m_1001", "cb-3", "wechat_app", 100, json!({})))
        .await;
    r.expect_error(503, "channel_unavailable");
    assert!(
        r.error_message().contains("circuit breaker open"),
        "{}",
        r.text
    );
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_channel_requests_total{channel="limited_wechat",operation="create",result="nothing_sent"}"#
        ),
        Some(tried),
        "an open circuit sends nothing"
    );
    h.shutdown().await;
}
