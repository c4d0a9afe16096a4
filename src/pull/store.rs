//! The pulled tables: every query a pull job runs on its target database.
//!
//! Owns: upserting segments and campaigns by id and marking the ones a listing no longer
//! returns as deleted (in the same transaction), staging membership pages by run id, swapping a
//! segment's membership in one transaction, upserting metric points, and cleaning staging rows.
//! Every statement is static SQL with `$n` placeholders; all but staging (which uses each
//! backend's JSON functions) are the same text on SQLite and PostgreSQL.
//! It also owns the pulled tables' migrator: their own migrations
//! (`migrations/pulled/{sqlite,postgres}`) with their own history table, so a `pull.into`
//! database gets only the `cio_*` tables, never the state tables.
//! Text from Customer.io is made storable here: NUL is escaped (see [`storable`]).
//! Must not: make HTTP calls or decide what to pull (`pull/mod.rs` does).

use std::borrow::Cow;

use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::app_api::{Campaign, Member, Segment};
use crate::config::DatabaseUrl;
use crate::state::{self, Backend, StateError};

static PULLED_SQLITE: Migrator = sqlx::migrate!("./migrations/pulled/sqlite");
static PULLED_POSTGRES: Migrator = sqlx::migrate!("./migrations/pulled/postgres");

/// Where the pulled tables' migrator records what it applied: a table of its own, so that it
/// and the state migrator (`_sqlx_migrations`) never see each other's versions as unknown when
/// both run on one database (the state database is the default pull target). Named `cio_*` like
/// the tables it versions, so a pull target holds only `cio_*` tables.
pub const PULLED_MIGRATIONS_TABLE: &str = "cio_sync_pulled_migrations";

/// The pulled tables' migrator for `backend`, recording into [`PULLED_MIGRATIONS_TABLE`].
pub fn pulled_migrator(backend: Backend) -> Migrator {
    let source = match backend {
        Backend::Sqlite => &PULLED_SQLITE,
        Backend::Postgres => &PULLED_POSTGRES,
    };
    let mut m = Migrator::with_migrations(source.iter().cloned().collect());
    m.dangerous_set_table_name(PULLED_MIGRATIONS_TABLE);
    m
}

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
    /// Opens `url` (a job's `pull.into`) and brings the pulled tables up to date; nothing else
    /// is created there.
    pub async fn open(url: &DatabaseUrl, max_connections: u32) -> Result<Self, StoreError> {
        let (pool, backend) =
            state::open_pool(url, max_connections)
                .await
                .map_err(|e| StoreError {
                    what: "opening the database",
                    table: "cio_*",
                    database: url.masked(),
                    message: match e {
                        StateError::Open { message, .. } => message,
                        other => other.to_string(),
                    },
                })?;
        let store = Self::new(pool, backend, url.masked());
        store.migrate().await?;
        Ok(store)
    }

    /// A store on an open pool (the state database's, when a job has no `pull.into`); call
    /// [`Store::migrate`] before writing.
    pub fn new(pool: AnyPool, backend: Backend, database: String) -> Self {
        Self {
            pool,
            backend,
            database,
        }
    }

    /// Creates or updates the pulled tables (idempotent; cheap when up to date).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        pulled_migrator(self.backend)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError {
                what: "migrating the pulled tables",
                table: PULLED_MIGRATIONS_TABLE,
                database: self.database.clone(),
                message: e.to_string(),
            })
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
            .bind(storable_opt(&s.name))
            .bind(storable_opt(&s.description))
            .bind(storable_opt(&s.segment_type))
            .bind(storable_opt(&s.state))
            .bind(json_text(&s.tags))
            .bind(s.created_at)
            .bind(s.updated_at)
            .bind(storable_json(&s.raw))
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
            .bind(storable_opt(&c.deduplicate_id))
            .bind(storable_opt(&c.name))
            .bind(storable_opt(&c.description))
            .bind(storable_opt(&c.campaign_type))
            .bind(storable_opt(&c.state))
            .bind(c.active)
            .bind(json_text(&c.tags))
            .bind(c.created_at)
            .bind(c.updated_at)
            .bind(c.first_started_at)
            .bind(storable_json(&c.raw))
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
        // Escaped before they go into the JSON page: PostgreSQL's `->>` refuses to turn a
        // `\u0000` escape back into text.
        let rows: Vec<[Option<String>; 3]> = members
            .iter()
            .map(|m| {
                [
                    storable_opt(&m.id),
                    storable_opt(&m.email),
                    storable_opt(&m.cio_id),
                ]
            })
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
            .bind(storable(metric).into_owned())
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

/// Text from Customer.io made storable. PostgreSQL `text` and `jsonb` cannot hold NUL (an
/// insert fails, and with it the whole pull, on every run), and SQLite's text functions stop at
/// it. So each NUL becomes the six characters `\u0000`, which is how JSON writes it: the text
/// still says what Customer.io sent. Text without NUL is passed through untouched.
pub fn storable(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(s)
    }
}

/// [`storable`] for an optional column, owned as the database driver binds it.
fn storable_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(|s| storable(s).into_owned())
}

/// A JSON value as text with [`storable`] applied to every string and key, so the column
/// also casts to `jsonb` (which refuses the escape `\u0000`).
pub fn storable_json(v: &Value) -> String {
    fn clean(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(storable(s).into_owned()),
            Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (storable(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    let text = v.to_string();
    // serde_json writes NUL as `\u0000` and nothing else produces that text except an escaped
    // backslash before `u0000`, for which cleaning is a harmless no-op.
    if text.contains("\\u0000") {
        clean(v).to_string()
    } else {
        text
    }
}

fn json_text(tags: &[String]) -> String {
    let tags: Vec<Cow<'_, str>> = tags.iter().map(|t| storable(t)).collect();
    serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_pulled_migrations_have_the_same_versions_on_both_backends() {
        let versions = |b| {
            pulled_migrator(b)
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>()
        };
        assert!(!versions(Backend::Sqlite).is_empty());
        assert_eq!(versions(Backend::Sqlite), versions(Backend::Postgres));
    }

    #[test]
    fn nul_is_escaped_everywhere_and_other_text_is_untouched() {
        assert_eq!(storable("plain"), Cow::Borrowed("plain"));
        assert_eq!(storable("a\0b\0"), "a\\u0000b\\u0000");
        let raw = json!({"name": "x\0y", "k\0": ["\0", 1, {"deep": "\0"}], "back": "\\u0000"});
        let text = storable_json(&raw);
        assert!(!text.contains('\0'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["name"], "x\\u0000y");
        assert_eq!(back["k\\u0000"][0], "\\u0000");
        assert_eq!(back["k\\u0000"][2]["deep"], "\\u0000");
        assert_eq!(
            back["back"], "\\u0000",
            "a literal backslash-u0000 stays as it was"
        );
        assert_eq!(storable_json(&json!({"a": "b"})), r#"{"a":"b"}"#);
        assert_eq!(json_text(&["t\0".into()]), r#"["t\\u0000"]"#);
    }
}
