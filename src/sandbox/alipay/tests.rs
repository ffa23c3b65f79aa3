use super::super::Sandbox;
use super::*;

const APP: &str = "2021000000009999";
/// The sandbox's own address as the tests' requests name it.
const BASE: &str = "http://sandbox.test";

fn params(token: Option<&str>) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("app_id".to_string(), APP.to_string());
    p.insert("method".to_string(), "alipay.trade.precreate".to_string());
    if let Some(t) = token {
        p.insert("app_auth_token".to_string(), t.to_string());
    }
    p
}

fn v(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn paid_order(sb: &Sandbox, no: &str, total: &str) {
    let biz = json!({"out_trade_no": no, "total_amount": total, "subject": "s"});
    assert_eq!(
        v(&sb.alipay.ali_create(&params(None), &biz, APP))["code"],
        "10000"
    );
    sb.alipay
        .orders
        .get_mut(&(APP.into(), no.into()))
        .unwrap()
        .mark_paid(7);
}

fn refund(sb: &Sandbox, no: &str, req: &str, amount: &str, faults: &Faults) -> Value {
    let biz = json!({"out_trade_no": no, "out_request_no": req, "refund_amount": amount});
    v(&sb.alipay.ali_refund(&biz, APP, faults))
}

#[test]
fn create_needs_no_notify_url_counts_calls_and_shows_the_account_without_a_token() {
    let sb = Sandbox::new(Vec::new());
    let biz = json!({"out_trade_no": "a-1", "total_amount": "1.00", "subject": "s"});
    let seller = "tok_SECRET";
    assert_eq!(
        v(&sb.alipay.ali_create(&params(Some(seller)), &biz, seller))["code"],
        "10000"
    );
    assert_eq!(
        v(&sb.alipay.ali_create(&params(Some(seller)), &biz, seller))["code"],
        "10000"
    );
    let key = (seller.to_string(), "a-1".to_string());
    sb.alipay.orders.get_mut(&key).unwrap().mark_paid(1);
    let again = v(&sb.alipay.ali_create(&params(Some(seller)), &biz, seller));
    assert_eq!(again["sub_code"], "ACQ.TRADE_HAS_SUCCESS");
    let view = sb.alipay.view(&key, &sb.alipay.orders.get(&key).unwrap());
    assert_eq!(view["create_calls"], 3);
    assert_eq!(
        view["account"],
        json!({"provider": "alipay", "app_id": APP, "app_auth_token_present": true})
    );
    assert_eq!(view["state"], "TRADE_SUCCESS");
    assert_eq!(view["request"]["biz_content"]["total_amount"], "1.00");
}

#[test]
fn close_of_a_closed_or_paid_trade_is_a_status_error() {
    let sb = Sandbox::new(Vec::new());
    let biz = json!({"out_trade_no": "c-1", "total_amount": "1.00", "subject": "s"});
    sb.alipay.ali_create(&params(None), &biz, APP);
    let close = |no: &str| v(&sb.alipay.ali_close(&json!({ "out_trade_no": no }), APP));
    assert_eq!(close("c-1")["code"], "10000");
    assert_eq!(close("c-1")["sub_code"], "ACQ.TRADE_STATUS_ERROR");
    paid_order(&sb, "c-2", "1.00");
    assert_eq!(close("c-2")["sub_code"], "ACQ.TRADE_STATUS_ERROR");
    assert_eq!(close("c-3")["sub_code"], "ACQ.TRADE_NOT_EXIST");
}

#[test]
fn refunds_answer_fund_change_and_the_total_refunded() {
    let sb = Sandbox::new(Vec::new());
    let none = Faults::default();
    paid_order(&sb, "r-1", "1.00");
    let r = refund(&sb, "r-1", "r-1-a", "0.30", &none);
    assert_eq!(
        (r["fund_change"].as_str(), r["refund_fee"].as_str()),
        (Some("Y"), Some("0.30"))
    );
    let r = refund(&sb, "r-1", "r-1-b", "0.20", &none);
    assert_eq!(
        (r["fund_change"].as_str(), r["refund_fee"].as_str()),
        (Some("Y"), Some("0.50"))
    );
    // A repeat refunds nothing twice.
    let r = refund(&sb, "r-1", "r-1-a", "0.30", &none);
    assert_eq!(
        (r["fund_change"].as_str(), r["refund_fee"].as_str()),
        (Some("N"), Some("0.50"))
    );
    let r = refund(&sb, "r-1", "r-1-c", "0.51", &none);
    assert_eq!(r["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
    let q = v(&sb.alipay.ali_refund_query(
        &json!({"out_trade_no": "r-1", "out_request_no": "r-1-b"}),
        APP,
    ));
    assert_eq!(
        (
            q["refund_status"].as_str(),
            q["refund_amount"].as_str(),
            q["total_amount"].as_str()
        ),
        (Some("REFUND_SUCCESS"), Some("0.20"), Some("1.00"))
    );
    let q = v(&sb.alipay.ali_refund_query(
        &json!({"out_trade_no": "r-1", "out_request_no": "nope"}),
        APP,
    ));
    assert_eq!(
        (q["code"].as_str(), q.get("refund_status")),
        (Some("10000"), None)
    );
}

#[test]
fn a_pending_refund_moves_no_money_until_it_settles() {
    let sb = Sandbox::new(Vec::new());
    let pending = Faults {
        alipay_refund_pending: true,
        ..Faults::default()
    };
    paid_order(&sb, "p-1", "1.00");
    let r = refund(&sb, "p-1", "p-1-a", "0.60", &pending);
    assert_eq!(
        (r["code"].as_str(), r["fund_change"].as_str()),
        (Some("10000"), Some("N"))
    );
    assert_eq!(r["refund_fee"], "0.00", "nothing refunded yet");
    // Processing still holds the amount.
    let r = refund(&sb, "p-1", "p-1-b", "0.50", &Faults::default());
    assert_eq!(r["sub_code"], "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL");
    let key = (APP.to_string(), "p-1".to_string());
    let view = sb.alipay.view(&key, &sb.alipay.orders.get(&key).unwrap());
    assert_eq!(
        view["refunds"][0],
        json!(["p-1-a", 60, "REFUND_PROCESSING"])
    );
    let q = v(&sb.alipay.ali_refund_query(
        &json!({"out_trade_no": "p-1", "out_request_no": "p-1-a"}),
        APP,
    ));
    assert_eq!(
        (q["refund_status"].as_str(), q["refund_amount"].as_str()),
        (Some("REFUND_SUCCESS"), Some("0.60"))
    );
    let r = refund(&sb, "p-1", "p-1-a", "0.60", &Faults::default());
    assert_eq!(
        (r["fund_change"].as_str(), r["refund_fee"].as_str()),
        (Some("N"), Some("0.60"))
    );
}

#[tokio::test]
async fn injected_failures_can_go_unsigned_and_errors_tampered() {
    let sb = Sandbox::new(Vec::new());
    let key = sb.alipay.signer.verifier();
    let answer = |out: Outcome<String>| {
        sb.shared.respond(
            move |_| out,
            |inner, signing| sb.alipay.alipay_answer("k_response", &inner, signing),
        )
    };
    let body = |resp: Answer| async move {
        use http_body_util::BodyExt;
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    };
    let err = error_body("40004", "Business Failed", "ACQ.SYSTEM_ERROR", "x");
    *sb.shared.faults() =
        serde_json::from_value(json!({"fail_unsigned": true, "retry_after_secs": 2})).unwrap();
    let resp = answer(Outcome::injected(err.clone())).await;
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(body(resp).await, format!(r#"{{"k_response":{err}}}"#));

    *sb.shared.faults() = serde_json::from_value(json!({"tamper_errors": true})).unwrap();
    let split = |text: &str| v(text)["sign"].as_str().unwrap().to_string();
    let text = body(answer(Outcome::done(err.clone(), true)).await).await;
    assert!(!key.verify_b64(err.as_bytes(), &split(&text)));
    let ok = r#"{"code":"10000","msg":"Success"}"#.to_string();
    let text = body(answer(Outcome::done(ok.clone(), false)).await).await;
    assert!(key.verify_b64(ok.as_bytes(), &split(&text)));
}

mod notifications {
    use std::sync::Arc;

    use super::super::super::notify::testing::Fake;
    use super::*;

    fn sandbox(fake: &Arc<Fake>) -> Arc<Sandbox> {
        Sandbox::with_transport(Vec::new(), fake.clone())
    }

    /// Creates an order (ISV with `token`) whose create named `notify_url`.
    fn order(sb: &Sandbox, no: &str, token: Option<&str>, notify_url: Option<&str>) {
        let mut p = params(token);
        if let Some(u) = notify_url {
            p.insert("notify_url".into(), u.into());
        }
        let biz = json!({"out_trade_no": no, "total_amount": "1.00", "subject": "书"});
        let seller = token.unwrap_or(APP);
        assert_eq!(v(&sb.alipay.ali_create(&p, &biz, seller))["code"], "10000");
    }

    /// The i-th received form, verified with the sandbox's Alipay public key.
    fn form(sb: &Sandbox, fake: &Fake, i: usize) -> BTreeMap<String, String> {
        let r = &fake.received.lock().unwrap()[i];
        assert_eq!(
            r.headers["content-type"],
            "application/x-www-form-urlencoded; charset=utf-8"
        );
        let fields = sign::decode(&r.body);
        assert!(fields.iter().any(|(k, v)| k == "sign_type" && v == "RSA2"));
        let key = sb.alipay.signer.verifier();
        let map = sign::verify_notification(&fields, &key).unwrap();
        // Any field changed: it no longer verifies.
        let mut tampered = fields.clone();
        let amount = tampered
            .iter_mut()
            .find(|(k, _)| k == "total_amount")
            .unwrap();
        amount.1 = "100.00".into();
        assert!(sign::verify_notification(&tampered, &key).is_err());
        map
    }

    #[tokio::test(start_paused = true)]
    async fn pay_and_refunds_are_notified_signed_until_closed() {
        let fake = Arc::new(Fake::new(&[], (200, "success")));
        let sb = sandbox(&fake);
        order(
            &sb,
            "a-1",
            Some("tok_x"),
            Some("http://127.0.0.1:9/notify/ali"),
        );
        assert_eq!(sb.pay("a-1", None).status(), 200);
        fake.wait_for(1).await;
        assert_eq!(
            fake.received.lock().unwrap()[0].uri,
            "http://127.0.0.1:9/notify/ali"
        );
        let f = form(&sb, &fake, 0);
        let get = |f: &BTreeMap<String, String>, k: &str| f.get(k).cloned().unwrap_or_default();
        for (k, want) in [
            ("notify_type", "trade_status_sync"),
            ("app_id", APP),
            ("charset", "utf-8"),
            ("version", "1.0"),
            ("out_trade_no", "a-1"),
            ("trade_status", "TRADE_SUCCESS"),
            ("total_amount", "1.00"),
            ("receipt_amount", "1.00"),
            ("buyer_pay_amount", "1.00"),
            ("subject", "书"),
        ] {
            assert_eq!(get(&f, k), want, "{k}");
        }
        let auth_app_id = get(&f, "auth_app_id");
        assert!(
            auth_app_id.len() == 16 && auth_app_id != APP,
            "{auth_app_id}"
        );
        for k in [
            "notify_time",
            "notify_id",
            "trade_no",
            "buyer_id",
            "seller_id",
            "gmt_create",
            "gmt_payment",
        ] {
            assert!(!get(&f, k).is_empty(), "{k}");
        }
        assert!(!f.contains_key("refund_fee"));

        let none = Faults::default();
        let refund = |req: &str, amount: &str| {
            let biz =
                json!({"out_trade_no": "a-1", "out_request_no": req, "refund_amount": amount});
            v(&sb.alipay.ali_refund(&biz, "tok_x", &none))
        };
        assert_eq!(refund("a-1-r1", "0.30")["fund_change"], "Y");
        fake.wait_for(2).await;
        let f1 = form(&sb, &fake, 1);
        assert_eq!(
            (
                get(&f1, "trade_status"),
                get(&f1, "out_biz_no"),
                get(&f1, "refund_fee")
            ),
            ("TRADE_SUCCESS".into(), "a-1-r1".into(), "0.30".into())
        );
        assert_eq!(
            get(&f1, "gmt_refund").len(),
            "2026-01-01 00:00:00.000".len()
        );
        assert_eq!(get(&f1, "auth_app_id"), auth_app_id, "stable");
        // A repeat moves no money and is not notified; the rest closes the trade.
        assert_eq!(refund("a-1-r1", "0.30")["fund_change"], "N");
        assert_eq!(refund("a-1-r2", "0.70")["fund_change"], "Y");
        fake.wait_for(3).await;
        tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
        assert_eq!(fake.count(), 3);
        let f2 = form(&sb, &fake, 2);
        assert_eq!(
            (
                get(&f2, "trade_status"),
                get(&f2, "out_biz_no"),
                get(&f2, "refund_fee")
            ),
            ("TRADE_CLOSED".into(), "a-1-r2".into(), "1.00".into())
        );
        let log = sb.shared.notifier.attempts();
        assert!(log.iter().all(|a| a.answered_ok && a.attempt == 1));
        assert_eq!(json!(log[2])["provider"], "alipay");
        assert_eq!(log[2].out_refund_no.as_deref(), Some("a-1-r2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_refund_is_notified_when_it_settles_and_no_url_no_notification() {
        let fake = Arc::new(Fake::new(&[], (200, "success")));
        let sb = sandbox(&fake);
        order(&sb, "n-1", None, None);
        sb.pay("n-1", None);
        order(&sb, "p-1", None, Some("http://127.0.0.1:9/n"));
        sb.pay("p-1", None);
        fake.wait_for(1).await;
        let pending = Faults {
            alipay_refund_pending: true,
            ..Faults::default()
        };
        let biz =
            json!({"out_trade_no": "p-1", "out_request_no": "p-1-a", "refund_amount": "0.40"});
        assert_eq!(
            v(&sb.alipay.ali_refund(&biz, APP, &pending))["fund_change"],
            "N"
        );
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(fake.count(), 1, "nothing settled yet");
        let q = json!({"out_trade_no": "p-1", "out_request_no": "p-1-a"});
        sb.alipay.ali_refund_query(&q, APP);
        fake.wait_for(2).await;
        sb.alipay.ali_refund_query(&q, APP);
        tokio::time::sleep(std::time::Duration::from_secs(24 * 3600)).await;
        assert_eq!(fake.count(), 2, "settles once");
        let f = form(&sb, &fake, 1);
        assert_eq!(f["refund_fee"], "0.40");
        assert_eq!(f["trade_status"], "TRADE_SUCCESS");
        assert_eq!(f["auth_app_id"], APP, "direct: the app itself");
        let nos: Vec<String> = sb
            .shared
            .notifier
            .attempts()
            .iter()
            .map(|a| a.out_trade_no.clone())
            .collect();
        assert_eq!(nos, ["p-1", "p-1"], "n-1 had no notify_url");
    }
}

/// Injected failures by account, through the whole signed gateway path.
mod by_account {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::super::super::SandboxMerchant;
    use super::super::ALIPAY_KEY_PEM;
    use super::*;
    use crate::secret::Secret;

    pub(super) const PLATFORM: &str = "2021000000000001";
    pub(super) const SELLER: &str = "2088000000004004";

    /// A sandbox taking APP's and PLATFORM's signatures (made with the sandbox's own key),
    /// with two ISV grants: `tok_4004` for SELLER, `tok_1001` for another seller.
    pub(super) fn sandbox() -> (Arc<Sandbox>, RsaSigner) {
        let signer = RsaSigner::from_text(ALIPAY_KEY_PEM).unwrap();
        let app = |id: &str| SandboxMerchant::Alipay {
            app_id: id.into(),
            key: signer.verifier(),
            fee_rate: crate::domain::FeeRate::parse("0.006").unwrap(),
        };
        let grant = |token: &str, seller: &str| SandboxMerchant::AlipayGrant {
            app_auth_token: Secret::new(token),
            seller_id: seller.into(),
        };
        let merchants = vec![
            app(APP),
            app(PLATFORM),
            grant("tok_4004", SELLER),
            grant("tok_1001", "2088000000001001"),
        ];
        (Sandbox::new(merchants), signer)
    }

    pub(super) fn set(sb: &Sandbox, v: Value) {
        let f: Faults = serde_json::from_value(v).unwrap();
        f.check().unwrap();
        *sb.shared.faults() = f;
    }

    /// A signed precreate of `no` by `app_id` (with `token`): its inner answer, after checking
    /// the answer's signature.
    pub(super) async fn precreate(
        sb: &Sandbox,
        signer: &RsaSigner,
        app_id: &str,
        token: Option<&str>,
        no: &str,
    ) -> Value {
        let biz = json!({"out_trade_no": no, "total_amount": "1.00", "subject": "s"});
        signed_call(sb, signer, app_id, token, "alipay.trade.precreate", &biz).await
    }

    /// A signed gateway call of `method` by `app_id` (with `token`): its inner answer, after
    /// checking the answer's signature.
    pub(super) async fn signed_call(
        sb: &Sandbox,
        signer: &RsaSigner,
        app_id: &str,
        token: Option<&str>,
        method: &str,
        biz: &Value,
    ) -> Value {
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("app_id", app_id),
            ("method", method),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("timestamp", "2026-01-01 00:00:00"),
            ("version", "1.0"),
        ] {
            p.insert(k.to_string(), v.to_string());
        }
        if let Some(t) = token {
            p.insert("app_auth_token".into(), t.into());
        }
        p.insert("biz_content".into(), biz.to_string());
        sign::sign_params(&mut p, signer);
        let resp = sb
            .alipay
            .gateway(&Method::POST, None, sign::encode(&p).as_bytes(), BASE)
            .await;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let raw = sign::split_answer(&bytes, method).unwrap();
        let signature = raw.sign.expect("signed");
        assert!(sb
            .alipay
            .signer
            .verifier()
            .verify_b64(raw.raw.as_bytes(), &signature));
        v(&raw.raw)
    }

    #[tokio::test]
    async fn only_the_listed_seller_or_app_is_refused_access_forbidden() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        set(
            sb,
            json!({ "accounts": [SELLER], "fail_rate": 1.0, "fail_code": "ACQ.ACCESS_FORBIDDEN", "fail_ops": ["create"] }),
        );
        // The seller's grant is refused as Alipay refuses it: 40004, sub_code the fault's.
        let r = precreate(sb, s, PLATFORM, Some("tok_4004"), "a-1").await;
        assert_eq!(
            (r["code"].as_str(), r["sub_code"].as_str()),
            (Some("40004"), Some("ACQ.ACCESS_FORBIDDEN")),
            "{r}"
        );
        // Another seller on the same platform app, and a direct app: served.
        let r = precreate(sb, s, PLATFORM, Some("tok_1001"), "a-2").await;
        assert_eq!(r["code"], "10000", "{r}");
        let r = precreate(sb, s, APP, None, "a-3").await;
        assert_eq!(r["code"], "10000", "{r}");

        // A direct app, by its app_id or by the seller id its orders show.
        let direct_seller = sb
            .alipay
            .orders
            .get(&(APP.into(), "a-3".into()))
            .unwrap()
            .seller_id
            .clone();
        for listed in [APP, direct_seller.as_str()] {
            set(sb, json!({ "accounts": [listed], "fail_next": 1 }));
            let r = precreate(sb, s, APP, None, "a-4").await;
            assert_eq!(r["sub_code"], "ACQ.SYSTEM_ERROR", "{listed}: {r}");
            let r = precreate(sb, s, PLATFORM, Some("tok_4004"), "a-5").await;
            assert_eq!(r["code"], "10000", "{listed}: {r}");
        }
        // The platform's app_id reaches every seller it acts for.
        set(sb, json!({ "accounts": [PLATFORM], "fail_rate": 1.0 }));
        for token in ["tok_4004", "tok_1001"] {
            let r = precreate(sb, s, PLATFORM, Some(token), "a-6").await;
            assert_eq!(r["sub_code"], "ACQ.SYSTEM_ERROR", "{r}");
        }
    }

    #[tokio::test]
    async fn injected_sub_codes_carry_the_gateway_code_alipay_gives_them() {
        let (sb, signer) = sandbox();
        for (sub, code) in [
            ("ACQ.ACCESS_FORBIDDEN", "40004"),
            ("isv.invalid-app-id", "40002"),
            ("isv.insufficient-isv-permissions", "40006"),
            ("aop.invalid-auth-token", "20001"),
            ("isp.unknow-error", "20000"),
        ] {
            set(&sb, json!({ "fail_next": 1, "fail_code": sub }));
            let r = precreate(&sb, &signer, APP, None, "g-1").await;
            assert_eq!(
                (r["code"].as_str(), r["sub_code"].as_str()),
                (Some(code), Some(sub))
            );
        }
    }
}

/// Trade statements through the signed gateway: whose trades, the zip and its GBK files,
/// refusals, a corrupt zip.
mod statements {
    use std::io::Read;

    use http_body_util::BodyExt;

    use super::by_account::{precreate, sandbox, set, signed_call, PLATFORM, SELLER};
    use super::*;
    use crate::channel::keys::RsaSigner;
    use crate::sandbox::statement::{china_today, iso_day};

    const BILL: &str = "alipay.data.dataservice.bill.downloadurl.query";

    /// ISV trades of SELLER (`s-1`, refunded 0.40) and of another seller (`s-2`), and the
    /// direct app's `s-3`, all paid; the China day `s-1` was paid on.
    async fn trades(sb: &Sandbox, s: &RsaSigner) -> String {
        for (app, token, no) in [
            (PLATFORM, Some("tok_4004"), "s-1"),
            (PLATFORM, Some("tok_1001"), "s-2"),
            (APP, None, "s-3"),
        ] {
            assert_eq!(precreate(sb, s, app, token, no).await["code"], "10000");
            assert_eq!(sb.pay(no, None).status(), 200);
        }
        let biz =
            json!({"out_trade_no": "s-1", "out_request_no": "s-1-r1", "refund_amount": "0.40"});
        let r = signed_call(
            sb,
            s,
            PLATFORM,
            Some("tok_4004"),
            "alipay.trade.refund",
            &biz,
        )
        .await;
        assert_eq!(r["fund_change"], "Y", "{r}");
        let o = sb
            .alipay
            .orders
            .get(&(SELLER.to_string(), "s-1".to_string()))
            .unwrap();
        o.send_pay_date.as_deref().unwrap()[..10].to_string()
    }

    async fn ask(sb: &Sandbox, s: &RsaSigner, app: &str, token: Option<&str>, day: &str) -> Value {
        let biz = json!({"bill_type": "trade", "bill_date": day});
        signed_call(sb, s, app, token, BILL, &biz).await
    }

    /// Downloads a `bill_download_url`: (status, Content-Disposition, bytes).
    async fn fetch(sb: &Sandbox, url: &str) -> (u16, String, Vec<u8>) {
        let prefix = format!("{BASE}/sandbox/alipay/bill/download?token=");
        let token = url.strip_prefix(&prefix).expect("a sandbox url");
        let resp = sb.alipay.bill_download(token);
        let status = resp.status().as_u16();
        let disposition = resp
            .headers()
            .get(http::header::CONTENT_DISPOSITION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, disposition, bytes)
    }

    /// The zip's files: (name, text), both decoded from GBK.
    fn unzip(bytes: Vec<u8>) -> Vec<(String, String)> {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut f = archive.by_index(i).unwrap();
                let name = encoding_rs::GBK.decode(f.name_raw()).0.into_owned();
                let mut raw = Vec::new();
                f.read_to_end(&mut raw).unwrap();
                (name, encoding_rs::GBK.decode(&raw).0.into_owned())
            })
            .collect()
    }

    #[tokio::test]
    async fn an_isv_sellers_statement_has_its_trades_only() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        let day = trades(sb, s).await;
        let r = ask(sb, s, PLATFORM, Some("tok_4004"), &day).await;
        assert_eq!(
            (r["code"].as_str(), r["msg"].as_str()),
            (Some("10000"), Some("Success")),
            "{r}"
        );
        let (status, disposition, bytes) =
            fetch(sb, r["bill_download_url"].as_str().unwrap()).await;
        assert_eq!(status, 200);
        let compact = day.replace('-', "");
        assert!(
            disposition.contains(&format!("{SELLER}_{compact}.csv.zip")),
            "{disposition}"
        );
        let files = unzip(bytes);
        assert_eq!(files[0].0, format!("{SELLER}_{compact}_业务明细.csv"));
        assert_eq!(files[1].0, format!("{SELLER}_{compact}_业务明细(汇总).csv"));
        let detail = &files[0].1;
        assert!(
            detail.starts_with(&format!("#支付宝业务明细查询\r\n#账号：[{SELLER}]\r\n")),
            "{detail}"
        );
        assert!(detail.contains(",s-1\t,交易\t,s\t,"), "{detail}");
        // 1.00 at 0.6%: a fee of 0.01, charged (negative).
        assert!(detail.contains(",1.00\t,1.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-0.01\t,0.00\t,\r\n"), "{detail}");
        assert!(
            detail.contains("#交易合计：1笔，商家实收：1.00元，商家优惠：0.00元\r\n"),
            "{detail}"
        );
        assert!(
            !detail.contains("s-2") && !detail.contains("s-3"),
            "{detail}"
        );
        // The refund, unless it settled on the next China day (a run at midnight).
        let o = sb
            .alipay
            .orders
            .get(&(SELLER.to_string(), "s-1".to_string()))
            .unwrap();
        if o.refunds[0]
            .gmt_refund
            .as_deref()
            .unwrap()
            .starts_with(&day)
        {
            assert!(
                detail.contains(",1.00\t,-0.40\t,")
                    && detail.contains(",s-1-r1\t,0.00\t,0.00\t,\r\n"),
                "{detail}"
            );
            assert!(
                detail.contains("#退款合计：1笔，商家实收：-0.40元，商家优惠：0.00元\r\n"),
                "{detail}"
            );
        }
    }

    #[tokio::test]
    async fn a_direct_apps_statement_a_rate_override_and_a_corrupt_zip() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        let day = trades(sb, s).await;
        set(sb, json!({ "statement_fee_rate": "0.1" }));
        let r = ask(sb, s, APP, None, &day).await;
        let (_, _, bytes) = fetch(sb, r["bill_download_url"].as_str().unwrap()).await;
        let files = unzip(bytes);
        let detail = &files[0].1;
        let pid = super::super::direct_seller_id(APP);
        assert!(detail.contains(&format!("#账号：[{pid}]")), "{detail}");
        assert!(detail.contains(",s-3\t,交易\t,"), "{detail}");
        assert!(
            detail.contains(",\t,-0.10\t,0.00\t,\r\n"),
            "the override's fee: {detail}"
        );
        assert!(
            !detail.contains("s-1") && !detail.contains("s-2"),
            "{detail}"
        );

        set(sb, json!({ "corrupt_statements": true }));
        let r = ask(sb, s, APP, None, &day).await;
        let (status, _, bytes) = fetch(sb, r["bill_download_url"].as_str().unwrap()).await;
        assert_eq!(status, 200);
        assert!(
            zip::ZipArchive::new(std::io::Cursor::new(bytes)).is_err(),
            "truncated"
        );
    }

    #[tokio::test]
    async fn future_days_bad_parameters_and_unknown_tokens_are_refused() {
        let (sb, signer) = sandbox();
        let (sb, s) = (&*sb, &signer);
        let tomorrow = iso_day(china_today().next_day().unwrap());
        let r = ask(sb, s, APP, None, &tomorrow).await;
        assert_eq!(
            (r["code"].as_str(), r["sub_code"].as_str()),
            (Some("40004"), Some("isp.bill_not_exist")),
            "{r}"
        );
        for biz in [
            json!({"bill_type": "trade", "bill_date": "2026/11/30"}),
            json!({"bill_type": "trade"}),
            json!({"bill_type": "signcustomer", "bill_date": "2020-01-01"}),
        ] {
            let r = signed_call(sb, s, APP, None, BILL, &biz).await;
            assert_eq!(
                (r["code"].as_str(), r["sub_code"].as_str()),
                (Some("40002"), Some("isv.invalid-arguments")),
                "{biz}: {r}"
            );
        }
        // An unknown token: refused as every ISV call is.
        let r = ask(sb, s, PLATFORM, Some("tok_nope"), "2020-01-01").await;
        assert_eq!(r["sub_code"], "aop.invalid-app-auth-token", "{r}");
        let resp = sb.alipay.bill_download("nope");
        assert_eq!(resp.status(), 404);
        // An empty day: the comment lines and zero totals.
        let r = ask(sb, s, APP, None, "2020-01-01").await;
        let (_, _, bytes) = fetch(sb, r["bill_download_url"].as_str().unwrap()).await;
        let detail = &unzip(bytes)[0].1;
        assert!(
            detail.contains("#交易合计：0笔，商家实收：0.00元"),
            "{detail}"
        );
    }
}
