//! What every source hands out: values, rows with their position, checkpoints, the stream.
//!
//! Owns: the types shared by all sources and by the pipeline that consumes them. Must not:
//! read anything; it imports nothing else from `source`, so no source file loops back here.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::error::SourceError;

/// A typed value read from a source. CSV yields only `Text` (and `Null` for empty cells is
/// never produced: an empty cell is `Text("")`, so `empty:` policies can see it).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Exact decimal text from NUMERIC/DECIMAL columns.
    Decimal(String),
    Text(String),
    Json(serde_json::Value),
    /// A point in time (timestamptz, or a naive timestamp read as UTC).
    Timestamp(chrono::DateTime<chrono::Utc>),
    Date(chrono::NaiveDate),
    Time(chrono::NaiveTime),
}

impl Value {
    /// The natural JSON form of the value (timestamps as RFC 3339 text; mapping turns them
    /// into Unix seconds where the job asks for a timestamp).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Decimal(d) => d
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .and_then(serde_json::Number::from_f64)
                .map(J::Number)
                .unwrap_or_else(|| J::String(d.clone())),
            Value::Text(s) => J::String(s.clone()),
            Value::Json(v) => v.clone(),
            Value::Timestamp(t) => {
                J::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Value::Date(d) => J::String(d.to_string()),
            Value::Time(t) => J::String(t.to_string()),
        }
    }

    /// The value as text, for identifiers, event names and row keys.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Text(s) => Some(s.clone()),
            Value::Json(serde_json::Value::String(s)) => Some(s.clone()),
            // JSON has no NaN or infinity; as text they keep their name.
            Value::Float(f) if !f.is_finite() => Some(f.to_string()),
            other => match other.to_json() {
                serde_json::Value::String(s) => Some(s),
                j => Some(j.to_string()),
            },
        }
    }

    /// Null, or text that is empty: what `empty:` policies act on.
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Text(s) => s.is_empty(),
            _ => false,
        }
    }
}

/// Where a later run continues if this row is the last settled one. Stored (as JSON) in the
/// job's checkpoint together with the source's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ResumePoint {
    /// After the row: the next record starts at `byte` (of the decompressed stream for
    /// `.gz`), on physical `line`; `row` data rows have been read.
    Csv { byte: u64, line: u64, row: u64 },
    /// After the row whose (cursor, tiebreak) is given; `row` rows read so far in this pass.
    Sql {
        cursor: Option<serde_json::Value>,
        tiebreak: Option<serde_json::Value>,
        row: u64,
    },
}

impl ResumePoint {
    /// Data rows read from the start of the source up to here.
    pub fn rows(&self) -> u64 {
        match self {
            ResumePoint::Csv { row, .. } | ResumePoint::Sql { row, .. } => *row,
        }
    }
}

/// A job's saved position: which input it belongs to, and where in it to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identity of the input (a CSV file's fingerprint; for SQL the cursor's columns), so a
    /// changed input is never resumed at a stale position.
    pub source: serde_json::Value,
    pub resume: ResumePoint,
    /// `true` once the whole input was read and settled.
    #[serde(default)]
    pub complete: bool,
}

/// One record read from a source.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// 1-based line (CSV: physical line where the record starts) or row number (SQL).
    pub line: u64,
    /// Stable identity for dead letters: the same input row gets the same reference.
    pub row_ref: String,
    pub resume: ResumePoint,
    /// Values in column order, or why the record could not be read.
    pub values: Result<Vec<Value>, String>,
    /// The raw record text, kept only for unreadable records.
    pub raw: Option<String>,
}

/// A running source: its columns and the stream of rows.
pub struct SourceStream {
    pub columns: Arc<Vec<String>>,
    /// Identity stored with checkpoints.
    pub identity: serde_json::Value,
    /// `Some` when the source resumed from a checkpoint (how many rows were skipped).
    pub resumed_at: Option<ResumePoint>,
    pub rows: mpsc::Receiver<Result<SourceRow, SourceError>>,
    /// Human name of the source for messages: the file path, or the masked database URL.
    pub describe: String,
}

/// Channel depth between a source and the pipeline: enough to keep the mapper busy, small
/// enough that memory stays flat whatever the input's size.
pub const ROW_CHANNEL: usize = 4096;
