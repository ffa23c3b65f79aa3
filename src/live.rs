//! The live config: the version serving now and everything built from it, swapped atomically
//! on reload. Below the API and the admin port, which both read it; it knows neither.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::Registry;

use crate::channel::{ChannelMetrics, ChannelSet};
use crate::config::reload::ReloadMetrics;
use crate::config::Config;
use crate::payment::Routes;
use crate::resilience::Resilience;

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
    ) -> Result<LiveConfig, String> {
        let metric_err = |e: prometheus::Error| format!("metrics: {e}");
        let channel_metrics = Arc::new(ChannelMetrics::new(registry).map_err(metric_err)?);
        resilience.configure(&config.limits, config.redis.as_ref())?;
        let channels = ChannelSet::build(&config.channels, &channel_metrics, &resilience)?;
        let reload_metrics = ReloadMetrics::new(registry).map_err(metric_err)?;
        reload_metrics.loaded(&config.version);
        Ok(LiveConfig {
            path: config.path.clone(),
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
    pub async fn reload(&self, only_if_changed: bool) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| e.to_string())?;
        let current = self.load();
        let built = loaded.map_err(|e| e.to_string()).and_then(|config| {
            if only_if_changed && config.version == current.config.version {
                return Ok(None);
            }
            // The running store keeps the lease it started with (a new one takes effect on
            // restart): the new timeouts must fit in that one.
            if let Some(problem) = crate::config::workers::lease_shortfall(
                &current.config.store,
                &config.webhooks,
                &config.channels,
            ) {
                return Err(format!("the running store.lease {problem}"));
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
                for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    hook(&config);
                }
                if let Err(e) = self
                    .resilience
                    .configure(&config.limits, config.redis.as_ref())
                {
                    tracing::error!(error = %e, "shared limits not reconfigured");
                }
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
    pub async fn watch(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let (_watcher, mut changes) = match crate::config::reload::watch(&self.path) {
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
            let _ = self.reload(only_if_changed).await;
        }
    }
}
