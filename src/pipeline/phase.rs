//! The phases of one push run, and how stop requests and failures move between them.
//!
//! Owns: the answer to "may the run read, may it send, what does it wait for" at each point.
//! Must not: do I/O, hold rows or requests; the run loop acts on what the phase says.

use tokio::time::Instant;

/// Where a run is between its first read and its last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the source; batches are sent as they close.
    Reading,
    /// The input ended: the open batch is sent, then the requests in flight are awaited.
    Draining,
    /// Stopped early (a failure, or a stop signal): nothing more is read or sent, and the
    /// requests in flight may finish. A stop signal sets `deadline` (its grace period); a
    /// failure alone waits for them without one.
    Grace { deadline: Option<Instant> },
    /// Requests in flight were abandoned (a second signal, the grace period over, or an answer
    /// that ends the run); only their tasks ending is awaited. Their rows are sent next run.
    Forced,
}

impl Phase {
    /// Whether the run may read more rows.
    pub(crate) fn reads(self) -> bool {
        self == Phase::Reading
    }

    /// Whether closed (or, draining, open) batches may still be sent.
    pub(crate) fn sends(self) -> bool {
        matches!(self, Phase::Reading | Phase::Draining)
    }

    /// Whether the run ended before its input did (the outcome is at best "interrupted").
    pub(crate) fn stopped_early(self) -> bool {
        matches!(self, Phase::Grace { .. } | Phase::Forced)
    }

    /// Whether a stop signal would still change anything: it starts the grace period, also
    /// after a failure has stopped reading, or retrying requests could outlive systemd's stop
    /// timeout.
    pub(crate) fn awaits_stop(self) -> bool {
        matches!(
            self,
            Phase::Reading | Phase::Draining | Phase::Grace { deadline: None }
        )
    }

    /// Whether a second signal would still abandon anything.
    pub(crate) fn awaits_force(self) -> bool {
        self != Phase::Forced
    }

    /// When the grace period runs out, if one is running.
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Grace { deadline } => deadline,
            _ => None,
        }
    }

    /// The source has no more rows.
    pub(crate) fn input_ended(self) -> Phase {
        match self {
            Phase::Reading => Phase::Draining,
            other => other,
        }
    }

    /// A failure (a batch without a final answer, the source failing): stop reading and
    /// sending, keep waiting for what is in flight, keep a grace period already running.
    pub(crate) fn failed(self) -> Phase {
        match self {
            Phase::Reading | Phase::Draining => Phase::Grace { deadline: None },
            other => other,
        }
    }

    /// A stop signal: the grace period runs until `deadline`.
    pub(crate) fn stop_requested(self, deadline: Instant) -> Phase {
        match self {
            Phase::Forced => Phase::Forced,
            _ => Phase::Grace {
                deadline: Some(deadline),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_stops_reading_and_sending_but_keeps_a_running_grace_period() {
        let now = Instant::now();
        let failed = Phase::Reading.failed();
        assert_eq!(failed, Phase::Grace { deadline: None });
        assert!(!failed.reads() && !failed.sends() && failed.stopped_early());
        // A stop signal after a failure still starts the grace period.
        assert!(failed.awaits_stop());
        let grace = failed.stop_requested(now);
        assert_eq!(grace.deadline(), Some(now));
        assert!(!grace.awaits_stop() && grace.awaits_force());
        assert_eq!(grace.failed(), grace);
        assert_eq!(Phase::Forced.stop_requested(now), Phase::Forced);
        assert!(!Phase::Forced.awaits_force() && Phase::Forced.stopped_early());
    }

    #[test]
    fn the_end_of_input_drains_only_a_reading_run() {
        assert_eq!(Phase::Reading.input_ended(), Phase::Draining);
        let d = Phase::Draining;
        assert!(d.sends() && !d.reads() && !d.stopped_early() && d.awaits_stop());
        let g = Phase::Grace { deadline: None };
        assert_eq!(g.input_ended(), g);
        assert_eq!(Phase::Draining.failed(), g);
    }
}
