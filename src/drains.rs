//! The manual drain switch (ARCHITECTURE.md, "The manual switch"): ops take a channel out of
//! routing (`POST /admin/channels/{name}/drain`) and put it back (`…/resume`). A drained
//! channel takes no new payment; everything already bound to it — queries, closes, refunds,
//! notifications, reconciliation — goes on as before, since those orders live at that
//! channel's account and nowhere else.
//!
//! [`DrainSwitch`] holds the drained set in memory for routing's hot path
//! ([`DrainSwitch::is_drained`]: one atomic load and a hash lookup, no I/O), writes every
//! change to the store first ([`crate::store::Drains`]), and reloads the set from the store
//! every [`DRAIN_REFRESH`] ([`DrainSwitch::run`]), so that every instance on one PostgreSQL
//! database sees a drain within that time, and a restart keeps it ([`DrainSwitch::load`] before
//! the listeners serve).
//!
//! # Under store trouble
//! A drain or resume whose write fails changes nothing (the caller gets the store's error). A
//! refresh that fails keeps the last known set — routing goes on as it was — logs once, and
//! counts `payroute_channel_drains_refresh_errors_total`; the first refresh that works again
//! says so. The refresher only reads, so a store that reads but cannot write (disk full)
//! still refreshes.
//!
//! # Limits
//! - Another instance's drain is seen here within [`DRAIN_REFRESH`] (plus the store's read
//!   time), not at once: a payment created at another instance in that window may still go to
//!   the channel. This instance's own drain holds from the moment its answer is sent.
//! - The gauges cover the configured channels. A drained channel that a reload removed keeps
//!   its stored drain (it is drained again if it comes back) but shows in no gauge.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};

use crate::defaults::{DRAIN_REFRESH, MAX_DRAIN_OPERATOR_CHARS, MAX_DRAIN_REASON_CHARS};
use crate::store::{DrainRecord, Drained, Drains, StoreError};

/// The operator named when a drain or resume names none.
pub const DEFAULT_OPERATOR: &str = "admin";

/// The drained channels, in memory, kept in step with the store.
pub struct DrainSwitch {
    store: Arc<dyn Drains>,
    /// By channel name. Replaced whole on every change, so a reader never waits.
    drained: ArcSwap<HashMap<String, DrainRecord>>,
    /// Held across a store write (or a refresh's read) and the cache update after it: a
    /// refresh that read the store just before a drain committed must not put its older set
    /// in place after the drain's (the channel would look undrained until the next refresh).
    writing: tokio::sync::Mutex<()>,
    /// The configured channels, the gauges' labels; its lock also orders the gauges' updates.
    channels: Mutex<BTreeSet<String>>,
    /// Whether the last refresh failed: logged once per run of failures.
    refresh_failing: AtomicBool,
    metrics: DrainMetrics,
}

struct DrainMetrics {
    drained: IntGaugeVec,
    since: IntGaugeVec,
    refresh_errors: IntCounter,
}

impl DrainSwitch {
    /// An empty switch over `store`, its metrics registered in `registry`. Call
    /// [`DrainSwitch::load`] before serving and [`DrainSwitch::set_channels`] with the config's
    /// channels.
    pub fn new(store: Arc<dyn Drains>, registry: &Registry) -> prometheus::Result<DrainSwitch> {
        let drained = IntGaugeVec::new(
            Opts::new(
                "payroute_channel_drained",
                "1 while ops have drained the channel (it takes no new payment), else 0.",
            ),
            &["channel"],
        )?;
        let since = IntGaugeVec::new(
            Opts::new(
                "payroute_channel_drained_since_timestamp_seconds",
                "When the channel's current drain began (unix seconds); 0 when not drained.",
            ),
            &["channel"],
        )?;
        let refresh_errors = IntCounter::new(
            "payroute_channel_drains_refresh_errors_total",
            "Reloads of the drained channels from the store that failed (the last known set stays in use).",
        )?;
        registry.register(Box::new(drained.clone()))?;
        registry.register(Box::new(since.clone()))?;
        registry.register(Box::new(refresh_errors.clone()))?;
        Ok(DrainSwitch {
            store,
            drained: ArcSwap::from_pointee(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
            channels: Mutex::new(BTreeSet::new()),
            refresh_failing: AtomicBool::new(false),
            metrics: DrainMetrics {
                drained,
                since,
                refresh_errors,
            },
        })
    }

    /// Whether `channel` is drained, as this instance knows it now: for routing, per
    /// candidate per create. No I/O, no lock.
    pub fn is_drained(&self, channel: &str) -> bool {
        self.drained.load().contains_key(channel)
    }

    /// `channel`'s drain, if it is drained.
    pub fn get(&self, channel: &str) -> Option<DrainRecord> {
        self.drained.load().get(channel).cloned()
    }

    /// Every drained channel, by name.
    pub fn all(&self) -> Vec<DrainRecord> {
        let mut all: Vec<DrainRecord> = self.drained.load().values().cloned().collect();
        all.sort_by(|a, b| a.channel.cmp(&b.channel));
        all
    }

    /// Reads the drained set from the store, once at start (before the listeners serve): a
    /// failure fails the start, since serving with an empty set would quietly undo every
    /// drain ops made.
    pub async fn load(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let set = self.store.drained().await?;
        for d in &set {
            tracing::warn!(channel = d.channel.as_str(), reason = d.reason.as_str(), by = d.by.as_str(), since = %crate::payment::view::rfc3339(d.since_ms), "channel is drained: it takes no new payment");
        }
        self.replace(set);
        Ok(())
    }

    /// Drains `channel` now: stored first, then in force here. The caller checked that the
    /// channel exists and that `reason` and `by` are valid ([`check_reason`],
    /// [`check_operator`]).
    pub async fn drain(
        &self,
        channel: &str,
        reason: &str,
        by: &str,
    ) -> Result<Drained, StoreError> {
        let _writing = self.writing.lock().await;
        let at = crate::clock::now_ms();
        let drained = self.store.drain(channel, reason, by, at).await?;
        let d = &drained.record;
        tracing::warn!(
            channel = d.channel.as_str(),
            reason = d.reason.as_str(),
            by = d.by.as_str(),
            since = %crate::payment::view::rfc3339(d.since_ms),
            already = drained.already,
            "channel drained: it takes no new payment; orders bound to it go on"
        );
        self.update(|set| {
            set.insert(d.channel.clone(), d.clone());
        });
        Ok(drained)
    }

    /// Puts `channel` back into routing now: the drain it ended, `None` if it was not drained.
    pub async fn resume(&self, channel: &str, by: &str) -> Result<Option<DrainRecord>, StoreError> {
        let _writing = self.writing.lock().await;
        let at = crate::clock::now_ms();
        let ended = self.store.resume(channel, by, at).await?;
        match &ended {
            Some(d) => tracing::info!(
                channel,
                by,
                drained_since = %crate::payment::view::rfc3339(d.since_ms),
                drained_by = d.by.as_str(),
                drain_reason = d.reason.as_str(),
                "channel resumed: it takes new payments again"
            ),
            None => tracing::info!(channel, by, "resume of a channel that was not drained"),
        }
        self.update(|set| {
            set.remove(channel);
        });
        Ok(ended)
    }

    /// The configured channels (on load and after every reload): each has both gauges, at 0
    /// unless drained; a channel no longer configured loses its series.
    pub fn set_channels<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        let now: BTreeSet<String> = channels.into_iter().map(str::to_string).collect();
        let mut shown = self.channels();
        for gone in shown.difference(&now) {
            let _ = self.metrics.drained.remove_label_values(&[gone]);
            let _ = self.metrics.since.remove_label_values(&[gone]);
        }
        *shown = now;
        self.publish(&shown);
    }

    /// Reloads the drained set from the store (what another instance drained or resumed).
    /// On failure the set in use stays as it was.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let set = self.store.drained().await?;
        let before = self.drained.load_full();
        for d in &set {
            match before.get(&d.channel) {
                None => {
                    tracing::warn!(channel = d.channel.as_str(), reason = d.reason.as_str(), by = d.by.as_str(), since = %crate::payment::view::rfc3339(d.since_ms), "channel drained (by another instance): it takes no new payment")
                }
                Some(was) if was != d => {
                    tracing::info!(
                        channel = d.channel.as_str(),
                        reason = d.reason.as_str(),
                        by = d.by.as_str(),
                        "channel's drain updated (by another instance)"
                    )
                }
                Some(_) => {}
            }
        }
        for channel in before.keys() {
            if !set.iter().any(|d| &d.channel == channel) {
                tracing::info!(
                    channel = channel.as_str(),
                    "channel resumed (by another instance): it takes new payments again"
                );
            }
        }
        self.replace(set);
        Ok(())
    }

    /// Refreshes every [`DRAIN_REFRESH`] until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(DRAIN_REFRESH) => {}
            }
            tokio::select! {
                _ = &mut stop => return,
                result = self.refresh() => self.refreshed(result),
            }
        }
    }

    /// Logs a refresh's failure once per run of failures, and its recovery.
    fn refreshed(&self, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                if self.refresh_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("drained channels read from the store again");
                }
            }
            Err(e) => {
                self.metrics.refresh_errors.inc();
                if !self.refresh_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read the drained channels from the store; the last known ones stay in force");
                }
            }
        }
    }

    fn replace(&self, set: Vec<DrainRecord>) {
        let map = set.into_iter().map(|d| (d.channel.clone(), d)).collect();
        self.drained.store(Arc::new(map));
        self.publish(&self.channels());
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<String, DrainRecord>)) {
        let mut map = HashMap::clone(&self.drained.load());
        change(&mut map);
        self.drained.store(Arc::new(map));
        self.publish(&self.channels());
    }

    fn channels(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets both gauges of every configured channel from the set in use; called under the
    /// channels' lock, so the last update to run shows the newest set.
    fn publish(&self, channels: &BTreeSet<String>) {
        let drained = self.drained.load();
        for channel in channels {
            let since = drained.get(channel).map(|d| d.since_ms.div_euclid(1000));
            self.metrics
                .drained
                .with_label_values(&[channel])
                .set(i64::from(since.is_some()));
            self.metrics
                .since
                .with_label_values(&[channel])
                .set(since.unwrap_or(0));
        }
    }
}

/// A drain's reason as the admin API takes it: not blank, at most
/// [`MAX_DRAIN_REASON_CHARS`] characters, no control characters (it goes into log lines).
pub fn check_reason(reason: &str) -> Result<(), String> {
    check_text("reason", reason, MAX_DRAIN_REASON_CHARS)
}

/// An operator's name (`by`, or the `X-Payroute-Operator` header): as [`check_reason`], at most
/// [`MAX_DRAIN_OPERATOR_CHARS`] characters.
pub fn check_operator(by: &str) -> Result<(), String> {
    check_text("by", by, MAX_DRAIN_OPERATOR_CHARS)
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if text.chars().count() > max {
        return Err(format!("{what} must be at most {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} must not hold control characters"));
    }
    Ok(())
}

/// The switch routing consults for every candidate.
impl crate::payment::Drained for DrainSwitch {
    fn is_drained(&self, channel: &str) -> bool {
        DrainSwitch::is_drained(self, channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn switch() -> (tempfile::TempDir, Arc<DrainSwitch>, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("d.db"))
            .await
            .unwrap();
        let registry = Registry::new();
        let switch = Arc::new(DrainSwitch::new(Arc::new(store), &registry).unwrap());
        switch.load().await.unwrap();
        (dir, switch, registry)
    }

    fn gauge(registry: &Registry, name: &str, channel: &str) -> Option<i64> {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .find(|m| m.get_label().iter().any(|l| l.value() == channel))
            .map(|m| m.get_gauge().get_value() as i64)
    }

    #[tokio::test]
    async fn drain_and_resume_change_the_set_and_the_gauges() {
        let (_dir, switch, registry) = switch().await;
        switch.set_channels(["a", "b"]);
        assert_eq!(gauge(&registry, "payroute_channel_drained", "a"), Some(0));
        assert_eq!(
            gauge(
                &registry,
                "payroute_channel_drained_since_timestamp_seconds",
                "b"
            ),
            Some(0)
        );
        let d = switch.drain("a", "incident", "ops").await.unwrap();
        assert!(!d.already);
        assert!(switch.is_drained("a") && !switch.is_drained("b"));
        assert_eq!(switch.get("a").unwrap().reason, "incident");
        assert_eq!(gauge(&registry, "payroute_channel_drained", "a"), Some(1));
        assert_eq!(
            gauge(
                &registry,
                "payroute_channel_drained_since_timestamp_seconds",
                "a"
            ),
            Some(d.record.since_ms / 1000)
        );
        assert!(switch.resume("a", "ops").await.unwrap().is_some());
        assert!(!switch.is_drained("a"));
        assert_eq!(gauge(&registry, "payroute_channel_drained", "a"), Some(0));
        assert!(switch.resume("a", "ops").await.unwrap().is_none());
        // A channel no longer configured loses its series; a new one starts at 0.
        switch.set_channels(["b", "c"]);
        assert_eq!(gauge(&registry, "payroute_channel_drained", "a"), None);
        assert_eq!(gauge(&registry, "payroute_channel_drained", "c"), Some(0));
    }

    #[tokio::test]
    async fn a_refresh_sees_what_another_instance_wrote() {
        let (dir, switch, _registry) = switch().await;
        let other = crate::store::sqlite::SqliteStore::open(&dir.path().join("d.db"))
            .await
            .unwrap();
        other.drain("x", "elsewhere", "bob", 5_000).await.unwrap();
        assert!(!switch.is_drained("x"), "not before a refresh");
        switch.refresh().await.unwrap();
        assert_eq!(switch.get("x").unwrap().since_ms, 5_000);
        other.resume("x", "bob", 6_000).await.unwrap();
        switch.refresh().await.unwrap();
        assert!(!switch.is_drained("x"));
    }

    /// A store whose reads of the drained set answer what the test says.
    struct Scripted(Mutex<Result<Vec<DrainRecord>, StoreError>>);

    #[async_trait::async_trait]
    impl Drains for Scripted {
        async fn drain(&self, _: &str, _: &str, _: &str, _: i64) -> Result<Drained, StoreError> {
            Err(StoreError::Unavailable("scripted".into()))
        }
        async fn resume(
            &self,
            _: &str,
            _: &str,
            _: i64,
        ) -> Result<Option<DrainRecord>, StoreError> {
            Err(StoreError::Unavailable("scripted".into()))
        }
        async fn drained(&self) -> Result<Vec<DrainRecord>, StoreError> {
            self.0.lock().unwrap().clone()
        }
        async fn drain_log(&self, _: u32) -> Result<Vec<crate::store::DrainLogEntry>, StoreError> {
            Ok(vec![])
        }
    }

    /// A store that cannot be read keeps the last known set in force (and counts it); one
    /// that cannot be written refuses the change and leaves the set as it was.
    #[tokio::test]
    async fn store_trouble_keeps_the_last_known_set() {
        let d = DrainRecord {
            channel: "a".into(),
            reason: "incident".into(),
            by: "ops".into(),
            since_ms: 1_000,
        };
        let store = Arc::new(Scripted(Mutex::new(Ok(vec![d.clone()]))));
        let registry = Registry::new();
        let switch = DrainSwitch::new(store.clone(), &registry).unwrap();
        switch.load().await.unwrap();
        switch.set_channels(["a"]);
        *store.0.lock().unwrap() = Err(StoreError::Unavailable("down".into()));
        for _ in 0..3 {
            let result = switch.refresh().await;
            assert!(result.is_err());
            switch.refreshed(result);
        }
        assert!(
            switch.is_drained("a"),
            "the last known drain stays in force"
        );
        assert_eq!(switch.metrics.refresh_errors.get(), 3);
        assert!(switch.drain("b", "x", "ops").await.is_err());
        assert!(switch.resume("a", "ops").await.is_err());
        assert_eq!(switch.all(), [d]);
        assert_eq!(gauge(&registry, "payroute_channel_drained", "a"), Some(1));
        *store.0.lock().unwrap() = Ok(vec![]);
        let result = switch.refresh().await;
        switch.refreshed(result);
        assert!(!switch.is_drained("a"));
        assert!(!switch.refresh_failing.load(Ordering::Relaxed));
    }

    /// A failed load fails the start: serving without the stored drains would undo them.
    #[tokio::test]
    async fn a_failed_load_is_an_error() {
        let store = Arc::new(Scripted(Mutex::new(Err(StoreError::Unavailable(
            "down".into(),
        )))));
        let switch = DrainSwitch::new(store, &Registry::new()).unwrap();
        assert!(switch.load().await.is_err());
    }

    /// The refresher ends when the shutdown signal comes.
    #[tokio::test]
    async fn the_refresher_stops_on_shutdown() {
        let (_dir, switch, _registry) = switch().await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(switch.run(async move {
            let _ = stopped.await;
        }));
        let _ = stop.send(());
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("the refresher stops")
            .unwrap();
    }

    #[test]
    fn reasons_and_operators_are_checked() {
        assert!(check_reason("provider incident #42 茶").is_ok());
        assert!(check_reason("  ").is_err());
        assert!(check_reason(&"x".repeat(MAX_DRAIN_REASON_CHARS)).is_ok());
        assert!(check_reason(&"茶".repeat(MAX_DRAIN_REASON_CHARS + 1)).is_err());
        assert!(check_reason("two\nlines").is_err());
        assert!(check_operator("alice@ops").is_ok());
        assert!(check_operator(&"a".repeat(MAX_DRAIN_OPERATOR_CHARS + 1)).is_err());
    }
}
