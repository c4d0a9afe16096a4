//! The reporting-webhook receiver: Customer.io's message events (sent, opened, clicked,
//! bounced, …), verified, into `cio_message_events` as they happen.
//!
//! Owns: the optional listener of the daemon (`webhooks:` in config.yaml, separate from the
//! metrics listener), and what an accepted event becomes. Customer.io backlogs every later
//! event behind one that failed, for up to a week, so the receiver answers 200 for anything
//! authentic it has committed (known or not), and 503, never 500 or 429, when it could not
//! commit (customerio-objects.md §4.3).
//! Must not: call Customer.io (registering the webhook is `app_api/`), or touch the state
//! tables: its table has its own migrator, on the state database or `webhooks.database`.
//!
//! # Layout
//! - `verify.rs`: `X-CIO-Signature` and the timestamp tolerance (pure).
//! - `store.rs`: the columns of an event, the idempotent batch insert, the migrator.
//! - `server.rs`: the route, the status of each answer, the group-commit writer.

pub mod server;
pub mod store;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::AnyPool;

use crate::config::WebhookSettings;
use crate::state::Backend;

pub use server::{ANSWER_DEADLINE, ReceiverStats, bind, serve};
pub use store::{MessageEvent, StoreError, WebhookStore};

/// The receiver could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "cannot listen on {addr} for webhooks (`webhooks.listen` in config.yaml): {source}; pick a free port, or stop what holds it"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook listener failed: {source}")]
    Serve {
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens where events go: `webhooks.database`, or the state database's pool; either way only
/// the webhooks' own migrator runs there.
pub async fn open_store(
    settings: &WebhookSettings,
    state_pool: &AnyPool,
    state_backend: Backend,
    state_shown: String,
) -> Result<WebhookStore, WebhookError> {
    let store = match &settings.database {
        Some(url) => WebhookStore::open(url, 4).await?,
        None => {
            let s = WebhookStore::new(state_pool.clone(), state_backend, state_shown);
            s.migrate().await?;
            s
        }
    };
    Ok(store)
}

/// A running receiver: its address, its counters, and the task to await after its shutdown
/// future fired.
pub struct Receiver {
    pub addr: SocketAddr,
    pub stats: Arc<ReceiverStats>,
    pub task: tokio::task::JoinHandle<Result<(), WebhookError>>,
}

/// Binds `settings.listen` and serves until `shutdown` completes.
pub async fn start(
    settings: &WebhookSettings,
    store: WebhookStore,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Receiver, WebhookError> {
    let listener = bind(settings.listen).await?;
    start_on(listener, settings, store, shutdown)
}

/// Serves on an already bound `listener` (tests bind port 0).
pub fn start_on(
    listener: tokio::net::TcpListener,
    settings: &WebhookSettings,
    store: WebhookStore,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Receiver, WebhookError> {
    let addr = listener
        .local_addr()
        .map_err(|source| WebhookError::Serve { source })?;
    let stats = Arc::new(ReceiverStats::default());
    let settings = settings.clone();
    let task = tokio::spawn({
        let stats = stats.clone();
        async move { serve(listener, &settings, store, stats, shutdown).await }
    });
    Ok(Receiver { addr, stats, task })
}
