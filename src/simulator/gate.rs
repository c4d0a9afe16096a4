//! The middleware in front of every simulator route: holds requests while a test asks it to,
//! decides auth, faults and rate limits, adds latency, drops connections, and records each request with the status it got.
//!
//! Owns the per-request fault order documented on `Faults`; must not parse bodies or know any
//! route's semantics.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::state::{Shared, Verdict};
use super::{Api, ConnKill, RequestRecord, respond};

pub(crate) async fn gate(State(sim): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    wait_at_hold(&sim).await;
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
    let (now, verdict, latency) = {
        let mut st = sim.lock();
        let now = st.now();
        (
            now,
            st.verdict(api == Api::App, auth_ok, now),
            st.faults.latency,
        )
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

/// Waits while a test holds requests (`Simulator::hold_from`); returns at once otherwise.
/// A request waits before anything is decided about it, so it arrives when the hold lifts.
async fn wait_at_hold(sim: &Shared) {
    /// Counts one waiting request for `Simulator::held`, until the hold it waits at is
    /// released or its connection goes away and the future is dropped mid-wait.
    struct Waiting<'a> {
        sim: &'a Shared,
        /// The hold epoch this request is counted in.
        epoch: Option<u64>,
    }
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            let mut st = self.sim.lock();
            if self.epoch == Some(st.hold_epoch) {
                st.held = st.held.saturating_sub(1);
            }
        }
    }
    let mut waiting = Waiting { sim, epoch: None };
    loop {
        // Registered before the check, so a release between the check and the await wakes it.
        let changed = sim.hold_changed.notified();
        let mut changed = std::pin::pin!(changed);
        changed.as_mut().enable();
        {
            let mut st = sim.lock();
            if !st.holding() {
                break;
            }
            if waiting.epoch != Some(st.hold_epoch) {
                st.held += 1;
                waiting.epoch = Some(st.hold_epoch);
            }
        }
        changed.await;
    }
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
