//! The pre-flight behind `cio-sync validate` (the systemd unit's `ExecStartPre`): the checks
//! that need the file system or the network, after configuration loaded cleanly.
//!
//! Owns: without `--connect`, every CSV exists and its header has every mapped column,
//! SQLite source files exist, the SQLite state location is writable or creatable (asked with
//! access(2), nothing created); with `--connect`, also the state PostgreSQL opens, the Track
//! credentials and region, the App key (when a pull job exists), every object and
//! relationship job's `type_id` against the workspace's object types (`GET /v1/object_types`,
//! when an App key is set) and each SQL query's columns.
//! Every problem of every job is collected, none stops the others.
//! Must not: write anything (no file, folder, table or migration), read more of a CSV than
//! its header, send anything to Customer.io but one cheap read per API, or print (the CLI
//! prints what it returns). Config rules stay in `config/`, which is pure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{
    Config, DatabaseUrl, JobKind, JobSpec, MappingSpec, ObjectIdentSpec, Settings, SourceSpec,
};
use crate::http::{RateGate, RetryPolicy};
use crate::runner::RunnerError;

/// How long `--connect` waits for the state database to answer before calling it
/// unreachable: long enough for a slow network, short enough for `ExecStartPre`.
const STATE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One thing that would make a run fail, named so the user can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PreflightError {
    /// A job's source cannot be opened, or lacks a column its mapping uses.
    #[error("{0}")]
    Source(String),
    /// `source.sql.url` names a SQLite file that is not there (sources are opened read-only).
    #[error(
        "job `{job}` ({file}): `source.sql.url`: the SQLite database {path} does not exist; fix the path (relative paths start at the job file's folder)"
    )]
    SqliteSourceMissing {
        job: String,
        file: PathBuf,
        path: PathBuf,
    },
    /// The SQLite state database could not be created or written by this user.
    #[error(
        "{config}: `state.url`: the SQLite state database {path} cannot be {what}: {reason}; make it writable for the user cio-sync runs as, or point `state.url` elsewhere"
    )]
    StateNotWritable {
        config: PathBuf,
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// The state PostgreSQL refused the connection, or did not answer.
    #[error(
        "{config}: `state.url`: cannot connect to the state database {url}: {reason}; check that the server runs and accepts this user from this machine"
    )]
    StateUnreachable {
        config: PathBuf,
        url: String,
        reason: String,
    },
    /// The Track self-check (`GET /api/v1/accounts/region`) failed.
    #[error("Track API self-check ({url}/api/v1/accounts/region): {reason}")]
    Track { url: String, reason: String },
    /// The App API key check failed.
    #[error("App API check ({url}): {reason}")]
    App { url: String, reason: String },
    /// A job names an object type the workspace does not have (Customer.io would create it).
    #[error(
        "job `{job}` ({file}): `{key}` is {type_id:?}, but the workspace has no such object type (it has: {known}); Customer.io would silently create a new type: use the id shown under Settings › Workspace Settings › Custom Objects"
    )]
    UnknownObjectType {
        job: String,
        file: PathBuf,
        key: &'static str,
        type_id: String,
        known: String,
    },
    /// The object types could not be read.
    #[error("App API object types ({url}/v1/object_types): {reason}")]
    ObjectTypes { url: String, reason: String },
}

/// What passed (to show) and what did not.
#[derive(Debug, Default)]
pub(crate) struct PreflightReport {
    pub passed: Vec<String>,
    pub problems: Vec<PreflightError>,
}

/// The checks that need no network; they read only file metadata and CSV headers.
pub(crate) async fn check_local(cfg: &Config) -> Vec<PreflightError> {
    let mut problems = Vec::new();
    if let Some(p) = state_location(&cfg.settings) {
        problems.push(p);
    }
    for job in &cfg.jobs {
        let JobKind::Push(push) = &job.kind else {
            continue;
        };
        match &push.source {
            SourceSpec::Csv(_) => {
                if let Err(e) = check_columns(job).await {
                    problems.push(PreflightError::Source(e));
                }
            }
            SourceSpec::Sql(sql) => {
                if let Some(path) = sqlite_path(&sql.url, job_folder(job))
                    && !path.exists()
                {
                    problems.push(PreflightError::SqliteSourceMissing {
                        job: job.name.clone(),
                        file: job.file.clone(),
                        path,
                    });
                }
            }
        }
    }
    problems
}

/// `check_local`, then the checks that talk to the state database, Customer.io and the SQL
/// sources.
pub(crate) async fn check_connected(cfg: &Config) -> PreflightReport {
    let mut report = PreflightReport {
        problems: check_local(cfg).await,
        ..Default::default()
    };
    let settings = &cfg.settings;
    if let Some(p) = state_postgres(settings).await {
        report.problems.push(p);
    }
    let cancel = CancellationToken::new();
    // Each workspace the jobs use is checked with its own credentials and hosts.
    let used = |push: bool| -> std::collections::BTreeSet<Option<&str>> {
        cfg.jobs
            .iter()
            .filter(|j| matches!(j.kind, JobKind::Push(_)) == push)
            .map(|j| j.workspace.as_deref())
            .collect()
    };
    for workspace in used(true) {
        let Some(ws) = settings.for_workspace(workspace) else {
            continue; // an unknown `workspace:` is already a config error
        };
        let label = api_label("Track API", workspace);
        let gate = Arc::new(RateGate::per_second(ws.track.rate_limit_per_sec));
        // One attempt: a pre-flight answers now, it does not wait out the retry budget.
        let mut once = ws.clone();
        once.retry.max_attempts = 1;
        match crate::runner::check_region(&once, gate, "validate", &cancel).await {
            Ok(info) => report.passed.push(format!(
                "{label}: credentials accepted; workspace {} in region {}",
                info.environment_id
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "(id not given)".into()),
                info.region
            )),
            Err(e) => report.problems.push(PreflightError::Track {
                url: ws.customerio.track_url.masked(),
                reason: match e {
                    RunnerError::Track { source, .. } => source.to_string(),
                    RunnerError::Job { message, .. } => message,
                    other => other.to_string(),
                },
            }),
        }
    }
    for workspace in used(false) {
        let Some(ws) = settings.for_workspace(workspace) else {
            continue;
        };
        match check_app_key(&ws).await {
            Ok(()) => report
                .passed
                .push(format!("{}: key accepted", api_label("App API", workspace))),
            Err(reason) => report.problems.push(PreflightError::App {
                url: ws.customerio.app_url.masked(),
                reason,
            }),
        }
    }
    check_object_types(cfg, &mut report, &cancel).await;
    for job in &cfg.jobs {
        if let JobKind::Push(push) = &job.kind
            && matches!(push.source, SourceSpec::Sql(_))
            && let Err(e) = check_columns(job).await
        {
            report.problems.push(PreflightError::Source(e));
        }
    }
    report
}

/// `Track API`, or `Track API (workspace eu)` for a named workspace.
fn api_label(api: &str, workspace: Option<&str>) -> String {
    match workspace {
        None => api.to_string(),
        Some(w) => format!("{api} (workspace {w})"),
    }
}

/// The `type_id` of each object or relationship job, with its key.
fn object_type_ids(job: &JobSpec) -> Option<(&'static str, &str)> {
    let JobKind::Push(push) = &job.kind else {
        return None;
    };
    match &push.mapping {
        MappingSpec::Object {
            object: ObjectIdentSpec::Typed { type_id, .. },
            ..
        } => Some(("object.type_id", type_id)),
        MappingSpec::Relationship { type_id, .. } => Some(("relationship.object.type_id", type_id)),
        _ => None,
    }
}

/// Reads each workspace's object types (`GET /v1/object_types`) and refuses every job whose
/// `type_id` is not one of its workspace's. A workspace without an App key is said to be
/// unchecked.
async fn check_object_types(
    cfg: &Config,
    report: &mut PreflightReport,
    cancel: &CancellationToken,
) {
    let jobs: Vec<(&JobSpec, &'static str, &str)> = cfg
        .jobs
        .iter()
        .filter_map(|j| object_type_ids(j).map(|(k, t)| (j, k, t)))
        .collect();
    let mut workspaces: Vec<Option<&str>> =
        jobs.iter().map(|(j, ..)| j.workspace.as_deref()).collect();
    workspaces.sort();
    workspaces.dedup();
    for workspace in workspaces {
        // Validation already refused a job naming a workspace nobody configured.
        let Some(settings) = cfg.settings.for_workspace(workspace) else {
            continue;
        };
        let of_workspace: Vec<_> = jobs
            .iter()
            .filter(|(j, ..)| j.workspace.as_deref() == workspace)
            .copied()
            .collect();
        check_workspace_object_types(&settings, workspace, &of_workspace, report, cancel).await;
    }
}

async fn check_workspace_object_types(
    settings: &Settings,
    workspace: Option<&str>,
    jobs: &[(&JobSpec, &'static str, &str)],
    report: &mut PreflightReport,
    cancel: &CancellationToken,
) {
    let label = workspace
        .map(|w| format!("object types of workspace `{w}`"))
        .unwrap_or_else(|| "object types".into());
    let Some(key) = settings
        .customerio
        .app_api_key
        .clone()
        .filter(|k| !k.is_empty())
    else {
        report.passed.push(format!(
            "{label}: not checked (set the App API key so `validate --connect` can refuse unknown `type_id`s)"
        ));
        return;
    };
    let url = settings.customerio.app_url.masked();
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::from(&settings.retry)
    };
    let client = match crate::app_api::AppClient::new(
        settings.customerio.app_url.expose(),
        key,
        Arc::new(RateGate::per_second(settings.app.rate_limit_per_sec)),
        once,
        settings.app.timeout,
    ) {
        Ok(c) => c,
        Err(e) => {
            report.problems.push(PreflightError::ObjectTypes {
                url,
                reason: e.to_string(),
            });
            return;
        }
    };
    let counters = Arc::new(crate::http::RunCounters::default());
    let types = match client.object_types(&counters, cancel).await {
        Ok(t) => t,
        Err(e) => {
            report.problems.push(PreflightError::ObjectTypes {
                url,
                reason: e.to_string(),
            });
            return;
        }
    };
    let known: Vec<String> = types
        .iter()
        .filter_map(|t| {
            t.id.as_ref().map(|id| match &t.name {
                Some(n) => format!("{id} ({n})"),
                None => id.clone(),
            })
        })
        .collect();
    let mut all_known = true;
    for (job, key, type_id) in jobs {
        if !types.iter().any(|t| t.id.as_deref() == Some(*type_id)) {
            all_known = false;
            report.problems.push(PreflightError::UnknownObjectType {
                job: job.name.clone(),
                file: job.file.clone(),
                key,
                type_id: type_id.to_string(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    if all_known {
        report.passed.push(format!(
            "{label}: every job's type_id exists ({})",
            known.join(", ")
        ));
    }
}

/// One App API read (`GET /v1/segments`), not retried: a refused key answers at once, and a
/// pre-flight must not wait out the retry budget.
async fn check_app_key(settings: &Settings) -> Result<(), String> {
    let key = settings
        .customerio
        .app_api_key
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| crate::app_api::AppError::MissingKey.to_string())?;
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::from(&settings.retry)
    };
    let client = crate::app_api::AppClient::new(
        settings.customerio.app_url.expose(),
        key,
        Arc::new(RateGate::per_second(settings.app.rate_limit_per_sec)),
        once,
        settings.app.timeout,
    )
    .map_err(|e| e.to_string())?;
    // One unretried request: a pre-flight answers at once, and says whether the key was
    // refused, the host unreachable or the region wrong.
    client.check_credentials().await.map_err(|e| e.to_string())
}

/// The job's source has every column its mapping uses (a CSV header, an SQL probe).
pub(crate) async fn check_columns(job: &JobSpec) -> Result<(), String> {
    let JobKind::Push(push) = &job.kind else {
        return Ok(());
    };
    let columns = crate::source::check::columns(&push.source, &job.name).await?;
    crate::mapping::Mapper::new(&job.name, &push.mapping, &columns)
        .map_err(|e| format!("job `{}` ({}): {e}", job.name, job.file.display()))?;
    Ok(())
}

fn job_folder(job: &JobSpec) -> &Path {
    job.file.parent().unwrap_or(Path::new("."))
}

/// The file of a `sqlite:` URL, relative paths resolved against `base`; `None` for other
/// schemes and in-memory databases.
fn sqlite_path(url: &DatabaseUrl, base: &Path) -> Option<PathBuf> {
    if url.scheme() != "sqlite" {
        return None;
    }
    let s = url.expose();
    let rest = s
        .strip_prefix("sqlite://")
        .or_else(|| s.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || s.contains("mode=memory") {
        return None;
    }
    let path = Path::new(path);
    Some(if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    })
}

/// The SQLite state file must be readable and writable, and its folder writable (SQLite puts
/// its journal beside it); a file not there yet needs its nearest existing folder writable,
/// since the first run creates what is missing.
fn state_location(settings: &Settings) -> Option<PreflightError> {
    use rustix::fs::{Access, access};
    let path = sqlite_path(&settings.state_url, Path::new("."))?;
    let fail = |what: &'static str, reason: String| {
        Some(PreflightError::StateNotWritable {
            config: settings.config_file.clone(),
            path: path.clone(),
            what,
            reason,
        })
    };
    if path.exists() {
        if path.is_dir() {
            return fail("opened", "it is a folder".into());
        }
        if let Err(e) = access(&path, Access::READ_OK | Access::WRITE_OK) {
            return fail("written", format!("{}: {e}", path.display()));
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Err(e) = access(dir, Access::WRITE_OK | Access::EXEC_OK) {
            return fail(
                "written",
                format!("its folder {} is not writable: {e}", dir.display()),
            );
        }
        return None;
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if d.exists() {
            if !d.is_dir() {
                return fail("created", format!("{} is not a folder", d.display()));
            }
            return match access(d, Access::WRITE_OK | Access::EXEC_OK) {
                Ok(()) => None,
                Err(e) => fail(
                    "created",
                    format!("the folder {} is not writable: {e}", d.display()),
                ),
            };
        }
        dir = d.parent();
    }
    fail("created", "no folder on its path exists".into())
}

/// Opens one connection to a PostgreSQL state database and closes it: no pool, no
/// migration, so nothing is written and a refusal is reported at once with its cause.
async fn state_postgres(settings: &Settings) -> Option<PreflightError> {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let url = &settings.state_url;
    if !matches!(url.scheme().as_str(), "postgres" | "postgresql") {
        return None;
    }
    let fail = |reason: String| {
        Some(PreflightError::StateUnreachable {
            config: settings.config_file.clone(),
            url: url.masked(),
            reason,
        })
    };
    let opts = match sqlx::postgres::PgConnectOptions::from_str(url.expose()) {
        Ok(o) => o,
        Err(e) => return fail(format!("the URL cannot be used: {}", root_cause(&e))),
    };
    let at = format!("{}:{}", opts.get_host(), opts.get_port());
    match tokio::time::timeout(STATE_CONNECT_TIMEOUT, opts.connect()).await {
        Ok(Ok(conn)) => {
            let _closed = conn.close().await;
            None
        }
        Ok(Err(e)) => fail(format!("{at}: {}", root_cause(&e))),
        Err(_) => fail(format!(
            "{at}: no answer within {} s",
            STATE_CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The innermost cause of an error, which is what the user can act on (`connection refused`,
/// `password authentication failed …`), without the layers around it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            _ => io.to_string(),
        };
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_resolve_against_the_base_and_skip_memory_and_other_schemes() {
        let base = Path::new("/etc/cio-sync/jobs");
        assert_eq!(
            sqlite_path(&DatabaseUrl::new("sqlite://data/x.db?mode=ro"), base),
            Some(PathBuf::from("/etc/cio-sync/jobs/data/x.db"))
        );
        assert_eq!(
            sqlite_path(&DatabaseUrl::new("sqlite:///var/x.db"), base),
            Some(PathBuf::from("/var/x.db"))
        );
        assert_eq!(
            sqlite_path(&DatabaseUrl::new("sqlite::memory:"), base),
            None
        );
        assert_eq!(
            sqlite_path(&DatabaseUrl::new("postgres://u@h/db"), base),
            None
        );
    }

    #[test]
    fn the_root_cause_of_a_refused_connection_is_said_plainly() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = sqlx::Error::Io(io);
        assert_eq!(root_cause(&e), "connection refused");
    }
}
