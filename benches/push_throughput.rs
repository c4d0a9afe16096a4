//! Push throughput, CPU and memory of the real `cio-sync` binary, side by side in one run.
//!
//! `cargo bench --bench push_throughput` runs each scenario and prints one line for it. The
//! simulator plays Customer.io inside this bench process; `cio-sync run` is a child process,
//! so its CPU time (user + sys, from `wait4`) and peak RSS (`ru_maxrss`) are its own, whatever
//! code is merged:
//! 1. `csv-cold`: identify sync of `CIO_BENCH_ROWS` CSV rows (default 1,000,000), rate limit
//!    off: rows/s, cio-sync CPU µs per row (target ≤ 3), peak RSS, requests;
//! 2. `csv-next-night`: a new export of the same people (the file rewritten, rows shuffled, 1%
//!    changed), run as the next scheduled run would: wall time, requests, rows sent (with
//!    change detection: exactly the changed rows), peak RSS;
//! 3. `object-cold`: the same rows as custom objects (object identify);
//! 4. `pg-cold`: the same identify sync from PostgreSQL with a full read (no cursor) of
//!    `CIO_BENCH_PG_ROWS` rows (default `CIO_BENCH_ROWS`), a fresh database created and dropped
//!    (`CIO_SYNC_TEST_PG`, default the local server; `CIO_BENCH_PG=0` skips it);
//! 5. `fault-mix`: 20,000 rows under issue 3's fault mix (10% 5xx, 2% dropped connections, a
//!    server limit of 150 requests/s below the client's 2000/s): requests per delivered row.
//!
//! `CIO_BENCH_ONLY=csv-cold,pg-cold` runs only the named scenarios. Figures, not assertions:
//! targets live here and in the README, never in timed tests.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cio_sync::simulator::{Faults, SimConfig, Simulator};

/// What one `cio-sync` child process cost.
struct ChildRun {
    wall: Duration,
    user: Duration,
    sys: Duration,
    /// Peak resident set, KiB.
    max_rss_kib: u64,
}

impl ChildRun {
    fn cpu_us_per_row(&self, rows: u64) -> f64 {
        (self.user + self.sys).as_secs_f64() * 1e6 / rows.max(1) as f64
    }
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Runs `cio-sync --quiet --config config.yaml ARGS…` in `dir` and waits for it with
/// `wait4`, which reports the child's own CPU time and peak RSS.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std cannot see"
)]
fn cio_sync(dir: &Path, args: &[&str]) -> ChildRun {
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cio-sync"))
        .current_dir(dir)
        .args(["--quiet", "--config", "config.yaml"])
        .args(args)
        .env("CIO_SITE_ID", "demo-site")
        .env("CIO_TRACK_API_KEY", "demo-track-key")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        // Its retry warnings (fault mix) would bury the figures; they go to cio-sync.log.
        .stderr(std::fs::File::create(dir.join("cio-sync.log")).expect("log file"))
        .spawn()
        .expect("spawn cio-sync");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (std never waited for it); both pointers
    // point at live locals.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(reaped, pid, "wait4 for cio-sync");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "cio-sync {args:?} in {} failed with status {status}",
        dir.display()
    );
    ChildRun {
        wall,
        user: tv(usage.ru_utime),
        sys: tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

/// `cio_sync` on a blocking thread, so the simulator in this process keeps answering.
async fn run_child(dir: &Path, args: &'static [&'static str]) -> ChildRun {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || cio_sync(&dir, args))
        .await
        .expect("child runner")
}

/// The people export: `order[k]` is the person on data row `k`; people in `changed` get
/// another plan than the first night's.
fn write_people(path: &Path, order: &[usize], changed: &std::collections::HashSet<usize>) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    writeln!(f, "customer_id,email,plan,seats,signup_at,company").expect("write");
    for &i in order {
        let plan = if changed.contains(&i) {
            "enterprise"
        } else {
            ["free", "pro", "team"][i % 3]
        };
        writeln!(
            f,
            "u-{i:08},user{i}@example.com,{plan},{},{},Company {}",
            i % 50,
            1_600_000_000 + i,
            i % 1000
        )
        .expect("write");
    }
}

const PEOPLE_JOB: &str = "source: { csv: { path: data/people.csv } }\nidentify:\n  identifier: { id: customer_id }\n  attributes:\n    email: email\n    plan: plan\n    seats: { column: seats, as: number }\n    created_at: { column: signup_at, as: timestamp }\n    company: company\n";

const OBJECT_JOB: &str = "source: { csv: { path: data/people.csv } }\nobject:\n  type_id: 1\n  id: customer_id\n  attributes:\n    email: email\n    plan: plan\n    seats: { column: seats, as: number }\n    created_at: { column: signup_at, as: timestamp }\n    company: company\n";

/// A project folder: config.yaml pointing at the simulator, rate limit off, and `job`.
fn project(dir: &Path, sim_url: &str, extra: &str, job: &str) {
    std::fs::create_dir_all(dir.join("jobs/data")).expect("dirs");
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "state: {{ url: \"sqlite://state/state.db\" }}\ncustomerio:\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  track_url: {sim_url}\n{extra}"
        ),
    )
    .expect("config");
    std::fs::write(dir.join("jobs/people.yaml"), job).expect("job");
}

const NO_LIMIT: &str = "track: { rate_limit_per_sec: 1000000, concurrency: 4 }\n";

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A deterministic shuffle (xorshift), so every run measures the same file.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (1..=n).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// Scenarios 1 and 2: the cold sync, then the next night's new export.
async fn csv_nights(sim: &Simulator, rows: usize, cold: bool, night: bool) {
    let dir = tempfile::tempdir().expect("tmp");
    project(dir.path(), &sim.url(), NO_LIMIT, PEOPLE_JOB);
    let csv = dir.path().join("jobs/data/people.csv");
    let first: Vec<usize> = (1..=rows).collect();
    write_people(&csv, &first, &Default::default());
    sim.reset_records();
    let r = run_child(dir.path(), &["run", "people"]).await;
    let sent = sim.operation_count();
    assert_eq!(sent, rows, "the cold sync delivers every row");
    if cold {
        println!(
            "csv-cold: {rows} CSV rows, identify, rate limit off, in {:.2}s = {:.0} rows/s; cio-sync CPU {:.2} µs/row (user {:.2}s + sys {:.2}s; target ≤ 3); peak RSS {:.0} MiB; {} requests",
            r.wall.as_secs_f64(),
            rows as f64 / r.wall.as_secs_f64(),
            r.cpu_us_per_row(rows as u64),
            r.user.as_secs_f64(),
            r.sys.as_secs_f64(),
            mib(r.max_rss_kib),
            sim.requests().len()
        );
    }
    if !night {
        return;
    }
    // The next night: a new file (new mtime and size) of the same people in another order,
    // 1% of them on another plan.
    let changed: std::collections::HashSet<usize> = (1..=rows).step_by(100).collect();
    std::fs::remove_file(&csv).expect("remove the old export");
    write_people(&csv, &shuffled(rows, 0x9e37_79b9_7f4a_7c15), &changed);
    sim.reset_records();
    let r = run_child(dir.path(), &["run", "people"]).await;
    println!(
        "csv-next-night: new export of the same {rows} people (shuffled, {} changed) in {:.2}s (target < 10 s); {} requests; {} rows sent (target: exactly the {} changed); cio-sync CPU {:.2} µs/row; peak RSS {:.0} MiB (target < 150)",
        changed.len(),
        r.wall.as_secs_f64(),
        sim.requests().len(),
        sim.operation_count(),
        changed.len(),
        r.cpu_us_per_row(rows as u64),
        mib(r.max_rss_kib)
    );
}

/// Scenario 3: object identify on the same rows.
async fn object_cold(sim: &Simulator, rows: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    project(dir.path(), &sim.url(), NO_LIMIT, OBJECT_JOB);
    let first: Vec<usize> = (1..=rows).collect();
    write_people(
        &dir.path().join("jobs/data/people.csv"),
        &first,
        &Default::default(),
    );
    sim.reset_records();
    let r = run_child(dir.path(), &["run", "people"]).await;
    assert_eq!(sim.operation_count(), rows, "every object delivered");
    println!(
        "object-cold: {rows} CSV rows, object identify, rate limit off, in {:.2}s = {:.0} rows/s; cio-sync CPU {:.2} µs/row; peak RSS {:.0} MiB; {} requests",
        r.wall.as_secs_f64(),
        rows as f64 / r.wall.as_secs_f64(),
        r.cpu_us_per_row(rows as u64),
        mib(r.max_rss_kib),
        sim.requests().len()
    );
}

/// Scenario 4: PostgreSQL, full read.
async fn pg_cold(sim: &Simulator, rows: usize) {
    let pg = common::FreshPg::create().await;
    let url = pg.url.clone();
    {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(&url).await.expect("bench db");
        // The CSV export's people, as a table.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE customers (id text PRIMARY KEY, email text NOT NULL, plan text, seats int, \
             signup_at bigint, company text); \
             INSERT INTO customers SELECT 'u-' || lpad(g::text, 8, '0'), 'user' || g || '@example.com', \
             (ARRAY['free','pro','team'])[g % 3 + 1], g % 50, 1600000000 + g, 'Company ' || (g % 1000) \
             FROM generate_series(1, {rows}) g; ANALYZE customers;"
        )))
        .execute(&mut db)
        .await
        .expect("fill");
    }
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &sim.url(),
        NO_LIMIT,
        &format!(
            "source:\n  sql:\n    url: {url}\n    query: \"SELECT id AS customer_id, email, plan, seats, signup_at, company FROM customers\"\n\
             identify:\n  identifier: {{ id: customer_id }}\n  attributes:\n    email: email\n    plan: plan\n    seats: seats\n    created_at: {{ column: signup_at, as: timestamp }}\n    company: company\n"
        ),
    );
    sim.reset_records();
    let r = run_child(dir.path(), &["run", "people"]).await;
    assert_eq!(sim.operation_count(), rows, "every row delivered");
    println!(
        "pg-cold: {rows} PostgreSQL rows, full read, identify, rate limit off, in {:.2}s = {:.0} rows/s; cio-sync CPU {:.2} µs/row; peak RSS {:.0} MiB; {} requests",
        r.wall.as_secs_f64(),
        rows as f64 / r.wall.as_secs_f64(),
        r.cpu_us_per_row(rows as u64),
        mib(r.max_rss_kib),
        sim.requests().len()
    );
    pg.drop_now().await;
}

/// Scenario 5: the fault mix, on its own simulator (its faults must not touch the others).
async fn fault_mix(rows: usize) {
    let sim = Simulator::start(SimConfig::default()).await.expect("sim");
    sim.record_operations(false);
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
    project(
        dir.path(),
        &sim.url(),
        "track: { rate_limit_per_sec: 2000, concurrency: 4, batch: { max_items: 100, max_bytes: 480000 } }\nretry: { max_attempts: 12, base_delay_ms: 20, max_wait_secs: 3 }\n",
        PEOPLE_JOB,
    );
    let first: Vec<usize> = (1..=rows).collect();
    write_people(
        &dir.path().join("jobs/data/people.csv"),
        &first,
        &Default::default(),
    );
    let r = run_child(dir.path(), &["run", "people"]).await;
    let requests = sim.requests().len();
    println!(
        "fault-mix: {rows} rows, 100 rows/batch, 10% 5xx, 2% drops, server 150 req/s < client 2000 req/s, in {:.2}s = {:.0} rows/s; {requests} requests = {:.4} requests per delivered row",
        r.wall.as_secs_f64(),
        rows as f64 / r.wall.as_secs_f64(),
        requests as f64 / rows as f64
    );
    sim.shutdown().await;
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special: only
    // run when invoked as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rows = env_usize("CIO_BENCH_ROWS", 1_000_000);
    let pg_rows = env_usize("CIO_BENCH_PG_ROWS", rows);
    let only = std::env::var("CIO_BENCH_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s.trim() == name))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sim = Simulator::start(SimConfig::default()).await.expect("sim");
        // Counts only: storing every operation would measure the simulator's memory.
        sim.record_operations(false);
        if wanted("csv-cold") || wanted("csv-next-night") {
            csv_nights(&sim, rows, wanted("csv-cold"), wanted("csv-next-night")).await;
        }
        if wanted("object-cold") {
            object_cold(&sim, rows).await;
        }
        if wanted("pg-cold") && std::env::var("CIO_BENCH_PG").as_deref() != Ok("0") {
            pg_cold(&sim, pg_rows).await;
        }
        sim.shutdown().await;
        if wanted("fault-mix") {
            fault_mix(20_000).await;
        }
    });
}
