//! Typed internal events: each operational fact logs its line and updates its metrics in one
//! call, so the log and `/metrics` cannot drift apart (Vector's `internal_events`).
//!
//! Owns: one struct per fact, named as a past-tense fact, and what each does to the log and to
//! the [`Metrics`]. Must not: decide anything about the pipeline: callers say what happened;
//! events only record it. Events carry no secrets and no row data beyond what the log already
//! showed (line numbers, reasons).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::metrics::{
    Api, Metrics, RequestLabels, RunLabels, WebhookReasonLabels, api, global, job,
};

/// A fact worth logging and counting.
pub trait InternalEvent {
    /// Logs the event and updates `metrics`.
    fn emit_to(self, metrics: &Metrics);
}

/// Logs `event` and updates the process's metrics.
pub fn emit(event: impl InternalEvent) {
    event.emit_to(global());
}

/// A job's row events, registered once per run (Vector's registered events): the series are
/// looked up here, so each row then costs one atomic add, not a label lookup.
#[derive(Debug, Clone)]
pub struct JobRowEvents {
    read: Counter,
    delivered: Counter,
    rejected: Counter,
    skipped_unchanged: Counter,
}

impl JobRowEvents {
    /// The row events of `job` in the process's metrics.
    pub fn register(job_name: &str) -> Self {
        Self::register_in(global(), job_name)
    }

    /// The row events of `job` in `m`.
    pub fn register_in(m: &Metrics, job_name: &str) -> Self {
        let labels = job(job_name);
        Self {
            read: m.rows_read.get_or_create_owned(&labels),
            delivered: m.rows_delivered.get_or_create_owned(&labels),
            rejected: m.rows_rejected.get_or_create_owned(&labels),
            skipped_unchanged: m.rows_skipped_unchanged.get_or_create_owned(&labels),
        }
    }

    /// Rows came out of the source (counted before mapping; unreadable rows too).
    pub fn read(&self, count: u64) {
        tracing::trace!(count, "Rows read.");
        self.read.inc_by(count);
    }

    /// Customer.io accepted rows.
    pub fn delivered(&self, count: u64) {
        tracing::trace!(count, "Rows delivered.");
        self.delivered.inc_by(count);
    }

    /// A row was dead-lettered with its reason.
    pub fn dead_lettered(&self, line: u64, reason: &str) {
        tracing::debug!(line, reason = %reason, "Row dead-lettered.");
        self.rejected.inc();
    }

    /// A row was settled without sending: the batch stage (the change filter) found nothing
    /// new in it.
    pub fn skipped_unchanged(&self, line: u64) {
        tracing::debug!(line, "Row settled without sending.");
        self.skipped_unchanged.inc();
    }
}

/// A Track batch was handed to the client.
#[derive(Debug)]
pub struct BatchSent<'a> {
    pub job: &'a str,
    pub items: usize,
    pub bytes: usize,
}

impl InternalEvent for BatchSent<'_> {
    fn emit_to(self, m: &Metrics) {
        tracing::trace!(items = self.items, bytes = self.bytes, "Batch sent.");
        let labels = job(self.job);
        m.batch_items
            .get_or_create(&labels)
            .observe(self.items as f64);
        m.batch_bytes
            .get_or_create(&labels)
            .observe(self.bytes as f64);
    }
}

/// One attempt of a request ended: with an HTTP status, or without an answer (`None`).
#[derive(Debug)]
pub struct RequestAttempted {
    pub api: Api,
    pub status: Option<u16>,
    /// From sending to having read the answer (or failed).
    pub elapsed: Duration,
}

impl InternalEvent for RequestAttempted {
    fn emit_to(self, m: &Metrics) {
        let status_class = match self.status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        };
        tracing::trace!(
            api = self.api.as_str(),
            status = self.status,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Request answered."
        );
        m.requests
            .get_or_create(&RequestLabels {
                api: self.api.as_str(),
                status_class,
            })
            .inc();
        if self.status == Some(429) {
            m.rate_limited.get_or_create(&api(self.api)).inc();
        }
        m.request_duration_seconds
            .get_or_create(&api(self.api))
            .observe(self.elapsed.as_secs_f64());
    }
}

/// A request is sent again after `wait`.
pub struct RequestRetrying<'a> {
    pub api: Api,
    pub error: &'a dyn std::fmt::Display,
    pub wait: Duration,
    /// The wait is the server's `Retry-After` (capped), not the backoff's.
    pub from_retry_after: bool,
}

impl InternalEvent for RequestRetrying<'_> {
    fn emit_to(self, m: &Metrics) {
        tracing::warn!(error = %self.error, wait_ms = self.wait.as_millis() as u64, "Request failed; retrying.");
        m.retries.get_or_create(&api(self.api)).inc();
        if self.from_retry_after {
            m.retry_after_wait_seconds
                .get_or_create(&api(self.api))
                .inc_by(self.wait.as_secs_f64());
        }
    }
}

/// A request waited for the process's rate gate (its bucket, or a pause a 429 set).
#[derive(Debug)]
pub struct RateGateWaited {
    pub api: Api,
    pub waited: Duration,
}

impl InternalEvent for RateGateWaited {
    fn emit_to(self, m: &Metrics) {
        if self.waited.is_zero() {
            return;
        }
        tracing::trace!(
            api = self.api.as_str(),
            waited_ms = self.waited.as_millis() as u64,
            "Waited for the rate gate."
        );
        m.rate_limiter_wait_seconds
            .get_or_create(&api(self.api))
            .inc_by(self.waited.as_secs_f64());
    }
}

/// How a run ended, as far as the job's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunHealth {
    /// The run read its source to the end (some rows may be dead-lettered).
    Completed,
    /// The run failed: it could not finish.
    Failed,
    /// The run was stopped before the end (shutdown); says nothing about the job's health.
    Interrupted,
}

/// A job run ended.
#[derive(Debug)]
pub struct RunEnded<'a> {
    pub job: &'a str,
    /// The outcome as the run history names it (`succeeded`, `rejected_rows`, `failed`, …).
    pub outcome: &'a str,
    pub health: RunHealth,
    pub elapsed: Duration,
    /// When it ended, as Unix seconds.
    pub at_unix_secs: f64,
}

impl InternalEvent for RunEnded<'_> {
    fn emit_to(self, m: &Metrics) {
        tracing::debug!(
            job = self.job,
            outcome = self.outcome,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Run ended."
        );
        let labels = job(self.job);
        m.runs
            .get_or_create(&RunLabels {
                job: self.job.to_string(),
                outcome: outcome_label(self.outcome),
            })
            .inc();
        m.run_duration_seconds
            .get_or_create(&labels)
            .observe(self.elapsed.as_secs_f64());
        match self.health {
            RunHealth::Completed => {
                m.last_success_timestamp_seconds
                    .get_or_create(&labels)
                    .set(self.at_unix_secs);
                m.consecutive_failures.get_or_create(&labels).set(0);
            }
            RunHealth::Failed => {
                m.consecutive_failures.get_or_create(&labels).inc();
            }
            RunHealth::Interrupted => {}
        }
    }
}

/// The label values of `cio_sync_runs_total{outcome}`: a fixed set, so a label never
/// carries free text.
fn outcome_label(outcome: &str) -> &'static str {
    match outcome {
        "succeeded" => "succeeded",
        "rejected_rows" => "rejected_rows",
        "interrupted" => "interrupted",
        "aborted" => "aborted",
        _ => "failed",
    }
}

/// What a job's history said at start, so the health gauges mean the same after a restart;
/// also makes the job's row counters exist (at 0) before its first run.
#[derive(Debug)]
pub struct JobHistoryLoaded<'a> {
    pub job: &'a str,
    /// Unix seconds of the last completed run, if any.
    pub last_success_unix_secs: Option<f64>,
    pub consecutive_failures: i64,
}

impl InternalEvent for JobHistoryLoaded<'_> {
    fn emit_to(self, m: &Metrics) {
        tracing::debug!(
            job = self.job,
            last_success = self.last_success_unix_secs,
            consecutive_failures = self.consecutive_failures,
            "Job health loaded from the run history."
        );
        let labels = job(self.job);
        // Every per-job series exists from the start, at 0, so `rate()` and alerts see a job
        // that has not moved yet rather than no series at all.
        JobRowEvents::register_in(m, self.job);
        if let Some(at) = self.last_success_unix_secs {
            m.last_success_timestamp_seconds
                .get_or_create(&labels)
                .set(at);
        }
        m.consecutive_failures
            .get_or_create(&labels)
            .set(self.consecutive_failures);
    }
}

/// How far behind the source a job's checkpoint is, where the source can tell.
#[derive(Debug)]
pub enum CheckpointLag<'a> {
    /// A SQL job with a timestamp cursor: now minus the cursor's value.
    Seconds { job: &'a str, seconds: f64 },
    /// A CSV job: the file's size minus the checkpoint's byte offset.
    Bytes { job: &'a str, bytes: u64 },
}

impl InternalEvent for CheckpointLag<'_> {
    fn emit_to(self, m: &Metrics) {
        match self {
            CheckpointLag::Seconds { job: name, seconds } => {
                tracing::debug!(job = name, lag_secs = seconds, "Checkpoint lag.");
                m.checkpoint_lag_seconds
                    .get_or_create(&job(name))
                    .set(seconds);
            }
            CheckpointLag::Bytes { job: name, bytes } => {
                tracing::debug!(job = name, lag_bytes = bytes, "Checkpoint lag.");
                m.checkpoint_lag_bytes
                    .get_or_create(&job(name))
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// The webhook receiver committed one transaction of events.
#[derive(Debug)]
pub struct WebhookBatchCommitted {
    /// Requests answered by this transaction.
    pub events: u64,
    /// Of which newly stored.
    pub stored: u64,
    /// Of which already stored (Customer.io retries), acknowledged again.
    pub duplicates: u64,
    pub elapsed: Duration,
}

impl InternalEvent for WebhookBatchCommitted {
    fn emit_to(self, m: &Metrics) {
        tracing::debug!(
            events = self.events,
            stored = self.stored,
            duplicates = self.duplicates,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Webhook events committed."
        );
        m.webhook_events_stored.inc_by(self.stored);
        m.webhook_events_duplicate.inc_by(self.duplicates);
        m.webhook_batch_events.observe(self.events as f64);
        m.webhook_commit_seconds.observe(self.elapsed.as_secs_f64());
    }
}

/// The webhook receiver refused a request (401, 413, 400). Customer.io holds back every later
/// event behind a refused one, so each refusal is a warning.
#[derive(Debug)]
pub struct WebhookRefused<'a> {
    pub status: u16,
    /// `bad_signature`, `stale_timestamp`, `too_large`, …
    pub reason: &'static str,
    pub detail: &'a str,
}

impl InternalEvent for WebhookRefused<'_> {
    fn emit_to(self, m: &Metrics) {
        tracing::warn!(
            status = self.status,
            reason = self.reason,
            detail = %self.detail,
            "Webhook request refused; Customer.io holds back later events until this one is accepted."
        );
        m.webhook_requests_refused
            .get_or_create(&WebhookReasonLabels {
                reason: self.reason,
            })
            .inc();
    }
}

/// The webhook receiver answered 503: the event was not committed in time (Customer.io sends
/// it again).
#[derive(Debug)]
pub struct WebhookUnavailable {
    /// `store_failed`, `timeout` or `stopping`.
    pub reason: &'static str,
}

impl InternalEvent for WebhookUnavailable {
    fn emit_to(self, m: &Metrics) {
        tracing::debug!(reason = self.reason, "Webhook answered 503.");
        m.webhook_unavailable
            .get_or_create(&WebhookReasonLabels {
                reason: self.reason,
            })
            .inc();
    }
}

/// A transaction of webhook events failed; its requests are answered 503.
#[derive(Debug)]
pub struct WebhookStoreFailed<'a> {
    pub events: u64,
    pub error: &'a str,
}

impl InternalEvent for WebhookStoreFailed<'_> {
    fn emit_to(self, m: &Metrics) {
        tracing::error!(
            events = self.events,
            error = %self.error,
            "Could not store webhook events; answered 503 so Customer.io sends them again."
        );
        m.webhook_store_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_counts_up_and_a_completed_one_resets_and_stamps_the_time() {
        let m = Metrics::new();
        let ended = |health, outcome, at| RunEnded {
            job: "orders",
            outcome,
            health,
            elapsed: Duration::from_millis(1500),
            at_unix_secs: at,
        };
        ended(RunHealth::Failed, "failed", 10.0).emit_to(&m);
        ended(RunHealth::Failed, "failed", 20.0).emit_to(&m);
        let text = m.encode();
        assert!(
            text.contains("cio_sync_consecutive_failures{job=\"orders\"} 2\n"),
            "{text}"
        );
        assert!(
            !text.contains("cio_sync_last_success_timestamp_seconds{"),
            "{text}"
        );
        ended(RunHealth::Completed, "succeeded", 30.0).emit_to(&m);
        ended(RunHealth::Interrupted, "interrupted", 40.0).emit_to(&m);
        let text = m.encode();
        assert!(
            text.contains("cio_sync_consecutive_failures{job=\"orders\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("cio_sync_last_success_timestamp_seconds{job=\"orders\"} 30.0\n"),
            "{text}"
        );
        assert!(
            text.contains("cio_sync_runs_total{job=\"orders\",outcome=\"failed\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cio_sync_run_duration_seconds_count{job=\"orders\"} 4\n"),
            "{text}"
        );
    }

    #[test]
    fn a_429_counts_as_a_4xx_request_and_as_rate_limited() {
        let m = Metrics::new();
        for status in [Some(200), Some(429), Some(503), None] {
            RequestAttempted {
                api: Api::Track,
                status,
                elapsed: Duration::from_millis(5),
            }
            .emit_to(&m);
        }
        let text = m.encode();
        for class in ["2xx", "4xx", "5xx", "error"] {
            assert!(
                text.contains(&format!(
                    "cio_sync_requests_total{{api=\"track\",status_class=\"{class}\"}} 1\n"
                )),
                "{class}: {text}"
            );
        }
        assert!(
            text.contains("cio_sync_rate_limited_total{api=\"track\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn only_retry_after_waits_count_as_retry_after_seconds() {
        let m = Metrics::new();
        let e = "HTTP 429";
        for (wait, from_retry_after) in [(2, true), (1, false)] {
            RequestRetrying {
                api: Api::App,
                error: &e,
                wait: Duration::from_secs(wait),
                from_retry_after,
            }
            .emit_to(&m);
        }
        let text = m.encode();
        assert!(
            text.contains("cio_sync_retries_total{api=\"app\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("cio_sync_retry_after_wait_seconds_total{api=\"app\"} 2.0\n"),
            "{text}"
        );
    }

    #[test]
    fn webhook_events_count_stored_duplicates_refusals_and_503s() {
        let m = Metrics::new();
        WebhookBatchCommitted {
            events: 5,
            stored: 3,
            duplicates: 2,
            elapsed: Duration::from_millis(4),
        }
        .emit_to(&m);
        WebhookRefused {
            status: 401,
            reason: "bad_signature",
            detail: "X-CIO-Signature matches no configured key",
        }
        .emit_to(&m);
        WebhookUnavailable {
            reason: "store_failed",
        }
        .emit_to(&m);
        WebhookStoreFailed {
            events: 5,
            error: "database is locked",
        }
        .emit_to(&m);
        let text = m.encode();
        for line in [
            "cio_sync_webhook_events_stored_total 3\n",
            "cio_sync_webhook_events_duplicate_total 2\n",
            "cio_sync_webhook_requests_refused_total{reason=\"bad_signature\"} 1\n",
            "cio_sync_webhook_unavailable_total{reason=\"store_failed\"} 1\n",
            "cio_sync_webhook_store_failures_total 1\n",
            "cio_sync_webhook_batch_events_count 1\n",
            "cio_sync_webhook_commit_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
