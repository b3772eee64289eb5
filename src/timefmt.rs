//! Reading the date-times of code tables and orders.
//!
//! One reader for every date a person types ([`parse_table_datetime`]): the code table's CSV,
//! `codes set-dates`, and the moments of the command line (`--at`, `--from`, `--to`, `--since`).
//! ISO 8601 with an offset, or without one local time in a zone: the row's IANA time zone for
//! the table and `set-dates`, UTC on the command line ([`parse_cli_instant`]). A date alone
//! (`2026-05-01`) is the start of that day in the same zone. Orders carry RFC 3339 instants
//! with an offset, always; the date and time may be joined by `T` or, as RFC 3339 allows, a
//! space.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

pub type Instant = DateTime<Utc>;

/// Why a table date could not be read; shown to the person who wrote the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error(
        "not an ISO 8601 date-time (expected e.g. 2026-06-30T00:00:00-07:00, 2026-06-30T00:00:00 or 2026-06-30)"
    )]
    Unparseable,
    #[error("local time {0} does not exist in time zone {1} (skipped by a daylight-saving change)")]
    NonexistentLocalTime(NaiveDateTime, Tz),
}

/// An RFC 3339 instant with an explicit offset, as orders carry them (and the CLIs' `--at`).
///
/// Stricter than chrono's reader: the date and time are joined by `T` or a space (RFC 3339
/// section 5.6 allows it; [`with_t_separator`] rewrites it for outputs, so the instants echoed into
/// conversions stay JSON Schema `date-time`s); a leap second is accepted only where one can occur,
/// 23:59:60 UTC (see [`settle_leap_second`]); the year in UTC is 1-9999, as in code tables (their
/// exports are RFC 3339, which has four-digit years only).
pub fn parse_rfc3339(text: &str) -> Option<Instant> {
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    if let Some(instant) = parse_common_shape(text.as_bytes()) {
        return Some(instant);
    }
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    let instant = settle_leap_second(parsed.with_timezone(&Utc))?;
    (1..=9999)
        .contains(&chrono::Datelike::year(&instant))
        .then_some(instant)
}

/// The shape nearly every order's instants have, `YYYY-MM-DDTHH:MM:SS[.f…](Z|±HH:MM)`, read
/// without chrono's general parser: there are several instants per order and chrono's reader
/// was a tenth of the time spent parsing one. It only ever answers for text it fully
/// understands as a valid instant that needs no special rule (no leap second, no year outside
/// 1-9999 in UTC); anything else is `None` and goes through the full reader, which decides. So
/// it can never accept what the full reader refuses, nor read a different instant (the property
/// test `common_shape_agrees_with_the_full_reader` holds it to that).
fn parse_common_shape(b: &[u8]) -> Option<Instant> {
    fn digits(b: &[u8], from: usize, count: usize) -> Option<u32> {
        let slice = b.get(from..from + count)?;
        slice.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(digits(b, 0, 4)?).ok()?,
        digits(b, 5, 2)?,
        digits(b, 8, 2)?,
    )?;
    let (hour, minute, second) = (digits(b, 11, 2)?, digits(b, 14, 2)?, digits(b, 17, 2)?);
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        // More than nanosecond precision is rare and has its own rounding rules: chrono decides.
        if at == start || at - start > 9 {
            return None;
        }
        let fraction = digits(b, start, at - start)?;
        nanos = fraction * 10u32.pow(u32::try_from(9 - (at - start)).ok()?);
    }
    let offset_secs: i32 = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(b, at + 1, 2)?, digits(b, at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i32::try_from(h * 3600 + m * 60).ok()?;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    // Second 60 is a leap second: the full reader and settle_leap_second decide.
    if second >= 60 {
        return None;
    }
    let time = chrono::NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    let local = date.and_time(time);
    let utc = local.checked_sub_signed(chrono::TimeDelta::seconds(i64::from(offset_secs)))?;
    (1..=9999)
        .contains(&chrono::Datelike::year(&utc))
        .then(|| Utc.from_utc_datetime(&utc))
}

/// A leap second (`:60`) is read as the last instant of the second before it, so it sorts
/// after everything in that second and before the next day; it exists only at 23:59:60 UTC,
/// anywhere else it is no time at all.
fn settle_leap_second(instant: Instant) -> Option<Instant> {
    use chrono::Timelike;
    if instant.nanosecond() < 1_000_000_000 {
        return Some(instant);
    }
    if (instant.hour(), instant.minute()) != (23, 59) {
        return None;
    }
    instant.with_nanosecond(999_999_999)
}

/// The text with a space between date and time replaced by `T`, so an instant echoed into an
/// output is a JSON Schema `date-time` whatever separator the input used.
pub fn with_t_separator(text: &str) -> Option<String> {
    (text.as_bytes().get(10) == Some(&b' ')).then(|| format!("{}T{}", &text[..10], &text[11..]))
}

/// A moment typed on the command line: [`parse_table_datetime`] in UTC, so `2026-05-01` is
/// that day's start in UTC and `2026-05-01T09:00` is 09:00 UTC.
pub fn parse_cli_instant(text: &str) -> Result<Instant, DateError> {
    parse_table_datetime(text, Tz::UTC)
}

/// A table date: an offset in the text wins; otherwise the wall-clock time is read in `zone`.
/// A date without a time means its midnight. A wall-clock time that falls twice (the hour
/// repeated when daylight saving ends) is read as the earlier of the two.
pub fn parse_table_datetime(text: &str, zone: Tz) -> Result<Instant, DateError> {
    let text = text.trim();
    if let Some(instant) = parse_with_offset(text) {
        return Ok(instant);
    }
    let local = parse_naive(text).ok_or(DateError::Unparseable)?;
    let instant = match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
        LocalResult::None => return Err(DateError::NonexistentLocalTime(local, zone)),
    };
    settle_leap_second(instant).ok_or(DateError::Unparseable)
}

fn parse_with_offset(text: &str) -> Option<Instant> {
    const WITH_OFFSET: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ];
    if let Some(t) = parse_rfc3339(text) {
        return Some(t);
    }
    WITH_OFFSET
        .iter()
        .find_map(|format| DateTime::<FixedOffset>::parse_from_str(text, format).ok())
        .and_then(|t| settle_leap_second(t.with_timezone(&Utc)))
}

fn parse_naive(text: &str) -> Option<NaiveDateTime> {
    const LOCAL: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    LOCAL
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

/// The canonical text of an instant in outputs and exports: RFC 3339 in UTC, seconds precision
/// unless the instant has a fraction.
pub fn format_instant(t: &Instant) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Instant {
        parse_rfc3339(text).expect("test instant")
    }

    #[test]
    fn offset_in_text_wins_over_zone() {
        let t = parse_table_datetime("2013-06-30T00:00:00-07:00", chrono_tz::Europe::Paris);
        assert_eq!(t, Ok(utc("2013-06-30T07:00:00Z")));
    }

    #[test]
    fn local_time_is_read_in_the_row_zone() {
        let ny = chrono_tz::America::New_York;
        assert_eq!(
            parse_table_datetime("2026-07-01T00:00:00", ny),
            Ok(utc("2026-07-01T04:00:00Z"))
        );
        assert_eq!(
            parse_table_datetime("2026-01-01", ny),
            Ok(utc("2026-01-01T05:00:00Z"))
        );
        assert_eq!(
            parse_table_datetime("2026-01-01 09:30", chrono_tz::UTC),
            Ok(utc("2026-01-01T09:30:00Z"))
        );
    }

    #[test]
    fn daylight_saving_gap_is_an_error_and_overlap_takes_the_earlier() {
        let ny = chrono_tz::America::New_York;
        assert!(matches!(
            parse_table_datetime("2026-03-08T02:30:00", ny),
            Err(DateError::NonexistentLocalTime(..))
        ));
        assert_eq!(
            parse_table_datetime("2026-11-01T01:30:00", ny),
            Ok(utc("2026-11-01T05:30:00Z"))
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            parse_table_datetime("30/06/2026", chrono_tz::UTC),
            Err(DateError::Unparseable)
        );
        assert_eq!(parse_rfc3339("2026-06-30T00:00:00"), None);
        assert_eq!(
            parse_rfc3339("2026-06-30 00:00:00Z"),
            Some(utc("2026-06-30T00:00:00Z"))
        );
        assert_eq!(
            with_t_separator("2026-06-30 00:00:00Z").as_deref(),
            Some("2026-06-30T00:00:00Z")
        );
        assert_eq!(
            parse_cli_instant("2026-05-01"),
            Ok(utc("2026-05-01T00:00:00Z"))
        );
        assert_eq!(
            parse_rfc3339("2026-06-30T12:30:60Z"),
            None,
            "no leap second at 12:30"
        );
        assert!(parse_rfc3339("2026-06-30t23:59:59.5+02:00").is_some());
    }

    #[test]
    fn formats_as_utc() {
        assert_eq!(
            format_instant(&utc("2026-06-30T00:00:00+02:00")),
            "2026-06-29T22:00:00Z"
        );
    }

    /// The fast reader of the common shape, held to the full reader: on every text it answers
    /// for, the full reader gives the same instant.
    fn full_reader(text: &str) -> Option<Instant> {
        let parsed = DateTime::parse_from_rfc3339(text).ok()?;
        let instant = settle_leap_second(parsed.with_timezone(&Utc))?;
        (1..=9999)
            .contains(&chrono::Datelike::year(&instant))
            .then_some(instant)
    }

    proptest::proptest! {
        // Most generated dates are out of range on purpose; enough cases that many valid ones
        // of every shape go through the fast reader too.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        #[test]
        fn common_shape_agrees_with_the_full_reader(
            year in 0u32..10001,
            month in 0u32..14,
            day in 0u32..33,
            hour in 0u32..26,
            minute in 0u32..62,
            second in 0u32..62,
            fraction in proptest::option::of("[0-9]{0,11}"),
            offset in proptest::option::of((proptest::bool::ANY, 0u32..26, 0u32..62)),
            separator in proptest::sample::select(vec!['T', 't', ' ']),
            zulu in proptest::sample::select(vec!["Z", "z"]),
        ) {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            let offset = match offset {
                Some((east, h, m)) => format!("{}{h:02}:{m:02}", if east { '+' } else { '-' }),
                None => zulu.to_owned(),
            };
            let text = format!(
                "{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{fraction}{offset}"
            );
            let full = full_reader(&text);
            if let Some(fast) = parse_common_shape(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), full, "{}", text);
            }
            proptest::prop_assert_eq!(parse_rfc3339(&text), full, "{}", text);
        }
    }

    #[test]
    fn common_shape_answers_for_the_usual_instants() {
        for text in [
            "2026-06-30T23:59:59Z",
            "2026-06-30T23:59:59.123+02:00",
            "2026-06-30 00:00:00.123456789-07:30",
        ] {
            assert!(parse_common_shape(text.as_bytes()).is_some(), "{text}");
            assert_eq!(parse_common_shape(text.as_bytes()), full_reader(text));
        }
        for deferred in [
            "2016-12-31T23:59:60Z",
            "2026-06-30T23:59:59.1234567891Z",
            "2026-06-30T23:59:59+0200",
        ] {
            assert_eq!(parse_common_shape(deferred.as_bytes()), None, "{deferred}");
        }
    }

    /// Issue 13, item 9: one rule for leap seconds and years in orders, tables and the CLIs.
    #[test]
    fn leap_seconds_and_years_follow_one_rule_everywhere() {
        let leap = parse_rfc3339("2016-12-31T23:59:60Z").expect("a real leap second");
        assert_eq!(format_instant(&leap), "2016-12-31T23:59:59.999999999Z");
        assert!(leap < utc("2017-01-01T00:00:00Z") && leap > utc("2016-12-31T23:59:59.5Z"));
        assert_eq!(
            parse_rfc3339("2017-01-01T00:59:60+01:00"),
            Some(leap),
            "23:59:60 in UTC, written with an offset"
        );
        assert_eq!(
            parse_table_datetime("2016-12-31T23:59:60Z", chrono_tz::UTC),
            Ok(leap)
        );
        assert_eq!(
            parse_table_datetime("2016-12-31 23:59:60", chrono_tz::UTC),
            Ok(leap)
        );
        assert_eq!(
            parse_table_datetime("2016-12-31T10:59:60", chrono_tz::UTC),
            Err(DateError::Unparseable)
        );
        for year_zero in ["0000-06-01T00:00:00Z", "0001-01-01T00:30:00+01:00"] {
            assert_eq!(parse_rfc3339(year_zero), None, "{year_zero}");
        }
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").is_some());
        assert!(parse_rfc3339("9999-12-31T23:59:59Z").is_some());
    }
}
