//! The change filter: the stage between mapping and the batcher.
//!
//! Owns: holding mapped rows in chunks, looking their fingerprints up (one query per chunk,
//! so nothing is held for the whole table), and deciding per row with `change::decide`
//! whether it is sent whole, sent with only its changed attributes, or settled at once as
//! unchanged. An unchanged row never reaches the batcher, so a 1%-changed export makes
//! full batches of changed rows, not a thousand near-empty requests. It also notes, per
//! row, the fingerprint to store once Customer.io acknowledges it, and the identities a
//! full read saw (mirror mode). Must not: send anything, settle rows or write to the state
//! database (the run loop and the ledger do).

use std::collections::HashSet;

use crate::batch::Pending;
use crate::change::{self, ChangePolicy, Decision, Fingerprint};
use crate::config::{AddOrDelete, MappingSpec, ObjectAction, SegmentAction};
use crate::mapping::Mapped;
use crate::state::{StateError, StateStore};

/// Rows per fingerprint lookup.
pub(crate) const CHUNK_ROWS: usize = 1000;

/// What the filter made of one row.
pub(crate) enum Filtered {
    /// Send it; store `note` once acknowledged.
    Send {
        pending: Pending,
        note: Option<(String, Fingerprint)>,
    },
    /// Customer.io already has it: settle now; `store` replaces a fingerprint that differed
    /// only by attributes that left the row.
    Unchanged {
        pending: Pending,
        store: Option<(String, Fingerprint)>,
    },
}

pub(crate) struct ChangeFilter {
    job: String,
    policy: ChangePolicy,
    /// Whether stored fingerprints are consulted (not for `send: all` or dead-letter retries).
    lookup: bool,
    chunk: usize,
    buffer: Vec<Pending>,
    /// Hashes of the identities this run read (kept only for mirror mode).
    seen: Option<HashSet<u64>>,
}

impl ChangeFilter {
    /// The filter of a job, `None` for job kinds that keep no fingerprints (events, deletes,
    /// devices, merges, removals).
    pub(crate) fn for_job(
        job: &str,
        mapping: &MappingSpec,
        policy: ChangePolicy,
        lookup: bool,
        mirror: bool,
        chunk: usize,
    ) -> Option<Self> {
        let tracked = match mapping {
            MappingSpec::Identify { .. } => true,
            MappingSpec::Object { action, .. } => *action == ObjectAction::Identify,
            MappingSpec::Relationship { action, .. } => *action == AddOrDelete::Add,
            MappingSpec::Segment { action, .. } => *action == SegmentAction::Add,
            _ => false,
        };
        tracked.then(|| Self {
            job: job.to_string(),
            policy,
            lookup: lookup && policy.send == change::SendPolicy::Changed,
            chunk: chunk.clamp(1, CHUNK_ROWS),
            buffer: Vec::with_capacity(chunk.clamp(1, CHUNK_ROWS)),
            seen: mirror.then(HashSet::new),
        })
    }

    pub(crate) fn push(&mut self, p: Pending) {
        self.buffer.push(p);
    }

    /// A chunk is full: look it up.
    pub(crate) fn due(&self) -> bool {
        self.buffer.len() >= self.chunk
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Notes an identity a row had even though it could not be mapped, so mirror mode does
    /// not take a broken row for a vanished person.
    pub(crate) fn saw(&mut self, key: &str) {
        if let Some(seen) = &mut self.seen {
            seen.insert(change::key_hash(key));
        }
    }

    /// The identities this run read, for mirror mode.
    pub(crate) fn take_seen(&mut self) -> Option<HashSet<u64>> {
        self.seen.take()
    }

    /// Decides every buffered row, in read order.
    pub(crate) async fn flush(&mut self, state: &StateStore) -> Result<Vec<Filtered>, StateError> {
        let rows = std::mem::take(&mut self.buffer);
        let keys: Vec<Option<String>> = rows
            .iter()
            .map(|p| change::tracked(&p.mapped.op).map(|(k, _)| k))
            .collect();
        if let Some(seen) = &mut self.seen {
            for k in keys.iter().flatten() {
                seen.insert(change::key_hash(k));
            }
        }
        let known = if self.lookup {
            let wanted: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
            state.fingerprints(&self.job, &wanted).await?
        } else {
            Default::default()
        };
        let mut out = Vec::with_capacity(rows.len());
        for (mut pending, key) in rows.into_iter().zip(keys) {
            let Some(key) = key else {
                out.push(Filtered::Send {
                    pending,
                    note: None,
                });
                continue;
            };
            let attributes = change::tracked(&pending.mapped.op).and_then(|(_, a)| a);
            match change::decide(&pending.mapped.op, attributes, known.get(&key), self.policy) {
                Decision::Unchanged { store } => out.push(Filtered::Unchanged {
                    pending,
                    store: store.map(|fp| (key, fp)),
                }),
                Decision::Send { op, fingerprint } => {
                    if let Some(op) = op {
                        pending.mapped = Mapped {
                            encoded: op.encode_v2(),
                            op,
                        };
                    }
                    out.push(Filtered::Send {
                        pending,
                        note: Some((key, fingerprint)),
                    });
                }
            }
        }
        Ok(out)
    }
}
