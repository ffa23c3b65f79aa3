//! The retry budget of one channel (ARCHITECTURE.md, "What is safe to retry"): retries may be at
//! most 20% of the calls of the last 10 seconds, with a floor of 3 per second, so a failing channel
//! does not get a storm of retries on top of its load.
//!
//! # Limits
//! Calls counted include retries (each attempt is a call), which makes the budget slightly
//! more generous than "20% of first attempts".

use std::sync::Mutex;

use tokio::time::Instant;

const WINDOW_SECS: u64 = 10;
const MIN_PER_SEC: u64 = 3;
const RATIO_PERCENT: u64 = 20;

pub struct RetryBudget {
    start: Instant,
    /// One bucket per second of the window: (second, calls, retries).
    buckets: Mutex<[(u64, u64, u64); WINDOW_SECS as usize]>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

impl RetryBudget {
    pub fn new() -> RetryBudget {
        RetryBudget {
            start: Instant::now(),
            buckets: Mutex::new([(u64::MAX, 0, 0); WINDOW_SECS as usize]),
        }
    }

    fn with_bucket<T>(&self, f: impl FnOnce(&mut (u64, u64, u64), u64, u64) -> T) -> T {
        let sec = Instant::now().duration_since(self.start).as_secs();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (calls, retries) = b
            .iter()
            .filter(|(s, _, _)| *s != u64::MAX && sec.saturating_sub(*s) < WINDOW_SECS)
            .fold((0, 0), |(c, r), (_, bc, br)| (c + bc, r + br));
        let slot = &mut b[(sec % WINDOW_SECS) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, 0);
        }
        f(slot, calls, retries)
    }

    pub fn record_call(&self) {
        self.with_bucket(|slot, _, _| slot.1 += 1);
    }

    /// Takes a retry from the budget, or says no.
    pub fn try_retry(&self) -> bool {
        self.with_bucket(|slot, calls, retries| {
            let allowed = (calls * RATIO_PERCENT / 100).max(MIN_PER_SEC * WINDOW_SECS);
            if retries < allowed {
                slot.2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_the_floor_or_a_fifth_of_calls() {
        let b = RetryBudget::new();
        for _ in 0..10 {
            b.record_call();
        }
        // Floor: 3/s over 10s = 30 retries, though 20% of 10 calls would be 2.
        assert_eq!((0..40).filter(|_| b.try_retry()).count(), 30);
        // Many calls raise the cap to a fifth of them.
        for _ in 0..1000 {
            b.record_call();
        }
        assert_eq!((0..400).filter(|_| b.try_retry()).count(), 202 - 30);
        // The window slides: ten seconds later the budget is whole again.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!((0..40).filter(|_| b.try_retry()).count(), 30);
    }
}
