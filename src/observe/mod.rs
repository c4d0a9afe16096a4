//! Observing the process: typed internal events, the metrics registry, and the optional HTTP
//! listener for `/metrics`, `/healthz` and `/readyz`.
//!
//! Owns: `events.rs` (each operational fact logs its line and updates its metrics in one
//! call), `metrics.rs` (every metric, its labels, the registry and its encoding), `health.rs`
//! (the liveness handle the scheduler ticks; the shape of a readiness check) and `server.rs`
//! (the listener). Must not: depend on any pipeline stage: every stage may emit events, so
//! this module imports none of them (readiness is a check the caller passes in).

pub mod events;
pub mod health;
pub mod metrics;
pub mod server;

pub use events::{
    BatchSent, CheckpointLag, InternalEvent, JobHistoryLoaded, RateGateWaited, RequestAttempted,
    RequestRetrying, RowDeadLettered, RowSkippedUnchanged, RowsDelivered, RowsRead, RunEnded,
    RunHealth, emit,
};
pub use health::{Liveness, NotLive, ReadyCheck};
pub use metrics::{Api, Metrics, global};
pub use server::{Endpoints, bind, serve};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "cannot listen on {addr} for /metrics, /healthz and /readyz (`http.listen` in config.yaml): {source}; choose a free address or remove the `http:` section"
    )]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the /metrics listener failed: {source}")]
    Serve {
        #[source]
        source: std::io::Error,
    },
}
