//! The pulled tables: every query a pull job runs on its target database.
//!
//! Owns: upserting segments and campaigns by id and marking the ones a listing no longer
//! returns as deleted (in the same transaction), staging membership pages by run id, swapping a
//! segment's membership in one transaction, upserting metric points, and cleaning staging rows.
//! Every statement is static SQL with `$n` placeholders; all but staging (which uses each
//! backend's JSON functions) are the same text on SQLite and PostgreSQL.
//! Must not: make HTTP calls or decide what to pull (`pull/mod.rs` does); the schema itself is
//! in `migrations/{sqlite,postgres}/20261127000002_pulled.sql`.

use sqlx::{Any, AnyPool, Row, Transaction};

use crate::app_api::{Campaign, Member, Segment};
use crate::state::Backend;

/// A query on a pulled table failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} ({table}) in {database} failed: {message}; check that the database is reachable and writable (`pull.into` in the job, or `state.url` in config.yaml)"
)]
pub struct StoreError {
    pub what: &'static str,
    pub table: &'static str,
    /// The database URL with its password masked.
    pub database: String,
    pub message: String,
}

/// The database a pull writes to: its own `pull.into`, or the state database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Masked URL, for errors.
    database: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.database)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Stages one page in one statement: the page goes over as one JSON array of
/// `[id, email, cio_id]` and the database unpacks it (far fewer round trips and parameters than
/// a row per placeholder group). Static SQL, one per backend for their JSON functions.
const STAGE_SQLITE: &str = "INSERT INTO cio_segment_members_staging (run_id, job, segment_id, seq, customer_id, email, cio_id) \
     SELECT $1, $2, $3, $4 + key, json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') \
     FROM json_each($5)";
const STAGE_POSTGRES: &str = "INSERT INTO cio_segment_members_staging (run_id, job, segment_id, seq, customer_id, email, cio_id) \
     SELECT $1, $2, $3, $4 + t.ord - 1, t.m->>0, t.m->>1, t.m->>2 \
     FROM json_array_elements(CAST($5 AS json)) WITH ORDINALITY AS t(m, ord)";

impl Store {
    pub fn new(pool: AnyPool, backend: Backend, database: String) -> Self {
        Self {
            pool,
            backend,
            database,
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn err(
        &self,
        what: &'static str,
        table: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
        move |e| StoreError {
            what,
            table,
            database: self.database.clone(),
            message: e.to_string(),
        }
    }

    async fn begin(
        &self,
        what: &'static str,
        table: &'static str,
    ) -> Result<Transaction<'static, Any>, StoreError> {
        self.pool.begin().await.map_err(self.err(what, table))
    }

    /// Writes every segment of a listing and marks the ones it lacks as deleted, in one
    /// transaction. Returns how many were newly marked deleted.
    pub async fn replace_segments(
        &self,
        run_id: &str,
        segments: &[Segment],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        const T: &str = "cio_segments";
        let mut tx = self.begin("writing segments", T).await?;
        for s in segments {
            sqlx::query(
                "INSERT INTO cio_segments (id, name, description, type, state, tags, created_at, updated_at, raw, deleted_at, pulled_run_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
                 type = excluded.type, state = excluded.state, tags = excluded.tags, created_at = excluded.created_at, \
                 updated_at = excluded.updated_at, raw = excluded.raw, deleted_at = NULL, pulled_run_id = excluded.pulled_run_id",
            )
            .bind(s.id)
            .bind(&s.name)
            .bind(&s.description)
            .bind(&s.segment_type)
            .bind(&s.state)
            .bind(json_text(&s.tags))
            .bind(s.created_at)
            .bind(s.updated_at)
            .bind(s.raw.to_string())
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err("writing a segment", T))?;
        }
        let gone = sqlx::query("UPDATE cio_segments SET deleted_at = $1 WHERE deleted_at IS NULL AND pulled_run_id <> $2")
            .bind(now_ms)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err("marking deleted segments", T))?
            .rows_affected();
        tx.commit().await.map_err(self.err("writing segments", T))?;
        Ok(gone)
    }

    /// Writes every campaign of a listing and marks the ones it lacks as deleted, in one
    /// transaction. Returns how many were newly marked deleted.
    pub async fn replace_campaigns(
        &self,
        run_id: &str,
        campaigns: &[Campaign],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        const T: &str = "cio_campaigns";
        let mut tx = self.begin("writing campaigns", T).await?;
        for c in campaigns {
            sqlx::query(
                "INSERT INTO cio_campaigns (id, deduplicate_id, name, description, type, state, active, tags, created_at, updated_at, \
                 first_started_at, raw, deleted_at, pulled_run_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, $13) \
                 ON CONFLICT (id) DO UPDATE SET deduplicate_id = excluded.deduplicate_id, name = excluded.name, \
                 description = excluded.description, type = excluded.type, state = excluded.state, active = excluded.active, \
                 tags = excluded.tags, created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 first_started_at = excluded.first_started_at, raw = excluded.raw, deleted_at = NULL, \
                 pulled_run_id = excluded.pulled_run_id",
            )
            .bind(c.id)
            .bind(&c.deduplicate_id)
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.campaign_type)
            .bind(&c.state)
            .bind(c.active)
            .bind(json_text(&c.tags))
            .bind(c.created_at)
            .bind(c.updated_at)
            .bind(c.first_started_at)
            .bind(c.raw.to_string())
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err("writing a campaign", T))?;
        }
        let gone = sqlx::query("UPDATE cio_campaigns SET deleted_at = $1 WHERE deleted_at IS NULL AND pulled_run_id <> $2")
            .bind(now_ms)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err("marking deleted campaigns", T))?
            .rows_affected();
        tx.commit()
            .await
            .map_err(self.err("writing campaigns", T))?;
        Ok(gone)
    }

    /// Marks one segment deleted (its membership answered 404); false if it was not stored
    /// or already marked.
    pub async fn mark_segment_deleted(
        &self,
        segment_id: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE cio_segments SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(now_ms)
        .bind(segment_id)
        .execute(&self.pool)
        .await
        .map_err(self.err("marking a deleted segment", "cio_segments"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Staging rows a crashed earlier run of `job` left behind (the job lease guarantees no
    /// other run of it is active).
    pub async fn clear_job_staging(&self, job: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM cio_segment_members_staging WHERE job = $1")
                .bind(job)
                .execute(&self.pool)
                .await
                .map_err(self.err(
                    "removing stale staged members",
                    "cio_segment_members_staging",
                ))?
                .rows_affected(),
        )
    }

    /// This run's staging rows, after a failure or a stop.
    pub async fn clear_run_staging(&self, run_id: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM cio_segment_members_staging WHERE run_id = $1")
                .bind(run_id)
                .execute(&self.pool)
                .await
                .map_err(self.err("removing staged members", "cio_segment_members_staging"))?
                .rows_affected(),
        )
    }

    /// Stages one page of a segment's membership; `first_seq` is the page's position in the
    /// listing.
    pub async fn stage_members(
        &self,
        run_id: &str,
        job: &str,
        segment_id: i64,
        first_seq: i64,
        members: &[Member],
    ) -> Result<(), StoreError> {
        const T: &str = "cio_segment_members_staging";
        if members.is_empty() {
            return Ok(());
        }
        let rows: Vec<[Option<&str>; 3]> = members
            .iter()
            .map(|m| [m.id.as_deref(), m.email.as_deref(), m.cio_id.as_deref()])
            .collect();
        let page = serde_json::to_string(&rows).map_err(|e| StoreError {
            what: "staging members",
            table: T,
            database: self.database.clone(),
            message: e.to_string(),
        })?;
        let sql = match self.backend {
            Backend::Sqlite => STAGE_SQLITE,
            Backend::Postgres => STAGE_POSTGRES,
        };
        sqlx::query(sql)
            .bind(run_id)
            .bind(job)
            .bind(segment_id)
            .bind(first_seq)
            .bind(page)
            .execute(&self.pool)
            .await
            .map_err(self.err("staging members", T))?;
        Ok(())
    }

    /// Replaces a segment's membership with what this run staged for it, in one transaction,
    /// and drops those staging rows. Members without a `cio_id` cannot be keyed and are left
    /// out; a member listed twice is kept once. Returns the members now stored.
    pub async fn swap_membership(&self, run_id: &str, segment_id: i64) -> Result<u64, StoreError> {
        const T: &str = "cio_segment_members";
        let mut tx = self.begin("replacing a segment's membership", T).await?;
        sqlx::query("DELETE FROM cio_segment_members WHERE segment_id = $1")
            .bind(segment_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err("removing the previous membership", T))?;
        let stored = sqlx::query(
            "INSERT INTO cio_segment_members (segment_id, customer_id, email, cio_id, pulled_run_id) \
             SELECT segment_id, customer_id, email, cio_id, run_id FROM cio_segment_members_staging \
             WHERE run_id = $1 AND segment_id = $2 AND cio_id IS NOT NULL AND cio_id <> '' \
             ON CONFLICT (segment_id, cio_id) DO NOTHING",
        )
        .bind(run_id)
        .bind(segment_id)
        .execute(&mut *tx)
        .await
        .map_err(self.err("inserting the new membership", T))?
        .rows_affected();
        sqlx::query(
            "DELETE FROM cio_segment_members_staging WHERE run_id = $1 AND segment_id = $2",
        )
        .bind(run_id)
        .bind(segment_id)
        .execute(&mut *tx)
        .await
        .map_err(self.err("removing staged members", "cio_segment_members_staging"))?;
        tx.commit()
            .await
            .map_err(self.err("replacing a segment's membership", T))?;
        Ok(stored)
    }

    /// Segments that have membership rows.
    pub async fn segments_with_members(&self) -> Result<Vec<i64>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT segment_id FROM cio_segment_members ORDER BY segment_id")
                .fetch_all(&self.pool)
                .await
                .map_err(self.err("listing segments with members", "cio_segment_members"))?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(self.err("listing segments with members", "cio_segment_members"))
    }

    /// Removes a segment's membership (the segment no longer exists). Returns the rows removed.
    pub async fn delete_membership(&self, segment_id: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM cio_segment_members WHERE segment_id = $1")
                .bind(segment_id)
                .execute(&self.pool)
                .await
                .map_err(self.err(
                    "removing a deleted segment's membership",
                    "cio_segment_members",
                ))?
                .rows_affected(),
        )
    }

    /// Upserts one campaign's metric points `(metric, period_start, value)` in one transaction.
    pub async fn upsert_metrics(
        &self,
        run_id: &str,
        campaign_id: i64,
        period: &str,
        points: &[(String, i64, i64)],
    ) -> Result<(), StoreError> {
        const T: &str = "cio_campaign_metrics";
        let mut tx = self.begin("writing campaign metrics", T).await?;
        for (metric, start, value) in points {
            sqlx::query(
                "INSERT INTO cio_campaign_metrics (campaign_id, metric, period, period_start, value, pulled_run_id) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (campaign_id, metric, period, period_start) DO UPDATE SET value = excluded.value, \
                 pulled_run_id = excluded.pulled_run_id",
            )
            .bind(campaign_id)
            .bind(metric)
            .bind(period)
            .bind(*start)
            .bind(*value)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err("writing a campaign metric", T))?;
        }
        tx.commit()
            .await
            .map_err(self.err("writing campaign metrics", T))?;
        Ok(())
    }
}

fn json_text(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}
