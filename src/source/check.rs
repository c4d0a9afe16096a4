//! The columns a job's source has, for the pre-flight (`validate`).
//!
//! Owns: opening a source only far enough to learn its columns (a CSV header, an SQL
//! `LIMIT 0` probe). Must not: read rows, know of mapping (the pre-flight holds the columns
//! against the mapping), or send anything.

use tokio_util::sync::CancellationToken;

use crate::config::SourceSpec;

/// The columns of `source`, for job `job`; the error names the job and the source's problem.
pub async fn columns(source: &SourceSpec, job: &str) -> Result<Vec<String>, String> {
    match source {
        SourceSpec::Sql(sql) => super::sql::probe_columns(sql, job)
            .await
            .map_err(|e| format!("job `{job}`: {e}")),
        SourceSpec::Csv(csv) => {
            // A file still being written is a reason for a run to wait, not a broken config.
            let header_only = crate::config::CsvSource {
                min_age: None,
                ..csv.clone()
            };
            let cancel = CancellationToken::new();
            let stream = super::csv::open(&header_only, None, cancel.clone())
                .await
                .map_err(|e| format!("job `{job}`: {e}"))?;
            cancel.cancel();
            Ok(stream.columns.to_vec())
        }
    }
}
