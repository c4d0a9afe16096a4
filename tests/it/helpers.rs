//! Shared set-up: a temp folder with config.yaml, jobs and data, a simulator, a state database
//! (SQLite in the folder, or a PostgreSQL database of the test's own), and ways to run jobs
//! in-process (through `Runner`) or through the real binary. Also the waits (a condition, a
//! deadline, a liveness check) and the assertions that repeat across files.
//!
//! Owns no test of its own; must not sleep for a fixed time to let something happen.

#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cio_sync::config::{self, Config};
use cio_sync::mapping::event_id::event_id;
use cio_sync::pipeline::{RunMode, RunReport, StopSignal};
use cio_sync::runner::Runner;
use cio_sync::simulator::{RecordedOp, SimConfig, Simulator};
pub use cio_sync::testing::{Server, TestDb};

pub const SITE: &str = "demo-site";
pub const TRACK_KEY: &str = "demo-track-key";
pub const APP_KEY: &str = "demo-app-key";

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    /// Extra lines appended to config.yaml (track/retry settings).
    pub extra_config: String,
    /// `state.url` in config.yaml.
    state_url: String,
    /// The PostgreSQL state database, when the test asked for one; dropped after the folder.
    state_db: Option<TestDb>,
}

/// Where a test keeps its state database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateDb {
    /// `state.db` in the test's folder.
    Sqlite,
    /// A database of the test's own on the real PostgreSQL server.
    Postgres,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(sim_config: SimConfig) -> TestEnv {
        let env = Self::start(sim_config).await;
        env.write_config("");
        env
    }

    /// A folder and a simulator, with state in `state` (SQLite at `<folder>/state.db`);
    /// config.yaml is left to the test.
    pub async fn with_state(state: StateDb) -> TestEnv {
        let mut env = Self::start(SimConfig::default()).await;
        match state {
            StateDb::Sqlite => {
                env.state_url = format!("sqlite://{}", env.path().join("state.db").display());
            }
            StateDb::Postgres => {
                let db = TestDb::create(Server::Postgres).await;
                env.state_url = db.url().to_string();
                env.state_db = Some(db);
            }
        }
        env
    }

    async fn start(sim_config: SimConfig) -> TestEnv {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("jobs/data")).expect("jobs dir");
        let sim = Simulator::start(sim_config).await.expect("simulator");
        TestEnv {
            dir,
            sim,
            extra_config: String::new(),
            state_url: "sqlite://state/state.db".to_string(),
            state_db: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Writes config.yaml pointing at the simulator, with `extra` YAML appended.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "state: {{ url: \"{state}\" }}\n\
             customerio:\n  region: us\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  app_api_key: ${{CIO_APP_API_KEY}}\n  track_url: {url}\n  app_url: {url}\n\
             jobs_dir: jobs\n{extra}",
            url = self.sim.url(),
            state = self.state_url,
        );
        std::fs::write(self.config_path(), text).expect("config.yaml");
    }

    pub fn write_job(&self, name: &str, yaml: &str) {
        std::fs::write(self.dir.path().join(format!("jobs/{name}.yaml")), yaml).expect("job");
    }

    pub fn write_data(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join("jobs/data").join(rel);
        std::fs::write(&p, content).expect("data");
        p
    }

    pub fn env(name: &str) -> Option<String> {
        match name {
            "CIO_SITE_ID" => Some(SITE.into()),
            "CIO_TRACK_API_KEY" => Some(TRACK_KEY.into()),
            "CIO_APP_API_KEY" => Some(APP_KEY.into()),
            _ => None,
        }
    }

    #[track_caller]
    pub fn load(&self) -> Config {
        self.load_with(&Self::env)
    }

    /// Loads config.yaml with `env` as the process environment.
    #[track_caller]
    pub fn load_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Config {
        match config::load(&self.config_path(), env) {
            Ok(c) => c,
            Err(e) => panic!("config: {e}"),
        }
    }

    pub async fn runner(&self) -> Runner {
        Runner::new(self.load().settings).await.expect("runner")
    }

    /// Runs a job once in-process.
    pub async fn run(&self, job: &str) -> RunReport {
        self.run_mode(job, RunMode::Normal { full: false }).await
    }

    pub async fn run_mode(&self, job: &str, mode: RunMode) -> RunReport {
        let cfg = self.load();
        let spec = cfg
            .job(job)
            .unwrap_or_else(|| panic!("no job {job}"))
            .clone();
        let runner = Runner::new(cfg.settings).await.expect("runner");
        runner
            .run(&spec, mode, StopSignal::never())
            .await
            .expect("run")
    }

    /// The real binary, with the config and credentials in its environment.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cio-sync"));
        c.current_dir(self.dir.path())
            .env("CIO_SYNC_CONFIG", self.config_path())
            .env("CIO_SITE_ID", SITE)
            .env("CIO_TRACK_API_KEY", TRACK_KEY)
            .env("CIO_APP_API_KEY", APP_KEY)
            .env_remove("RUST_LOG");
        c
    }

    /// Runs the binary to completion without blocking the runtime the simulator serves on.
    pub async fn cli_output(&self, args: &[&str]) -> Output {
        let mut c = tokio::process::Command::from(self.cli());
        c.args(args).output().await.expect("run cio-sync")
    }

    pub async fn output_of(&self, cmd: Command) -> Output {
        tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("run cio-sync")
    }

    /// The PostgreSQL state database, when the test asked for one.
    pub fn state_db(&self) -> Option<&TestDb> {
        self.state_db.as_ref()
    }

    /// The state database's URL, absolute.
    pub fn state_url(&self) -> String {
        match self.state_url.strip_prefix("sqlite://state/") {
            Some(rel) => format!(
                "sqlite://{}",
                self.dir.path().join("state").join(rel).display()
            ),
            None => self.state_url.clone(),
        }
    }
}

/// Logs to stderr only when `TEST_LOG` is set (e.g. `TEST_LOG=cio_sync=debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// How long a wait for a condition may take before the test fails saying what it awaited.
/// Generous: under a loaded machine things are slow, and a wait that ends early costs nothing.
pub const WAIT: Duration = Duration::from_secs(120);

/// Polls `done` until it holds. Fails naming `what` as soon as `child` exits (with its status),
/// or after [`WAIT`].
pub async fn wait_for(
    child: &mut tokio::process::Child,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        match child.try_wait() {
            // What it said just before exiting counts: look once more before failing.
            Ok(Some(_)) if done() => return,
            Ok(Some(status)) => panic!("cio-sync exited ({status}) while waiting for {what}"),
            Ok(None) => {}
            Err(e) => panic!("cannot check on cio-sync while waiting for {what}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT:?} waiting for {what}"
        );
        // A poll interval, not a guess at how long anything takes.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Holds the simulator once `n` operations have been accepted and waits until `child` is
/// stuck on the hold: from then on it cannot deliver more than its requests in flight.
/// Call [`Simulator::hold_from`] with the same `n` before spawning the child.
pub async fn wait_until_held(env: &TestEnv, child: &mut tokio::process::Child, n: usize) {
    wait_for(
        child,
        &format!(
            "a request held after {n} operations (now {})",
            env.sim.operation_count()
        ),
        || env.sim.held() > 0,
    )
    .await;
}

/// Asserts the binary's exit code, showing its output when it differs.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// `identifiers.id` of every operation (panics on one without an id: a test bug).
pub fn ids_of(ops: &[RecordedOp]) -> HashSet<String> {
    ops.iter().map(|o| o.identifiers["id"].clone()).collect()
}

/// The event ids the orders job must produce, one per row of `orders_csv(n)`.
pub fn expected_event_ids(n: usize) -> HashSet<String> {
    (1..=n)
        .map(|i| {
            event_id(
                "orders",
                &format!("o-{i:06}"),
                "purchase",
                Some(1_650_000_000 + i as i64 * 60),
            )
        })
        .collect()
}

/// Every event of `expected` was accepted, and none twice or unexpected.
#[track_caller]
pub fn assert_each_event_once(ops: &[RecordedOp], expected: &HashSet<String>) {
    let events: Vec<&String> = ops.iter().filter_map(|o| o.event_id.as_ref()).collect();
    assert_eq!(
        events.len(),
        expected.len(),
        "each event accepted exactly once"
    );
    let got: HashSet<String> = events.into_iter().cloned().collect();
    let missing = expected.difference(&got).count();
    let extra = got.difference(expected).count();
    assert!(
        missing == 0 && extra == 0,
        "{missing} expected events missing, {extra} unexpected"
    );
}

/// `people.csv` with `n` rows: customer_id, email, plan, signup_at.
pub fn people_csv(n: usize) -> String {
    let mut s = String::from("customer_id,email,plan,signup_at\n");
    for i in 1..=n {
        s.push_str(&format!(
            "u-{i:06},user{i}@example.com,{},{}\n",
            ["free", "pro"][i % 2],
            1_600_000_000 + i as i64
        ));
    }
    s
}

/// `orders.csv` with `n` rows: order_id, customer_id, ordered_at, total.
pub fn orders_csv(n: usize) -> String {
    let mut s = String::from("order_id,customer_id,ordered_at,total\n");
    for i in 1..=n {
        s.push_str(&format!(
            "o-{i:06},u-{:06},{},{}.{:02}\n",
            i % 997 + 1,
            1_650_000_000 + i as i64 * 60,
            i % 500,
            i % 100
        ));
    }
    s
}

pub const PEOPLE_JOB: &str = "source: { csv: { path: data/people.csv } }\n\
identify:\n  identifier: { id: customer_id }\n  attributes:\n    email: email\n    plan: plan\n    created_at: { column: signup_at, as: timestamp }\n";

pub const ORDERS_JOB: &str = "source: { csv: { path: data/orders.csv } }\n\
track:\n  identifier: { id: customer_id }\n  name: purchase\n  timestamp: ordered_at\n  event_id: order_id\n  data:\n    total: { column: total, as: number }\n";

/// Settings that make fault tests quick: small batches, short backoff.
pub const FAST_RETRY: &str = "track:\n  rate_limit_per_sec: 2000\n  concurrency: 4\n  timeout_secs: 5\n  batch: { max_items: 100, max_bytes: 480000 }\n\
retry:\n  max_attempts: 12\n  base_delay_ms: 20\n  max_wait_secs: 3\n  max_total_wait_secs: 600\n";

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
