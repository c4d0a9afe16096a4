//! One push run: checkpoint → source → mapping → batcher → [per-batch stage] → sender →
//! acknowledgement → checkpoint.
//!
//! Owns: wiring the stages together for one job run as one loop over explicit phases
//! (reading, draining, grace, forced), the requests in flight, and committing progress
//! (checkpoint + counters + dead letters in one transaction) when the commit policy says.
//! Must not: parse files, build HTTP requests, decide the wire plan, read answers row by row
//! or write SQL itself; each stage's module does (`track::plan`, `settle`, `state`).
//!
//! # Layout
//! - `mod.rs`: the run loop.
//! - `phase.rs`: what a run may do at each point, and how stops and failures move it on.
//! - `settle.rs`: an answered batch → delivered rows and dead letters.
//! - `commit.rs`: when progress is written.
//! - `stage.rs`: the slot between a batch closing and its being sent.
//! - `ack.rs`: how far the checkpoint may move.
//! - `dry_run.rs`: `run --dry-run`.

pub mod ack;
mod commit;
pub mod dry_run;
pub(crate) mod lag;
mod phase;
mod settle;
pub mod stage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{Batch, Batcher, Pending};
use crate::config::{JobSpec, PushJob, Settings};
use crate::http::RunCounters;
use crate::mapping::Mapper;
use crate::source::{self, Checkpoint, SourceError, SourceStream};
use crate::state::{Commit, Outcome, RunCounts, Scope, StateError, StateStore};
use crate::track::{TrackClient, Wire, WirePlan};

use commit::{CommitPoint, CommitPolicy};
use phase::Phase;
use settle::{Ledger, RowOrigin, Sent, Verdict};
use stage::{BatchStage, SendAll};

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
    /// Normal: resume from the checkpoint and advance it.
    Normal { full: bool },
    /// Re-send dead letters: no checkpoint; delivered rows leave the dead-letter table.
    RetryDeadLetters,
}

/// Process-wide services a run uses.
#[derive(Clone)]
pub struct PushContext {
    pub settings: Arc<Settings>,
    pub state: StateStore,
    pub track: TrackClient,
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
    let checkpoint = match &mode {
        RunMode::Normal { full: true } => {
            ctx.state
                .reset_checkpoint(&job.name, &Scope::Job)
                .await
                .map_err(state_err)?;
            None
        }
        RunMode::Normal { full: false } => ctx
            .state
            .checkpoint(&job.name, &Scope::Job)
            .await
            .map_err(state_err)?,
        RunMode::RetryDeadLetters => None,
    };
    let run_id = ctx
        .state
        .start_run(&job.name, "push")
        .await
        .map_err(state_err)?;
    let span = tracing::info_span!("run", job = %job.name, run_id = %run_id);
    let reader_stop = stop.stop.child_token();
    let stream = match &mode {
        RunMode::RetryDeadLetters => {
            dead_letter_stream(&ctx.state, job, push, reader_stop.clone()).await
        }
        RunMode::Normal { .. } => source::open(
            &push.source,
            &job.name,
            checkpoint.as_ref(),
            reader_stop.clone(),
        )
        .await
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
    let run = Run::new(ctx, job, push, mode, stop, run_id.clone(), reader_stop);
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
    /// Between a batch closing and its being sent.
    stage: Box<dyn BatchStage + 'a>,
    commit_policy: CommitPolicy,
    phase: Phase,
    error: Option<String>,
    last_commit: Instant,
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
        Self {
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
            stage: Box::new(SendAll),
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
        let mut batcher = Batcher::new(plan.max_items, plan.max_bytes);
        // Rows read but not yet covered by the checkpoint: what a crash may re-send. Room
        // for the batches in flight, one closed batch waiting for a slot and the open one.
        // Batches close by bytes long before `max_items` for most rows, so once one has
        // closed the window counts in its real size, not in the item cap.
        let batches_in_window = plan.concurrency.saturating_add(2);
        let mut window = batches_in_window.saturating_mul(plan.max_items);
        let mut largest_batch = 0usize;
        // A closed batch waiting for a free slot: built while every slot is busy, so the
        // next request goes the moment one frees (the rate limiter never waits on mapping).
        let mut waiting: Option<Batch> = None;
        let mut in_flight: JoinSet<Sent> = JoinSet::new();
        let columns = stream.columns.clone();
        let describe = stream.describe.clone();
        let identity = stream.identity.clone();
        let mut last_progress = Instant::now();

        loop {
            // Batches that close are sent at once; reading pauses while all slots are busy, and
            // while the rows past the checkpoint fill the window (a slow early batch holds the
            // checkpoint back; without the window later batches would pile up behind it, and a
            // crash would re-send all of them, not just the ones in flight).
            let window_full = self.ledger.tracker.pending() >= window;
            let slot_free = in_flight.len() < plan.concurrency;
            if self.phase.sends()
                && slot_free
                && let Some(b) = waiting.take()
            {
                self.spawn(&mut in_flight, b, plan.wire);
                continue;
            }
            if self.phase.sends()
                && (self.phase == Phase::Draining || window_full)
                && slot_free
                && !batcher.is_empty()
            {
                if let Some(b) = batcher.take() {
                    self.spawn(&mut in_flight, b, plan.wire);
                }
                continue;
            }
            let can_read = self.phase.reads() && waiting.is_none() && !window_full;
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
                        Ok(sent) => self.ledger.settle(sent, &columns, &describe),
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
                            Some(Ok(row)) => {
                                if let Some(b) = self.take_row(row, &mapper, &mut batcher, &columns, &describe) {
                                    if b.items.len() > largest_batch {
                                        largest_batch = b.items.len();
                                        window = batches_in_window.saturating_mul(largest_batch);
                                    }
                                    if in_flight.len() < plan.concurrency {
                                        self.spawn(&mut in_flight, b, plan.wire);
                                    } else {
                                        waiting = Some(b);
                                    }
                                }
                            }
                        }
                        // The rest of a received chunk is taken here, one wake-up per chunk
                        // instead of per row, while the run could read it anyway; anything
                        // else (an answer, a stop) goes back to the select first.
                        let could_read = !stop_seen
                            && self.phase.reads()
                            && waiting.is_none()
                            && self.ledger.tracker.pending() < window;
                        if !could_read {
                            break;
                        }
                        match stream.rows.try_recv() {
                            Some(row) => next = Some(row),
                            None => break,
                        }
                    }
                    if last_progress.elapsed() >= Duration::from_secs(10) {
                        last_progress = Instant::now();
                        let (requests, retries) = self.counters.snapshot();
                        let c = &self.ledger.counts;
                        tracing::info!(read = c.rows_read, delivered = c.rows_delivered, rejected = c.rows_rejected, requests, retries, "Progress.");
                    }
                    self.maybe_commit(&identity, CommitPoint::RowRead).await?;
                }
            }
        }
        let stopped_early = self.phase.stopped_early();
        let complete = !stopped_early && self.error.is_none() && self.ledger.tracker.pending() == 0;
        self.maybe_commit(&identity, CommitPoint::RunEnd).await?;
        if complete && matches!(self.mode, RunMode::Normal { .. }) {
            self.commit_complete(&identity).await?;
        }
        let outcome = if self.error.is_some() {
            Outcome::Failed
        } else if stopped_early {
            Outcome::Interrupted
        } else if self.ledger.counts.rows_rejected > 0 {
            Outcome::RejectedRows
        } else {
            Outcome::Succeeded
        };
        let error = self.error.clone();
        self.finish(outcome, error, resumed_after_rows, started, None)
            .await
    }

    /// One row read: counted, mapped and batched, or dead-lettered. Returns the batch it
    /// closed, if any.
    fn take_row(
        &mut self,
        row: source::SourceRow,
        mapper: &Mapper,
        batcher: &mut Batcher,
        columns: &[String],
        describe: &str,
    ) -> Option<Batch> {
        self.ledger.events.read(1);
        self.ledger.counts.rows_read += 1;
        let seq = self.ledger.tracker.read(row.resume);
        let from = RowOrigin {
            source: describe,
            row_ref: &row.row_ref,
            line: row.line,
        };
        let values = match row.values {
            Ok(v) => v,
            Err(reason) => {
                let data = serde_json::json!({ "raw": row.raw.unwrap_or_default() }).to_string();
                self.ledger.reject(
                    seq,
                    from,
                    data,
                    format!("line {}: {reason}", row.line),
                    "source",
                );
                return None;
            }
        };
        match mapper.map(&values) {
            Err(reason) => {
                let data = Mapper::row_json(columns, &values).to_string();
                self.ledger.reject(seq, from, data, reason.0, "mapping");
                None
            }
            Ok(mapped) => batcher.push(Pending {
                seq,
                line: row.line,
                row_ref: row.row_ref,
                values,
                mapped,
            }),
        }
    }

    /// A failure: read no more, send no more, let what is in flight finish.
    fn fail(&mut self) {
        self.phase = self.phase.failed();
        self.reader_stop.cancel();
    }

    /// Gives up on every request in flight; their rows stay unsettled and go next run.
    fn abandon_in_flight(&mut self, in_flight: &mut JoinSet<Sent>) {
        self.phase = Phase::Forced;
        self.reader_stop.cancel();
        self.send_stop.cancel();
        in_flight.abort_all();
    }

    /// Passes a closed batch through the per-batch stage and sends what it leaves.
    fn spawn(&mut self, set: &mut JoinSet<Sent>, batch: Batch, wire: Wire) {
        let staged = self.stage.stage(batch);
        for p in &staged.skipped {
            self.ledger.skip(p);
        }
        let Some(batch) = staged.send.filter(|b| !b.items.is_empty()) else {
            return;
        };
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
                Sent { batch, outcome }
            }
            .instrument(span),
        );
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
        {
            return Ok(());
        }
        let checkpoint = match (&self.mode, advance) {
            (RunMode::Normal { .. }, Some(resume)) => Some(Checkpoint {
                source: identity.clone(),
                resume,
                complete: false,
            }),
            _ => None,
        };
        let counts = self.snapshot_counts();
        let dead = std::mem::take(&mut self.ledger.dead);
        let resolved = std::mem::take(&mut self.ledger.resolved);
        self.ctx
            .state
            .commit(Commit {
                checkpoint: checkpoint.as_ref(),
                dead: &dead,
                resolved: &resolved,
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
