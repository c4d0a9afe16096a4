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
pub use row::{Checkpoint, ROW_CHANNEL, ResumePoint, SourceRow, SourceStream, Value};

use crate::config::SourceSpec;

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
