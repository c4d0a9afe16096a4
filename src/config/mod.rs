//! Loading configuration: read → YAML → `${VAR}` interpolation → `CIO_SYNC__…` overrides
//! (config.yaml only) → strict typed parse → validate → runtime types.
//!
//! Owns: finding and reading `config.yaml`, `jobs/*.yaml` (and the systemd credentials a
//! `${VAR}` falls back to), and turning them into [`Settings`] and [`JobSpec`]s, collecting
//! every error of every file with its file and key.
//! Must not: write anything (loading never creates files or folders), open network or
//! database connections, or read a data source.

mod convert;
pub mod interpolate;
pub mod job;
mod overrides;
mod raw;
pub mod secret;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use job::*;
pub use secret::{ApiUrl, DatabaseUrl, Secret};

/// A configuration mistake, always naming the file and, where there is one, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path (`source.csv.path`), empty when the error is about the whole file.
    pub key: String,
    pub message: String,
    /// Set when the error is that this `${VAR}` is not set, so callers that can do without
    /// a variable (reading the state needs no credentials) decide by type, not by text.
    pub unset_var: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
            unset_var: None,
        }
    }
}

/// Every error found while loading; `validate` prints them all, a run refuses to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the configuration",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The environment used for `${VAR}`; tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, then systemd credentials: a `${NAME}` the environment does not
/// set is read from `$CREDENTIALS_DIRECTORY/NAME` (the unit's `LoadCredential=NAME:…`).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().or_else(|| {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        credential(Path::new(&dir), name)
    })
}

/// Credential `name` in `dir`, without one trailing newline (`echo key > file` adds it).
/// `None` when it is missing, unreadable or not UTF-8 (the `${NAME}` is then reported as not
/// set), or when `name` is not a plain file name.
pub fn credential(dir: &Path, name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return None;
    }
    let mut value = std::fs::read_to_string(dir.join(name)).ok()?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Some(value)
}

/// The largest configuration file read, and the most its values may hold once `${VAR}` is
/// expanded: far above any real config, far below what would hurt the process.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// The prefix of environment overrides of `config.yaml`: `CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC`
/// sets `track.rate_limit_per_sec`. Control variables (`CIO_SYNC_CONFIG`, `CIO_SYNC_STATE`)
/// have one underscore and stay outside it.
pub const OVERRIDE_PREFIX: &str = "CIO_SYNC__";

/// Every `CIO_SYNC__…` variable of this process, sorted by name, for [`load_layered`].
/// A value that is not UTF-8 is kept as `None` and refused by name.
pub fn process_overrides() -> Vec<(String, Option<String>)> {
    let mut vars: Vec<(String, Option<String>)> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            k.starts_with(OVERRIDE_PREFIX)
                .then(|| (k, v.into_string().ok()))
        })
        .collect();
    vars.sort();
    vars
}

/// `config.yaml` and every job it points at, validated.
#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    pub jobs: Vec<JobSpec>,
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// Loads `config.yaml` (with this process's `CIO_SYNC__…` overrides) and all jobs, returning
/// every problem found in every file (not just the first file's).
pub fn load(config_path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
    load_layered(config_path, env, &process_overrides())
}

/// [`load`] with the overrides given: defaults, then the file, then `overrides` last.
pub fn load_layered(
    config_path: &Path,
    env: EnvLookup<'_>,
    overrides: &[(String, Option<String>)],
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let loaded = read_settings(config_path, env, overrides);
    // A broken config.yaml must not hide the job files' problems: list the jobs from the
    // folder it names (or the default), and stay quiet about that folder only when the
    // settings themselves did not load.
    let (jobs_dir, settings) = match loaded.settings {
        Ok(s) => (s.jobs_dir.clone(), Some(s)),
        Err(mut e) => {
            errors.append(&mut e);
            (loaded.jobs_dir, None)
        }
    };
    let jobs = match list_jobs(config_path, &jobs_dir) {
        Ok(files) => {
            let mut jobs = Vec::new();
            for file in files {
                match load_job(&file, env) {
                    Ok(job) => jobs.push(job),
                    Err(mut e) => errors.append(&mut e),
                }
            }
            jobs
        }
        Err(e) => {
            if settings.is_some() {
                errors.push(e);
            }
            Vec::new()
        }
    };
    if let Some(settings) = &settings {
        errors.extend(validate::needed_secrets(settings, &jobs, &loaded.used));
        errors.extend(validate::known_workspaces(settings, &jobs));
        errors.extend(validate::transport_rules(settings, &jobs));
    }
    match settings {
        Some(settings) if errors.is_empty() => Ok(Config { settings, jobs }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// What reading `config.yaml` gave, even when it failed: where the jobs should be.
struct LoadedSettings {
    settings: Result<Settings, Vec<ConfigError>>,
    /// The jobs folder as named by the file (or the default), resolved against it.
    jobs_dir: PathBuf,
    /// The `${VAR}`s the file used, for naming an empty secret's variable.
    used: Vec<interpolate::VarUse>,
}

fn read_settings(
    path: &Path,
    env: EnvLookup<'_>,
    overrides: &[(String, Option<String>)],
) -> LoadedSettings {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut loaded = LoadedSettings {
        settings: Err(Vec::new()),
        jobs_dir: base.join("jobs"),
        used: Vec::new(),
    };
    let text = match read_file(path) {
        Ok(t) => t,
        Err(e) => {
            loaded.settings = Err(vec![e]);
            return loaded;
        }
    };
    let mut tree = match tree_of(path, &text, env) {
        Ok((tree, used)) => {
            loaded.used = used;
            tree
        }
        Err(e) => {
            loaded.settings = Err(e);
            return loaded;
        }
    };
    let parsed = overrides::deserialize::<raw::DaemonFile>(path, &mut tree, overrides);
    if let Some(dir) = tree.get("jobs_dir").and_then(|d| d.as_str()) {
        loaded.jobs_dir = base.join(dir);
    }
    let state_directory = env("STATE_DIRECTORY");
    loaded.settings =
        parsed.and_then(|raw| validate::settings(path, raw, state_directory.as_deref()));
    loaded
}

/// Reads and validates `config.yaml` alone (with this process's `CIO_SYNC__…` overrides).
pub fn load_settings(path: &Path, env: EnvLookup<'_>) -> Result<Settings, Vec<ConfigError>> {
    read_settings(path, env, &process_overrides()).settings
}

/// Reads every `*.yaml` / `*.yml` in the jobs folder, sorted by name.
pub fn load_jobs(
    settings: &Settings,
    env: EnvLookup<'_>,
) -> Result<Vec<JobSpec>, Vec<ConfigError>> {
    let files = list_jobs(&settings.config_file, &settings.jobs_dir).map_err(|e| vec![e])?;
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_job(&file, env) {
            Ok(job) => jobs.push(job),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

fn list_jobs(config_file: &Path, dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigError::new(
            config_file,
            "jobs_dir",
            format!(
                "cannot read the jobs folder {}: {e}; create it or fix `jobs_dir`",
                dir.display()
            ),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads and validates one job file; its name is the file stem.
pub fn load_job(path: &Path, env: EnvLookup<'_>) -> Result<JobSpec, Vec<ConfigError>> {
    let text = read_file(path).map_err(|e| vec![e])?;
    let raw: raw::JobFile = parse_str(path, &text, env)?;
    validate::job(path, raw)
}

/// Reads a file of at most [`MAX_FILE_BYTES`].
fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let unreadable =
        |e: std::io::Error| ConfigError::new(path, "", format!("cannot read the file: {e}"));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() > MAX_FILE_BYTES {
        return Err(ConfigError::new(
            path,
            "",
            format!(
                "the file is larger than {} MiB; a configuration file is a few KB: is this the right file?",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    Ok(text)
}

/// YAML text → the tree with `${VAR}` expanded, and the variables it used.
fn tree_of(
    path: &Path,
    text: &str,
    env: EnvLookup<'_>,
) -> Result<(serde_json::Value, Vec<interpolate::VarUse>), Vec<ConfigError>> {
    let mut tree: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| vec![ConfigError::new(path, "", format!("not valid YAML: {e}"))])?;
    if tree.is_null() {
        tree = serde_json::Value::Object(Default::default());
    }
    let used = interpolate::interpolate(&mut tree, env).map_err(|e| match e {
        interpolate::InterpolateError::Missing(missing) => missing
            .into_iter()
            .map(|m| {
                ConfigError {
                    unset_var: Some(m.var.clone()),
                    ..ConfigError::new(
                        path,
                        m.key,
                        format!(
                            "uses ${{{}}}, which is not set: export {} (or add it to the service's EnvironmentFile, or pass it with LoadCredential={}:PATH)",
                            m.var, m.var, m.var
                        ),
                    )
                }
            })
            .collect::<Vec<_>>(),
        interpolate::InterpolateError::TooLarge { key, var, limit } => vec![ConfigError::new(
            path,
            key,
            format!(
                "expanding ${{{var}}} here takes the file's values past {} MiB; a variable is meant to hold a value, not to be repeated thousands of times: check the file and {var}",
                limit >> 20
            ),
        )],
    })?;
    Ok((tree, used))
}

/// Parses YAML text as `T`: used by [`load`] and by tests.
pub fn parse_str<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    env: EnvLookup<'_>,
) -> Result<T, Vec<ConfigError>> {
    let (mut tree, _) = tree_of(path, text, env)?;
    overrides::deserialize(path, &mut tree, &[])
}

#[cfg(test)]
mod tests;
