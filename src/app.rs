//! Wiring: builds every module from a [`Config`] and hands each the narrow state it needs;
//! owns the metrics registry, the listeners' tasks and their drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::api::{ApiMetrics, ApiState};
use crate::config::Config;
use crate::drains::DrainSwitch;
use crate::inbound::Inbound;
use crate::live::{Live, LiveConfig};
use crate::payment::PaymentService;
use crate::reconcile::Reconciler;
use crate::resilience::Resilience;
#[cfg(feature = "sandbox")]
use crate::sandbox::Sandbox;
use crate::store::{Reports, Schedule};
use crate::stranded::StrandedWatch;
use crate::webhooks::outbox::Outbox;

/// Why the proxy did not start. Each kind says which part failed — a port already taken is
/// not a store that cannot open — and carries the error beneath it as its source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `what` is the config key that names the address (`server.listen`, …).
    #[error("{what}: cannot listen on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A bound listener could not say its own address.
    #[error("{what}: {source}")]
    LocalAddr {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Redis(#[from] crate::resilience::shared::RedisError),
    #[error(transparent)]
    Channels(#[from] crate::channel::BuildError),
    #[error(transparent)]
    Outbox(#[from] crate::webhooks::outbox::OutboxError),
    /// The `sandbox:` section and the sandbox listener given do not go together (or the
    /// binary has no sandbox).
    #[error("{0}")]
    Sandbox(&'static str),
}

impl From<crate::live::BuildError> for StartError {
    fn from(e: crate::live::BuildError) -> StartError {
        use crate::live::BuildError;
        match e {
            BuildError::Metrics(e) => StartError::Metrics(e),
            BuildError::Redis(e) => StartError::Redis(e),
            BuildError::Channels(e) => StartError::Channels(e),
        }
    }
}

/// Every module built from one config, and the state each listener is given.
pub struct App {
    pub live: Arc<LiveConfig>,
    pub registry: Registry,
    pub payments: Arc<PaymentService>,
    pub resilience: Arc<Resilience>,
    pub api: Arc<ApiState>,
    pub admin: Arc<AdminState>,
    pub stranded: Arc<StrandedWatch>,
    pub outbox: Arc<Outbox>,
    pub reconciler: Arc<Reconciler>,
    /// The manual drain switch: which channels ops took out of routing. Routing asks
    /// [`DrainSwitch::is_drained`] per candidate; the admin port drains and resumes.
    pub drains: Arc<DrainSwitch>,
}

/// Threads for blocking work (store reads, DNS). The store reads through a few pooled
/// connections, so more threads only wait for one — and each costs memory (its stack, its
/// malloc arena): under 1,000 connections tokio's default of 512 grew to 41 threads.
pub const MAX_BLOCKING_THREADS: usize = 16;

/// Alipay ISV orders bound before sellers were stored name the merchant's token by its
/// fingerprint: rebound to the merchant's `alipay_seller_id` at start, so that neither a token
/// refresh nor the upgrade itself strands them. A failure leaves them as they were, and the
/// stranded-orders warning names them.
async fn rebind_legacy_sellers(
    store: &dyn crate::store::Ledger,
    merchants: &std::collections::HashMap<String, crate::channel::SubMerchant>,
) {
    for (merchant, sub) in merchants {
        let Some(seller) = &sub.alipay_seller_id else {
            continue;
        };
        match store.rebind_legacy_sellers(merchant, seller).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(%merchant, %seller, orders = n, "Alipay ISV orders bound by token fingerprint rebound to the merchant's seller id")
            }
            Err(e) => {
                tracing::error!(%merchant, error = %e, "rebinding Alipay ISV orders to the merchant's seller id failed; they stay bound by token fingerprint")
            }
        }
    }
}

impl App {
    pub async fn new(config: Config) -> Result<Arc<App>, StartError> {
        let registry = Registry::new();
        let store_metrics = crate::store::StoreMetrics::new(&registry)?;
        let store = crate::store::open(&config.store, store_metrics).await?;
        // Each module gets only the store concern it uses (ARCHITECTURE.md, "The store").
        let reports: Arc<dyn Reports> = store.clone();
        let events: Arc<dyn crate::store::Outbox> = store.clone();
        let schedule: Arc<dyn Schedule> = store.clone();
        rebind_legacy_sellers(store.as_ref(), &config.merchants).await;
        let resilience = Arc::new(Resilience::new(&registry)?);
        let live = Arc::new(LiveConfig::new(config, &registry, resilience.clone())?);
        // Drains are read before anything serves: a restart keeps them.
        let drains = Arc::new(DrainSwitch::new(store.clone(), &registry)?);
        drains.load().await?;
        drains.set_channels(live.load().config.channels.keys().map(String::as_str));
        let switch = drains.clone();
        live.on_reload(move |config| {
            switch.set_channels(config.channels.keys().map(String::as_str))
        });
        let payments = Arc::new(
            PaymentService::new(store.clone(), &registry)?
                .with_health(resilience.health().clone())
                .with_drains(drains.clone()),
        );
        payments.start_metrics_at_zero(&live.load().config);
        let service = payments.clone();
        live.on_reload(move |config| service.start_metrics_at_zero(config));
        // Orders bound to an account the config no longer holds: warned about and counted on
        // load and after every reload.
        let stranded = Arc::new(StrandedWatch::new(&registry)?);
        stranded.update(reports.as_ref(), &live.load().config).await;
        let (watch, reads) = (stranded.clone(), reports.clone());
        live.on_reloaded(move |now| {
            let (watch, reads) = (watch.clone(), reads.clone());
            async move {
                watch.update(reads.as_ref(), &now.config).await;
            }
        });
        let api = Arc::new(ApiState {
            live: live.clone(),
            payments: payments.clone(),
            resilience: resilience.clone(),
            metrics: ApiMetrics::new(&registry)?,
            notify: Arc::new(Inbound::new(live.clone(), payments.clone(), &registry)?),
        });
        let outbox = Arc::new(Outbox::new(
            events,
            reports.clone(),
            live.clone(),
            payments.events_written(),
            &registry,
        )?);
        let admin = Arc::new(AdminState {
            live: live.clone(),
            store: reports.clone(),
            outbox: outbox.clone(),
            quotas: store.clone(),
            registry: registry.clone(),
            stranded: stranded.clone(),
            signals: payments.signals(),
            drains: drains.clone(),
        });
        let reconciler = Arc::new(Reconciler::new(
            live.clone(),
            payments.clone(),
            schedule,
            reports,
            &registry,
        )?);
        Ok(Arc::new(App {
            live,
            registry,
            payments,
            resilience,
            api,
            admin,
            stranded,
            outbox,
            reconciler,
            drains,
        }))
    }

    /// The config version serving now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load()
    }

    /// See [`LiveConfig::reload`].
    pub async fn reload(&self, only_if_changed: bool) -> Result<String, crate::live::ReloadError> {
        self.live.reload(only_if_changed).await
    }

    pub async fn ready(&self) -> Result<(), crate::store::StoreError> {
        self.admin.ready().await
    }
}

/// The bound sockets a proxy serves on: the API, the admin port and, when `sandbox:` is
/// configured, the sandbox.
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
    pub sandbox: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names (`server.listen`, `server.admin_listen`,
    /// `sandbox.listen`).
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        Ok(Listeners {
            api: bind(config.server.listen, "server.listen").await?,
            admin: bind(config.server.admin_listen, "server.admin_listen").await?,
            sandbox: match &config.sandbox {
                Some(s) => Some(bind(s.listen, "sandbox.listen").await?),
                None => None,
            },
        })
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

/// Serves `config` on `listeners` until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    watch_config: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = start(config, listeners, watch_config).await?;
    shutdown.await;
    tracing::info!("draining");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The sandbox's share of a start: the simulator, its listener and that listener's TLS.
#[cfg(feature = "sandbox")]
struct SandboxListener {
    sandbox: Arc<Sandbox>,
    tls: Option<crate::server::TlsSettings>,
    listener: TcpListener,
}

/// Pairs the `sandbox:` section with the sandbox listener: each needs the other.
#[cfg(feature = "sandbox")]
fn sandbox_listener(
    config: &Config,
    listener: Option<TcpListener>,
) -> Result<Option<SandboxListener>, StartError> {
    match (&config.sandbox, listener) {
        (Some(s), Some(listener)) => Ok(Some(SandboxListener {
            sandbox: Sandbox::new(s.merchants.clone()),
            tls: s.tls.clone(),
            listener,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(StartError::Sandbox(
            "sandbox: is configured but no sandbox listener was given",
        )),
        (None, Some(_)) => Err(StartError::Sandbox(
            "a sandbox listener was given but sandbox: is not configured",
        )),
    }
}

/// Builds everything from `config` and serves on `listeners` (see [`Listeners::bind`]);
/// `config.path` is watched for reloads when `watch_config` is set. A `sandbox:` section
/// needs a sandbox listener, and a sandbox listener needs a `sandbox:` section.
pub async fn start(
    config: Config,
    listeners: Listeners,
    watch_config: bool,
) -> Result<Running, StartError> {
    let local = |l: &TcpListener, what: &'static str| {
        l.local_addr()
            .map_err(|source| StartError::LocalAddr { what, source })
    };
    let api_addr = local(&listeners.api, "server.listen")?;
    let admin_addr = local(&listeners.admin, "server.admin_listen")?;
    let sandbox_addr = listeners
        .sandbox
        .as_ref()
        .map(|l| local(l, "sandbox.listen"))
        .transpose()?;

    // Validation already refuses `sandbox:` without the feature; this covers a hand-made config.
    #[cfg(not(feature = "sandbox"))]
    if config.sandbox.is_some() || listeners.sandbox.is_some() {
        return Err(StartError::Sandbox(
            "this payroute was built without the sandbox (cargo feature `sandbox`)",
        ));
    }
    #[cfg(feature = "sandbox")]
    let sandbox = sandbox_listener(&config, listeners.sandbox)?;
    let server_tls = config
        .server
        .tls
        .as_ref()
        .map(crate::server::TlsSource::new);
    let limits = crate::server::ListenerLimits {
        drain: config.server.drain_timeout,
        ..config.server.limits
    };
    let app = App::new(config).await?;
    app.live.set_bound(crate::live::Bound {
        api: api_addr,
        admin: admin_addr,
    });
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    #[cfg(feature = "sandbox")]
    if let Some(s) = sandbox {
        tasks.push(serve_sandbox(&app, s, &rx));
    }
    register_reload_hooks(&app, server_tls.as_ref());
    // Workers first: the config watcher installs its SIGHUP handler as it is made, so by the
    // time a listener answers, a SIGHUP reloads instead of ending the process (the signal's
    // default action).
    tasks.extend(spawn_workers(&app, watch_config, &rx));
    tasks.extend(spawn_listeners(
        &app,
        listeners.api,
        listeners.admin,
        server_tls,
        limits,
        &rx,
    ));
    tracing::info!(%api_addr, %admin_addr, sandbox = ?sandbox_addr, version = %app.live().config.version, "payroute serving");
    Ok(Running {
        app,
        api_addr,
        admin_addr,
        sandbox_addr,
        shutdown,
        tasks,
    })
}

/// Resolves once `true` is sent on the shutdown channel.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Serves the sandbox until shutdown; it trusts the keys of the channels serving now, so a
/// reload hands it the new ones.
#[cfg(feature = "sandbox")]
fn serve_sandbox(app: &App, s: SandboxListener, rx: &watch::Receiver<bool>) -> JoinHandle<()> {
    let sb = s.sandbox.clone();
    app.live.on_reload(move |config| {
        if config.sandbox.is_some() {
            sb.set_merchants(crate::config::sandbox_merchants(
                &config.channels,
                &config.merchants,
            ));
        }
    });
    tokio::spawn(s.sandbox.serve(s.listener, s.tls, stopped(rx.clone())))
}

/// What a reload changes in the listeners: the API's certificate.
fn register_reload_hooks(app: &App, server_tls: Option<&crate::server::TlsSource>) {
    if let Some(source) = server_tls.cloned() {
        // A renewed certificate serves new connections from the next reload on; open ones
        // keep the one they began with. TLS removed by a reload stays on until a restart (the
        // reload logs it and `/admin/config` shows it pending).
        app.live.on_reload(move |config| {
            if let Some(tls) = &config.server.tls {
                source.rotate(tls);
            }
        });
    }
}

/// Serves the API (over `server_tls` when set) and the admin port until shutdown.
fn spawn_listeners(
    app: &App,
    api_listener: TcpListener,
    admin_listener: TcpListener,
    server_tls: Option<crate::server::TlsSource>,
    limits: crate::server::ListenerLimits,
    rx: &watch::Receiver<bool>,
) -> [JoinHandle<()>; 2] {
    let api_state = app.api.clone();
    let api = move |req, _peer| crate::api::handle(api_state.clone(), req);
    let refuser = |listener| -> crate::server::Refuse {
        let api_state = app.api.clone();
        Arc::new(move |r| api_state.metrics.refuse(listener, r))
    };
    let admin_state = app.admin.clone();
    let admin = move |req, _peer| crate::admin::handle(admin_state.clone(), req);
    [
        tokio::spawn(crate::server::serve(
            api_listener,
            server_tls,
            api,
            stopped(rx.clone()),
            limits,
            refuser(crate::api::API_LISTENER),
        )),
        tokio::spawn(crate::server::serve(
            admin_listener,
            None,
            admin,
            stopped(rx.clone()),
            limits,
            refuser(crate::api::ADMIN_LISTENER),
        )),
    ]
}

/// The config watcher (when asked for) and the workers that close the loop: shop events
/// out, forgotten orders found, other instances' drains seen.
fn spawn_workers(app: &App, watch_config: bool, rx: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if watch_config {
        tasks.push(tokio::spawn(app.live.clone().watch(stopped(rx.clone()))));
    }
    tasks.push(tokio::spawn(app.outbox.clone().run(stopped(rx.clone()))));
    tasks.push(tokio::spawn(
        app.reconciler.clone().run(stopped(rx.clone())),
    ));
    tasks.push(tokio::spawn(app.drains.clone().run(stopped(rx.clone()))));
    tasks
}
