//! Running jobs by name: the services a process shares, and one run of one job.
//!
//! Owns: building the process-wide clients (one rate gate per workspace and API, shared by
//! every job; a job of `workspace: eu` runs with that workspace's credentials, hosts and
//! gates), the job lease that keeps replicas from running a job twice at once, dispatching
//! push and pull jobs, the end of every run as a metric (`RunEnded`), job health loaded from
//! the run history, and the readiness check `/readyz` asks.
//! Must not: parse arguments or print (the CLI does), or schedule (the daemon does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{JobKind, JobSpec, Settings};
use crate::http::{RateGate, RetryPolicy};
use crate::observe::{RunEnded, RunHealth};
use crate::pipeline::{self, PipelineError, PushContext, RunMode, RunReport, StopSignal};
use crate::state::{Outcome, StateError, StateStore};
use crate::track::{TrackClient, TrackError};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Pull(#[from] crate::pull::PullError),
    #[error("job `{job}`: {source}")]
    Track {
        job: String,
        #[source]
        source: TrackError,
    },
    #[error("job `{job}` is running in another process (lease held by {holder}); skipped")]
    Busy { job: String, holder: String },
    #[error("job `{job}`: {message}")]
    Job { job: String, message: String },
}

/// Shared by every run in the process.
#[derive(Clone)]
pub struct Runner {
    /// The settings of the default workspace (config.yaml's `customerio`).
    pub settings: Arc<Settings>,
    pub state: StateStore,
    pub track_gate: Arc<RateGate>,
    pub app_gate: Arc<RateGate>,
    /// Identifies this process in job leases.
    pub holder: String,
    /// The region self-check, done once per process before the first push to Customer.io.
    region_checked: Arc<tokio::sync::OnceCell<()>>,
    /// `workspaces:` by name, each with its own settings view and gates.
    workspaces: Arc<BTreeMap<String, WorkspaceServices>>,
    /// Where push runs report progress (`run`/`backfill` on a terminal); `None`: log lines.
    progress: Option<pipeline::ProgressSink>,
}

/// A job's settings, Track gate, App gate and region check.
type Services<'a> = (
    Arc<Settings>,
    Arc<RateGate>,
    Arc<RateGate>,
    &'a tokio::sync::OnceCell<()>,
);

/// What the jobs of one named workspace share.
struct WorkspaceServices {
    settings: Arc<Settings>,
    track_gate: Arc<RateGate>,
    app_gate: Arc<RateGate>,
    region_checked: Arc<tokio::sync::OnceCell<()>>,
}

/// How long a lease lasts without renewal; renewed every third of it while a job runs. A
/// replica that dies holds its jobs at most this long.
const LEASE_MS: i64 = 60 * 1000;

impl Runner {
    pub async fn new(settings: Settings) -> Result<Self, RunnerError> {
        let state =
            StateStore::open_with(&settings.state_url, settings.state_connect_timeout).await?;
        Ok(Self::with_state(settings, state))
    }

    pub fn with_state(settings: Settings, state: StateStore) -> Self {
        let holder = crate::state::leases::Holder::this_process().to_string();
        let state = state.fenced_by(&holder);
        Self::build(settings, state, holder, None)
    }

    /// A runner for reloaded `settings`, as this process: same holder and state database,
    /// and the same gates where a workspace's limit is unchanged, so runs still going on
    /// the old settings and new runs draw from one budget.
    pub fn reloaded(&self, settings: Settings) -> Self {
        Self::build(
            settings,
            self.state.clone(),
            self.holder.clone(),
            Some(self),
        )
    }

    fn build(settings: Settings, state: StateStore, holder: String, old: Option<&Runner>) -> Self {
        let gate = |rate: u32, old: Option<&Arc<RateGate>>| match old {
            Some(g) if g.configured_per_sec() == rate => g.clone(),
            _ => {
                let g = Arc::new(RateGate::per_second(rate));
                if let Some(prev) = old {
                    g.share_among(prev.replicas());
                }
                g
            }
        };
        let workspaces = settings
            .workspaces
            .keys()
            .filter_map(|name| {
                let ws = Arc::new(settings.for_workspace(Some(name))?);
                let prev = old.and_then(|o| o.workspaces.get(name));
                Some((
                    name.clone(),
                    WorkspaceServices {
                        track_gate: gate(ws.track.rate_limit_per_sec, prev.map(|p| &p.track_gate)),
                        app_gate: gate(ws.app.rate_limit_per_sec, prev.map(|p| &p.app_gate)),
                        region_checked: prev
                            .filter(|p| {
                                p.settings.customerio.track_url.expose()
                                    == ws.customerio.track_url.expose()
                            })
                            .map(|p| p.region_checked.clone())
                            .unwrap_or_default(),
                        settings: ws,
                    },
                ))
            })
            .collect();
        Self {
            track_gate: gate(
                settings.track.rate_limit_per_sec,
                old.map(|o| &o.track_gate),
            ),
            app_gate: gate(settings.app.rate_limit_per_sec, old.map(|o| &o.app_gate)),
            region_checked: old
                .filter(|o| {
                    o.settings.customerio.track_url.expose()
                        == settings.customerio.track_url.expose()
                })
                .map(|o| o.region_checked.clone())
                .unwrap_or_default(),
            settings: Arc::new(settings),
            state,
            holder,
            workspaces: Arc::new(workspaces),
            progress: old.and_then(|o| o.progress.clone()),
        }
    }

    /// Push runs report their progress to `sink`.
    pub fn with_progress(mut self, sink: pipeline::ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    /// Every rate gate of this process: each workspace's Track and App gate.
    pub fn gates(&self) -> Vec<Arc<RateGate>> {
        let mut gates = vec![self.track_gate.clone(), self.app_gate.clone()];
        for w in self.workspaces.values() {
            gates.push(w.track_gate.clone());
            gates.push(w.app_gate.clone());
        }
        gates
    }

    /// The settings, gates and region check a job of `workspace` runs with.
    fn services(&self, job: &JobSpec) -> Result<Services<'_>, RunnerError> {
        match job.workspace.as_deref() {
            None => Ok((
                self.settings.clone(),
                self.track_gate.clone(),
                self.app_gate.clone(),
                &self.region_checked,
            )),
            Some(name) => {
                let w = self.workspaces.get(name).ok_or_else(|| RunnerError::Job {
                    job: job.name.clone(),
                    message: format!(
                        "`workspace: {name}` is not under config.yaml's `workspaces:`; add it there or fix the job file"
                    ),
                })?;
                Ok((
                    w.settings.clone(),
                    w.track_gate.clone(),
                    w.app_gate.clone(),
                    &w.region_checked,
                ))
            }
        }
    }

    pub fn track_client(&self, job: &str) -> Result<TrackClient, RunnerError> {
        track_client(&self.settings, self.track_gate.clone(), job)
    }

    /// Asks Customer.io which region the Track credentials belong to; see [`check_region`].
    pub async fn check_region(
        &self,
        job: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<crate::track::RegionInfo, RunnerError> {
        check_region(&self.settings, self.track_gate.clone(), job, cancel).await
    }

    /// What `/readyz` asks: the state database answers now and is migrated.
    pub fn ready_check(&self) -> crate::observe::ReadyCheck {
        let state = self.state.clone();
        Arc::new(move || {
            let state = state.clone();
            Box::pin(async move { state.check_ready().await.map_err(|e| e.to_string()) })
        })
    }

    /// Puts each job's last completed run and its failures since into the health metrics, from
    /// the run history, so they mean the same after a restart as before it.
    pub async fn load_job_health<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a JobSpec>,
    ) -> Result<(), RunnerError> {
        for job in jobs {
            let runs = self.state.runs(Some(&job.name), HEALTH_HISTORY).await?;
            let (last_success_unix_secs, consecutive_failures) = job_health(&runs);
            crate::observe::emit(crate::observe::JobHistoryLoaded {
                job: &job.name,
                last_success_unix_secs,
                consecutive_failures,
            });
        }
        Ok(())
    }

    /// Runs one job once, holding its lease for the duration; its end is counted in the
    /// metrics (a run skipped because another process holds the lease is not a run).
    pub async fn run(
        &self,
        job: &JobSpec,
        mode: RunMode,
        stop: StopSignal,
    ) -> Result<RunReport, RunnerError> {
        let started = tokio::time::Instant::now();
        let result = self.run_leased(job, mode, stop).await;
        let (outcome, health) = match &result {
            Ok(report) => (report.outcome.as_str(), run_health(report.outcome)),
            Err(RunnerError::Busy { .. }) => return result,
            Err(_) => (Outcome::Failed.as_str(), RunHealth::Failed),
        };
        crate::observe::emit(RunEnded {
            job: &job.name,
            outcome,
            health,
            elapsed: started.elapsed(),
            at_unix_secs: crate::state::now_ms() as f64 / 1000.0,
        });
        result
    }

    async fn run_leased(
        &self,
        job: &JobSpec,
        mode: RunMode,
        stop: StopSignal,
    ) -> Result<RunReport, RunnerError> {
        if !self
            .state
            .try_lease(&job.name, &self.holder, LEASE_MS)
            .await?
        {
            let holder = self
                .state
                .lease_holder(&job.name)
                .await?
                .unwrap_or_default();
            // A holder on this machine whose process is gone (killed, crashed) cannot renew:
            // take its lease over instead of waiting for it to expire.
            let dead_here = crate::state::leases::holder_is_dead_local_process(&holder);
            if !(dead_here
                && self
                    .state
                    .steal_lease(&job.name, &holder, &self.holder, LEASE_MS)
                    .await?)
            {
                return Err(RunnerError::Busy {
                    job: job.name.clone(),
                    holder,
                });
            }
            tracing::info!(job = %job.name, previous = %holder, "Took over the lease of a process that no longer runs.");
        }
        // The run stops when asked to, or when this process loses the lease (the database was
        // unreachable for longer than the lease, or another replica took it over).
        let run_stop = tokio_util::sync::CancellationToken::new();
        let renew = {
            let state = self.state.clone();
            let name = job.name.clone();
            let holder = self.holder.clone();
            let outer = stop.stop.clone();
            let run_stop = run_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(LEASE_MS as u64 / 3));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = outer.cancelled() => {
                            run_stop.cancel();
                            return;
                        }
                        _ = tick.tick() => {}
                    }
                    match state.try_lease(&name, &holder, LEASE_MS).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(job = %name, "Lost the job lease to another process; stopping this run.");
                            run_stop.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(job = %name, error = %e, "Could not renew the job lease.")
                        }
                    }
                }
            })
        };
        let stop = StopSignal {
            stop: run_stop,
            ..stop
        };
        let result = self.run_unleased(job, mode, stop).await;
        renew.abort();
        if let Err(e) = self.state.release_lease(&job.name, &self.holder).await {
            tracing::warn!(job = %job.name, error = %e, "Could not release the job lease; it expires by itself.");
        }
        result
    }

    async fn run_unleased(
        &self,
        job: &JobSpec,
        mode: RunMode,
        stop: StopSignal,
    ) -> Result<RunReport, RunnerError> {
        let (settings, track_gate, app_gate, region_checked) = self.services(job)?;
        match &job.kind {
            JobKind::Push(push) => {
                if !settings.customerio.track_url_overridden {
                    region_checked
                        .get_or_try_init(|| async {
                            check_region(&settings, track_gate.clone(), &job.name, &stop.stop)
                                .await
                                .map(|_| ())
                        })
                        .await?;
                }
                let ctx = PushContext {
                    track: track_client(&settings, track_gate, &job.name)?,
                    settings,
                    state: self.state.clone(),
                    progress: self.progress.clone(),
                };
                Ok(pipeline::run_push(&ctx, job, push, mode, stop).await?)
            }
            JobKind::Pull(pull) => {
                let ctx = crate::pull::PullContext {
                    settings,
                    state: self.state.clone(),
                    app_gate,
                };
                Ok(crate::pull::run(&ctx, job, pull, stop).await?)
            }
        }
    }
}

/// How many of a job's latest runs are read for its health: a job failing more often in a row
/// than this shows this many failures and no last success.
pub const HEALTH_HISTORY: i64 = 1000;

/// From a job's runs, newest first: when the last completed run finished (Unix seconds), and how
/// many runs failed since. Runs still going or interrupted say nothing either way.
pub fn job_health(runs: &[crate::state::RunRecord]) -> (Option<f64>, i64) {
    let mut failures = 0;
    for r in runs {
        match r.outcome.as_str() {
            "succeeded" | "rejected_rows" => {
                let at = r.finished_at.unwrap_or(r.started_at);
                return (Some(at as f64 / 1000.0), failures);
            }
            "failed" | "aborted" => failures += 1,
            _ => {}
        }
    }
    (None, failures)
}

/// What an outcome says about the job's health: a run that read to the end completed, even if
/// it dead-lettered rows; an interrupted run says nothing.
fn run_health(outcome: Outcome) -> RunHealth {
    match outcome {
        Outcome::Succeeded | Outcome::RejectedRows | Outcome::Guarded => RunHealth::Completed,
        Outcome::Interrupted => RunHealth::Interrupted,
        Outcome::Failed | Outcome::Aborted => RunHealth::Failed,
    }
}

/// The Track client for config.yaml's `customerio` and `track` sections, on `gate`.
pub fn track_client(
    settings: &Settings,
    gate: Arc<RateGate>,
    job: &str,
) -> Result<TrackClient, RunnerError> {
    let c = &settings.customerio;
    let (Some(site), Some(key)) = (c.site_id.clone(), c.track_api_key.clone()) else {
        return Err(RunnerError::Track {
            job: job.to_string(),
            source: TrackError::MissingCredentials,
        });
    };
    TrackClient::new(
        c.track_url.expose(),
        site,
        key,
        gate,
        RetryPolicy::from(&settings.retry),
        settings.track.timeout,
    )
    .map_err(|source| RunnerError::Track {
        job: job.to_string(),
        source,
    })
}

/// Asks Customer.io which region the Track credentials belong to (`GET
/// /api/v1/accounts/region`) and fails when it is not the configured one: a wrong region
/// would otherwise be redirected, or fail, on every request. Needs no state database, so
/// `validate --connect` uses it as well as the first push of a process.
pub async fn check_region(
    settings: &Settings,
    gate: Arc<RateGate>,
    job: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<crate::track::RegionInfo, RunnerError> {
    let client = track_client(settings, gate, job)?;
    let counters = Arc::new(crate::http::RunCounters::default());
    let info = client
        .region(&counters, cancel)
        .await
        .map_err(|source| RunnerError::Track {
            job: job.to_string(),
            source,
        })?;
    let configured = match settings.customerio.region {
        crate::config::Region::Us => "us",
        crate::config::Region::Eu => "eu",
    };
    if !info.region.eq_ignore_ascii_case(configured) {
        return Err(RunnerError::Job {
            job: job.to_string(),
            message: format!(
                "the Track credentials belong to a workspace in the `{}` region, but config.yaml says `{key}.region: {configured}`; set `{key}.region: {}`",
                info.region,
                info.region,
                key = settings.customerio.key,
            ),
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{RunCounts, RunRecord};

    fn run(outcome: &str, finished_secs: i64) -> RunRecord {
        RunRecord {
            id: format!("r{finished_secs}"),
            job: "orders".into(),
            kind: "push".into(),
            started_at: finished_secs * 1000 - 500,
            finished_at: Some(finished_secs * 1000),
            outcome: outcome.into(),
            error: None,
            counts: RunCounts::default(),
            summary: None,
        }
    }

    #[test]
    fn job_health_counts_failures_back_to_the_last_completed_run() {
        // Newest first: two failures and an interruption since a run with dead letters.
        let runs = [
            run("failed", 50),
            run("interrupted", 40),
            run("aborted", 30),
            run("rejected_rows", 20),
            run("failed", 10),
        ];
        assert_eq!(job_health(&runs), (Some(20.0), 2));
        assert_eq!(job_health(&runs[3..]), (Some(20.0), 0));
        assert_eq!(job_health(&[run("failed", 5)]), (None, 1));
        assert_eq!(job_health(&[]), (None, 0));
    }
}
