//! Issue 15 through real sockets: an Alipay ISV order belongs to its merchant (matched on
//! the signed `seller_id`, bound to `alipay_seller_id`, kept by a token refresh), the
//! merchant's token is never stored or shown, and a renamed channel loses no notification.
//! The real proxy, the sandbox's Alipay gateway and the real SQLite file.

use crate::support;

use http::Method;
use payroute::channel::keys::RsaSigner;
use payroute::config::Config;
use serde_json::{json, Value};
use support::{key, payment, wait_until, Harness};

/// m_4004's TEST-ONLY app_auth_token in the harness config, and the one ops refresh it to.
const TOKEN_4004: &str = "tok_m_4004_TEST_ONLY";
const REFRESHED_4004: &str = "tok_m_4004_REFRESHED_TEST_ONLY";
const SELLER_3003: &str = "2088000000003003";
const SELLER_4004: &str = "2088000000004004";

/// Rewrites the config file with `edit`, reloads it through the admin API, and hands the
/// sandbox the reloaded keys and grants (the harness's sandbox is not in the config).
async fn reload_edited(h: &Harness, edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changes the config");
    support::write_atomically(&h.config_path, &edited);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let config = Config::load(&h.config_path).unwrap();
    h.sandbox.set_merchants(payroute::config::sandbox_merchants(
        &config.channels,
        &config.merchants,
    ));
}

fn notified(metrics: &str, channel: &str, result: &str) -> f64 {
    support::metric(
        metrics,
        &format!(
            r#"payroute_notifications_received_total{{channel="{channel}",result="{result}"}}"#
        ),
    )
    .unwrap_or(0.0)
}

/// A `trade_status_sync` form signed with the sandbox's TEST-ONLY "Alipay" key.
fn alipay_form(fields: &[(&str, &str)]) -> String {
    use payroute::channel::alipay::sign as ali;
    let mut params: std::collections::BTreeMap<String, String> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signer =
        RsaSigner::from_text(&std::fs::read_to_string(key("alipay_sandbox_key.pem")).unwrap())
            .unwrap();
    ali::sign_params(&mut params, &signer);
    params.insert("sign_type".into(), "RSA2".into());
    ali::encode(&params)
}

/// A paid-trade notification for the platform's ISV app, naming `seller` when given.
fn isv_paid(no: &str, yuan: &str, seller: Option<&str>) -> String {
    let mut f = vec![
        ("app_id", "2021000000000001"),
        ("notify_type", "trade_status_sync"),
        ("notify_id", "2026120100222100005000000000000001"),
        ("notify_time", "2026-12-01 12:00:00"),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("out_trade_no", no),
        ("trade_no", "2026120122001400000000000001"),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", yuan),
        ("gmt_payment", "2026-12-01 12:00:00"),
    ];
    if let Some(s) = seller {
        f.push(("seller_id", s));
    }
    alipay_form(&f)
}

async fn post_notification(h: &Harness, channel: &str, body: &str) -> support::Reply {
    h.send(
        Method::POST,
        &format!("{}/notify/{channel}", h.api),
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await
}

async fn status(h: &Harness, merchant: &str, no: &str) -> Value {
    h.get_payment(merchant, no, false).await.body["status"].clone()
}

/// Issue 15 item 1, as reproduced: two merchants on the platform's ISV app with the same
/// out_trade_no; only m_4004's is paid. The notification (app_id shared by both) settled
/// whichever record the store returned first — m_3003's unopened page order.
#[tokio::test]
async fn an_isv_notification_settles_the_merchant_it_names_not_another_with_the_same_number() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.create(&payment(
        "m_3003",
        "isv-same-1",
        "alipay_page",
        500,
        json!({}),
    ))
    .await
    .expect_created_on("platform_alipay");
    h.create(&payment(
        "m_4004",
        "isv-same-1",
        "alipay_precreate",
        500,
        json!({}),
    ))
    .await
    .expect_created_on("platform_alipay");
    assert_eq!(h.pay("isv-same-1").await.status, 200);

    let event = h.receiver.event("payment.succeeded", "isv-same-1").await;
    assert_eq!(event["data"]["merchant_id"], "m_4004", "{event}");
    assert_eq!(status(&h, "m_4004", "isv-same-1").await, "succeeded");
    assert_eq!(status(&h, "m_3003", "isv-same-1").await, "pending");
    let sent = h.sandbox_notifications().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["answered_ok"], true, "{sent:?}");
    assert_eq!(h.receiver.told("payment.succeeded", "isv-same-1"), 1);
    h.shutdown().await;
}

/// A genuine ISV notification that names no seller cannot be matched to a merchant: it is
/// answered `fail` (Alipay retries) and changes nothing; one naming a seller that holds no
/// such order is acknowledged as another account's.
#[tokio::test]
async fn an_isv_notification_without_a_matching_seller_changes_nothing() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.faults(json!({ "drop_notifications": true })).await;
    for m in ["m_3003", "m_4004"] {
        h.create(&payment(
            m,
            "isv-seller-1",
            "alipay_precreate",
            700,
            json!({}),
        ))
        .await
        .expect_created_on("platform_alipay");
    }
    let cases = [
        (isv_paid("isv-seller-1", "7.00", None), "fail", "unresolved"),
        (
            isv_paid("isv-seller-1", "7.00", Some("2088000000009009")),
            "success",
            "wrong_account",
        ),
    ];
    for (body, answer, result) in &cases {
        let r = post_notification(&h, "platform_alipay", body).await;
        assert_eq!(r.text.trim(), *answer, "{result}");
        assert_eq!(
            notified(&h.metrics().await, "platform_alipay", result),
            1.0,
            "{result}"
        );
    }
    for m in ["m_3003", "m_4004"] {
        assert_eq!(status(&h, m, "isv-seller-1").await, "pending", "{m}");
    }
    // The same, naming m_3003's seller: m_3003's order, and only that one.
    let r = post_notification(
        &h,
        "platform_alipay",
        &isv_paid("isv-seller-1", "7.00", Some(SELLER_3003)),
    )
    .await;
    assert_eq!(r.text.trim(), "success");
    assert_eq!(status(&h, "m_3003", "isv-seller-1").await, "succeeded");
    assert_eq!(status(&h, "m_4004", "isv-seller-1").await, "pending");
    assert_eq!(
        notified(&h.metrics().await, "platform_alipay", "verified"),
        1.0
    );
    h.shutdown().await;
}

/// Issue 15 item 2: ops refresh m_4004's app_auth_token (same seller). A paid order is still
/// refunded at its account (before: 503 channel_unavailable, the binding held the old
/// token's fingerprint).
#[tokio::test]
async fn after_a_token_refresh_a_paid_isv_order_is_refunded() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let paid = h
        .paid("m_4004", "isv-refresh-1", "alipay_precreate", 900)
        .await;
    assert_eq!(paid["channel"], "platform_alipay");
    reload_edited(&h, |t| t.replace(TOKEN_4004, REFRESHED_4004)).await;

    let r = h
        .refund(&json!({
            "merchant_id": "m_4004", "out_trade_no": "isv-refresh-1",
            "out_refund_no": "isv-refresh-1-r1", "amount": 400,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    // The refund reached the sandbox's order under the new token, and nothing was refused.
    let order = &h.sandbox_orders("isv-refresh-1").await[0];
    assert_eq!(order["refunds"][0][0], "isv-refresh-1-r1", "{order}");
    let m = h.metrics().await;
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("payroute_account_refusals_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(refused.is_empty(), "nothing refused: {refused:?}");
    h.shutdown().await;
}

/// Rewrites the order's bound seller as the previous version stored it: the first 16 hex
/// digits of SHA-256 of m_4004's token (what an instance of that version still writes during
/// a rolling upgrade). Rows changed.
fn bind_by_fingerprint(h: &Harness, no: &str) -> usize {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, TOKEN_4004.as_bytes());
    let fingerprint: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    conn.execute(
        "UPDATE payments SET account = replace(account, ?1, ?2) WHERE out_trade_no = ?3",
        rusqlite::params![
            format!(r#""seller":"{SELLER_4004}""#),
            format!(r#""seller":"{fingerprint}""#),
            no
        ],
    )
    .unwrap()
}

/// Review of issue 15: an order bound by token fingerprint that the rebinding at start did not
/// see (an instance of the earlier version wrote it during a rolling upgrade, or the rebinding
/// failed) is still its merchant's: its notification is applied and it is refunded, with no
/// restart (before: the notification was acknowledged `wrong_account` and never came again —
/// a paid order lost — and the refund refused).
#[tokio::test]
async fn an_order_bound_by_token_fingerprint_after_start_is_still_served() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.create(&payment(
        "m_4004",
        "isv-legacy-2",
        "alipay_precreate",
        700,
        json!({}),
    ))
    .await
    .expect_created_on("platform_alipay");
    assert_eq!(bind_by_fingerprint(&h, "isv-legacy-2"), 1);
    assert_eq!(h.pay("isv-legacy-2").await.status, 200);
    h.receiver.event("payment.succeeded", "isv-legacy-2").await;
    let r = h
        .refund(&json!({
            "merchant_id": "m_4004", "out_trade_no": "isv-legacy-2",
            "out_refund_no": "isv-legacy-2-r1", "amount": 700,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    h.shutdown().await;
}

/// Issue 15 item 2, the upgrade: ISV orders bound before sellers were stored name their seller
/// by a fingerprint of the merchant's token. After a restart on this version they are bound to
/// the merchant's `alipay_seller_id` (rebound at start), so a refund of one still reaches its
/// account, and survives a later token refresh (without the rebinding: `503
/// channel_unavailable`, no configured channel holds the fingerprint's account).
#[tokio::test]
async fn orders_bound_by_token_fingerprint_before_the_upgrade_are_rebound_at_start() {
    let mut h = Harness::start_alipay(support::MIXED_RULES).await;
    let paid = h
        .paid("m_4004", "isv-legacy-1", "alipay_precreate", 900)
        .await;
    assert_eq!(paid["channel"], "platform_alipay");
    assert_eq!(bind_by_fingerprint(&h, "isv-legacy-1"), 1);
    h.restart().await;
    reload_edited(&h, |t| t.replace(TOKEN_4004, REFRESHED_4004)).await;

    let r = h
        .refund(&json!({
            "merchant_id": "m_4004", "out_trade_no": "isv-legacy-1",
            "out_refund_no": "isv-legacy-1-r1", "amount": 900,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let account: String = conn
        .query_row(
            "SELECT account FROM payments WHERE out_trade_no = 'isv-legacy-1'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(account.contains(SELLER_4004), "{account}");
    h.shutdown().await;
}

/// Review of issue 15: ISV orders are bound to the merchant's seller, but calls carry the
/// configured token, and nothing in the config ties the two. Ops paste m_4004's grant under
/// m_3003 (Alipay knows it as m_4004's). A refund of m_3003's paid `X` names the paid trade
/// (`trade_no`), so Alipay refunds that trade or nothing — never m_4004's `X`, which the token
/// reaches (before: m_4004's buyer was refunded).
#[tokio::test]
async fn a_refund_under_another_merchants_token_refunds_nobody_elses_trade() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    for merchant in ["m_3003", "m_4004"] {
        let paid = h
            .paid(merchant, "isv-swap-1", "alipay_precreate", 500)
            .await;
        assert_eq!(paid["channel"], "platform_alipay");
    }
    // At "Alipay", m_3003's configured token is now m_4004's grant.
    let config = Config::load(&h.config_path).unwrap();
    let grants = payroute::config::sandbox_merchants(&config.channels, &config.merchants)
        .into_iter()
        .map(|m| match m {
            payroute::sandbox::SandboxMerchant::AlipayGrant {
                app_auth_token,
                seller_id,
            } if seller_id == SELLER_3003 => payroute::sandbox::SandboxMerchant::AlipayGrant {
                app_auth_token,
                seller_id: SELLER_4004.into(),
            },
            other => other,
        })
        .collect();
    h.sandbox.set_merchants(grants);

    let r = h
        .refund(&json!({
            "merchant_id": "m_3003", "out_trade_no": "isv-swap-1",
            "out_refund_no": "isv-swap-1-r1", "amount": 500,
        }))
        .await;
    assert_ne!(r.body["status"], "succeeded", "{}", r.text);
    for order in h.sandbox_orders("isv-swap-1").await {
        assert_eq!(order["refunds"], json!([]), "nobody was refunded: {order}");
    }
    h.shutdown().await;
}

/// Issue 15 item 2: an open ISV order paid after a token refresh is settled by its
/// notification (before: `wrong_account`, acknowledged, so Alipay never sent it again).
#[tokio::test]
async fn after_a_token_refresh_the_payment_notification_is_applied() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.create(&payment(
        "m_4004",
        "isv-refresh-2",
        "alipay_precreate",
        300,
        json!({}),
    ))
    .await
    .expect_created_on("platform_alipay");
    reload_edited(&h, |t| t.replace(TOKEN_4004, REFRESHED_4004)).await;
    assert_eq!(h.pay("isv-refresh-2").await.status, 200);
    h.receiver.event("payment.succeeded", "isv-refresh-2").await;
    assert_eq!(status(&h, "m_4004", "isv-refresh-2").await, "succeeded");
    let m = h.metrics().await;
    assert_eq!(notified(&m, "platform_alipay", "verified"), 1.0, "{m}");
    // The sandbox signs the seller the refreshed token acts for: the same.
    let order = &h.sandbox_orders("isv-refresh-2").await[0];
    assert_eq!(order["seller_id"], SELLER_4004, "{order}");
    h.shutdown().await;
}

/// Issue 15 item 7: ops rename the ISV channel (same app, same keys) while orders are open,
/// then give the old name to another app. Alipay notifies the old `/notify/platform_alipay`:
/// the renamed channel, which holds the orders' account, verifies and applies them (before:
/// 404, and only the reconciler would settle the orders, minutes later).
#[tokio::test]
async fn a_renamed_channel_loses_no_notification() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    for no in ["isv-rename-1", "isv-rename-2"] {
        h.create(&payment("m_4004", no, "alipay_precreate", 1200, json!({})))
            .await
            .expect_created_on("platform_alipay");
    }
    let renamed = |t: String| {
        t.replace("\n  platform_alipay:", "\n  isv_alipay:")
            .replace("alipay: platform_alipay", "alipay: isv_alipay")
    };
    reload_edited(&h, renamed).await;
    assert_eq!(h.pay("isv-rename-1").await.status, 200);

    let event = h.receiver.event("payment.succeeded", "isv-rename-1").await;
    assert_eq!(event["data"]["merchant_id"], "m_4004");
    // Through the notification, answered `success` at its first attempt to the old path.
    let old_url = format!("{}/notify/platform_alipay", h.site.public_base_url);
    let sent = h.sandbox_notifications().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["url"], old_url.as_str());
    assert_eq!(
        (&sent[0]["attempt"], &sent[0]["answered_ok"]),
        (&json!(1), &json!(true)),
        "{sent:?}"
    );
    // Counted under the live channel that verified and applied it; no unknown channel.
    let m = h.metrics().await;
    assert_eq!(notified(&m, "isv_alipay", "verified"), 1.0, "{m}");
    assert_eq!(notified(&m, "unknown", "unknown_channel"), 0.0, "{m}");

    // The old name now belongs to another app: it cannot verify the notification, the
    // channel holding the order's account does.
    let other_app = support::alipay_channel(
        &h.upstream,
        "platform_alipay",
        "isv",
        "2021000000005005",
        "m2002_alipay_app_key.pem",
    );
    reload_edited(&h, |t| {
        t.replacen("\nrouting:", &format!("{other_app}\nrouting:"), 1)
    })
    .await;
    assert_eq!(h.pay("isv-rename-2").await.status, 200);
    h.receiver.event("payment.succeeded", "isv-rename-2").await;
    let sent = h.sandbox_notifications().await;
    assert_eq!(
        (&sent[1]["url"], &sent[1]["answered_ok"]),
        (&json!(old_url), &json!(true)),
        "{sent:?}"
    );
    let m = h.metrics().await;
    assert_eq!(notified(&m, "isv_alipay", "verified"), 2.0, "{m}");
    assert_eq!(notified(&m, "platform_alipay", "wrong_app"), 0.0, "{m}");

    // A name no channel can verify for is still unknown.
    let junk = post_notification(&h, "no_such_channel", "a=b").await;
    assert_eq!(junk.status, 404, "{}", junk.text);
    wait_until("the unknown channel counted", || async {
        notified(&h.metrics().await, "unknown", "unknown_channel") == 1.0
    })
    .await;
    h.shutdown().await;
}

/// Issue 15 item 6: an ISV page/App action carries the merchant's app_auth_token to the
/// payer (Alipay's protocol), and nothing else does: not the SQLite file (nor its WAL), not
/// the admin API, not the export, not a webhook (before: the action was stored and
/// re-broadcast as created, token and all).
#[tokio::test]
async fn an_isv_token_reaches_the_payer_and_nothing_else() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let page = payment(
        "m_4004",
        "isv-token-1",
        "alipay_page",
        800,
        json!({"return_url": "https://shop.example.com/done"}),
    );
    let r = h.create(&page).await;
    r.expect_created_on("platform_alipay");
    let url = r.body["action"]["url"].as_str().unwrap().to_string();
    assert!(
        url.contains(&format!("app_auth_token={TOKEN_4004}")),
        "{url}"
    );
    // The payer opens it: the sandbox checks its signature and knows the grant.
    let opened = h.send(Method::GET, &url, &[], "").await;
    assert_eq!(opened.status, 200, "{}", opened.text);
    assert!(
        opened.text.contains("waiting for payment"),
        "{}",
        opened.text
    );

    // A replay answers the payer's action again: rebuilt with the token, signed again.
    let again = h.create(&page).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["action"]["url"], url.as_str());

    // An App order string too.
    let app = payment("m_4004", "isv-token-2", "alipay_app", 600, json!({}));
    let r = h.create(&app).await;
    r.expect_created_on("platform_alipay");
    let order_string = r.body["action"]["order_string"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(order_string.contains(&format!("app_auth_token={TOKEN_4004}")));
    let replayed = h.create(&app).await;
    assert_eq!(
        replayed.body["action"]["order_string"],
        order_string.as_str()
    );
    let opened = h
        .send(
            Method::GET,
            &format!("{}/gateway.do?{order_string}", h.upstream.base_url),
            &[],
            "",
        )
        .await;
    assert_eq!(opened.status, 200, "{}", opened.text);

    // Paid and partly refunded: events for both reach the shop's webhook.
    assert_eq!(h.pay("isv-token-1").await.status, 200);
    h.receiver.event("payment.succeeded", "isv-token-1").await;
    let r = h
        .refund(&json!({
            "merchant_id": "m_4004", "out_trade_no": "isv-token-1",
            "out_refund_no": "isv-token-1-r1", "amount": 100,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    h.receiver.event("refund.succeeded", "isv-token-1").await;

    let mut seen = Vec::new();
    for path in [
        "/admin/payments",
        "/admin/payments?merchant_id=m_4004",
        "/admin/events",
        "/admin/refunds",
        "/admin/payments/export",
        "/admin/payments/export?format=jsonl",
    ] {
        let r = h.admin_get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        seen.push((path.to_string(), r.text));
    }
    // The stored action is still the order's, only without the token and its signature.
    assert!(seen[0].1.contains("alipay.trade.page.pay"), "{}", seen[0].1);
    for r in h.receiver.received() {
        seen.push(("a webhook".into(), r.raw));
    }
    assert!(
        seen.len() >= 8,
        "both events were delivered: {}",
        seen.len()
    );
    let db = h.db_path();
    for file in [db.clone(), db.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        seen.push((
            file.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    assert!(
        seen.iter()
            .any(|(what, text)| what.ends_with("-wal") && !text.is_empty()),
        "the WAL is there to be read"
    );
    for (what, text) in &seen {
        assert!(!text.contains(TOKEN_4004), "{what} holds the token");
        assert!(!text.contains("app_auth_token"), "{what} names the token");
    }
    h.shutdown().await;
}

/// Issue 15 item 1, refunds: both merchants paid an order with the same number and asked
/// for a refund with the same number, still processing at Alipay. A refund notification
/// naming m_4004's seller settles m_4004's refund only (before: the first record with the
/// number, m_3003's).
#[tokio::test]
async fn an_isv_refund_notification_settles_the_named_merchants_refund() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    for m in ["m_3003", "m_4004"] {
        h.create(&payment(
            m,
            "isv-ref-1",
            "alipay_precreate",
            1000,
            json!({}),
        ))
        .await
        .expect_created_on("platform_alipay");
    }
    assert_eq!(h.pay("isv-ref-1").await.status, 200);
    // Settled by queries at each bound account (this test is about the refund).
    for m in ["m_3003", "m_4004"] {
        let q = h.get_payment(m, "isv-ref-1", true).await;
        assert_eq!(q.body["status"], "succeeded", "{m}: {}", q.text);
    }

    h.faults(json!({ "alipay_refund_pending": true, "drop_notifications": true }))
        .await;
    for m in ["m_3003", "m_4004"] {
        let r = h
            .refund(&json!({
                "merchant_id": m, "out_trade_no": "isv-ref-1",
                "out_refund_no": "isv-ref-1-r", "amount": 300,
            }))
            .await;
        assert_eq!(
            (r.status, r.body["status"].as_str()),
            (201, Some("pending")),
            "{}",
            r.text
        );
    }
    let body = alipay_form(&[
        ("app_id", "2021000000000001"),
        ("notify_type", "trade_status_sync"),
        ("notify_id", "2026120100222100005000000000000002"),
        ("notify_time", "2026-12-01 12:10:00"),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("out_trade_no", "isv-ref-1"),
        ("trade_no", "2026120122001400000000000002"),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", "10.00"),
        ("seller_id", SELLER_4004),
        ("out_biz_no", "isv-ref-1-r"),
        ("refund_fee", "3.00"),
        ("gmt_refund", "2026-12-01 12:10:00.123"),
    ]);
    let r = post_notification(&h, "platform_alipay", &body).await;
    assert_eq!(r.text.trim(), "success");
    let refund = |m: &'static str| {
        let h = &h;
        async move { h.get_refund(m, "isv-ref-1-r", false).await.body["status"].clone() }
    };
    assert_eq!(refund("m_4004").await, "succeeded");
    assert_eq!(refund("m_3003").await, "pending");
    h.shutdown().await;
}
