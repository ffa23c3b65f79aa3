//! RSA keys as the providers hand them out: PEM (PKCS#1 or PKCS#8), bare base64, X.509
//! certificates. Signing is SHA256withRSA, PKCS#1 v1.5, base64 — WeChat Pay v3 and Alipay RSA2
//! share it.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair, ParsedPublicKey, RsaKeyPair};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};

/// Why a key or certificate was refused. The text never contains key material: a PEM or
/// base64 decoding error names the problem, not the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// PEM armour around something that is not the object asked for.
    #[error("not a PEM {what} ({reason})")]
    NotPem { what: &'static str, reason: String },
    #[error("neither PEM nor base64")]
    NotBase64,
    #[error("not an RSA private key")]
    NotRsa,
    /// The DER parsed as far as the RSA implementation; it refused the key itself.
    #[error("RSA {which} key rejected: {reason}")]
    Rejected { which: &'static str, reason: String },
    /// The certificate's DER ended or nested wrongly at `part`.
    #[error("malformed certificate: {part}")]
    MalformedCertificate { part: &'static str },
}

/// A private key that signs SHA256withRSA.
#[derive(Clone)]
pub struct RsaSigner {
    key: Arc<RsaKeyPair>,
    rng: SystemRandom,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigner(<private key>)")
    }
}

impl RsaSigner {
    /// Accepts PEM (`BEGIN PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`) or the bare base64 of a
    /// PKCS#8 or PKCS#1 DER key. Errors never contain key material.
    pub fn from_text(text: &str) -> Result<RsaSigner, KeyError> {
        let key = if text.contains("-----BEGIN") {
            match PrivateKeyDer::from_pem_slice(text.as_bytes())
                .map_err(|e| not_pem("private key", e))?
            {
                PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                _ => return Err(KeyError::NotRsa),
            }
        } else {
            let der = B64
                .decode(strip_ws(text))
                .map_err(|_| KeyError::NotBase64)?;
            RsaKeyPair::from_pkcs8(&der).or_else(|_| RsaKeyPair::from_der(&der))
        }
        .map_err(|e| KeyError::Rejected {
            which: "private",
            reason: e.to_string(),
        })?;
        Ok(RsaSigner {
            key: Arc::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// SHA256withRSA (PKCS#1 v1.5) over `message`, base64.
    pub fn sign_b64(&self, message: &[u8]) -> String {
        let mut sig = vec![0; self.key.public_modulus_len()];
        // Signing with a key that parsed cannot fail short of memory exhaustion.
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
            .expect("RSA signing with a valid key");
        B64.encode(sig)
    }

    /// The matching public key, for the sandbox and for round-trip tests.
    pub fn verifier(&self) -> RsaVerifier {
        RsaVerifier::from_der(self.key.public_key().as_ref())
            .expect("a key pair's own public key parses")
    }
}

/// A public key that verifies SHA256withRSA.
#[derive(Clone, Debug)]
pub struct RsaVerifier {
    key: Arc<ParsedPublicKey>,
}

impl RsaVerifier {
    /// PKCS#1 `RSAPublicKey` or X.509 `SubjectPublicKeyInfo` DER.
    pub fn from_der(der: &[u8]) -> Result<RsaVerifier, KeyError> {
        let key =
            ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der).map_err(|e| {
                KeyError::Rejected {
                    which: "public",
                    reason: e.to_string(),
                }
            })?;
        Ok(RsaVerifier { key: Arc::new(key) })
    }

    /// `BEGIN PUBLIC KEY` PEM, a `BEGIN CERTIFICATE` PEM (its key), or bare base64 SPKI.
    pub fn from_text(text: &str) -> Result<RsaVerifier, KeyError> {
        if text.contains("BEGIN CERTIFICATE") {
            return Ok(Certificate::from_pem(text)?.key);
        }
        if text.contains("-----BEGIN") {
            let spki = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes())
                .map_err(|e| not_pem("public key", e))?;
            return RsaVerifier::from_der(spki.as_ref());
        }
        let der = B64
            .decode(strip_ws(text))
            .map_err(|_| KeyError::NotBase64)?;
        RsaVerifier::from_der(&der)
    }

    /// Lower-case hex SHA-256 of the key's X.509 `SubjectPublicKeyInfo` DER: one name for a
    /// key pair, whichever form (private key, public key, certificate) it came in.
    pub fn spki_sha256(&self) -> Option<String> {
        let der = self.key.as_der().ok()?;
        Some(crate::ids::sha256_hex(der.as_ref()))
    }

    /// Verifies a base64 signature; any decoding problem is a failed verification.
    pub fn verify_b64(&self, message: &[u8], signature_b64: &str) -> bool {
        match B64.decode(signature_b64.trim()) {
            Ok(sig) => self.key.verify_sig(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

/// An X.509 certificate reduced to what payment providers use it for: serial and key.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// Upper-case hex without leading zero bytes, as WeChat Pay prints serials.
    pub serial: String,
    pub key: RsaVerifier,
}

impl Certificate {
    pub fn from_pem(text: &str) -> Result<Certificate, KeyError> {
        let der = CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|e| not_pem("certificate", e))?;
        Certificate::from_der(der.as_ref())
    }

    /// Walks just enough DER to find `serialNumber` and `subjectPublicKeyInfo`; the
    /// signature chain is not checked (the key is pinned by config, not by a CA).
    pub fn from_der(der: &[u8]) -> Result<Certificate, KeyError> {
        let bad = |part: &'static str| KeyError::MalformedCertificate { part };
        let (cert, _) = der_item(der, 0x30).ok_or_else(|| bad("outer SEQUENCE"))?;
        let (mut tbs, _) = der_item(cert, 0x30).ok_or_else(|| bad("tbsCertificate"))?;
        if tbs.first() == Some(&0xa0) {
            let (_, rest) = der_item(tbs, 0xa0).ok_or_else(|| bad("version"))?;
            tbs = rest;
        }
        let (serial, rest) = der_item(tbs, 0x02).ok_or_else(|| bad("serialNumber"))?;
        let mut rest = rest;
        for what in ["signature", "issuer", "validity", "subject"] {
            rest = der_item(rest, 0x30).ok_or_else(|| bad(what))?.1;
        }
        let spki_len = der_len(rest).ok_or_else(|| bad("subjectPublicKeyInfo"))?;
        let spki = &rest[..spki_len];
        let serial = serial
            .iter()
            .skip_while(|b| **b == 0)
            .fold(String::new(), |mut s, b| {
                s.push_str(&format!("{b:02X}"));
                s
            });
        Ok(Certificate {
            serial,
            key: RsaVerifier::from_der(spki)?,
        })
    }
}

/// One DER TLV with the expected tag: `(contents, rest)`.
fn der_item(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let (header, len) = der_header(input)?;
    let end = header.checked_add(len)?;
    (end <= input.len()).then(|| (&input[header..end], &input[end..]))
}

/// Total encoded length (header + contents) of the TLV at the start of `input`.
fn der_len(input: &[u8]) -> Option<usize> {
    let (header, len) = der_header(input)?;
    let total = header.checked_add(len)?;
    (total <= input.len()).then_some(total)
}

fn der_header(input: &[u8]) -> Option<(usize, usize)> {
    let first = *input.get(1)?;
    if first < 0x80 {
        return Some((2, first as usize));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let len = input
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Some((2 + n, len))
}

fn not_pem(what: &'static str, e: rustls_pki_types::pem::Error) -> KeyError {
    KeyError::NotPem {
        what,
        reason: e.to_string(),
    }
}

fn strip_ws(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        crate::fixture(&format!("vectors/{name}"))
    }

    /// Vector V1 (wechatpay-go sha256withrsa_signer_test.go): PKCS#1 v1.5 is deterministic,
    /// so the signature of "source" must match byte for byte.
    #[test]
    fn v1_known_answer_signature() {
        let signer = RsaSigner::from_text(&fixture("go_test_key.pem")).unwrap();
        assert_eq!(
            signer.sign_b64(b"source"),
            "BKyAfU4iMCuvXMXS0Wzam3V/cnxZ+JaqigPM5OhljS2iOT95OO6Fsuml2JkFANJU9K6q9bLlDhPXuoVz+pp4hAm6pHU4ld815U4jsKu1RkyaII+1CYBUYC8TK0XtJ8FwUXXz8vZHh58rrAVN1XwNyvD1vfpxrMT4SL536GLwvpUHlCqIMzoZUguLli/K8V29QiOhuH6IEqLNJn8e9b3nwNcQ7be3CzYGpDAKBfDGPCqCv8Rw5zndhlffk2FEA70G4hvMwe51qMN/RAJbknXG23bSlObuTCN7Ndj1aJGH6/L+hdwfLpUtJm4QYVazzW7DFD27EpSQEqA8bX9+8m1rLg=="
        );
    }

    #[test]
    fn certificates_yield_serial_and_the_signing_key() {
        let signer = RsaSigner::from_text(&fixture("go_test_key.pem")).unwrap();
        let cert = Certificate::from_pem(&fixture("go_verifier_cert.pem")).unwrap();
        assert_eq!(cert.serial, "F5765756002FDD77");
        let sig = signer.sign_b64(b"hello");
        assert!(cert.key.verify_b64(b"hello", &sig));
        assert!(!cert.key.verify_b64(b"hellO", &sig));
        assert!(!cert.key.verify_b64(b"hello", "not base64!"));
        let notify = Certificate::from_pem(&fixture("go_notify_cert.pem")).unwrap();
        assert_eq!(notify.serial, "D7CE59D1F522D701");
    }

    #[test]
    fn bare_base64_and_pkcs1_keys_load() {
        let pem = fixture("go_test_key.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let signer = RsaSigner::from_text(&body).unwrap();
        assert!(signer.verifier().verify_b64(b"x", &signer.sign_b64(b"x")));
        assert!(RsaSigner::from_text("garbage").is_err());
        let err =
            RsaSigner::from_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(!err.to_string().contains("AAAA"));
    }
}
