//! Stop signals: SIGTERM (systemd) and SIGINT (Ctrl-C) → a cancellation token.
//!
//! Owns: listening for the signals. The first signal asks runs to stop gracefully (stop
//! reading, finish in-flight requests within the grace period, write checkpoints); a second
//! one cuts the grace period short. Must not: exit the process itself.

use tokio_util::sync::CancellationToken;

/// Tokens cancelled by the first and by the second signal.
#[derive(Clone)]
pub struct Signals {
    pub stop: CancellationToken,
    pub force: CancellationToken,
}

pub fn listen() -> Signals {
    let signals = Signals {
        stop: CancellationToken::new(),
        force: CancellationToken::new(),
    };
    let s = signals.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot listen for SIGTERM.");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!(
                    "Stop signal received: finishing requests in flight and writing checkpoints (send again to stop at once)."
                );
                s.stop.cancel();
            } else {
                tracing::warn!("Second stop signal: abandoning requests in flight.");
                s.force.cancel();
            }
        }
    });
    signals
}
