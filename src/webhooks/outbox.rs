//! Delivers the outbox's shop events to each shop's webhook (ARCHITECTURE.md, "Shop events and
//! webhooks"): signed, at least once, in order per payment, on WeChat Pay's retry schedule, then
//! `dead`.
//!
//! # Limits
//! - One event per payment is in flight at a time (the store hands out only the head of
//!   each payment's queue, and this process skips payments it is delivering): order holds
//!   per payment, not across payments.
//! - Each shop has its own concurrency bound, and every delivery runs in its own task with
//!   its own deadline: a slow shop fills its own slots and never delays another shop. The
//!   store hands out each shop's due events only up to that shop's free slots
//!   ([`DueLimits`]), so a backlog of any size at one shop never takes another shop's places
//!   in a round: a shop's event waits for its own shop's deliveries, never another's.
//! - A `dead` event no longer holds back the later events of its payment; resending it
//!   delivers it after them.
//! - Events are polled from the store (and woken when payment's commit path writes one, or
//!   [`Outbox::resend`] queues one again), so a pending event survives a crash and is
//!   delivered after restart.
//! - With a store shared by several instances (PostgreSQL), `due_events` claims what it
//!   hands out: one instance delivers an event at a time; a dead instance's claims run out
//!   after their lease and another instance delivers them. A claim carries a token: an
//!   instance that stalled past its lease and was taken over records nothing (counted as
//!   `payroute_outbox_held_total{reason="superseded"}`); the shop may then have the event
//!   twice (at least once), never a lost outcome.
//! - An outcome the store does not take (disk full, database away) is kept in memory and
//!   written again each round until it goes through; meanwhile the event is not sent again
//!   (`payroute_outbox_held_total{reason="unrecorded"}`, `payroute_outbox_unrecorded`), so a
//!   store that reads but cannot write never turns into a resend storm. That memory dies
//!   with the process: after a restart such an event is sent again (at least once), and a
//!   failed one goes out at once rather than at its scheduled retry.

use std::collections::HashMap;
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
use crate::clock::now_ms;
use crate::live::LiveConfig;
use crate::store::pause::Pause;
use crate::store::{
    self, Delivery, DueLimits, EventFilter, EventRecord, Reports, Resend, StoreError,
};

/// How often the store is asked for due events when nothing wakes the worker.
const POLL: Duration = Duration::from_millis(500);
/// Events taken from the store per round.
const BATCH: u32 = 256;
/// The gauges are refreshed at most this often (rounds run on every event written).
const STATS_EVERY: Duration = Duration::from_secs(1);
/// An outcome the store refused is written again no sooner than this (and only in rounds
/// that run: none while the store is paused as unwritable).
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Every `result` of `payroute_webhook_deliveries_total`: a new one must be listed here to
/// start at 0.
const DELIVERY_RESULTS: [&str; 3] = ["delivered", "failed", "dead"];

/// Every `reason` of `payroute_outbox_held_total`, listed so that each starts at 0:
/// `unrecorded`, a due event not sent because the outcome of its last delivery is not in the
/// store yet; `superseded`, an outcome not written because another instance had taken the
/// event over (its lease ran out mid-delivery) or it was no longer pending.
const HELD_REASONS: [&str; 2] = ["unrecorded", "superseded"];

pub struct OutboxMetrics {
    deliveries: IntCounterVec,
    pending: IntGauge,
    oldest_age: IntGauge,
    dead: IntGauge,
    held: IntCounterVec,
    unrecorded: IntGauge,
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
        let held = IntCounterVec::new(
            Opts::new(
                "payroute_outbox_held_total",
                "Shop events held back by reason: unrecorded (not sent again while the outcome of its last delivery awaits a store write), superseded (an outcome not written: another instance had taken the event over).",
            ),
            &["reason"],
        )?;
        let unrecorded = IntGauge::new(
            "payroute_outbox_unrecorded",
            "Delivery outcomes the store has not taken yet, kept in memory and written again each round.",
        )?;
        for reason in HELD_REASONS {
            held.with_label_values(&[reason]);
        }
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(oldest_age.clone()))?;
        registry.register(Box::new(dead.clone()))?;
        registry.register(Box::new(held.clone()))?;
        registry.register(Box::new(unrecorded.clone()))?;
        Ok(OutboxMetrics {
            deliveries,
            pending,
            oldest_age,
            dead,
            held,
            unrecorded,
        })
    }
}

/// Why the outbox could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The webhook client (its TLS roots) could not be set up.
    #[error("webhook client: {0}")]
    Client(crate::channel::http::ClientError),
}

/// The delivery worker: what it needs and nothing more.
pub struct Outbox {
    /// The events, and nothing else of the store.
    store: Arc<dyn store::Outbox>,
    live: Arc<LiveConfig>,
    http: HttpClient,
    metrics: OutboxMetrics,
    /// Skips rounds while the store cannot record a delivery (no resend storm).
    pause: Pause,
    /// Woken when an event is written or a delivery ends.
    wake: Arc<Notify>,
    /// Payments with a delivery in flight in this process, and that delivery's event.
    inflight: Mutex<HashMap<String, String>>,
    /// Outcomes the store refused, by event id: the event is not sent again until its
    /// outcome is written (a delivered one never; a failed one then waits for its retry).
    unrecorded: Mutex<HashMap<String, Unrecorded>>,
    per_shop: Mutex<HashMap<String, Arc<Semaphore>>>,
    stats_at: Mutex<Option<tokio::time::Instant>>,
}

impl Outbox {
    /// `events` is the store's outbox; `health` tells the pause whether the store can write.
    pub fn new(
        events: Arc<dyn store::Outbox>,
        health: Arc<dyn Reports>,
        live: Arc<LiveConfig>,
        wake: Arc<Notify>,
        registry: &Registry,
    ) -> Result<Outbox, OutboxError> {
        let metrics = OutboxMetrics::new(registry)?;
        let pause = Pause::new(health, "outbox", registry)?;
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
            store: events,
            live,
            http: HttpClient::new(None).map_err(OutboxError::Client)?,
            metrics,
            pause,
            wake,
            inflight: Mutex::new(HashMap::new()),
            unrecorded: Mutex::new(HashMap::new()),
            per_shop: Mutex::new(HashMap::new()),
            stats_at: Mutex::new(None),
        })
    }

    /// Puts a dead or delivered event back in the queue, due at `now` with its schedule
    /// afresh, and wakes the worker; a pending one is left alone ([`Resend::Pending`]): it is
    /// queued already and may be in flight.
    /// The events the outbox holds, newest first (the admin's ledger of events).
    pub async fn list(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        self.store.list_events(filter).await
    }

    pub async fn resend(&self, event_id: &str, now: i64) -> Result<Resend, StoreError> {
        let resend = self.store.resend_event(event_id, now).await?;
        if matches!(resend, Resend::Resent(_)) {
            self.wake.notify_one();
        }
        Ok(resend)
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

    /// One round: refresh the gauges, write the outcomes the store refused before, start a
    /// delivery for every due event that may go now.
    async fn round(self: &Arc<Self>) {
        if !self.pause.may_run().await {
            return;
        }
        let now = now_ms();
        if self.stats_due() {
            self.refresh_gauges(now).await;
        }
        if !self.record_unrecorded().await {
            return;
        }
        let settings = self.live.load().config.webhooks.clone();
        let limits = self.limits(&settings);
        let due = match self.store.due_events(now, &limits).await {
            Ok(due) => due,
            Err(e) => {
                self.pause.saw(&e);
                tracing::warn!(error = %e, "outbox: cannot read due events");
                return;
            }
        };
        // Handed out but not sent in this round: given back, so that a shared store's claim
        // does not hold them until its lease runs out.
        let mut skipped = Vec::new();
        for event in due {
            if let Some(held) = self.lock_unrecorded().get_mut(&event.event_id) {
                // Its outcome is not written yet: not sent again. Handed out again (a lease
                // that ran out), it stays claimed under the new token, which the outcome is
                // then written with.
                held.event.claim = event.claim;
                self.metrics.held.with_label_values(&["unrecorded"]).inc();
                continue;
            }
            let payment = event.payment_id.clone();
            {
                let mut inflight = self.lock_inflight();
                if inflight.contains_key(&payment) {
                    skipped.push(event);
                    continue;
                }
                inflight.insert(payment.clone(), event.event_id.clone());
            }
            let Ok(permit) = self
                .shop_slots(&event.shop_id, settings.per_shop_concurrency)
                .try_acquire_owned()
            else {
                // This shop is busy: its next round will take the event.
                self.lock_inflight().remove(&payment);
                skipped.push(event);
                continue;
            };
            let me = self.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                me.deliver(event, &settings).await;
                drop(permit);
                // Recorded in the store by now, or kept in `unrecorded`: either way no round
                // hands it out again.
                me.lock_inflight().remove(&payment);
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

    /// What this round may take from the store: each shop its free slots (its bound less
    /// its deliveries in flight here), never an event already in this process's hands.
    fn limits(&self, settings: &WebhookSettings) -> DueLimits {
        let per_shop = u32::try_from(settings.per_shop_concurrency.max(1)).unwrap_or(u32::MAX);
        let busy = self
            .per_shop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(shop, slots)| {
                let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
                (shop.clone(), free.min(per_shop))
            })
            .filter(|(_, free)| *free < per_shop)
            .collect();
        let mut holding: Vec<String> = self.lock_inflight().values().cloned().collect();
        holding.extend(self.lock_unrecorded().keys().cloned());
        DueLimits {
            per_shop,
            busy,
            holding,
            total: BATCH,
        }
    }

    /// Writes the outcomes the store refused before, each no sooner than its retry time;
    /// false (end the round) once the store says it still cannot write.
    async fn record_unrecorded(&self) -> bool {
        let now = tokio::time::Instant::now();
        let ready: Vec<(EventRecord, Delivery)> = self
            .lock_unrecorded()
            .values()
            .filter(|u| u.retry_at <= now)
            .map(|u| (u.event.clone(), u.delivery.clone()))
            .collect();
        for (event, delivery) in ready {
            match self.store.record_delivery(&event, delivery).await {
                Ok(written) => {
                    self.lock_unrecorded().remove(&event.event_id);
                    if written {
                        tracing::info!(event_id = %event.event_id, "outbox: a delivery's outcome recorded at last");
                    } else {
                        self.superseded(&event);
                    }
                }
                Err(e) => {
                    self.pause.saw(&e);
                    if let Some(u) = self.lock_unrecorded().get_mut(&event.event_id) {
                        u.retry_at = now + RECORD_RETRY;
                    }
                    tracing::warn!(event_id = %event.event_id, error = %e, "outbox: still cannot record a delivery");
                    if e.is_unavailable() {
                        self.update_unrecorded_gauge();
                        return false;
                    }
                }
            }
        }
        self.update_unrecorded_gauge();
        true
    }

    /// Records `delivery` of `event`, or keeps it to be recorded later (the event is then not
    /// sent again meanwhile).
    async fn record(&self, event: EventRecord, delivery: Delivery) {
        match self.store.record_delivery(&event, delivery.clone()).await {
            Ok(true) => {}
            Ok(false) => self.superseded(&event),
            Err(e) => {
                self.pause.saw(&e);
                tracing::error!(event_id = %event.event_id, error = %e, "outbox: cannot record a delivery; kept to record later, and not sent again meanwhile");
                self.lock_unrecorded().insert(
                    event.event_id.clone(),
                    Unrecorded {
                        event,
                        delivery,
                        retry_at: tokio::time::Instant::now() + RECORD_RETRY,
                    },
                );
                self.update_unrecorded_gauge();
            }
        }
    }

    /// An outcome the store did not take because the event is no longer this caller's.
    fn superseded(&self, event: &EventRecord) {
        self.metrics.held.with_label_values(&["superseded"]).inc();
        tracing::warn!(event_id = %event.event_id, shop = %event.shop_id, "outbox: delivery not recorded: another instance took the event over (its lease ran out) or it is no longer pending");
    }

    fn update_unrecorded_gauge(&self) {
        let n = self.lock_unrecorded().len();
        self.metrics
            .unrecorded
            .set(i64::try_from(n).unwrap_or(i64::MAX));
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
        self.record(event, delivery).await;
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

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unrecorded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unrecorded>> {
        self.unrecorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shop_slots(&self, shop: &str, limit: usize) -> Arc<Semaphore> {
        let mut slots = self.per_shop.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(shop.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
            .clone()
    }
}

/// A delivery whose outcome the store refused, kept until it is written.
struct Unrecorded {
    /// As handed out, with the claim to write under.
    event: EventRecord,
    delivery: Delivery,
    /// Not written again before this.
    retry_at: tokio::time::Instant,
}

/// The ids an event's body carries beside its payload.
#[derive(serde::Deserialize)]
struct EventIds {
    request_id: Option<String>,
}
