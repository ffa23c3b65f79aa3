//! The background workers' settings: `reconcile:` tiers and `webhooks:` delivery, the rule
//! that a shop whose merchants can be paid has a webhook to hear of it, and that the shared
//! store's claims on their work outlast it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Errors;
use crate::channel::ChannelSettings;
use crate::config::file::FileConfig;
use crate::config::workers::{lease_shortfall, ReconcileSettings, Tier, WebhookSettings};
use crate::resilience::parse_duration;
use crate::store::StoreSettings;

/// Bounds on a worker's concurrency.
const MAX_CONCURRENCY: usize = 256;

pub(super) fn reconcile(f: &FileConfig, errs: &mut Errors) -> ReconcileSettings {
    let mut settings = ReconcileSettings::default();
    let Some(r) = &f.reconcile else {
        return settings;
    };
    if let Some(c) = concurrency(r.concurrency, "reconcile.concurrency", errs) {
        settings.concurrency = c;
    }
    if let Some(tiers) = &r.tiers {
        if tiers.is_empty() {
            errs.push(
                "reconcile.tiers",
                "reconcile.tiers: needs at least one tier".into(),
            );
            return settings;
        }
        let mut built = Vec::new();
        for (i, t) in tiers.iter().enumerate() {
            let at = format!("reconcile.tiers[{i}]");
            let until = duration(&t.until, &format!("{at}.until"), errs);
            let every = duration(&t.every, &format!("{at}.every"), errs);
            let (Some(until), Some(every)) = (until, every) else {
                continue;
            };
            if every.is_zero() || every > until {
                errs.push(
                    &at,
                    format!("{at}: every must be above zero and at most until"),
                );
            }
            if built.last().is_some_and(|prev: &Tier| prev.until >= until) {
                errs.push(&at, format!("{at}: until must grow from tier to tier"));
            }
            built.push(Tier { until, every });
        }
        settings.tiers = built;
    }
    settings
}

pub(super) fn webhooks(f: &FileConfig, errs: &mut Errors) -> WebhookSettings {
    let mut settings = WebhookSettings::default();
    let Some(w) = &f.webhooks else {
        return settings;
    };
    if let Some(schedule) = &w.schedule {
        settings.schedule = schedule
            .iter()
            .enumerate()
            .filter_map(|(i, d)| duration(d, &format!("webhooks.schedule[{i}]"), errs))
            .collect();
    }
    if let Some(t) = &w.timeout {
        match duration(t, "webhooks.timeout", errs) {
            Some(d) if d.is_zero() => errs.push(
                "webhooks.timeout",
                "webhooks.timeout: must be above zero".into(),
            ),
            Some(d) => settings.timeout = d,
            None => {}
        }
    }
    if let Some(c) = concurrency(
        w.per_shop_concurrency,
        "webhooks.per_shop_concurrency",
        errs,
    ) {
        settings.per_shop_concurrency = c;
    }
    settings
}

/// A shop with merchants must be told of their payments: it needs a webhook.
pub(super) fn shops_have_webhooks(f: &FileConfig, errs: &mut Errors) {
    for (i, s) in f.shops.iter().enumerate() {
        if s.webhook.is_none() && !s.merchants.is_empty() {
            let at = format!("shops[{i}]");
            errs.push(
                &at,
                format!(
                    "{at} {:?}: webhook is required: its merchants can be paid, and payroute tells the shop of every payment and refund through it",
                    s.id
                ),
            );
        }
    }
}

fn duration(value: &str, path: &str, errs: &mut Errors) -> Option<Duration> {
    parse_duration(value)
        .map_err(|e| errs.push(path, format!("{path}: {e}")))
        .ok()
}

fn concurrency(value: Option<usize>, path: &str, errs: &mut Errors) -> Option<usize> {
    let v = value?;
    if (1..=MAX_CONCURRENCY).contains(&v) {
        Some(v)
    } else {
        errs.push(path, format!("{path}: must be 1 to {MAX_CONCURRENCY}"));
        None
    }
}

/// `store.lease` must outlast the work its claims cover (see [`lease_shortfall`]).
pub(super) fn lease_outlasts_the_work(
    store: &StoreSettings,
    webhooks: &WebhookSettings,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    errs: &mut Errors,
) {
    if let Some(problem) = lease_shortfall(store, webhooks, channels) {
        errs.push("store.lease", format!("store.lease: {problem}"));
    }
}
