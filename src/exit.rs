//! The documented exit codes: one place, used by the single exit point in `cli.rs`.
//!
//! Owns: the meaning of each code. Must not: print or decide anything.

/// Every job finished and every row was delivered (or there was nothing to do).
pub(crate) const OK: u8 = 0;
/// Every job finished, but some rows were dead-lettered (`cio-sync dead-letters JOB`).
pub(crate) const REJECTED_ROWS: u8 = 1;
/// Usage or configuration error: nothing ran (`cio-sync validate` lists every problem).
pub(crate) const CONFIG: u8 = 2;
/// A job failed: delivery gave up, the credentials were refused, a source or the state
/// database failed. Checkpoints hold what was settled; the next run resumes there.
pub(crate) const FAILED: u8 = 3;
/// Another replica holds a job's lease; the job was not run.
pub(crate) const BUSY: u8 = 4;
/// A mirror phase refused to remove what vanished from the source (more than
/// `guard.max_missing_share` of the known identities, or fewer than `guard.min_rows` rows):
/// the rows read were sent, nothing was removed; `run --force` overrides.
pub(crate) const GUARDED: u8 = 5;
/// Stopped by SIGINT or SIGTERM; checkpoints were written.
pub(crate) const INTERRUPTED: u8 = 130;

/// How much a code needs the operator, most first: a stop by signal, a failure, a guarded
/// mirror, a job another replica held, dead-lettered rows, success. Not the codes' numeric
/// order (a guarded mirror, 5, must not hide a failed job, 3).
const SEVERITY: [u8; 6] = [INTERRUPTED, FAILED, GUARDED, BUSY, REJECTED_ROWS, OK];

/// The code of several jobs' results together: the most severe. A code outside the list
/// (none today) counts as a failure.
pub(crate) fn most_severe(a: u8, b: u8) -> u8 {
    let rank = |c: u8| SEVERITY.iter().position(|s| *s == c).unwrap_or(1);
    if rank(b) < rank(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_is_not_hidden_by_a_guarded_or_busy_one() {
        let all = |codes: &[u8]| codes.iter().copied().fold(OK, most_severe);
        assert_eq!(all(&[GUARDED, FAILED, OK]), FAILED);
        assert_eq!(all(&[BUSY, REJECTED_ROWS]), BUSY);
        assert_eq!(all(&[REJECTED_ROWS, GUARDED]), GUARDED);
        assert_eq!(all(&[FAILED, INTERRUPTED]), INTERRUPTED);
        assert_eq!(all(&[OK, OK]), OK);
    }
}
