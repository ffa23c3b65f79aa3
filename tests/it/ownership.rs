//! A payment belongs to the shop that created it (ARCHITECTURE.md, "Money rules"): another shop acting for the
//! same merchant finds nothing of it — not on read, refresh, close or refund, not by a create
//! with the same `out_trade_no`, not through a refund's `out_refund_no`.

use crate::support;

use http::Method;
use serde_json::{json, Value};
use support::{payment, Harness, Reply, PEER_SHOP_KEY};

/// A call with `peer-shop`'s key (it lists `m_1001`, as `test-shop` does).
async fn as_peer(h: &Harness, method: Method, path: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {PEER_SHOP_KEY}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    h.send(
        method,
        &format!("{}{path}", h.api),
        &[("authorization", &auth)],
        &body,
    )
    .await
}

/// Asserts `r` is the answer to an order or refund that does not exist, word for word.
#[track_caller]
fn expect_unknown(r: &Reply, never: &Reply, what: &str) {
    r.expect_error(404, "not_found");
    assert_eq!(
        r.body, never.body,
        "{what}: tells apart another shop's order"
    );
}

/// Asserts that nothing of test-shop's order shows in `r`.
#[track_caller]
fn reveals_nothing(r: &Reply, of: &Value, what: &str) {
    assert!(r.body.get("payment").is_none(), "{what}: {}", r.text);
    for field in ["payment_id", "provider_trade_no"] {
        if let Some(v) = of[field].as_str() {
            assert!(!r.text.contains(v), "{what} shows {field}: {}", r.text);
        }
    }
    if let Some(url) = of["action"]["code_url"].as_str() {
        assert!(!r.text.contains(url), "{what} shows the payer action");
    }
}

#[tokio::test]
async fn another_shop_of_the_merchant_finds_nothing_of_a_payment() {
    let h = Harness::start().await;
    // test-shop's orders: one paid and partly refunded, one open with its payer action.
    let paid = h.paid("m_1001", "own-paid", "wechat_native", 1000).await;
    let refund = json!({"merchant_id": "m_1001", "out_trade_no": "own-paid", "out_refund_no": "own-r1", "amount": 100});
    assert_eq!(h.refund(&refund).await.status, 201);
    let open_body = payment("m_1001", "own-open", "wechat_native", 500, json!({}));
    let open = h.create(&open_body).await;
    open.expect_created_on("m1001_wechat");
    let open = open.body.clone();
    assert!(open["action"]["code_url"].is_string(), "{open}");

    // peer-shop may act for m_1001: its own order goes through.
    let peer_body = payment("m_1001", "peer-paid", "wechat_native", 800, json!({}));
    let r = as_peer(&h, Method::POST, "/v1/payments", &peer_body).await;
    r.expect_created_on("m1001_wechat");

    // What an order that was never created answers.
    let never = as_peer(
        &h,
        Method::GET,
        "/v1/payments/m_1001/never-made",
        &Value::Null,
    )
    .await;
    never.expect_error(404, "not_found");
    let never_refund = as_peer(
        &h,
        Method::GET,
        "/v1/refunds/m_1001/never-made",
        &Value::Null,
    )
    .await;
    never_refund.expect_error(404, "not_found");

    for (path, what) in [
        ("/v1/payments/m_1001/own-paid", "GET"),
        ("/v1/payments/m_1001/own-paid?refresh=true", "GET ?refresh"),
        ("/v1/payments/m_1001/own-open", "GET of the open order"),
        (
            "/v1/payments/m_1001/own-open?refresh=true",
            "GET ?refresh of the open order",
        ),
    ] {
        let r = as_peer(&h, Method::GET, path, &Value::Null).await;
        expect_unknown(&r, &never, what);
    }
    let r = as_peer(
        &h,
        Method::POST,
        "/v1/payments/m_1001/own-open/close",
        &Value::Null,
    )
    .await;
    expect_unknown(&r, &never, "close");
    let r = as_peer(
        &h,
        Method::POST,
        "/v1/payments/m_1001/never-made/close",
        &Value::Null,
    )
    .await;
    r.expect_error(404, "not_found");

    // A refund of test-shop's payment, and a read of test-shop's refund.
    let theirs = json!({"merchant_id": "m_1001", "out_trade_no": "own-paid", "out_refund_no": "peer-r1", "amount": 900});
    let r = as_peer(&h, Method::POST, "/v1/refunds", &theirs).await;
    expect_unknown(&r, &never, "refund");
    let r = as_peer(&h, Method::GET, "/v1/refunds/m_1001/own-r1", &Value::Null).await;
    r.expect_error(404, "not_found");
    assert_eq!(
        r.body, never_refund.body,
        "GET refund tells apart another shop's"
    );
    let r = as_peer(
        &h,
        Method::GET,
        "/v1/refunds/m_1001/own-r1?refresh=true",
        &Value::Null,
    )
    .await;
    assert_eq!(r.body, never_refund.body, "GET refund ?refresh");

    // The same create (payer action and all would be replayed), and another with the same
    // out_trade_no: the number is taken, and nothing of test-shop's order shows.
    let r = as_peer(&h, Method::POST, "/v1/payments", &open_body).await;
    r.expect_error(409, "out_trade_no_taken");
    assert_eq!(r.body["error"]["field"], "out_trade_no");
    assert_eq!(r.body["error"]["retryable"], false);
    reveals_nothing(&r, &open, "an identical create");
    let other = payment("m_1001", "own-paid", "wechat_native", 1, json!({}));
    let r = as_peer(&h, Method::POST, "/v1/payments", &other).await;
    r.expect_error(409, "out_trade_no_taken");
    reveals_nothing(&r, &paid, "a create with the paid order's number");

    // peer-shop's own paid order, refunded with test-shop's out_refund_no: taken, unrevealed.
    assert_eq!(h.pay("peer-paid").await.status, 200);
    let q = as_peer(
        &h,
        Method::GET,
        "/v1/payments/m_1001/peer-paid?refresh=true",
        &Value::Null,
    )
    .await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
    let taken = json!({"merchant_id": "m_1001", "out_trade_no": "peer-paid", "out_refund_no": "own-r1", "amount": 100});
    let r = as_peer(&h, Method::POST, "/v1/refunds", &taken).await;
    r.expect_error(409, "out_refund_no_taken");
    assert_eq!(r.body["error"]["field"], "out_refund_no");
    assert!(
        !r.text.contains("own-paid") && !r.text.contains("ref_"),
        "{}",
        r.text
    );
    // ... while its own refund goes through.
    let mine = json!({"merchant_id": "m_1001", "out_trade_no": "peer-paid", "out_refund_no": "peer-r2", "amount": 100});
    assert_eq!(
        as_peer(&h, Method::POST, "/v1/refunds", &mine).await.status,
        201
    );

    // Nothing moved: test-shop's orders are as they were, at the channel too.
    let p = h.get_payment("m_1001", "own-paid", false).await;
    assert_eq!(
        (
            p.body["status"].as_str(),
            p.body["refunded_amount"].as_u64()
        ),
        (Some("succeeded"), Some(100))
    );
    let p = h.get_payment("m_1001", "own-open", true).await;
    assert_eq!(p.body["status"], "pending", "{}", p.text);
    let at_channel = h.sandbox_orders("own-open").await;
    assert_eq!(at_channel.len(), 1);
    assert_eq!(
        at_channel[0]["state"], "NOTPAY",
        "the other shop's close reached the channel"
    );
    assert_eq!(
        at_channel[0]["create_calls"], 1,
        "the other shop's create reached the channel"
    );
    assert_eq!(
        h.sandbox_orders("own-paid").await[0]["refunds"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // test-shop still replays its own order, payer action included.
    let r = h.create(&open_body).await;
    assert_eq!(
        (
            r.status,
            r.headers
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap())
        ),
        (200, Some("true"))
    );
    assert_eq!(r.body["action"], open["action"]);
    h.shutdown().await;
}

#[tokio::test]
async fn the_api_schema_lists_the_ownership_codes() {
    let h = Harness::start().await;
    let r = as_peer(&h, Method::GET, "/openapi.json", &Value::Null).await;
    let codes = &r.body["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
        ["code"]["enum"];
    for code in ["out_trade_no_taken", "out_refund_no_taken"] {
        assert!(
            codes.as_array().is_some_and(|c| c.contains(&json!(code))),
            "{code} is not in the schema: {codes}"
        );
    }
    h.shutdown().await;
}
