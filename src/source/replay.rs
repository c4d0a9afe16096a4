//! Dead letters read back as a source, so `dead-letters retry` goes through the same mapping
//! and delivery as a normal run.
//!
//! Owns: turning stored rows (JSON objects) back into columns and values.
//! Must not: query the database (it is handed the rows) or keep checkpoints.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::row::{ResumePoint, SourceRow, SourceStream, Value, row_channel};

/// A stored row to replay, as plain data: the caller turns whatever its store holds into
/// these, so sources stay ignorant of the state database.
#[derive(Debug, Clone)]
pub struct ReplayRow {
    /// The row's original reference, kept so a retried row settles its own dead letter.
    pub row_ref: String,
    /// The row's original line, when known.
    pub line: Option<i64>,
    /// The row as a JSON object of column → value, or `{"raw": "…"}` for unreadable ones.
    pub row_data: serde_json::Value,
    /// Why the row was dead-lettered.
    pub reason: String,
}

pub fn from_dead_letters(
    letters: Vec<ReplayRow>,
    describe: String,
    cancel: CancellationToken,
) -> SourceStream {
    let mut columns: Vec<String> = Vec::new();
    for l in &letters {
        if let serde_json::Value::Object(map) = &l.row_data
            && !is_raw(map)
        {
            for k in map.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let (mut tx, rx) = row_channel();
    let cols = columns.clone();
    tokio::spawn(async move {
        for (i, l) in letters.into_iter().enumerate() {
            if cancel.is_cancelled() {
                return;
            }
            let values = match &l.row_data {
                serde_json::Value::Object(map) if !is_raw(map) => Ok(cols
                    .iter()
                    .map(|c| map.get(c).map(from_json).unwrap_or(Value::Null))
                    .collect()),
                _ => Err(format!(
                    "this record could not be read from the source ({}); correct it in the source and run the job again, then purge it",
                    l.reason
                )),
            };
            let raw = values.is_err().then(|| l.row_data.to_string());
            let row = SourceRow {
                line: l.line.unwrap_or(0).max(0) as u64,
                row_ref: l.row_ref,
                resume: ResumePoint::Csv {
                    byte: 0,
                    line: 0,
                    row: i as u64 + 1,
                },
                values,
                raw,
            };
            if tx.send(Ok(row)).await.is_err() {
                return;
            }
        }
    });
    SourceStream {
        columns: Arc::new(columns),
        identity: serde_json::Value::Null,
        resumed_at: None,
        rows: rx,
        describe,
    }
}

/// Rows stored as `{"raw": "…"}` were never parsed into columns.
fn is_raw(map: &serde_json::Map<String, serde_json::Value>) -> bool {
    map.len() == 1 && map.contains_key("raw")
}

fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.clone()),
    }
}
