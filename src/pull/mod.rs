//! Pull jobs: App API → the `cio_*` tables of a database.
//!
//! Owns: one pull run — what to fetch for a job's `pull:` section (segments, membership of
//! `all` or the listed segments, campaigns, v1 campaign metrics), in which order, recording the
//! run (start, outcome, summary) in the state database, and `run --dry-run` for pull jobs.
//! A segment's membership is fetched completely into staging before it replaces the stored one
//! in one transaction, so a failure on any page leaves the previous membership in place.
//! Must not: build HTTP requests (`app_api/`) or write SQL itself (`store.rs`), and must not
//! retry: the shared policy in `http/` already did.

pub mod period;
pub mod store;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app_api::{self, AppClient, AppError, Campaign, Segment};
use crate::config::MembershipSelection;
use crate::config::{JobSpec, PullJob, Settings};
use crate::http::{RateGate, RunCounters};
use crate::pipeline::{RunReport, StopSignal};
use crate::state::{self, Outcome, RunCounts, StateError, StateStore};

pub use store::{Store, StoreError};

/// Why a pull could not run or stopped. Each message already holds its cause's text (so the
/// run history has it all), which is why the cause is not also chained as a `source`: the CLI
/// prints chains with `{:#}` and would repeat it.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("job `{job}`: {error}")]
    App { job: String, error: AppError },
    #[error("job `{job}`: {error}")]
    State { job: String, error: StateError },
    #[error("job `{job}`: {error}")]
    Store { job: String, error: StoreError },
    #[error("job `{job}`: {what}: {message}")]
    Period {
        job: String,
        what: String,
        message: String,
    },
    #[error(
        "job `{job}`: stopped before the pull finished; segments not yet swapped keep their previous membership"
    )]
    Stopped { job: String },
}

/// Process-wide services a pull run uses.
#[derive(Clone)]
pub struct PullContext {
    pub settings: Arc<Settings>,
    pub state: StateStore,
    /// The App API rate gate shared by every job of the process.
    pub app_gate: Arc<RateGate>,
}

/// What a pull fetched and wrote; the run's `summary`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PullSummary {
    /// Segments listed (and written, unless a dry run).
    pub segments: u64,
    /// Segments newly marked deleted because the listing no longer had them.
    pub segments_deleted: u64,
    /// Segments whose membership was fetched completely (and swapped in).
    pub membership_segments: u64,
    /// Members stored across those segments.
    pub members: u64,
    /// Listed members without a `cio_id`, or listed twice: not stored.
    pub members_skipped: u64,
    pub membership_pages: u64,
    /// Segments whose membership answered 404: gone, their membership removed.
    pub gone_segments: Vec<i64>,
    pub campaigns: u64,
    pub campaigns_deleted: u64,
    /// Metric rows upserted (campaign × metric × period).
    pub metric_points: u64,
    /// App API requests, retries included.
    pub requests: u64,
    pub retries: u64,
    /// Items read from the API (segments, members, campaigns, points), for the run counters.
    #[serde(skip)]
    fetched: u64,
    /// Rows written to the target, for the run counters.
    #[serde(skip)]
    written: u64,
}

/// Runs a pull job once: fetch, write, record the run. A failure after the run has started is
/// reported in the returned report (outcome `failed`, with the error), not as `Err`.
pub async fn run(
    ctx: &PullContext,
    job: &JobSpec,
    pull: &PullJob,
    stop: StopSignal,
) -> Result<RunReport, PullError> {
    let started = Instant::now();
    let app = AppClient::from_settings(&ctx.settings, ctx.app_gate.clone()).map_err(|error| {
        PullError::App {
            job: job.name.clone(),
            error,
        }
    })?;
    let state_err = |error| PullError::State {
        job: job.name.clone(),
        error,
    };
    let run_id = ctx
        .state
        .start_run(&job.name, "pull")
        .await
        .map_err(state_err)?;
    let span = tracing::info_span!("run", job = %job.name, run_id = %run_id);
    async {
        let counters = Arc::new(RunCounters::default());
        let mut summary = PullSummary::default();
        let result = match open_target(ctx, job, pull).await {
            Ok(target) => {
                let mut p = Pull {
                    job,
                    pull,
                    app: &app,
                    target: Some(&target),
                    run_id: &run_id,
                    counters: &counters,
                    cancel: &stop.stop,
                    summary: &mut summary,
                };
                let r = p.go().await;
                // Staging rows of this run exist only after a failure or a stop.
                if r.is_err()
                    && let Err(e) = target.clear_run_staging(&run_id).await
                {
                    tracing::warn!(error = %e, "Could not remove this run's staged members; the job's next run removes them.");
                }
                r
            }
            Err(e) => Err(e),
        };
        let (requests, retries) = counters.snapshot();
        summary.requests = requests;
        summary.retries = retries;
        let (outcome, error) = match &result {
            Ok(()) => (Outcome::Succeeded, None),
            Err(PullError::Stopped { .. }) => (Outcome::Interrupted, result.as_ref().err().map(ToString::to_string)),
            Err(e) if stop.stop.is_cancelled() => {
                tracing::info!(error = %e, "Pull stopped.");
                (Outcome::Interrupted, Some(e.to_string()))
            }
            Err(e) => {
                tracing::error!(error = %e, "Pull failed.");
                (Outcome::Failed, Some(e.to_string()))
            }
        };
        let counts = RunCounts {
            rows_read: summary.fetched,
            rows_delivered: summary.written,
            rows_rejected: 0,
            requests,
            retries,
            rows_unchanged: 0,
        };
        let summary_json = serde_json::to_value(&summary).ok();
        ctx.state
            .finish_run(&run_id, outcome, error.as_deref(), counts, summary_json.as_ref())
            .await
            .map_err(state_err)?;
        tracing::info!(
            outcome = outcome.as_str(),
            segments = summary.segments,
            members = summary.members,
            campaigns = summary.campaigns,
            metric_points = summary.metric_points,
            requests,
            "Run finished."
        );
        Ok(RunReport {
            job: job.name.clone(),
            run_id: run_id.clone(),
            outcome,
            counts,
            resumed_after_rows: 0,
            elapsed_ms: started.elapsed().as_millis() as u64,
            error,
            summary: summary_json,
        })
    }
    .instrument(span)
    .await
}

/// `pull.into`, or the state database itself (sharing its pool, so SQLite keeps one writer).
/// Either way only the pulled tables' own migrator runs on it.
async fn open_target(ctx: &PullContext, job: &JobSpec, pull: &PullJob) -> Result<Store, PullError> {
    let store_err = |error| PullError::Store {
        job: job.name.clone(),
        error,
    };
    match &pull.into {
        Some(url) => Store::open(url, 4).await.map_err(store_err),
        None => {
            let store = Store::new(
                ctx.state.pool().clone(),
                ctx.state.backend(),
                ctx.state.url().masked(),
            );
            store.migrate().await.map_err(store_err)?;
            Ok(store)
        }
    }
}

/// What `run --dry-run` reports for a pull job.
#[derive(Debug, Serialize)]
pub struct PullDryRunReport {
    pub job: String,
    /// Where a real run would write (masked URL).
    pub target: String,
    #[serde(flatten)]
    pub summary: PullSummary,
}

/// Fetches everything a run would, counts it, and writes nothing (no database is opened).
pub async fn dry_run(
    settings: &Settings,
    job: &JobSpec,
    pull: &PullJob,
) -> Result<PullDryRunReport, PullError> {
    let gate = Arc::new(RateGate::per_second(settings.app.rate_limit_per_sec));
    let app = AppClient::from_settings(settings, gate).map_err(|error| PullError::App {
        job: job.name.clone(),
        error,
    })?;
    let counters = Arc::new(RunCounters::default());
    let cancel = CancellationToken::new();
    let mut summary = PullSummary::default();
    let mut p = Pull {
        job,
        pull,
        app: &app,
        target: None,
        run_id: "dry-run",
        counters: &counters,
        cancel: &cancel,
        summary: &mut summary,
    };
    p.go().await?;
    let (requests, retries) = counters.snapshot();
    summary.requests = requests;
    summary.retries = retries;
    Ok(PullDryRunReport {
        job: job.name.clone(),
        target: pull.into.as_ref().unwrap_or(&settings.state_url).masked(),
        summary,
    })
}

/// One pull, writing to `target` (or only counting, for a dry run).
struct Pull<'a> {
    job: &'a JobSpec,
    pull: &'a PullJob,
    app: &'a AppClient,
    /// `None`: dry run.
    target: Option<&'a Store>,
    run_id: &'a str,
    counters: &'a Arc<RunCounters>,
    cancel: &'a CancellationToken,
    summary: &'a mut PullSummary,
}

impl Pull<'_> {
    fn app_err(&self) -> impl FnOnce(AppError) -> PullError + '_ {
        |error| PullError::App {
            job: self.job.name.clone(),
            error,
        }
    }

    fn store_err(&self) -> impl FnOnce(StoreError) -> PullError + '_ {
        |error| PullError::Store {
            job: self.job.name.clone(),
            error,
        }
    }

    fn check_stop(&self) -> Result<(), PullError> {
        if self.cancel.is_cancelled() {
            Err(PullError::Stopped {
                job: self.job.name.clone(),
            })
        } else {
            Ok(())
        }
    }

    async fn go(&mut self) -> Result<(), PullError> {
        if let Some(t) = self.target {
            let stale = t
                .clear_job_staging(&self.job.name)
                .await
                .map_err(self.store_err())?;
            if stale > 0 {
                tracing::info!(
                    rows = stale,
                    "Removed members an interrupted earlier run had staged."
                );
            }
        }
        let need_segment_list =
            self.pull.segments || matches!(self.pull.membership, Some(MembershipSelection::All));
        let segments = if need_segment_list {
            Some(self.segments().await?)
        } else {
            None
        };
        if let Some(selection) = self.pull.membership.clone() {
            let ids: Vec<i64> = match selection {
                MembershipSelection::All => segments.iter().flatten().map(|s| s.id).collect(),
                MembershipSelection::Ids(ids) => ids,
            };
            for id in &ids {
                self.check_stop()?;
                self.membership(*id).await?;
            }
            if matches!(self.pull.membership, Some(MembershipSelection::All))
                && let Some(t) = self.target
            {
                // `all` means the table holds exactly the segments listed now.
                let listed: BTreeSet<i64> = ids.iter().copied().collect();
                for stale in t.segments_with_members().await.map_err(self.store_err())? {
                    if !listed.contains(&stale) {
                        let n = t.delete_membership(stale).await.map_err(self.store_err())?;
                        tracing::info!(
                            segment_id = stale,
                            rows = n,
                            "Removed the membership of a segment that no longer exists."
                        );
                    }
                }
            }
        }
        if self.pull.campaigns || self.pull.metrics.is_some() {
            self.check_stop()?;
            let campaigns = self.campaigns().await?;
            if let Some(metrics) = self.pull.metrics.clone() {
                for c in &campaigns {
                    self.check_stop()?;
                    self.metrics(c.id, metrics.period, metrics.steps).await?;
                }
            }
        }
        Ok(())
    }

    async fn segments(&mut self) -> Result<Vec<Segment>, PullError> {
        let segments = self
            .app
            .segments(self.counters, self.cancel)
            .await
            .map_err(self.app_err())?;
        self.summary.fetched += segments.len() as u64;
        if self.pull.segments {
            self.summary.segments = segments.len() as u64;
            if let Some(t) = self.target {
                let deleted = t
                    .replace_segments(self.run_id, &segments, state::now_ms())
                    .await
                    .map_err(self.store_err())?;
                self.summary.segments_deleted = deleted;
                self.summary.written += segments.len() as u64;
                tracing::info!(segments = segments.len(), deleted, "Segments written.");
            }
        }
        Ok(segments)
    }

    /// Fetches every page of one segment into staging, then swaps it in.
    async fn membership(&mut self, segment_id: i64) -> Result<(), PullError> {
        let mut pager = self.app.membership(segment_id, self.pull.page_size);
        let mut listed: u64 = 0;
        loop {
            self.check_stop()?;
            match pager.next_page(self.counters, self.cancel).await {
                Ok(Some(members)) => {
                    self.summary.membership_pages += 1;
                    self.summary.fetched += members.len() as u64;
                    let t0 = Instant::now();
                    if let Some(t) = self.target {
                        t.stage_members(
                            self.run_id,
                            &self.job.name,
                            segment_id,
                            listed as i64,
                            &members,
                        )
                        .await
                        .map_err(self.store_err())?;
                    }
                    listed += members.len() as u64;
                    tracing::debug!(
                        segment_id,
                        rows = members.len(),
                        ms = t0.elapsed().as_millis() as u64,
                        "Page staged."
                    );
                }
                Ok(None) => break,
                Err(AppError::NotFound { .. }) => return self.segment_gone(segment_id).await,
                Err(e) => return Err(self.app_err()(e)),
            }
        }
        let stored = match self.target {
            Some(t) => t
                .swap_membership(self.run_id, segment_id)
                .await
                .map_err(self.store_err())?,
            None => listed,
        };
        self.summary.membership_segments += 1;
        self.summary.members += stored;
        self.summary.written += stored;
        let skipped = listed.saturating_sub(stored);
        self.summary.members_skipped += skipped;
        if skipped > 0 {
            tracing::warn!(
                segment_id,
                skipped,
                "Some listed members had no cio_id or were listed twice; they were not stored."
            );
        }
        tracing::info!(
            segment_id,
            members = stored,
            pages = pager.pages(),
            "Segment membership replaced."
        );
        Ok(())
    }

    /// The segment no longer exists: it has no members, and its row says so.
    async fn segment_gone(&mut self, segment_id: i64) -> Result<(), PullError> {
        tracing::warn!(
            segment_id,
            "The segment no longer exists in Customer.io (404); its membership is removed. Remove it from `pull.segment_membership` if it is listed there."
        );
        self.summary.gone_segments.push(segment_id);
        if let Some(t) = self.target {
            t.clear_run_staging(self.run_id)
                .await
                .map_err(self.store_err())?;
            t.delete_membership(segment_id)
                .await
                .map_err(self.store_err())?;
            t.mark_segment_deleted(segment_id, state::now_ms())
                .await
                .map_err(self.store_err())?;
        }
        Ok(())
    }

    async fn campaigns(&mut self) -> Result<Vec<Campaign>, PullError> {
        let campaigns = self
            .app
            .campaigns(self.counters, self.cancel)
            .await
            .map_err(self.app_err())?;
        self.summary.fetched += campaigns.len() as u64;
        if self.pull.campaigns {
            self.summary.campaigns = campaigns.len() as u64;
            if let Some(t) = self.target {
                let deleted = t
                    .replace_campaigns(self.run_id, &campaigns, state::now_ms())
                    .await
                    .map_err(self.store_err())?;
                self.summary.campaigns_deleted = deleted;
                self.summary.written += campaigns.len() as u64;
                tracing::info!(campaigns = campaigns.len(), deleted, "Campaigns written.");
            }
        }
        Ok(campaigns)
    }

    async fn metrics(
        &mut self,
        campaign_id: i64,
        period: crate::config::MetricsPeriod,
        steps: u32,
    ) -> Result<(), PullError> {
        let series = self
            .app
            .campaign_metrics(campaign_id, period, steps, self.counters, self.cancel)
            .await
            .map_err(self.app_err())?;
        let now = chrono::Utc::now();
        let mut points = Vec::new();
        for (metric, values) in series {
            let starts = period::series_starts(now, period, values.len()).ok_or_else(|| {
                PullError::Period {
                    job: self.job.name.clone(),
                    what: format!("campaign {campaign_id} metric `{metric}`"),
                    message: format!(
                        "cannot compute the start of {} periods before {now}",
                        values.len()
                    ),
                }
            })?;
            for (start, value) in starts.into_iter().zip(values) {
                if let Some(v) = value {
                    points.push((metric.clone(), start, v));
                }
            }
        }
        self.summary.fetched += points.len() as u64;
        self.summary.metric_points += points.len() as u64;
        if let Some(t) = self.target {
            t.upsert_metrics(
                self.run_id,
                campaign_id,
                app_api::period_name(period),
                &points,
            )
            .await
            .map_err(self.store_err())?;
            self.summary.written += points.len() as u64;
        }
        Ok(())
    }
}
