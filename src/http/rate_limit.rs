//! The rate gate: one per Customer.io workspace and API, shared by every job in the process.
//!
//! Owns: a governor token bucket (requests per second) plus a shared pause that a 429 sets,
//! so the whole client slows down, not only the request that was refused; and this
//! process's share of the limit while replicas split it ([`RateGate::share_among`]).
//! Must not: retry or sleep on behalf of callers beyond waiting for a permit.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

pub struct RateGate {
    /// Swapped when the share changes; a waiter keeps the bucket it started on.
    limiter: RwLock<Arc<DefaultDirectRateLimiter>>,
    /// Until when every request holds back after the server said "too many".
    paused_until: Mutex<Option<Instant>>,
    /// The configured requests per second (the whole workspace's budget).
    per_sec: u32,
    /// How many live replicas share `per_sec`; this process takes `per_sec / replicas`.
    replicas: AtomicU32,
}

impl std::fmt::Debug for RateGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGate")
            .field("per_sec", &self.per_sec)
            .field("replicas", &self.replicas.load(Ordering::Relaxed))
            .finish()
    }
}

/// A token bucket of `per_sec` requests a second.
fn bucket(per_sec: u32) -> DefaultDirectRateLimiter {
    let n = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    // No burst: requests leave evenly spaced, one every 1/per_sec. The server's own bucket
    // then keeps its whole burst allowance for the jitter between our send times and its
    // arrival times (a loaded machine, a 500 KB body). With a burst of per_sec/10 here, the
    // client spent the server's slack at start and every later request that arrived a few
    // milliseconds early got a 429, and its Retry-After (at least 1 s) paused every sender:
    // a 1M-event backfill at 100 requests/s lost up to a third of its rate that way.
    let quota = Quota::per_second(n).allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

impl RateGate {
    pub fn per_second(per_sec: u32) -> Self {
        Self {
            limiter: RwLock::new(Arc::new(bucket(per_sec))),
            paused_until: Mutex::new(None),
            per_sec,
            replicas: AtomicU32::new(1),
        }
    }

    /// Takes `1 / replicas` of the configured rate (at least one request per second), so
    /// that `replicas` processes together stay within it. A no-op when the count is the same.
    pub fn share_among(&self, replicas: u32) {
        let replicas = replicas.max(1);
        if self.replicas.swap(replicas, Ordering::AcqRel) == replicas {
            return;
        }
        let bucket = Arc::new(bucket((self.per_sec / replicas).max(1)));
        match self.limiter.write() {
            Ok(mut l) => *l = bucket,
            Err(poisoned) => *poisoned.into_inner() = bucket,
        }
    }

    /// The configured requests per second, before sharing.
    pub fn configured_per_sec(&self) -> u32 {
        self.per_sec
    }

    /// How many replicas the rate is shared among now.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Acquire).max(1)
    }

    /// The requests per second this process may send now.
    pub fn current_per_sec(&self) -> u32 {
        (self.per_sec / self.replicas.load(Ordering::Acquire).max(1)).max(1)
    }

    /// Waits for a permit: first for any pause a 429 set, then for the bucket.
    pub async fn acquire(&self) {
        loop {
            let until = self.paused_until.lock().map(|g| *g).unwrap_or(None);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        let limiter = match self.limiter.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        limiter.until_ready().await;
    }

    /// The server refused for rate: hold every request back for `wait`.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        if let Ok(mut g) = self.paused_until.lock()
            && g.is_none_or(|cur| cur < until)
        {
            *g = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_holds_back_every_caller() {
        let gate = RateGate::per_second(1000);
        gate.pause_for(Duration::from_millis(150));
        let start = std::time::Instant::now();
        gate.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(140));
    }

    /// Permits available at once, without waiting: the bucket's burst.
    fn burst(gate: &RateGate) -> usize {
        let limiter = gate.limiter.read().unwrap().clone();
        (0..1000).take_while(|_| limiter.check().is_ok()).count()
    }

    #[test]
    fn replicas_sharing_a_gate_each_take_their_part_of_the_rate() {
        let gate = RateGate::per_second(100);
        assert_eq!(gate.current_per_sec(), 100);
        assert_eq!(burst(&gate), 1, "evenly spaced: no burst");
        gate.share_among(4);
        assert_eq!((gate.current_per_sec(), gate.replicas()), (25, 4));
        assert_eq!(burst(&gate), 1);
        gate.share_among(4);
        assert_eq!(
            burst(&gate),
            0,
            "the same count keeps the (now empty) bucket"
        );
        gate.share_among(1000);
        assert_eq!(
            gate.current_per_sec(),
            1,
            "never below one request a second"
        );
        gate.share_among(0);
        assert_eq!(
            (gate.current_per_sec(), gate.configured_per_sec()),
            (100, 100)
        );
    }

    #[tokio::test]
    async fn the_bucket_limits_the_rate() {
        let gate = RateGate::per_second(50);
        let start = std::time::Instant::now();
        for _ in 0..30 {
            gate.acquire().await;
        }
        // 1 at once, then 29 more at 50/s: at least ~0.58 s.
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
    }
}
