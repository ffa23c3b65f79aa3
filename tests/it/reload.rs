//! Live reload under load: good files swap in, broken files change nothing, and no request
//! fails either way.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use support::{payment, wait_until, Binary, Harness};

const MOVED_RULES: &str = r#"
  rules:
    - name: m1001-now-on-platform
      when: { merchant: [m_1001] }
      to: platform_wechat
  default: { wechat: platform_wechat }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_concurrent_requests_fail_nothing() {
    let h = Arc::new(Harness::start().await);
    let version0 = h.admin_get("/admin/config").await.body["version"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (h, stop, ok, failed) = (h.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 2_000 {
                let r = h
                    .create(&payment(
                        "m_1001",
                        &format!("load-{w}-{i}"),
                        "wechat_native",
                        100,
                        json!({}),
                    ))
                    .await;
                if r.status == 201
                    && (r.body["channel"] == "m1001_wechat"
                        || r.body["channel"] == "platform_wechat")
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("failed: {} {}", r.status, r.text);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let wait_for_traffic = |n: usize| {
        let ok = ok.clone();
        support::wait_until("requests to succeed", move || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) >= n }
        })
    };
    wait_for_traffic(20).await;

    // A good file: swapped in.
    h.write_config(MOVED_RULES, "");
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let version1 = r.body["version"].as_str().unwrap().to_string();
    assert_ne!(version1, version0);
    let before = ok.load(Ordering::Relaxed);
    wait_for_traffic(before + 20).await;

    // A broken file: refused with line and column, the good config keeps serving.
    std::fs::write(
        &h.config_path,
        "server:\n  listen: 127.0.0.1:0\n  admin_listen: [oops\n",
    )
    .unwrap();
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.body["errors"][0].as_str().unwrap().contains(":3:"),
        "{}",
        r.text
    );
    let mut bad_rules = support::RULES.replace("to: m3003_wechat", "to: m3003_wechatt");
    bad_rules.push('\n');
    h.write_config(&bad_rules, "");
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 422);
    let msg = r.body["errors"][0].as_str().unwrap();
    assert!(
        msg.contains(
            r#"rules[2] "m3003-small-amounts-first": to: unknown channel "m3003_wechatt""#
        ),
        "{msg}"
    );
    let before = ok.load(Ordering::Relaxed);
    wait_for_traffic(before + 20).await;
    assert_eq!(
        h.admin_get("/admin/config").await.body["version"],
        version1.as_str()
    );

    // The file watcher picks up a good file replaced by rename, with no explicit reload.
    h.write_config(support::RULES, "");
    support::wait_until("the watcher to reload the original rules", || async {
        h.admin_get("/admin/config").await.body["version"] == version0.as_str()
    })
    .await;

    // A 10,000-rule file swaps in (and out again) while creates run. Half the rules are
    // m_1001's own, half m_2002's, each to its own account, none matching these creates: each
    // one scans past them.
    let mut bulk = String::from("\n  rules:\n");
    for i in 0..10_000 {
        let (merchant, to) = if i % 2 == 0 {
            ("m_1001", "m1001_wechat")
        } else {
            ("m_2002", "m2002_wechat")
        };
        bulk.push_str(&format!(
            "    - name: bulk-{i}\n      when: {{ merchant: [{merchant}], amount: {{ min: {} }} }}\n      to: {to}\n",
            1_000_000 + i
        ));
    }
    bulk.push_str(support::RULES.trim_start_matches("\n  rules:\n"));
    for rules in [bulk.as_str(), support::RULES] {
        h.write_config(rules, "");
        let r = h.admin_post("/admin/reload", &json!({})).await;
        assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(500)]);
        let before = ok.load(Ordering::Relaxed);
        wait_for_traffic(before + 20).await;
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        support::within("a load worker to stop", w).await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) >= 60);

    let m = h.metrics().await;
    assert!(
        support::metric(&m, r#"payroute_config_reloads_total{result="error"}"#).unwrap() >= 2.0
    );
    assert!(
        support::metric(&m, r#"payroute_config_reloads_total{result="success"}"#).unwrap() >= 2.0
    );
    assert_eq!(
        support::metric(
            &m,
            &format!(r#"payroute_config_info{{version="{version0}"}}"#)
        ),
        Some(1.0)
    );
    assert!(
        support::metric(&m, "payroute_config_last_reload_success_timestamp_seconds").unwrap()
            > 1.7e9
    );
    if let Ok(h) = Arc::try_unwrap(h) {
        h.shutdown().await;
    }
}

/// The secrets in a config file: literal values under the keys that hold one, and for a
/// `file:` key, the key's lines (base64, without the PEM armour).
fn config_secrets(yaml: &str) -> Vec<String> {
    fn walk(key: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    walk(k.as_str().unwrap_or_default(), v, out);
                }
            }
            serde_yaml::Value::Sequence(items) => {
                for v in items {
                    walk(key, v, out);
                }
            }
            serde_yaml::Value::String(s)
                if [
                    "api_key",
                    "secret",
                    "token",
                    "apiv3_key",
                    "alipay_app_auth_token",
                    "private_key",
                    "password",
                ]
                .contains(&key) =>
            {
                match s.strip_prefix("file:") {
                    Some(path) => out.extend(
                        std::fs::read_to_string(path)
                            .unwrap_or_else(|e| panic!("{path}: {e}"))
                            .lines()
                            .filter(|l| !l.starts_with("-----") && l.len() > 16)
                            .map(str::to_string),
                    ),
                    None if s.starts_with("env:") => {}
                    None => out.push(s.clone()),
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_yaml::from_str(yaml).expect("the config"),
        &mut out,
    );
    out.sort();
    out.dedup();
    out
}

#[tokio::test]
async fn admin_api_needs_the_token_and_redacts_secrets() {
    let h = Harness::start().await;
    let r = h
        .send(
            http::Method::GET,
            &format!("{}/admin/config", h.admin),
            &[],
            "",
        )
        .await;
    r.expect_error(401, "unauthorized");
    assert_eq!(r.body["error"]["retryable"], false);
    let r = h
        .send(
            http::Method::POST,
            &format!("{}/admin/reload", h.admin),
            &[("authorization", "Bearer nope")],
            "",
        )
        .await;
    assert_eq!(r.status, 401);
    let r = h.admin_get("/admin/config").await;
    assert_eq!(r.status, 200);
    // Every literal secret the config file holds (shops' keys and webhook secrets, the admin
    // token, the merchants' Alipay tokens, the channels' APIv3 keys), and the contents of
    // every key file it names.
    let secrets = config_secrets(&std::fs::read_to_string(&h.config_path).unwrap());
    assert!(secrets.len() >= 15, "the config's secrets: {secrets:?}");
    for secret in secrets.iter().map(String::as_str).chain([
        support::SHOP_KEY,
        support::ADMIN_TOKEN,
        "BEGIN PRIVATE KEY",
    ]) {
        assert!(!r.text.contains(secret), "/admin/config leaks {secret}");
    }
    assert_eq!(r.body["config"]["shops"][0]["api_key"], "<redacted>");
    // file: references name where the key lives, not what it is.
    assert!(
        r.body["config"]["channels"]["platform_wechat"]["private_key"]
            .as_str()
            .unwrap()
            .starts_with("file:")
    );
    let r = h.admin_get("/admin/channels").await;
    assert_eq!(r.body["channels"].as_array().unwrap().len(), 4);
    assert!(!r.text.contains("PRIVATE"));

    let ex = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_h5", "amount": 5}),
        )
        .await;
    assert_eq!(ex.body["channel"], "platform_wechat");
    assert_eq!(ex.body["rule"], "default");
    assert!(ex.body["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("method wechat_h5 not in"));

    // The ledger.
    assert_eq!(
        h.create(&payment(
            "m_1001",
            "ledger-1",
            "wechat_native",
            100,
            json!({})
        ))
        .await
        .status,
        201
    );
    assert_eq!(
        h.create(&payment(
            "m_4004",
            "ledger-2",
            "wechat_native",
            200,
            json!({})
        ))
        .await
        .status,
        201
    );
    let l = h
        .admin_get("/admin/payments?merchant_id=m_1001&status=pending&limit=10")
        .await;
    assert_eq!(l.status, 200, "{}", l.text);
    let list = l.body["payments"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0]["out_trade_no"].as_str(),
            list[0]["shop_id"].as_str()
        ),
        (Some("ledger-1"), Some("test-shop"))
    );
    assert_eq!(
        h.admin_get("/admin/payments").await.body["payments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        h.admin_get("/admin/payments?since=2999-01-01T00:00:00Z")
            .await
            .body["payments"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    h.admin_get("/admin/payments?status=paid")
        .await
        .expect_error(400, "invalid_request");
    h.admin_get("/admin/nothing-here")
        .await
        .expect_error(404, "not_found");
    h.admin_post(
        "/admin/explain",
        &json!({"merchant_id": "m_1001", "method": "wechat_h5"}),
    )
    .await
    .expect_error(400, "invalid_amount");

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            h.send(http::Method::GET, &format!("{}{path}", h.admin), &[], "")
                .await
                .status,
            200
        );
    }
    h.shutdown().await;
}

/// Issue 15 item 3, the reproduction: ops point the promotions rule (no `merchant`
/// condition) at m_1001's own account, or give m_4004 m_1001's sub_mchid. Each reload is
/// refused naming the rule and key or both merchants, and the running config keeps sending
/// m_4004's promotions to the platform under m_4004's own sub_mchid. Before: both reloads
/// answered 200, and m_4004's next promotion was created on m_1001's account.
#[tokio::test]
async fn a_reload_that_sends_a_merchant_to_anothers_account_is_refused() {
    let h = Harness::start().await;
    let promotion = |no: &str| {
        payment(
            "m_4004",
            no,
            "wechat_native",
            100,
            json!({ "metadata": { "campaign": "double11" } }),
        )
    };
    h.create(&promotion("promo-1"))
        .await
        .expect_created_on("platform_wechat");
    let errors_before = reload_errors(&h).await;

    let onto_m1001 = support::RULES.replace(
        "to: platform_wechat\n  default",
        "to: m1001_wechat\n  default",
    );
    assert_ne!(onto_m1001, support::RULES);
    h.write_config(&onto_m1001, "");
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.text.contains(r#"rules[3] \"promotions-on-platform\": to: channel \"m1001_wechat\" is the own account of merchant(s) m_1001 (mode direct) but it has no when.merchant (nor when.shop), so any merchant's payment can reach it"#),
        "{}",
        r.text
    );

    h.write_config(support::RULES, "");
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let shared = text.replace(
        r#"m_4004: { wechat_sub_mchid: "1900000409""#,
        r#"m_4004: { wechat_sub_mchid: "1900000109""#,
    );
    assert_ne!(shared, text);
    support::write_atomically(&h.config_path, &shared);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.text.contains(r#"merchants.m_4004.wechat_sub_mchid: \"1900000109\" is also merchant m_1001's wechat_sub_mchid"#),
        "{}",
        r.text
    );
    assert!(reload_errors(&h).await >= errors_before + 2.0);

    // Still the config the proxy started with.
    h.create(&promotion("promo-2"))
        .await
        .expect_created_on("platform_wechat");
    assert_eq!(
        h.sandbox_orders("promo-2").await[0]["request"]["sub_mchid"],
        "1900000409"
    );
    h.shutdown().await;
}

/// Issue 16 item 4: a reload is judged against the store that runs, not the last file. A
/// reload to `store.lease: 2m` is accepted but waits for a restart (the running claims keep
/// 12 s); a later reload whose `webhooks.timeout: 30s` fits the file's 2 m but not the running
/// 12 s is refused, counted, and changes nothing. `/admin/config` shows the running store and
/// the lease change pending. Before: the second reload was judged against the loaded 2 m and
/// answered 200, and two instances sent one event 10 s apart.
#[tokio::test]
async fn a_reload_is_judged_against_the_running_lease_not_the_last_file() {
    let Some(h) = Harness::start_on_postgres_opts(support::PgOptions {
        store_extra: ", lease: 12s",
        ..support::PgOptions::default()
    })
    .await
    else {
        return;
    };
    let longer_lease = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("lease: 12s", "lease: 2m");
    support::write_atomically(&h.config_path, &longer_lease);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["pending_restart"], json!(["store"]), "{}", r.text);
    let accepted = r.body["version"].clone();
    let config = h.admin_get("/admin/config").await;
    assert_eq!(config.body["version"], accepted);
    assert_eq!(config.body["config"]["store"]["lease"], "2m");
    assert_eq!(
        config.body["running"]["store"]["lease"], "12s",
        "{}",
        config.text
    );
    assert_eq!(config.body["pending_restart"], json!(["store"]));

    let errors_before = reload_errors(&h).await;
    let slow_webhooks = format!("{longer_lease}\nwebhooks: {{ timeout: 30s }}\n");
    support::write_atomically(&h.config_path, &slow_webhooks);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.text.contains(
            "the running store.lease 12s must be at least 5s longer than webhooks.timeout (30s)"
        ),
        "{}",
        r.text
    );
    assert_eq!(reload_errors(&h).await, errors_before + 1.0);
    let config = h.admin_get("/admin/config").await;
    assert_eq!(config.body["version"], accepted, "still the accepted file");
    assert!(
        config.body["config"].get("webhooks").is_none(),
        "{}",
        config.text
    );
    h.shutdown().await;
}

async fn reload_errors(h: &Harness) -> f64 {
    h.metric("payroute_config_reloads_total", &[("result", "error")])
        .await
        .unwrap_or(0.0)
}

/// SIGHUP reloads the running binary even when the file did not change (the directory
/// watcher reloads only on a change, so only the signal can account for it); the binary
/// goes on serving.
#[tokio::test]
async fn sighup_reloads_the_binary() {
    let mut h = Harness::start().await;
    let binary = Binary::take_over(&mut h).await;
    let reloads = || async {
        h.metric("payroute_config_reloads_total", &[("result", "success")])
            .await
            .unwrap_or(0.0)
    };
    assert_eq!(reloads().await, 0.0, "no reload before the signal");
    binary.signal("HUP");
    wait_until("the binary to reload on SIGHUP", || async {
        reloads().await >= 1.0
    })
    .await;
    assert_eq!(h.ready().await, 200, "{}", binary.logs());
    h.create(&payment("m_1001", "hup-1", "wechat_native", 100, json!({})))
        .await
        .expect_created_on("m1001_wechat");
}
