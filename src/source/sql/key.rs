//! A row's position in an incremental read: the exact, typed value of its cursor or tiebreak.
//!
//! Owns: the JSON form stored in checkpoints (`{"type": "timestamptz", "value": "…"}`),
//! which round-trips exactly (integers beyond 2^53, microseconds, decimals as text), and the
//! text shown in dead-letter references. Must not: know SQL or any driver; each backend
//! decides which of its column types become which key and how a key is bound back.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

/// A cursor or tiebreak value. The variant records how to bind it back, so a comparison in
/// the next chunk uses the same type (and time zone semantics) as the column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub(super) enum Key {
    Int(i64),
    /// Unsigned values above `i64::MAX` (MySQL `BIGINT UNSIGNED`).
    Uint(u64),
    /// Finite only. Stored as its shortest exact text (`"0.1"`): JSON number parsers,
    /// serde_json's included, do not all read every float back bit for bit.
    Float(#[serde(with = "float_text")] f64),
    /// Exact decimal text (NUMERIC/DECIMAL).
    Decimal(String),
    Text(String),
    /// Canonical hyphenated text; bound as text and cast back to `uuid` on PostgreSQL.
    Uuid(String),
    Date(NaiveDate),
    /// A timestamp without time zone (PostgreSQL `timestamp`, MySQL `DATETIME`).
    Timestamp(NaiveDateTime),
    /// A point in time (PostgreSQL `timestamptz`, MySQL `TIMESTAMP`).
    Timestamptz(DateTime<Utc>),
}

/// Which kind of key a column yields: decides the placeholder's cast in the chunk query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Int,
    Uint,
    Float,
    Decimal,
    Text,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
}

impl Key {
    pub(super) fn kind(&self) -> KeyKind {
        match self {
            Key::Int(_) => KeyKind::Int,
            Key::Uint(_) => KeyKind::Uint,
            Key::Float(_) => KeyKind::Float,
            Key::Decimal(_) => KeyKind::Decimal,
            Key::Text(_) => KeyKind::Text,
            Key::Uuid(_) => KeyKind::Uuid,
            Key::Date(_) => KeyKind::Date,
            Key::Timestamp(_) => KeyKind::Timestamp,
            Key::Timestamptz(_) => KeyKind::Timestamptz,
        }
    }

    /// The checkpoint form.
    pub(super) fn to_json(&self) -> serde_json::Value {
        // Serializing these variants cannot fail: every payload is a number, string or chrono
        // value, and non-finite floats never become keys (see `Key::float`).
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub(super) fn from_json(v: &serde_json::Value) -> Result<Key, String> {
        Key::deserialize(v).map_err(|e| e.to_string())
    }

    /// A float key, refusing NaN and infinities (they have no JSON form and no stable order).
    pub(super) fn float(f: f64) -> Result<Key, String> {
        if f.is_finite() {
            Ok(Key::Float(f))
        } else {
            Err(format!("is {f}, which cannot be a position"))
        }
    }
}

mod float_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(f: &f64, s: S) -> Result<S::Ok, S::Error> {
        // `Display` for f64 is the shortest text that parses back to the same value.
        s.collect_str(f)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|_| D::Error::custom(format!("{text:?} is not a number")))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Uint(u) => write!(f, "{u}"),
            Key::Float(x) => write!(f, "{x}"),
            Key::Decimal(s) | Key::Text(s) | Key::Uuid(s) => f.write_str(s),
            Key::Date(d) => write!(f, "{d}"),
            Key::Timestamp(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.f")),
            Key::Timestamptz(t) => {
                f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_exactly_through_their_checkpoint_json() {
        let ts = NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_micro_opt(23, 59, 58, 123_456)
            .unwrap();
        let keys = [
            Key::Int(i64::MIN),
            Key::Int(9_007_199_254_740_993),
            Key::Uint(u64::MAX),
            Key::Float(0.1),
            Key::Float(-1.5e-300),
            Key::Float(f64::MAX),
            Key::Float(f64::from(0.1f32)),
            Key::Decimal("12345678901234567890.000000000000000001".into()),
            Key::Text("Zoë 'quoted' \"x\"".into()),
            Key::Uuid("0190f4f3-8e5a-7cc0-9f1e-3b2a1c0d4e5f".into()),
            Key::Date(NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()),
            Key::Timestamp(ts),
            Key::Timestamptz(ts.and_utc()),
            Key::Timestamptz(ts.and_utc() + chrono::Duration::nanoseconds(789)),
        ];
        for k in keys {
            let j = k.to_json();
            let text = serde_json::to_string(&j).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(Key::from_json(&back).unwrap(), k, "{text}");
        }
    }

    #[test]
    fn the_json_form_is_tagged_and_readable() {
        let ts = NaiveDate::from_ymd_opt(2024, 5, 1)
            .unwrap()
            .and_hms_micro_opt(10, 0, 0, 500)
            .unwrap();
        assert_eq!(Key::Int(42).to_json(), json!({"type": "int", "value": 42}));
        assert_eq!(
            Key::Float(0.1).to_json(),
            json!({"type": "float", "value": "0.1"})
        );
        assert_eq!(
            Key::Timestamptz(ts.and_utc()).to_json(),
            json!({"type": "timestamptz", "value": "2024-05-01T10:00:00.000500Z"})
        );
        assert_eq!(
            Key::Timestamp(ts).to_json(),
            json!({"type": "timestamp", "value": "2024-05-01T10:00:00.000500"})
        );
        assert!(Key::from_json(&json!(42)).is_err());
        assert!(Key::from_json(&json!({"type": "int", "value": "x"})).is_err());
        assert!(Key::float(f64::NAN).is_err());
        assert_eq!(
            Key::Timestamptz(ts.and_utc()).to_string(),
            "2024-05-01T10:00:00.000500Z"
        );
    }
}
