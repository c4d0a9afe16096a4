//! The daemon: runs each job on its cron schedule until SIGTERM/SIGINT.
//!
//! Owns: wiring jobs to tokio-cron-scheduler (kept behind this one seam: schedules are UTC,
//! six fields with seconds), never letting two runs of one job overlap in this process (the
//! job lease covers other replicas), what a reload request (SIGHUP) does to the schedule
//! (today: nothing, logged; running jobs are never touched), and the graceful stop: stop
//! firing, let running jobs finish their batches and write checkpoints within the grace
//! period, then return. A heartbeat job inside the scheduler ticks the liveness handle
//! `/healthz` reads, so a scheduler that stops firing jobs turns `/healthz` to 503.
//! Must not: run a job's pipeline itself (that is `runner`), or exit the process.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::task::TaskTracker;

use crate::config::JobSpec;
use crate::pipeline::{RunMode, StopSignal};
use crate::runner::{Runner, RunnerError};
use crate::shutdown::Signals;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("job `{job}`: schedule `{schedule}` was refused by the scheduler: {message}")]
    Schedule {
        job: String,
        schedule: String,
        message: String,
    },
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    #[error(
        "no job has a `schedule`: add one (e.g. schedule: \"0 0 2 * * *\") or use `cio-sync run`"
    )]
    NothingScheduled,
}

/// What the daemon does on each tick of a job, separate from the ticker so it can be tested
/// without waiting for wall-clock time.
#[derive(Clone)]
pub(crate) struct Ticker {
    runner: Runner,
    signals: Signals,
    tracker: TaskTracker,
    running: Arc<HashMap<String, AtomicBool>>,
}

/// What one tick did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tick {
    Started,
    /// The previous run of the job is still going.
    SkippedOverlap,
    /// A stop was requested.
    SkippedStopping,
}

impl Ticker {
    pub(crate) fn new(runner: Runner, signals: Signals, jobs: &[JobSpec]) -> Self {
        Self {
            runner,
            signals,
            tracker: TaskTracker::new(),
            running: Arc::new(
                jobs.iter()
                    .map(|j| (j.name.clone(), AtomicBool::new(false)))
                    .collect(),
            ),
        }
    }

    /// Starts a run of `job` in the background unless one is already going.
    pub(crate) fn tick(&self, job: &JobSpec) -> Tick {
        if self.signals.stop.is_cancelled() {
            return Tick::SkippedStopping;
        }
        let Some(flag) = self.running.get(&job.name) else {
            return Tick::SkippedStopping;
        };
        if flag.swap(true, Ordering::AcqRel) {
            tracing::warn!(job = %job.name, "The previous run is still going; skipping this tick.");
            return Tick::SkippedOverlap;
        }
        let this = self.clone();
        let job = job.clone();
        self.tracker.spawn(async move {
            // Released even if the run panics, so the job is never stuck "running".
            let _guard = RunningGuard(&this.running, &job.name);
            let stop = StopSignal::from_signals(&this.signals, this.runner.settings.grace);
            match this
                .runner
                .run(&job, RunMode::Normal { full: false }, stop)
                .await
            {
                Ok(report) => tracing::info!(
                    job = %job.name,
                    outcome = report.outcome.as_str(),
                    delivered = report.counts.rows_delivered,
                    rejected = report.counts.rows_rejected,
                    "Scheduled run finished."
                ),
                Err(RunnerError::Busy { .. }) => {
                    tracing::info!(job = %job.name, "Another replica is running this job; skipped.")
                }
                Err(e) => tracing::error!(job = %job.name, error = %e, "Scheduled run failed."),
            }
        });
        Tick::Started
    }

    /// Waits for every started run to finish.
    pub(crate) async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

struct RunningGuard<'a>(&'a HashMap<String, AtomicBool>, &'a str);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0.get(self.1) {
            flag.store(false, Ordering::Release);
        }
    }
}

/// How often the scheduler's own heartbeat job ticks the liveness handle.
pub(crate) const LIVENESS_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// How long without a heartbeat before `/healthz` says the scheduler is wedged: a few missed
/// ticks, so one slow tick on a loaded machine is not a restart.
pub(crate) const LIVENESS_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the daemon until a stop signal, then waits for running jobs. The scheduler ticks
/// `liveness` from a job of its own, so a scheduler that stops firing jobs stops ticking it.
pub(crate) async fn run_daemon(
    runner: Runner,
    jobs: Vec<JobSpec>,
    signals: Signals,
    liveness: crate::observe::Liveness,
) -> Result<(), ScheduleError> {
    let scheduled: Vec<JobSpec> = jobs.into_iter().filter(|j| j.schedule.is_some()).collect();
    if scheduled.is_empty() {
        return Err(ScheduleError::NothingScheduled);
    }
    let ticker = Ticker::new(runner, signals.clone(), &scheduled);
    let mut sched = JobScheduler::new()
        .await
        .map_err(|e| ScheduleError::Scheduler(e.to_string()))?;
    for job in &scheduled {
        let schedule = job.schedule.clone().unwrap_or_default();
        let t = ticker.clone();
        let spec = job.clone();
        let cron = Job::new_async(schedule.as_str(), move |_, _| {
            let t = t.clone();
            let spec = spec.clone();
            Box::pin(async move {
                t.tick(&spec);
            })
        })
        .map_err(|e| ScheduleError::Schedule {
            job: job.name.clone(),
            schedule: schedule.clone(),
            message: e.to_string(),
        })?;
        sched
            .add(cron)
            .await
            .map_err(|e| ScheduleError::Scheduler(e.to_string()))?;
        tracing::info!(job = %job.name, schedule = %schedule, "Scheduled (UTC).");
    }
    let heartbeat = Job::new_repeated(LIVENESS_TICK, move |_, _| liveness.tick())
        .map_err(|e| ScheduleError::Scheduler(e.to_string()))?;
    sched
        .add(heartbeat)
        .await
        .map_err(|e| ScheduleError::Scheduler(e.to_string()))?;
    sched
        .start()
        .await
        .map_err(|e| ScheduleError::Scheduler(e.to_string()))?;
    tracing::info!(jobs = scheduled.len(), "cio-sync daemon started.");
    wait_for_stop(&signals).await;
    tracing::info!("Stopping: no new runs; waiting for running jobs to write their checkpoints.");
    // shutdown() does not wait for running jobs; the ticker's tracker does.
    if let Err(e) = sched.shutdown().await {
        tracing::warn!(error = %e, "The scheduler did not shut down cleanly.");
    }
    ticker.drain().await;
    tracing::info!("cio-sync daemon stopped.");
    Ok(())
}

/// Serves reload requests until a stop signal. Subscribed before it waits, so a SIGHUP from
/// the moment the daemon has started is a reload request, never a kill.
async fn wait_for_stop(signals: &Signals) {
    let mut reloads = signals.reload_requests();
    loop {
        tokio::select! {
            _ = signals.stop.cancelled() => return,
            changed = reloads.changed() => {
                if changed.is_err() {
                    // The sender lives in `signals`, so this cannot happen; if it did, no more
                    // reloads could arrive and only the stop is left to wait for.
                    signals.stop.cancelled().await;
                    return;
                }
                reloads.borrow_and_update();
                reload();
            }
        }
    }
}

/// What a reload request does to the running daemon. Reloading jobs is not built yet: the
/// request is acknowledged in the log and the daemon, and every run in it, goes on as before.
fn reload() {
    tracing::warn!(
        "SIGHUP received: reloading the configuration is not supported yet; ignoring it (running jobs go on; restart the service to apply changes)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsvSource as CsvSection, DeleteAction};
    use crate::config::{
        IdentifierKind, IdentifierSpec, JobKind, MappingSpec, PushJob, SourceSpec,
    };

    #[tokio::test]
    async fn a_tick_never_overlaps_a_running_run_of_the_same_job() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("config.yaml");
        std::fs::write(
            &cfg_path,
            "state: { url: \"sqlite://s.db\" }\ncustomerio: { site_id: s, track_api_key: k, track_url: \"http://127.0.0.1:9\" }\n",
        )
        .unwrap();
        let settings = crate::config::load_settings(&cfg_path, &|_| None).unwrap();
        let runner = Runner::new(settings).await.unwrap();
        // A job whose file does not exist fails fast; the guard must still be released.
        let job = JobSpec {
            name: "j".into(),
            file: dir.path().join("j.yaml"),
            schedule: Some("0 0 2 * * *".into()),
            kind: JobKind::Push(Box::new(PushJob {
                source: SourceSpec::Csv(CsvSection {
                    path: dir.path().join("missing.csv"),
                    delimiter: ',',
                    quote: '"',
                    double_quote: true,
                    escape: None,
                    quoting: true,
                    trim: false,
                    min_age: None,
                }),
                mapping: MappingSpec::Delete {
                    identifier: IdentifierSpec {
                        kind: IdentifierKind::Id,
                        column: "id".into(),
                    },
                    action: DeleteAction::Delete,
                },
                transport: None,
                batch: None,
                concurrency: None,
            })),
        };
        let signals = Signals::new();
        let ticker = Ticker::new(runner, signals.clone(), std::slice::from_ref(&job));
        assert_eq!(ticker.tick(&job), Tick::Started);
        assert_eq!(ticker.tick(&job), Tick::SkippedOverlap);
        while !ticker.tracker.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            ticker.tick(&job),
            Tick::Started,
            "the guard is released after the run"
        );
        signals.stop.cancel();
        assert_eq!(ticker.tick(&job), Tick::SkippedStopping);
        ticker.drain().await;
    }

    #[tokio::test]
    async fn the_schedulers_own_heartbeat_ticks_the_liveness_handle() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("config.yaml");
        std::fs::write(
            &cfg_path,
            "state: { url: \"sqlite://s.db\" }\ncustomerio: { site_id: s, track_api_key: k, track_url: \"http://127.0.0.1:9\" }\n",
        )
        .unwrap();
        let settings = crate::config::load_settings(&cfg_path, &|_| None).unwrap();
        let runner = Runner::new(settings).await.unwrap();
        let job = JobSpec {
            name: "j".into(),
            file: dir.path().join("j.yaml"),
            // Never due while the test runs: only the heartbeat fires.
            schedule: Some("0 0 2 1 1 *".into()),
            kind: JobKind::Push(Box::new(PushJob {
                source: SourceSpec::Csv(CsvSection {
                    path: dir.path().join("missing.csv"),
                    delimiter: ',',
                    quote: '"',
                    double_quote: true,
                    escape: None,
                    quoting: true,
                    trim: false,
                    min_age: None,
                }),
                mapping: MappingSpec::Delete {
                    identifier: IdentifierSpec {
                        kind: IdentifierKind::Id,
                        column: "id".into(),
                    },
                    action: DeleteAction::Delete,
                },
                transport: None,
                batch: None,
                concurrency: None,
            })),
        };
        let signals = Signals::new();
        let live = crate::observe::Liveness::ticked_every(LIVENESS_STALE_AFTER);
        let daemon = tokio::spawn(run_daemon(runner, vec![job], signals.clone(), live.clone()));
        // Two heartbeats are 2 × LIVENESS_TICK apart at most; allow a loaded machine plenty.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while live.ticks() < 2 {
            assert!(
                !daemon.is_finished(),
                "the daemon ended before its heartbeat ticked"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "waited 120 s for two heartbeats of the scheduler (saw {})",
                live.ticks()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(live.check(), Ok(()));
        signals.stop.cancel();
        daemon.await.unwrap().unwrap();
    }
}
