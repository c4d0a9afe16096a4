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
use crate::change::{self, ChangePolicy, Decision, Fingerprint, Known};
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
        /// The row's identity key.
        key: String,
        store: Option<(String, Fingerprint)>,
    },
}

pub(crate) struct ChangeFilter {
    job: String,
    policy: ChangePolicy,
    /// Whether stored fingerprints are consulted (not for `send: all`, dead-letter retries,
    /// or a job nothing was acknowledged of yet).
    lookup: bool,
    chunk: usize,
    buffer: Vec<Pending>,
    /// The chunk being decided on another task (its lookup waits for the database while the
    /// run loop reads and maps the next chunk).
    deciding: Option<tokio::task::JoinHandle<Result<Decided, StateError>>>,
    /// Hashes of the identities this run read (kept only for mirror mode).
    seen: Option<HashSet<u64>>,
}

/// One chunk decided, in read order, and the hashes of the identities it held (mirror mode).
struct Decided {
    rows: Vec<Filtered>,
    seen: Vec<u64>,
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
            deciding: None,
            seen: mirror.then(HashSet::new),
        })
    }

    pub(crate) fn push(&mut self, p: Pending) {
        self.buffer.push(p);
    }

    /// A chunk is full: hand it on.
    pub(crate) fn due(&self) -> bool {
        self.buffer.len() >= self.chunk
    }

    /// No row waits in the filter, buffered or being decided.
    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty() && self.deciding.is_none()
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

    /// Hands the buffered chunk to a task that decides it, and returns the chunk decided
    /// before it (awaited if still running): one chunk is decided while the next is read.
    pub(crate) async fn advance(
        &mut self,
        state: &StateStore,
    ) -> Result<Vec<Filtered>, StateError> {
        let done = self.finish_deciding().await?;
        let rows = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.chunk));
        if !rows.is_empty() {
            let (job, policy, lookup, state) =
                (self.job.clone(), self.policy, self.lookup, state.clone());
            let mirror = self.seen.is_some();
            self.deciding = Some(tokio::spawn(async move {
                decide_chunk(&job, policy, lookup, mirror, rows, &state).await
            }));
        }
        Ok(done)
    }

    /// Decides every row waiting in the filter, in read order.
    pub(crate) async fn flush(&mut self, state: &StateStore) -> Result<Vec<Filtered>, StateError> {
        let mut out = self.finish_deciding().await?;
        let rows = std::mem::take(&mut self.buffer);
        if !rows.is_empty() {
            let mirror = self.seen.is_some();
            let decided =
                decide_chunk(&self.job, self.policy, self.lookup, mirror, rows, state).await?;
            self.note_seen(&decided.seen);
            out.extend(decided.rows);
        }
        Ok(out)
    }

    async fn finish_deciding(&mut self) -> Result<Vec<Filtered>, StateError> {
        let Some(task) = self.deciding.take() else {
            return Ok(Vec::new());
        };
        let decided = task.await.map_err(|e| StateError::Query {
            what: "deciding which rows changed",
            table: "fingerprints",
            message: e.to_string(),
        })??;
        self.note_seen(&decided.seen);
        Ok(decided.rows)
    }

    fn note_seen(&mut self, hashes: &[u64]) {
        if let Some(seen) = &mut self.seen {
            seen.extend(hashes.iter().copied());
        }
    }
}

/// Decides one chunk: each row's identity and fingerprint now, one lookup for the chunk
/// (the database answers only for rows whose stored fingerprint differs), then `decide`.
async fn decide_chunk(
    job: &str,
    policy: ChangePolicy,
    lookup: bool,
    mirror: bool,
    rows: Vec<Pending>,
    state: &StateStore,
) -> Result<Decided, StateError> {
    let now: Vec<Option<(String, Fingerprint)>> = rows
        .iter()
        .map(|p| {
            change::tracked(&p.mapped.op).map(|(k, a)| {
                let fp = Fingerprint::of(a.unwrap_or(&serde_json::Map::new()));
                (k, fp)
            })
        })
        .collect();
    let seen = if mirror {
        now.iter()
            .flatten()
            .map(|(k, _)| change::key_hash(k))
            .collect()
    } else {
        Vec::new()
    };
    let answer = if lookup {
        let pairs: Vec<(&str, u64)> = now
            .iter()
            .flatten()
            .map(|(k, fp)| (k.as_str(), fp.whole))
            .collect();
        Some(state.changed_fingerprints(job, &pairs).await?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(rows.len());
    for (mut pending, now) in rows.into_iter().zip(now) {
        let Some((key, fingerprint)) = now else {
            out.push(Filtered::Send {
                pending,
                note: None,
            });
            continue;
        };
        let known = match answer.as_ref().map(|a| a.get(&key)) {
            None | Some(Some(None)) => Known::New,
            Some(None) => Known::Same,
            Some(Some(Some(stored))) => Known::Differs(stored),
        };
        let attributes = change::tracked_attributes(&pending.mapped.op);
        match change::decide(&pending.mapped.op, attributes, fingerprint, known, policy) {
            Decision::Unchanged { store } => out.push(Filtered::Unchanged {
                pending,
                store: store.map(|fp| (key.clone(), fp)),
                key,
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
    Ok(Decided { rows: out, seen })
}
