//! Lanes: which closed batch may be sent now.
//!
//! Owns: cutting mapped rows into batches per lane, the queue of closed batches of each lane,
//! and how many batches each lane may have in flight. A normal run is one lane with
//! `concurrency` requests in flight (order between batches does not matter there); a backfill
//! is K lanes by hash of the person, each with one batch in flight, so a person's events
//! arrive in the order they were read while the lanes together keep the rate limiter busy.
//! Must not: send anything, or decide how far the checkpoint moves (`ack.rs` does, over the
//! rows of every lane together).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use crate::batch::{Batch, Batcher, Pending};
use crate::mapping::Subject;

struct Lane {
    batcher: Batcher,
    queued: VecDeque<Batch>,
    in_flight: usize,
}

pub(super) struct Lanes {
    lanes: Vec<Lane>,
    /// Batches one lane may have in flight at once.
    per_lane: usize,
}

impl Lanes {
    /// One lane, `concurrency` batches in flight in any order (a normal run).
    pub(super) fn unordered(max_items: usize, max_bytes: usize, concurrency: usize) -> Self {
        Self::new(1, concurrency.max(1), max_items, max_bytes)
    }

    /// `k` lanes by person, one batch in flight each (a backfill).
    pub(super) fn by_person(k: usize, max_items: usize, max_bytes: usize) -> Self {
        Self::new(k.max(1), 1, max_items, max_bytes)
    }

    fn new(k: usize, per_lane: usize, max_items: usize, max_bytes: usize) -> Self {
        Self {
            lanes: (0..k)
                .map(|_| Lane {
                    batcher: Batcher::new(max_items, max_bytes),
                    queued: VecDeque::new(),
                    in_flight: 0,
                })
                .collect(),
            per_lane,
        }
    }

    /// How many lanes there are (each fills its own open batch).
    pub(super) fn count(&self) -> usize {
        self.lanes.len()
    }

    /// Requests the lanes may have in flight together.
    pub(super) fn capacity(&self) -> usize {
        self.lanes.len() * self.per_lane
    }

    fn lane_of(&self, p: &Pending) -> usize {
        if self.lanes.len() == 1 {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &p.mapped.op.subject {
            Subject::Person { value, .. } => value.hash(&mut h),
            Subject::Anonymous(id) => id.hash(&mut h),
            other => format!("{other:?}").hash(&mut h),
        }
        (h.finish() % self.lanes.len() as u64) as usize
    }

    /// Adds a mapped row to its lane; a batch that closes waits in the lane's queue.
    pub(super) fn push(&mut self, p: Pending) {
        let i = self.lane_of(&p);
        let lane = &mut self.lanes[i];
        if let Some(b) = lane.batcher.push(p) {
            lane.queued.push_back(b);
        }
    }

    /// A queued batch whose lane may send now, marked in flight.
    pub(super) fn next_ready(&mut self) -> Option<(usize, Batch)> {
        let per_lane = self.per_lane;
        let (i, lane) = self
            .lanes
            .iter_mut()
            .enumerate()
            .find(|(_, l)| l.in_flight < per_lane && !l.queued.is_empty())?;
        let b = lane.queued.pop_front()?;
        lane.in_flight += 1;
        Some((i, b))
    }

    /// Closes the open batch of every lane that could send it at once (free, nothing
    /// queued). Returns whether any closed.
    pub(super) fn flush_idle(&mut self) -> bool {
        let mut any = false;
        for lane in &mut self.lanes {
            if lane.in_flight < self.per_lane
                && lane.queued.is_empty()
                && let Some(b) = lane.batcher.take()
            {
                lane.queued.push_back(b);
                any = true;
            }
        }
        any
    }

    /// A batch of `lane` was answered (or given up on).
    pub(super) fn done(&mut self, lane: usize) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }

    /// Whether a graceful stop should still send the rows already read: with several lanes,
    /// one lane's unsent rows come before rows other lanes delivered, and would hold the
    /// checkpoint back over them (they would be sent again next run).
    pub(super) fn drains_on_stop(&self) -> bool {
        self.lanes.len() > 1
    }

    /// Whether any lane has a request slot free.
    pub(super) fn slot_free(&self) -> bool {
        self.lanes.iter().any(|l| l.in_flight < self.per_lane)
    }

    /// Rows mapped but not yet in a batch that was sent.
    #[cfg(test)]
    pub(super) fn has_unsent(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| !l.batcher.is_empty() || !l.queued.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentifierKind;
    use crate::mapping::{Action, Mapped, Operation};

    fn row(seq: u64, person: &str) -> Pending {
        Pending {
            seq,
            line: seq + 2,
            row_ref: format!("r{seq}"),
            values: Vec::new(),
            mapped: Mapped {
                op: Operation {
                    subject: Subject::Person {
                        kind: IdentifierKind::Id,
                        value: person.into(),
                    },
                    action: Action::Suppress,
                },
                encoded: vec![b'x'; 10],
            },
        }
    }

    #[test]
    fn a_lane_sends_its_next_batch_only_after_the_last_is_answered() {
        let mut lanes = Lanes::by_person(4, 2, 10_000);
        for seq in 0..6 {
            lanes.push(row(seq, "same-person"));
        }
        let (lane, first) = lanes.next_ready().expect("first batch");
        assert_eq!(
            first.items.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(lanes.next_ready().is_none(), "one batch per lane in flight");
        lanes.done(lane);
        let (_, second) = lanes.next_ready().expect("second batch");
        assert_eq!(
            second.items.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [2, 3]
        );
    }

    #[test]
    fn different_people_go_out_in_parallel_and_flush_closes_only_idle_lanes() {
        let mut lanes = Lanes::by_person(64, 1000, 10_000);
        for (seq, p) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
            lanes.push(row(seq as u64, p));
        }
        assert!(lanes.next_ready().is_none(), "no batch is full yet");
        assert!(lanes.flush_idle());
        let mut sent = 0;
        while lanes.next_ready().is_some() {
            sent += 1;
        }
        assert!(sent > 1, "several lanes in flight at once, got {sent}");
        assert!(!lanes.has_unsent());
    }

    #[test]
    fn an_unordered_run_keeps_concurrency_batches_in_flight_in_one_lane() {
        let mut lanes = Lanes::unordered(1, 10_000, 3);
        for seq in 0..5 {
            lanes.push(row(seq, "p"));
        }
        assert_eq!(lanes.capacity(), 3);
        let mut n = 0;
        while lanes.next_ready().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(!lanes.slot_free());
    }
}
