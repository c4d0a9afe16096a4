//! Local Customer.io simulator: the Track API (v1 + v2) and the App API (`/v1`) on one port.
//!
//! Owns the public handle ([`Simulator`]), its configuration and fault knobs, the record types
//! tests assert on, and the accept loop that can really drop a TCP connection. It also posts
//! reporting webhooks ([`webhooks::WebhookPoster`]). It stands in for
//! Customer.io in unit and integration tests, the demo and `cio-sync simulate --listen`.
//!
//! It must not depend on any other cio-sync module (the simulator checks the daemon, so it may not
//! share the daemon's request building or validation), and must never talk to the real
//! Customer.io.
//!
//! # Layout
//! - `mod.rs`: public types, start/stop, accept loop.
//! - `state.rs`: shared mutable state, fault decisions, recording.
//! - `gate.rs`: middleware in front of every route (holds, auth, faults, latency, request
//!   records).
//! - `respond.rs`: canned response bodies in Customer.io's shapes.
//! - `track.rs`: Track routes, validation and normalisation into [`RecordedOp`].
//! - `app.rs`: App routes over the fixtures (and the reporting webhooks created through them).
//! - `webhooks.rs`: playing Customer.io's reporting-webhook sender: signed (or badly signed,
//!   stale, repeated) events posted to a URL, with Customer.io's retry rule.

mod app;
mod gate;
mod respond;
mod state;
mod track;
pub mod webhooks;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use state::Shared;

/// Which Customer.io data centre the simulated account lives in; only changes what
/// `GET /api/v1/accounts/region` answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    #[default]
    Us,
    Eu,
}

impl Region {
    /// The lowercase name the region endpoint reports (`"us"` / `"eu"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Us => "us",
            Region::Eu => "eu",
        }
    }

    /// The Track host the region endpoint reports for this region.
    pub fn track_url(self) -> &'static str {
        match self {
            Region::Us => "https://track.customer.io",
            Region::Eu => "https://track-eu.customer.io",
        }
    }
}

/// Credentials, region and initial faults of one simulated workspace.
#[derive(Clone)]
pub struct SimConfig {
    pub site_id: String,
    pub track_api_key: String,
    pub app_api_key: String,
    pub region: Region,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            site_id: "demo-site".to_owned(),
            track_api_key: "demo-track-key".to_owned(),
            app_api_key: "demo-app-key".to_owned(),
            region: Region::Us,
            faults: Faults::default(),
        }
    }
}

// Keys are fake in practice, but the config may be built from a user's environment in the demo,
// so they never reach a log.
impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("site_id", &self.site_id)
            .field("track_api_key", &"**REDACTED**")
            .field("app_api_key", &"**REDACTED**")
            .field("region", &self.region)
            .field("faults", &self.faults)
            .finish()
    }
}

/// Random and rate faults applied to Track and App requests alike.
///
/// Per request, after any hold ([`Simulator::hold_from`]), in this order: `fail_next` / `app_fault` (deterministic), then `drop_before_rate`,
/// then `error_5xx_rate`, then auth, then the rate limit, then the route itself, then
/// `drop_after_rate`. Random draws happen only for rates above zero, from one RNG seeded with
/// `seed` (re-seeded by [`Simulator::set_faults`]), so a single-threaded client sees the same
/// faults on every run.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fraction (0.0..=1.0) of requests answered 500, 502 or 503 without being applied.
    pub error_5xx_rate: f64,
    /// Fraction of requests whose connection is closed before anything is applied.
    pub drop_before_rate: f64,
    /// Fraction of requests that are applied and then lose their connection before the response,
    /// which is what makes client retries send duplicates.
    pub drop_after_rate: f64,
    /// Requests per second per API (Track and App have separate buckets, as in Customer.io):
    /// a token bucket refilled at this rate that holds a tenth of a second's worth (at least
    /// one) plus one, so only a client pacing itself at this rate avoids 429s. Over it: 429
    /// with `Retry-After`.
    pub rate_limit_per_sec: Option<u32>,
    /// Seconds sent in `Retry-After` on rate-limited answers; 0 means 1.
    pub retry_after_secs: u64,
    /// Added before every response (including fault responses and drops).
    pub latency: Duration,
    /// Seed of the fault RNG.
    pub seed: u64,
}

/// How a person operation reached the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Transport {
    V1,
    V2,
}

/// Which API a request was addressed to (by path: `/v1/…` is App, everything else Track).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Api {
    Track,
    App,
}

/// What a recorded operation changed: a person, or a custom object (v2 `type: object`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Entity {
    Person,
    Object,
}

/// One accepted operation, normalised so v1 and v2 deliveries compare equal apart from
/// `transport`. Object operations have `entity: Object`, `identifiers` of
/// `object_type_id` + `object_id` (or `cio_object_id`), and their `attributes` (identify) or
/// `cio_relationships` (relationship changes) in `attributes`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RecordedOp {
    pub entity: Entity,
    pub transport: Transport,
    /// `identify`, `event`, `page`, `screen`, `delete`, `suppress`, `unsuppress`; v2 also
    /// `add_device`, `delete_device`, `add_relationships`, `delete_relationships`, and both
    /// transports `merge` (their payload is kept in `attributes`).
    pub action: String,
    /// One of `id` / `email` / `phone` / `cio_id` (bare, without `cio_`); empty for anonymous
    /// events and merges.
    pub identifiers: BTreeMap<String, String>,
    pub anonymous_id: Option<String>,
    /// Event name (trimmed, as Customer.io stores it).
    pub name: Option<String>,
    pub event_id: Option<String>,
    /// v2 `timestamp`, v1 event `timestamp`, v1 identify `_timestamp` (removed from attributes).
    pub timestamp: Option<i64>,
    /// Identify attributes, or the event data (v1 `data`, v2 `attributes`).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// One HTTP request as the simulator answered it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RequestRecord {
    /// Arrival time since the simulator started.
    pub at: Duration,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Status sent; 0 when the connection was dropped instead.
    pub status: u16,
    pub api: Api,
    pub auth_ok: bool,
}

/// Reject every v2 batch item / v1 call whose `identifiers.id` equals `identifier_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectRule {
    pub identifier_id: String,
    /// Sent as the v2 item `reason` and as the v1 `meta.errors[0]`.
    pub reason: String,
}

/// A segment member as the App membership endpoint lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub id: Option<String>,
    pub email: Option<String>,
    pub cio_id: String,
}

/// Deterministic App API faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppFault {
    /// The n-th App request (1-based) counted from when this fault is installed gets one 429.
    RateLimitOnRequest { n: usize, retry_after_secs: u64 },
    /// The membership page of `segment_id` starting at `page_start_offset` always fails.
    FailMembershipPage {
        segment_id: i64,
        page_start_offset: usize,
        status: u16,
    },
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator: cannot listen on {addr}: {source}; pick a free port or use 127.0.0.1:0")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("simulator: cannot read the bound address: {source}")]
    LocalAddr {
        #[source]
        source: std::io::Error,
    },
}

/// Request extension telling the connection task to close its socket without answering.
///
/// A handler that wants a "dropped connection" notifies this and never returns; the connection
/// task then drops the hyper connection, which closes the TCP stream, so the client sees a
/// transport error rather than an HTTP status.
#[derive(Clone)]
pub(crate) struct ConnKill(Arc<Notify>);

impl ConnKill {
    pub(crate) fn kill(&self) {
        // notify_one stores a permit, so the signal is not lost if the task is mid-poll.
        self.0.notify_one();
    }
}

/// A running simulator; stops when [`Simulator::shutdown`] is awaited or the handle is dropped.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Simulator {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start(config: SimConfig) -> Result<Simulator, SimError> {
        Simulator::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts on `addr`, serving Track and App routes on the same port.
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> Result<Simulator, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::LocalAddr { source })?;
        let shared = Arc::new(Shared::new(config));
        let router = build_router(shared.clone());
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            router,
            cancel.clone(),
            tracker.clone(),
        ));
        tracing::debug!(addr = %local, "Simulator listening.");
        Ok(Simulator {
            shared,
            addr: local,
            cancel,
            tracker,
        })
    }

    /// `http://127.0.0.1:PORT`, the base URL of both APIs.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address (useful when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the faults and re-seeds the fault RNG from `f.seed`; refills the rate buckets.
    pub fn set_faults(&self, f: Faults) {
        let mut st = self.shared.lock();
        let now = st.now();
        st.set_faults(f, now);
    }

    /// Stops the simulator's clock, which rate buckets and [`RequestRecord::at`] read: until
    /// [`Self::advance_clock`], no time passes for them however long the test takes.
    pub fn pause_clock(&self) {
        self.shared.lock().pause_clock();
    }

    /// Moves a paused clock forward (refilling rate buckets accordingly); no effect while the
    /// clock runs.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().advance_clock(by);
    }

    /// Holds every request that arrives once `n` operations have been accepted: it waits at
    /// the gate, unanswered and undecided, until [`Self::release`]. A test stops a client at a
    /// known count this way (then kills or signals it) instead of racing it with a timer.
    pub fn hold_from(&self, n: usize) {
        self.shared.lock().hold_from = Some(n);
        self.shared.hold_changed.notify_waiters();
    }

    /// Requests waiting at the hold right now.
    pub fn held(&self) -> usize {
        self.shared.lock().held
    }

    /// Lifts the hold: waiting requests go on as if they had just arrived.
    pub fn release(&self) {
        self.shared.lock().release();
        self.shared.hold_changed.notify_waiters();
    }

    /// Every accepted operation in arrival order, without duplicates of an accepted event id.
    pub fn operations(&self) -> Vec<RecordedOp> {
        self.shared.lock().ops.clone()
    }

    /// Every v2 item of every accepted `/api/v2/batch` or `/api/v2/entity` request, exactly as
    /// it arrived (refused items included, with the rest of their request), in arrival order,
    /// while recording is on: what tests check against Customer.io's OpenAPI schemas.
    pub fn v2_items(&self) -> Vec<serde_json::Value> {
        self.shared.lock().v2_items.clone()
    }

    /// Object type fixtures for `GET /v1/object_types` (`{"id":"1","name":"Accounts"}`…).
    pub fn set_object_types(&self, types: Vec<serde_json::Value>) {
        self.shared.lock().object_types = types;
    }

    /// Any v2 batch holding an item whose `identifiers.id` or `identifiers.object_id` equals
    /// `id` is refused as a whole with HTTP 400, its `errors` naming those items by
    /// `batch_index` (as Customer.io does for some invalid items): nothing in it is applied.
    pub fn refuse_batch_naming(&self, id: String, reason: String) {
        self.shared.lock().refuse_400.insert(id, reason);
    }

    /// Number of accepted operations, also counted while recording is off.
    pub fn operation_count(&self) -> usize {
        self.shared.lock().op_count
    }

    /// Turns storing of [`RecordedOp`]s on (the default) or off; off keeps only counts and
    /// dedupe memory, for throughput benchmarks that would otherwise measure our memory.
    pub fn record_operations(&self, on: bool) {
        self.shared.lock().record_ops = on;
    }

    /// Events whose id had already been accepted; answered as success and otherwise ignored.
    pub fn duplicate_events(&self) -> Vec<RecordedOp> {
        self.shared.lock().dups.clone()
    }

    /// Every request answered so far, in arrival order (including faults; dropped connections
    /// have status 0). Requests still in flight are not listed yet.
    pub fn requests(&self) -> Vec<RequestRecord> {
        let mut requests = self.shared.lock().requests.clone();
        // Stored in completion order; concurrent requests with latency finish out of order.
        requests.sort_by_key(|r| r.at);
        requests
    }

    /// Adds a rule rejecting items / calls for one `identifiers.id`.
    pub fn reject_items(&self, rule: RejectRule) {
        self.shared
            .lock()
            .reject_rules
            .insert(rule.identifier_id, rule.reason);
    }

    /// Any v2 batch (or entity) containing an item with `identifiers.id == id` is answered
    /// `status` as a whole and nothing in it is applied.
    pub fn fail_batch_containing(&self, id: String, status: u16) {
        self.shared.lock().fail_batches.insert(id, status);
    }

    /// Removes all reject rules, `fail_batch_containing` and `refuse_batch_naming` entries.
    pub fn clear_rejections(&self) {
        let mut st = self.shared.lock();
        st.reject_rules.clear();
        st.fail_batches.clear();
        st.refuse_400.clear();
    }

    /// The next `n` Track requests are answered `status` (with `Retry-After` when given) before
    /// auth or anything else is looked at; nothing is applied. Calls queue up.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        if n > 0 {
            self.shared
                .lock()
                .fail_next
                .push_back((n, status, retry_after));
        }
    }

    /// Clears operations, duplicates, request records and segment add/remove records. The
    /// dedupe memory of accepted event ids is server state and survives (see [`Self::reset_dedupe`]).
    pub fn reset_records(&self) {
        let mut st = self.shared.lock();
        st.ops = Vec::new();
        st.dups = Vec::new();
        st.requests = Vec::new();
        st.segment_adds = Vec::new();
        st.segment_removes = Vec::new();
        st.v2_items = Vec::new();
        st.op_count = 0;
    }

    /// Forgets every accepted event id, as if Customer.io's dedupe window had passed.
    pub fn reset_dedupe(&self) {
        self.shared.lock().seen_event_ids.clear();
    }

    /// Segment fixtures (`segmentResponseObject` JSON objects with an integer `id`).
    pub fn set_segments(&self, segments: Vec<serde_json::Value>) {
        self.shared.lock().segments = segments;
    }

    /// Members of one segment, in the order the membership endpoint pages them.
    pub fn set_membership(&self, segment_id: i64, members: Vec<Member>) {
        self.shared.lock().membership.insert(segment_id, members);
    }

    /// Campaign fixtures (`campaignObject` JSON objects with an integer `id`).
    pub fn set_campaigns(&self, campaigns: Vec<serde_json::Value>) {
        self.shared.lock().campaigns = campaigns;
    }

    /// The v1 metrics series of one campaign (index 0 oldest).
    pub fn set_campaign_metrics(&self, campaign_id: i64, series: BTreeMap<String, Vec<i64>>) {
        self.shared.lock().metrics.insert(campaign_id, series);
    }

    /// Installs a deterministic App fault (faults accumulate; see [`Self::clear_app_faults`]).
    pub fn app_fault(&self, f: AppFault) {
        self.shared.lock().add_app_fault(f);
    }

    /// Removes all App faults.
    pub fn clear_app_faults(&self) {
        self.shared.lock().app_faults.clear();
    }

    /// `(segment_id, id_type, identifier)` for every manual-segment add, in arrival order.
    pub fn segment_members_added(&self) -> Vec<(i64, String, String)> {
        self.shared.lock().segment_adds.clone()
    }

    /// `(segment_id, id_type, identifier)` for every manual-segment removal, in arrival order.
    pub fn segment_members_removed(&self) -> Vec<(i64, String, String)> {
        self.shared.lock().segment_removes.clone()
    }

    /// The reporting webhooks created or updated through the App API, in creation order.
    pub fn reporting_webhooks(&self) -> Vec<serde_json::Value> {
        self.shared.lock().reporting_webhooks.clone()
    }

    /// Stops accepting, closes idle connections, and waits (at most about a second) for
    /// in-flight requests to finish.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // A test that forgets shutdown() must not leave the port serving.
        self.cancel.cancel();
    }
}

fn build_router(shared: Arc<Shared>) -> Router {
    let routes = track::routes().merge(app::routes());
    routes
        // Bodies are size-checked by the routes themselves so that an oversized v2 batch gets
        // Customer.io's 413 JSON; this limit only guards the simulator's memory.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            gate::gate,
        ))
        .with_state(shared)
}

/// Accepts connections until cancelled; one task per connection.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tracker.spawn(serve_connection(stream, router.clone(), cancel.clone()));
            }
            Err(error) => {
                // Usually EMFILE under a connection storm; back off briefly instead of spinning.
                tracing::debug!(error = %error, "Simulator accept failed.");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Serves one keep-alive HTTP/1 connection; drops it at once when a handler asks to.
async fn serve_connection(stream: TcpStream, router: Router, cancel: CancellationToken) {
    // Small request/response pairs on keep-alive connections: don't wait for Nagle.
    let _ = stream.set_nodelay(true);
    let kill = ConnKill(Arc::new(Notify::new()));
    let kill_for_requests = kill.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(kill_for_requests.clone());
        let mut router = router.clone();
        async move {
            let response = tower::Service::call(&mut router, req).await;
            response.map_err(|never: Infallible| match never {})
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(error = %error, "Simulator connection ended with an error.");
            }
        }
        _ = kill.0.notified() => {
            // Returning drops `conn` and with it the socket, mid-request.
        }
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}
