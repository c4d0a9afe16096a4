//! Backfill rate against a rate-limited simulator, each in its own process.
//!
//! `cargo bench --bench backfill_rate` writes `CIO_BENCH_EVENTS` events (default 1,000,000)
//! to a time-ordered CSV, starts `cio-sync simulate --rate-limit-per-sec 100 --count-only` as
//! one process and `cio-sync backfill` as another, and prints the achieved rows/s and its
//! share of the best possible: 100 requests/s × the items a full 500 KB batch holds (worked
//! out from the job's own encoding of the events). Issue 10's target is at least 90%.
//!
//! Figures, not assertions: targets live here, never in timed tests.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use cio_sync::config::{self, JobKind};
use cio_sync::mapping::Mapper;
use cio_sync::source::Value;

const RATE: u32 = 100;
const MAX_BYTES: usize = 500_000;
const PEOPLE: usize = 20_000;

fn env(name: &str) -> Option<String> {
    match name {
        "CIO_SITE_ID" => Some("demo-site".into()),
        "CIO_TRACK_API_KEY" => Some("demo-track-key".into()),
        _ => None,
    }
}

fn row(i: usize) -> [String; 4] {
    [
        format!("o-{i:08}"),
        format!("u-{:06}", i % PEOPLE + 1),
        (1_500_000_000 + i as i64).to_string(),
        format!("{}.{:02}", i % 500, i % 100),
    ]
}

fn write_orders(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    writeln!(f, "order_id,customer_id,ordered_at,total").expect("write");
    for i in 1..=n {
        writeln!(f, "{}", row(i).join(",")).expect("write");
    }
}

/// Items a full batch holds, from the job's own encoding of a sample of the events.
fn items_per_full_batch(dir: &Path, n: usize) -> f64 {
    let cfg = config::load(&dir.join("config.yaml"), &env).expect("config");
    let job = cfg.job("orders").expect("job");
    let JobKind::Push(push) = &job.kind else {
        panic!("orders is a push job")
    };
    let columns: Vec<String> = ["order_id", "customer_id", "ordered_at", "total"]
        .map(String::from)
        .to_vec();
    let mapper = Mapper::new("orders", &push.mapping, &columns).expect("mapper");
    let sample = n.min(20_000);
    let bytes: usize = (1..=sample)
        .map(|i| {
            let values: Vec<Value> = row(i).into_iter().map(Value::Text).collect();
            mapper.map(&values).expect("maps").encoded.len() + 1
        })
        .sum();
    let per_item = bytes as f64 / sample as f64;
    ((MAX_BYTES - 12) as f64 / per_item).floor()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn main() {
    let n: usize = std::env::var("CIO_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let bin = env!("CARGO_BIN_EXE_cio-sync");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("jobs/data")).expect("dirs");
    write_orders(&dir.path().join("jobs/data/orders.csv"), n);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "state: {{ url: \"sqlite://state/state.db\" }}\ncustomerio:\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  track_url: {url}\n\
             track: {{ rate_limit_per_sec: {RATE}, batch: {{ max_items: 100000, max_bytes: {MAX_BYTES} }} }}\n"
        ),
    )
    .expect("config");
    std::fs::write(
        dir.path().join("jobs/orders.yaml"),
        "source: { csv: { path: data/orders.csv } }\ntrack:\n  identifier: { id: customer_id }\n  name: purchase\n  timestamp: ordered_at\n  event_id: order_id\n  data:\n    total: { column: total, as: number }\n",
    )
    .expect("job");
    let per_batch = items_per_full_batch(dir.path(), n);
    let best = RATE as f64 * per_batch;

    let mut sim = std::process::Command::new(bin)
        .args([
            "--quiet",
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--rate-limit-per-sec", &RATE.to_string(), "--count-only"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the simulator");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = sim.try_wait() {
            panic!("the simulator exited ({status}) before listening");
        }
        assert!(
            Instant::now() < deadline,
            "the simulator never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let out = std::process::Command::new(bin)
        .current_dir(dir.path())
        .args(["--quiet", "--config", "config.yaml", "backfill", "orders"])
        .args(["--from", "2000-01-01", "--to", "2020-01-01", "--json"])
        .env("CIO_SITE_ID", "demo-site")
        .env("CIO_TRACK_API_KEY", "demo-track-key")
        .output()
        .expect("run the backfill");
    let wall = started.elapsed();
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(
        out.status.success(),
        "the backfill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let delivered = report["rows_delivered"].as_u64().unwrap_or(0);
    let requests = report["requests"].as_u64().unwrap_or(0);
    let retries = report["retries"].as_u64().unwrap_or(0);
    let secs = report["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let rate = delivered as f64 / secs.max(1e-3);
    println!(
        "backfill of {n} events, simulator at {RATE} req/s in its own process: {delivered} delivered in {secs:.1} s ({:.1} s with process start) over {requests} requests ({retries} retries): {rate:.0} rows/s = {:.1}% of the best possible {best:.0} rows/s ({RATE} req/s x {per_batch:.0} items per full {MAX_BYTES}-byte batch)",
        wall.as_secs_f64(),
        100.0 * rate / best
    );
}
