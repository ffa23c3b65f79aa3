//! The circuit breaker of one channel (ARCHITECTURE.md, "What is safe to retry"): 5 consecutive
//! failures that say the channel is down (nothing sent, timeout, reset, 5xx, "system error") open
//! it for 30s × n (at most 300s); then one half-open probe decides. Business answers — even
//! refusals — show the channel is up and close it.
//!
//! Uses `tokio::time::Instant`, so tests drive it with paused time.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

const TRIP_AFTER: u32 = 5;
const BASE_OPEN: Duration = Duration::from_secs(30);
const MAX_OPEN: Duration = Duration::from_secs(300);
/// A probe that never reported (its caller gave up) stops blocking the next one after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    failures: u32,
    trips: u32,
    open_until: Option<Instant>,
    probe_since: Option<Instant>,
}

pub struct Breaker {
    state: Mutex<State>,
    open_gauge: IntGauge,
}

/// How a call through the breaker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The channel answered (success or a business refusal).
    Up,
    /// The channel looks down.
    Down,
}

impl Breaker {
    pub fn new(open_gauge: IntGauge) -> Breaker {
        open_gauge.set(0);
        Breaker {
            state: Mutex::new(State::default()),
            open_gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go through? `Err(wait)` while open, or while another probe is out.
    pub fn admit(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        match s.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until - now),
            Some(_) => match s.probe_since {
                Some(since) if now.duration_since(since) < PROBE_TIMEOUT => {
                    Err(Duration::from_secs(1))
                }
                _ => {
                    s.probe_since = Some(now);
                    Ok(())
                }
            },
        }
    }

    pub fn record(&self, outcome: Outcome) {
        let now = Instant::now();
        let mut s = self.lock();
        match outcome {
            Outcome::Up => {
                *s = State::default();
                self.open_gauge.set(0);
            }
            Outcome::Down => {
                s.failures += 1;
                let probing = s.probe_since.is_some();
                if probing || (s.open_until.is_none() && s.failures >= TRIP_AFTER) {
                    s.trips += 1;
                    s.open_until = Some(now + (BASE_OPEN * s.trips).min(MAX_OPEN));
                    s.probe_since = None;
                    self.open_gauge.set(1);
                }
            }
        }
    }

    /// How long until an open breaker lets a probe through; `None` unless open (closed or
    /// half-open: a call may be admitted now).
    pub fn reopens_in(&self) -> Option<Duration> {
        let now = Instant::now();
        match self.lock().open_until {
            Some(until) if now < until => Some(until - now),
            _ => None,
        }
    }

    /// `closed`, `open` or `half_open`, for `/admin/channels`.
    pub fn state(&self) -> &'static str {
        let s = self.lock();
        match s.open_until {
            None => "closed",
            Some(until) if Instant::now() < until => "open",
            Some(_) => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn trips_after_five_failures_and_probes_with_growing_pauses() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let b = Breaker::new(gauge.clone());
        for _ in 0..4 {
            b.admit().unwrap();
            b.record(Outcome::Down);
        }
        assert_eq!(b.state(), "closed");
        b.record(Outcome::Down);
        assert_eq!((b.state(), gauge.get()), ("open", 1));
        assert_eq!(b.admit(), Err(Duration::from_secs(30)));
        assert_eq!(b.reopens_in(), Some(Duration::from_secs(30)));

        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.state(), "half_open");
        assert_eq!(b.reopens_in(), None);
        b.admit().expect("one probe goes through");
        assert!(b.admit().is_err(), "only one probe at a time");
        b.record(Outcome::Down);
        // Second trip: 60s.
        assert_eq!(b.admit(), Err(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        b.admit().unwrap();
        b.record(Outcome::Up);
        assert_eq!((b.state(), gauge.get()), ("closed", 0));
        b.admit().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_are_capped_and_successes_reset_the_count() {
        let b = Breaker::new(IntGauge::new("g", "g").unwrap());
        for _ in 0..4 {
            b.record(Outcome::Down);
        }
        b.record(Outcome::Up);
        for _ in 0..4 {
            b.record(Outcome::Down);
        }
        assert_eq!(b.state(), "closed", "failures must be consecutive");
        b.record(Outcome::Down);
        for _ in 0..20 {
            let wait = b.admit().unwrap_err();
            assert!(wait <= MAX_OPEN);
            tokio::time::advance(wait).await;
            b.admit().unwrap();
            b.record(Outcome::Down);
        }
        assert_eq!(b.admit(), Err(MAX_OPEN));
        // A probe whose caller vanished does not block the next one forever.
        tokio::time::advance(MAX_OPEN).await;
        b.admit().unwrap();
        assert!(b.admit().is_err());
        tokio::time::advance(PROBE_TIMEOUT).await;
        b.admit().unwrap();
    }
}
