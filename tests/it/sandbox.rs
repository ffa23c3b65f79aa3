//! The sandbox's own surface over HTTP: the fault knobs and the orders view, as the
//! money-safety tests use them through the real proxy.

use crate::support;

use http::Method;
use serde_json::{json, Value};
use support::{payment, Harness, Reply, SHOP_KEY};

async fn post_faults(h: &Harness, faults: &Value) -> Reply {
    h.send(
        Method::POST,
        &format!("{}/sandbox/faults", h.sandbox_url),
        &[],
        &faults.to_string(),
    )
    .await
}

async fn refund(h: &Harness, out_refund_no: &str) -> Reply {
    let auth = format!("Bearer {SHOP_KEY}");
    let body = json!({
        "merchant_id": "m_1001", "out_trade_no": "sbx-ops", "out_refund_no": out_refund_no,
        "amount": 500,
    });
    h.send(
        Method::POST,
        &format!("{}/v1/refunds", h.api),
        &[("authorization", &auth)],
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn every_knob_round_trips_and_unknown_ones_are_refused() {
    let h = Harness::start().await;
    let all = json!({
        "latency_ms": 0, "tamper_signature": false, "fail_next": 0, "fail_status": 503,
        "fail_code": "SYSTEM_ERROR", "sign_with_certificate": false,
        "fail_ops": ["create", "query", "close", "refund", "refund_query"],
        "fail_unsigned": true, "tamper_errors": false, "retry_after_secs": 1,
        "refund_status": "PROCESSING", "alipay_refund_pending": true,
        "drop_notifications": false, "duplicate_notifications": true, "notify_delay_ms": 250,
    });
    let r = post_faults(&h, &all).await;
    assert_eq!((r.status, &r.body), (200, &all), "{}", r.text);
    for bad in [json!({ "fail_ops": ["pay"] }), json!({ "fail_nxet": 1 })] {
        let r = post_faults(&h, &bad).await;
        assert_eq!(r.status, 400, "{bad} is refused: {}", r.text);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn orders_show_their_account_and_create_calls() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let cases = [
        ("m_1001", "sbx-direct", "wechat_native"),
        ("m_4004", "sbx-partner", "wechat_jsapi"),
        ("m_4004", "sbx-isv", "alipay_precreate"),
    ];
    for (merchant, no, method) in cases {
        let r = h
            .create(&payment(merchant, no, method, 100, json!({})))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let direct = &h.sandbox_orders("sbx-direct").await[0];
    assert_eq!(direct["create_calls"], 1);
    assert_eq!(direct["account"]["provider"], "wechatpay");
    assert_eq!(direct["account"]["mode"], "direct");
    assert_eq!(direct["account"]["mchid"], direct["mchid"]);
    assert_eq!(direct["account"]["sub_mchid"], Value::Null);

    let partner = &h.sandbox_orders("sbx-partner").await[0];
    assert_eq!(partner["create_calls"], 1);
    assert_eq!(partner["account"]["mode"], "partner");
    assert_eq!(partner["account"]["sub_mchid"], partner["sub_mchid"]);
    assert!(partner["sub_mchid"].is_string());

    let isv = &h.sandbox_orders("sbx-isv").await[0];
    assert_eq!(isv["create_calls"], 1);
    assert_eq!(
        isv["account"],
        json!({
            "provider": "alipay",
            "app_id": isv["request"]["app_id"],
            "app_auth_token_present": true,
        })
    );
    h.shutdown().await;
}

#[tokio::test]
async fn fail_ops_spares_the_other_operations() {
    let h = Harness::start().await;
    h.faults(json!({
        "fail_next": 1, "fail_ops": ["refund"], "fail_status": 403, "fail_code": "NOT_ENOUGH",
    }))
    .await;
    let r = h
        .create(&payment(
            "m_1001",
            "sbx-ops",
            "wechat_native",
            500,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "the create is spared: {}", r.text);
    assert_eq!(h.pay("sbx-ops").await.status, 200);
    let q = h.get_payment("m_1001", "sbx-ops", true).await;
    assert_eq!(
        q.body["status"], "succeeded",
        "the query is spared: {}",
        q.text
    );

    refund(&h, "sbx-ops-a")
        .await
        .expect_error(402, "channel_rejected");
    let ok = refund(&h, "sbx-ops-b").await;
    assert_eq!(ok.status, 201, "one failure only: {}", ok.text);
    assert_eq!(h.sandbox_orders("sbx-ops").await[0]["create_calls"], 1);
    h.shutdown().await;
}

/// Dropped notifications are listed, never sent (a channel without an APIv3 key gets none
/// either: unit-tested in `sandbox::notify`).
#[tokio::test]
async fn dropped_notifications_are_listed_not_sent() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    assert_eq!(h.sandbox_notifications().await, Vec::<Value>::new());
    h.faults(json!({ "drop_notifications": true })).await;
    for (merchant, no, method) in [
        ("m_4004", "sbx-n-ali", "alipay_precreate"),
        ("m_1001", "sbx-n-wx", "wechat_native"),
    ] {
        let r = h
            .create(&payment(merchant, no, method, 100, json!({})))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(h.pay(no).await.status, 200);
    }
    let list = h.sandbox_notifications().await;
    assert_eq!(list.len(), 2, "{list:?}");
    let ali = &list[0];
    assert_eq!(
        (&ali["out_trade_no"], &ali["provider"], &ali["kind"]),
        (&json!("sbx-n-ali"), &json!("alipay"), &json!("payment"))
    );
    assert_eq!(
        (&ali["attempt"], &ali["status"], &ali["answered_ok"]),
        (&json!(0), &json!("dropped"), &json!(false))
    );
    assert!(ali["url"].as_str().unwrap().contains("/notify/"), "{ali}");
    let wx = &list[1];
    assert_eq!(
        (&wx["provider"], &wx["attempt"], &wx["status"]),
        (&json!("wechatpay"), &json!(0), &json!("dropped"))
    );
    h.shutdown().await;
}
