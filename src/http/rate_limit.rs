//! The rate gate: one per Customer.io workspace and API, shared by every job in the process.
//!
//! Owns: a governor token bucket (requests per second) plus a shared pause that a 429 sets,
//! so the whole client slows down, not only the request that was refused.
//! Must not: retry or sleep on behalf of callers beyond waiting for a permit.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

pub struct RateGate {
    limiter: DefaultDirectRateLimiter,
    /// Until when every request holds back after the server said "too many".
    paused_until: Mutex<Option<Instant>>,
    /// Requests per second, kept only for `Debug`.
    per_sec: u32,
}

impl std::fmt::Debug for RateGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGate")
            .field("per_sec", &self.per_sec)
            .finish()
    }
}

impl RateGate {
    pub fn per_second(per_sec: u32) -> Self {
        let n = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        // The bucket holds a tenth of a second's worth (at least one permit): after a cold
        // start or an idle spell at most per_sec/10 requests go out at once, then the steady
        // rate, so no one-second window carries more than 110% of `per_sec`. A full second's
        // burst would let a window carry twice the rate, which is what fair-use limits punish.
        let quota = Quota::per_second(n)
            .allow_burst(NonZeroU32::new((per_sec / 10).max(1)).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::direct(quota),
            paused_until: Mutex::new(None),
            per_sec,
        }
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
        self.limiter.until_ready().await;
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

    #[tokio::test]
    async fn the_bucket_limits_the_rate() {
        let gate = RateGate::per_second(50);
        let start = std::time::Instant::now();
        for _ in 0..30 {
            gate.acquire().await;
        }
        // 5 in the initial burst, then 25 more at 50/s: at least ~0.5 s.
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
    }
}
