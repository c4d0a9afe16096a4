//! The receiver's HTTP side and its writer: answer each request only once its event is
//! committed, sharing transactions between concurrent requests.
//!
//! Owns: the one route (`POST webhooks.path`), the order of checks (size from
//! `Content-Length` → body read with a running limit → signature → store), the status of each
//! answer, and the writer task: requests hand their event to it over a channel, and it commits
//! whatever has queued while the previous transaction ran, so under load many events share
//! one commit and an idle receiver adds no wait. Every answer comes within [`ANSWER_DEADLINE`]
//! (Customer.io gives up after 4 s and then backlogs everything behind that event).
//!
//! Status codes follow Customer.io's retry rules (customerio-objects.md §4.3): 200 once stored
//! or already stored; 401 unsigned, badly signed or stale; 413 over `webhooks.max_body_bytes`;
//! 503 when the database did not commit in time (never 500 or 429, which add an hour's wait).
//! Must not: parse event columns (`store.rs`), check signatures itself (`verify.rs`), or serve
//! anything else (no other route: this listener may face the internet through a proxy).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::WebhookError;
use super::store::{MessageEvent, WebhookStore};
use super::verify;
use crate::config::{Secret, WebhookSettings};
use crate::observe::{self, events};

/// The longest a request waits for its commit before it is answered 503: under Customer.io's
/// 4-second timeout with room for the network.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(3);

/// The longest one transaction may take before its events are answered 503: events queued
/// behind it still get an answer within [`ANSWER_DEADLINE`] of their arrival.
pub const COMMIT_DEADLINE: Duration = Duration::from_millis(2500);

/// The most events one transaction takes; more wait for the next one.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// Events waiting for the writer; a sender beyond this waits (within its deadline).
const QUEUE: usize = 10_000;

/// Counters a test or benchmark reads to see what the receiver did (the metrics hold the
/// same facts for operators).
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Verified events handed to the writer.
    pub queued: AtomicU64,
    /// Transactions the writer ran (committed or not).
    pub transactions: AtomicU64,
    /// Events newly stored.
    pub stored: AtomicU64,
    /// Events acknowledged because their `event_id` was already stored.
    pub duplicates: AtomicU64,
}

impl ReceiverStats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::SeqCst)
    }
}

/// What the writer says of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Stored,
    Duplicate,
}

struct Job {
    event: MessageEvent,
    reply: oneshot::Sender<Result<Written, ()>>,
}

struct App {
    keys: Vec<Secret>,
    tolerance: Duration,
    max_body_bytes: usize,
    queue: mpsc::Sender<Job>,
    stats: Arc<ReceiverStats>,
}

/// Binds `webhooks.listen`, naming the key when it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })
}

/// Serves the receiver on `listener` into `store` until `shutdown` completes; then stops
/// accepting, lets requests in flight finish and the writer commit what they queued.
pub async fn serve(
    listener: TcpListener,
    settings: &WebhookSettings,
    store: WebhookStore,
    stats: Arc<ReceiverStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let addr = listener
        .local_addr()
        .map_err(|source| WebhookError::Serve { source })?;
    let (queue, jobs) = mpsc::channel(QUEUE);
    let writer = tokio::spawn(write_loop(store, jobs, stats.clone()));
    let app = Arc::new(App {
        keys: settings.signing_keys.clone(),
        tolerance: settings.tolerance,
        max_body_bytes: settings.max_body_bytes,
        queue,
        stats,
    });
    let router = Router::new()
        .route(&settings.path, post(receive))
        .with_state(app);
    tracing::info!(listen = %addr, path = %settings.path, "Receiving Customer.io reporting webhooks.");
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| WebhookError::Serve { source });
    // The router, and with it the last sender, is gone: the writer drains the queue and ends.
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "The webhook writer panicked.");
    }
    tracing::info!(listen = %addr, "Stopped receiving webhooks.");
    served
}

fn refuse(status: StatusCode, reason: &'static str, detail: String) -> Response {
    observe::emit(events::WebhookRefused {
        status: status.as_u16(),
        reason,
        detail: &detail,
    });
    (status, format!("{detail}\n")).into_response()
}

fn unavailable(reason: &'static str) -> Response {
    observe::emit(events::WebhookUnavailable { reason });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the event could not be stored now; send it again\n",
    )
        .into_response()
}

async fn receive(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let arrived = Instant::now();
    let limit = app.max_body_bytes;
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over {limit} bytes (`webhooks.max_body_bytes`)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let mut raw = Vec::with_capacity(declared.map_or(4096, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                if raw.len() + bytes.len() > limit {
                    return too_large();
                }
                raw.extend_from_slice(&bytes);
            }
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("the body could not be read: {e}"),
                );
            }
        }
    }
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(refusal) = verify::verify(
        &app.keys,
        header_text("x-cio-timestamp"),
        header_text("x-cio-signature"),
        &raw,
        now,
        app.tolerance,
    ) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            refusal.reason(),
            refusal.to_string(),
        );
    }
    let (reply, answer) = oneshot::channel();
    let job = Job {
        event: MessageEvent::from_body(&raw),
        reply,
    };
    let deadline = tokio::time::Instant::from_std(arrived + ANSWER_DEADLINE);
    let written = tokio::time::timeout_at(deadline, async {
        app.queue.send(job).await.map_err(|_| "stopping")?;
        app.stats.queued.fetch_add(1, Ordering::SeqCst);
        match answer.await {
            Ok(Ok(w)) => Ok(w),
            Ok(Err(())) => Err("store_failed"),
            Err(_) => Err("stopping"),
        }
    })
    .await;
    match written {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(reason)) => unavailable(reason),
        Err(_) => unavailable("timeout"),
    }
}

/// Commits queued events, a batch per transaction, until every sender is gone.
async fn write_loop(store: WebhookStore, mut jobs: mpsc::Receiver<Job>, stats: Arc<ReceiverStats>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_EVENTS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        write_batch(&store, batch, &stats).await;
    }
}

async fn write_batch(store: &WebhookStore, batch: Vec<Job>, stats: &ReceiverStats) {
    // One row per id: a retry that arrives beside its original shares its fate.
    let mut seen: HashSet<&str> = HashSet::with_capacity(batch.len());
    let unique: Vec<&MessageEvent> = batch
        .iter()
        .filter(|job| seen.insert(job.event.event_id.as_str()))
        .map(|job| &job.event)
        .collect();
    let started = Instant::now();
    stats.transactions.fetch_add(1, Ordering::SeqCst);
    let result = tokio::time::timeout(
        COMMIT_DEADLINE,
        store.insert_batch(&unique, crate::state::now_ms()),
    )
    .await;
    let outcome = match result {
        Ok(Ok(new)) => Ok(new),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the transaction did not commit within {} ms",
            COMMIT_DEADLINE.as_millis()
        )),
    };
    drop(unique);
    drop(seen);
    match outcome {
        Ok(mut new) => {
            let mut stored = 0u64;
            let mut duplicates = 0u64;
            let replies: Vec<_> = batch
                .into_iter()
                .map(|job| {
                    // The first of an id in the batch takes the "stored"; repeats are duplicates.
                    let w = if new.remove(&job.event.event_id) {
                        stored += 1;
                        Written::Stored
                    } else {
                        duplicates += 1;
                        Written::Duplicate
                    };
                    (job.reply, w)
                })
                .collect();
            stats.stored.fetch_add(stored, Ordering::SeqCst);
            stats.duplicates.fetch_add(duplicates, Ordering::SeqCst);
            observe::emit(events::WebhookBatchCommitted {
                events: stored + duplicates,
                stored,
                duplicates,
                elapsed: started.elapsed(),
            });
            for (reply, w) in replies {
                // A requester that gave up (deadline) was answered 503; the row is kept, and
                // its retry is acknowledged as a duplicate.
                let _ = reply.send(Ok(w));
            }
        }
        Err(error) => {
            observe::emit(events::WebhookStoreFailed {
                events: batch.len() as u64,
                error: &error,
            });
            for job in batch {
                let _ = job.reply.send(Err(()));
            }
        }
    }
}
