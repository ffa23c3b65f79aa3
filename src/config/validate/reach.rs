//! Which channels each (merchant, method) can reach, decided from the rules themselves: the
//! sub-merchant ids the partner / ISV ones among them need (ARCHITECTURE.md, "Configuration and
//! reload"), and that no merchant's payment reaches another merchant's own (direct-mode) account
//! (§13).
//!
//! For every merchant and method, the rules that apply are walked in file order, as
//! `Rules::decide` walks them: every channel of an applying rule (its `to`, every `split`
//! channel, every `fallback`) is reachable; a rule whose `when` only names merchants, methods
//! or families matches every such payment and ends the walk; one with `amount`, `hours`,
//! `metadata`, `shop` or `currency` conditions may not match, so the next rules and finally
//! the family default stay reachable. A partner channel no payment of a merchant can reach
//! does not need that merchant's sub_mchid — the merchant on its own account for every
//! method is exactly the merchant the product is for.
//!
//! Merchants are those of the shops' `merchants:` lists (the only ones a request can name)
//! plus those named by rules. A merchant no shop lists is only walked through the rules that
//! name it: merchant-less rules and the defaults reach shop merchants only.
//!
//! Ownership is judged more strictly for rules than for defaults: a rule sends to a direct
//! channel only merchants it names (`when.merchant`), or, without that, the merchants of the
//! shops it names (`when.shop`); a rule with neither counts as "any merchant", whatever
//! shops list today. A family default has no `when` to narrow it, so it is judged on the
//! merchants the walk brings to it: a merchant later listed by a shop is judged on the
//! reload that lists it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::Errors;
use crate::channel::{ChannelSettings, SubMerchant};
use crate::domain::{Family, Method};
use crate::routing::{Conditions, Rule, Target};
use crate::shops::Shop;

/// A rule that matches every payment of the merchants and methods it covers.
pub(super) fn unconditional(w: &Conditions) -> bool {
    w.shops.is_none()
        && w.amount_min.is_none()
        && w.amount_max.is_none()
        && w.currencies.is_none()
        && w.metadata.is_empty()
        && w.hours.is_none()
}

/// Merchants named in one message at most; the rest are counted.
const NAMED_MERCHANTS: usize = 10;

/// Where a payment is sent from: a rule (index into the valid rules) or a family default.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Site {
    Rule(usize),
    Default(Family),
}

/// Walks every merchant through the rules (as `Rules::decide` would) and calls `visit` with
/// each (site, channel, merchant) a payment can take.
fn walk<'a>(
    rules: &'a [(usize, Rule)],
    defaults: &'a HashMap<Family, String>,
    shops_of: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    mut visit: impl FnMut(Site, &'a str, &'a str),
) {
    // As `Rules` indexes them: a merchant's own rules plus the merchant-less ones, so that
    // 10,000 one-merchant rules cost 10,000 short walks, not 10,000 long ones.
    let mut own: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut generic: Vec<usize> = Vec::new();
    for (k, (_, r)) in rules.iter().enumerate() {
        match &r.when.merchants {
            Some(ms) => ms.iter().for_each(|m| own.entry(m).or_default().push(k)),
            None => generic.push(k),
        }
    }
    let all: BTreeSet<&str> = shops_of.keys().chain(own.keys()).copied().collect();
    for &m in &all {
        let my_shops = shops_of.get(m);
        // Merchant-less rules and the defaults reach the merchants of shops only.
        let mut candidates: Vec<usize> = own.get(m).cloned().unwrap_or_default();
        if my_shops.is_some() {
            candidates.extend(&generic);
            candidates.sort_unstable();
        }
        for method in Method::ALL {
            let mut default_reachable = my_shops.is_some();
            for &k in &candidates {
                let (_, rule) = &rules[k];
                let w = &rule.when;
                if w.methods & method.bit() == 0 {
                    continue;
                }
                // A shop condition none of the merchant's shops meets: never for this merchant.
                if let (Some(ss), Some(mine)) = (&w.shops, my_shops) {
                    if !mine.iter().any(|s| ss.contains(*s)) {
                        continue;
                    }
                }
                for ch in rule.channels() {
                    visit(Site::Rule(k), ch, m);
                }
                if unconditional(w) {
                    default_reachable = false;
                    break;
                }
            }
            if default_reachable {
                let family = method.family();
                if let Some(ch) = defaults.get(&family) {
                    visit(Site::Default(family), ch, m);
                }
            }
        }
    }
}

/// For each merchant, the shops that list it.
fn shops_of(shops: &[Shop]) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut shops_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in shops {
        for m in &s.merchants {
            shops_of.entry(m).or_default().insert(&s.id);
        }
    }
    shops_of
}

/// `m_1, m_2` — at most [`NAMED_MERCHANTS`] of them, then how many more.
fn names<'a>(merchants: impl IntoIterator<Item = &'a str>) -> String {
    let all: Vec<&str> = merchants.into_iter().collect();
    let mut text = all[..all.len().min(NAMED_MERCHANTS)].join(", ");
    if all.len() > NAMED_MERCHANTS {
        text.push_str(&format!(" and {} more", all.len() - NAMED_MERCHANTS));
    }
    text
}

/// Reports every partner / ISV channel reachable for a merchant that lacks one of the ids it
/// needs (a WeChat `sub_mchid`; an Alipay `app_auth_token` and `seller_id`), and every
/// direct channel a family default sends another merchant's payment to: one error per (rule
/// or default, channel, key) naming the merchants. `rules` are the valid rules with their
/// position in the file.
pub(super) fn check_reach(
    rules: &[(usize, Rule)],
    defaults: &HashMap<Family, String>,
    shops: &[Shop],
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    errs: &mut Errors,
) {
    let shops_of = shops_of(shops);
    // (site, channel, key) → merchants missing the key; (family, channel) → merchants a
    // default sends to a direct channel they do not own.
    let mut missing: BTreeMap<(Site, &str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut strangers: BTreeMap<(Family, &str), BTreeSet<&str>> = BTreeMap::new();
    walk(rules, defaults, &shops_of, |site, ch, m| {
        let needs = channels.get(ch).filter(|c| c.needs_sub_merchant());
        for key in needs.map_or(Vec::new(), |c| missing_ids(c, merchants.get(m))) {
            missing.entry((site, ch, key)).or_default().insert(m);
        }
        if let Site::Default(family) = site {
            if channels.get(ch).is_some_and(|c| !c.serves(m)) {
                strangers.entry((family, ch)).or_default().insert(m);
            }
        }
    });

    for ((site, channel, key), who) in &missing {
        let Some(c) = channels.get(*channel) else {
            continue;
        };
        let (at, label) = match site {
            Site::Default(family) => {
                let at = format!("routing.default.{}", family.as_str());
                (at.clone(), at)
            }
            Site::Rule(k) => {
                let (i, rule) = &rules[*k];
                (
                    format!("routing.rules[{i}]"),
                    format!("rules[{i}] {:?}", rule.name),
                )
            }
        };
        errs.push(
            &at,
            format!(
                "{label}: channel {channel:?} is {} mode but merchant(s) {} have no {key} under merchants:",
                c.mode(),
                names(who.iter().copied())
            ),
        );
    }
    for ((family, channel), who) in &strangers {
        let Some(owners) = channels.get(*channel).and_then(|c| c.owners.as_ref()) else {
            continue;
        };
        let at = format!("routing.default.{}", family.as_str());
        errs.push(
            &at,
            format!(
                "{at}: channel {channel:?} is the own account of merchant(s) {} (mode direct) but the {family} default sends payments of merchant(s) {} to it; make the default a partner / ISV channel, or route those merchants elsewhere first",
                names(owners.iter().map(String::as_str)),
                names(who.iter().copied())
            ),
        );
    }
}

/// The ids a partner / ISV channel needs for a merchant that its entry under `merchants:`
/// (if any) lacks.
fn missing_ids(c: &ChannelSettings, m: Option<&SubMerchant>) -> Vec<&'static str> {
    let mut missing = Vec::new();
    match c.family() {
        Family::Wechat => {
            if m.is_none_or(|m| m.wechat_sub_mchid.is_none()) {
                missing.push("wechat_sub_mchid");
            }
        }
        Family::Alipay => {
            if m.is_none_or(|m| m.alipay_app_auth_token.is_none()) {
                missing.push("alipay_app_auth_token");
            }
            // What an ISV order is bound to (a token refresh keeps it).
            if m.is_none_or(|m| m.alipay_seller_id.is_none()) {
                missing.push("alipay_seller_id");
            }
        }
    }
    missing
}

/// Reports every rule that can send another merchant's payment to a direct channel, naming
/// the rule, the key (`to`, `split[1].to`, `fallback[0]`) and the merchants.
pub(super) fn check_rule_owners(
    rules: &[(usize, Rule)],
    shops: &[Shop],
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    errs: &mut Errors,
) {
    for (i, rule) in rules {
        let keys: Vec<(String, &str)> = match &rule.target {
            Target::To(c) => vec![("to".to_string(), c.as_str())],
            Target::Split { choices, .. } => choices
                .iter()
                .enumerate()
                .map(|(j, (c, _))| (format!("split[{j}].to"), c.as_str()))
                .collect(),
            Target::Choose(c) => c
                .from
                .iter()
                .enumerate()
                .map(|(j, ch)| (format!("choose.from[{j}]"), ch.as_str()))
                .collect(),
        }
        .into_iter()
        .chain(
            rule.fallback
                .iter()
                .enumerate()
                .map(|(j, c)| (format!("fallback[{j}]"), c.as_str())),
        )
        .collect();
        let w = &rule.when;
        for (key, channel) in keys {
            let Some(owners) = channels.get(channel).and_then(|c| c.owners.as_ref()) else {
                continue; // a partner / ISV channel, or unknown (reported elsewhere)
            };
            let own = names(owners.iter().map(String::as_str));
            let why = match (&w.merchants, &w.shops) {
                (Some(ms), _) => {
                    let others: BTreeSet<&str> = ms
                        .iter()
                        .map(String::as_str)
                        .filter(|m| !owners.contains(*m))
                        .collect();
                    if others.is_empty() {
                        continue;
                    }
                    format!("it sends payments of merchant(s) {} there", names(others))
                }
                (None, Some(ss)) => {
                    let mut named: Vec<&str> = ss.iter().map(String::as_str).collect();
                    named.sort_unstable();
                    let others: BTreeSet<&str> = shops
                        .iter()
                        .filter(|s| ss.contains(&s.id))
                        .flat_map(|s| s.merchants.iter().map(String::as_str))
                        .filter(|m| !owners.contains(*m))
                        .collect();
                    if others.is_empty() {
                        continue;
                    }
                    format!(
                        "it has no when.merchant, and shop(s) {} send payments of merchant(s) {} there",
                        named.join(", "),
                        names(others)
                    )
                }
                (None, None) => "it has no when.merchant (nor when.shop), so any merchant's payment can reach it".to_string(),
            };
            errs.push(
                &format!("routing.rules[{i}].{key}"),
                format!(
                    "rules[{i}] {:?}: {key}: channel {channel:?} is the own account of merchant(s) {own} (mode direct) but {why}; add when.merchant: [{own}]",
                    rule.name,
                ),
            );
        }
    }
}
