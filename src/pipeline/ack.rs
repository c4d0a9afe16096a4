//! Acknowledgement: which rows are settled, and how far the checkpoint may move.
//!
//! Owns: the settled-prefix rule. Rows are numbered in read order; a row is settled once
//! Customer.io acknowledged its batch or it was dead-lettered. The checkpoint may advance only
//! to the end of the longest prefix of settled rows, whatever order batches finish in.
//! It also counts the rows a crash would make the next run send again: unsettled ones, and
//! ones Customer.io acknowledged behind an unsettled one; rows settled without sending
//! (unchanged rows the change filter skipped, dead letters) wait there at no such cost.
//! Must not: do I/O or know what a row contains; it keeps one small entry per row from the
//! first unsettled one on.

use std::collections::VecDeque;

use crate::source::ResumePoint;

/// Rows past the checkpoint at most (about 8 MiB of entries for CSV sources). A
/// million-row re-export with 1% changed then sends a batch every quarter million rows.
pub const MAX_PENDING: usize = 262_144;

#[derive(Debug, Default)]
pub struct Tracker {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// Where to resume after the settled prefix (None until the first row settles).
    settled_point: Option<ResumePoint>,
    advanced: bool,
    /// Entries not yet settled.
    unsettled: usize,
    /// Entries settled by an acknowledgement, waiting behind an unsettled one.
    sent_ahead: usize,
}

#[derive(Debug)]
struct Entry {
    resume: Slot,
    settled: bool,
    /// Settled by Customer.io's acknowledgement: a crash before the checkpoint passes it
    /// sends it again.
    sent: bool,
}

/// A resume point as the tracker keeps it: a CSV position inline (32 bytes an entry), a SQL
/// cursor (JSON values, far larger) boxed. A 1%-changed re-export holds a few hundred
/// thousand settled rows behind one unsettled batch; their size is the run's memory.
#[derive(Debug)]
enum Slot {
    Csv { byte: u64, line: u64, row: u64 },
    Other(Box<ResumePoint>),
}

impl Slot {
    fn new(resume: ResumePoint) -> Self {
        match resume {
            ResumePoint::Csv { byte, line, row } => Slot::Csv { byte, line, row },
            other => Slot::Other(Box::new(other)),
        }
    }

    fn into_resume(self) -> ResumePoint {
        match self {
            Slot::Csv { byte, line, row } => ResumePoint::Csv { byte, line, row },
            Slot::Other(r) => *r,
        }
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a row just read; returns its sequence number.
    pub fn read(&mut self, resume: ResumePoint) -> u64 {
        self.entries.push_back(Entry {
            resume: Slot::new(resume),
            settled: false,
            sent: false,
        });
        self.unsettled += 1;
        self.base + self.entries.len() as u64 - 1
    }

    /// Marks a row settled without sending it (dead-lettered, or unchanged). Unknown or
    /// repeated sequence numbers are ignored.
    pub fn settle(&mut self, seq: u64) {
        self.mark(seq, false);
    }

    /// Marks a row settled by Customer.io's acknowledgement.
    pub fn settle_sent(&mut self, seq: u64) {
        self.mark(seq, true);
    }

    fn mark(&mut self, seq: u64, sent: bool) {
        if seq < self.base {
            return;
        }
        if let Some(e) = self.entries.get_mut((seq - self.base) as usize)
            && !e.settled
        {
            e.settled = true;
            e.sent = sent;
            self.unsettled -= 1;
            if sent {
                self.sent_ahead += 1;
            }
        }
        while self.entries.front().is_some_and(|e| e.settled) {
            if let Some(e) = self.entries.pop_front() {
                if e.sent {
                    self.sent_ahead -= 1;
                }
                self.settled_point = Some(e.resume.into_resume());
                self.base += 1;
                self.advanced = true;
            }
        }
    }

    /// The new resume point, if the settled prefix grew since the last call.
    pub fn take_advance(&mut self) -> Option<ResumePoint> {
        if std::mem::take(&mut self.advanced) {
            self.settled_point.clone()
        } else {
            None
        }
    }

    pub fn settled_point(&self) -> Option<&ResumePoint> {
        self.settled_point.as_ref()
    }

    /// Rows read but not yet part of the settled prefix.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Whether the rows past the checkpoint reached their bound: `window` rows a crash would
    /// send again (unsettled, or acknowledged behind an unsettled one), or many more settled
    /// without sending (unchanged, dead-lettered) waiting behind them, up to [`MAX_PENDING`]
    /// (this tracker's memory).
    pub fn full(&self, window: usize) -> bool {
        self.at_risk() >= window || self.entries.len() >= window.saturating_mul(64).min(MAX_PENDING)
    }

    /// Rows a crash now would make the next run send again.
    pub fn at_risk(&self) -> usize {
        self.unsettled + self.sent_ahead
    }

    /// Rows read and not settled.
    pub fn unsettled(&self) -> usize {
        self.unsettled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(row: u64) -> ResumePoint {
        ResumePoint::Csv {
            byte: row * 10,
            line: row + 1,
            row,
        }
    }

    #[test]
    fn the_checkpoint_moves_only_over_a_settled_prefix() {
        let mut t = Tracker::new();
        let seqs: Vec<u64> = (1..=6).map(|r| t.read(p(r))).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
        // A later batch finishes first: nothing moves.
        t.settle(3);
        t.settle(4);
        assert_eq!(t.take_advance(), None);
        t.settle(0);
        assert_eq!(t.take_advance(), Some(p(1)));
        assert_eq!(t.take_advance(), None);
        t.settle(2);
        assert_eq!(t.take_advance(), None);
        t.settle(1);
        assert_eq!(t.take_advance(), Some(p(5)));
        assert_eq!(t.pending(), 1);
        assert_eq!(t.unsettled(), 1);
        t.settle(1);
        t.settle(99);
        assert_eq!(t.take_advance(), None);
        t.settle(5);
        assert_eq!(t.take_advance(), Some(p(6)));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn rows_acknowledged_behind_an_unsettled_one_are_at_risk_and_unsent_ones_are_not() {
        let mut t = Tracker::new();
        for r in 1..=4 {
            t.read(p(r));
        }
        // Row 0 is still in flight; 1 was acknowledged, 2 found unchanged.
        t.settle_sent(1);
        t.settle(2);
        assert_eq!((t.unsettled(), t.at_risk()), (2, 3));
        assert!(t.full(3) && !t.full(4));
        t.settle_sent(0);
        assert_eq!(t.take_advance(), Some(p(3)));
        assert_eq!(t.at_risk(), 1, "only row 3 is past the checkpoint");
    }
}
