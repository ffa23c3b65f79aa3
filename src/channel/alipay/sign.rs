//! Alipay's RSA2 signatures on the classic gateway: the string to sign of a request, the
//! verification of an answer over the raw bytes of its `<method>_response` value, and the
//! verification of an asynchronous notification. Shared by the connector and the sandbox.

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;

use crate::channel::keys::{RsaSigner, RsaVerifier};

/// Why an Alipay notification or gateway answer was refused. The text names the field or
/// the step, never a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("sign_type {0:?} is not RSA2")]
    SignType(String),
    #[error("field {0} appears twice")]
    DuplicateField(String),
    #[error("notification has no sign")]
    NoSign,
    #[error("notification signature does not verify")]
    DoesNotVerify,
    #[error("answer is not UTF-8")]
    NotUtf8,
    #[error("answer is not a JSON object: {0}")]
    NotJson(String),
    #[error("sign is not a string")]
    SignNotText,
    /// `key` is the `<method>_response` the answer should have carried.
    #[error("answer has neither {key} nor error_response")]
    NoResponse { key: String },
}

/// Every parameter except `sign`, sorted by key, empty values skipped, `k=v` joined with
/// `&`, values raw (not URL-encoded). `sign_type` is part of a request's string.
pub fn string_to_sign(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Adds `sign` to the parameters.
pub fn sign_params(params: &mut BTreeMap<String, String>, signer: &RsaSigner) {
    let sign = signer.sign_b64(string_to_sign(params).as_bytes());
    params.insert("sign".into(), sign);
}

/// Whether a request's `sign` verifies (the sandbox uses it).
pub fn verify_params(params: &BTreeMap<String, String>, key: &RsaVerifier) -> bool {
    match params.get("sign") {
        Some(sign) => key.verify_b64(string_to_sign(params).as_bytes(), sign),
        None => false,
    }
}

/// `application/x-www-form-urlencoded`, UTF-8.
pub fn encode(params: &BTreeMap<String, String>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish()
}

/// Form-decodes a notification or gateway request body.
pub fn decode(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Verifies an asynchronous notification: `sign` and `sign_type` removed, the rest sorted
/// and joined as for a request. Returns the fields (without `sign`/`sign_type`).
pub fn verify_notification(
    fields: &[(String, String)],
    key: &RsaVerifier,
) -> Result<BTreeMap<String, String>, SignError> {
    let mut map = BTreeMap::new();
    let mut sign = None;
    for (k, v) in fields {
        match k.as_str() {
            "sign" => sign = Some(v.clone()),
            "sign_type" => {
                if v != "RSA2" {
                    return Err(SignError::SignType(v.clone()));
                }
            }
            _ => {
                if map.insert(k.clone(), v.clone()).is_some() {
                    return Err(SignError::DuplicateField(k.clone()));
                }
            }
        }
    }
    let sign = sign.ok_or(SignError::NoSign)?;
    if key.verify_b64(string_to_sign(&map).as_bytes(), &sign) {
        Ok(map)
    } else {
        Err(SignError::DoesNotVerify)
    }
}

/// A gateway answer split into the raw text of its response value and its `sign`.
#[derive(Debug)]
pub struct RawAnswer {
    /// Exactly the bytes that were signed: the value of `<method>_response` or
    /// `error_response` as it stands in the body.
    pub raw: String,
    pub sign: Option<String>,
    pub is_error_response: bool,
}

/// Finds `<method with . → _>_response` (or `error_response`) in an answer body.
pub fn split_answer(body: &[u8], method: &str) -> Result<RawAnswer, SignError> {
    let text = std::str::from_utf8(body).map_err(|_| SignError::NotUtf8)?;
    let map: HashMap<String, Box<RawValue>> =
        serde_json::from_str(text).map_err(|e| SignError::NotJson(e.to_string()))?;
    let key = format!("{}_response", method.replace('.', "_"));
    let sign = match map.get("sign") {
        Some(s) => {
            Some(serde_json::from_str::<String>(s.get()).map_err(|_| SignError::SignNotText)?)
        }
        None => None,
    };
    if let Some(v) = map.get(&key) {
        return Ok(RawAnswer {
            raw: v.get().to_string(),
            sign,
            is_error_response: false,
        });
    }
    if let Some(v) = map.get("error_response") {
        return Ok(RawAnswer {
            raw: v.get().to_string(),
            sign,
            is_error_response: true,
        });
    }
    Err(SignError::NoResponse { key })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Vector A1: Alipay's public key (alipay-sdk-nodejs-all test/alipay.test.ts).
    pub(crate) const A1_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqObrdC7hrgAVM98tK0nv3hSQRGGKT4lBsQjHiGjeYZjOPIPHR5knm2jnnz/YGIXIofVHkA/tAlBAd5DrY7YpvI4tP5EONLtZKC2ghBMx7McI2wRD0xiqzxOQr1FuhZGJ8/AUokBzJrzY+aGX2xcOrxFYRlFilvVLTXg4LWjR1tdPkO6+i7wQZAIVMClPkwVRZEbaERRHlKqTzv2gGv5rDU8gRoe1LeaN+6BlbTqHWkQcNCUNrA8C6l17XAXGKDsm/9TFWwO8EPHHHCaQdjtV5/FdcWIt+L8SR1ss7EXTjYDFtxcKVv9rEoY1lX8T4mX+GbXfZHraG5NCF1+XioL5JwIDAQAB";
    pub(crate) const A1_SIGN: &str = "QfTb8tqE1BMhS5qAnXtvsF3/jBkEvu9q9en0pdbBUDDjvKycZhQb7h8GDs4FKfi049PynaNuatxSgLb/nLWZpXyyh0LEWdK2S6Ri7nPwrVgOs08zugLO20vOQz44y3ti2Ncm8/wZts1Fr2gZ7pShnVX3d1B50hbsXnObT1r/U8ONNQjWXd0HIul4TG+Q3fm3svmSvFEy0WnzuhcyHPX5Gm4ELNctL6Qd5YniGJFNcc7kopHYtI/XD9YCKCH6Ct02rzUs9i11C9CsadtZn+WhxF26Dqt9sGEFajkJ8cxUTLi8+VCpLHsgPE8P0y095uQcDdK0YjCh4x7wVSov+lrmOQ==";

    use crate::fixture;

    /// The A1 notification as Alipay POSTs it: its fields URL-encoded, plus sign and sign_type.
    pub(crate) fn a1_fields() -> Vec<(String, String)> {
        let signed = fixture("vectors/ali_notify_signstr.txt");
        let mut fields: Vec<(String, String)> = signed
            .trim_end_matches('\n')
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        fields.push(("sign".into(), A1_SIGN.into()));
        fields.push(("sign_type".into(), "RSA2".into()));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        decode(body.as_bytes())
    }

    #[test]
    fn a1_real_notification_verifies() {
        let key = RsaVerifier::from_text(A1_KEY).unwrap();
        let fields = verify_notification(&a1_fields(), &key).unwrap();
        assert_eq!(fields["out_trade_no"], "20190815155618536-564-57");
        assert_eq!(fields["subject"], "语雀空间 500人规模");
        assert_eq!(crate::domain::parse_yuan(&fields["total_amount"]), Ok(10));
        assert!(!fields.contains_key("sign_type"));
    }

    #[test]
    fn a1_rejected_with_any_field_changed() {
        let key = RsaVerifier::from_text(A1_KEY).unwrap();
        let fields = a1_fields();
        for i in 0..fields.len() {
            if fields[i].0 == "sign" || fields[i].0 == "sign_type" {
                continue;
            }
            let mut changed = fields.clone();
            changed[i].1.push('0');
            assert!(
                verify_notification(&changed, &key).is_err(),
                "changed {} still verifies",
                fields[i].0
            );
        }
        let mut extra = fields.clone();
        extra.push(("refund_fee".into(), "0.10".into()));
        assert!(verify_notification(&extra, &key).is_err());
    }

    #[test]
    fn a1_rejected_with_sign_type_left_in() {
        let key = RsaVerifier::from_text(A1_KEY).unwrap();
        // The request rule (only `sign` removed) keeps sign_type: that string must not verify.
        let mut all: BTreeMap<String, String> = a1_fields().into_iter().collect();
        let sign = all.remove("sign").unwrap();
        assert!(all.contains_key("sign_type"));
        assert!(!key.verify_b64(string_to_sign(&all).as_bytes(), &sign));
        let mut md5 = a1_fields();
        md5.iter_mut()
            .filter(|(k, _)| k == "sign_type")
            .for_each(|(_, v)| *v = "RSA".into());
        assert!(verify_notification(&md5, &key).is_err());
    }

    #[test]
    fn string_to_sign_sorts_skips_empty_and_keeps_raw_utf8() {
        let params: BTreeMap<String, String> = [
            ("method", "alipay.trade.precreate"),
            ("app_id", "2021000000000001"),
            ("sign", "ignored"),
            ("notify_url", ""),
            (
                "biz_content",
                r#"{"subject":"咖啡 & 茶","total_amount":"19.99"}"#,
            ),
            ("charset", "utf-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            string_to_sign(&params),
            r#"app_id=2021000000000001&biz_content={"subject":"咖啡 & 茶","total_amount":"19.99"}&charset=utf-8&method=alipay.trade.precreate"#
        );
    }

    #[test]
    fn signing_round_trips_with_pkcs1_and_pkcs8_keys() {
        for file in ["rsa_pkcs1_test_key.pem", "vectors/go_test_key.pem"] {
            let signer = RsaSigner::from_text(&fixture(file)).unwrap();
            let mut params: BTreeMap<String, String> = [
                ("app_id", "1"),
                ("biz_content", "{\"a\":\"é\"}"),
                ("sign_type", "RSA2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            sign_params(&mut params, &signer);
            assert!(verify_params(&params, &signer.verifier()), "{file}");
            params.insert("app_id".into(), "2".into());
            assert!(!verify_params(&params, &signer.verifier()), "{file}");
        }
        assert!(fixture("rsa_pkcs1_test_key.pem").contains("BEGIN RSA PRIVATE KEY"));
    }

    #[test]
    fn answers_are_split_on_their_raw_bytes() {
        let body = br#"{"alipay_trade_query_response":{"msg":"Success","code":"10000","total_amount":"0.10" },"sign":"abc"}"#;
        let a = split_answer(body, "alipay.trade.query").unwrap();
        assert_eq!(
            a.raw,
            r#"{"msg":"Success","code":"10000","total_amount":"0.10" }"#
        );
        assert_eq!(a.sign.as_deref(), Some("abc"));
        let e = split_answer(
            br#"{"error_response":{"code":"40002"}}"#,
            "alipay.trade.query",
        )
        .unwrap();
        assert!(e.is_error_response && e.sign.is_none());
        assert!(split_answer(b"[]", "alipay.trade.query").is_err());
    }
}
