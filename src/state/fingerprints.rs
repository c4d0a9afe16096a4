//! The `fingerprints` table: per job and row identity, what Customer.io last acknowledged.
//!
//! Owns: looking fingerprints up for a chunk of identities (one `IN (…)` query per chunk, so
//! nothing is held for the whole table), writing them inside a commit (one multi-row upsert
//! per chunk), forgetting them (`run --full`, `checkpoint reset`: the identities stay known
//! to mirror mode), paging through a job's known identities (mirror mode) and removing the
//! ones a mirror phase removed from Customer.io.
//! Must not: decide what changed (`change/` does) or when a fingerprint is written (the
//! pipeline does, only for acknowledged rows).

use std::collections::HashMap;

use sqlx::Row;

use super::{Backend, StateError, StateStore, q, storable};
use crate::change::Fingerprint;

/// Identities per lookup or delete statement.
pub(super) const KEYS_PER_QUERY: usize = 1000;

/// Rows per upsert statement: one bound JSON array each, so only the statement's size
/// bounds it.
fn rows_per_statement(_backend: Backend) -> usize {
    5000
}

fn placeholders(from: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("${}", from + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes acknowledged fingerprints inside a commit. An identity given twice keeps its last.
pub(super) async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    job: &str,
    rows: &[(String, Fingerprint)],
) -> Result<(), StateError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, (k, _)) in rows.iter().enumerate() {
        last.insert(k.as_str(), i);
    }
    let unique: Vec<&(String, Fingerprint)> = rows
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| last.get(k.as_str()) == Some(i))
        .map(|(_, r)| r)
        .collect();
    let job = storable(job);
    // The rows travel as one JSON array of [identity, fingerprint, hex of the packed hashes]
    // that the database unpacks: binding thousands of parameters costs the SQLite driver
    // time quadratic in their number (a third of a run's CPU at 2000 rows per statement).
    let sql = match backend {
        Backend::Sqlite => {
            "INSERT INTO fingerprints (job, identity, fingerprint, attributes) \
             SELECT $1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             unhex(json_extract(value, '$[2]')) FROM json_each($2) WHERE true \
             ON CONFLICT (job, identity) DO UPDATE SET fingerprint = excluded.fingerprint, \
             attributes = excluded.attributes"
        }
        Backend::Postgres => {
            "INSERT INTO fingerprints (job, identity, fingerprint, attributes) \
             SELECT $1, e->>0, (e->>1)::bigint, decode(e->>2, 'hex') \
             FROM jsonb_array_elements($2::jsonb) AS e \
             ON CONFLICT (job, identity) DO UPDATE SET fingerprint = excluded.fingerprint, \
             attributes = excluded.attributes"
        }
    };
    for chunk in unique.chunks(rows_per_statement(backend)) {
        let list: Vec<(std::borrow::Cow<'_, str>, i64, String)> = chunk
            .iter()
            .map(|(k, fp)| (storable(k), fp.whole as i64, hex::encode(fp.pack())))
            .collect();
        let list = serde_json::to_string(&list).map_err(|e| StateError::Query {
            what: "encoding the fingerprints to record",
            table: "fingerprints",
            message: e.to_string(),
        })?;
        sqlx::query(sql)
            .bind(job.as_ref())
            .bind(list)
            .execute(&mut **tx)
            .await
            .map_err(q("recording fingerprints", "fingerprints"))?;
    }
    Ok(())
}

impl StateStore {
    /// The fingerprints stored for `keys` (absent keys are unknown identities).
    pub async fn fingerprints(
        &self,
        job: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, Fingerprint>, StateError> {
        let mut out = HashMap::with_capacity(keys.len());
        let job = storable(job);
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            // The keys travel as one JSON array, unpacked by the database: one statement
            // whatever the chunk's size (kept prepared), and the planner sees an array it
            // looks up through the primary key. 1001 bound parameters cost the driver far more
            // than the lookup (PostgreSQL, 200k identities: 80 µs per row that way).
            let sql = match self.backend {
                Backend::Sqlite => {
                    "SELECT identity, fingerprint, attributes FROM fingerprints \
                     WHERE job = $1 AND identity IN (SELECT value FROM json_each($2))"
                }
                Backend::Postgres => {
                    "SELECT identity, fingerprint, attributes FROM fingerprints \
                     WHERE job = $1 AND identity = ANY(ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))"
                }
            };
            let list: Vec<std::borrow::Cow<'_, str>> = chunk.iter().map(|k| storable(k)).collect();
            let list = serde_json::to_string(&list).map_err(|e| StateError::Query {
                what: "encoding the identities to look up",
                table: "fingerprints",
                message: e.to_string(),
            })?;
            let query = sqlx::query(sql).bind(job.as_ref()).bind(list);
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(q("looking up fingerprints", "fingerprints"))?;
            for r in rows {
                let key: String = r
                    .try_get(0)
                    .map_err(q("reading fingerprints", "fingerprints"))?;
                let whole: i64 = r
                    .try_get(1)
                    .map_err(q("reading fingerprints", "fingerprints"))?;
                let packed: Vec<u8> = r
                    .try_get(2)
                    .map_err(q("reading fingerprints", "fingerprints"))?;
                out.insert(key, Fingerprint::unpack(whole as u64, &packed));
            }
        }
        Ok(out)
    }

    /// Forgets a job's fingerprints: every row is sent again, but the identities stay known
    /// (mirror mode still knows whom it synced).
    pub async fn forget_fingerprints(&self, job: &str) -> Result<u64, StateError> {
        sqlx::query("UPDATE fingerprints SET fingerprint = 0, attributes = $2 WHERE job = $1")
            .bind(storable(job).as_ref())
            .bind(Vec::<u8>::new())
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(q("forgetting fingerprints", "fingerprints"))
    }

    /// How many identities the job knows.
    pub async fn count_fingerprints(&self, job: &str) -> Result<u64, StateError> {
        let row = sqlx::query("SELECT COUNT(*) FROM fingerprints WHERE job = $1")
            .bind(storable(job).as_ref())
            .fetch_one(&self.pool)
            .await
            .map_err(q("counting fingerprints", "fingerprints"))?;
        row.try_get::<i64, _>(0)
            .map(|n| n as u64)
            .map_err(q("counting fingerprints", "fingerprints"))
    }

    /// Up to `limit` known identities of the job after `after`, in key order (paging).
    pub async fn known_identities(
        &self,
        job: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StateError> {
        let job = storable(job);
        let rows = match after {
            None => sqlx::query(
                "SELECT identity FROM fingerprints WHERE job = $1 ORDER BY identity LIMIT $2",
            )
            .bind(job.as_ref())
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
            Some(a) => sqlx::query(
                "SELECT identity FROM fingerprints WHERE job = $1 AND identity > $2 ORDER BY identity LIMIT $3",
            )
            .bind(job.as_ref())
            .bind(storable(a).into_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await,
        }
        .map_err(q("listing known identities", "fingerprints"))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(q("listing known identities", "fingerprints"))
    }

    /// Removes identities a mirror phase removed from Customer.io.
    pub async fn remove_fingerprints(&self, job: &str, keys: &[String]) -> Result<(), StateError> {
        let job = storable(job);
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let sql = format!(
                "DELETE FROM fingerprints WHERE job = $1 AND identity IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job.as_ref());
            for k in chunk {
                query = query.bind(storable(k).into_owned());
            }
            query
                .execute(&self.pool)
                .await
                .map_err(q("removing fingerprints", "fingerprints"))?;
        }
        Ok(())
    }

    /// Bytes the job's fingerprints take in their columns (identity text, 8-byte
    /// fingerprint, packed attribute hashes), without the database's own overhead.
    pub async fn fingerprint_bytes(&self, job: &str) -> Result<u64, StateError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(LENGTH(identity) + 8 + LENGTH(attributes)), 0) FROM fingerprints WHERE job = $1",
        )
        .bind(storable(job).as_ref())
        .fetch_one(&self.pool)
        .await
        .map_err(q("measuring fingerprints", "fingerprints"))?;
        row.try_get::<i64, _>(0)
            .map(|n| n as u64)
            .map_err(q("measuring fingerprints", "fingerprints"))
    }
}
