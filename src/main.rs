//! The `payroute` command: serve, check, explain, payments export, sandbox.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use payroute::app;
use payroute::config::Config;
use payroute::defaults::{
    COPY_PG_POOL_SIZE, DEFAULT_CONFIG_PATH, DEFAULT_PG_LEASE, DEFAULT_PG_SCHEMA,
    DEFAULT_SANDBOX_LISTEN,
};
use payroute::domain::Method;
use payroute::routing::PaymentFacts;

#[derive(Parser)]
#[command(name = "payroute", version, about = "Payment-routing reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the admin port and (if configured) the sandbox.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 with a summary, or 1 with every error.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Dry-run one payment through the rules.
    Explain {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long)]
        merchant: String,
        #[arg(long)]
        method: String,
        /// Minor units (fen).
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value = "")]
        shop: String,
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// `key=value`, repeatable.
        #[arg(long = "metadata", value_parser = parse_kv)]
        metadata: Vec<(String, String)>,
        /// Feeds weighted splits; the same value always picks the same channel.
        #[arg(long, default_value = "")]
        out_trade_no: String,
        /// China time `HH:MM` for `hours` rules (default: now).
        #[arg(long)]
        china_time: Option<String>,
    },
    /// The payment ledger, read from the configured store.
    Payments {
        #[command(subcommand)]
        command: PaymentsCommand,
    },
    /// The store: apply its schema migrations, or copy a SQLite store into PostgreSQL.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Run only the sandbox provider, trusting the merchant keys of a config file.
    Sandbox {
        #[arg(long, default_value = DEFAULT_SANDBOX_LISTEN)]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Without --from/--to: open the configured store, which applies its pending schema
    /// migrations, and exit. With them: copy every payment, refund and pending event of a
    /// SQLite file into a PostgreSQL database (idempotently), then verify the copy.
    Migrate {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// `sqlite:PATH`.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// `postgres://…` (or `env:NAME`); the schema is `--schema`.
        #[arg(long, requires = "from")]
        to: Option<String>,
        #[arg(long, default_value = DEFAULT_PG_SCHEMA)]
        schema: String,
    },
}

#[derive(Subcommand)]
enum PaymentsCommand {
    /// Write the payments created in [--since, --until) to stdout, newest first, as CSV or
    /// JSON lines, streaming page by page (the proxy may keep running).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// RFC 3339, e.g. 2026-11-01T00:00:00+08:00.
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        merchant: Option<String>,
        /// `csv` or `jsonl`.
        #[arg(long, default_value = "csv")]
        format: String,
    },
}

/// Why a command that runs the proxy, the sandbox or a migration failed. Printed once, by
/// [`run`], with the errors beneath it.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Start(#[from] app::StartError),
    /// A flag's value is wrong: the message is the whole point.
    #[error("{0}")]
    Usage(String),
    /// The store a flag names (`--from`, `--to`) could not be opened.
    #[error("{flag}: {source}")]
    Store {
        flag: &'static str,
        #[source]
        source: payroute::store::StoreError,
    },
    /// The `env:` or `file:` reference a flag names did not resolve.
    #[error("{flag}: {source}")]
    Secret {
        flag: &'static str,
        #[source]
        source: payroute::secret::ResolveError,
    },
    #[error("migrate: {0}")]
    Copy(#[source] payroute::store::StoreError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl From<payroute::store::StoreError> for CliError {
    fn from(e: payroute::store::StoreError) -> CliError {
        CliError::Start(e.into())
    }
}

impl From<prometheus::Error> for CliError {
    fn from(e: prometheus::Error) -> CliError {
        CliError::Start(e.into())
    }
}

/// `e` and the errors beneath it, one message: each source is added unless the text so far
/// already says it (most of ours print their source themselves).
fn report(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = s.source();
    }
    text
}

/// A `--metadata` value without `=`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not key=value")]
struct NotKeyValue(String);

fn parse_kv(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotKeyValue(s.to_string()))
}

/// What the CLI's explain, reading only the file, cannot know.
const EXPLAIN_CANNOT_KNOW: &str = "  not known here (no live state; ask POST /admin/explain on a running instance): \
each channel's health window (taken as healthy, no samples), drain switches (taken as not drained), \
quota use, circuit breakers and limits — any of these may skip a candidate at run time";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Config is loaded and validated before any port is bound.
    let config_path = match &cli.command {
        Command::Serve { config }
        | Command::Check { config }
        | Command::Explain { config, .. }
        | Command::Sandbox { config, .. }
        | Command::Payments {
            command: PaymentsCommand::Export { config, .. },
        }
        | Command::Store {
            command: StoreCommand::Migrate { config, .. },
        } => config.clone(),
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{} error(s); nothing started", e.errors.len());
            return ExitCode::FAILURE;
        }
    };
    let _log = payroute::logging::init(&config.log);
    match cli.command {
        Command::Check { .. } => {
            say(&format!(
                "{}: ok\n{}",
                config_path.display(),
                config.summary()
            ));
            // Warnings only: the config is valid, but orders would be stranded by it.
            for line in stranded_warnings(&config) {
                eprintln!("warning: {line}");
            }
            ExitCode::SUCCESS
        }
        Command::Explain {
            merchant,
            method,
            amount,
            shop,
            currency,
            metadata,
            out_trade_no,
            china_time,
            ..
        } => {
            let Some(method) = Method::parse(&method) else {
                eprintln!("unknown method {method:?}");
                return ExitCode::FAILURE;
            };
            let china_minute = match china_time.as_deref().map(payroute::routing::parse_hhmm) {
                None => payroute::clock::china_minute(payroute::clock::now_ms()),
                Some(Some(m)) => m,
                Some(None) => {
                    eprintln!("--china-time must be HH:MM");
                    return ExitCode::FAILURE;
                }
            };
            let metadata: BTreeMap<String, String> = metadata.into_iter().collect();
            let facts = PaymentFacts {
                merchant: &merchant,
                shop: &shop,
                method,
                amount,
                currency: &currency,
                metadata: &metadata,
                out_trade_no: &out_trade_no,
                china_minute,
            };
            say(config
                .rules
                .explain(&facts, &payroute::routing::NoSignals)
                .to_text()
                .trim_end());
            say(EXPLAIN_CANNOT_KNOW);
            ExitCode::SUCCESS
        }
        Command::Payments {
            command:
                PaymentsCommand::Export {
                    since,
                    until,
                    merchant,
                    format,
                    ..
                },
        } => export(&config, &since, until.as_deref(), merchant, &format),
        Command::Store {
            command: StoreCommand::Migrate {
                from, to, schema, ..
            },
        } => run(migrate(config, from, to, schema)),
        Command::Serve { .. } => run(serve(config)),
        Command::Sandbox { listen, .. } => run(sandbox(listen, config)),
    }
}

/// `payroute store migrate`.
async fn migrate(
    config: Config,
    from: Option<String>,
    to: Option<String>,
    schema: String,
) -> Result<(), CliError> {
    use payroute::store::{StoreMetrics, StoreSettings};
    let metrics = || StoreMetrics::new(&prometheus::Registry::new());
    let (Some(from), Some(to)) = (from, to) else {
        payroute::store::open(&config.store, metrics()?).await?;
        eprintln!("the configured store is open and its schema is current");
        return Ok(());
    };
    let path = from
        .strip_prefix("sqlite:")
        .ok_or_else(|| CliError::Usage("--from must be sqlite:PATH".into()))?;
    if !std::path::Path::new(path).exists() {
        return Err(CliError::Usage(format!("--from: {path} does not exist")));
    }
    let url = payroute::secret::resolve(&to).map_err(|source| CliError::Secret {
        flag: "--to",
        source,
    })?;
    let source = payroute::store::open(&StoreSettings::Sqlite { path: path.into() }, metrics()?)
        .await
        .map_err(|source| CliError::Store {
            flag: "--from",
            source,
        })?;
    let target = payroute::store::open(
        &StoreSettings::Postgres {
            url: payroute::secret::Secret::new(url),
            pool_size: COPY_PG_POOL_SIZE,
            schema,
            lease: DEFAULT_PG_LEASE,
        },
        metrics()?,
    )
    .await
    .map_err(|source| CliError::Store {
        flag: "--to",
        source,
    })?;
    let c = payroute::store::migrate::copy(source.as_ref(), target.as_ref())
        .await
        .map_err(CliError::Copy)?;
    say(&format!(
        "copied and verified: {} payments ({} new), {} refunds ({} new), {} pending events ({} new), {} drained channels ({} new)",
        c.payments, c.payments_new, c.refunds, c.refunds_new, c.pending_events, c.pending_events_new,
        c.drains, c.drains_new
    ));
    Ok(())
}

/// One line of a command's answer on stdout. A reader that went away (`check | head -1`)
/// is not an error of ours: `println!` would panic on the broken pipe.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `payroute payments export`: the ledger to stdout.
fn export(
    config: &Config,
    since: &str,
    until: Option<&str>,
    merchant: Option<String>,
    format: &str,
) -> ExitCode {
    use payroute::payment::export::{parse_time, Format, Selection};
    use std::io::Write;
    let time = |flag: &str, v: &str| {
        parse_time(v).ok_or_else(|| format!("{flag}: {v:?} is not an RFC 3339 time"))
    };
    let selection = (|| {
        Ok::<_, String>(Selection {
            since: Some(time("--since", since)?),
            until: until.map(|u| time("--until", u)).transpose()?,
            merchant_id: merchant,
        })
    })();
    let (selection, format) = match (selection, Format::parse(format)) {
        (Ok(s), Some(f)) => (s, f),
        (Err(e), _) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        (_, None) => {
            eprintln!("--format: {format:?} is not csv or jsonl");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let metrics = payroute::store::StoreMetrics::new(&prometheus::Registry::new())
            .map_err(|e| e.to_string())?;
        let store = payroute::store::open(&config.store, metrics)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let mut sink = |chunk: &[u8]| out.write_all(chunk);
        let n = payroute::payment::export::export(
            store.as_ref(),
            &selection,
            format,
            u64::MAX,
            &mut sink,
        )
        .await
        .map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        Ok::<_, String>(n)
    });
    match result {
        Ok(n) => {
            eprintln!("{n} payment(s) exported");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("export failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Open orders in the configured store (when its file exists) bound to an account that no
/// channel of `config` holds.
fn stranded_warnings(config: &Config) -> Vec<String> {
    // PostgreSQL is not connected to here: `check` must work where the database is not
    // reachable (CI, a laptop); `serve` warns about stranded orders on start either way.
    let payroute::store::StoreSettings::Sqlite { path } = &config.store else {
        return Vec::new();
    };
    if !path.exists() {
        return Vec::new();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("cannot start the runtime to read the store: {e}")],
    };
    rt.block_on(async {
        let metrics = payroute::store::StoreMetrics::new(&prometheus::Registry::new())
            .map_err(|e| payroute::store::StoreError::Backend(format!("metrics: {e}")))?;
        let store = payroute::store::open(&config.store, metrics).await?;
        payroute::stranded::find(store.as_ref(), config).await
    })
    .map(|groups| groups.iter().map(|g| g.message()).collect())
    .unwrap_or_else(|e| {
        vec![format!(
            "cannot read {} to look for stranded orders: {e}",
            path.display()
        )]
    })
}

/// Runs `fut` on a runtime sized for the proxy; its error is printed once, and exits 1.
fn run(fut: impl std::future::Future<Output = Result<(), CliError>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(app::MAX_BLOCKING_THREADS)
        .build()
        .map_err(CliError::Runtime)
        .and_then(|rt| rt.block_on(fut));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Config is already loaded and valid: bind, build, serve, drain on SIGTERM.
async fn serve(config: Config) -> Result<(), CliError> {
    let listeners = app::Listeners::bind(&config).await?;
    Ok(app::run(config, listeners, true, shutdown_signal()).await?)
}

#[cfg(not(feature = "sandbox"))]
async fn sandbox(_listen: std::net::SocketAddr, _config: Config) -> Result<(), CliError> {
    Err(app::StartError::Sandbox(
        "this payroute was built without the sandbox (cargo feature `sandbox`)",
    )
    .into())
}

#[cfg(feature = "sandbox")]
async fn sandbox(listen: std::net::SocketAddr, config: Config) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| app::StartError::Bind {
            what: "--listen",
            addr: listen,
            source,
        })?;
    let sb = payroute::sandbox::Sandbox::new(payroute::config::sandbox_merchants(
        &config.channels,
        &config.merchants,
    ));
    tracing::info!(%listen, "sandbox serving (TEST-ONLY keys)");
    sb.serve(listener, None, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
