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

    /// The value as text, borrowed when it already is text (CSV cells, SQL text columns):
    /// identifiers, event names, row keys and timestamps read it without a copy.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Text(s) | Value::Json(serde_json::Value::String(s)) => {
                Some(Cow::Borrowed(s.as_str()))
            }
            other => other.to_text().map(Cow::Owned),
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
    pub rows: RowReceiver,
    /// Human name of the source for messages: the file path, or the masked database URL.
    pub describe: String,
}

/// Rows buffered between a source and the pipeline: enough to keep the mapper busy, small
/// enough that memory stays flat whatever the input's size.
pub const ROW_CHANNEL: usize = 4096;

/// Rows per message between a source and the pipeline. One message per row cost a wake-up
/// of the other thread per row (a tenth of the CPU of a CSV run); a chunk amortises it.
pub const ROW_CHUNK: usize = 256;

/// What a source hands out: a row, or why reading stopped.
pub type RowItem = Result<SourceRow, SourceError>;

/// A row channel: rows travel in chunks of [`ROW_CHUNK`], at most [`ROW_CHANNEL`] rows
/// buffered in all.
pub fn row_channel() -> (RowSender, RowReceiver) {
    let (tx, rx) = mpsc::channel((ROW_CHANNEL / ROW_CHUNK).max(1));
    (
        RowSender {
            tx,
            chunk: Vec::with_capacity(ROW_CHUNK),
        },
        RowReceiver {
            rx,
            buffered: Vec::new().into_iter(),
        },
    )
}

/// The pipeline's end of a source was dropped: nobody reads any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// The source's end of a row channel. Rows collect into a chunk that goes when it is full,
/// when an error is sent (an error is always the last item), on [`flush`](Self::flush), or
/// when the sender is dropped, so no row (and no error) is ever left behind.
pub struct RowSender {
    tx: mpsc::Sender<Vec<RowItem>>,
    chunk: Vec<RowItem>,
}

impl RowSender {
    fn take(&mut self) -> Vec<RowItem> {
        std::mem::replace(&mut self.chunk, Vec::with_capacity(ROW_CHUNK))
    }

    fn ready(&mut self, item: RowItem) -> bool {
        let last = item.is_err();
        self.chunk.push(item);
        last || self.chunk.len() >= ROW_CHUNK
    }

    /// Queues a row (async sources); waits only when a full chunk finds the channel full.
    pub async fn send(&mut self, item: RowItem) -> Result<(), Closed> {
        if self.ready(item) {
            self.flush().await
        } else if self.tx.is_closed() {
            Err(Closed)
        } else {
            Ok(())
        }
    }

    /// Hands the rows queued so far to the pipeline. Cancel-safe: the rows stay queued until
    /// the channel has room, so a flush given up on (a stop request) loses nothing.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let permit = self.tx.reserve().await.map_err(|_| Closed)?;
        permit.send(std::mem::replace(
            &mut self.chunk,
            Vec::with_capacity(ROW_CHUNK),
        ));
        Ok(())
    }

    /// [`send`](Self::send) for sources on a blocking thread (never inside the runtime).
    pub fn blocking_send(&mut self, item: RowItem) -> Result<(), Closed> {
        if self.ready(item) {
            self.blocking_flush()
        } else if self.tx.is_closed() {
            Err(Closed)
        } else {
            Ok(())
        }
    }

    /// [`flush`](Self::flush) for sources on a blocking thread.
    pub fn blocking_flush(&mut self) -> Result<(), Closed> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = self.take();
        self.tx.blocking_send(chunk).map_err(|_| Closed)
    }
}

impl Drop for RowSender {
    /// The last chunk still goes: a source that returns early (an error sent, the end of
    /// its input) need not flush by hand. When the channel is full the chunk is sent from a
    /// task, which keeps the channel open until it is delivered, so it still arrives last.
    fn drop(&mut self) {
        if self.chunk.is_empty() || self.tx.is_closed() {
            return;
        }
        let chunk = self.take();
        let chunk = match self.tx.try_send(chunk) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
        };
        let tx = self.tx.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let _ = tx.send(chunk).await;
                });
            }
            // Outside any runtime a blocking send cannot stall one.
            Err(_) => {
                let _ = tx.blocking_send(chunk);
            }
        }
    }
}

/// The pipeline's end of a row channel.
pub struct RowReceiver {
    rx: mpsc::Receiver<Vec<RowItem>>,
    /// The rest of the chunk received last.
    buffered: std::vec::IntoIter<RowItem>,
}

impl RowReceiver {
    /// The next row; `None` once the source ended and every row was taken. Cancel-safe: a
    /// chunk is never half-taken across an await.
    pub async fn recv(&mut self) -> Option<RowItem> {
        loop {
            if let Some(item) = self.buffered.next() {
                return Some(item);
            }
            self.buffered = self.rx.recv().await?.into_iter();
        }
    }

    /// The next row if one is already here, without waiting: lets the pipeline take a
    /// received chunk in one go instead of one wake-up per row.
    pub fn try_recv(&mut self) -> Option<RowItem> {
        self.buffered.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u64) -> RowItem {
        Ok(SourceRow {
            line: n,
            row_ref: format!("r{n}"),
            resume: ResumePoint::Csv {
                byte: n,
                line: n,
                row: n,
            },
            values: Ok(vec![Value::Text(n.to_string())]),
            raw: None,
        })
    }

    async fn drain(rx: &mut RowReceiver) -> (Vec<u64>, Option<String>) {
        let mut lines = Vec::new();
        let mut error = None;
        while let Some(item) = rx.recv().await {
            match item {
                Ok(r) => lines.push(r.line),
                Err(e) => error = Some(e.to_string()),
            }
        }
        (lines, error)
    }

    #[tokio::test]
    async fn rows_arrive_in_order_across_chunks_and_the_last_partial_chunk_goes_on_drop() {
        let (mut tx, mut rx) = row_channel();
        let n = (ROW_CHUNK * 3 + 7) as u64;
        let sender = tokio::spawn(async move {
            for i in 1..=n {
                tx.send(row(i)).await.expect("the receiver is open");
            }
            // No flush: dropping the sender hands over the 7 rows still queued.
        });
        let (lines, error) = drain(&mut rx).await;
        sender.await.expect("sender");
        assert_eq!(lines, (1..=n).collect::<Vec<_>>());
        assert_eq!(error, None);
    }

    #[tokio::test]
    async fn rows_and_an_error_queued_while_the_channel_is_full_arrive_in_order_when_the_sender_drops()
     {
        let (mut tx, mut rx) = row_channel();
        // Fill every slot of the channel with full chunks, then queue rows and an error
        // while nobody reads: the sender must not lose them when it is dropped.
        let full = (ROW_CHANNEL / ROW_CHUNK * ROW_CHUNK) as u64;
        let producer = tokio::task::spawn_blocking(move || {
            for i in 1..=full {
                tx.blocking_send(row(i)).expect("room for full chunks");
            }
            for i in full + 1..=full + 3 {
                tx.blocking_send(row(i)).expect("queued");
            }
            tx
        });
        let mut tx = producer.await.expect("producer");
        // The channel is full: the error's chunk cannot go now, so it goes from a task when
        // the sender is dropped.
        let pending = tx.send(Err(SourceError::Read {
            path: "people.csv".into(),
            line: 9,
            message: "bad quote".into(),
        }));
        assert!(
            futures::FutureExt::now_or_never(pending).is_none(),
            "the channel should be full, so sending the error waits"
        );
        drop(tx);
        let (lines, error) = drain(&mut rx).await;
        assert_eq!(lines, (1..=full + 3).collect::<Vec<_>>());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("bad quote")),
            "the error arrives after every row: {error:?}"
        );
    }

    #[tokio::test]
    async fn a_sender_learns_that_the_pipeline_stopped_listening() {
        let (mut tx, rx) = row_channel();
        drop(rx);
        assert_eq!(tx.send(row(1)).await, Err(Closed));
        assert_eq!(tx.flush().await, Err(Closed));
    }
}
