//! The wall clock as payroute's records keep it: Unix milliseconds, and China time for rules.

use time::OffsetDateTime;

/// Now, in Unix milliseconds: the unit of every timestamp in the store.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Minutes since midnight in China time (UTC+8, no daylight saving).
pub fn china_minute(unix_ms: i64) -> u16 {
    ((unix_ms / 1000 + 8 * 3600).rem_euclid(86_400) / 60) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_minute_is_utc_plus_8() {
        // 2023-11-14T22:13:20Z is 06:13 in China.
        assert_eq!(china_minute(1_700_000_000_000), 6 * 60 + 13);
        assert_eq!(china_minute(0), 8 * 60);
    }
}
