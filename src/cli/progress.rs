//! Progress of `run` and `backfill`: a bar per job on a terminal, a log line per interval
//! elsewhere.
//!
//! Owns: turning the pipeline's [`Progress`] reports into output: on a terminal (stderr), one
//! redrawn line per job with rows, rate and, when the source's size is known, a bar and an
//! ETA (a spinner otherwise); off a terminal or under `--log-format json`, an INFO line every
//! 10 s with the same figures. (indicatif is not in the offline crate cache this was built
//! with, so the bar is drawn here; the figures are the same.)
//! Must not: run jobs, decide exit codes or print to stdout (summaries go there).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pipeline::{Progress, ProgressSink};

/// How often a log line is written off a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the terminal line is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(200);

struct JobView {
    /// When something was last written (or the first report came).
    last_out: Instant,
    printed: bool,
    spin: usize,
}

/// Where the figures go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    Bar,
    Log,
}

/// The sink `run` and `backfill` give the runner: bars when stderr is a terminal and the log
/// format is text, log lines otherwise.
pub(crate) fn sink(json_logs: bool) -> ProgressSink {
    use std::io::IsTerminal;
    let out = if std::io::stderr().is_terminal() && !json_logs {
        Out::Bar
    } else {
        Out::Log
    };
    let jobs: Mutex<HashMap<String, JobView>> = Mutex::new(HashMap::new());
    Arc::new(move |p: &Progress| {
        // A poisoned lock only means an earlier report panicked; the figures are still good.
        let mut jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
        let view = jobs.entry(p.job.clone()).or_insert_with(|| JobView {
            last_out: Instant::now(),
            printed: false,
            spin: 0,
        });
        let every = if out == Out::Bar {
            DRAW_EVERY
        } else {
            LOG_EVERY
        };
        let due = p.finished || view.last_out.elapsed() >= every;
        if !due {
            return;
        }
        let first = !view.printed;
        view.last_out = Instant::now();
        view.printed = true;
        view.spin += 1;
        let f = Figures::of(p, p.elapsed);
        match out {
            Out::Bar => {
                let line = f.bar_line(&p.job, view.spin);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                if p.finished {
                    let _ = writeln!(err);
                }
                let _ = err.flush();
            }
            // The summary says how the run ended; a first report that is also the last adds
            // nothing to it.
            Out::Log if p.finished && first => {}
            Out::Log => {
                tracing::info!(
                    job = %p.job,
                    read = p.rows_read,
                    delivered = p.rows_delivered,
                    rejected = p.rows_rejected,
                    requests = p.requests,
                    rows_per_sec = f.rate.round() as u64,
                    percent = f.fraction.map(|x| (x * 100.0).round() as u64),
                    eta_secs = f.eta.map(|d| d.as_secs()),
                    "Progress."
                );
            }
        }
        if p.finished {
            jobs.remove(&p.job);
        }
    })
}

/// What a report says, worked out once for either output.
struct Figures<'a> {
    p: &'a Progress,
    /// Rows read per second since the run started.
    rate: f64,
    /// Share of the source read, when its size is known.
    fraction: Option<f64>,
    eta: Option<Duration>,
}

impl<'a> Figures<'a> {
    fn of(p: &'a Progress, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = p.rows_read as f64 / secs;
        let fraction = p
            .bytes
            .filter(|(_, total)| *total > 0)
            .map(|(done, total)| (done as f64 / total as f64).clamp(0.0, 1.0));
        let eta = fraction
            .filter(|f| *f > 0.0 && !p.finished)
            .map(|f| Duration::from_secs_f64(secs * (1.0 - f) / f));
        Self {
            p,
            rate,
            fraction,
            eta,
        }
    }

    fn bar_line(&self, job: &str, spin: usize) -> String {
        const WIDTH: usize = 24;
        let head = match self.fraction {
            Some(f) => {
                let filled = (f * WIDTH as f64).round() as usize;
                format!(
                    "[{}{}] {:>3}%",
                    "#".repeat(filled),
                    "-".repeat(WIDTH - filled.min(WIDTH)),
                    (f * 100.0).round() as u64
                )
            }
            None => ["|", "/", "-", "\\"][spin % 4].to_string(),
        };
        let eta = self
            .eta
            .map(|d| format!("  ETA {}", clock(d)))
            .unwrap_or_default();
        format!(
            "{job} {head}  {} rows  {:.0} rows/s{eta}  delivered {}  rejected {}  requests {}",
            self.p.rows_read,
            self.rate,
            self.p.rows_delivered,
            self.p.rows_rejected,
            self.p.requests
        )
    }
}

/// `1:02:03`, `2:03`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(read: u64, bytes: Option<(u64, u64)>) -> Progress {
        Progress {
            job: "orders".into(),
            rows_read: read,
            bytes,
            ..Progress::default()
        }
    }

    #[test]
    fn a_known_size_gives_a_bar_and_an_eta_and_an_unknown_one_a_spinner() {
        let p = report(1000, Some((250, 1000)));
        let f = Figures::of(&p, Duration::from_secs(10));
        assert_eq!(f.rate, 100.0);
        assert_eq!(f.eta, Some(Duration::from_secs(30)));
        let line = f.bar_line("orders", 0);
        assert!(line.contains("[######------------------]  25%"), "{line}");
        assert!(
            line.contains("ETA 0:30") && line.contains("100 rows/s"),
            "{line}"
        );
        let p = report(1000, None);
        let line = Figures::of(&p, Duration::from_secs(10)).bar_line("orders", 1);
        assert!(
            line.starts_with("orders /  1000 rows") && !line.contains("ETA"),
            "{line}"
        );
    }

    #[test]
    fn clock_shows_hours_only_when_there_are_any() {
        assert_eq!(clock(Duration::from_secs(123)), "2:03");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
