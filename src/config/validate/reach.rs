//! Which channels each (merchant, method) can reach, decided from the rules themselves, and
//! the sub-merchant ids the partner / ISV ones among them need (DESIGN.md §5).
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::Errors;
use crate::channel::{ChannelSettings, SubMerchant};
use crate::domain::{Family, Method};
use crate::routing::{Conditions, Rule};
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

/// Reports every partner / ISV channel reachable for a merchant that lacks its sub-merchant
/// id, one error per (rule or default, channel) naming the merchants. `rules` are the valid
/// rules with their position in the file.
pub(super) fn check_sub_merchants(
    rules: &[(usize, Rule)],
    defaults: &HashMap<Family, String>,
    shops: &[Shop],
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    errs: &mut Errors,
) {
    let mut shops_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in shops {
        for m in &s.merchants {
            shops_of.entry(m).or_default().insert(&s.id);
        }
    }
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

    // Whether `channel` lacks what it needs for `merchant`: the sub-merchant key, if so.
    let lacks = |channel: &str, merchant: &str| -> bool {
        let Some(c) = channels.get(channel) else {
            return false; // unknown or invalid: reported elsewhere
        };
        if !c.needs_sub_merchant() {
            return false;
        }
        let m = merchants.get(merchant);
        match c.family() {
            Family::Wechat => m.is_none_or(|m| m.wechat_sub_mchid.is_none()),
            Family::Alipay => m.is_none_or(|m| m.alipay_app_auth_token.is_none()),
        }
    };
    // (index into `rules`, channel) and (family, channel) → merchants missing the key.
    let mut by_rule: BTreeMap<(usize, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut by_default: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();

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
                    if lacks(ch, m) {
                        by_rule.entry((k, ch)).or_default().insert(m);
                    }
                }
                if unconditional(w) {
                    default_reachable = false;
                    break;
                }
            }
            if default_reachable {
                let family = method.family();
                if let Some(ch) = defaults.get(&family) {
                    if lacks(ch, m) {
                        by_default
                            .entry((family.as_str(), ch))
                            .or_default()
                            .insert(m);
                    }
                }
            }
        }
    }

    let mut report = |at: &str, label: &str, channel: &str, missing: &BTreeSet<&str>| {
        let Some(c) = channels.get(channel) else {
            return;
        };
        let key = match c.family() {
            Family::Wechat => "wechat_sub_mchid",
            Family::Alipay => "alipay_app_auth_token",
        };
        let missing: Vec<&str> = missing.iter().copied().collect();
        errs.push(
            at,
            format!(
                "{label}: channel {channel:?} is {} mode but merchant(s) {} have no {key} under merchants:",
                c.mode(),
                missing.join(", ")
            ),
        );
    };
    for ((family, channel), missing) in &by_default {
        let at = format!("routing.default.{family}");
        report(&at, &at, channel, missing);
    }
    for ((k, channel), missing) in &by_rule {
        let (i, rule) = &rules[*k];
        report(
            &format!("routing.rules[{i}]"),
            &format!("rules[{i}] {:?}", rule.name),
            channel,
            missing,
        );
    }
}
