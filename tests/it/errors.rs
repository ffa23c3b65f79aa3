//! Every error code (ARCHITECTURE.md, "The unified API and its errors") this version can produce, through real sockets, plus the
//! channel failures: tampered signatures, unreachable channels, timeouts, TLS.

use crate::support;

use http::Method;
use serde_json::json;
use support::{payment, Harness, ADMIN_TOKEN, SHOP_KEY};

/// A channel whose address refuses connections.
fn dead_channel(name: &str, mchid: &str, keyfile: &str) -> String {
    let dead = support::Upstream::dead();
    support::wechat_direct(
        &dead,
        name,
        mchid,
        "wx0000000000000001",
        "0A0A0A0A",
        keyfile,
    )
    .with("timeout", "2s")
    .to_string()
}

#[tokio::test]
async fn client_errors_have_their_codes() {
    let h = Harness::start().await;
    let url = format!("{}/v1/payments", h.api);
    let body = payment("m_1001", "err-1", "wechat_native", 100, json!({})).to_string();
    let auth = format!("Bearer {SHOP_KEY}");

    let r = h.send(Method::POST, &url, &[], &body).await;
    r.expect_error(401, "unauthorized");
    assert_eq!(r.body["error"]["retryable"], false);
    let r = h
        .send(
            Method::POST,
            &url,
            &[("authorization", "Bearer wrong-key-0123456789")],
            &body,
        )
        .await;
    r.expect_error(401, "unauthorized");

    let other = payment("m_9009", "err-1", "wechat_native", 100, json!({})).to_string();
    let r = h
        .send(Method::POST, &url, &[("authorization", &auth)], &other)
        .await;
    r.expect_error(403, "forbidden_merchant");
    assert_eq!(r.body["error"]["field"], "merchant_id");

    let r = h
        .send(Method::POST, &url, &[("authorization", &auth)], "{not json")
        .await;
    r.expect_error(400, "invalid_request");
    for bad in [json!(19.99), json!("1999"), json!(0), json!(-1)] {
        let b = payment(
            "m_1001",
            "err-amt",
            "wechat_native",
            1,
            json!({ "amount": bad }),
        )
        .to_string();
        let r = h
            .send(Method::POST, &url, &[("authorization", &auth)], &b)
            .await;
        r.expect_error(400, "invalid_amount");
        assert_eq!(r.body["error"]["field"], "amount");
    }
    let big = payment(
        "m_1001",
        "err-big",
        "wechat_native",
        1,
        json!({ "attach": "x".repeat(70_000) }),
    )
    .to_string();
    let r = h
        .send(Method::POST, &url, &[("authorization", &auth)], &big)
        .await;
    r.expect_error(413, "payload_too_large");

    let r = h.get_payment("m_1001", "never-created", false).await;
    r.expect_error(404, "not_found");
    let r = h
        .send(Method::GET, &format!("{}/v2/whatever", h.api), &[], "")
        .await;
    r.expect_error(404, "not_found");
    let r = h
        .send(
            Method::GET,
            &format!("{}/v1/payments/m_9009/x", h.api),
            &[("authorization", &auth)],
            "",
        )
        .await;
    r.expect_error(403, "forbidden_merchant");

    // Nothing of the refused requests reached the channel.
    assert!(h.sandbox_orders("err-1").await.is_empty());
    assert!(h.sandbox_orders("err-amt").await.is_empty());

    let m = h.metrics().await;
    assert!(
        support::metric(
            &m,
            r#"payroute_http_requests_total{route="create_payment",status_class="4xx"}"#
        )
        .unwrap()
            >= 8.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn replays_are_idempotent_and_twins_never_reach_the_channel_twice() {
    let h = Harness::start().await;
    let body = payment("m_1001", "idem-1", "wechat_native", 100, json!({}));
    let first = h.create(&body).await;
    assert_eq!(first.status, 201);
    let again = h.create(&body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body["payment_id"], first.body["payment_id"]);
    assert_eq!(again.body["action"], first.body["action"]);

    let changed = payment("m_1001", "idem-1", "wechat_native", 101, json!({}));
    let r = h.create(&changed).await;
    r.expect_error(409, "idempotency_mismatch");

    // A concurrent twin while the first is still at the (slow) channel.
    h.faults(json!({ "latency_ms": 400 })).await;
    let twin = payment("m_1001", "idem-2", "wechat_native", 100, json!({}));
    let (a, b) = tokio::join!(h.create(&twin), async {
        tokio::task::yield_now().await;
        // Give the first request time to write its binding before the twin arrives.
        support::wait_until("the first create's binding", || async {
            h.get_payment("m_1001", "idem-2", false).await.status != 404
        })
        .await;
        h.create(&twin).await
    });
    assert_eq!(a.status, 201, "{}", a.text);
    b.expect_error(409, "request_in_progress");
    assert_eq!(b.body["error"]["retryable"], true);
    assert_eq!(h.sandbox_orders("idem-2").await.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn provider_rejection_is_final_and_replayed() {
    let h = Harness::start().await;
    h.faults(json!({ "fail_next": 1, "fail_status": 400, "fail_code": "PARAM_ERROR" }))
        .await;
    let body = payment("m_1001", "rej-1", "wechat_native", 100, json!({}));
    let r = h.create(&body).await;
    r.expect_error(402, "channel_rejected");
    assert!(r.error_message().contains("PARAM_ERROR"));
    assert_eq!(r.body["error"]["retryable"], false);
    assert_eq!(r.body["payment"]["status"], "failed");
    // The same request again gets the same answer without calling the channel.
    let again = h.create(&body).await;
    again.expect_error(402, "channel_rejected");
    assert!(h.sandbox_orders("rej-1").await.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn provider_system_errors_are_retried_on_the_same_channel() {
    let h = Harness::start().await;
    h.faults(json!({ "fail_next": 2, "fail_status": 500, "fail_code": "SYSTEM_ERROR" }))
        .await;
    let r = h
        .create(&payment(
            "m_1001",
            "retry-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["channel"], "m1001_wechat");
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_retries_total{channel="m1001_wechat",reason="retryable"}"#
        ),
        Some(2.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn tampered_response_signatures_change_nothing() {
    let h = Harness::start().await;
    let r = h
        .create(&payment("m_1001", "sig-1", "wechat_native", 100, json!({})))
        .await;
    assert_eq!(r.status, 201);
    // Only the (tampered) query answer may speak here, not the payment's notification.
    h.faults(json!({ "drop_notifications": true })).await;
    assert_eq!(h.pay("sig-1").await.status, 200);

    h.faults(json!({ "tamper_signature": true, "drop_notifications": true }))
        .await;
    let q = h.get_payment("m_1001", "sig-1", true).await;
    q.expect_error(502, "channel_error");
    assert!(q.error_message().contains("bad_signature"));
    let stored = h.get_payment("m_1001", "sig-1", false).await;
    assert_eq!(
        stored.body["status"], "pending",
        "an unverifiable answer must not mark the payment paid"
    );
    assert!(stored.body["paid_at"].is_null());

    // A create whose answer cannot be verified: no action handed out, status unknown.
    let c = h
        .create(&payment("m_1001", "sig-2", "wechat_native", 100, json!({})))
        .await;
    c.expect_error(502, "channel_error");
    assert_eq!(c.body["payment"]["status"], "unknown");
    assert!(c.body["payment"]["action"].is_null());

    // Once answers verify again, the truth comes through.
    h.faults(json!({})).await;
    let q = h.get_payment("m_1001", "sig-1", true).await;
    assert_eq!(q.body["status"], "succeeded");
    let m = h.metrics().await;
    assert!(support::metric(&m, r#"payroute_channel_requests_total{channel="m1001_wechat",operation="query",result="bad_signature"}"#).unwrap() >= 1.0);
    h.shutdown().await;
}

#[tokio::test]
async fn platform_certificate_mode_verifies_by_serial() {
    let rules = "  rules:\n    - { name: m9009-cert, when: { merchant: m_9009 }, to: cert_wechat }\n  default: { wechat: platform_wechat }\n";
    // The harness fills in the sandbox address after binding it, so the channel comes by reload.
    let h = Harness::start().await;
    let cert_channel = support::wechat_direct(
        &h.upstream,
        "cert_wechat",
        "1900000909",
        "wx0000000000000009",
        "0B0B0B0B",
        "m3003_apiclient_key.pem",
    )
    .without("wechatpay_public_key")
    .without("wechatpay_public_key_id")
    .with(
        "platform_certificates",
        format!(
            "[ \"file:{}\" ]",
            support::key("wechatpay_platform_cert.pem")
        ),
    );
    h.reload_with(rules, &cert_channel.to_string()).await;

    let other = "Bearer other-shop-key-0123456789".to_string();
    let body = payment("m_9009", "cert-1", "wechat_native", 100, json!({})).to_string();
    // The sandbox names its certificate's serial: the certificate channel verifies it.
    h.faults(json!({ "sign_with_certificate": true })).await;
    let r = h
        .send(
            Method::POST,
            &format!("{}/v1/payments", h.api),
            &[("authorization", &other)],
            &body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["channel"], "cert_wechat");
    // A channel that only pins the public key does not know that serial.
    let r = h
        .create(&payment(
            "m_1001",
            "cert-2",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(502, "channel_error");
    assert!(r.error_message().contains("unknown Wechatpay-Serial"));
    h.shutdown().await;
}

#[tokio::test]
async fn unreachable_channel_fails_over_only_when_nothing_was_sent() {
    // m1001_wechat is replaced by a channel on a dead port; its rule falls back to the platform.
    let rules = r#"
  rules:
    - name: m1001-own-wechat
      when: { merchant: [m_1001], method: [wechat_native] }
      to: dead_wechat
      fallback: [platform_wechat]
    - name: m1001-dead-app
      when: { merchant: [m_1001], method: [wechat_app] }
      to: dead_wechat
  default: { wechat: platform_wechat }
"#;
    let h = Harness::start_with(
        false,
        rules,
        &dead_channel("dead_wechat", "1900000109", "m1001_apiclient_key.pem"),
    )
    .await;
    let r = h
        .create(&payment("m_1001", "fo-1", "wechat_native", 100, json!({})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.body["channel"], "platform_wechat",
        "rebound to the fallback"
    );
    assert_eq!(r.body["rule"], "m1001-own-wechat");
    assert_eq!(
        h.sandbox_orders("fo-1").await[0]["request"]["sub_mchid"],
        "1900000109"
    );
    // Later queries follow the new binding.
    assert_eq!(
        h.get_payment("m_1001", "fo-1", false).await.body["channel"],
        "platform_wechat"
    );

    // No fallback: 503, retryable, and the order is not lost — the shop may retry.
    let r = h
        .create(&payment("m_1001", "fo-2", "wechat_app", 100, json!({})))
        .await;
    r.expect_error(503, "channel_unavailable");
    assert_eq!(r.body["error"]["retryable"], true);
    assert_eq!(r.body["payment"]["status"], "pending");
    let m = h.metrics().await;
    // One call per create (its retries counted apart).
    assert!(support::metric(&m, r#"payroute_channel_requests_total{channel="dead_wechat",operation="create",result="nothing_sent"}"#).unwrap() >= 1.0);
    assert!(
        support::metric(
            &m,
            r#"payroute_retries_total{channel="dead_wechat",reason="nothing_sent"}"#
        )
        .unwrap()
            >= 1.0
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_slow_channel_times_out_as_unknown_and_is_never_failed_over() {
    let rules = r#"
  rules:
    - name: m1001-own-wechat
      when: { merchant: [m_1001] }
      to: m1001_wechat
      fallback: [platform_wechat]
  default: { wechat: platform_wechat }
"#;
    let h = Harness::start_with(false, rules, "").await;
    // Channel deadline is 2s; the sandbox answers after 3s.
    h.faults(json!({ "latency_ms": 3000 })).await;
    let r = h
        .create(&payment(
            "m_1001",
            "slow-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(504, "channel_timeout");
    assert_eq!(r.body["payment"]["status"], "unknown");
    assert_eq!(
        r.body["payment"]["channel"], "m1001_wechat",
        "a request that may have arrived is never sent elsewhere"
    );
    assert_eq!(r.body["error"]["retryable"], true);
    // The shop's retry goes to the same channel with the same out_trade_no.
    h.faults(json!({})).await;
    let again = h
        .create(&payment(
            "m_1001",
            "slow-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.body["channel"], "m1001_wechat");
    assert_eq!(again.body["status"], "pending");
    let orders = h.sandbox_orders("slow-1").await;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["mchid"], "1900000109");
    h.shutdown().await;
}

#[tokio::test]
async fn channels_reach_the_sandbox_over_tls() {
    let h = Harness::start_with(true, support::RULES, "").await;
    let r = h
        .create(&payment("m_1001", "tls-1", "wechat_native", 100, json!({})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["action"]["type"], "qr_code");
    let q = h.get_payment("m_1001", "tls-1", true).await;
    assert_eq!(q.body["status"], "pending");

    // Without the test CA the handshake fails before anything is sent.
    let rules = support::RULES
        .replace("to: m1001_wechat", "to: untrusted_wechat")
        .replace("fallback: [platform_wechat]", "");
    let untrusted = support::wechat_direct(
        &support::Upstream::plain(&h.upstream.base_url),
        "untrusted_wechat",
        "1900000109",
        "wx2421b1c4370ec43b",
        "3775B6A45ACD588826D15E583A95F5DD",
        "m1001_apiclient_key.pem",
    )
    .to_string();
    h.write_config(&rules, &untrusted);
    assert_eq!(h.admin_post("/admin/reload", &json!({})).await.status, 200);
    let r = h
        .create(&payment("m_1001", "tls-2", "wechat_native", 100, json!({})))
        .await;
    r.expect_error(503, "channel_unavailable");
    h.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_order_paid_meanwhile_is_learned_not_failed() {
    let h = Harness::start().await;
    // The sandbox answers after the 2s deadline has passed: our answer is unknown.
    h.faults(json!({ "latency_ms": 2300 })).await;
    let body = payment("m_1001", "paid-late", "wechat_native", 100, json!({}));
    let r = h.create(&body).await;
    r.expect_error(504, "channel_timeout");
    assert_eq!(r.body["payment"]["status"], "unknown");
    // The shop's retry, not the payment's notification, is what this test is about.
    h.faults(json!({ "drop_notifications": true })).await;
    // The sandbox, like WeChat Pay, acted on the request; only its answer came too late.
    assert_eq!(h.sandbox_orders("paid-late").await.len(), 1);
    // The payer paid; the shop retries the same order: WeChat says ORDERPAID, a verified query
    // says SUCCESS, and the payment is succeeded — never failed.
    assert_eq!(h.pay("paid-late").await.status, 200);
    let again = h.create(&body).await;
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        again.text
    );
    assert_eq!(again.body["channel"], "m1001_wechat");
    let stored = h.get_payment("m_1001", "paid-late", false).await;
    assert_eq!(stored.body["status"], "succeeded");
    // Nothing is in flight any more: a replay answers at once from the store.
    assert_eq!(h.create(&body).await.status, 200);
    h.shutdown().await;
}

/// With no `admin.token` the admin API is off: 403 `forbidden` even with the old token; the
/// health endpoints on the admin port are not part of it.
#[tokio::test]
async fn without_an_admin_token_the_admin_api_is_403_forbidden() {
    let mut h = Harness::start().await;
    let yaml = std::fs::read_to_string(&h.config_path).unwrap();
    let line = format!("admin: {{ token: {ADMIN_TOKEN} }}\n");
    assert!(yaml.contains(&line), "{yaml}");
    support::write_atomically(&h.config_path, &yaml.replace(&line, ""));
    h.restart().await;
    h.admin_get("/admin/channels")
        .await
        .expect_error(403, "forbidden");
    h.admin_post("/admin/reload", &json!({}))
        .await
        .expect_error(403, "forbidden");
    assert_eq!(h.ready().await, 200);
    h.shutdown().await;
}
