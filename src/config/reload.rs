//! Live reload triggers (directory watch, SIGHUP) and reload metrics. The reload itself —
//! parse, validate, build, swap — is `LiveConfig::reload` in the `live` module; a bad file changes nothing.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};
use prometheus::{Gauge, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::mpsc;

pub struct ReloadMetrics {
    reloads: IntCounterVec,
    last_success: Gauge,
    info: IntGaugeVec,
}

impl ReloadMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<ReloadMetrics> {
        let reloads = IntCounterVec::new(
            Opts::new("payroute_config_reloads_total", "Config reloads by result."),
            &["result"],
        )?;
        let last_success = Gauge::new(
            "payroute_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "payroute_config_info",
                "The config version serving now (value 1).",
            ),
            &["version"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(info.clone()))?;
        // Both results exist from the start, so alerts on `error` see a 0 before the first one.
        reloads.with_label_values(&["success"]);
        reloads.with_label_values(&["error"]);
        Ok(ReloadMetrics {
            reloads,
            last_success,
            info,
        })
    }

    /// The initial load counts as a success for the timestamp and version, not the counter.
    pub fn loaded(&self, version: &str) {
        self.info.reset();
        self.info.with_label_values(&[version]).set(1);
        self.last_success
            .set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
    }

    pub fn success(&self, version: &str) {
        self.reloads.with_label_values(&["success"]).inc();
        self.loaded(version);
    }

    pub fn error(&self) {
        self.reloads.with_label_values(&["error"]).inc();
    }
}

/// Watches the config file's directory (editors and Kubernetes replace files by rename or
/// by swapping a symlink, which a watch on the file itself would miss) and sends a tick,
/// debounced, whenever something there changes.
pub fn watch(path: &Path) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let dir: PathBuf = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let name = path.file_name().map(|n| n.to_os_string());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        // Only the config file itself, or Kubernetes' `..data` symlink swap: a database or
        // log file in the same directory must not cause a reload per write.
        let relevant = ev.paths.is_empty()
            || ev.paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    Some(n) == name.as_deref() || n.to_string_lossy().starts_with("..")
                })
            });
        if relevant && !ev.kind.is_access() {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // A save is often several events (truncate, write, rename): wait for quiet.
            tokio::time::sleep(crate::defaults::RELOAD_DEBOUNCE).await;
            while raw_rx.try_recv().is_ok() {}
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    Ok((watcher, rx))
}
