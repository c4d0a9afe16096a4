//! The middleware in front of every simulator route: decides auth, faults and rate limits,
//! adds latency, drops connections, and records each request with the status it got.
//!
//! Owns the per-request fault order documented on `Faults`; must not parse bodies or know any
//! route's semantics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::state::{Shared, Verdict};
use super::{Api, ConnKill, RequestRecord, respond};

pub(crate) async fn gate(State(sim): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let now = Instant::now();
    let path = req.uri().path().to_owned();
    let api = if path.starts_with("/v1/") {
        Api::App
    } else {
        Api::Track
    };
    let auth_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let auth_ok = match api {
        Api::Track => sim.track_auth_ok(auth_header),
        Api::App => sim.app_auth_ok(auth_header),
    };
    let (verdict, latency) = {
        let mut st = sim.lock();
        (st.verdict(api == Api::App, auth_ok, now), st.faults.latency)
    };
    let kill = req.extensions().get::<ConnKill>().cloned();
    let record = RequestRecord {
        at: now.saturating_duration_since(sim.started),
        method: req.method().as_str().to_owned(),
        path,
        status: 0,
        api,
        auth_ok,
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let response = match verdict {
        Verdict::DropBefore => return drop_connection(&sim, record, kill).await,
        Verdict::Fail {
            status,
            retry_after,
        } => respond::canned(api, status, retry_after),
        Verdict::Unauthorized => respond::unauthorized(api),
        Verdict::RateLimited { limit, retry_after } => respond::rate_limited(
            format!("rate limited to {limit} requests per 1s (simulated)"),
            Some(retry_after),
        ),
        Verdict::Proceed { drop_after } => {
            let response = next.run(req).await;
            if drop_after {
                return drop_connection(&sim, record, kill).await;
            }
            response
        }
    };
    let status = response.status().as_u16();
    tracing::debug!(status, path = %record.path, "Simulator answered.");
    sim.lock().requests.push(RequestRecord { status, ..record });
    response
}

/// Records the request with status 0 and closes its connection; never returns normally.
async fn drop_connection(sim: &Shared, record: RequestRecord, kill: Option<ConnKill>) -> Response {
    tracing::debug!(path = %record.path, "Simulator dropping connection.");
    sim.lock().requests.push(record);
    match kill {
        Some(kill) => {
            kill.kill();
            // The connection task drops this future together with the socket.
            std::future::pending::<Response>().await
        }
        // Only reachable if the router is served by something other than our accept loop;
        // the closest we can do is an error status.
        None => respond::app_error(503, "connection drop not supported here"),
    }
}
