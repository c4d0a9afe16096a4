//! The daemon through the real binary: what it tells systemd on a `NOTIFY_SOCKET` the test
//! listens on (READY only after migrations, STATUS, WATCHDOG, STOPPING), SIGHUP reloads
//! (a broken job keeps the old jobs, a good reload adds one), and replicas on PostgreSQL:
//! each tick runs once, a SIGKILLed replica's job is finished by the other, and together they
//! stay within the Track rate limit. And a job of a named workspace talks to that workspace.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cio_sync::simulator::{Faults, SimConfig, Simulator};
use cio_sync::state::StateStore;
use tokio::net::UnixDatagram;
use tokio::process::Child;

use crate::helpers::*;

/// The messages a daemon sent to its `NOTIFY_SOCKET`, one datagram each.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    _reader: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    fn bind(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Self {
            path,
            messages,
            _reader: reader,
        }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// How many datagrams carried the line `line` (e.g. `READY=1`).
    fn count(&self, line: &str) -> usize {
        self.all()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("the child is running").to_string();
    let status = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn spawn_daemon(env: &TestEnv, config: &Path, notify: &NotifySocket, log: &Path) -> Child {
    let mut cmd = env.cli();
    cmd.arg("daemon")
        .env("CIO_SYNC_CONFIG", config)
        .env("NOTIFY_SOCKET", &notify.path)
        // systemd's WatchdogSec=2: pings are due every second.
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    tokio::process::Command::from(cmd)
        .spawn()
        .expect("spawn cio-sync daemon")
}

/// [`wait_for`] with a condition that has to ask a database.
async fn wait_async(child: &mut Child, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done().await {
        if let Some(status) = child.try_wait().expect("try_wait") {
            // What it did just before exiting counts: look once more before failing.
            if done().await {
                return;
            }
            panic!("cio-sync exited ({status}) while waiting for {what}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(mut daemon: Child, log: &Path) {
    signal(&daemon, "-TERM");
    let status = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("the daemon stopped after SIGTERM")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a stopped daemon exits 0:\n{}",
        read(log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_says_ready_only_after_migrations_then_status_watchdog_and_stopping() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", &format!("schedule: \"0 2 * * *\"\n{PEOPLE_JOB}"));
    let notify = NotifySocket::bind(env.path(), "notify.sock");
    let log = env.path().join("daemon.log");
    let mut daemon = spawn_daemon(&env, &env.config_path(), &notify, &log);

    wait_for(&mut daemon, "READY=1 on the notify socket", || {
        notify.count("READY=1") > 0
    })
    .await;
    // READY came after the state database was migrated: every migration is recorded.
    let migrations =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite"))
            .expect("migrations folder")
            .count();
    let db = sqlx::SqlitePool::connect(&env.state_url())
        .await
        .expect("open the state file");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db)
        .await
        .expect("the migrations table exists by READY");
    assert_eq!(
        applied as usize, migrations,
        "every migration applied before READY=1"
    );
    let ready = notify
        .all()
        .into_iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_default();
    assert!(
        ready.contains("STATUS=1 job scheduled; idle, next run "),
        "READY carries the status line: {ready:?}"
    );

    wait_for(&mut daemon, "two WATCHDOG=1 pings", || {
        notify.count("WATCHDOG=1") >= 2
    })
    .await;
    signal(&daemon, "-TERM");
    wait_for(&mut daemon, "STOPPING=1", || notify.count("STOPPING=1") > 0).await;
    let status = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("the daemon stopped after SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{}", read(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_while_the_state_database_cannot_be_opened() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1: the state database cannot be opened, so nothing is migrated.
    let text = read(&env.config_path()).replace(
        "state: { url: \"sqlite://state/state.db\" }",
        "state: { url: \"postgres://postgres@127.0.0.1:1/none\", connect_timeout_secs: 2 }",
    );
    std::fs::write(env.config_path(), text).expect("config");
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", &format!("schedule: \"0 2 * * *\"\n{PEOPLE_JOB}"));
    let notify = NotifySocket::bind(env.path(), "notify.sock");
    let log = env.path().join("daemon.log");
    let mut daemon = spawn_daemon(&env, &env.config_path(), &notify, &log);
    let status = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("the daemon gave up on the state database")
        .expect("wait");
    assert_eq!(status.code(), Some(3), "{}", read(&log));
    assert_eq!(
        notify.count("READY=1"),
        0,
        "no READY without a migrated state database: {:?}",
        notify.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_runs_a_missed_tick_once_at_start_and_not_again_after_a_restart() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(7));
    // Once a year, on 1 January at 02:00: the last tick is always in the past, never run.
    env.write_job(
        "people",
        &format!("schedule: \"0 2 1 1 *\"\ntimezone: Europe/Paris\ncatch_up: true\n{PEOPLE_JOB}"),
    );
    let state_url = cio_sync::config::DatabaseUrl::new(env.state_url());
    for start in 1..=2 {
        let notify = NotifySocket::bind(env.path(), &format!("notify-{start}.sock"));
        let log = env.path().join(format!("daemon-{start}.log"));
        let mut daemon = spawn_daemon(&env, &env.config_path(), &notify, &log);
        wait_for(&mut daemon, "READY=1", || notify.count("READY=1") == 1).await;
        if start == 1 {
            let state = StateStore::open(&state_url).await.expect("state");
            wait_async(&mut daemon, "the caught-up run to finish", async || {
                state
                    .runs(Some("people"), 10)
                    .await
                    .is_ok_and(|r| r.iter().any(|r| r.outcome == "succeeded"))
            })
            .await;
            assert_eq!(env.sim.operation_count(), 7, "the missed tick ran at start");
            assert!(read(&log).contains("Catching up"), "{}", read(&log));
        }
        stop(daemon, &log).await;
        if start == 2 {
            // READY comes after the catch-up decision: a second run would be in the log.
            assert!(
                !read(&log).contains("Catching up"),
                "the tick already ran: {}",
                read(&log)
            );
        }
    }
    let state = StateStore::open(&state_url).await.expect("state");
    assert_eq!(
        state.runs(Some("people"), 10).await.expect("runs").len(),
        1,
        "one run in all"
    );
    assert_eq!(state.claimed_ticks("people").await.expect("ticks").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_job_keeps_the_old_jobs_and_a_good_reload_adds_one() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(20));
    env.write_data("orders.csv", &orders_csv(30));
    env.write_job(
        "people",
        &format!("schedule: \"* * * * * *\"\n{PEOPLE_JOB}"),
    );
    let notify = NotifySocket::bind(env.path(), "notify.sock");
    let log = env.path().join("daemon.log");
    let mut daemon = spawn_daemon(&env, &env.config_path(), &notify, &log);
    wait_for(&mut daemon, "READY=1", || notify.count("READY=1") == 1).await;
    wait_for(&mut daemon, "the people job's 20 rows", || {
        env.sim.operation_count() == 20
    })
    .await;

    // A job file with a mistake: the reload is refused, naming it, and the old job goes on.
    env.write_job(
        "orders",
        &format!("schedule: \"* * * * * *\"\nsurprise: 1\n{ORDERS_JOB}"),
    );
    signal(&daemon, "-HUP");
    wait_for(&mut daemon, "READY=1 after the refused reload", || {
        notify.count("READY=1") == 2
    })
    .await;
    assert!(notify.count("RELOADING=1") >= 1, "{:?}", notify.all());
    let text = read(&log);
    assert!(
        text.contains("Reload refused")
            && text.contains("orders.yaml")
            && text.contains("surprise"),
        "the refused reload names the file and the key:\n{text}"
    );
    let state = StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state");
    let people_runs = state.runs(Some("people"), 1000).await.expect("runs").len();
    wait_async(
        &mut daemon,
        "another run of the old job after the refused reload",
        async || {
            state
                .runs(Some("people"), 1000)
                .await
                .is_ok_and(|r| r.len() > people_runs + 1)
        },
    )
    .await;
    assert_eq!(env.sim.operation_count(), 20, "the broken job never ran");

    // Fixed: the next reload adds it, and it runs from its next tick.
    env.write_job(
        "orders",
        &format!("schedule: \"* * * * * *\"\n{ORDERS_JOB}"),
    );
    signal(&daemon, "-HUP");
    wait_for(&mut daemon, "the added job's 30 events", || {
        env.sim.operation_count() == 50
    })
    .await;
    let text = read(&log);
    assert!(text.contains("added: orders"), "{text}");
    assert_each_event_once(
        &env.sim
            .operations()
            .into_iter()
            .filter(|o| o.event_id.is_some())
            .collect::<Vec<_>>(),
        &expected_event_ids(30),
    );
    stop(daemon, &log).await;
}

/// A second config file in the same folder, with its own jobs folder, on the same state
/// database and simulator: another replica (or another team's daemon) sharing the budget.
fn second_config(env: &TestEnv, jobs_dir: &str) -> PathBuf {
    let text =
        read(&env.config_path()).replace("jobs_dir: jobs\n", &format!("jobs_dir: {jobs_dir}\n"));
    let path = env.path().join(format!("config-{jobs_dir}.yaml"));
    std::fs::create_dir_all(env.path().join(jobs_dir).join("data")).expect("jobs folder");
    std::fs::write(&path, text).expect("second config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_postgres_run_each_tick_once_and_one_killed_mid_run_is_finished_by_the_other()
 {
    const N: usize = 3_000;
    let env = TestEnv::with_state(StateDb::Postgres).await;
    env.write_config(
        "track: { concurrency: 2, batch: { max_items: 50, max_bytes: 480000 } }\ndaemon: { heartbeat_secs: 1 }\n",
    );
    env.write_data("orders.csv", &orders_csv(N));
    env.write_job(
        "orders",
        &format!("schedule: \"*/2 * * * * *\"\n{ORDERS_JOB}"),
    );
    env.sim.set_faults(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    });
    let (na, nb) = (
        NotifySocket::bind(env.path(), "a.sock"),
        NotifySocket::bind(env.path(), "b.sock"),
    );
    let (la, lb) = (env.path().join("a.log"), env.path().join("b.log"));
    let mut a = spawn_daemon(&env, &env.config_path(), &na, &la);
    let mut b = spawn_daemon(&env, &env.config_path(), &nb, &lb);
    wait_for(&mut a, "READY=1 from replica a", || {
        na.count("READY=1") == 1
    })
    .await;
    wait_for(&mut b, "READY=1 from replica b", || {
        nb.count("READY=1") == 1
    })
    .await;
    wait_for(&mut a, "a run under way", || {
        env.sim.operation_count() >= 500
    })
    .await;

    // SIGKILL whichever replica holds the job's lease, mid-run.
    let state = StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state");
    let holder = state
        .lease_holder("orders")
        .await
        .expect("lease")
        .expect("the running replica holds the lease");
    let pid_of = |c: &Child| c.id().expect("running");
    let a_holds = holder.contains(&format!(":{}:", pid_of(&a)));
    assert!(
        a_holds || holder.contains(&format!(":{}:", pid_of(&b))),
        "the lease {holder} is one of the two daemons'"
    );
    let (mut victim, mut survivor, survivor_log) = if a_holds { (a, b, lb) } else { (b, a, la) };
    let at_kill = env.sim.operation_count();
    assert!(at_kill < N, "killed mid-run ({at_kill} of {N})");
    victim.kill().await.expect("SIGKILL");

    wait_for(
        &mut survivor,
        "every event delivered by the surviving replica",
        || env.sim.operation_count() >= N,
    )
    .await;
    assert_each_event_once(&env.sim.operations(), &expected_event_ids(N));
    wait_async(
        &mut survivor,
        "the surviving replica's run to finish",
        async || {
            state.runs(Some("orders"), 1000).await.is_ok_and(|runs| {
                runs.iter()
                    .any(|r| r.outcome == "succeeded" && r.counts.rows_delivered > 0)
            })
        },
    )
    .await;

    // Each tick was claimed by one replica, and no two runs started on one tick.
    let ticks = state.claimed_ticks("orders").await.expect("ticks");
    assert!(!ticks.is_empty());
    let mut runs = state.runs(Some("orders"), 1000).await.expect("runs");
    runs.sort_by_key(|r| r.started_at);
    let mut run_ticks: Vec<i64> = runs.iter().map(|r| r.started_at / 2000).collect();
    let all = run_ticks.len();
    run_ticks.dedup();
    assert_eq!(run_ticks.len(), all, "one run per tick at most: {runs:?}");
    assert!(
        runs.iter()
            .any(|r| r.outcome == "succeeded" && r.counts.rows_delivered > 0),
        "a later run finished the job: {runs:?}"
    );
    let text = read(&survivor_log);
    assert!(
        text.contains("Another replica took this tick")
            || text.contains("Another replica is running this job"),
        "the survivor skipped ticks the other replica had:\n{text}"
    );
    stop(survivor, &survivor_log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_pushing_at_once_stay_within_the_workspace_rate_limit_together() {
    const RATE: usize = 20;
    const ROWS: usize = 150;
    let env = TestEnv::with_state(StateDb::Postgres).await;
    env.write_config(&format!(
        "track: {{ rate_limit_per_sec: {RATE}, concurrency: 4, transport: v1 }}\ndaemon: {{ heartbeat_secs: 1 }}\n"
    ));
    let b_config = second_config(&env, "jobs-b");
    env.write_data("people.csv", &people_csv(ROWS));
    env.write_job("a", &format!("schedule: \"* * * * * *\"\n{PEOPLE_JOB}"));
    let others: String = people_csv(ROWS).replace("u-", "b-");
    std::fs::write(env.path().join("jobs-b/data/people.csv"), others).expect("data b");
    std::fs::write(
        env.path().join("jobs-b/b.yaml"),
        format!("schedule: \"* * * * * *\"\n{PEOPLE_JOB}"),
    )
    .expect("job b");
    let (na, nb) = (
        NotifySocket::bind(env.path(), "a.sock"),
        NotifySocket::bind(env.path(), "b.sock"),
    );
    let (la, lb) = (env.path().join("a.log"), env.path().join("b.log"));
    let mut a = spawn_daemon(&env, &env.config_path(), &na, &la);
    wait_for(&mut a, "READY=1 from replica a", || {
        na.count("READY=1") == 1
    })
    .await;
    let mut b = spawn_daemon(&env, &b_config, &nb, &lb);
    wait_for(&mut b, "READY=1 from replica b", || {
        nb.count("READY=1") == 1
    })
    .await;
    // From here on, within one heartbeat, each replica counts two.
    let both_known =
        env.sim.requests().last().map(|r| r.at).unwrap_or_default() + Duration::from_secs(2);
    wait_for(&mut a, "every row of both jobs", || {
        env.sim.operation_count() >= 2 * ROWS
    })
    .await;

    let requests: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/customers/") && r.at >= both_known)
        .collect();
    let from = |prefix: &str| requests.iter().filter(|r| r.path.contains(prefix)).count();
    assert!(
        from("/u-") > 0 && from("/b-") > 0,
        "both replicas pushed in the measured window ({} and {})",
        from("/u-"),
        from("/b-")
    );
    // The most requests in any one second: the limit, plus each replica's burst (a tenth of
    // its share, at least one).
    let allowed = RATE + 2 * ((RATE / 2) / 10).max(1);
    let mut most = 0;
    for (i, r) in requests.iter().enumerate() {
        let n = requests[i..]
            .iter()
            .take_while(|s| s.at < r.at + Duration::from_secs(1))
            .count();
        most = most.max(n);
    }
    eprintln!(
        "at most {most} Track requests in one second from two replicas (limit {RATE}, allowed {allowed})"
    );
    assert!(
        most <= allowed,
        "{most} requests in one second, over {allowed}"
    );
    stop(a, &la).await;
    stop(b, &lb).await;
}

#[tokio::test]
async fn a_job_of_a_named_workspace_goes_to_that_workspace_with_its_credentials() {
    let env = TestEnv::new().await;
    let eu = Simulator::start(SimConfig {
        site_id: "eu-site".into(),
        track_api_key: "eu-key".into(),
        ..SimConfig::default()
    })
    .await
    .expect("second simulator");
    env.write_config(&format!(
        "workspaces:\n  eu:\n    site_id: eu-site\n    track_api_key: eu-key\n    track_url: {}\n    track_rate_limit_per_sec: 50\n",
        eu.url()
    ));
    env.write_data("people.csv", &people_csv(5));
    env.write_job("us-people", PEOPLE_JOB);
    env.write_job("eu-people", &format!("workspace: eu\n{PEOPLE_JOB}"));

    let report = env.run("eu-people").await;
    assert_eq!(report.counts.rows_delivered, 5, "{report:?}");
    assert_eq!(
        eu.operation_count(),
        5,
        "the eu job went to the eu workspace"
    );
    assert_eq!(env.sim.operation_count(), 0, "and not to the default one");
    assert!(
        eu.requests().iter().all(|r| r.auth_ok),
        "with the eu credentials"
    );

    env.run("us-people").await;
    assert_eq!(
        env.sim.operation_count(),
        5,
        "the other job uses `customerio`"
    );
    assert_eq!(eu.operation_count(), 5);
}
