//! One push run: checkpoint → source → mapping → batcher → sender → acknowledgement → checkpoint.
//!
//! Owns: wiring the stages together for one job run, the requests in flight, when a run stops
//! (end of input, a fatal answer, retries exhausted, a stop signal with its grace period) and
//! committing progress (checkpoint + counters + dead letters in one transaction).
//! Must not: parse files, build HTTP requests or write SQL itself; each stage's module does.

pub mod ack;
pub mod dry_run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{Batch, Batcher, Pending};
use crate::config::{JobSpec, MappingSpec, PushJob, Settings};
use crate::http::RunCounters;
use crate::mapping::Mapper;
use crate::source::{self, Checkpoint, SourceError, SourceStream};
use crate::state::{DeadLetter, Outcome, RunCounts, StateError, StateStore};
use crate::track::{BatchOutcome, TrackClient, TrackError, Wire};

use ack::Tracker;

/// Progress is committed after every acknowledged batch, so a crash re-sends at most the
/// batches in flight. Rows rejected before sending are committed at least this often.
const COMMIT_EVERY: Duration = Duration::from_millis(250);

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

struct Sent {
    batch: Batch,
    outcome: BatchOutcome,
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
                .reset_checkpoint(&job.name)
                .await
                .map_err(state_err)?;
            None
        }
        RunMode::Normal { full: false } => {
            ctx.state.checkpoint(&job.name).await.map_err(state_err)?
        }
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
    let run = Run::new(ctx, job, push, mode, stop, run_id.clone(), reader_stop);
    let result = run.go(stream, started).instrument(span).await;
    if let Err(e) = &result {
        // Best effort: the run must not stay "running" in the history.
        let _ = ctx
            .state
            .finish_run(
                &run_id,
                Outcome::Failed,
                Some(&e.to_string()),
                RunCounts::default(),
                None,
            )
            .await;
    }
    result
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
    tracker: Tracker,
    counts: RunCounts,
    dead: Vec<DeadLetter>,
    resolved: Vec<String>,
    error: Option<String>,
    fatal: bool,
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
            tracker: Tracker::new(),
            counts: RunCounts::default(),
            dead: Vec::new(),
            resolved: Vec::new(),
            error: None,
            fatal: false,
            last_commit: Instant::now(),
        }
    }

    fn settings(&self) -> (Wire, usize, usize, usize) {
        let s = &self.ctx.settings.track;
        let transport = self.push.transport.unwrap_or(s.transport);
        let batch = self.push.batch.clone().unwrap_or_else(|| s.batch.clone());
        let concurrency = self.push.concurrency.unwrap_or(s.concurrency);
        let (anonymous, segment) = match &self.push.mapping {
            MappingSpec::Track {
                who: crate::config::EventSubject::Anonymous { .. },
                ..
            } => (true, false),
            MappingSpec::Segment { .. } => (false, true),
            _ => (false, false),
        };
        let wire = Wire::for_job(transport, !anonymous, segment);
        let max_items = match wire {
            Wire::V2Batch => batch.max_items,
            Wire::V1 => 1,
            // add_customers takes a list of ids; keep requests modest.
            Wire::Segment => batch.max_items.min(1000),
        };
        (wire, max_items, batch.max_bytes, concurrency)
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
        let (wire, max_items, max_bytes, concurrency) = self.settings();
        let mut batcher = Batcher::new(max_items, max_bytes);
        // Rows read but not yet covered by the checkpoint: what a crash may re-send.
        let window = concurrency.saturating_add(1).saturating_mul(max_items);
        let mut in_flight: JoinSet<Sent> = JoinSet::new();
        let mut reading = true;
        let mut stopping = false;
        let mut grace_deadline: Option<tokio::time::Instant> = None;
        let mut stop_seen = false;
        let mut forced = false;
        let columns = stream.columns.clone();
        let describe = stream.describe.clone();
        let identity = stream.identity.clone();
        let mut last_progress = Instant::now();

        loop {
            // Batches that close are sent at once; reading pauses while all slots are busy, and
            // while the rows past the checkpoint fill the window (a slow early batch holds the
            // checkpoint back; without the window later batches would pile up behind it, and a
            // crash would re-send all of them, not just the ones in flight).
            let window_full = self.tracker.pending() >= window;
            let can_read = reading && !stopping && in_flight.len() < concurrency && !window_full;
            if (!reading || window_full)
                && !stopping
                && !batcher.is_empty()
                && in_flight.len() < concurrency
            {
                if let Some(b) = batcher.take() {
                    self.spawn(&mut in_flight, b, wire);
                }
                continue;
            }
            if !can_read && in_flight.is_empty() {
                break;
            }
            let grace = async {
                match grace_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done {
                        Ok(sent) => self.settle(sent, &columns, &describe),
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => {
                            self.error.get_or_insert_with(|| format!("a sender task failed: {e}"));
                            stopping = true;
                            self.reader_stop.cancel();
                        }
                    }
                    if self.fatal || (self.error.is_some() && !stopping) {
                        stopping = true;
                        self.reader_stop.cancel();
                    }
                    if self.fatal {
                        self.send_stop.cancel();
                        in_flight.abort_all();
                    }
                    self.maybe_commit(&identity, true).await?;
                }
                // Also after a failure has stopped reading: the grace period must still start,
                // or retrying requests could outlive systemd's stop timeout.
                _ = self.stop.stop.cancelled(), if !stop_seen => {
                    tracing::info!(in_flight = in_flight.len(), grace_secs = self.stop.grace.as_secs(), "Stop requested: no more reading; waiting for requests in flight.");
                    stop_seen = true;
                    stopping = true;
                    self.reader_stop.cancel();
                    let now = tokio::time::Instant::now();
                    grace_deadline = Some(now.checked_add(self.stop.grace).unwrap_or(now));
                }
                _ = self.stop.force.cancelled(), if !forced => {
                    tracing::warn!(in_flight = in_flight.len(), "Second stop signal: abandoning requests in flight; their rows will be sent again next run.");
                    forced = true;
                    stopping = true;
                    self.reader_stop.cancel();
                    self.send_stop.cancel();
                    in_flight.abort_all();
                }
                _ = grace => {
                    tracing::warn!(in_flight = in_flight.len(), "Grace period over: abandoning requests in flight; their rows will be sent again next run.");
                    self.send_stop.cancel();
                    in_flight.abort_all();
                    grace_deadline = None;
                }
                row = stream.rows.recv(), if can_read => {
                    match row {
                        None => reading = false,
                        Some(Err(e)) => {
                            let msg = PipelineError::Source { job: self.job.name.clone(), source: e }.to_string();
                            tracing::error!(error = %msg, "Reading the source failed; finishing what is in flight.");
                            self.error = Some(msg);
                            reading = false;
                            stopping = true;
                        }
                        Some(Ok(row)) => {
                            self.counts.rows_read += 1;
                            let seq = self.tracker.read(row.resume.clone());
                            let values = match row.values {
                                Ok(v) => v,
                                Err(reason) => {
                                    let data = serde_json::json!({ "raw": row.raw.unwrap_or_default() }).to_string();
                                    self.reject(seq, &describe, &row.row_ref, row.line, data, format!("line {}: {reason}", row.line), "source");
                                    continue;
                                }
                            };
                            match mapper.map(&values) {
                                Err(reason) => {
                                    let data = Mapper::row_json(&columns, &values).to_string();
                                    self.reject(seq, &describe, &row.row_ref, row.line, data, reason.0, "mapping");
                                }
                                Ok(mapped) => {
                                    let pending = Pending { seq, line: row.line, row_ref: row.row_ref, values, mapped };
                                    if let Some(b) = batcher.push(pending) {
                                        self.spawn(&mut in_flight, b, wire);
                                    }
                                }
                            }
                            if last_progress.elapsed() >= Duration::from_secs(10) {
                                last_progress = Instant::now();
                                let (requests, retries) = self.counters.snapshot();
                                tracing::info!(read = self.counts.rows_read, delivered = self.counts.rows_delivered, rejected = self.counts.rows_rejected, requests, retries, "Progress.");
                            }
                            self.maybe_commit(&identity, false).await?;
                        }
                    }
                }
            }
        }
        let complete = !stopping && self.error.is_none() && self.tracker.pending() == 0;
        self.maybe_commit(&identity, true).await?;
        if complete && matches!(self.mode, RunMode::Normal { .. }) {
            self.commit_complete(&identity).await?;
        }
        let outcome = if self.error.is_some() {
            Outcome::Failed
        } else if stopping {
            Outcome::Interrupted
        } else if self.counts.rows_rejected > 0 {
            Outcome::RejectedRows
        } else {
            Outcome::Succeeded
        };
        let error = self.error.clone();
        self.finish(outcome, error, resumed_after_rows, started, None)
            .await
    }

    fn spawn(&self, set: &mut JoinSet<Sent>, batch: Batch, wire: Wire) {
        let track = self.ctx.track.clone();
        let counters = self.counters.clone();
        let cancel = self.send_stop.clone();
        let span = tracing::debug_span!(
            "batch",
            rows = batch.items.len(),
            first_line = batch.items.first().map(|p| p.line).unwrap_or(0)
        );
        set.spawn(
            async move {
                let outcome = track.send(&batch, wire, &counters, &cancel).await;
                Sent { batch, outcome }
            }
            .instrument(span),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        seq: u64,
        source: &str,
        row_ref: &str,
        line: u64,
        row_data: String,
        reason: String,
        stage: &'static str,
    ) {
        tracing::debug!(line, reason = %reason, "Row dead-lettered.");
        self.counts.rows_rejected += 1;
        self.dead.push(DeadLetter {
            job: self.job.name.clone(),
            source: source.to_string(),
            row_ref: row_ref.to_string(),
            line: Some(line as i64),
            row_data,
            reason,
            stage,
        });
        self.tracker.settle(seq);
    }

    fn settle(&mut self, sent: Sent, columns: &[String], describe: &str) {
        match sent.outcome {
            BatchOutcome::Settled { rejected } => {
                let mut rejected = rejected.into_iter().peekable();
                for (i, p) in sent.batch.items.into_iter().enumerate() {
                    if rejected.peek().is_some_and(|(r, _)| *r == i) {
                        let (_, reason) = rejected.next().unwrap_or_default();
                        let data = Mapper::row_json(columns, &p.values).to_string();
                        tracing::warn!(line = p.line, reason = %reason, "Customer.io rejected a row; dead-lettered.");
                        self.reject(
                            p.seq,
                            describe,
                            &p.row_ref,
                            p.line,
                            data,
                            reason,
                            "customerio",
                        );
                    } else {
                        self.counts.rows_delivered += 1;
                        if matches!(self.mode, RunMode::RetryDeadLetters) {
                            self.resolved.push(p.row_ref);
                        }
                        self.tracker.settle(p.seq);
                    }
                }
            }
            BatchOutcome::Failed(e) => {
                let first = sent.batch.items.first().map(|p| p.line).unwrap_or(0);
                if !matches!(e.last, crate::http::HttpError::Cancelled) {
                    let msg = format!(
                        "the Track API did not accept the batch starting at line {first} ({} rows): {e}; the checkpoint stays before it and the next run resumes there",
                        sent.batch.items.len()
                    );
                    tracing::error!(error = %msg, "Delivery failed.");
                    self.error.get_or_insert(msg);
                }
            }
            BatchOutcome::Fatal(e) => {
                tracing::error!(error = %e, "Stopping the run.");
                self.fatal = true;
                let msg = match e {
                    TrackError::Unauthorized { .. } | TrackError::WrongRegion { .. } => {
                        e.to_string()
                    }
                    other => other.to_string(),
                };
                self.error = Some(msg);
            }
        }
    }

    fn snapshot_counts(&mut self) -> RunCounts {
        let (requests, retries) = self.counters.snapshot();
        self.counts.requests = requests;
        self.counts.retries = retries;
        self.counts
    }

    async fn maybe_commit(
        &mut self,
        identity: &serde_json::Value,
        force: bool,
    ) -> Result<(), PipelineError> {
        if !force && self.last_commit.elapsed() < COMMIT_EVERY && self.dead.len() < 1000 {
            return Ok(());
        }
        let advance = self.tracker.take_advance();
        if !force && advance.is_none() && self.dead.is_empty() && self.resolved.is_empty() {
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
        let dead = std::mem::take(&mut self.dead);
        let resolved = std::mem::take(&mut self.resolved);
        self.ctx
            .state
            .commit(
                &self.job.name,
                &self.run_id,
                checkpoint.as_ref(),
                &dead,
                &resolved,
                counts,
            )
            .await
            .map_err(|source| PipelineError::State {
                job: self.job.name.clone(),
                source,
            })?;
        self.last_commit = Instant::now();
        Ok(())
    }

    async fn commit_complete(&mut self, identity: &serde_json::Value) -> Result<(), PipelineError> {
        let Some(resume) = self.tracker.settled_point().cloned() else {
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
            .commit(&self.job.name, &self.run_id, Some(&cp), &[], &[], counts)
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
