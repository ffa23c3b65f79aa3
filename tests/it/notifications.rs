//! Provider notifications through real sockets: a verified one makes the payment final and
//! the shop hears of it once, signed; anything unverifiable or not matching the order changes
//! nothing, reaches no shop, and is counted with its result.

use crate::support;

use http::Method;
use payroute::channel::keys::RsaSigner;
use payroute::channel::wechatpay::sign;
use serde_json::{json, Value};
use support::{apiv3_key, key, payment, wait_until, Harness, Reply};

/// A WeChat Pay v3 notification as the sandbox's "WeChat Pay" would sign it: headers and body.
struct WechatNotification {
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl WechatNotification {
    /// `TRANSACTION.SUCCESS` for `transaction`, encrypted with `apiv3`, signed at `ts`.
    fn paid(transaction: &Value, apiv3: &str, ts: i64) -> WechatNotification {
        let nonce = "n0nce1234567";
        let ciphertext = sign::aead_encrypt(
            apiv3.as_bytes(),
            nonce,
            "transaction",
            transaction.to_string().as_bytes(),
        )
        .unwrap();
        let body = json!({
            "id": "EV-test", "create_time": "2026-11-25T12:00:00+08:00",
            "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": { "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                          "associated_data": "transaction", "nonce": nonce,
                          "original_type": "transaction" },
        })
        .to_string();
        WechatNotification::signed(body, ts)
    }

    fn signed(body: String, ts: i64) -> WechatNotification {
        let platform = RsaSigner::from_text(
            &std::fs::read_to_string(key("wechatpay_platform_key.pem")).unwrap(),
        )
        .unwrap();
        let (ts, nonce) = (ts.to_string(), "HdrN0nce");
        let signature = platform.sign_b64(&sign::response_message(&ts, nonce, body.as_bytes()));
        WechatNotification {
            headers: vec![
                ("wechatpay-serial", "PUB_KEY_ID_SANDBOX_TEST_ONLY".into()),
                ("wechatpay-timestamp", ts),
                ("wechatpay-nonce", nonce.into()),
                ("wechatpay-signature", signature),
                (
                    "wechatpay-signature-type",
                    "WECHATPAY2-SHA256-RSA2048".into(),
                ),
            ],
            body,
        }
    }

    async fn send(&self, h: &Harness, channel: &str) -> Reply {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.send(
            Method::POST,
            &format!("{}/notify/{channel}", h.api),
            &headers,
            &self.body,
        )
        .await
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// What m_1001's own account (direct mode) reports for a paid order.
fn direct_paid(out_trade_no: &str, total: u64) -> Value {
    json!({
        "mchid": "1900000109", "appid": "wx2421b1c4370ec43b",
        "out_trade_no": out_trade_no, "transaction_id": "4200000000000000000000000777",
        "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
        "success_time": "2026-11-25T12:00:00+08:00",
        "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" },
    })
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

#[tokio::test]
async fn a_verified_notification_makes_the_payment_final_and_the_shop_hears_once() {
    let h = Harness::start().await;
    let r = h
        .create(&payment(
            "m_1001",
            "n-ok-1",
            "wechat_native",
            1999,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let n = WechatNotification::paid(
        &direct_paid("n-ok-1", 1999),
        &apiv3_key("1900000109"),
        now(),
    );
    let answer = n.send(&h, "m1001_wechat").await;
    assert_eq!(answer.status, 204, "{}", answer.text);
    assert_eq!(
        h.get_payment("m_1001", "n-ok-1", false).await.body["status"],
        "succeeded"
    );
    let event = h.receiver.event("payment.succeeded", "n-ok-1").await;
    assert_eq!(event["data"]["status"], "succeeded");
    assert_eq!(event["data"]["amount"], 1999);
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert!(h.receiver.received().iter().all(|r| r.signature_verifies()));
    // The notification's request id travels with the event, in its body and its header.
    let request_id = event["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        answer.headers["x-request-id"].to_str().unwrap(),
        request_id,
        "the event names the notification that caused it"
    );
    assert!(h
        .receiver
        .received()
        .iter()
        .all(|r| r.request_id.as_deref() == Some(request_id.as_str())));

    // WeChat resends: acknowledged, nothing changes, no second event.
    assert_eq!(n.send(&h, "m1001_wechat").await.status, 204);
    let m = h.metrics().await;
    assert_eq!(notified(&m, "m1001_wechat", "verified"), 1.0);
    assert_eq!(notified(&m, "m1001_wechat", "duplicate"), 1.0);
    let events: Vec<Value> = h
        .receiver
        .accepted()
        .into_iter()
        .filter(|e| e["data"]["out_trade_no"] == "n-ok-1")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn unverifiable_or_mismatched_notifications_change_nothing_and_reach_no_shop() {
    let h = Harness::start().await;
    for no in ["n-bad-1", "n-bad-2"] {
        let r = h
            .create(&payment("m_1001", no, "wechat_native", 500, json!({})))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let own = apiv3_key("1900000109");
    let cases: Vec<(&str, WechatNotification, u16, &str)> = vec![
        // Forged: signed with a key that is not WeChat Pay's.
        (
            "forged",
            {
                let mut n = WechatNotification::paid(&direct_paid("n-bad-1", 500), &own, now());
                let other = RsaSigner::from_text(
                    &std::fs::read_to_string(key("m2002_apiclient_key.pem")).unwrap(),
                )
                .unwrap();
                let ts = n.headers[1].1.clone();
                n.headers[3].1 =
                    other.sign_b64(&sign::response_message(&ts, "HdrN0nce", n.body.as_bytes()));
                n
            },
            401,
            "bad_signature",
        ),
        // Tampered after signing.
        (
            "tampered",
            {
                let mut n = WechatNotification::paid(&direct_paid("n-bad-1", 500), &own, now());
                n.body = n.body.replace("支付成功", "支付成功 ");
                n
            },
            401,
            "bad_signature",
        ),
        // Genuine but ten minutes old.
        (
            "stale",
            WechatNotification::paid(&direct_paid("n-bad-1", 500), &own, now() - 600),
            401,
            "stale",
        ),
        // WeChat Pay's signature probe.
        (
            "probe",
            {
                let mut n = WechatNotification::paid(&direct_paid("n-bad-1", 500), &own, now());
                n.headers[3].1 = "WECHATPAY/SIGNTEST/abc".into();
                n
            },
            401,
            "probe",
        ),
        // Genuinely signed, but its resource does not decrypt with the channel's APIv3 key
        // (ours, or theirs, out of step after a rotation).
        (
            "undecryptable",
            WechatNotification::paid(
                &direct_paid("n-bad-1", 500),
                "0123456789abcdef0123456789abcdef",
                now(),
            ),
            401,
            "decrypt",
        ),
        // Verified, but another amount than the order's.
        (
            "wrong amount",
            WechatNotification::paid(&direct_paid("n-bad-1", 1), &own, now()),
            204,
            "mismatch",
        ),
        // Verified, but for an order this proxy never saw.
        (
            "unknown order",
            WechatNotification::paid(&direct_paid("n-nope", 500), &own, now()),
            204,
            "unknown_order",
        ),
        // Verified by the platform's channel, but the order is bound to m_1001's own account.
        (
            "wrong account",
            {
                let mut t = direct_paid("n-bad-2", 500);
                t = json!({
                    "sp_mchid": "1900000100", "sp_appid": "wx8888888888888888", "sub_mchid": "1900000109",
                    "out_trade_no": "n-bad-2", "transaction_id": "4200000000000000000000000778",
                    "trade_type": "NATIVE", "trade_state": "SUCCESS", "success_time": t["success_time"],
                    "amount": t["amount"],
                });
                WechatNotification::paid(&t, &apiv3_key("1900000100"), now())
            },
            204,
            "wrong_account",
        ),
    ];
    for (what, n, status, result) in &cases {
        let channel = if *what == "wrong account" {
            "platform_wechat"
        } else {
            "m1001_wechat"
        };
        let answer = n.send(&h, channel).await;
        assert_eq!(answer.status, *status, "{what}: {}", answer.text);
        if *status != 204 {
            // WeChat Pay's failure shape: it resends on any non-2xx.
            assert_eq!(answer.body["code"], "FAIL", "{what}: {}", answer.text);
        }
        let m = h.metrics().await;
        assert!(
            notified(&m, channel, result) >= 1.0,
            "{what} counted as {result}"
        );
    }
    for no in ["n-bad-1", "n-bad-2"] {
        assert_eq!(
            h.get_payment("m_1001", no, false).await.body["status"],
            "pending",
            "{no} unchanged"
        );
    }
    // Forgeries are the sender's fault, not payroute's: no 5xx for an API 5xx alert to see.
    let m = h.metrics().await;
    let notify = |class: &str| {
        support::metric(
            &m,
            &format!(r#"payroute_http_requests_total{{route="notify",status_class="{class}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!((notify("4xx"), notify("5xx")), (5.0, 0.0), "{m}");
    // Nothing reached the shop (any event would have been delivered by now: the outbox is
    // woken by every write, and a verified one above is delivered in the same time).
    let ok = WechatNotification::paid(&direct_paid("n-bad-1", 500), &own, now());
    assert_eq!(ok.send(&h, "m1001_wechat").await.status, 204);
    h.receiver.event("payment.succeeded", "n-bad-1").await;
    let events: Vec<Value> = h.receiver.accepted();
    assert_eq!(
        events.len(),
        1,
        "only the genuine notification's event: {events:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn paying_and_refunding_in_the_sandbox_tell_the_shop_once_in_both_providers_and_modes() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    // Providers resend: every notification arrives twice.
    h.faults(json!({ "duplicate_notifications": true })).await;
    let cases = [
        ("m_1001", "e2e-wx-direct", "wechat_native", "m1001_wechat"),
        (
            "m_4004",
            "e2e-wx-partner",
            "wechat_jsapi",
            "platform_wechat",
        ),
        (
            "m_2002",
            "e2e-ali-direct",
            "alipay_precreate",
            "m2002_alipay",
        ),
        (
            "m_4004",
            "e2e-ali-isv",
            "alipay_precreate",
            "platform_alipay",
        ),
    ];
    for (merchant, no, method, channel) in cases {
        h.create(&payment(merchant, no, method, 1200, json!({})))
            .await
            .expect_created_on(channel);
        assert_eq!(h.pay(no).await.status, 200);
        // No refresh: the provider's notification alone brings the news.
        let paid = h.receiver.event("payment.succeeded", no).await;
        assert_eq!(paid["data"]["status"], "succeeded", "{no}");
        assert_eq!(paid["data"]["channel"], channel);
        let r = h
            .refund(&json!({"merchant_id": merchant, "out_trade_no": no, "out_refund_no": format!("{no}-r"), "amount": 1200}))
            .await;
        assert_eq!(r.status, 201, "{no}: {}", r.text);
        let refunded = h.receiver.event("refund.succeeded", no).await;
        assert_eq!(refunded["data"]["out_refund_no"], format!("{no}-r"));
    }
    // Every notification was sent (and answered) twice...
    wait_until("every notification answered twice", || async {
        let list = h.sandbox_notifications().await;
        list.iter().filter(|n| n["answered_ok"] == true).count() == 2 * 2 * cases.len()
    })
    .await;
    // ...and each state change was written, and told, once.
    let written = h.admin_get("/admin/events?limit=1000").await.body["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(written.len(), 2 * cases.len(), "{written:?}");
    let m = h.metrics().await;
    for (_, _, _, channel) in cases {
        assert!(
            notified(&m, channel, "duplicate") >= 1.0,
            "{channel} saw resends"
        );
    }
    for (_, no, _, _) in cases {
        let told: Vec<String> = h
            .receiver
            .accepted()
            .iter()
            .filter(|e| e["data"]["out_trade_no"] == no)
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(told, ["payment.succeeded", "refund.succeeded"], "{no}");
    }
    assert!(h.receiver.received().iter().all(|r| r.signature_verifies()));
    h.shutdown().await;
}

/// An Alipay `trade_status_sync` form signed with `signer` (sign_type added after signing,
/// as Alipay leaves it out of the signed string).
fn alipay_form(fields: &[(&str, &str)], signer_key: &str) -> String {
    use payroute::channel::alipay::sign as ali;
    let mut params: std::collections::BTreeMap<String, String> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signer = RsaSigner::from_text(&std::fs::read_to_string(key(signer_key)).unwrap()).unwrap();
    ali::sign_params(&mut params, &signer);
    params.insert("sign_type".into(), "RSA2".into());
    ali::encode(&params)
}

#[tokio::test]
async fn alipay_notifications_forged_tampered_or_for_another_app_change_nothing() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.faults(json!({ "drop_notifications": true })).await;
    let r = h
        .create(&payment(
            "m_2002",
            "n-ali-1",
            "alipay_precreate",
            1999,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let fields = |app_id: &'static str, amount: &'static str| {
        vec![
            ("notify_type", "trade_status_sync"),
            ("notify_id", "n-1"),
            ("notify_time", "2026-11-25 12:00:00"),
            ("app_id", app_id),
            ("charset", "utf-8"),
            ("version", "1.0"),
            ("out_trade_no", "n-ali-1"),
            ("trade_no", "2026112522001400000000000001"),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", amount),
            ("gmt_payment", "2026-11-25 12:00:00"),
        ]
    };
    let post = |body: String| {
        let h = &h;
        async move {
            h.send(
                Method::POST,
                &format!("{}/notify/m2002_alipay", h.api),
                &[("content-type", "application/x-www-form-urlencoded")],
                &body,
            )
            .await
        }
    };
    let cases = [
        // Signed with the merchant's own app key, not Alipay's.
        (
            alipay_form(
                &fields("2021000000002002", "19.99"),
                "m2002_alipay_app_key.pem",
            ),
            "fail",
            "bad_signature",
        ),
        // Alipay's signature, then the amount changed.
        (
            alipay_form(
                &fields("2021000000002002", "19.99"),
                "alipay_sandbox_key.pem",
            )
            .replace("total_amount=19.99", "total_amount=0.01"),
            "fail",
            "bad_signature",
        ),
        // Genuine, but for another app.
        (
            alipay_form(
                &fields("2021000000009999", "19.99"),
                "alipay_sandbox_key.pem",
            ),
            "success",
            "wrong_app",
        ),
        // Genuine, but another amount than the order's.
        (
            alipay_form(
                &fields("2021000000002002", "0.01"),
                "alipay_sandbox_key.pem",
            ),
            "success",
            "mismatch",
        ),
    ];
    for (body, answer, result) in cases {
        let r = post(body).await;
        assert_eq!(r.text.trim(), answer, "{result}");
        let m = h.metrics().await;
        assert!(
            notified(&m, "m2002_alipay", result) >= 1.0,
            "{result} counted"
        );
    }
    assert_eq!(
        h.get_payment("m_2002", "n-ali-1", false).await.body["status"],
        "pending"
    );
    // The genuine one is applied, told once, and answered `success` after the commit.
    let r = post(alipay_form(
        &fields("2021000000002002", "19.99"),
        "alipay_sandbox_key.pem",
    ))
    .await;
    assert_eq!(r.text.trim(), "success");
    h.receiver.event("payment.succeeded", "n-ali-1").await;
    assert_eq!(h.receiver.accepted().len(), 1);
    h.shutdown().await;
}

/// A verified notification that meets the store away: counted `store_error` and answered as
/// a failure, so that the provider sends it again; nothing reaches the shop. Once the store
/// is back, the resend makes the payment final and the shop hears of it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_meeting_a_store_error_is_failed_for_a_resend() {
    let forwarder = support::PgForwarder::start().await;
    let url = forwarder.url(&support::pg_url());
    let Some(h) = Harness::start_on_postgres_at(support::RULES, Some(url)).await else {
        return;
    };
    h.create(&payment(
        "m_1001",
        "n-se-1",
        "wechat_native",
        1999,
        json!({}),
    ))
    .await
    .expect_created_on("m1001_wechat");
    let n = WechatNotification::paid(
        &direct_paid("n-se-1", 1999),
        &apiv3_key("1900000109"),
        now(),
    );
    forwarder.cut();
    let answer = n.send(&h, "m1001_wechat").await;
    assert!(
        answer.status >= 500,
        "a failure, for a resend: {} {}",
        answer.status,
        answer.text
    );
    let m = h.metrics().await;
    assert_eq!(notified(&m, "m1001_wechat", "store_error"), 1.0);
    assert_eq!(notified(&m, "m1001_wechat", "verified"), 0.0);
    assert!(h.receiver.received().is_empty());

    forwarder.restore().await;
    wait_until("a resend to be taken once the store is back", || async {
        n.send(&h, "m1001_wechat").await.status == 204
    })
    .await;
    assert_eq!(
        h.get_payment("m_1001", "n-se-1", false).await.body["status"],
        "succeeded"
    );
    h.receiver.event("payment.succeeded", "n-se-1").await;
    assert_eq!(h.receiver.told("payment.succeeded", "n-se-1"), 1);
    h.shutdown().await;
}
