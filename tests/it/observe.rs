//! The metrics and health listener of the real daemon: `/metrics` shows the exact counts of a
//! run against the simulator; `/readyz` follows the state database; `/healthz` the scheduler.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cio_sync::simulator::RejectRule;
use sqlx::Connection;

use crate::helpers::*;

/// The daemon, its log, and where its listener is.
struct Daemon {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    addr: String,
}

impl Daemon {
    /// Starts `cio-sync daemon` and waits until its listener says where it is.
    async fn start(env: &TestEnv) -> Daemon {
        let mut c = tokio::process::Command::from(env.cli());
        c.arg("daemon")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().expect("spawn the daemon");
        let mut pipe = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let text = || log.lock().map(|l| l.clone()).unwrap_or_default();
        let mut addr = None;
        wait_for(
            &mut child,
            "the listener's address in the daemon's log",
            || {
                addr = listen_addr(&text());
                addr.is_some()
            },
        )
        .await;
        Daemon {
            child,
            log,
            addr: addr.unwrap_or_default(),
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()));
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// Polls `path` until `done` holds for its status and body, failing with the last answer.
    async fn wait_for_answer(&mut self, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(path).await;
            if done(status, &body) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                panic!(
                    "the daemon exited ({status}) while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gave up after {WAIT:?} waiting for {what}; last answer {status}:\n{body}"
            );
            // A poll interval, not a guess at how long anything takes.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the daemon must stop cleanly.
    async fn stop(mut self) {
        let pid = self.child.id().expect("pid").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the daemon stops within 60 s of SIGTERM")
            .expect("wait");
        assert_eq!(status.code(), Some(0), "log:\n{}", self.log());
    }
}

/// The address in "Serving /metrics, /healthz and /readyz. listen=127.0.0.1:PORT".
fn listen_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("Serving /metrics"))?;
    let at = line.find("listen=")? + "listen=".len();
    let addr: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.contains(':').then_some(addr)
}

/// The value of the sample line starting with `series ` in an exposition.
fn sample<'a>(metrics: &'a str, series: &str) -> Option<&'a str> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

#[tokio::test]
async fn metrics_show_the_exact_counts_of_a_scheduled_run_against_the_simulator() {
    let env = TestEnv::new().await;
    // One request at a time, three batches (2 + 2 + 1 rows); the first is answered 429 with
    // Retry-After: 1, and u-000002 is refused by Customer.io.
    env.write_config(
        "track: { concurrency: 1, batch: { max_items: 2, max_bytes: 480000 } }\n\
         retry: { base_delay_ms: 10 }\n\
         http: { listen: \"127.0.0.1:0\" }\n",
    );
    env.write_data("people.csv", &people_csv(5));
    env.write_job(
        "people",
        &format!("schedule: \"* * * * * *\"\n{PEOPLE_JOB}"),
    );
    env.sim.fail_next(1, 429, Some(1));
    env.sim.reject_items(RejectRule {
        identifier_id: "u-000002".into(),
        reason: "nope".into(),
    });
    let mut daemon = Daemon::start(&env).await;
    daemon
        .wait_for_answer("/metrics", "the first run's end in /metrics", |_, m| {
            sample(
                m,
                "cio_sync_runs_total{job=\"people\",outcome=\"rejected_rows\"}",
            )
            .is_some()
        })
        .await;
    let (status, m) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    // Later ticks read nothing new (the checkpoint is at the end of the file) and send
    // nothing, so these stay exact however many ticks have passed.
    for (series, value) in [
        ("cio_sync_rows_read_total{job=\"people\"}", "5"),
        ("cio_sync_rows_delivered_total{job=\"people\"}", "4"),
        ("cio_sync_rows_rejected_total{job=\"people\"}", "1"),
        (
            "cio_sync_requests_total{api=\"track\",status_class=\"2xx\"}",
            "3",
        ),
        (
            "cio_sync_requests_total{api=\"track\",status_class=\"4xx\"}",
            "1",
        ),
        ("cio_sync_retries_total{api=\"track\"}", "1"),
        ("cio_sync_rate_limited_total{api=\"track\"}", "1"),
        (
            "cio_sync_retry_after_wait_seconds_total{api=\"track\"}",
            "1.0",
        ),
        (
            "cio_sync_request_duration_seconds_count{api=\"track\"}",
            "4",
        ),
        ("cio_sync_batch_items_count{job=\"people\"}", "3"),
        ("cio_sync_batch_items_sum{job=\"people\"}", "5.0"),
        ("cio_sync_consecutive_failures{job=\"people\"}", "0"),
        // Read to the end of the file: nothing is left behind the checkpoint.
        ("cio_sync_checkpoint_lag_bytes{job=\"people\"}", "0"),
    ] {
        assert_eq!(sample(&m, series), Some(value), "{series} in:\n{m}");
    }
    let last_success: f64 = sample(
        &m,
        "cio_sync_last_success_timestamp_seconds{job=\"people\"}",
    )
    .and_then(|v| v.parse().ok())
    .unwrap_or_else(|| panic!("no last success time in:\n{m}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    assert!(
        last_success <= now && last_success > now - 600.0,
        "last success {last_success} is not a recent Unix time (now {now})"
    );
    assert!(
        m.contains("# TYPE cio_sync_rows_skipped_unchanged counter"),
        "{m}"
    );
    assert!(m.ends_with("# EOF\n"), "{m}");
    assert_eq!(daemon.get("/healthz").await.0, 200);
    assert_eq!(daemon.get("/readyz").await.0, 200);
    // The counters and the log cannot drift: each retry logged is a retry counted.
    assert_eq!(daemon.log().matches("Request failed; retrying.").count(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn readyz_fails_while_the_state_database_is_unreachable_and_recovers_after() {
    let env = TestEnv::with_state(StateDb::Postgres).await;
    env.write_config("http: { listen: \"127.0.0.1:0\" }\n");
    env.write_data("people.csv", &people_csv(1));
    // Never due during the test: only the listener and the state database are exercised.
    env.write_job(
        "people",
        &format!("schedule: \"0 0 2 1 1 *\"\n{PEOPLE_JOB}"),
    );
    let db = env.state_db().expect("a PostgreSQL state database");
    let (name, admin) = (db.name().to_string(), db.admin_url().to_string());
    let mut daemon = Daemon::start(&env).await;
    daemon
        .wait_for_answer("/readyz", "ready after migrations", |s, _| s == 200)
        .await;

    // The database stops accepting connections and its open ones are ended: the state
    // database is unreachable for the daemon, while the shared server keeps running.
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut c)
    .await
    .expect("refuse connections");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut c)
        .await
        .expect("end the daemon's connections");
    daemon
        .wait_for_answer("/readyz", "503 while the database refuses", |s, body| {
            s == 503 && body.contains("not ready")
        })
        .await;
    assert_eq!(
        daemon.get("/healthz").await.0,
        200,
        "the process is alive and its scheduler ticks: only readiness fails"
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut c)
    .await
    .expect("accept connections again");
    daemon
        .wait_for_answer(
            "/readyz",
            "ready again once the database accepts",
            |s, _| s == 200,
        )
        .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_one_shot_run_without_http_settings_listens_nowhere() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(2));
    env.write_job("people", PEOPLE_JOB);
    let out = env.cli_output(&["run", "people", "-v"]).await;
    assert_exit(&out, 0);
    assert!(
        !stderr(&out).contains("Serving /metrics"),
        "{}",
        stderr(&out)
    );
}
