//! `validate --connect`: open each job's source and check that the mapped columns exist.
//!
//! Owns: the pre-flight check of sources. Must not: read more than the header / a `LIMIT 0`
//! probe, or send anything.

use tokio_util::sync::CancellationToken;

use crate::config::{JobKind, JobSpec};
use crate::mapping::Mapper;

pub async fn check_job(job: &JobSpec) -> Result<(), String> {
    let JobKind::Push(push) = &job.kind else {
        return Ok(());
    };
    let cancel = CancellationToken::new();
    let columns = match &push.source {
        crate::config::SourceSpec::Sql(sql) => super::sql::probe_columns(sql, &job.name)
            .await
            .map_err(|e| format!("job `{}`: {e}", job.name))?,
        crate::config::SourceSpec::Csv(csv) => {
            // A file still being written is a reason for a run to wait, not a broken config.
            let header_only = crate::config::CsvSource {
                min_age: None,
                ..csv.clone()
            };
            let stream = super::csv::open(&header_only, None, cancel.clone())
                .await
                .map_err(|e| format!("job `{}`: {e}", job.name))?;
            cancel.cancel();
            stream.columns.to_vec()
        }
    };
    Mapper::new(&job.name, &push.mapping, &columns)
        .map_err(|e| format!("job `{}` ({}): {e}", job.name, job.file.display()))?;
    Ok(())
}
