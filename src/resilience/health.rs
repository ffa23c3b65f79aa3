//! Channel health: a window of each channel's latest create attempts, and its conversion.
//!
//! Every create attempt that reached a verdict counts, retries included: a success when the
//! provider gave the payer an action, a failure when the channel or its account was at fault
//! (`ChannelError::is_channel_fault`). The shop's and the buyer's errors,
//! and our own refusals before sending (the channel's limit, its open breaker), count for
//! nothing. Routing reads the windows through a snapshot ([`crate::routing::Signals`]) and
//! decides elimination itself; this module only keeps the windows and readmits a channel
//! with a fresh window after `readmit_after` consecutive successes while eliminated.
//!
//! # Limits
//! Health is per instance: each instance sees its own share of the traffic and judges from
//! it. With N instances behind a balancer each needs `min_samples` of its own before it
//! eliminates, and each readmits on its own probes. Sharing windows through the store or
//! Redis would cost a round trip per create for little gain: a channel that fails, fails for
//! every instance.
//!
//! The state lives with [`super::Resilience`], so it outlives config versions: a reload keeps
//! a channel's window (a shorter `window` drops its oldest outcomes).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use prometheus::{Gauge, GaugeVec, Opts, Registry};

use crate::defaults::{
    CONVERSION_MINUTES, HEALTH_ELIMINATE_BELOW_PPM, HEALTH_MIN_SAMPLES, HEALTH_READMIT_AFTER,
    HEALTH_WINDOW,
};
use crate::routing::{HealthPolicy, Sample};

/// The window settings of `routing.health` (the thresholds rules use are routing's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    pub window: u32,
    pub readmit_after: u32,
    /// `routing.health`'s own thresholds: readmission resets the window of a channel these
    /// eliminate.
    pub policy: HealthPolicy,
}

impl Default for HealthSettings {
    fn default() -> HealthSettings {
        HealthSettings {
            window: HEALTH_WINDOW,
            readmit_after: HEALTH_READMIT_AFTER,
            policy: crate::routing::DEFAULT_HEALTH,
        }
    }
}

/// The settings every window reads, swapped field by field on reload.
struct Shared {
    window: AtomicU32,
    readmit_after: AtomicU32,
    min_samples: AtomicU32,
    eliminate_below_ppm: AtomicU32,
}

impl Shared {
    fn policy(&self) -> HealthPolicy {
        HealthPolicy {
            min_samples: self.min_samples.load(Ordering::Relaxed),
            eliminate_below_ppm: self.eliminate_below_ppm.load(Ordering::Relaxed),
            probe_ppm: 0,
        }
    }
}

/// Every channel's window, by name, and the gauges that show them.
pub struct Health {
    shared: Arc<Shared>,
    channels: RwLock<HashMap<String, Arc<ChannelHealth>>>,
    ratio: GaugeVec,
    conversion: GaugeVec,
}

impl Health {
    pub fn new(registry: &Registry) -> prometheus::Result<Health> {
        let ratio = GaugeVec::new(
            Opts::new(
                "payroute_channel_success_ratio",
                "Successes ÷ outcomes in the channel's health window of create attempts (its own faults only; this instance).",
            ),
            &["channel"],
        )?;
        let conversion = GaugeVec::new(
            Opts::new(
                "payroute_channel_conversion_ratio",
                "Payments paid ÷ created at the channel over the last hour (this instance).",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(ratio.clone()))?;
        registry.register(Box::new(conversion.clone()))?;
        Ok(Health {
            shared: Arc::new(Shared {
                window: AtomicU32::new(HEALTH_WINDOW),
                readmit_after: AtomicU32::new(HEALTH_READMIT_AFTER),
                min_samples: AtomicU32::new(HEALTH_MIN_SAMPLES),
                eliminate_below_ppm: AtomicU32::new(HEALTH_ELIMINATE_BELOW_PPM),
            }),
            channels: RwLock::new(HashMap::new()),
            ratio,
            conversion,
        })
    }

    /// Applies `routing.health` (at start and on every reload).
    pub fn configure(&self, s: HealthSettings) {
        self.shared.window.store(s.window.max(1), Ordering::Relaxed);
        self.shared
            .readmit_after
            .store(s.readmit_after.max(1), Ordering::Relaxed);
        self.shared
            .min_samples
            .store(s.policy.min_samples, Ordering::Relaxed);
        self.shared
            .eliminate_below_ppm
            .store(s.policy.eliminate_below_ppm, Ordering::Relaxed);
    }

    /// The channel's window, made (its gauges at their empty values) on first use.
    pub fn channel(&self, name: &str) -> Arc<ChannelHealth> {
        if let Some(h) = read(&self.channels).get(name) {
            return h.clone();
        }
        let mut all = self.channels.write().unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_string())
            .or_insert_with(|| {
                let ratio = self.ratio.with_label_values(&[name]);
                let conversion = self.conversion.with_label_values(&[name]);
                ratio.set(1.0);
                conversion.set(0.0);
                Arc::new(ChannelHealth {
                    name: name.to_string(),
                    shared: self.shared.clone(),
                    window: Mutex::new(Window::default()),
                    ratio,
                    conversion,
                })
            })
            .clone()
    }

    /// The channel's window now; empty for a channel never used.
    pub fn sample(&self, name: &str) -> Sample {
        read(&self.channels)
            .get(name)
            .map_or_else(Sample::default, |h| h.sample())
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// One channel's window of create outcomes and its conversion buckets.
pub struct ChannelHealth {
    name: String,
    shared: Arc<Shared>,
    window: Mutex<Window>,
    ratio: Gauge,
    conversion: Gauge,
}

#[derive(Default)]
struct Window {
    outcomes: VecDeque<bool>,
    successes: u32,
    /// Consecutive successful probes up to now (any failure ends the run).
    streak: u32,
    /// `(minute, created, paid)`, one per minute of the last hour (oldest first).
    minutes: VecDeque<(i64, u32, u32)>,
}

impl Window {
    fn sample(&self) -> Sample {
        Sample {
            successes: self.successes,
            samples: self.outcomes.len() as u32,
        }
    }

    fn minute(&mut self, now_ms: i64) -> &mut (i64, u32, u32) {
        let minute = now_ms.div_euclid(60_000);
        while self
            .minutes
            .front()
            .is_some_and(|m| m.0 <= minute - CONVERSION_MINUTES as i64)
        {
            self.minutes.pop_front();
        }
        if self.minutes.back().is_none_or(|m| m.0 < minute) {
            self.minutes.push_back((minute, 0, 0));
        }
        // A clock step backwards lands in the newest bucket rather than reordering them.
        self.minutes.back_mut().expect("pushed above")
    }

    fn conversion(&self) -> f64 {
        let (created, paid) = self
            .minutes
            .iter()
            .fold((0u64, 0u64), |(c, p), m| (c + m.1 as u64, p + m.2 as u64));
        if created == 0 {
            0.0
        } else {
            (paid as f64 / created as f64).min(1.0)
        }
    }
}

impl ChannelHealth {
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn sample(&self) -> Sample {
        self.lock().sample()
    }

    /// One create attempt's verdict: `true` the payer got an action, `false` the channel or
    /// its account failed. `probe`: the order was sent as an eliminated channel's probe.
    /// Only probes readmit: traffic a rule with a laxer threshold keeps sending to the
    /// channel says nothing about whether the rules that eliminated it should take it back.
    pub fn record(&self, success: bool, probe: bool) {
        let size = self.shared.window.load(Ordering::Relaxed) as usize;
        let mut w = self.lock();
        let was_eliminated = w.sample().eliminated(&self.shared.policy());
        w.outcomes.push_back(success);
        w.successes += success as u32;
        while w.outcomes.len() > size {
            if w.outcomes.pop_front() == Some(true) {
                w.successes -= 1;
            }
        }
        w.streak = match (success, probe) {
            (false, _) => 0,
            (true, true) => w.streak.saturating_add(1),
            (true, false) => w.streak,
        };
        if success
            && probe
            && was_eliminated
            && w.streak >= self.shared.readmit_after.load(Ordering::Relaxed)
        {
            // Its probes succeed: judge it afresh rather than by the failures that
            // eliminated it, which would eliminate it again at its next failure.
            w.outcomes.clear();
            w.successes = 0;
            w.streak = 0;
            tracing::info!(channel = %self.name, "channel readmitted after successful probes; its health window starts afresh");
        }
        let s = w.sample();
        drop(w);
        self.ratio.set(s.ratio().unwrap_or(1.0));
    }

    /// A payment was created at this channel (for conversion).
    pub fn created(&self, now_ms: i64) {
        let mut w = self.lock();
        w.minute(now_ms).1 += 1;
        let c = w.conversion();
        drop(w);
        self.conversion.set(c);
    }

    /// A payment created at this channel was paid (for conversion).
    pub fn paid(&self, now_ms: i64) {
        let mut w = self.lock();
        w.minute(now_ms).2 += 1;
        let c = w.conversion();
        drop(w);
        self.conversion.set(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(window: u32, readmit_after: u32) -> Health {
        let h = Health::new(&Registry::new()).unwrap();
        h.configure(HealthSettings {
            window,
            readmit_after,
            policy: HealthPolicy {
                min_samples: 4,
                eliminate_below_ppm: 500_000,
                probe_ppm: 0,
            },
        });
        h
    }

    #[test]
    fn the_window_keeps_the_latest_outcomes() {
        let h = health(10, 3);
        let c = h.channel("a");
        for i in 0..25 {
            c.record(i % 5 != 0, true);
        }
        let s = h.sample("a");
        assert_eq!((s.successes, s.samples), (8, 10));
        assert_eq!(h.sample("never"), Sample::default());
    }

    #[test]
    fn consecutive_successes_while_eliminated_readmit_with_a_fresh_window() {
        let h = health(10, 3);
        let c = h.channel("own");
        for _ in 0..10 {
            c.record(false, true);
        }
        let p = h.shared.policy();
        assert!(c.sample().eliminated(&p));
        c.record(true, true);
        c.record(true, true);
        assert!(c.sample().eliminated(&p), "two successes are not enough");
        c.record(false, true);
        c.record(true, true);
        c.record(true, true);
        assert!(c.sample().eliminated(&p), "a failure restarts the count");
        c.record(true, true);
        assert_eq!(c.sample(), Sample::default(), "readmitted afresh");
        // A healthy channel's streak never clears its window.
        for _ in 0..5 {
            c.record(true, true);
        }
        assert_eq!(c.sample().samples, 5);
    }

    /// Orders a laxer rule keeps sending are no probes: however many succeed, only a run of
    /// probes readmits (and a failure of either kind ends the run).
    #[test]
    fn only_probes_readmit() {
        let h = health(40, 3);
        let c = h.channel("own");
        for _ in 0..40 {
            c.record(false, false);
        }
        for _ in 0..3 {
            c.record(true, false);
        }
        assert_eq!(c.sample().samples, 40, "not readmitted by ordinary traffic");
        c.record(true, true);
        c.record(true, true);
        c.record(false, false);
        c.record(true, true);
        c.record(true, true);
        assert_eq!(c.sample().samples, 40);
        c.record(true, false);
        c.record(true, true);
        assert_eq!(
            c.sample(),
            Sample::default(),
            "three probes in a row readmit"
        );
    }

    #[test]
    fn conversion_counts_the_last_hour() {
        let h = health(10, 3);
        let c = h.channel("a");
        let t0 = 1_700_000_000_000;
        for _ in 0..4 {
            c.created(t0);
        }
        c.paid(t0 + 1000);
        assert_eq!(c.lock().conversion(), 0.25);
        // An hour later the old minute has left the window.
        c.created(t0 + 3_600_000);
        c.paid(t0 + 3_600_000);
        assert_eq!(c.lock().conversion(), 1.0);
    }
}
