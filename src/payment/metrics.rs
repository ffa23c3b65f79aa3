//! What the payment layer counts: outcomes, routing decisions, estimated fees, refunds,
//! refusals at an unheld account, late payments; every known series starts at 0.

use prometheus::{IntCounterVec, Opts, Registry};

use super::late;
use crate::domain::Method;
use crate::store::PaymentRecord;

/// Every `outcome` of `payroute_payments_total`: a new one must be listed here to start at 0.
const PAYMENT_OUTCOMES: [&str; 9] = [
    "created",
    "replayed",
    "failed_over",
    "rejected",
    "unavailable",
    "error",
    "timeout",
    "closed",
    "succeeded",
];
/// The operations on a bound account (`payroute_account_refusals_total{operation}`).
const BOUND_OPERATIONS: [&str; 3] = ["query", "close", "refund"];

pub struct PaymentMetrics {
    pub(super) payments: IntCounterVec,
    pub(super) decisions: IntCounterVec,
    pub(super) fees: IntCounterVec,
    pub(super) refunds: IntCounterVec,
    pub(super) refused: IntCounterVec,
    pub(super) skips: IntCounterVec,
    pub(super) late: late::LateMetrics,
}

impl PaymentMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<PaymentMetrics> {
        let payments = IntCounterVec::new(
            Opts::new(
                "payroute_payments_total",
                "Payment outcomes by channel and method.",
            ),
            &["channel", "method", "outcome"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "payroute_route_decisions_total",
                "Routing decisions by rule and channel.",
            ),
            &["rule", "channel"],
        )?;
        let fees = IntCounterVec::new(
            Opts::new(
                "payroute_fees_estimated_total",
                "Estimated channel fees of succeeded payments, in minor units (fen), from fee_rate.",
            ),
            &["channel"],
        )?;
        let refunds = IntCounterVec::new(
            Opts::new(
                "payroute_refunds_total",
                "Refunds reaching a state (succeeded, failed, abnormal: money left but did not arrive, ops must act).",
            ),
            &["channel", "outcome"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "payroute_account_refusals_total",
                "Operations refused because no live channel holds the account the order is bound to.",
            ),
            &["channel", "operation"],
        )?;
        let skips = IntCounterVec::new(
            Opts::new(
                "payroute_route_skipped_total",
                "Candidates passed over before anything was sent to them (eliminated, drained, quota, circuit, limit).",
            ),
            &["rule", "channel", "reason"],
        )?;
        for m in [&payments, &decisions, &fees, &refunds, &refused, &skips] {
            registry.register(Box::new(m.clone()))?;
        }
        Ok(PaymentMetrics {
            payments,
            decisions,
            fees,
            refunds,
            refused,
            skips,
            late: late::LateMetrics::new(registry)?,
        })
    }

    /// Every series a config can produce starts at 0 — each rule's decisions, and for each
    /// channel its fees, its methods' outcomes, its refunds' final states and its account
    /// refusals — so that a panel shows 0 and a rate() alert sees the first event rather
    /// than a series born with it. Called at start and with every reloaded config (a new
    /// channel gets its own). A route decision is counted with the channel a rule chose
    /// first (its `to`, or each of its `split`), never a fallback: those are the pairs.
    pub(super) fn start_at_zero(&self, config: &crate::config::Config) {
        for rule in config.rules.rules() {
            let chosen: Vec<&str> = match &rule.target {
                crate::routing::Target::To(c) => vec![c.as_str()],
                crate::routing::Target::Split { choices, .. } => {
                    choices.iter().map(|(c, _)| c.as_str()).collect()
                }
                crate::routing::Target::Choose(c) => c.from.iter().map(String::as_str).collect(),
            };
            for channel in chosen {
                self.decisions
                    .with_label_values(&[rule.name.as_str(), channel]);
            }
        }
        for family in crate::domain::Family::ALL {
            if let Some(channel) = config.rules.default_for(family) {
                self.decisions
                    .with_label_values(&[crate::routing::DEFAULT_RULE, channel]);
            }
        }
        for (name, channel) in &config.channels {
            let name = name.as_str();
            self.fees.with_label_values(&[name]);
            for method in Method::ALL
                .into_iter()
                .filter(|m| m.family() == channel.family())
            {
                for outcome in PAYMENT_OUTCOMES {
                    self.payments
                        .with_label_values(&[name, method.as_str(), outcome]);
                }
            }
            for status in crate::domain::RefundStatus::ALL
                .into_iter()
                .filter(|s| *s != crate::domain::RefundStatus::Pending)
            {
                self.refunds.with_label_values(&[name, status.as_str()]);
            }
            for operation in BOUND_OPERATIONS {
                self.refused.with_label_values(&[name, operation]);
            }
        }
    }

    pub(super) fn skipped(&self, rule: &str, channel: &str, reason: crate::routing::SkipReason) {
        self.skips
            .with_label_values(&[rule, channel, reason.as_str()])
            .inc();
    }

    pub(super) fn outcome(&self, p: &PaymentRecord, outcome: &str) {
        self.payments
            .with_label_values(&[p.channel.as_str(), p.method.as_str(), outcome])
            .inc();
    }
}
