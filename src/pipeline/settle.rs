//! Settling: what each row of an answered batch becomes, delivered or dead-lettered.
//!
//! Owns: the run's ledger of what is settled but not yet committed (the acknowledgement
//! tracker, the counts, the dead letters waiting for the next commit, the row refs a
//! dead-letter retry resolved), turning a [`BatchOutcome`] into entries of it, and the log
//! lines that say so (one per batch, per row at DEBUG only). Must not: do I/O, or decide when
//! to commit or stop; it says what the answer means and the run loop acts on it.

use crate::batch::{Batch, Pending};
use crate::http::HttpError;
use crate::mapping::Mapper;
use crate::observe::{RowDeadLettered, RowSkippedUnchanged, RowsDelivered, emit};
use crate::state::{DeadLetter, RunCounts};
use crate::track::BatchOutcome;

use super::ack::Tracker;

/// A batch and what became of it.
pub(crate) struct Sent {
    pub(crate) batch: Batch,
    pub(crate) outcome: BatchOutcome,
}

/// What an answer means for the rest of the run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every row has its answer (or the batch was abandoned on purpose): go on.
    GoOn,
    /// The batch's rows stay unsettled: read no more, finish what is in flight, fail the run.
    Stop(String),
    /// The run cannot go on at all (credentials, region): abandon everything in flight.
    StopNow(String),
}

/// Where a source row came from, for its dead letter.
pub(crate) struct RowOrigin<'a> {
    pub(crate) source: &'a str,
    pub(crate) row_ref: &'a str,
    pub(crate) line: u64,
}

/// What the run has settled since its last commit.
pub(crate) struct Ledger {
    job: String,
    /// A dead-letter retry: delivered rows leave the dead-letter table.
    resolving: bool,
    pub(crate) tracker: Tracker,
    pub(crate) counts: RunCounts,
    /// Dead letters not yet committed.
    pub(crate) dead: Vec<DeadLetter>,
    /// Row refs of re-sent dead letters now delivered, not yet committed.
    pub(crate) resolved: Vec<String>,
}

impl Ledger {
    pub(crate) fn new(job: &str, resolving: bool) -> Self {
        Self {
            job: job.to_string(),
            resolving,
            tracker: Tracker::new(),
            counts: RunCounts::default(),
            dead: Vec::new(),
            resolved: Vec::new(),
        }
    }

    /// Dead-letters one row and settles it.
    pub(crate) fn reject(
        &mut self,
        seq: u64,
        from: RowOrigin<'_>,
        row_data: String,
        reason: String,
        stage: &'static str,
    ) {
        emit(RowDeadLettered {
            job: &self.job,
            line: from.line,
            reason: &reason,
        });
        self.counts.rows_rejected += 1;
        self.dead.push(DeadLetter {
            job: self.job.clone(),
            source: from.source.to_string(),
            row_ref: from.row_ref.to_string(),
            line: Some(from.line as i64),
            row_data,
            reason,
            stage,
        });
        self.tracker.settle(seq);
    }

    fn deliver(&mut self, p: Pending) {
        emit(RowsDelivered {
            job: &self.job,
            count: 1,
        });
        self.counts.rows_delivered += 1;
        if self.resolving {
            self.resolved.push(p.row_ref);
        }
        self.tracker.settle(p.seq);
    }

    /// Settles a row a per-batch stage took out: neither sent nor counted as delivered.
    pub(crate) fn skip(&mut self, p: &Pending) {
        emit(RowSkippedUnchanged {
            job: &self.job,
            line: p.line,
        });
        self.tracker.settle(p.seq);
    }

    /// Records what Customer.io's answer (or its absence) means for every row of the batch.
    pub(crate) fn settle(&mut self, sent: Sent, columns: &[String], describe: &str) -> Verdict {
        let rows = sent.batch.items.len();
        let first_line = sent.batch.items.first().map_or(0, |p| p.line);
        let last_line = sent.batch.items.last().map_or(0, |p| p.line);
        match sent.outcome {
            BatchOutcome::Settled { rejected } => {
                let count = rejected.len();
                let mut rejected = rejected.into_iter().peekable();
                let mut sample: Option<(u64, u64, String)> = None;
                for (i, p) in sent.batch.items.into_iter().enumerate() {
                    match rejected.next_if(|(r, _)| *r == i) {
                        Some((_, reason)) => {
                            match &mut sample {
                                Some((_, last, _)) => *last = p.line,
                                None => sample = Some((p.line, p.line, reason.clone())),
                            }
                            self.reject_answered(p, reason, columns, describe);
                        }
                        None => self.deliver(p),
                    }
                }
                if let Some((first, last, reason)) = sample {
                    tracing::warn!(
                        rejected = count,
                        rows,
                        first_line = first,
                        last_line = last,
                        reason = %reason,
                        "Customer.io rejected rows of a batch; they are dead-lettered (the first reason is shown)."
                    );
                }
                Verdict::GoOn
            }
            BatchOutcome::Rejected { reason } => {
                tracing::warn!(
                    rows,
                    first_line,
                    last_line,
                    reason = %reason,
                    "Customer.io rejected a whole batch; its rows are dead-lettered."
                );
                for p in sent.batch.items {
                    self.reject_answered(p, reason.clone(), columns, describe);
                }
                Verdict::GoOn
            }
            BatchOutcome::Failed(e) => {
                if matches!(e.last, HttpError::Cancelled) {
                    // Abandoned on purpose (grace over, second signal): the rows go next run.
                    return Verdict::GoOn;
                }
                let msg = format!(
                    "the Track API did not accept the batch starting at line {first_line} ({rows} rows): {e}; the checkpoint stays before it and the next run resumes there"
                );
                tracing::error!(error = %msg, "Delivery failed.");
                Verdict::Stop(msg)
            }
            BatchOutcome::Unsendable(e) => {
                let msg = format!(
                    "job `{}`: the batch starting at line {first_line} ({rows} rows) was not sent: {e}; the checkpoint stays before it",
                    self.job
                );
                tracing::error!(error = %msg, "A batch could not be sent.");
                Verdict::Stop(msg)
            }
            BatchOutcome::Fatal(e) => {
                tracing::error!(error = %e, "Stopping the run.");
                Verdict::StopNow(e.to_string())
            }
        }
    }

    fn reject_answered(&mut self, p: Pending, reason: String, columns: &[String], describe: &str) {
        let data = Mapper::row_json(columns, &p.values).to_string();
        let from = RowOrigin {
            source: describe,
            row_ref: &p.row_ref,
            line: p.line,
        };
        self.reject(p.seq, from, data, reason, "customerio");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentifierKind;
    use crate::mapping::{Action, Mapped, Operation, Subject};
    use crate::source::ResumePoint;
    use crate::track::request::RequestError;

    /// A ledger that has read `n` rows, and a batch holding all of them.
    fn read(n: u64) -> (Ledger, Batch) {
        let mut ledger = Ledger::new("people", false);
        let items = (0..n)
            .map(|row| {
                let seq = ledger.tracker.read(ResumePoint::Csv {
                    byte: row * 10,
                    line: row + 2,
                    row: row + 1,
                });
                let op = Operation {
                    subject: Subject::Person {
                        kind: IdentifierKind::Id,
                        value: row.to_string(),
                    },
                    action: Action::Delete,
                };
                Pending {
                    seq,
                    line: row + 2,
                    row_ref: format!("line:{}", row + 2),
                    values: Vec::new(),
                    mapped: Mapped {
                        encoded: op.encode_v2(),
                        op,
                    },
                }
            })
            .collect();
        (ledger, Batch { items, bytes: 0 })
    }

    #[test]
    fn a_whole_batch_refusal_dead_letters_every_row_with_its_line() {
        let (mut ledger, batch) = read(3);
        let outcome = BatchOutcome::Rejected {
            reason: "HTTP 400: bad".into(),
        };
        let verdict = ledger.settle(Sent { batch, outcome }, &[], "people.csv");
        assert_eq!(verdict, Verdict::GoOn);
        assert_eq!(ledger.counts.rows_rejected, 3);
        assert_eq!(ledger.counts.rows_delivered, 0);
        let lines: Vec<Option<i64>> = ledger.dead.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![Some(2), Some(3), Some(4)]);
        assert!(ledger.dead.iter().all(|d| d.stage == "customerio"));
        assert_eq!(ledger.tracker.pending(), 0, "every row settled");
    }

    #[test]
    fn an_unsendable_batch_fails_the_run_naming_the_job_and_settles_nothing() {
        let (mut ledger, batch) = read(2);
        let outcome = BatchOutcome::Unsendable(RequestError::NotOneSegment {
            found: "an anonymous visitor".into(),
        });
        let verdict = ledger.settle(Sent { batch, outcome }, &[], "vip.csv");
        let Verdict::Stop(msg) = verdict else {
            panic!("the run stops: {verdict:?}");
        };
        assert!(msg.starts_with("job `people`: "), "{msg}");
        assert!(msg.contains("line 2 (2 rows) was not sent"), "{msg}");
        assert_eq!(
            (ledger.counts.rows_delivered, ledger.counts.rows_rejected),
            (0, 0),
            "nothing counted"
        );
        assert!(ledger.dead.is_empty(), "nothing stored");
        assert_eq!(
            ledger.tracker.pending(),
            2,
            "the checkpoint stays before them"
        );
    }
}
