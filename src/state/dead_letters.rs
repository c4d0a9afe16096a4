//! The `dead_letters` table: rows that will not be delivered, and why.
//!
//! Owns: recording dead letters (one multi-row statement per chunk, inside a commit),
//! removing the ones a retry delivered, listing, counting and deleting them.
//! Must not: decide what is dead-lettered (the pipeline does) or touch other tables.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::{Backend, StateError, StateStore, q, storable};

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
    /// The row's identity key (`id:42`, `event:<id>`), when it could be read: then it is
    /// also the `row_ref`, so a re-read row replaces its dead letter.
    pub identity: Option<String>,
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
    pub identity: Option<String>,
    pub run_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Bound parameters per dead letter, and per statement besides them (`run_id`, `now`).
const BINDS_PER_ROW: usize = 8;
const SHARED_BINDS: usize = 2;

/// The most bound parameters one statement may carry: SQLite's default
/// `SQLITE_MAX_VARIABLE_NUMBER` (32766) and PostgreSQL's protocol limit (65535).
fn max_binds(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 32_766,
        Backend::Postgres => 65_535,
    }
}

/// Rows per multi-row insert, under the backend's bind-parameter limit.
pub(super) fn rows_per_statement(backend: Backend) -> usize {
    (max_binds(backend) - SHARED_BINDS) / BINDS_PER_ROW
}

/// `INSERT … VALUES (…), (…) ON CONFLICT …` for `rows` dead letters; `$1` is the run id and
/// `$2` the time, shared by every row.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO dead_letters (job, source, row_ref, line, row_data, reason, stage, identity, run_id, created_at, updated_at) VALUES ",
    );
    for i in 0..rows {
        let b = SHARED_BINDS + i * BINDS_PER_ROW;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for k in 1..=BINDS_PER_ROW {
            sql.push_str(&format!("${}, ", b + k));
        }
        sql.push_str("$1, $2, $2)");
    }
    sql.push_str(
        " ON CONFLICT (job, row_ref) DO UPDATE SET source = excluded.source, line = excluded.line, \
         row_data = excluded.row_data, reason = excluded.reason, stage = excluded.stage, identity = excluded.identity, \
         run_id = excluded.run_id, updated_at = excluded.updated_at",
    );
    sql
}

/// Records dead letters inside a commit, a row dead-lettered again (a replay after a crash)
/// updating its earlier record. A row given twice keeps its last record, as if written one
/// after the other (one statement may not update the same row twice).
pub(super) async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    run_id: &str,
    now: i64,
    dead: &[DeadLetter],
) -> Result<(), StateError> {
    if dead.is_empty() {
        return Ok(());
    }
    let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(dead.len());
    for (i, d) in dead.iter().enumerate() {
        last.insert((d.job.as_str(), d.row_ref.as_str()), i);
    }
    let unique: Vec<&DeadLetter> = dead
        .iter()
        .enumerate()
        .filter(|(i, d)| last.get(&(d.job.as_str(), d.row_ref.as_str())) == Some(i))
        .map(|(_, d)| d)
        .collect();
    for chunk in unique.chunks(rows_per_statement(backend)) {
        let sql = insert_sql(chunk.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(storable(run_id).into_owned())
            .bind(now);
        for d in chunk {
            query = query
                .bind(storable(&d.job).into_owned())
                .bind(storable(&d.source).into_owned())
                .bind(storable(&d.row_ref).into_owned())
                .bind(d.line)
                .bind(storable(&d.row_data).into_owned())
                .bind(storable(&d.reason).into_owned())
                .bind(storable(d.stage).into_owned())
                .bind(d.identity.as_deref().map(|i| storable(i).into_owned()));
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(q("recording dead letters", "dead_letters"))?;
    }
    Ok(())
}

/// Removes, inside a commit, the dead letters a retry delivered.
pub(super) async fn resolve(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    job: &str,
    resolved: &[String],
) -> Result<(), StateError> {
    let job = storable(job);
    for row_ref in resolved {
        sqlx::query("DELETE FROM dead_letters WHERE job = $1 AND row_ref = $2")
            .bind(job.as_ref())
            .bind(storable(row_ref).as_ref())
            .execute(&mut **tx)
            .await
            .map_err(q("removing a delivered dead letter", "dead_letters"))?;
    }
    Ok(())
}

impl StateStore {
    pub async fn dead_letters(
        &self,
        job: &str,
        limit: i64,
    ) -> Result<Vec<StoredDeadLetter>, StateError> {
        let rows = sqlx::query(
            "SELECT id, job, source, row_ref, line, row_data, reason, stage, run_id, created_at, updated_at, identity \
             FROM dead_letters WHERE job = $1 ORDER BY id LIMIT $2",
        )
        .bind(storable(job).as_ref())
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
                    // Kept on purpose: row data is JSON by construction, but a record that
                    // does not parse is still shown (as its text) rather than hiding the
                    // whole list.
                    row_data: serde_json::from_str(&data)
                        .unwrap_or(serde_json::Value::String(data)),
                    reason: r.try_get(6)?,
                    stage: r.try_get(7)?,
                    run_id: r.try_get(8)?,
                    created_at: r.try_get(9)?,
                    updated_at: r.try_get(10)?,
                    identity: r.try_get(11)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(q("reading dead letters", "dead_letters"))
    }

    /// The `row_ref`s of the job's dead letters keyed by identity: a run that delivers (or
    /// finds unchanged) one of these rows removes its dead letter.
    pub async fn dead_letter_identities(
        &self,
        job: &str,
    ) -> Result<std::collections::HashSet<String>, StateError> {
        let rows =
            sqlx::query("SELECT row_ref FROM dead_letters WHERE job = $1 AND identity IS NOT NULL")
                .bind(storable(job).as_ref())
                .fetch_all(&self.pool)
                .await
                .map_err(q("listing dead letters", "dead_letters"))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(q("reading dead letters", "dead_letters"))
    }

    pub async fn count_dead_letters(&self, job: &str) -> Result<i64, StateError> {
        let row = sqlx::query("SELECT COUNT(*) FROM dead_letters WHERE job = $1")
            .bind(storable(job).as_ref())
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
        let job = storable(job);
        match ids {
            None => sqlx::query("DELETE FROM dead_letters WHERE job = $1")
                .bind(job.as_ref())
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
                            .bind(job.as_ref())
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
}
