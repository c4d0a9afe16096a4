//! The `checkpoints` table: where each job (and each scope of a job) resumes.
//!
//! Owns: the checkpoint key (job and [`Scope`]), encoding and decoding checkpoints, the
//! lease-fenced write a commit makes, resetting, and listing for `status`.
//! Must not: decide when a checkpoint advances (the pipeline does) or touch other tables.

use serde::Serialize;
use sqlx::Row;

use super::{StateError, StateStore, q, storable};
use crate::source::Checkpoint;

/// Which of a job's checkpoints: the job's own, or one a phase keeps beside it (a backfill,
/// a mirror phase) so that phase resumes on its own without moving the job's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// The job's own checkpoint; stored as `job` (rows from before scopes have it).
    #[default]
    Job,
    /// A named phase, e.g. `backfill:2026-01`.
    Named(String),
}

impl Scope {
    /// The stored name of the job's own scope.
    pub const JOB: &'static str = "job";

    /// A named scope. The name `job` is the job's own scope.
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        if name == Self::JOB {
            Scope::Job
        } else {
            Scope::Named(name)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Scope::Job => Self::JOB,
            Scope::Named(n) => n,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    pub job: String,
    /// `job` for the job's own checkpoint, else the phase's name.
    pub scope: String,
    pub position: serde_json::Value,
    pub run_id: String,
    pub updated_at: i64,
}

/// A checkpoint as stored: JSON text. Failing is an impossible case (the types serialise
/// to JSON by construction), reported as an internal error naming the job, never as `""`.
pub(super) fn encode<T: Serialize>(job: &str, checkpoint: &T) -> Result<String, StateError> {
    serde_json::to_string(checkpoint)
        .map(|text| storable(&text).into_owned())
        .map_err(|source| StateError::EncodeCheckpoint {
            job: job.to_string(),
            source,
        })
}

/// Writes a checkpoint inside a commit; false when the fence refused it (this holder no
/// longer holds the job's lease).
pub(super) async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job: &str,
    scope: &Scope,
    text: &str,
    run_id: &str,
    now: i64,
    fence: Option<&str>,
) -> Result<bool, StateError> {
    let job = storable(job);
    let scope = storable(scope.as_str());
    let written = match fence {
        None => sqlx::query(
            "INSERT INTO checkpoints (job, scope, position, run_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job, scope) DO UPDATE SET position = excluded.position, run_id = excluded.run_id, updated_at = excluded.updated_at",
        )
        .bind(job.as_ref())
        .bind(scope.as_ref())
        .bind(text)
        .bind(run_id)
        .bind(now)
        .execute(&mut **tx)
        .await,
        // The WHERE also keeps SQLite's parser from reading ON CONFLICT as a join.
        Some(holder) => sqlx::query(
            "INSERT INTO checkpoints (job, scope, position, run_id, updated_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM job_leases WHERE job = $1 AND holder = $6) \
             ON CONFLICT (job, scope) DO UPDATE SET position = excluded.position, run_id = excluded.run_id, updated_at = excluded.updated_at",
        )
        .bind(job.as_ref())
        .bind(scope.as_ref())
        .bind(text)
        .bind(run_id)
        .bind(now)
        .bind(storable(holder).as_ref())
        .execute(&mut **tx)
        .await,
    }
    .map_err(q("writing the checkpoint", "checkpoints"))?;
    Ok(written.rows_affected() != 0)
}

impl StateStore {
    pub async fn checkpoint(
        &self,
        job: &str,
        scope: &Scope,
    ) -> Result<Option<Checkpoint>, StateError> {
        let row = sqlx::query("SELECT position FROM checkpoints WHERE job = $1 AND scope = $2")
            .bind(storable(job).as_ref())
            .bind(storable(scope.as_str()).as_ref())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the checkpoint", "checkpoints"))?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row
            .try_get(0)
            .map_err(q("reading the checkpoint", "checkpoints"))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::BadCheckpoint {
                job: job.to_string(),
                message: e.to_string(),
            })
    }

    pub async fn reset_checkpoint(&self, job: &str, scope: &Scope) -> Result<(), StateError> {
        sqlx::query("DELETE FROM checkpoints WHERE job = $1 AND scope = $2")
            .bind(storable(job).as_ref())
            .bind(storable(scope.as_str()).as_ref())
            .execute(&self.pool)
            .await
            .map_err(q("resetting the checkpoint", "checkpoints"))?;
        Ok(())
    }

    /// Every checkpoint of every job and scope, for `status`.
    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, StateError> {
        let rows = sqlx::query(
            "SELECT job, scope, position, run_id, updated_at FROM checkpoints ORDER BY job, scope",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing checkpoints", "checkpoints"))?;
        rows.iter()
            .map(|r| {
                let pos: String = r.try_get(2)?;
                Ok(CheckpointRecord {
                    job: r.try_get(0)?,
                    scope: r.try_get(1)?,
                    // Kept on purpose: `status` shows a checkpoint that does not parse as
                    // its text instead of failing; `checkpoint()` (used by runs) refuses it.
                    position: serde_json::from_str(&pos).unwrap_or(serde_json::Value::String(pos)),
                    run_id: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading checkpoints", "checkpoints"))
    }
}
