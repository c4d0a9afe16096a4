//! The App API client: segments, segment membership, campaigns, campaign metrics, the
//! workspace's object types, and reporting webhooks (list, create or update).
//!
//! Owns: App endpoints and auth (`Authorization: Bearer <app_api_key>` on the shared
//! [`ApiClient`], region host from `customerio.app_url`), the one [`Pager`] for every listing,
//! the credential check, and turning each final response into a value or an [`AppError`]
//! (401/403 = the key, 3xx = the region, 404 = the resource is gone). Every attempt goes
//! through the process-wide App rate gate and the shared retry policy in `http/`.
//! Must not: write to any database or decide what a pull does with what it reads (`pull/`
//! does), and must not retry by itself (`http::retry` does).

pub(crate) mod pager;
pub(crate) mod response;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsPeriod;
use crate::config::{Secret, Settings};
use crate::http::{
    ApiClient, Auth, HttpError, MAX_APP_ANSWER_BYTES, RateGate, Request, RetriesExhausted,
    RetryPolicy, RunCounters,
};

pub(crate) use pager::Pager;
pub(crate) use response::{Campaign, Member, Segment, Series};

/// The API's largest membership page.
pub(crate) const MAX_PAGE_SIZE: u32 = 30_000;

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
        "the App API redirected {what} (HTTP {status}{}): the workspace is in another region; set `customerio.region` in config.yaml to match it",
        location.as_deref().map(|l| format!(" to {l}")).unwrap_or_default()
    )]
    WrongRegion {
        status: u16,
        what: String,
        /// Where it pointed: scheme and host only.
        location: Option<String>,
    },
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

/// Why [`AppClient::check_credentials`] did not pass. `validate --connect` tells the user
/// which of these it is, because the fix differs: a wrong key is fixed in config, an
/// unreachable host in the network or the region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CredentialCheckError {
    /// 401 or 403: the key is wrong, belongs to another workspace or region, or lacks scope.
    #[error(
        "Customer.io refused the App API key (HTTP {status} on {CHECK_PATH}): check CIO_APP_API_KEY (`customerio.app_api_key` in config.yaml), that it is an App API key (not a Track key) of this workspace and region, and that its scope allows reading"
    )]
    Rejected { status: u16 },
    /// No HTTP answer at all: DNS, refused connection, TLS, timeout.
    #[error(
        "cannot reach the App API at {url}: {error}; check `customerio.app_url` / `customerio.region` in config.yaml, DNS, firewalls and proxies"
    )]
    Unreachable { url: String, error: String },
    /// 3xx: Customer.io redirects a call to the other region's host.
    #[error(
        "the App API redirected {CHECK_PATH} (HTTP {status}{}): the workspace is in another region; set `customerio.region` in config.yaml to match it",
        location.as_deref().map(|l| format!(" to {l}")).unwrap_or_default()
    )]
    WrongRegion {
        status: u16,
        location: Option<String>,
    },
    /// Any other answer (a 5xx, a 404, a proxy's page): whether the key is good is unknown.
    #[error(
        "the App API answered {CHECK_PATH} unexpectedly ({answer}), so the key could not be checked; try again later, and check any proxy in between"
    )]
    Unexpected { answer: String },
}

/// The request the credential check makes: the cheapest documented App GET
/// (customerio-api.md §1: "check the App key with `GET /v1/segments`").
const CHECK_PATH: &str = "GET /v1/segments";

/// The App API on [`ApiClient`] with Bearer auth; `Debug` shows no key.
#[derive(Clone, Debug)]
pub(crate) struct AppClient {
    api: ApiClient,
}

impl AppClient {
    pub(crate) fn new(
        base: &str,
        api_key: Secret,
        gate: Arc<RateGate>,
        policy: RetryPolicy,
        timeout: Duration,
    ) -> Result<Self, AppError> {
        let auth = Auth::Bearer(api_key);
        let api = ApiClient::new(
            base,
            auth,
            gate,
            policy,
            timeout,
            MAX_APP_ANSWER_BYTES,
            crate::observe::Api::App,
        )
        .map_err(|e| AppError::Client(e.to_string()))?;
        Ok(Self { api })
    }

    /// The client for config.yaml's `customerio` and `app` sections, on the process's App gate.
    pub(crate) fn from_settings(
        settings: &Settings,
        gate: Arc<RateGate>,
    ) -> Result<Self, AppError> {
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

    /// Checks the App API key with one request (`GET /v1/segments`, not retried, so a
    /// pre-flight answers at once). `Ok` means Customer.io accepted the key.
    pub(crate) async fn check_credentials(&self) -> Result<(), CredentialCheckError> {
        let resp = match self.api.send_once(&Request::get("/v1/segments")).await {
            Ok(resp) => resp,
            Err(RetriesExhausted {
                last: HttpError::Transport(error),
                ..
            }) => {
                return Err(CredentialCheckError::Unreachable {
                    url: self.api.shown_base(),
                    error,
                });
            }
            Err(e) => {
                return Err(CredentialCheckError::Unexpected {
                    answer: e.last.to_string(),
                });
            }
        };
        match resp.status {
            200..=299 => Ok(()),
            401 | 403 => Err(CredentialCheckError::Rejected {
                status: resp.status,
            }),
            300..=399 => Err(CredentialCheckError::WrongRegion {
                status: resp.status,
                location: resp.redirect_to,
            }),
            status => Err(CredentialCheckError::Unexpected {
                answer: format!("HTTP {status}: {}", resp.body_excerpt()),
            }),
        }
    }

    /// One GET, retried per the policy, its 2xx read as `T`; `what` names it in errors
    /// (`GET /v1/segments`).
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<T, AppError> {
        let what = format!("GET {path}");
        let resp = self
            .api
            .send(&Request::get(path).query(query), counters, cancel)
            .await
            .map_err(|error| AppError::Failed {
                what: what.clone(),
                error,
            })?;
        decode(resp, what)
    }

    /// `GET /v1/object_types`: the workspace's custom object types (id, name).
    pub(crate) async fn object_types(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<response::ObjectType>, AppError> {
        let list: response::ObjectTypeList =
            self.get("/v1/object_types", &[], counters, cancel).await?;
        Ok(list.types)
    }

    /// `GET /v1/segments`: every segment of the workspace.
    pub(crate) async fn segments(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Segment>, AppError> {
        Pager::<response::SegmentList>::new(self.clone(), "/v1/segments".into(), Vec::new())
            .all(counters, cancel)
            .await
    }

    /// `GET /v1/campaigns`: every campaign of the workspace.
    pub(crate) async fn campaigns(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Campaign>, AppError> {
        Pager::<response::CampaignList>::new(self.clone(), "/v1/campaigns".into(), Vec::new())
            .all(counters, cancel)
            .await
    }

    /// Pages through one segment's members, `page_size` (1..=30000) at a time. A 404
    /// ([`AppError::NotFound`]) from any page means the segment is gone.
    pub(crate) fn membership(&self, segment_id: i64, page_size: u32) -> MembershipPager {
        Pager::new(
            self.clone(),
            format!("/v1/segments/{segment_id}/membership"),
            vec![("limit", page_size.clamp(1, MAX_PAGE_SIZE).to_string())],
        )
    }

    /// `GET /v1/campaigns/{id}/metrics?period=&steps=` (v1): metric → values, index 0 oldest.
    pub(crate) async fn campaign_metrics(
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

/// A reporting webhook as the App API lists it (`GET /v1/reporting_webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub(crate) struct ReportingWebhook {
    pub(crate) id: i64,
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) endpoint: String,
    #[serde(default)]
    pub(crate) events: Vec<String>,
    #[serde(default)]
    pub(crate) disabled: bool,
    #[serde(default)]
    pub(crate) full_resolution: bool,
    #[serde(default)]
    pub(crate) with_content: bool,
}

/// What `webhooks register` asks for.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ReportingWebhookSpec {
    pub(crate) name: String,
    pub(crate) endpoint: String,
    pub(crate) events: Vec<String>,
    pub(crate) disabled: bool,
    pub(crate) full_resolution: bool,
    pub(crate) with_content: bool,
}

/// Whether `register` made a new webhook or changed the one at the same URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registered {
    Created,
    Updated,
}

#[derive(serde::Deserialize)]
struct ReportingWebhookList {
    #[serde(default)]
    reporting_webhooks: Option<Vec<ReportingWebhook>>,
}

/// A create or update answer: the webhook itself, or wrapped as `{"reporting_webhook": …}`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ReportingWebhookAnswer {
    Wrapped { reporting_webhook: ReportingWebhook },
    Plain(ReportingWebhook),
}

impl AppClient {
    /// `GET /v1/reporting_webhooks`: every reporting webhook of the workspace.
    pub(crate) async fn reporting_webhooks(
        &self,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<Vec<ReportingWebhook>, AppError> {
        let list: ReportingWebhookList = self
            .get("/v1/reporting_webhooks", &[], counters, cancel)
            .await?;
        Ok(list.reporting_webhooks.unwrap_or_default())
    }

    /// Creates the webhook, or updates the one already posting to the same endpoint (`GET`,
    /// then `PUT /v1/reporting_webhooks/{id}` or `POST /v1/reporting_webhooks`), so running
    /// `register` twice leaves one webhook.
    pub(crate) async fn register_reporting_webhook(
        &self,
        spec: &ReportingWebhookSpec,
        counters: &Arc<RunCounters>,
        cancel: &CancellationToken,
    ) -> Result<(Registered, ReportingWebhook), AppError> {
        let existing = self
            .reporting_webhooks(counters, cancel)
            .await?
            .into_iter()
            .find(|w| w.endpoint == spec.endpoint);
        let body = bytes::Bytes::from(
            serde_json::to_vec(spec).map_err(|e| AppError::Client(e.to_string()))?,
        );
        let (how, path) = match &existing {
            Some(w) => (
                Registered::Updated,
                format!("/v1/reporting_webhooks/{}", w.id),
            ),
            None => (Registered::Created, "/v1/reporting_webhooks".to_string()),
        };
        let req = match how {
            Registered::Updated => Request::put(&path),
            Registered::Created => Request::post(&path),
        };
        let what = format!(
            "{} {path}",
            if how == Registered::Updated {
                "PUT"
            } else {
                "POST"
            }
        );
        let resp = self
            .api
            .send(&req.json_body(body), counters, cancel)
            .await
            .map_err(|error| AppError::Failed {
                what: what.clone(),
                error,
            })?;
        let answer: ReportingWebhookAnswer = decode(resp, what)?;
        let hook = match answer {
            ReportingWebhookAnswer::Wrapped { reporting_webhook } => reporting_webhook,
            ReportingWebhookAnswer::Plain(w) => w,
        };
        Ok((how, hook))
    }
}

/// A final answer read as `T` (2xx), or the [`AppError`] its status means.
fn decode<T: DeserializeOwned>(resp: crate::http::Response, what: String) -> Result<T, AppError> {
    match resp.status {
        200..=299 => serde_json::from_slice(&resp.body).map_err(|e| AppError::Decode {
            what,
            message: e.to_string(),
            body: resp.body_excerpt(),
        }),
        300..=399 => Err(AppError::WrongRegion {
            status: resp.status,
            what,
            location: resp.redirect_to,
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

/// One segment's membership, a page at a time (pages are not kept: a caller streams them on).
pub(crate) type MembershipPager = Pager<response::MembershipPage>;

/// The API's name of a metrics period.
pub(crate) fn period_name(p: MetricsPeriod) -> &'static str {
    match p {
        MetricsPeriod::Hours => "hours",
        MetricsPeriod::Days => "days",
        MetricsPeriod::Weeks => "weeks",
        MetricsPeriod::Months => "months",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str, key: &str) -> AppClient {
        AppClient::new(
            base,
            Secret::new(key),
            Arc::new(RateGate::per_second(100)),
            RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_millis(1),
                max_wait: Duration::from_millis(5),
                max_total_wait: Duration::from_secs(1),
            },
            Duration::from_secs(5),
        )
        .expect("client")
    }

    #[tokio::test]
    async fn the_credential_check_tells_a_wrong_key_from_an_unreachable_host() {
        let sim = crate::simulator::Simulator::start(Default::default())
            .await
            .expect("simulator");
        assert_eq!(
            client(&sim.url(), "demo-app-key").check_credentials().await,
            Ok(())
        );
        let wrong = client(&sim.url(), "wrong-key").check_credentials().await;
        assert_eq!(wrong, Err(CredentialCheckError::Rejected { status: 401 }));
        let text = wrong.unwrap_err().to_string();
        assert!(
            text.contains("CIO_APP_API_KEY") && !text.contains("wrong-key"),
            "{text}"
        );
        assert_eq!(
            sim.requests().len(),
            2,
            "one request per check, none retried"
        );

        // A port nobody listens on: bind one, note it, and close it again.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let gone = client(&format!("http://127.0.0.1:{port}"), "demo-app-key")
            .check_credentials()
            .await;
        match gone {
            Err(CredentialCheckError::Unreachable { url, error }) => {
                assert_eq!(url, format!("http://127.0.0.1:{port}"));
                assert!(error.contains("could not connect"), "{error}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
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
        assert_eq!(c.api.shown_base(), "https://api.customer.io");
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
