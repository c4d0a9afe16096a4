//! Value conversions: a source value → the JSON Customer.io receives.
//!
//! Owns: the typed conversions (`as: string | number | bool | timestamp | json`) and timestamp
//! parsing in every accepted format, with the plausibility range that catches milliseconds.
//! Must not: decide which columns are sent or know about rows; errors are plain reasons that
//! the caller prefixes with the column.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone};
use chrono_tz::Tz;
use serde_json::Value as J;

use crate::config::{TimestampFormat, ValueType};
use crate::source::Value;

/// Unix seconds must fall in this open range (2001-09-09 .. 5138-11-16), as the official
/// clients require; a value past the top is almost always milliseconds.
pub const MIN_TS: i64 = 999_999_999;
pub const MAX_TS: i64 = 100_000_000_000;

/// How a column's timestamps are read: the format, and the zone of times without an offset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimeFormat {
    pub format: TimestampFormat,
    /// `None`: UTC.
    pub zone: Option<Tz>,
}

impl TimeFormat {
    pub fn new(format: TimestampFormat, zone: Option<Tz>) -> Self {
        Self { format, zone }
    }
}

pub fn convert(v: &Value, as_type: ValueType, time: &TimeFormat) -> Result<J, String> {
    // JSON has no NaN or infinity: `Value::to_json` would make it null, which would clear the
    // attribute in Customer.io instead of setting it.
    if let Value::Float(f) = v
        && !f.is_finite()
        && !matches!(as_type, ValueType::String)
    {
        return Err(format!(
            "is {f}, which JSON cannot carry; filter or COALESCE it in the query, or send it with `as: string`"
        ));
    }
    match as_type {
        ValueType::Auto => Ok(v.to_json()),
        ValueType::String => Ok(v.to_text().map(J::String).unwrap_or(J::Null)),
        ValueType::Number => number(v),
        ValueType::Bool => boolean(v),
        ValueType::Timestamp => timestamp(v, time).map(J::from),
        ValueType::Json => match v {
            Value::Json(j) => Ok(j.clone()),
            Value::Text(s) => {
                serde_json::from_str(s).map_err(|e| format!("is not valid JSON ({e})"))
            }
            other => Ok(other.to_json()),
        },
    }
}

fn number(v: &Value) -> Result<J, String> {
    let text = match v {
        Value::Int(i) => return Ok(J::from(*i)),
        Value::Float(_) | Value::Decimal(_) => return Ok(v.to_json()),
        Value::Text(s) => s.trim(),
        Value::Json(J::Number(n)) => return Ok(J::Number(n.clone())),
        other => {
            return Err(format!(
                "{:?} is not a number",
                other.to_text().unwrap_or_default()
            ));
        }
    };
    if let Ok(i) = text.parse::<i64>() {
        return Ok(J::from(i));
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .and_then(serde_json::Number::from_f64)
        .map(J::Number)
        .ok_or_else(|| format!("{text:?} is not a number"))
}

fn boolean(v: &Value) -> Result<J, String> {
    match v {
        Value::Bool(b) => Ok(J::Bool(*b)),
        Value::Int(i) if *i == 0 || *i == 1 => Ok(J::Bool(*i == 1)),
        other => {
            let t = other.text().unwrap_or_default();
            match t.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => Ok(J::Bool(true)),
                "false" | "f" | "no" | "n" | "0" => Ok(J::Bool(false)),
                _ => Err(format!(
                    "{t:?} is not a boolean (use true/false, yes/no or 1/0)"
                )),
            }
        }
    }
}

/// A timestamp as Unix seconds.
///
/// Times before 2001-09-09 (and so every time before 1970) are refused: Customer.io's
/// timestamps are Unix seconds in `999_999_999 < ts < 100_000_000_000`, as its own clients
/// enforce, and an event time it does not accept may silently become the time of receipt.
pub fn timestamp(v: &Value, time: &TimeFormat) -> Result<i64, String> {
    let format = &time.format;
    let secs = match v {
        Value::Timestamp(t) => t.timestamp(),
        Value::Date(d) => local_secs(d.and_time(NaiveTime::MIN), time.zone)?,
        Value::Int(i) => int_ts(*i, format)?,
        Value::Float(f) => int_ts(*f as i64, format)?,
        Value::Decimal(d) => int_ts(
            d.parse::<f64>()
                .map_err(|_| format!("{d:?} is not a timestamp"))? as i64,
            format,
        )?,
        other => {
            let text = other.text().unwrap_or_default();
            text_ts(text.trim(), time)?
        }
    };
    if secs <= MIN_TS || secs >= MAX_TS {
        return Err(out_of_range(secs));
    }
    Ok(secs)
}

fn out_of_range(secs: i64) -> String {
    if secs >= MAX_TS {
        return format!(
            "{secs} is outside the accepted range of Unix seconds (milliseconds? set `format: unix_ms` on this column)"
        );
    }
    let when = DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| secs.to_string());
    let era = if secs < 0 {
        "before 1970"
    } else {
        "before 2001-09-09"
    };
    format!(
        "{when} is {era}: Customer.io takes timestamps as Unix seconds after 2001-09-09 and would not store this time as written; to keep an old date (a birthday, a founding year) send it as text with `as: string`"
    )
}

fn int_ts(i: i64, format: &TimestampFormat) -> Result<i64, String> {
    match format {
        TimestampFormat::UnixMs => Ok(i.div_euclid(1000)),
        TimestampFormat::Auto | TimestampFormat::Unix => Ok(i),
        TimestampFormat::Rfc3339 | TimestampFormat::Date | TimestampFormat::Pattern(_) => {
            Err(format!(
                "{i} is a number, but the column's format is {}",
                format_name(format)
            ))
        }
    }
}

/// Text parsed by the column's format: a point in time, or a wall-clock time that the
/// column's zone places.
enum Parsed {
    Instant(i64),
    Local(NaiveDateTime),
}

fn text_ts(s: &str, time: &TimeFormat) -> Result<i64, String> {
    let format = &time.format;
    let bad = || {
        format!(
            "{s:?} is not a timestamp in the column's format ({})",
            format_name(format)
        )
    };
    let parsed = match format {
        TimestampFormat::Unix => Parsed::Instant(s.parse::<i64>().map_err(|_| bad())?),
        TimestampFormat::UnixMs => Parsed::Instant(
            s.parse::<i64>()
                .map(|ms| ms.div_euclid(1000))
                .map_err(|_| bad())?,
        ),
        TimestampFormat::Date => parse_date(s).ok_or_else(bad)?,
        TimestampFormat::Rfc3339 => parse_datetime(s).ok_or_else(bad)?,
        TimestampFormat::Pattern(p) => parse_pattern(s, p).ok_or_else(bad)?,
        TimestampFormat::Auto => match s.parse::<i64>() {
            Ok(i) => Parsed::Instant(i),
            Err(_) => parse_datetime(s)
                .or_else(|| parse_date(s))
                .ok_or_else(bad)?,
        },
    };
    match parsed {
        Parsed::Instant(secs) => Ok(secs),
        Parsed::Local(t) => local_secs(t, time.zone),
    }
}

/// A wall-clock time in `zone` (UTC without one) as Unix seconds. In the hour a zone's clocks
/// fall back, a time happens twice: the first (earlier) one is taken. In the hour they spring
/// forward, a time never happens, and that is the row's error.
fn local_secs(t: NaiveDateTime, zone: Option<Tz>) -> Result<i64, String> {
    let Some(zone) = zone else {
        return Ok(t.and_utc().timestamp());
    };
    match zone.from_local_datetime(&t) {
        LocalResult::Single(at) => Ok(at.timestamp()),
        LocalResult::Ambiguous(first, _) => Ok(first.timestamp()),
        LocalResult::None => Err(format!(
            "{t} does not exist in {zone}: the clocks skipped that hour (daylight saving time); correct the time in the source"
        )),
    }
}

fn format_name(f: &TimestampFormat) -> String {
    match f {
        TimestampFormat::Auto => "RFC 3339 / ISO-8601, YYYY-MM-DD or Unix seconds".into(),
        TimestampFormat::Rfc3339 => "RFC 3339".into(),
        TimestampFormat::Date => "YYYY-MM-DD".into(),
        TimestampFormat::Unix => "Unix seconds".into(),
        TimestampFormat::UnixMs => "Unix milliseconds".into(),
        TimestampFormat::Pattern(p) => format!("\"{p}\""),
    }
}

fn parse_date(s: &str) -> Option<Parsed> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(|d| Parsed::Local(d.and_time(NaiveTime::MIN)))
}

/// A strftime pattern: with an offset (`%z`) it is a point in time, without one a wall-clock
/// time; a pattern with only a date means midnight.
fn parse_pattern(s: &str, pattern: &str) -> Option<Parsed> {
    if let Ok(t) = DateTime::parse_from_str(s, pattern) {
        return Some(Parsed::Instant(t.timestamp()));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, pattern) {
        return Some(Parsed::Local(t));
    }
    NaiveDate::parse_from_str(s, pattern)
        .ok()
        .map(|d| Parsed::Local(d.and_time(NaiveTime::MIN)))
}

/// At most nine fractional digits (nanoseconds), as RFC 3339 allows in practice: more would be
/// below what any clock records, and chrono would otherwise read them inconsistently.
fn fraction_ok(s: &str) -> bool {
    match s.find('.') {
        None => true,
        Some(dot) => s[dot + 1..].bytes().take_while(u8::is_ascii_digit).count() <= 9,
    }
}

/// RFC 3339 / ISO-8601 with an offset, or without one (a wall-clock time); `T` or a space.
fn parse_datetime(s: &str) -> Option<Parsed> {
    if !fraction_ok(s) {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(Parsed::Instant(t.timestamp()));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(Parsed::Instant(t.timestamp()));
        }
    }
    // A trailing `Z` is UTC whatever the column's zone.
    if let Some(utc) = s.strip_suffix(['Z', 'z']) {
        return naive_datetime(utc).map(|t| Parsed::Instant(t.and_utc().timestamp()));
    }
    naive_datetime(s).map(Parsed::Local)
}

fn naive_datetime(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column's format with no zone (UTC).
    fn timestamp(v: &Value, f: impl Into<TimestampFormat>) -> Result<i64, String> {
        super::timestamp(v, &TimeFormat::new(f.into(), None))
    }

    fn convert(v: &Value, as_type: ValueType, f: impl Into<TimestampFormat>) -> Result<J, String> {
        super::convert(v, as_type, &TimeFormat::new(f.into(), None))
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn timestamps_in_every_accepted_format_become_unix_seconds() {
        let f = &TimestampFormat::Auto;
        assert_eq!(timestamp(&t("2023-11-14T22:13:20Z"), f), Ok(1_700_000_000));
        assert_eq!(
            timestamp(&t("2023-11-14T23:13:20+01:00"), f),
            Ok(1_700_000_000)
        );
        assert_eq!(timestamp(&t("2023-11-14 22:13:20"), f), Ok(1_700_000_000));
        assert_eq!(
            timestamp(&t("2023-11-14T22:13:20.123"), f),
            Ok(1_700_000_000)
        );
        assert_eq!(timestamp(&t("2023-11-14"), f), Ok(1_699_920_000));
        assert_eq!(timestamp(&t("1700000000"), f), Ok(1_700_000_000));
        assert_eq!(
            timestamp(&t("1700000000123"), TimestampFormat::UnixMs),
            Ok(1_700_000_000)
        );
        assert_eq!(timestamp(&Value::Int(1_700_000_000), f), Ok(1_700_000_000));
    }

    #[test]
    fn milliseconds_and_garbage_are_rejected_with_a_hint() {
        let e = timestamp(&t("1700000000123"), TimestampFormat::Auto).unwrap_err();
        assert!(e.contains("milliseconds?"), "{e}");
        assert!(timestamp(&t("yesterday"), TimestampFormat::Auto).is_err());
        assert!(timestamp(&t("2023-11-14"), TimestampFormat::Unix).is_err());
        assert!(timestamp(&t("12"), TimestampFormat::Auto).is_err());
    }

    #[test]
    fn typed_conversions() {
        let a = &TimestampFormat::Auto;
        assert_eq!(convert(&t("42"), ValueType::Number, a), Ok(J::from(42)));
        assert_eq!(
            convert(&t("4.5"), ValueType::Number, a),
            Ok(serde_json::json!(4.5))
        );
        assert!(convert(&t("x"), ValueType::Number, a).is_err());
        assert_eq!(convert(&t("Yes"), ValueType::Bool, a), Ok(J::Bool(true)));
        assert_eq!(convert(&t("0"), ValueType::Bool, a), Ok(J::Bool(false)));
        assert_eq!(
            convert(&t("{\"a\":[1]}"), ValueType::Json, a),
            Ok(serde_json::json!({"a":[1]}))
        );
        assert_eq!(
            convert(&t("7"), ValueType::String, a),
            Ok(J::String("7".into()))
        );
        assert_eq!(convert(&Value::Int(7), ValueType::Auto, a), Ok(J::from(7)));
        assert_eq!(
            convert(&Value::Int(7), ValueType::String, a),
            Ok(J::String("7".into()))
        );
    }

    fn zoned(pattern: &str, zone: &str) -> TimeFormat {
        TimeFormat::new(
            TimestampFormat::Pattern(pattern.into()),
            Some(zone.parse().expect("an IANA zone")),
        )
    }

    #[test]
    fn a_strftime_pattern_reads_times_in_utc_or_in_the_columns_zone() {
        let us = TimestampFormat::Pattern("%m/%d/%Y %H:%M".into());
        assert_eq!(timestamp(&t("11/14/2023 22:13"), &us), Ok(1_699_999_980));
        // 17:13 in New York in November is 22:13 UTC.
        assert_eq!(
            super::timestamp(
                &t("11/14/2023 17:13"),
                &zoned("%m/%d/%Y %H:%M", "America/New_York")
            ),
            Ok(1_699_999_980)
        );
        // A pattern with only a date is midnight; one with an offset ignores the zone.
        assert_eq!(
            timestamp(
                &t("14.11.2023"),
                TimestampFormat::Pattern("%d.%m.%Y".into())
            ),
            Ok(1_699_920_000)
        );
        assert_eq!(
            super::timestamp(
                &t("2023-07-01 12:00 +0200"),
                &zoned("%Y-%m-%d %H:%M %z", "America/New_York")
            ),
            Ok(1_688_205_600)
        );
        let e = timestamp(&t("2023-11-14"), &us).unwrap_err();
        assert!(e.contains("\"%m/%d/%Y %H:%M\""), "{e}");
    }

    #[test]
    fn a_zone_applies_to_times_without_an_offset_in_the_default_formats_too() {
        let paris = TimeFormat::new(
            TimestampFormat::Auto,
            Some("Europe/Paris".parse().expect("a zone")),
        );
        // 23:13 in Paris in November (UTC+1) is 22:13 UTC.
        assert_eq!(
            super::timestamp(&t("2023-11-14 23:13:20"), &paris),
            Ok(1_700_000_000)
        );
        // An explicit offset or `Z` wins over the zone.
        assert_eq!(
            super::timestamp(&t("2023-11-14T22:13:20Z"), &paris),
            Ok(1_700_000_000)
        );
        assert_eq!(
            super::timestamp(
                &Value::Date(NaiveDate::from_ymd_opt(2023, 11, 14).unwrap()),
                &paris
            ),
            Ok(1_699_916_400)
        );
    }

    #[test]
    fn a_time_the_clocks_pass_twice_is_the_first_and_one_they_skip_is_refused() {
        let paris = zoned("%Y-%m-%d %H:%M", "Europe/Paris");
        // 2023-10-29 02:30 happens at 00:30 UTC (summer time) and again at 01:30 UTC.
        assert_eq!(
            super::timestamp(&t("2023-10-29 02:30"), &paris),
            Ok(1_698_539_400)
        );
        // 2023-03-26 02:30 never happens in Paris.
        let e = super::timestamp(&t("2023-03-26 02:30"), &paris).unwrap_err();
        assert!(
            e.contains("does not exist in Europe/Paris") && e.contains("daylight saving"),
            "{e}"
        );
    }

    #[test]
    fn rfc3339_takes_up_to_nine_fractional_digits() {
        for s in [
            "2023-11-14T22:13:20.1Z",
            "2023-11-14T22:13:20.123456Z",
            "2023-11-14T22:13:20.123456789Z",
            "2023-11-14T23:13:20.123456789+01:00",
            "2023-11-14 22:13:20.123456789",
        ] {
            for f in [TimestampFormat::Auto, TimestampFormat::Rfc3339] {
                assert_eq!(timestamp(&t(s), &f), Ok(1_700_000_000), "{s} as {f:?}");
            }
        }
        let e = timestamp(
            &t("2023-11-14T22:13:20.1234567891Z"),
            TimestampFormat::Rfc3339,
        )
        .unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn dates_before_1970_are_refused_with_the_reason_and_the_way_out() {
        for v in [
            t("1969-07-20"),
            t("1969-07-20T20:17:40Z"),
            t("-14182940"),
            Value::Date(NaiveDate::from_ymd_opt(1969, 7, 20).unwrap()),
        ] {
            let e = timestamp(&v, TimestampFormat::Auto).unwrap_err();
            assert!(e.starts_with("1969-07-20T"), "{v:?}: {e}");
            assert!(
                e.contains("is before 1970") && e.contains("`as: string`"),
                "{v:?}: {e}"
            );
        }
        let e = timestamp(&t("1999-01-01"), TimestampFormat::Auto).unwrap_err();
        assert!(e.contains("before 2001-09-09"), "{e}");
    }

    #[test]
    fn a_nan_or_infinite_float_is_the_rows_error_not_a_null_that_clears_the_attribute() {
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for as_type in [ValueType::Auto, ValueType::Number] {
                let e = convert(&Value::Float(f), as_type, TimestampFormat::Auto).unwrap_err();
                assert!(e.contains("JSON cannot carry"), "{f} as {as_type:?}: {e}");
            }
        }
        assert_eq!(
            convert(
                &Value::Float(f64::NAN),
                ValueType::String,
                TimestampFormat::Auto
            ),
            Ok(J::String("NaN".into()))
        );
        assert_eq!(
            convert(&Value::Float(1.5), ValueType::Auto, TimestampFormat::Auto),
            Ok(serde_json::json!(1.5))
        );
    }
}
