//! Answers that are not Customer.io's: a 200 carrying a proxy's HTML page, and a 200 whose body
//! never ends. Both APIs, end to end through the runner, against a tiny local server that
//! answers the Track self-check properly and every other request with the fault.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cio_sync::config::DatabaseUrl;
use cio_sync::http::{MAX_APP_ANSWER_BYTES, MAX_TRACK_ANSWER_BYTES};
use cio_sync::state::{Outcome, StateStore};

use crate::helpers::*;

/// What the local server answers to everything but the Track self-check.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `200 text/html`: a captive portal's login page.
    HtmlPage,
    /// `200 application/json` whose body is whitespace that goes on for up to [`ENDLESS_BYTES`].
    Endless,
}

/// How far the "endless" body would go if nobody stopped reading: far past the cap, and far
/// past what a test may hold in memory, but finite so the server task ends by itself.
const ENDLESS_BYTES: u64 = 512 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
static SPACES: [u8; CHUNK] = [b' '; CHUNK];

/// What one endless body did: how much the server handed to the socket, whether it ran to its
/// end, and whether it was dropped (the client went away).
#[derive(Debug, Default)]
struct StreamProbe {
    sent: AtomicU64,
    finished: AtomicBool,
    dropped: AtomicBool,
}

struct EndlessBody {
    probe: Arc<StreamProbe>,
}

impl futures::Stream for EndlessBody {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let sent = self.probe.sent.load(Ordering::SeqCst);
        if sent >= ENDLESS_BYTES {
            self.probe.finished.store(true, Ordering::SeqCst);
            return Poll::Ready(None);
        }
        self.probe.sent.fetch_add(CHUNK as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Bytes::from_static(&SPACES))))
    }
}

impl Drop for EndlessBody {
    fn drop(&mut self) {
        self.probe.dropped.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Seen {
    /// Paths of the faulted requests, in order.
    paths: Mutex<Vec<String>>,
    /// One probe per endless body served.
    streams: Mutex<Vec<Arc<StreamProbe>>>,
}

struct FaultServer {
    url: String,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    async fn start(fault: Fault) -> FaultServer {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(
                "/api/v1/accounts/region",
                get(|| async {
                    axum::Json(serde_json::json!({"url": "https://track.customer.io", "region": "us", "environment_id": 1}))
                }),
            )
            .fallback(move |State(seen): State<Arc<Seen>>, req: Request| async move {
                answer(fault, &seen, req)
            })
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault server");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("fault server stopped: {e}");
            }
        });
        FaultServer { url, seen, task }
    }

    fn paths(&self) -> Vec<String> {
        self.seen.paths.lock().expect("paths").clone()
    }

    fn streams(&self) -> Vec<Arc<StreamProbe>> {
        self.seen.streams.lock().expect("streams").clone()
    }

    /// Waits until every endless body served so far was dropped (the client hung up), and
    /// returns their probes.
    async fn wait_for_streams_dropped(&self) -> Vec<Arc<StreamProbe>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let streams = self.streams();
            if !streams.is_empty() && streams.iter().all(|p| p.dropped.load(Ordering::SeqCst)) {
                return streams;
            }
            assert!(
                !self.task.is_finished(),
                "the fault server stopped while waiting for its bodies to be dropped"
            );
            assert!(
                Instant::now() < deadline,
                "waited 20 s for the client to hang up on every endless body: {streams:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn answer(fault: Fault, seen: &Seen, req: Request) -> Response {
    seen.paths
        .lock()
        .expect("paths")
        .push(req.uri().path().to_string());
    match fault {
        Fault::HtmlPage => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>Welcome</title></head><body><form action=\"/login\">Accept the terms to continue</form></body></html>",
        )
            .into_response(),
        Fault::Endless => {
            let probe = Arc::new(StreamProbe::default());
            seen.streams.lock().expect("streams").push(probe.clone());
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(EndlessBody { probe }),
            )
                .into_response()
        }
    }
}

/// config.yaml with both APIs pointed at `url`, three attempts per request and short waits.
fn write_config(env: &TestEnv, url: &str, max_attempts: u32) {
    let text = format!(
        "state: {{ url: \"sqlite://state/state.db\" }}\n\
         customerio:\n  region: us\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  app_api_key: ${{CIO_APP_API_KEY}}\n  track_url: {url}\n  app_url: {url}\n\
         jobs_dir: jobs\n\
         track: {{ concurrency: 1, timeout_secs: 30, batch: {{ max_items: 100, max_bytes: 480000 }} }}\n\
         app: {{ timeout_secs: 30 }}\n\
         retry: {{ max_attempts: {max_attempts}, base_delay_ms: 10, max_wait_secs: 1, max_total_wait_secs: 60 }}\n"
    );
    std::fs::write(env.config_path(), text).expect("config.yaml");
}

async fn checkpoint_of(env: &TestEnv, job: &str) -> Option<cio_sync::source::Checkpoint> {
    let state = StateStore::open(&DatabaseUrl::new(env.state_url()))
        .await
        .expect("state database");
    state
        .checkpoint(job, &cio_sync::state::Scope::Job)
        .await
        .expect("read the checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_200_carrying_an_html_page_is_retried_then_fails_the_run_without_a_checkpoint() {
    let server = FaultServer::start(Fault::HtmlPage).await;
    let env = TestEnv::new().await;
    write_config(&env, &server.url, 3);
    env.write_data("people.csv", &people_csv(5));
    env.write_job("people", PEOPLE_JOB);

    let report = env.run("people").await;

    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert_eq!(report.counts.rows_delivered, 0, "{report:?}");
    let error = report.error.clone().unwrap_or_default();
    assert!(
        error.contains("not JSON")
            && error.contains("text/html")
            && error.contains("gave up after 3 attempts"),
        "{error}"
    );
    assert_eq!(
        server.paths(),
        ["/api/v2/batch"; 3],
        "the batch was retried, and nothing else was sent"
    );
    assert!(
        checkpoint_of(&env, "people").await.is_none(),
        "the checkpoint did not move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_200_carrying_an_html_page_is_retried_then_fails_the_pull() {
    let server = FaultServer::start(Fault::HtmlPage).await;
    let env = TestEnv::new().await;
    write_config(&env, &server.url, 3);
    env.write_job("segments", "pull:\n  segments: true\n");

    let report = env.run("segments").await;

    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.clone().unwrap_or_default();
    assert!(
        error.contains("GET /v1/segments")
            && error.contains("not JSON")
            && error.contains("gave up after 3 attempts"),
        "{error}"
    );
    assert_eq!(server.paths(), ["/v1/segments"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_track_answer_is_cut_at_the_cap_and_fails_the_run() {
    let server = FaultServer::start(Fault::Endless).await;
    let env = TestEnv::new().await;
    write_config(&env, &server.url, 2);
    env.write_data("people.csv", &people_csv(5));
    env.write_job("people", PEOPLE_JOB);

    let report = env.run("people").await;

    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    assert_eq!(report.counts.rows_delivered, 0);
    let error = report.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("longer than {MAX_TRACK_ANSWER_BYTES} bytes"))
            && error.contains("stopped reading"),
        "{error}"
    );
    assert_eq!(server.paths(), ["/api/v2/batch"; 2]);
    assert_stopped_reading(&server, MAX_TRACK_ANSWER_BYTES).await;
    assert!(checkpoint_of(&env, "people").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_app_answer_is_cut_at_the_cap_and_fails_the_pull() {
    let server = FaultServer::start(Fault::Endless).await;
    let env = TestEnv::new().await;
    write_config(&env, &server.url, 2);
    env.write_job("segments", "pull:\n  segments: true\n");

    let report = env.run("segments").await;

    assert_eq!(report.outcome, Outcome::Failed, "{report:?}");
    let error = report.error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("longer than {MAX_APP_ANSWER_BYTES} bytes")),
        "{error}"
    );
    assert_eq!(server.paths(), ["/v1/segments"; 2]);
    assert_stopped_reading(&server, MAX_APP_ANSWER_BYTES).await;
}

/// Every endless body was abandoned by the client: dropped before its end, with no more handed
/// to the socket than the cap plus what socket buffers hold.
async fn assert_stopped_reading(server: &FaultServer, cap: usize) {
    for probe in server.wait_for_streams_dropped().await {
        let sent = probe.sent.load(Ordering::SeqCst);
        assert!(
            !probe.finished.load(Ordering::SeqCst),
            "the server ran out of body ({sent} bytes) before the client stopped reading"
        );
        assert!(
            sent < 2 * cap as u64 + 32 * 1024 * 1024,
            "the client kept reading: the server handed {sent} bytes to the socket"
        );
    }
}
