//! Reporting-webhook receiver throughput and answer latency, measured end to end.
//!
//! `cargo bench --bench webhook_receive` starts the real receiver on 127.0.0.1:0 over SQLite
//! (a file in a temp folder, like the state database) and then over PostgreSQL
//! (`CIO_SYNC_TEST_PG`, default the local server; a fresh database is created and dropped;
//! `CIO_BENCH_PG=0` skips it), and posts `CIO_BENCH_EVENTS` (default 20000) signed events from
//! `CIO_BENCH_SENDERS` (default 50) concurrent senders, each waiting for its answer before the
//! next post (Customer.io sends one at a time per webhook; many senders stand for many
//! workspaces or a burst after a backlog). It prints accepted events/s, p50/p99/max answer
//! latency, and events per transaction (group commit).
//!
//! Figures, not assertions. Measured 2026-12-03 on the 2-core project machine shared with other
//! builds (`CIO_SYNC_TEST_PG=postgres://postgres@127.0.0.1:5432/test cargo bench --bench
//! webhook_receive`, defaults): SQLite 6193 events/s, p50 5.9 ms, p99 29.7 ms, 18.9 events per
//! transaction; PostgreSQL (local server) 884 events/s, p50 58.9 ms, p99 78.7 ms, 25.0 events
//! per transaction.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cio_sync::config::{DatabaseUrl, Secret, WebhookSettings};
use cio_sync::simulator::webhooks::{Signing, WebhookPoster, sample_events};
use cio_sync::testing::{Server, TestDb};
use cio_sync::webhooks::{self, WebhookStore};
use tokio_util::sync::CancellationToken;

const KEY: &str = "bench-key";

fn var(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn measure(label: &str, url: &str, events: usize, senders: usize) {
    let store = WebhookStore::open(&DatabaseUrl::new(url.to_string()), 8)
        .await
        .expect("open the events database");
    let settings = WebhookSettings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        path: "/cio/webhook".into(),
        signing_keys: vec![Secret::new(KEY)],
        tolerance: Duration::from_secs(300),
        max_body_bytes: 8 * 1024 * 1024,
        database: None,
    };
    let stop = CancellationToken::new();
    let listener = webhooks::bind(settings.listen).await.expect("bind");
    let receiver = webhooks::start_on(
        listener,
        &settings,
        store.clone(),
        stop.clone().cancelled_owned(),
    )
    .expect("start");
    let endpoint = format!("http://{}/cio/webhook", receiver.addr);
    let per = events.div_ceil(senders);
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let poster = WebhookPoster::new(endpoint.clone(), KEY).expect("poster");
            let bodies: Vec<Vec<u8>> = sample_events(&format!("{label}-{s}"), per)
                .into_iter()
                .map(|e| e.to_string().into_bytes())
                .collect();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(bodies.len());
                let mut ok = 0usize;
                for b in &bodies {
                    let t = Instant::now();
                    if let Ok(200) = poster.post(b, Signing::Valid).await {
                        ok += 1;
                    }
                    latencies.push(t.elapsed());
                }
                (ok, latencies)
            })
        })
        .collect();
    let mut ok = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await.expect("sender");
        ok += n;
        lat.extend(l);
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let tx = receiver.stats.transactions.load(Ordering::SeqCst);
    let stored = store.count().await.expect("count");
    println!(
        "{label}: {ok} of {} events accepted in {:.2}s = {:.0} events/s; answer latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {tx} transactions ({:.1} events each); {stored} rows",
        lat.len(),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        ok as f64 / tx.max(1) as f64,
    );
    stop.cancel();
    let _ = receiver.task.await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let events = var("CIO_BENCH_EVENTS", 20_000);
    let senders = var("CIO_BENCH_SENDERS", 50);
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        measure("sqlite", &url, events, senders).await;
        if std::env::var("CIO_BENCH_PG").as_deref() != Ok("0") {
            let db = TestDb::create(Server::Postgres).await;
            measure("postgres", db.url(), events, senders).await;
        }
    });
}
