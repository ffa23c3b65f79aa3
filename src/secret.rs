//! Secrets in config: `env:NAME` and `file:/path` references, a type that never prints, and
//! constant-time comparison of bearer tokens.

use std::fmt;

/// A secret value. `Debug` and `Display` print `<redacted>`; there is no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether a config string is a reference (`env:` / `file:`) rather than a literal.
pub fn is_reference(value: &str) -> bool {
    value.starts_with("env:") || value.starts_with("file:")
}

/// Why an `env:` or `file:` reference did not resolve. It names the variable or the path,
/// never a value.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `env:NAME` and `file:/path`; any other string is taken literally.
///
/// The error names the variable or path, never the value. A file's trailing newline is
/// dropped, so `echo token > file` works; PEM parsers do not care.
pub fn resolve(value: &str) -> Result<String, ResolveError> {
    if let Some(name) = value.strip_prefix("env:") {
        return std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => ResolveError::Unset(name.to_string()),
            std::env::VarError::NotUnicode(_) => ResolveError::NotUnicode(name.to_string()),
        });
    }
    if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|source| ResolveError::Unreadable {
            path: path.to_string(),
            source,
        })?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(value.to_string())
}

/// SHA-256 of a string: the form in which keys and tokens are compared.
pub fn sha256(value: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time comparison for a bearer token against one expected value (admin token).
pub fn token_matches(authorization: Option<&str>, expected: &Secret) -> bool {
    let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    // Compare digests so that neither length nor content leaks through timing.
    let (a, b) = (sha256(given.trim()), sha256(expected.expose()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn references_resolve_and_errors_hide_values() {
        assert_eq!(resolve("plain").unwrap(), "plain");
        let err = resolve("env:PAYROUTE_SURELY_UNSET_VAR").unwrap_err();
        assert!(
            err.to_string().contains("PAYROUTE_SURELY_UNSET_VAR"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(resolve(&format!("file:{}", p.display())).unwrap(), "abc");
        assert!(resolve("file:/nonexistent/x")
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/x"));
    }
}
