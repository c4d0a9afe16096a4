//! The wire plan: how a push job's operations are put on the wire.
//!
//! Owns: the one decision, from config.yaml's `track` section and the job's overrides and
//! mapping, of the transport (v2 batches, one v1 request per operation, or segment
//! `add_customers`/`remove_customers`), the batch limits (items, bytes) and the number of
//! requests in flight. A real run and `run --dry-run` both ask [`WirePlan::for_job`], so the
//! dry run's request count is the real run's. Must not: build or send requests.

use crate::config::{EventSubject, MappingSpec, PushJob, TrackSettings, Transport};

/// Ids per `add_customers` / `remove_customers` call at most: the endpoint takes a list, and
/// modest requests keep a refused one cheap to dead-letter.
pub const SEGMENT_MAX_IDS: usize = 1000;

/// How a batch is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    V2Batch,
    /// One request per operation.
    V1,
    /// `add_customers` / `remove_customers` with many ids.
    Segment,
}

/// Everything a run needs to know to cut and send batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WirePlan {
    pub wire: Wire,
    /// Operations per batch (1 for v1: each operation is its own request).
    pub max_items: usize,
    /// Bytes of the v2 body a batch makes, envelope included.
    pub max_bytes: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
}

impl WirePlan {
    /// The plan for one push job: the job's overrides win over config.yaml's `track` section.
    /// Manual segment membership has only its list endpoint; anonymous events have no v2
    /// form, so they go over v1 whatever the transport says.
    pub fn for_job(track: &TrackSettings, push: &PushJob) -> WirePlan {
        let transport = push.transport.unwrap_or(track.transport);
        let batch = push.batch.as_ref().unwrap_or(&track.batch);
        let concurrency = push.concurrency.unwrap_or(track.concurrency);
        let wire = match &push.mapping {
            MappingSpec::Segment { .. } => Wire::Segment,
            // Objects, relationships and devices exist only in v2 (validation refuses v1).
            m if m.needs_v2() => Wire::V2Batch,
            MappingSpec::Track {
                who: EventSubject::Anonymous { .. },
                ..
            } => Wire::V1,
            _ if transport == Transport::V1 => Wire::V1,
            _ => Wire::V2Batch,
        };
        let max_items = match wire {
            Wire::V2Batch => batch.max_items,
            Wire::V1 => 1,
            Wire::Segment => batch.max_items.min(SEGMENT_MAX_IDS),
        };
        WirePlan {
            wire,
            max_items,
            max_bytes: batch.max_bytes,
            concurrency,
        }
    }
}
