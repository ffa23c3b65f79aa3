//! Delivers the outbox's shop events to each shop's webhook (DESIGN.md §3): signed, at least
//! once, in order per payment, on WeChat Pay's retry schedule, then `dead`.
//!
//! # Limits
//! - One event per payment is in flight at a time (the store hands out only the head of
//!   each payment's queue, and this process skips payments it is delivering): order holds
//!   per payment, not across payments.
//! - Each shop has its own concurrency bound, and every delivery runs in its own task with
//!   its own deadline: a slow shop fills its own slots and never delays another shop.
//! - A `dead` event no longer holds back the later events of its payment; resending it
//!   delivers it after them.
//! - Events are polled from the store (and woken when payment writes one), so a pending event
//!   survives a crash and is delivered after restart.
//! - With a store shared by several instances (PostgreSQL), `due_events` claims what it
//!   hands out: one instance delivers an event at a time; a dead instance's claims run out
//!   after their lease and another instance delivers them.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Notify, Semaphore};

use super::{signature, WebhookSettings};
use crate::channel::http::HttpClient;
use crate::live::LiveConfig;
use crate::payment::now_ms;
use crate::store::pause::Pause;
use crate::store::{Delivery, EventRecord, Store};

/// How often the store is asked for due events when nothing wakes the worker.
const POLL: Duration = Duration::from_millis(500);
/// Events taken from the store per round.
const BATCH: u32 = 256;
/// The gauges are refreshed at most this often (rounds run on every event written).
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Every `result` of `payroute_webhook_deliveries_total`: a new one must be listed here to
/// start at 0.
const DELIVERY_RESULTS: [&str; 3] = ["delivered", "failed", "dead"];

pub struct OutboxMetrics {
    deliveries: IntCounterVec,
    pending: IntGauge,
    oldest_age: IntGauge,
    dead: IntGauge,
}

impl OutboxMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<OutboxMetrics> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "payroute_webhook_deliveries_total",
                "Shop webhook delivery attempts by shop and result (delivered, failed, dead).",
            ),
            &["shop", "result"],
        )?;
        let pending = IntGauge::new("payroute_outbox_pending", "Shop events not yet delivered.")?;
        let oldest_age = IntGauge::new(
            "payroute_outbox_oldest_pending_age_seconds",
            "Age of the oldest undelivered shop event.",
        )?;
        let dead = IntGauge::new(
            "payroute_events_dead",
            "Shop events whose every delivery failed; resend them from the admin API.",
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(oldest_age.clone()))?;
        registry.register(Box::new(dead.clone()))?;
        Ok(OutboxMetrics {
            deliveries,
            pending,
            oldest_age,
            dead,
        })
    }
}

/// The delivery worker: what it needs and nothing more.
pub struct Outbox {
    store: Arc<dyn Store>,
    live: Arc<LiveConfig>,
    http: HttpClient,
    metrics: OutboxMetrics,
    /// Skips rounds while the store cannot record a delivery (no resend storm).
    pause: Pause,
    /// Woken when an event is written or a delivery ends.
    wake: Arc<Notify>,
    /// Payments with a delivery in flight in this process.
    inflight: Mutex<HashSet<String>>,
    /// Events whose delivery ended since the current round began: the round's read of the
    /// store may predate that, and must not send them again.
    ended: Mutex<HashSet<String>>,
    per_shop: Mutex<HashMap<String, Arc<Semaphore>>>,
    stats_at: Mutex<Option<tokio::time::Instant>>,
}

impl Outbox {
    pub fn new(
        store: Arc<dyn Store>,
        live: Arc<LiveConfig>,
        wake: Arc<Notify>,
        registry: &Registry,
    ) -> Result<Outbox, String> {
        let metrics = OutboxMetrics::new(registry).map_err(|e| format!("metrics: {e}"))?;
        let pause =
            Pause::new(store.clone(), "outbox", registry).map_err(|e| format!("metrics: {e}"))?;
        // Every shop's delivery counters start at 0, a shop added by a reload's too.
        let deliveries = metrics.deliveries.clone();
        let start_at_zero = move |config: &crate::config::Config| {
            for shop in config.shops.ids() {
                for result in DELIVERY_RESULTS {
                    deliveries.with_label_values(&[shop, result]);
                }
            }
        };
        start_at_zero(&live.load().config);
        live.on_reload(start_at_zero);
        Ok(Outbox {
            store,
            live,
            http: HttpClient::new(None)?,
            metrics,
            pause,
            wake,
            inflight: Mutex::new(HashSet::new()),
            ended: Mutex::new(HashSet::new()),
            per_shop: Mutex::new(HashMap::new()),
            stats_at: Mutex::new(None),
        })
    }

    /// Delivers until `stop`; deliveries in flight then finish on their own deadline.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            self.round().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// One round: refresh the gauges, start a delivery for every due event that may go now.
    async fn round(self: &Arc<Self>) {
        if !self.pause.may_run().await {
            return;
        }
        let now = now_ms();
        if self.stats_due() {
            self.refresh_gauges(now).await;
        }
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let due = match self.store.due_events(now, BATCH).await {
            Ok(due) => due,
            Err(e) => {
                self.pause.saw(&e);
                tracing::warn!(error = %e, "outbox: cannot read due events");
                return;
            }
        };
        let settings = self.live.load().config.webhooks.clone();
        // Handed out but not sent in this round: given back, so that a shared store's claim
        // does not hold them until its lease runs out.
        let mut skipped = Vec::new();
        for event in due {
            if self
                .ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&event.event_id)
            {
                continue;
            }
            if !self.lock_inflight().insert(event.payment_id.clone()) {
                skipped.push(event.event_id);
                continue;
            }
            let Ok(permit) = self
                .shop_slots(&event.shop_id, settings.per_shop_concurrency)
                .try_acquire_owned()
            else {
                // This shop is busy: its next round will take the event.
                self.lock_inflight().remove(&event.payment_id);
                skipped.push(event.event_id);
                continue;
            };
            let me = self.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let (payment_id, event_id) = (event.payment_id.clone(), event.event_id.clone());
                me.deliver(event, &settings).await;
                drop(permit);
                // Recorded in the store by now; `ended` first, so no round sends it again.
                me.ended
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(event_id);
                me.lock_inflight().remove(&payment_id);
                me.wake.notify_one();
            });
        }
        if !skipped.is_empty() {
            if let Err(e) = self.store.release_events(&skipped).await {
                // Their claim runs out on its own: delivered later, not lost.
                tracing::warn!(error = %e, "outbox: cannot give back events it skipped");
            }
        }
    }

    async fn deliver(&self, event: EventRecord, settings: &WebhookSettings) {
        let live = self.live.load();
        let webhook = live
            .config
            .shops
            .get(&event.shop_id)
            .and_then(|s| s.webhook.clone());
        let result = match webhook {
            Some(hook) => {
                let t = now_ms() / 1000;
                let sig = signature(hook.secret.expose().as_bytes(), t, event.body.as_bytes());
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(&hook.url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(
                        header::USER_AGENT,
                        concat!("payroute/", env!("CARGO_PKG_VERSION")),
                    )
                    .header("Payroute-Signature", sig)
                    .body(Full::new(Bytes::from(event.body.clone())));
                let request_id = serde_json::from_str::<EventIds>(&event.body)
                    .ok()
                    .and_then(|ids| ids.request_id);
                let send = |req| async {
                    match request_id {
                        // Sent on as X-Request-Id by the client, as with channel calls.
                        Some(id) => {
                            crate::context::scope(id, self.http.send(req, settings.timeout))
                                .await
                                .0
                        }
                        None => self.http.send(req, settings.timeout).await,
                    }
                };
                match req {
                    Ok(req) => match send(req).await {
                        Ok(resp) if resp.status.is_success() => Ok(()),
                        Ok(resp) => Err(format!("HTTP {}", resp.status.as_u16())),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(format!("webhook url {:?}: {e}", hook.url)),
                }
            }
            None => Err(format!(
                "shop {:?} has no webhook configured",
                event.shop_id
            )),
        };
        let now = now_ms();
        let (delivery, label) = match result {
            Ok(()) => (Delivery::Delivered { at: now }, "delivered"),
            Err(error) => {
                tracing::warn!(event_id = %event.event_id, shop = %event.shop_id, attempt = event.attempts + 1, %error, "webhook delivery failed");
                match settings.schedule.get(event.attempts as usize) {
                    Some(wait) => (
                        Delivery::Retry {
                            next_attempt_at: now + wait.as_millis() as i64,
                            error,
                        },
                        "failed",
                    ),
                    None => {
                        tracing::error!(event_id = %event.event_id, shop = %event.shop_id, "webhook event dead after its whole schedule; resend it from the admin API");
                        (Delivery::Dead { error }, "dead")
                    }
                }
            }
        };
        self.metrics
            .deliveries
            .with_label_values(&[event.shop_id.as_str(), label])
            .inc();
        if let Err(e) = self.store.record_delivery(&event.event_id, delivery).await {
            self.pause.saw(&e);
            // The event stays pending: it is delivered again (at least once).
            tracing::error!(event_id = %event.event_id, error = %e, "outbox: cannot record a delivery");
        }
    }

    fn stats_due(&self) -> bool {
        let mut at = self.stats_at.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if at.is_some_and(|t| now < t + STATS_EVERY) {
            return false;
        }
        *at = Some(now);
        true
    }

    async fn refresh_gauges(&self, now: i64) {
        match self.store.outbox_stats().await {
            Ok(stats) => {
                self.metrics.pending.set(stats.pending as i64);
                self.metrics.dead.set(stats.dead as i64);
                self.metrics.oldest_age.set(
                    stats
                        .oldest_pending_created_at
                        .map_or(0, |t| (now - t).max(0) / 1000),
                );
            }
            Err(e) => tracing::warn!(error = %e, "outbox: cannot read its statistics"),
        }
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shop_slots(&self, shop: &str, limit: usize) -> Arc<Semaphore> {
        let mut slots = self.per_shop.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(shop.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
            .clone()
    }
}

/// The ids an event's body carries beside its payload.
#[derive(serde::Deserialize)]
struct EventIds {
    request_id: Option<String>,
}
