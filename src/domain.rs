//! Vocabulary shared by every layer: payment methods, provider families, statuses and money.
//!
//! Routing and the channel connectors must not import each other, yet both speak of
//! methods and amounts; these types live here so that neither has to.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A provider family: which company's rails a method runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Wechat,
    Alipay,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Wechat, Family::Alipay];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Wechat => "wechat",
            Family::Alipay => "alipay",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Bit set of the methods this family serves (see [`Method::bit`]).
    pub fn method_bits(self) -> u16 {
        Method::ALL
            .iter()
            .filter(|m| m.family() == self)
            .fold(0, |acc, m| acc | m.bit())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the payer pays; each method belongs to exactly one [`Family`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    WechatJsapi,
    WechatNative,
    WechatH5,
    WechatApp,
    AlipayPage,
    AlipayWap,
    AlipayApp,
    AlipayPrecreate,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::WechatJsapi,
        Method::WechatNative,
        Method::WechatH5,
        Method::WechatApp,
        Method::AlipayPage,
        Method::AlipayWap,
        Method::AlipayApp,
        Method::AlipayPrecreate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::WechatJsapi => "wechat_jsapi",
            Method::WechatNative => "wechat_native",
            Method::WechatH5 => "wechat_h5",
            Method::WechatApp => "wechat_app",
            Method::AlipayPage => "alipay_page",
            Method::AlipayWap => "alipay_wap",
            Method::AlipayApp => "alipay_app",
            Method::AlipayPrecreate => "alipay_precreate",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn family(self) -> Family {
        match self {
            Method::WechatJsapi | Method::WechatNative | Method::WechatH5 | Method::WechatApp => {
                Family::Wechat
            }
            _ => Family::Alipay,
        }
    }

    /// One bit per method, so that rule conditions on methods are a single AND.
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The methods in a bit set, in declaration order.
    pub fn from_bits(bits: u16) -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().filter(move |m| bits & m.bit() != 0)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lifecycle state of a payment as the shop sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Created at the channel (or about to be); not paid yet.
    Pending,
    Succeeded,
    Closed,
    Failed,
    /// The channel may or may not have the order: a timeout or an unverifiable answer.
    /// The shop retries with the same `out_trade_no`, which goes to the same channel.
    Unknown,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Closed => "closed",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<PaymentStatus> {
        [
            PaymentStatus::Pending,
            PaymentStatus::Succeeded,
            PaymentStatus::Closed,
            PaymentStatus::Failed,
            PaymentStatus::Unknown,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded | PaymentStatus::Closed | PaymentStatus::Failed
        )
    }

    /// Whether a stored status may move to `next` on the word of the bound channel.
    ///
    /// Money is the truth: a channel that says "paid" wins over any earlier state, but
    /// nothing moves a succeeded payment back (refunds are tracked apart from the status).
    pub fn may_become(self, next: PaymentStatus) -> bool {
        match (self, next) {
            (a, b) if a == b => false,
            (PaymentStatus::Succeeded, _) => false,
            (_, PaymentStatus::Succeeded) => true,
            (PaymentStatus::Pending | PaymentStatus::Unknown, _) => next != PaymentStatus::Unknown,
            (PaymentStatus::Closed | PaymentStatus::Failed, _) => false,
        }
    }

    /// Whether a move to `next` is a *late payment*: paid after payroute had told the shop
    /// the order was over (`payment.closed` / `payment.failed`; an expired order is closed by
    /// the reconciler). Until then the provider, which enforces the order's expiry itself,
    /// may still report it paid in time.
    pub fn paid_late(self, next: PaymentStatus) -> bool {
        matches!(self, PaymentStatus::Closed | PaymentStatus::Failed)
            && next == PaymentStatus::Succeeded
    }
}

/// What payroute does with a late payment (config `late_payments`, overridable per merchant).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatePolicy {
    /// Refund it in full, once, at the bound account (ARCHITECTURE.md, "Money rules": late and
    /// duplicate payments).
    #[default]
    Refund,
    /// Keep the money; the shop is told and decides.
    Keep,
}

impl LatePolicy {
    pub const ALL: [LatePolicy; 2] = [LatePolicy::Refund, LatePolicy::Keep];

    pub fn as_str(self) -> &'static str {
        match self {
            LatePolicy::Refund => "refund",
            LatePolicy::Keep => "keep",
        }
    }

    pub fn parse(s: &str) -> Option<LatePolicy> {
        LatePolicy::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The late-payment policy of every merchant: the top-level one, and the merchants that
/// override it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatePolicies {
    pub default: LatePolicy,
    pub merchants: std::collections::HashMap<String, LatePolicy>,
}

impl LatePolicies {
    pub fn for_merchant(&self, merchant_id: &str) -> LatePolicy {
        self.merchants
            .get(merchant_id)
            .copied()
            .unwrap_or(self.default)
    }
}

/// The state of one refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Asked for (or being processed by the channel); its amount is reserved.
    Pending,
    Succeeded,
    /// Refused or abandoned by the channel; its amount is free again.
    Failed,
    /// WeChat Pay `ABNORMAL`: the money left the merchant's account but could not reach the
    /// payer (a closed card, a frozen account). Ops must act; the amount stays reserved.
    Abnormal,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] = [
        RefundStatus::Pending,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
        RefundStatus::Abnormal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Abnormal => "abnormal",
        }
    }

    pub fn parse(s: &str) -> Option<RefundStatus> {
        RefundStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the channel may still change it (so a refresh asks the channel).
    pub fn is_open(self) -> bool {
        matches!(self, RefundStatus::Pending | RefundStatus::Abnormal)
    }
}

/// A shop event (ARCHITECTURE.md, "Shop events and webhooks"): what the shop's webhook is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    PaymentSucceeded,
    /// Paid after the shop was told the order was over; says what payroute did about it
    /// (`late_action`). Sent instead of `payment.succeeded`.
    PaymentLate,
    PaymentClosed,
    PaymentFailed,
    RefundSucceeded,
    RefundFailed,
    /// The refund left the merchant but did not reach the payer: ops must act.
    RefundAbnormal,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::PaymentSucceeded,
        EventType::PaymentLate,
        EventType::PaymentClosed,
        EventType::PaymentFailed,
        EventType::RefundSucceeded,
        EventType::RefundFailed,
        EventType::RefundAbnormal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentLate => "payment.late",
            EventType::PaymentClosed => "payment.closed",
            EventType::PaymentFailed => "payment.failed",
            EventType::RefundSucceeded => "refund.succeeded",
            EventType::RefundFailed => "refund.failed",
            EventType::RefundAbnormal => "refund.abnormal",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event a payment reaching `status` emits, if any.
    pub fn for_payment(status: PaymentStatus) -> Option<EventType> {
        match status {
            PaymentStatus::Succeeded => Some(EventType::PaymentSucceeded),
            PaymentStatus::Closed => Some(EventType::PaymentClosed),
            PaymentStatus::Failed => Some(EventType::PaymentFailed),
            PaymentStatus::Pending | PaymentStatus::Unknown => None,
        }
    }

    /// The event a refund reaching `status` emits, if any.
    pub fn for_refund(status: RefundStatus) -> Option<EventType> {
        match status {
            RefundStatus::Succeeded => Some(EventType::RefundSucceeded),
            RefundStatus::Failed => Some(EventType::RefundFailed),
            RefundStatus::Abnormal => Some(EventType::RefundAbnormal),
            RefundStatus::Pending => None,
        }
    }
}

/// Where a shop event is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    Pending,
    Delivered,
    /// Every retry of the schedule failed; resend from the admin API.
    Dead,
}

impl EventStatus {
    pub const ALL: [EventStatus; 3] = [
        EventStatus::Pending,
        EventStatus::Delivered,
        EventStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Delivered => "delivered",
            EventStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<EventStatus> {
        EventStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Why the last channel call of a payment or refund failed, as stored and as the shop sees
/// it (the unified API's `channel_*` codes, ARCHITECTURE.md, "The unified API and its errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelFailure {
    /// The provider's final business refusal (`402 channel_rejected`).
    Rejected,
    /// Nothing reached the channel, or it said "try again" (`503 channel_unavailable`).
    Unavailable,
    /// An answer that could not be trusted or understood (`502 channel_error`).
    Error,
    /// The request may have reached the channel and no answer came (`504 channel_timeout`).
    Timeout,
}

impl ChannelFailure {
    pub const ALL: [ChannelFailure; 4] = [
        ChannelFailure::Rejected,
        ChannelFailure::Unavailable,
        ChannelFailure::Error,
        ChannelFailure::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelFailure::Rejected => "channel_rejected",
            ChannelFailure::Unavailable => "channel_unavailable",
            ChannelFailure::Error => "channel_error",
            ChannelFailure::Timeout => "channel_timeout",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelFailure> {
        ChannelFailure::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// The provider account that holds an order's money: what a payment is bound to, beside the channel
/// name (ARCHITECTURE.md, "Money rules": the binding). Two channels with equal accounts are
/// interchangeable for an existing order; a channel whose account differs must never see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub provider: String,
    pub mode: String,
    /// WeChat Pay: `mchid` (direct) or `sp_mchid` (partner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mchid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_mchid: Option<String>,
    /// WeChat Pay `appid` / `sp_appid`; Alipay `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Alipay ISV: the merchant's Alipay user id (`merchants.<id>.alipay_seller_id`, `2088…`),
    /// which Alipay signs into notifications as `seller_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller: Option<String>,
}

impl Account {
    /// An Alipay ISV account bound by an earlier version, which named the seller by a
    /// fingerprint of the merchant's `app_auth_token` rather than its Alipay user id.
    pub fn names_seller_by_token(&self) -> bool {
        self.provider == "alipay"
            && self.mode == "isv"
            && !self.seller.as_deref().is_some_and(is_alipay_user_id)
    }

    /// What differs between the bound account and `other`, for the refusal message.
    pub fn differences(&self, other: &Account) -> String {
        let field = |name: &str, a: &Option<String>, b: &Option<String>| {
            (a != b).then(|| {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
                format!("{name} {} → {}", show(a), show(b))
            })
        };
        let mut diffs: Vec<String> = Vec::new();
        if self.provider != other.provider || self.mode != other.mode {
            diffs.push(format!(
                "{} {} → {} {}",
                self.provider, self.mode, other.provider, other.mode
            ));
        }
        diffs.extend(field("mchid", &self.mchid, &other.mchid));
        diffs.extend(field("sub_mchid", &self.sub_mchid, &other.sub_mchid));
        diffs.extend(field("app_id", &self.app_id, &other.app_id));
        diffs.extend(field("seller", &self.seller, &other.seller));
        diffs.join(", ")
    }
}

/// Every Alipay user id (the `seller_id` of a notification) starts with this…
pub const ALIPAY_USER_ID_PREFIX: &str = "2088";
/// …and has this many digits in all.
pub const ALIPAY_USER_ID_DIGITS: usize = 16;

/// Whether `id` looks like an Alipay user id: `2088` and 12 more digits.
pub fn is_alipay_user_id(id: &str) -> bool {
    id.len() == ALIPAY_USER_ID_DIGITS
        && id.starts_with(ALIPAY_USER_ID_PREFIX)
        && id.bytes().all(|b| b.is_ascii_digit())
}

/// Largest amount accepted, in minor units (fen): 100 million yuan.
pub const MAX_AMOUNT: u64 = 10_000_000_000;

/// Fen to Alipay's yuan string with exactly two decimals: `1999` → `"19.99"`.
pub fn yuan(fen: u64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Alipay's yuan string to fen, exactly, never through a float. Accepts `19.99`, `19.9`,
/// `19`, `0.01`; refuses more than two decimals, exponents, signs, spaces, leading zeros
/// (`019.99`), empty parts (`19.`, `.5`) and anything that overflows.
pub fn parse_yuan(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a yuan amount with at most two decimals");
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (int.len() > 1 && int.starts_with('0')) {
        return Err(bad());
    }
    let cents = match frac {
        None => 0,
        Some(f) if digits(f) && f.len() <= 2 => {
            let v: u64 = f.parse().map_err(|_| bad())?;
            if f.len() == 1 {
                v * 10
            } else {
                v
            }
        }
        Some(_) => return Err(bad()),
    };
    int.parse::<u64>()
        .ok()
        .and_then(|i| i.checked_mul(100))
        .and_then(|i| i.checked_add(cents))
        .ok_or_else(bad)
}

/// A fee rate in parts per million, parsed exactly from a decimal string such as `0.0038`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeeRate {
    pub ppm: u32,
}

impl FeeRate {
    /// Parses `0`, `0.006`, `0.0038`, `1` — at most 6 decimals, at most 1 (100%).
    pub fn parse(s: &str) -> Result<FeeRate, String> {
        let s = s.trim();
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !(frac.is_empty() || digits(frac)) {
            return Err(format!("{s:?} is not a decimal fraction such as 0.006"));
        }
        if frac.len() > 6 {
            return Err(format!("{s:?} has more than 6 decimals"));
        }
        let int: u64 = int.parse().map_err(|_| format!("{s:?} is too large"))?;
        let frac_val: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().unwrap_or(0)
        };
        let ppm = int
            .checked_mul(1_000_000)
            .and_then(|v| v.checked_add(frac_val * 10u64.pow(6 - frac.len() as u32)))
            .filter(|v| *v <= 1_000_000)
            .ok_or_else(|| format!("{s:?} is above 1 (100%)"))?;
        Ok(FeeRate { ppm: ppm as u32 })
    }

    /// Estimated fee for `amount` minor units, rounded half up, in minor units.
    pub fn fee(self, amount: u64) -> u64 {
        ((amount as u128 * self.ppm as u128 + 500_000) / 1_000_000) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_rate_is_exact() {
        assert_eq!(FeeRate::parse("0.006").unwrap().ppm, 6000);
        assert_eq!(FeeRate::parse("0.0038").unwrap().ppm, 3800);
        assert_eq!(FeeRate::parse("1").unwrap().ppm, 1_000_000);
        assert!(FeeRate::parse("1.5").is_err());
        assert!(FeeRate::parse("0.0000001").is_err());
        assert!(FeeRate::parse("-0.1").is_err());
        assert!(FeeRate::parse("1e-3").is_err());
        // 0.38% of 100.00 yuan is 0.38 yuan; 0.6% of 0.83 yuan rounds half up to 0.05.
        assert_eq!(FeeRate::parse("0.0038").unwrap().fee(10_000), 38);
        assert_eq!(FeeRate::parse("0.006").unwrap().fee(83), 0);
        assert_eq!(FeeRate::parse("0.006").unwrap().fee(84), 1);
        assert_eq!(FeeRate::parse("0.006").unwrap().fee(MAX_AMOUNT), 60_000_000);
    }

    #[test]
    fn yuan_strings_are_exact() {
        assert_eq!(yuan(1999), "19.99");
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(100), "1.00");
        assert_eq!(yuan(MAX_AMOUNT), "100000000.00");
        assert_eq!(parse_yuan("19.99"), Ok(1999));
        assert_eq!(parse_yuan("19.9"), Ok(1990));
        assert_eq!(parse_yuan("19"), Ok(1900));
        assert_eq!(parse_yuan("0.01"), Ok(1));
        assert_eq!(parse_yuan("0.10"), Ok(10));
        for bad in [
            "19.999",
            "1e3",
            "-1.00",
            "",
            "19.",
            ".5",
            "+1",
            " 1",
            "1 ",
            "019.99",
            "1,00",
            "0x10",
            "18446744073709551616",
        ] {
            assert!(parse_yuan(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Over the whole accepted range: fen → yuan string → fen is the identity.
        #[test]
        fn fen_yuan_round_trip(fen in 1u64..=MAX_AMOUNT) {
            proptest::prop_assert_eq!(parse_yuan(&yuan(fen)), Ok(fen));
        }
    }

    #[test]
    fn status_transitions_never_undo_a_payment() {
        use PaymentStatus::*;
        assert!(Pending.may_become(Succeeded));
        assert!(Unknown.may_become(Pending));
        assert!(Closed.may_become(Succeeded));
        assert!(!Succeeded.may_become(Closed));
        assert!(!Succeeded.may_become(Pending));
        assert!(!Closed.may_become(Pending));
        assert!(!Unknown.may_become(Unknown));
        assert!(!Pending.may_become(Unknown));
    }

    #[test]
    fn only_a_payment_of_an_ended_order_is_late() {
        use PaymentStatus::*;
        assert!(Closed.paid_late(Succeeded));
        assert!(Failed.paid_late(Succeeded));
        for before in [Pending, Unknown, Succeeded] {
            assert!(!before.paid_late(Succeeded));
        }
        assert!(!Closed.paid_late(Closed));
        for p in LatePolicy::ALL {
            assert_eq!(LatePolicy::parse(p.as_str()), Some(p));
        }
        assert_eq!(LatePolicy::default(), LatePolicy::Refund);
    }

    #[test]
    fn methods_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()), Some(m));
            assert_eq!(Family::parse(m.family().as_str()), Some(m.family()));
        }
        assert_eq!(Method::from_bits(Family::Wechat.method_bits()).count(), 4);
    }
}
