//! The rules engine: which channel takes a payment.
//!
//! Pure and synchronous: no I/O, no clock (the caller passes China time in), no knowledge of
//! HTTP clients or channels beyond their names. Config validates rules against the channel
//! list before building a [`Rules`]; this module trusts what it is given.
//!
//! # Cost
//! Rules that name merchants are indexed by merchant, so a decision only looks at the rules
//! of that merchant plus the rules that name no merchant, merged in file order. With one
//! rule per merchant, 10,000 rules cost about what 10 do (see `benches/routing.rs`).

pub mod adaptive;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};

use crate::domain::{Family, FeeRate, Method};

use adaptive::Placed;
pub use adaptive::{
    By, Choose, HealthPolicy, NoSignals, Sample, Score, Signals, SkipReason, Why, PPM,
};

/// What the rules look at: the facts of one payment request.
#[derive(Clone, Debug)]
pub struct PaymentFacts<'a> {
    pub merchant: &'a str,
    pub shop: &'a str,
    pub method: Method,
    pub amount: u64,
    pub currency: &'a str,
    pub metadata: &'a BTreeMap<String, String>,
    /// Feeds the split hash, so the same order always lands on the same channel.
    pub out_trade_no: &'a str,
    /// Minutes since midnight in China time (UTC+8), for `hours`.
    pub china_minute: u16,
}

/// A rule's `when`: every present condition must hold.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    pub merchants: Option<HashSet<String>>,
    pub shops: Option<HashSet<String>>,
    /// Method bit set ([`Method::bit`]). Already narrowed by config to the methods the rule's
    /// channels can serve, so a rule never sends a method to a channel of another family.
    pub methods: u16,
    pub amount_min: Option<u64>,
    pub amount_max: Option<u64>,
    pub currencies: Option<Vec<String>>,
    pub metadata: Vec<(String, Vec<String>)>,
    pub hours: Option<HoursRange>,
}

/// A daily window in China time, `[start, end)` in minutes; `start > end` wraps midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoursRange {
    pub start: u16,
    pub end: u16,
}

impl HoursRange {
    /// Parses `08:00-23:00`; `24:00` is allowed as an end.
    pub fn parse(s: &str) -> Result<HoursRange, String> {
        let bad = || format!("{s:?} is not a range like \"08:00-23:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str, allow_24: bool| -> Option<u16> {
            match t.trim() {
                "24:00" if allow_24 => Some(24 * 60),
                t => parse_hhmm(t),
            }
        };
        let start = minute(a, false).ok_or_else(bad)?;
        let end = minute(b, true).ok_or_else(bad)?;
        if start == end {
            return Err(format!("{s:?} is empty (start equals end)"));
        }
        Ok(HoursRange { start, end })
    }

    pub fn contains(self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// `HH:MM` (two digits each) to minutes since midnight.
pub fn parse_hhmm(t: &str) -> Option<u16> {
    let (h, m) = t.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Where a matching rule sends the payment.
#[derive(Clone, Debug)]
pub enum Target {
    To(String),
    /// Weighted split; `total` is the sum of weights, never 0.
    Split {
        choices: Vec<(String, u32)>,
        total: u64,
    },
    /// Ranked per payment by health and fee ([`adaptive`]).
    Choose(Choose),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub when: Conditions,
    pub target: Target,
    /// Used only when nothing reached the chosen channel.
    pub fallback: Vec<String>,
    /// This rule's elimination thresholds, when it overrides `routing.health`.
    pub health: Option<HealthPolicy>,
}

impl Rule {
    /// Every channel this rule can send to, fallbacks included.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        let primary: Vec<&str> = match &self.target {
            Target::To(c) => vec![c.as_str()],
            Target::Split { choices, .. } => choices.iter().map(|(c, _)| c.as_str()).collect(),
            Target::Choose(c) => c.from.iter().map(String::as_str).collect(),
        };
        primary
            .into_iter()
            .chain(self.fallback.iter().map(String::as_str))
    }

    /// Whether the payment meets every condition. Allocation-free: this is the hot path.
    pub fn matches(&self, f: &PaymentFacts) -> bool {
        self.first_failure(f).is_none()
    }

    /// The first condition the payment fails, without formatting anything.
    fn first_failure(&self, f: &PaymentFacts) -> Option<Failed> {
        let w = &self.when;
        if w.merchants
            .as_ref()
            .is_some_and(|ms| !ms.contains(f.merchant))
        {
            return Some(Failed::Merchant);
        }
        if w.shops.as_ref().is_some_and(|ss| !ss.contains(f.shop)) {
            return Some(Failed::Shop);
        }
        if w.methods & f.method.bit() == 0 {
            return Some(Failed::Method);
        }
        if w.amount_min.is_some_and(|min| f.amount < min) {
            return Some(Failed::AmountMin);
        }
        if w.amount_max.is_some_and(|max| f.amount > max) {
            return Some(Failed::AmountMax);
        }
        if w.currencies
            .as_ref()
            .is_some_and(|cs| !cs.iter().any(|c| c == f.currency))
        {
            return Some(Failed::Currency);
        }
        for (i, (key, values)) in w.metadata.iter().enumerate() {
            if !f.metadata.get(key).is_some_and(|v| values.contains(v)) {
                return Some(Failed::Metadata(i));
            }
        }
        if w.hours.is_some_and(|h| !h.contains(f.china_minute)) {
            return Some(Failed::Hours);
        }
        None
    }

    /// Why this rule does not match, or `None` when it does (for explain).
    fn mismatch(&self, f: &PaymentFacts) -> Option<String> {
        let w = &self.when;
        Some(match self.first_failure(f)? {
            Failed::Merchant => format!(
                "merchant {:?} not in {}",
                f.merchant,
                list(w.merchants.as_ref()?)
            ),
            Failed::Shop => format!("shop {:?} not in {}", f.shop, list(w.shops.as_ref()?)),
            Failed::Method => {
                let names: Vec<&str> = Method::from_bits(w.methods).map(Method::as_str).collect();
                format!("method {} not in [{}]", f.method, names.join(", "))
            }
            Failed::AmountMin => format!("amount {} below min {}", f.amount, w.amount_min?),
            Failed::AmountMax => format!("amount {} above max {}", f.amount, w.amount_max?),
            Failed::Currency => format!(
                "currency {} not in [{}]",
                f.currency,
                w.currencies.as_ref()?.join(", ")
            ),
            Failed::Metadata(i) => {
                let (key, values) = &w.metadata[i];
                match f.metadata.get(key) {
                    None => format!("metadata.{key} missing"),
                    Some(v) => format!("metadata.{key} {v:?} not in [{}]", values.join(", ")),
                }
            }
            Failed::Hours => {
                let h = w.hours?;
                format!(
                    "China time {} outside {}-{}",
                    hhmm(f.china_minute),
                    hhmm(h.start),
                    hhmm(h.end)
                )
            }
        })
    }
}

/// Which condition failed; rendered into words only when explaining.
#[derive(Clone, Copy, Debug)]
enum Failed {
    Merchant,
    Shop,
    Method,
    AmountMin,
    AmountMax,
    Currency,
    Metadata(usize),
    Hours,
}

fn list(set: &HashSet<String>) -> String {
    let mut v: Vec<&str> = set.iter().map(String::as_str).collect();
    v.sort_unstable();
    if v.len() > 5 {
        let n = v.len() - 5;
        v.truncate(5);
        return format!("[{}, … {n} more]", v.join(", "));
    }
    format!("[{}]", v.join(", "))
}

fn hhmm(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// One channel to try, and why it is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick<'r> {
    pub channel: &'r str,
    pub why: Why,
}

/// A channel passed over before anything was sent to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skip<'r> {
    pub channel: &'r str,
    pub reason: SkipReason,
}

/// The outcome of routing one payment: the channels to try, in order — the first takes the
/// order, each next one only while nothing was sent to those before it — and the channels
/// passed over (drained, eliminated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'r> {
    /// The matched rule, or `None` when the family default took it.
    pub rule: Option<&'r str>,
    /// Empty when every candidate was passed over (all drained, say).
    pub candidates: Vec<Pick<'r>>,
    pub skipped: Vec<Skip<'r>>,
}

/// The rule label of a payment no rule matched (its family's default channel took it).
pub const DEFAULT_RULE: &str = "default";

impl Decision<'_> {
    /// The rule label used in metrics and payment records.
    pub fn rule_label(&self) -> &str {
        self.rule.unwrap_or(DEFAULT_RULE)
    }

    /// The channel tried first, if any is left.
    pub fn channel(&self) -> Option<&str> {
        self.candidates.first().map(|p| p.channel)
    }
}

/// No channel may take the payment: no rule matched and the method's family has no default,
/// or the route reaches another merchant's own account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRoute {
    pub method: Method,
    pub family: Family,
    /// The channel (the chosen one or one of its fallbacks) that is the own account of
    /// merchants other than the payment's. Config validation refuses such rules, so this is
    /// the last line of defence, not the mechanism.
    pub not_owner: Option<String>,
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.not_owner {
            // The channel is not named: it is another merchant's, and this goes to a shop.
            Some(_) => write!(
                f,
                "no channel serves {}: the route leads to another merchant's own account",
                self.method
            ),
            None => write!(
                f,
                "no channel serves {}: no rule matched and the {} family has no default",
                self.method, self.family
            ),
        }
    }
}

impl std::error::Error for NoRoute {}

/// One candidate of the matched rule as explain shows it: what routing knew of it and what
/// became of it. The payment layer adds what only it knows (quota, circuit).
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateReport<'r> {
    pub channel: &'r str,
    pub sample: Sample,
    pub eliminated: bool,
    pub drained: bool,
    pub fee: u64,
    /// Expected value: success ratio (optimistic under `min_samples`) × (amount − fee).
    pub value: u64,
    /// `Ok(position, why)` in the order tried, or why it was passed over.
    pub verdict: Result<(usize, Why), SkipReason>,
}

/// A dry run: the decision and why each rule before it did not match.
#[derive(Clone, Debug)]
pub struct Explanation<'r> {
    pub decision: Result<Decision<'r>, NoRoute>,
    /// `(rule name, reason)` for every rule in file order before the match.
    pub skipped: Vec<(&'r str, String)>,
    /// Every channel the match could send to, in the order considered.
    pub candidates: Vec<CandidateReport<'r>>,
    /// The matched rule's `choose` ranking, when it has one.
    pub by: Option<By>,
}

impl Explanation<'_> {
    /// Human-readable, one line per rule and per candidate; used by `payroute explain`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, why) in &self.skipped {
            let _ = writeln!(out, "  skipped {name:?}: {why}");
        }
        match &self.decision {
            Ok(d) => {
                let by = match d.rule {
                    Some(r) => format!("rule {r:?}"),
                    None => "the family default".to_string(),
                };
                match d.channel() {
                    Some(c) => {
                        let _ = writeln!(out, "→ channel {c:?} by {by}");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "→ no channel left by {by}: every candidate was passed over"
                        );
                    }
                }
                if d.candidates.len() > 1 {
                    let rest: Vec<&str> = d.candidates[1..].iter().map(|p| p.channel).collect();
                    let _ = writeln!(out, "  then, while nothing was sent: {}", rest.join(", "));
                }
                for c in &self.candidates {
                    let verdict = match c.verdict {
                        Ok((0, why)) => format!("chosen ({})", why.as_str()),
                        Ok((i, why)) => format!("#{} ({})", i + 1, why.as_str()),
                        Err(r) => format!("skipped: {}", r.as_str()),
                    };
                    let health = match c.sample.ratio() {
                        Some(r) => format!("{:.3} of {}", r, c.sample.samples),
                        None => "no samples".to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "  candidate {:?}: {verdict}; health {health}{}{}; fee {}; value {}",
                        c.channel,
                        if c.eliminated { " (eliminated)" } else { "" },
                        if c.drained { "; drained" } else { "" },
                        c.fee,
                        c.value
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "→ no_route: {e}");
                if let Some(ch) = &e.not_owner {
                    let _ = writeln!(out, "  refused channel {ch:?}: not this merchant's own account (its merchants: do not list it)");
                }
            }
        }
        out
    }
}

/// The default `routing.health` thresholds (DESIGN §13).
pub const DEFAULT_HEALTH: HealthPolicy = HealthPolicy {
    min_samples: crate::defaults::HEALTH_MIN_SAMPLES,
    eliminate_below_ppm: crate::defaults::HEALTH_ELIMINATE_BELOW_PPM,
    probe_ppm: crate::defaults::HEALTH_PROBE_PPM,
};

/// The validated rule set.
#[derive(Clone, Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    by_merchant: HashMap<String, Vec<u32>>,
    /// Rules with no `merchant` condition, by position.
    generic: Vec<u32>,
    defaults: HashMap<Family, String>,
    /// Direct-mode channels and the merchants they serve; a channel not here serves all.
    owners: HashMap<String, HashSet<String>>,
    /// `routing.health`: the thresholds of rules that do not set their own.
    health: HealthPolicy,
    /// Each channel's `fee_rate`, for `choose` and explain.
    fees: HashMap<String, FeeRate>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::new(Vec::new(), HashMap::new())
    }
}

impl Rules {
    pub fn new(rules: Vec<Rule>, defaults: HashMap<Family, String>) -> Rules {
        let mut by_merchant: HashMap<String, Vec<u32>> = HashMap::new();
        let mut generic = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.when.merchants {
                Some(ms) => ms
                    .iter()
                    .for_each(|m| by_merchant.entry(m.clone()).or_default().push(i as u32)),
                None => generic.push(i as u32),
            }
        }
        Rules {
            rules,
            by_merchant,
            generic,
            defaults,
            owners: HashMap::new(),
            health: DEFAULT_HEALTH,
            fees: HashMap::new(),
        }
    }

    /// The owners of the direct-mode channels (config `channels.<name>.merchants`): a
    /// decision that would send a payment to another merchant's own account is refused.
    pub fn with_owners(mut self, owners: HashMap<String, HashSet<String>>) -> Rules {
        self.owners = owners;
        self
    }

    /// `routing.health` and the channels' fee rates.
    pub fn with_health(mut self, health: HealthPolicy, fees: HashMap<String, FeeRate>) -> Rules {
        self.health = health;
        self.fees = fees;
        self
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn health(&self) -> &HealthPolicy {
        &self.health
    }

    pub fn default_for(&self, family: Family) -> Option<&str> {
        self.defaults.get(&family).map(String::as_str)
    }

    /// The first matching rule's channels (else the family default), in the order to try
    /// them, after what `signals` says of each.
    pub fn decide(&self, f: &PaymentFacts, signals: &dyn Signals) -> Result<Decision<'_>, NoRoute> {
        for i in self.candidates(f.merchant) {
            let rule = &self.rules[i as usize];
            if rule.matches(f) {
                return self.plan(Some(rule), f, signals);
            }
        }
        self.plan(None, f, signals)
    }

    /// Like [`Rules::decide`], and says why every earlier rule was passed over
    /// (including the rules the merchant index skipped) and what each candidate looked like.
    pub fn explain(&self, f: &PaymentFacts, signals: &dyn Signals) -> Explanation<'_> {
        let mut skipped = Vec::new();
        let mut matched = None;
        for rule in &self.rules {
            match rule.mismatch(f) {
                Some(why) => skipped.push((rule.name.as_str(), why)),
                None => {
                    matched = Some(rule);
                    break;
                }
            }
        }
        let decision = self.plan(matched, f, signals);
        let candidates = match &decision {
            Ok(d) => {
                // In the order the rule considers them (drained and eliminated in place).
                let mut names: Vec<&str> = Vec::new();
                let considered = match matched {
                    Some(r) => self.order(r, f, signals),
                    None => Vec::new(),
                };
                for c in considered
                    .iter()
                    .map(|p| p.channel)
                    .chain(d.candidates.iter().map(|p| p.channel))
                {
                    if !names.contains(&c) {
                        names.push(c);
                    }
                }
                self.reports(matched, d, names, f, signals)
            }
            Err(_) => Vec::new(),
        };
        let by = matched.and_then(|r| match &r.target {
            Target::Choose(c) => Some(c.by),
            _ => None,
        });
        Explanation {
            decision,
            skipped,
            candidates,
            by,
        }
    }

    fn policy<'r>(&'r self, rule: Option<&'r Rule>) -> &'r HealthPolicy {
        rule.and_then(|r| r.health.as_ref()).unwrap_or(&self.health)
    }

    fn score(&self, channel: &str, sample: Sample, amount: u64, p: &HealthPolicy) -> Score {
        let fee = self.fees.get(channel).copied().unwrap_or_default();
        Score::new(sample, fee, amount, p)
    }

    /// The matched rule's (or the default's) order, checked for ownership, then filtered.
    fn plan<'r>(
        &'r self,
        rule: Option<&'r Rule>,
        f: &PaymentFacts,
        signals: &dyn Signals,
    ) -> Result<Decision<'r>, NoRoute> {
        let order = match rule {
            Some(r) => self.order(r, f, signals),
            None => {
                let family = f.method.family();
                let c = self.defaults.get(&family).ok_or(NoRoute {
                    method: f.method,
                    family,
                    not_owner: None,
                })?;
                vec![Placed {
                    channel: c.as_str(),
                    why: Why::Rule,
                }]
            }
        };
        self.owned(&order, f)?;
        Ok(self.filter(rule, order, f, signals))
    }

    /// Every channel of the rule, in the order to consider them, before health and drains.
    fn order<'r>(
        &'r self,
        rule: &'r Rule,
        f: &PaymentFacts,
        signals: &dyn Signals,
    ) -> Vec<Placed<'r>> {
        let mut order: Vec<Placed<'r>> = match &rule.target {
            Target::To(c) => vec![Placed {
                channel: c,
                why: Why::Rule,
            }],
            Target::Split { choices, .. } => {
                adaptive::split_order(choices, split_hash(f.merchant, f.out_trade_no))
                    .into_iter()
                    .map(|channel| Placed {
                        channel,
                        why: Why::Split,
                    })
                    .collect()
            }
            Target::Choose(c) => {
                let p = self.policy(Some(rule));
                let samples: Vec<Sample> = c.from.iter().map(|ch| signals.health(ch)).collect();
                let healthy: Vec<bool> = c
                    .from
                    .iter()
                    .zip(&samples)
                    .map(|(ch, s)| !s.eliminated(p) && !signals.drained(ch))
                    .collect();
                let scores: Vec<Score> = c
                    .from
                    .iter()
                    .zip(&samples)
                    .map(|(ch, s)| self.score(ch, *s, f.amount, p))
                    .collect();
                adaptive::choose_order(c, &scores, &healthy, split_hash(f.merchant, f.out_trade_no))
            }
        };
        order.extend(rule.fallback.iter().map(|c| Placed {
            channel: c,
            why: Why::Fallback,
        }));
        order
    }

    /// Drops drained channels and eliminated ones (but for their probe share); when that
    /// leaves nothing but eliminated channels were among them, the best of those is tried:
    /// one try beats no payment.
    fn filter<'r>(
        &'r self,
        rule: Option<&'r Rule>,
        order: Vec<Placed<'r>>,
        f: &PaymentFacts,
        signals: &dyn Signals,
    ) -> Decision<'r> {
        let p = self.policy(rule);
        let hash = split_hash(f.merchant, f.out_trade_no);
        let mut candidates: Vec<Pick<'r>> = Vec::with_capacity(order.len());
        let mut skipped: Vec<Skip<'r>> = Vec::new();
        let mut best_eliminated: Option<(&'r str, Sample)> = None;
        for Placed { channel, why } in order {
            let seen = candidates.iter().any(|c| c.channel == channel)
                || skipped.iter().any(|s| s.channel == channel);
            if seen {
                continue;
            }
            if signals.drained(channel) {
                skipped.push(Skip {
                    channel,
                    reason: SkipReason::Drained,
                });
                continue;
            }
            let sample = signals.health(channel);
            if sample.eliminated(p) {
                if adaptive::roll(hash, channel) < p.probe_ppm {
                    // First, whatever its rank: a probe tried only after a healthy candidate
                    // would never be sent, and the channel never readmitted.
                    let at = candidates
                        .iter()
                        .take_while(|c| c.why == Why::Probe)
                        .count();
                    candidates.insert(
                        at,
                        Pick {
                            channel,
                            why: Why::Probe,
                        },
                    );
                } else {
                    skipped.push(Skip {
                        channel,
                        reason: SkipReason::Eliminated,
                    });
                    let better = best_eliminated.is_none_or(|(_, b)| {
                        (sample.successes as u64) * (b.samples as u64)
                            > (b.successes as u64) * (sample.samples as u64)
                    });
                    if better {
                        best_eliminated = Some((channel, sample));
                    }
                }
                continue;
            }
            candidates.push(Pick { channel, why });
        }
        if candidates.is_empty() {
            if let Some((channel, _)) = best_eliminated {
                skipped.retain(|s| s.channel != channel);
                candidates.push(Pick {
                    channel,
                    why: Why::LastResort,
                });
            }
        }
        Decision {
            rule: rule.map(|r| r.name.as_str()),
            candidates,
            skipped,
        }
    }

    fn reports<'r>(
        &'r self,
        rule: Option<&'r Rule>,
        d: &Decision<'r>,
        names: Vec<&'r str>,
        f: &PaymentFacts,
        signals: &dyn Signals,
    ) -> Vec<CandidateReport<'r>> {
        let p = self.policy(rule);
        names
            .into_iter()
            .map(|channel| {
                let sample = signals.health(channel);
                let score = self.score(channel, sample, f.amount, p);
                let verdict = match d.candidates.iter().position(|c| c.channel == channel) {
                    Some(i) => Ok((i, d.candidates[i].why)),
                    None => Err(d
                        .skipped
                        .iter()
                        .find(|s| s.channel == channel)
                        .map_or(SkipReason::Drained, |s| s.reason)),
                };
                CandidateReport {
                    channel,
                    sample,
                    eliminated: sample.eliminated(p),
                    drained: signals.drained(channel),
                    fee: score.fee,
                    value: score.value(),
                    verdict,
                }
            })
            .collect()
    }

    /// Refuses an order that reaches another merchant's own account anywhere in it.
    fn owned(&self, order: &[Placed], f: &PaymentFacts) -> Result<(), NoRoute> {
        if self.owners.is_empty() {
            return Ok(());
        }
        let foreign = order
            .iter()
            .map(|p| p.channel)
            .find(|c| self.owners.get(*c).is_some_and(|o| !o.contains(f.merchant)));
        match foreign {
            None => Ok(()),
            Some(c) => Err(NoRoute {
                method: f.method,
                family: f.method.family(),
                not_owner: Some(c.to_string()),
            }),
        }
    }

    /// Positions of the rules that can match this merchant, in file order.
    fn candidates<'a>(&'a self, merchant: &str) -> impl Iterator<Item = u32> + 'a {
        let mine: &[u32] = self.by_merchant.get(merchant).map_or(&[], Vec::as_slice);
        MergeSorted {
            a: mine,
            b: &self.generic,
        }
    }
}

/// Merges two ascending position lists.
struct MergeSorted<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for MergeSorted<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if take_a { &mut self.a } else { &mut self.b };
        let v = side[0];
        *side = &side[1..];
        Some(v)
    }
}

/// Stable across processes, versions and platforms (unlike `std`'s SipHash with random
/// keys): FNV-1a over `merchant \0 out_trade_no`, then a SplitMix64 finaliser so that
/// sequential order numbers spread evenly.
pub fn split_hash(merchant: &str, out_trade_no: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in merchant
        .bytes()
        .chain(std::iter::once(0))
        .chain(out_trade_no.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
