//! Backfill: a track job's events of one time window, sent in time order, resumably.
//!
//! Owns: the window (`[from, to)`, its checkpoint scope `backfill:<from>..<to>`), what a
//! backfill refuses before it starts (not a track job, no timestamp column, `--rate` above the
//! workspace's budget), the 72-hour rule, and the window filter between the source and the
//! run loop: rows before `from` are skipped, the first row at or after `to` ends the read, and
//! a row older than the one before it fails the run (the input is not in time order, so the
//! window could not be cut by reading once).
//! Must not: send, batch or commit anything: the run loop in `mod.rs` does, configured by
//! [`RunMode::Backfill`](super::RunMode::Backfill) (its own checkpoint scope, lanes by person).

use chrono::{DateTime, NaiveDate, Utc};

use crate::config::{JobKind, JobSpec, MappingSpec, PushJob, Settings};
use crate::mapping::convert::{TimeFormat, timestamp};
use crate::source::{SourceError, SourceStream};
use crate::state::Scope;

/// Within this much of now, backfilled events can still trigger campaigns.
pub const RECENT: chrono::Duration = chrono::Duration::hours(72);

/// Lanes a backfill sends on: enough requests in flight to keep a 100 req/s limiter busy
/// when one request takes up to 160 ms.
pub const LANES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "`{value}` is not a date for {flag}: use YYYY-MM-DD (midnight UTC) or RFC 3339 such as 2024-01-31T12:00:00Z"
    )]
    Date { flag: &'static str, value: String },
    #[error("the window is empty: --from {from} is not before --to {to}; give an earlier --from")]
    EmptyWindow { from: String, to: String },
    #[error("job `{job}` ({file}) is not a track (event) job; only events can be backfilled")]
    NotTrack { job: String, file: String },
    #[error(
        "job `{job}` ({file}) has no `track.timestamp` column, so its events have no time to cut a window by; add `timestamp: <column>` to the job"
    )]
    NoTimestamp { job: String, file: String },
    #[error(
        "--rate {rate} is above the workspace's budget of {budget} requests/s (`{key}` in {file}); use at most {budget}, or raise `{key}`"
    )]
    RateAboveBudget {
        rate: u32,
        budget: u32,
        key: String,
        file: String,
    },
    #[error("--rate must be at least 1 request/s")]
    RateZero,
}

/// The window of one backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillWindow {
    /// Inclusive.
    pub from: DateTime<Utc>,
    /// Exclusive.
    pub to: DateTime<Utc>,
    /// Lanes by person, each with one batch in flight.
    pub lanes: usize,
}

impl BackfillWindow {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Self, BackfillError> {
        if from >= to {
            return Err(BackfillError::EmptyWindow {
                from: rfc3339(from),
                to: rfc3339(to),
            });
        }
        Ok(Self {
            from,
            to,
            lanes: LANES,
        })
    }

    /// The checkpoint scope: one per window, so two windows resume independently.
    pub fn scope(&self) -> Scope {
        Scope::named(format!(
            "backfill:{}..{}",
            rfc3339(self.from),
            rfc3339(self.to)
        ))
    }

    /// Whether the window reaches into the last 72 hours before `now`.
    pub fn is_recent(&self, now: DateTime<Utc>) -> bool {
        self.to > now - RECENT
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `YYYY-MM-DD` (midnight UTC) or RFC 3339.
pub fn parse_date(flag: &'static str, value: &str) -> Result<DateTime<Utc>, BackfillError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| BackfillError::Date {
            flag,
            value: value.to_string(),
        })
}

/// The push job a backfill runs, or why the job cannot be backfilled.
pub fn backfillable(job: &JobSpec) -> Result<&PushJob, BackfillError> {
    let file = job.file.display().to_string();
    let push = match &job.kind {
        JobKind::Push(p) if matches!(p.mapping, MappingSpec::Track { .. }) => p,
        _ => {
            return Err(BackfillError::NotTrack {
                job: job.name.clone(),
                file,
            });
        }
    };
    match &push.mapping {
        MappingSpec::Track {
            timestamp: Some(_), ..
        } => Ok(push),
        _ => Err(BackfillError::NoTimestamp {
            job: job.name.clone(),
            file,
        }),
    }
}

/// Checks `--rate` against the job's workspace budget and returns the settings the backfill
/// runs with (the Track rate limit lowered to `rate`).
pub fn with_rate(settings: &Settings, job: &JobSpec, rate: u32) -> Result<Settings, BackfillError> {
    if rate == 0 {
        return Err(BackfillError::RateZero);
    }
    let file = settings.config_file.display().to_string();
    let mut out = settings.clone();
    match job.workspace.as_deref() {
        Some(name) if settings.workspaces.contains_key(name) => {
            let ws = out.workspaces.get_mut(name);
            if let Some(ws) = ws {
                if rate > ws.track_rate_limit_per_sec {
                    return Err(BackfillError::RateAboveBudget {
                        rate,
                        budget: ws.track_rate_limit_per_sec,
                        key: format!("workspaces.{name}.track_rate_limit_per_sec"),
                        file,
                    });
                }
                ws.track_rate_limit_per_sec = rate;
            }
        }
        _ => {
            if rate > settings.track.rate_limit_per_sec {
                return Err(BackfillError::RateAboveBudget {
                    rate,
                    budget: settings.track.rate_limit_per_sec,
                    key: "track.rate_limit_per_sec".into(),
                    file,
                });
            }
            out.track.rate_limit_per_sec = rate;
        }
    }
    Ok(out)
}

/// Where in a row the event's time is, and how to read it.
struct TimeColumn {
    index: usize,
    name: String,
    format: TimeFormat,
}

/// Puts the window filter between `stream` and the run loop. Rows the filter cannot place
/// (unreadable, or no readable time) go through: the mapper dead-letters them with the reason.
pub(super) fn windowed(
    mut stream: SourceStream,
    push: &PushJob,
    window: &BackfillWindow,
) -> SourceStream {
    let col = match &push.mapping {
        MappingSpec::Track {
            timestamp: Some(t), ..
        } => stream
            .columns
            .iter()
            .position(|c| c == &t.column)
            .map(|index| TimeColumn {
                index,
                name: t.column.clone(),
                format: TimeFormat::new(t.format.clone(), t.timezone),
            }),
        _ => None,
    };
    let Some(col) = col else {
        // The mapper reports the missing column for the whole run.
        return stream;
    };
    let (mut tx, rx) = crate::source::row_channel();
    let mut inner = std::mem::replace(&mut stream.rows, rx);
    let describe = stream.describe.clone();
    let (from, to) = (window.from.timestamp(), window.to.timestamp());
    tokio::spawn(async move {
        // The latest time read so far, and its line.
        let mut latest: Option<(i64, u64)> = None;
        loop {
            // Rows go on in the source's chunks: what is queued goes before waiting for more.
            let item = match inner.try_recv() {
                Some(item) => item,
                None => {
                    if tx.flush().await.is_err() {
                        return;
                    }
                    match inner.recv().await {
                        Some(item) => item,
                        None => return,
                    }
                }
            };
            let row = match item {
                Ok(row) => row,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let at = row
                .values
                .as_ref()
                .ok()
                .and_then(|v| v.get(col.index))
                .and_then(|v| timestamp(v, &col.format).ok());
            if let Some(at) = at {
                if let Some((prev, prev_line)) = latest
                    && at < prev
                {
                    let message = format!(
                        "`{}` is {at}, earlier than line {prev_line}'s {prev}: a backfill reads in time order and stops at the first row past --to, so the input must be sorted by `{}` (sort the file, or use an SQL source with `cursor: {{ column: {} }}`)",
                        col.name, col.name, col.name
                    );
                    let _ = tx
                        .send(Err(SourceError::Read {
                            path: describe.clone(),
                            line: row.line,
                            message,
                        }))
                        .await;
                    return;
                }
                latest = Some((at, row.line));
                if at < from {
                    continue;
                }
                if at >= to {
                    // Past the window: the rest of the input is later still.
                    return;
                }
            }
            if tx.send(Ok(row)).await.is_err() {
                return;
            }
        }
    });
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_midnight_utc_and_rfc3339_keeps_its_offset() {
        assert_eq!(
            parse_date("--from", "2024-01-31").unwrap(),
            DateTime::parse_from_rfc3339("2024-01-31T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_date("--to", "2024-01-31T12:00:00+02:00")
                .unwrap()
                .timestamp(),
            1_706_695_200
        );
        let e = parse_date("--to", "31/01/2024").unwrap_err().to_string();
        assert!(e.contains("--to") && e.contains("YYYY-MM-DD"), "{e}");
    }

    #[test]
    fn the_scope_names_the_window_and_recent_means_the_last_72_hours() {
        let from = parse_date("--from", "2024-01-01").unwrap();
        let to = parse_date("--to", "2024-02-01").unwrap();
        let w = BackfillWindow::new(from, to).unwrap();
        assert_eq!(
            w.scope().as_str(),
            "backfill:2024-01-01T00:00:00Z..2024-02-01T00:00:00Z"
        );
        assert!(!w.is_recent(to + chrono::Duration::hours(73)));
        assert!(w.is_recent(to + chrono::Duration::hours(71)));
        assert!(BackfillWindow::new(to, from).is_err());
    }
}
