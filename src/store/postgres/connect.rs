//! Reading `store.url`: the connection settings, TLS, and the schema's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::StoreError;

/// A schema name payroute accepts: a plain lower-case identifier, so that it needs no
/// quoting rules of its own and cannot inject SQL.
pub fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// Why `store.url` was refused. No variant holds the url or a piece of it: it may hold a
/// password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("sslmode {0:?} is not disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    #[error("sslrootcert needs sslmode=require or verify-full")]
    RootCertWithoutTls,
    /// tokio-postgres's reason for a url: it names the option (`port`, an unknown key),
    /// never its value.
    #[error("not a valid PostgreSQL url: {0}")]
    Url(String),
    /// The key=value form's parser may quote a piece of the password back: its reason is
    /// dropped.
    #[error("not a valid PostgreSQL connection string (the reason is not shown: it could quote the password)")]
    KeyValue,
}

/// A parsed `store.url`: the connection settings, and whether (and against which roots) TLS
/// is required.
///
/// `sslmode` and `sslrootcert` are read here rather than by tokio-postgres, which knows
/// neither `verify-ca`/`verify-full` nor `sslrootcert`:
/// - `disable`, `allow`, `prefer` (and no `sslmode`): no TLS.
/// - `require`, `verify-ca`, `verify-full`: TLS through rustls, the server's certificate
///   verified (chain and host name) against the Mozilla roots, or against `sslrootcert`
///   when given. That is stricter than libpq's `require`, which does not verify: a payment
///   system does not send its database password to an unverified peer.
pub struct ConnectSpec {
    pub(super) config: tokio_postgres::Config,
    /// `Some`: TLS required, with these roots (`None`: the Mozilla roots).
    pub(super) tls: Option<Option<PathBuf>>,
}

impl ConnectSpec {
    /// Errors never quote the url: it may hold a password.
    pub fn parse(url: &str) -> Result<ConnectSpec, UrlError> {
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let mut sslmode: Option<String> = None;
        let mut rootcert: Option<String> = None;
        let rest = if is_url {
            match url.split_once('?') {
                None => url.to_string(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let decoded = form_urlencoded::parse(pair.as_bytes()).next();
                        match decoded {
                            Some((k, v)) if k == "sslmode" => sslmode = Some(v.into_owned()),
                            Some((k, v)) if k == "sslrootcert" => rootcert = Some(v.into_owned()),
                            _ => kept.push(pair),
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            // key=value form: the two keys are taken out where they stand, the rest untouched.
            let mut rest = url.to_string();
            for token in url.split_whitespace() {
                if let Some(v) = token.strip_prefix("sslmode=") {
                    sslmode = Some(v.trim_matches('\'').to_string());
                } else if let Some(v) = token.strip_prefix("sslrootcert=") {
                    rootcert = Some(v.trim_matches('\'').to_string());
                } else {
                    continue;
                }
                rest = rest.replacen(token, "", 1);
            }
            rest
        };
        let tls = match sslmode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => false,
            Some("require" | "verify-ca" | "verify-full") => true,
            Some(other) => return Err(UrlError::SslMode(other.to_string())),
        };
        if rootcert.is_some() && !tls {
            return Err(UrlError::RootCertWithoutTls);
        }
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e: tokio_postgres::Error| {
                if is_url {
                    // The cause names the option (`port`, an unknown key), never its value.
                    UrlError::Url(match std::error::Error::source(&e) {
                        Some(cause) => format!("{e} ({cause})"),
                        None => e.to_string(),
                    })
                } else {
                    // The key=value form's parser may quote a piece of the password back.
                    UrlError::KeyValue
                }
            })?;
        config.ssl_mode(if tls {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        Ok(ConnectSpec {
            config,
            tls: tls.then(|| rootcert.map(PathBuf::from)),
        })
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

pub(super) fn tls_config(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let roots = match root_cert {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            // As libpq: the file replaces the default roots.
            let pem = std::fs::read(path)
                .map_err(|e| StoreError::Backend(format!("sslrootcert {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Backend(format!("sslrootcert {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Backend(format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(format!(
                    "sslrootcert {}: no certificate found",
                    path.display()
                )));
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    #[test]
    fn urls_parse_without_quoting_the_password() {
        let plain = ConnectSpec::parse("postgres://app:s3cret@db.example:5432/pay").unwrap();
        assert!(!plain.tls());
        let tls = ConnectSpec::parse(
            "postgres://app:s3cret@db.example/pay?sslmode=verify-full&connect_timeout=3",
        )
        .unwrap();
        assert!(tls.tls());
        assert_eq!(
            tls.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert!(ConnectSpec::parse("postgres://db/pay?sslmode=require")
            .unwrap()
            .tls());
        assert!(
            ConnectSpec::parse("host=db user=app password=s3cret sslmode=verify-full")
                .unwrap()
                .tls()
        );
        let e = ConnectSpec::parse("postgres://app:s3cret@db/pay?sslmode=bogus")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bogus") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("postgres://app:s3cret@db/pay?sslrootcert=/x.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sslrootcert") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("postgres://app:s3cret@db:s3cret/pay")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`port`") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("postgres://app:s3cret@db/pay?bogus=1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`bogus`") && !e.contains("s3cret"), "{e}");
        let e = ConnectSpec::parse("host=db password=s3cret bogus_key=1")
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert_eq!(
            ConnectSpec::parse("postgres://db/pay?sslmode=bogus").err(),
            Some(UrlError::SslMode("bogus".into()))
        );
        assert_eq!(
            ConnectSpec::parse("host=db password=s3cret bogus_key=1").err(),
            Some(UrlError::KeyValue)
        );
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("payroute"));
        assert!(valid_schema("payroute_test_01"));
        assert!(!valid_schema(""));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema("Pay"));
        assert!(!valid_schema("a\";drop"));
        assert!(!valid_schema(&"a".repeat(64)));
    }
}
