//! The retry policy, in one place for both APIs.
//!
//! Owns: which outcomes are retried (408, 429, every 5xx, transport errors, and a 2xx that is
//! not Customer.io's answer: not JSON, or too long), the backoff (exponential with full jitter,
//! driven by backon), honouring `Retry-After` (seconds or HTTP date), the cap on one wait and on
//! a run's total waiting, and taking a rate permit on every attempt.
//! Must not: interpret non-retried statuses: they are returned to the caller as responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::Retryable;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::body::{self, Answer};
use super::{HttpError, RateGate, Response, RetriesExhausted, excerpt};
use crate::config::RetrySettings;
use crate::observe::{Api, RateGateWaited, RequestAttempted, RequestRetrying, emit};

/// Statuses worth another attempt: 408 and 429 (the server asks to come back later) and every
/// 5xx (500–599, which covers the 500/502/503/504 and Cloudflare 520–524 that Customer.io's own
/// clients list): a server-side failure says nothing about the rows, and Track operations are
/// safe to resend (identify is idempotent, events carry ULIDs). Everything else is final:
/// 400/404/413/422 reject rows, 401/403 stop the run, 3xx means the wrong region.
pub fn is_retried_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..=599).contains(&status)
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: usize,
    pub base_delay: Duration,
    pub max_wait: Duration,
    pub max_total_wait: Duration,
}

impl From<&RetrySettings> for RetryPolicy {
    fn from(s: &RetrySettings) -> Self {
        Self {
            max_attempts: s.max_attempts,
            base_delay: s.base_delay,
            max_wait: s.max_wait,
            max_total_wait: s.max_total_wait,
        }
    }
}

/// Full jitter: the n-th wait is uniform in [0, min(cap, base·2ⁿ)] (AWS's "full jitter",
/// which spreads retries of many clients best). backon's own jitter adds to the delay instead.
pub struct FullJitter {
    base: Duration,
    cap: Duration,
    attempt: u32,
    remaining: usize,
}

impl FullJitter {
    pub fn new(policy: &RetryPolicy) -> Self {
        Self {
            base: policy.base_delay,
            cap: policy.max_wait,
            attempt: 0,
            remaining: policy.max_attempts.saturating_sub(1),
        }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt += 1;
        let ms = ceiling.as_millis() as u64;
        Some(Duration::from_millis(rand::rng().random_range(0..=ms)))
    }
}

/// Per-run counters: requests, retries and time spent waiting (the run's retry budget).
#[derive(Debug, Default)]
pub struct RunCounters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub waited_ms: AtomicU64,
}

impl RunCounters {
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}

/// Parses `Retry-After`: delta seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sends a request built by `build`, retrying per `policy`. Each attempt first takes a permit
/// from `gate`. A 429 pauses the whole gate. Returns the first response whose status is not
/// retried (2xx, 207, 3xx, 4xx other than 408/429, …) and whose 2xx body holds `answer`.
pub(super) async fn send_with_retry<F>(
    api: Api,
    gate: &RateGate,
    policy: &RetryPolicy,
    counters: &Arc<RunCounters>,
    cancel: &CancellationToken,
    answer: Answer,
    answer_limit: usize,
    build: F,
) -> Result<Response, RetriesExhausted>
where
    F: Fn() -> reqwest::RequestBuilder,
{
    let attempts = AtomicU64::new(0);
    let attempt = || async {
        if cancel.is_cancelled() && attempts.load(Ordering::Relaxed) > 0 {
            return Err(HttpError::Cancelled);
        }
        let asked = tokio::time::Instant::now();
        gate.acquire().await;
        let sent = tokio::time::Instant::now();
        emit(RateGateWaited {
            api,
            waited: sent - asked,
        });
        attempts.fetch_add(1, Ordering::Relaxed);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = match build().send().await {
            Ok(r) => r,
            Err(e) => {
                emit(RequestAttempted {
                    api,
                    status: None,
                    elapsed: sent.elapsed(),
                });
                return Err(HttpError::transport(e));
            }
        };
        let status = resp.status().as_u16();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header(reqwest::header::RETRY_AFTER)
            .as_deref()
            .and_then(parse_retry_after);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let redirect_to = header(reqwest::header::LOCATION)
            .as_deref()
            .and_then(origin_of);
        let body = body::read_capped(&mut resp, answer_limit).await;
        emit(RequestAttempted {
            api,
            status: Some(status),
            elapsed: sent.elapsed(),
        });
        let body = body?;
        if is_retried_status(status) {
            if status == 429 {
                gate.pause_for(
                    retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .min(policy.max_wait),
                );
            }
            return Err(HttpError::Status {
                status,
                retry_after,
                body: excerpt(&String::from_utf8_lossy(&body)),
            });
        }
        body::check_answer(answer, status, content_type.as_deref(), &body)?;
        Ok(Response {
            status,
            body,
            redirect_to,
        })
    };
    let budget_ms = policy.max_total_wait.as_millis() as u64;
    let sleep_cancel = cancel.clone();
    attempt
        .retry(FullJitter::new(policy))
        .sleep(move |d| {
            let cancel = sleep_cancel.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        })
        .when(|e: &HttpError| {
            !matches!(e, HttpError::Cancelled)
                && !cancel.is_cancelled()
                && counters.waited_ms.load(Ordering::Relaxed) < budget_ms
        })
        .adjust(|e: &HttpError, backoff: Option<Duration>| {
            // `None` means the attempts are used up; Retry-After never extends them.
            backoff.map(|d| {
                e.retry_after()
                    .map(|ra| ra.min(policy.max_wait))
                    .unwrap_or(d)
            })
        })
        .notify(|e: &HttpError, wait: Duration| {
            counters.retries.fetch_add(1, Ordering::Relaxed);
            counters
                .waited_ms
                .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            // `adjust` used the server's Retry-After whenever there was one.
            emit(RequestRetrying {
                api,
                error: e,
                wait,
                from_retry_after: e.retry_after().is_some(),
            });
        })
        .await
        .map_err(|last| RetriesExhausted {
            attempts: attempts.load(Ordering::Relaxed) as usize,
            last,
        })
}

/// `scheme://host[:port]` of an absolute URL; `None` for a relative or unreadable one.
fn origin_of(location: &str) -> Option<String> {
    let url = reqwest::Url::parse(location).ok()?;
    url.host_str()?;
    Some(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_shows_only_where_it_points_not_its_path() {
        assert_eq!(
            origin_of("https://track-eu.customer.io/api/v1/customers/ann%40example.com").as_deref(),
            Some("https://track-eu.customer.io")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin_of("/relative/path"), None);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d <= Duration::from_secs(120) && d >= Duration::from_secs(118),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn full_jitter_stays_under_the_growing_ceiling_and_stops() {
        let p = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_wait: Duration::from_millis(1000),
            max_total_wait: Duration::from_secs(60),
        };
        let waits: Vec<Duration> = FullJitter::new(&p).collect();
        assert_eq!(waits.len(), 5);
        for (n, w) in waits.iter().enumerate() {
            let ceiling = (100u64 << n).min(1000);
            assert!(w.as_millis() as u64 <= ceiling, "wait {n} = {w:?}");
        }
    }

    #[test]
    fn timeouts_rate_limits_and_every_5xx_are_retried() {
        for s in [408, 429, 500, 502, 503, 504, 520, 522, 524, 599] {
            assert!(is_retried_status(s), "{s}");
        }
        for s in [200, 207, 301, 400, 401, 403, 404, 413, 422, 600] {
            assert!(!is_retried_status(s));
        }
    }
}
