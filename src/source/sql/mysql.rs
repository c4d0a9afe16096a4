//! MySQL/MariaDB columns → [`Value`]s and [`Key`]s, and keys bound back as parameters.
//!
//! Owns: which MySQL types cio-sync reads (by `type_info().name()`), decoded through sqlx's
//! binary-protocol decoders (which return errors rather than panic on odd values such as
//! zero dates), plus a check of its own for TIME, which MySQL allows to be a negative
//! duration. Must not: run queries or decide what a read does with a row.
//!
//! Notes for users: `TINYINT(1)` (what `BOOLEAN` means in MySQL) reads as true/false; cast
//! it (`col + 0`) to get the number. MariaDB stores `JSON` as `LONGTEXT`, so such columns
//! arrive as text (MySQL 8's native JSON arrives as JSON). Timestamps are read in UTC: the
//! session `time_zone` is `+00:00`, and `DATETIME` (no zone) is taken as UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::mysql::types::MySqlTime;
use sqlx::mysql::{MySqlArguments, MySqlTypeInfo, MySqlValueRef};
use sqlx::{Decode, MySql, Type, TypeInfo};

use super::decode::Decoder;
use super::decode::f32_as_written;
use super::key::{Key, KeyKind};
use crate::source::row::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MyKind {
    Bool,
    Int,
    /// Unsigned integers, `YEAR` and `BIT(n)` (as an unsigned number).
    Uint,
    Float,
    Double,
    Decimal,
    Text,
    Json,
    Date,
    Time,
    Datetime,
    Timestamp,
    /// `SELECT NULL`: every value is NULL.
    Null,
}

pub(super) struct MyDecoder;

fn decode<'r, T: Decode<'r, MySql>>(v: MySqlValueRef<'r>) -> Result<T, String> {
    T::decode(v).map_err(|e| e.to_string())
}

impl Decoder for MyDecoder {
    type Db = MySql;
    type Kind = MyKind;

    fn kind(ti: &MySqlTypeInfo) -> Option<MyKind> {
        Some(match ti.name() {
            "BOOLEAN" => MyKind::Bool,
            "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => MyKind::Int,
            "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED"
            | "BIGINT UNSIGNED" | "YEAR" | "BIT" => MyKind::Uint,
            "FLOAT" => MyKind::Float,
            "DOUBLE" => MyKind::Double,
            "DECIMAL" => MyKind::Decimal,
            "JSON" => MyKind::Json,
            "DATE" => MyKind::Date,
            "TIME" => MyKind::Time,
            "DATETIME" => MyKind::Datetime,
            "TIMESTAMP" => MyKind::Timestamp,
            "NULL" => MyKind::Null,
            // Text with a binary collation (`utf8mb4_bin`, MariaDB's JSON) carries the BINARY
            // flag and so a *BLOB/BINARY name; what tells text from bytes is the character set.
            "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM"
            | "SET" | "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB"
                if <str as Type<MySql>>::compatible(ti) =>
            {
                MyKind::Text
            }
            _ => return None,
        })
    }

    fn key_kind(kind: MyKind) -> Option<KeyKind> {
        Some(match kind {
            MyKind::Int => KeyKind::Int,
            MyKind::Uint => KeyKind::Uint,
            MyKind::Float | MyKind::Double => KeyKind::Float,
            MyKind::Decimal => KeyKind::Decimal,
            MyKind::Text => KeyKind::Text,
            MyKind::Date => KeyKind::Date,
            MyKind::Datetime => KeyKind::Timestamp,
            MyKind::Timestamp => KeyKind::Timestamptz,
            MyKind::Bool | MyKind::Json | MyKind::Time | MyKind::Null => return None,
        })
    }

    fn value(kind: MyKind, v: MySqlValueRef<'_>) -> Result<Value, String> {
        Ok(match kind {
            MyKind::Bool => Value::Bool(decode::<i64>(v)? != 0),
            MyKind::Int => Value::Int(decode(v)?),
            MyKind::Uint => {
                let u: u64 = decode(v)?;
                i64::try_from(u)
                    .map(Value::Int)
                    .unwrap_or_else(|_| Value::Decimal(u.to_string()))
            }
            MyKind::Float => Value::Float(f32_as_written(decode(v)?)),
            MyKind::Double => Value::Float(decode(v)?),
            MyKind::Decimal => Value::Decimal(decode::<&str>(v)?.to_string()),
            MyKind::Text => Value::Text(decode::<&str>(v)?.to_string()),
            MyKind::Json => Value::Json(
                serde_json::from_str(decode::<&str>(v)?)
                    .map_err(|e| format!("is not valid JSON ({e})"))?,
            ),
            MyKind::Date => Value::Date(decode::<NaiveDate>(v)?),
            MyKind::Time => Value::Time(time_of_day(decode(v)?)?),
            MyKind::Datetime => Value::Timestamp(decode::<NaiveDateTime>(v)?.and_utc()),
            MyKind::Timestamp => Value::Timestamp(decode::<DateTime<Utc>>(v)?),
            MyKind::Null => Value::Null,
        })
    }

    fn key(kind: MyKind, v: MySqlValueRef<'_>) -> Result<Key, String> {
        Ok(match kind {
            MyKind::Int => Key::Int(decode(v)?),
            MyKind::Uint => {
                let u: u64 = decode(v)?;
                i64::try_from(u).map(Key::Int).unwrap_or(Key::Uint(u))
            }
            MyKind::Float => Key::float(decode::<f32>(v)?.into())?,
            MyKind::Double => Key::float(decode(v)?)?,
            MyKind::Decimal => Key::Decimal(decode::<&str>(v)?.to_string()),
            MyKind::Text => Key::Text(decode::<&str>(v)?.to_string()),
            MyKind::Date => Key::Date(decode(v)?),
            MyKind::Datetime => Key::Timestamp(decode(v)?),
            MyKind::Timestamp => Key::Timestamptz(decode(v)?),
            other => {
                return Err(format!(
                    "has a type ({other:?}) that cannot order an incremental read"
                ));
            }
        })
    }

    fn bind<'q>(
        q: sqlx::query::Query<'q, MySql, MySqlArguments>,
        key: &Key,
    ) -> Result<sqlx::query::Query<'q, MySql, MySqlArguments>, String> {
        Ok(bind_key(q, key))
    }
}

/// A TIME value as a time of day. MySQL's TIME is also a signed duration up to 838 hours;
/// sqlx's own conversion drops the sign (`-01:00:00` would read as `01:00:00`), so the check
/// is done here.
fn time_of_day(t: MySqlTime) -> Result<NaiveTime, String> {
    let invalid = || {
        format!(
            "is {t}, a duration rather than a time of day; cast it in the query (`CAST(col AS CHAR)`)"
        )
    };
    if !t.is_valid_time_of_day() {
        return Err(invalid());
    }
    NaiveTime::from_hms_micro_opt(
        t.hours(),
        t.minutes().into(),
        t.seconds().into(),
        t.microseconds(),
    )
    .ok_or_else(invalid)
}

/// Binds a position value; decimals travel as text and are cast in SQL (`plan::placeholder`).
fn bind_key<'q>(
    q: sqlx::query::Query<'q, MySql, MySqlArguments>,
    key: &Key,
) -> sqlx::query::Query<'q, MySql, MySqlArguments> {
    match key {
        Key::Int(i) => q.bind(*i),
        Key::Uint(u) => q.bind(*u),
        Key::Float(f) => q.bind(*f),
        Key::Decimal(s) | Key::Text(s) | Key::Uuid(s) => q.bind(s.clone()),
        Key::Date(d) => q.bind(*d),
        Key::Timestamp(t) => q.bind(*t),
        Key::Timestamptz(t) => q.bind(*t),
    }
}
