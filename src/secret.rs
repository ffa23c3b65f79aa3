//! Secrets in config: `env:NAME` and `file:/path` references, and a type that never prints.

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

/// Resolves `env:NAME` and `file:/path`; any other string is taken literally.
///
/// The error names the variable or path, never the value. A file's trailing newline is
/// dropped, so `echo token > file` works; PEM parsers do not care.
pub fn resolve(value: &str) -> Result<String, String> {
    if let Some(name) = value.strip_prefix("env:") {
        return std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("environment variable {name} is not set"),
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable {name} is not valid UTF-8")
            }
        });
    }
    if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(value.to_string())
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
        assert!(err.contains("PAYROUTE_SURELY_UNSET_VAR"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(resolve(&format!("file:{}", p.display())).unwrap(), "abc");
        assert!(resolve("file:/nonexistent/x")
            .unwrap_err()
            .contains("/nonexistent/x"));
    }
}
