//! The live config: the version serving now and everything built from it, swapped atomically
//! on reload. Below the API and the admin port, which both read it; it knows neither.
//!
//! # What a reload changes, and what waits for a restart
//! Routing, channels and their keys, limits, shops, the workers' settings and the API
//! listener's certificate (and its `client_ca`) change on reload. The listeners (addresses,
//! TLS on or off, their limits), the store, the log and the sandbox's listener are set up
//! once, at start ([`Started`]). A reload that changes those is still accepted — the rest of
//! the file applies, and the same file is what the next start will use — but they are logged,
//! answered by `POST /admin/reload` and shown by `GET /admin/config` as `pending_restart`,
//! beside what actually runs. Refusing such a reload instead would hold back every other edit
//! until a restart, and a Kubernetes ConfigMap rolled out with a restart would page
//! "reload failing" on every pod in between.
//!
//! What must hold for the running process is judged against [`Started`], never the file:
//! new timeouts must fit in the *running* store's lease (a new lease waits for a restart,
//! so a reload checked against it would let two instances do one piece of work at once).
//! `server.tls` with `client_ca` added to a listener started plain fails closed until the
//! restart: `/v1/*` there answers `401 client_certificate_required` ([`Live::client_certificate_required`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use prometheus::Registry;

use crate::channel::{ChannelMetrics, ChannelSet};
use crate::config::reload::ReloadMetrics;
use crate::config::{Config, ConfigErrors};
use crate::payment::Routes;
use crate::resilience::Resilience;
use crate::server::ListenerLimits;
use crate::store::StoreSettings;

/// One config version with everything built from it. Requests hold an `Arc<Live>` for their
/// whole life, so a reload never changes the rules or keys under a request in flight.
pub struct Live {
    pub config: Arc<Config>,
    pub channels: ChannelSet,
}

impl Live {
    /// What a payment operation needs of this version.
    pub fn routes(&self) -> Routes<'_> {
        Routes {
            rules: &self.config.rules,
            channels: &self.channels,
            merchants: &self.config.merchants,
            public_base_url: &self.config.server.public_base_url,
            late_payments: &self.config.late_payments,
        }
    }

    /// Whether shops (`/v1/*`) must present a client certificate that `client_ca` verified.
    /// The config as it is now decides, whether the listener started with TLS or not: a
    /// listener started plain carries no certificates, so there it refuses every shop until
    /// the restart that turns TLS on (closed, not open, is what `client_ca` asks for).
    pub fn client_certificate_required(&self) -> bool {
        self.config
            .server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca)
    }
}

/// The settings the process started with and keeps until it restarts, whatever a reload
/// loads: what actually serves.
#[derive(Clone, Debug)]
pub struct Started {
    /// `server.listen` as configured at start (port 0 picks one: see [`LiveConfig::bound`]).
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Whether the API listener terminates TLS.
    pub tls: bool,
    pub limits: ListenerLimits,
    /// The store the process opened: its leases are the ones claims run on.
    pub store: StoreSettings,
    pub log: crate::logging::LogSettings,
    pub sandbox_listen: Option<SocketAddr>,
    /// The config version the process started with.
    pub version: String,
}

impl Started {
    fn of(config: &Config) -> Started {
        Started {
            listen: config.server.listen,
            admin_listen: config.server.admin_listen,
            tls: config.server.tls.is_some(),
            limits: config.server.limits,
            store: config.store.clone(),
            log: config.log.clone(),
            sandbox_listen: config.sandbox.as_ref().map(|s| s.listen),
            version: config.version.clone(),
        }
    }

    /// The keys whose value in `config` differs from what runs: they take effect on
    /// restart. A certificate or `client_ca` change is not among them (a reload applies it);
    /// turning TLS on or off is.
    pub fn pending_restart(&self, config: &Config) -> Vec<&'static str> {
        let (server, limits) = (&config.server, &config.server.limits);
        [
            ("server.listen", server.listen != self.listen),
            (
                "server.admin_listen",
                server.admin_listen != self.admin_listen,
            ),
            ("server.tls", server.tls.is_some() != self.tls),
            (
                "server.header_read_timeout",
                limits.header_read_timeout != self.limits.header_read_timeout,
            ),
            (
                "server.max_connections",
                limits.max_connections != self.limits.max_connections,
            ),
            (
                "server.max_in_flight",
                limits.max_in_flight != self.limits.max_in_flight,
            ),
            (
                "server.request_timeout",
                limits.request_timeout != self.limits.request_timeout,
            ),
            ("server.drain_timeout", limits.drain != self.limits.drain),
            ("store", config.store != self.store),
            ("log", config.log != self.log),
            (
                "sandbox.listen",
                config.sandbox.as_ref().map(|s| s.listen) != self.sandbox_listen,
            ),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
    }
}

/// The addresses the listeners were bound to (`server.listen: 127.0.0.1:0` picks a port).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub api: SocketAddr,
    pub admin: SocketAddr,
}

/// Why the config the process starts with could not be made live.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Redis(#[from] crate::resilience::shared::RedisError),
    #[error(transparent)]
    Channels(#[from] crate::channel::BuildError),
}

/// Why a reload changed nothing: the previous config keeps serving. The text is what
/// `POST /admin/reload` answers (one error a line) and what the log says.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not parse or validate: every error, with its line and column.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    /// The file is valid, but its timeouts do not fit in the lease of the store that runs.
    #[error("the running store.lease {0} (a new store.lease takes effect on restart)")]
    Lease(String),
    /// The file is valid, but a channel's outbound client could not be built from it.
    #[error(transparent)]
    Channels(#[from] crate::channel::BuildError),
    /// The blocking task that read the file did not finish (the runtime is shutting down).
    #[error(transparent)]
    Read(#[from] tokio::task::JoinError),
}

/// Called with a new config after it validated and built, just before it is swapped in.
pub type ReloadHook = Box<dyn Fn(&Config) + Send + Sync>;

/// Called with the new version once it serves; the reload answers after the future ends.
pub type ReloadedHook =
    Box<dyn Fn(Arc<Live>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The live config and its reload: parse, validate, build, run the hooks, swap.
pub struct LiveConfig {
    live: ArcSwap<Live>,
    path: PathBuf,
    started: Started,
    bound: OnceLock<Bound>,
    channel_metrics: Arc<ChannelMetrics>,
    resilience: Arc<Resilience>,
    reload_metrics: ReloadMetrics,
    reload_lock: tokio::sync::Mutex<()>,
    hooks: Mutex<Vec<ReloadHook>>,
    reloaded_hooks: Mutex<Vec<ReloadedHook>>,
}

impl LiveConfig {
    /// Builds the channels of `config` and configures `resilience`'s limits from it.
    pub fn new(
        config: Config,
        registry: &Registry,
        resilience: Arc<Resilience>,
    ) -> Result<LiveConfig, BuildError> {
        let channel_metrics = Arc::new(ChannelMetrics::new(registry)?);
        resilience.configure(&config.limits, config.redis.as_ref())?;
        resilience.health().configure(config.health);
        let channels = ChannelSet::build(&config.channels, &channel_metrics, &resilience)?;
        let reload_metrics = ReloadMetrics::new(registry)?;
        reload_metrics.loaded(&config.version);
        Ok(LiveConfig {
            path: config.path.clone(),
            started: Started::of(&config),
            bound: OnceLock::new(),
            live: ArcSwap::from_pointee(Live {
                config: Arc::new(config),
                channels,
            }),
            channel_metrics,
            resilience,
            reload_metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            hooks: Mutex::new(Vec::new()),
            reloaded_hooks: Mutex::new(Vec::new()),
        })
    }

    /// The version serving now; hold it for the whole request.
    pub fn load(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The file reloads read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the process started with and runs on until a restart.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The keys of the config serving now that take effect only on restart.
    pub fn pending_restart(&self) -> Vec<&'static str> {
        self.started.pending_restart(&self.load().config)
    }

    /// Records the addresses the listeners were bound to (once; later calls are ignored).
    pub fn set_bound(&self, bound: Bound) {
        let _ = self.bound.set(bound);
    }

    /// The addresses the listeners were bound to, once they are serving.
    pub fn bound(&self) -> Option<Bound> {
        self.bound.get().copied()
    }

    /// Runs `hook` on every successful reload, before the new config is swapped in.
    pub fn on_reload(&self, hook: impl Fn(&Config) + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Runs `hook` on every successful reload, after the new config is swapped in; the reload
    /// returns once the hook's future has finished (say, a look at the store).
    pub fn on_reloaded<F, Fut>(&self, hook: F)
    where
        F: Fn(Arc<Live>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.reloaded_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(move |live| Box::pin(hook(live))));
    }

    /// Parse, validate, build, then swap. A bad file changes nothing; the error (with line
    /// and column) is logged and counted. With `only_if_changed`, an identical file is a no-op.
    pub async fn reload(&self, only_if_changed: bool) -> Result<String, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await?;
        let current = self.load();
        let built = loaded.map_err(ReloadError::from).and_then(|config| {
            if only_if_changed && config.version == current.config.version {
                return Ok(None);
            }
            // The running store keeps the lease it started with (a new one takes effect on
            // restart): the new timeouts must fit in that one, not in the last file's.
            if let Some(problem) = crate::config::workers::lease_shortfall(
                &self.started.store,
                &config.webhooks,
                &config.channels,
            ) {
                return Err(ReloadError::Lease(problem));
            }
            let channels =
                ChannelSet::build(&config.channels, &self.channel_metrics, &self.resilience)?;
            Ok(Some((config, channels)))
        });
        match built {
            Ok(None) => Ok(current.config.version.clone()),
            Ok(Some((config, channels))) => {
                let version = config.version.clone();
                let pending = self.started.pending_restart(&config);
                if !pending.is_empty() {
                    tracing::warn!(keys = %pending.join(", "), "these settings differ from the running ones and take effect on restart");
                }
                for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    hook(&config);
                }
                if let Err(e) = self
                    .resilience
                    .configure(&config.limits, config.redis.as_ref())
                {
                    tracing::error!(error = %e, "shared limits not reconfigured");
                }
                self.resilience.health().configure(config.health);
                self.live.store(Arc::new(Live {
                    config: Arc::new(config),
                    channels,
                }));
                self.reload_metrics.success(&version);
                tracing::info!(%version, "config reloaded");
                let after: Vec<_> = self
                    .reloaded_hooks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|hook| hook(self.load()))
                    .collect();
                for fut in after {
                    fut.await;
                }
                Ok(version)
            }
            Err(e) => {
                self.reload_metrics.error();
                tracing::error!(error = %e, "config reload failed; still serving the previous config");
                Err(e)
            }
        }
    }

    /// Reloads on a change in the config's directory and on SIGHUP, until `stop`.
    ///
    /// The directory watch and the SIGHUP handler are set up when this is called, not when
    /// the future first runs: a SIGHUP that arrives before the handler exists ends the process
    /// (the signal's default action), so the caller makes this before it serves.
    pub fn watch(
        self: Arc<Self>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (watcher, mut changes) = match crate::config::reload::watch(&self.path) {
            Ok(w) => (Some(w.0), w.1),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config directory; reload with SIGHUP or POST /admin/reload");
                (None, tokio::sync::mpsc::channel(1).1)
            }
        };
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        async move {
            let _watcher = watcher;
            tokio::pin!(stop);
            loop {
                let only_if_changed = tokio::select! {
                    _ = &mut stop => return,
                    Some(()) = changes.recv() => true,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => false,
                };
                let _ = self.reload(only_if_changed).await;
            }
        }
    }
}
