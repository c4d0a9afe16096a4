//! SQLite columns → [`Value`]s and [`Key`]s, and keys bound back as parameters.
//!
//! Owns: reading SQLite's dynamically typed values. The declared type (as sqlx understands
//! it: BOOLEAN, DATE, TIME, DATETIME/TIMESTAMP, INTEGER, REAL, TEXT, BLOB) decides booleans
//! and dates; otherwise each value is read by its storage class. Must not: run queries or
//! decide what a read does with a row.
//!
//! Notes for users: SQLite has no JSON, DECIMAL or UUID types; such columns (and computed
//! columns) are read as stored: integer, real or text. A position in an incremental read is
//! the stored value itself, so it compares exactly as SQLite sorts it.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use sqlx::sqlite::{SqliteArguments, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Sqlite, TypeInfo, ValueRef};

use super::decode::Decoder;
use super::key::{Key, KeyKind};
use crate::source::row::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LiteKind {
    Bool,
    Real,
    Date,
    Time,
    Datetime,
    /// INTEGER, TEXT, undeclared, expressions and types sqlx does not recognise (NUMERIC,
    /// JSON…): as stored.
    Stored,
}

pub(super) struct LiteDecoder;

fn decode<'r, T: Decode<'r, Sqlite>>(v: SqliteValueRef<'r>) -> Result<T, String> {
    T::decode(v).map_err(|e| e.to_string())
}

/// The value's storage class: INTEGER, REAL, TEXT or BLOB.
fn storage(v: &SqliteValueRef<'_>) -> String {
    v.type_info().name().to_string()
}

const BLOB: &str =
    "holds a BLOB, which cio-sync cannot send; convert it in the query (e.g. `hex(col)`)";

impl Decoder for LiteDecoder {
    type Db = Sqlite;
    type Kind = LiteKind;

    fn kind(ti: &SqliteTypeInfo) -> Option<LiteKind> {
        Some(match ti.name() {
            "BOOLEAN" => LiteKind::Bool,
            "REAL" => LiteKind::Real,
            "DATE" => LiteKind::Date,
            "TIME" => LiteKind::Time,
            "DATETIME" => LiteKind::Datetime,
            "BLOB" => return None,
            _ => LiteKind::Stored,
        })
    }

    fn key_kind(kind: LiteKind) -> Option<KeyKind> {
        // The real kind is each value's storage class; this only says a column may be one.
        Some(match kind {
            LiteKind::Bool => return None,
            LiteKind::Real => KeyKind::Float,
            LiteKind::Date | LiteKind::Time | LiteKind::Datetime | LiteKind::Stored => {
                KeyKind::Text
            }
        })
    }

    fn value(kind: LiteKind, v: SqliteValueRef<'_>) -> Result<Value, String> {
        let class = storage(&v);
        Ok(match (kind, class.as_str()) {
            (_, "BLOB") => return Err(BLOB.into()),
            (LiteKind::Bool, "INTEGER") => Value::Bool(decode::<i64>(v)? != 0),
            (LiteKind::Bool, _) => {
                return Err(format!(
                    "holds {class} {:?}, not 0 or 1",
                    decode::<String>(v).unwrap_or_default()
                ));
            }
            (LiteKind::Real, "INTEGER" | "REAL") => Value::Float(decode(v)?),
            (LiteKind::Date, "TEXT") => Value::Date(parse_date(&decode::<String>(v)?)?),
            (LiteKind::Time, "TEXT") => Value::Time(parse_time(&decode::<String>(v)?)?),
            (LiteKind::Date | LiteKind::Time, _) => {
                return Err(format!("holds {class}, not the text of a date or time"));
            }
            (LiteKind::Datetime, _) => Value::Timestamp(
                decode::<DateTime<Utc>>(v).map_err(|e| format!("is not a timestamp ({e})"))?,
            ),
            (_, "INTEGER") => Value::Int(decode(v)?),
            (_, "REAL") => Value::Float(decode(v)?),
            (_, _) => Value::Text(decode(v)?),
        })
    }

    fn key(_kind: LiteKind, v: SqliteValueRef<'_>) -> Result<Key, String> {
        Ok(match storage(&v).as_str() {
            "INTEGER" => Key::Int(decode(v)?),
            "REAL" => Key::float(decode(v)?)?,
            "TEXT" => Key::Text(decode(v)?),
            _ => return Err(BLOB.into()),
        })
    }

    fn bind<'q>(
        q: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
        key: &Key,
    ) -> Result<sqlx::query::Query<'q, Sqlite, SqliteArguments>, String> {
        Ok(bind_key(q, key))
    }
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%F")
        .map_err(|_| format!("holds {s:?}, which is not a date (YYYY-MM-DD)"))
}

/// The time formats SQLite's own functions write and accept.
fn parse_time(s: &str) -> Result<NaiveTime, String> {
    ["%T%.f", "%R", "%T%.fZ", "%RZ"]
        .iter()
        .find_map(|f| NaiveTime::parse_from_str(s, f).ok())
        .ok_or_else(|| format!("holds {s:?}, which is not a time (HH:MM[:SS[.fff]])"))
}

/// Binds a position value. SQLite positions are always stored values (integer, real, text);
/// the other kinds appear only in a hand-edited checkpoint and bind as their text.
fn bind_key<'q>(
    q: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    key: &Key,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
    match key {
        Key::Int(i) => q.bind(*i),
        Key::Uint(u) => match i64::try_from(*u) {
            Ok(i) => q.bind(i),
            Err(_) => q.bind(u.to_string()),
        },
        Key::Float(f) => q.bind(*f),
        other => q.bind(other.to_string()),
    }
}
