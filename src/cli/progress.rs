//! Progress of `run` and `backfill`: a bar per job on a terminal, a log line per interval
//! elsewhere.
//!
//! Owns: turning the pipeline's [`Progress`] reports into output: on a terminal (stderr), an
//! indicatif bar per job with rows, rate and, when the source's size is known, the share
//! read and an ETA (a spinner otherwise); off a terminal or under `--log-format json`, an
//! INFO line every 10 s with the same figures.
//! Must not: run jobs, decide exit codes or print to stdout (summaries go there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::{Progress, ProgressSink};

/// How often a log line is written off a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the bars are redrawn, at most.
const DRAWS_PER_SEC: u8 = 5;

/// The sink `run` and `backfill` give the runner: bars when stderr is a terminal and the log
/// format is text, log lines otherwise.
pub(crate) fn sink(json_logs: bool) -> ProgressSink {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() && !json_logs {
        bars(ProgressDrawTarget::stderr_with_hz(DRAWS_PER_SEC))
    } else {
        log_lines()
    }
}

/// A bar per job, drawn to `target`.
fn bars(target: ProgressDrawTarget) -> ProgressSink {
    let multi = MultiProgress::with_draw_target(target);
    let jobs: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    Arc::new(move |p: &Progress| {
        // A poisoned lock only means an earlier report panicked; the bars are still good.
        let mut jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
        let bar = jobs
            .entry(p.job.clone())
            .or_insert_with(|| multi.add(new_bar(p)));
        update(bar, p);
        if p.finished {
            bar.finish();
            jobs.remove(&p.job);
        }
    })
}

/// A bar over the source's bytes when its size is known, a spinner otherwise.
fn new_bar(p: &Progress) -> ProgressBar {
    let (bar, template) = match p.bytes {
        Some((_, total)) if total > 0 => (
            ProgressBar::new(total),
            "{prefix} [{bar:24}] {percent:>3}%  ETA {eta}  {wide_msg}",
        ),
        _ => (ProgressBar::new_spinner(), "{prefix} {spinner}  {wide_msg}"),
    };
    // The templates are constants: a bad one is a bug, and the default style still works.
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar.set_prefix(p.job.clone());
    bar
}

fn update(bar: &ProgressBar, p: &Progress) {
    let f = Figures::of(p, p.elapsed);
    match p.bytes {
        Some((done, _)) => bar.set_position(done),
        None => bar.tick(),
    }
    bar.set_message(f.summary());
}

/// An INFO line per job every [`LOG_EVERY`].
fn log_lines() -> ProgressSink {
    // Per job: when a line was last written, and whether one was.
    let jobs: Mutex<HashMap<String, (Instant, bool)>> = Mutex::new(HashMap::new());
    Arc::new(move |p: &Progress| {
        let mut jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
        let (last, printed) = jobs
            .entry(p.job.clone())
            .or_insert_with(|| (Instant::now(), false));
        let due = p.finished || last.elapsed() >= LOG_EVERY;
        // The summary says how the run ended; a first report that is also the last adds
        // nothing to it.
        if due && (!p.finished || *printed) {
            let f = Figures::of(p, p.elapsed);
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
            *last = Instant::now();
            *printed = true;
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

    /// The figures beside the bar.
    fn summary(&self) -> String {
        format!(
            "{} rows  {:.0} rows/s  delivered {}  rejected {}  requests {}",
            self.p.rows_read,
            self.rate,
            self.p.rows_delivered,
            self.p.rows_rejected,
            self.p.requests
        )
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
        let p = Progress {
            elapsed: Duration::from_secs(10),
            ..report(1000, Some((250, 1000)))
        };
        let f = Figures::of(&p, p.elapsed);
        assert_eq!(f.rate, 100.0);
        assert_eq!(f.eta, Some(Duration::from_secs(30)));
        let bar = new_bar(&p);
        update(&bar, &p);
        assert_eq!((bar.position(), bar.length()), (250, Some(1000)));
        assert_eq!(bar.prefix(), "orders");
        let msg = bar.message();
        assert!(
            msg.starts_with("1000 rows  100 rows/s") && msg.contains("requests 0"),
            "{msg}"
        );
        let p = report(1000, None);
        let spinner = new_bar(&p);
        update(&spinner, &p);
        assert_eq!(spinner.length(), None, "a spinner: no size, no ETA");
    }
}
