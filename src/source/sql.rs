//! SQL sources (PostgreSQL, MySQL/MariaDB, SQLite): streaming and keyset-incremental reads.
//!
//! Owns: running the job's query through sqlx, converting columns to [`Value`]s, and the
//! (cursor, tiebreak) position. Must not: splice values into SQL text, or load a whole result.

use tokio_util::sync::CancellationToken;

use super::{Checkpoint, SourceError, SourceStream};
use crate::config::raw::SqlSection;

pub async fn open(
    cfg: &SqlSection,
    _job: &str,
    _checkpoint: Option<&Checkpoint>,
    _cancel: CancellationToken,
) -> Result<SourceStream, SourceError> {
    Err(SourceError::Database {
        describe: cfg.url.masked(),
        message: "SQL sources are not available in this build".into(),
    })
}

/// The query's columns, from a `LIMIT 0` probe.
pub async fn probe_columns(cfg: &SqlSection, _job: &str) -> Result<Vec<String>, SourceError> {
    Err(SourceError::Database {
        describe: cfg.url.masked(),
        message: "SQL sources are not available in this build".into(),
    })
}
