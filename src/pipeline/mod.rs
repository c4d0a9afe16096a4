//! One push run: checkpoint → source → mapping → [change filter] → batcher → sender →
//! acknowledgement → checkpoint (+ fingerprints) → [mirror phase, after a complete full read].
//!
//! Owns: wiring the stages together for one job run as one loop over explicit phases
//! (reading, draining, grace, forced), the requests in flight, and committing progress
//! (checkpoint + counters + dead letters + fingerprints of acknowledged rows in one transaction), and starting the mirror phase after a complete full read when the commit policy says.
//! Must not: parse files, build HTTP requests, decide the wire plan, read answers row by row
//! or write SQL itself; each stage's module does (`track::plan`, `settle`, `state`).
//!
//! # Layout
//! - `mod.rs`: the run loop.
//! - `phase.rs`: what a run may do at each point, and how stops and failures move it on.
//! - `settle.rs`: an answered batch → delivered rows and dead letters.
//! - `commit.rs`: when progress is written.
//! - `stage.rs`: the change filter between mapping and the batcher.
//! - `mirror.rs`: mirror mode: removing what a complete full read no longer has.
//! - `ack.rs`: how far the checkpoint may move.
//! - `dry_run.rs`: `run --dry-run`.

pub mod ack;
pub mod backfill;
mod commit;
pub mod dry_run;
pub(crate) mod lag;
mod lanes;
pub(crate) mod mirror;
mod phase;
mod settle;
pub(crate) mod stage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{Batch, Pending};
use crate::config::{JobSpec, PushJob, Settings};
use crate::http::RunCounters;
use crate::mapping::Mapper;
use crate::source::{self, Checkpoint, SourceError, SourceStream};
use crate::state::{Commit, Outcome, RunCounts, Scope, StateError, StateStore};
use crate::track::{TrackClient, Wire, WirePlan};

use commit::{CommitPoint, CommitPolicy};
use lanes::Lanes;
use phase::Phase;
use settle::{Ledger, RowOrigin, Sent, Verdict};
use stage::{ChangeFilter, Filtered};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("job `{job}`: {source}")]
    State {
        job: String,
        #[source]
        source: StateError,
    },
    #[error("job `{job}`: {source}")]
    Source {
        job: String,
        #[source]
        source: SourceError,
    },
}

/// What a run did, for the summary line, `--json` and the run history.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub job: String,
    pub run_id: String,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub counts: RunCounts,
    /// Data rows skipped because an earlier run had settled them.
    pub resumed_after_rows: u64,
    pub elapsed_ms: u64,
    pub error: Option<String>,
    /// Extra figures (pull jobs: segments, members, campaigns, metric points).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<serde_json::Value>,
}

/// What the run is for.
#[derive(Debug, Clone)]
pub enum RunMode {
    /// Normal: resume from the checkpoint and advance it. `full` also forgets the job's
    /// fingerprints, so every row is sent again.
    Normal { full: bool },
    /// Normal, and a mirror phase acts even when its guard would refuse (`run --force`).
    Forced { full: bool },
    /// Re-send dead letters: no checkpoint; delivered rows leave the dead-letter table.
    RetryDeadLetters,
    /// `backfill`: the events of one window, in time order, on lanes by person, with the
    /// window's own checkpoint (`backfill.rs`).
    Backfill(backfill::BackfillWindow),
}

impl RunMode {
    /// The checkpoint the run resumes from and advances, if any.
    fn scope(&self) -> Option<Scope> {
        match self {
            RunMode::Normal { .. } | RunMode::Forced { .. } => Some(Scope::Job),
            RunMode::Backfill(w) => Some(w.scope()),
            RunMode::RetryDeadLetters => None,
        }
    }
}

/// A run's figures so far, for a progress bar or a log line (`cli/progress.rs`).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub job: String,
    pub rows_read: u64,
    pub rows_delivered: u64,
    pub rows_rejected: u64,
    pub requests: u64,
    /// Bytes of the source read so far and its size, when the source can tell (an
    /// uncompressed CSV file).
    pub bytes: Option<(u64, u64)>,
    /// Since the run started.
    pub elapsed: Duration,
    /// The last report of the run.
    pub finished: bool,
}

/// Where a run reports its progress; called from the run loop, so it must be quick.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How often a run reports progress to a sink.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often a run without a sink logs its progress.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

/// Process-wide services a run uses.
#[derive(Clone)]
pub struct PushContext {
    pub settings: Arc<Settings>,
    pub state: StateStore,
    pub track: TrackClient,
    /// Where progress goes (a terminal's bars); `None`: a log line every 10 s.
    pub progress: Option<ProgressSink>,
}

/// Stop requests: `stop` ends reading and starts the grace period; in-flight requests are
/// abandoned when `grace` runs out, or at once when `force` is cancelled (a second signal).
#[derive(Clone)]
pub struct StopSignal {
    pub stop: CancellationToken,
    pub force: CancellationToken,
    pub grace: Duration,
}

impl StopSignal {
    pub fn never() -> Self {
        Self {
            stop: CancellationToken::new(),
            force: CancellationToken::new(),
            grace: Duration::from_secs(60),
        }
    }

    pub fn from_signals(signals: &crate::shutdown::Signals, grace: Duration) -> Self {
        Self {
            stop: signals.stop.clone(),
            force: signals.force.clone(),
            grace,
        }
    }
}

/// Runs a push job once.
pub async fn run_push(
    ctx: &PushContext,
    job: &JobSpec,
    push: &PushJob,
    mode: RunMode,
    stop: StopSignal,
) -> Result<RunReport, PipelineError> {
    let state_err = |source| PipelineError::State {
        job: job.name.clone(),
        source,
    };
    let started = Instant::now();
    let (mode, force) = match mode {
        RunMode::Forced { full } => (RunMode::Normal { full }, true),
        m => (m, false),
    };
    let checkpoint = match (&mode, mode.scope()) {
        (RunMode::Normal { full: true }, _) => {
            ctx.state
                .reset_checkpoint(&job.name, &Scope::Job)
                .await
                .map_err(state_err)?;
            ctx.state
                .forget_fingerprints(&job.name)
                .await
                .map_err(state_err)?;
            None
        }
        (_, Some(scope)) => ctx
            .state
            .checkpoint(&job.name, &scope)
            .await
            .map_err(state_err)?,
        (_, None) => None,
    };
    let kind = match &mode {
        RunMode::Backfill(_) => "backfill",
        _ => "push",
    };
    let run_id = ctx
        .state
        .start_run(&job.name, kind)
        .await
        .map_err(state_err)?;
    let span = tracing::info_span!("run", job = %job.name, run_id = %run_id);
    let reader_stop = stop.stop.child_token();
    let stream = match &mode {
        RunMode::RetryDeadLetters => {
            dead_letter_stream(&ctx.state, job, push, reader_stop.clone()).await
        }
        RunMode::Normal { .. } | RunMode::Forced { .. } | RunMode::Backfill(_) => source::open(
            &push.source,
            &job.name,
            checkpoint.as_ref(),
            reader_stop.clone(),
        )
        .await
        .map(|s| match &mode {
            RunMode::Backfill(w) => backfill::windowed(s, push, w),
            _ => s,
        })
        .map_err(|source| PipelineError::Source {
            job: job.name.clone(),
            source,
        }),
    };
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            let msg = e.to_string();
            ctx.state
                .finish_run(
                    &run_id,
                    Outcome::Failed,
                    Some(&msg),
                    RunCounts::default(),
                    None,
                )
                .await
                .map_err(state_err)?;
            return Err(e);
        }
    };
    let reads_source = matches!(mode, RunMode::Normal { .. });
    let mut run = Run::new(ctx, job, push, mode, stop, run_id.clone(), reader_stop);
    run.force = force;
    if reads_source {
        // Usually empty or small: only rows whose dead letter is keyed by identity.
        run.ledger.dead_identities = ctx
            .state
            .dead_letter_identities(&job.name)
            .await
            .map_err(state_err)?;
    }
    let result = run.go(stream, started).instrument(span).await;
    if result.is_ok() && reads_source {
        report_checkpoint_lag(ctx, job, push).await;
    }
    if let Err(e) = &result {
        // The run must not stay "running" in the history; if even that fails, the run's own
        // error is still what the caller sees, and this one is logged.
        if let Err(finish) = ctx
            .state
            .finish_run(
                &run_id,
                Outcome::Failed,
                Some(&e.to_string()),
                RunCounts::default(),
                None,
            )
            .await
        {
            tracing::error!(job = %job.name, run_id = %run_id, error = %finish, "Could not record the failed run; the run history shows it as still running.");
        }
    }
    result
}

/// How far the job's checkpoint is behind its source after a run, where the source can tell.
async fn report_checkpoint_lag(ctx: &PushContext, job: &JobSpec, push: &PushJob) {
    match ctx.state.checkpoint(&job.name, &Scope::Job).await {
        Ok(cp) => {
            let now = crate::state::now_ms() as f64 / 1000.0;
            if let Some(l) = lag::lag(&job.name, &push.source, cp.as_ref(), now) {
                crate::observe::emit(l);
            }
        }
        Err(e) => {
            tracing::warn!(job = %job.name, error = %e, "Could not read the checkpoint back for its lag.")
        }
    }
}

/// A dead-letter retry reads the stored rows back as a source.
async fn dead_letter_stream(
    state: &StateStore,
    job: &JobSpec,
    push: &PushJob,
    cancel: CancellationToken,
) -> Result<SourceStream, PipelineError> {
    let letters = state
        .dead_letters(&job.name, i64::MAX)
        .await
        .map_err(|source| PipelineError::State {
            job: job.name.clone(),
            source,
        })?;
    Ok(source::replay::from_dead_letters(
        letters
            .into_iter()
            .map(|l| source::replay::ReplayRow {
                row_ref: l.row_ref,
                line: l.line,
                row_data: l.row_data,
                reason: l.reason,
            })
            .collect(),
        push.source.describe(),
        cancel,
    ))
}

struct Run<'a> {
    ctx: &'a PushContext,
    job: &'a JobSpec,
    push: &'a PushJob,
    mode: RunMode,
    stop: StopSignal,
    run_id: String,
    reader_stop: CancellationToken,
    /// Cancels retry waits of requests in flight (grace period over, or a fatal answer).
    send_stop: CancellationToken,
    counters: Arc<RunCounters>,
    /// Settled but not yet committed.
    ledger: Ledger,
    /// Between mapping and the batcher (jobs that keep fingerprints).
    filter: Option<ChangeFilter>,
    /// Rows the filter passed, waiting for a free sending slot.
    ready: std::collections::VecDeque<crate::batch::Pending>,
    /// `run --force`: a mirror phase acts even when its guard would refuse.
    force: bool,
    /// Rows whose identity could not be read (mirror mode cannot tell whether they vanished).
    rows_without_identity: u64,
    commit_policy: CommitPolicy,
    phase: Phase,
    error: Option<String>,
    last_commit: Instant,
    /// The checkpoint this run advances (`None`: a dead-letter retry advances none).
    scope: Option<Scope>,
    /// Size of the source in bytes, when it can tell (for the progress ETA).
    source_bytes: Option<u64>,
    /// Source bytes read so far (CSV positions).
    bytes_read: u64,
    /// For the progress figures.
    started: Instant,
}

impl<'a> Run<'a> {
    fn new(
        ctx: &'a PushContext,
        job: &'a JobSpec,
        push: &'a PushJob,
        mode: RunMode,
        stop: StopSignal,
        run_id: String,
        reader_stop: CancellationToken,
    ) -> Self {
        let resolving = matches!(mode, RunMode::RetryDeadLetters);
        let source_bytes = match (&mode, &push.source) {
            (RunMode::RetryDeadLetters, _) => None,
            (_, crate::config::SourceSpec::Csv(c))
                if c.path.extension().is_none_or(|e| e != "gz") =>
            {
                std::fs::metadata(&c.path).ok().map(|m| m.len())
            }
            _ => None,
        };
        Self {
            scope: mode.scope(),
            source_bytes,
            bytes_read: 0,
            started: Instant::now(),
            ctx,
            job,
            push,
            mode,
            stop,
            run_id,
            reader_stop,
            send_stop: CancellationToken::new(),
            counters: Arc::new(RunCounters::default()),
            ledger: Ledger::new(&job.name, resolving),
            filter: None,
            ready: std::collections::VecDeque::new(),
            force: false,
            rows_without_identity: 0,
            commit_policy: CommitPolicy::DEFAULT,
            phase: Phase::Reading,
            error: None,
            last_commit: Instant::now(),
        }
    }

    async fn go(
        mut self,
        mut stream: SourceStream,
        started: Instant,
    ) -> Result<RunReport, PipelineError> {
        let resumed_after_rows = stream.resumed_at.as_ref().map(|r| r.rows()).unwrap_or(0);
        if resumed_after_rows > 0 {
            tracing::info!(rows = resumed_after_rows, source = %stream.describe, "Resuming after the checkpoint.");
        }
        let mapper = match Mapper::new(&self.job.name, &self.push.mapping, &stream.columns) {
            Ok(m) => m,
            Err(e) => {
                let msg = format!(
                    "{}: {e}; fix the job file or the source",
                    self.job.file.display()
                );
                return self
                    .finish(
                        Outcome::Failed,
                        Some(msg),
                        resumed_after_rows,
                        started,
                        None,
                    )
                    .await;
            }
        };
        let plan = WirePlan::for_job(&self.ctx.settings.track, self.push);
        let mut lanes = match &self.mode {
            RunMode::Backfill(w) => Lanes::by_person(w.lanes, plan.max_items, plan.max_bytes),
            _ => Lanes::unordered(plan.max_items, plan.max_bytes, plan.concurrency),
        };
        // Rows read but not yet covered by the checkpoint: what a crash may re-send. Room
        // for the batches in flight, the open batch and one closed batch waiting for a slot;
        // with several lanes (a backfill), each lane's open batch and about one batch per
        // lane acknowledged behind the slowest lane, so full batches keep the limiter busy
        // (a re-sent event is deduplicated by its id; it costs only requests). Batches close
        // by bytes long before `max_items` for most rows, so once one has closed the window
        // counts in its real size, not in the item cap.
        let open = match lanes.count() {
            1 => 1,
            n => n.saturating_mul(2),
        };
        let batches_in_window = lanes.capacity().saturating_add(open).saturating_add(1);
        let mut window = batches_in_window.saturating_mul(plan.max_items);
        let mut largest_batch = 0usize;
        let mut in_flight: JoinSet<(usize, Sent)> = JoinSet::new();
        let columns = stream.columns.clone();
        let describe = stream.describe.clone();
        let identity = stream.identity.clone();
        let mut last_progress = Instant::now();
        let normal = matches!(self.mode, RunMode::Normal { .. });
        // A job Customer.io has acknowledged nothing of yet (its first run, or after
        // `checkpoint reset`) has nothing to compare with: its rows skip the lookup.
        let lookup = normal
            && self
                .ctx
                .state
                .has_fingerprints(&self.job.name)
                .await
                .map_err(|source| PipelineError::State {
                    job: self.job.name.clone(),
                    source,
                })?;
        self.filter = ChangeFilter::for_job(
            &self.job.name,
            &self.push.mapping,
            self.push.change,
            lookup,
            normal && self.push.mirror.is_some() && resumed_after_rows == 0,
            (window / 2).max(1),
        );
        let progress_every = if self.ctx.progress.is_some() {
            PROGRESS_EVERY
        } else {
            PROGRESS_LOG_EVERY
        };

        loop {
            // The window counts the rows a crash would send again: unsettled ones and ones
            // acknowledged behind them. Rows settled without sending (unchanged) cost no
            // re-send; the bound on all rows past the checkpoint only caps the tracker's memory.
            let window_full = self.ledger.tracker.full(window);
            // Rows waiting in the change filter are decided a chunk at a time, and at once
            // when reading stops or the window is full (they hold the checkpoint back).
            // A full chunk is handed on and decided while the next one is read.
            if self.phase.sends() {
                let settle_all = self.phase == Phase::Draining || window_full;
                let step = self.filter.as_ref().and_then(|f| {
                    if !f.is_empty() && settle_all {
                        Some(true)
                    } else if f.due() {
                        Some(false)
                    } else {
                        None
                    }
                });
                if let Some(all) = step {
                    self.take_filtered(all).await?;
                    self.maybe_commit(&identity, CommitPoint::RowRead).await?;
                    continue;
                }
            }
            // Rows the filter let through are cut into batches on their lanes.
            while let Some(p) = self.ready.pop_front() {
                lanes.push(p);
            }
            // Batches that close are sent at once; reading pauses while all slots are busy, and
            // while the rows past the checkpoint fill the window (a slow early batch holds the
            // checkpoint back; without the window later batches would pile up behind it, and a
            // crash would re-send all of them, not just the ones in flight).
            // Several lanes: rows read but not yet sent on one lane hold back the checkpoint
            // over rows other lanes delivered, so a graceful stop sends what was read.
            let stop_drains = lanes.drains_on_stop()
                && matches!(self.phase, Phase::Grace { deadline: Some(_) })
                && self.error.is_none();
            if self.phase.sends() || stop_drains {
                while let Some((lane, b)) = lanes.next_ready() {
                    if b.items.len() > largest_batch {
                        largest_batch = b.items.len();
                        window = batches_in_window.saturating_mul(largest_batch);
                    }
                    if !self.spawn(&mut in_flight, lane, b, plan.wire) {
                        lanes.done(lane);
                    }
                }
                // A full window sends the open batches as they are only when no request is
                // in flight: an answer settles rows and frees the window, and a part-filled
                // batch sent instead would spend a request of the rate budget on a fraction
                // of what one carries (a rate-limited backfill sent 70% more requests).
                let stuck = window_full && in_flight.is_empty();
                if (self.phase == Phase::Draining || stuck || stop_drains) && lanes.flush_idle() {
                    continue;
                }
            }
            let can_read =
                self.phase.reads() && lanes.slot_free() && !window_full && self.ready.is_empty();
            if !can_read && in_flight.is_empty() {
                break;
            }
            let deadline = self.phase.deadline();
            let grace = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let verdict = match done {
                        Ok((lane, sent)) => {
                            lanes.done(lane);
                            self.ledger.settle(sent, &columns, &describe)
                        }
                        Err(e) if e.is_cancelled() => Verdict::GoOn,
                        Err(e) => Verdict::Stop(format!("a sender task failed: {e}")),
                    };
                    match verdict {
                        Verdict::GoOn => {}
                        Verdict::Stop(msg) => {
                            self.error.get_or_insert(msg);
                        }
                        Verdict::StopNow(msg) => {
                            self.error = Some(msg);
                            self.abandon_in_flight(&mut in_flight);
                        }
                    }
                    if self.error.is_some() {
                        self.fail();
                    }
                    self.maybe_commit(&identity, CommitPoint::BatchAnswered).await?;
                }
                _ = self.stop.stop.cancelled(), if self.phase.awaits_stop() => {
                    tracing::info!(in_flight = in_flight.len(), grace_secs = self.stop.grace.as_secs(), "Stop requested: no more reading; waiting for requests in flight.");
                    self.reader_stop.cancel();
                    let now = tokio::time::Instant::now();
                    self.phase = self.phase.stop_requested(now.checked_add(self.stop.grace).unwrap_or(now));
                }
                _ = self.stop.force.cancelled(), if self.phase.awaits_force() => {
                    tracing::warn!(in_flight = in_flight.len(), "Second stop signal: abandoning requests in flight; their rows will be sent again next run.");
                    self.abandon_in_flight(&mut in_flight);
                }
                _ = grace => {
                    tracing::warn!(in_flight = in_flight.len(), "Grace period over: abandoning requests in flight; their rows will be sent again next run.");
                    self.abandon_in_flight(&mut in_flight);
                }
                row = stream.rows.recv(), if can_read => {
                    // A stop seen now ends the chunk; checked once per chunk, as the token
                    // takes a lock.
                    let stop_seen = self.stop.stop.is_cancelled() || self.stop.force.is_cancelled();
                    let mut next = row;
                    loop {
                        match next {
                            None => {
                                self.phase = self.phase.input_ended();
                                break;
                            }
                            Some(Err(e)) => {
                                let msg = PipelineError::Source { job: self.job.name.clone(), source: e }.to_string();
                                tracing::error!(error = %msg, "Reading the source failed; finishing what is in flight.");
                                self.error = Some(msg);
                                self.phase = self.phase.failed();
                                break;
                            }
                            Some(Ok(row)) => self.take_row(row, &mapper, &mut lanes, &columns, &describe),
                        }
                        // The rest of a received chunk is taken here, one wake-up per chunk
                        // instead of per row, while the run could read it anyway; anything
                        // else (an answer, a stop, a filter chunk to decide) goes back to the
                        // loop first.
                        let could_read = !stop_seen
                            && self.phase.reads()
                            && lanes.slot_free()
                            && !self.ledger.tracker.full(window)
                            && !self.filter.as_ref().is_some_and(ChangeFilter::due);
                        if !could_read {
                            break;
                        }
                        match stream.rows.try_recv() {
                            Some(row) => next = Some(row),
                            None => break,
                        }
                    }
                    if last_progress.elapsed() >= progress_every {
                        last_progress = Instant::now();
                        self.report_progress(false);
                    }
                    self.maybe_commit(&identity, CommitPoint::RowRead).await?;
                }
            }
        }
        let stopped_early = self.phase.stopped_early();
        let complete = !stopped_early && self.error.is_none() && self.ledger.tracker.pending() == 0;
        self.maybe_commit(&identity, CommitPoint::RunEnd).await?;
        if complete && self.scope.is_some() {
            self.commit_complete(&identity).await?;
        }
        let mut guarded = None;
        let mut mirror_summary = None;
        if complete
            && let Some(spec) = &self.push.mirror
            && let Some(seen) = self.filter.as_mut().and_then(ChangeFilter::take_seen)
        {
            let input = mirror::MirrorInput {
                job: &self.job.name,
                mapping: &self.push.mapping,
                spec,
                seen: &seen,
                rows_read: self.ledger.counts.rows_read,
                rows_without_identity: self.rows_without_identity,
                force: self.force,
                wire: plan.wire,
                max_items: plan.max_items,
                max_bytes: plan.max_bytes,
            };
            match mirror::run(
                &self.ctx.state,
                &self.ctx.track,
                &self.counters,
                &self.send_stop,
                input,
            )
            .await
            {
                Ok(mirror::MirrorOutcome::Guarded(reason)) => guarded = Some(reason),
                Ok(mirror::MirrorOutcome::Done(summary)) => {
                    mirror_summary = serde_json::to_value(&summary).ok();
                    if let Some(e) = summary.error {
                        self.error = Some(e);
                    }
                }
                Err(e) => {
                    self.error = Some(
                        PipelineError::State {
                            job: self.job.name.clone(),
                            source: e,
                        }
                        .to_string(),
                    );
                }
            }
        } else if self.push.mirror.is_some() && matches!(self.mode, RunMode::Normal { .. }) {
            tracing::info!(
                complete,
                resumed_after_rows,
                "No mirror phase: it runs only after a complete read from the start of the source."
            );
        }
        let outcome = if self.error.is_some() {
            Outcome::Failed
        } else if stopped_early {
            Outcome::Interrupted
        } else if guarded.is_some() {
            Outcome::Guarded
        } else if self.ledger.counts.rows_rejected > 0 {
            Outcome::RejectedRows
        } else {
            Outcome::Succeeded
        };
        let error = self.error.clone().or(guarded);
        let summary = mirror_summary.map(|m| serde_json::json!({ "mirror": m }));
        self.finish(outcome, error, resumed_after_rows, started, summary)
            .await
    }

    /// One row read: counted, mapped and queued (the change filter or a lane), or
    /// dead-lettered.
    fn take_row(
        &mut self,
        row: source::SourceRow,
        mapper: &Mapper,
        lanes: &mut Lanes,
        columns: &[String],
        describe: &str,
    ) {
        self.ledger.events.read(1);
        self.ledger.counts.rows_read += 1;
        if let source::ResumePoint::Csv { byte, .. } = &row.resume {
            self.bytes_read = *byte;
        }
        let seq = self.ledger.tracker.read(row.resume);
        let mut from = RowOrigin {
            source: describe,
            row_ref: &row.row_ref,
            line: row.line,
            identity: None,
        };
        let values = match row.values {
            Ok(v) => v,
            Err(reason) => {
                self.rows_without_identity += 1;
                let data = serde_json::json!({ "raw": row.raw.unwrap_or_default() }).to_string();
                self.ledger.reject(
                    seq,
                    from,
                    data,
                    format!("line {}: {reason}", row.line),
                    "source",
                );
                return;
            }
        };
        match mapper.map(&values) {
            Err(reason) => {
                from.identity = mapper.identity(&values, None);
                match (&from.identity, &mut self.filter) {
                    (Some(key), Some(f)) => f.saw(key),
                    (None, _) => self.rows_without_identity += 1,
                    _ => {}
                }
                let data = Mapper::row_json(columns, &values).to_string();
                self.ledger.reject(seq, from, data, reason.0, "mapping");
            }
            Ok(mapped) => {
                let pending = Pending {
                    seq,
                    line: row.line,
                    row_ref: row.row_ref,
                    values,
                    mapped,
                };
                if let Some(f) = &mut self.filter {
                    f.push(pending);
                } else {
                    lanes.push(pending);
                }
            }
        }
    }

    /// Takes what the change filter decided (`all`: every row waiting in it, else the chunk
    /// decided before the one just handed on): unchanged rows settle now, the others queue
    /// for the batcher.
    async fn take_filtered(&mut self, all: bool) -> Result<(), PipelineError> {
        let Some(filter) = &mut self.filter else {
            return Ok(());
        };
        let state = &self.ctx.state;
        let decided = if all {
            filter.flush(state).await
        } else {
            filter.advance(state).await
        }
        .map_err(|source| PipelineError::State {
            job: self.job.name.clone(),
            source,
        })?;
        for row in decided {
            match row {
                Filtered::Send { pending, note } => {
                    if let Some(note) = note {
                        self.ledger.note(pending.seq, note);
                    }
                    self.ready.push_back(pending);
                }
                Filtered::Unchanged {
                    pending,
                    key,
                    store,
                } => {
                    self.ledger.skip(&pending, Some(&key), store);
                }
            }
        }
        Ok(())
    }

    /// The figures so far to the progress sink, or (without one) as a log line.
    fn report_progress(&mut self, finished: bool) {
        let (requests, _) = self.counters.snapshot();
        let c = &self.ledger.counts;
        let p = Progress {
            job: self.job.name.clone(),
            rows_read: c.rows_read,
            rows_delivered: c.rows_delivered,
            rows_rejected: c.rows_rejected,
            requests,
            bytes: self.source_bytes.map(|t| (self.bytes_read.min(t), t)),
            elapsed: self.started.elapsed(),
            finished,
        };
        match &self.ctx.progress {
            Some(sink) => sink(&p),
            None if !finished => {
                let (_, retries) = self.counters.snapshot();
                tracing::info!(
                    read = p.rows_read,
                    delivered = p.rows_delivered,
                    rejected = p.rows_rejected,
                    requests,
                    retries,
                    "Progress."
                );
            }
            None => {}
        }
    }

    /// A failure: read no more, send no more, let what is in flight finish.
    fn fail(&mut self) {
        self.phase = self.phase.failed();
        self.reader_stop.cancel();
    }

    /// Gives up on every request in flight; their rows stay unsettled and go next run.
    fn abandon_in_flight(&mut self, in_flight: &mut JoinSet<(usize, Sent)>) {
        self.phase = Phase::Forced;
        self.reader_stop.cancel();
        self.send_stop.cancel();
        in_flight.abort_all();
    }

    /// Sends a closed batch; `false` when it is empty (the lane is free again).
    fn spawn(
        &mut self,
        set: &mut JoinSet<(usize, Sent)>,
        lane: usize,
        batch: Batch,
        wire: Wire,
    ) -> bool {
        if batch.items.is_empty() {
            return false;
        }
        crate::observe::emit(crate::observe::BatchSent {
            job: &self.job.name,
            items: batch.items.len(),
            bytes: batch.bytes,
        });
        let track = self.ctx.track.clone();
        let counters = self.counters.clone();
        let cancel = self.send_stop.clone();
        let span = tracing::debug_span!(
            "batch",
            rows = batch.items.len(),
            first_line = batch.items.first().map_or(0, |p| p.line)
        );
        set.spawn(
            async move {
                let outcome = track.send(&batch, wire, &counters, &cancel).await;
                (lane, Sent { batch, outcome })
            }
            .instrument(span),
        );
        true
    }

    fn snapshot_counts(&mut self) -> RunCounts {
        let (requests, retries) = self.counters.snapshot();
        self.ledger.counts.requests = requests;
        self.ledger.counts.retries = retries;
        self.ledger.counts
    }

    async fn maybe_commit(
        &mut self,
        identity: &serde_json::Value,
        point: CommitPoint,
    ) -> Result<(), PipelineError> {
        if !self
            .commit_policy
            .due(point, self.last_commit.elapsed(), self.ledger.dead.len())
        {
            return Ok(());
        }
        let advance = self.ledger.tracker.take_advance();
        if !CommitPolicy::writes_counts(point)
            && advance.is_none()
            && self.ledger.dead.is_empty()
            && self.ledger.resolved.is_empty()
            && self.ledger.fingerprints.is_empty()
        {
            return Ok(());
        }
        let checkpoint = match (&self.scope, advance) {
            (Some(_), Some(resume)) => Some(Checkpoint {
                source: identity.clone(),
                resume,
                complete: false,
            }),
            _ => None,
        };
        let counts = self.snapshot_counts();
        let dead = std::mem::take(&mut self.ledger.dead);
        let resolved = std::mem::take(&mut self.ledger.resolved);
        let fingerprints = std::mem::take(&mut self.ledger.fingerprints);
        self.ctx
            .state
            .commit(Commit {
                checkpoint: checkpoint.as_ref(),
                dead: &dead,
                resolved: &resolved,
                fingerprints: &fingerprints,
                scope: self.scope.as_ref().unwrap_or(&Scope::Job),
                ..Commit::new(&self.job.name, &self.run_id, counts)
            })
            .await
            .map_err(|source| PipelineError::State {
                job: self.job.name.clone(),
                source,
            })?;
        self.last_commit = Instant::now();
        Ok(())
    }

    async fn commit_complete(&mut self, identity: &serde_json::Value) -> Result<(), PipelineError> {
        let Some(resume) = self.ledger.tracker.settled_point().cloned() else {
            return Ok(());
        };
        let cp = Checkpoint {
            source: identity.clone(),
            resume,
            complete: true,
        };
        let counts = self.snapshot_counts();
        self.ctx
            .state
            .commit(Commit {
                checkpoint: Some(&cp),
                scope: self.scope.as_ref().unwrap_or(&Scope::Job),
                ..Commit::new(&self.job.name, &self.run_id, counts)
            })
            .await
            .map_err(|source| PipelineError::State {
                job: self.job.name.clone(),
                source,
            })
    }

    async fn finish(
        mut self,
        outcome: Outcome,
        error: Option<String>,
        resumed_after_rows: u64,
        started: Instant,
        summary: Option<serde_json::Value>,
    ) -> Result<RunReport, PipelineError> {
        self.report_progress(true);
        let counts = self.snapshot_counts();
        self.ctx
            .state
            .finish_run(
                &self.run_id,
                outcome,
                error.as_deref(),
                counts,
                summary.as_ref(),
            )
            .await
            .map_err(|source| PipelineError::State {
                job: self.job.name.clone(),
                source,
            })?;
        let report = RunReport {
            job: self.job.name.clone(),
            run_id: self.run_id.clone(),
            outcome,
            counts,
            resumed_after_rows,
            elapsed_ms: started.elapsed().as_millis() as u64,
            error,
            summary,
        };
        tracing::info!(
            outcome = outcome.as_str(),
            read = counts.rows_read,
            delivered = counts.rows_delivered,
            rejected = counts.rows_rejected,
            requests = counts.requests,
            retries = counts.retries,
            "Run finished."
        );
        Ok(report)
    }
}
