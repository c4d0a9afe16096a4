//! The App API client: segments, segment membership, campaigns and campaign metrics.
//!
//! Owns: App endpoints and auth (`Authorization: Bearer <app_api_key>`, region host from
//! `customerio.app_url`), paging membership with `start`/`limit` until `next` runs out, and
//! turning each final response into a value or an [`AppError`] (401/403 = the key, 3xx = the
//! region, 404 = the resource is gone). Every attempt goes through the process-wide App rate
//! gate and the shared retry policy in `http/`.
//! Must not: write to any database or decide what a pull does with what it reads (`pull/`
//! does), and must not retry by itself (`http::retry` does).

pub mod response;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsPeriod;
use crate::config::{Secret, Settings};
use crate::http::{self, RateGate, RetriesExhausted, RetryPolicy, RunCounters};

pub use response::{Campaign, Member, Segment, Series};

/// The API's largest membership page.
pub const MAX_PAGE_SIZE: u32 = 30_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    #[error(
        "the App API key is missing: set `customerio.app_api_key` in config.yaml (e.g. `app_api_key: ${{CIO_APP_API_KEY}}`) to an App API key from Customer.io's Account settings → API credentials"
    )]
    MissingKey,
    #[error(
        "Customer.io refused the App API key (HTTP {status} on {what}): check CIO_APP_API_KEY (`customerio.app_api_key` in config.yaml), that it is an App API key (not a Track key) of this workspace and region, and that its scope allows reading"
    )]
    Unauthorized { status: u16, what: String },
    #[error(
        "the App API redirected {what} (HTTP {status}): the workspace is in another region; set `customerio.region` in config.yaml to match it"
    )]
    WrongRegion { status: u16, what: String },
    /// 404: the segment or campaign no longer exists.
    #[error("{what}: not found (HTTP 404); it was deleted in Customer.io or the id is wrong")]
    NotFound { what: String },
    /// Holds the last attempt's text itself (not chained as a source, so `{:#}` does not
    /// repeat it).
    #[error("{what}: {error}; Customer.io or the network is failing, the next run tries again")]
    Failed {
        what: String,
        error: RetriesExhausted,
    },
    #[error("{what}: Customer.io answered HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unexpected answer from the App API ({message}): {body}")]
    Decode {
        what: String,
        message: String,
        body: String,
    },
    #[error("the HTTP client could not be built: {0}")]
    Client(String),
}

#[derive(Clone)]
pub struct AppClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Region host or override, without a trailing slash.
    base: String,
    api_key: Secret,
    /// Shared by every job of the process: Customer.io's limit is per workspace.
    gate: Arc<RateGate>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient")
            .field("base", &self.inner.base)
            .field("api_key", &self.inner.api_key)
            .finish()
    }
}

impl AppClient {
    pub fn new(
        base: &str,
        api_key: Secret,
        gate: Arc<RateGate>,
        policy: RetryPolicy,
        timeout: Duration,
    ) -> Result<Self, AppError> {
        let http = http::build_client(timeout).map_err(|e| AppError::Client(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: base.trim_end_matches('/').to_string(),
                api_key,
                gate,
                policy,
            }),
        })
    }

    /// The client for config.yaml's `customerio` and `app` sections, on the process's App gate.
    pub fn from_settings(settings: &Settings, gate: Arc<RateGate>) -> Result<Self, AppError> {
        let key = settings
            .customerio
            .app_api_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or(AppError::MissingKey)?;
        Self::new(
            settings.customerio.app_url.expose(),
            key,
            gate,
            RetryPolicy::from(&settings.retry),
            settings.app.timeout,
        )
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// One GET, retried per the policy; `what` names it in errors (`GET /v1/segments`).
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<T, AppError> {
        let what = format!("GET {path}");
        let url = format!("{}{}", self.inner.base, path);
        let resp = http::retry::send_with_retry(
            &self.inner.gate,
            &self.inner.policy,
            counters,
            cancel,
            || {
                let r = self
                    .inner
                    .http
                    .get(&url)
                    .bearer_auth(self.inner.api_key.expose());
                if query.is_empty() { r } else { r.query(query) }
            },
        )
        .await
        .map_err(|error| AppError::Failed {
            what: what.clone(),
            error,
        })?;
        match resp.status {
            200..=299 => serde_json::from_slice(&resp.body).map_err(|e| AppError::Decode {
                what,
                message: e.to_string(),
                body: resp.body_excerpt(),
            }),
            300..=399 => Err(AppError::WrongRegion {
                status: resp.status,
                what,
            }),
            401 | 403 => Err(AppError::Unauthorized {
                status: resp.status,
                what,
            }),
            404 => Err(AppError::NotFound { what }),
            status => Err(AppError::Status {
                what,
                status,
                body: resp.body_excerpt(),
            }),
        }
    }

    /// `GET /v1/segments`: every segment of the workspace.
    pub async fn segments(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Segment>, AppError> {
        let mut out = Vec::new();
        let mut paging = Paging::default();
        loop {
            let list: response::SegmentList = self
                .get("/v1/segments", &paging.query(), counters, cancel)
                .await?;
            for raw in list.segments {
                out.push(
                    Segment::from_value(raw).map_err(|message| AppError::Decode {
                        what: "GET /v1/segments".into(),
                        message,
                        body: String::new(),
                    })?,
                );
            }
            if !paging.advance(list.next) {
                return Ok(out);
            }
        }
    }

    /// `GET /v1/campaigns`: every campaign of the workspace.
    pub async fn campaigns(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Campaign>, AppError> {
        let mut out = Vec::new();
        let mut paging = Paging::default();
        loop {
            let list: response::CampaignList = self
                .get("/v1/campaigns", &paging.query(), counters, cancel)
                .await?;
            for raw in list.campaigns {
                out.push(
                    Campaign::from_value(raw).map_err(|message| AppError::Decode {
                        what: "GET /v1/campaigns".into(),
                        message,
                        body: String::new(),
                    })?,
                );
            }
            if !paging.advance(list.next) {
                return Ok(out);
            }
        }
    }

    /// Pages through one segment's members, `page_size` (1..=30000) at a time.
    pub fn membership(&self, segment_id: i64, page_size: u32) -> MembershipPager {
        MembershipPager {
            client: self.clone(),
            segment_id,
            limit: page_size.clamp(1, MAX_PAGE_SIZE),
            paging: Paging::default(),
            done: false,
            pages: 0,
        }
    }

    /// `GET /v1/campaigns/{id}/metrics?period=&steps=` (v1): metric → values, index 0 oldest.
    pub async fn campaign_metrics(
        &self,
        campaign_id: i64,
        period: MetricsPeriod,
        steps: u32,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Series, AppError> {
        let query = [
            ("period", period_name(period).to_string()),
            ("steps", steps.to_string()),
        ];
        let body: response::MetricsBody = self
            .get(
                &format!("/v1/campaigns/{campaign_id}/metrics"),
                &query,
                counters,
                cancel,
            )
            .await?;
        Ok(body.into_series())
    }
}

/// The API's name of a metrics period.
pub fn period_name(p: MetricsPeriod) -> &'static str {
    match p {
        MetricsPeriod::Hours => "hours",
        MetricsPeriod::Days => "days",
        MetricsPeriod::Weeks => "weeks",
        MetricsPeriod::Months => "months",
    }
}

/// `start`/`next` bookkeeping: stop when `next` is missing, `null`, `""`, or one already used
/// (a server that hands back the same token would otherwise loop forever).
#[derive(Debug, Default)]
struct Paging {
    start: Option<String>,
    seen: HashSet<String>,
}

impl Paging {
    fn query(&self) -> Vec<(&'static str, String)> {
        self.start.iter().map(|s| ("start", s.clone())).collect()
    }

    /// Takes the answer's `next`; false when there are no more pages.
    fn advance(&mut self, next: Option<String>) -> bool {
        match next {
            Some(token) if self.seen.insert(token.clone()) => {
                self.start = Some(token);
                true
            }
            Some(token) => {
                tracing::warn!(next = %token, "The App API repeated a paging token; treating the list as complete.");
                false
            }
            None => false,
        }
    }
}

/// One segment's membership, a page at a time (pages are not kept: a caller streams them on).
pub struct MembershipPager {
    client: AppClient,
    segment_id: i64,
    limit: u32,
    paging: Paging,
    done: bool,
    pages: u32,
}

impl MembershipPager {
    pub fn segment_id(&self) -> i64 {
        self.segment_id
    }

    /// Pages fetched so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// The next page of members, or `None` after the last one. A 404 ([`AppError::NotFound`])
    /// means the segment is gone.
    pub async fn next_page(
        &mut self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<Member>>, AppError> {
        if self.done {
            return Ok(None);
        }
        let mut query = self.paging.query();
        query.push(("limit", self.limit.to_string()));
        let path = format!("/v1/segments/{}/membership", self.segment_id);
        let page: response::MembershipPage =
            self.client.get(&path, &query, counters, cancel).await?;
        self.pages += 1;
        self.done = !self.paging.advance(page.next);
        Ok(Some(page.identifiers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_stops_on_missing_or_repeated_tokens() {
        let mut p = Paging::default();
        assert!(p.query().is_empty());
        assert!(p.advance(Some("a".into())));
        assert_eq!(p.query(), [("start", "a".to_string())]);
        assert!(p.advance(Some("b".into())));
        assert!(!p.advance(Some("a".into())));
        assert!(!Paging::default().advance(None));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let c = AppClient::new(
            "https://api.customer.io/",
            Secret::new("sekrit-app-key"),
            Arc::new(RateGate::per_second(10)),
            RetryPolicy {
                max_attempts: 1,
                base_delay: Duration::from_millis(1),
                max_wait: Duration::from_millis(1),
                max_total_wait: Duration::from_millis(1),
            },
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.base_url(), "https://api.customer.io");
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
