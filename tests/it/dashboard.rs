//! Every `payroute_*` metric that the Grafana dashboard (`deploy/grafana/payroute.json`) and
//! the Prometheus alerts (`deploy/prometheus/alerts.yml`) query exists in a live `/metrics`.
//!
//! The proxy runs through the harness and is driven until every family the artefacts use has
//! a sample: a paid payment (its notification, shop webhook and fee), a payment found by the
//! reconciler, a burst on a rate-limited channel (retries, then the retry budget spent, its
//! refused attempts counted as skipped candidates), and inbound calls past a rate limit. A
//! family with no sample yet is absent from `/metrics`, so a name that is misspelt, renamed
//! or never exported fails here.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use support::{payment, wait_until, Harness};

const DASHBOARD: &str = include_str!("../../deploy/grafana/payroute.json");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");

const RULES: &str = r#"
  rules:
    - name: m1001-limited
      when: { merchant: [m_1001], method: [wechat_native] }
      to: limited_wechat
      fallback: [platform_wechat]
  default: { wechat: platform_wechat }
reconcile: { tiers: [ { until: 10m, every: 200ms }, { until: 24h, every: 1h } ] }
limits:
  - { name: per-merchant, key: merchant, rate: 1/h, burst: 60 }
"#;

/// Checks every 200ms for the first ten minutes (the default is every minute).
const FAST: &str =
    "reconcile: { tiers: [ { until: 10m, every: 200ms }, { until: 24h, every: 1h } ] }\n";

/// `payroute_*` names in `text`, with histogram suffixes stripped to the family name.
fn referenced(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("payroute_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start + "payroute_".len();
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        i = end;
    }
    names
}

/// The metric families of a Prometheus text exposition (from its `# TYPE` lines).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `/metrics` of a second proxy whose API listener has shed a request: it takes at most two
/// requests in flight (a server setting, read at start), and a third arrives while two wait on
/// a slow channel.
async fn shedding_metrics() -> String {
    let mut h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "  drain_timeout: 5s\n",
        "  drain_timeout: 5s\n  max_in_flight: 2\n",
    );
    assert!(
        text.contains("max_in_flight: 2"),
        "the harness config has changed"
    );
    support::write_atomically(&h.config_path, &text);
    h.restart().await;
    h.faults(json!({ "latency_ms": 1000 })).await;
    let h = Arc::new(h);
    let slow: Vec<_> = ["shed-1", "shed-2"]
        .into_iter()
        .map(|no| {
            let h = h.clone();
            tokio::spawn(async move {
                h.create(&payment("m_1001", no, "wechat_native", 100, json!({})))
                    .await
            })
        })
        .collect();
    for no in ["shed-1", "shed-2"] {
        wait_until("both creates to be in flight", || async {
            h.sandbox_orders(no).await.len() == 1
        })
        .await;
    }
    h.create(&payment(
        "m_1001",
        "shed-3",
        "wechat_native",
        100,
        json!({}),
    ))
    .await
    .expect_error(503, "overloaded");
    for s in slow {
        assert_eq!(s.await.unwrap().status, 201);
    }
    h.metrics().await
}

#[test]
fn names_are_extracted_as_families() {
    let got = referenced(
        r#"histogram_quantile(0.99, sum by (le) (rate(payroute_overhead_seconds_bucket[5m])))
           / payroute_http_requests_total{route="x"} + xpayroute_no + payroute_outbox_pending"#,
    );
    let want: BTreeSet<String> = [
        "payroute_overhead_seconds",
        "payroute_http_requests_total",
        "payroute_outbox_pending",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    // Started on the standard rules (with the fast reconciler), then given the limited
    // channel, which needs the harness's sandbox address.
    let h = Harness::start_with(false, &format!("{}{FAST}", support::RULES), "").await;
    let limited = support::wechat_direct(
        &h.upstream,
        "limited_wechat",
        "1900000109",
        "wx2421b1c4370ec43b",
        "0C0C0C0C",
        "m1001_apiclient_key.pem",
    )
    .with("limit", "{ rate: 5/s, burst: 1 }")
    .with("timeout", "2s")
    .to_string();
    h.reload_with(RULES, &limited).await;

    // A paid payment: route decision, channel calls, fee, notification, shop webhook.
    h.paid("m_4004", "dash-paid", "wechat_native", 1999).await;
    h.receiver.event("payment.succeeded", "dash-paid").await;

    // A paid payment whose notification is lost: the reconciler finds it.
    h.faults(json!({ "drop_notifications": true })).await;
    let r = h
        .create(&payment(
            "m_4004",
            "dash-reconciled",
            "wechat_native",
            500,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(h.pay("dash-reconciled").await.status, 200);
    // Every action's series is there from the start (at 0): wait for one that counted.
    wait_until("the reconciler to act", || async {
        h.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("payroute_reconcile_actions_total{") && !l.ends_with(" 0"))
    })
    .await;

    // A burst on a channel limited to 5/s: refused attempts are retried (nothing was sent)
    // until the channel's retry budget is spent, then the fallback takes the payment.
    let h = Arc::new(h);
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                h.create(&payment(
                    "m_1001",
                    &format!("dash-burst-{i}"),
                    "wechat_native",
                    100,
                    json!({}),
                ))
                .await
            })
        })
        .collect();
    for b in burst {
        let r = b.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
    }

    // A skip series is born with its first skip (its labels name the rule and channel that
    // skipped): the burst's refused attempts are that, passed over for reason limit.
    let text = h.metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("payroute_route_skipped_total{")
                && l.contains(r#"channel="limited_wechat""#)
                && l.contains(r#"reason="limit""#)),
        "the burst's refused attempts are counted as skipped:\n{text}"
    );

    // Inbound calls past the merchant's limit (60, then 1/h): 429.
    let mut limited_at = None;
    for i in 0..100 {
        let r = h.get_payment("m_2002", "dash-none", false).await;
        if r.status == 429 {
            limited_at = Some(i);
            break;
        }
    }
    assert!(limited_at.is_some(), "the per-merchant limit answers 429");

    let mut live = exported(&h.metrics().await);
    live.extend(exported(&shedding_metrics().await));
    let mut wanted = referenced(DASHBOARD);
    let from_dashboard = wanted.len();
    let from_alerts = referenced(ALERTS);
    assert!(
        from_dashboard >= 15,
        "the dashboard queries {from_dashboard} payroute metrics: is the file right?"
    );
    assert!(
        from_alerts.len() >= 8,
        "the alerts query {} payroute metrics: is the file right?",
        from_alerts.len()
    );
    wanted.extend(from_alerts);
    let missing: Vec<&String> = wanted.iter().filter(|n| !live.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "queried but not in /metrics: {missing:?}\nexported: {live:?}"
    );
    println!("{} payroute metrics queried, all exported", wanted.len());
}

/// Labelled counters start at 0 for every label value known in advance (the config's
/// channels, limits and shops, and the fixed outcomes), at start and after a reload that adds
/// some: a panel shows 0 instead of "No data", and a rate() alert sees the first event
/// (a series born with its first event has no earlier sample to rise from).
#[tokio::test]
async fn a_fresh_metrics_page_has_every_known_series_at_zero() {
    let rules = format!(
        "{}limits:\n  - {{ name: per-merchant, key: merchant, rate: 100/s, burst: 100 }}\n",
        support::RULES
    );
    let h = Harness::start_with(false, &rules, "").await;
    let fresh = h.metrics().await;
    let zero = |text: &str, series: String| {
        assert_eq!(
            support::metric(text, &series),
            Some(0.0),
            "{series} is not at 0 on a fresh /metrics:\n{text}"
        );
    };
    let channels = [
        "platform_wechat",
        "m1001_wechat",
        "m2002_wechat",
        "m3003_wechat",
    ];
    // The five the issue names.
    zero(
        &fresh,
        r#"payroute_rate_limited_total{limit="per-merchant"}"#.into(),
    );
    for listener in ["api", "admin"] {
        for reason in ["overloaded", "timed_out", "failed"] {
            zero(
                &fresh,
                format!(
                    r#"payroute_http_refused_total{{listener="{listener}",reason="{reason}"}}"#
                ),
            );
        }
    }
    for channel in channels {
        for result in [
            "verified",
            "bad_signature",
            "unknown_order",
            "wrong_account",
            "store_error",
        ] {
            zero(
                &fresh,
                format!(
                    r#"payroute_notifications_received_total{{channel="{channel}",result="{result}"}}"#
                ),
            );
        }
        zero(
            &fresh,
            format!(r#"payroute_fees_estimated_total{{channel="{channel}"}}"#),
        );
    }
    zero(
        &fresh,
        r#"payroute_notifications_received_total{channel="unknown",result="unknown_channel"}"#
            .into(),
    );
    for action in [
        "query",
        "close",
        "resolved",
        "busy",
        "breaker_open",
        "error",
    ] {
        zero(
            &fresh,
            format!(r#"payroute_reconcile_actions_total{{action="{action}"}}"#),
        );
    }
    // The other labelled counters (ARCHITECTURE.md, "Metrics").
    for channel in channels {
        zero(
            &fresh,
            format!(
                r#"payroute_channel_requests_total{{channel="{channel}",operation="create",result="ok"}}"#
            ),
        );
        zero(
            &fresh,
            format!(
                r#"payroute_channel_requests_total{{channel="{channel}",operation="query",result="transport"}}"#
            ),
        );
        zero(
            &fresh,
            format!(
                r#"payroute_payments_total{{channel="{channel}",method="wechat_native",outcome="succeeded"}}"#
            ),
        );
        zero(
            &fresh,
            format!(r#"payroute_refunds_total{{channel="{channel}",outcome="abnormal"}}"#),
        );
        zero(
            &fresh,
            format!(r#"payroute_account_refusals_total{{channel="{channel}",operation="refund"}}"#),
        );
        zero(
            &fresh,
            format!(r#"payroute_retry_budget_exhausted_total{{channel="{channel}"}}"#),
        );
        zero(
            &fresh,
            format!(r#"payroute_circuit_open{{channel="{channel}"}}"#),
        );
    }
    for shop in ["test-shop", "other-shop"] {
        for result in ["delivered", "failed", "dead"] {
            zero(
                &fresh,
                format!(r#"payroute_webhook_deliveries_total{{result="{result}",shop="{shop}"}}"#),
            );
        }
    }
    zero(
        &fresh,
        r#"payroute_http_requests_total{route="create_payment",status_class="5xx"}"#.into(),
    );
    zero(
        &fresh,
        r#"payroute_config_reloads_total{result="error"}"#.into(),
    );
    // A route decision is a rule and the channel it chose first (its to, each of a split).
    for (rule, channel) in [
        ("m1001-own-wechat", "m1001_wechat"),
        ("m2002-wechat-canary", "m2002_wechat"),
        ("m2002-wechat-canary", "platform_wechat"),
        ("default", "platform_wechat"),
    ] {
        zero(
            &fresh,
            format!(r#"payroute_route_decisions_total{{channel="{channel}",rule="{rule}"}}"#),
        );
    }
    // A fallback is no decision, and a wechat channel has no alipay series: the label sets
    // stay what can happen.
    assert_eq!(
        support::metric(
            &fresh,
            r#"payroute_route_decisions_total{channel="platform_wechat",rule="m1001-own-wechat"}"#
        ),
        None
    );
    assert_eq!(
        support::metric(
            &fresh,
            r#"payroute_payments_total{channel="platform_wechat",method="alipay_page",outcome="succeeded"}"#
        ),
        None
    );

    // A reload that adds a channel (with its own limit) and a limit: theirs start at 0 too.
    let added = support::wechat_direct(
        &h.upstream,
        "limited_wechat",
        "1900000109",
        "wx2421b1c4370ec43b",
        "0C0C0C0C",
        "m1001_apiclient_key.pem",
    )
    .with("limit", "{ rate: 5/s, burst: 1 }")
    .to_string();
    let rules = format!("{rules}  - {{ name: per-shop, key: shop, rate: 100/s, burst: 100 }}\n");
    h.reload_with(&rules, &added).await;
    let reloaded = h.metrics().await;
    zero(
        &reloaded,
        r#"payroute_rate_limited_total{limit="per-shop"}"#.into(),
    );
    zero(
        &reloaded,
        r#"payroute_rate_limited_total{limit="channel:limited_wechat"}"#.into(),
    );
    zero(
        &reloaded,
        r#"payroute_notifications_received_total{channel="limited_wechat",result="verified"}"#
            .into(),
    );
    zero(
        &reloaded,
        r#"payroute_fees_estimated_total{channel="limited_wechat"}"#.into(),
    );
    zero(
        &reloaded,
        r#"payroute_channel_requests_total{channel="limited_wechat",operation="create",result="nothing_sent"}"#
            .into(),
    );
    h.shutdown().await;
}
