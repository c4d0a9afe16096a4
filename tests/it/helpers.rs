//! Shared set-up: a temp folder with config.yaml, jobs and data, a simulator, and ways to run
//! jobs in-process (through `Runner`) or through the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cio_sync::config::{self, Config};
use cio_sync::pipeline::{RunMode, RunReport, StopSignal};
use cio_sync::runner::Runner;
use cio_sync::simulator::{SimConfig, Simulator};

pub const SITE: &str = "demo-site";
pub const TRACK_KEY: &str = "demo-track-key";
pub const APP_KEY: &str = "demo-app-key";

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    /// Extra lines appended to config.yaml (track/retry settings).
    pub extra_config: String,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with_sim(SimConfig::default()).await
    }

    pub async fn with_sim(sim_config: SimConfig) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("jobs/data")).expect("jobs dir");
        let sim = Simulator::start(sim_config).await.expect("simulator");
        let env = TestEnv {
            dir,
            sim,
            extra_config: String::new(),
        };
        env.write_config("");
        env
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
            "state: {{ url: \"sqlite://state/state.db\" }}\n\
             customerio:\n  region: us\n  site_id: ${{CIO_SITE_ID}}\n  track_api_key: ${{CIO_TRACK_API_KEY}}\n  app_api_key: ${{CIO_APP_API_KEY}}\n  track_url: {url}\n  app_url: {url}\n\
             jobs_dir: jobs\n{extra}",
            url = self.sim.url()
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
        match config::load(&self.config_path(), &Self::env) {
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

    pub fn state_url(&self) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join("state/state.db").display()
        )
    }
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
