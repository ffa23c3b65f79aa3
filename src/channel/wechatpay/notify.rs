//! WeChat Pay API v3 notifications: `Wechatpay-*` signature headers over
//! `TIMESTAMP\nNONCE\nBODY\n`, a JSON envelope whose `resource` is encrypted with
//! AEAD_AES_256_GCM under the APIv3 key, and inside it a transaction or a refund object of
//! the same shape as the query answers (parsed by the same code).

use bytes::Bytes;
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::{order_state, refund_state, sign, WechatPaySettings};
use crate::channel::notification::{Notification, NotifiedAccount, NotifyError};

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
        .map_err(NotifyError::BadSignature)?;
    sign::check_skew(t, now_unix).map_err(NotifyError::Stale)?;

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
    .map_err(NotifyError::Decrypt)
}

/// Direct mode names `mchid` + `appid`; partner mode `sp_mchid` + `sub_mchid` + `sp_appid`.
/// Refund objects name no app.
fn notified_account(v: &Value) -> NotifiedAccount {
    let s = |name: &str| v[name].as_str().map(str::to_string);
    NotifiedAccount {
        mchid: s("sp_mchid").or_else(|| s("mchid")),
        sub_mchid: s("sub_mchid"),
        app_id: s("sp_appid").or_else(|| s("appid")),
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

/// `204` with no body, or `500 {"code":"FAIL","message":…}` so that WeChat Pay retries.
pub(super) fn answer(ok: bool, message: &str) -> Response<Full<Bytes>> {
    let (status, body) = if ok {
        (StatusCode::NO_CONTENT, Bytes::new())
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(json!({ "code": "FAIL", "message": message }).to_string()),
        )
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
