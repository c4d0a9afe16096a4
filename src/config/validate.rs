//! Cross-field rules: raw files → [`Settings`] / [`JobSpec`].
//!
//! Owns: every rule a single serde attribute cannot say (exactly one action, exactly one
//! identifier kind, a parseable cron, sane numbers), and resolving relative paths.
//! Must not: do I/O (paths are resolved, never opened), so `validate` and a real start reject
//! the same mistakes in the same words.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigError;
use super::interpolate::VarUse;
use super::job::*;
use super::raw::{self, FieldSpec, FieldsSpec, IdentifierSection, TimestampSpec};
use super::secret::{ApiUrl, Secret};

/// `state_directory` is `$STATE_DIRECTORY` as systemd sets it from `StateDirectory=`.
pub(super) fn settings(
    file: &Path,
    raw: raw::DaemonFile,
    state_directory: Option<&str>,
) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let state_base = match state_base(state_directory) {
        Ok(dir) => dir.unwrap_or_else(|| base.clone()),
        Err(message) => {
            errors.push(ConfigError::new(file, "state.url", message));
            base.clone()
        }
    };
    let scheme = raw.state.url.scheme();
    if !matches!(scheme.as_str(), "sqlite" | "postgres" | "postgresql") {
        errors.push(ConfigError::new(
            file,
            "state.url",
            format!(
                "unsupported scheme `{scheme}`: use sqlite://path/to/state.db (embedded) or postgres://user@host/db"
            ),
        ));
    }
    let state_url = resolve_sqlite_url(&raw.state.url, &state_base);
    let customerio = customer_io(file, "customerio", raw.customerio, &mut errors);
    let mut workspaces = std::collections::BTreeMap::new();
    for (name, w) in raw.workspaces {
        let key = format!("workspaces.{name}");
        if !valid_workspace_name(&name) {
            errors.push(ConfigError::new(
                file,
                &key,
                "a workspace name is letters, digits, `-` or `_` (e.g. `eu`, `us-marketing`)",
            ));
        }
        for (k, v) in [
            ("track_rate_limit_per_sec", w.track_rate_limit_per_sec),
            ("app_rate_limit_per_sec", w.app_rate_limit_per_sec),
        ] {
            if v == Some(0) {
                errors.push(ConfigError::new(
                    file,
                    format!("{key}.{k}"),
                    "must be greater than 0",
                ));
            }
        }
        let track_rate = w
            .track_rate_limit_per_sec
            .unwrap_or(raw.track.rate_limit_per_sec);
        let app_rate = w
            .app_rate_limit_per_sec
            .unwrap_or(raw.app.rate_limit_per_sec);
        let section = raw::CustomerIoSection {
            region: w.region,
            site_id: w.site_id,
            track_api_key: w.track_api_key,
            app_api_key: w.app_api_key,
            track_url: w.track_url,
            app_url: w.app_url,
        };
        let customerio = customer_io(file, &key, section, &mut errors);
        workspaces.insert(
            name,
            Workspace {
                customerio,
                track_rate_limit_per_sec: track_rate,
                app_rate_limit_per_sec: app_rate,
            },
        );
    }
    let t = raw.track;
    positive(
        &mut errors,
        file,
        "track.rate_limit_per_sec",
        t.rate_limit_per_sec as u64,
    );
    positive(&mut errors, file, "track.concurrency", t.concurrency as u64);
    positive(&mut errors, file, "track.timeout_secs", t.timeout_secs);
    check_batch(&mut errors, file, "track.batch", &t.batch);
    positive(
        &mut errors,
        file,
        "app.rate_limit_per_sec",
        raw.app.rate_limit_per_sec as u64,
    );
    positive(&mut errors, file, "app.timeout_secs", raw.app.timeout_secs);
    positive(
        &mut errors,
        file,
        "retry.max_attempts",
        raw.retry.max_attempts as u64,
    );
    // Bounds that keep waits meaningful and arithmetic on deadlines safe.
    for (key, v, lo, hi) in [
        ("retry.max_attempts", raw.retry.max_attempts as u64, 1, 100),
        ("retry.base_delay_ms", raw.retry.base_delay_ms, 1, 60_000),
        ("retry.max_wait_secs", raw.retry.max_wait_secs, 1, 3600),
        (
            "retry.max_total_wait_secs",
            raw.retry.max_total_wait_secs,
            1,
            7 * 86_400,
        ),
        ("track.timeout_secs", t.timeout_secs, 1, 3600),
        ("app.timeout_secs", raw.app.timeout_secs, 1, 3600),
        ("shutdown.grace_secs", raw.shutdown.grace_secs, 0, 86_400),
        ("track.concurrency", t.concurrency as u64, 1, 256),
        ("daemon.heartbeat_secs", raw.daemon.heartbeat_secs, 1, 3600),
    ] {
        if v < lo || v > hi {
            errors.push(ConfigError::new(
                file,
                key,
                format!("{v} is out of range: use {lo}..={hi}"),
            ));
        }
    }
    let http_listen = match raw.http.listen.as_deref().map(parse_listen).transpose() {
        Ok(addr) => addr,
        Err(message) => {
            errors.push(ConfigError::new(file, "http.listen", message));
            None
        }
    };
    let webhooks = raw
        .webhooks
        .and_then(|w| webhook_settings(file, &state_base, w, http_listen, &mut errors));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        config_file: file.to_path_buf(),
        state_url,
        state_connect_timeout: std::time::Duration::from_secs(
            raw.state.connect_timeout_secs.max(1),
        ),
        customerio,
        jobs_dir: base.join(raw.jobs_dir),
        track: TrackSettings {
            rate_limit_per_sec: t.rate_limit_per_sec,
            concurrency: t.concurrency,
            timeout: Duration::from_secs(t.timeout_secs),
            batch: t.batch.into(),
            transport: t.transport.into(),
        },
        app: AppSettings {
            rate_limit_per_sec: raw.app.rate_limit_per_sec,
            timeout: Duration::from_secs(raw.app.timeout_secs),
        },
        retry: RetrySettings {
            max_attempts: raw.retry.max_attempts,
            base_delay: Duration::from_millis(raw.retry.base_delay_ms),
            max_wait: Duration::from_secs(raw.retry.max_wait_secs),
            max_total_wait: Duration::from_secs(raw.retry.max_total_wait_secs),
        },
        grace: Duration::from_secs(raw.shutdown.grace_secs),
        workspaces,
        heartbeat: Duration::from_secs(raw.daemon.heartbeat_secs),
        http_listen,
        webhooks,
    })
}

/// `webhooks:` → [`WebhookSettings`], every mistake named by its key.
fn webhook_settings(
    file: &Path,
    state_base: &Path,
    w: raw::WebhooksSection,
    http_listen: Option<std::net::SocketAddr>,
    errors: &mut Vec<ConfigError>,
) -> Option<WebhookSettings> {
    let before = errors.len();
    let listen = match parse_listen(&w.listen) {
        Ok(addr) => Some(addr),
        Err(message) => {
            errors.push(ConfigError::new(file, "webhooks.listen", message));
            None
        }
    };
    if listen.is_some() && listen == http_listen {
        errors.push(ConfigError::new(
            file,
            "webhooks.listen",
            "is the same address as `http.listen`: the receiver needs a listener of its own (e.g. \"0.0.0.0:8088\")",
        ));
    }
    if !w.path.starts_with('/') || w.path.contains(['?', '#', ' ']) {
        errors.push(ConfigError::new(
            file,
            "webhooks.path",
            format!(
                "`{}` is not a URL path: use one starting with `/`, e.g. \"/cio/webhook\"",
                w.path
            ),
        ));
    }
    let mut keys = w.signing_keys;
    if w.signing_key.is_some() && !keys.is_empty() {
        errors.push(ConfigError::new(
            file,
            "webhooks.signing_key",
            "set either `signing_key` or `signing_keys`, not both (list every key under `signing_keys` while rotating)",
        ));
    }
    keys.extend(w.signing_key);
    if keys.is_empty() {
        errors.push(ConfigError::new(
            file,
            "webhooks.signing_key",
            "is missing: set it to the signing key of Customer.io's reporting webhook (Data & Integrations → Reporting Webhooks), e.g. `signing_key: ${CIO_WEBHOOK_SIGNING_KEY}`",
        ));
    } else if keys.iter().any(Secret::is_empty) {
        errors.push(ConfigError::new(
            file,
            "webhooks.signing_keys",
            "holds an empty key: check that every ${VAR} it uses is set to the signing key",
        ));
    }
    for (key, v, lo, hi) in [
        ("webhooks.tolerance_secs", w.tolerance_secs, 1, 7 * 86_400),
        (
            "webhooks.max_body_bytes",
            w.max_body_bytes,
            1024,
            256 * 1024 * 1024,
        ),
    ] {
        if v < lo || v > hi {
            errors.push(ConfigError::new(
                file,
                key,
                format!("{v} is out of range: use {lo}..={hi}"),
            ));
        }
    }
    if let Some(url) = &w.database
        && !matches!(url.scheme().as_str(), "sqlite" | "postgres" | "postgresql")
    {
        errors.push(ConfigError::new(
            file,
            "webhooks.database",
            format!("`{}` is not a sqlite:// or postgres:// URL", url.masked()),
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(WebhookSettings {
        listen: listen?,
        path: w.path,
        signing_keys: keys,
        tolerance: Duration::from_secs(w.tolerance_secs),
        max_body_bytes: usize::try_from(w.max_body_bytes).unwrap_or(usize::MAX),
        database: w.database.map(|u| resolve_sqlite_url(&u, state_base)),
    })
}

/// `http.listen`: `IP:PORT` (`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464` to listen on every
/// interface), or a bare port (`9464`, `:9464`), which listens on loopback only: metrics show
/// job names and volumes, so nothing beyond this machine sees them unless asked for.
pub(super) fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    let t = text.trim();
    let port = t.strip_prefix(':').unwrap_or(t);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    t.parse::<std::net::SocketAddr>().map_err(|_| {
        format!(
            "`{t}` is not an IP address with a port or a bare port: use e.g. \"127.0.0.1:9464\" (or \"0.0.0.0:9464\" to listen beyond this machine)"
        )
    })
}

fn valid_workspace_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A `customerio` block (or one of `workspaces:`, under `key`) → its runtime form, the
/// region picking the hosts an override does not replace.
fn customer_io(
    file: &Path,
    key: &str,
    c: raw::CustomerIoSection,
    errors: &mut Vec<ConfigError>,
) -> CustomerIo {
    let (track_host, app_host) = match c.region {
        raw::Region::Us => ("https://track.customer.io", "https://api.customer.io"),
        raw::Region::Eu => ("https://track-eu.customer.io", "https://api-eu.customer.io"),
    };
    for (k, url) in [("track_url", &c.track_url), ("app_url", &c.app_url)] {
        if let Some(u) = url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            errors.push(ConfigError::new(
                file,
                format!("{key}.{k}"),
                format!(
                    "`{}` is not an http(s) URL, e.g. http://127.0.0.1:4010",
                    super::secret::mask_url_password(u)
                ),
            ));
        }
    }
    CustomerIo {
        key: key.to_string(),
        region: c.region.into(),
        site_id: c.site_id,
        track_api_key: c.track_api_key,
        app_api_key: c.app_api_key,
        track_url_overridden: c.track_url.is_some(),
        track_url: ApiUrl::new(c.track_url.unwrap_or_else(|| track_host.to_string())),
        app_url: ApiUrl::new(c.app_url.unwrap_or_else(|| app_host.to_string())),
    }
}

/// A job's `workspace:` must name one of config.yaml's `workspaces:`.
pub(super) fn known_workspaces(settings: &Settings, jobs: &[JobSpec]) -> Vec<ConfigError> {
    jobs.iter()
        .filter_map(|j| {
            let name = j.workspace.as_deref()?;
            if settings.workspaces.contains_key(name) {
                return None;
            }
            let known: Vec<&str> = settings.workspaces.keys().map(String::as_str).collect();
            Some(ConfigError::new(
                &j.file,
                "workspace",
                if known.is_empty() {
                    format!(
                        "`{name}` is not a workspace: config.yaml has no `workspaces:`; add `workspaces: {{ {name}: {{ site_id: ..., track_api_key: ... }} }}` there, or remove `workspace` to use `customerio`"
                    )
                } else {
                    format!(
                        "`{name}` is not a workspace of config.yaml (it has {}); fix the name or add it under `workspaces:`",
                        known.join(", ")
                    )
                },
            ))
        })
        .collect()
}

/// Where a relative SQLite state path is rooted under systemd: the first of
/// `$STATE_DIRECTORY`'s colon-separated paths (one per `StateDirectory=` entry); `None` when it
/// is unset or empty, so the config file's folder is used.
fn state_base(state_directory: Option<&str>) -> Result<Option<PathBuf>, String> {
    let Some(first) = state_directory.and_then(|v| v.split(':').next()) else {
        return Ok(None);
    };
    if first.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(first);
    if dir.is_absolute() {
        Ok(Some(dir))
    } else {
        Err(format!(
            "STATE_DIRECTORY=`{first}` is not an absolute path, so a relative sqlite:// state path has no base: unset it, or let systemd set it from `StateDirectory=`"
        ))
    }
}

/// `sqlite://relative.db` (or `sqlite:relative.db`) is relative to `base`, like every other
/// path: for the state, `$STATE_DIRECTORY` under systemd, else config.yaml's folder; for a
/// source, the job file's folder.
fn resolve_sqlite_url(url: &super::DatabaseUrl, base: &Path) -> super::DatabaseUrl {
    let s = url.expose();
    if let Some(rest) = s
        .strip_prefix("sqlite://")
        .or_else(|| s.strip_prefix("sqlite:"))
        && !rest.starts_with('/')
        && !rest.starts_with(":memory:")
        && !rest.is_empty()
        && !base.as_os_str().is_empty()
    {
        return super::DatabaseUrl::new(format!("sqlite://{}", base.join(rest).display()));
    }
    url.clone()
}

/// Secrets that the jobs need must hold something: `CIO_SITE_ID=` set but empty would
/// otherwise pass every check and fail only against Customer.io. Pure: looks at what was
/// loaded, and names the variable that fed the key when there was one.
pub(super) fn needed_secrets(
    settings: &Settings,
    jobs: &[JobSpec],
    used: &[VarUse],
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let blocks = std::iter::once((None, "customerio".to_string(), &settings.customerio)).chain(
        settings.workspaces.iter().map(|(name, w)| {
            (
                Some(name.as_str()),
                format!("workspaces.{name}"),
                &w.customerio,
            )
        }),
    );
    for (workspace, prefix, c) in blocks {
        let names = |push: bool| -> Vec<&str> {
            jobs.iter()
                .filter(|j| j.workspace.as_deref() == workspace)
                .filter(|j| matches!(j.kind, JobKind::Push(_)) == push)
                .map(|j| j.name.as_str())
                .collect()
        };
        let (pushes, pulls) = (names(true), names(false));
        for (field, value, jobs, what) in [
            ("site_id", &c.site_id, &pushes, "the Site ID"),
            (
                "track_api_key",
                &c.track_api_key,
                &pushes,
                "the Track API key",
            ),
            ("app_api_key", &c.app_api_key, &pulls, "an App API key"),
        ] {
            if jobs.is_empty() || !value.as_ref().is_some_and(Secret::is_empty) {
                continue;
            }
            let key = format!("{prefix}.{field}");
            let needed_by = format!(
                "job{} {} need{} it",
                if jobs.len() == 1 { "" } else { "s" },
                jobs.join(", "),
                if jobs.len() == 1 { "s" } else { "" }
            );
            let message = match used.iter().find(|u| u.key == key && u.empty) {
                Some(u) => format!(
                    "${{{var}}} is set but empty, and {needed_by}: set {var} to {what} from Customer.io's Account settings → API credentials",
                    var = u.var
                ),
                None => format!(
                    "is empty, and {needed_by}: set it to {what} from Customer.io's Account settings → API credentials"
                ),
            };
            errors.push(ConfigError::new(&settings.config_file, key, message));
        }
    }
    errors
}

fn positive(errors: &mut Vec<ConfigError>, file: &Path, key: &str, v: u64) {
    if v == 0 {
        errors.push(ConfigError::new(file, key, "must be greater than 0"));
    }
}

fn check_batch(errors: &mut Vec<ConfigError>, file: &Path, key: &str, b: &raw::BatchSection) {
    positive(
        errors,
        file,
        &format!("{key}.max_items"),
        b.max_items as u64,
    );
    if b.max_bytes < 40_000 || b.max_bytes > 500_000 {
        errors.push(ConfigError::new(
            file,
            format!("{key}.max_bytes"),
            format!(
                "{} is out of range: a v2 batch must hold at least one 32 KB item and stay within Customer.io's 500 KB (use 40000..=500000; default 480000)",
                b.max_bytes
            ),
        ));
    }
}

pub(super) fn job(file: &Path, raw: raw::JobFile) -> Result<JobSpec, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        errors.push(ConfigError::new(
            file,
            "",
            "a job's name is its file name: use letters, digits, `-`, `_` or `.` (e.g. jobs/crm-people.yaml)",
        ));
    }
    if let Some(s) = &raw.schedule
        && let Err(e) = crate::schedule::cron::parse(s)
    {
        errors.push(ConfigError::new(file, "schedule", e));
    }
    for (key, set) in [
        ("timezone", raw.timezone.is_some()),
        ("catch_up", raw.catch_up),
    ] {
        if set && raw.schedule.is_none() {
            errors.push(ConfigError::new(
                file,
                key,
                "only means something with a `schedule`: add one (e.g. schedule: \"0 2 * * *\") or remove it",
            ));
        }
    }
    if let Some(w) = &raw.workspace
        && !valid_workspace_name(w)
    {
        errors.push(ConfigError::new(
            file,
            "workspace",
            "a workspace name is letters, digits, `-` or `_`, as under config.yaml's `workspaces:`",
        ));
    }
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();

    let actions: Vec<&str> = [
        raw.identify.as_ref().map(|_| "identify"),
        raw.track.as_ref().map(|_| "track"),
        raw.delete.as_ref().map(|_| "delete"),
        raw.segment.as_ref().map(|_| "segment"),
        raw.object.as_ref().map(|_| "object"),
        raw.relationship.as_ref().map(|_| "relationship"),
        raw.device.as_ref().map(|_| "device"),
        raw.merge.as_ref().map(|_| "merge"),
        raw.pull.as_ref().map(|_| "pull"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if actions.len() != 1 {
        errors.push(ConfigError::new(
            file,
            "",
            if actions.is_empty() {
                "a job needs one of `identify`, `track`, `delete`, `segment`, `object`, `relationship`, `device`, `merge` or `pull`".to_string()
            } else {
                format!(
                    "a job does one thing, but this one has {}: split it into one job file each",
                    actions.join(", ")
                )
            },
        ));
        return Err(errors);
    }

    let kind = if let Some(pull) = raw.pull {
        if raw.source.is_some() {
            errors.push(ConfigError::new(
                file,
                "source",
                "a `pull` job reads from Customer.io: remove `source`",
            ));
        }
        if !(pull.segments
            || pull.segment_membership.is_some()
            || pull.campaigns
            || pull.campaign_metrics.is_some())
        {
            errors.push(ConfigError::new(
                file,
                "pull",
                "pulls nothing: set at least one of `segments: true`, `segment_membership`, `campaigns: true`, `campaign_metrics`",
            ));
        }
        if pull.page_size == 0 || pull.page_size > 30_000 {
            errors.push(ConfigError::new(
                file,
                "pull.page_size",
                "must be between 1 and 30000 (the API's maximum)",
            ));
        }
        if let Some(m) = &pull.campaign_metrics
            && m.steps > 121
        {
            errors.push(ConfigError::new(
                file,
                "pull.campaign_metrics.steps",
                "at most 121 periods can be asked for",
            ));
        }
        JobKind::Pull(pull.into())
    } else {
        let (change, mirror) = change_and_mirror(file, &raw, &mut errors);
        let source = match raw.source {
            None => {
                errors.push(ConfigError::new(
                    file,
                    "source",
                    "missing: add `source: { csv: { path: data/file.csv } }` or `source: { sql: { url, query } }`",
                ));
                None
            }
            Some(s) => source(file, &base, s, &mut errors),
        };
        let mapping = if let Some(i) = raw.identify {
            identifier(file, "identify.identifier", &i.identifier, &mut errors).map(|identifier| {
                MappingSpec::Identify {
                    identifier,
                    attributes: field_set(
                        file,
                        "identify.attributes",
                        i.attributes,
                        i.empty.into(),
                        &mut errors,
                    ),
                    timestamp: i.timestamp.map(timestamp_column),
                    update_only: i.update_only,
                }
            })
        } else if let Some(t) = raw.track {
            let who = match (&t.identifier, &t.anonymous_id) {
                (Some(id), None) => {
                    identifier(file, "track.identifier", id, &mut errors).map(EventSubject::Person)
                }
                (None, Some(col)) => Some(EventSubject::Anonymous {
                    column: col.clone(),
                }),
                _ => {
                    errors.push(ConfigError::new(
                        file,
                        "track",
                        "set exactly one of `identifier: { id: column }` or `anonymous_id: column`",
                    ));
                    None
                }
            };
            let name = match t.name {
                raw::NameSpec::Fixed(n) => {
                    if n.trim().is_empty() || n.len() > 100 {
                        errors.push(ConfigError::new(
                            file,
                            "track.name",
                            "an event name must be 1 to 100 bytes",
                        ));
                    }
                    EventName::Fixed(n)
                }
                raw::NameSpec::Column(c) => EventName::Column(c.column),
            };
            let key_columns = match t.event_id {
                None => Vec::new(),
                Some(raw::EventKeySpec::Column(c)) => vec![c],
                Some(raw::EventKeySpec::Columns(cs)) => {
                    if cs.is_empty() {
                        errors.push(ConfigError::new(
                            file,
                            "track.event_id",
                            "list at least one column",
                        ));
                    }
                    cs
                }
            };
            who.map(|who| MappingSpec::Track {
                who,
                name,
                event_type: t.event_type.into(),
                timestamp: t.timestamp.map(timestamp_column),
                key_columns,
                data: field_set(file, "track.data", t.data, t.empty.into(), &mut errors),
            })
        } else if let Some(d) = raw.delete {
            identifier(file, "delete.identifier", &d.identifier, &mut errors).map(|identifier| {
                MappingSpec::Delete {
                    identifier,
                    action: d.action.into(),
                }
            })
        } else if let Some(s) = raw.segment {
            no_phone(
                file,
                "segment.identifier",
                &s.identifier,
                "manual segments are changed through v1 `add_customers`/`remove_customers`, whose `id_type` is id, email or cio_id",
                &mut errors,
            );
            identifier(file, "segment.identifier", &s.identifier, &mut errors).map(|identifier| {
                MappingSpec::Segment {
                    segment_id: s.id,
                    identifier,
                    action: s.action.into(),
                }
            })
        } else if let Some(o) = raw.object {
            object_mapping(file, o, &mut errors)
        } else if let Some(r) = raw.relationship {
            relationship_mapping(file, r, &mut errors)
        } else if let Some(d) = raw.device {
            device_mapping(file, d, &mut errors)
        } else if let Some(m) = raw.merge {
            let why = "Customer.io's merge takes id, email or cio_id on each side";
            no_phone(file, "merge.primary", &m.primary, why, &mut errors);
            no_phone(file, "merge.secondary", &m.secondary, why, &mut errors);
            let primary = identifier(file, "merge.primary", &m.primary, &mut errors);
            let secondary = identifier(file, "merge.secondary", &m.secondary, &mut errors);
            match (primary, secondary) {
                (Some(primary), Some(secondary)) => Some(MappingSpec::Merge { primary, secondary }),
                _ => None,
            }
        } else {
            None
        };
        if let Some(b) = &raw.batch {
            check_batch(&mut errors, file, "batch", b);
        }
        if raw.concurrency == Some(0) {
            errors.push(ConfigError::new(
                file,
                "concurrency",
                "must be greater than 0",
            ));
        }
        match (source, mapping) {
            (Some(source), Some(mapping)) => JobKind::Push(Box::new(PushJob {
                source,
                mapping,
                transport: raw.transport.map(Into::into),
                batch: raw.batch.map(Into::into),
                concurrency: raw.concurrency,
                change,
                mirror,
            })),
            _ => return Err(errors),
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(JobSpec {
        name,
        file: file.to_path_buf(),
        schedule: raw.schedule,
        timezone: raw.timezone,
        catch_up: raw.catch_up,
        enabled: raw.enabled,
        workspace: raw.workspace,
        kind,
    })
}

fn source(
    file: &Path,
    base: &Path,
    s: raw::SourceSection,
    errors: &mut Vec<ConfigError>,
) -> Option<SourceSpec> {
    match (s.csv, s.sql) {
        (Some(mut csv), None) => {
            if csv.path.as_os_str().is_empty() {
                errors.push(ConfigError::new(
                    file,
                    "source.csv.path",
                    "must name a file",
                ));
            }
            if !csv.delimiter.is_ascii()
                || !csv.quote.is_ascii()
                || csv.escape.is_some_and(|c| !c.is_ascii())
            {
                errors.push(ConfigError::new(
                    file,
                    "source.csv",
                    "`delimiter`, `quote` and `escape` must be single ASCII characters",
                ));
            }
            csv.path = resolve(base, &csv.path);
            Some(SourceSpec::Csv(csv.into()))
        }
        (None, Some(mut sql)) => {
            sql.url = resolve_sqlite_url(&sql.url, base);
            let scheme = sql.url.scheme();
            if !matches!(
                scheme.as_str(),
                "postgres" | "postgresql" | "mysql" | "mariadb" | "sqlite"
            ) {
                errors.push(ConfigError::new(
                    file,
                    "source.sql.url",
                    format!(
                        "unsupported scheme `{scheme}`: use postgres://, mysql:// or sqlite://"
                    ),
                ));
            }
            if sql.query.trim().is_empty() {
                errors.push(ConfigError::new(
                    file,
                    "source.sql.query",
                    "must not be empty",
                ));
            }
            if sql.batch_rows == 0 {
                errors.push(ConfigError::new(
                    file,
                    "source.sql.batch_rows",
                    "must be greater than 0",
                ));
            }
            Some(SourceSpec::Sql(sql.into()))
        }
        _ => {
            errors.push(ConfigError::new(
                file,
                "source",
                "set exactly one of `csv` or `sql`",
            ));
            None
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn identifier(
    file: &Path,
    key: &str,
    s: &IdentifierSection,
    errors: &mut Vec<ConfigError>,
) -> Option<IdentifierSpec> {
    let set: Vec<IdentifierSpec> = [
        (IdentifierKind::Id, &s.id),
        (IdentifierKind::Email, &s.email),
        (IdentifierKind::CioId, &s.cio_id),
        (IdentifierKind::Phone, &s.phone),
    ]
    .into_iter()
    .filter_map(|(kind, col)| col.clone().map(|column| IdentifierSpec { kind, column }))
    .collect();
    if set.len() == 1 {
        set.into_iter().next()
    } else {
        errors.push(ConfigError::new(
            file,
            key,
            "set exactly one of `id`, `email`, `cio_id` or `phone`, naming the column, e.g. { id: customer_id }",
        ));
        None
    }
}

/// `phone` where Customer.io does not accept it: refused, saying why.
fn no_phone(
    file: &Path,
    key: &str,
    s: &IdentifierSection,
    why: &str,
    errors: &mut Vec<ConfigError>,
) {
    if s.phone.is_some() {
        errors.push(ConfigError::new(
            file,
            format!("{key}.phone"),
            format!("`phone` cannot identify a person here: {why}; use `id`, `email` or `cio_id`"),
        ));
    }
}

fn object_mapping(
    file: &Path,
    o: raw::ObjectSection,
    errors: &mut Vec<ConfigError>,
) -> Option<MappingSpec> {
    let action: ObjectAction = o.action.into();
    let object = match (o.type_id, o.id, o.cio_object_id) {
        (Some(type_id), Some(column), None) => {
            check_type_id(file, "object.type_id", &type_id, errors);
            Some(ObjectIdentSpec::Typed { type_id, column })
        }
        (None, None, Some(column)) => {
            if action == ObjectAction::Delete {
                errors.push(ConfigError::new(
                    file,
                    "object.cio_object_id",
                    "`cio_object_id` identifies objects for updates only (Customer.io's spec); delete by `type_id` and `id`",
                ));
            }
            Some(ObjectIdentSpec::CioObjectId { column })
        }
        _ => {
            errors.push(ConfigError::new(
                file,
                "object",
                "set `type_id` and `id` (the column with the object id), e.g. { type_id: 1, id: account_id }, or `cio_object_id: column` alone",
            ));
            None
        }
    };
    if action == ObjectAction::Delete && o.attributes.is_some() {
        errors.push(ConfigError::new(
            file,
            "object.attributes",
            "a delete sends no attributes: remove `attributes` or use `action: identify`",
        ));
    }
    let attributes = match action {
        ObjectAction::Identify => field_set(
            file,
            "object.attributes",
            o.attributes,
            o.empty.into(),
            errors,
        ),
        ObjectAction::Delete => FieldSet::Explicit(Vec::new()),
    };
    object.map(|object| MappingSpec::Object {
        object,
        attributes,
        action,
    })
}

/// Object type ids are string-formatted integers from 1 (Customer.io's `object_type_id`).
fn check_type_id(file: &Path, key: &str, type_id: &str, errors: &mut Vec<ConfigError>) {
    if !type_id.parse::<u64>().is_ok_and(|n| n >= 1) {
        errors.push(ConfigError::new(
            file,
            key,
            format!(
                "`{type_id}` is not an object type id: Customer.io numbers object types 1, 2, … (Settings › Workspace Settings › Custom Objects)"
            ),
        ));
    }
}

/// Explicit fields or none: relationship and device attributes never default to "every
/// other column".
fn explicit_fields(
    file: &Path,
    key: &str,
    spec: Option<FieldsSpec>,
    empty: EmptyPolicy,
    errors: &mut Vec<ConfigError>,
) -> FieldSet {
    match spec {
        None => FieldSet::Explicit(Vec::new()),
        some => field_set(file, key, some, empty, errors),
    }
}

fn relationship_mapping(
    file: &Path,
    r: raw::RelationshipSection,
    errors: &mut Vec<ConfigError>,
) -> Option<MappingSpec> {
    check_type_id(
        file,
        "relationship.object.type_id",
        &r.object.type_id,
        errors,
    );
    no_phone(
        file,
        "relationship.person",
        &r.person,
        "an object's `cio_relationships` name people by id, email or cio_id",
        errors,
    );
    let action: AddOrDelete = r.action.into();
    if action == AddOrDelete::Delete && r.attributes.is_some() {
        errors.push(ConfigError::new(
            file,
            "relationship.attributes",
            "removing a relationship sends no attributes: remove `attributes` or use `action: add`",
        ));
    }
    let attributes = explicit_fields(
        file,
        "relationship.attributes",
        r.attributes,
        r.empty.into(),
        errors,
    );
    identifier(file, "relationship.person", &r.person, errors).map(|person| {
        MappingSpec::Relationship {
            type_id: r.object.type_id,
            object_column: r.object.id,
            person,
            attributes,
            action,
        }
    })
}

fn device_mapping(
    file: &Path,
    d: raw::DeviceSection,
    errors: &mut Vec<ConfigError>,
) -> Option<MappingSpec> {
    let action: AddOrDelete = d.action.into();
    let platform = d.platform.map(|p| match Platform::parse(&p) {
        Some(fixed) => PlatformSpec::Fixed(fixed),
        None => PlatformSpec::Column(p),
    });
    match action {
        AddOrDelete::Add if platform.is_none() => errors.push(ConfigError::new(
            file,
            "device.platform",
            "missing: adding a device needs `platform: ios`, `platform: android` or `platform: column`",
        )),
        AddOrDelete::Delete
            if platform.is_some() || d.last_used.is_some() || d.attributes.is_some() =>
        {
            errors.push(ConfigError::new(
                file,
                "device",
                "a device delete sends only the token: remove `platform`, `last_used` and `attributes`",
            ))
        }
        _ => {}
    }
    let attributes = explicit_fields(
        file,
        "device.attributes",
        d.attributes,
        d.empty.into(),
        errors,
    );
    if let FieldSet::Explicit(fields) = &attributes
        && fields.iter().any(|f| f.name == "token")
    {
        errors.push(ConfigError::new(
            file,
            "device.attributes.token",
            "the token goes in `device.token` (Customer.io refuses it inside the device attributes)",
        ));
    }
    identifier(file, "device.identifier", &d.identifier, errors).map(|identifier| {
        MappingSpec::Device {
            identifier,
            token: d.token,
            platform,
            last_used: d.last_used.map(timestamp_column),
            attributes,
            action,
        }
    })
}

/// Rules that need both config.yaml and the job: Track v1 has no request for objects,
/// relationships or devices, and no path form for `phone`.
pub(super) fn transport_rules(settings: &Settings, jobs: &[JobSpec]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for job in jobs {
        let JobKind::Push(push) = &job.kind else {
            continue;
        };
        let (transport, from) = match push.transport {
            Some(t) => (t, "the job's `transport: v1`".to_string()),
            None => (
                settings.track.transport,
                format!(
                    "`track.transport: v1` in {}",
                    settings.config_file.display()
                ),
            ),
        };
        if transport != Transport::V1 {
            continue;
        }
        let kind = push.mapping.key();
        if push.mapping.needs_v2() {
            errors.push(ConfigError::new(
                &job.file,
                "transport",
                format!(
                    "`{kind}` jobs need `transport: v2` (Track v1 has no request for them), but {from} applies; set `transport: v2` in this job"
                ),
            ));
        }
        for (key, ident) in push.mapping.person_identifiers() {
            if ident.kind == IdentifierKind::Phone {
                errors.push(ConfigError::new(
                    &job.file,
                    format!("{key}.phone"),
                    format!(
                        "`phone` identifies people only in Track v2, but {from} applies (v1 paths take an id, email or cio_id); set `transport: v2` in this job"
                    ),
                ));
            }
        }
    }
    errors
}

fn timestamp_column(t: TimestampSpec) -> TimestampColumn {
    match t {
        TimestampSpec::Column(column) => TimestampColumn {
            column,
            format: Default::default(),
            timezone: None,
        },
        TimestampSpec::Typed(t) => TimestampColumn {
            column: t.column,
            format: t.format.into(),
            timezone: t.timezone,
        },
    }
}

fn field_set(
    file: &Path,
    key: &str,
    spec: Option<FieldsSpec>,
    empty: EmptyPolicy,
    errors: &mut Vec<ConfigError>,
) -> FieldSet {
    let plain = |name: String| FieldMapping {
        name: name.clone(),
        source: FieldSource::Column(name),
        as_type: Default::default(),
        format: Default::default(),
        timezone: None,
        empty,
    };
    match spec {
        None => FieldSet::AllOtherColumns { empty },
        Some(FieldsSpec::List(cols)) => FieldSet::Explicit(cols.into_iter().map(plain).collect()),
        Some(FieldsSpec::Map(map)) => {
            if map.len() > 300 {
                errors.push(ConfigError::new(
                    file,
                    key,
                    "Customer.io accepts at most 300 attributes a call",
                ));
            }
            let mut fields = Vec::new();
            for (name, spec) in map {
                if name.len() > 150 {
                    errors.push(ConfigError::new(
                        file,
                        format!("{key}.{name}"),
                        "attribute names are at most 150 bytes",
                    ));
                }
                match spec {
                    FieldSpec::Column(column) => fields.push(FieldMapping {
                        name,
                        source: FieldSource::Column(column),
                        as_type: Default::default(),
                        format: Default::default(),
                        timezone: None,
                        empty,
                    }),
                    FieldSpec::Typed(t) => {
                        let source = match (t.column, t.value) {
                            (Some(c), None) => FieldSource::Column(c),
                            (None, Some(v)) => FieldSource::Constant(v),
                            _ => {
                                errors.push(ConfigError::new(
                                    file,
                                    format!("{key}.{name}"),
                                    "set exactly one of `column` or `value`",
                                ));
                                continue;
                            }
                        };
                        fields.push(FieldMapping {
                            name,
                            source,
                            as_type: t.as_type.into(),
                            format: t.format.into(),
                            timezone: t.timezone,
                            empty: t.empty.map(Into::into).unwrap_or(empty),
                        });
                    }
                }
            }
            FieldSet::Explicit(fields)
        }
    }
}

/// `send`, `diff`, `on_missing` / `mirror` and `guard` of a push job.
fn change_and_mirror(
    file: &Path,
    raw: &raw::JobFile,
    errors: &mut Vec<ConfigError>,
) -> (ChangePolicy, Option<MirrorSpec>) {
    use super::job::{ChangePolicy, DiffPolicy, SendPolicy};
    let (kind, send, diff, on_missing) = if let Some(i) = &raw.identify {
        ("identify", i.send, i.diff, i.on_missing.clone())
    } else if let Some(o) = &raw.object {
        ("object", o.send, o.diff, o.on_missing.clone())
    } else if let Some(s) = &raw.segment {
        if s.mirror && s.action == raw::SegmentAction::Remove {
            errors.push(ConfigError::new(
                file,
                "segment.mirror",
                "mirrors the people a job adds: use it with `action: add` (the default)",
            ));
        }
        let remove = s
            .mirror
            .then_some(raw::OnMissingSpec::Word(raw::OnMissingWord::Delete));
        ("segment", None, None, remove)
    } else if let Some(r) = &raw.relationship {
        if r.mirror && r.action == raw::AddOrDelete::Delete {
            errors.push(ConfigError::new(
                file,
                "relationship.mirror",
                "mirrors the pairs a job adds: use it with `action: add` (the default)",
            ));
        }
        let remove = r
            .mirror
            .then_some(raw::OnMissingSpec::Word(raw::OnMissingWord::Delete));
        ("relationship", None, None, remove)
    } else {
        ("", None, None, None)
    };
    let change = ChangePolicy {
        send: match send {
            Some(raw::SendSpec::All) => SendPolicy::All,
            _ => SendPolicy::Changed,
        },
        diff: match diff {
            Some(raw::DiffSpec::Row) => DiffPolicy::Row,
            _ => DiffPolicy::Attributes,
        },
    };
    let mirror_key = match kind {
        "segment" | "relationship" => format!("{kind}.mirror"),
        _ => format!("{kind}.on_missing"),
    };
    let on_missing = match (kind, on_missing) {
        (_, None) | (_, Some(raw::OnMissingSpec::Word(raw::OnMissingWord::Ignore))) => None,
        ("segment" | "relationship", Some(_)) => Some(OnMissing::Remove),
        (_, Some(raw::OnMissingSpec::Word(raw::OnMissingWord::Delete))) => Some(OnMissing::Delete),
        ("object", Some(raw::OnMissingSpec::Word(raw::OnMissingWord::Suppress))) => {
            errors.push(ConfigError::new(
                file,
                "object.on_missing",
                "objects cannot be suppressed: use `delete`, `unset: [attribute, …]` or `ignore`",
            ));
            None
        }
        (_, Some(raw::OnMissingSpec::Word(raw::OnMissingWord::Suppress))) => {
            Some(OnMissing::Suppress)
        }
        (_, Some(raw::OnMissingSpec::Unset(u))) => {
            if u.unset.is_empty() || u.unset.iter().any(|a| a.trim().is_empty()) {
                errors.push(ConfigError::new(
                    file,
                    &mirror_key,
                    "`unset` lists the attributes to clear: give at least one non-empty name",
                ));
            }
            Some(OnMissing::Unset(u.unset))
        }
    };
    if on_missing.is_some()
        && let Some(raw::SourceSection { sql: Some(sql), .. }) = &raw.source
        && sql.cursor.is_some()
    {
        errors.push(ConfigError::new(
            file,
            &mirror_key,
            "an incremental SQL job (`source.sql.cursor`) reads only rows changed since its last run, so it cannot see which rows were deleted: remove the cursor to read the whole table every run, or remove mirror mode",
        ));
    }
    let guard = raw.guard.clone();
    if guard.is_some() && on_missing.is_none() {
        errors.push(ConfigError::new(
            file,
            "guard",
            format!("only limits mirror mode: set `{mirror_key}` or remove `guard`"),
        ));
    }
    let max_missing_share = guard
        .as_ref()
        .and_then(|g| g.max_missing_share)
        .unwrap_or(0.10);
    if !(0.0..=1.0).contains(&max_missing_share) {
        errors.push(ConfigError::new(
            file,
            "guard.max_missing_share",
            "is a share between 0 and 1 (0.10 = refuse when more than 10% of the known identities vanished)",
        ));
    }
    let mirror = on_missing.map(|on_missing| MirrorSpec {
        on_missing,
        max_missing_share,
        min_rows: guard.and_then(|g| g.min_rows).unwrap_or(0),
    });
    (change, mirror)
}
