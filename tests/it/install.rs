//! The documented systemd install, as the unit runs it: the shipped `config.yaml` in a
//! read-only config folder, `STATE_DIRECTORY` set as `StateDirectory=` sets it, the working
//! directory elsewhere, a clean environment with the secrets of `EnvironmentFile=` (or of
//! `LoadCredential=`, in `CREDENTIALS_DIRECTORY`); the real binary's `validate` (the unit's
//! `ExecStartPre`), `daemon` and `run` against the simulator.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use cio_sync::config;

use crate::helpers::*;

const ROWS: usize = 50;

/// Every file and folder under `root` with its size and modification time.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(
                path.strip_prefix(root).expect("under root").to_path_buf(),
                (meta.len(), meta.modified().ok()),
            );
        }
    }
    out
}

/// Makes every file and folder under `root` read-only, as `ProtectSystem=strict` makes /etc.
/// (Tests may run as root, which ignores modes: [`snapshot`] is what proves nothing changed.)
fn make_read_only(root: &Path) {
    for path in snapshot(root).keys() {
        let path = root.join(path);
        let mode = if path.is_dir() { 0o555 } else { 0o444 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o555)).expect("chmod");
}

fn make_writable(root: &Path) {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for path in snapshot(root).keys() {
        let path = root.join(path);
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

/// The repository's `config.yaml` with its documented simulator override lines uncommented,
/// and nothing else changed.
fn shipped_config_for(sim_url: &str) -> String {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"))
        .expect("the shipped config.yaml");
    let mut found = [false, false];
    let text: Vec<String> = shipped
        .lines()
        .map(|line| {
            for (i, key) in ["track_url", "app_url"].iter().enumerate() {
                if line.trim_start().starts_with(&format!("# {key}:")) {
                    found[i] = true;
                    return format!("  {key}: {sim_url}");
                }
            }
            line.to_string()
        })
        .collect();
    assert_eq!(
        found,
        [true, true],
        "config.yaml documents `# track_url:` and `# app_url:` overrides for the simulator"
    );
    text.join("\n") + "\n"
}

/// A machine laid out as the README's install steps leave it.
struct Install {
    /// Stands in for /etc/cio-sync (read-only under the unit).
    etc: tempfile::TempDir,
    /// Stands in for /var/lib/cio-sync, systemd's `StateDirectory=cio-sync`.
    state: tempfile::TempDir,
    /// A second `StateDirectory=` entry: `STATE_DIRECTORY` lists both, the first is ours.
    other_state: tempfile::TempDir,
    /// The working directory, deliberately neither of the above.
    cwd: tempfile::TempDir,
    /// Where the daemon's stderr goes (journald's stand-in), outside every folder we check.
    logs: tempfile::TempDir,
}

impl Install {
    fn new(sim_url: &str) -> Install {
        let etc = tempfile::tempdir().expect("tempdir");
        std::fs::write(etc.path().join("config.yaml"), shipped_config_for(sim_url))
            .expect("config.yaml");
        std::fs::create_dir_all(etc.path().join("jobs/data")).expect("jobs dir");
        std::fs::write(
            etc.path().join("jobs/people.yaml"),
            format!("schedule: \"* * * * * *\"\n{PEOPLE_JOB}"),
        )
        .expect("job");
        std::fs::write(etc.path().join("jobs/data/people.csv"), people_csv(ROWS)).expect("csv");
        make_read_only(etc.path());
        Install {
            etc,
            state: tempfile::tempdir().expect("tempdir"),
            other_state: tempfile::tempdir().expect("tempdir"),
            cwd: tempfile::tempdir().expect("tempdir"),
            logs: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn config(&self) -> PathBuf {
        self.etc.path().join("config.yaml")
    }

    fn log(&self) -> PathBuf {
        self.logs.path().join("stderr.log")
    }

    /// The binary with the unit's environment only: what `StateDirectory=` gives it, in
    /// `WorkingDirectory=`, and no secrets.
    fn bare_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_cio-sync"));
        c.env_clear()
            .current_dir(self.cwd.path())
            .env(
                "STATE_DIRECTORY",
                format!(
                    "{}:{}",
                    self.state.path().display(),
                    self.other_state.path().display()
                ),
            )
            .args(args)
            .arg("--config")
            .arg(self.config());
        c
    }

    /// [`Install::bare_command`] with the secrets `EnvironmentFile=` gives it.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = self.bare_command(args);
        c.env("CIO_SITE_ID", SITE)
            .env("CIO_TRACK_API_KEY", TRACK_KEY)
            .env("CIO_APP_API_KEY", APP_KEY);
        c
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // So the temp folder can be removed by a non-root test runner.
        make_writable(self.etc.path());
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_config_under_the_units_environment_keeps_state_in_the_state_directory() {
    let env = TestEnv::new().await;
    let install = Install::new(&env.sim.url());
    let etc_before = snapshot(install.etc.path());

    // ExecStartPre: validate passes and writes nothing anywhere.
    let out = install
        .command(&["validate"])
        .output()
        .await
        .expect("run validate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "validate: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        snapshot(install.state.path()).is_empty(),
        "validate created nothing"
    );

    // ExecStart: the daemon runs the scheduled job; wait for every row and the run's end.
    let log = std::fs::File::create(install.log()).expect("log file");
    let mut daemon = install
        .command(&["daemon"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the daemon");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(env.sim.operation_count() >= ROWS
        && read(&install.log()).contains("Scheduled run finished"))
    {
        if let Some(status) = daemon.try_wait().expect("try_wait") {
            panic!(
                "the daemon exited ({status}) before the scheduled run delivered {ROWS} rows:\n{}",
                read(&install.log())
            );
        }
        assert!(
            Instant::now() < deadline,
            "no finished scheduled run with {ROWS} rows at the simulator within 120 s ({} arrived):\n{}",
            env.sim.operation_count(),
            read(&install.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = daemon.id().expect("pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(60), daemon.wait())
        .await
        .expect("the daemon stopped within 60 s of SIGTERM")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM-stopped daemon exits 0:\n{}",
        read(&install.log())
    );
    assert_eq!(env.sim.operation_count(), ROWS, "every row once");

    // State is in the first STATE_DIRECTORY entry, and nowhere else.
    assert!(
        install.state.path().join("state/cio-sync.db").is_file(),
        "state database under STATE_DIRECTORY: {:?}",
        snapshot(install.state.path()).keys().collect::<Vec<_>>()
    );
    assert_eq!(
        snapshot(install.etc.path()),
        etc_before,
        "nothing was written next to the config"
    );
    assert!(
        snapshot(install.other_state.path()).is_empty(),
        "only the first STATE_DIRECTORY entry is used"
    );
    assert!(
        snapshot(install.cwd.path()).is_empty(),
        "nothing was written in the working directory: {:?}",
        snapshot(install.cwd.path()).keys().collect::<Vec<_>>()
    );

    // An operator's `status` with the same environment reads that state.
    let out = install
        .command(&["status", "--json"])
        .output()
        .await
        .expect("run status");
    assert_eq!(out.status.code(), Some(0), "status: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    assert!(
        runs.iter().any(|r| r["job"] == "people"
            && r["outcome"] == "succeeded"
            && r["rows_delivered"] == ROWS as u64),
        "the daemon's run is in the state directory's database: {v:#}"
    );
}

fn state_url_with(config: &Path, state_directory: Option<&str>) -> String {
    let lookup = |name: &str| match name {
        "STATE_DIRECTORY" => state_directory.map(str::to_string),
        other => TestEnv::env(other),
    };
    match config::load_settings(config, &lookup) {
        Ok(s) => s.state_url.expose().to_string(),
        Err(e) => panic!("settings: {}", config::ConfigErrors(e)),
    }
}

#[tokio::test]
async fn a_relative_sqlite_state_path_is_rooted_at_the_first_state_directory_else_the_config_folder()
 {
    let env = TestEnv::new().await;
    let cfg = env.config_path();
    let dir = env.path().display().to_string();
    // TestEnv's config.yaml has `sqlite://state/state.db`.
    assert_eq!(
        state_url_with(&cfg, None),
        format!("sqlite://{dir}/state/state.db")
    );
    assert_eq!(
        state_url_with(&cfg, Some("")),
        format!("sqlite://{dir}/state/state.db"),
        "an empty STATE_DIRECTORY is unset"
    );
    assert_eq!(
        state_url_with(&cfg, Some("/var/lib/cio-sync")),
        "sqlite:///var/lib/cio-sync/state/state.db"
    );
    assert_eq!(
        state_url_with(&cfg, Some("/var/lib/cio-sync:/var/lib/other")),
        "sqlite:///var/lib/cio-sync/state/state.db",
        "the first of several StateDirectory= entries"
    );

    // Absolute paths and PostgreSQL are left as written.
    env.write_config("");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("sqlite://state/state.db", "sqlite:///srv/state.db"),
    )
    .expect("config");
    assert_eq!(
        state_url_with(&cfg, Some("/var/lib/cio-sync")),
        "sqlite:///srv/state.db"
    );
    std::fs::write(
        &cfg,
        text.replace("sqlite://state/state.db", "postgres://u@db/state"),
    )
    .expect("config");
    assert_eq!(
        state_url_with(&cfg, Some("/var/lib/cio-sync")),
        "postgres://u@db/state"
    );

    // A relative STATE_DIRECTORY is refused by name rather than silently ignored.
    std::fs::write(&cfg, &text).expect("config");
    let lookup = |name: &str| match name {
        "STATE_DIRECTORY" => Some("var/lib/cio-sync".to_string()),
        other => TestEnv::env(other),
    };
    let err = config::ConfigErrors(config::load_settings(&cfg, &lookup).unwrap_err()).to_string();
    assert!(
        err.contains("state.url") && err.contains("STATE_DIRECTORY=`var/lib/cio-sync`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_the_environment_does_not_set_are_read_from_systemd_credentials() {
    let env = TestEnv::new().await;
    let install = Install::new(&env.sim.url());
    // What `LoadCredential=NAME:/etc/cio-sync/credentials/NAME` leaves in
    // $CREDENTIALS_DIRECTORY: files written with a trailing newline, readable by us only.
    let creds = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        creds.path().join("CIO_TRACK_API_KEY"),
        format!("{TRACK_KEY}\n"),
    )
    .expect("credential");
    std::fs::write(
        creds.path().join("CIO_APP_API_KEY"),
        format!("{APP_KEY}\r\n"),
    )
    .expect("credential");
    // The environment wins over a credential of the same name.
    std::fs::write(creds.path().join("CIO_SITE_ID"), "not-the-site\n").expect("credential");
    let command = |args: &[&str]| {
        let mut c = install.bare_command(args);
        c.env("CREDENTIALS_DIRECTORY", creds.path())
            .env("CIO_SITE_ID", SITE);
        c
    };

    let out = command(&["validate"]).output().await.expect("validate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "validate: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = command(&["run", "people"]).output().await.expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the simulator took the credentials: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(env.sim.operation_count(), ROWS, "every row delivered");
    for secret in [TRACK_KEY, APP_KEY] {
        assert!(
            !stdout(&out).contains(secret) && !stderr(&out).contains(secret),
            "a credential's value is never printed"
        );
    }

    // Without the credential (and not in the environment), the error says both ways to give it.
    std::fs::remove_file(creds.path().join("CIO_TRACK_API_KEY")).expect("remove");
    let out = command(&["validate"]).output().await.expect("validate");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "`customerio.track_api_key`: uses ${CIO_TRACK_API_KEY}, which is not set: export CIO_TRACK_API_KEY (or add it to the service's EnvironmentFile, or pass it with LoadCredential=CIO_TRACK_API_KEY:PATH)"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_credential_loses_one_trailing_newline_and_only_plain_names_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, value: &str| {
        std::fs::write(dir.path().join(name), value).expect("credential");
    };
    write("A", "key\n");
    write("B", "key\r\n");
    write("C", "key\n\n");
    write("D", "");
    write("E", " spaced key ");
    assert_eq!(config::credential(dir.path(), "A").as_deref(), Some("key"));
    assert_eq!(config::credential(dir.path(), "B").as_deref(), Some("key"));
    assert_eq!(
        config::credential(dir.path(), "C").as_deref(),
        Some("key\n"),
        "only one newline is the file's end"
    );
    assert_eq!(config::credential(dir.path(), "D").as_deref(), Some(""));
    assert_eq!(
        config::credential(dir.path(), "E").as_deref(),
        Some(" spaced key ")
    );
    assert_eq!(config::credential(dir.path(), "MISSING"), None);
    std::fs::create_dir(dir.path().join("sub")).expect("sub");
    std::fs::write(dir.path().join("sub/F"), "key").expect("credential");
    for name in ["sub/F", "../A", "..", ".", ""] {
        assert_eq!(
            config::credential(dir.path(), name),
            None,
            "`{name}` is not a credential name"
        );
    }
}
