//! The ops console (`/ui` on the admin port) in headless Chromium, driven over WebDriver
//! (chromedriver): it connects with the admin token, shows channels, rules and payments,
//! explains a payment (candidate by candidate), resends a dead event, and drains and resumes
//! a channel.
//!
//! Needs `chromium` and `chromium-driver` (Debian); without them this test says so loudly and
//! passes, unless `PAYROUTE_REQUIRE_BROWSER=1` (as `.ci/run` sets), where it fails.

use crate::support;

use std::process::{Child, Command, Stdio};

use http::Method;
use serde_json::{json, Value};
use support::{wait_until, Harness, ADMIN_TOKEN};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on its own port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session in headless Chromium.
struct Browser<'a> {
    h: &'a Harness,
    base: String,
}

impl Browser<'_> {
    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let r = self
            .h
            .send(
                method,
                &url,
                &[("content-type", "application/json")],
                &body.to_string(),
            )
            .await;
        assert!(r.status < 300, "WebDriver {path}: {} {}", r.status, r.text);
        r.body["value"].clone()
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(Method::POST, &format!("/element/{id}/click"), json!({}))
            .await;
    }

    /// The rendered text of the first element matching `css` ("" if none yet).
    async fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
        self.call(
            Method::POST,
            "/execute/sync",
            json!({"script": script, "args": [css]}),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits for a JavaScript dialog (`prompt`, `confirm`), types `text` into it if given,
    /// and accepts it — or dismisses it when `accept` is false.
    async fn answer_dialog(&self, text: Option<&str>, accept: bool) {
        let url = format!("{}/alert/text", self.base);
        wait_until("a dialog to open", || async {
            self.h.send(Method::GET, &url, &[], "").await.status == 200
        })
        .await;
        if let Some(text) = text {
            self.call(Method::POST, "/alert/text", json!({ "text": text }))
                .await;
        }
        let answer = if accept {
            "/alert/accept"
        } else {
            "/alert/dismiss"
        };
        self.call(Method::POST, answer, json!({})).await;
    }

    async fn shows(&self, css: &str, wanted: &str) {
        wait_until(&format!("{css} to show {wanted:?}"), || async {
            self.text(css).await.contains(wanted)
        })
        .await;
    }
}

async fn start_driver(h: &Harness) -> Option<Driver> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("PAYROUTE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "PAYROUTE_REQUIRE_BROWSER=1 but {CHROMEDRIVER} or {CHROMIUM} is missing"
        );
        // Past the harness's capture of `eprintln!`: a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the console's browser test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver); run with PAYROUTE_REQUIRE_BROWSER=1 ***\n"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = format!("{}/status", driver.url);
    wait_until("chromedriver to answer", || async {
        h.try_send(Method::GET, &status, &[], "")
            .await
            .is_ok_and(|r| r.body["value"]["ready"] == true)
    })
    .await;
    Some(driver)
}

/// A headless Chromium session on `driver`, at the console of `h`, connected with the token.
async fn console<'a>(h: &'a Harness, driver: &Driver) -> Browser<'a> {
    let session = h
        .send(
            Method::POST,
            &format!("{}/session", driver.url),
            &[("content-type", "application/json")],
            &json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            }}}})
            .to_string(),
        )
        .await;
    assert_eq!(session.status, 200, "{}", session.text);
    let id = session.body["value"]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let browser = Browser {
        h,
        base: format!("{}/session/{id}", driver.url),
    };
    browser
        .call(
            Method::POST,
            "/url",
            json!({"url": format!("{}/ui", h.admin)}),
        )
        .await;
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#connect").await;
    browser.shows("#status", "connected").await;
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_drains_and_resumes_a_channel() {
    let h = Harness::start().await;
    let Some(driver) = start_driver(&h).await else {
        return;
    };
    let browser = console(&h, &driver).await;
    let row = r#"#channels tr[data-channel="m1001_wechat"]"#;
    browser.shows(row, "m1001_wechat").await;
    let drained = || async {
        let r = h.admin_get("/admin/channels").await;
        r.body["channels"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "m1001_wechat"))
            .map(|c| c["drained"].clone())
            .unwrap_or_else(|| panic!("no m1001_wechat: {}", r.text))
    };

    // Asked for a reason, then to confirm: declining the confirmation drains nothing.
    browser.click(&format!("{row} button.drain")).await;
    browser.answer_dialog(Some("not this one"), true).await;
    browser.answer_dialog(None, false).await;
    assert_eq!(drained().await, Value::Null);

    browser.type_into("#operator", "ops-ui").await;
    browser.click(&format!("{row} button.drain")).await;
    browser
        .answer_dialog(Some("provider incident via console"), true)
        .await;
    browser.answer_dialog(None, true).await;
    browser.shows(row, "drained since").await;
    browser.shows(row, "provider incident via console").await;
    let d = drained().await;
    assert_eq!(d["reason"], "provider incident via console", "{d}");
    assert_eq!(d["by"], "ops-ui", "the operator the console names");
    // The other channels stay as they were.
    browser
        .shows(r#"#channels tr[data-channel="platform_wechat"]"#, "Drain")
        .await;

    browser.click(&format!("{row} button.resume")).await;
    browser.answer_dialog(None, true).await;
    browser.shows(&format!("{row} button.drain"), "Drain").await;
    assert_eq!(drained().await, Value::Null);

    browser.call(Method::DELETE, "", json!({})).await;
    drop(driver);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_explains_a_payment_and_resends_a_dead_event() {
    let h = Harness::start_with(
        false,
        &format!(
            "{}webhooks: {{ schedule: [100ms, 100ms] }}\n",
            support::RULES
        ),
        "",
    )
    .await;
    // A paid order whose shop is down: its event goes dead after the short schedule.
    h.receiver.answer_with(500);
    h.paid("m_1001", "ui-1", "wechat_native", 1999).await;
    wait_until("the event to be dead", || async {
        h.admin_get("/admin/events?status=dead").await.body["events"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    })
    .await;

    let Some(driver) = start_driver(&h).await else {
        return;
    };
    let browser = console(&h, &driver).await;
    browser.shows("#channels", "m1001_wechat").await;
    browser.shows("#rules", "m1001-own-wechat").await;
    browser.shows("#payments", "ui-1").await;
    browser.shows("#payments", "succeeded").await;

    browser.type_into("#explain-merchant", "m_1001").await;
    browser.click("#explain-go").await;
    browser.shows("#explain-result", "m1001-own-wechat").await;
    browser.shows("#explain-result", "m1001_wechat").await;

    h.receiver.answer_with(200);
    browser.shows("#events", "payment.succeeded").await;
    browser.click("#events button.resend").await;
    browser.shows("#events", "resent").await;
    h.receiver.event("payment.succeeded", "ui-1").await;

    browser.call(Method::DELETE, "", json!({})).await;
    drop(driver);
    h.shutdown().await;
}

/// m_1001's WeChat payments go to `platform_quota` (the platform's partner account under
/// another name, single payments up to 500 yuan), then its own account, then the platform.
const QUOTA_RULES: &str = r#"
  rules:
    - name: m1001-quota-first
      when: { merchant: m_1001, family: wechat }
      to: platform_quota
      fallback: [m1001_wechat, platform_wechat]
  default: { wechat: platform_wechat }
"#;

/// Explain's candidates as a table, one row each in the order considered: one passed over
/// for its quota, one drained, the last chosen; each with its health window and circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_explains_a_payment_candidate_by_candidate() {
    let h = Harness::start().await;
    let quota = support::wechat_partner(
        &h.upstream,
        "platform_quota",
        "1900000100",
        "wx8888888888888888",
        "5157F09EFDC096DE15EBE81A47057A72",
        "platform_apiclient_key.pem",
    )
    .with("quota", "{ daily: 100000, single: 50000 }");
    h.reload_with(QUOTA_RULES, &quota.to_string()).await;
    // One create on the quota account: its health window holds one success, its day 1999.
    let paid = h.paid("m_1001", "ui-health", "wechat_native", 1999).await;
    assert_eq!(paid["channel"], "platform_quota");
    let r = h
        .admin_post(
            "/admin/channels/m1001_wechat/drain",
            &json!({"reason": "console explain test", "by": "ops-test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let Some(driver) = start_driver(&h).await else {
        return;
    };
    let browser = console(&h, &driver).await;
    // (innerText of an element not rendered is its whole text: ask for `hidden` instead.)
    let hidden = || async {
        browser
            .call(
                Method::POST,
                "/execute/sync",
                json!({"script": "return document.getElementById('explain-candidates').hidden;", "args": []}),
            )
            .await
    };
    assert_eq!(hidden().await, true, "no table before an explanation");
    browser.type_into("#explain-merchant", "m_1001").await;
    // 600 yuan: over the quota account's single limit.
    let amount = browser.element("#explain-amount").await;
    browser
        .call(Method::POST, &format!("/element/{amount}/clear"), json!({}))
        .await;
    browser.type_into("#explain-amount", "60000").await;
    browser.click("#explain-go").await;
    browser.shows("#explain-result", "m1001-quota-first").await;

    assert_eq!(hidden().await, false);
    let row = |channel: &str| format!(r#"#explain-candidates tr[data-channel="{channel}"]"#);
    let full = row("platform_quota");
    browser.shows(&full, "skipped (quota)").await;
    browser.shows(&full, "100% (1/1)").await;
    browser.shows(&full, "day 1999/100000 (98001 left)").await;
    browser.shows(&full, "single ≤ 50000, over").await;
    browser.shows(&full, "closed").await;
    let own = row("m1001_wechat");
    browser.shows(&own, "skipped (drained)").await;
    browser.shows(&own, "no samples").await;
    browser.shows(&row("platform_wechat"), "chosen").await;
    // One row per candidate, in the order explain gives them.
    let ex = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": 60000}),
        )
        .await;
    assert_eq!(ex.status, 200, "{}", ex.text);
    let listed = |field: &str| -> Value {
        ex.body["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[field].clone())
            .collect()
    };
    let column = |n: usize| {
        let script = format!(
            "return [...document.querySelectorAll('#explain-candidates tbody tr td:nth-child({n})')].map((td) => td.textContent);"
        );
        let browser = &browser;
        async move {
            browser
                .call(
                    Method::POST,
                    "/execute/sync",
                    json!({"script": script, "args": []}),
                )
                .await
        }
    };
    assert_eq!(column(2).await, listed("channel"));
    let drained: Vec<&str> = listed("drained")
        .as_array()
        .unwrap()
        .iter()
        .map(|d| if d == true { "drained" } else { "–" })
        .collect();
    assert_eq!(column(5).await, json!(drained));
    assert_eq!(
        listed("channel").as_array().unwrap().len(),
        3,
        "{}",
        ex.text
    );
    assert_eq!(
        column(3)
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v.as_str().is_some_and(|v| v.starts_with("chosen")))
            .count(),
        1,
        "one chosen row"
    );

    browser.call(Method::DELETE, "", json!({})).await;
    drop(driver);
    h.shutdown().await;
}
