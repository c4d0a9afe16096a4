//! Settling: what each row of an answered batch becomes, delivered or dead-lettered.
//!
//! Owns: the run's ledger of what is settled but not yet committed (the acknowledgement
//! tracker, the counts, the dead letters waiting for the next commit, the row refs a
//! dead-letter retry resolved, the fingerprints waiting for their rows' acknowledgement and those acknowledged, the identities of the job's dead letters a delivered row removes), turning a [`BatchOutcome`] into entries of it, and the log
//! lines that say so (one per batch, per row at DEBUG only). Must not: do I/O, or decide when
//! to commit or stop; it says what the answer means and the run loop acts on it.

use std::collections::{HashMap, HashSet};

use crate::batch::{Batch, Pending};
use crate::change::Fingerprint;
use crate::http::HttpError;
use crate::mapping::Mapper;
use crate::observe::JobRowEvents;
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
    /// The row's identity key, when it can be read: the dead letter is keyed by it, so a
    /// re-read row replaces its dead letter (else by source and line).
    pub(crate) identity: Option<String>,
}

/// What the run has settled since its last commit.
pub(crate) struct Ledger {
    job: String,
    /// The job's row metrics and their log lines.
    pub(crate) events: JobRowEvents,
    /// A dead-letter retry: delivered rows leave the dead-letter table.
    resolving: bool,
    pub(crate) tracker: Tracker,
    pub(crate) counts: RunCounts,
    /// Dead letters not yet committed.
    pub(crate) dead: Vec<DeadLetter>,
    /// Row refs of re-sent dead letters now delivered, not yet committed.
    pub(crate) resolved: Vec<String>,
    /// Per unsettled row (by sequence number): the fingerprint to store once acknowledged.
    pub(crate) notes: HashMap<u64, (String, Fingerprint)>,
    /// Fingerprints of acknowledged rows, not yet committed.
    pub(crate) fingerprints: Vec<(String, Fingerprint)>,
    /// Identity keys of the job's dead letters: a row delivered (or unchanged) now removes
    /// its dead letter.
    pub(crate) dead_identities: HashSet<String>,
}

impl Ledger {
    pub(crate) fn new(job: &str, resolving: bool) -> Self {
        Self {
            job: job.to_string(),
            events: JobRowEvents::register(job),
            resolving,
            tracker: Tracker::new(),
            counts: RunCounts::default(),
            dead: Vec::new(),
            resolved: Vec::new(),
            notes: HashMap::new(),
            fingerprints: Vec::new(),
            dead_identities: HashSet::new(),
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
        self.events.dead_lettered(from.line, &reason);
        self.counts.rows_rejected += 1;
        self.notes.remove(&seq);
        if let Some(key) = &from.identity {
            // Replaced, not resolved: the new dead letter takes its place.
            self.dead_identities.remove(key);
        }
        self.dead.push(DeadLetter {
            job: self.job.clone(),
            source: from.source.to_string(),
            row_ref: from
                .identity
                .clone()
                .unwrap_or_else(|| from.row_ref.to_string()),
            line: Some(from.line as i64),
            row_data,
            reason,
            stage,
            identity: from.identity,
        });
        self.tracker.settle(seq);
    }

    fn deliver(&mut self, p: Pending) {
        self.events.delivered(1);
        self.counts.rows_delivered += 1;
        if let Some(note) = self.notes.remove(&p.seq) {
            self.acknowledged(note);
        }
        if self.resolving {
            self.resolved.push(p.row_ref);
        }
        self.tracker.settle_sent(p.seq);
    }

    /// Notes a row Customer.io has: its fingerprint is stored, its dead letter leaves.
    fn acknowledged(&mut self, (key, fp): (String, Fingerprint)) {
        if !self.resolving && self.dead_identities.remove(&key) {
            self.resolved.push(key.clone());
        }
        self.fingerprints.push((key, fp));
    }

    /// Notes what to store for `seq` once Customer.io acknowledges it.
    pub(crate) fn note(&mut self, seq: u64, note: (String, Fingerprint)) {
        self.notes.insert(seq, note);
    }

    /// Settles a row the change filter found unchanged: neither sent nor counted as
    /// delivered; its dead letter, if any, leaves (Customer.io has the row).
    pub(crate) fn skip(
        &mut self,
        p: &Pending,
        key: Option<&str>,
        store: Option<(String, Fingerprint)>,
    ) {
        self.events.skipped_unchanged(p.line);
        self.counts.rows_unchanged += 1;
        if let Some(store) = store {
            self.acknowledged(store);
        } else if let Some(key) = key
            && !self.resolving
            && self.dead_identities.remove(key)
        {
            self.resolved.push(key.to_string());
        }
        if self.resolving {
            self.resolved.push(p.row_ref.clone());
        }
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
            identity: crate::change::identity(&p.mapped.op),
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
