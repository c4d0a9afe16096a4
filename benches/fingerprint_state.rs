//! Change detection's state at scale: the fingerprint tables with `CIO_BENCH_PEOPLE` people
//! (default 10,000,000) on SQLite and PostgreSQL, their size per identity, and what the
//! pipeline's lookup costs per row.
//!
//! `cargo bench --bench fingerprint_state` fills the tables of a fresh state database (a temp
//! file; a fresh PostgreSQL database from `CIO_SYNC_TEST_PG`, default the local server,
//! `CIO_BENCH_PG=0` skips it) with the shape a run writes (`id:p…` identities, a 64-bit
//! fingerprint, five attributes' hashes), then asks `changed_fingerprints` for chunks of 1000
//! random people, as the change filter does: all unchanged (the nightly case: the answer is
//! empty), and with 1% changed (those come back with their attribute hashes).
//!
//! Figures, not assertions.

mod common;

use std::time::Instant;

use cio_sync::config::DatabaseUrl;
use cio_sync::state::StateStore;

/// Rows per lookup: the change filter's chunk (`CIO_BENCH_CHUNK` to try others).
fn chunk() -> usize {
    std::env::var("CIO_BENCH_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}
const ROWS: usize = 200_000;

/// A person's stored fingerprint in the filled tables.
fn whole(n: u64) -> u64 {
    n * 2 + 1
}

/// Deterministic pseudo-random people (xorshift) in `1..=people`.
fn sample(people: u64, count: usize, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % people + 1
        })
        .collect()
}

async fn measure(label: &str, store: &StateStore, people: u64, bytes: u64, fill_secs: f64) {
    let chunk_rows = chunk();
    for (case, changed_every) in [("unchanged", 0usize), ("1% changed", 100)] {
        let picks = sample(people, ROWS, 0x5eed + changed_every as u64);
        let keys: Vec<String> = picks.iter().map(|n| format!("id:p{n}")).collect();
        let t = Instant::now();
        let mut answered = 0;
        for (c, chunk) in picks.chunks(chunk_rows).enumerate() {
            let pairs: Vec<(&str, u64)> = chunk
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let k = &keys[c * chunk_rows + i];
                    let changed = changed_every > 0 && i % changed_every == 0;
                    (k.as_str(), if changed { 7 } else { whole(*n) })
                })
                .collect();
            answered += store
                .changed_fingerprints("people", &pairs)
                .await
                .expect("lookup")
                .len();
        }
        let per_row = t.elapsed().as_secs_f64() * 1e6 / ROWS as f64;
        println!(
            "fingerprints-{label}: {people} people filled in {fill_secs:.0}s, {bytes} bytes on disk ({:.1} B per identity); lookup of {ROWS} rows in chunks of {chunk_rows}, {case}: {per_row:.2} µs/row, {answered} rows answered",
            bytes as f64 / people as f64,
        );
    }
}

async fn sqlite(people: u64) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("state.db");
    let store = StateStore::open(&DatabaseUrl::new(format!("sqlite://{}", path.display())))
        .await
        .expect("state");
    let t = Instant::now();
    let fill = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {people}) \
         INSERT INTO fingerprints (job, identity, fingerprint) \
         SELECT 'people', 'id:p' || i, i * 2 + 1 FROM n; \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {people}) \
         INSERT INTO fingerprint_attributes (job, identity, attributes) \
         SELECT 'people', 'id:p' || i, randomblob(80) FROM n;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
        .execute(store.pool())
        .await
        .expect("fill");
    let fill_secs = t.elapsed().as_secs_f64();
    sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(store.pool())
        .await
        .expect("checkpoint");
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    measure("sqlite", &store, people, bytes, fill_secs).await;
}

async fn postgres(people: u64) {
    let pg = common::FreshPg::create().await;
    let url = pg.url.clone();
    {
        let store = StateStore::open(&DatabaseUrl::new(url.clone()))
            .await
            .expect("state");
        let t = Instant::now();
        let fill = format!(
            "INSERT INTO fingerprints (job, identity, fingerprint) \
             SELECT 'people', 'id:p' || i, i * 2 + 1 FROM generate_series(1::bigint, {people}) i; \
             INSERT INTO fingerprint_attributes (job, identity, attributes) \
             SELECT 'people', 'id:p' || i, decode(md5(i::text) || md5(i::text || 'a') || md5(i::text || 'b') || md5(i::text || 'c') || md5(i::text || 'd'), 'hex') \
             FROM generate_series(1, {people}) i;"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
            .execute(store.pool())
            .await
            .expect("fill");
        // As autovacuum would leave them: visibility map set, statistics current.
        for table in ["fingerprints", "fingerprint_attributes"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
                .execute(store.pool())
                .await
                .expect("vacuum");
        }
        let fill_secs = t.elapsed().as_secs_f64();
        let bytes: i64 = sqlx::query_scalar(
            "SELECT pg_total_relation_size('fingerprints') + pg_total_relation_size('fingerprint_attributes')",
        )
        .fetch_one(store.pool())
        .await
        .expect("size");
        measure("postgres", &store, people, bytes as u64, fill_secs).await;
        store.pool().close().await;
    }
    pg.drop_now().await;
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let people: u64 = std::env::var("CIO_BENCH_PEOPLE")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(10_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sqlite(people).await;
        if std::env::var("CIO_BENCH_PG").as_deref() != Ok("0") {
            postgres(people).await;
        }
    });
}
