//! The sandbox's own surface over HTTP: the fault knobs and the orders view, as the
//! money-safety tests use them through the real proxy.

use crate::support;

use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use payroute::channel::keys::{RsaSigner, RsaVerifier};
use payroute::channel::wechatpay::sign as wx;
use serde_json::{json, Value};
use support::{key, payment, Harness, Reply, SHOP_KEY};

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
        "fail_ops": ["create", "query", "close", "refund", "refund_query", "statement"],
        "fail_unsigned": true, "tamper_errors": false, "retry_after_secs": 1,
        "accounts": ["1900000109", "2088000000004004"], "fail_rate": 0.5,
        "refund_status": "PROCESSING", "alipay_refund_pending": true,
        "drop_notifications": false, "duplicate_notifications": true, "notify_delay_ms": 250,
        "corrupt_statements": true, "statement_fee_rate": "0.0038",
    });
    let r = post_faults(&h, &all).await;
    assert_eq!((r.status, &r.body), (200, &all), "{}", r.text);
    for (bad, says) in [
        (
            json!({ "fail_ops": ["pay"] }),
            "unknown fail_ops entry \"pay\"",
        ),
        (json!({ "fail_nxet": 1 }), "unknown field `fail_nxet`"),
        (
            json!({ "fail_rate": 1.5 }),
            "fail_rate must be a probability from 0 to 1, not 1.5",
        ),
        (
            json!({ "fail_rate": -0.1 }),
            "fail_rate must be a probability from 0 to 1",
        ),
        (json!({ "fail_rate": "half" }), "invalid type"),
        (
            json!({ "fail_status": 200 }),
            "fail_status must be an HTTP error status",
        ),
        (json!({ "accounts": [] }), "accounts is empty"),
        (json!({ "accounts": "1900000109" }), "invalid type"),
    ] {
        let r = post_faults(&h, &bad).await;
        assert_eq!(r.status, 400, "{bad} is refused: {}", r.text);
        assert_eq!(r.body["code"], "PARAM_ERROR", "{}", r.text);
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bad}: {message}");
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

/// A WeChat Pay account of the test config, as the sandbox knows its key.
struct WechatAccount {
    mchid: &'static str,
    serial_no: &'static str,
    keyfile: &'static str,
}

/// m_1001's own account; its mchid is also its sub_mchid under the platform.
const M1001_WECHAT: WechatAccount = WechatAccount {
    mchid: "1900000109",
    serial_no: "3775B6A45ACD588826D15E583A95F5DD",
    keyfile: "m1001_apiclient_key.pem",
};
const M1001_APPID: &str = "wx2421b1c4370ec43b";
const M2002_WECHAT: WechatAccount = WechatAccount {
    mchid: "1900000209",
    serial_no: "1DDE55AD98ED71D6EDD4A4A16996DE7B",
    keyfile: "m2002_apiclient_key.pem",
};
/// The platform (service provider) account.
const PLATFORM_WECHAT: WechatAccount = WechatAccount {
    mchid: "1900000100",
    serial_no: "5157F09EFDC096DE15EBE81A47057A72",
    keyfile: "platform_apiclient_key.pem",
};

fn signer(keyfile: &str) -> RsaSigner {
    RsaSigner::from_text(&std::fs::read_to_string(key(keyfile)).unwrap()).unwrap()
}

fn verifier(keyfile: &str) -> RsaVerifier {
    RsaVerifier::from_text(&std::fs::read_to_string(key(keyfile)).unwrap()).unwrap()
}

/// A create straight at the sandbox's `/v3`, signed as `account`; the answer's
/// `Wechatpay-*` signature is checked (errors are signed too).
async fn wechat_create(h: &Harness, account: &WechatAccount, path: &str, body: &Value) -> Reply {
    let body = body.to_string();
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nonce = wx::nonce();
    let auth = wx::authorization(
        &signer(account.keyfile),
        account.mchid,
        account.serial_no,
        "POST",
        path,
        ts,
        &nonce,
        body.as_bytes(),
    );
    let r = h
        .send(
            Method::POST,
            &format!("{}{path}", h.sandbox_url),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            &body,
        )
        .await;
    let header = |n: &str| r.headers[n].to_str().unwrap().to_string();
    let msg = wx::response_message(
        &header("wechatpay-timestamp"),
        &header("wechatpay-nonce"),
        r.text.as_bytes(),
    );
    assert!(
        verifier("wechatpay_pub_key.pem").verify_b64(&msg, &header("wechatpay-signature")),
        "the answer is signed: {}",
        r.text
    );
    r
}

/// A direct-mode Native create of `no` at `account` (appid `appid`).
async fn direct_create(h: &Harness, account: &WechatAccount, appid: &str, no: &str) -> Reply {
    let body = json!({
        "appid": appid, "mchid": account.mchid, "description": "mug", "out_trade_no": no,
        "notify_url": "https://shop.example/notify", "amount": { "total": 100, "currency": "CNY" },
    });
    wechat_create(h, account, "/v3/pay/transactions/native", &body).await
}

/// A partner-mode Native create of `no` by the platform for `sub_mchid`.
async fn partner_create(h: &Harness, sub_mchid: &str, no: &str) -> Reply {
    let body = json!({
        "sp_appid": "wx8888888888888888", "sp_mchid": PLATFORM_WECHAT.mchid,
        "sub_mchid": sub_mchid, "description": "mug", "out_trade_no": no,
        "notify_url": "https://shop.example/notify", "amount": { "total": 100, "currency": "CNY" },
    });
    wechat_create(
        h,
        &PLATFORM_WECHAT,
        "/v3/pay/partner/transactions/native",
        &body,
    )
    .await
}

#[track_caller]
fn expect_no_auth(r: &Reply) {
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("NO_AUTH")),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn one_wechat_merchant_refuses_its_creates_with_no_auth_the_others_are_served() {
    let h = Harness::start().await;
    h.faults(json!({
        "accounts": [M1001_WECHAT.mchid], "fail_rate": 1.0, "fail_code": "NO_AUTH",
        "fail_status": 403, "fail_ops": ["create"],
    }))
    .await;
    // The listed mchid refuses, on its own account and as a sub-merchant of the platform.
    expect_no_auth(&direct_create(&h, &M1001_WECHAT, M1001_APPID, "acc-wx-1").await);
    expect_no_auth(&partner_create(&h, M1001_WECHAT.mchid, "acc-wx-2").await);
    // Another merchant's own account, and the platform for another sub-merchant: served.
    let r = direct_create(&h, &M2002_WECHAT, "wx3a2b1c4d5e6f7a8b", "acc-wx-3").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = partner_create(&h, M2002_WECHAT.mchid, "acc-wx-4").await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Through payroute: m_1001's create is refused for the account's sake (402, the code
    // named), another merchant's goes through the platform.
    let r = h
        .create(&payment(
            "m_1001",
            "acc-wx-5",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(402, "channel_rejected");
    assert!(r.error_message().contains("NO_AUTH"), "{}", r.text);
    let r = h
        .create(&payment(
            "m_4004",
            "acc-wx-6",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // Only m_1001's own account (its appid), not the platform acting for it: without
    // fail_status, NO_AUTH is answered 403 as WeChat Pay does.
    h.faults(json!({ "accounts": [M1001_APPID], "fail_rate": 1.0, "fail_code": "NO_AUTH" }))
        .await;
    expect_no_auth(&direct_create(&h, &M1001_WECHAT, M1001_APPID, "acc-wx-7").await);
    let r = partner_create(&h, M1001_WECHAT.mchid, "acc-wx-8").await;
    assert_eq!(r.status, 200, "{}", r.text);
    h.shutdown().await;
}

/// `fail_rate: 0.5` fails about half of the listed merchant's creates, none of another's.
/// 200 draws: the bound (30%–70%) is over 5.6 standard deviations wide on each side.
#[tokio::test]
async fn half_of_one_wechat_merchants_creates_fail() {
    let h = Harness::start().await;
    h.faults(json!({
        "accounts": [M1001_WECHAT.mchid], "fail_rate": 0.5, "fail_code": "NO_AUTH",
        "fail_ops": ["create"],
    }))
    .await;
    let mut refused = 0;
    for i in 0..200 {
        let r = direct_create(&h, &M1001_WECHAT, M1001_APPID, &format!("half-wx-{i}")).await;
        match r.status {
            200 => {}
            _ => {
                expect_no_auth(&r);
                refused += 1;
            }
        }
        if i % 10 == 0 {
            let r = direct_create(
                &h,
                &M2002_WECHAT,
                "wx3a2b1c4d5e6f7a8b",
                &format!("half-wx-o{i}"),
            )
            .await;
            assert_eq!(r.status, 200, "another merchant never fails: {}", r.text);
        }
    }
    assert!((60..=140).contains(&refused), "{refused} of 200 refused");
    h.shutdown().await;
}

/// The test config's Alipay apps and m_4004's and m_1001's grants to the platform's app.
const PLATFORM_ALIPAY: (&str, &str) = ("2021000000000001", "platform_alipay_app_key.pem");
const M2002_ALIPAY: (&str, &str) = ("2021000000002002", "m2002_alipay_app_key.pem");
const TOKEN_4004: &str = "tok_m_4004_TEST_ONLY";
const SELLER_4004: &str = "2088000000004004";
const TOKEN_1001: &str = "tok_m_1001_TEST_ONLY";

/// An `alipay.trade.precreate` of `no` straight at the sandbox's gateway by `app` (ISV: for
/// `token`'s seller); its inner answer, whose signature is checked.
async fn precreate(
    h: &Harness,
    (app_id, keyfile): (&str, &str),
    token: Option<&str>,
    no: &str,
) -> Value {
    let biz = json!({ "out_trade_no": no, "total_amount": "1.00", "subject": "mug" });
    support::alipay_call(h, (app_id, keyfile), token, "alipay.trade.precreate", &biz).await
}

#[track_caller]
fn expect_access_forbidden(v: &Value) {
    assert_eq!(
        (v["code"].as_str(), v["sub_code"].as_str()),
        (Some("40004"), Some("ACQ.ACCESS_FORBIDDEN")),
        "{v}"
    );
}

#[tokio::test]
async fn one_alipay_seller_or_app_refuses_its_creates_the_others_are_served() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.faults(json!({
        "accounts": [SELLER_4004], "fail_rate": 1.0, "fail_code": "ACQ.ACCESS_FORBIDDEN",
        "fail_ops": ["create"],
    }))
    .await;
    // The seller m_4004's token acts for refuses; the platform's other seller and a
    // direct app are served.
    expect_access_forbidden(&precreate(&h, PLATFORM_ALIPAY, Some(TOKEN_4004), "acc-ali-1").await);
    let v = precreate(&h, PLATFORM_ALIPAY, Some(TOKEN_1001), "acc-ali-2").await;
    assert_eq!(v["code"], "10000", "{v}");
    let v = precreate(&h, M2002_ALIPAY, None, "acc-ali-3").await;
    assert_eq!(v["code"], "10000", "{v}");
    // Through payroute: m_4004's create is refused, m_1001's goes through.
    let r = h
        .create(&payment(
            "m_4004",
            "acc-ali-4",
            "alipay_precreate",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(402, "channel_rejected");
    assert!(
        r.error_message().contains("ACQ.ACCESS_FORBIDDEN"),
        "{}",
        r.text
    );
    let r = h
        .create(&payment(
            "m_1001",
            "acc-ali-5",
            "alipay_precreate",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // By app_id: m_2002's own app refuses, the platform's app is served.
    h.faults(json!({
        "accounts": [M2002_ALIPAY.0], "fail_rate": 1.0, "fail_code": "ACQ.ACCESS_FORBIDDEN",
    }))
    .await;
    expect_access_forbidden(&precreate(&h, M2002_ALIPAY, None, "acc-ali-6").await);
    let v = precreate(&h, PLATFORM_ALIPAY, Some(TOKEN_4004), "acc-ali-7").await;
    assert_eq!(v["code"], "10000", "{v}");
    h.shutdown().await;
}

#[tokio::test]
async fn half_of_one_alipay_sellers_creates_fail() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.faults(json!({
        "accounts": [SELLER_4004], "fail_rate": 0.5, "fail_code": "ACQ.ACCESS_FORBIDDEN",
        "fail_ops": ["create"],
    }))
    .await;
    let mut refused = 0;
    for i in 0..200 {
        let v = precreate(
            &h,
            PLATFORM_ALIPAY,
            Some(TOKEN_4004),
            &format!("half-ali-{i}"),
        )
        .await;
        if v["code"] != "10000" {
            expect_access_forbidden(&v);
            refused += 1;
        }
        if i % 10 == 0 {
            let v = precreate(
                &h,
                PLATFORM_ALIPAY,
                Some(TOKEN_1001),
                &format!("half-ali-o{i}"),
            )
            .await;
            assert_eq!(v["code"], "10000", "another seller never fails: {v}");
        }
    }
    assert!((60..=140).contains(&refused), "{refused} of 200 refused");
    h.shutdown().await;
}
