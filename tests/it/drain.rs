//! The manual drain switch through the admin port: drain and resume, what
//! `GET /admin/channels` and `/metrics` show, bad requests, the admin token, a restart of the
//! binary (SQLite), and a second instance on one PostgreSQL database.

use crate::support;

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::{wait_until, Binary, Harness, ADMIN_TOKEN};

const CHANNEL: &str = "m1001_wechat";

/// `channel`'s `drained` in `GET /admin/channels` at `admin`.
async fn drained_at(h: &Harness, admin: &str, channel: &str) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = h
        .send(
            Method::GET,
            &format!("{admin}/admin/channels"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["channels"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == channel))
        .unwrap_or_else(|| panic!("no channel {channel}: {}", r.text))["drained"]
        .clone()
}

async fn drained(h: &Harness, channel: &str) -> Value {
    drained_at(h, &h.admin, channel).await
}

/// `payroute_channel_drained{channel}` and its `since` gauge at `admin`.
async fn gauges_at(h: &Harness, admin: &str, channel: &str) -> (Option<f64>, Option<f64>) {
    let text = h
        .send(Method::GET, &format!("{admin}/metrics"), &[], "")
        .await
        .text;
    let labels = [("channel", channel)];
    (
        support::metric(&text, &support::series("payroute_channel_drained", &labels)),
        support::metric(
            &text,
            &support::series("payroute_channel_drained_since_timestamp_seconds", &labels),
        ),
    )
}

async fn post(h: &Harness, path: &str, headers: &[(&str, &str)], body: &str) -> support::Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    h.send(Method::POST, &format!("{}{path}", h.admin), &all, body)
        .await
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_resume_through_the_admin_api() {
    let h = Harness::start().await;
    // Every configured channel starts undrained, both gauges at 0.
    assert_eq!(drained(&h, CHANNEL).await, Value::Null);
    assert_eq!(
        gauges_at(&h, &h.admin, CHANNEL).await,
        (Some(0.0), Some(0.0))
    );
    assert_eq!(
        gauges_at(&h, &h.admin, "platform_wechat").await,
        (Some(0.0), Some(0.0))
    );

    let before = now_s();
    let r = h
        .admin_post(
            &format!("/admin/channels/{CHANNEL}/drain"),
            &json!({"reason": "provider incident #42", "by": "alice"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["was_drained"], false, "{}", r.text);
    let shown = drained(&h, CHANNEL).await;
    assert_eq!(shown["reason"], "provider incident #42");
    assert_eq!(shown["by"], "alice");
    assert_eq!(shown["since"], r.body["drained"]["since"]);
    assert_eq!(drained(&h, "platform_wechat").await, Value::Null);
    let (on, since) = gauges_at(&h, &h.admin, CHANNEL).await;
    assert_eq!(on, Some(1.0));
    let since = since.unwrap();
    assert!(
        since >= before.floor() - 1.0 && since <= now_s() + 1.0,
        "since {since} is the drain's time ({before})"
    );

    // Drained again: the reason changes, `since` stays; the operator from the header.
    let again = post(
        &h,
        &format!("/admin/channels/{CHANNEL}/drain"),
        &[("x-payroute-operator", "bob")],
        r#"{"reason": "still down"}"#,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["was_drained"], true);
    let shown = drained(&h, CHANNEL).await;
    assert_eq!(
        (&shown["reason"], &shown["by"], &shown["since"]),
        (
            &json!("still down"),
            &json!("bob"),
            &r.body["drained"]["since"]
        )
    );
    assert_eq!(
        gauges_at(&h, &h.admin, CHANNEL).await,
        (Some(1.0), Some(since))
    );

    // Resume: no body at all; the operator defaults to `admin`.
    let resumed = post(&h, &format!("/admin/channels/{CHANNEL}/resume"), &[], "").await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(resumed.body["was_drained"], true);
    assert_eq!(resumed.body["ended"]["reason"], "still down");
    assert_eq!(drained(&h, CHANNEL).await, Value::Null);
    assert_eq!(
        gauges_at(&h, &h.admin, CHANNEL).await,
        (Some(0.0), Some(0.0))
    );
    // A resume of a channel not drained says so.
    let twice = h
        .admin_post(
            &format!("/admin/channels/{CHANNEL}/resume"),
            &json!({"by": "carol"}),
        )
        .await;
    assert_eq!(twice.status, 200, "{}", twice.text);
    assert_eq!(twice.body["was_drained"], false);
    assert_eq!(twice.body["ended"], Value::Null);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_unknown_channels_and_the_token() {
    let h = Harness::start().await;
    let drain = format!("/admin/channels/{CHANNEL}/drain");
    let resume = format!("/admin/channels/{CHANNEL}/resume");
    let long = "x".repeat(payroute::defaults::MAX_DRAIN_REASON_CHARS + 1);
    let bad_drains = [
        String::new(),
        "{}".into(),
        "not json".into(),
        r#"{"reason": ""}"#.into(),
        r#"{"reason": "   "}"#.into(),
        r#"{"reason": 42}"#.into(),
        json!({ "reason": long }).to_string(),
        r#"{"reason": "two\nlines"}"#.into(),
        r#"{"reason": "ok", "by": ""}"#.into(),
        r#"{"reason": "ok", "reson": "typo"}"#.into(),
        r#"["reason"]"#.into(),
    ];
    for body in &bad_drains {
        post(&h, &drain, &[], body)
            .await
            .expect_error(400, "invalid_request");
    }
    for body in [r#"{"by": ""}"#, r#"{"reason": "x"}"#, "nope"] {
        post(&h, &resume, &[], body)
            .await
            .expect_error(400, "invalid_request");
    }
    // At the limit is fine.
    let at_limit = json!({ "reason": "茶".repeat(payroute::defaults::MAX_DRAIN_REASON_CHARS) });
    let r = post(&h, &drain, &[], &at_limit.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["drained"]["by"], "admin");
    // None of the refused ones drained anything else.
    assert_eq!(drained(&h, "platform_wechat").await, Value::Null);

    for path in [
        "/admin/channels/no_such_channel/drain",
        "/admin/channels/no_such_channel/resume",
    ] {
        post(&h, path, &[], r#"{"reason": "x"}"#)
            .await
            .expect_error(404, "not_found");
    }
    post(&h, &format!("/admin/channels/{CHANNEL}/pause"), &[], "{}")
        .await
        .expect_error(404, "not_found");

    for (path, auth) in [
        (&drain, None),
        (&resume, None),
        (&drain, Some("Bearer wrong-token-0123456789")),
    ] {
        let mut headers = vec![];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        h.send(
            Method::POST,
            &format!("{}{path}", h.admin),
            &headers,
            r#"{"reason": "sneaky"}"#,
        )
        .await
        .expect_error(401, "unauthorized");
    }
    assert_ne!(
        drained(&h, CHANNEL).await["reason"],
        "sneaky",
        "an unauthorised drain changes nothing"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_a_restart_of_the_binary() {
    let mut h = Harness::start().await;
    let mut binary = Binary::take_over(&mut h).await;
    let r = h
        .admin_post(
            &format!("/admin/channels/{CHANNEL}/drain"),
            &json!({"reason": "before the restart", "by": "ops"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    binary.signal("TERM");
    assert!(binary.exited().await, "SIGTERM: exits 0");
    binary.restart().await;
    let shown = drained(&h, CHANNEL).await;
    assert_eq!(shown["reason"], "before the restart", "{shown}");
    assert_eq!(shown["since"], r.body["drained"]["since"]);
    assert_eq!(gauges_at(&h, &h.admin, CHANNEL).await.0, Some(1.0));
    assert!(
        binary.logs().contains("channel is drained"),
        "the start says which channels are drained"
    );
}

/// How long a second instance may take to see a drain: its refresh period, and room for a
/// busy machine.
const SEEN_WITHIN: Duration = Duration::from_secs(payroute::defaults::DRAIN_REFRESH.as_secs() + 5);

/// Polls `admin`'s `/admin/channels` until `channel`'s drain is `wanted(drained)`, failing
/// after [`SEEN_WITHIN`]; how long it took.
async fn seen(
    h: &Harness,
    admin: &str,
    channel: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Duration {
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(SEEN_WITHIN, async {
        while !wanted(&drained_at(h, admin, channel).await) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{admin} did not see the change of {channel} within {SEEN_WITHIN:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_on_postgres_sees_a_drain() {
    let Some(h) = Harness::start_on_postgres().await else {
        return;
    };
    let (_b_api, b) = h.another_instance().await;
    let b_admin = format!("http://{}", b.admin_addr);
    assert_eq!(drained_at(&h, &b_admin, CHANNEL).await, Value::Null);

    let r = h
        .admin_post(
            &format!("/admin/channels/{CHANNEL}/drain"),
            &json!({"reason": "seen everywhere", "by": "alice"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    seen(&h, &b_admin, CHANNEL, |d| d["reason"] == "seen everywhere").await;
    assert_eq!(drained_at(&h, &b_admin, CHANNEL).await, r.body["drained"]);
    assert_eq!(gauges_at(&h, &b_admin, CHANNEL).await.0, Some(1.0));
    assert!(b.app.drains.is_drained(CHANNEL), "routing's view at B");

    // Resumed at B: A sees it.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let resumed = h
        .send(
            Method::POST,
            &format!("{b_admin}/admin/channels/{CHANNEL}/resume"),
            &[("authorization", &auth), ("x-payroute-operator", "bob")],
            "",
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    assert_eq!(resumed.body["was_drained"], true);
    seen(&h, &h.admin, CHANNEL, Value::is_null).await;
    wait_until("A's gauge to drop", || async {
        gauges_at(&h, &h.admin, CHANNEL).await == (Some(0.0), Some(0.0))
    })
    .await;
    b.shutdown().await;
    h.shutdown().await;
}
