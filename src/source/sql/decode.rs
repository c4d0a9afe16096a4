//! Reading a result's columns and values, shared by the three backends.
//!
//! Owns: the [`Decoder`] trait each backend implements (types, values, positions and how a
//! position is bound), the column layout fixed at a result's first row, and helpers the
//! backends share. Must not: run queries, hold connections or know where a read starts;
//! `read` drives the fetch and the backends (`pg`, `mysql`, `sqlite`) only decode.

use futures::stream::{BoxStream, StreamExt};
use sqlx::query::Query;
use sqlx::{Column, ColumnIndex, Database, Row, TypeInfo, ValueRef};

use super::key::{Key, KeyKind};
use crate::source::row::Value;

/// One backend's reading of its column types and values.
pub(super) trait Decoder {
    type Db: Database;
    /// How a column is read, fixed by its type for the whole result.
    type Kind: Copy + Send + Sync + 'static;
    /// `None`: cio-sync cannot read the type.
    fn kind(ti: &<Self::Db as Database>::TypeInfo) -> Option<Self::Kind>;
    /// `None`: a column of this kind cannot order an incremental read.
    fn key_kind(kind: Self::Kind) -> Option<KeyKind>;
    /// The value; the error completes "column `x` (TYPE) …".
    fn value(kind: Self::Kind, v: <Self::Db as Database>::ValueRef<'_>) -> Result<Value, String>;
    /// The exact position value; the error completes "column `x` (TYPE) …".
    fn key(kind: Self::Kind, v: <Self::Db as Database>::ValueRef<'_>) -> Result<Key, String>;
    /// Binds a position with the type the chunk query expects (`plan::placeholder`); the
    /// error says why the position cannot be sent to this database.
    fn bind<'q>(
        q: Query<'q, Self::Db, <Self::Db as Database>::Arguments>,
        key: &Key,
    ) -> Result<Query<'q, Self::Db, <Self::Db as Database>::Arguments>, String>;
}

/// A column of the query as the database describes it.
#[derive(Debug, Clone)]
pub(super) struct ColumnInfo {
    pub name: String,
    /// The database's type name, for messages.
    pub db_type: String,
    pub supported: bool,
    /// What a position in this column looks like, when it can be a cursor or tiebreak.
    pub key_kind: Option<KeyKind>,
}

pub(super) fn column_infos<D: Decoder>(columns: &[<D::Db as Database>::Column]) -> Vec<ColumnInfo> {
    columns
        .iter()
        .map(|c| {
            let ti = c.type_info();
            let kind = D::kind(ti);
            ColumnInfo {
                name: c.name().to_string(),
                db_type: ti.name().to_string(),
                supported: kind.is_some(),
                key_kind: kind.and_then(D::key_kind),
            }
        })
        .collect()
}

/// Why a fetch failed.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The database or the connection; may be transient.
    Db(sqlx::Error),
    /// A column whose type cio-sync cannot read (found at the first row).
    Unsupported { column: String, db_type: String },
    /// The result does not look like the probe said it would.
    Shape(String),
}

/// One decoded row.
pub(super) struct DecodedRow {
    /// The values, or the first column that could not be read (named, with its type).
    pub values: Result<Vec<Value>, String>,
    /// For unreadable rows: the row as JSON text, unreadable columns shown as their error.
    pub raw: Option<String>,
    /// (cursor, tiebreak) in incremental reads.
    pub key: Option<Result<(Key, Key), String>>,
}

/// The kinds of a result's columns, taken from its first row.
struct Layout<K> {
    names: Vec<String>,
    types: Vec<String>,
    kinds: Vec<K>,
}

impl<K: Copy> Layout<K> {
    fn of<D: Decoder<Kind = K>>(
        columns: &[<D::Db as Database>::Column],
        expected: usize,
    ) -> Result<Self, FetchError> {
        if columns.len() != expected {
            return Err(FetchError::Shape(format!(
                "the query returned {} columns, but {expected} when it was first described; was the table changed during the read?",
                columns.len()
            )));
        }
        let mut layout = Layout {
            names: Vec::new(),
            types: Vec::new(),
            kinds: Vec::new(),
        };
        for c in columns {
            let ti = c.type_info();
            let kind = D::kind(ti).ok_or_else(|| FetchError::Unsupported {
                column: c.name().to_string(),
                db_type: ti.name().to_string(),
            })?;
            layout.names.push(c.name().to_string());
            layout.types.push(ti.name().to_string());
            layout.kinds.push(kind);
        }
        Ok(layout)
    }

    fn decode<D: Decoder<Kind = K>>(
        &self,
        row: &<D::Db as Database>::Row,
        keys: Option<(usize, usize)>,
    ) -> DecodedRow
    where
        usize: ColumnIndex<<D::Db as Database>::Row>,
    {
        let mut values = Vec::with_capacity(self.kinds.len());
        let mut first_error: Option<String> = None;
        let mut shown = Vec::new();
        for (i, kind) in self.kinds.iter().enumerate() {
            let read = match row.try_get_raw(i) {
                Ok(raw) if raw.is_null() => Ok(Value::Null),
                Ok(raw) => D::value(*kind, raw),
                Err(e) => Err(e.to_string()),
            };
            match read {
                Ok(v) => values.push(v),
                Err(why) => {
                    let msg = format!("column `{}` ({}) {why}", self.names[i], self.types[i]);
                    first_error.get_or_insert(msg.clone());
                    shown.push((i, msg));
                    values.push(Value::Null);
                }
            }
        }
        let key = keys.map(|(c, t)| Ok((self.key::<D>(row, c)?, self.key::<D>(row, t)?)));
        match first_error {
            None => DecodedRow {
                values: Ok(values),
                raw: None,
                key,
            },
            Some(msg) => {
                let mut obj = serde_json::Map::new();
                for (i, v) in values.iter().enumerate() {
                    obj.insert(self.names[i].clone(), v.to_json());
                }
                for (i, why) in shown {
                    obj.insert(
                        self.names[i].clone(),
                        serde_json::Value::String(format!("<unreadable: {why}>")),
                    );
                }
                DecodedRow {
                    values: Err(msg),
                    raw: Some(serde_json::Value::Object(obj).to_string()),
                    key,
                }
            }
        }
    }

    fn key<D: Decoder<Kind = K>>(
        &self,
        row: &<D::Db as Database>::Row,
        i: usize,
    ) -> Result<Key, String>
    where
        usize: ColumnIndex<<D::Db as Database>::Row>,
    {
        let name = &self.names[i];
        match row.try_get_raw(i) {
            Ok(raw) if raw.is_null() => Err(format!(
                "the cursor column `{name}` is NULL, so the row has no position in the incremental read; make the column NOT NULL or COALESCE it in the query"
            )),
            Ok(raw) => D::key(self.kinds[i], raw)
                .map_err(|why| format!("the cursor column `{name}` ({}) {why}", self.types[i])),
            Err(e) => Err(format!("the cursor column `{name}`: {e}")),
        }
    }
}

/// Decodes a row stream, fixing the column kinds at the first row.
pub(super) fn decoded<'a, D: Decoder + 'a>(
    rows: BoxStream<'a, Result<<D::Db as Database>::Row, sqlx::Error>>,
    keys: Option<(usize, usize)>,
    expected: usize,
) -> BoxStream<'a, Result<DecodedRow, FetchError>>
where
    usize: ColumnIndex<<D::Db as Database>::Row>,
{
    let mut layout: Option<Layout<D::Kind>> = None;
    rows.map(move |r| {
        let row = r.map_err(FetchError::Db)?;
        if layout.is_none() {
            layout = Some(Layout::of::<D>(row.columns(), expected)?);
        }
        match &layout {
            Some(l) => Ok(l.decode::<D>(&row, keys)),
            None => Err(FetchError::Shape("the result has no column layout".into())),
        }
    })
    .boxed()
}

/// The `f32` as the shortest decimal that reads back as it, widened: `0.1::real` becomes
/// `0.1`, not `0.10000000149011612`.
pub(super) fn f32_as_written(f: f32) -> f64 {
    if f.is_finite() {
        f.to_string().parse().unwrap_or(f64::from(f))
    } else {
        f64::from(f)
    }
}
