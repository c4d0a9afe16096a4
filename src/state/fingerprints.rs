//! The `fingerprints` and `fingerprint_attributes` tables: per job and row identity, what
//! Customer.io last acknowledged.
//!
//! Owns: comparing a chunk of rows' fingerprints with the stored ones in the database (one
//! statement per chunk that answers only for the rows that differ, with their attribute
//! hashes, as one JSON value: an unchanged export costs no row traffic), writing them
//! inside a commit (one upsert per table and chunk, the rows bound as one JSON array),
//! forgetting them (`run --full`, `checkpoint reset`: the identities stay known to mirror
//! mode), paging through a job's known identities (mirror mode) and removing the ones a
//! mirror phase removed from Customer.io. The whole fingerprint and the attribute hashes
//! live in two tables so the per-row lookup walks only the narrow one.
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
const ROWS_PER_STATEMENT: usize = 5000;

fn placeholders(from: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("${}", from + i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn encoding(what: &'static str) -> impl Fn(serde_json::Error) -> StateError {
    move |e| StateError::Query {
        what,
        table: "fingerprints",
        message: e.to_string(),
    }
}

/// A JSON text built by appending: identities go through serde_json (escaping), numbers
/// and hex are written directly. `[[identity, value], …]` where one identity may come
/// twice (lookups compare each row), `{identity: value, …}` where each comes once (writes:
/// the database reads an object's entries without parsing each element again).
struct JsonList {
    out: Vec<u8>,
    object: bool,
}

impl JsonList {
    fn pairs(capacity: usize) -> Self {
        Self::new(capacity, false)
    }

    fn object(capacity: usize) -> Self {
        Self::new(capacity, true)
    }

    fn new(capacity: usize, object: bool) -> Self {
        let mut out = Vec::with_capacity(capacity);
        out.push(if object { b'{' } else { b'[' });
        Self { out, object }
    }

    /// Starts the next entry, for `identity`.
    fn entry(&mut self, identity: &str) -> Result<(), serde_json::Error> {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        if !self.object {
            self.out.push(b'[');
        }
        serde_json::to_writer(&mut self.out, storable(identity).as_ref())?;
        self.out.push(if self.object { b':' } else { b',' });
        Ok(())
    }

    fn end_entry(&mut self) {
        if !self.object {
            self.out.push(b']');
        }
    }

    fn number(&mut self, n: i64) {
        use std::io::Write;
        let _ = write!(self.out, "{n}");
        self.end_entry();
    }

    fn hex(&mut self, bytes: &[u8]) {
        let start = self.out.len() + 1;
        self.out.push(b'"');
        self.out.resize(start + bytes.len() * 2, b'0');
        // The slice is exactly twice the input's length: encoding cannot fail.
        let _ = hex::encode_to_slice(bytes, &mut self.out[start..]);
        self.out.push(b'"');
        self.end_entry();
    }

    fn is_empty(&self) -> bool {
        self.out.len() <= 1
    }

    fn finish(mut self) -> Result<String, StateError> {
        self.out.push(if self.object { b'}' } else { b']' });
        String::from_utf8(self.out).map_err(|e| StateError::Query {
            what: "encoding fingerprints",
            table: "fingerprints",
            message: e.to_string(),
        })
    }
}

/// What a chunk of fingerprints is written as: `{identity: fingerprint, …}`, `{identity:
/// hex of the packed attribute hashes, …}` (rows without attributes left out, `None` if
/// none has), and whether any row had none.
fn encode_rows(
    rows: &[&(String, Fingerprint)],
) -> Result<(String, Option<String>, bool), StateError> {
    let enc = encoding("encoding the fingerprints to record");
    let mut whole = JsonList::object(rows.len() * 32);
    let mut attrs = JsonList::object(rows.len() * 200);
    let mut bare = false;
    for (k, fp) in rows {
        whole.entry(k).map_err(&enc)?;
        whole.number(fp.whole as i64);
        if fp.attributes.is_empty() {
            bare = true;
            continue;
        }
        attrs.entry(k).map_err(&enc)?;
        attrs.hex(&fp.pack());
    }
    let attrs = if attrs.is_empty() {
        None
    } else {
        Some(attrs.finish()?)
    };
    Ok((whole.finish()?, attrs, bare))
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
    // The rows travel as JSON objects that the database unpacks: binding thousands of
    // parameters costs the SQLite driver time quadratic in their number (a third of a run's
    // CPU at 2000 rows per statement). A row's old attribute hashes are replaced, or removed
    // when it has none now.
    let (whole_sql, drop_sql, attrs_sql) = match backend {
        Backend::Sqlite => (
            "INSERT INTO fingerprints (job, identity, fingerprint) \
             SELECT $1, key, value FROM json_each($2) WHERE true \
             ON CONFLICT (job, identity) DO UPDATE SET fingerprint = excluded.fingerprint",
            "DELETE FROM fingerprint_attributes WHERE job = $1 \
             AND identity IN (SELECT key FROM json_each($2))",
            "INSERT INTO fingerprint_attributes (job, identity, attributes) \
             SELECT $1, key, unhex(value) FROM json_each($2) WHERE true \
             ON CONFLICT (job, identity) DO UPDATE SET attributes = excluded.attributes",
        ),
        Backend::Postgres => (
            "INSERT INTO fingerprints (job, identity, fingerprint) \
             SELECT $1, key, value::bigint FROM jsonb_each_text($2::jsonb) \
             ON CONFLICT (job, identity) DO UPDATE SET fingerprint = excluded.fingerprint",
            "DELETE FROM fingerprint_attributes WHERE job = $1 \
             AND identity = ANY(ARRAY(SELECT jsonb_object_keys($2::jsonb)))",
            "INSERT INTO fingerprint_attributes (job, identity, attributes) \
             SELECT $1, key, decode(value, 'hex') FROM jsonb_each_text($2::jsonb) \
             ON CONFLICT (job, identity) DO UPDATE SET attributes = excluded.attributes",
        ),
    };
    for chunk in unique.chunks(ROWS_PER_STATEMENT) {
        let (whole, attrs, bare) = encode_rows(chunk)?;
        sqlx::query(whole_sql)
            .bind(job.as_ref())
            .bind(whole.as_str())
            .execute(&mut **tx)
            .await
            .map_err(q("recording fingerprints", "fingerprints"))?;
        if bare {
            sqlx::query(drop_sql)
                .bind(job.as_ref())
                .bind(whole)
                .execute(&mut **tx)
                .await
                .map_err(q("recording fingerprints", "fingerprint_attributes"))?;
        }
        if let Some(attrs) = attrs {
            sqlx::query(attrs_sql)
                .bind(job.as_ref())
                .bind(attrs)
                .execute(&mut **tx)
                .await
                .map_err(q("recording fingerprints", "fingerprint_attributes"))?;
        }
    }
    Ok(())
}

impl StateStore {
    /// Compares `rows` (identity, fingerprint of the row now) with what is stored: the answer
    /// names only the identities whose stored fingerprint differs (`Some`, with its attribute
    /// hashes) or that are unknown (`None`). An identity missing from the answer is stored
    /// with exactly the given fingerprint.
    pub async fn changed_fingerprints(
        &self,
        job: &str,
        rows: &[(&str, u64)],
    ) -> Result<HashMap<String, Option<Fingerprint>>, StateError> {
        let mut out = HashMap::new();
        let job = storable(job);
        // The rows travel as one JSON array and come back as one: one statement whatever
        // the chunk's size (kept prepared), looked up through the primary key, and no row
        // traffic at all for the rows that did not change (a million-row re-export with 1%
        // changed answers ten thousand rows, not a million).
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT json_group_array(json_array(r.value ->> 0, f.fingerprint, hex(a.attributes))) \
                 FROM json_each($2) AS r \
                 LEFT JOIN fingerprints AS f ON f.job = $1 AND f.identity = r.value ->> 0 \
                 LEFT JOIN fingerprint_attributes AS a ON a.job = $1 AND a.identity = f.identity \
                 WHERE f.fingerprint IS NULL OR f.fingerprint <> r.value ->> 1"
            }
            Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(r.e->>0, f.fingerprint, encode(a.attributes, 'hex'))), '[]')::text \
                 FROM jsonb_array_elements($2::jsonb) AS r(e) \
                 LEFT JOIN fingerprints AS f ON f.job = $1 AND f.identity = r.e->>0 \
                 LEFT JOIN fingerprint_attributes AS a ON a.job = $1 AND a.identity = f.identity \
                 WHERE f.fingerprint IS NULL OR f.fingerprint <> (r.e->>1)::bigint"
            }
        };
        let enc = encoding("encoding the identities to look up");
        for chunk in rows.chunks(KEYS_PER_QUERY) {
            let mut list = JsonList::pairs(chunk.len() * 32);
            for (k, whole) in chunk {
                list.entry(k).map_err(&enc)?;
                list.number(*whole as i64);
            }
            let row = sqlx::query(sql)
                .bind(job.as_ref())
                .bind(list.finish()?)
                .fetch_one(&self.pool)
                .await
                .map_err(q("looking up fingerprints", "fingerprints"))?;
            let answer: String = row
                .try_get(0)
                .map_err(q("reading fingerprints", "fingerprints"))?;
            let answer: Vec<(String, Option<i64>, Option<String>)> = serde_json::from_str(&answer)
                .map_err(|e| StateError::Query {
                    what: "reading fingerprints",
                    table: "fingerprints",
                    message: e.to_string(),
                })?;
            for (key, whole, attrs) in answer {
                // Damaged attribute hashes only make the row look changed.
                let stored = whole.map(|whole| {
                    let packed = attrs
                        .as_deref()
                        .and_then(|h| hex::decode(h).ok())
                        .unwrap_or_default();
                    Fingerprint::unpack(whole as u64, &packed)
                });
                out.insert(key, stored);
            }
        }
        Ok(out)
    }

    /// The fingerprints stored for `keys` (absent keys are unknown identities), for
    /// inspection and tests: the pipeline asks [`StateStore::changed_fingerprints`].
    pub async fn fingerprints(
        &self,
        job: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, Fingerprint>, StateError> {
        let mut out = HashMap::with_capacity(keys.len());
        let job = storable(job);
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT f.identity, f.fingerprint, a.attributes FROM fingerprints AS f \
                 LEFT JOIN fingerprint_attributes AS a ON a.job = f.job AND a.identity = f.identity \
                 WHERE f.job = $1 AND f.identity IN (SELECT value FROM json_each($2))"
            }
            Backend::Postgres => {
                "SELECT f.identity, f.fingerprint, a.attributes FROM fingerprints AS f \
                 LEFT JOIN fingerprint_attributes AS a ON a.job = f.job AND a.identity = f.identity \
                 WHERE f.job = $1 AND f.identity = ANY(ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))"
            }
        };
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let list: Vec<std::borrow::Cow<'_, str>> = chunk.iter().map(|k| storable(k)).collect();
            let list = serde_json::to_string(&list)
                .map_err(encoding("encoding the identities to look up"))?;
            let rows = sqlx::query(sql)
                .bind(job.as_ref())
                .bind(list)
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
                let packed: Option<Vec<u8>> = r
                    .try_get(2)
                    .map_err(q("reading fingerprints", "fingerprints"))?;
                out.insert(
                    key,
                    Fingerprint::unpack(whole as u64, &packed.unwrap_or_default()),
                );
            }
        }
        Ok(out)
    }

    /// Forgets a job's fingerprints: every row is sent again, but the identities stay known
    /// (mirror mode still knows whom it synced).
    pub async fn forget_fingerprints(&self, job: &str) -> Result<u64, StateError> {
        let job = storable(job);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(q("forgetting fingerprints", "fingerprints"))?;
        let forgotten = sqlx::query("UPDATE fingerprints SET fingerprint = 0 WHERE job = $1")
            .bind(job.as_ref())
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected())
            .map_err(q("forgetting fingerprints", "fingerprints"))?;
        sqlx::query("DELETE FROM fingerprint_attributes WHERE job = $1")
            .bind(job.as_ref())
            .execute(&mut *tx)
            .await
            .map_err(q("forgetting fingerprints", "fingerprint_attributes"))?;
        tx.commit()
            .await
            .map_err(q("forgetting fingerprints", "fingerprints"))?;
        Ok(forgotten)
    }

    /// Whether the job knows any identity at all.
    pub async fn has_fingerprints(&self, job: &str) -> Result<bool, StateError> {
        sqlx::query("SELECT 1 FROM fingerprints WHERE job = $1 LIMIT 1")
            .bind(storable(job).as_ref())
            .fetch_optional(&self.pool)
            .await
            .map(|r| r.is_some())
            .map_err(q("looking up fingerprints", "fingerprints"))
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
            let list = placeholders(2, chunk.len());
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(q("removing fingerprints", "fingerprints"))?;
            for table in ["fingerprints", "fingerprint_attributes"] {
                let sql = format!("DELETE FROM {table} WHERE job = $1 AND identity IN ({list})");
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job.as_ref());
                for k in chunk {
                    query = query.bind(storable(k).into_owned());
                }
                query
                    .execute(&mut *tx)
                    .await
                    .map_err(q("removing fingerprints", table))?;
            }
            tx.commit()
                .await
                .map_err(q("removing fingerprints", "fingerprints"))?;
        }
        Ok(())
    }

    /// Bytes the job's fingerprints take in their columns (identity text, 8-byte
    /// fingerprint, packed attribute hashes), without the database's own overhead.
    pub async fn fingerprint_bytes(&self, job: &str) -> Result<u64, StateError> {
        let row = sqlx::query(
            "SELECT COALESCE((SELECT SUM(LENGTH(identity) + 8) FROM fingerprints WHERE job = $1), 0) \
             + COALESCE((SELECT SUM(LENGTH(attributes)) FROM fingerprint_attributes WHERE job = $1), 0)",
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
