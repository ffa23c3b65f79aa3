//! Trade statements end to end (issue 19, the parts built so far): payments paid and refunded
//! through payroute, each account's statement fetched by payroute's own channels from the
//! sandbox over its socket, then checked and parsed by `statements` — both providers, both
//! modes, and a corrupted file is an error with no rows.

use crate::support;

use std::sync::Arc;

use payroute::channel::{ChannelMetrics, ChannelSet, StatementFile, SubMerchant};
use payroute::config::Config;
use payroute::resilience::Resilience;
use payroute::statements::{self, RowKind, Statement, StatementError};
use prometheus::Registry;
use serde_json::json;
use support::{within, Harness, MIXED_RULES};

/// Today in China: the day the sandbox books what the test just paid.
fn china_today() -> time::Date {
    time::OffsetDateTime::now_utc()
        .to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap())
        .date()
}

/// The harness's channels, built from its config file as `payroute serve` builds them.
fn channels(h: &Harness) -> (Config, ChannelSet) {
    let config = Config::load(&h.config_path).expect("the harness config loads");
    let registry = Registry::new();
    let set = ChannelSet::build(
        &config.channels,
        &Arc::new(ChannelMetrics::new(&registry).unwrap()),
        &Arc::new(Resilience::new(&registry).unwrap()),
    )
    .expect("channels build");
    (config, set)
}

async fn fetch(set: &ChannelSet, config: &Config, channel: &str, merchant: &str) -> StatementFile {
    let sub: SubMerchant = config.merchants.get(merchant).cloned().unwrap_or_default();
    let ch = set.get(channel).expect("channel");
    within("statement", ch.trade_statement(china_today(), &sub))
        .await
        .unwrap_or_else(|e| panic!("{channel} statement for {merchant}: {e}"))
}

/// The payment row of `no` and the refund row of `refund_no`, checked against what was paid
/// and refunded and the channel's fee rate.
fn check(
    st: &Statement,
    config: &Config,
    channel: &str,
    no: &str,
    amount: u64,
    refund_no: &str,
    refunded: u64,
) {
    let rate = config.channels[channel].fee;
    let paid = st
        .rows
        .iter()
        .find(|r| r.kind == RowKind::Payment && r.out_trade_no == no)
        .unwrap_or_else(|| panic!("{channel}: no payment row for {no}: {:?}", st.rows));
    assert_eq!(paid.amount, amount, "{channel} {no}");
    assert_eq!(
        paid.fee,
        rate.fee(amount) as i64,
        "{channel} {no}: the fee charged"
    );
    assert!(!paid.provider_trade_no.is_empty());
    let refund = st
        .rows
        .iter()
        .find(|r| r.kind == RowKind::Refund && r.out_refund_no.as_deref() == Some(refund_no))
        .unwrap_or_else(|| panic!("{channel}: no refund row {refund_no}: {:?}", st.rows));
    assert_eq!(
        (refund.out_trade_no.as_str(), refund.amount),
        (no, refunded),
        "{channel}"
    );
    assert_eq!(
        refund.fee,
        -(rate.fee(refunded) as i64),
        "{channel}: the fee returned"
    );
    assert_eq!(
        st.payments, 1,
        "{channel}: this account's payment only: {:?}",
        st.rows
    );
    assert_eq!(st.refunds, 1, "{channel}");
}

#[tokio::test]
async fn each_accounts_statement_lists_its_payments_refunds_and_fees() {
    let h = Harness::start_alipay(MIXED_RULES).await;
    // (merchant, order, method, amount, channel): both providers, both modes.
    let cases = [
        (
            "m_1001",
            "st-wx-direct",
            "wechat_native",
            1999,
            "m1001_wechat",
        ),
        (
            "m_4004",
            "st-wx-partner",
            "wechat_native",
            2500,
            "platform_wechat",
        ),
        (
            "m_2002",
            "st-ali-direct",
            "alipay_precreate",
            3999,
            "m2002_alipay",
        ),
        (
            "m_4004",
            "st-ali-isv",
            "alipay_precreate",
            1234,
            "platform_alipay",
        ),
    ];
    for (merchant, no, method, amount, channel) in cases {
        let p = h.paid(merchant, no, method, amount).await;
        assert_eq!(p["channel"], channel, "{p}");
        let r = h
            .refund(&json!({"merchant_id": merchant, "out_trade_no": no, "out_refund_no": format!("{no}-r1"), "amount": 500}))
            .await;
        assert_eq!(
            (r.status, r.body["status"].as_str()),
            (201, Some("succeeded")),
            "{}",
            r.text
        );
    }
    let (config, set) = channels(&h);
    for (merchant, no, _, amount, channel) in cases {
        let file = fetch(&set, &config, channel, merchant).await;
        let st = statements::parse(&file)
            .unwrap_or_else(|e| panic!("{channel} statement does not parse: {e}"));
        check(&st, &config, channel, no, amount, &format!("{no}-r1"), 500);
    }

    // A corrupted file is an error, never a partial statement.
    h.faults(json!({"corrupt_statements": true})).await;
    let file = fetch(&set, &config, "m1001_wechat", "m_1001").await;
    assert!(matches!(
        statements::parse(&file),
        Err(StatementError::HashMismatch { .. })
    ));
    let file = fetch(&set, &config, "m2002_alipay", "m_2002").await;
    assert!(statements::parse(&file).is_err(), "a truncated zip");
    h.shutdown().await;
}

#[tokio::test]
async fn a_day_not_yet_booked_is_not_found() {
    let h = Harness::start_alipay(MIXED_RULES).await;
    let (config, set) = channels(&h);
    let tomorrow = china_today().next_day().unwrap();
    for (channel, merchant) in [("m1001_wechat", "m_1001"), ("m2002_alipay", "m_2002")] {
        let sub = config.merchants.get(merchant).cloned().unwrap_or_default();
        let e = within(
            "statement",
            set.get(channel).unwrap().trade_statement(tomorrow, &sub),
        )
        .await
        .expect_err("tomorrow has no statement");
        assert_eq!(
            e.kind,
            payroute::channel::ErrorKind::NotFound,
            "{channel}: {e}"
        );
    }
    h.shutdown().await;
}
