//! Loading configuration: read → YAML → `${VAR}` interpolation → strict typed parse → validate.
//!
//! Owns: finding and reading `config.yaml`, `jobs/*.yaml` (and the systemd credentials a
//! `${VAR}` falls back to), and turning them into
//! [`Settings`] and [`JobSpec`]s, collecting every error with its file and key.
//! Must not: write anything (loading never creates files or folders), open network or
//! database connections, or read a data source.

pub mod interpolate;
pub mod job;
pub mod raw;
pub mod secret;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use job::*;
pub use raw::{Region, Transport};
pub use secret::{DatabaseUrl, Secret};

/// A configuration mistake, always naming the file and, where there is one, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path (`source.csv.path`), empty when the error is about the whole file.
    pub key: String,
    pub message: String,
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
            "{n} configuration error{}",
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

/// Loads `config.yaml` and all jobs, returning every error found (not just the first).
pub fn load(config_path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let settings = match load_settings(config_path, env) {
        Ok(s) => s,
        Err(mut e) => {
            errors.append(&mut e);
            return Err(ConfigErrors(errors));
        }
    };
    let jobs = match load_jobs(&settings, env) {
        Ok(j) => j,
        Err(mut e) => {
            errors.append(&mut e);
            Vec::new()
        }
    };
    if errors.is_empty() {
        Ok(Config { settings, jobs })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads and validates `config.yaml` alone.
pub fn load_settings(path: &Path, env: EnvLookup<'_>) -> Result<Settings, Vec<ConfigError>> {
    let raw: raw::DaemonFile = parse_file(path, env)?;
    validate::settings(path, raw, env("STATE_DIRECTORY").as_deref())
}

/// Reads every `*.yaml` / `*.yml` in the jobs folder, sorted by name.
pub fn load_jobs(
    settings: &Settings,
    env: EnvLookup<'_>,
) -> Result<Vec<JobSpec>, Vec<ConfigError>> {
    let dir = &settings.jobs_dir;
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![ConfigError::new(
            &settings.config_file,
            "jobs_dir",
            format!(
                "cannot read the jobs folder {}: {e}; create it or fix `jobs_dir`",
                dir.display()
            ),
        )]
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
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

/// Reads and validates one job file; its name is the file stem.
pub fn load_job(path: &Path, env: EnvLookup<'_>) -> Result<JobSpec, Vec<ConfigError>> {
    let raw: raw::JobFile = parse_file(path, env)?;
    validate::job(path, raw)
}

fn parse_file<T: DeserializeOwned>(path: &Path, env: EnvLookup<'_>) -> Result<T, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            path,
            "",
            format!("cannot read the file: {e}"),
        )]
    })?;
    parse_str(path, &text, env)
}

/// Parses YAML text as `T`: used by [`load`] and by tests.
pub fn parse_str<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    env: EnvLookup<'_>,
) -> Result<T, Vec<ConfigError>> {
    let mut tree: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| vec![ConfigError::new(path, "", format!("not valid YAML: {e}"))])?;
    if tree.is_null() {
        tree = serde_json::Value::Object(Default::default());
    }
    interpolate::interpolate(&mut tree, env).map_err(|missing| {
        missing
            .into_iter()
            .map(|m| {
                ConfigError::new(
                    path,
                    m.key,
                    format!(
                        "uses ${{{}}}, which is not set: export {} (or add it to the service's EnvironmentFile, or pass it with LoadCredential={}:PATH)",
                        m.var, m.var, m.var
                    ),
                )
            })
            .collect::<Vec<_>>()
    })?;
    serde_path_to_error::deserialize::<_, T>(tree).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        vec![ConfigError::new(path, key, e.into_inner().to_string())]
    })
}
