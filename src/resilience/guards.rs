//! The guards around calls: rate limits (GCRA, [`super::gcra`]) inbound per shop or per merchant and
//! outbound per channel, and each channel's circuit breaker and retry budget.
//!
//! Their state lives in [`Resilience`], which outlives config versions: a reload that keeps a
//! limit's name and rate keeps its state (a reload is no way around a limit), and a channel
//! keeps its breaker and budget across reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::breaker::{Breaker, Outcome};
use super::budget::RetryBudget;
use super::gcra::{admit_all_indexed, Gcra};
use super::shared::{RedisError, RedisSettings, SharedCheck, SharedLimits};
use super::RateSpec;

/// An inbound limit (config `limits:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitSettings {
    pub name: String,
    pub key: LimitKey,
    pub rate: RateSpec,
    pub scope: LimitScope,
}

/// Whose requests a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitScope {
    /// This instance's (the default).
    #[default]
    Local,
    /// Every instance's, through Redis ([`super::shared`]); the local limiter at the same
    /// rate stays in front as a cheap first filter.
    Global,
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

type Keyed = Gcra;
/// The inbound limits of the serving config, each with its limiter.
type InboundLimits = Arc<Vec<(LimitSettings, Arc<Keyed>)>>;

/// Every limiter of the process, by name, and the `rate_limited_total` counter.
pub struct Resilience {
    pool: Mutex<HashMap<String, (RateSpec, Arc<Keyed>)>>,
    /// Swapped whole on reload; requests take a cheap `Arc` clone.
    inbound: Mutex<InboundLimits>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
    /// Redis for `scope: global` limits, when configured.
    shared: Mutex<Option<Arc<SharedLimits>>>,
    shared_up: IntGauge,
    rejected: IntCounterVec,
    circuit_open: IntGaugeVec,
    budget_exhausted: IntCounterVec,
    /// Every channel's health window ([`super::health`]), kept across reloads like breakers.
    health: Arc<super::Health>,
}

impl Resilience {
    pub fn new(registry: &Registry) -> prometheus::Result<Resilience> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "payroute_rate_limited_total",
                "Requests refused by a rate limit.",
            ),
            &["limit"],
        )?;
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "payroute_circuit_open",
                "1 while a channel's circuit breaker is open.",
            ),
            &["channel"],
        )?;
        let budget_exhausted = IntCounterVec::new(
            Opts::new(
                "payroute_retry_budget_exhausted_total",
                "Retries not made because the channel's retry budget was spent.",
            ),
            &["channel"],
        )?;
        let shared_up = IntGauge::new(
            "payroute_shared_limits_up",
            "1 while Redis answers for the global limits (or none are configured), 0 while \
             they fail open.",
        )?;
        shared_up.set(1);
        registry.register(Box::new(shared_up.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(circuit_open.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        Ok(Resilience {
            pool: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Arc::new(Vec::new())),
            breakers: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            shared: Mutex::new(None),
            shared_up,
            rejected,
            circuit_open,
            budget_exhausted,
            health: Arc::new(super::Health::new(registry)?),
        })
    }

    /// The channels' health windows.
    pub fn health(&self) -> &Arc<super::Health> {
        &self.health
    }

    /// The limiter called `name` at `rate`: the existing one if the rate is unchanged.
    fn limiter(&self, name: &str, rate: RateSpec) -> Arc<Keyed> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        match pool.get(name) {
            Some((r, l)) if *r == rate => l.clone(),
            _ => {
                let l = Arc::new(Gcra::new(rate));
                pool.insert(name.to_string(), (rate, l.clone()));
                l
            }
        }
    }

    /// Installs the inbound limits of a (re)loaded config, and the Redis its global limits
    /// share (kept, with its connection, while its settings are unchanged).
    pub fn configure(
        &self,
        limits: &[LimitSettings],
        redis: Option<&RedisSettings>,
    ) -> Result<(), RedisError> {
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            match redis {
                None => {
                    *shared = None;
                    self.shared_up.set(1);
                }
                Some(r) if shared.as_ref().is_some_and(|s| s.settings() == r) => {}
                Some(r) => {
                    *shared = Some(Arc::new(SharedLimits::new(
                        r.clone(),
                        self.shared_up.clone(),
                    )?));
                }
            }
        }
        // Each limit's series starts at 0 (and a new one's on reload): an alert on its rate
        // sees the first refusal instead of a series that appears with it.
        for l in limits {
            self.rejected.with_label_values(&[l.name.as_str()]);
        }
        let built: Vec<_> = limits
            .iter()
            .map(|l| {
                (
                    l.clone(),
                    self.limiter(&format!("inbound:{}", l.name), l.rate),
                )
            })
            .collect();
        *self.inbound.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(built);
        Ok(())
    }

    /// Takes one request from every inbound limit that applies to this shop and merchant —
    /// from all of them or, when one refuses, from none. Global limits are asked of Redis
    /// only once every local limiter has let the request through.
    ///
    /// # Limits
    /// A request the local limiters let through and Redis then refuses has spent its local
    /// cells: the local limit is a filter in front, the global one the rule.
    pub async fn check_inbound(&self, shop: &str, merchant: &str) -> Result<(), RateLimited> {
        let inbound = self
            .inbound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let checks: Vec<(&Gcra, &str)> = inbound
            .iter()
            .map(|(settings, limiter)| {
                let key = match settings.key {
                    LimitKey::Merchant => merchant,
                    LimitKey::Shop => shop,
                };
                (limiter.as_ref(), key)
            })
            .collect();
        let refused = |i: usize, retry_after| {
            let name = inbound[i].0.name.as_str();
            self.rejected.with_label_values(&[name]).inc();
            RateLimited {
                limit: name.to_string(),
                retry_after,
            }
        };
        admit_all_indexed(&checks).map_err(|(i, wait)| refused(i, wait))?;
        let Some(shared) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let (global, shared_checks): (Vec<usize>, Vec<SharedCheck>) = inbound
            .iter()
            .zip(&checks)
            .enumerate()
            .filter(|(_, ((settings, _), _))| settings.scope == LimitScope::Global)
            .map(|(i, ((settings, limiter), (_, key)))| {
                let check = SharedCheck {
                    limit: settings.name.as_str(),
                    key,
                    emission: limiter.emission(),
                    tolerance: limiter.tolerance(),
                };
                (i, check)
            })
            .unzip();
        shared
            .admit_all(&shared_checks)
            .await
            .map_err(|(j, wait)| refused(global[j], wait))
    }

    /// The guard of a channel: its limit (if any), breaker and retry budget.
    pub fn channel(self: &Arc<Self>, channel: &str, rate: Option<RateSpec>) -> ChannelGuard {
        let name = format!("channel:{channel}");
        // Its series start at 0 when the channel is built (at start and on every reload).
        if rate.is_some() {
            self.rejected.with_label_values(&[name.as_str()]);
        }
        self.budget_exhausted.with_label_values(&[channel]);
        let breaker = {
            let mut b = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
            b.entry(channel.to_string())
                .or_insert_with(|| {
                    Arc::new(Breaker::new(
                        self.circuit_open.with_label_values(&[channel]),
                    ))
                })
                .clone()
        };
        let budget = {
            let mut b = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
            b.entry(channel.to_string()).or_default().clone()
        };
        ChannelGuard {
            limit: rate.map(|r| self.limiter(&name, r)),
            breaker,
            budget,
            health: self.health.channel(channel),
            resilience: self.clone(),
            channel: channel.to_string(),
            name,
        }
    }
}

/// Why a guard refused a call before anything was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Limited(#[from] RateLimited),
    #[error("circuit breaker open; next probe in {0:?}")]
    CircuitOpen(Duration),
}

/// One channel's limit, breaker and retry budget.
pub struct ChannelGuard {
    limit: Option<Arc<Keyed>>,
    breaker: Arc<Breaker>,
    budget: Arc<RetryBudget>,
    health: Arc<super::ChannelHealth>,
    resilience: Arc<Resilience>,
    channel: String,
    name: String,
}

impl ChannelGuard {
    /// Before a call: the rate limit, then the breaker.
    pub fn admit(&self) -> Result<(), Refused> {
        if let Some(limiter) = &self.limit {
            limiter.check("").map_err(|retry_after| {
                self.resilience
                    .rejected
                    .with_label_values(&[self.name.as_str()])
                    .inc();
                RateLimited {
                    limit: self.name.clone(),
                    retry_after,
                }
            })?;
        }
        self.breaker.admit().map_err(Refused::CircuitOpen)?;
        self.budget.record_call();
        Ok(())
    }

    /// After a call that was admitted.
    pub fn record(&self, outcome: Outcome) {
        self.breaker.record(outcome);
    }

    /// Takes a retry from the budget; counts the refusal when it is spent.
    pub fn try_retry(&self) -> bool {
        let ok = self.budget.try_retry();
        if !ok {
            self.resilience
                .budget_exhausted
                .with_label_values(&[self.channel.as_str()])
                .inc();
        }
        ok
    }

    pub fn breaker_state(&self) -> &'static str {
        self.breaker.state()
    }

    /// The channel's health window (create attempts).
    pub fn health(&self) -> &super::ChannelHealth {
        &self.health
    }

    /// How long until the open breaker admits a probe; `None` unless it is open.
    pub fn breaker_reopens_in(&self) -> Option<Duration> {
        self.breaker.reopens_in()
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
            scope: LimitScope::Local,
        }
    }

    #[tokio::test]
    async fn limits_apply_per_key_and_survive_an_unchanged_reload() {
        let resilience = Resilience::new(&Registry::new()).unwrap();
        resilience
            .configure(&[settings("per-merchant", LimitKey::Merchant, 2, 2)], None)
            .unwrap();
        assert!(resilience.check_inbound("s", "m1").await.is_ok());
        assert!(resilience.check_inbound("s", "m1").await.is_ok());
        let err = resilience.check_inbound("s", "m1").await.unwrap_err();
        assert_eq!(err.limit, "per-merchant");
        assert!(err.retry_after > Duration::from_secs(1000), "{err:?}");
        assert!(
            resilience.check_inbound("s", "m2").await.is_ok(),
            "another merchant has its own budget"
        );
        // Same limit again: still exhausted. A new rate: a fresh limiter.
        resilience
            .configure(&[settings("per-merchant", LimitKey::Merchant, 2, 2)], None)
            .unwrap();
        assert!(resilience.check_inbound("s", "m1").await.is_err());
        resilience
            .configure(&[settings("per-merchant", LimitKey::Merchant, 3, 3)], None)
            .unwrap();
        assert!(resilience.check_inbound("s", "m1").await.is_ok());
    }

    #[tokio::test]
    async fn shop_limits_key_by_shop() {
        let resilience = Resilience::new(&Registry::new()).unwrap();
        resilience
            .configure(&[settings("per-shop", LimitKey::Shop, 1, 1)], None)
            .unwrap();
        assert!(resilience.check_inbound("a", "m1").await.is_ok());
        assert!(resilience.check_inbound("a", "m2").await.is_err());
        assert!(resilience.check_inbound("b", "m1").await.is_ok());
    }
}
