//! Retry policy and limits: how often, how fast, how long.
//!
pub mod breaker;
pub mod budget;
pub mod gcra;
pub mod guards;
pub mod health;
pub mod shared;

use std::time::Duration;

pub use guards::{
    ChannelGuard, LimitKey, LimitScope, LimitSettings, RateLimited, Refused, Resilience,
};
pub use health::{ChannelHealth, Health, HealthSettings};
pub use shared::RedisSettings;

/// `300/s`, `50/m`, `1000/h`: a count per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl RateSpec {
    pub fn parse(rate: &str, burst: Option<u32>) -> Result<RateSpec, String> {
        let (n, unit) = rate
            .split_once('/')
            .ok_or_else(|| format!("{rate:?} is not a rate like \"300/s\""))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{rate:?}: count must be a positive integer"))?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("{rate:?}: unit {other:?} is not s, m or h")),
        };
        if burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        Ok(RateSpec {
            count,
            per,
            burst: burst.unwrap_or(count),
        })
    }
}

/// Parses `250ms`, `5s`, `2m`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"250ms\" or \"5s\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unit {unit:?} is not ms, s, m or h")),
    };
    Ok(d)
}

/// Full-jitter backoff (ARCHITECTURE.md, "What is safe to retry"): uniform in `[0, (2^n − 1) ×
/// 25ms)`, capped at 250ms. `attempt` counts retries from 1; `random` is any uniform `u64`.
pub fn backoff(attempt: u32, random: u64) -> Duration {
    let ceiling_ms = ((1u64 << attempt.min(10)) - 1) * 25;
    let ceiling_ms = ceiling_ms.clamp(1, 250);
    Duration::from_micros(random % (ceiling_ms * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        let r = RateSpec::parse("300/s", Some(600)).unwrap();
        assert_eq!(
            (r.count, r.per, r.burst),
            (300, Duration::from_secs(1), 600)
        );
        assert_eq!(RateSpec::parse("50/m", None).unwrap().burst, 50);
        assert!(RateSpec::parse("0/s", None).is_err());
        assert!(RateSpec::parse("5/d", None).is_err());
        assert!(RateSpec::parse("5", None).is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn backoff_stays_in_its_window() {
        assert!(backoff(1, u64::MAX) < Duration::from_millis(25));
        assert!(backoff(2, u64::MAX) < Duration::from_millis(75));
        assert!(backoff(9, u64::MAX) < Duration::from_millis(250));
        assert_eq!(backoff(3, 0), Duration::ZERO);
    }
}
