//! The command line: arguments, output, and the one exit point.
//!
//! Owns: clap definitions, printing summaries (text or `--json`), logging setup, and turning
//! every outcome into a documented exit code (`exit.rs`). anyhow lives here and in `main.rs`
//! only. Must not: hold pipeline logic; it calls `runner`, `pipeline`, `state`, `simulator`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, JobKind, JobSpec};

/// Prints a line to stdout, ignoring a closed pipe (`cio-sync status | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
use crate::exit;
use crate::pipeline::{RunMode, RunReport, StopSignal};
use crate::runner::{Runner, RunnerError};
use crate::state::{Outcome, StateStore};
pub(crate) use say;

#[derive(Parser, Debug)]
#[command(
    name = "cio-sync",
    version,
    about = "Scheduled batch syncs between your data and Customer.io"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The daemon's settings; jobs are read from its `jobs_dir`.
    #[arg(
        long,
        global = true,
        env = "CIO_SYNC_CONFIG",
        default_value = "config.yaml"
    )]
    pub config: PathBuf,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Use this state database instead of config.yaml's `state.url` (e.g. the demo's).
    #[arg(long, global = true, env = "CIO_SYNC_STATE")]
    pub state: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check config.yaml and every job; list every error. No network (unless --connect).
    Validate {
        /// Also connect to every SQL source and check its query and columns.
        #[arg(long)]
        connect: bool,
    },
    /// Run jobs now and print a summary.
    Run(RunArgs),
    /// Last runs and checkpoints.
    Status {
        #[arg(long)]
        json: bool,
        /// Runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
    },
    /// Rows Customer.io will not get, and why: list, retry or purge them.
    #[command(args_conflicts_with_subcommands = true)]
    DeadLetters(DeadLetterArgs),
    /// Run a local Customer.io simulator (Track and App API) for trying jobs out.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:4010")]
        listen: std::net::SocketAddr,
    },
    /// Run every job on its schedule until SIGTERM/SIGINT (the systemd service).
    Daemon,
    /// Run the example jobs against an in-process simulator, with embedded SQLite state
    /// (state/demo.db next to config.yaml unless --state is given).
    Demo,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Jobs to run (file stems in jobs_dir).
    pub jobs: Vec<String>,
    /// Run every job.
    #[arg(long, conflicts_with = "jobs")]
    pub all: bool,
    /// Read, map and validate everything; show what would be sent; send and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Forget the checkpoint and read the input from the start.
    #[arg(long)]
    pub full: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// With --dry-run: how many operations and rejections to show.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    pub action: Option<DeadLetterAction>,
    /// The job whose dead letters to list.
    pub job: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// Re-read the rows through the job's current mapping and send them again; rows that now
    /// pass leave the table.
    Retry { job: String },
    /// Delete the job's dead letters.
    Purge { job: String },
}

/// A mistake in how cio-sync was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// The single exit point: runs the command, prints `cio-sync: <cause chain>` on error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its logs only speak up for problems unless asked.
    let quiet_default = matches!(cli.command, Command::Demo);
    init_logging(&cli.global, quiet_default);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cio-sync: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cio-sync: {e:#}");
            let code = if e.downcast_ref::<config::ConfigErrors>().is_some()
                || e.downcast_ref::<UsageError>().is_some()
            {
                exit::CONFIG
            } else {
                exit::FAILED
            };
            ExitCode::from(code)
        }
    }
}

fn init_logging(g: &Global, quiet_default: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = if g.quiet || (quiet_default && g.verbose == 0) {
        "warn"
    } else {
        match g.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match g.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn load(global: &Global) -> Result<Config> {
    let mut cfg = config::load(&global.config, &config::process_env)?;
    if let Some(url) = &global.state {
        cfg.settings.state_url = config::DatabaseUrl::new(url.clone());
    }
    Ok(cfg)
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { connect } => validate(&cli.global, connect).await,
        Command::Run(args) => run(&cli.global, args).await,
        Command::Status { json, limit, job } => status(&cli.global, json, limit, job).await,
        Command::DeadLetters(args) => dead_letters(&cli.global, args).await,
        Command::Simulate { listen } => simulate(listen).await,
        Command::Daemon => daemon(&cli.global).await,
        Command::Demo => crate::demo::run(&cli.global.config, cli.global.state.clone())
            .await
            .map_err(|e| anyhow!(e)),
    }
}

async fn validate(global: &Global, connect: bool) -> Result<u8> {
    match config::load(&global.config, &config::process_env) {
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("cio-sync: {e}");
            }
            eprintln!(
                "cio-sync: {} error{} found",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            Ok(exit::CONFIG)
        }
        Ok(cfg) => {
            let mut problems = 0;
            if connect {
                let runner = Runner::new(cfg.settings.clone()).await?;
                let pushes = cfg.jobs.iter().any(|j| matches!(j.kind, JobKind::Push(_)));
                if pushes {
                    match runner
                        .check_region("validate", &tokio_util::sync::CancellationToken::new())
                        .await
                    {
                        Ok(info) => say!(
                            "Track API: credentials accepted; workspace {} in region {}",
                            info.environment_id
                                .map(|i| i.to_string())
                                .unwrap_or_default(),
                            info.region
                        ),
                        Err(e) => {
                            let e = match e {
                                RunnerError::Track { source, .. } => source.to_string(),
                                RunnerError::Job { message, .. } => message,
                                other => other.to_string(),
                            };
                            eprintln!(
                                "cio-sync: Track API self-check ({}/api/v1/accounts/region): {e}",
                                cfg.settings.customerio.track_url
                            );
                            problems += 1;
                        }
                    }
                }
                for job in &cfg.jobs {
                    if let Err(e) = crate::source::check::check_job(job).await {
                        eprintln!("cio-sync: {e}");
                        problems += 1;
                    }
                }
            }
            if problems > 0 {
                eprintln!(
                    "cio-sync: {problems} problem{} found",
                    if problems == 1 { "" } else { "s" }
                );
                return Ok(exit::CONFIG);
            }
            say!(
                "{}: OK ({} job{}: {})",
                global.config.display(),
                cfg.jobs.len(),
                if cfg.jobs.len() == 1 { "" } else { "s" },
                cfg.jobs
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(exit::OK)
        }
    }
}

fn select_jobs<'a>(cfg: &'a Config, names: &[String], all: bool) -> Result<Vec<&'a JobSpec>> {
    if all {
        return Ok(cfg.jobs.iter().collect());
    }
    if names.is_empty() {
        return Err(usage(format!(
            "name the jobs to run, or use --all (jobs: {})",
            job_names(cfg)
        )));
    }
    names
        .iter()
        .map(|n| {
            cfg.job(n).ok_or_else(|| {
                usage(format!(
                    "no job named `{n}` in {} (jobs: {})",
                    cfg.settings.jobs_dir.display(),
                    job_names(cfg)
                ))
            })
        })
        .collect()
}

fn job_names(cfg: &Config) -> String {
    cfg.jobs
        .iter()
        .map(|j| j.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run(global: &Global, args: RunArgs) -> Result<u8> {
    let cfg = load(global)?;
    let jobs = select_jobs(&cfg, &args.jobs, args.all)?;
    if args.dry_run {
        return dry_run(&cfg, &jobs, &args).await;
    }
    let runner = Runner::new(cfg.settings.clone()).await?;
    let signals = crate::shutdown::listen();
    let stop = StopSignal::from_signals(&signals, cfg.settings.grace);
    let mut reports = Vec::new();
    let mut code = exit::OK;
    for job in jobs {
        if signals.stop.is_cancelled() {
            break;
        }
        let stop = stop.clone();
        match runner
            .run(job, RunMode::Normal { full: args.full }, stop)
            .await
        {
            Ok(report) => {
                code = code.max(match report.outcome {
                    Outcome::Succeeded => exit::OK,
                    Outcome::RejectedRows => exit::REJECTED_ROWS,
                    Outcome::Interrupted => exit::INTERRUPTED,
                    _ => exit::FAILED,
                });
                if !args.json {
                    print_report(&report);
                }
                reports.push(report);
            }
            Err(RunnerError::Busy { job, holder }) => {
                eprintln!("cio-sync: job `{job}` is already running ({holder}); skipped");
                code = code.max(exit::BUSY);
            }
            Err(e) => {
                eprintln!("cio-sync: {e}");
                code = code.max(exit::FAILED);
            }
        }
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code)
}

pub fn print_report(r: &RunReport) {
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
    if r.resumed_after_rows > 0 {
        line.push_str(&format!(" (resumed after row {})", r.resumed_after_rows));
    }
    if let Some(s) = &r.summary {
        line.push_str(&format!(" {s}"));
    }
    say!("{line}");
    if r.counts.rows_rejected > 0 {
        say!(
            "  {} rows dead-lettered: see `cio-sync dead-letters {}`",
            r.counts.rows_rejected,
            r.job
        );
    }
    if let Some(e) = &r.error {
        say!("  error: {e}");
    }
}

async fn dry_run(cfg: &Config, jobs: &[&JobSpec], args: &RunArgs) -> Result<u8> {
    let mut reports = Vec::new();
    let mut code = exit::OK;
    for job in jobs {
        match &job.kind {
            JobKind::Push(push) => {
                let r = crate::pipeline::dry_run::dry_run(&cfg.settings, job, push, args.limit)
                    .await
                    .map_err(|e| anyhow!(e))?;
                if r.rejected > 0 {
                    code = code.max(exit::REJECTED_ROWS);
                }
                if !args.json {
                    say!(
                        "{} (dry run, nothing sent): {} rows read from {} → {} operations in {} requests, {} rejected",
                        r.job,
                        r.rows_read,
                        r.source,
                        r.operations,
                        r.requests,
                        r.rejected
                    );
                    for op in &r.sample_operations {
                        say!("  would send: {op}");
                    }
                    for rej in &r.sample_rejections {
                        say!("  would reject line {}: {}", rej.line, rej.reason);
                    }
                }
                reports.push(serde_json::to_value(&r)?);
            }
            JobKind::Pull(pull) => {
                let r = crate::pull::dry_run(&cfg.settings, job, pull).await?;
                if !args.json {
                    let s = &r.summary;
                    say!(
                        "{} (dry run, nothing written to {}): {} segments, {} members of {} segments in {} pages, {} campaigns, {} metric points; {} App API requests",
                        r.job,
                        r.target,
                        s.segments,
                        s.members,
                        s.membership_segments,
                        s.membership_pages,
                        s.campaigns,
                        s.metric_points,
                        s.requests
                    );
                    if !s.gone_segments.is_empty() {
                        say!("  segments that no longer exist: {:?}", s.gone_segments);
                    }
                }
                reports.push(serde_json::to_value(&r)?);
            }
        }
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code)
}

async fn open_state(global: &Global) -> Result<StateStore> {
    // Reading the state needs no Customer.io credentials: tolerate their variables being
    // unset here (every other unset variable is still an error).
    let settings = match config::load_settings(&global.config, &config::process_env) {
        Err(errors)
            if errors
                .iter()
                .all(|e| !e.key.starts_with("state") && e.message.contains("which is not set")) =>
        {
            config::load_settings(&global.config, &|n: &str| {
                Some(config::process_env(n).unwrap_or_default())
            })
        }
        other => other,
    };
    let mut settings = settings.map_err(config::ConfigErrors)?;
    if let Some(url) = &global.state {
        settings.state_url = config::DatabaseUrl::new(url.clone());
    }
    StateStore::open_with(&settings.state_url, settings.state_connect_timeout)
        .await
        .context("opening the state database")
}

async fn status(global: &Global, json: bool, limit: i64, job: Option<String>) -> Result<u8> {
    let state = open_state(global).await?;
    let runs = state.runs(job.as_deref(), limit).await?;
    let checkpoints = state.checkpoints().await?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "runs": runs, "checkpoints": checkpoints })
            )?
        );
        return Ok(exit::OK);
    }
    say!("Last runs:");
    if runs.is_empty() {
        say!("  (none yet)");
    }
    for r in &runs {
        let started = chrono::DateTime::from_timestamp_millis(r.started_at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        say!(
            "  {started}  {:<20} {:<14} read {} delivered {} rejected {} requests {} retries {}{}",
            r.job,
            r.outcome,
            r.counts.rows_read,
            r.counts.rows_delivered,
            r.counts.rows_rejected,
            r.counts.requests,
            r.counts.retries,
            r.error
                .as_ref()
                .map(|e| format!("\n      error: {e}"))
                .unwrap_or_default()
        );
    }
    say!("Checkpoints:");
    if checkpoints.is_empty() {
        say!("  (none yet)");
    }
    for c in &checkpoints {
        let at = chrono::DateTime::from_timestamp_millis(c.updated_at)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let rows = c
            .position
            .pointer("/resume/row")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let complete = c
            .position
            .get("complete")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        // The job's own checkpoint shows as the job; a phase's as `job [scope]`.
        let name = if c.scope == crate::state::Scope::JOB {
            c.job.clone()
        } else {
            format!("{} [{}]", c.job, c.scope)
        };
        say!(
            "  {name:<20} after row {rows}{}  ({at})",
            if complete { ", input complete" } else { "" }
        );
    }
    Ok(exit::OK)
}

async fn dead_letters(global: &Global, args: DeadLetterArgs) -> Result<u8> {
    match args.action {
        Some(DeadLetterAction::Purge { job }) => {
            let state = open_state(global).await?;
            let n = state.delete_dead_letters(&job, None).await?;
            say!(
                "{job}: purged {n} dead letter{}",
                if n == 1 { "" } else { "s" }
            );
            Ok(exit::OK)
        }
        Some(DeadLetterAction::Retry { job: name }) => {
            let cfg = load(global)?;
            let job = cfg.job(&name).ok_or_else(|| {
                usage(format!("no job named `{name}` (jobs: {})", job_names(&cfg)))
            })?;
            let runner = Runner::new(cfg.settings.clone()).await?;
            let signals = crate::shutdown::listen();
            let stop = StopSignal::from_signals(&signals, cfg.settings.grace);
            let report = runner.run(job, RunMode::RetryDeadLetters, stop).await?;
            let left = runner.state.count_dead_letters(&name).await?;
            print_report(&report);
            say!(
                "  {left} dead letter{} left",
                if left == 1 { "" } else { "s" }
            );
            Ok(if left > 0 {
                exit::REJECTED_ROWS
            } else {
                exit::OK
            })
        }
        None => {
            let job = args.job.ok_or_else(|| {
                usage("name a job: cio-sync dead-letters JOB (or `retry JOB`, `purge JOB`)".into())
            })?;
            let state = open_state(global).await?;
            let letters = state.dead_letters(&job, args.limit).await?;
            if args.json {
                say!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                say!("{job}: no dead letters");
            } else {
                for l in &letters {
                    say!(
                        "{}  {}:{}  [{}] {}",
                        l.id,
                        l.source,
                        l.line.unwrap_or(0),
                        l.stage,
                        l.reason
                    );
                    say!("    row: {}", l.row_data);
                }
            }
            Ok(exit::OK)
        }
    }
}

async fn simulate(listen: std::net::SocketAddr) -> Result<u8> {
    let config = crate::simulator::SimConfig::default();
    let (site, track, app) = (
        config.site_id.clone(),
        config.track_api_key.clone(),
        config.app_api_key.clone(),
    );
    let sim = crate::simulator::Simulator::start_on(listen, config)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    say!("Customer.io simulator listening on {}", sim.url());
    say!(
        "  Track API: HTTP Basic {site}:{track}; App API: Bearer {app} (demo credentials, not secrets)"
    );
    say!(
        "  set customerio.track_url and customerio.app_url to {} in config.yaml",
        sim.url()
    );
    let signals = crate::shutdown::listen();
    signals.stop.cancelled().await;
    sim.shutdown().await;
    Ok(exit::OK)
}

async fn daemon(global: &Global) -> Result<u8> {
    let cfg = load(global)?;
    let runner = Runner::new(cfg.settings.clone()).await?;
    let signals = crate::shutdown::listen();
    crate::schedule::run_daemon(runner, cfg.jobs, signals).await?;
    Ok(exit::OK)
}
