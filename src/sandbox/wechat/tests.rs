use super::super::Sandbox;
use super::*;

const MCH: &str = "1900000001";

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

    const SP: &str = "1900000100";
    const SUB: &str = "1900000109";
    const OTHER_SUB: &str = "1900000209";

    /// A sandbox taking MCH's, SP's and SUB's signatures (all made with the platform key).
    fn sandbox() -> (Arc<Sandbox>, RsaSigner) {
        let signer = RsaSigner::from_text(PLATFORM_KEY_PEM).unwrap();
        let merchants = [MCH, SP, SUB]
            .iter()
            .map(|m| SandboxMerchant::Wechat {
                mchid: m.to_string(),
                serial_no: "S".into(),
                key: signer.verifier(),
                apiv3_key: None,
            })
            .collect();
        (Sandbox::new(merchants), signer)
    }

    fn set(sb: &Sandbox, v: Value) {
        let f = faults(v);
        f.check().unwrap();
        *sb.shared.faults() = f;
    }

    /// A signed call by `mchid`: (status, body), after checking the answer's signature.
    async fn call(
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
        let resp = sb.wechat.v3(&method, &headers, path, &seg, body).await;
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

    fn partner_body(no: &str, sub: &str) -> Vec<u8> {
        json!({
            "sp_appid": "wx_sp", "sp_mchid": SP, "sub_mchid": sub, "description": "d",
            "out_trade_no": no, "notify_url": "https://shop.example/n",
            "amount": { "total": 100, "currency": "CNY" },
        })
        .to_string()
        .into_bytes()
    }

    fn direct_body(mchid: &str, no: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&order_body(no, 100)).unwrap();
        v["mchid"] = json!(mchid);
        v.to_string().into_bytes()
    }

    const DIRECT: &str = "/v3/pay/transactions/native";
    const PARTNER: &str = "/v3/pay/partner/transactions/native";

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
