//! The optional HTTP listener: `/metrics`, `/healthz` and `/readyz`.
//!
//! Owns: binding the configured address (`http.listen`), the three routes and what each
//! answers, and stopping when the future it is given completes. `/metrics` is the registry in
//! the OpenMetrics text format; `/healthz` is 200 while the [`Liveness`] handle is ticked;
//! `/readyz` is 200 while the [`ReadyCheck`] passes within [`READY_TIMEOUT`].
//! Must not: compute metrics or decide readiness itself, or serve anything else (no job
//! control over HTTP: the listener may be reachable by more than the operator).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::ObserveError;
use super::health::{Liveness, ReadyCheck};
use super::metrics::{CONTENT_TYPE, Metrics};

/// How long `/readyz` waits for its check: probes time out after a few seconds, and an answer
/// that slow is itself a sign the state database is not fit to use.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// What the routes answer from.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: &'static Metrics,
    pub liveness: Liveness,
    pub ready: ReadyCheck,
}

/// Binds `addr` for the listener, naming the config key when it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ObserveError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ObserveError::Bind { addr, source })
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ObserveError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ObserveError::Serve { source })?;
    tracing::info!(listen = %addr, "Serving /metrics, /healthz and /readyz.");
    axum::serve(listener, router(endpoints))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ObserveError::Serve { source })
}

fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], e.metrics.encode()).into_response()
}

async fn healthz(State(e): State<Endpoints>) -> Response {
    match e.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, (e.ready)()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the readiness check did not answer within {}s\n",
                READY_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::observe::{RowsRead, events::InternalEvent};

    async fn get_text(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let resp = reqwest::get(format!("http://{addr}{path}"))
            .await
            .expect("the listener answers");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ctype, resp.text().await.expect("a text body"))
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_liveness_and_readiness_and_stops_on_request() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        RowsRead {
            job: "people",
            count: 7,
        }
        .emit_to(metrics);
        let ready = Arc::new(AtomicBool::new(true));
        let flag = ready.clone();
        let endpoints = Endpoints {
            metrics,
            liveness: Liveness::ticked_every(Duration::from_secs(3600)),
            ready: Arc::new(move || {
                let ok = flag.load(Ordering::SeqCst);
                Box::pin(async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("the state database is unreachable".to_string())
                    }
                })
            }),
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, endpoints, stop.clone().cancelled_owned()));

        let (status, ctype, body) = get_text(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(ctype, CONTENT_TYPE);
        assert!(
            body.contains("cio_sync_rows_read_total{job=\"people\"} 7\n"),
            "{body}"
        );
        assert_eq!(get_text(addr, "/healthz").await.0, 200);
        assert_eq!(get_text(addr, "/readyz").await.0, 200);
        ready.store(false, Ordering::SeqCst);
        let (status, _, body) = get_text(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("the state database is unreachable"), "{body}");
        assert_eq!(get_text(addr, "/nothing").await.0, 404);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the listener stops when asked")
            .expect("the task did not panic")
            .expect("serving ended without error");
    }

    #[tokio::test]
    async fn a_taken_address_is_an_error_naming_the_config_key() {
        let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind(addr).await.expect_err("the port is taken");
        let msg = err.to_string();
        assert!(
            msg.contains("http.listen") && msg.contains(&addr.to_string()),
            "{msg}"
        );
    }
}
