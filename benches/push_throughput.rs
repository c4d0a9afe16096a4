//! Push throughput and memory, measured end to end.
//!
//! `cargo bench --bench push_throughput` runs three measurements against the in-process
//! simulator and prints one line each:
//! 1. rows/s from CSV through mapping and batching to the simulator, rate limiting off
//!    (in-process, `CIO_BENCH_ROWS` rows, default 200000), for people (identify) and then for
//!    custom objects (object identify) on the same rows;
//! 2. rows/s and requests per delivered row under the fault mix of issue 3 (10% 5xx, 2%
//!    dropped connections, a server rate limit of 150/s below the client's 2000/s);
//! 3. peak RSS of the real binary pushing 100k and 1M rows (`CIO_BENCH_RSS=0` skips it),
//!    read from /proc/<pid>/status (VmHWM) while it runs;
//! 4. PostgreSQL → simulator: rows/s of an incremental (cursor) job over 1M rows, and the
//!    binary's peak RSS doing it (`CIO_SYNC_TEST_PG`, default the local server; a fresh
//!    database is created and dropped; `CIO_BENCH_PG=0` skips it).
//!
//! Figures, not assertions: targets live here, never in timed tests.

use std::path::Path;
use std::time::{Duration, Instant};

use cio_sync::config;
use cio_sync::pipeline::{RunMode, StopSignal};
use cio_sync::runner::Runner;
use cio_sync::simulator::{Faults, SimConfig, Simulator};

fn env(name: &str) -> Option<String> {
    match name {
        "CIO_SITE_ID" => Some("demo-site".into()),
        "CIO_TRACK_API_KEY" => Some("demo-track-key".into()),
        "CIO_APP_API_KEY" => Some("demo-app-key".into()),
        _ => None,
    }
}

fn write_people(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    writeln!(f, "customer_id,email,plan,seats,signup_at,company").expect("write");
    for i in 1..=n {
        writeln!(
            f,
            "u-{i:08},user{i}@example.com,{},{},{},Company {}",
            ["free", "pro", "team"][i % 3],
            i % 50,
            1_600_000_000 + i,
            i % 1000
        )
        .expect("write");
    }
}

fn setup(dir: &Path, sim_url: &str, rows: usize, extra: &str) {
    std::fs::create_dir_all(dir.join("jobs/data")).expect("dirs");
    write_people(&dir.join("jobs/data/people.csv"), rows);
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "state: {{ url: \"sqlite://state/state.db\" }}\ncustomerio:\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  track_url: {sim_url}\n{extra}"
        ),
    )
    .expect("config");
    std::fs::write(
        dir.join("jobs/people.yaml"),
        "source: { csv: { path: data/people.csv } }\nidentify:\n  identifier: { id: customer_id }\n  attributes:\n    email: email\n    plan: plan\n    seats: { column: seats, as: number }\n    created_at: { column: signup_at, as: timestamp }\n    company: company\n",
    )
    .expect("job");
}

async fn run_in_process(dir: &Path) -> cio_sync::pipeline::RunReport {
    let cfg = config::load(&dir.join("config.yaml"), &env).expect("config");
    let job = cfg.job("people").expect("job").clone();
    let runner = Runner::new(cfg.settings).await.expect("runner");
    runner
        .run(&job, RunMode::Normal { full: true }, StopSignal::never())
        .await
        .expect("run")
}

async fn throughput(rows: usize) {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    sim.record_operations(false);
    let dir = tempfile::tempdir().expect("tmp");
    setup(
        dir.path(),
        &sim.url(),
        rows,
        "track: { rate_limit_per_sec: 1000000, concurrency: 4 }\n",
    );
    let start = Instant::now();
    let r = run_in_process(dir.path()).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r.counts.rows_delivered, rows as u64);
    println!(
        "throughput: {rows} rows CSV → mapping → batching → simulator in {secs:.2}s = {:.0} rows/s ({} requests, rate limit off)",
        rows as f64 / secs,
        r.counts.requests
    );
    sim.shutdown().await;
}

/// Object-identify throughput on the same rows as [`throughput`]: one `type: object`
/// identify per row (an account per person row), rate limiting off, printed next to people's.
async fn object_throughput(rows: usize) {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    sim.record_operations(false);
    let dir = tempfile::tempdir().expect("tmp");
    setup(
        dir.path(),
        &sim.url(),
        rows,
        "track: { rate_limit_per_sec: 1000000, concurrency: 4 }\n",
    );
    // The same job name and file, as an object job: each row becomes an account object.
    std::fs::write(
        dir.path().join("jobs/people.yaml"),
        "source: { csv: { path: data/people.csv } }\nobject:\n  type_id: 1\n  id: customer_id\n  attributes:\n    email: email\n    plan: plan\n    seats: { column: seats, as: number }\n    created_at: { column: signup_at, as: timestamp }\n    company: company\n",
    )
    .expect("job");
    let start = Instant::now();
    let r = run_in_process(dir.path()).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r.counts.rows_delivered, rows as u64);
    println!(
        "object-identify throughput: {rows} rows CSV → object mapping → batching → simulator in {secs:.2}s = {:.0} rows/s ({} requests, rate limit off)",
        rows as f64 / secs,
        r.counts.requests
    );
    sim.shutdown().await;
}

async fn under_faults(rows: usize) {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    sim.set_faults(Faults {
        error_5xx_rate: 0.10,
        drop_before_rate: 0.01,
        drop_after_rate: 0.01,
        rate_limit_per_sec: Some(150),
        retry_after_secs: 1,
        latency: Duration::ZERO,
        seed: 7,
    });
    let dir = tempfile::tempdir().expect("tmp");
    setup(
        dir.path(),
        &sim.url(),
        rows,
        "track: { rate_limit_per_sec: 2000, concurrency: 4, batch: { max_items: 100, max_bytes: 480000 } }\nretry: { max_attempts: 12, base_delay_ms: 20, max_wait_secs: 3 }\n",
    );
    let start = Instant::now();
    let r = run_in_process(dir.path()).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r.counts.rows_delivered, rows as u64);
    println!(
        "fault mix (10% 5xx, 2% drops, server 150 req/s < client 2000 req/s, 100 rows/batch): {rows} rows in {secs:.2}s = {:.0} rows/s; {} requests ({} retries) = {:.4} requests per delivered row",
        rows as f64 / secs,
        r.counts.requests,
        r.counts.retries,
        r.counts.requests as f64 / rows as f64
    );
    sim.shutdown().await;
}

/// Peak RSS (KiB) of the real binary pushing `rows` rows.
async fn peak_rss(rows: usize) -> u64 {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    sim.record_operations(false);
    let dir = tempfile::tempdir().expect("tmp");
    setup(
        dir.path(),
        &sim.url(),
        rows,
        "track: { rate_limit_per_sec: 1000000, concurrency: 4 }\n",
    );
    let peak = binary_peak_rss(dir.path()).await;
    sim.shutdown().await;
    peak
}

/// Runs `cio-sync run people` in `dir` and samples its VmHWM until it exits.
async fn binary_peak_rss(dir: &Path) -> u64 {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-sync"))
        .current_dir(dir)
        .args(["--quiet", "--config", "config.yaml", "run", "people"])
        .env("CIO_SITE_ID", "demo-site")
        .env("CIO_TRACK_API_KEY", "demo-track-key")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let status_path = format!("/proc/{}/status", child.id().unwrap_or(0));
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak = peak.max(
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
        }
        tokio::select! {
            status = child.wait() => {
                assert!(status.map(|s| s.success()).unwrap_or(false), "the run failed");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    peak
}

async fn postgres(rows: usize) {
    use sqlx::Connection;
    let base = std::env::var("CIO_SYNC_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!(
        "cio_bench_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL (set CIO_SYNC_TEST_PG or CIO_BENCH_PG=0)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create db");
    let url = format!(
        "{}/{name}",
        base.rsplit_once('/').map(|(h, _)| h).unwrap_or(&base)
    );
    {
        let mut db = sqlx::PgConnection::connect(&url).await.expect("bench db");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, plan text, seats int, \
             profile jsonb, balance numeric(12,2), updated_at timestamptz NOT NULL); \
             INSERT INTO customers SELECT g, 'user' || g || '@example.com', (ARRAY['free','pro','team'])[g % 3 + 1], g % 50, \
             jsonb_build_object('tier', g % 7), (g % 100000) / 100.0, timestamptz '2024-01-01' + (g / 3) * interval '1 second' \
             FROM generate_series(1, {rows}) g; \
             CREATE INDEX customers_cursor ON customers (updated_at, id); ANALYZE customers;"
        )))
        .execute(&mut db)
        .await
        .expect("fill");
    }
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    sim.record_operations(false);
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("jobs")).expect("dirs");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "state: {{ url: \"sqlite://state/state.db\" }}\ncustomerio:\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  track_url: {}\ntrack: {{ rate_limit_per_sec: 1000000, concurrency: 4 }}\n",
            sim.url()
        ),
    )
    .expect("config");
    std::fs::write(
        dir.path().join("jobs/people.yaml"),
        format!(
            "source:\n  sql:\n    url: {url}\n    query: \"SELECT id AS customer_id, email, plan, seats, profile, balance, updated_at FROM customers\"\n    cursor: {{ column: updated_at, tiebreak: customer_id }}\n\
             identify:\n  identifier: {{ id: customer_id }}\n  timestamp: updated_at\n"
        ),
    )
    .expect("job");
    let start = Instant::now();
    let r = run_in_process(dir.path()).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r.counts.rows_delivered, rows as u64, "{r:?}");
    println!(
        "postgres: {rows} rows (incremental, 5000-row chunks) → mapping → batching → simulator in {secs:.2}s = {:.0} rows/s",
        rows as f64 / secs
    );
    // The same job through the real binary from the start, for its peak memory.
    std::fs::remove_dir_all(dir.path().join("state")).expect("reset state");
    let peak = binary_peak_rss(dir.path()).await;
    println!(
        "postgres: peak RSS of `cio-sync run` over {rows} rows (VmHWM) = {} MiB",
        peak / 1024
    );
    sim.shutdown().await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing special: only
    // run when invoked as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows: usize = std::env::var("CIO_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    rt.block_on(async {
        throughput(rows).await;
        object_throughput(rows).await;
        under_faults(20_000).await;
        if std::env::var("CIO_BENCH_RSS").as_deref() != Ok("0") {
            let small = peak_rss(100_000).await;
            let large = peak_rss(1_000_000).await;
            println!(
                "peak RSS of `cio-sync run` (VmHWM): 100k rows = {} MiB, 1M rows = {} MiB",
                small / 1024,
                large / 1024
            );
        }
        if std::env::var("CIO_BENCH_PG").as_deref() != Ok("0") {
            for rows in [100_000, 1_000_000] {
                postgres(rows).await;
            }
        }
    });
}
