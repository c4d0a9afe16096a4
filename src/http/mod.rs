//! HTTP plumbing shared by the Track and App clients.
//!
//! Owns: the one `reqwest::Client` builder (rustls, no redirects), the rate gate every attempt
//! passes through, and the retry policy (which statuses retry, backoff with full jitter,
//! `Retry-After`, per-wait and per-run caps).
//! Must not: know about Customer.io payloads or decide what a 4xx means for a row; it returns
//! the final response and leaves that to `track/` and `app_api/`.

pub mod rate_limit;
pub mod retry;

use std::time::Duration;

pub use rate_limit::RateGate;
pub use retry::{RetryPolicy, RunCounters};

/// The HTTP client both APIs use. Redirects are never followed: Customer.io redirects a
/// wrong-region call, and a followed redirect would arrive without its credentials.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("cio-sync/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A response that ended the retry loop: any status that is not retried.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: bytes::Bytes,
}

impl Response {
    /// The body as text, cut to a length fit for logs and dead-letter reasons.
    pub fn body_excerpt(&self) -> String {
        excerpt(&String::from_utf8_lossy(&self.body))
    }
}

/// API error bodies are truncated before they reach logs or the state database.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 500;
    let s = s.trim();
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    }
}

/// Why a request did not get a final response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        /// From the `Retry-After` header, when the server sent one.
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("{0}")]
    Transport(String),
    /// The run's stop was requested while this request waited to be retried.
    #[error("stopped before the request could be retried")]
    Cancelled,
}

impl HttpError {
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The request ran out of attempts (or the run out of retry time).
#[derive(Debug, Clone, thiserror::Error)]
#[error("gave up after {attempts} attempt{}: {last}", if *.attempts == 1 { "" } else { "s" })]
pub struct RetriesExhausted {
    pub attempts: usize,
    pub last: HttpError,
}
