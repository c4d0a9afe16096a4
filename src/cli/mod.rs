//! The command line: arguments, dispatch, and the one exit point.
//!
//! Owns: clap definitions, logging setup, what each command does in order, and turning every
//! outcome into a documented exit code (`exit.rs`). anyhow lives here and in `main.rs` only.
//! Printing (summaries, tables, `--json`) is `output.rs`, shared with the demo.
//! Must not: hold pipeline logic or I/O checks; it calls `runner`, `preflight`, `state`,
//! `simulator`.

mod checkpoint;
mod demo;
pub mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, JobKind, JobSpec};
use crate::exit;
use crate::pipeline::{RunMode, StopSignal};
use crate::runner::{Runner, RunnerError};
use crate::state::{Outcome, StateStore};
use output::{count, print_report, problems_found, say};

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
    /// Check config.yaml and every job; list every problem. Reads CSV headers and checks the
    /// state location; no network and nothing written (unless --connect).
    Validate {
        /// Also open the state database, check the Track credentials and region, the App key
        /// (when a pull job exists), and every SQL query's columns.
        #[arg(long)]
        connect: bool,
    },
    /// Run jobs now and print a summary.
    Run(RunArgs),
    /// Last runs and checkpoints.
    Status {
        /// Print as JSON (times in RFC 3339, like the text).
        #[arg(long)]
        json: bool,
        /// Runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only this job, in every section.
        #[arg(long)]
        job: Option<String>,
    },
    /// Rows Customer.io will not get, and why: list, retry or purge them.
    #[command(args_conflicts_with_subcommands = true)]
    DeadLetters(DeadLetterArgs),
    /// Run a local Customer.io simulator (Track and App API) for trying jobs out.
    ///
    /// It accepts only the demo credentials: Track API HTTP Basic with site id `demo-site` and
    /// API key `demo-track-key` (CIO_SITE_ID, CIO_TRACK_API_KEY), App API `Bearer
    /// demo-app-key` (CIO_APP_API_KEY); anything else is refused with a 401.
    Simulate {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:4010")]
        listen: std::net::SocketAddr,
        /// Answer 429 above this many requests per second per API, like a workspace's limit
        /// (default: no limit).
        #[arg(long)]
        rate_limit_per_sec: Option<u32>,
        /// Keep only counts and event-id dedupe, not every operation (for long benchmarks).
        #[arg(long)]
        count_only: bool,
        #[command(flatten)]
        post: PostWebhookArgs,
    },
    /// Run every job on its schedule until SIGTERM/SIGINT (the systemd service).
    Daemon,
    /// Run the example jobs against an in-process simulator, with embedded SQLite state
    /// (state/demo.db next to config.yaml unless --state is given).
    Demo,
    /// Show or reset a job's checkpoint (reset also forgets its fingerprints).
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointAction),
    /// Send a track job's events of one time window [--from, --to), in time order, with their
    /// own checkpoint: stop and run the same command again to resume.
    Backfill(BackfillArgs),
    /// A job's run history, newest first: outcome, times, counts, error.
    Runs {
        /// The job whose runs to list.
        job: String,
        /// Runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print as JSON (times in RFC 3339, like the text).
        #[arg(long)]
        json: bool,
    },
    /// Customer.io's reporting webhook: register this receiver (App API), or list what is set.
    #[command(subcommand)]
    Webhooks(WebhooksAction),
}

#[derive(Subcommand, Debug)]
pub enum WebhooksAction {
    /// Create the reporting webhook posting to --url, or update the one already posting there.
    Register {
        /// The public URL of the receiver (the TLS proxy in front of `webhooks.listen`).
        #[arg(long)]
        url: String,
        /// Events to receive, comma-separated (e.g. email_sent,email_opened,email_clicked).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// The webhook's name in Customer.io.
        #[arg(long, default_value = "cio-sync")]
        name: String,
        /// Include message bodies in `sent` events (large bodies: keep `webhooks.max_body_bytes` generous).
        #[arg(long)]
        with_content: bool,
        /// Send every open and click, not only the first of each.
        #[arg(long)]
        full_resolution: bool,
        /// Create or keep the webhook disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List the workspace's reporting webhooks.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct BackfillArgs {
    /// The track (event) job to backfill.
    pub job: String,
    /// Start of the window, inclusive: YYYY-MM-DD (midnight UTC) or RFC 3339.
    #[arg(long)]
    pub from: String,
    /// End of the window, exclusive: YYYY-MM-DD (midnight UTC) or RFC 3339.
    #[arg(long)]
    pub to: String,
    /// Use only this many Track requests per second of the workspace's budget.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Do not ask when the window reaches into the last 72 hours.
    #[arg(long)]
    pub yes: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `simulate --post-webhooks URL`: play Customer.io's webhook sender instead of serving.
#[derive(Args, Debug)]
pub struct PostWebhookArgs {
    /// Post sample reporting-webhook events to this receiver URL (e.g.
    /// http://127.0.0.1:8088/cio/webhook), with Customer.io's retry rule, then exit.
    #[arg(long, value_name = "URL")]
    pub post_webhooks: Option<String>,
    /// The key to sign with (the receiver's `webhooks.signing_key`).
    #[arg(long, env = "CIO_WEBHOOK_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
    /// How many events to post.
    #[arg(long, default_value_t = 10)]
    pub events: usize,
    /// How to sign them: valid, or wrong on purpose (each then posted once: they must be refused).
    #[arg(long, value_enum, default_value_t = PostSigning::Valid)]
    pub signing: PostSigning,
    /// Post every event twice (Customer.io's retries repeat an event_id).
    #[arg(long)]
    pub duplicates: bool,
    /// The prefix of the events' ids (re-use one to post the same events again).
    #[arg(long, default_value = "sim")]
    pub id_prefix: String,
    /// Milliseconds Customer.io's long wait (one hour, after 400/401/…/500/502) lasts here.
    #[arg(long, default_value_t = 1000)]
    pub long_wait_ms: u64,
    /// Attempts per event before giving up on it.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostSigning {
    Valid,
    BadSignature,
    Stale,
    Unsigned,
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
    /// Mirror mode removes what vanished even when its guard refuses (see `guard:`).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    pub action: Option<DeadLetterAction>,
    /// The job whose dead letters to list.
    pub job: Option<String>,
    /// Print as JSON (times in RFC 3339).
    #[arg(long)]
    pub json: bool,
    /// How many dead letters to list (the oldest first).
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// Re-read the rows through the job's current mapping and send them again; rows that now
    /// pass leave the table.
    Retry {
        /// The job whose dead letters to send again.
        job: String,
    },
    /// Delete the job's dead letters.
    Purge {
        /// The job whose dead letters to delete.
        job: String,
    },
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
            if let Some(errors) = e.downcast_ref::<config::ConfigErrors>() {
                print_problems(errors.0.iter());
            } else {
                eprintln!("cio-sync: {e:#}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The documented code for an error that ended a command.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<config::ConfigErrors>().is_some()
        || e.downcast_ref::<UsageError>().is_some()
    {
        exit::CONFIG
    } else {
        exit::FAILED
    }
}

/// Every problem on its own line, then the one summary wording (`2 problems found`).
fn print_problems<T: std::fmt::Display>(problems: impl ExactSizeIterator<Item = T>) {
    let n = problems.len();
    for p in problems {
        eprintln!("cio-sync: {p}");
    }
    eprintln!("cio-sync: {}", problems_found(n));
}

/// An error with its causes, each said once (`{:#}` would repeat a cause whose text the
/// outer message already holds).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = c.source();
    }
    text
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
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // sqlx-postgres logs each URL parameter it does not know *with its value*
    // (`sslpassword=…`): its URL parser stays silent whatever RUST_LOG says.
    if let Ok(d) = "sqlx_postgres::options::parse=off".parse() {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A subscriber is already set only when cio-sync runs inside a test harness that set
    // one; that one then keeps logging.
    let _already_set = match g.log_format {
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
        Command::Simulate {
            listen,
            rate_limit_per_sec,
            count_only,
            post,
        } => match post.post_webhooks.clone() {
            Some(url) => post_webhooks(url, post).await,
            None => simulate(listen, rate_limit_per_sec, count_only).await,
        },
        Command::Daemon => daemon(&cli.global).await,
        Command::Checkpoint(action) => checkpoint::run(&cli.global, action).await,
        Command::Backfill(args) => backfill(&cli.global, args).await,
        Command::Runs { job, limit, json } => runs(&cli.global, &job, limit, json).await,
        Command::Demo => demo::run(&cli.global.config, cli.global.state.clone())
            .await
            .map_err(|e| match e {
                // A configuration mistake is exit 2 in the demo too.
                demo::DemoError::Config(errors) => anyhow::Error::new(errors),
                other => anyhow::Error::new(other),
            }),
        Command::Webhooks(action) => webhooks(&cli.global, action).await,
    }
}

async fn validate(global: &Global, connect: bool) -> Result<u8> {
    let cfg = load(global)?;
    let report = if connect {
        crate::preflight::check_connected(&cfg).await
    } else {
        crate::preflight::PreflightReport {
            problems: crate::preflight::check_local(&cfg).await,
            ..Default::default()
        }
    };
    for line in &report.passed {
        say!("{line}");
    }
    if !report.problems.is_empty() {
        print_problems(report.problems.iter());
        return Ok(exit::CONFIG);
    }
    say!(
        "{}: OK ({}: {})",
        global.config.display(),
        count(cfg.jobs.len() as u64, "job"),
        job_names(&cfg)
    );
    Ok(exit::OK)
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
    names_of(cfg.jobs.iter().map(|j| j.name.as_str()))
}

fn names_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The state database for a dry run's fingerprint lookups: only one that already exists (a
/// dry run creates nothing); without it the dry run shows every row as sent.
async fn dry_run_state(settings: &config::Settings) -> Option<StateStore> {
    let url = settings.state_url.expose();
    if let Some(path) = url.strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or(path);
        if !std::path::Path::new(file).exists() {
            return None;
        }
    }
    match StateStore::open_with(&settings.state_url, settings.state_connect_timeout).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "The dry run cannot read fingerprints; it shows every row as sent.");
            None
        }
    }
}

/// `run`'s mode: `--force` lets mirror mode act past its guard.
fn run_mode(args: &RunArgs) -> RunMode {
    if args.force {
        RunMode::Forced { full: args.full }
    } else {
        RunMode::Normal { full: args.full }
    }
}

/// The exit code a finished run earns.
fn outcome_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Succeeded => exit::OK,
        Outcome::RejectedRows => exit::REJECTED_ROWS,
        Outcome::Interrupted => exit::INTERRUPTED,
        Outcome::Guarded => exit::GUARDED,
        _ => exit::FAILED,
    }
}

async fn run(global: &Global, args: RunArgs) -> Result<u8> {
    let cfg = load(global)?;
    let jobs = select_jobs(&cfg, &args.jobs, args.all)?;
    if args.dry_run {
        return dry_run(&cfg, &jobs, &args).await;
    }
    let runner = Runner::new(cfg.settings.clone())
        .await
        .map_err(|e| anyhow!(chain(&e)))?
        .with_progress(progress::sink(global.log_format == LogFormat::Json));
    if let Err(e) = runner.load_job_health(jobs.iter().copied()).await {
        tracing::warn!(error = %e, "Could not read the run history; job health metrics start empty.");
    }
    // A one-shot run serves the same endpoints while it runs (a long backfill can be watched);
    // nothing ticks its liveness: it is live while it answers.
    let http = HttpListener::start(
        &cfg.settings,
        &runner,
        crate::observe::Liveness::untracked(),
    )
    .await?;
    let signals = crate::shutdown::listen();
    let stop = StopSignal::from_signals(&signals, cfg.settings.grace);
    let mut reports = Vec::new();
    let mut code = exit::OK;
    for job in jobs {
        if signals.stop.is_cancelled() {
            break;
        }
        let stop = stop.clone();
        match runner.run(job, run_mode(&args), stop).await {
            Ok(report) => {
                code = exit::most_severe(code, outcome_code(report.outcome));
                if !args.json {
                    print_report(&report);
                }
                reports.push(report);
            }
            Err(RunnerError::Busy { job, holder }) => {
                eprintln!("cio-sync: job `{job}` is already running ({holder}); skipped");
                code = exit::most_severe(code, exit::BUSY);
            }
            Err(e) => {
                eprintln!("cio-sync: {}", chain(&e));
                code = exit::most_severe(code, exit::FAILED);
            }
        }
    }
    http.stop().await;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(code)
}

async fn dry_run(cfg: &Config, jobs: &[&JobSpec], args: &RunArgs) -> Result<u8> {
    let mut reports = Vec::new();
    let mut code = exit::OK;
    let state = dry_run_state(&cfg.settings).await;
    for job in jobs {
        match &job.kind {
            JobKind::Push(push) => {
                let r = crate::pipeline::dry_run::dry_run(
                    &cfg.settings,
                    job,
                    push,
                    args.limit,
                    state.as_ref(),
                )
                .await
                .map_err(|e| anyhow!(e))?;
                if r.rejected > 0 {
                    code = exit::most_severe(code, exit::REJECTED_ROWS);
                }
                if !args.json {
                    say!(
                        "{} (dry run, nothing sent): {} read from {} → {} in {}, {} rejected",
                        r.job,
                        count(r.rows_read, "row"),
                        r.source,
                        count(r.operations, "operation"),
                        count(r.requests, "request"),
                        r.rejected
                    );
                    if r.unchanged > 0 {
                        say!(
                            "  {} unchanged since Customer.io acknowledged them: not sent",
                            count(r.unchanged, "row")
                        );
                    }
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
                        "{} (dry run, nothing written to {}): {}, {} of {} in {}, {}, {}; {}",
                        r.job,
                        r.target,
                        count(s.segments, "segment"),
                        count(s.members, "member"),
                        count(s.membership_segments, "segment"),
                        count(s.membership_pages, "page"),
                        count(s.campaigns, "campaign"),
                        count(s.metric_points, "metric point"),
                        count(s.requests, "App API request"),
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

/// A stand-in for a `${VAR}` that is not set, where only the state is read: reading it needs
/// no credentials, and this value is never sent anywhere.
const UNSET_FOR_STATE: &str = "unset-not-needed-to-read-state";

/// Configuration for commands that only read or tidy the state (`status`, `dead-letters`
/// list and purge): the Customer.io variables may be unset there. Job files that fail to
/// load leave `jobs` as `None` (the state can still be read), with the reason.
struct StateView {
    settings: config::Settings,
    jobs: Result<Vec<JobSpec>, usize>,
}

fn load_for_state(global: &Global) -> Result<StateView> {
    let settings = tolerating_unset(|env| config::load_settings(&global.config, env), true);
    let mut settings = settings.map_err(config::ConfigErrors)?;
    if let Some(url) = &global.state {
        settings.state_url = config::DatabaseUrl::new(url.clone());
    }
    let jobs =
        tolerating_unset(|env| config::load_jobs(&settings, env), false).map_err(|e| e.len());
    Ok(StateView { settings, jobs })
}

/// Loads with the process environment; when the only errors are unset variables (outside
/// `state`, when `spare_state`), loads again with a stand-in for exactly those variables, so
/// `${VAR:-default}` keeps its default.
fn tolerating_unset<T>(
    load: impl Fn(config::EnvLookup<'_>) -> Result<T, Vec<config::ConfigError>>,
    spare_state: bool,
) -> Result<T, Vec<config::ConfigError>> {
    match load(&config::process_env) {
        Err(errors)
            if errors
                .iter()
                .all(|e| e.unset_var.is_some() && !(spare_state && e.key.starts_with("state"))) =>
        {
            let unset: std::collections::BTreeSet<String> =
                errors.into_iter().filter_map(|e| e.unset_var).collect();
            load(&|n: &str| {
                config::process_env(n)
                    .or_else(|| unset.contains(n).then(|| UNSET_FOR_STATE.to_string()))
            })
        }
        other => other,
    }
}

async fn open_state(settings: &config::Settings) -> Result<StateStore> {
    StateStore::open_with(&settings.state_url, settings.state_connect_timeout)
        .await
        .map_err(|e| anyhow!(chain(&e)))
        .context("opening the state database")
}

async fn status(global: &Global, json: bool, limit: i64, job: Option<String>) -> Result<u8> {
    let view = load_for_state(global)?;
    let state = open_state(&view.settings).await?;
    let runs = state.runs(job.as_deref(), limit).await?;
    let checkpoints: Vec<_> = state
        .checkpoints()
        .await?
        .into_iter()
        .filter(|c| job.as_ref().is_none_or(|j| &c.job == j))
        .collect();
    let known: Option<std::collections::BTreeSet<String>> = view
        .jobs
        .as_ref()
        .ok()
        .map(|jobs| jobs.iter().map(|j| j.name.clone()).collect());
    let now = chrono::Utc::now();
    let schedules: Vec<output::ScheduleLine> = view
        .jobs
        .as_ref()
        .map(|jobs| jobs.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|j| job.as_ref().is_none_or(|name| &j.name == name))
        .filter_map(|j| {
            let schedule = j.schedule.clone()?;
            Some(output::ScheduleLine {
                next_run: crate::schedule::next_run(&schedule, j.timezone, now),
                job: j.name.clone(),
                schedule,
            })
        })
        .collect();
    let mut job_lines = Vec::new();
    for j in view
        .jobs
        .as_ref()
        .map(|jobs| jobs.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|j| job.as_ref().is_none_or(|name| &j.name == name))
    {
        let history = state
            .runs(Some(&j.name), crate::runner::HEALTH_HISTORY)
            .await?;
        let (last_success, consecutive_failures) = crate::runner::job_health(&history);
        job_lines.push(output::JobLine {
            job: j.name.clone(),
            next_run: j
                .schedule
                .as_ref()
                .and_then(|s| crate::schedule::next_run(s, j.timezone, now)),
            schedule: j.schedule.clone(),
            last_success_ms: last_success.map(|s| (s * 1000.0) as i64),
            consecutive_failures,
            dead_letters: state.count_dead_letters(&j.name).await?,
            last_outcome: history.first().map(|r| r.outcome.clone()),
        });
    }
    // Documented: `status` is a monitoring check, failing while a job's last run failed.
    let code = if job_lines.iter().any(output::JobLine::failing) {
        exit::FAILED
    } else {
        exit::OK
    };
    let view_out = output::StatusView {
        jobs: &job_lines,
        runs: &runs,
        checkpoints: &checkpoints,
        schedules: &schedules,
        known_jobs: known.as_ref(),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&view_out.to_json())?);
        return Ok(code);
    }
    view_out.print_text();
    if let Err(n) = &view.jobs {
        say!(
            "({} in the job files, so schedules are not shown; `cio-sync validate` lists them)",
            problems_found(*n)
        );
    }
    Ok(code)
}

/// `runs JOB`: the job's history, newest first.
async fn runs(global: &Global, job: &str, limit: i64, json: bool) -> Result<u8> {
    let view = load_for_state(global)?;
    let state = open_state(&view.settings).await?;
    let runs = state.runs(Some(job), limit).await?;
    let in_files = view
        .jobs
        .as_ref()
        .map_or(true, |jobs| jobs.iter().any(|j| j.name == job));
    if !in_files && runs.is_empty() {
        return Err(usage(format!(
            "no job named `{job}` in {} and no runs of one",
            view.settings.jobs_dir.display()
        )));
    }
    if json {
        let list: Vec<serde_json::Value> = runs.iter().map(output::run_json).collect();
        say!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        output::print_runs(job, &runs);
    }
    Ok(exit::OK)
}

/// `backfill JOB --from --to`: checks the window, the job and `--rate`, asks about a recent
/// window, then runs the job in backfill mode (its own checkpoint, resumable).
async fn backfill(global: &Global, args: BackfillArgs) -> Result<u8> {
    use crate::pipeline::backfill as bf;
    let cfg = load(global)?;
    let job = cfg.job(&args.job).ok_or_else(|| {
        usage(format!(
            "no job named `{}` in {} (jobs: {})",
            args.job,
            cfg.settings.jobs_dir.display(),
            job_names(&cfg)
        ))
    })?;
    let bad = |e: bf::BackfillError| usage(format!("job `{}`: {e}", job.name));
    let from = bf::parse_date("--from", &args.from).map_err(bad)?;
    let to = bf::parse_date("--to", &args.to).map_err(bad)?;
    let window = bf::BackfillWindow::new(from, to).map_err(bad)?;
    bf::backfillable(job).map_err(bad)?;
    let settings = match args.rate {
        Some(rate) => bf::with_rate(&cfg.settings, job, rate).map_err(bad)?,
        None => cfg.settings.clone(),
    };
    if window.is_recent(chrono::Utc::now()) && !args.yes && !confirm_recent(&window)? {
        eprintln!("cio-sync: backfill of `{}` not started", job.name);
        return Ok(exit::CONFIG);
    }
    let runner = Runner::new(settings)
        .await
        .map_err(|e| anyhow!(chain(&e)))?
        .with_progress(progress::sink(global.log_format == LogFormat::Json));
    let signals = crate::shutdown::listen();
    let stop = StopSignal::from_signals(&signals, cfg.settings.grace);
    tracing::info!(job = %job.name, scope = %window.scope(), "Backfill starting.");
    let report = match runner.run(job, RunMode::Backfill(window), stop).await {
        Ok(report) => report,
        Err(RunnerError::Busy { job, holder }) => {
            eprintln!("cio-sync: job `{job}` is already running ({holder}); skipped");
            return Ok(exit::BUSY);
        }
        Err(e) => {
            eprintln!("cio-sync: {}", chain(&e));
            return Ok(exit::FAILED);
        }
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(outcome_code(report.outcome))
}

/// The 72-hour rule: on a terminal, warn and ask; elsewhere refuse (nobody can answer).
fn confirm_recent(window: &crate::pipeline::backfill::BackfillWindow) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    let warning = format!(
        "warning: the window reaches into the last 72 hours (it ends at {}): Customer.io can still trigger campaigns on events this recent",
        window.to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "{warning}; not started: no terminal to ask on, so pass --yes to backfill it anyway, or end the window earlier with --to"
        )));
    }
    eprint!("cio-sync: {warning}. Backfill anyway? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// A job named on the command line must be one of the job files, or have leftovers in the
/// state (a removed job's dead letters can still be listed and purged).
async fn known_job(view: &StateView, state: &StateStore, name: &str) -> Result<()> {
    let in_files = match &view.jobs {
        Ok(jobs) => jobs.iter().any(|j| j.name == name),
        // The job files did not load: do not call a name unknown.
        Err(_) => true,
    };
    if in_files || state.count_dead_letters(name).await? > 0 {
        return Ok(());
    }
    let names = match &view.jobs {
        Ok(jobs) => names_of(jobs.iter().map(|j| j.name.as_str())),
        Err(_) => String::new(),
    };
    Err(usage(format!(
        "no job named `{name}` in {} and no dead letters of one (jobs: {names})",
        view.settings.jobs_dir.display()
    )))
}

async fn dead_letters(global: &Global, args: DeadLetterArgs) -> Result<u8> {
    match args.action {
        Some(DeadLetterAction::Purge { job }) => {
            let view = load_for_state(global)?;
            let state = open_state(&view.settings).await?;
            known_job(&view, &state, &job).await?;
            let n = state.delete_dead_letters(&job, None).await?;
            say!("{job}: purged {}", count(n as u64, "dead letter"));
            Ok(exit::OK)
        }
        Some(DeadLetterAction::Retry { job: name }) => retry(global, &name).await,
        None => {
            let job = args.job.ok_or_else(|| {
                usage("name a job: cio-sync dead-letters JOB (or `retry JOB`, `purge JOB`)".into())
            })?;
            let view = load_for_state(global)?;
            let state = open_state(&view.settings).await?;
            known_job(&view, &state, &job).await?;
            let letters = state.dead_letters(&job, args.limit).await?;
            if args.json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&output::dead_letters_json(&letters))?
                );
            } else {
                let total = state.count_dead_letters(&job).await?;
                output::print_dead_letters(&job, &letters, total);
            }
            Ok(exit::OK)
        }
    }
}

/// `dead-letters retry JOB`. Nothing to retry is not a run: nothing is recorded and it exits
/// 0. A job another process runs is skipped (exit 4), like `run`.
async fn retry(global: &Global, name: &str) -> Result<u8> {
    let cfg = load(global)?;
    let job = cfg.job(name).ok_or_else(|| {
        usage(format!(
            "no job named `{name}` in {} (jobs: {})",
            cfg.settings.jobs_dir.display(),
            job_names(&cfg)
        ))
    })?;
    let runner = Runner::new(cfg.settings.clone())
        .await
        .map_err(|e| anyhow!(chain(&e)))?;
    if runner.state.count_dead_letters(name).await? == 0 {
        say!("{name}: no dead letters to retry");
        return Ok(exit::OK);
    }
    let signals = crate::shutdown::listen();
    let stop = StopSignal::from_signals(&signals, cfg.settings.grace);
    let report = match runner.run(job, RunMode::RetryDeadLetters, stop).await {
        Ok(report) => report,
        Err(RunnerError::Busy { job, holder }) => {
            eprintln!("cio-sync: job `{job}` is already running ({holder}); skipped");
            return Ok(exit::BUSY);
        }
        Err(e) => return Err(anyhow!(chain(&e))),
    };
    let left = runner.state.count_dead_letters(name).await?;
    print_report(&report);
    say!("  {} left", count(left as u64, "dead letter"));
    Ok(match outcome_code(report.outcome) {
        exit::OK if left > 0 => exit::REJECTED_ROWS,
        code => code,
    })
}

async fn simulate(
    listen: std::net::SocketAddr,
    rate_limit_per_sec: Option<u32>,
    count_only: bool,
) -> Result<u8> {
    let config = crate::simulator::SimConfig::default();
    let (site, track, app) = (
        config.site_id.clone(),
        config.track_api_key.clone(),
        config.app_api_key.clone(),
    );
    let sim = crate::simulator::Simulator::start_on(listen, config)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    sim.record_operations(!count_only);
    if rate_limit_per_sec.is_some() {
        sim.set_faults(crate::simulator::Faults {
            rate_limit_per_sec,
            ..Default::default()
        });
    }
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
    let runner = Runner::new(cfg.settings.clone())
        .await
        .map_err(|e| anyhow!(chain(&e)))?;
    let signals = crate::shutdown::listen();
    if let Err(e) = runner.load_job_health(&cfg.jobs).await {
        tracing::warn!(error = %e, "Could not read the run history; job health metrics start empty.");
    }
    let liveness = crate::observe::Liveness::ticked_every(crate::schedule::LIVENESS_STALE_AFTER);
    let http = HttpListener::start(&cfg.settings, &runner, liveness.clone()).await?;
    let (path, state) = (global.config.clone(), global.state.clone());
    // A reload reads the same files the same way as this start, `--state` included.
    let loader: crate::schedule::Loader = Box::new(move || {
        let mut cfg = config::load(&path, &config::process_env)?;
        if let Some(url) = &state {
            cfg.settings.state_url = config::DatabaseUrl::new(url.clone());
        }
        Ok(cfg)
    });
    let hooks = WebhookListener::start(&cfg.settings, &runner, signals.stop.clone()).await?;
    let result = crate::schedule::run_daemon(runner, cfg.jobs, signals, loader, liveness).await;
    hooks.stop().await;
    http.stop().await;
    result?;
    Ok(exit::OK)
}

/// The `/metrics`, `/healthz` and `/readyz` listener of `daemon` and `run`, when `http.listen`
/// is set. It outlives the runs (a last scrape sees their final counts) and stops after them.
struct HttpListener(
    Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
);

impl HttpListener {
    async fn start(
        settings: &config::Settings,
        runner: &Runner,
        liveness: crate::observe::Liveness,
    ) -> Result<Self> {
        let Some(addr) = settings.http_listen else {
            return Ok(Self(None));
        };
        let listener = crate::observe::bind(addr)
            .await
            .map_err(|e| anyhow!(chain(&e)))?;
        let endpoints = crate::observe::Endpoints {
            metrics: crate::observe::global(),
            liveness,
            ready: runner.ready_check(),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(crate::observe::serve(
            listener,
            endpoints,
            stop.clone().cancelled_owned(),
        ));
        let task = tokio::spawn(async move {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "The metrics listener stopped."),
                Err(e) => tracing::error!(error = %e, "The metrics listener panicked."),
            }
        });
        Ok(Self(Some((stop, task))))
    }

    async fn stop(self) {
        if let Some((stop, task)) = self.0 {
            stop.cancel();
            // The task logs its own failure; a join error here adds nothing.
            let _ = task.await;
        }
    }
}

/// The reporting-webhook receiver of `daemon`, when `webhooks:` is set. It stops on the first
/// stop signal: it accepts no new connection, answers the requests in flight once their events
/// are committed, and the daemon waits for that before it exits.
struct WebhookListener(Option<crate::webhooks::Receiver>);

impl WebhookListener {
    async fn start(
        settings: &config::Settings,
        runner: &Runner,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Self> {
        let Some(w) = &settings.webhooks else {
            return Ok(Self(None));
        };
        let state = &runner.state;
        let store =
            crate::webhooks::open_store(w, state.pool(), state.backend(), state.url().masked())
                .await
                .map_err(|e| anyhow!(chain(&e)))?;
        let receiver = crate::webhooks::start(w, store, stop.cancelled_owned())
            .await
            .map_err(|e| anyhow!(chain(&e)))?;
        Ok(Self(Some(receiver)))
    }

    async fn stop(self) {
        if let Some(r) = self.0 {
            match r.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "The webhook listener stopped."),
                Err(e) => tracing::error!(error = %e, "The webhook listener panicked."),
            }
        }
    }
}

async fn webhooks(global: &Global, action: WebhooksAction) -> Result<u8> {
    use crate::app_api::{AppClient, Registered, ReportingWebhookSpec};
    let cfg = load(global)?;
    let gate = std::sync::Arc::new(crate::http::RateGate::per_second(
        cfg.settings.app.rate_limit_per_sec,
    ));
    let app = AppClient::from_settings(&cfg.settings, gate).map_err(|e| anyhow!(chain(&e)))?;
    let counters = std::sync::Arc::new(crate::http::RunCounters::default());
    let cancel = crate::shutdown::listen().stop;
    match action {
        WebhooksAction::Register {
            url,
            events,
            name,
            with_content,
            full_resolution,
            disabled,
        } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(usage(format!(
                    "--url `{url}` is not an http(s) URL: give the public address Customer.io posts to, e.g. https://hooks.example.com/cio/webhook"
                )));
            }
            let events: Vec<String> = events
                .into_iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
            if events.is_empty() {
                return Err(usage(
                    "--events names no event: list them, e.g. --events email_sent,email_opened"
                        .into(),
                ));
            }
            let spec = ReportingWebhookSpec {
                name,
                endpoint: url,
                events,
                disabled,
                full_resolution,
                with_content,
            };
            let (how, hook) = app
                .register_reporting_webhook(&spec, &counters, &cancel)
                .await
                .map_err(|e| anyhow!(chain(&e)))?;
            let verb = match how {
                Registered::Created => "Created",
                Registered::Updated => "Updated",
            };
            say!(
                "{verb} reporting webhook {} → {} ({})",
                hook.id,
                hook.endpoint,
                hook.events.join(",")
            );
            if cfg.settings.webhooks.is_none() {
                say!(
                    "  set `webhooks.signing_key` in config.yaml to the webhook's signing key (Customer.io → Reporting Webhooks) before starting the daemon"
                );
            }
        }
        WebhooksAction::List { json } => {
            let hooks = app
                .reporting_webhooks(&counters, &cancel)
                .await
                .map_err(|e| anyhow!(chain(&e)))?;
            if json {
                say!("{}", serde_json::to_string_pretty(&hooks)?);
            } else if hooks.is_empty() {
                say!("No reporting webhooks.");
            } else {
                for h in &hooks {
                    say!(
                        "{}\t{}\t{}\t{}\t{}",
                        h.id,
                        h.name.as_deref().unwrap_or("-"),
                        if h.disabled { "disabled" } else { "enabled" },
                        h.endpoint,
                        h.events.join(",")
                    );
                }
            }
        }
    }
    Ok(exit::OK)
}

async fn post_webhooks(url: String, args: PostWebhookArgs) -> Result<u8> {
    use crate::simulator::webhooks::{RetryRule, Signing, WebhookPoster, sample_events};
    let key = args.signing_key.clone().filter(|k| !k.is_empty()).ok_or_else(|| {
        usage(
            "--post-webhooks needs the signing key: set CIO_WEBHOOK_SIGNING_KEY (or --signing-key) to the receiver's `webhooks.signing_key`"
                .into(),
        )
    })?;
    let poster = WebhookPoster::new(url.clone(), key).map_err(|e| anyhow!(e))?;
    let mut events = sample_events(&args.id_prefix, args.events);
    if args.duplicates {
        events = events.into_iter().flat_map(|e| [e.clone(), e]).collect();
    }
    let signing = match args.signing {
        PostSigning::Valid => None,
        PostSigning::BadSignature => Some(Signing::BadSignature),
        PostSigning::Stale => Some(Signing::Stale { secs: 3600 }),
        PostSigning::Unsigned => Some(Signing::Unsigned),
    };
    let Some(signing) = signing else {
        let rule = RetryRule {
            long_wait: std::time::Duration::from_millis(args.long_wait_ms),
            max_attempts: args.max_attempts,
            ..RetryRule::default()
        };
        let deliveries = poster.deliver(&events, &rule).await;
        let delivered = deliveries.iter().filter(|d| d.delivered).count();
        let retried = deliveries.iter().filter(|d| d.attempts.len() > 1).count();
        say!(
            "Posted {} to {url}: {delivered} answered 2xx ({retried} after retries), {} given up",
            count(deliveries.len() as u64, "event"),
            deliveries.len() - delivered
        );
        for d in deliveries
            .iter()
            .filter(|d| d.attempts.len() > 1 || !d.delivered)
        {
            say!("  {}: attempts answered {:?}", d.event_id, d.attempts);
        }
        return Ok(if delivered == deliveries.len() {
            exit::OK
        } else {
            exit::FAILED
        });
    };
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for e in &events {
        let answer = match poster.post(e.to_string().as_bytes(), signing).await {
            Ok(s) => s.to_string(),
            Err(err) => format!("no answer ({err})"),
        };
        *by_status.entry(answer).or_default() += 1;
    }
    let summary: Vec<String> = by_status
        .iter()
        .map(|(s, n)| format!("{n} × {s}"))
        .collect();
    say!(
        "Posted {} signed {:?} to {url} (each once; Customer.io would retry them): {}",
        count(events.len() as u64, "event"),
        args.signing,
        summary.join(", ")
    );
    Ok(if by_status.keys().all(|s| s.starts_with('4')) {
        exit::OK
    } else {
        exit::FAILED
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            if sub.get_about().is_none() {
                out.push(format!("{path} {} (the command)", sub.get_name()));
            }
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_command_flag_and_argument_has_a_help_line() {
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "cio-sync", &mut missing);
        assert!(missing.is_empty(), "no --help line: {missing:?}");
    }

    #[test]
    fn a_config_error_is_exit_2_and_a_usage_error_too() {
        let config = anyhow::Error::new(config::ConfigErrors(vec![]));
        assert_eq!(exit_code(&config), exit::CONFIG);
        assert_eq!(exit_code(&usage("x".into())), exit::CONFIG);
        assert_eq!(exit_code(&anyhow!("a job failed")), exit::FAILED);
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
