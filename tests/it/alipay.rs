//! Alipay end to end: the real proxy, the sandbox's Alipay gateway, the real SQLite file.

use crate::support;

use http::Method;
use serde_json::json;
use support::{payment, Harness};

const RULES: &str = r#"
  rules:
    - name: m2002-own-alipay
      when: { merchant: m_2002, family: alipay }
      to: m2002_alipay
  default: { wechat: platform_wechat, alipay: platform_alipay }
"#;

#[tokio::test]
async fn precreate_and_query_in_direct_and_isv_mode() {
    let h = Harness::start_alipay(RULES).await;

    // Direct: m_2002's own app.
    let r = h
        .create(&payment(
            "m_2002",
            "ali-direct-1",
            "alipay_precreate",
            1999,
            json!({"description": "咖啡 & 茶"}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["channel"], "m2002_alipay");
    assert_eq!(r.body["action"]["type"], "qr_code");
    assert!(r.body["action"]["code_url"]
        .as_str()
        .unwrap()
        .starts_with("https://qr.alipay.com/"));
    let order = &h.sandbox_orders("ali-direct-1").await[0];
    let req = &order["request"];
    assert_eq!(req["app_id"], "2021000000002002");
    assert!(
        req.get("app_auth_token").is_none(),
        "direct mode sends no app_auth_token"
    );
    assert_eq!(req["method"], "alipay.trade.precreate");
    assert_eq!(req["sign_type"], "RSA2");
    assert_eq!(req["charset"], "utf-8");
    assert_eq!(
        req["notify_url"],
        format!("{}/notify/m2002_alipay", h.site.public_base_url)
    );
    assert_eq!(req["biz_content"]["total_amount"], "19.99");
    assert_eq!(req["biz_content"]["subject"], "咖啡 & 茶");

    // ISV: the platform's app with the merchant's app_auth_token.
    let r = h
        .create(&payment(
            "m_4004",
            "ali-isv-1",
            "alipay_precreate",
            10_000_000_000,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["channel"], "platform_alipay");
    let req = &h.sandbox_orders("ali-isv-1").await[0]["request"];
    assert_eq!(req["app_id"], "2021000000000001");
    assert_eq!(req["app_auth_token"], "tok_m_4004_TEST_ONLY");
    assert_eq!(req["biz_content"]["total_amount"], "100000000.00");

    // Unpaid, then paid: the query maps trade_status and the yuan amount exactly.
    let q = h.get_payment("m_4004", "ali-isv-1", true).await;
    assert_eq!(
        (q.status, q.body["status"].as_str()),
        (200, Some("pending")),
        "{}",
        q.text
    );
    assert_eq!(h.pay("ali-isv-1").await.status, 200);
    assert_eq!(h.pay("ali-direct-1").await.status, 200);
    for (m, no) in [("m_4004", "ali-isv-1"), ("m_2002", "ali-direct-1")] {
        let q = h.get_payment(m, no, true).await;
        assert_eq!(q.status, 200, "{}", q.text);
        assert_eq!(q.body["status"], "succeeded");
        assert!(q.body["provider_trade_no"]
            .as_str()
            .unwrap()
            .starts_with("2026"));
        assert!(q.body["paid_at"].is_string());
    }
    // 0.6% of 100,000,000.00 yuan, in fen, counted exactly.
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_fees_estimated_total{channel="platform_alipay"}"#
        ),
        Some(60_000_000.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn page_wap_and_app_orders_are_signed_for_the_payer() {
    let h = Harness::start_alipay(RULES).await;
    let r = h
        .create(&payment(
            "m_4004",
            "ali-page-1",
            "alipay_page",
            1,
            json!({"return_url": "https://shop.example.com/done"}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["action"]["type"], "redirect");
    let url = r.body["action"]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/gateway.do?", h.upstream.base_url)));
    assert!(url.contains("method=alipay.trade.page.pay") && url.contains("sign="));
    assert!(url.contains("return_url=https%3A%2F%2Fshop.example.com%2Fdone"));

    // Alipay knows nothing of the order until the payer opens it.
    let q = h.get_payment("m_4004", "ali-page-1", true).await;
    assert_eq!(q.body["status"], "pending");
    assert!(h.sandbox_orders("ali-page-1").await.is_empty());
    let opened = h.send(Method::GET, &url, &[], "").await;
    assert_eq!(opened.status, 200, "{}", opened.text);
    assert!(opened.text.contains("waiting for payment"));
    assert_eq!(h.pay("ali-page-1").await.status, 200);
    let q = h.get_payment("m_4004", "ali-page-1", true).await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);

    let r = h
        .create(&payment(
            "m_2002",
            "ali-wap-1",
            "alipay_wap",
            250,
            json!({}),
        ))
        .await;
    assert_eq!(r.body["action"]["type"], "redirect");
    assert!(r.body["action"]["url"]
        .as_str()
        .unwrap()
        .contains("method=alipay.trade.wap.pay"));

    let r = h
        .create(&payment(
            "m_2002",
            "ali-app-1",
            "alipay_app",
            250,
            json!({}),
        ))
        .await;
    assert_eq!(r.body["action"]["type"], "app");
    let order_string = r.body["action"]["order_string"].as_str().unwrap();
    assert!(order_string.contains("method=alipay.trade.app.pay"));
    // The App SDK hands the order string to Alipay as is; the sandbox accepts it the same way.
    let opened = h
        .send(
            Method::GET,
            &format!("{}/gateway.do?{order_string}", h.upstream.base_url),
            &[],
            "",
        )
        .await;
    assert_eq!(opened.status, 200, "{}", opened.text);
    // A tampered order string is refused.
    let forged = order_string.replace("total_amount%22%3A%222.50", "total_amount%22%3A%220.01");
    assert_ne!(forged, order_string);
    let refused = h
        .send(
            Method::GET,
            &format!("{}/gateway.do?{forged}", h.upstream.base_url),
            &[],
            "",
        )
        .await;
    assert!(
        refused.text.contains("isv.invalid-signature"),
        "{}",
        refused.text
    );
    h.shutdown().await;
}

#[tokio::test]
async fn tampered_alipay_answers_change_nothing() {
    let h = Harness::start_alipay(RULES).await;
    let r = h
        .create(&payment(
            "m_4004",
            "ali-sig-1",
            "alipay_precreate",
            500,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201);
    // Only the (tampered) query answer may speak here, not the payment's notification.
    h.faults(json!({ "drop_notifications": true })).await;
    assert_eq!(h.pay("ali-sig-1").await.status, 200);
    h.faults(json!({ "tamper_signature": true, "drop_notifications": true }))
        .await;
    let q = h.get_payment("m_4004", "ali-sig-1", true).await;
    q.expect_error(502, "channel_error");
    assert_eq!(
        h.get_payment("m_4004", "ali-sig-1", false).await.body["status"],
        "pending"
    );
    let c = h
        .create(&payment(
            "m_4004",
            "ali-sig-2",
            "alipay_precreate",
            500,
            json!({}),
        ))
        .await;
    c.expect_error(502, "channel_error");
    assert!(c.body["payment"]["action"].is_null());
    h.faults(json!({})).await;
    assert_eq!(
        h.get_payment("m_4004", "ali-sig-1", true).await.body["status"],
        "succeeded"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn alipay_errors_follow_the_retry_table() {
    let h = Harness::start_alipay(RULES).await;
    // ACQ.SYSTEM_ERROR is retried on the same channel.
    h.faults(json!({ "fail_next": 1, "fail_code": "ACQ.SYSTEM_ERROR" }))
        .await;
    let r = h
        .create(&payment(
            "m_2002",
            "ali-err-1",
            "alipay_precreate",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_retries_total{channel="m2002_alipay",reason="retryable"}"#
        ),
        Some(1.0)
    );
    // A final business error is not retried and names its sub_code.
    h.faults(json!({ "fail_next": 1, "fail_code": "ACQ.INVALID_PARAMETER" }))
        .await;
    let r = h
        .create(&payment(
            "m_2002",
            "ali-err-2",
            "alipay_precreate",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(402, "channel_rejected");
    assert!(r.error_message().contains("ACQ.INVALID_PARAMETER"));
    // The sandbox checks request signatures like Alipay: a bad sign is refused.
    let raw = h
        .send(
            Method::POST,
            &format!("{}/gateway.do", h.upstream.base_url),
            &[("content-type", "application/x-www-form-urlencoded")],
            "app_id=2021000000002002&method=alipay.trade.query&sign_type=RSA2&sign=Zm9v",
        )
        .await;
    assert!(
        raw.text.contains("isv.invalid-signature"),
        "the sandbox checks request signatures: {}",
        raw.text
    );
    h.shutdown().await;
}

#[tokio::test]
async fn replays_answer_from_the_binding_even_when_the_family_is_gone() {
    let h = Harness::start_alipay(RULES).await;
    let body = payment("m_4004", "ali-gone-1", "alipay_precreate", 100, json!({}));
    let first = h.create(&body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    // Ops remove every Alipay channel.
    h.write_config(support::RULES, "");
    assert_eq!(h.admin_post("/admin/reload", &json!({})).await.status, 200);
    h.create(&payment(
        "m_4004",
        "ali-gone-2",
        "alipay_precreate",
        100,
        json!({}),
    ))
    .await
    .expect_error(422, "no_route");
    // The bound order still replays, and says plainly that its channel is gone.
    let again = h.create(&body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["payment_id"], first.body["payment_id"]);
    let q = h.get_payment("m_4004", "ali-gone-1", true).await;
    q.expect_error(503, "channel_unavailable");
    assert!(q.error_message().contains("no longer configured"));
    h.shutdown().await;
}
