//! The wall clock as payroute's records keep it: Unix milliseconds, and China time for rules
//! and quotas.

use time::{OffsetDateTime, UtcOffset};

/// China time's offset from UTC in ms (UTC+8, no daylight saving).
const CHINA_OFFSET_MS: i64 = 8 * 3600 * 1000;
const DAY_MS: i64 = 86_400_000;

/// Now, in Unix milliseconds: the unit of every timestamp in the store.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Minutes since midnight in China time (UTC+8, no daylight saving).
pub fn china_minute(unix_ms: i64) -> u16 {
    ((unix_ms / 1000 + 8 * 3600).rem_euclid(86_400) / 60) as u16
}

/// The start (Unix ms) of the China calendar day that holds `unix_ms`: 00:00 China time,
/// which is 16:00 UTC of the day before.
pub fn china_day_start_ms(unix_ms: i64) -> i64 {
    let local = unix_ms.saturating_add(CHINA_OFFSET_MS);
    local.div_euclid(DAY_MS) * DAY_MS - CHINA_OFFSET_MS
}

/// The start (Unix ms) of the China calendar month that holds `unix_ms`: 00:00 China time
/// on its first day. An instant outside the calendar's range (years beyond ±9999) gives its
/// day's start.
pub fn china_month_start_ms(unix_ms: i64) -> i64 {
    let day_start = china_day_start_ms(unix_ms);
    let china = UtcOffset::from_hms(8, 0, 0).expect("a valid offset");
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000) else {
        return day_start;
    };
    let into_month = i64::from(at.to_offset(china).day()) - 1;
    day_start - into_month * DAY_MS
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

    /// Unix ms of a UTC time given as RFC 3339.
    fn at(rfc3339: &str) -> i64 {
        let t =
            OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }

    #[test]
    fn a_china_day_starts_at_16_00_utc_the_day_before() {
        // 2024-03-10 00:00 China time is 2024-03-09T16:00Z.
        let midnight = at("2024-03-09T16:00:00Z");
        assert_eq!(china_day_start_ms(midnight), midnight);
        assert_eq!(china_day_start_ms(midnight + 1), midnight);
        assert_eq!(china_day_start_ms(at("2024-03-10T15:59:59.999Z")), midnight);
        // One ms before China midnight is still the day before.
        assert_eq!(china_day_start_ms(midnight - 1), midnight - DAY_MS);
        // 07:59 UTC on the 10th is 15:59 China time on the 10th.
        assert_eq!(china_day_start_ms(at("2024-03-10T07:59:00Z")), midnight);
        // Before 1970 too (rem_euclid, not truncation).
        assert_eq!(china_day_start_ms(0), -CHINA_OFFSET_MS);
        assert_eq!(china_day_start_ms(-1), -CHINA_OFFSET_MS);
        assert_eq!(
            china_day_start_ms(-CHINA_OFFSET_MS - 1),
            -CHINA_OFFSET_MS - DAY_MS
        );
    }

    #[test]
    fn a_china_month_starts_at_midnight_china_time_on_its_first_day() {
        // 2024-03-01 00:00 China time is 2024-02-29T16:00Z (a leap year).
        let march = at("2024-02-29T16:00:00Z");
        assert_eq!(china_month_start_ms(march), march);
        assert_eq!(china_month_start_ms(at("2024-03-31T15:59:59.999Z")), march);
        assert_eq!(china_month_start_ms(at("2024-03-15T12:00:00Z")), march);
        // 2024-02-29T15:59Z is still February in China.
        let february = at("2024-01-31T16:00:00Z");
        assert_eq!(china_month_start_ms(march - 1), february);
        assert_eq!(china_month_start_ms(at("2024-02-29T15:59:00Z")), february);
        // A month end across a year: 2023-12-31 23:59 China, then 2024-01-01 00:00.
        let january = at("2023-12-31T16:00:00Z");
        assert_eq!(
            china_month_start_ms(january - 60_000),
            at("2023-11-30T16:00:00Z")
        );
        assert_eq!(china_month_start_ms(january), january);
        // Where UTC is still on the last day of a month, China is on the first of the next.
        assert_eq!(
            china_month_start_ms(at("2024-04-30T20:00:00Z")),
            at("2024-04-30T16:00:00Z")
        );
        assert_eq!(china_month_start_ms(0), -CHINA_OFFSET_MS);
    }
}
