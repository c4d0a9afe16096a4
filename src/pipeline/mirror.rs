//! Mirror mode: after a complete full read, remove from Customer.io what the source no
//! longer has.
//!
//! Owns: the vanished set (the job's known identities, from the fingerprints table, minus
//! those the read saw), the guard (`guard.max_missing_share` of the known identities,
//! `guard.min_rows`, and rows whose identity could not be read; `run --force` overrides), the
//! removal each vanished identity becomes (`on_missing: delete | suppress | unset: […]` for
//! people and objects, `remove_from_segment` for a mirrored segment, `delete_relationships`
//! for a mirrored relationship job), sending those removals in batches, and forgetting the
//! identities Customer.io acknowledged removing (so a later run does not remove them again).
//! Must not: run unless the run loop read the source completely from its start (it decides
//! that), or touch the job's checkpoint.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Batcher, Pending};
use crate::change::{self, KeyParts};
use crate::config::{MappingSpec, MirrorSpec, OnMissing};
use crate::http::RunCounters;
use crate::mapping::{Action, Mapped, Operation, Subject};
use crate::state::{StateError, StateStore};
use crate::track::{BatchOutcome, TrackClient, Wire};

/// Known identities read per page.
const PAGE: i64 = 10_000;

/// What the mirror phase needs from its run.
pub(crate) struct MirrorInput<'a> {
    pub(crate) job: &'a str,
    pub(crate) mapping: &'a MappingSpec,
    pub(crate) spec: &'a MirrorSpec,
    /// Hashes of the identity keys the read saw.
    pub(crate) seen: &'a HashSet<u64>,
    pub(crate) rows_read: u64,
    /// Rows the read could not tell the identity of: they might be any known person.
    pub(crate) rows_without_identity: u64,
    pub(crate) force: bool,
    pub(crate) wire: Wire,
    pub(crate) max_items: usize,
    pub(crate) max_bytes: usize,
}

/// What the phase did, for the run's summary.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub(crate) struct MirrorSummary {
    /// Identities the job knew before the phase.
    pub(crate) known: u64,
    pub(crate) vanished: u64,
    /// Removals Customer.io acknowledged.
    pub(crate) removed: u64,
    /// Removals Customer.io refused (the identities stay known and are tried next run).
    pub(crate) refused: u64,
    /// Set when a removal could not be sent; the run fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

pub(crate) enum MirrorOutcome {
    /// The guard refused: nothing was removed; the message says why and what to do.
    Guarded(String),
    Done(MirrorSummary),
}

/// Why the guard refuses, if it does.
pub(crate) fn guard(
    spec: &MirrorSpec,
    job: &str,
    known: u64,
    vanished: u64,
    rows_read: u64,
    rows_without_identity: u64,
) -> Option<String> {
    if rows_read < spec.min_rows {
        return Some(format!(
            "job `{job}`: mirror mode removed nothing: the read returned {rows_read} rows, fewer than `guard.min_rows` ({}); check the source, or run `cio-sync run {job} --force` to remove the {vanished} vanished identities anyway",
            spec.min_rows
        ));
    }
    if rows_without_identity > 0 {
        return Some(format!(
            "job `{job}`: mirror mode removed nothing: {rows_without_identity} rows had no readable identifier, so it cannot tell who vanished; fix those rows (`cio-sync dead-letters {job}`), or run `cio-sync run {job} --force`"
        ));
    }
    if known > 0 {
        let share = vanished as f64 / known as f64;
        if share > spec.max_missing_share {
            return Some(format!(
                "job `{job}`: mirror mode removed nothing: {vanished} of {known} known identities ({:.1}%) vanished from the read, more than `guard.max_missing_share` ({:.1}%); check the export is complete, or run `cio-sync run {job} --force` to remove them",
                share * 100.0,
                spec.max_missing_share * 100.0
            ));
        }
    }
    None
}

/// The removal a vanished identity becomes; `None` for a key that does not fit the job.
pub(crate) fn removal(
    key: &str,
    mapping: &MappingSpec,
    on_missing: &OnMissing,
) -> Option<Operation> {
    let parts = change::parse_key(key)?;
    let unset = |attrs: &[String]| -> Map<String, Value> {
        attrs
            .iter()
            .map(|a| (a.clone(), Value::String(String::new())))
            .collect()
    };
    let (subject, action) = match (parts, on_missing, mapping) {
        (KeyParts::Relationship { object, person }, OnMissing::Remove, _) => (
            object,
            Action::Relationship {
                add: false,
                person,
                attributes: Map::new(),
            },
        ),
        (
            KeyParts::Subject(s @ Subject::Person { .. }),
            OnMissing::Remove,
            MappingSpec::Segment { segment_id, .. },
        ) => (
            s,
            Action::SegmentRemove {
                segment_id: *segment_id,
            },
        ),
        (KeyParts::Subject(s @ Subject::Person { .. }), OnMissing::Delete, _) => {
            (s, Action::Delete)
        }
        (KeyParts::Subject(s @ Subject::Person { .. }), OnMissing::Suppress, _) => {
            (s, Action::Suppress)
        }
        (KeyParts::Subject(s @ Subject::Person { .. }), OnMissing::Unset(attrs), _) => (
            s,
            Action::Identify {
                attributes: unset(attrs),
                timestamp: None,
                // Never re-create a person Customer.io no longer has.
                update_only: true,
            },
        ),
        (KeyParts::Subject(s @ Subject::Object { .. }), OnMissing::Delete, _) => {
            (s, Action::ObjectDelete)
        }
        (KeyParts::Subject(s @ Subject::Object { .. }), OnMissing::Unset(attrs), _) => (
            s,
            Action::ObjectIdentify {
                attributes: unset(attrs),
            },
        ),
        _ => return None,
    };
    Some(Operation { subject, action })
}

/// Runs the mirror phase of a run that read its source completely.
pub(crate) async fn run(
    state: &StateStore,
    track: &TrackClient,
    counters: &Arc<RunCounters>,
    cancel: &CancellationToken,
    input: MirrorInput<'_>,
) -> Result<MirrorOutcome, StateError> {
    let job = input.job;
    let mut known = 0u64;
    let mut vanished: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.known_identities(job, after.as_deref(), PAGE).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        known += page.len() as u64;
        vanished.extend(
            page.into_iter()
                .filter(|k| !input.seen.contains(&change::key_hash(k))),
        );
        after = Some(last);
    }
    let mut summary = MirrorSummary {
        known,
        vanished: vanished.len() as u64,
        ..Default::default()
    };
    if let Some(reason) = guard(
        input.spec,
        job,
        known,
        summary.vanished,
        input.rows_read,
        input.rows_without_identity,
    ) {
        if !input.force {
            tracing::error!(vanished = summary.vanished, known, error = %reason, "Mirror mode guarded.");
            return Ok(MirrorOutcome::Guarded(reason));
        }
        tracing::warn!(vanished = summary.vanished, known, reason = %reason, "Mirror guard overridden by --force.");
    }
    if vanished.is_empty() {
        return Ok(MirrorOutcome::Done(summary));
    }
    tracing::info!(
        vanished = summary.vanished,
        known,
        "Mirror mode: removing what vanished from the source."
    );
    let mut batcher = Batcher::new(input.max_items, input.max_bytes);
    let mut unknown: Vec<String> = Vec::new();
    let mut seq = 0u64;
    for key in vanished {
        let Some(op) = removal(&key, input.mapping, &input.spec.on_missing) else {
            unknown.push(key);
            continue;
        };
        let pending = Pending {
            seq,
            line: 0,
            row_ref: key,
            values: Vec::new(),
            mapped: Mapped {
                encoded: op.encode_v2(),
                op,
            },
        };
        seq += 1;
        if let Some(b) = batcher.push(pending)
            && !send(
                state,
                track,
                counters,
                cancel,
                job,
                input.wire,
                b,
                &mut summary,
            )
            .await?
        {
            return Ok(MirrorOutcome::Done(summary));
        }
    }
    if let Some(b) = batcher.take() {
        send(
            state,
            track,
            counters,
            cancel,
            job,
            input.wire,
            b,
            &mut summary,
        )
        .await?;
    }
    // Keys this version cannot turn into a removal (written by another job kind): forgotten,
    // so they are not counted as vanished again.
    state.remove_fingerprints(job, &unknown).await?;
    Ok(MirrorOutcome::Done(summary))
}

/// Sends one batch of removals; false when the phase must stop.
#[allow(clippy::too_many_arguments)]
async fn send(
    state: &StateStore,
    track: &TrackClient,
    counters: &Arc<RunCounters>,
    cancel: &CancellationToken,
    job: &str,
    wire: Wire,
    batch: Batch,
    summary: &mut MirrorSummary,
) -> Result<bool, StateError> {
    match track.send(&batch, wire, counters, cancel).await {
        BatchOutcome::Settled { rejected } => {
            let refused: HashSet<usize> = rejected.iter().map(|(i, _)| *i).collect();
            if let Some((_, reason)) = rejected.first() {
                tracing::warn!(refused = rejected.len(), reason = %reason, "Customer.io refused mirror removals; those identities stay known and are tried again next run.");
            }
            let removed: Vec<String> = batch
                .items
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !refused.contains(i))
                .map(|(_, p)| p.row_ref)
                .collect();
            summary.removed += removed.len() as u64;
            summary.refused += refused.len() as u64;
            state.remove_fingerprints(job, &removed).await?;
            Ok(true)
        }
        BatchOutcome::Rejected { reason } => {
            tracing::warn!(rows = batch.items.len(), reason = %reason, "Customer.io refused a batch of mirror removals; those identities stay known and are tried again next run.");
            summary.refused += batch.items.len() as u64;
            Ok(true)
        }
        BatchOutcome::Failed(e) => {
            summary.error = Some(format!(
                "job `{job}`: mirror mode could not send its removals: {e}; what was removed is forgotten, the rest is tried again next run"
            ));
            Ok(false)
        }
        BatchOutcome::Unsendable(e) => {
            summary.error = Some(format!(
                "job `{job}`: mirror mode could not build its removals: {e}; nothing more was removed"
            ));
            Ok(false)
        }
        BatchOutcome::Fatal(e) => {
            summary.error = Some(format!("job `{job}`: mirror mode stopped: {e}"));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IdentifierKind, IdentifierSpec, SegmentAction};

    fn spec(on_missing: OnMissing) -> MirrorSpec {
        MirrorSpec {
            on_missing,
            max_missing_share: 0.10,
            min_rows: 5,
        }
    }

    #[test]
    fn the_guard_refuses_a_cut_export_too_few_rows_and_unreadable_rows() {
        let s = spec(OnMissing::Delete);
        assert_eq!(guard(&s, "people", 100, 10, 90, 0), None);
        let cut = guard(&s, "people", 100, 50, 50, 0).unwrap();
        assert!(cut.contains("50 of 100 known identities (50.0%)"), "{cut}");
        assert!(cut.contains("--force"), "{cut}");
        assert!(
            guard(&s, "people", 100, 0, 4, 0)
                .unwrap()
                .contains("min_rows")
        );
        assert!(
            guard(&s, "people", 100, 0, 100, 1)
                .unwrap()
                .contains("no readable identifier")
        );
    }

    #[test]
    fn vanished_keys_become_the_removal_the_job_asks_for() {
        let identify = MappingSpec::Delete {
            identifier: IdentifierSpec {
                kind: IdentifierKind::Id,
                column: "id".into(),
            },
            action: crate::config::DeleteAction::Delete,
        };
        let person = Subject::Person {
            kind: IdentifierKind::Id,
            value: "7".into(),
        };
        assert_eq!(
            removal("id:7", &identify, &OnMissing::Suppress).map(|o| o.action),
            Some(Action::Suppress)
        );
        let unset = removal("id:7", &identify, &OnMissing::Unset(vec!["plan".into()])).unwrap();
        assert_eq!(unset.subject, person);
        assert_eq!(unset.action_name(), "identify");
        let segment = MappingSpec::Segment {
            segment_id: 9,
            identifier: IdentifierSpec {
                kind: IdentifierKind::Id,
                column: "id".into(),
            },
            action: SegmentAction::Add,
        };
        assert_eq!(
            removal("id:7", &segment, &OnMissing::Remove).map(|o| o.action),
            Some(Action::SegmentRemove { segment_id: 9 })
        );
        let rel = removal("rel:1:acme:id:7", &identify, &OnMissing::Remove).unwrap();
        assert_eq!(rel.action_name(), "delete_relationships");
        assert_eq!(
            removal("object:1:acme", &identify, &OnMissing::Suppress),
            None
        );
    }
}
