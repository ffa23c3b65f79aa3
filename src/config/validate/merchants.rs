//! The merchants' provider identities (ARCHITECTURE.md, "Money rules": tenancy scoping): each one
//! names exactly one merchant.
//!
//! A `wechat_sub_mchid`, an `alipay_app_auth_token` or an `alipay_seller_id` given to two
//! merchants would send one merchant's payments into the other's account and let either's
//! notifications settle the other's orders, so each is unique across merchants. An
//! `alipay_seller_id` must also look like an Alipay user id: an ISV order is bound to it.
//! A token's value is compared but never written into a message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Errors;
use crate::channel::alipay::AlipayMode;
use crate::channel::wechatpay::WechatMode;
use crate::channel::{ChannelSettings, ConnectorSettings, SubMerchant};
use crate::config::file::FileConfig;
use crate::domain::{is_alipay_user_id, ALIPAY_USER_ID_DIGITS, ALIPAY_USER_ID_PREFIX};

/// Reports a malformed `alipay_seller_id` and every id given to a second merchant, naming
/// both merchants. `merchants` holds the resolved values (`env:`/`file:` tokens read).
pub(super) fn check_merchant_ids(
    f: &FileConfig,
    merchants: &HashMap<String, SubMerchant>,
    errs: &mut Errors,
) {
    // Which merchant (the first in file order: `merchants:` is a sorted map) holds each id.
    let mut sub_mchids: BTreeMap<&str, &str> = BTreeMap::new();
    let mut tokens: HashMap<&str, &str> = HashMap::new();
    let mut sellers: BTreeMap<&str, &str> = BTreeMap::new();
    for id in f.merchants.keys() {
        let Some(m) = merchants.get(id) else {
            continue;
        };
        let at = |key: &str| format!("merchants.{id}.{key}");
        if let Some(sub) = m.wechat_sub_mchid.as_deref() {
            if let Some(first) = sub_mchids.insert(sub, id) {
                sub_mchids.insert(sub, first);
                errs.push(
                    &at("wechat_sub_mchid"),
                    format!("{}: {sub:?} is also merchant {first}'s wechat_sub_mchid; one WeChat Pay sub-merchant belongs to one merchant ({first} and {id})", at("wechat_sub_mchid")),
                );
            }
        }
        if let Some(token) = m.alipay_app_auth_token.as_ref() {
            if let Some(&first) = tokens.get(token.expose()) {
                errs.push(
                    &at("alipay_app_auth_token"),
                    format!("{}: the same token as merchant {first}'s alipay_app_auth_token; a token authorizes one merchant's Alipay account ({first} and {id})", at("alipay_app_auth_token")),
                );
            } else {
                tokens.insert(token.expose(), id);
            }
        }
        if let Some(seller) = m.alipay_seller_id.as_deref() {
            if !is_alipay_user_id(seller) {
                errs.push(
                    &at("alipay_seller_id"),
                    format!(
                        "{}: {seller:?} is not an Alipay user id ({ALIPAY_USER_ID_PREFIX} and {} more digits, {ALIPAY_USER_ID_DIGITS} in all)",
                        at("alipay_seller_id"),
                        ALIPAY_USER_ID_DIGITS - ALIPAY_USER_ID_PREFIX.len()
                    ),
                );
            }
            if let Some(first) = sellers.insert(seller, id) {
                sellers.insert(seller, first);
                errs.push(
                    &at("alipay_seller_id"),
                    format!("{}: {seller:?} is also merchant {first}'s alipay_seller_id; one Alipay account belongs to one merchant ({first} and {id})", at("alipay_seller_id")),
                );
            }
        }
    }
}

/// A WeChat Pay sub-merchant is itself a WeChat Pay merchant account: a `wechat_sub_mchid`
/// that is the `mchid` of a direct channel names that channel's account, so the merchant it is
/// given to must be one of the channel's owners — or a partner channel would send its
/// payments into another merchant's own account.
pub(super) fn check_own_accounts(
    f: &FileConfig,
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    merchants: &HashMap<String, SubMerchant>,
    errs: &mut Errors,
) {
    for (name, c) in channels {
        let (ConnectorSettings::WechatPay(w), Some(owners)) = (&c.connector, &c.owners) else {
            continue;
        };
        let WechatMode::Direct { mchid, .. } = &w.mode else {
            continue;
        };
        for id in f.merchants.keys() {
            let given = merchants.get(id).and_then(|m| m.wechat_sub_mchid.as_ref());
            if given == Some(mchid) && !owners.contains(id) {
                let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
                errs.push(
                    &format!("merchants.{id}.wechat_sub_mchid"),
                    format!(
                        "merchants.{id}.wechat_sub_mchid: {mchid:?} is the mchid of channel {name:?}, the own account of merchant(s) {}; {id} is not among its merchants:",
                        owners.join(", ")
                    ),
                );
            }
        }
    }
}

/// An Alipay app collects either for itself (a direct channel) or for merchants (an ISV
/// channel), not both: an ISV notification names its seller, a direct order binds none, so a
/// direct order `X` of that app would match another merchant's ISV notification for its own
/// `X` — and be marked paid with that merchant's money.
pub(super) fn check_alipay_apps(
    channels: &BTreeMap<String, Arc<ChannelSettings>>,
    errs: &mut Errors,
) {
    let mut direct: BTreeMap<&str, &str> = BTreeMap::new();
    let mut isv: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, c) in channels {
        if let ConnectorSettings::Alipay(a) = &c.connector {
            let side = match a.mode {
                AlipayMode::Direct => &mut direct,
                AlipayMode::Isv => &mut isv,
            };
            side.entry(a.app_id.as_str()).or_insert(name.as_str());
        }
    }
    for (app_id, direct_channel) in &direct {
        if let Some(isv_channel) = isv.get(app_id) {
            errs.push(
                &format!("channels.{direct_channel}.app_id"),
                format!(
                    "channels.{direct_channel}.app_id: {app_id:?} is also the app of ISV channel {isv_channel:?}; an Alipay app collects either for itself (direct) or for merchants (isv), since its direct orders name no seller and would match another merchant's notifications"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alipay_user_ids() {
        assert!(is_alipay_user_id("2088000000001001"));
        assert!(!is_alipay_user_id("208800000000100")); // 15 digits
        assert!(!is_alipay_user_id("20880000000010011"));
        assert!(!is_alipay_user_id("1088000000001001"));
        assert!(!is_alipay_user_id("2088abcdefghijkl"));
        assert!(!is_alipay_user_id("２088000000001001"));
    }
}
