//! The state database: run history, checkpoints, dead letters and job leases.
//!
//! Owns: connecting (SQLite embedded by default, created on first use; PostgreSQL for
//! production and replicas), running the migrations, and every query on those tables. A
//! checkpoint is written in the same transaction as the run's counters and the dead letters
//! it passes, so they can never disagree after a crash.
//! Must not: make HTTP calls or decide when a row is settled (the pipeline does); this module
//! only records what it is told. `From<sqlx::Error>` conversions live here and nowhere else.

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::config::DatabaseUrl;
use crate::source::Checkpoint;

pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state database {url}: {message}; check `state.url` in config.yaml")]
    Open { url: String, message: String },
    #[error("cannot create the folder {path} for the SQLite state database: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("migrating the state database {url} failed: {message}")]
    Migrate { url: String, message: String },
    #[error("state database: {what} ({table}) failed: {message}")]
    Query {
        what: &'static str,
        table: &'static str,
        message: String,
    },
    #[error(
        "state database: the stored checkpoint of job `{job}` cannot be read ({message}); reset it with `cio-sync run {job} --full`"
    )]
    BadCheckpoint { job: String, message: String },
    #[error(
        "job `{job}`: this process no longer holds the job's lease (another replica took it over after the lease expired), so its checkpoint was not written; the other replica carries on from the last checkpoint"
    )]
    LeaseLost { job: String },
}

fn q(what: &'static str, table: &'static str) -> impl FnOnce(sqlx::Error) -> StateError {
    move |e| StateError::Query {
        what,
        table,
        message: e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Versions that were state migrations once and moved to a migrator of their own: the pulled
/// tables (`pull::store`). A database made before still lists them as applied, and sqlx
/// refuses an applied version it does not know unless told to ignore missing ones, so exactly
/// these are ignored; any other unknown version is still refused.
const MOVED_OUT_VERSIONS: &[i64] = &[20261127000002];

/// Connects to the state database and brings its schema up to date.
pub async fn connect(
    url: &DatabaseUrl,
    max_connections: u32,
) -> Result<(AnyPool, Backend), StateError> {
    let (pool, backend) = open_pool(url, max_connections).await?;
    migrate(&pool, backend)
        .await
        .map_err(|e| StateError::Migrate {
            url: url.masked(),
            message: e.to_string(),
        })?;
    Ok((pool, backend))
}

/// The state migrations, ignoring only [`MOVED_OUT_VERSIONS`] when the database lists them.
async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::migrate::MigrateError> {
    let migrator = match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    };
    // No history table yet (a new database) reads as nothing applied; a database that cannot
    // be read at all fails in the migrator's own run below, with its error.
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let mut moved_out = false;
    for v in applied.iter().filter(|v| !migrator.version_exists(**v)) {
        if !MOVED_OUT_VERSIONS.contains(v) {
            // What sqlx would say, but naming this version rather than the first missing one.
            return Err(sqlx::migrate::MigrateError::VersionMissing(*v));
        }
        moved_out = true;
    }
    if moved_out {
        let mut tolerant =
            sqlx::migrate::Migrator::with_migrations(migrator.iter().cloned().collect());
        tolerant.set_ignore_missing(true);
        return tolerant.run(pool).await;
    }
    migrator.run(pool).await
}

/// Opens a pool on a database cio-sync keeps tables in (state, or a pull job's target),
/// creating a SQLite file and its folder when missing; migrates nothing.
pub async fn open_pool(
    url: &DatabaseUrl,
    max_connections: u32,
) -> Result<(AnyPool, Backend), StateError> {
    sqlx::any::install_default_drivers();
    let shown = url.masked();
    let (backend, conn_url) = match url.scheme().as_str() {
        "sqlite" => {
            let path = url
                .expose()
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap_or_default();
            if !path.is_empty()
                && path != ":memory:"
                && let Some(dir) = Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let sep = if url.expose().contains('?') { '&' } else { '?' };
            let u = if url.expose().contains("mode=") {
                url.expose().to_string()
            } else {
                format!("{}{sep}mode=rwc", url.expose())
            };
            (Backend::Sqlite, u)
        }
        "postgres" | "postgresql" => (Backend::Postgres, url.expose().to_string()),
        other => {
            return Err(StateError::Open {
                url: shown,
                message: format!("unsupported scheme `{other}` (use sqlite:// or postgres://)"),
            });
        }
    };
    let mut opts = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite {
            1
        } else {
            max_connections
        })
        .acquire_timeout(std::time::Duration::from_secs(30));
    if backend == Backend::Sqlite {
        opts = opts.after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                Ok(())
            })
        });
    }
    let pool = opts
        .connect(&conn_url)
        .await
        .map_err(|e| StateError::Open {
            url: shown.clone(),
            message: e.to_string(),
        })?;
    Ok((pool, backend))
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Clone)]
pub struct StateStore {
    pool: AnyPool,
    backend: Backend,
    url: DatabaseUrl,
    /// The lease holder this process runs jobs as: checkpoints are written only while the
    /// job's lease is still this holder's, so a replica that lost its lease (a long database
    /// outage, a paused VM) can never move a checkpoint another replica now owns.
    fence: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("url", &self.url)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    /// Every row delivered.
    Succeeded,
    /// Finished; some rows were dead-lettered.
    RejectedRows,
    Failed,
    /// Stopped by a signal; the checkpoint holds what was settled.
    Interrupted,
    /// Found still "running" by a later run: the process died (killed, power loss).
    Aborted,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::RejectedRows => "rejected_rows",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Aborted => "aborted",
        }
    }
}

/// A row that will not be delivered, and why.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub job: String,
    pub source: String,
    pub row_ref: String,
    pub line: Option<i64>,
    /// JSON object column → value (or `{"raw": "…"}` for unreadable records).
    pub row_data: String,
    pub reason: String,
    /// `source` (unreadable), `mapping` (failed a rule or limit), `customerio` (refused).
    pub stage: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub job: String,
    pub source: String,
    pub row_ref: String,
    pub line: Option<i64>,
    pub row_data: serde_json::Value,
    pub reason: String,
    pub stage: String,
    pub run_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Counters of a run as of a commit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RunCounts {
    pub rows_read: u64,
    pub rows_delivered: u64,
    pub rows_rejected: u64,
    pub requests: u64,
    pub retries: u64,
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

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    pub job: String,
    pub position: serde_json::Value,
    pub run_id: String,
    pub updated_at: i64,
}

impl StateStore {
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StateError> {
        let (pool, backend) = connect(url, 8).await?;
        Ok(Self {
            pool,
            backend,
            url: url.clone(),
            fence: None,
        })
    }

    /// This store, writing checkpoints only while `holder` holds the job's lease.
    pub fn fenced_by(mut self, holder: &str) -> Self {
        self.fence = Some(holder.into());
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Records a new run; any earlier run of the job still marked running died with its
    /// process and is marked aborted.
    pub async fn start_run(&self, job: &str, kind: &str) -> Result<String, StateError> {
        let id = ulid::Ulid::generate().to_string();
        let now = now_ms();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("starting a run", "runs"))?;
        sqlx::query("UPDATE runs SET outcome = 'aborted', finished_at = $1, error = 'the process stopped before the run finished (killed or crashed); the next run resumed from its checkpoint' WHERE job = $2 AND outcome = 'running'")
            .bind(now)
            .bind(job)
            .execute(&mut *tx)
            .await
            .map_err(q("marking dead runs", "runs"))?;
        sqlx::query("INSERT INTO runs (id, job, kind, started_at, outcome) VALUES ($1, $2, $3, $4, 'running')")
            .bind(&id)
            .bind(job)
            .bind(kind)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(q("starting a run", "runs"))?;
        tx.commit().await.map_err(q("starting a run", "runs"))?;
        Ok(id)
    }

    pub async fn checkpoint(&self, job: &str) -> Result<Option<Checkpoint>, StateError> {
        let row = sqlx::query("SELECT position FROM checkpoints WHERE job = $1")
            .bind(job)
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

    pub async fn reset_checkpoint(&self, job: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM checkpoints WHERE job = $1")
            .bind(job)
            .execute(&self.pool)
            .await
            .map_err(q("resetting the checkpoint", "checkpoints"))?;
        Ok(())
    }

    /// One atomic step of a run: the dead letters it settled, its counters and (when it
    /// advanced) its checkpoint.
    pub async fn commit(
        &self,
        job: &str,
        run_id: &str,
        checkpoint: Option<&Checkpoint>,
        dead: &[DeadLetter],
        resolved: &[String],
        counts: RunCounts,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("committing progress", "runs"))?;
        // Dead letters that a retry delivered leave the table.
        for row_ref in resolved {
            sqlx::query("DELETE FROM dead_letters WHERE job = $1 AND row_ref = $2")
                .bind(job)
                .bind(row_ref)
                .execute(&mut *tx)
                .await
                .map_err(q("removing a delivered dead letter", "dead_letters"))?;
        }
        for d in dead {
            sqlx::query(
                "INSERT INTO dead_letters (job, source, row_ref, line, row_data, reason, stage, run_id, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                 ON CONFLICT (job, row_ref) DO UPDATE SET source = excluded.source, line = excluded.line, \
                 row_data = excluded.row_data, reason = excluded.reason, stage = excluded.stage, \
                 run_id = excluded.run_id, updated_at = excluded.updated_at",
            )
            .bind(&d.job)
            .bind(&d.source)
            .bind(&d.row_ref)
            .bind(d.line)
            .bind(&d.row_data)
            .bind(&d.reason)
            .bind(d.stage)
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(q("recording a dead letter", "dead_letters"))?;
        }
        update_counts(&mut tx, run_id, counts).await?;
        if let Some(cp) = checkpoint {
            let text = serde_json::to_string(cp).unwrap_or_default();
            let written = match &self.fence {
                None => sqlx::query(
                    "INSERT INTO checkpoints (job, position, run_id, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (job) DO UPDATE SET position = excluded.position, run_id = excluded.run_id, updated_at = excluded.updated_at",
                )
                .bind(job)
                .bind(text)
                .bind(run_id)
                .bind(now)
                .execute(&mut *tx)
                .await,
                // The WHERE also keeps SQLite's parser from reading ON CONFLICT as a join.
                Some(holder) => sqlx::query(
                    "INSERT INTO checkpoints (job, position, run_id, updated_at) \
                     SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM job_leases WHERE job = $1 AND holder = $5) \
                     ON CONFLICT (job) DO UPDATE SET position = excluded.position, run_id = excluded.run_id, updated_at = excluded.updated_at",
                )
                .bind(job)
                .bind(text)
                .bind(run_id)
                .bind(now)
                .bind(holder.as_ref())
                .execute(&mut *tx)
                .await,
            }
            .map_err(q("writing the checkpoint", "checkpoints"))?;
            if written.rows_affected() == 0 {
                // Nothing of this step is kept: the new lease holder re-reads these rows.
                return Err(StateError::LeaseLost {
                    job: job.to_string(),
                });
            }
        }
        tx.commit()
            .await
            .map_err(q("committing progress", "runs"))?;
        Ok(())
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
            .bind(error)
            .bind(now_ms())
            .bind(summary.map(|s| s.to_string()))
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
            "SELECT id, job, kind, started_at, finished_at, outcome, error, rows_read, rows_delivered, rows_rejected, requests, retries, summary \
             FROM runs WHERE job = $1 OR $2 ORDER BY started_at DESC, id DESC LIMIT $3",
        )
        .bind(job.unwrap_or(""))
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

    pub async fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, StateError> {
        let rows =
            sqlx::query("SELECT job, position, run_id, updated_at FROM checkpoints ORDER BY job")
                .fetch_all(&self.pool)
                .await
                .map_err(q("listing checkpoints", "checkpoints"))?;
        rows.iter()
            .map(|r| {
                let pos: String = r.try_get(1)?;
                Ok(CheckpointRecord {
                    job: r.try_get(0)?,
                    position: serde_json::from_str(&pos).unwrap_or(serde_json::Value::String(pos)),
                    run_id: r.try_get(2)?,
                    updated_at: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading checkpoints", "checkpoints"))
    }

    pub async fn dead_letters(
        &self,
        job: &str,
        limit: i64,
    ) -> Result<Vec<StoredDeadLetter>, StateError> {
        let rows = sqlx::query(
            "SELECT id, job, source, row_ref, line, row_data, reason, stage, run_id, created_at, updated_at \
             FROM dead_letters WHERE job = $1 ORDER BY id LIMIT $2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing dead letters", "dead_letters"))?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get(5)?;
                Ok(StoredDeadLetter {
                    id: r.try_get(0)?,
                    job: r.try_get(1)?,
                    source: r.try_get(2)?,
                    row_ref: r.try_get(3)?,
                    line: r.try_get(4)?,
                    row_data: serde_json::from_str(&data)
                        .unwrap_or(serde_json::Value::String(data)),
                    reason: r.try_get(6)?,
                    stage: r.try_get(7)?,
                    run_id: r.try_get(8)?,
                    created_at: r.try_get(9)?,
                    updated_at: r.try_get(10)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading dead letters", "dead_letters"))
    }

    pub async fn count_dead_letters(&self, job: &str) -> Result<i64, StateError> {
        let row = sqlx::query("SELECT COUNT(*) FROM dead_letters WHERE job = $1")
            .bind(job)
            .fetch_one(&self.pool)
            .await
            .map_err(q("counting dead letters", "dead_letters"))?;
        row.try_get(0)
            .map_err(q("counting dead letters", "dead_letters"))
    }

    /// Deletes dead letters of a job: all of them, or those with the given ids.
    pub async fn delete_dead_letters(
        &self,
        job: &str,
        ids: Option<&[i64]>,
    ) -> Result<u64, StateError> {
        match ids {
            None => sqlx::query("DELETE FROM dead_letters WHERE job = $1")
                .bind(job)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(q("purging dead letters", "dead_letters")),
            Some(ids) => {
                let mut n = 0;
                for chunk in ids.chunks(500) {
                    let mut tx = self
                        .pool
                        .begin()
                        .await
                        .map_err(q("deleting dead letters", "dead_letters"))?;
                    for id in chunk {
                        n += sqlx::query("DELETE FROM dead_letters WHERE job = $1 AND id = $2")
                            .bind(job)
                            .bind(*id)
                            .execute(&mut *tx)
                            .await
                            .map_err(q("deleting dead letters", "dead_letters"))?
                            .rows_affected();
                    }
                    tx.commit()
                        .await
                        .map_err(q("deleting dead letters", "dead_letters"))?;
                }
                Ok(n)
            }
        }
    }

    /// Takes (or renews) the job's lease so that replicas sharing this database never run
    /// the same job at once. Returns false when another holder's lease is still valid.
    pub async fn try_lease(
        &self,
        job: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, StateError> {
        let now = now_ms();
        let res = sqlx::query(
            "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE job_leases.holder = excluded.holder OR job_leases.expires_at < $4",
        )
        .bind(job)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("taking the job lease", "job_leases"))?;
        Ok(res.rows_affected() == 1)
    }

    /// The current holder of a job's lease, if any.
    pub async fn lease_holder(&self, job: &str) -> Result<Option<String>, StateError> {
        let row = sqlx::query("SELECT holder FROM job_leases WHERE job = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the job lease", "job_leases"))?;
        row.map(|r| r.try_get(0))
            .transpose()
            .map_err(q("reading the job lease", "job_leases"))
    }

    /// Takes over a lease from `old` (a holder known to be dead); false if it changed hands.
    pub async fn steal_lease(
        &self,
        job: &str,
        old: &str,
        new: &str,
        ttl_ms: i64,
    ) -> Result<bool, StateError> {
        let res = sqlx::query(
            "UPDATE job_leases SET holder = $1, expires_at = $2 WHERE job = $3 AND holder = $4",
        )
        .bind(new)
        .bind(now_ms() + ttl_ms)
        .bind(job)
        .bind(old)
        .execute(&self.pool)
        .await
        .map_err(q("taking over the job lease", "job_leases"))?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn release_lease(&self, job: &str, holder: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2")
            .bind(job)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(q("releasing the job lease", "job_leases"))?;
        Ok(())
    }
}

async fn update_counts(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run_id: &str,
    c: RunCounts,
) -> Result<(), StateError> {
    sqlx::query("UPDATE runs SET rows_read = $1, rows_delivered = $2, rows_rejected = $3, requests = $4, retries = $5 WHERE id = $6")
        .bind(c.rows_read as i64)
        .bind(c.rows_delivered as i64)
        .bind(c.rows_rejected as i64)
        .bind(c.requests as i64)
        .bind(c.retries as i64)
        .bind(run_id)
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
        },
        summary: summary.and_then(|s| serde_json::Value::from_str(&s).ok()),
    })
}

#[cfg(test)]
mod tests;
