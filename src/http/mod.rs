//! HTTP plumbing shared by the Track and App clients.
//!
//! Owns: the one client type, [`ApiClient`] (rustls, no redirects, auth as a parameter), what
//! is read of an answer (at most a cap per API, [`MAX_TRACK_ANSWER_BYTES`] and
//! [`MAX_APP_ANSWER_BYTES`]; a 2xx must be JSON), the rate gate every
//! attempt passes through, and the retry policy (which outcomes retry, backoff with full
//! jitter, `Retry-After`, per-wait and per-run caps).
//! Must not: know about Customer.io payloads or decide what a 4xx means for a row; it returns
//! the final response and leaves that to `track/` and `app_api/`.

pub mod body;
pub mod client;
pub mod rate_limit;
pub mod retry;

use std::time::Duration;

pub use body::{Answer, MAX_APP_ANSWER_BYTES, MAX_TRACK_ANSWER_BYTES};
pub use client::{ApiClient, Auth, Request};
pub use rate_limit::RateGate;
pub use retry::{RetryPolicy, RunCounters};

/// A response that ended the retry loop: any status that is not retried.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: bytes::Bytes,
    /// Scheme, host and port of a 3xx's `Location` (never its path, which may carry
    /// identifiers): where Customer.io sends a call for the other region.
    pub redirect_to: Option<String>,
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
    /// A 2xx whose body is not a JSON document. Customer.io answers JSON, so this came from
    /// something in between (a proxy, a captive portal) and says nothing about the request.
    #[error(
        "HTTP {status} with a body that is not JSON (content type {content_type}): {body}; Customer.io answers JSON, so something in between (a proxy or captive portal) answered instead: check `customerio.track_url` / `customerio.app_url` and the network path"
    )]
    NotJson {
        status: u16,
        content_type: String,
        body: String,
    },
    /// The answer went on past the client's cap; reading stopped there.
    #[error(
        "HTTP {status} with an answer longer than {limit} bytes, far more than Customer.io sends; stopped reading it: check `customerio.track_url` / `customerio.app_url` and any proxy in between"
    )]
    TooLarge { status: u16, limit: usize },
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

    /// A request that got no HTTP answer, described without its URL (it may carry
    /// identifiers), with the whole cause chain.
    pub(crate) fn transport(e: reqwest::Error) -> HttpError {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "connection failed"
        };
        // Without the URL: it may carry identifiers.
        let e = e.without_url();
        let mut msg = format!("{kind}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        HttpError::Transport(msg)
    }
}

/// The request ran out of attempts (or the run out of retry time).
#[derive(Debug, Clone, thiserror::Error)]
#[error("gave up after {attempts} attempt{}: {last}", if *.attempts == 1 { "" } else { "s" })]
pub struct RetriesExhausted {
    pub attempts: usize,
    pub last: HttpError,
}
