//! WeChat Pay API v3 notifications: `Wechatpay-*` signature headers over
//! `TIMESTAMP\nNONCE\nBODY\n`, a JSON envelope whose `resource` is encrypted with
//! AEAD_AES_256_GCM under the APIv3 key, and inside it a transaction or a refund object of
//! the same shape as the query answers (parsed by the same code).

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{order_state, refund_state, sign, WechatPaySettings};
use crate::channel::notification::{Notification, NotifiedAccount, NotifyAnswer, NotifyError};

/// What WeChat Pay's signature probes carry instead of a signature: a merchant that answers
/// them with success does not verify signatures.
const SIGNATURE_PROBE: &str = "WECHATPAY/SIGNTEST/";

/// The only resource encryption WeChat Pay v3 uses.
const ALGORITHM: &str = "AEAD_AES_256_GCM";

pub(super) fn verify(
    s: &WechatPaySettings,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
) -> Result<Notification, NotifyError> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| NotifyError::BadSignature(format!("notification has no {name} header")))
    };
    let signature = h("Wechatpay-Signature")?;
    if signature.starts_with(SIGNATURE_PROBE) {
        return Err(NotifyError::Probe);
    }
    if let Some(kind) = headers.get("Wechatpay-Signature-Type") {
        if kind.as_bytes() != sign::AUTH_SCHEME.as_bytes() {
            return Err(NotifyError::BadSignature(format!(
                "Wechatpay-Signature-Type {kind:?} is not {}",
                sign::AUTH_SCHEME
            )));
        }
    }
    // The signature first, the clock second: a forgery is a bad signature whatever its
    // timestamp, and only a genuine message can be a stale one (a replay).
    let t = s
        .verifier
        .verify_signature(
            h("Wechatpay-Serial")?,
            h("Wechatpay-Timestamp")?,
            h("Wechatpay-Nonce")?,
            signature,
            body,
        )
        .map_err(|e| NotifyError::BadSignature(e.to_string()))?;
    sign::check_skew(t, now_unix).map_err(|e| NotifyError::Stale(e.to_string()))?;

    let malformed = |m: String| NotifyError::Malformed(m);
    let envelope: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("notification is not JSON: {e}")))?;
    let plain = decrypt_resource(s, &envelope)?;
    let v: Value = serde_json::from_slice(&plain)
        .map_err(|e| malformed(format!("decrypted resource is not JSON: {e}")))?;
    let event_type = envelope["event_type"]
        .as_str()
        .ok_or_else(|| malformed("notification has no event_type".into()))?;
    let account = notified_account(&v);
    check_account(s, &account)?;
    let out_trade_no = text(&v, "out_trade_no")?;
    if event_type.starts_with("TRANSACTION.") {
        let state = text(&v, "trade_state")?;
        let state = order_state(&v, &state).map_err(|e| malformed(e.message))?;
        return Ok(Notification::Payment {
            out_trade_no,
            state,
            account,
        });
    }
    match event_type {
        "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED" => {
            let out_refund_no = text(&v, "out_refund_no")?;
            let state = text(&v, "refund_status")?;
            let state = refund_state(&v, &state).map_err(|e| malformed(e.message))?;
            Ok(Notification::Refund {
                out_trade_no,
                out_refund_no,
                state,
                account,
            })
        }
        other => Err(malformed(format!("unknown event_type {other:?}"))),
    }
}

/// `resource` → the plaintext object, with the channel's APIv3 key.
fn decrypt_resource(s: &WechatPaySettings, envelope: &Value) -> Result<Vec<u8>, NotifyError> {
    let malformed = |m: String| NotifyError::Malformed(m);
    if let Some(kind) = envelope["resource_type"].as_str() {
        if kind != "encrypt-resource" {
            return Err(malformed(format!("unknown resource_type {kind:?}")));
        }
    }
    let r = &envelope["resource"];
    let field = |name: &str| {
        r[name]
            .as_str()
            .ok_or_else(|| malformed(format!("resource has no {name}")))
    };
    let algorithm = field("algorithm")?;
    if algorithm != ALGORITHM {
        return Err(malformed(format!(
            "resource algorithm {algorithm:?} is not {ALGORITHM}"
        )));
    }
    let key = s
        .apiv3_key
        .as_ref()
        .ok_or_else(|| NotifyError::Decrypt("channel has no apiv3_key".into()))?;
    sign::aead_decrypt(
        key.expose().as_bytes(),
        field("nonce")?,
        r["associated_data"].as_str().unwrap_or(""),
        field("ciphertext")?,
    )
    .map_err(|e| NotifyError::Decrypt(e.to_string()))
}

/// Direct mode names `mchid` + `appid`; partner mode `sp_mchid` + `sub_mchid` + `sp_appid`.
/// Refund objects name no app.
fn notified_account(v: &Value) -> NotifiedAccount {
    let s = |name: &str| v[name].as_str().map(str::to_string);
    NotifiedAccount {
        mchid: s("sp_mchid").or_else(|| s("mchid")),
        sub_mchid: s("sub_mchid"),
        app_id: s("sp_appid").or_else(|| s("appid")),
        ..NotifiedAccount::default()
    }
}

/// A notification signed with this channel's WeChat Pay key names this channel's merchant
/// id; one that names another is refused here already (the payment layer compares the
/// rest, sub_mchid and app, with the stored account).
fn check_account(s: &WechatPaySettings, a: &NotifiedAccount) -> Result<(), NotifyError> {
    let ours = s.signing_mchid();
    match &a.mchid {
        Some(m) if m != ours => Err(NotifyError::NotForThisApp(format!(
            "notification is for mchid {m:?}, this channel is {ours:?}"
        ))),
        _ => Ok(()),
    }
}

fn text(v: &Value, name: &str) -> Result<String, NotifyError> {
    v[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| NotifyError::Malformed(format!("resource has no {name}")))
}

/// `204` with no body, or `{"code":"FAIL","message":…}` so that WeChat Pay retries (it
/// resends on any non-2xx): `401` for what does not verify, `400` for what is malformed,
/// `500` only for payroute's own trouble — so that a forger, or keys out of step after a
/// rotation, do not read as payroute failing.
pub(super) fn answer(answer: NotifyAnswer, message: &str) -> Response<Full<Bytes>> {
    let status = match answer {
        NotifyAnswer::Acknowledged => StatusCode::NO_CONTENT,
        NotifyAnswer::Unverifiable => StatusCode::UNAUTHORIZED,
        NotifyAnswer::Malformed => StatusCode::BAD_REQUEST,
        NotifyAnswer::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let ok = answer == NotifyAnswer::Acknowledged;
    let body = if ok {
        Bytes::new()
    } else {
        Bytes::from(json!({ "code": "FAIL", "message": message }).to_string())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if !ok {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::channel::keys::{Certificate, RsaSigner, RsaVerifier};
    use crate::channel::wechatpay::{WechatMode, WechatPay, WechatVerifier};
    use crate::channel::Connector;
    use crate::domain::{PaymentStatus, RefundStatus};
    use crate::secret::Secret;

    /// A TEST-ONLY 32-byte APIv3 key.
    const APIV3_KEY: &str = "payroute-test-apiv3-key-32-bytes";
    const PUB_KEY_ID: &str = "PUB_KEY_ID_SANDBOX_TEST_ONLY";
    const NOW: i64 = 1_700_000_000;
    const NONCE: &str = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";

    /// A TEST-ONLY key of the built-in sandbox (config/sandbox/README.md).
    fn sandbox_key(name: &str) -> String {
        let path = format!("{}/config/sandbox/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn direct() -> WechatMode {
        WechatMode::Direct {
            mchid: "1900000109".into(),
            appid: "wx2421b1c4370ec43b".into(),
        }
    }

    fn partner() -> WechatMode {
        WechatMode::Partner {
            sp_mchid: "1900000100".into(),
            sp_appid: "wx8888888888888888".into(),
        }
    }

    /// A channel that verifies with the sandbox's WeChat Pay public key, as the demo
    /// channels do.
    fn settings(mode: WechatMode) -> WechatPaySettings {
        WechatPaySettings {
            mode,
            serial_no: "5157F09EFDC096DE15EBE81A47057A72".into(),
            signer: RsaSigner::from_text(&sandbox_key("platform_apiclient_key.pem")).unwrap(),
            apiv3_key: Some(Secret::new(APIV3_KEY)),
            verifier: WechatVerifier {
                public_key: Some((
                    PUB_KEY_ID.into(),
                    RsaVerifier::from_text(&sandbox_key("wechatpay_pub_key.pem")).unwrap(),
                )),
                certificates: HashMap::new(),
            },
        }
    }

    /// A notification as WeChat Pay sends it: `resource` encrypted with the APIv3 key, the
    /// body signed by the sandbox "platform" key at `ts`.
    fn notification(event_type: &str, resource: &Value, ts: i64) -> (HeaderMap, Vec<u8>) {
        let (original_type, ad) = if event_type.starts_with("REFUND.") {
            ("refund", "refund")
        } else {
            ("transaction", "transaction")
        };
        let ct = sign::aead_encrypt(
            APIV3_KEY.as_bytes(),
            "fdasflkja484",
            ad,
            resource.to_string().as_bytes(),
        )
        .unwrap();
        let body = json!({
            "id": "EV-2018022511223320873",
            "create_time": "2015-05-20T13:29:35+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": {
                "original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ct, "associated_data": ad, "nonce": "fdasflkja484",
            },
        })
        .to_string()
        .into_bytes();
        (signed_headers(&body, ts), body)
    }

    fn signed_headers(body: &[u8], ts: i64) -> HeaderMap {
        let platform = RsaSigner::from_text(&sandbox_key("wechatpay_platform_key.pem")).unwrap();
        let ts = ts.to_string();
        let signature = platform.sign_b64(&sign::response_message(&ts, NONCE, body));
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("Wechatpay-Serial", PUB_KEY_ID),
            ("Wechatpay-Timestamp", ts.as_str()),
            ("Wechatpay-Nonce", NONCE),
            ("Wechatpay-Signature", signature.as_str()),
            ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        h
    }

    fn direct_transaction(trade_state: &str) -> Value {
        json!({
            "mchid": "1900000109", "appid": "wx2421b1c4370ec43b",
            "out_trade_no": "1217752501201407033233368018", "transaction_id": "4200000000000000000000000001",
            "trade_type": "NATIVE", "trade_state": trade_state, "trade_state_desc": "支付成功",
            "bank_type": "OTHERS", "success_time": "2018-06-08T10:34:56+08:00",
            "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
            "amount": { "total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY" },
        })
    }

    fn partner_transaction() -> Value {
        json!({
            "sp_mchid": "1900000100", "sp_appid": "wx8888888888888888",
            "sub_mchid": "1900000109", "sub_appid": "wxd678efh567hg6999",
            "out_trade_no": "o-partner-1", "transaction_id": "4200000000000000000000000002",
            "trade_type": "JSAPI", "trade_state": "SUCCESS", "success_time": "2018-06-08T10:34:56+08:00",
            "payer": { "sp_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
            "amount": { "total": 2500, "payer_total": 2500, "currency": "CNY", "payer_currency": "CNY" },
        })
    }

    fn refund(status: &str) -> Value {
        json!({
            "mchid": "1900000109", "out_trade_no": "1217752501201407033233368018",
            "transaction_id": "4200000000000000000000000001", "out_refund_no": "r-1",
            "refund_id": "50000000382019052709732678859", "refund_status": status,
            "success_time": "2018-06-08T10:34:56+08:00", "user_received_account": "招商银行信用卡0403",
            "amount": { "total": 100, "refund": 40, "payer_total": 100, "payer_refund": 40 },
        })
    }

    #[test]
    fn direct_payment_round_trips() {
        let s = settings(direct());
        let (h, body) = notification("TRANSACTION.SUCCESS", &direct_transaction("SUCCESS"), NOW);
        let Notification::Payment {
            out_trade_no,
            state,
            account,
        } = verify(&s, &h, &body, NOW).unwrap()
        else {
            panic!("not a payment")
        };
        assert_eq!(out_trade_no, "1217752501201407033233368018");
        assert_eq!(state.status, PaymentStatus::Succeeded);
        assert_eq!(state.provider_state, "SUCCESS");
        assert_eq!(state.amount, Some(100));
        assert_eq!(state.currency.as_deref(), Some("CNY"));
        assert_eq!(
            state.provider_trade_no.as_deref(),
            Some("4200000000000000000000000001")
        );
        assert_eq!(state.paid_at.unwrap().unix_timestamp(), 1_528_425_296);
        assert_eq!(
            account,
            NotifiedAccount {
                mchid: Some("1900000109".into()),
                sub_mchid: None,
                app_id: Some("wx2421b1c4370ec43b".into()),
                ..NotifiedAccount::default()
            }
        );
        // Other TRANSACTION.* events map through the same trade_state table.
        let (h, body) = notification("TRANSACTION.CLOSED", &direct_transaction("CLOSED"), NOW);
        match verify(&s, &h, &body, NOW).unwrap() {
            Notification::Payment { state, .. } => assert_eq!(state.status, PaymentStatus::Closed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partner_payment_names_sp_mchid_sub_mchid_and_sp_appid() {
        let s = settings(partner());
        let (h, body) = notification("TRANSACTION.SUCCESS", &partner_transaction(), NOW);
        let n = verify(&s, &h, &body, NOW).unwrap();
        assert_eq!(n.out_trade_no(), "o-partner-1");
        assert_eq!(
            n.account(),
            &NotifiedAccount {
                mchid: Some("1900000100".into()),
                sub_mchid: Some("1900000109".into()),
                app_id: Some("wx8888888888888888".into()),
                ..NotifiedAccount::default()
            }
        );
        let Notification::Payment { state, .. } = n else {
            panic!("not a payment")
        };
        assert_eq!(
            (state.amount, state.currency.as_deref()),
            (Some(2500), Some("CNY"))
        );
        // The same notification at a channel of another merchant id is not for it.
        let e = verify(&settings(direct()), &h, &body, NOW).unwrap_err();
        assert_eq!(e.label(), "wrong_app", "{e}");
    }

    #[test]
    fn refund_notifications_map_their_status_and_amount() {
        let s = settings(direct());
        for (event, status, expected) in [
            ("REFUND.SUCCESS", "SUCCESS", RefundStatus::Succeeded),
            ("REFUND.ABNORMAL", "ABNORMAL", RefundStatus::Abnormal),
            ("REFUND.CLOSED", "CLOSED", RefundStatus::Failed),
        ] {
            let (h, body) = notification(event, &refund(status), NOW);
            let Notification::Refund {
                out_trade_no,
                out_refund_no,
                state,
                account,
            } = verify(&s, &h, &body, NOW).unwrap()
            else {
                panic!("{event}: not a refund")
            };
            assert_eq!(out_trade_no, "1217752501201407033233368018");
            assert_eq!(out_refund_no, "r-1");
            assert_eq!(state.status, expected, "{event}");
            assert_eq!(state.provider_state, status);
            assert_eq!(state.amount, Some(40));
            assert_eq!(
                state.provider_refund_no.as_deref(),
                Some("50000000382019052709732678859")
            );
            assert_eq!(account.mchid.as_deref(), Some("1900000109"));
            assert_eq!(account.app_id, None);
        }
        // Partner refunds name sp_mchid + sub_mchid.
        let mut r = refund("ABNORMAL");
        r.as_object_mut().unwrap().remove("mchid");
        r["sp_mchid"] = json!("1900000100");
        r["sub_mchid"] = json!("1900000109");
        let (h, body) = notification("REFUND.ABNORMAL", &r, NOW);
        let n = verify(&settings(partner()), &h, &body, NOW).unwrap();
        assert_eq!(n.account().mchid.as_deref(), Some("1900000100"));
        assert_eq!(n.account().sub_mchid.as_deref(), Some("1900000109"));
    }

    #[test]
    fn tampered_unsigned_or_unknown_key_is_a_bad_signature() {
        let s = settings(direct());
        let (h, mut body) =
            notification("TRANSACTION.SUCCESS", &direct_transaction("SUCCESS"), NOW);
        let summary = body.windows(7).position(|w| w == b"summary").unwrap();
        body[summary] = b'S';
        let e = verify(&s, &h, &body, NOW).unwrap_err();
        assert!(matches!(e, NotifyError::BadSignature(_)), "{e}");
        let (h, body) = notification("TRANSACTION.SUCCESS", &direct_transaction("SUCCESS"), NOW);
        for header in [
            "Wechatpay-Signature",
            "Wechatpay-Serial",
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
        ] {
            let mut missing = h.clone();
            missing.remove(header);
            assert_eq!(
                verify(&s, &missing, &body, NOW).unwrap_err().label(),
                "bad_signature",
                "{header}"
            );
        }
        let mut other_key = h.clone();
        other_key.insert(
            "Wechatpay-Serial",
            "PUB_KEY_ID_SOMEONE_ELSE".parse().unwrap(),
        );
        assert_eq!(
            verify(&s, &other_key, &body, NOW).unwrap_err().label(),
            "bad_signature"
        );
        let mut other_type = h.clone();
        other_type.insert(
            "Wechatpay-Signature-Type",
            "WECHATPAY2-SM2-WITH-SM3".parse().unwrap(),
        );
        assert_eq!(
            verify(&s, &other_type, &body, NOW).unwrap_err().label(),
            "bad_signature"
        );
        // A stale forgery is a forgery first.
        let mut old_forged = h.clone();
        old_forged.insert(
            "Wechatpay-Timestamp",
            (NOW - 3600).to_string().parse().unwrap(),
        );
        assert_eq!(
            verify(&s, &old_forged, &body, NOW).unwrap_err().label(),
            "bad_signature"
        );
    }

    #[test]
    fn six_minutes_old_is_stale_five_is_not() {
        let s = settings(direct());
        let tx = direct_transaction("SUCCESS");
        let (h, body) = notification("TRANSACTION.SUCCESS", &tx, NOW - 360);
        let e = verify(&s, &h, &body, NOW).unwrap_err();
        assert!(matches!(e, NotifyError::Stale(_)), "{e}");
        let (h, body) = notification("TRANSACTION.SUCCESS", &tx, NOW + 360);
        assert_eq!(verify(&s, &h, &body, NOW).unwrap_err().label(), "stale");
        let (h, body) = notification("TRANSACTION.SUCCESS", &tx, NOW - 300);
        assert!(verify(&s, &h, &body, NOW).is_ok());
    }

    #[test]
    fn a_signature_probe_is_refused_as_a_probe() {
        let s = settings(direct());
        let (mut h, body) =
            notification("TRANSACTION.SUCCESS", &direct_transaction("SUCCESS"), NOW);
        h.insert(
            "Wechatpay-Signature",
            "WECHATPAY/SIGNTEST/dGVzdCBzaWduYXR1cmU=".parse().unwrap(),
        );
        assert_eq!(verify(&s, &h, &body, NOW), Err(NotifyError::Probe));
        assert_eq!(NotifyError::Probe.label(), "probe");
    }

    #[test]
    fn verified_but_undecryptable_or_unknown_is_refused() {
        let (h, body) = notification("TRANSACTION.SUCCESS", &direct_transaction("SUCCESS"), NOW);
        let mut no_key = settings(direct());
        no_key.apiv3_key = None;
        assert_eq!(
            verify(&no_key, &h, &body, NOW),
            Err(NotifyError::Decrypt("channel has no apiv3_key".into()))
        );
        let mut other_key = settings(direct());
        other_key.apiv3_key = Some(Secret::new("another-test-apiv3-key-32-bytes!"));
        assert_eq!(
            verify(&other_key, &h, &body, NOW).unwrap_err().label(),
            "decrypt"
        );

        let s = settings(direct());
        let (h, body) = notification(
            "PAYSCORE.USER_OPEN_SERVICE",
            &direct_transaction("SUCCESS"),
            NOW,
        );
        assert_eq!(verify(&s, &h, &body, NOW).unwrap_err().label(), "malformed");
        let (h, body) = notification("TRANSACTION.SUCCESS", &direct_transaction("WHAT"), NOW);
        assert_eq!(verify(&s, &h, &body, NOW).unwrap_err().label(), "malformed");
        let mut no_no = direct_transaction("SUCCESS");
        no_no.as_object_mut().unwrap().remove("out_trade_no");
        let (h, body) = notification("TRANSACTION.SUCCESS", &no_no, NOW);
        assert_eq!(verify(&s, &h, &body, NOW).unwrap_err().label(), "malformed");
        let (h, body) = notification("REFUND.ABNORMAL", &refund("WHAT"), NOW);
        assert_eq!(verify(&s, &h, &body, NOW).unwrap_err().label(), "malformed");
        // Signed, but not JSON.
        let body = b"not json".to_vec();
        let h = signed_headers(&body, NOW);
        assert_eq!(verify(&s, &h, &body, NOW).unwrap_err().label(), "malformed");
    }

    /// Vector V2 (wechatpay-go core/notify/notify_test.go): the signature verifies through
    /// the notification path; its resource was encrypted with a 16-byte key, so a channel
    /// with a 32-byte APIv3 key fails to decrypt it — after the signature passed.
    #[test]
    fn v2_vector_verifies_then_does_not_decrypt() {
        let cert = Certificate::from_pem(&crate::fixture("vectors/go_notify_cert.pem")).unwrap();
        let mut s = settings(direct());
        s.verifier = WechatVerifier {
            public_key: None,
            certificates: HashMap::from([(cert.serial.clone(), cert.key)]),
        };
        let body = crate::fixture("vectors/go_notify_body.json");
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("Wechatpay-Serial", "D7CE59D1F522D701"),
            ("Wechatpay-Timestamp", "1624523846"),
            ("Wechatpay-Nonce", "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz"),
            ("Wechatpay-Signature", "tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXFlbYZTOQrVdG4b6LfTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwXvV1VEA1IBLX70xptjL8hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdEdkNO6B2Cke5e8VTxY406ArAmQ90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q=="),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        let now = 1_624_523_846 + 60;
        let e = verify(&s, &h, body.as_bytes(), now).unwrap_err();
        assert!(matches!(e, NotifyError::Decrypt(_)), "{e}");
        // The 16-byte key it was made with is not an AES-256 key.
        s.apiv3_key = Some(Secret::new("testMchAPIv3Key0"));
        let e = verify(&s, &h, body.as_bytes(), now).unwrap_err();
        assert!(
            matches!(&e, NotifyError::Decrypt(m) if m.contains("32 bytes")),
            "{e}"
        );
        let mut tampered = body.clone().into_bytes();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&s, &h, &tampered, now).unwrap_err().label(),
            "bad_signature"
        );
        assert_eq!(
            verify(&s, &h, body.as_bytes(), now + 400)
                .unwrap_err()
                .label(),
            "stale"
        );
    }

    #[test]
    fn the_connector_dispatches_and_answers() {
        let http = crate::channel::http::HttpClient::new(None).unwrap();
        let c = WechatPay::new(
            "https://api.mch.weixin.qq.com".into(),
            Arc::new(settings(direct())),
            http,
        );
        let (h, body) = notification("TRANSACTION.SUCCESS", &direct_transaction("SUCCESS"), NOW);
        assert!(matches!(
            c.verify_notification(&h, &body, NOW),
            Ok(Notification::Payment { .. })
        ));
        let ok = c.notification_answer(NotifyAnswer::Acknowledged, "");
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        for (answer, status) in [
            (NotifyAnswer::Unverifiable, StatusCode::UNAUTHORIZED),
            (NotifyAnswer::Malformed, StatusCode::BAD_REQUEST),
            (NotifyAnswer::Failed, StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            let fail = c.notification_answer(answer, "bad \"signature\"");
            assert_eq!(fail.status(), status);
            assert_eq!(fail.headers()[header::CONTENT_TYPE], "application/json");
            let body = futures_body(fail);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v, json!({ "code": "FAIL", "message": "bad \"signature\"" }));
        }
        assert!(futures_body(ok).is_empty());
    }

    fn futures_body(r: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(r.into_body().collect()).unwrap().to_bytes()
    }
}
