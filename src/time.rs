//! Calendar arithmetic and the time formats the crate reads and writes:
//! RFC 3339 (credentials expiry, batch times), the SigV4 date, HTTP dates.
//! One place for all of them, with no dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an ISO 8601 / RFC 3339 time such as `2019-11-09T13:34:41Z`,
/// `2019-11-09T13:34:41.123Z` or `2019-11-09T13:34:41+01:00` (or ending in
/// `UTC`, as older AWS CLI SSO caches write). A time without
/// an offset is taken as UTC.
pub(crate) fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let bytes = s.as_bytes();
    let number = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let sep = |at: usize, allowed: &[u8]| bytes.get(at).is_some_and(|b| allowed.contains(b));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u32 = 0;
    if let Some(fraction) = rest.strip_prefix(['.', ',']) {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, b) in fraction.bytes().take(digits.min(9)).enumerate() {
            nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        // Old AWS CLI SSO caches end times with "UTC".
        "" | "Z" | "z" | "UTC" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let off = &rest[1..];
            let (h, m) = match off.len() {
                5 if off.as_bytes()[2] == b':' => (off.get(0..2)?, off.get(3..5)?),
                4 => (off.get(0..2)?, off.get(2..4)?),
                2 => (off, "00"),
                _ => return None,
            };
            let parse = |t: &str| -> Option<i64> {
                t.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| t.parse().ok())?
            };
            let (h, m) = (parse(h)?, parse(m)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_seconds;
    let seconds = u64::try_from(seconds).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian
/// calendar, counted year by year from a 400-year cycle boundary.
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Shift to a year starting in March so the leap day comes last.
    let y = if month <= 2 { year - 1 } else { year };
    let cycle = y.div_euclid(400);
    let year_of_cycle = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    // 719_468 days separate 0000-03-01 from 1970-01-01.
    cycle * 146_097 + day_of_cycle - 719_468
}

/// Formats `time` as `YYYYMMDDTHHMMSSZ` in UTC, dropping fractions of a second.
pub(crate) fn format_amz_date(time: SystemTime) -> String {
    // Times before 1970 are not useful for signing but must not panic.
    let secs: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month,
/// day). Works in 400-year eras, which repeat exactly, and counts years from
/// March so the leap day falls at the end of a year.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since the epoch of an HTTP date in the IMF-fixdate form every
/// AWS service sends (`Sun, 06 Nov 1994 08:49:37 GMT`); `None` otherwise,
/// and for a year outside 1970 to 9999 (the form has four digits; a
/// larger year from a server would overflow the day count).
pub(crate) fn http_date_seconds(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace().skip(1);
    let day = number(parts.next()?)?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == name)? as i64 + 1;
    let year = number(parts.next()?)?;
    let mut clock = parts.next()?.split(':').map(number);
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next() != Some("GMT")
        || !(1970..=9999).contains(&year)
        || day < 1
        || day > days_in_month(year, month)
        || h > 23
        || m > 59
        || s > 60
    {
        return None;
    }
    u64::try_from(days_from_civil(year, month, day) * 86_400 + h * 3_600 + m * 60 + s).ok()
}

/// A decimal number of at most four digits (no sign): the fields of an
/// HTTP date.
fn number(text: &str) -> Option<i64> {
    let digits = !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok())?
}

/// `time` as RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SSZ`, with milliseconds
/// (`.mmm`) when `millis`.
pub(crate) fn format_rfc3339(time: SystemTime, millis: bool) -> String {
    let Ok(since) = time.duration_since(UNIX_EPOCH) else {
        return "before 1970".into();
    };
    let secs = since.as_secs() as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    let fraction = if millis {
        format!(".{:03}", since.subsec_millis())
    } else {
        String::new()
    };
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}{fraction}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_893_456_000; // 2030-01-01T00:00:00Z

    /// Parses `YYYY-MM-DDTHH:MM:SSZ`.
    fn parse_timestamp(s: &str) -> SystemTime {
        parse_iso8601(s).expect("a timestamp")
    }

    #[test]
    fn parses_iso8601() {
        let at = |s| parse_iso8601(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(at("2030-01-01T00:00:00Z"), Some(Duration::from_secs(T0)));
        assert_eq!(at("2030-01-01T00:00:00UTC"), Some(Duration::from_secs(T0)));
        assert_eq!(
            at("2019-11-09T13:34:41Z"),
            Some(Duration::from_secs(1_573_306_481))
        );
        assert_eq!(
            at("2024-02-29T12:00:00Z"),
            Some(Duration::from_secs(1_709_208_000))
        );
        assert_eq!(
            at("2019-11-09T13:34:41.25Z"),
            Some(Duration::new(1_573_306_481, 250_000_000))
        );
        assert_eq!(
            at("2019-11-09T14:34:41+01:00"),
            Some(Duration::from_secs(1_573_306_481))
        );
        assert_eq!(
            at("2019-11-09T12:34:41-0100"),
            Some(Duration::from_secs(1_573_306_481))
        );
        assert_eq!(
            at("2019-11-09 13:34:41"),
            Some(Duration::from_secs(1_573_306_481))
        );
        for bad in [
            "",
            "2019-11-09",
            "2019-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2019-11-09T24:00:00Z",
            "2019-11-09T13:34:41.Z",
            "2019-11-09T13:34:41+1:00",
            "2019-11-09T13:34:41Q",
            "1969-12-31T23:59:59Z",
            "20x9-11-09T13:34:41Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_208_000), false),
            "2024-02-29T12:00:00Z"
        );
        assert_eq!(format_rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn formats_rfc3339_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_208_000_042);
        assert_eq!(format_rfc3339(t, true), "2024-02-29T12:00:00.042Z");
        assert_eq!(parse_iso8601(&format_rfc3339(t, true)), Some(t));
    }

    #[test]
    fn dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 59, 60, 365, 11_016, 16_677, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
        let t = parse_timestamp("2015-08-30T12:36:00Z");
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        let leap = parse_timestamp("2024-02-29T23:59:59Z");
        assert_eq!(format_amz_date(leap), "20240229T235959Z");
    }

    #[test]
    fn reads_http_dates() {
        assert_eq!(http_date_seconds("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date_seconds("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date_seconds("Thu, 29 Feb 2024 23:59:59 GMT"),
            Some(1_709_251_199)
        );
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            // Years a server may send that overflow the day count, or
            // before the epoch; a sign or more than four digits anywhere.
            "Sun, 06 Nov 9223372036854775807 08:49:37 GMT",
            "Sun, 06 Nov -9223372036854775808 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 06 Nov 10000 08:49:37 GMT",
            "Sun, 06 Nov 1994 -1:-1:-1 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date_seconds(bad), None, "{bad}");
        }
    }
}

/// `now + wait`, or a time a century away when that overflows: a huge
/// configured timeout means "never", not a panic.
pub(crate) fn later(now: std::time::Instant, wait: std::time::Duration) -> std::time::Instant {
    now.checked_add(wait)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod later_tests {
    use std::time::{Duration, Instant};

    #[test]
    fn a_huge_wait_is_far_away_not_a_panic() {
        let now = Instant::now();
        assert_eq!(
            super::later(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        assert!(super::later(now, Duration::MAX) > now + Duration::from_secs(3600 * 24 * 365));
    }
}
