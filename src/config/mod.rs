//! Configuration: the YAML file (`file`), its validation into the runtime model ([`Config`]),
//! and live reload (`reload`).
//!
//! Validation collects every error it can find in one pass, each naming the rule or channel,
//! the key and the line/column in the file, so `payroute check` shows ops the whole list.

pub mod file;
mod locate;
mod redact;
pub mod reload;
pub mod sandbox_keys;
mod validate;
pub mod workers;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::channel::{ChannelSettings, SubMerchant};
use crate::resilience::LimitSettings;
use crate::routing::Rules;
use crate::sandbox::SandboxSettings;
use crate::secret::Secret;
use crate::server::ServerSettings;
use crate::shops::ShopDirectory;
use crate::store::StoreSettings;
use workers::{ReconcileSettings, WebhookSettings};

pub use locate::Locator;
pub use validate::sandbox_merchants;

/// The validated runtime model of one config file version.
pub struct Config {
    pub path: PathBuf,
    /// First 16 hex digits of the SHA-256 of the file's bytes.
    pub version: String,
    pub server: ServerSettings,
    pub admin_token: Option<Secret>,
    pub store: StoreSettings,
    pub shops: ShopDirectory,
    pub merchants: HashMap<String, SubMerchant>,
    pub channels: BTreeMap<String, Arc<ChannelSettings>>,
    pub rules: Rules,
    /// `routing.health`: the channels' health windows (the thresholds are in `rules`).
    pub health: crate::resilience::HealthSettings,
    pub limits: Vec<LimitSettings>,
    /// Where `scope: global` limits are shared.
    pub redis: Option<crate::resilience::RedisSettings>,
    /// How the process logs; read once at start.
    pub log: crate::logging::LogSettings,
    pub sandbox: Option<SandboxSettings>,
    pub reconcile: ReconcileSettings,
    pub webhooks: WebhookSettings,
    /// `late_payments`, top-level and per merchant.
    pub late_payments: crate::domain::LatePolicies,
    /// The file as parsed, with literal secrets replaced by `<redacted>`.
    pub redacted: serde_json::Value,
}

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `routing.rules[2] "m1001-own-wechat": to: unknown channel "m1001_wechat"`.
    pub message: String,
    /// 1-based line and column in the file, where known.
    pub location: Option<(usize, usize)>,
}

/// Every problem found in a config file.
#[derive(Clone, Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.location {
                Some((line, col)) => {
                    write!(f, "{}:{line}:{col}: {}", self.path.display(), e.message)?
                }
                None => write!(f, "{}: {}", self.path.display(), e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |message: String| ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![ConfigError {
                message,
                location: None,
            }],
        };
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
        Config::from_text(path, &text)
    }

    /// Parses and validates config text; `path` is used for messages and the version only.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let parsed: file::FileConfig = serde_yaml::from_str(text).map_err(|e| ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![ConfigError {
                location: e.location().map(|l| (l.line(), l.column())),
                message: strip_location(&e.to_string()),
            }],
        })?;
        let locator = Locator::new(text);
        let version = version_of(text.as_bytes());
        validate::validate(parsed, &locator)
            .map_err(|errors| ConfigErrors {
                path: path.to_path_buf(),
                errors,
            })
            .map(|mut c| {
                c.path = path.to_path_buf();
                c.version = version;
                c
            })
    }

    /// A few lines for `payroute check`.
    pub fn summary(&self) -> String {
        let channels: Vec<String> = self
            .channels
            .values()
            .map(|c| format!("{} ({} {})", c.name, c.kind(), c.mode()))
            .collect();
        let defaults: Vec<String> = crate::domain::Family::ALL
            .iter()
            .filter_map(|f| self.rules.default_for(*f).map(|c| format!("{f} → {c}")))
            .collect();
        format!(
            "version {}\n{} shop(s), {} merchant(s) with sub-merchant ids\nchannels: {}\n{} rule(s); defaults: {}\n{} limit(s){}",
            self.version,
            self.shops.len(),
            self.merchants.len(),
            channels.join(", "),
            self.rules.rules().len(),
            if defaults.is_empty() { "none".to_string() } else { defaults.join(", ") },
            self.limits.len(),
            match &self.sandbox {
                Some(s) => format!("\nsandbox on {}", s.listen),
                None => String::new(),
            }
        )
    }
}

/// serde_norway appends " at line L column C"; we print the location ourselves.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

pub fn version_of(bytes: &[u8]) -> String {
    let mut v = crate::ids::sha256_hex(bytes);
    v.truncate(16);
    v
}
