//! Value conversions: a source value → the JSON Customer.io receives.
//!
//! Owns: the typed conversions (`as: string | number | bool | timestamp | json`) and timestamp
//! parsing in every accepted format, with the plausibility range that catches milliseconds.
//! Must not: decide which columns are sent or know about rows; errors are plain reasons that
//! the caller prefixes with the column.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value as J;

use crate::config::{TimestampFormat, ValueType};
use crate::source::Value;

/// Unix seconds must fall in this open range (2001-09-09 .. 5138-11-16), as the official
/// clients require; a value past the top is almost always milliseconds.
pub const MIN_TS: i64 = 999_999_999;
pub const MAX_TS: i64 = 100_000_000_000;

pub fn convert(v: &Value, as_type: ValueType, format: TimestampFormat) -> Result<J, String> {
    match as_type {
        ValueType::Auto => Ok(v.to_json()),
        ValueType::String => Ok(v.to_text().map(J::String).unwrap_or(J::Null)),
        ValueType::Number => number(v),
        ValueType::Bool => boolean(v),
        ValueType::Timestamp => timestamp(v, format).map(J::from),
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
            let t = other.to_text().unwrap_or_default();
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
pub fn timestamp(v: &Value, format: TimestampFormat) -> Result<i64, String> {
    let secs = match v {
        Value::Timestamp(t) => t.timestamp(),
        Value::Date(d) => d
            .and_hms_opt(0, 0, 0)
            .map(|dt| dt.and_utc().timestamp())
            .unwrap_or(0),
        Value::Int(i) => int_ts(*i, format)?,
        Value::Float(f) => int_ts(*f as i64, format)?,
        Value::Decimal(d) => int_ts(
            d.parse::<f64>()
                .map_err(|_| format!("{d:?} is not a timestamp"))? as i64,
            format,
        )?,
        other => {
            let text = other.to_text().unwrap_or_default();
            text_ts(text.trim(), format)?
        }
    };
    if secs <= MIN_TS || secs >= MAX_TS {
        let hint = if secs >= MAX_TS {
            " (milliseconds? set `format: unix_ms` on this column)"
        } else {
            " (Customer.io needs dates after 2001-09-09)"
        };
        return Err(format!(
            "{secs} is outside the accepted range of Unix seconds{hint}"
        ));
    }
    Ok(secs)
}

fn int_ts(i: i64, format: TimestampFormat) -> Result<i64, String> {
    match format {
        TimestampFormat::UnixMs => Ok(i.div_euclid(1000)),
        TimestampFormat::Auto | TimestampFormat::Unix => Ok(i),
        TimestampFormat::Rfc3339 | TimestampFormat::Date => Err(format!(
            "{i} is a number, but the column's format is {format:?}"
        )),
    }
}

fn text_ts(s: &str, format: TimestampFormat) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is not a timestamp in the column's format ({})",
            format_name(format)
        )
    };
    match format {
        TimestampFormat::Unix => s.parse::<i64>().map_err(|_| bad()),
        TimestampFormat::UnixMs => s
            .parse::<i64>()
            .map(|ms| ms.div_euclid(1000))
            .map_err(|_| bad()),
        TimestampFormat::Date => parse_date(s).ok_or_else(bad),
        TimestampFormat::Rfc3339 => parse_datetime(s).ok_or_else(bad),
        TimestampFormat::Auto => {
            if let Ok(i) = s.parse::<i64>() {
                return Ok(i);
            }
            parse_datetime(s).or_else(|| parse_date(s)).ok_or_else(bad)
        }
    }
}

fn format_name(f: TimestampFormat) -> &'static str {
    match f {
        TimestampFormat::Auto => "RFC 3339 / ISO-8601, YYYY-MM-DD or Unix seconds",
        TimestampFormat::Rfc3339 => "RFC 3339",
        TimestampFormat::Date => "YYYY-MM-DD",
        TimestampFormat::Unix => "Unix seconds",
        TimestampFormat::UnixMs => "Unix milliseconds",
    }
}

fn parse_date(s: &str) -> Option<i64> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp())
}

/// RFC 3339 / ISO-8601 with an offset, or without one (read as UTC); `T` or a space.
fn parse_datetime(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp());
        }
    }
    let s = s.trim_end_matches('Z');
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(Utc.from_utc_datetime(&t).timestamp());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn timestamps_in_every_accepted_format_become_unix_seconds() {
        let f = TimestampFormat::Auto;
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
        let a = TimestampFormat::Auto;
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
}
