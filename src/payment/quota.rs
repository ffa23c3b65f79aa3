//! A channel's quota for one payment (DESIGN.md §13, "bank limits"): the `single` limit judged
//! here, the daily and monthly ones handed to the store as a [`QuotaGuard`], which checks them
//! in the same transaction as the write (`store::quotas`).

use crate::channel::Quota;
use crate::clock::{china_day_start_ms, china_month_start_ms};
use crate::domain::Account;
use crate::store::{Over, Period, QuotaGuard};

/// What a payment of `amount` fen to `account` at `now_ms` must fit under `quota`:
/// `Err` when it is above `single` (no store needed: `used` is 0); `Ok(None)` when the quota
/// has no daily or monthly limit (nothing for the store to check); otherwise the guard, its
/// periods starting at the China calendar day's and month's midnight (UTC+8) holding
/// `now_ms`.
pub fn guard_for(
    quota: &Quota,
    account: &Account,
    amount: u64,
    now_ms: i64,
) -> Result<Option<QuotaGuard>, Over> {
    if let Some(limit) = quota.single.filter(|limit| amount > *limit) {
        return Err(Over {
            period: Period::Single,
            used: 0,
            limit,
        });
    }
    if quota.daily.is_none() && quota.monthly.is_none() {
        return Ok(None);
    }
    Ok(Some(QuotaGuard {
        account: account.clone(),
        amount,
        daily: quota.daily.map(|l| (l, china_day_start_ms(now_ms))),
        monthly: quota.monthly.map(|l| (l, china_month_start_ms(now_ms))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            provider: "wechatpay_v3".into(),
            mode: "direct".into(),
            mchid: Some("1900000109".into()),
            sub_mchid: None,
            app_id: Some("wx2421b1c4370ec43b".into()),
            seller: None,
        }
    }

    /// 2024-03-15T04:00Z: 12:00 China time on 15 March.
    const NOON: i64 = 1_710_475_200_000;

    #[test]
    fn single_is_judged_without_the_store() {
        let q = Quota {
            single: Some(500),
            ..Quota::default()
        };
        assert_eq!(
            guard_for(&q, &account(), 501, NOON),
            Err(Over {
                period: Period::Single,
                used: 0,
                limit: 500
            })
        );
        assert_eq!(guard_for(&q, &account(), 500, NOON), Ok(None));
    }

    #[test]
    fn daily_and_monthly_become_a_guard_with_china_starts() {
        let q = Quota {
            daily: Some(5_000),
            monthly: Some(100_000),
            single: Some(500),
        };
        let g = guard_for(&q, &account(), 400, NOON).unwrap().unwrap();
        assert_eq!(g.account, account());
        assert_eq!(g.amount, 400);
        // 2024-03-15 00:00 China = 2024-03-14T16:00Z; 2024-03-01 00:00 China = 2024-02-29T16:00Z.
        assert_eq!(g.daily, Some((5_000, 1_710_432_000_000)));
        assert_eq!(g.monthly, Some((100_000, 1_709_222_400_000)));
        let daily_only = Quota {
            daily: Some(5_000),
            ..Quota::default()
        };
        let g = guard_for(&daily_only, &account(), 400, NOON)
            .unwrap()
            .unwrap();
        assert_eq!(g.monthly, None);
    }
}
