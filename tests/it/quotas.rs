//! Quotas ("bank limits", issue 18) end to end: `GET /admin/quotas` shows, per account a
//! channel with a `quota` holds, what the account has taken today and this month (China
//! calendar) against each limit.

use crate::support;

use serde_json::{json, Value};
use support::{payment, wechat_partner, Harness};

/// m_1001's WeChat payments go to `platform_quota`: the platform's partner account again
/// under another name, with a quota (fen).
const RULES: &str = r#"
  rules:
    - name: m1001-quota
      when: { merchant: m_1001, family: wechat }
      to: platform_quota
  default: { wechat: platform_wechat }
"#;

/// The row of `channel` at sub-merchant `sub_mchid`.
fn row<'a>(body: &'a Value, channel: &str, sub_mchid: &str) -> &'a Value {
    body["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["channel"] == channel && r["account"]["sub_mchid"] == sub_mchid)
        .unwrap_or_else(|| panic!("no {channel} row at {sub_mchid}: {body}"))
}

#[tokio::test]
async fn admin_quotas_shows_used_and_left_per_account() {
    let h = Harness::start().await;
    let quota = wechat_partner(
        &h.upstream,
        "platform_quota",
        "1900000100",
        "wx8888888888888888",
        "5157F09EFDC096DE15EBE81A47057A72",
        "platform_apiclient_key.pem",
    )
    .with(
        "quota",
        "{ daily: 100000, monthly: 2000000, single: 50000 }",
    );
    h.reload_with(RULES, &quota.to_string()).await;

    for (no, amount) in [("quota-1", 1_000), ("quota-2", 2_500)] {
        h.create(&payment("m_1001", no, "wechat_native", amount, json!({})))
            .await
            .expect_created_on("platform_quota");
    }
    let r = h.admin_get("/admin/quotas").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m1001 = row(&r.body, "platform_quota", "1900000109");
    assert_eq!(m1001["merchants"], json!(["m_1001"]), "{}", r.text);
    assert_eq!(
        m1001["account"],
        json!({ "provider": "wechatpay_v3", "mode": "partner", "mchid": "1900000100",
                "sub_mchid": "1900000109", "app_id": "wx8888888888888888" })
    );
    assert_eq!(
        m1001["daily"],
        json!({ "limit": 100000, "used": 3500, "left": 96500 })
    );
    assert_eq!(
        m1001["monthly"],
        json!({ "limit": 2000000, "used": 3500, "left": 1996500 })
    );
    assert_eq!(m1001["single"], 50000);
    // Every merchant with a sub-merchant id has an account (and a room) of its own there.
    let m2002 = row(&r.body, "platform_quota", "1900000209");
    assert_eq!(m2002["merchants"], json!(["m_2002"]));
    assert_eq!(m2002["daily"]["used"], 0);
    // Only channels with a quota; never a token.
    assert!(r.body["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["channel"] == "platform_quota"));
    assert!(!r.text.contains("tok_"), "{}", r.text);
    assert!(r.body["day_start"]
        .as_str()
        .unwrap()
        .ends_with("T16:00:00Z"));

    // A closed payment will never be paid: its room is free again.
    let closed = h.close("m_1001", "quota-2").await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    let r = h.admin_get("/admin/quotas").await;
    let m1001 = row(&r.body, "platform_quota", "1900000109");
    assert_eq!(
        m1001["daily"],
        json!({ "limit": 100000, "used": 1000, "left": 99000 })
    );
}
