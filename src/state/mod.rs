//! The state database: run history, checkpoints, dead letters and job leases.
//!
//! Owns: the error type, the store type and the one atomic step of a run ([`Commit`]): a
//! checkpoint is written in the same transaction as the run's counters and the dead letters
//! it passes, so they can never disagree after a crash. Connecting and migrating live in
//! `connect.rs`; each table's queries in its own file (`runs.rs`, `checkpoints.rs`,
//! `dead_letters.rs`, `leases.rs`, `replicas.rs`, `fingerprints.rs`). Every text that reaches a column passes [`storable`].
//! Must not: make HTTP calls or decide when a row is settled (the pipeline does); this module
//! only records what it is told. `From<sqlx::Error>` conversions live here and nowhere else.

use std::borrow::Cow;

use sqlx::AnyPool;

use crate::config::DatabaseUrl;
use crate::source::Checkpoint;

mod checkpoints;
mod connect;
mod dead_letters;
mod fingerprints;
pub mod leases;
mod replicas;
mod runs;

pub use checkpoints::{CheckpointRecord, Scope};
pub use connect::{
    DEFAULT_CONNECT_TIMEOUT, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, connect, connect_with,
    open_pool, open_pool_with,
};
pub use dead_letters::{DeadLetter, StoredDeadLetter};
pub use runs::{Outcome, RunCounts, RunRecord};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state database {url}: {message}; check `state.url` in config.yaml")]
    Open { url: String, message: String },
    /// A PostgreSQL server refused the connection or failed it; `cause` is the root cause
    /// (`127.0.0.1:5999: connection refused`).
    #[error(
        "cannot connect to the state database {url}: {cause}; check that the server runs and accepts connections from this machine, and `state.url` in config.yaml (host, port, user, password)"
    )]
    Connect {
        url: String,
        cause: String,
        #[source]
        source: sqlx::Error,
    },
    /// No answer within the connect timeout.
    #[error(
        "cannot connect to the state database {url}: {addr} did not answer within {secs}s; check that the server is reachable from this machine and `state.url` in config.yaml"
    )]
    Unreachable {
        url: String,
        addr: String,
        secs: u64,
    },
    /// The SQLite file cannot be opened or created.
    #[error(
        "cannot open the SQLite state database {path}: {message}; check that its folder exists and this user may write there (`state.url` in config.yaml)"
    )]
    OpenSqlite { path: String, message: String },
    #[error("cannot create the folder {path} for the SQLite state database: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot take the migration lock {path} beside the SQLite state database: {source}; check that this user may write in its folder"
    )]
    MigrateLock {
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
    /// An impossible case: a checkpoint that cannot be turned into JSON. Nothing of the step
    /// is written, and the run fails.
    #[error(
        "job `{job}`: internal error: its checkpoint cannot be encoded ({source}); nothing was written, the next run resumes from the last checkpoint; please report this"
    )]
    EncodeCheckpoint {
        job: String,
        #[source]
        source: serde_json::Error,
    },
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

/// Text from outside (Customer.io's reasons, row data, error messages, names) made storable
/// in every backend: PostgreSQL `text` cannot hold NUL, and an insert that fails on it would
/// fail the run and every later run with the same rows. NUL becomes U+FFFD, the Unicode
/// replacement character, which cannot be mistaken for a literal `\0` in the text; nothing
/// else changes.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// The innermost cause of a driver error, where the detail is (`connection refused`, `database
/// "x" does not exist`), without any URL.
fn root_cause(e: &sqlx::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// [`storable`] for an optional text.
fn storable_opt(text: Option<&str>) -> Option<String> {
    text.map(|t| storable(t).into_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
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

/// One atomic step of a run: the dead letters it settled, the dead letters a retry
/// delivered, its counters and (when it advanced) its checkpoint under `scope`.
#[derive(Debug, Clone)]
pub struct Commit<'a> {
    pub job: &'a str,
    pub run_id: &'a str,
    /// Which of the job's checkpoints `checkpoint` replaces.
    pub scope: &'a Scope,
    pub checkpoint: Option<&'a Checkpoint>,
    pub dead: &'a [DeadLetter],
    /// `row_ref`s of dead letters that were delivered now and leave the table.
    pub resolved: &'a [String],
    pub counts: RunCounts,
    /// Fingerprints of rows Customer.io acknowledged (identity key, fingerprint).
    pub fingerprints: &'a [(String, crate::change::Fingerprint)],
}

impl<'a> Commit<'a> {
    /// A step that only records counters, under the job's own scope; set the other fields
    /// with struct update syntax.
    pub fn new(job: &'a str, run_id: &'a str, counts: RunCounts) -> Self {
        Self {
            job,
            run_id,
            scope: &Scope::Job,
            checkpoint: None,
            dead: &[],
            resolved: &[],
            counts,
            fingerprints: &[],
        }
    }
}

impl StateStore {
    /// Opens the state database within the default connect timeout.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StateError> {
        Self::open_with(url, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// Opens the state database, waiting at most `connect_timeout` for the server.
    pub async fn open_with(
        url: &DatabaseUrl,
        connect_timeout: std::time::Duration,
    ) -> Result<Self, StateError> {
        let (pool, backend) = connect_with(url, 8, connect_timeout).await?;
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

    /// Whether the state database answers now and holds every migration (for `/readyz`).
    pub async fn check_ready(&self) -> Result<(), StateError> {
        connect::check_migrated(&self.pool, self.backend, &self.url.masked()).await
    }

    /// Writes one step of a run atomically (see [`Commit`]).
    pub async fn commit(&self, step: Commit<'_>) -> Result<(), StateError> {
        let now = now_ms();
        // Encoded before anything is written: an impossible encoding failure writes nothing.
        let checkpoint = step
            .checkpoint
            .map(|cp| checkpoints::encode(step.job, cp))
            .transpose()?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("committing progress", "runs"))?;
        dead_letters::resolve(&mut tx, step.job, step.resolved).await?;
        dead_letters::insert(&mut tx, self.backend, step.run_id, now, step.dead).await?;
        runs::update_counts(&mut tx, step.run_id, step.counts).await?;
        fingerprints::write(&mut tx, self.backend, step.job, step.fingerprints).await?;
        if let Some(text) = checkpoint {
            let written = checkpoints::write(
                &mut tx,
                step.job,
                step.scope,
                &text,
                step.run_id,
                now,
                self.fence.as_deref(),
            )
            .await?;
            if !written {
                // Nothing of this step is kept: the new lease holder re-reads these rows.
                return Err(StateError::LeaseLost {
                    job: step.job.to_string(),
                });
            }
        }
        tx.commit()
            .await
            .map_err(q("committing progress", "runs"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
