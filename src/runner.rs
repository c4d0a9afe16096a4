//! Running jobs by name: the services a process shares, and one run of one job.
//!
//! Owns: building the process-wide clients (one rate gate per workspace and API, shared by
//! every job), the job lease that keeps replicas from running a job twice at once, and
//! dispatching push and pull jobs. Must not: parse arguments or print (the CLI does), or
//! schedule (the daemon does).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{JobKind, JobSpec, Settings};
use crate::http::{RateGate, RetryPolicy};
use crate::pipeline::{self, PipelineError, PushContext, RunMode, RunReport, StopSignal};
use crate::state::{StateError, StateStore};
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
    pub settings: Arc<Settings>,
    pub state: StateStore,
    pub track_gate: Arc<RateGate>,
    pub app_gate: Arc<RateGate>,
    /// Identifies this process in job leases.
    pub holder: String,
    /// The region self-check, done once per process before the first push to Customer.io.
    region_checked: Arc<tokio::sync::OnceCell<()>>,
}

/// How long a lease lasts without renewal; renewed every third of it while a job runs. A
/// replica that dies holds its jobs at most this long.
const LEASE_MS: i64 = 60 * 1000;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Holders are `host:pid:ulid`; true when the host is this one and the pid no longer exists.
fn holder_is_dead_local_process(holder: &str) -> bool {
    let mut parts = holder.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    host == hostname()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

impl Runner {
    pub async fn new(settings: Settings) -> Result<Self, RunnerError> {
        let state = StateStore::open(&settings.state_url).await?;
        Ok(Self::with_state(settings, state))
    }

    pub fn with_state(settings: Settings, state: StateStore) -> Self {
        let holder = format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            ulid::Ulid::generate()
        );
        let state = state.fenced_by(&holder);
        Self {
            track_gate: Arc::new(RateGate::per_second(settings.track.rate_limit_per_sec)),
            app_gate: Arc::new(RateGate::per_second(settings.app.rate_limit_per_sec)),
            settings: Arc::new(settings),
            state,
            region_checked: Arc::new(tokio::sync::OnceCell::new()),
            holder,
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

    /// Runs one job once, holding its lease for the duration.
    pub async fn run(
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
            let dead_here = holder_is_dead_local_process(&holder);
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
        match &job.kind {
            JobKind::Push(push) => {
                if !self.settings.customerio.track_url_overridden {
                    self.region_checked
                        .get_or_try_init(|| async {
                            self.check_region(&job.name, &stop.stop).await.map(|_| ())
                        })
                        .await?;
                }
                let ctx = PushContext {
                    settings: self.settings.clone(),
                    state: self.state.clone(),
                    track: self.track_client(&job.name)?,
                };
                Ok(pipeline::run_push(&ctx, job, push, mode, stop).await?)
            }
            JobKind::Pull(pull) => {
                let ctx = crate::pull::PullContext {
                    settings: self.settings.clone(),
                    state: self.state.clone(),
                    app_gate: self.app_gate.clone(),
                };
                Ok(crate::pull::run(&ctx, job, pull, stop).await?)
            }
        }
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
                "the Track credentials belong to a workspace in the `{}` region, but config.yaml says `customerio.region: {configured}`; set `customerio.region: {}`",
                info.region, info.region
            ),
        });
    }
    Ok(info)
}
