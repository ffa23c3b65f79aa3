//! The public TEST-ONLY keys of `config/sandbox/`, by fingerprint: anything signed with them
//! proves nothing, so validation refuses them on a channel that talks to a real provider.
//!
//! A fingerprint is the lower-case hex SHA-256 of the key's X.509 `SubjectPublicKeyInfo`
//! DER — the same for a private key, its public key and a certificate of it
//! (`openssl pkey -in KEY -pubout -outform DER | sha256sum`). The unit test below recomputes
//! them from the files, so the list cannot drift from the folder.

use crate::channel::keys::{RsaSigner, RsaVerifier};

/// One key pair of `config/sandbox/`: the file it is known by, and its fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxKey {
    pub file: &'static str,
    pub spki_sha256: &'static str,
}

const fn key(file: &'static str, spki_sha256: &'static str) -> SandboxKey {
    SandboxKey { file, spki_sha256 }
}

/// Every key pair in `config/sandbox/`; a pair shipped as several files is listed once.
pub const SANDBOX_KEYS: [SandboxKey; 10] = [
    key(
        "config/sandbox/platform_apiclient_key.pem",
        "d0943934c646dd1c30d4261703c4d2eaf8f9972979acf45c37cc546beee1efb7",
    ),
    key(
        "config/sandbox/m1001_apiclient_key.pem",
        "184ad67c1b5287ad48d99bb4fabc0043de43ee1393a2b8b4eb09d8295da8a22b",
    ),
    key(
        "config/sandbox/m2002_apiclient_key.pem",
        "a62fddb88caf91668f86efaf01c89c52428d31438ab623d9c7ec06b27946729b",
    ),
    key(
        "config/sandbox/m3003_apiclient_key.pem",
        "b7b7b9c67001dc021067df4c1b63dad184804b3045512e16b8f331d958fc1b44",
    ),
    key(
        "config/sandbox/platform_alipay_app_key.pem",
        "286234db0cd91a48635ac9bcc52877eb54c86b20e5e4c38a212353dc6c731626",
    ),
    key(
        "config/sandbox/m2002_alipay_app_key.pem",
        "b4eff3699a6cc55a16691e439c1a9cea8a039f653eef7fb0629949f9dd5d5112",
    ),
    // Also wechatpay_pub_key.pem and wechatpay_platform_cert.pem.
    key(
        "config/sandbox/wechatpay_platform_key.pem",
        "9c0abc7688ef596e37a81fbd53b0a9a2ea028bc718e99f8dcbe363f2a934cbdb",
    ),
    // Also alipay_sandbox_pub_key.pem.
    key(
        "config/sandbox/alipay_sandbox_key.pem",
        "66afcd4ca85a2b4ed60e1fd04ffd4861c95bb34c8d9a398a75f99791e8b1bc59",
    ),
    // Also tls_server_cert.pem.
    key(
        "config/sandbox/tls_server_key.pem",
        "7a4d1580d903ca592b25ec0d8bf0d24c354dd3b0dc57b48bac24cf5a694fde78",
    ),
    key(
        "config/sandbox/tls_ca.pem",
        "0dea97a469f8eeee20c24033e946f271b09e802fb11b2a949c892f8b8679895e",
    ),
];

/// The sandbox key `text` is (or is the public half or certificate of), if any.
pub fn sandbox_key(text: &str) -> Option<&'static SandboxKey> {
    let fp = spki_sha256(text)?;
    SANDBOX_KEYS.iter().find(|k| k.spki_sha256 == fp)
}

/// The fingerprint of an RSA key in any form a channel accepts: private key (PKCS#8 or
/// PKCS#1, PEM or bare base64), public key (SPKI PEM, or bare base64 SPKI / PKCS#1) or an
/// X.509 certificate PEM. `None` when it does not parse; its parse error is reported by the
/// channel's own checks.
pub fn spki_sha256(text: &str) -> Option<String> {
    let private = || RsaSigner::from_text(text).ok().map(|k| k.verifier());
    let verifier = if text.contains("PRIVATE KEY-----") {
        private()?
    } else {
        RsaVerifier::from_text(text).ok().or_else(private)?
    };
    verifier.spki_sha256()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every key file in `config/sandbox/` is in the list, and every listed fingerprint
    /// belongs to a file there: adding or regenerating a sandbox key without updating the
    /// list fails here.
    #[test]
    fn list_matches_every_key_in_config_sandbox() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sandbox");
        let mut seen = BTreeSet::new();
        let mut files = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let fp = spki_sha256(&text)
                .unwrap_or_else(|| panic!("{}: not an RSA key or certificate", path.display()));
            assert!(
                SANDBOX_KEYS.iter().any(|k| k.spki_sha256 == fp),
                "{} (SPKI SHA-256 {fp}) is missing from SANDBOX_KEYS",
                path.display()
            );
            seen.insert(fp);
        }
        assert!(files >= 14, "only {files} .pem files in {dir}");
        for k in SANDBOX_KEYS {
            assert!(
                seen.contains(k.spki_sha256),
                "{} is listed but no file in {dir} has that key",
                k.file
            );
            let own = std::fs::read_to_string(
                concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + k.file,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", k.file));
            assert_eq!(
                spki_sha256(&own).as_deref(),
                Some(k.spki_sha256),
                "{}",
                k.file
            );
        }
    }

    /// Bare base64 (as Alipay's console hands keys out) is recognised too.
    #[test]
    fn bare_base64_keys_are_recognised() {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/sandbox/alipay_sandbox_pub_key.pem"
        ))
        .unwrap();
        let bare: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(
            sandbox_key(&bare).map(|k| k.file),
            Some("config/sandbox/alipay_sandbox_key.pem")
        );
        assert_eq!(spki_sha256("not a key"), None);
        assert_eq!(
            spki_sha256("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
            None
        );
    }
}
