//! Stranded orders: open payments and refunds bound to a provider account that no configured
//! channel holds any more (ARCHITECTURE.md, "Money rules": the binding). Every operation on them is
//! refused (`channel_unavailable`) until the identity is restored, so `payroute check` and every
//! reload warn about them, with counts from the store, and the gauge
//! `payroute_stranded_orders{channel}` shows them.
//!
//! Below the admin port and the CLI, above config, channel and store; it knows no payment
//! logic: the store says what is open, the config says which accounts are held.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex;

use prometheus::{IntGaugeVec, Opts, Registry};
use serde_json::{json, Value};

use crate::channel::{ChannelSettings, SubMerchant};
use crate::config::Config;
use crate::domain::Account;
use crate::store::{OpenAtAccount, Reports, StoreError};

/// Open orders at one (channel, account) that no configured channel holds.
#[derive(Clone, Debug, PartialEq)]
pub struct StrandedGroup {
    /// The channel name the orders were bound through.
    pub channel: String,
    /// The bound account (`None`: written before accounts were stored).
    pub account: Option<Account>,
    /// Payments `pending` or `unknown`.
    pub payments: u64,
    /// Refunds `pending` or `abnormal`.
    pub refunds: u64,
    /// Why the account is not held, in the config's terms.
    pub reason: String,
}

impl StrandedGroup {
    /// The warning ops read: what is stranded, why, and what to do.
    pub fn message(&self) -> String {
        format!(
            "channel {:?}: {} open payment(s) and {} open refund(s) are bound to {}, which no configured channel holds: {}. Operations on them are refused (channel_unavailable); restore that identity until those orders settle",
            self.channel,
            self.payments,
            self.refunds,
            match &self.account {
                Some(a) => format!("account {}", describe(a)),
                None => "it (a record from before accounts were stored)".to_string(),
            },
            self.reason
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "channel": self.channel, "account": self.account, "payments": self.payments,
            "refunds": self.refunds, "reason": self.reason, "message": self.message(),
        })
    }
}

/// `wechatpay_v3 partner mchid 1900000100 sub_mchid 1900000409 app_id wx…`, or
/// `alipay isv app_id 2021… seller 2088…` (the merchant's Alipay user id, never its token).
pub fn describe(a: &Account) -> String {
    let mut s = format!("{} {}", a.provider, a.mode);
    for (name, v) in [
        ("mchid", &a.mchid),
        ("sub_mchid", &a.sub_mchid),
        ("app_id", &a.app_id),
        ("seller", &a.seller),
    ] {
        if let Some(v) = v {
            s.push_str(&format!(" {name} {v}"));
        }
    }
    s
}

/// The sub-merchant ids a channel may act under: every merchant's, and none (direct channels).
fn subs(config: &Config) -> Vec<SubMerchant> {
    let mut subs: Vec<SubMerchant> = config.merchants.values().cloned().collect();
    subs.push(SubMerchant::default());
    subs
}

/// The groups of `open` whose account no channel of `config` holds for any merchant (a record
/// without an account: whose channel is gone), in the store's order.
pub fn stranded(open: &[OpenAtAccount], config: &Config) -> Vec<StrandedGroup> {
    let subs = subs(config);
    let held: Vec<Account> = config
        .channels
        .values()
        .flat_map(|c| subs.iter().map(|s| c.account(s)))
        .collect();
    open.iter()
        .filter_map(|row| {
            let reason = match &row.account {
                Some(a) if held.contains(a) => return None,
                Some(a) => why(&row.channel, a, config.channels.get(&row.channel)),
                None if config.channels.contains_key(&row.channel) => return None,
                None => "the channel is no longer configured".to_string(),
            };
            Some(StrandedGroup {
                channel: row.channel.clone(),
                account: row.account.clone(),
                payments: row.payments,
                refunds: row.refunds,
                reason,
            })
        })
        .collect()
}

/// Why no channel holds `bound`: the named channel is gone, its own identity changed, or no
/// merchant has the per-merchant id (sub_mchid, alipay_seller_id) any more. A token refresh
/// strands nothing: an ISV order is bound to the seller id, which the refresh keeps.
fn why(name: &str, bound: &Account, channel: Option<&Arc<ChannelSettings>>) -> String {
    let Some(ch) = channel else {
        return format!(
            "channel {name:?} is no longer configured and no other channel holds the account"
        );
    };
    let now = ch.account(&SubMerchant::default());
    let same_base = now.provider == bound.provider
        && now.mode == bound.mode
        && now.mchid == bound.mchid
        && now.app_id == bound.app_id;
    if !same_base {
        let mut now = now;
        // The per-merchant part is not the channel's: compare the channel's own identity.
        now.sub_mchid = bound.sub_mchid.clone();
        now.seller = bound.seller.clone();
        return format!(
            "the channel's account changed ({})",
            bound.differences(&now)
        );
    }
    match (&bound.sub_mchid, &bound.seller) {
        (Some(sub), _) => format!("no merchant's wechat_sub_mchid is {sub} any more"),
        (None, Some(seller)) => {
            format!("no merchant's alipay_seller_id is {seller} any more")
        }
        (None, None) => "the channel's account changed".to_string(),
    }
}

/// Reads the open orders from `store` and judges them against `config`.
pub async fn find(store: &dyn Reports, config: &Config) -> Result<Vec<StrandedGroup>, StoreError> {
    Ok(stranded(&store.open_by_account().await?, config))
}

/// The gauge `payroute_stranded_orders{channel}` and the last judgement, for the admin port.
pub struct StrandedWatch {
    gauge: IntGaugeVec,
    shown: Mutex<(BTreeSet<String>, Vec<StrandedGroup>)>,
}

impl StrandedWatch {
    pub fn new(registry: &Registry) -> prometheus::Result<StrandedWatch> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "payroute_stranded_orders",
                "Open payments and refunds bound to an account no configured channel holds",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(StrandedWatch {
            gauge,
            shown: Mutex::new((BTreeSet::new(), Vec::new())),
        })
    }

    /// Judges the store against `config`: a warning per stranded group, the gauge set (0 for
    /// every configured channel), the result kept for [`StrandedWatch::last`]. A store error
    /// is logged and changes nothing.
    pub async fn update(&self, store: &dyn Reports, config: &Config) -> Vec<StrandedGroup> {
        let groups = match find(store, config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count stranded orders");
                return self.last();
            }
        };
        for g in &groups {
            tracing::warn!(
                channel = %g.channel,
                account = %g.account.as_ref().map(describe).unwrap_or_else(|| "none".into()),
                payments = g.payments,
                refunds = g.refunds,
                "stranded orders: {}",
                g.message()
            );
        }
        let mut counts: BTreeMap<String, i64> =
            config.channels.keys().map(|c| (c.clone(), 0)).collect();
        for g in &groups {
            *counts.entry(g.channel.clone()).or_default() += (g.payments + g.refunds) as i64;
        }
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for old in shown.0.iter().filter(|c| !counts.contains_key(*c)) {
            let _ = self.gauge.remove_label_values(&[old]);
        }
        for (channel, n) in &counts {
            self.gauge.with_label_values(&[channel]).set(*n);
        }
        *shown = (counts.into_keys().collect(), groups.clone());
        groups
    }

    /// The groups found by the last [`StrandedWatch::update`].
    pub fn last(&self) -> Vec<StrandedGroup> {
        self.shown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(edit: impl Fn(String) -> String) -> Config {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(crate::defaults::DEFAULT_CONFIG_PATH);
        let text = edit(std::fs::read_to_string(&path).unwrap());
        Config::from_text(&path, &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn open_at(config: &Config, channel: &str, merchant: Option<&str>) -> OpenAtAccount {
        let sub = merchant
            .map(|m| config.merchants[m].clone())
            .unwrap_or_default();
        OpenAtAccount {
            channel: channel.into(),
            account: Some(config.channels[channel].account(&sub)),
            payments: 2,
            refunds: 1,
        }
    }

    #[test]
    fn held_accounts_are_not_stranded() {
        let config = shipped(|t| t);
        let rows = vec![
            open_at(&config, "platform_wechat", Some("m_4004")),
            open_at(&config, "platform_alipay", Some("m_1001")),
            open_at(&config, "m1001_wechat", None),
            OpenAtAccount {
                channel: "m2002_alipay".into(),
                account: None,
                payments: 1,
                refunds: 0,
            },
        ];
        assert_eq!(stranded(&rows, &config), vec![]);
    }

    #[test]
    fn changed_identities_strand_their_groups_and_say_why() {
        let before = shipped(|t| t);
        let rows = vec![
            open_at(&before, "platform_wechat", Some("m_4004")),
            open_at(&before, "platform_alipay", Some("m_4004")),
            open_at(&before, "m1001_wechat", None),
            open_at(&before, "m2002_wechat", None),
            OpenAtAccount {
                channel: "gone_wechat".into(),
                account: None,
                payments: 1,
                refunds: 0,
            },
        ];
        let after = shipped(|t| {
            t.replace(r#""1900000409""#, r#""1900000499""#)
                .replace(r#""2088000000004004""#, r#""2088000000004099""#)
                .replace(r#"    mchid: "1900000109""#, r#"    mchid: "1900000199""#)
        });
        let found = stranded(&rows, &after);
        let reasons: Vec<(&str, &str)> = found
            .iter()
            .map(|g| (g.channel.as_str(), g.reason.as_str()))
            .collect();
        let seller = rows[1].account.as_ref().unwrap().seller.clone().unwrap();
        assert_eq!(seller, "2088000000004004");
        assert_eq!(
            reasons,
            vec![
                (
                    "platform_wechat",
                    "no merchant's wechat_sub_mchid is 1900000409 any more"
                ),
                (
                    "platform_alipay",
                    "no merchant's alipay_seller_id is 2088000000004004 any more"
                ),
                (
                    "m1001_wechat",
                    "the channel's account changed (mchid 1900000109 → 1900000199)"
                ),
                ("gone_wechat", "the channel is no longer configured"),
            ]
        );
        assert_eq!((found[0].payments, found[0].refunds), (2, 1));
        // The message names the account by its seller id, never the token.
        assert!(
            !found[1].message().contains("202611BB"),
            "{}",
            found[1].message()
        );
        assert!(found[1].message().contains(&seller));
    }

    /// Ops refresh a merchant's app_auth_token: its open ISV orders stay held (they are
    /// bound to the seller id, which the refresh keeps).
    #[test]
    fn a_token_refresh_strands_nothing() {
        let before = shipped(|t| t);
        let rows = vec![open_at(&before, "platform_alipay", Some("m_4004"))];
        let after = shipped(|t| t.replace("202611BB_m4004_TEST_ONLY", "202612CC_m4004_TEST_ONLY"));
        assert_ne!(
            before.merchants["m_4004"].alipay_app_auth_token,
            after.merchants["m_4004"].alipay_app_auth_token
        );
        assert_eq!(stranded(&rows, &after), vec![]);
    }

    #[test]
    fn a_removed_channel_whose_account_another_holds_is_not_stranded() {
        let before = shipped(|t| t);
        let rows = vec![OpenAtAccount {
            channel: "m1001_wechat_old".into(),
            ..open_at(&before, "m1001_wechat", None)
        }];
        assert_eq!(stranded(&rows, &before), vec![]);
        let rows = vec![OpenAtAccount {
            channel: "m1001_old".into(),
            ..open_at(&before, "m1001_wechat", None)
        }];
        let after =
            shipped(|t| t.replace(r#"    mchid: "1900000109""#, r#"    mchid: "1900000199""#));
        assert_eq!(
            stranded(&rows, &after)[0].reason,
            r#"channel "m1001_old" is no longer configured and no other channel holds the account"#
        );
    }
}
