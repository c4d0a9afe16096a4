//! The `runs` table: one row per run of a job, its counters and how it ended.
//!
//! Owns: starting a run (and marking runs a dead process left "running" as aborted), the
//! counters written by each commit, finishing a run, and listing runs for `status`.
//! Must not: decide outcomes (the pipeline does) or touch other tables.

use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{StateError, StateStore, now_ms, q, storable, storable_opt};

/// How a run ended. A run in progress has no outcome yet: its row says `running` until it
/// finishes (or a later run marks it aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every row delivered.
    Succeeded,
    /// Finished; some rows were dead-lettered.
    RejectedRows,
    Failed,
    /// Stopped by a signal; the checkpoint holds what was settled.
    Interrupted,
    /// Read and sent, but the mirror phase refused to remove what vanished: more than
    /// `guard.max_missing_share` of the known identities, or fewer than `guard.min_rows` rows
    /// read (`run --force` overrides).
    Guarded,
    /// Found still "running" by a later run: the process died (killed, power loss).
    Aborted,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RejectedRows => "rejected_rows",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Guarded => "guarded",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Counters of a run as of a commit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RunCounts {
    pub rows_read: u64,
    pub rows_delivered: u64,
    pub rows_rejected: u64,
    pub requests: u64,
    pub retries: u64,
    /// Rows settled without sending: Customer.io already had their attributes.
    pub rows_unchanged: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub job: String,
    pub kind: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub summary: Option<serde_json::Value>,
}

impl StateStore {
    /// Records a new run; any earlier run of the job still marked running died with its
    /// process and is marked aborted.
    pub async fn start_run(&self, job: &str, kind: &str) -> Result<String, StateError> {
        let id = ulid::Ulid::generate().to_string();
        let now = now_ms();
        let job = storable(job);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting a run", "runs"))?;
        sqlx::query("UPDATE runs SET outcome = 'aborted', finished_at = $1, error = 'the process stopped before the run finished (killed or crashed); the next run resumed from its checkpoint' WHERE job = $2 AND outcome = 'running'")
            .bind(now)
            .bind(job.as_ref())
            .execute(&mut *tx)
            .await
            .map_err(q("marking dead runs", "runs"))?;
        sqlx::query("INSERT INTO runs (id, job, kind, started_at, outcome) VALUES ($1, $2, $3, $4, 'running')")
            .bind(&id)
            .bind(job.as_ref())
            .bind(storable(kind).as_ref())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(q("starting a run", "runs"))?;
        tx.commit().await.map_err(q("starting a run", "runs"))?;
        Ok(id)
    }

    pub async fn finish_run(
        &self,
        run_id: &str,
        outcome: Outcome,
        error: Option<&str>,
        counts: RunCounts,
        summary: Option<&serde_json::Value>,
    ) -> Result<(), StateError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("finishing a run", "runs"))?;
        update_counts(&mut tx, run_id, counts).await?;
        sqlx::query("UPDATE runs SET outcome = $1, error = $2, finished_at = $3, summary = $4 WHERE id = $5")
            .bind(outcome.as_str())
            .bind(storable_opt(error))
            .bind(now_ms())
            .bind(summary.map(|s| storable(&s.to_string()).into_owned()))
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(q("finishing a run", "runs"))?;
        tx.commit().await.map_err(q("finishing a run", "runs"))?;
        Ok(())
    }

    pub async fn runs(&self, job: Option<&str>, limit: i64) -> Result<Vec<RunRecord>, StateError> {
        // One static statement serves "one job" and "every job" (`$2` true).
        let rows = sqlx::query(
            "SELECT id, job, kind, started_at, finished_at, outcome, error, rows_read, rows_delivered, rows_rejected, requests, retries, summary, rows_unchanged \
             FROM runs WHERE job = $1 OR $2 ORDER BY started_at DESC, id DESC LIMIT $3",
        )
        .bind(storable(job.unwrap_or("")).as_ref())
        .bind(job.is_none())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing runs", "runs"))?;
        rows.iter()
            .map(run_record)
            .collect::<Result<_, _>>()
            .map_err(q("reading runs", "runs"))
    }
}

pub(super) async fn update_counts(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: &str,
    c: RunCounts,
) -> Result<(), StateError> {
    sqlx::query("UPDATE runs SET rows_read = $1, rows_delivered = $2, rows_rejected = $3, requests = $4, retries = $5, rows_unchanged = $7 WHERE id = $6")
        .bind(c.rows_read as i64)
        .bind(c.rows_delivered as i64)
        .bind(c.rows_rejected as i64)
        .bind(c.requests as i64)
        .bind(c.retries as i64)
        .bind(run_id)
        .bind(c.rows_unchanged as i64)
        .execute(&mut **tx)
        .await
        .map_err(q("updating run counters", "runs"))?;
    Ok(())
}

fn run_record(r: &AnyRow) -> Result<RunRecord, sqlx::Error> {
    let n = |i: usize| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(i)?.max(0) as u64) };
    let summary: Option<String> = r.try_get(12)?;
    Ok(RunRecord {
        id: r.try_get(0)?,
        job: r.try_get(1)?,
        kind: r.try_get(2)?,
        started_at: r.try_get(3)?,
        finished_at: r.try_get(4)?,
        outcome: r.try_get(5)?,
        error: r.try_get(6)?,
        counts: RunCounts {
            rows_read: n(7)?,
            rows_delivered: n(8)?,
            rows_rejected: n(9)?,
            requests: n(10)?,
            retries: n(11)?,
            rows_unchanged: n(13)?,
        },
        // Kept on purpose: the summary is informational (`status`), written by this program
        // as JSON; a summary that does not parse is shown as absent rather than failing
        // `status` for every run.
        summary: summary.and_then(|s| serde_json::Value::from_str(&s).ok()),
    })
}
