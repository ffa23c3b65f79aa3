//! Alipay asynchronous notifications (classic gateway): a form-encoded POST, RSA2-signed over
//! every field but `sign` and `sign_type` ([`super::sign::verify_notification`]).
//! `notify_type=trade_status_sync` reports a trade's state with the fields of a trade query
//! answer (parsed by the same code); one that carries `out_biz_no` + `refund_fee` +
//! `gmt_refund` reports a refund.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::{parse_china_datetime, parse_trade, sign, yuan_field, AlipaySettings};
use crate::channel::notification::{Notification, NotifiedAccount, NotifyError};
use crate::channel::RefundState;
use crate::domain::{PaymentStatus, RefundStatus};

pub(super) fn verify(s: &AlipaySettings, body: &[u8]) -> Result<Notification, NotifyError> {
    let fields = sign::verify_notification(&sign::decode(body), &s.alipay_key)
        .map_err(|e| NotifyError::BadSignature(e.to_string()))?;
    // Empty values are not signed (they are left out of the string to sign): absent.
    let f = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let need = |name: &str| {
        f(name).ok_or_else(|| NotifyError::Malformed(format!("notification has no {name}")))
    };
    // The app that the notification is for: in ISV mode too this is the platform's app
    // (`auth_app_id` names the merchant's).
    let app_id = need("app_id")?;
    if app_id != s.app_id {
        return Err(NotifyError::NotForThisApp(format!(
            "notification is for app_id {app_id:?}, this channel is {:?}",
            s.app_id
        )));
    }
    let notify_type = need("notify_type")?;
    if notify_type != "trade_status_sync" {
        return Err(NotifyError::Malformed(format!(
            "unknown notify_type {notify_type:?}"
        )));
    }
    let out_trade_no = need("out_trade_no")?.to_string();
    let account = NotifiedAccount {
        app_id: Some(app_id.to_string()),
        seller_id: f("seller_id").map(str::to_string),
        auth_app_id: f("auth_app_id").map(str::to_string),
        ..NotifiedAccount::default()
    };
    let v = as_json(&fields);
    let malformed = |e: crate::channel::ChannelError| NotifyError::Malformed(e.message);

    if f("refund_fee").is_some() && f("gmt_refund").is_some() {
        // A refund: `out_biz_no` is the refund's out_request_no, our out_refund_no. Alipay
        // notifies only refunds that moved money. Its `refund_fee` is everything refunded on
        // the trade so far, not this refund's amount, which the notification does not state.
        let out_refund_no = need("out_biz_no")?.to_string();
        let state = RefundState {
            status: RefundStatus::Succeeded,
            provider_state: need("trade_status")?.to_string(),
            provider_refund_no: f("trade_no").map(str::to_string),
            amount: None,
            refunded_total: yuan_field(&v, "refund_fee").map_err(malformed)?,
        };
        return Ok(Notification::Refund {
            out_trade_no,
            out_refund_no,
            state,
            account,
        });
    }

    let mut state = parse_trade(&v, &out_trade_no).map_err(malformed)?;
    // A notification states the payment time as `gmt_payment` (a query as `send_pay_date`).
    if state.paid_at.is_none() && state.status == PaymentStatus::Succeeded {
        state.paid_at = f("gmt_payment").and_then(parse_china_datetime);
    }
    Ok(Notification::Payment {
        out_trade_no,
        state,
        account,
    })
}

/// The verified fields (empty ones left out) as a JSON object of strings, the shape
/// [`parse_trade`] reads.
fn as_json(fields: &BTreeMap<String, String>) -> Value {
    Value::Object(
        fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// `200 text/plain` `success` (the 7 bytes Alipay looks for) or `fail`, which makes Alipay
/// retry.
pub(super) fn answer(ok: bool) -> Response<Full<Bytes>> {
    let body = if ok { "success" } else { "fail" };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::channel::alipay::sign::tests::{a1_fields, A1_KEY};
    use crate::channel::alipay::{Alipay, AlipayMode};
    use crate::channel::keys::{RsaSigner, RsaVerifier};
    use crate::channel::{Connector, NotifyAnswer};

    const APP_ID: &str = "2021000000000001";

    /// The TEST-ONLY key of the built-in sandbox's "Alipay" (config/sandbox/README.md).
    fn sandbox_alipay_key() -> RsaSigner {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/sandbox/alipay_sandbox_key.pem"
        );
        RsaSigner::from_text(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn settings(app_id: &str, alipay_key: RsaVerifier) -> AlipaySettings {
        AlipaySettings {
            mode: AlipayMode::Isv,
            app_id: app_id.into(),
            signer: RsaSigner::from_text(&crate::fixture("rsa_pkcs1_test_key.pem")).unwrap(),
            alipay_key,
        }
    }

    /// A form body as Alipay POSTs it, signed with `key` (sign_type left out of the string).
    fn signed_body(fields: &[(&str, &str)], key: &RsaSigner) -> Vec<u8> {
        let mut map: BTreeMap<String, String> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sign = key.sign_b64(sign::string_to_sign(&map).as_bytes());
        map.insert("sign".into(), sign);
        map.insert("sign_type".into(), "RSA2".into());
        sign::encode(&map).into_bytes()
    }

    fn trade_fields<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut f = vec![
            ("app_id", APP_ID),
            ("auth_app_id", "2021000000000777"),
            ("charset", "utf-8"),
            ("gmt_create", "2024-03-01 10:00:00"),
            ("gmt_payment", "2024-03-01 10:00:05"),
            ("notify_id", "2024030100222100005000000000000001"),
            ("notify_time", "2024-03-01 12:00:00"),
            ("notify_type", "trade_status_sync"),
            ("out_trade_no", "o-ali-1"),
            ("seller_id", "2088000000000001"),
            ("total_amount", "88.88"),
            ("trade_no", "2024030122001400000000000001"),
            ("version", "1.0"),
        ];
        for (k, v) in extra {
            f.retain(|(name, _)| name != k);
            f.push((k, v));
        }
        f
    }

    /// Vector A1 (alipay-sdk-nodejs-all test/alipay.test.ts): the form body rebuilt from
    /// the signed string (URL-encoded, plus sign and sign_type) verifies through this path.
    #[test]
    fn a1_real_notification_is_a_payment() {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(a1_fields())
            .finish();
        let s = settings("2019073166072302", RsaVerifier::from_text(A1_KEY).unwrap());
        let Notification::Payment {
            out_trade_no,
            state,
            account,
        } = verify(&s, body.as_bytes()).unwrap()
        else {
            panic!("not a payment")
        };
        assert_eq!(out_trade_no, "20190815155618536-564-57");
        assert_eq!(state.status, PaymentStatus::Succeeded);
        assert_eq!(state.provider_state, "TRADE_SUCCESS");
        assert_eq!(state.amount, Some(10));
        assert_eq!(state.currency.as_deref(), Some("CNY"));
        assert_eq!(
            state.provider_trade_no.as_deref(),
            Some("2019081522001468450512505578")
        );
        // gmt_payment 2019-08-15 15:56:24 China time.
        assert_eq!(state.paid_at.unwrap().unix_timestamp(), 1_565_855_784);
        assert_eq!(
            account,
            NotifiedAccount {
                app_id: Some("2019073166072302".into()),
                seller_id: Some("2088531891668739".into()),
                auth_app_id: Some("2019073166072302".into()),
                ..NotifiedAccount::default()
            }
        );

        // Another channel's app: verified, but not for this one.
        let other = settings(APP_ID, RsaVerifier::from_text(A1_KEY).unwrap());
        let e = verify(&other, body.as_bytes()).unwrap_err();
        assert!(matches!(e, NotifyError::NotForThisApp(_)), "{e}");
        assert_eq!(e.label(), "wrong_app");

        // Tampered: 0.10 yuan becomes 1000.10.
        let tampered = body.replace("total_amount=0.10", "total_amount=1000.10");
        assert_ne!(tampered, body);
        let e = verify(&s, tampered.as_bytes()).unwrap_err();
        assert!(matches!(e, NotifyError::BadSignature(_)), "{e}");
        // Signed by someone else.
        let forged = signed_body(
            &a1_fields()
                .iter()
                .filter(|(k, _)| k != "sign" && k != "sign_type")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            &sandbox_alipay_key(),
        );
        assert_eq!(verify(&s, &forged).unwrap_err().label(), "bad_signature");
        assert_eq!(verify(&s, b"").unwrap_err().label(), "bad_signature");
    }

    #[test]
    fn trade_states_map_like_a_query() {
        let key = sandbox_alipay_key();
        let s = settings(APP_ID, key.verifier());
        for (trade_status, expected) in [
            ("TRADE_SUCCESS", PaymentStatus::Succeeded),
            ("TRADE_FINISHED", PaymentStatus::Succeeded),
            ("TRADE_CLOSED", PaymentStatus::Closed),
            ("WAIT_BUYER_PAY", PaymentStatus::Pending),
        ] {
            let body = signed_body(&trade_fields(&[("trade_status", trade_status)]), &key);
            match verify(&s, &body).unwrap() {
                Notification::Payment { state, .. } => {
                    assert_eq!(state.status, expected, "{trade_status}");
                    assert_eq!(state.amount, Some(8888));
                    assert_eq!(state.currency.as_deref(), Some("CNY"));
                }
                other => panic!("{trade_status}: {other:?}"),
            }
        }
        for bad in [
            trade_fields(&[("trade_status", "TRADE_WHAT")]),
            trade_fields(&[
                ("trade_status", "TRADE_SUCCESS"),
                ("total_amount", "88.888"),
            ]),
            trade_fields(&[
                ("trade_status", "TRADE_SUCCESS"),
                ("notify_type", "other_sync"),
            ]),
            trade_fields(&[("trade_status", "TRADE_SUCCESS"), ("out_trade_no", "")]),
        ] {
            let body = signed_body(&bad, &key);
            assert_eq!(
                verify(&s, &body).unwrap_err().label(),
                "malformed",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_refund_notification_states_the_refunded_total() {
        let key = sandbox_alipay_key();
        let s = settings(APP_ID, key.verifier());
        let refund = [
            ("trade_status", "TRADE_SUCCESS"),
            ("out_biz_no", "r-ali-2"),
            ("refund_fee", "30.00"),
            ("gmt_refund", "2024-03-02 09:00:00.123"),
        ];
        let body = signed_body(&trade_fields(&refund), &key);
        let Notification::Refund {
            out_trade_no,
            out_refund_no,
            state,
            account,
        } = verify(&s, &body).unwrap()
        else {
            panic!("not a refund")
        };
        assert_eq!(
            (out_trade_no.as_str(), out_refund_no.as_str()),
            ("o-ali-1", "r-ali-2")
        );
        assert_eq!(state.status, RefundStatus::Succeeded);
        // refund_fee is everything refunded on the trade, not this refund's amount.
        assert_eq!(state.refunded_total, Some(3000));
        assert_eq!(state.amount, None);
        assert_eq!(state.provider_state, "TRADE_SUCCESS");
        assert_eq!(account.app_id.as_deref(), Some(APP_ID));

        // A full refund closes the trade: still a refund notification.
        let closed = signed_body(
            &trade_fields(&[
                ("trade_status", "TRADE_CLOSED"),
                ("out_biz_no", "r-ali-3"),
                ("refund_fee", "88.88"),
                ("gmt_refund", "2024-03-02 09:00:00.123"),
                ("gmt_close", "2024-03-02 09:00:00"),
            ]),
            &key,
        );
        match verify(&s, &closed).unwrap() {
            Notification::Refund {
                state,
                out_refund_no,
                ..
            } => {
                assert_eq!(out_refund_no, "r-ali-3");
                assert_eq!(state.refunded_total, Some(8888));
            }
            other => panic!("{other:?}"),
        }

        // A refund without out_biz_no cannot be matched to one of ours.
        let no_biz = signed_body(
            &trade_fields(&[
                ("trade_status", "TRADE_SUCCESS"),
                ("refund_fee", "30.00"),
                ("gmt_refund", "2024-03-02 09:00:00.123"),
            ]),
            &key,
        );
        assert_eq!(verify(&s, &no_biz).unwrap_err().label(), "malformed");
        let bad_fee = signed_body(
            &trade_fields(&[
                ("trade_status", "TRADE_SUCCESS"),
                ("out_biz_no", "r-ali-2"),
                ("refund_fee", "30.001"),
                ("gmt_refund", "2024-03-02 09:00:00.123"),
            ]),
            &key,
        );
        assert_eq!(verify(&s, &bad_fee).unwrap_err().label(), "malformed");
    }

    #[test]
    fn the_connector_dispatches_and_answers() {
        let key = sandbox_alipay_key();
        let http = crate::channel::http::HttpClient::new(None).unwrap();
        let c = Alipay::new(
            "https://openapi.alipay.com/gateway.do".into(),
            Arc::new(settings(APP_ID, key.verifier())),
            http,
        );
        let body = signed_body(&trade_fields(&[("trade_status", "TRADE_SUCCESS")]), &key);
        assert!(matches!(
            c.verify_notification(&http::HeaderMap::new(), &body, 0),
            Ok(Notification::Payment { .. })
        ));
        // Only a notification naming this channel's app is worth a signature check when it
        // was posted to another name.
        assert!(c.may_be_for_this_account(&http::HeaderMap::new(), &body));
        let other = signed_body(
            &trade_fields(&[
                ("app_id", "2021000000009999"),
                ("trade_status", "TRADE_SUCCESS"),
            ]),
            &key,
        );
        assert!(!c.may_be_for_this_account(&http::HeaderMap::new(), &other));
        assert!(!c.may_be_for_this_account(&http::HeaderMap::new(), b"{}"));
        for (answer, text) in [
            (NotifyAnswer::Acknowledged, "success"),
            (NotifyAnswer::Unverifiable, "fail"),
            (NotifyAnswer::Malformed, "fail"),
            (NotifyAnswer::Failed, "fail"),
        ] {
            let r = c.notification_answer(answer, "ignored");
            assert_eq!(r.status(), StatusCode::OK);
            assert!(r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
            use http_body_util::BodyExt;
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let body = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
            assert_eq!(body, text.as_bytes());
        }
    }
}
