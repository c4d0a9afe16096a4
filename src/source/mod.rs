//! Sources: where rows come from (CSV files, SQL queries), each row with its position.
//!
//! Owns: opening a source at a checkpoint, streaming its rows in order through a bounded
//! channel (constant memory), and saying where a later run resumes after each row.
//! Must not: know about Customer.io, mapping rules or the state database; a source never
//! decides what is delivered, it only reports what it read and where.

pub mod check;
pub mod csv;
pub mod replay;
pub mod sql;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::SourceSpec;

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

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot open: {source}; check the path in the job's `source.csv.path`")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read line {line}: {message}")]
    Read {
        path: String,
        line: u64,
        message: String,
    },
    #[error("{path}: the header row is missing or unreadable: {message}")]
    Header { path: String, message: String },
    /// `source.csv.min_age_secs`: the exporter may still be writing the file.
    #[error(
        "{path}: modified {age_secs} s ago, less than `source.csv.min_age_secs` ({min_age_secs} s), so it may still be being written; nothing was read and the checkpoint is unchanged; the next run reads it once it is older"
    )]
    TooRecent {
        path: String,
        age_secs: u64,
        min_age_secs: u64,
    },
    /// The file's identity could not be turned into a checkpoint; resuming would never match.
    #[error(
        "{path}: the file's identity cannot be stored in a checkpoint ({message}); nothing was read; if the file's modification time is far in the future, `touch` it and run again"
    )]
    Identity { path: String, message: String },
    #[error("{describe}: {message}")]
    Database { describe: String, message: String },
    #[error(
        "{describe}: column `{column}` has type {db_type}, which cio-sync cannot read; cast it to text in the query (PostgreSQL `{column}::text`, MySQL `CAST({column} AS CHAR)`)"
    )]
    UnsupportedType {
        describe: String,
        column: String,
        db_type: String,
    },
}

/// `job `name`: error`, unless the error already names the job (SQL errors do, so that
/// they read well on their own).
pub fn with_job(job: &str, error: &dyn std::fmt::Display) -> String {
    let text = error.to_string();
    if text.contains(&format!("job `{job}`")) {
        text
    } else {
        format!("job `{job}`: {text}")
    }
}

/// Channel depth between a source and the pipeline: enough to keep the mapper busy, small
/// enough that memory stays flat whatever the input's size.
pub const ROW_CHANNEL: usize = 4096;

/// Opens the job's source, continuing after `checkpoint` when it still applies.
pub async fn open(
    spec: &SourceSpec,
    job: &str,
    checkpoint: Option<&Checkpoint>,
    cancel: CancellationToken,
) -> Result<SourceStream, SourceError> {
    match spec {
        SourceSpec::Csv(c) => csv::open(c, checkpoint, cancel).await,
        SourceSpec::Sql(s) => sql::open(s, job, checkpoint, cancel).await,
    }
}
