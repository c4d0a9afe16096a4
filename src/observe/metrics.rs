//! The metrics registry: every metric cio-sync exports, with its type, labels and help text.
//!
//! Owns: the [`Metrics`] families, their registration under the `cio_sync_` prefix, the
//! histogram buckets, and encoding the registry in the OpenMetrics text format for
//! `/metrics` (or a file). Must not: be incremented from outside `observe/`: every change to
//! a metric goes through a typed event in `events.rs`, which also logs it, so the log and the
//! counters cannot drift apart.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which Customer.io API a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Track,
    App,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Track => "track",
            Api::App => "app",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct JobLabels {
    pub(crate) job: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ApiLabels {
    pub(crate) api: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) api: &'static str,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `error` when no HTTP answer came (timeout, refused).
    pub(crate) status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RunLabels {
    pub(crate) job: String,
    pub(crate) outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct WebhookReasonLabels {
    pub(crate) reason: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 5 ms … ~82 s: a request answers in milliseconds, a 429 round trip takes seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn run_seconds_histogram() -> Histogram {
    // 0.1 s … ~2.3 days: a small CSV takes a second, a first full load of a table hours.
    Histogram::new(exponential_buckets(0.1, 4.0, 12))
}

fn items_histogram() -> Histogram {
    // 1 … 1024 items; Customer.io's v2 batch holds at most 1000 (customerio-api.md).
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn bytes_histogram() -> Histogram {
    // 256 B … 8 MiB; a v2 batch body is capped at 500 KB.
    Histogram::new(exponential_buckets(256.0, 2.0, 16))
}

/// Every metric of the process. One instance lives for the process ([`global`]); tests make
/// their own with [`Metrics::new`] so they can assert exact values.
pub struct Metrics {
    registry: Registry,
    pub(crate) rows_read: Family<JobLabels, Counter>,
    pub(crate) rows_delivered: Family<JobLabels, Counter>,
    pub(crate) rows_rejected: Family<JobLabels, Counter>,
    pub(crate) rows_skipped_unchanged: Family<JobLabels, Counter>,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) retries: Family<ApiLabels, Counter>,
    pub(crate) rate_limited: Family<ApiLabels, Counter>,
    pub(crate) retry_after_wait_seconds: Family<ApiLabels, FloatCounter>,
    pub(crate) rate_limiter_wait_seconds: Family<ApiLabels, FloatCounter>,
    pub(crate) request_duration_seconds: HistogramFamily<ApiLabels>,
    pub(crate) batch_items: HistogramFamily<JobLabels>,
    pub(crate) batch_bytes: HistogramFamily<JobLabels>,
    pub(crate) runs: Family<RunLabels, Counter>,
    pub(crate) run_duration_seconds: HistogramFamily<JobLabels>,
    pub(crate) last_success_timestamp_seconds: Family<JobLabels, FloatGauge>,
    pub(crate) consecutive_failures: Family<JobLabels, Gauge>,
    pub(crate) checkpoint_lag_seconds: Family<JobLabels, FloatGauge>,
    pub(crate) checkpoint_lag_bytes: Family<JobLabels, Gauge>,
    pub(crate) webhook_events_stored: Counter,
    pub(crate) webhook_events_duplicate: Counter,
    pub(crate) webhook_requests_refused: Family<WebhookReasonLabels, Counter>,
    pub(crate) webhook_unavailable: Family<WebhookReasonLabels, Counter>,
    pub(crate) webhook_store_failures: Counter,
    pub(crate) webhook_batch_events: Histogram,
    pub(crate) webhook_commit_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cio_sync");
        let m = Self {
            registry: Registry::default(),
            rows_read: Family::default(),
            rows_delivered: Family::default(),
            rows_rejected: Family::default(),
            rows_skipped_unchanged: Family::default(),
            requests: Family::default(),
            retries: Family::default(),
            rate_limited: Family::default(),
            retry_after_wait_seconds: Family::default(),
            rate_limiter_wait_seconds: Family::default(),
            request_duration_seconds: Family::new_with_constructor(seconds_histogram),
            batch_items: Family::new_with_constructor(items_histogram),
            batch_bytes: Family::new_with_constructor(bytes_histogram),
            runs: Family::default(),
            run_duration_seconds: Family::new_with_constructor(run_seconds_histogram),
            last_success_timestamp_seconds: Family::default(),
            consecutive_failures: Family::default(),
            checkpoint_lag_seconds: Family::default(),
            checkpoint_lag_bytes: Family::default(),
            webhook_events_stored: Counter::default(),
            webhook_events_duplicate: Counter::default(),
            webhook_requests_refused: Family::default(),
            webhook_unavailable: Family::default(),
            webhook_store_failures: Counter::default(),
            webhook_batch_events: items_histogram(),
            webhook_commit_seconds: seconds_histogram(),
        };
        // Counters get their `_total` suffix from the encoder, help texts their final period.
        let r = &mut registry;
        r.register(
            "rows_read",
            "Rows read from a job's source",
            m.rows_read.clone(),
        );
        r.register(
            "rows_delivered",
            "Rows Customer.io accepted",
            m.rows_delivered.clone(),
        );
        r.register(
            "rows_rejected",
            "Rows dead-lettered (refused by Customer.io, unreadable or unmappable)",
            m.rows_rejected.clone(),
        );
        r.register(
            "rows_skipped_unchanged",
            "Rows settled without sending because nothing changed since the last delivery",
            m.rows_skipped_unchanged.clone(),
        );
        r.register(
            "requests",
            "HTTP requests to Customer.io, every attempt, by API and status class",
            m.requests.clone(),
        );
        r.register(
            "retries",
            "Requests sent again after a retried answer or a transport error",
            m.retries.clone(),
        );
        r.register(
            "rate_limited",
            "HTTP 429 answers from Customer.io",
            m.rate_limited.clone(),
        );
        r.register(
            "retry_after_wait_seconds",
            "Seconds waited before retries because the server sent Retry-After",
            m.retry_after_wait_seconds.clone(),
        );
        r.register(
            "rate_limiter_wait_seconds",
            "Seconds requests waited for the process's own rate gate (including 429 pauses)",
            m.rate_limiter_wait_seconds.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from sending one attempt to having read its answer",
            m.request_duration_seconds.clone(),
        );
        r.register(
            "batch_items",
            "Operations per Track batch sent",
            m.batch_items.clone(),
        );
        r.register(
            "batch_bytes",
            "Body size of each Track batch sent",
            m.batch_bytes.clone(),
        );
        r.register("runs", "Job runs that ended, by outcome", m.runs.clone());
        r.register(
            "run_duration_seconds",
            "How long each job run took",
            m.run_duration_seconds.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the job's last run that completed (succeeded or dead-lettered some rows)",
            m.last_success_timestamp_seconds.clone(),
        );
        r.register(
            "consecutive_failures",
            "Failed runs of the job since its last completed one",
            m.consecutive_failures.clone(),
        );
        r.register(
            "checkpoint_lag_seconds",
            "How far the checkpoint's cursor is behind now (SQL jobs with a timestamp cursor)",
            m.checkpoint_lag_seconds.clone(),
        );
        r.register(
            "checkpoint_lag_bytes",
            "Bytes of the CSV file past the checkpoint, left for the next run",
            m.checkpoint_lag_bytes.clone(),
        );
        r.register(
            "webhook_events_stored",
            "Reporting-webhook events newly stored in cio_message_events",
            m.webhook_events_stored.clone(),
        );
        r.register(
            "webhook_events_duplicate",
            "Reporting-webhook events acknowledged again because their event_id was already stored",
            m.webhook_events_duplicate.clone(),
        );
        r.register(
            "webhook_requests_refused",
            "Reporting-webhook requests refused (401, 413, 400), by reason; each holds back later events",
            m.webhook_requests_refused.clone(),
        );
        r.register(
            "webhook_unavailable",
            "Reporting-webhook requests answered 503 (not committed in time), by reason",
            m.webhook_unavailable.clone(),
        );
        r.register(
            "webhook_store_failures",
            "Transactions of webhook events that failed",
            m.webhook_store_failures.clone(),
        );
        r.register(
            "webhook_batch_events",
            "Webhook events per committed transaction (group commit)",
            m.webhook_batch_events.clone(),
        );
        r.register(
            "webhook_commit_seconds",
            "Time to commit one transaction of webhook events",
            m.webhook_commit_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// The registry in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an error here would come from a label encoder,
        // and ours are plain strings.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "Could not encode the metrics.");
        }
        out
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics, which [`crate::observe::emit`] updates and `/metrics` serves.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

pub(crate) fn job(job: &str) -> JobLabels {
    JobLabels {
        job: job.to_string(),
    }
}

pub(crate) fn api(api: Api) -> ApiLabels {
    ApiLabels { api: api.as_str() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_with_the_prefix_their_labels_and_a_total_suffix() {
        let m = Metrics::new();
        m.rows_read.get_or_create(&job("orders")).inc_by(3);
        m.requests
            .get_or_create(&RequestLabels {
                api: "track",
                status_class: "2xx",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("cio_sync_rows_read_total{job=\"orders\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("cio_sync_requests_total{api=\"track\",status_class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
