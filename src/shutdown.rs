//! Process signals: SIGTERM (systemd) and SIGINT (Ctrl-C) → a cancellation token; SIGHUP →
//! a reload request.
//!
//! Owns: listening for the signals. The first stop signal asks runs to stop gracefully (stop
//! reading, finish in-flight requests within the grace period, write checkpoints); a second
//! one cuts the grace period short. SIGHUP never stops anything: it is counted as a reload
//! request for whoever subscribed ([`Signals::reload_requests`], the daemon), and logged and
//! ignored when nobody did (`run`). Must not: exit the process itself, or reload anything
//! (what a reload means belongs to the subscriber).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Tokens cancelled by the first and by the second stop signal, and the SIGHUP counter.
#[derive(Clone)]
pub struct Signals {
    pub stop: CancellationToken,
    pub force: CancellationToken,
    /// How many reload requests (SIGHUPs) arrived; a watch so a subscriber that is busy sees
    /// "at least one more" rather than a queue it must drain.
    reload: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

impl Signals {
    /// Tokens nobody cancels until the caller does: [`listen`] wires them to the process's
    /// signals, tests cancel them by hand.
    pub fn new() -> Self {
        Self {
            stop: CancellationToken::new(),
            force: CancellationToken::new(),
            reload: watch::Sender::new(0),
        }
    }

    /// Subscribes to reload requests: the receiver sees a change for every SIGHUP (or
    /// [`Signals::request_reload`]) after this call. While nobody holds a receiver, a request
    /// is logged and ignored.
    pub fn reload_requests(&self) -> watch::Receiver<u64> {
        self.reload.subscribe()
    }

    /// Records a reload request, as a SIGHUP does.
    pub fn request_reload(&self) {
        if self.reload.receiver_count() == 0 {
            tracing::info!(
                "SIGHUP received: this command does not reload its configuration; ignoring it."
            );
        } else {
            self.reload.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Listens for SIGTERM, SIGINT and SIGHUP until the process ends.
///
/// The handlers are installed before this returns, so a signal sent as soon as the caller
/// goes on is already ours: SIGHUP's default action (terminate) can no longer cut a run short.
pub(crate) fn listen() -> Signals {
    let signals = Signals::new();
    let term = install(SignalKind::terminate(), "SIGTERM");
    let int = install(SignalKind::interrupt(), "SIGINT");
    let hup = install(SignalKind::hangup(), "SIGHUP");
    tokio::spawn(stops(signals.clone(), term, int));
    tokio::spawn(hangups(signals.clone(), hup));
    signals
}

fn install(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(signal = name, error = %error, "Cannot listen for the signal.");
            None
        }
    }
}

/// Resolves at the next delivery of `s`; never, when it could not be installed.
async fn next(s: &mut Option<Signal>) {
    if let Some(sig) = s
        && sig.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await
}

async fn stops(s: Signals, mut term: Option<Signal>, mut int: Option<Signal>) {
    for n in 0..2 {
        tokio::select! {
            _ = next(&mut term) => {}
            _ = next(&mut int) => {}
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
}

async fn hangups(s: Signals, mut hup: Option<Signal>) {
    loop {
        next(&mut hup).await;
        s.request_reload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn send(sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    #[tokio::test]
    async fn sighup_is_a_reload_request_and_never_stops_or_kills_the_process() {
        let signals = listen();
        let mut reloads = signals.reload_requests();
        // Without a handler, SIGHUP's default action would end this test process here.
        send("-HUP");
        tokio::time::timeout(Duration::from_secs(30), reloads.changed())
            .await
            .expect("the SIGHUP arrived as a reload request within 30 s")
            .expect("the sender lives as long as the signals");
        assert_eq!(*reloads.borrow_and_update(), 1);
        assert!(!signals.stop.is_cancelled(), "SIGHUP is not a stop signal");
        assert!(!signals.force.is_cancelled());

        // Nobody subscribed: still survived, still no stop.
        drop(reloads);
        send("-HUP");
        send("-HUP");
        // Still alive to see a later SIGTERM handled: the SIGHUPs ended nothing.
        send("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !signals.stop.is_cancelled() {
            assert!(
                Instant::now() < deadline,
                "SIGTERM did not cancel the stop token within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!signals.force.is_cancelled(), "one SIGTERM is not a force");
    }

    #[test]
    fn a_reload_request_reaches_every_subscriber_and_is_dropped_without_one() {
        let signals = Signals::new();
        signals.request_reload();
        let mut a = signals.reload_requests();
        assert!(
            !a.has_changed().unwrap(),
            "a request before subscribing is not replayed"
        );
        signals.request_reload();
        signals.request_reload();
        assert!(a.has_changed().unwrap());
        assert_eq!(*a.borrow_and_update(), 2, "two requests counted");
    }
}
