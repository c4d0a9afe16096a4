//! The one HTTP client type both Customer.io APIs use.
//!
//! Owns: building the `reqwest::Client` (rustls, redirects never followed, timeouts), the base
//! URL, putting the credentials on every request (HTTP Basic for Track, Bearer for the App API,
//! chosen by [`Auth`]), and sending a [`Request`] through the rate gate and the retry policy.
//! Must not: know any endpoint or payload (`track/` and `app_api/` do), or show a credential in
//! `Debug` or an error.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::body::Answer;
use super::{RateGate, Response, RetriesExhausted, RetryPolicy, RunCounters, retry};
use crate::config::Secret;
use crate::observe::Api;

/// How a request proves who it is. `Debug` shows only the scheme: [`Secret`] redacts.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Track API: `Authorization: Basic base64(site_id:api_key)`.
    Basic { user: Secret, password: Secret },
    /// App API: `Authorization: Bearer <app_api_key>`.
    Bearer(Secret),
}

/// One request, relative to the client's base URL. Built anew for every attempt, so its parts
/// are borrowed or cheap to clone (`Bytes`).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: reqwest::Method,
    /// Starts with `/`; already percent-encoded.
    pub path: &'a str,
    pub query: &'a [(&'a str, String)],
    /// A JSON body, sent with `content-type: application/json`.
    pub body: Option<bytes::Bytes>,
    /// What a 2xx answer must hold; anything else is retried like a 5xx.
    pub answer: Answer,
}

impl<'a> Request<'a> {
    /// `GET path`, answered with JSON.
    pub fn get(path: &'a str) -> Self {
        Self {
            method: reqwest::Method::GET,
            path,
            query: &[],
            body: None,
            answer: Answer::Json,
        }
    }

    /// `POST path`, answered with JSON.
    pub fn post(path: &'a str) -> Self {
        Self {
            method: reqwest::Method::POST,
            ..Self::get(path)
        }
    }

    /// `PUT path`, answered with JSON.
    pub fn put(path: &'a str) -> Self {
        Self {
            method: reqwest::Method::PUT,
            ..Self::get(path)
        }
    }

    pub fn query(mut self, query: &'a [(&'a str, String)]) -> Self {
        self.query = query;
        self
    }

    pub fn json_body(mut self, body: bytes::Bytes) -> Self {
        self.body = Some(body);
        self
    }

    pub fn answer(mut self, answer: Answer) -> Self {
        self.answer = answer;
        self
    }
}

#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash; paths are appended.
    base: String,
    auth: Auth,
    /// Shared by every job of the process: Customer.io's limits are per workspace and API.
    gate: Arc<RateGate>,
    policy: RetryPolicy,
    /// The most read of one answer, in bytes (`MAX_TRACK_ANSWER_BYTES`, `MAX_APP_ANSWER_BYTES`).
    answer_limit: usize,
    /// Which API this client calls: the label of its request metrics.
    api: Api,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.shown_base())
            .field("auth", &self.inner.auth)
            .field("gate", &self.inner.gate)
            .finish()
    }
}

impl ApiClient {
    /// A client for `base` (e.g. `https://track.customer.io`) that reads at most
    /// `answer_limit` bytes of any answer. Redirects are never followed:
    /// Customer.io redirects a wrong-region call, and a followed redirect would arrive without
    /// its credentials (customerio-api.md §1).
    pub fn new(
        base: &str,
        auth: Auth,
        gate: Arc<RateGate>,
        policy: RetryPolicy,
        timeout: Duration,
        answer_limit: usize,
        api: Api,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("cio-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: base.trim_end_matches('/').to_string(),
                auth,
                gate,
                policy,
                answer_limit,
                api,
            }),
        })
    }

    /// The base URL for messages: any `user:password@` in it is left out.
    pub fn shown_base(&self) -> String {
        match reqwest::Url::parse(&self.inner.base) {
            Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
                // Both calls only fail for URLs that cannot have credentials at all.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.as_str().trim_end_matches('/').to_string()
            }
            _ => self.inner.base.clone(),
        }
    }

    /// Sends `req`, retrying per the client's policy; returns the first answer that is not
    /// retried (2xx, 207, 3xx, 4xx other than 408/429).
    pub async fn send(
        &self,
        req: &Request<'_>,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Response, RetriesExhausted> {
        self.send_with(&self.inner.policy, req, counters, cancel)
            .await
    }

    /// Sends `req` once, without retries (for a pre-flight check that must answer at once).
    pub async fn send_once(&self, req: &Request<'_>) -> Result<Response, RetriesExhausted> {
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.inner.policy.clone()
        };
        self.send_with(
            &once,
            req,
            &Arc::new(RunCounters::default()),
            &CancellationToken::new(),
        )
        .await
    }

    async fn send_with(
        &self,
        policy: &RetryPolicy,
        req: &Request<'_>,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Response, RetriesExhausted> {
        let url = format!("{}{}", self.inner.base, req.path);
        retry::send_with_retry(
            retry::ApiLimits {
                api: self.inner.api,
                answer_limit: self.inner.answer_limit,
            },
            &self.inner.gate,
            policy,
            counters,
            cancel,
            req.answer,
            || {
                let mut r = self.inner.http.request(req.method.clone(), &url);
                if !req.query.is_empty() {
                    r = r.query(req.query);
                }
                r = match &self.inner.auth {
                    Auth::Basic { user, password } => {
                        r.basic_auth(user.expose(), Some(password.expose()))
                    }
                    Auth::Bearer(key) => r.bearer_auth(key.expose()),
                };
                match &req.body {
                    Some(b) => r
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(b.clone()),
                    None => r,
                }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::from_millis(1),
            max_wait: Duration::from_millis(1),
            max_total_wait: Duration::from_millis(1),
        }
    }

    #[test]
    fn no_credential_shows_in_debug_output_or_the_shown_base() {
        for auth in [
            Auth::Basic {
                user: Secret::new("site-sekrit"),
                password: Secret::new("key-sekrit"),
            },
            Auth::Bearer(Secret::new("app-sekrit")),
        ] {
            let c = ApiClient::new(
                "https://user:pw-sekrit@track.customer.io/",
                auth,
                Arc::new(RateGate::per_second(10)),
                policy(),
                Duration::from_secs(1),
                1024,
                Api::Track,
            )
            .expect("client");
            let shown = format!("{c:?}");
            assert!(!shown.contains("sekrit"), "{shown}");
            assert_eq!(c.shown_base(), "https://track.customer.io");
        }
    }
}
