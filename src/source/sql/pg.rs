//! PostgreSQL columns → [`Value`]s and [`Key`]s, and keys bound back as parameters.
//!
//! Owns: which PostgreSQL types cio-sync reads (by `type_info().name()`, plus enums) and
//! decoding their binary wire format by hand, with checked arithmetic, so `infinity`
//! timestamps or odd data become row errors rather than panics. Must not: run queries or
//! decide what a read does with a row.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};
use sqlx::postgres::{PgArguments, PgTypeInfo, PgTypeKind, PgValueFormat, PgValueRef};
use sqlx::{Postgres, TypeInfo};

use super::decode::Decoder;
use super::decode::f32_as_written;
use super::key::{Key, KeyKind};
use crate::source::row::Value;

/// How one column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    /// TEXT, VARCHAR, CHAR(n), NAME: text that compares like text, so it can be a cursor.
    Text,
    /// Enums, `citext` and the one-byte `"char"`: read as text, but a text parameter would not
    /// compare with them the way their ORDER BY sorts, so they cannot be a cursor.
    OtherText,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Json,
    Jsonb,
    Uuid,
}

pub(super) struct PgDecoder;

impl Decoder for PgDecoder {
    type Db = Postgres;
    type Kind = PgKind;

    fn kind(ti: &PgTypeInfo) -> Option<PgKind> {
        if matches!(ti.kind(), PgTypeKind::Enum(_)) {
            return Some(PgKind::OtherText);
        }
        Some(match ti.name() {
            "BOOL" => PgKind::Bool,
            "INT2" => PgKind::Int2,
            "INT4" => PgKind::Int4,
            "INT8" => PgKind::Int8,
            "OID" => PgKind::Oid,
            "FLOAT4" => PgKind::Float4,
            "FLOAT8" => PgKind::Float8,
            "NUMERIC" => PgKind::Numeric,
            "TEXT" | "VARCHAR" | "CHAR" | "NAME" => PgKind::Text,
            "\"CHAR\"" => PgKind::OtherText,
            "DATE" => PgKind::Date,
            "TIME" => PgKind::Time,
            "TIMESTAMP" => PgKind::Timestamp,
            "TIMESTAMPTZ" => PgKind::Timestamptz,
            "JSON" => PgKind::Json,
            "JSONB" => PgKind::Jsonb,
            "UUID" => PgKind::Uuid,
            other if other.eq_ignore_ascii_case("citext") => PgKind::OtherText,
            _ => return None,
        })
    }

    fn key_kind(kind: PgKind) -> Option<KeyKind> {
        Some(match kind {
            PgKind::Int2 | PgKind::Int4 | PgKind::Int8 | PgKind::Oid => KeyKind::Int,
            PgKind::Float4 | PgKind::Float8 => KeyKind::Float,
            PgKind::Numeric => KeyKind::Decimal,
            PgKind::Text => KeyKind::Text,
            PgKind::Uuid => KeyKind::Uuid,
            PgKind::Date => KeyKind::Date,
            PgKind::Timestamp => KeyKind::Timestamp,
            PgKind::Timestamptz => KeyKind::Timestamptz,
            PgKind::Bool | PgKind::OtherText | PgKind::Time | PgKind::Json | PgKind::Jsonb => {
                return None;
            }
        })
    }

    fn value(kind: PgKind, v: PgValueRef<'_>) -> Result<Value, String> {
        let b = binary(&v)?;
        Ok(match kind {
            PgKind::Bool => Value::Bool(fixed::<1>(b)?[0] != 0),
            PgKind::Int2 => Value::Int(i16::from_be_bytes(fixed(b)?).into()),
            PgKind::Int4 => Value::Int(i32::from_be_bytes(fixed(b)?).into()),
            PgKind::Int8 => Value::Int(i64::from_be_bytes(fixed(b)?)),
            PgKind::Oid => Value::Int(u32::from_be_bytes(fixed(b)?).into()),
            PgKind::Float4 => Value::Float(f32_as_written(f32::from_be_bytes(fixed(b)?))),
            PgKind::Float8 => Value::Float(f64::from_be_bytes(fixed(b)?)),
            PgKind::Numeric => Value::Decimal(numeric_text(b)?),
            PgKind::Text | PgKind::OtherText => Value::Text(utf8(b)?.to_string()),
            PgKind::Date => Value::Date(date(b)?),
            PgKind::Time => Value::Time(time(b)?),
            PgKind::Timestamp => Value::Timestamp(timestamp(b)?.and_utc()),
            PgKind::Timestamptz => Value::Timestamp(timestamp(b)?.and_utc()),
            PgKind::Json => Value::Json(json(b)?),
            PgKind::Jsonb => match b.split_first() {
                Some((1, rest)) => Value::Json(json(rest)?),
                _ => return Err("is JSONB in a format version cio-sync does not know".into()),
            },
            PgKind::Uuid => Value::Text(uuid_text(fixed(b)?)),
        })
    }

    fn key(kind: PgKind, v: PgValueRef<'_>) -> Result<Key, String> {
        let b = binary(&v)?;
        Ok(match kind {
            PgKind::Int2 => Key::Int(i16::from_be_bytes(fixed(b)?).into()),
            PgKind::Int4 => Key::Int(i32::from_be_bytes(fixed(b)?).into()),
            PgKind::Int8 => Key::Int(i64::from_be_bytes(fixed(b)?)),
            PgKind::Oid => Key::Int(u32::from_be_bytes(fixed(b)?).into()),
            // Exact widening: the parameter is float8 and PostgreSQL widens the column the
            // same way when comparing.
            PgKind::Float4 => Key::float(f32::from_be_bytes(fixed(b)?).into())?,
            PgKind::Float8 => Key::float(f64::from_be_bytes(fixed(b)?))?,
            PgKind::Numeric => Key::Decimal(numeric_text(b)?),
            PgKind::Text => Key::Text(utf8(b)?.to_string()),
            PgKind::Uuid => Key::Uuid(uuid_text(fixed(b)?)),
            PgKind::Date => Key::Date(date(b)?),
            PgKind::Timestamp => Key::Timestamp(timestamp(b)?),
            PgKind::Timestamptz => Key::Timestamptz(timestamp(b)?.and_utc()),
            other => {
                return Err(format!(
                    "has a type ({other:?}) that cannot order an incremental read"
                ));
            }
        })
    }

    fn bind<'q>(
        q: sqlx::query::Query<'q, Postgres, PgArguments>,
        key: &Key,
    ) -> Result<sqlx::query::Query<'q, Postgres, PgArguments>, String> {
        bind_key(q, key)
    }
}

/// Binds a position value with the type the chunk query expects (see `plan::placeholder`:
/// decimals and uuids travel as text and are cast in SQL).
fn bind_key<'q>(
    q: sqlx::query::Query<'q, Postgres, PgArguments>,
    key: &Key,
) -> Result<sqlx::query::Query<'q, Postgres, PgArguments>, String> {
    Ok(match key {
        Key::Int(i) => q.bind(*i),
        Key::Uint(u) => {
            q.bind(i64::try_from(*u).map_err(|_| format!("{u} is beyond PostgreSQL's bigint"))?)
        }
        Key::Float(f) => q.bind(*f),
        Key::Decimal(s) | Key::Text(s) | Key::Uuid(s) => q.bind(s.clone()),
        Key::Date(d) => q.bind(*d),
        Key::Timestamp(t) => q.bind(*t),
        Key::Timestamptz(t) => q.bind(*t),
    })
}

fn binary<'r>(v: &PgValueRef<'r>) -> Result<&'r [u8], String> {
    if v.format() != PgValueFormat::Binary {
        return Err(
            "arrived in text format, which cio-sync does not expect from a prepared query".into(),
        );
    }
    v.as_bytes().map_err(|e| e.to_string())
}

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("has {} bytes where {N} were expected", b.len()))
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("is not valid UTF-8 ({e})"))
}

fn json(b: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(b).map_err(|e| format!("is not valid JSON ({e})"))
}

fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap_or_default()
        .and_time(NaiveTime::MIN)
}

/// Microseconds since 2000-01-01 (PostgreSQL's timestamp wire format).
fn timestamp(b: &[u8]) -> Result<NaiveDateTime, String> {
    match i64::from_be_bytes(fixed(b)?) {
        i64::MAX => {
            Err("is 'infinity', which has no date; filter or COALESCE it in the query".into())
        }
        i64::MIN => {
            Err("is '-infinity', which has no date; filter or COALESCE it in the query".into())
        }
        us => pg_epoch()
            .checked_add_signed(TimeDelta::microseconds(us))
            .ok_or_else(|| {
                format!("is {us} µs from 2000-01-01, beyond the dates cio-sync can represent")
            }),
    }
}

/// Days since 2000-01-01.
fn date(b: &[u8]) -> Result<NaiveDate, String> {
    match i32::from_be_bytes(fixed(b)?) {
        i32::MAX => {
            Err("is 'infinity', which has no date; filter or COALESCE it in the query".into())
        }
        i32::MIN => {
            Err("is '-infinity', which has no date; filter or COALESCE it in the query".into())
        }
        days => TimeDelta::try_days(days.into())
            .and_then(|d| pg_epoch().date().checked_add_signed(d))
            .ok_or_else(|| {
                format!("is {days} days from 2000-01-01, beyond the dates cio-sync can represent")
            }),
    }
}

/// Microseconds since midnight.
fn time(b: &[u8]) -> Result<NaiveTime, String> {
    let us = i64::from_be_bytes(fixed(b)?);
    let secs = u32::try_from(us.div_euclid(1_000_000))
        .map_err(|_| format!("is {us} µs after midnight"))?;
    let nanos = u32::try_from(us.rem_euclid(1_000_000) * 1000)
        .map_err(|_| format!("is {us} µs after midnight"))?;
    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .ok_or_else(|| format!("is {us} µs after midnight (24:00:00 has no time of day)"))
}

fn uuid_text(b: [u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// NUMERIC's binary form (base-10000 digits with a weight and a display scale) as exact
/// decimal text, the way PostgreSQL prints it.
pub(super) fn numeric_text(b: &[u8]) -> Result<String, String> {
    use std::fmt::Write;
    let word = |i: usize| -> Result<[u8; 2], String> {
        b.get(i..i + 2)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| "is a truncated NUMERIC".to_string())
    };
    let ndigits = usize::from(u16::from_be_bytes(word(0)?));
    let weight = i16::from_be_bytes(word(2)?);
    let sign = u16::from_be_bytes(word(4)?);
    let dscale = usize::from(u16::from_be_bytes(word(6)?));
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        other => return Err(format!("is a NUMERIC with an unknown sign {other:#06x}")),
    }
    if b.len() != 8 + 2 * ndigits {
        return Err("is a NUMERIC of the wrong length".into());
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = i16::from_be_bytes(word(8 + 2 * i)?);
        if !(0..10_000).contains(&d) {
            return Err(format!("is a NUMERIC with an invalid digit group {d}"));
        }
        digits.push(d);
    }
    // digits[k] is worth 10000^(weight - k).
    let group = |k: i32| {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k))
            .copied()
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 && digits.iter().any(|d| *d != 0) {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for k in 0..=i32::from(weight) {
            // Writing to a String cannot fail.
            let _ = if k == 0 {
                write!(out, "{}", group(k))
            } else {
                write!(out, "{:04}", group(k))
            };
        }
    }
    if dscale > 0 {
        let mut frac = String::with_capacity(dscale + 4);
        let mut k = i32::from(weight) + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", group(k));
            k += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [
            ndigits.to_be_bytes(),
            weight.to_be_bytes(),
            sign.to_be_bytes(),
            dscale.to_be_bytes(),
        ] {
            b.extend_from_slice(&w);
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_binary_becomes_the_exact_text_postgresql_prints() {
        // 12345.6789 = [1, 2345, 6789], weight 1, dscale 4
        assert_eq!(
            numeric_text(&numeric(3, 1, 0, 4, &[1, 2345, 6789])).unwrap(),
            "12345.6789"
        );
        // -0.00001 = [1000] at weight -2, dscale 5
        assert_eq!(
            numeric_text(&numeric(1, -2, 0x4000, 5, &[1000])).unwrap(),
            "-0.00001"
        );
        // 1e20 = [1] at weight 5, dscale 0
        assert_eq!(
            numeric_text(&numeric(1, 5, 0, 0, &[1])).unwrap(),
            "100000000000000000000"
        );
        // 10.50 keeps its scale: [10, 5000], weight 0, dscale 2
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, 2, &[10, 5000])).unwrap(),
            "10.50"
        );
        // 0 with scale 3
        assert_eq!(numeric_text(&numeric(0, 0, 0, 3, &[])).unwrap(), "0.000");
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&numeric(2, 0, 0, 0, &[1])).is_err());
        assert!(numeric_text(&numeric(1, 0, 0, 0, &[10_000])).is_err());
        assert!(numeric_text(&[0, 1]).is_err());
    }

    #[test]
    fn special_timestamps_and_dates_are_row_errors_not_panics() {
        assert!(
            timestamp(&i64::MAX.to_be_bytes())
                .unwrap_err()
                .contains("infinity")
        );
        assert!(timestamp(&(i64::MAX - 1).to_be_bytes()).is_err());
        assert!(
            date(&i32::MIN.to_be_bytes())
                .unwrap_err()
                .contains("-infinity")
        );
        assert!(time(&(86_400_000_000i64).to_be_bytes()).is_err());
        assert_eq!(
            timestamp(&1_000_001i64.to_be_bytes()).unwrap().to_string(),
            "2000-01-01 00:00:01.000001"
        );
        assert_eq!(
            date(&(-1i32).to_be_bytes()).unwrap().to_string(),
            "1999-12-31"
        );
        assert!(fixed::<8>(&[1, 2]).is_err());
    }

    #[test]
    fn uuids_and_reals_read_the_way_postgresql_prints_them() {
        let b: [u8; 16] = [
            0x01, 0x90, 0xf4, 0xf3, 0x8e, 0x5a, 0x7c, 0xc0, 0x9f, 0x1e, 0x3b, 0x2a, 0x1c, 0x0d,
            0x4e, 0x5f,
        ];
        assert_eq!(uuid_text(b), "0190f4f3-8e5a-7cc0-9f1e-3b2a1c0d4e5f");
        assert_eq!(f32_as_written(0.1), 0.1);
        assert!(f32_as_written(f32::NAN).is_nan());
    }
}
