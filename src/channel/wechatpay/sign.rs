//! WeChat Pay API v3 signatures: the `WECHATPAY2-SHA256-RSA2048` Authorization header, the
//! response / notification signature, payer-parameter signatures and AEAD_AES_256_GCM.
//! Shared by the connector and the sandbox, so both sides speak one definition.

use std::collections::HashMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::channel::keys::{RsaSigner, RsaVerifier};

pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// Clock skew tolerated on signed answers and notifications.
pub const MAX_SKEW_SECS: u64 = 300;

/// Why a WeChat Pay signature, timestamp or encrypted resource was refused. The text names
/// the header or the step, never a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("unknown Wechatpay-Serial {0:?}")]
    UnknownSerial(String),
    #[error("bad Wechatpay-Timestamp {0:?}")]
    BadTimestamp(String),
    #[error("Wechatpay-Timestamp {t} is more than {MAX_SKEW_SECS}s from now ({now})")]
    Stale { t: i64, now: i64 },
    #[error("Wechatpay-Signature does not verify")]
    DoesNotVerify,
    #[error("APIv3 key must be 32 bytes, not {0}")]
    KeyLength(usize),
    #[error("bad AES-256 key")]
    BadKey,
    #[error("nonce must be 12 bytes")]
    NonceLength,
    #[error("ciphertext is not base64")]
    NotBase64,
    #[error("decryption failed (wrong key or tampered data)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

/// `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = format!("{method}\n{path_and_query}\n{ts}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// `TIMESTAMP\nNONCE\nBODY\n` — what responses and notifications are signed over.
pub fn response_message(ts: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{ts}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// The `Authorization` header value for one request.
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    signer: &RsaSigner,
    mchid: &str,
    serial_no: &str,
    method: &str,
    path_and_query: &str,
    ts: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let signature = signer.sign_b64(&request_message(method, path_and_query, ts, nonce, body));
    format!(
        "{AUTH_SCHEME} mchid=\"{mchid}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{ts}\",serial_no=\"{serial_no}\""
    )
}

/// The fields of an `Authorization` header (the sandbox checks them).
pub fn parse_authorization(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.strip_prefix(AUTH_SCHEME)?.trim_start();
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        fields.insert(k.to_string(), v.to_string());
    }
    Some(fields)
}

/// A random nonce: 32 upper-case hex characters.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// The keys that verify WeChat Pay's signatures: the WeChat Pay public key (by its id)
/// and/or platform certificates (by serial).
#[derive(Clone, Debug, Default)]
pub struct WechatVerifier {
    pub public_key: Option<(String, RsaVerifier)>,
    pub certificates: HashMap<String, RsaVerifier>,
}

impl WechatVerifier {
    /// Checks `Wechatpay-Signature` over `ts\nnonce\nbody\n` with the key named by
    /// `Wechatpay-Serial`, and the timestamp within [`MAX_SKEW_SECS`] of `now`.
    pub fn verify(
        &self,
        serial: &str,
        ts: &str,
        nonce: &str,
        signature: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignError> {
        self.check(serial, ts, nonce, signature, body, Some(now))
            .map(|_| ())
    }

    /// The signature alone, without the clock: returns the signed timestamp, which the
    /// caller must still check with [`check_skew`]. Notifications use it to tell a genuine
    /// but stale message (a replay) from a forged one.
    pub fn verify_signature(
        &self,
        serial: &str,
        ts: &str,
        nonce: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<i64, SignError> {
        self.check(serial, ts, nonce, signature, body, None)
    }

    fn check(
        &self,
        serial: &str,
        ts: &str,
        nonce: &str,
        signature: &str,
        body: &[u8],
        now: Option<i64>,
    ) -> Result<i64, SignError> {
        let key = match &self.public_key {
            Some((id, key)) if id == serial => key,
            _ => self
                .certificates
                .get(serial)
                .ok_or_else(|| SignError::UnknownSerial(serial.to_string()))?,
        };
        let t: i64 = ts
            .parse()
            .map_err(|_| SignError::BadTimestamp(ts.to_string()))?;
        if let Some(now) = now {
            check_skew(t, now)?;
        }
        if key.verify_b64(&response_message(ts, nonce, body), signature) {
            Ok(t)
        } else {
            Err(SignError::DoesNotVerify)
        }
    }
}

/// A signed timestamp `t` must be within [`MAX_SKEW_SECS`] of `now`.
pub fn check_skew(t: i64, now: i64) -> Result<(), SignError> {
    // abs_diff: a hostile timestamp near i64::MIN must not overflow.
    if now.abs_diff(t) > MAX_SKEW_SECS {
        return Err(SignError::Stale { t, now });
    }
    Ok(())
}

/// AEAD_AES_256_GCM as WeChat Pay uses it: base64(ciphertext ‖ tag), a 12-byte nonce
/// string and associated data, with the 32-byte APIv3 key.
pub fn aead_decrypt(
    key: &[u8],
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, SignError> {
    let key = aead_key(key)?;
    let nonce =
        Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| SignError::NonceLength)?;
    let mut data = B64
        .decode(ciphertext_b64)
        .map_err(|_| SignError::NotBase64)?;
    let plain = key
        .open_in_place(nonce, Aad::from(associated_data.as_bytes()), &mut data)
        .map_err(|_| SignError::Decrypt)?;
    Ok(plain.to_vec())
}

/// The inverse of [`aead_decrypt`]; the sandbox encrypts notification resources with it.
pub fn aead_encrypt(
    key: &[u8],
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, SignError> {
    let key = aead_key(key)?;
    let nonce =
        Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| SignError::NonceLength)?;
    let mut data = plaintext.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(associated_data.as_bytes()), &mut data)
        .map_err(|_| SignError::Encrypt)?;
    Ok(B64.encode(data))
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, SignError> {
    if key.len() != 32 {
        return Err(SignError::KeyLength(key.len()));
    }
    let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SignError::BadKey)?;
    Ok(LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::keys::Certificate;

    fn fixture(name: &str) -> String {
        crate::fixture(&format!("vectors/{name}"))
    }

    #[test]
    fn request_message_matches_wechatpay_go() {
        let m = request_message("GET", "/v3/certificates", 1624523846, "A1B2C3D4E5F6G7", b"");
        assert_eq!(m, b"GET\n/v3/certificates\n1624523846\nA1B2C3D4E5F6G7\n\n");
    }

    /// Vector V2 (wechatpay-go core/notify/notify_test.go).
    #[test]
    fn v2_notification_signature_verifies_and_tampering_fails() {
        let cert = Certificate::from_pem(&fixture("go_notify_cert.pem")).unwrap();
        let v = WechatVerifier {
            public_key: None,
            certificates: HashMap::from([(cert.serial.clone(), cert.key)]),
        };
        let body = fixture("go_notify_body.json");
        let sig = "tJHIiIS9eB2hAYstmAmbbD3ZE5LiIm/Ug5tuL4fC0YOFRWIHV39UFIZXC0e9Wl6lBu6sKvkqDkzpqzBsVHyXFlbYZTOQrVdG4b6LfTnK4mikv9++ixJMd3vTf2yCqvBkh98zs3Ds5zsYQakzbcwhmw4fMJs4nPLws28H0UW9FjDR//rxELLwXvV1VEA1IBLX70xptjL8hrfUjEE8kkry6yNJTHZRU8CAc7qHli2Ng1V1qb9ARbK8A3ThmFmPQvRGrapI/jS2laKKgYUmfdEdkNO6B2Cke5e8VTxY406ArAmQ90GAihDwIcb16TQMnzCMBoutnwZKNiKRACrFmtxw2Q==";
        let (ts, nonce, now) = ("1624523846", "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz", 1624523846);
        v.verify("D7CE59D1F522D701", ts, nonce, sig, body.as_bytes(), now)
            .unwrap();
        let mut tampered = body.clone().into_bytes();
        tampered[10] ^= 1;
        assert!(v
            .verify("D7CE59D1F522D701", ts, nonce, sig, &tampered, now)
            .is_err());
        assert!(v
            .verify("D7CE59D1F522D701", ts, "other", sig, body.as_bytes(), now)
            .is_err());
        assert!(v
            .verify("UNKNOWN", ts, nonce, sig, body.as_bytes(), now)
            .is_err());
        // Six minutes of skew is too much.
        let err = v
            .verify(
                "D7CE59D1F522D701",
                ts,
                nonce,
                sig,
                body.as_bytes(),
                now + 360,
            )
            .unwrap_err();
        assert!(matches!(err, SignError::Stale { .. }), "{err}");
        // A hostile timestamp at the edge of i64 is refused, not an overflow panic; and
        // `i64::MIN + now` would wrap `now - t` to i64::MIN, whose `abs()` stays negative in a
        // release build, passing a subtract-and-abs skew check.
        for hostile in [i64::MIN, i64::MIN + now, i64::MAX].map(|t| t.to_string()) {
            let hostile = hostile.as_str();
            let err = v
                .verify(
                    "D7CE59D1F522D701",
                    hostile,
                    nonce,
                    sig,
                    body.as_bytes(),
                    now,
                )
                .unwrap_err();
            assert!(matches!(err, SignError::Stale { .. }), "{err}");
        }
    }

    /// Vector V3 (wechatpay-java AeadAesCipherTest).
    #[test]
    fn v3_aead_known_answer() {
        let key = b"a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
        let ct = aead_encrypt(key, "uluk4a9R25RW", "associatedData", b"message").unwrap();
        assert_eq!(ct, "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=");
        assert_eq!(
            aead_decrypt(key, "uluk4a9R25RW", "associatedData", &ct).unwrap(),
            b"message"
        );
        assert!(aead_decrypt(key, "uluk4a9R25RW", "otherData", &ct).is_err());
        assert_eq!(
            aead_decrypt(b"testMchAPIv3Key0", "uluk4a9R25RW", "associatedData", &ct),
            Err(SignError::KeyLength(16))
        );
    }

    /// Vector V4: an encrypted platform certificate decrypts to the expected certificate.
    #[test]
    fn v4_decrypts_platform_certificate() {
        let key = b"a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
        let ct = fixture("java_cert_ct.txt");
        let pem = aead_decrypt(key, "14b16c03dc1b", "certificate", ct.trim()).unwrap();
        let cert = Certificate::from_pem(std::str::from_utf8(&pem).unwrap()).unwrap();
        assert_eq!(cert.serial, "5DEA10EF55877E3CF6C33255C2E7DEFFF7E427EC");
    }

    #[test]
    fn authorization_round_trips() {
        let signer = RsaSigner::from_text(&fixture("go_test_key.pem")).unwrap();
        let h = authorization(
            &signer,
            "1900009191",
            "SERIAL",
            "POST",
            "/v3/x?a=1",
            100,
            "N",
            b"{}",
        );
        let f = parse_authorization(&h).unwrap();
        assert_eq!(f["mchid"], "1900009191");
        assert_eq!(f["serial_no"], "SERIAL");
        let msg = request_message("POST", "/v3/x?a=1", 100, "N", b"{}");
        assert!(signer.verifier().verify_b64(&msg, &f["signature"]));
        assert!(parse_authorization("Bearer x").is_none());
    }
}
