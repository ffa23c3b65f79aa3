//! A keyed GCRA rate limiter (the generic cell rate algorithm, as governor implements it)
//! that can test a request against several limits and take a cell from all or none.
//!
//! governor's keyed limiter takes its cell as it checks; a request refused by its second
//! limit would already have spent a cell of the first. [`admit_all`] holds every limit's
//! lock, checks them all, and commits only when all allow.
//!
//! # Limits
//! One mutex per limit, held for a map lookup; limits are locked in a fixed order (the order
//! of the slice), so two requests cannot deadlock. Keys whose cells have all drained are
//! dropped when the map grows, so memory follows the keys active in the last burst window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::RateSpec;

/// Sweep drained keys once the map holds this many.
const SWEEP_AT: usize = 4096;

pub struct Gcra {
    /// Time per cell.
    emission: Duration,
    /// How far ahead of now the theoretical arrival time may run: the burst.
    tolerance: Duration,
    tat: Mutex<HashMap<String, Instant>>,
}

impl Gcra {
    pub fn new(rate: RateSpec) -> Gcra {
        let emission = (rate.per / rate.count.max(1)).max(Duration::from_nanos(1));
        Gcra {
            emission,
            tolerance: emission * rate.burst.max(1).saturating_sub(1),
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// Time per cell.
    pub fn emission(&self) -> Duration {
        self.emission
    }

    /// How many cells' worth of time the burst may run ahead.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Takes one cell for `key`, or says how long until one is free.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        admit_all(&[(self, key)])
    }
}

/// Takes one cell of each `(limit, key)` if every one has a cell free; otherwise takes none
/// and returns the first refusing limit's index and its wait.
pub fn admit_all(limits: &[(&Gcra, &str)]) -> Result<(), Duration> {
    admit_all_indexed(limits).map_err(|(_, wait)| wait)
}

/// Like [`admit_all`], naming the refusing limit by its index.
pub fn admit_all_indexed(limits: &[(&Gcra, &str)]) -> Result<(), (usize, Duration)> {
    let now = Instant::now();
    let mut guards: Vec<_> = limits
        .iter()
        .map(|(g, _)| g.tat.lock().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut next = Vec::with_capacity(limits.len());
    for (i, ((g, key), map)) in limits.iter().zip(guards.iter()).enumerate() {
        let tat = map.get(*key).copied().unwrap_or(now).max(now);
        let allow_at = tat.checked_sub(g.tolerance).unwrap_or(now);
        if allow_at > now {
            return Err((i, allow_at - now));
        }
        next.push(tat + g.emission);
    }
    for (((_, key), map), tat) in limits.iter().zip(guards.iter_mut()).zip(next) {
        if map.len() >= SWEEP_AT && !map.contains_key(*key) {
            map.retain(|_, t| *t > now);
        }
        map.insert(key.to_string(), tat);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_hour(count: u32, burst: u32) -> Gcra {
        Gcra::new(RateSpec {
            count,
            per: Duration::from_secs(3600),
            burst,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let g = Gcra::new(RateSpec {
            count: 10,
            per: Duration::from_secs(1),
            burst: 3,
        });
        for _ in 0..3 {
            assert!(g.check("k").is_ok());
        }
        let wait = g.check("k").unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(g.check("other").is_ok(), "keys are independent");
        tokio::time::advance(wait).await;
        assert!(g.check("k").is_ok());
        assert!(g.check("k").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_refused_by_one_limit_spends_nothing_of_the_others() {
        let (shop, merchant) = (per_hour(2, 2), per_hour(1, 1));
        assert!(admit_all(&[(&shop, "s"), (&merchant, "m1")]).is_ok());
        // m1 is spent: refused by the merchant limit, and the shop keeps its last cell.
        assert_eq!(
            admit_all_indexed(&[(&shop, "s"), (&merchant, "m1")]).map_err(|e| e.0),
            Err(1)
        );
        assert!(admit_all(&[(&shop, "s"), (&merchant, "m2")]).is_ok());
        assert!(admit_all(&[(&shop, "s"), (&merchant, "m3")]).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn drained_keys_are_swept() {
        let g = Gcra::new(RateSpec {
            count: 1000,
            per: Duration::from_secs(1),
            burst: 1,
        });
        for i in 0..SWEEP_AT {
            assert!(g.check(&format!("k{i}")).is_ok());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(g.check("new").is_ok());
        assert_eq!(g.tat.lock().unwrap().len(), 1);
    }
}
