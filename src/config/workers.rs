//! The background workers' settings (config `reconcile:` and `webhooks:`): kept here, below
//! the workers, because the workers read the live config that holds them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::channel::ChannelSettings;
use crate::defaults::{
    DEFAULT_PER_SHOP_CONCURRENCY, DEFAULT_RECONCILE_CONCURRENCY, DEFAULT_RECONCILE_TIERS,
    DEFAULT_WEBHOOK_SCHEDULE, DEFAULT_WEBHOOK_TIMEOUT, PG_LEASE_MARGIN,
};
use crate::store::StoreSettings;

/// How shop webhooks are delivered (config `webhooks:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
    pub per_shop_concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            schedule: DEFAULT_WEBHOOK_SCHEDULE.to_vec(),
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            per_shop_concurrency: DEFAULT_PER_SHOP_CONCURRENCY,
        }
    }
}

/// Until an order is this old, check it this often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    pub until: Duration,
    pub every: Duration,
}

/// [`DEFAULT_RECONCILE_TIERS`] as tiers.
pub const DEFAULT_TIERS: [Tier; 3] = [
    tier(DEFAULT_RECONCILE_TIERS[0]),
    tier(DEFAULT_RECONCILE_TIERS[1]),
    tier(DEFAULT_RECONCILE_TIERS[2]),
];

const fn tier((until, every): (Duration, Duration)) -> Tier {
    Tier { until, every }
}

/// Config `reconcile:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Ascending `until`; never empty.
    pub tiers: Vec<Tier>,
    pub concurrency: usize,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            tiers: DEFAULT_TIERS.to_vec(),
            concurrency: DEFAULT_RECONCILE_CONCURRENCY,
        }
    }
}

impl ReconcileSettings {
    /// The next check of an order still open (a payment `pending` / `unknown`, a refund
    /// `pending` / `abnormal`), created at `created_at`, after one at `now`: by its tier,
    /// never later than `expires_at` while that is ahead; after the last tier, the expiry
    /// while it is ahead, else the last tier's interval. Never none: an open order dropped
    /// from the schedule (an open breaker at its expiry, a refund past a day) would never be
    /// settled, whatever the provider says later.
    pub fn next_check(&self, created_at: i64, now: i64, expires_at: Option<i64>) -> i64 {
        let age = Duration::from_millis((now - created_at).max(0) as u64);
        let by_tier = self
            .tiers
            .iter()
            .find(|t| age < t.until)
            .map(|t| now + t.every.as_millis() as i64);
        match expires_at {
            Some(exp) if exp > now => by_tier.map_or(exp, |t| t.min(exp)),
            _ => by_tier.unwrap_or_else(|| now + self.last_every()),
        }
    }

    /// The last tier's interval: how often an order past every tier is checked.
    pub fn last_every(&self) -> i64 {
        self.tiers
            .last()
            .map_or(DEFAULT_TIERS[DEFAULT_TIERS.len() - 1].every, |t| t.every)
            .as_millis() as i64
    }

    /// The first check of an order: one `every` of the first tier after its creation.
    pub fn first_check(&self, created_at: i64) -> i64 {
        created_at + self.tiers.first().map_or(0, |t| t.every.as_millis() as i64)
    }
}

/// Why a shared store's `lease` is too short for this work, if it is. A claim that runs out
/// while its holder still works lets a second instance do the same work alongside: a webhook
/// sent twice, a channel queried twice. So the lease must outlast one delivery or one channel
/// call with its retries, and the write of its outcome ([`PG_LEASE_MARGIN`]).
pub fn lease_shortfall(
    store: &StoreSettings,
    webhooks: &WebhookSettings,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
) -> Option<String> {
    let StoreSettings::Postgres { lease, .. } = store else {
        return None;
    };
    let (what, took) = std::iter::once(("webhooks.timeout".to_string(), webhooks.timeout))
        .chain(
            channels
                .iter()
                .map(|(name, c)| (format!("channels.{name}.timeout"), c.timeout)),
        )
        .max_by_key(|(_, d)| *d)?;
    (*lease < took + PG_LEASE_MARGIN).then(|| {
        format!(
            "{lease:?} must be at least {PG_LEASE_MARGIN:?} longer than {what} ({took:?}): work still running when its claim runs out would be done twice"
        )
    })
}
