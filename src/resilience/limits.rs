//! Rate limits (governor's GCRA): inbound per shop or per merchant, outbound per channel.
//!
//! Limiter state lives in [`Limiters`], which outlives config versions: a reload that keeps a
//! limit's name and rate keeps its state, so a reload is no way around a limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::{IntCounterVec, Opts, Registry};

use super::RateSpec;

/// An inbound limit (config `limits:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    pub name: String,
    pub key: LimitKey,
    pub rate: RateSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Merchant,
    Shop,
}

/// A request over a limit: which one, and when to come back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate limit {limit:?} reached; retry after {retry_after:?}")]
pub struct RateLimited {
    pub limit: String,
    pub retry_after: Duration,
}

type Keyed = DefaultKeyedRateLimiter<String>;

/// Every limiter of the process, by name, and the `rate_limited_total` counter.
pub struct Limiters {
    pool: Mutex<HashMap<String, (RateSpec, Arc<Keyed>)>>,
    inbound: Mutex<Vec<(LimitSettings, Arc<Keyed>)>>,
    rejected: IntCounterVec,
    clock: DefaultClock,
}

fn quota(rate: RateSpec) -> Quota {
    let per_cell = (rate.per / rate.count).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per_cell)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl Limiters {
    pub fn new(registry: &Registry) -> prometheus::Result<Limiters> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "payroute_rate_limited_total",
                "Requests refused by a rate limit.",
            ),
            &["limit"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Limiters {
            pool: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Vec::new()),
            rejected,
            clock: DefaultClock::default(),
        })
    }

    /// The limiter called `name` at `rate`: the existing one if the rate is unchanged.
    fn limiter(&self, name: &str, rate: RateSpec) -> Arc<Keyed> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        match pool.get(name) {
            Some((r, l)) if *r == rate => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::keyed(quota(rate)));
                pool.insert(name.to_string(), (rate, l.clone()));
                l
            }
        }
    }

    /// Installs the inbound limits of a (re)loaded config.
    pub fn configure(&self, limits: &[LimitSettings]) {
        let built = limits
            .iter()
            .map(|l| {
                (
                    l.clone(),
                    self.limiter(&format!("inbound:{}", l.name), l.rate),
                )
            })
            .collect();
        *self.inbound.lock().unwrap_or_else(|p| p.into_inner()) = built;
    }

    /// Takes one request from every inbound limit that applies to this shop and merchant.
    pub fn check_inbound(&self, shop: &str, merchant: &str) -> Result<(), RateLimited> {
        let inbound = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (settings, limiter) in &inbound {
            let key = match settings.key {
                LimitKey::Merchant => merchant,
                LimitKey::Shop => shop,
            };
            if let Err(not_until) = limiter.check_key(&key.to_string()) {
                self.rejected
                    .with_label_values(&[settings.name.as_str()])
                    .inc();
                return Err(RateLimited {
                    limit: settings.name.clone(),
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        Ok(())
    }

    /// The outbound limiter of a channel, if it has a `limit`.
    pub fn channel(
        self: &Arc<Self>,
        channel: &str,
        rate: Option<RateSpec>,
    ) -> Option<ChannelLimit> {
        let rate = rate?;
        let name = format!("channel:{channel}");
        Some(ChannelLimit {
            limiter: self.limiter(&name, rate),
            limiters: self.clone(),
            name,
        })
    }
}

/// One channel's outbound limit.
pub struct ChannelLimit {
    limiter: Arc<Keyed>,
    limiters: Arc<Limiters>,
    name: String,
}

impl ChannelLimit {
    pub fn check(&self) -> Result<(), RateLimited> {
        self.limiter.check_key(&String::new()).map_err(|not_until| {
            self.limiters
                .rejected
                .with_label_values(&[self.name.as_str()])
                .inc();
            RateLimited {
                limit: self.name.clone(),
                retry_after: not_until.wait_time_from(self.limiters.clock.now()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str, key: LimitKey, count: u32, burst: u32) -> LimitSettings {
        LimitSettings {
            name: name.into(),
            key,
            rate: RateSpec {
                count,
                per: Duration::from_secs(3600),
                burst,
            },
        }
    }

    #[test]
    fn limits_apply_per_key_and_survive_an_unchanged_reload() {
        let limiters = Limiters::new(&Registry::new()).unwrap();
        limiters.configure(&[settings("per-merchant", LimitKey::Merchant, 2, 2)]);
        assert!(limiters.check_inbound("s", "m1").is_ok());
        assert!(limiters.check_inbound("s", "m1").is_ok());
        let err = limiters.check_inbound("s", "m1").unwrap_err();
        assert_eq!(err.limit, "per-merchant");
        assert!(err.retry_after > Duration::from_secs(1000), "{err:?}");
        assert!(
            limiters.check_inbound("s", "m2").is_ok(),
            "another merchant has its own budget"
        );
        // Same limit again: still exhausted. A new rate: a fresh limiter.
        limiters.configure(&[settings("per-merchant", LimitKey::Merchant, 2, 2)]);
        assert!(limiters.check_inbound("s", "m1").is_err());
        limiters.configure(&[settings("per-merchant", LimitKey::Merchant, 3, 3)]);
        assert!(limiters.check_inbound("s", "m1").is_ok());
    }

    #[test]
    fn shop_limits_key_by_shop() {
        let limiters = Limiters::new(&Registry::new()).unwrap();
        limiters.configure(&[settings("per-shop", LimitKey::Shop, 1, 1)]);
        assert!(limiters.check_inbound("a", "m1").is_ok());
        assert!(limiters.check_inbound("a", "m2").is_err());
        assert!(limiters.check_inbound("b", "m1").is_ok());
    }
}
