//! Wiring: builds every module from a [`Config`], owns the metrics registry, the live config
//! (swapped atomically on reload), the listeners and their drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::ApiMetrics;
use crate::channel::{ChannelMetrics, ChannelSet};
use crate::config::reload::ReloadMetrics;
use crate::config::Config;
use crate::payment::PaymentService;
use crate::resilience::Resilience;
use crate::sandbox::Sandbox;

/// One config version with everything built from it. Requests hold an `Arc<Live>` for their
/// whole life, so a reload never changes the rules or keys under a request in flight.
pub struct Live {
    pub config: Arc<Config>,
    pub channels: ChannelSet,
}

pub struct App {
    live: ArcSwap<Live>,
    pub registry: Registry,
    pub payments: PaymentService,
    pub api_metrics: ApiMetrics,
    channel_metrics: Arc<ChannelMetrics>,
    pub resilience: Arc<Resilience>,
    reload_metrics: ReloadMetrics,
    reload_lock: tokio::sync::Mutex<()>,
    config_path: PathBuf,
    sandbox: OnceLock<Arc<Sandbox>>,
}

impl App {
    pub async fn new(config: Config) -> Result<Arc<App>, String> {
        let registry = Registry::new();
        let metric_err = |e: prometheus::Error| format!("metrics: {e}");
        let store = crate::store::open(&config.store)
            .await
            .map_err(|e| e.to_string())?;
        let channel_metrics = Arc::new(ChannelMetrics::new(&registry).map_err(metric_err)?);
        let resilience = Arc::new(Resilience::new(&registry).map_err(metric_err)?);
        resilience.configure(&config.limits);
        let channels = ChannelSet::build(&config.channels, &channel_metrics, &resilience)?;
        let reload_metrics = ReloadMetrics::new(&registry).map_err(metric_err)?;
        reload_metrics.loaded(&config.version);
        Ok(Arc::new(App {
            payments: PaymentService::new(store, &registry).map_err(metric_err)?,
            api_metrics: ApiMetrics::new(&registry).map_err(metric_err)?,
            config_path: config.path.clone(),
            live: ArcSwap::from_pointee(Live {
                config: Arc::new(config),
                channels,
            }),
            registry,
            channel_metrics,
            resilience,
            reload_metrics,
            reload_lock: tokio::sync::Mutex::new(()),
            sandbox: OnceLock::new(),
        }))
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Parse, validate, build, then swap. A bad file changes nothing; the error (with line
    /// and column) is logged and counted. With `only_if_changed`, an identical file is a no-op.
    pub async fn reload(&self, only_if_changed: bool) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| e.to_string())?;
        let current = self.live();
        let built = loaded.map_err(|e| e.to_string()).and_then(|config| {
            if only_if_changed && config.version == current.config.version {
                return Ok(None);
            }
            let channels =
                ChannelSet::build(&config.channels, &self.channel_metrics, &self.resilience)?;
            Ok(Some((config, channels)))
        });
        match built {
            Ok(None) => Ok(current.config.version.clone()),
            Ok(Some((config, channels))) => {
                let version = config.version.clone();
                if config.server.listen != current.config.server.listen
                    || config.server.admin_listen != current.config.server.admin_listen
                {
                    tracing::warn!("server.listen / admin_listen changed: takes effect on restart");
                }
                if config.store != current.config.store {
                    tracing::warn!("store changed: takes effect on restart");
                }
                if let (Some(sb), Some(_)) = (self.sandbox.get(), &config.sandbox) {
                    sb.set_merchants(crate::config::sandbox_merchants(&config.channels));
                }
                self.resilience.configure(&config.limits);
                self.live.store(Arc::new(Live {
                    config: Arc::new(config),
                    channels,
                }));
                self.reload_metrics.success(&version);
                tracing::info!(%version, "config reloaded");
                Ok(version)
            }
            Err(e) => {
                self.reload_metrics.error();
                tracing::error!(error = %e, "config reload failed; still serving the previous config");
                Err(e)
            }
        }
    }

    pub async fn ready(&self) -> Result<(), String> {
        self.payments
            .store()
            .ping()
            .await
            .map_err(|e| e.to_string())
    }
}

/// A started proxy: its addresses and the handle to stop it.
pub struct Running {
    pub app: Arc<App>,
    pub api_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub sandbox_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to `server.drain_timeout`).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds every listener of `config`, then serves. `config.path` is watched for reloads
/// when `watch_config` is set.
pub async fn start(config: Config, watch_config: bool) -> Result<Running, String> {
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{what}: cannot listen on {addr}: {e}"))
    };
    let api_listener = bind(config.server.listen, "server.listen").await?;
    let admin_listener = bind(config.server.admin_listen, "server.admin_listen").await?;
    let sandbox_listener = match &config.sandbox {
        Some(s) => Some(bind(s.listen, "sandbox.listen").await?),
        None => None,
    };
    let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let (api_addr, admin_addr) = (local(&api_listener)?, local(&admin_listener)?);
    let sandbox_addr = sandbox_listener.as_ref().map(local).transpose()?;

    let sandbox_setup = config
        .sandbox
        .as_ref()
        .map(|s| (Sandbox::new(s.merchants.clone()), s.tls.clone()));
    let server_tls = config.server.tls.clone();
    let drain = config.server.drain_timeout;
    let app = App::new(config).await?;
    let (tx, rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks = Vec::new();

    if let (Some((sandbox, tls)), Some(listener)) = (sandbox_setup, sandbox_listener) {
        let _ = app.sandbox.set(sandbox.clone());
        tasks.push(tokio::spawn(sandbox.serve(
            listener,
            tls,
            stopped(rx.clone()),
        )));
    }
    let api_app = app.clone();
    let api = move |req, _peer| crate::api::handle(api_app.clone(), req);
    tasks.push(tokio::spawn(crate::server::serve(
        api_listener,
        server_tls,
        api,
        stopped(rx.clone()),
        drain,
    )));
    let admin_app = app.clone();
    let admin = move |req, _peer| crate::admin::handle(admin_app.clone(), req);
    tasks.push(tokio::spawn(crate::server::serve(
        admin_listener,
        None,
        admin,
        stopped(rx.clone()),
        drain,
    )));

    if watch_config {
        tasks.push(tokio::spawn(reload_triggers(
            app.clone(),
            stopped(rx.clone()),
        )));
    }
    tracing::info!(%api_addr, %admin_addr, sandbox = ?sandbox_addr, version = %app.live().config.version, "payroute serving");
    Ok(Running {
        app,
        api_addr,
        admin_addr,
        sandbox_addr,
        shutdown: tx,
        tasks,
    })
}

/// Reloads on a change in the config's directory and on SIGHUP, until `stop`.
async fn reload_triggers(app: Arc<App>, stop: impl std::future::Future<Output = ()>) {
    let path = app.config_path.clone();
    let (_watcher, mut changes) = match crate::config::reload::watch(&path) {
        Ok(w) => (Some(w.0), w.1),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config directory; reload with SIGHUP or POST /admin/reload");
            (None, tokio::sync::mpsc::channel(1).1)
        }
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::pin!(stop);
    loop {
        let only_if_changed = tokio::select! {
            _ = &mut stop => return,
            Some(()) = changes.recv() => true,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => false,
        };
        let _ = app.reload(only_if_changed).await;
    }
}
