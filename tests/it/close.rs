//! Closing unpaid orders at their bound channel — and never closing a paid one.

use crate::support;

use serde_json::json;
use support::{payment, Harness};

#[tokio::test]
async fn unpaid_orders_close_in_every_mode() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let cases = [
        (
            "m_1001",
            "close-wx-direct",
            "wechat_native",
            "m1001_wechat",
            "CLOSED",
        ),
        (
            "m_4004",
            "close-wx-partner",
            "wechat_jsapi",
            "platform_wechat",
            "CLOSED",
        ),
        (
            "m_2002",
            "close-ali-direct",
            "alipay_precreate",
            "m2002_alipay",
            "TRADE_CLOSED",
        ),
        (
            "m_4004",
            "close-ali-isv",
            "alipay_precreate",
            "platform_alipay",
            "TRADE_CLOSED",
        ),
    ];
    for (merchant, no, method, channel, provider_state) in cases {
        let r = h
            .create(&payment(merchant, no, method, 100, json!({})))
            .await;
        assert_eq!(r.status, 201, "{no}: {}", r.text);
        assert_eq!(r.body["channel"], channel);
        let c = h.close(merchant, no).await;
        assert_eq!(
            (c.status, c.body["status"].as_str()),
            (200, Some("closed")),
            "{no}: {}",
            c.text
        );
        assert_eq!(
            h.sandbox_orders(no).await[0]["state"],
            provider_state,
            "{no}"
        );
        // Closing again is a no-op, and a closed order cannot be paid.
        assert_eq!(h.close(merchant, no).await.body["status"], "closed");
        h.pay(no).await;
        assert_eq!(
            h.get_payment(merchant, no, true).await.body["status"],
            "closed",
            "{no}"
        );
    }
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_channel_requests_total{channel="platform_alipay",operation="close",result="ok"}"#
        ),
        Some(1.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_paid_order_is_never_closed() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    for (merchant, no, method) in [
        ("m_1001", "paid-wx", "wechat_native"),
        ("m_2002", "paid-ali", "alipay_precreate"),
    ] {
        assert_eq!(
            h.create(&payment(merchant, no, method, 100, json!({})))
                .await
                .status,
            201
        );
        // Paid at the channel, not yet known to payroute (its notification is lost): the
        // close is refused and the payment becomes succeeded.
        h.faults(json!({ "drop_notifications": true })).await;
        assert_eq!(h.pay(no).await.status, 200);
        let c = h.close(merchant, no).await;
        c.expect_error(409, "invalid_state");
        assert_eq!(c.body["payment"]["status"], "succeeded", "{no}");
        assert_eq!(
            h.get_payment(merchant, no, false).await.body["status"],
            "succeeded"
        );
        // Known to be paid: refused without asking the channel.
        h.close(merchant, no)
            .await
            .expect_error(409, "invalid_state");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn closing_an_alipay_page_order_the_payer_never_opened_is_refused() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    assert_eq!(
        h.create(&payment(
            "m_4004",
            "page-unopened",
            "alipay_page",
            100,
            json!({})
        ))
        .await
        .status,
        201
    );
    let c = h.close("m_4004", "page-unopened").await;
    c.expect_error(409, "invalid_state");
    assert!(
        c.error_message().contains("has not opened it"),
        "{}",
        c.text
    );
    assert_eq!(c.body["payment"]["status"], "pending");

    h.close("m_4004", "never-created")
        .await
        .expect_error(404, "not_found");
    h.close("m_9009", "x")
        .await
        .expect_error(403, "forbidden_merchant");
    h.shutdown().await;
}
