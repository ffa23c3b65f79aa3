//! Log output (config `log:`): text for people or JSON lines for log shippers, on stderr.

use std::io::IsTerminal;

/// Filter directives when neither `RUST_LOG` nor `log.level` says otherwise. The HTTP and TLS
/// libraries are quiet below `warn`: their `info` is per connection.
pub const DEFAULT_LEVEL: &str = "info";
const QUIET_LIBRARIES: &str = "hyper=warn,h2=warn,rustls=warn";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the process logs (config `log:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing` filter directives, e.g. `info` or `info,payroute::access=warn`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: DEFAULT_LEVEL.to_string(),
        }
    }
}

/// Whether `level` is a valid filter (for config validation).
pub fn check_level(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Installs the process's logger. `RUST_LOG`, when set, overrides `settings.level`. Colour
/// only on a terminal: a file or a log shipper gets no escape codes.
pub fn init(settings: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},{QUIET_LIBRARIES}", settings.level))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
