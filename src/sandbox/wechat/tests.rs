use super::super::Sandbox;
use super::*;

const MCH: &str = "1900000001";
/// The sandbox's own address as the tests' requests name it.
const BASE: &str = "http://sandbox.test";

fn order_body(no: &str, total: u64) -> Vec<u8> {
    json!({
        "appid": "wx_sandbox", "mchid": MCH, "description": "d", "out_trade_no": no,
        "notify_url": "https://shop.example/n", "amount": { "total": total, "currency": "CNY" },
    })
    .to_string()
    .into_bytes()
}

fn refund_body(no: &str, refund_no: &str, refund: u64, total: u64) -> Vec<u8> {
    json!({
        "out_trade_no": no, "out_refund_no": refund_no, "notify_url": "https://shop.example/r",
        "amount": { "refund": refund, "total": total, "currency": "CNY" },
    })
    .to_string()
    .into_bytes()
}

fn faults(v: Value) -> Faults {
    serde_json::from_value(v).unwrap()
}

fn view(sb: &Sandbox, no: &str) -> Value {
    let key = (MCH.to_string(), no.to_string());
    sb.wechat.view(&key, &sb.wechat.orders.get(&key).unwrap())
}

#[test]
fn create_calls_count_every_signed_create_and_the_account_is_shown() {
    let sb = Sandbox::new(Vec::new());
    assert_eq!(
        sb.wechat
            .create(MCH, false, "native", &order_body("c-1", 100))
            .0,
        200
    );
    assert_eq!(
        sb.wechat
            .create(MCH, false, "native", &order_body("c-1", 100))
            .0,
        200
    );
    // Another amount is refused, but it arrived: it counts.
    assert_eq!(
        sb.wechat
            .create(MCH, false, "native", &order_body("c-1", 5))
            .0,
        400
    );
    let mut o = sb
        .wechat
        .orders
        .get_mut(&(MCH.into(), "c-1".into()))
        .unwrap();
    o.mark_paid(1);
    drop(o);
    let (status, v) = sb
        .wechat
        .create(MCH, false, "native", &order_body("c-1", 100));
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (403, Some("ORDERPAID"))
    );
    let v = view(&sb, "c-1");
    assert_eq!(v["create_calls"], 4);
    assert_eq!(
        v["account"],
        json!({"provider": "wechatpay", "mode": "direct", "mchid": MCH, "sub_mchid": null})
    );
    assert_eq!(
        (v["mchid"].as_str(), v["state"].as_str()),
        (Some(MCH), Some("SUCCESS"))
    );
    assert_eq!(v["request"]["out_trade_no"], "c-1");
}

#[test]
fn refund_status_is_kept_and_holds_money_unless_closed() {
    let sb = Sandbox::new(Vec::new());
    sb.wechat
        .create(MCH, false, "native", &order_body("r-1", 100));
    sb.wechat
        .orders
        .get_mut(&(MCH.into(), "r-1".into()))
        .unwrap()
        .mark_paid(1);
    let abnormal = faults(json!({ "refund_status": "ABNORMAL" }));
    let (status, v) = sb
        .wechat
        .refund(MCH, &refund_body("r-1", "r-1-a", 60, 100), &abnormal);
    assert_eq!(
        (status.as_u16(), v["status"].as_str()),
        (200, Some("ABNORMAL"))
    );
    assert!(v.get("success_time").is_none());
    let (_, q) = sb.wechat.refund_query(MCH, None, "r-1-a");
    assert_eq!(q["status"], "ABNORMAL");
    // The ABNORMAL refund still holds 60 of the 100.
    let (status, v) = sb
        .wechat
        .refund(MCH, &refund_body("r-1", "r-1-b", 50, 100), &abnormal);
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (403, Some("NOT_ENOUGH"))
    );
    // A CLOSED refund gives its amount back.
    let closed = faults(json!({ "refund_status": "CLOSED" }));
    let (_, v) = sb
        .wechat
        .refund(MCH, &refund_body("r-1", "r-1-c", 40, 100), &closed);
    assert_eq!(v["status"], "CLOSED");
    let (status, v) = sb.wechat.refund(
        MCH,
        &refund_body("r-1", "r-1-d", 40, 100),
        &Faults::default(),
    );
    assert_eq!(
        (status.as_u16(), v["status"].as_str()),
        (200, Some("SUCCESS"))
    );
    assert!(v["success_time"].is_string());
    assert_eq!(
        view(&sb, "r-1")["refunds"][0],
        json!(["r-1-a", 60, q["refund_id"], "ABNORMAL"])
    );
}

#[tokio::test]
async fn every_answer_is_signed_with_its_type_and_tamper_errors_only_spoils_errors() {
    let sb = Sandbox::new(Vec::new());
    *sb.shared.faults() = faults(json!({ "tamper_errors": true }));
    let key = sb.wechat.signer.verifier();
    let answer = |status: StatusCode, body: Value| {
        sb.shared.respond(
            move |_| Outcome::done((status, body), !status.is_success()),
            |(status, body), signing| sb.wechat.signed(status, body, signing),
        )
    };
    let verifies = |resp: &Answer, body: &Value| {
        let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
        assert_eq!(h("wechatpay-signature-type"), "WECHATPAY2-SHA256-RSA2048");
        assert_eq!(h("wechatpay-serial"), PUBLIC_KEY_ID);
        let body = body.to_string();
        let msg = sign::response_message(
            &h("wechatpay-timestamp"),
            &h("wechatpay-nonce"),
            body.as_bytes(),
        );
        key.verify_b64(&msg, &h("wechatpay-signature"))
    };
    let ok = json!({"a": 1});
    assert!(verifies(&answer(StatusCode::OK, ok.clone()).await, &ok));
    let err = json!({"code": "SYSTEM_ERROR"});
    let resp = answer(StatusCode::INTERNAL_SERVER_ERROR, err.clone()).await;
    assert!(!verifies(&resp, &err), "tamper_errors spoils errors");
    *sb.shared.faults() = Faults::default();
    let resp = answer(StatusCode::INTERNAL_SERVER_ERROR, err.clone()).await;
    assert!(verifies(&resp, &err), "errors are signed too");
}

#[test]
fn a_hostile_timestamp_is_refused_without_overflow() {
    let sb = Sandbox::new(Vec::new());
    for ts in [i64::MIN, i64::MAX] {
        let mut headers = http::HeaderMap::new();
        let auth = format!(
            r#"WECHATPAY2-SHA256-RSA2048 mchid="{MCH}",nonce_str="N",timestamp="{ts}",serial_no="S",signature="x""#
        );
        headers.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        let err = sb
            .wechat
            .check_signature(&Method::GET, &headers, "/v3/x", b"")
            .unwrap_err();
        assert!(matches!(err, super::SignatureRefused::Stale), "{err}");
    }
}

mod notifications {
    use std::sync::Arc;

    use super::super::super::notify::testing::Fake;
    use super::super::super::SandboxMerchant;
    use super::super::PLATFORM_KEY_PEM;
    use super::*;
    use crate::channel::keys::RsaSigner;
    use crate::channel::wechatpay::WechatVerifier;
    use crate::secret::Secret;

    const KEY: &str = "0123456789abcdefSANDBOXtestONLY!";
    const SP: &str = "1900000100";

    fn sandbox(fake: &Arc<Fake>, keyed: &[&str]) -> Arc<Sandbox> {
        let verifier = RsaSigner::from_text(PLATFORM_KEY_PEM).unwrap().verifier();
        let merchants = keyed
            .iter()
            .map(|m| SandboxMerchant::Wechat {
                mchid: m.to_string(),
                serial_no: "S".into(),
                key: verifier.clone(),
                apiv3_key: Some(Secret::new(KEY)),
                fee_rate: FeeRate::default(),
            })
            .collect();
        Sandbox::with_transport(merchants, fake.clone())
    }

    /// Checks the signature headers and returns (body, decrypted resource).
    fn open(sb: &Sandbox, fake: &Fake, i: usize, serial: &str) -> (Value, Value) {
        let r = &fake.received.lock().unwrap()[i];
        let h = |n: &str| r.headers[n].to_str().unwrap().to_string();
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(h("wechatpay-signature-type"), "WECHATPAY2-SHA256-RSA2048");
        assert_eq!(h("wechatpay-serial"), serial);
        let verifier = WechatVerifier {
            public_key: Some((PUBLIC_KEY_ID.into(), sb.wechat.signer.verifier())),
            certificates: [(sb.wechat.cert_serial.clone(), sb.wechat.signer.verifier())].into(),
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        verifier
            .verify(
                serial,
                &h("wechatpay-timestamp"),
                &h("wechatpay-nonce"),
                &h("wechatpay-signature"),
                &r.body,
                now,
            )
            .unwrap();
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let res = &body["resource"];
        assert_eq!(res["algorithm"], "AEAD_AES_256_GCM");
        assert_eq!(res["associated_data"], res["original_type"]);
        let nonce = res["nonce"].as_str().unwrap();
        assert_eq!(nonce.len(), 12);
        let plain = sign::aead_decrypt(
            KEY.as_bytes(),
            nonce,
            res["associated_data"].as_str().unwrap(),
            res["ciphertext"].as_str().unwrap(),
        )
        .unwrap();
        (body, serde_json::from_slice(&plain).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn a_payment_is_notified_signed_and_encrypted_as_the_query_answers_it() {
        let fake = Arc::new(Fake::new(&[], (204, "")));
        let sb = sandbox(&fake, &[MCH]);
        let mut body: Value = serde_json::from_slice(&order_body("w-1", 100)).unwrap();
        body["notify_url"] = json!("http://127.0.0.1:9/notify/wx");
        body["payer"] = json!({"openid": "o-payer"});
        assert_eq!(
            sb.wechat
                .create(MCH, false, "jsapi", &body.to_string().into_bytes())
                .0,
            200
        );
        assert_eq!(sb.pay("w-1", None).status(), 200);
        fake.wait_for(1).await;
        // Paid already: paying again sends nothing more.
        sb.pay("w-1", None);
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(fake.count(), 1);
        assert_eq!(
            fake.received.lock().unwrap()[0].uri,
            "http://127.0.0.1:9/notify/wx"
        );
        let (body, plain) = open(&sb, &fake, 0, PUBLIC_KEY_ID);
        assert_eq!(body["event_type"], "TRANSACTION.SUCCESS");
        assert_eq!(body["resource_type"], "encrypt-resource");
        assert_eq!(body["summary"], "支付成功");
        assert_eq!(body["resource"]["original_type"], "transaction");
        assert_eq!(body["id"].as_str().unwrap().len(), 36);
        assert!(body["create_time"].as_str().unwrap().ends_with("+08:00"));
        assert_eq!(plain, sb.wechat.query(MCH, None, "w-1").1);
        assert_eq!(plain["trade_state"], "SUCCESS");
        assert_eq!(plain["mchid"], MCH);
        assert_eq!(plain["appid"], "wx_sandbox");
        assert_eq!(plain["payer"], json!({"openid": "o-payer"}));
        assert_eq!(plain["amount"]["payer_total"], 100);
        assert!(plain["transaction_id"].is_string() && plain["success_time"].is_string());
        let log = sb.shared.notifier.attempts();
        assert_eq!((log.len(), log[0].answered_ok), (1, true));
    }

    /// `?late=true` is the provider-side race: without it a closed order stays closed.
    #[tokio::test(start_paused = true)]
    async fn a_closed_order_is_paid_only_late_and_then_notified() {
        let fake = Arc::new(Fake::new(&[], (204, "")));
        let sb = sandbox(&fake, &[MCH]);
        let mut body: Value = serde_json::from_slice(&order_body("w-late", 100)).unwrap();
        body["notify_url"] = json!("http://127.0.0.1:9/notify/wx");
        let created = sb
            .wechat
            .create(MCH, false, "native", &body.to_string().into_bytes());
        assert_eq!(created.0, 200);
        let close = json!({ "mchid": MCH }).to_string();
        assert!(sb
            .wechat
            .close(MCH, false, "w-late", close.as_bytes())
            .0
            .is_success());
        sb.pay("w-late", None);
        assert_eq!(
            sb.wechat.query(MCH, None, "w-late").1["trade_state"],
            "CLOSED"
        );
        assert_eq!(sb.pay("w-late", Some("late=true")).status(), 200);
        fake.wait_for(1).await;
        let paid = sb.wechat.query(MCH, None, "w-late").1;
        assert_eq!(paid["trade_state"], "SUCCESS");
        assert!(paid["transaction_id"].is_string());
        assert_eq!(fake.count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_partner_refunds_are_notified_with_the_sp_key() {
        let fake = Arc::new(Fake::new(&[], (200, "")));
        let sb = sandbox(&fake, &[SP]);
        let order = json!({
            "sp_appid": "wx_sp", "sp_mchid": SP, "sub_mchid": "1900000109",
            "description": "d", "out_trade_no": "p-1", "notify_url": "http://127.0.0.1:9/pay",
            "amount": { "total": 100, "currency": "CNY" },
        });
        assert_eq!(
            sb.wechat
                .create(SP, true, "native", order.to_string().as_bytes())
                .0,
            200
        );
        sb.pay("p-1", None);
        fake.wait_for(1).await;
        let (_, plain) = open(&sb, &fake, 0, PUBLIC_KEY_ID);
        assert_eq!(
            (
                plain["sp_mchid"].as_str(),
                plain["sub_mchid"].as_str(),
                plain.get("mchid")
            ),
            (Some(SP), Some("1900000109"), None)
        );
        assert_eq!(plain["sp_appid"], "wx_sp");
        assert_eq!(
            plain["payer"],
            json!({"sp_openid": "oSandboxPayerTestOnly"})
        );

        let refund = |no: &str, amount: u64, faults: &Faults| {
            let mut b: Value =
                serde_json::from_slice(&refund_body("p-1", no, amount, 100)).unwrap();
            b["sub_mchid"] = json!("1900000109");
            b["notify_url"] = json!("http://127.0.0.1:9/refund");
            sb.wechat.refund(SP, b.to_string().as_bytes(), faults)
        };
        // PROCESSING never settles: no notification.
        let processing = faults(json!({ "refund_status": "PROCESSING" }));
        assert_eq!(refund("p-1-a", 10, &processing).1["status"], "PROCESSING");
        let cert = faults(json!({ "sign_with_certificate": true }));
        let (_, answer) = refund("p-1-b", 30, &cert);
        fake.wait_for(2).await;
        let abnormal = faults(json!({ "refund_status": "ABNORMAL" }));
        refund("p-1-c", 20, &abnormal);
        fake.wait_for(3).await;
        // A repeat of a known refund is not notified again.
        refund("p-1-b", 30, &Faults::default());
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(fake.count(), 3);
        assert_eq!(
            fake.received.lock().unwrap()[1].uri,
            "http://127.0.0.1:9/refund"
        );

        let (body, plain) = open(&sb, &fake, 1, &sb.wechat.cert_serial);
        assert_eq!(body["event_type"], "REFUND.SUCCESS");
        assert_eq!(body["summary"], "退款成功");
        assert_eq!(body["resource"]["associated_data"], "refund");
        assert_eq!(plain["sp_mchid"], SP);
        assert_eq!(plain["sub_mchid"], "1900000109");
        assert_eq!(plain["out_trade_no"], "p-1");
        assert_eq!(plain["out_refund_no"], "p-1-b");
        assert_eq!(plain["refund_id"], answer["refund_id"]);
        assert_eq!(plain["transaction_id"], answer["transaction_id"]);
        assert_eq!(plain["refund_status"], "SUCCESS");
        assert_eq!(plain["success_time"], answer["success_time"]);
        assert_eq!(plain["user_received_account"], "支付用户零钱");
        assert_eq!(
            plain["amount"],
            json!({"total": 100, "refund": 30, "payer_total": 100, "payer_refund": 30})
        );
        let (body, plain) = open(&sb, &fake, 2, PUBLIC_KEY_ID);
        assert_eq!(body["event_type"], "REFUND.ABNORMAL");
        assert_eq!(plain["refund_status"], "ABNORMAL");
        assert!(plain.get("success_time").is_none());
        let kinds: Vec<Value> = sb
            .shared
            .notifier
            .attempts()
            .iter()
            .map(|a| json!(a.kind))
            .collect();
        assert_eq!(kinds, [json!("payment"), json!("refund"), json!("refund")]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_apiv3_key_no_notification_and_dropped_ones_are_not_sent() {
        let fake = Arc::new(Fake::new(&[], (204, "")));
        let sb = sandbox(&fake, &[]);
        sb.wechat
            .create(MCH, false, "native", &order_body("k-1", 100));
        sb.pay("k-1", None);
        let sb2 = sandbox(&fake, &[MCH]);
        *sb2.shared.faults() = faults(json!({ "drop_notifications": true }));
        sb2.wechat
            .create(MCH, false, "native", &order_body("k-2", 100));
        sb2.pay("k-2", None);
        tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
        assert_eq!(fake.count(), 0);
        let a = &sb.shared.notifier.attempts()[0];
        assert_eq!(a.attempt, 0);
        assert!(a.status.as_str().unwrap().contains("no apiv3_key"), "{a:?}");
        let a = &sb2.shared.notifier.attempts()[0];
        assert_eq!((a.attempt, &a.status), (0, &json!("dropped")));
    }
}

/// Injected failures by account, through the whole signed `/v3` path.
mod by_account {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::super::super::SandboxMerchant;
    use super::super::PLATFORM_KEY_PEM;
    use super::*;
    use crate::channel::keys::RsaSigner;

    pub(super) const SP: &str = "1900000100";
    pub(super) const SUB: &str = "1900000109";
    pub(super) const OTHER_SUB: &str = "1900000209";

    /// A sandbox taking MCH's, SP's and SUB's signatures (all made with the platform key).
    pub(super) fn sandbox() -> (Arc<Sandbox>, RsaSigner) {
        let signer = RsaSigner::from_text(PLATFORM_KEY_PEM).unwrap();
        let merchants = [MCH, SP, SUB]
            .iter()
            .map(|m| SandboxMerchant::Wechat {
                mchid: m.to_string(),
                serial_no: "S".into(),
                key: signer.verifier(),
                apiv3_key: None,
                fee_rate: FeeRate::parse("0.006").unwrap(),
            })
            .collect();
        (Sandbox::new(merchants), signer)
    }

    pub(super) fn set(sb: &Sandbox, v: Value) {
        let f = faults(v);
        f.check().unwrap();
        *sb.shared.faults() = f;
    }

    /// A signed call by `mchid`: (status, body), after checking the answer's signature.
    pub(super) async fn call(
        sb: &Sandbox,
        signer: &RsaSigner,
        mchid: &str,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> (u16, Value) {
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let nonce = sign::nonce();
        let auth = sign::authorization(signer, mchid, "S", method.as_str(), path, ts, &nonce, body);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        let bare = path.split('?').next().unwrap();
        let seg: Vec<&str> = bare.trim_matches('/').split('/').collect();
        let req = V3Request {
            method: &method,
            headers: &headers,
            base: BASE,
        };
        let resp = sb.wechat.v3(req, path, &seg, body).await;
        let status = resp.status().as_u16();
        let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
        let (ts, nonce, sig) = (
            h("wechatpay-timestamp"),
            h("wechatpay-nonce"),
            h("wechatpay-signature"),
        );
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let msg = sign::response_message(&ts, &nonce, &bytes);
        assert!(
            sb.wechat.signer.verifier().verify_b64(&msg, &sig),
            "every answer is signed"
        );
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub(super) fn partner_body(no: &str, sub: &str) -> Vec<u8> {
        json!({
            "sp_appid": "wx_sp", "sp_mchid": SP, "sub_mchid": sub, "description": "d",
            "out_trade_no": no, "notify_url": "https://shop.example/n",
            "amount": { "total": 100, "currency": "CNY" },
        })
        .to_string()
        .into_bytes()
    }

    pub(super) fn direct_body(mchid: &str, no: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&order_body(no, 100)).unwrap();
        v["mchid"] = json!(mchid);
        v.to_string().into_bytes()
    }

    pub(super) const DIRECT: &str = "/v3/pay/transactions/native";
    pub(super) const PARTNER: &str = "/v3/pay/partner/transactions/native";

    #[tokio::test]
    async fn only_the_listed_merchant_is_refused_no_auth_as_wechat_pay_does() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        set(
            sb,
            json!({ "accounts": [SUB], "fail_rate": 1.0, "fail_code": "NO_AUTH", "fail_ops": ["create"] }),
        );
        // SUB under the platform and SUB on its own: refused, 403 as WeChat Pay answers
        // NO_AUTH (no fail_status given), signed.
        for (mchid, path, body) in [
            (SP, PARTNER, partner_body("p-1", SUB)),
            (SUB, DIRECT, direct_body(SUB, "d-1")),
        ] {
            let (status, v) = call(sb, s, mchid, Method::POST, path, &body).await;
            assert_eq!((status, v["code"].as_str()), (403, Some("NO_AUTH")), "{v}");
        }
        // The platform's other sub-merchant, and another direct merchant: served.
        let (status, v) = call(
            sb,
            s,
            SP,
            Method::POST,
            PARTNER,
            &partner_body("p-2", OTHER_SUB),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let (status, v) = call(sb, s, MCH, Method::POST, DIRECT, &direct_body(MCH, "d-2")).await;
        assert_eq!(status, 200, "{v}");
        // SUB's queries are not in fail_ops.
        let q =
            format!("/v3/pay/partner/transactions/out-trade-no/p-1?sp_mchid={SP}&sub_mchid={SUB}");
        let (status, v) = call(sb, s, SP, Method::GET, &q, b"").await;
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("ORDER_NOT_EXIST")),
            "{v}"
        );

        // A sub_mchid named only in the query matches; fail_status overrides the default.
        set(
            sb,
            json!({ "accounts": [SUB], "fail_next": 1, "fail_code": "NO_AUTH", "fail_status": 500 }),
        );
        let (status, v) = call(sb, s, SP, Method::GET, &q, b"").await;
        assert_eq!((status, v["code"].as_str()), (500, Some("NO_AUTH")), "{v}");
        // An appid matches too; the default code is SYSTEM_ERROR, answered 500.
        set(sb, json!({ "accounts": ["wx_sandbox"], "fail_next": 1 }));
        let (status, v) = call(sb, s, MCH, Method::POST, DIRECT, &direct_body(MCH, "d-3")).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (500, Some("SYSTEM_ERROR")),
            "{v}"
        );
        assert_eq!(sb.shared.faults().fail_next, 0);
    }

    #[test]
    fn injected_codes_get_the_status_wechat_pay_documents() {
        for (code, status) in [
            ("NO_AUTH", 403),
            ("APPID_MCHID_NOT_MATCH", 400),
            ("PARAM_ERROR", 400),
            ("SIGN_ERROR", 401),
            ("ORDER_NOT_EXIST", 404),
            ("FREQUENCY_LIMITED", 429),
            ("SYSTEM_ERROR", 500),
            ("SOMETHING_ELSE", 500),
        ] {
            assert_eq!(super::super::documented_status(code), status, "{code}");
        }
    }
}

/// Trade bills through the signed `/v3` path: what the bill lists for whom, the hash, gzip,
/// downloads, refusals.
mod statements {
    use std::io::Read;

    use http_body_util::BodyExt;

    use super::by_account::{
        call, direct_body, partner_body, sandbox, set, DIRECT, OTHER_SUB, PARTNER, SP, SUB,
    };
    use super::*;
    use crate::channel::keys::RsaSigner;
    use crate::sandbox::statement::{china_stamp, china_today, iso_day, sha1_hex};

    /// A signed GET of a `download_url`: (status, body bytes).
    async fn download(sb: &Sandbox, signer: &RsaSigner, mchid: &str, url: &str) -> (u16, Vec<u8>) {
        let path = url
            .strip_prefix(BASE)
            .expect("the url points at the sandbox");
        let ts = OffsetDateTime::now_utc().unix_timestamp();
        let nonce = sign::nonce();
        let auth = sign::authorization(signer, mchid, "S", "GET", path, ts, &nonce, b"");
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        let seg: Vec<&str> = path
            .split('?')
            .next()
            .unwrap()
            .trim_matches('/')
            .split('/')
            .collect();
        let req = V3Request {
            method: &Method::GET,
            headers: &headers,
            base: BASE,
        };
        let resp = sb.wechat.v3(req, path, &seg, b"").await;
        let status = resp.status().as_u16();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    /// The bill day of an order paid just now: its payment's China day.
    fn paid_day(sb: &Sandbox, key: (&str, &str)) -> String {
        let o = sb
            .wechat
            .orders
            .get(&(key.0.to_string(), key.1.to_string()))
            .unwrap();
        china_stamp(o.success_time.as_deref().unwrap()).unwrap()[..10].to_string()
    }

    /// Creates and pays MCH's `d-1` (1.00) and refunds 0.50 of it; the platform's orders for
    /// SUB and OTHER_SUB, paid.
    async fn trades(sb: &Sandbox, s: &RsaSigner) {
        let (status, v) = call(sb, s, MCH, Method::POST, DIRECT, &direct_body(MCH, "d-1")).await;
        assert_eq!(status, 200, "{v}");
        for (no, sub) in [("p-1", SUB), ("p-2", OTHER_SUB)] {
            let (status, v) = call(sb, s, SP, Method::POST, PARTNER, &partner_body(no, sub)).await;
            assert_eq!(status, 200, "{v}");
        }
        for no in ["d-1", "p-1", "p-2"] {
            assert_eq!(sb.pay(no, None).status(), 200);
        }
        let body = refund_body("d-1", "d-1-r1", 50, 100);
        let (status, v) = call(
            sb,
            s,
            MCH,
            Method::POST,
            "/v3/refund/domestic/refunds",
            &body,
        )
        .await;
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("SUCCESS")),
            "{v}"
        );
        assert!(v["success_time"].is_string(), "{v}");
    }

    async fn bill(sb: &Sandbox, s: &RsaSigner, mchid: &str, query: &str) -> (u16, Value) {
        call(
            sb,
            s,
            mchid,
            Method::GET,
            &format!("/v3/bill/tradebill?{query}"),
            b"",
        )
        .await
    }

    #[tokio::test]
    async fn a_direct_merchants_bill_lists_its_payment_and_refund_with_the_hash_of_the_bytes() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        trades(sb, s).await;
        let day = paid_day(sb, (MCH, "d-1"));
        let (status, v) = bill(sb, s, MCH, &format!("bill_date={day}&bill_type=ALL")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["hash_type"], "SHA1");
        let url = v["download_url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{BASE}/v3/billdownload/file?token=")),
            "{url}"
        );
        let (status, bytes) = download(sb, s, MCH, url).await;
        assert_eq!(status, 200);
        assert_eq!(v["hash_value"], sha1_hex(&bytes));
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        // Header, payment, refund, summary header, summary, "" (the final CRLF) — unless the
        // refund fell on the next China day, which a test run at midnight could see.
        let d = &sb
            .wechat
            .orders
            .get(&(MCH.to_string(), "d-1".to_string()))
            .unwrap();
        let refund_day = china_stamp(d.refunds[0].success_time.as_deref().unwrap()).unwrap();
        if refund_day.starts_with(&day) {
            assert_eq!(lines.len(), 6, "{text}");
            assert!(
                lines[1].contains(",`d-1,`") && lines[1].contains(",`SUCCESS,`OTHERS,`CNY,`1.00,"),
                "{}",
                lines[1]
            );
            // 1.00 at 0.6%: 0.006 → 0.01; 0.50: 0.003 → 0.00.
            assert!(
                lines[1].ends_with(",`0.01,`0.6%,`1.00,`0.00,`"),
                "{}",
                lines[1]
            );
            assert!(
                lines[2].contains(",`REFUND,`") && lines[2].contains(",`d-1-r1,`0.50,"),
                "{}",
                lines[2]
            );
            assert!(
                lines[2].ends_with(",`0.00,`0.6%,`0.00,`0.50,`"),
                "{}",
                lines[2]
            );
            assert_eq!(lines[4], "`2,`1.00,`0.50,`0.00,`0.01,`1.00,`0.50");
        }
        // Not the platform's sub-merchants' orders.
        assert!(!text.contains("p-1") && !text.contains("p-2"), "{text}");

        // Another merchant cannot download it; an unknown token is refused; signed.
        let (status, bytes) = download(sb, s, SP, url).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&bytes));
        let (status, v) = call(
            sb,
            s,
            MCH,
            Method::GET,
            "/v3/billdownload/file?token=nope",
            b"",
        )
        .await;
        assert_eq!((status, v["code"].as_str()), (400, Some("PARAM_ERROR")));
    }

    #[tokio::test]
    async fn a_partners_bill_is_one_sub_merchants_or_all_of_them() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        trades(sb, s).await;
        let day = paid_day(sb, (&format!("{SP}/{SUB}"), "p-1"));
        for (query, has, lacks) in [
            (
                format!("bill_date={day}&sub_mchid={SUB}"),
                vec!["p-1"],
                vec!["p-2", "d-1"],
            ),
            (format!("bill_date={day}"), vec!["p-1", "p-2"], vec!["d-1"]),
        ] {
            let (status, v) = bill(sb, s, SP, &query).await;
            assert_eq!(status, 200, "{v}");
            let (_, bytes) = download(sb, s, SP, v["download_url"].as_str().unwrap()).await;
            let text = String::from_utf8(bytes).unwrap();
            for no in has {
                assert!(text.contains(&format!(",`{no},`")), "{query}: {text}");
            }
            for no in lacks {
                assert!(!text.contains(&format!(",`{no},`")), "{query}: {text}");
            }
            assert!(text.contains(&format!(",`wx_sp,`{SP},`{SUB},`,")), "{text}");
        }
    }

    #[tokio::test]
    async fn gzip_a_fee_rate_override_and_a_corrupt_hash() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        trades(sb, s).await;
        let day = paid_day(sb, (MCH, "d-1"));
        set(sb, json!({ "statement_fee_rate": "0.5" }));
        let (status, v) = bill(
            sb,
            s,
            MCH,
            &format!("bill_date={day}&bill_type=SUCCESS&tar_type=GZIP"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let (_, gz) = download(sb, s, MCH, v["download_url"].as_str().unwrap()).await;
        assert_eq!(v["hash_value"], sha1_hex(&gz), "the hash is the gzip's");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains(",`0.50,`50%,`1.00,`0.00,`\r\n"), "{text}");
        assert!(!text.contains("`REFUND"), "SUCCESS only: {text}");

        set(sb, json!({ "corrupt_statements": true }));
        let (status, v) = bill(sb, s, MCH, &format!("bill_date={day}")).await;
        assert_eq!(status, 200, "{v}");
        let (_, bytes) = download(sb, s, MCH, v["download_url"].as_str().unwrap()).await;
        let hash = v["hash_value"].as_str().unwrap();
        assert_eq!(hash.len(), 40);
        assert_ne!(hash, sha1_hex(&bytes));
    }

    #[tokio::test]
    async fn bad_and_future_days_and_bad_parameters_are_refused_signed() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        let tomorrow = iso_day(china_today().next_day().unwrap());
        for (query, status, code) in [
            (format!("bill_date={tomorrow}"), 400, "NO_STATEMENT_EXIST"),
            ("bill_date=2026-1-1".to_string(), 400, "PARAM_ERROR"),
            ("bill_type=ALL".to_string(), 400, "PARAM_ERROR"),
            (
                format!("bill_date={}&bill_type=FUND", iso_day(china_today())),
                400,
                "PARAM_ERROR",
            ),
            (
                format!("bill_date={}&tar_type=ZIP", iso_day(china_today())),
                400,
                "PARAM_ERROR",
            ),
        ] {
            let (got, v) = bill(sb, s, MCH, &query).await;
            assert_eq!(
                (got, v["code"].as_str()),
                (status, Some(code)),
                "{query}: {v}"
            );
        }
        // A day with nothing: the empty bill.
        let (status, v) = bill(sb, s, MCH, "bill_date=2020-01-01").await;
        assert_eq!(status, 200, "{v}");
        let (_, bytes) = download(sb, s, MCH, v["download_url"].as_str().unwrap()).await;
        assert!(String::from_utf8(bytes)
            .unwrap()
            .ends_with("\r\n`0,`0.00,`0.00,`0.00,`0.00,`0.00,`0.00\r\n"));
        // fail_ops statement fails the bill, not the creates.
        set(
            sb,
            json!({ "fail_next": 1, "fail_ops": ["statement"], "fail_code": "SYSTEM_ERROR" }),
        );
        let (status, _) = call(sb, s, MCH, Method::POST, DIRECT, &direct_body(MCH, "d-9")).await;
        assert_eq!(status, 200);
        let (status, v) = bill(sb, s, MCH, "bill_date=2020-01-01").await;
        assert_eq!((status, v["code"].as_str()), (500, Some("SYSTEM_ERROR")));
        // An unsigned download is refused.
        let seg = ["v3", "billdownload", "file"];
        let req = V3Request {
            method: &Method::GET,
            headers: &http::HeaderMap::new(),
            base: BASE,
        };
        let resp = sb
            .wechat
            .v3(req, "/v3/billdownload/file?token=x", &seg, b"")
            .await;
        assert_eq!(resp.status(), 401);
    }
}
