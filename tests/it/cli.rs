//! The `payroute` binary: check and explain as ops use them.

use crate::support;

use std::process::Command;

use serde_json::json;
use support::{payment, within, Harness};

fn payroute() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_payroute"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn shipped() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/payroute.yaml")).unwrap()
}

/// Runs `payroute check` on a config text: exit code and stderr.
fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payroute.yaml");
    std::fs::write(&path, text).unwrap();
    let out = payroute()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = payroute()
        .args(["check", "--config", "config/payroute.yaml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("5 rule(s)"), "{stdout}");
}

/// `payroute check | head -1`: a reader that closes the pipe early is not a crash (Rust
/// ignores SIGPIPE, so a plain `println!` panicked on the broken pipe).
#[test]
fn check_into_a_closed_pipe_does_not_panic() {
    use std::process::Stdio;
    let mut child = payroute()
        .args(["check", "--config", "config/payroute.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end goes away before the answer is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

/// deploy/compose's config as its container sees it (the sandbox keys under `sandbox/`):
/// its direct channels name their merchants and its ISV merchants their Alipay user ids.
#[test]
fn check_accepts_the_compose_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::copy(
        format!("{root}/deploy/compose/payroute.yaml"),
        dir.path().join("payroute.yaml"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sandbox")).unwrap();
    for key in std::fs::read_dir(format!("{root}/config/sandbox")).unwrap() {
        let key = key.unwrap().path();
        std::fs::copy(
            &key,
            dir.path().join("sandbox").join(key.file_name().unwrap()),
        )
        .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_payroute"))
        .current_dir(dir.path())
        .args(["check", "--config", "payroute.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_every_error_with_rule_key_and_position() {
    let shipped = shipped();
    let broken = shipped
        .replace("to: m1001_wechat", "to: m1001_wechatt")
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 0")
        .replace(
            "when: { merchant: m_3003, amount: { max: 100 } }",
            "when: { merchant: m_3003, method: [wechat_native, alipay_page] }",
        )
        .replace("- name: promotions-on-platform", "- name: m1001-own-wechat");
    let (code, err) = check(&broken);
    assert_eq!(code, Some(1), "{err}");
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let last_line_of = |needle: &str| {
        broken
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .last()
            .unwrap()
            .0
            + 1
    };
    for (expected, line) in [
        (
            r#"rules[0] "m1001-own-wechat": to: unknown channel "m1001_wechatt""#,
            line_of("to: m1001_wechatt"),
        ),
        (
            r#"rules[1] "m2002-wechat-canary": split weights sum to 0"#,
            line_of("split: ["),
        ),
        (
            r#"rules[2] "m3003-small-amounts-first": to: channel "m3003_wechat" (wechat) cannot serve method alipay_page"#,
            line_of("to: m3003_wechat"),
        ),
        (
            r#"rules[3] "m1001-own-wechat": duplicate rule name"#,
            last_line_of("- name: m1001-own-wechat"),
        ),
    ] {
        let found = err
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("missing {expected:?} in:\n{err}"));
        assert!(
            found.contains(&format!(":{line}:")),
            "{found:?} should point at line {line}"
        );
    }
    assert!(err.contains("4 error(s)"), "{err}");
}

#[test]
fn check_rejects_unknown_keys_and_missing_sub_merchants() {
    let shipped = shipped();
    let typo = shipped.replace("fee_rate: 0.006", "fee_rte: 0.006");
    let (code, err) = check(&typo);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown field `fee_rte`"), "{err}");
    let line = typo.lines().position(|l| l.contains("fee_rte")).unwrap() + 1;
    assert!(err.contains(&format!(":{line}:")), "{err}");

    let no_sub: String = shipped
        .lines()
        .filter(|l| !l.starts_with("  m_4004:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (code, err) = check(&no_sub);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(r#"channel "platform_wechat" is partner mode but merchant(s) m_4004 have no wechat_sub_mchid"#), "{err}");
    assert!(err.contains(r#"channel "platform_alipay" is isv mode but merchant(s) m_4004 have no alipay_app_auth_token"#), "{err}");
}

/// Issue 15 item 3 on the shipped config: the promotions rule (no `merchant` condition)
/// pointed at m_2002's own account, m_3003 added to m_2002's canary onto it, and two
/// merchants sharing an Alipay account and a token. Each is named with its rule and key (or
/// both merchants) at its line; the token itself never appears. Before: `ok`.
#[test]
fn check_refuses_routes_to_another_merchants_own_account_and_shared_ids() {
    let shipped = shipped();
    let m3003 = r#"  m_3003: { wechat_sub_mchid: "1900000309", alipay_app_auth_token: 202611BB_m3003_TEST_ONLY, alipay_seller_id: "2088000000003003" }"#;
    let broken = shipped
        .replace("      to: platform_wechat\n", "      to: m2002_wechat\n")
        .replace(
            "when: { merchant: m_2002, family: wechat }",
            "when: { merchant: [m_2002, m_3003], family: wechat }",
        )
        .replace(
            m3003,
            &m3003
                .replace("2088000000003003", "2088000000002002")
                .replace("202611BB_m3003_TEST_ONLY", "202611BB_m2002_TEST_ONLY"),
        );
    let (code, err) = check(&broken);
    assert_eq!(code, Some(1), "{err}");
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (expected, line) in [
        (
            r#"rules[3] "promotions-on-platform": to: channel "m2002_wechat" is the own account of merchant(s) m_2002 (mode direct) but it has no when.merchant (nor when.shop), so any merchant's payment can reach it; add when.merchant: [m_2002]"#,
            line_of("      to: m2002_wechat"),
        ),
        (
            r#"rules[1] "m2002-wechat-canary": split[0].to: channel "m2002_wechat" is the own account of merchant(s) m_2002 (mode direct) but it sends payments of merchant(s) m_3003 there"#,
            line_of("split: [ { to: m2002_wechat"),
        ),
        (
            r#"merchants.m_3003.alipay_seller_id: "2088000000002002" is also merchant m_2002's alipay_seller_id"#,
            line_of("  m_3003:"),
        ),
        (
            "merchants.m_3003.alipay_app_auth_token: the same token as merchant m_2002's alipay_app_auth_token",
            line_of("  m_3003:"),
        ),
    ] {
        let found = err
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("missing {expected:?} in:\n{err}"));
        assert!(
            found.contains(&format!(":{line}:")),
            "{found:?} should point at line {line}"
        );
    }
    assert!(err.contains("4 error(s)"), "{err}");
    assert!(!err.contains("202611BB"), "a token leaked:\n{err}");
}

#[test]
fn check_rejects_methods_a_channel_cannot_serve() {
    let shipped = shipped();
    // An Alipay method sent to a WeChat channel, and a WeChat method to an Alipay channel.
    let crossed = shipped
        .replace(
            "method: [wechat_jsapi, wechat_native] }",
            "method: [wechat_jsapi, alipay_wap] }",
        )
        .replace(
            "method: [alipay_page, alipay_wap, alipay_precreate] }",
            "method: [alipay_page, wechat_h5] }",
        );
    let (code, err) = check(&crossed);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(r#"rules[0] "m1001-own-wechat": to: channel "m1001_wechat" (wechat) cannot serve method alipay_wap"#), "{err}");
    assert!(err.contains(r#"rules[0] "m1001-own-wechat": fallback[0]: channel "platform_wechat" (wechat) cannot serve method alipay_wap"#), "{err}");
    assert!(err.contains(r#"rules[4] "m2002-alipay-canary": split[0].to: channel "m2002_alipay" (alipay) cannot serve method wechat_h5"#), "{err}");
}

#[test]
fn explain_prints_the_decision_and_why() {
    let out = payroute()
        .args([
            "explain",
            "--config",
            "config/payroute.yaml",
            "--merchant",
            "m_3003",
            "--method",
            "wechat_native",
            "--amount",
            "250",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(r#"skipped "m3003-small-amounts-first": amount 250 above max 100"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"→ channel "platform_wechat" by the family default"#),
        "{stdout}"
    );
    // The file alone cannot know the live state: explain says which parts it assumed.
    for unknown in ["health window", "drain", "quota", "circuit"] {
        assert!(
            stdout.contains("not known here") && stdout.contains(unknown),
            "{unknown}: {stdout}"
        );
    }
    assert!(
        stdout.contains(r#"candidate "platform_wechat": chosen (rule)"#),
        "{stdout}"
    );
}

/// `payroute check --config <path>` as a child process, within the test deadline.
async fn check_file(path: &std::path::Path) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_payroute"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "--config"])
        .arg(path)
        .kill_on_drop(true)
        .output();
    within("payroute check", out).await.unwrap()
}

#[tokio::test]
async fn check_warns_when_a_changed_identity_strands_open_orders() {
    let h = Harness::start().await;
    h.create(&payment(
        "m_4004",
        "cli-st-1",
        "wechat_native",
        1999,
        json!({}),
    ))
    .await
    .expect_created_on("platform_wechat");
    // The config as it is: the order's account is held, nothing to say.
    let out = check_file(&h.config_path).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");

    // The edit ops are about to deploy: m_4004's sub_mchid changes under an open order.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let edited = h.dir.path().join("edited.yaml");
    std::fs::write(
        &edited,
        text.replace(
            r#"m_4004: { wechat_sub_mchid: "1900000409""#,
            r#"m_4004: { wechat_sub_mchid: "1900000499""#,
        ),
    )
    .unwrap();
    let out = check_file(&edited).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "a warning is not an error: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": ok"),
        "{err}"
    );
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning in:\n{err}"));
    for part in [
        r#"channel "platform_wechat": 1 open payment(s) and 0 open refund(s)"#,
        "sub_mchid 1900000409",
        "restore that identity until those orders settle",
    ] {
        assert!(warning.contains(part), "{part:?} not in {warning}");
    }

    // No store file yet (a first deploy): nothing to say, nothing created.
    let fresh = h.dir.path().join("fresh.yaml");
    let fresh_db = h.dir.path().join("fresh.db");
    std::fs::write(
        &fresh,
        text.replace(
            &h.db_path().display().to_string(),
            &fresh_db.display().to_string(),
        ),
    )
    .unwrap();
    let out = check_file(&fresh).await;
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert!(!fresh_db.exists(), "check must not create the store");
    h.shutdown().await;
}

/// The shipped config with `store:` replaced.
fn with_store(store: &str) -> String {
    let shipped = shipped();
    let line = shipped
        .lines()
        .find(|l| l.starts_with("store:"))
        .expect("the shipped config has a store line")
        .to_string();
    shipped.replace(&line, store)
}

#[test]
fn check_accepts_a_postgres_store_without_connecting() {
    // Nothing listens on port 1: check must not try.
    let text = with_store(
        "store: { kind: postgres, url: \"postgres://app:hunter2-secret@127.0.0.1:1/pay?sslmode=verify-full\", pool_size: 4, schema: pay_a }",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payroute.yaml");
    std::fs::write(&path, &text).unwrap();
    let out = payroute()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}{stderr}"
    );
    // The defaults (pool_size 16, schema payroute) with the url from the environment.
    let text = with_store("store: { kind: postgres, url: env:PAYROUTE_TEST_CHECK_PG_URL }");
    std::fs::write(&path, &text).unwrap();
    let out = payroute()
        .env(
            "PAYROUTE_TEST_CHECK_PG_URL",
            "postgres://app:pw@127.0.0.1:1/pay",
        )
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_names_the_key_of_a_bad_postgres_store_and_never_its_password() {
    let url = "postgres://app:hunter2-secret@db.example/pay";
    for (store, key, says) in [
        (
            format!("store: {{ kind: postgres, url: \"{url}\", pool_size: 0 }}"),
            "store.pool_size",
            "between 1 and",
        ),
        (
            format!("store: {{ kind: postgres, url: \"{url}\", schema: Pay-Route }}"),
            "store.schema",
            "a-z",
        ),
        (
            "store: { kind: postgres, pool_size: 4 }".to_string(),
            "store.url",
            "required",
        ),
        (
            format!("store: {{ kind: postgres, url: \"{url}\", path: data/x.db }}"),
            "store.path",
            "not a key of kind postgres",
        ),
        (
            format!("store: {{ kind: postgres, url: \"{url}?sslmode=verify-everything\" }}"),
            "store.url",
            "sslmode",
        ),
        (
            format!("store: {{ kind: postgres, url: \"{url}\", lease: 500ms }}"),
            "store.lease",
            "at least 1s",
        ),
        (
            // The shipped test config's channels time out after 5s.
            format!("store: {{ kind: postgres, url: \"{url}\", lease: 8s }}"),
            "store.lease",
            "must be at least 5s longer than",
        ),
        (
            "store: { kind: sqlite, path: data/x.db, lease: 3m }".to_string(),
            "store.lease",
            "not a key of kind sqlite",
        ),
        (
            format!("store: {{ kind: postgres, url: \"{url}\", poolsize: 4 }}"),
            "poolsize",
            "unknown field",
        ),
        (
            "store: { kind: postgres, url: env:PAYROUTE_TEST_UNSET_PG_URL }".to_string(),
            "store.url",
            "PAYROUTE_TEST_UNSET_PG_URL",
        ),
        (
            "store: { kind: sqlite, schema: x }".to_string(),
            "store.schema",
            "not a key of kind sqlite",
        ),
        (
            format!("store: {{ kind: mysql, url: \"{url}\" }}"),
            "store.kind",
            "not sqlite or postgres",
        ),
    ] {
        let (code, err) = check(&with_store(&store));
        assert_eq!(code, Some(1), "{store}: {err}");
        assert!(err.contains(key) && err.contains(says), "{store}: {err}");
        assert!(
            !err.contains("hunter2"),
            "{store}: the password leaked: {err}"
        );
    }
}

#[tokio::test]
async fn json_logs_carry_one_line_per_request_with_its_id_and_no_colour() {
    let mut h = support::Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        format!("{text}log: {{ format: json, level: info }}\n"),
    )
    .unwrap();
    let mut binary = support::Binary::take_over(&mut h).await;
    let auth = format!("Bearer {}", support::SHOP_KEY);
    let body = support::payment(
        "m_1001",
        "log-1",
        "wechat_native",
        100,
        serde_json::json!({}),
    );
    let reply = h
        .send(
            http::Method::POST,
            &format!("{}/v1/payments", h.api),
            &[("authorization", &auth), ("x-request-id", "shop-req-42")],
            &body.to_string(),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.headers["x-request-id"], "shop-req-42");
    // The channel saw the same id.
    let ids = h
        .send(
            http::Method::GET,
            &format!("{}/sandbox/request_ids", h.sandbox_url),
            &[],
            "",
        )
        .await;
    assert!(
        ids.body
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("shop-req-42")),
        "{}",
        ids.text
    );
    // A request without an id gets one.
    let other = h.get_payment("m_1001", "log-1", false).await;
    let generated = other.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 16);

    binary.signal("TERM");
    binary.exited().await;
    let logs = binary.logs();
    assert!(!logs.contains('\u{1b}'), "colour codes in a log file");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {logs}"))
            .clone()
    };
    let create = access("shop-req-42");
    assert_eq!(create["route"], "create_payment");
    assert_eq!(create["rule"], "m1001-own-wechat");
    assert_eq!(create["channel"], "m1001_wechat");
    assert_eq!(create["outcome"], "pending");
    assert_eq!(create["status"], 201);
    assert!(create["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(access(&generated)["route"], "get_payment");
    assert!(!logs.contains(support::SHOP_KEY), "a secret in the log");
}

/// `payroute payments export` on `h`'s config: stdout, or the failure's stderr.
fn export(h: &Harness, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_payroute"))
        .args(["payments", "export", "--config"])
        .arg(&h.config_path)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_exports_page_by_page_as_csv_and_json_lines() {
    use payroute::store::Ledger;
    let h = Harness::start().await;
    h.create(&payment(
        "m_1001",
        "exp-1",
        "wechat_native",
        1999,
        json!({}),
    ))
    .await
    .expect_created_on("m1001_wechat");
    let r = h
        .create(&payment(
            "m_2002",
            "-cmd-2",
            "wechat_native",
            500,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // More than a page (1,000), all created in the same millisecond: paging must neither
    // repeat nor skip ties.
    let store = payroute::store::sqlite::SqliteStore::open(&h.db_path())
        .await
        .unwrap();
    let template = store.get_payment("m_1001", "exp-1").await.unwrap().unwrap();
    for i in 0..2_100 {
        let mut p = template.clone();
        p.payment_id = format!("pay_seed_{i:05}");
        p.out_trade_no = format!("SEED-{i}");
        p.merchant_id = "m_3003".into();
        p.created_at = 1_700_000_000_000;
        store.insert_payment(&p).await.unwrap();
    }
    drop(store);

    let csv = export(&h, &["--since", "2000-01-01T00:00:00Z"]).unwrap();
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("payment_id,merchant_id,shop_id,out_trade_no,amount"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2_102);
    let ids: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.split(',').next().unwrap()).collect();
    assert_eq!(ids.len(), 2_102, "a payment repeated across pages");
    assert!(
        rows.iter()
            .any(|r| r
                .contains(",exp-1,1999,CNY,wechat_native,pending,m1001_wechat,m1001-own-wechat,")),
        "{csv:.600}"
    );
    // A cell a spreadsheet would run is defused.
    assert!(csv.contains(",\"'-cmd-2\","), "{csv:.300}");

    let jsonl = export(
        &h,
        &[
            "--since",
            "2023-11-14T00:00:00Z",
            "--until",
            "2023-11-15T00:00:00Z",
            "--merchant",
            "m_3003",
            "--format",
            "jsonl",
        ],
    )
    .unwrap();
    let objects: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2_100);
    assert!(objects
        .iter()
        .all(|o| o["merchant_id"] == "m_3003" && o["amount"] == 1999));

    // The admin API gives the same file.
    let r = h
        .admin_get(
            "/admin/payments/export?since=2000-01-01T00:00:00Z&merchant_id=m_1001&format=csv",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(r.text.lines().count(), 2);

    let err = export(&h, &["--since", "yesterday"]).unwrap_err();
    assert!(
        err.contains("--since: \"yesterday\" is not an RFC 3339 time"),
        "{err}"
    );
    h.shutdown().await;
}

/// `payroute serve` on the shipped config with its listeners and store replaced: exit code
/// and stderr. Fails the test if the proxy is still serving after 60 s.
fn serve_until_it_exits(listen: &str, store: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payroute.yaml");
    let text = with_store(store)
        .replacen("listen: 127.0.0.1:8080", &format!("listen: {listen}"), 1)
        .replacen(
            "admin_listen: 127.0.0.1:9901",
            "admin_listen: 127.0.0.1:0",
            1,
        )
        .replacen("listen: 127.0.0.1:8090", "listen: 127.0.0.1:0", 1);
    std::fs::write(&path, text).unwrap();
    let mut child = payroute()
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("payroute serve started instead of failing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A start that fails says which part failed: a port already taken names the key, the
/// address and the system's reason, and is not mistaken for a store that cannot open (nor
/// the other way round). Both exit 1.
#[test]
fn serve_tells_a_taken_port_from_a_store_that_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let good_store = format!(
        "store: {{ kind: sqlite, path: \"{}\" }}",
        dir.path().join("payroute.db").display()
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = serve_until_it_exits(&addr.to_string(), &good_store);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("server.listen: cannot listen on {addr}: ")),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
    assert!(!err.contains("store"), "{err}");
    drop(taken);

    // A file where the store's directory should be: the ports are free, the store is not.
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let bad_store = format!(
        "store: {{ kind: sqlite, path: \"{}\" }}",
        blocker.join("payroute.db").display()
    );
    let (code, err) = serve_until_it_exits("127.0.0.1:0", &bad_store);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("store"), "{err}");
    assert!(!err.contains("cannot listen"), "{err}");
}
