//! The daemon: runs each enabled job on its cron schedule until SIGTERM/SIGINT.
//!
//! Owns: the scheduler's own loop (no ticker library: the next fire time of each job is
//! computed by `cron.rs` in the job's zone, from a [`Clock`] tests can control), claiming each
//! tick in the state database so replicas run it once, never letting two runs of one job
//! overlap in this process (the job lease covers other replicas), `catch_up`, reload on
//! SIGHUP (`reload.rs`), heartbeats that share the rate limits among live replicas, telling
//! systemd how it is doing (`notify.rs`, fed from this loop so a wedged loop trips the
//! watchdog), and the graceful stop: stop firing, let running jobs finish their batches and
//! write checkpoints within the grace period, then return.
//! Must not: run a job's pipeline itself (that is `runner`), read config files itself (the
//! caller passes a loader), or exit the process.

pub(crate) mod cron;
mod notify;
mod reload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigErrors, JobSpec};
use crate::pipeline::{RunMode, StopSignal};
use crate::runner::{Runner, RunnerError};
use crate::shutdown::Signals;

pub(crate) use cron::next_run;
use notify::Notifier;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("job `{job}`: schedule `{schedule}`: {message}")]
    Schedule {
        job: String,
        schedule: String,
        message: String,
    },
    #[error(
        "no enabled job has a `schedule`: add one (e.g. schedule: \"0 2 * * *\"), set `enabled: true`, or use `cio-sync run`"
    )]
    NothingScheduled,
}

/// Re-reads and validates config.yaml and every job file (a reload request).
pub(crate) type Loader = Box<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// Where "now" comes from.
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock a test sets by hand; the loop notices a change within [`MAX_NAP`].
#[cfg(test)]
pub(crate) struct ManualClock(Mutex<DateTime<Utc>>);

#[cfg(test)]
impl ManualClock {
    pub(crate) fn at(t: DateTime<Utc>) -> Self {
        Self(Mutex::new(t))
    }

    pub(crate) fn set(&self, t: DateTime<Utc>) {
        if let Ok(mut now) = self.0.lock() {
            *now = t;
        }
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|t| *t).unwrap_or_default()
    }
}

/// How long without a turn of the scheduler loop before `/healthz` says the scheduler is
/// wedged: the loop goes round at least every [`MAX_NAP`], so this is many missed turns, and
/// one slow turn on a loaded machine is not a restart.
pub(crate) const LIVENESS_STALE_AFTER: Duration = Duration::from_secs(30);

/// The longest the loop sleeps, so that a wall clock that jumps (NTP, suspend) is noticed
/// within a second and the watchdog is fed.
const MAX_NAP: Duration = Duration::from_secs(1);

/// One scheduled job: its cron read in its zone, and when it fires next.
struct Planned {
    job: JobSpec,
    cron: ::croner::Cron,
    tz: Tz,
    next: Option<DateTime<Utc>>,
}

/// The jobs the daemon schedules and their next fire times.
pub(crate) struct Plan {
    jobs: BTreeMap<String, Planned>,
}

impl Plan {
    /// The enabled jobs with a schedule, each next firing after `now`.
    pub(crate) fn new(jobs: &[JobSpec], now: DateTime<Utc>) -> Result<Self, ScheduleError> {
        let mut planned = BTreeMap::new();
        for job in jobs.iter().filter(|j| j.enabled) {
            let Some(schedule) = &job.schedule else {
                continue;
            };
            let cron = cron::parse(schedule).map_err(|message| ScheduleError::Schedule {
                job: job.name.clone(),
                schedule: schedule.clone(),
                message,
            })?;
            let tz = job.timezone.unwrap_or(chrono_tz::UTC);
            let next = cron::next_after(&cron, tz, now);
            planned.insert(
                job.name.clone(),
                Planned {
                    job: job.clone(),
                    cron,
                    tz,
                    next,
                },
            );
        }
        Ok(Self { jobs: planned })
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The jobs due at `now`, each with the tick it is due for; each moves on to its first
    /// tick after `now` (ticks missed while the loop was held up collapse into this one).
    pub(crate) fn due(&mut self, now: DateTime<Utc>) -> Vec<(JobSpec, DateTime<Utc>)> {
        let mut due = Vec::new();
        for p in self.jobs.values_mut() {
            if let Some(tick) = p.next
                && tick <= now
            {
                due.push((p.job.clone(), tick));
                p.next = cron::next_after(&p.cron, p.tz, now);
            }
        }
        due
    }

    /// The earliest next fire time of any job.
    pub(crate) fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.jobs.values().filter_map(|p| p.next).min()
    }

    /// The jobs with `catch_up: true` and the last tick at or before `now` of each.
    fn catch_up_candidates(&self, now: DateTime<Utc>) -> Vec<(JobSpec, DateTime<Utc>)> {
        self.jobs
            .values()
            .filter(|p| p.job.catch_up)
            .filter_map(|p| Some((p.job.clone(), cron::last_at_or_before(&p.cron, p.tz, now)?)))
            .collect()
    }

    fn jobs(&self) -> Vec<JobSpec> {
        self.jobs.values().map(|p| p.job.clone()).collect()
    }
}

/// What the daemon does on each tick of a job, separate from the loop so it can be tested
/// without waiting for wall-clock time.
#[derive(Clone)]
pub(crate) struct Ticker {
    /// The runner new runs start with; replaced by a reload, while runs already going keep
    /// the one they started with.
    runner: Arc<RwLock<Runner>>,
    signals: Signals,
    tracker: TaskTracker,
    /// Jobs with a run going in this process.
    running: Arc<Mutex<HashSet<String>>>,
    /// How far each running job has read, in percent, where its source tells its size
    /// (fed by the runs' progress reports; shown in `STATUS=`).
    percent: Arc<Mutex<HashMap<String, RunProgress>>>,
}

/// What the daemon keeps of a running job's progress reports.
struct RunProgress {
    /// Of the source read, when its size is known.
    percent: Option<u8>,
    /// When its last `Progress.` line was logged.
    logged: std::time::Instant,
}

/// How often the daemon logs a running job's progress.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

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
    pub(crate) fn new(runner: Runner, signals: Signals) -> Self {
        let percent: Arc<Mutex<HashMap<String, RunProgress>>> = Arc::default();
        // A reload keeps the sink (the reloaded runner carries it over).
        let runner = runner.with_progress(progress_sink(percent.clone()));
        Self {
            runner: Arc::new(RwLock::new(runner)),
            signals,
            tracker: TaskTracker::new(),
            running: Arc::new(Mutex::new(HashSet::new())),
            percent,
        }
    }

    /// How far `job`'s run has read, when its source tells its size.
    fn percent_of(&self, job: &str) -> Option<u8> {
        match self.percent.lock() {
            Ok(m) => m.get(job).and_then(|r| r.percent),
            Err(poisoned) => poisoned.into_inner().get(job).and_then(|r| r.percent),
        }
    }

    fn runner(&self) -> Runner {
        match self.runner.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace_runner(&self, runner: Runner) {
        match self.runner.write() {
            Ok(mut r) => *r = runner,
            Err(poisoned) => *poisoned.into_inner() = runner,
        }
    }

    /// Names of the jobs running now, sorted.
    fn running_jobs(&self) -> Vec<String> {
        let mut names: Vec<String> = match self.running.lock() {
            Ok(r) => r.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        };
        names.sort();
        names
    }

    /// Starts a run of `job` in the background unless one is already going. With a `tick`,
    /// the run first claims that tick in the state database and is skipped when another
    /// replica claimed it.
    pub(crate) fn tick(&self, job: &JobSpec, tick: Option<DateTime<Utc>>) -> Tick {
        if self.signals.stop.is_cancelled() {
            return Tick::SkippedStopping;
        }
        let fresh = match self.running.lock() {
            Ok(mut r) => r.insert(job.name.clone()),
            Err(poisoned) => poisoned.into_inner().insert(job.name.clone()),
        };
        if !fresh {
            tracing::warn!(job = %job.name, "The previous run is still going; skipping this tick.");
            return Tick::SkippedOverlap;
        }
        let this = self.clone();
        let runner = self.runner();
        let job = job.clone();
        self.tracker.spawn(async move {
            // Released even if the run panics, so the job is never stuck "running".
            let _guard = RunningGuard(&this.running, &job.name);
            let _percent = PercentGuard(&this.percent, &job.name);
            if let Some(tick) = tick {
                match runner
                    .state
                    .claim_tick(&job.name, tick.timestamp_millis(), &runner.holder)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(job = %job.name, tick = %tick.to_rfc3339(), "Another replica took this tick; skipped.");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(job = %job.name, error = %e, "Cannot claim the scheduled tick in the state database; skipping it (the next tick tries again).");
                        return;
                    }
                }
            }
            let stop = StopSignal::from_signals(&this.signals, runner.settings.grace);
            match runner.run(&job, RunMode::Normal { full: false }, stop).await {
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

struct RunningGuard<'a>(&'a Mutex<HashSet<String>>, &'a str);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        match self.0.lock() {
            Ok(mut r) => r.remove(self.1),
            Err(poisoned) => poisoned.into_inner().remove(self.1),
        };
    }
}

/// Where the daemon's runs report progress: the percentage for `STATUS=`, and (since a run
/// with a sink does not log its progress itself) a `Progress.` line every interval.
fn progress_sink(seen: Arc<Mutex<HashMap<String, RunProgress>>>) -> crate::pipeline::ProgressSink {
    Arc::new(move |p: &crate::pipeline::Progress| {
        let mut map = match seen.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if p.finished {
            map.remove(&p.job);
            return;
        }
        let entry = map.entry(p.job.clone()).or_insert_with(|| RunProgress {
            percent: None,
            logged: std::time::Instant::now(),
        });
        entry.percent = match p.bytes {
            Some((done, total)) if total > 0 => {
                Some((done.saturating_mul(100) / total).min(100) as u8)
            }
            _ => None,
        };
        if entry.logged.elapsed() >= PROGRESS_LOG_EVERY {
            entry.logged = std::time::Instant::now();
            tracing::info!(
                job = %p.job,
                read = p.rows_read,
                delivered = p.rows_delivered,
                rejected = p.rows_rejected,
                requests = p.requests,
                percent = entry.percent,
                "Progress."
            );
        }
    })
}

/// Forgets a run's percentage when it ends, however it ends.
struct PercentGuard<'a>(&'a Mutex<HashMap<String, RunProgress>>, &'a str);

impl Drop for PercentGuard<'_> {
    fn drop(&mut self) {
        match self.0.lock() {
            Ok(mut m) => m.remove(self.1),
            Err(poisoned) => poisoned.into_inner().remove(self.1),
        };
    }
}

/// The `STATUS=` line: how many jobs are scheduled, and which run (with how far each has
/// read, where its source tells its size: "orders running, 40%").
fn status_line(plan: &Plan, ticker: &Ticker) -> String {
    let n = plan.len();
    let running = ticker.running_jobs();
    let jobs = format!("{n} job{} scheduled", if n == 1 { "" } else { "s" });
    if running.is_empty() {
        match plan.next_wake() {
            Some(t) => format!(
                "{jobs}; idle, next run {}",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => format!("{jobs}; idle"),
        }
    } else {
        let each: Vec<String> = running
            .iter()
            .map(|job| match ticker.percent_of(job) {
                Some(p) => format!("{job} running, {p}%"),
                None => format!("{job} running"),
            })
            .collect();
        format!("{jobs}; {}", each.join("; "))
    }
}

/// Runs the daemon until a stop signal, then waits for running jobs.
/// The loop ticks `liveness` (`/healthz`) and the systemd watchdog on every turn, so a
/// scheduler that stops going round stops both.
pub(crate) async fn run_daemon(
    runner: Runner,
    jobs: Vec<JobSpec>,
    signals: Signals,
    loader: Loader,
    liveness: crate::observe::Liveness,
) -> Result<(), ScheduleError> {
    run_with(
        runner,
        jobs,
        signals,
        loader,
        liveness,
        Arc::new(SystemClock),
    )
    .await
}

pub(crate) async fn run_with(
    runner: Runner,
    jobs: Vec<JobSpec>,
    signals: Signals,
    loader: Loader,
    liveness: crate::observe::Liveness,
    clock: Arc<dyn Clock>,
) -> Result<(), ScheduleError> {
    // Subscribed before anything else, so a SIGHUP from the moment the daemon has started is
    // a reload request, never a kill.
    let mut reloads = signals.reload_requests();
    let notifier = Notifier::from_env();
    let mut plan = Plan::new(&jobs, clock.now())?;
    if plan.is_empty() {
        return Err(ScheduleError::NothingScheduled);
    }
    for p in plan.jobs.values() {
        tracing::info!(
            job = %p.job.name,
            schedule = p.job.schedule.as_deref().unwrap_or_default(),
            timezone = %p.tz,
            next = %p.next.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()),
            "Scheduled."
        );
    }
    for j in jobs.iter().filter(|j| !j.enabled) {
        tracing::info!(job = %j.name, "Paused (`enabled: false`); not scheduled.");
    }
    let heartbeat_every = runner.settings.heartbeat;
    let ticker = Ticker::new(runner, signals.clone());
    // Counted before READY, so the first runs already take their share.
    share_budget(&ticker, heartbeat_every, true).await;
    let heartbeats = tokio::spawn(heartbeat_loop(
        ticker.clone(),
        heartbeat_every,
        signals.clone(),
    ));
    catch_up(&plan, &ticker, clock.now()).await;
    notifier.ready(&status_line(&plan, &ticker));
    tracing::info!(jobs = plan.len(), "cio-sync daemon started.");

    loop {
        let now = clock.now();
        for (job, tick) in plan.due(now) {
            ticker.tick(&job, Some(tick));
        }
        notifier.scheduler_alive();
        liveness.tick();
        notifier.status(&status_line(&plan, &ticker));
        let mut nap = plan
            .next_wake()
            .and_then(|t| (t - clock.now()).to_std().ok())
            .unwrap_or(MAX_NAP)
            .min(MAX_NAP);
        if let Some(w) = notifier.watchdog_every() {
            nap = nap.min(w);
        }
        tokio::select! {
            _ = signals.stop.cancelled() => break,
            changed = reloads.changed() => {
                if changed.is_err() {
                    // The sender lives in `signals`, so this cannot happen; if it did, no
                    // more reloads could arrive and only the stop is left to wait for.
                    signals.stop.cancelled().await;
                    break;
                }
                reloads.borrow_and_update();
                notifier.reloading();
                reload(&loader, &mut plan, &ticker, clock.now());
                notifier.ready(&status_line(&plan, &ticker));
            }
            _ = tokio::time::sleep(nap) => {}
        }
    }
    notifier.stopping();
    tracing::info!("Stopping: no new runs; waiting for running jobs to write their checkpoints.");
    ticker.drain().await;
    heartbeats.abort();
    let runner = ticker.runner();
    if let Err(e) = runner.state.forget_replica(&runner.holder).await {
        tracing::warn!(error = %e, "Could not remove this replica's heartbeat; it expires by itself.");
    }
    tracing::info!("cio-sync daemon stopped.");
    Ok(())
}

/// Re-reads the configuration; applies it only when every file is valid.
fn reload(loader: &Loader, plan: &mut Plan, ticker: &Ticker, now: DateTime<Utc>) {
    tracing::info!("SIGHUP received: reloading the configuration and the job files.");
    let config = match loader() {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(problem = %e, "Reload refused: a configuration problem.");
            }
            tracing::error!(
                problems = errors.0.len(),
                "Reload refused: the jobs scheduled before go on unchanged; fix the files and send SIGHUP again (`systemctl reload cio-sync`)."
            );
            return;
        }
    };
    let new_plan = match Plan::new(&config.jobs, now) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "Reload refused: the jobs scheduled before go on unchanged.");
            return;
        }
    };
    let old_runner = ticker.runner();
    let mut settings = config.settings;
    if settings.state_url.expose() != old_runner.settings.state_url.expose() {
        tracing::warn!(
            "`state.url` changed: the state database is kept until a restart (`systemctl restart cio-sync`)."
        );
        settings.state_url = old_runner.settings.state_url.clone();
    }
    ticker.replace_runner(old_runner.reloaded(settings));
    let changes = reload::Changes::between(&plan.jobs(), &new_plan.jobs());
    *plan = new_plan;
    tracing::info!(
        jobs = plan.len(),
        changes = %changes.describe(),
        "Reloaded: changes take effect from each job's next tick; running jobs finish as they started."
    );
}

/// Runs each `catch_up` job whose last tick before start nobody ran: no replica claimed it
/// and no run of the job started at or after it. A job that never ran counts as missed.
async fn catch_up(plan: &Plan, ticker: &Ticker, now: DateTime<Utc>) {
    let runner = ticker.runner();
    for (job, last_tick) in plan.catch_up_candidates(now) {
        let tick_ms = last_tick.timestamp_millis();
        let claimed = runner.state.last_claimed_tick(&job.name).await;
        let last_run = runner.state.runs(Some(&job.name), 1).await;
        let ran = match (claimed, last_run) {
            (Ok(c), Ok(runs)) => {
                c.is_some_and(|c| c >= tick_ms)
                    || runs.first().is_some_and(|r| r.started_at >= tick_ms)
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(job = %job.name, error = %e, "Cannot tell whether the last tick was missed; not catching up.");
                continue;
            }
        };
        if ran {
            continue;
        }
        tracing::info!(job = %job.name, missed = %last_tick.to_rfc3339(), "Catching up: the last scheduled tick was missed while the daemon was down.");
        ticker.tick(&job, Some(last_tick));
    }
}

/// How long a replica's heartbeat counts: three missed heartbeats and it is gone.
fn live_window(every: Duration) -> i64 {
    i64::try_from(every.as_millis().saturating_mul(3)).unwrap_or(i64::MAX)
}

/// Writes this replica's heartbeat and shares every rate limit among the live replicas.
async fn share_budget(ticker: &Ticker, every: Duration, first: bool) {
    let runner = ticker.runner();
    if let Err(e) = runner.state.heartbeat(&runner.holder).await {
        tracing::warn!(error = %e, "Cannot write this replica's heartbeat; the rate limits stay shared as they were.");
        return;
    }
    let live = match runner.state.live_replicas(live_window(every)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot count the live replicas; the rate limits stay shared as they were.");
            return;
        }
    };
    // A replica on this machine whose process is gone (killed) stops counting at once.
    let n = live
        .iter()
        .filter(|h| *h == &runner.holder || !crate::state::leases::holder_is_dead_local_process(h))
        .count()
        .max(1);
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    let before = runner.track_gate.replicas();
    for gate in runner.gates() {
        gate.share_among(n);
    }
    if first || before != n {
        tracing::info!(
            replicas = n,
            track_per_sec = runner.track_gate.current_per_sec(),
            "Live replicas share each workspace's rate limits."
        );
    }
}

async fn heartbeat_loop(ticker: Ticker, every: Duration, signals: Signals) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = signals.stop.cancelled() => return,
            _ = interval.tick() => share_budget(&ticker, every, false).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsvSource as CsvSection, DeleteAction};
    use crate::config::{
        IdentifierKind, IdentifierSpec, JobKind, MappingSpec, PushJob, SourceSpec,
    };

    /// A runner on SQLite state in `dir`, its Track API an address nothing answers on.
    async fn runner_in(dir: &std::path::Path) -> Runner {
        let cfg_path = dir.join("config.yaml");
        std::fs::write(
            &cfg_path,
            "state: { url: \"sqlite://s.db\" }\ncustomerio: { site_id: s, track_api_key: k, track_url: \"http://127.0.0.1:9\" }\n",
        )
        .unwrap();
        let settings = crate::config::load_settings(&cfg_path, &|_| None).unwrap();
        Runner::new(settings).await.unwrap()
    }

    fn job_at(dir: &std::path::Path, name: &str, schedule: &str) -> JobSpec {
        JobSpec {
            name: name.into(),
            file: dir.join(format!("{name}.yaml")),
            schedule: Some(schedule.into()),
            timezone: None,
            catch_up: false,
            enabled: true,
            workspace: None,
            kind: JobKind::Push(Box::new(PushJob {
                source: SourceSpec::Csv(CsvSection {
                    path: dir.join("missing.csv"),
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
                change: Default::default(),
                mirror: None,
            })),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Every (job, tick) the plan fires while the clock moves from `from` to `to`, waking
    /// whenever the plan says (as the loop does).
    fn fire_between(plan: &mut Plan, from: &str, to: &str) -> Vec<(String, DateTime<Utc>)> {
        let end = utc(to);
        let mut now = utc(from);
        let mut fired = Vec::new();
        while let Some(wake) = plan.next_wake() {
            if wake > end {
                break;
            }
            now = now.max(wake);
            fired.extend(plan.due(now).into_iter().map(|(j, t)| (j.name, t)));
        }
        fired
    }

    #[test]
    fn a_five_field_job_and_a_zoned_job_fire_when_their_clocks_say() {
        let dir = tempfile::tempdir().unwrap();
        let utc_job = job_at(dir.path(), "nightly", "30 2 * * *");
        let mut tokyo = job_at(dir.path(), "tokyo", "0 9 * * MON-FRI");
        tokyo.timezone = Some(chrono_tz::Asia::Tokyo);
        let mut paused = job_at(dir.path(), "paused", "* * * * *");
        paused.enabled = false;
        let unscheduled = JobSpec {
            schedule: None,
            ..job_at(dir.path(), "by-hand", "* * * * *")
        };
        let start = "2026-06-05T00:00:00Z"; // a Friday
        let mut plan = Plan::new(&[utc_job, tokyo, paused, unscheduled], utc(start)).unwrap();
        assert_eq!(
            plan.len(),
            2,
            "the paused and the unscheduled job are not planned"
        );
        let fired = fire_between(&mut plan, start, "2026-06-08T12:00:00Z");
        assert_eq!(
            fired,
            vec![
                ("nightly".to_string(), utc("2026-06-05T02:30:00Z")),
                ("nightly".to_string(), utc("2026-06-06T02:30:00Z")),
                ("nightly".to_string(), utc("2026-06-07T02:30:00Z")),
                // Monday 09:00 in Tokyo is Monday 00:00 UTC; the weekend has no run.
                ("tokyo".to_string(), utc("2026-06-08T00:00:00Z")),
                ("nightly".to_string(), utc("2026-06-08T02:30:00Z")),
            ]
        );
    }

    #[test]
    fn a_loop_held_up_past_several_ticks_fires_once_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = Plan::new(
            &[job_at(dir.path(), "every-minute", "* * * * *")],
            utc("2026-06-01T00:00:30Z"),
        )
        .unwrap();
        let due = plan.due(utc("2026-06-01T00:05:10Z"));
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].1,
            utc("2026-06-01T00:01:00Z"),
            "the first missed tick"
        );
        assert_eq!(plan.next_wake(), Some(utc("2026-06-01T00:06:00Z")));
        assert!(plan.due(utc("2026-06-01T00:05:59Z")).is_empty());
    }

    #[test]
    fn a_reload_names_the_jobs_added_removed_and_changed() {
        let dir = tempfile::tempdir().unwrap();
        let old = [
            job_at(dir.path(), "a", "* * * * *"),
            job_at(dir.path(), "b", "* * * * *"),
        ];
        let new = [
            job_at(dir.path(), "b", "0 2 * * *"),
            job_at(dir.path(), "c", "* * * * *"),
        ];
        let c = reload::Changes::between(&old, &new);
        assert_eq!(c.added, vec!["c"]);
        assert_eq!(c.removed, vec!["a"]);
        assert_eq!(c.changed, vec!["b"]);
        assert_eq!(c.describe(), "added: c; removed: a; changed: b");
    }

    #[tokio::test]
    async fn the_daemon_loop_fires_on_a_controlled_clock_and_catches_up_a_missed_tick() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner_in(dir.path()).await;
        let state = runner.state.clone();
        let mut nightly = job_at(dir.path(), "nightly", "0 2 * * *");
        nightly.timezone = Some(chrono_tz::Europe::Paris);
        nightly.catch_up = true;
        let signals = Signals::new();
        let clock = Arc::new(ManualClock::at(utc("2026-03-27T12:00:00Z")));
        let loader: Loader = Box::new(|| Err(ConfigErrors(vec![])));
        let daemon = tokio::spawn(run_with(
            runner,
            vec![nightly],
            signals.clone(),
            loader,
            crate::observe::Liveness::untracked(),
            clock.clone(),
        ));
        let ticks = || async {
            state
                .claimed_ticks("nightly")
                .await
                .unwrap()
                .into_iter()
                .map(|(t, _)| t)
                .collect::<Vec<i64>>()
        };
        let mut expect = Vec::new();
        // Caught up at start: 02:00 Paris that morning was never run. Then three nights
        // pass, the summer change among them: 02:00 does not exist on the 29th, so the run
        // is at 03:00 CEST, once.
        for (set_to, tick) in [
            ("2026-03-27T12:00:00Z", "2026-03-27T01:00:00Z"),
            ("2026-03-28T01:00:05Z", "2026-03-28T01:00:00Z"),
            ("2026-03-29T01:30:00Z", "2026-03-29T01:00:00Z"),
            ("2026-03-30T00:00:01Z", "2026-03-30T00:00:00Z"),
        ] {
            clock.set(utc(set_to));
            expect.push(utc(tick).timestamp_millis());
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while ticks().await.len() < expect.len() {
                assert!(!daemon.is_finished(), "the daemon ended early");
                assert!(
                    std::time::Instant::now() < deadline,
                    "no tick for {tick} within 60 s of setting the clock to {set_to}: {:?}",
                    ticks().await
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(ticks().await, expect, "after setting the clock to {set_to}");
        }
        signals.stop.cancel();
        daemon.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_tick_never_overlaps_a_running_run_of_the_same_job() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner_in(dir.path()).await;
        // A job whose file does not exist fails fast; the guard must still be released.
        let job = job_at(dir.path(), "j", "0 0 2 * * *");
        let signals = Signals::new();
        let ticker = Ticker::new(runner, signals.clone());
        assert_eq!(ticker.tick(&job, None), Tick::Started);
        assert_eq!(ticker.tick(&job, None), Tick::SkippedOverlap);
        while !ticker.tracker.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            ticker.tick(&job, None),
            Tick::Started,
            "the guard is released after the run"
        );
        signals.stop.cancel();
        assert_eq!(ticker.tick(&job, None), Tick::SkippedStopping);
        ticker.drain().await;
    }

    #[tokio::test]
    async fn the_status_line_shows_how_far_a_running_job_has_read() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner_in(dir.path()).await;
        let ticker = Ticker::new(runner, Signals::new());
        let jobs = [
            job_at(dir.path(), "orders", "0 0 2 * * *"),
            job_at(dir.path(), "people", "0 0 3 * * *"),
        ];
        let plan = Plan::new(&jobs, utc("2026-12-03T00:00:00Z")).unwrap();
        ticker
            .running
            .lock()
            .unwrap()
            .extend(["orders".to_string(), "people".to_string()]);
        let sink = progress_sink(ticker.percent.clone());
        let report = |job: &str, bytes, finished| crate::pipeline::Progress {
            job: job.into(),
            bytes,
            finished,
            ..Default::default()
        };
        sink(&report("orders", Some((400, 1000)), false));
        sink(&report("people", None, false));
        assert_eq!(
            status_line(&plan, &ticker),
            "2 jobs scheduled; orders running, 40%; people running"
        );
        sink(&report("orders", Some((400, 1000)), true));
        assert_eq!(
            status_line(&plan, &ticker),
            "2 jobs scheduled; orders running; people running",
            "a finished report forgets the figure"
        );
    }

    #[tokio::test]
    async fn the_scheduler_loop_ticks_the_liveness_handle() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner_in(dir.path()).await;
        // Never due while the test runs: only the loop's own turns tick the handle.
        let job = job_at(dir.path(), "j", "0 0 2 1 1 *");
        let signals = Signals::new();
        let live = crate::observe::Liveness::ticked_every(LIVENESS_STALE_AFTER);
        let loader: Loader = Box::new(|| Err(ConfigErrors(vec![])));
        let daemon = tokio::spawn(run_daemon(
            runner,
            vec![job],
            signals.clone(),
            loader,
            live.clone(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while live.ticks() < 2 {
            assert!(
                !daemon.is_finished(),
                "the daemon ended before its loop ticked"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "waited 120 s for two turns of the scheduler loop (saw {})",
                live.ticks()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(live.check(), Ok(()));
        signals.stop.cancel();
        daemon.await.unwrap().unwrap();
    }
}
