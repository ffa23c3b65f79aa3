//! Routing end to end: the real proxy, the sandbox as upstream, the real SQLite file.

use crate::support;

use payroute::channel::keys::RsaSigner;
use serde_json::json;
use support::{payment, Harness};

#[tokio::test]
async fn routes_by_merchant_method_amount_and_metadata() {
    let h = Harness::start().await;
    let cases = [
        // (merchant, method, amount, metadata, channel, rule)
        (
            "m_1001",
            "wechat_native",
            1999,
            json!(null),
            "m1001_wechat",
            "m1001-own-wechat",
        ),
        (
            "m_1001",
            "wechat_jsapi",
            1999,
            json!(null),
            "m1001_wechat",
            "m1001-own-wechat",
        ),
        // H5 is not in m_1001's rule: the family default takes it.
        (
            "m_1001",
            "wechat_h5",
            1999,
            json!(null),
            "platform_wechat",
            "default",
        ),
        (
            "m_3003",
            "wechat_native",
            100,
            json!(null),
            "m3003_wechat",
            "m3003-small-amounts-first",
        ),
        (
            "m_3003",
            "wechat_native",
            101,
            json!(null),
            "platform_wechat",
            "default",
        ),
        (
            "m_4004",
            "wechat_app",
            500,
            json!({"campaign": "double11"}),
            "platform_wechat",
            "promotions-on-platform",
        ),
        (
            "m_4004",
            "wechat_app",
            500,
            json!({"campaign": "spring"}),
            "platform_wechat",
            "default",
        ),
    ];
    for (i, (merchant, method, amount, metadata, channel, rule)) in cases.into_iter().enumerate() {
        let no = format!("route-{i}");
        let r = h
            .create(&payment(
                merchant,
                &no,
                method,
                amount,
                json!({ "metadata": metadata }),
            ))
            .await;
        assert_eq!(r.status, 201, "case {i}: {}", r.text);
        assert_eq!(r.body["channel"], channel, "case {i}");
        assert_eq!(r.body["rule"], rule, "case {i}");
        assert_eq!(r.body["status"], "pending");
        // The order exists at the chosen channel's account in the sandbox.
        let orders = h.sandbox_orders(&no).await;
        assert_eq!(orders.len(), 1, "case {i}");
    }
    // No alipay channel is configured: its methods have no route.
    let r = h
        .create(&payment(
            "m_1001",
            "route-ali",
            "alipay_page",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "no_route");
    assert!(h.sandbox_orders("route-ali").await.is_empty());

    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_route_decisions_total{channel="m1001_wechat",rule="m1001-own-wechat"}"#
        ),
        Some(2.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn split_is_proportional_over_10000_ids_and_stable_per_id() {
    let h = Harness::start().await;
    let explain = |no: String| {
        let h = &h;
        async move {
            let r = h
                .admin_post("/admin/explain", &json!({"merchant_id": "m_2002", "method": "wechat_native", "amount": 100, "out_trade_no": no}))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.body["channel"].as_str().unwrap().to_string()
        }
    };
    let mut own = 0;
    let mut first = Vec::new();
    for i in 0..10_000 {
        let ch = explain(format!("ORD{i:08}")).await;
        if ch == "m2002_wechat" {
            own += 1;
        }
        if i < 50 {
            first.push(ch);
        }
    }
    let share = own as f64 / 10_000.0;
    assert!(
        (0.08..=0.12).contains(&share),
        "10% canary got {:.2}%",
        share * 100.0
    );
    // Stable: the same id picks the same channel again, and a real payment goes there.
    for (i, ch) in first.iter().enumerate() {
        assert_eq!(&explain(format!("ORD{i:08}")).await, ch);
    }
    for (i, ch) in first.iter().enumerate().take(20) {
        let r = h
            .create(&payment(
                "m_2002",
                &format!("ORD{i:08}"),
                "wechat_native",
                100,
                json!({}),
            ))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.body["channel"], ch.as_str());
    }
    h.shutdown().await;
}

#[tokio::test]
async fn direct_and_partner_requests_have_their_own_shape() {
    let h = Harness::start().await;
    let r = h
        .create(&payment(
            "m_1001",
            "shape-direct",
            "wechat_jsapi",
            1999,
            json!({"attach": "cart-7"}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let orders = h.sandbox_orders("shape-direct").await;
    let req = &orders[0]["request"];
    assert_eq!(orders[0]["mchid"], "1900000109");
    assert_eq!(req["appid"], "wx2421b1c4370ec43b");
    assert_eq!(req["mchid"], "1900000109");
    assert_eq!(req["payer"]["openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_eq!(req["amount"], json!({"total": 1999, "currency": "CNY"}));
    assert_eq!(req["attach"], "cart-7");
    assert_eq!(
        req["notify_url"],
        format!("{}/notify/m1001_wechat", h.site.public_base_url)
    );
    assert!(req["time_expire"].as_str().unwrap().ends_with("+08:00"));
    assert!(req.get("sp_mchid").is_none() && req.get("sub_mchid").is_none());

    let r = h
        .create(&payment(
            "m_4004",
            "shape-partner",
            "wechat_jsapi",
            2500,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let orders = h.sandbox_orders("shape-partner").await;
    let req = &orders[0]["request"];
    assert_eq!(orders[0]["mchid"], "1900000100");
    assert_eq!(req["sp_mchid"], "1900000100");
    assert_eq!(req["sp_appid"], "wx8888888888888888");
    assert_eq!(req["sub_mchid"], "1900000409");
    assert_eq!(req["payer"]["sp_openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert!(req.get("mchid").is_none() && req.get("appid").is_none());

    // The JSAPI payer parameters are signed by the paying channel's merchant key.
    let a = &r.body["action"];
    assert_eq!(a["type"], "jsapi");
    assert_eq!(a["appId"], "wx8888888888888888");
    assert_eq!(a["signType"], "RSA");
    let msg = format!(
        "{}\n{}\n{}\n{}\n",
        a["appId"].as_str().unwrap(),
        a["timeStamp"].as_str().unwrap(),
        a["nonceStr"].as_str().unwrap(),
        a["package"].as_str().unwrap()
    );
    let platform = RsaSigner::from_text(
        &std::fs::read_to_string(support::key("platform_apiclient_key.pem")).unwrap(),
    )
    .unwrap();
    assert!(platform
        .verifier()
        .verify_b64(msg.as_bytes(), a["paySign"].as_str().unwrap()));
    assert!(a["package"].as_str().unwrap().starts_with("prepay_id=wx"));

    // Native gives a QR code, H5 a redirect, App the SDK parameters.
    let r = h
        .create(&payment(
            "m_4004",
            "shape-native",
            "wechat_native",
            1,
            json!({}),
        ))
        .await;
    assert_eq!(r.body["action"]["type"], "qr_code");
    assert!(r.body["action"]["code_url"]
        .as_str()
        .unwrap()
        .starts_with("weixin://"));
    let r = h
        .create(&payment("m_4004", "shape-h5", "wechat_h5", 1, json!({})))
        .await;
    assert_eq!(r.body["action"]["type"], "redirect");
    assert_eq!(
        h.sandbox_orders("shape-h5").await[0]["request"]["scene_info"]["payer_client_ip"],
        "203.0.113.7"
    );
    let r = h
        .create(&payment("m_4004", "shape-app", "wechat_app", 1, json!({})))
        .await;
    assert_eq!(r.body["action"]["type"], "app");
    assert_eq!(r.body["action"]["partnerid"], "1900000409");
    h.shutdown().await;
}

#[tokio::test]
async fn query_follows_the_bound_channel_after_the_rules_change() {
    let h = Harness::start().await;
    let r = h
        .create(&payment(
            "m_1001",
            "bound-1",
            "wechat_native",
            1999,
            json!({}),
        ))
        .await;
    assert_eq!(r.body["channel"], "m1001_wechat");

    // Ops remove m_1001's own-channel rule: new payments now go to the platform.
    let rules = "  rules: []\n  default: { wechat: platform_wechat }\n";
    h.write_config(rules, "");
    let rl = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(rl.status, 200, "{}", rl.text);
    let ex = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": 1999}),
        )
        .await;
    assert_eq!(ex.body["channel"], "platform_wechat");

    // The old order is paid at m_1001's own account and is found there, not at the platform.
    assert_eq!(h.pay("bound-1").await.status, 200);
    let q = h.get_payment("m_1001", "bound-1", true).await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["channel"], "m1001_wechat");
    assert_eq!(q.body["status"], "succeeded");
    assert!(q.body["provider_trade_no"]
        .as_str()
        .unwrap()
        .starts_with("42000"));
    assert!(q.body["paid_at"].is_string());

    // A new payment with the new rules goes to the platform.
    let r = h
        .create(&payment(
            "m_1001",
            "bound-2",
            "wechat_native",
            1999,
            json!({}),
        ))
        .await;
    assert_eq!(r.body["channel"], "platform_wechat");

    // Fees are counted once, at the paying channel's rate: 0.38% of 19.99 yuan = 8 fen.
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_fees_estimated_total{channel="m1001_wechat"}"#
        ),
        Some(8.0)
    );
    let again = h.get_payment("m_1001", "bound-1", true).await;
    assert_eq!(again.body["status"], "succeeded");
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_fees_estimated_total{channel="m1001_wechat"}"#
        ),
        Some(8.0)
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_binding_survives_a_restart() {
    let mut h = Harness::start().await;
    let r = h
        .create(&payment(
            "m_1001",
            "restart-1",
            "wechat_native",
            300,
            json!({}),
        ))
        .await;
    r.expect_created_on("m1001_wechat");
    let id = r.body["payment_id"].clone();

    // While the proxy is down, ops move m_1001 to the platform: the rules no longer lead to
    // the channel the order was created on.
    h.write_config("  rules: []\n  default: { wechat: platform_wechat }\n", "");
    h.restart().await;
    let ex = h
        .admin_post(
            "/admin/explain",
            &json!({"merchant_id": "m_1001", "method": "wechat_native", "amount": 300}),
        )
        .await;
    assert_eq!(ex.body["channel"], "platform_wechat", "{}", ex.text);

    // The order is paid at m_1001's own account; only the stored binding finds it there.
    assert_eq!(h.pay("restart-1").await.status, 200);
    let q = h.get_payment("m_1001", "restart-1", true).await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["payment_id"], id);
    assert_eq!(q.body["channel"], "m1001_wechat");
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
    h.shutdown().await;
}
