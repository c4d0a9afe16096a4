//! What a user reads on stdout: run summaries, the status tables, dead-letter lists, and the
//! wording of counts ("1 row", "3 problems").
//!
//! Owns: formatting and printing, shared by the commands and the demo, so both say the same
//! thing the same way; times are RFC 3339 in UTC, to the second, in text and `--json` alike.
//! Must not: decide exit codes, open databases, load configuration or run jobs.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::pipeline::RunReport;
use crate::state::{CheckpointRecord, RunRecord, StoredDeadLetter};

/// Prints a line to stdout, ignoring a closed pipe (`cio-sync status | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use say;

/// `1 row`, `2 rows`, `0 rows`: every count a user reads goes through here.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The one wording for the end of an error list: `1 problem found`, `3 problems found`.
pub fn problems_found(n: usize) -> String {
    format!("{} found", count(n as u64, "problem"))
}

/// A stored time (milliseconds since the epoch) as RFC 3339 in UTC, to the second: always
/// 20 characters, so columns line up.
pub fn time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("(invalid time {ms})"))
}

/// Columns padded to their widest cell, two spaces apart, indented by two; the last column
/// is not padded (no trailing spaces).
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::from(" ");
            for (c, cell) in r.iter().enumerate() {
                line.push(' ');
                line.push_str(cell);
                if c + 1 < r.len() {
                    let pad = widths[c].saturating_sub(cell.chars().count()) + 1;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        })
        .collect()
}

/// The one-paragraph summary of a finished run (`run`, `dead-letters retry`).
pub fn print_report(r: &RunReport) {
    print_report_as(r, "cio-sync");
}

/// [`print_report`], with `me` as the command that looks at the dead letters (the demo says
/// `cargo run -- --state …`).
pub fn print_report_as(r: &RunReport, me: &str) {
    let secs = r.elapsed_ms as f64 / 1000.0;
    let mut line = format!(
        "{}: {} — read {}, delivered {}, rejected {}, requests {}, retries {} in {:.1}s",
        r.job,
        r.outcome.as_str(),
        r.counts.rows_read,
        r.counts.rows_delivered,
        r.counts.rows_rejected,
        r.counts.requests,
        r.counts.retries,
        secs
    );
    if r.counts.rows_unchanged > 0 {
        line.push_str(&format!(
            " ({} unchanged, not sent)",
            r.counts.rows_unchanged
        ));
    }
    if r.resumed_after_rows > 0 {
        line.push_str(&format!(" (resumed after row {})", r.resumed_after_rows));
    }
    if let Some(s) = &r.summary {
        line.push_str(&format!(" {s}"));
    }
    say!("{line}");
    if r.counts.rows_rejected > 0 {
        say!(
            "  {} dead-lettered: see `{me} dead-letters {}`",
            count(r.counts.rows_rejected, "row"),
            r.job
        );
    }
    if let Some(e) = &r.error {
        say!("  error: {e}");
    }
}

/// A scheduled job and when it next runs, for `status`.
#[derive(Debug, Clone)]
pub struct ScheduleLine {
    pub job: String,
    pub schedule: String,
    /// `None` when the schedule has no future occurrence.
    pub next_run: Option<DateTime<Utc>>,
}

/// One job's health for `status`: from its run history, the same rule as the metrics.
#[derive(Debug, Clone)]
pub struct JobLine {
    pub job: String,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    /// When the last completed run finished (ms since the epoch).
    pub last_success_ms: Option<i64>,
    /// Runs failed (or aborted) since the last completed one.
    pub consecutive_failures: i64,
    pub dead_letters: i64,
    /// Outcome of the newest run, if any.
    pub last_outcome: Option<String>,
}

impl JobLine {
    /// Whether `status` calls the job failing (exit 3): its last completed run failed.
    pub fn failing(&self) -> bool {
        self.consecutive_failures > 0
    }
}

/// What `status` shows. `known_jobs` is `None` when the job files could not be read, so
/// nothing can be called removed.
pub struct StatusView<'a> {
    pub jobs: &'a [JobLine],
    pub runs: &'a [RunRecord],
    pub checkpoints: &'a [CheckpointRecord],
    pub schedules: &'a [ScheduleLine],
    pub known_jobs: Option<&'a BTreeSet<String>>,
}

impl StatusView<'_> {
    fn removed(&self, job: &str) -> bool {
        self.known_jobs.is_some_and(|k| !k.contains(job))
    }

    /// The job column: a job whose file is gone is marked, its rows are leftovers.
    fn job_cell(&self, job: &str) -> String {
        if self.removed(job) {
            format!("{job} (removed)")
        } else {
            job.to_string()
        }
    }

    pub fn print_text(&self) {
        if !self.jobs.is_empty() {
            say!("Jobs:");
            let rows: Vec<Vec<String>> = self
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.job.clone(),
                        j.last_outcome.clone().unwrap_or_else(|| "never run".into()),
                        format!(
                            "last success {}",
                            j.last_success_ms
                                .map(time)
                                .unwrap_or_else(|| "never".into())
                        ),
                        format!("{} failed in a row", j.consecutive_failures),
                        count(j.dead_letters as u64, "dead letter"),
                        match (&j.schedule, j.next_run) {
                            (Some(s), Some(t)) => format!(
                                "schedule \"{s}\", next {}",
                                t.to_rfc3339_opts(SecondsFormat::Secs, true)
                            ),
                            (Some(s), None) => format!("schedule \"{s}\", no next run"),
                            (None, _) => "no schedule".into(),
                        },
                    ]
                })
                .collect();
            for line in table(&rows) {
                say!("{line}");
            }
        }
        say!("Last runs:");
        if self.runs.is_empty() {
            say!("  (none yet)");
        }
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .map(|r| {
                vec![
                    time(r.started_at),
                    self.job_cell(&r.job),
                    r.outcome.clone(),
                    format!(
                        "read {} delivered {} rejected {} requests {} retries {}{}",
                        r.counts.rows_read,
                        r.counts.rows_delivered,
                        r.counts.rows_rejected,
                        r.counts.requests,
                        r.counts.retries,
                        if r.counts.rows_unchanged > 0 {
                            format!(" unchanged {}", r.counts.rows_unchanged)
                        } else {
                            String::new()
                        }
                    ),
                ]
            })
            .collect();
        for (line, r) in table(&rows).into_iter().zip(self.runs) {
            say!("{line}");
            if let Some(e) = &r.error {
                say!("      error: {e}");
            }
        }
        say!("Checkpoints:");
        if self.checkpoints.is_empty() {
            say!("  (none yet)");
        }
        let rows: Vec<Vec<String>> = self
            .checkpoints
            .iter()
            .map(|c| {
                let row = c
                    .position
                    .pointer("/resume/row")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let complete = c
                    .position
                    .get("complete")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                vec![
                    time(c.updated_at),
                    // A phase's own checkpoint shows its scope beside the job.
                    if c.scope == crate::state::Scope::JOB {
                        self.job_cell(&c.job)
                    } else {
                        format!("{} [{}]", self.job_cell(&c.job), c.scope)
                    },
                    format!(
                        "after row {row}{}",
                        if complete { ", input complete" } else { "" }
                    ),
                ]
            })
            .collect();
        for line in table(&rows) {
            say!("{line}");
        }
        if !self.schedules.is_empty() {
            say!("Next runs (UTC):");
            let rows: Vec<Vec<String>> = self
                .schedules
                .iter()
                .map(|s| {
                    vec![
                        s.next_run
                            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                            .unwrap_or_else(|| "(never)".into()),
                        s.job.clone(),
                        format!("schedule \"{}\"", s.schedule),
                    ]
                })
                .collect();
            for line in table(&rows) {
                say!("{line}");
            }
        }
        if self.runs.iter().any(|r| self.removed(&r.job))
            || self.checkpoints.iter().any(|c| self.removed(&c.job))
        {
            say!("(removed): no job file has this name any more; its history stays until deleted");
        }
    }

    /// The same content as the text, times in RFC 3339.
    pub fn to_json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let mut v = run_json(r);
                if let Value::Object(m) = &mut v {
                    m.insert("removed".into(), json!(self.removed(&r.job)));
                }
                v
            })
            .collect();
        let checkpoints: Vec<Value> = self
            .checkpoints
            .iter()
            .map(|c| {
                json!({
                    "job": c.job,
                    "scope": c.scope,
                    "position": c.position,
                    "run_id": c.run_id,
                    "updated_at": time(c.updated_at),
                    "removed": self.removed(&c.job),
                })
            })
            .collect();
        let schedules: Vec<Value> = self
            .schedules
            .iter()
            .map(|s| {
                json!({
                    "job": s.job,
                    "schedule": s.schedule,
                    "next_run": s.next_run.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                })
            })
            .collect();
        let jobs: Vec<Value> = self
            .jobs
            .iter()
            .map(|j| {
                json!({
                    "job": j.job,
                    "schedule": j.schedule,
                    "next_run": j.next_run.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    "last_success": j.last_success_ms.map(time),
                    "consecutive_failures": j.consecutive_failures,
                    "dead_letters": j.dead_letters,
                    "last_outcome": j.last_outcome,
                    "failing": j.failing(),
                })
            })
            .collect();
        json!({ "jobs": jobs, "runs": runs, "checkpoints": checkpoints, "schedules": schedules })
    }
}

/// A run as JSON, times in RFC 3339.
pub fn run_json(r: &RunRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("started_at".into(), json!(time(r.started_at)));
        m.insert("finished_at".into(), json!(r.finished_at.map(time)));
    }
    v
}

/// `cio-sync runs JOB`: one line per run, newest first, with its error below it.
pub fn print_runs(job: &str, runs: &[RunRecord]) {
    if runs.is_empty() {
        say!("{job}: no runs yet");
        return;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                time(r.started_at),
                r.finished_at
                    .map(time)
                    .unwrap_or_else(|| "(running)".into()),
                r.kind.clone(),
                r.outcome.clone(),
                format!(
                    "read {} delivered {} rejected {} requests {} retries {}",
                    r.counts.rows_read,
                    r.counts.rows_delivered,
                    r.counts.rows_rejected,
                    r.counts.requests,
                    r.counts.retries
                ),
            ]
        })
        .collect();
    for (line, r) in table(&rows).into_iter().zip(runs) {
        say!("{line}");
        if let Some(e) = &r.error {
            say!("      error: {e}");
        }
    }
}

/// `cio-sync dead-letters JOB`: one entry per row, with where it came from and why.
pub fn print_dead_letters(job: &str, letters: &[StoredDeadLetter], total: i64) {
    if letters.is_empty() {
        say!("{job}: no dead letters");
        return;
    }
    for l in letters {
        say!(
            "{}  {}  {}:{}  [{}] {}",
            l.id,
            time(l.updated_at),
            l.source,
            l.line.unwrap_or(0),
            l.stage,
            l.reason
        );
        say!("    row: {}", l.row_data);
    }
    let more = total - letters.len() as i64;
    if more > 0 {
        say!("… and {more} more (--limit N shows more)");
    }
}

/// Dead letters as JSON, times in RFC 3339 like the rest of the output.
pub fn dead_letters_json(letters: &[StoredDeadLetter]) -> Value {
    Value::Array(
        letters
            .iter()
            .map(|l| {
                let mut v = serde_json::to_value(l).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("created_at".into(), json!(time(l.created_at)));
                    m.insert("updated_at".into(), json!(time(l.updated_at)));
                }
                v
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_only_for_one() {
        assert_eq!(count(1, "row"), "1 row");
        assert_eq!(count(0, "row"), "0 rows");
        assert_eq!(count(2, "problem"), "2 problems");
        assert_eq!(problems_found(1), "1 problem found");
    }

    #[test]
    fn times_have_one_width_whatever_the_milliseconds() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_700_000_000_123).len(), time(1_700_000_000_000).len());
    }

    #[test]
    fn table_columns_line_up_and_lines_have_no_trailing_spaces() {
        let lines = table(&[
            vec!["a".into(), "long-job-name".into(), "x".into()],
            vec!["bbb".into(), "j".into(), "y".into()],
        ]);
        assert_eq!(lines[0], "  a    long-job-name  x");
        assert_eq!(lines[1], "  bbb  j              y");
    }
}
