//! Liveness and readiness: what `/healthz` and `/readyz` answer.
//!
//! Owns: the [`Liveness`] handle the scheduler's loop ticks (a wedged scheduler stops
//! ticking, and `/healthz` turns 503 after `stale_after`), and the shape of a readiness check
//! ([`ReadyCheck`]: the caller supplies it, e.g. "the state database answers and is migrated").
//! Must not: know what is being checked: it holds no database or scheduler of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use std::time::Instant;

/// Ticked by the loop whose progress proves the process works; cheap to clone and tick.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Ticks are stored as milliseconds since this instant.
    start: Instant,
    last_tick_ms: AtomicU64,
    ticks: AtomicU64,
    /// `None`: nothing ticks this handle (a one-shot `run`); alive while the process is.
    stale_after: Option<Duration>,
}

/// Why `/healthz` says the process is not live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the scheduler has not ticked for {}s (limit {}s)", .since.as_secs(), .limit.as_secs())]
pub struct NotLive {
    pub since: Duration,
    pub limit: Duration,
}

impl Liveness {
    /// A handle that must be ticked at least every `stale_after`; counts as ticked now.
    pub fn ticked_every(stale_after: Duration) -> Self {
        Self::make(Some(stale_after))
    }

    /// A handle nothing ticks: live as long as the process answers.
    pub fn untracked() -> Self {
        Self::make(None)
    }

    fn make(stale_after: Option<Duration>) -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                last_tick_ms: AtomicU64::new(0),
                ticks: AtomicU64::new(0),
                stale_after,
            }),
        }
    }

    /// The loop made progress.
    pub fn tick(&self) {
        self.tick_at(Instant::now());
    }

    fn tick_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.inner.start).as_millis() as u64;
        self.inner.last_tick_ms.fetch_max(ms, Ordering::Relaxed);
        self.inner.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the handle was ticked (for tests and `STATUS=` lines).
    pub fn ticks(&self) -> u64 {
        self.inner.ticks.load(Ordering::Relaxed)
    }

    /// `Ok` while the loop ticked within its limit (always, for an untracked handle).
    pub fn check(&self) -> Result<(), NotLive> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), NotLive> {
        let Some(limit) = self.inner.stale_after else {
            return Ok(());
        };
        let last = Duration::from_millis(self.inner.last_tick_ms.load(Ordering::Relaxed));
        let since = now
            .saturating_duration_since(self.inner.start)
            .saturating_sub(last);
        if since > limit {
            Err(NotLive { since, limit })
        } else {
            Ok(())
        }
    }
}

/// Answers whether the process can do its work now; the error says why not (no secrets).
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_goes_stale_when_the_loop_stops_ticking_and_recovers_on_a_tick() {
        let live = Liveness::ticked_every(Duration::from_secs(30));
        let t0 = live.inner.start;
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(live.check_at(t0), Ok(()));
        live.tick_at(at(20));
        assert_eq!(
            live.check_at(at(45)),
            Ok(()),
            "25 s after the last tick is within 30 s"
        );
        let err = live.check_at(at(55)).expect_err("35 s without a tick");
        assert_eq!(err.since, Duration::from_secs(35));
        live.tick_at(at(55));
        assert_eq!(live.check_at(at(56)), Ok(()));
        assert_eq!(live.ticks(), 2);
    }

    #[test]
    fn an_untracked_handle_is_always_live() {
        let live = Liveness::untracked();
        let t0 = live.inner.start;
        assert_eq!(live.check_at(t0 + Duration::from_secs(86_400)), Ok(()));
    }
}
