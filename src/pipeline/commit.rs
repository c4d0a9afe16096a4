//! The commit policy: when a run writes its progress (checkpoint, counters, dead letters) to
//! the state database.
//!
//! Owns: the rule, as one named value. Must not: write anything; the run loop commits when
//! the policy says so.

use std::time::Duration;

/// What just happened, as far as committing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitPoint {
    /// A batch got its answer (or gave up): its rows may have moved the checkpoint.
    BatchAnswered,
    /// A row was read (and maybe dead-lettered before sending).
    RowRead,
    /// The run is over: write whatever is left, counters included.
    RunEnd,
}

/// When progress is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitPolicy {
    /// Commit after every answered batch, so a crash re-sends at most the batches in flight.
    pub(crate) every_answered_batch: bool,
    /// Rows rejected before sending are committed at least this often.
    pub(crate) interval: Duration,
    /// … or as soon as this many dead letters wait, which bounds the memory they take.
    pub(crate) max_waiting_dead_letters: usize,
}

impl CommitPolicy {
    pub(crate) const DEFAULT: CommitPolicy = CommitPolicy {
        every_answered_batch: true,
        interval: Duration::from_millis(250),
        max_waiting_dead_letters: 1000,
    };

    /// Whether to commit now, `since_last` after the last commit with `waiting_dead_letters`
    /// not yet written.
    pub(crate) fn due(
        &self,
        point: CommitPoint,
        since_last: Duration,
        waiting_dead_letters: usize,
    ) -> bool {
        match point {
            CommitPoint::RunEnd => true,
            CommitPoint::BatchAnswered if self.every_answered_batch => true,
            _ => {
                since_last >= self.interval || waiting_dead_letters >= self.max_waiting_dead_letters
            }
        }
    }

    /// Whether a commit at `point` is written even with nothing new to record (it refreshes
    /// the run's counters).
    pub(crate) fn writes_counts(point: CommitPoint) -> bool {
        point != CommitPoint::RowRead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_batches_commit_at_once_and_reads_by_time_or_dead_letters() {
        let p = CommitPolicy::DEFAULT;
        let short = Duration::from_millis(10);
        assert!(p.due(CommitPoint::BatchAnswered, short, 0));
        assert!(p.due(CommitPoint::RunEnd, short, 0));
        assert!(!p.due(CommitPoint::RowRead, short, 999));
        assert!(p.due(CommitPoint::RowRead, short, 1000));
        assert!(p.due(CommitPoint::RowRead, Duration::from_millis(250), 0));
    }
}
