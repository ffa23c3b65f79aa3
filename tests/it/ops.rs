//! What ops see on the admin port: orders stranded by a changed identity (reload answer,
//! warning, `payroute_stranded_orders`), and the refund ledger.

use crate::support;

use http::Method;
use serde_json::{json, Value};
use support::{payment, write_atomically, Harness, Reply, SHOP_KEY};

async fn refund(h: &Harness, body: Value) -> Reply {
    let auth = format!("Bearer {SHOP_KEY}");
    h.send(
        Method::POST,
        &format!("{}/v1/refunds", h.api),
        &[("authorization", &auth)],
        &body.to_string(),
    )
    .await
}

const M4004_SUB: &str = r#"m_4004: { wechat_sub_mchid: "1900000409""#;

/// Rewrites the config file with `from` replaced by `to`, reloads through the admin API and
/// returns its answer.
async fn reload_replacing(h: &Harness, from: &str, to: &str) -> Reply {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    assert!(text.contains(from), "{from:?} not in the test config");
    write_atomically(&h.config_path, &text.replace(from, to));
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r
}

async fn stranded_gauge(h: &Harness, channel: &str) -> Option<f64> {
    h.metric("payroute_stranded_orders", &[("channel", channel)])
        .await
}

#[tokio::test]
async fn a_changed_sub_mchid_strands_open_orders_until_it_is_restored() {
    let h = Harness::start().await;
    assert_eq!(stranded_gauge(&h, "platform_wechat").await, Some(0.0));
    // m_4004 collects on the platform (partner) channel: the order is bound to its sub_mchid.
    h.create(&payment("m_4004", "st-1", "wechat_native", 1999, json!({})))
        .await
        .expect_created_on("platform_wechat");
    // Paid at the provider; the proxy has not learned it yet (still pending here).
    h.faults(json!({ "drop_notifications": true })).await;
    assert_eq!(h.pay("st-1").await.status, 200);

    let changed = r#"m_4004: { wechat_sub_mchid: "1900000499""#;
    let r = reload_replacing(&h, M4004_SUB, changed).await;
    let groups = r.body["stranded"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 1, "{}", r.text);
    assert_eq!(groups[0]["channel"], "platform_wechat");
    assert_eq!(groups[0]["account"]["sub_mchid"], "1900000409");
    assert_eq!(
        (
            groups[0]["payments"].as_u64(),
            groups[0]["refunds"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let message = groups[0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("no merchant's wechat_sub_mchid is 1900000409")
            && message.contains("restore that identity until those orders settle"),
        "{message}"
    );
    assert_eq!(stranded_gauge(&h, "platform_wechat").await, Some(1.0));
    assert_eq!(stranded_gauge(&h, "m1001_wechat").await, Some(0.0));
    let cfg = h.admin_get("/admin/config").await;
    assert_eq!(
        cfg.body["stranded"].as_array().map(Vec::len),
        Some(1),
        "{}",
        cfg.text
    );
    // What the warning is about: the order cannot be asked about at another account.
    h.get_payment("m_4004", "st-1", true)
        .await
        .expect_error(503, "channel_unavailable");

    let r = reload_replacing(&h, changed, M4004_SUB).await;
    assert_eq!(r.body["stranded"], json!([]), "{}", r.text);
    assert_eq!(stranded_gauge(&h, "platform_wechat").await, Some(0.0));
    let q = h.get_payment("m_4004", "st-1", true).await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
    h.shutdown().await;
}

#[tokio::test]
async fn open_refunds_count_and_the_ledger_shows_abnormal_ones() {
    let h = Harness::start().await;
    h.create(&payment("m_4004", "rl-1", "wechat_native", 1999, json!({})))
        .await
        .expect_created_on("platform_wechat");
    assert_eq!(h.pay("rl-1").await.status, 200);
    let q = h.get_payment("m_4004", "rl-1", true).await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
    let ok = refund(&h, json!({"merchant_id": "m_4004", "out_trade_no": "rl-1", "out_refund_no": "rl-1-ok", "amount": 100})).await;
    assert_eq!(
        (ok.status, ok.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        ok.text
    );
    h.faults(json!({ "refund_status": "ABNORMAL" })).await;
    let bad = refund(&h, json!({"merchant_id": "m_4004", "out_trade_no": "rl-1", "out_refund_no": "rl-1-abn", "amount": 200})).await;
    assert_eq!(bad.body["status"], "abnormal", "{}", bad.text);
    h.faults(json!({})).await;

    let all = h.admin_get("/admin/refunds?merchant_id=m_4004").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let nos: Vec<&str> = all.body["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["out_refund_no"].as_str())
        .collect();
    assert_eq!(nos.len(), 2, "{}", all.text);
    assert!(
        nos.contains(&"rl-1-ok") && nos.contains(&"rl-1-abn"),
        "{}",
        all.text
    );
    let abnormal = h.admin_get("/admin/refunds?status=abnormal&limit=10").await;
    let list = abnormal.body["refunds"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", abnormal.text);
    assert_eq!(
        (
            list[0]["out_refund_no"].as_str(),
            list[0]["amount"].as_u64(),
            list[0]["channel"].as_str()
        ),
        (Some("rl-1-abn"), Some(200), Some("platform_wechat"))
    );
    let none = h.admin_get("/admin/refunds?merchant_id=m_1001").await;
    assert_eq!(none.body["refunds"], json!([]), "{}", none.text);
    h.admin_get("/admin/refunds?status=done")
        .await
        .expect_error(400, "invalid_request");
    h.admin_get("/admin/refunds?limit=0")
        .await
        .expect_error(400, "invalid_request");
    h.admin_get("/admin/refunds?merchant=m_4004")
        .await
        .expect_error(400, "invalid_request");
    let anonymous = h
        .send(Method::GET, &format!("{}/admin/refunds", h.admin), &[], "")
        .await;
    anonymous.expect_error(401, "unauthorized");

    // The abnormal refund stays open: a changed sub_mchid strands it with its payment's account.
    let changed = r#"m_4004: { wechat_sub_mchid: "1900000499""#;
    let r = reload_replacing(&h, M4004_SUB, changed).await;
    let groups = r.body["stranded"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 1, "{}", r.text);
    assert_eq!(
        (
            groups[0]["payments"].as_u64(),
            groups[0]["refunds"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(stranded_gauge(&h, "platform_wechat").await, Some(1.0));
    h.shutdown().await;
}
