//! Adaptive choice: which of a rule's channels take a payment given what is happening now —
//! each channel's recent success, whether ops drained it, and (for `choose`) its fee.
//!
//! Still pure: the caller passes what it knows as [`Signals`] (a snapshot of health windows
//! and drain switches); everything here is a function of those, the rule and the payment's
//! facts, so a test can replay a choice. Randomness (probes, exploration) is a hash of the
//! merchant and the order number, never a random source: the same order always gets the
//! same answer from the same scores.
//!
//! # Safety of retries
//! This module only orders candidates *before* anything is sent. A skipped candidate is a
//! channel nothing was sent to; the payment layer fails over along the order only while
//! nothing was sent (DESIGN §7 is unchanged).

use crate::domain::FeeRate;

/// Parts per million: shares and thresholds kept exact, as integers.
pub const PPM: u32 = 1_000_000;

/// A share or ratio as ops write it — `5%`, `0.05`, `50%`, `0.5`, `1` — in ppm, exactly.
pub fn parse_share(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a share such as 5% or 0.05");
    // Decimals that make a whole ppm: a percent has four, a fraction six.
    let (digits, scale_decimals) = match t.strip_suffix('%') {
        Some(p) => (p.trim(), 4u32),
        None => (t, 6u32),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !all_digits(int)
        || !all_digits(frac)
        || (digits.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    if frac.len() as u32 > scale_decimals {
        return Err(format!("{s:?} is finer than a millionth"));
    }
    let int: u64 = int.parse().map_err(|_| bad())?;
    let frac_val: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let unit = 10u64.pow(scale_decimals);
    let ppm = int
        .checked_mul(unit)
        .and_then(|v| v.checked_add(frac_val * 10u64.pow(scale_decimals - frac.len() as u32)))
        .filter(|v| *v <= PPM as u64)
        .ok_or_else(|| format!("{s:?} is above 100%"))?;
    Ok(ppm as u32)
}

/// When a channel is eliminated and how it comes back (`routing.health`; a rule may override
/// the thresholds). The window's length and `readmit_after` belong to the channel's health
/// window, not to a rule, and live with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Fewer outcomes than this in the window: not judged (a new channel is not eliminated on
    /// its first failure).
    pub min_samples: u32,
    /// Success ratio, in ppm, below which a judged channel is eliminated.
    pub eliminate_below_ppm: u32,
    /// Share of new orders, in ppm, still sent to an eliminated channel to see it recover.
    pub probe_ppm: u32,
}

/// A rule's `choose`: rank candidates per payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choose {
    pub from: Vec<String>,
    pub by: By,
    /// Share of payments, in ppm, sent to another healthy candidate than the best, so that
    /// every candidate's score stays fresh.
    pub explore_ppm: u32,
}

/// What `choose` ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Expected value: success ratio × (amount − fee).
    Value,
    SuccessRate,
    /// The lowest fee.
    Cost,
}

impl By {
    pub fn parse(s: &str) -> Option<By> {
        Some(match s {
            "value" => By::Value,
            "success_rate" => By::SuccessRate,
            "cost" => By::Cost,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            By::Value => "value",
            By::SuccessRate => "success_rate",
            By::Cost => "cost",
        }
    }
}

/// A channel's health window as the caller sees it now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub successes: u32,
    pub samples: u32,
}

impl Sample {
    /// Whether the window says the channel is below the policy's threshold.
    pub fn eliminated(self, p: &HealthPolicy) -> bool {
        self.samples >= p.min_samples.max(1)
            && (self.successes as u64) * (PPM as u64)
                < (p.eliminate_below_ppm as u64) * (self.samples as u64)
    }

    /// The ratio used to score, as a fraction: a window too small to judge scores as fully
    /// successful (optimistic, so that a new channel gets the orders that measure it).
    fn score_ratio(self, p: &HealthPolicy) -> (u64, u64) {
        if self.samples < p.min_samples.max(1) {
            (1, 1)
        } else {
            (self.successes as u64, self.samples as u64)
        }
    }

    /// The success ratio for people (gauges, explain); `None` with no samples.
    pub fn ratio(self) -> Option<f64> {
        (self.samples > 0).then(|| self.successes as f64 / self.samples as f64)
    }
}

/// What routing may know of a channel right now. No I/O: a snapshot the caller holds.
pub trait Signals {
    fn health(&self, channel: &str) -> Sample;
    fn drained(&self, channel: &str) -> bool;
}

/// No live state at all (`payroute explain` from the CLI): every channel healthy, none
/// drained.
pub struct NoSignals;

impl Signals for NoSignals {
    fn health(&self, _: &str) -> Sample {
        Sample::default()
    }
    fn drained(&self, _: &str) -> bool {
        false
    }
}

/// Why a candidate is in the order it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The rule's `to`, or the family default.
    Rule,
    /// Picked by the split's weights.
    Split,
    /// Ranked first (or next) by `choose`.
    Chosen,
    /// `choose`'s exploration share.
    Explore,
    /// An eliminated channel's probe share.
    Probe,
    Fallback,
    /// Every candidate was eliminated: the best of them is still tried.
    LastResort,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Rule => "rule",
            Why::Split => "split",
            Why::Chosen => "chosen",
            Why::Explore => "explore",
            Why::Probe => "probe",
            Why::Fallback => "fallback",
            Why::LastResort => "last_resort",
        }
    }
}

/// Why a candidate was passed over without sending anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    Eliminated,
    Drained,
    Quota,
    Circuit,
    Limit,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Eliminated,
        SkipReason::Drained,
        SkipReason::Quota,
        SkipReason::Circuit,
        SkipReason::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Eliminated => "eliminated",
            SkipReason::Drained => "drained",
            SkipReason::Quota => "quota",
            SkipReason::Circuit => "circuit",
            SkipReason::Limit => "limit",
        }
    }
}

/// One channel in a rule's order before filtering, and how it got its place.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placed<'r> {
    pub(super) channel: &'r str,
    pub(super) why: Why,
}

/// Stable per-order dice: independent draws from one order hash, one per purpose.
pub(super) fn roll(order_hash: u64, salt: &str) -> u32 {
    let mut h = order_hash;
    for b in salt.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (mix(h) % PPM as u64) as u32
}

/// SplitMix64's finaliser.
pub(super) fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A weighted order over split choices: the first by the order's hash (as a split has always
/// picked), then the rest the same way among what is left.
pub(super) fn split_order(choices: &[(String, u32)], order_hash: u64) -> Vec<&str> {
    let mut left: Vec<(&str, u64)> = choices
        .iter()
        .map(|(c, w)| (c.as_str(), *w as u64))
        .collect();
    let mut out = Vec::with_capacity(left.len());
    let mut h = order_hash;
    while !left.is_empty() {
        let total: u64 = left.iter().map(|(_, w)| w).sum();
        let i = if total == 0 {
            0
        } else {
            let mut point = h % total;
            left.iter()
                .position(|(_, w)| {
                    let hit = point < *w;
                    point = point.saturating_sub(*w);
                    hit
                })
                .unwrap_or(0)
        };
        out.push(left.remove(i).0);
        h = mix(h ^ 0x9e37_79b9_7f4a_7c15);
    }
    out
}

/// The fee and the scores `choose` ranks by, for one candidate and one amount.
#[derive(Clone, Copy, Debug)]
pub struct Score {
    pub fee: u64,
    /// The success ratio scored with, as a fraction (see [`Sample`]).
    ratio: (u64, u64),
    net: u64,
}

impl Score {
    pub fn new(sample: Sample, fee: FeeRate, amount: u64, p: &HealthPolicy) -> Score {
        let fee = fee.fee(amount);
        Score {
            fee,
            ratio: sample.score_ratio(p),
            net: amount.saturating_sub(fee),
        }
    }

    /// Expected value in minor units, rounded down (for people; ranking is exact).
    pub fn value(&self) -> u64 {
        (self.ratio.0 as u128 * self.net as u128 / self.ratio.1.max(1) as u128) as u64
    }

    /// Whether `self` ranks strictly above `other` by `by`. Cross-multiplied in u128 so
    /// no ratio is ever rounded or floated.
    pub fn beats(&self, other: &Score, by: By) -> bool {
        let (s1, n1) = (self.ratio.0 as u128, self.ratio.1 as u128);
        let (s2, n2) = (other.ratio.0 as u128, other.ratio.1 as u128);
        match by {
            By::Value => s1 * self.net as u128 * n2 > s2 * other.net as u128 * n1,
            By::SuccessRate => s1 * n2 > s2 * n1,
            By::Cost => self.fee < other.fee,
        }
    }
}

/// `choose`'s order: healthy candidates best first (ties keep the list's order), with the
/// exploration share moving another healthy one to the front; then the eliminated ones (the
/// filter decides whether they are probed).
pub(super) fn choose_order<'r>(
    c: &'r Choose,
    scores: &[Score],
    healthy: &[bool],
    order_hash: u64,
) -> Vec<Placed<'r>> {
    let mut idx: Vec<usize> = (0..c.from.len()).collect();
    // Stable insertion sort: lists are short (≤ 10s), and it keeps ties in file order.
    for i in 1..idx.len() {
        let mut j = i;
        while j > 0 && better(idx[j], idx[j - 1], scores, healthy, c.by) {
            idx.swap(j, j - 1);
            j -= 1;
        }
    }
    let n_healthy = idx.iter().filter(|&&i| healthy[i]).count();
    let mut whys = vec![Why::Chosen; idx.len()];
    if n_healthy > 1 && roll(order_hash, "explore") < c.explore_ppm {
        let k = 1 + (mix(order_hash ^ 0x5851_f42d_4c95_7f2d) % (n_healthy as u64 - 1)) as usize;
        let picked = idx.remove(k);
        idx.insert(0, picked);
        whys[0] = Why::Explore;
    }
    idx.iter()
        .zip(whys)
        .map(|(&i, why)| Placed {
            channel: c.from[i].as_str(),
            why,
        })
        .collect()
}

fn better(a: usize, b: usize, scores: &[Score], healthy: &[bool], by: By) -> bool {
    match (healthy[a], healthy[b]) {
        (true, false) => true,
        (false, true) => false,
        // Among the eliminated, the better success ratio first: the last resort's pick.
        (false, false) => scores[a].beats(&scores[b], By::SuccessRate),
        (true, true) => scores[a].beats(&scores[b], by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            min_samples: 20,
            eliminate_below_ppm: 500_000,
            probe_ppm: 50_000,
        }
    }

    #[test]
    fn shares_parse_exactly() {
        assert_eq!(parse_share("5%"), Ok(50_000));
        assert_eq!(parse_share("0.05"), Ok(50_000));
        assert_eq!(parse_share("0.5"), Ok(500_000));
        assert_eq!(parse_share("100%"), Ok(PPM));
        assert_eq!(parse_share("1"), Ok(PPM));
        assert_eq!(parse_share("0"), Ok(0));
        assert_eq!(parse_share("0.0001%"), Ok(1));
        for bad in [
            "",
            "%",
            "-5%",
            "5.%",
            "1.5",
            "101%",
            "0.0000001",
            "1e-3",
            "five",
        ] {
            assert!(parse_share(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn elimination_needs_enough_samples_and_a_low_ratio() {
        let p = policy();
        let s = |successes, samples| Sample { successes, samples };
        assert!(!s(0, 19).eliminated(&p), "too few to judge");
        assert!(s(9, 20).eliminated(&p));
        assert!(!s(10, 20).eliminated(&p), "exactly the threshold stays");
        assert!(!s(0, 0).eliminated(&HealthPolicy {
            min_samples: 0,
            ..p
        }));
    }

    #[test]
    fn value_is_success_times_net_of_fee_exactly() {
        let p = policy();
        let cheap = Score::new(
            Sample {
                successes: 90,
                samples: 100,
            },
            FeeRate { ppm: 3800 },
            10_000,
            &p,
        );
        let dear = Score::new(
            Sample {
                successes: 100,
                samples: 100,
            },
            FeeRate { ppm: 6000 },
            10_000,
            &p,
        );
        assert_eq!((cheap.fee, dear.fee), (38, 60));
        assert_eq!((cheap.value(), dear.value()), (8965, 9940));
        assert!(dear.beats(&cheap, By::Value));
        assert!(cheap.beats(&dear, By::Cost));
        assert!(dear.beats(&cheap, By::SuccessRate));
        // Equal health: the cheaper one is worth more.
        let cheap = Score::new(
            Sample {
                successes: 100,
                samples: 100,
            },
            FeeRate { ppm: 3800 },
            10_000,
            &p,
        );
        assert!(cheap.beats(&dear, By::Value) && !dear.beats(&cheap, By::Value));
    }

    #[test]
    fn split_order_starts_with_the_weighted_pick_and_lists_every_choice_once() {
        let choices = vec![
            ("a".to_string(), 5),
            ("b".to_string(), 95),
            ("c".to_string(), 0),
        ];
        let mut first_a = 0;
        for i in 0..10_000u64 {
            let h = mix(i);
            let o = split_order(&choices, h);
            assert_eq!(o.len(), 3);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, ["a", "b", "c"]);
            assert_ne!(
                o[0], "c",
                "a zero weight is never first while others have weight"
            );
            first_a += (o[0] == "a") as u32;
        }
        assert!((300..=700).contains(&first_a), "{first_a}");
    }

    #[test]
    fn explore_sends_its_share_elsewhere_and_is_deterministic() {
        let c = Choose {
            from: vec!["own".into(), "platform".into()],
            by: By::Value,
            explore_ppm: 50_000,
        };
        let p = policy();
        let full = Sample {
            successes: 100,
            samples: 100,
        };
        let scores = [
            Score::new(full, FeeRate { ppm: 3800 }, 10_000, &p),
            Score::new(full, FeeRate { ppm: 6000 }, 10_000, &p),
        ];
        let mut explored = 0;
        for i in 0..10_000u64 {
            let o = choose_order(&c, &scores, &[true, true], mix(i));
            assert_eq!(o.len(), 2);
            if o[0].channel == "platform" {
                assert_eq!(o[0].why, Why::Explore);
                explored += 1;
            }
            let again = choose_order(&c, &scores, &[true, true], mix(i));
            assert_eq!(again[0].channel, o[0].channel);
        }
        assert!((300..=700).contains(&explored), "{explored}");
        // An unhealthy candidate is never explored to, and ranks last.
        for i in 0..1000u64 {
            let o = choose_order(&c, &scores, &[false, true], mix(i));
            assert_eq!(o[0].channel, "platform");
        }
    }
}
