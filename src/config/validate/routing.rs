//! Routing: rules, family defaults, the sub-merchant ids partner / ISV channels need, and
//! that a merchant's own channel serves only that merchant.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{reach, Errors};
use crate::channel::{ChannelSettings, SubMerchant};
use crate::config::file::{ChooseFile, FileConfig, HealthFile, RuleFile};
use crate::defaults::{CHOOSE_EXPLORE_PPM, MAX_HEALTH_WINDOW};
use crate::domain::{Family, Method};
use crate::resilience::HealthSettings;
use crate::routing::{
    adaptive::parse_share, By, Choose, Conditions, HealthPolicy, HoursRange, Rule, Rules, Target,
};
use crate::shops::Shop;

pub(super) fn routing(
    f: &FileConfig,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    shops: &[Shop],
    errs: &mut Errors,
) -> (Rules, HealthSettings) {
    // A channel that failed its own validation still exists for routing purposes: report
    // its errors once, not again as "unknown channel" in every rule that names it.
    let family_of = |name: &str| -> Option<Option<Family>> {
        if let Some(c) = channels.get(name) {
            return Some(Some(c.family()));
        }
        f.channels.get(name).map(|c| match c.kind.as_str() {
            "wechatpay_v3" => Some(Family::Wechat),
            "alipay" => Some(Family::Alipay),
            _ => None,
        })
    };
    let mut defaults = HashMap::new();
    for (fam, ch) in &f.routing.default {
        let at = format!("routing.default.{fam}");
        let Some(family) = Family::parse(fam) else {
            errs.push(
                &at,
                format!("routing.default: {fam:?} is not a family (wechat, alipay)"),
            );
            continue;
        };
        match family_of(ch) {
            None => errs.push(
                &at,
                format!("routing.default.{fam}: unknown channel {ch:?}"),
            ),
            Some(Some(cf)) if cf != family => errs.push(
                &at,
                format!("routing.default.{fam}: channel {ch:?} is in the {cf} family"),
            ),
            _ => {
                defaults.insert(family, ch.clone());
            }
        }
    }
    for family in Family::ALL {
        let has_channels = f
            .channels
            .keys()
            .any(|c| family_of(c) == Some(Some(family)));
        if has_channels
            && !defaults.contains_key(&family)
            && !f.routing.default.contains_key(family.as_str())
        {
            errs.push(
                "routing",
                format!("routing.default: the {family} family has channels but no default"),
            );
        }
    }

    let mut settings = HealthSettings::default();
    if let Some(h) = &f.routing.health {
        settings.policy =
            health_policy(h, settings.policy, "routing.health", "routing.health", errs);
        if let Some(w) = h.window {
            if w == 0 || w > MAX_HEALTH_WINDOW {
                errs.push(
                    "routing.health.window",
                    format!("routing.health.window: {w} is not between 1 and {MAX_HEALTH_WINDOW}"),
                );
            }
            settings.window = w;
        }
        if let Some(r) = h.readmit_after {
            if r == 0 {
                errs.push(
                    "routing.health.readmit_after",
                    "routing.health.readmit_after: must be at least 1".into(),
                );
            }
            settings.readmit_after = r;
        }
        if settings.policy.min_samples > settings.window {
            errs.push(
                "routing.health.min_samples",
                format!(
                    "routing.health.min_samples: {} is more than the window ({}): no channel could ever be judged",
                    settings.policy.min_samples, settings.window
                ),
            );
        }
    }

    let mut rules: Vec<(usize, Rule)> = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in f.routing.rules.iter().enumerate() {
        let at = format!("routing.rules[{i}]");
        let label = format!("rules[{i}] {:?}", r.name);
        if r.name.is_empty() {
            errs.push(&at, format!("rules[{i}]: name is empty"));
        }
        if !names.insert(r.name.as_str()) {
            errs.push(
                &format!("{at}.name"),
                format!("{label}: duplicate rule name"),
            );
        }
        if let Some(mut rule) = rule(r, &at, &label, &family_of, errs) {
            if let Some(h) = &r.health {
                for (key, set) in [
                    ("window", h.window.is_some()),
                    ("readmit_after", h.readmit_after.is_some()),
                ] {
                    if set {
                        errs.push(
                            &format!("{at}.health.{key}"),
                            format!("{label}: health.{key}: belongs to the channel's window; set it in routing.health"),
                        );
                    }
                }
                let policy = health_policy(
                    h,
                    settings.policy,
                    &format!("{at}.health"),
                    &format!("{label}: health"),
                    errs,
                );
                if policy.min_samples > settings.window {
                    errs.push(
                        &format!("{at}.health.min_samples"),
                        format!(
                            "{label}: health.min_samples: {} is more than the window ({}): the rule could never judge a channel",
                            policy.min_samples, settings.window
                        ),
                    );
                }
                rule.health = Some(policy);
            }
            rules.push((i, rule));
        }
    }
    reach::check_reach(&rules, &defaults, shops, channels, merchants, errs);
    reach::check_rule_owners(&rules, shops, channels, errs);
    let owners = channels
        .iter()
        .filter_map(|(name, c)| Some((name.clone(), c.owners.as_ref()?.iter().cloned().collect())))
        .collect();
    let fees = channels
        .iter()
        .map(|(name, c)| (name.clone(), c.fee))
        .collect();
    let rules = Rules::new(rules.into_iter().map(|(_, r)| r).collect(), defaults)
        .with_owners(owners)
        .with_health(settings.policy, fees);
    (rules, settings)
}

/// The thresholds of a `health` block over `base` (the defaults, or `routing.health`'s).
fn health_policy(
    h: &HealthFile,
    base: HealthPolicy,
    at: &str,
    label: &str,
    errs: &mut Errors,
) -> HealthPolicy {
    let mut p = base;
    if let Some(m) = h.min_samples {
        p.min_samples = m;
    }
    let mut share = |key: &str, v: &Option<String>, into: &mut u32| {
        if let Some(v) = v {
            match parse_share(v) {
                Ok(ppm) => *into = ppm,
                Err(e) => errs.push(&format!("{at}.{key}"), format!("{label}.{key}: {e}")),
            }
        }
    };
    share(
        "eliminate_below",
        &h.eliminate_below,
        &mut p.eliminate_below_ppm,
    );
    share("probe", &h.probe, &mut p.probe_ppm);
    p
}

/// A rule's `choose`: known ranking, at least two distinct candidates, a share to explore.
fn choose(c: &ChooseFile, here: &RuleAt, errs: &mut Errors) -> Option<Choose> {
    let (at, label) = (here.at, here.label);
    let n = errs.list.len();
    let by = match c.by.as_deref() {
        None => By::Value,
        Some(b) => By::parse(b).unwrap_or_else(|| {
            errs.push(
                &format!("{at}.choose.by"),
                format!("{label}: choose.by: {b:?} is not value, success_rate or cost"),
            );
            By::Value
        }),
    };
    let explore_ppm = match c.explore.as_deref().map(parse_share) {
        None => CHOOSE_EXPLORE_PPM,
        Some(Ok(ppm)) => ppm,
        Some(Err(e)) => {
            errs.push(
                &format!("{at}.choose.explore"),
                format!("{label}: choose.explore: {e}"),
            );
            0
        }
    };
    let distinct: HashSet<&str> = c.from.iter().map(String::as_str).collect();
    if distinct.len() != c.from.len() {
        errs.push(
            &format!("{at}.choose.from"),
            format!("{label}: choose.from: names a channel twice"),
        );
    }
    if c.from.len() < 2 {
        errs.push(
            &format!("{at}.choose.from"),
            format!("{label}: choose.from: needs at least two channels to choose from (use to: for one)"),
        );
    }
    (errs.list.len() == n).then(|| Choose {
        from: c.from.clone(),
        by,
        explore_ppm,
    })
}

fn rule(
    r: &RuleFile,
    at: &str,
    label: &str,
    family_of: &dyn Fn(&str) -> Option<Option<Family>>,
    errs: &mut Errors,
) -> Option<Rule> {
    let n = errs.list.len();
    let here = RuleAt { at, label };
    let (target, mut targets) = target(r, &here, errs);
    for (j, fb) in r.fallback.iter().enumerate() {
        targets.push((format!("{at}.fallback[{j}]"), fb));
    }
    let known = known_channels(&targets, &here, family_of, errs);
    let methods = methods(r, &here, &known, errs);
    let w = &r.when;
    let amount = w.amount.as_ref();
    let (amount_min, amount_max) = (amount.and_then(|a| a.min), amount.and_then(|a| a.max));
    if let (Some(min), Some(max)) = (amount_min, amount_max) {
        if min > max {
            errs.push(
                &format!("{at}.when.amount"),
                format!("{label}: when.amount: min {min} is above max {max}"),
            );
        }
    }
    let hours = w.hours.as_ref().and_then(|h| {
        HoursRange::parse(h)
            .map_err(|e| {
                errs.push(
                    &format!("{at}.when.hours"),
                    format!("{label}: when.hours: {e}"),
                )
            })
            .ok()
    });
    if errs.list.len() > n {
        return None;
    }
    Some(Rule {
        name: r.name.clone(),
        when: Conditions {
            merchants: w
                .merchant
                .as_ref()
                .map(|m| m.values().into_iter().collect()),
            shops: w.shop.as_ref().map(|s| s.values().into_iter().collect()),
            methods,
            amount_min,
            amount_max,
            currencies: w.currency.as_ref().map(|c| c.values()),
            metadata: w
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.values()))
                .collect(),
            hours,
        },
        target: target?,
        fallback: r.fallback.clone(),
        health: None,
    })
}

/// Where a rule is in the file and how its messages name it (`rules[2] "m1001-own"`).
struct RuleAt<'a> {
    at: &'a str,
    label: &'a str,
}

impl RuleAt<'_> {
    /// `to`, `split[1].to`, `fallback[0]`: the key within the rule.
    fn key_of<'p>(&self, path: &'p str) -> &'p str {
        path.strip_prefix(self.at)
            .unwrap_or(path)
            .trim_start_matches('.')
    }
}

/// The rule's `to` or `split`, and the channels it names with their YAML paths.
fn target<'r>(
    r: &'r RuleFile,
    here: &RuleAt,
    errs: &mut Errors,
) -> (Option<Target>, Vec<(String, &'r str)>) {
    let (at, label) = (here.at, here.label);
    let mut targets: Vec<(String, &str)> = Vec::new();
    let given = [r.to.is_some(), r.split.is_some(), r.choose.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given > 1 {
        errs.push(
            at,
            format!("{label}: has more than one of to, split and choose; use one"),
        );
        return (None, targets);
    }
    if let Some(c) = &r.choose {
        for (j, ch) in c.from.iter().enumerate() {
            targets.push((format!("{at}.choose.from[{j}]"), ch));
        }
        return (choose(c, here, errs).map(Target::Choose), targets);
    }
    let target = match (&r.to, &r.split) {
        (Some(to), None) => {
            targets.push((format!("{at}.to"), to));
            Some(Target::To(to.clone()))
        }
        (None, Some(split)) => {
            if split.is_empty() {
                errs.push(&format!("{at}.split"), format!("{label}: split is empty"));
            }
            let total: u64 = split.iter().map(|s| s.weight as u64).sum();
            if total == 0 && !split.is_empty() {
                errs.push(
                    &format!("{at}.split"),
                    format!("{label}: split weights sum to 0"),
                );
            }
            for (j, s) in split.iter().enumerate() {
                targets.push((format!("{at}.split[{j}].to"), &s.to));
            }
            Some(Target::Split {
                choices: split.iter().map(|s| (s.to.clone(), s.weight)).collect(),
                total,
            })
        }
        (Some(_), Some(_)) => None, // reported above
        (None, None) => {
            errs.push(at, format!("{label}: needs to, split or choose"));
            None
        }
    };
    (target, targets)
}

/// The channels of a rule that exist, with their family; an unknown one is reported.
fn known_channels<'r>(
    targets: &[(String, &'r str)],
    here: &RuleAt,
    family_of: &dyn Fn(&str) -> Option<Option<Family>>,
    errs: &mut Errors,
) -> Vec<(String, &'r str, Family)> {
    let mut known = Vec::new();
    for (path, ch) in targets {
        match family_of(ch) {
            None => errs.push(
                path,
                format!(
                    "{}: {}: unknown channel {ch:?}",
                    here.label,
                    here.key_of(path)
                ),
            ),
            Some(Some(fam)) => known.push((path.clone(), *ch, fam)),
            Some(None) => {} // its own kind error is reported under channels
        }
    }
    known
}

/// The methods a rule applies to: its `when.method` / `when.family`, each of which every
/// channel of the rule must serve; without either, the methods its channels serve (one
/// family only).
fn methods(
    r: &RuleFile,
    here: &RuleAt,
    known: &[(String, &str, Family)],
    errs: &mut Errors,
) -> u16 {
    let (at, label, w) = (here.at, here.label, &r.when);
    let mut explicit: Option<u16> = None;
    if let Some(methods) = &w.method {
        let mut bits = 0;
        for m in methods.values() {
            match Method::parse(&m) {
                Some(m) => bits |= m.bit(),
                None => errs.push(
                    &format!("{at}.when.method"),
                    format!("{label}: when.method: unknown method {m:?}"),
                ),
            }
        }
        explicit = Some(bits);
    }
    if let Some(fams) = &w.family {
        let mut bits = 0;
        for fam in fams.values() {
            match Family::parse(&fam) {
                Some(f) => bits |= f.method_bits(),
                None => errs.push(
                    &format!("{at}.when.family"),
                    format!("{label}: when.family: {fam:?} is not wechat or alipay"),
                ),
            }
        }
        explicit = Some(explicit.unwrap_or(u16::MAX) & bits);
    }
    if let Some(bits) = explicit {
        for m in Method::from_bits(bits) {
            for (path, ch, fam) in known {
                if *fam != m.family() {
                    errs.push(
                        path,
                        format!(
                            "{label}: {}: channel {ch:?} ({fam}) cannot serve method {m}",
                            here.key_of(path)
                        ),
                    );
                }
            }
        }
        return bits;
    }
    // No method condition: the rule applies to the methods its channels can serve.
    let families: BTreeSet<Family> = known.iter().map(|(_, _, fam)| *fam).collect();
    match families.len() {
        0 => 0,
        1 => families.first().map_or(0, |f| f.method_bits()),
        _ => {
            errs.push(at, format!("{label}: sends to both wechat and alipay channels; add when.method or when.family"));
            0
        }
    }
}
