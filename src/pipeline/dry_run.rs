//! `run --dry-run`: read, map and batch everything, send nothing, write nothing.
//!
//! Owns: reporting what a run would send (sample operations, request count) and what it would
//! reject (every rejected row with its reason, up to a limit). With the state database it
//! consults the job's fingerprints (read only), so it shows what a real run would send: only
//! changed rows, only their changed attributes. Must not: open the state database itself
//! (the caller hands it over, or none), write to it, or open any network connection to
//! Customer.io.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batcher, Pending};
use crate::config::{JobSpec, PushJob, Settings};
use crate::mapping::Mapper;
use crate::source;
use crate::track::WirePlan;

#[derive(Debug, Serialize)]
pub struct DryRunReport {
    pub job: String,
    pub source: String,
    pub rows_read: u64,
    pub operations: u64,
    pub rejected: u64,
    /// Rows a real run would not send: Customer.io already has them (fingerprints).
    pub unchanged: u64,
    /// Requests a real run would make when every one is answered at once: v2 batches, one
    /// per operation for v1, one per segment batch (retries not included).
    pub requests: u64,
    pub sample_operations: Vec<serde_json::Value>,
    pub sample_rejections: Vec<Rejection>,
}

#[derive(Debug, Serialize)]
pub struct Rejection {
    pub line: u64,
    pub reason: String,
}

pub async fn dry_run(
    settings: &Settings,
    job: &JobSpec,
    push: &PushJob,
    limit: usize,
    state: Option<&crate::state::StateStore>,
) -> Result<DryRunReport, String> {
    let mut stream = source::open(&push.source, &job.name, None, CancellationToken::new())
        .await
        .map_err(|e| format!("job `{}`: {e}", job.name))?;
    let mapper = Mapper::new(&job.name, &push.mapping, &stream.columns)
        .map_err(|e| format!("job `{}` ({}): {e}", job.name, job.file.display()))?;
    // The same plan a real run cuts its batches by, so the request count is the real one.
    let plan = WirePlan::for_job(&settings.track, push);
    let mut batcher = Batcher::new(plan.max_items, plan.max_bytes);
    let mut report = DryRunReport {
        job: job.name.clone(),
        source: stream.describe.clone(),
        rows_read: 0,
        operations: 0,
        rejected: 0,
        unchanged: 0,
        requests: 0,
        sample_operations: Vec::new(),
        sample_rejections: Vec::new(),
    };
    let mut filter = state.and_then(|_| {
        super::stage::ChangeFilter::for_job(
            &job.name,
            &push.mapping,
            push.change,
            true,
            false,
            super::stage::CHUNK_ROWS,
        )
    });
    let mut seq = 0;
    let mut ended = false;
    while !ended {
        let next = stream.rows.recv().await;
        ended = next.is_none();
        if let (Some(f), Some(state)) = (&mut filter, state)
            && !f.is_empty()
            && (ended || f.due())
        {
            let decided = f
                .flush(state)
                .await
                .map_err(|e| format!("job `{}`: {e}", job.name))?;
            for d in decided {
                match d {
                    super::stage::Filtered::Unchanged { .. } => report.unchanged += 1,
                    super::stage::Filtered::Send { pending, .. } => {
                        would_send(&mut report, &mut batcher, pending, limit)
                    }
                }
            }
        }
        let Some(row) = next else { break };
        let row = row.map_err(|e| format!("job `{}`: {e}", job.name))?;
        report.rows_read += 1;
        seq += 1;
        let result = match row.values {
            Err(reason) => Err(reason),
            Ok(values) => mapper.map(&values).map(|m| (m, values)).map_err(|r| r.0),
        };
        match result {
            Err(reason) => {
                report.rejected += 1;
                if report.sample_rejections.len() < limit {
                    report.sample_rejections.push(Rejection {
                        line: row.line,
                        reason,
                    });
                }
            }
            Ok((mapped, values)) => {
                let pending = Pending {
                    seq,
                    line: row.line,
                    row_ref: row.row_ref,
                    values: Vec::new(),
                    mapped,
                };
                drop(values);
                match &mut filter {
                    Some(f) => f.push(pending),
                    None => would_send(&mut report, &mut batcher, pending, limit),
                }
            }
        }
    }
    if batcher.take().is_some() {
        report.requests += 1;
    }
    Ok(report)
}

/// Counts (and samples) an operation a real run would send.
fn would_send(report: &mut DryRunReport, batcher: &mut Batcher, pending: Pending, limit: usize) {
    report.operations += 1;
    if report.sample_operations.len() < limit {
        let encoded = &pending.mapped.encoded;
        // The encoding is our own JSON; were it not, show exactly what would be sent.
        let sample = serde_json::from_slice(encoded).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(encoded).into_owned())
        });
        report.sample_operations.push(sample);
    }
    if batcher.push(pending).is_some() {
        report.requests += 1;
    }
}
