//! Sources: where rows come from (CSV files, SQL queries), each row with its position.
//!
//! Owns: opening a source at a checkpoint, streaming its rows in order through a bounded
//! channel (constant memory), and saying where a later run resumes after each row.
//! Must not: know about Customer.io, mapping rules or the state database; a source never
//! decides what is delivered, it only reports what it read and where.

pub mod check;
pub mod csv;
mod error;
pub mod replay;
mod row;
pub mod sql;

use tokio_util::sync::CancellationToken;

pub use error::SourceError;
pub use row::{
    Checkpoint, Closed, ROW_CHANNEL, ROW_CHUNK, ResumePoint, RowItem, RowReceiver, RowSender,
    SourceRow, SourceStream, Value, row_channel,
};

use crate::config::SourceSpec;

/// Opens the job's source, continuing after `checkpoint` when it still applies. Errors name
/// the file or database, never the job: whoever reports them adds the job, once.
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
