//! `backfill`, `runs` and `status` through the real binary: the window is exact, a backfill
//! killed twice resumes to every event once in per-person time order, the 72-hour rule, the
//! `--rate` budget check, the backfill checkpoint in `status`, and `status`'s exit code.
//!
//! Kill points are counts of delivered operations (the simulator holds requests from there
//! on), never times.

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;

use cio_sync::mapping::event_id::event_id;

use crate::helpers::*;

/// `orders_csv` row `i` is at this Unix time.
fn ts(i: usize) -> i64 {
    1_650_000_000 + i as i64 * 60
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn ids_for(rows: impl Iterator<Item = usize>) -> HashSet<String> {
    rows.map(|i| event_id("orders", &format!("o-{i:06}"), "purchase", Some(ts(i))))
        .collect()
}

/// Each person's events arrived in timestamp order.
#[track_caller]
fn assert_in_time_order_per_person(ops: &[cio_sync::simulator::RecordedOp]) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.action == "event") {
        let who = op.identifiers["id"].as_str();
        let at = op.timestamp.expect("events carry their timestamp");
        if let Some(prev) = last.insert(who, at) {
            assert!(
                prev <= at,
                "{who}: event at {at} arrived after one at {prev}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_sends_exactly_the_events_of_its_window_with_their_timestamps() {
    let env = TestEnv::new().await;
    env.write_data("orders.csv", &orders_csv(1_000));
    env.write_job("orders", ORDERS_JOB);
    // [row 101, row 301): rows 101..=300.
    let (from, to) = (rfc3339(ts(101)), rfc3339(ts(301)));
    let out = env
        .cli_output(&["backfill", "orders", "--from", &from, "--to", &to])
        .await;
    assert_exit(&out, 0);
    let ops = env.sim.operations();
    assert_each_event_once(&ops, &ids_for(101..=300));
    let times: HashSet<i64> = ops.iter().filter_map(|o| o.timestamp).collect();
    assert_eq!(times, (101..=300).map(ts).collect(), "original timestamps");
    assert_in_time_order_per_person(&ops);

    // The window's checkpoint is its own, visible in `status`, and the job's is untouched.
    let out = env.cli_output(&["status"]).await;
    assert_exit(&out, 0);
    let scope = format!("orders [backfill:{from}..{to}]");
    assert!(stdout(&out).contains(&scope), "{}", stdout(&out));
    let out = env.cli_output(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let scopes: Vec<&str> = v["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter_map(|c| c["scope"].as_str())
        .collect();
    assert_eq!(scopes, vec![format!("backfill:{from}..{to}").as_str()]);

    // Run again: the window is done, nothing is sent.
    let before = env.sim.requests().len();
    let out = env
        .cli_output(&["backfill", "orders", "--from", &from, "--to", &to])
        .await;
    assert_exit(&out, 0);
    assert_eq!(
        env.sim.requests().len(),
        before,
        "a finished window sends nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_twice_then_resumed_delivers_every_event_once_in_time_order_per_person() {
    const N: usize = 12_000;
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 4, batch: { max_items: 100, max_bytes: 480000 } }\n");
    env.write_data("orders.csv", &orders_csv(N));
    env.write_job("orders", ORDERS_JOB);
    // The window leaves out the first and last 1000 rows.
    let (from, to) = (rfc3339(ts(1_001)), rfc3339(ts(N - 999)));
    let args = ["backfill", "orders", "--from", &from, "--to", &to];
    for at in [2_000, 6_000] {
        env.sim.hold_from(at);
        let mut c = tokio::process::Command::from(env.cli());
        let mut child = c
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cio-sync");
        wait_until_held(&env, &mut child, at).await;
        child.kill().await.expect("SIGKILL");
        env.sim.release();
        assert!(
            env.sim.operations().len() < N - 2_000,
            "killed while events of the window remained"
        );
    }
    let out = env.cli_output(&args).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("resumed after row"),
        "the last run resumed: {}",
        stdout(&out)
    );
    let ops = env.sim.operations();
    assert_each_event_once(&ops, &ids_for(1_001..=N - 1_000));
    assert_in_time_order_per_person(&ops);

    let out = env.cli_output(&["runs", "orders", "--json"]).await;
    assert_exit(&out, 0);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let outcomes: Vec<(&str, &str)> = runs
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("backfill", "succeeded"),
            ("backfill", "aborted"),
            ("backfill", "aborted")
        ],
        "newest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_in_the_last_72_hours_is_refused_off_a_terminal_unless_yes() {
    let env = TestEnv::new().await;
    let now = chrono::Utc::now().timestamp();
    let mut csv = String::from("order_id,customer_id,ordered_at,total\n");
    for i in 1..=20 {
        csv.push_str(&format!("o-{i:06},u-{i},{},1.00\n", now - 3600 + i));
    }
    env.write_data("orders.csv", &csv);
    env.write_job("orders", ORDERS_JOB);
    let (from, to) = (rfc3339(now - 7200), rfc3339(now + 60));
    let out = env
        .cli_output(&["backfill", "orders", "--from", &from, "--to", &to])
        .await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("reaches into the last 72 hours") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(env.sim.operation_count(), 0, "nothing sent without --yes");

    let out = env
        .cli_output(&["backfill", "orders", "--from", &from, "--to", &to, "--yes"])
        .await;
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("72 hours"), "{}", stderr(&out));
    assert_eq!(env.sim.operations().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_above_the_workspace_budget_is_refused_naming_the_key_and_a_lower_one_runs() {
    let env = TestEnv::new().await;
    env.write_config("track: { rate_limit_per_sec: 50 }\n");
    env.write_data("orders.csv", &orders_csv(50));
    env.write_job("orders", ORDERS_JOB);
    let window = ["--from", "2020-01-01", "--to", "2025-01-01"];
    let out = env
        .cli_output(&[&["backfill", "orders", "--rate", "80"][..], &window[..]].concat())
        .await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("--rate 80 is above the workspace's budget of 50")
            && err.contains("`track.rate_limit_per_sec`")
            && err.contains("orders"),
        "{err}"
    );
    assert_eq!(env.sim.operation_count(), 0);
    let out = env
        .cli_output(&[&["backfill", "orders", "--rate", "20"][..], &window[..]].concat())
        .await;
    assert_exit(&out, 0);
    assert_eq!(env.sim.operations().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_out_of_time_order_fails_the_backfill_naming_the_line() {
    let env = TestEnv::new().await;
    let mut csv = orders_csv(30);
    csv.push_str(&format!("o-000031,u-000001,{},1.00\n", ts(5)));
    env.write_data("orders.csv", &csv);
    env.write_job("orders", ORDERS_JOB);
    let out = env
        .cli_output(&[
            "backfill",
            "orders",
            "--from",
            "2020-01-01",
            "--to",
            "2025-01-01",
        ])
        .await;
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("line 32") && err.contains("sorted by `ordered_at`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_3_while_a_jobs_last_run_failed_and_runs_shows_the_error() {
    let env = TestEnv::new().await;
    env.write_job("orders", ORDERS_JOB);
    // No data file yet: the run fails.
    let out = env.cli_output(&["run", "orders"]).await;
    assert_exit(&out, 3);
    let out = env.cli_output(&["status"]).await;
    assert_exit(&out, 3);
    assert!(
        stdout(&out).contains("1 failed in a row"),
        "{}",
        stdout(&out)
    );
    let out = env.cli_output(&["runs", "orders", "--json"]).await;
    assert_exit(&out, 0);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(runs[0]["outcome"], "failed");
    assert!(
        runs[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("orders.csv")),
        "{runs}"
    );
    assert!(
        runs[0]["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let out = env.cli_output(&["runs", "orders"]).await;
    assert!(stdout(&out).contains("failed") && stdout(&out).contains("error: "));

    env.write_data("orders.csv", &orders_csv(10));
    let out = env.cli_output(&["run", "orders"]).await;
    assert_exit(&out, 0);
    let out = env.cli_output(&["status", "--json"]).await;
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["jobs"][0]["consecutive_failures"], 0);
    assert_eq!(v["jobs"][0]["failing"], false);
    assert!(v["jobs"][0]["last_success"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_backfill_reads_through_the_cursor_and_sends_exactly_its_window() {
    use sqlx::Connection;
    let env = TestEnv::new().await;
    let file = env.path().join("jobs/data/shop.db");
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", file.display()))
        .await
        .expect("create the source database");
    sqlx::query("CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, ordered_at INTEGER NOT NULL, total TEXT NOT NULL)")
        .execute(&mut c)
        .await
        .expect("table");
    // Stored newest first: only the cursor puts them in time order.
    for i in (1..=500usize).rev() {
        sqlx::query("INSERT INTO orders VALUES ($1, $2, $3, '1.00')")
            .bind(format!("o-{i:06}"))
            .bind(format!("u-{:06}", i % 997 + 1))
            .bind(ts(i))
            .execute(&mut c)
            .await
            .expect("row");
    }
    c.close().await.expect("close the source database");
    env.write_job(
        "orders",
        &ORDERS_JOB.replace(
            "source: { csv: { path: data/orders.csv } }",
            "source:\n  sql:\n    url: \"sqlite://data/shop.db\"\n    query: \"SELECT order_id, customer_id, ordered_at, total FROM orders\"\n    cursor: { column: ordered_at, tiebreak: order_id }\n    batch_rows: 50",
        ),
    );
    let (from, to) = (rfc3339(ts(101)), rfc3339(ts(301)));
    let out = env
        .cli_output(&["backfill", "orders", "--from", &from, "--to", &to])
        .await;
    assert_exit(&out, 0);
    let ops = env.sim.operations();
    assert_each_event_once(&ops, &ids_for(101..=300));
    assert_in_time_order_per_person(&ops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_backfill_with_its_checkpoint_and_the_same_command_resumes_it() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncBufReadExt;
    const N: usize = 6_000;
    let env = TestEnv::new().await;
    env.write_config(
        "track: { batch: { max_items: 100, max_bytes: 480000 } }\nshutdown: { grace_secs: 30 }\n",
    );
    env.write_data("orders.csv", &orders_csv(N));
    env.write_job("orders", ORDERS_JOB);
    let args = [
        "backfill",
        "orders",
        "--from",
        "2020-01-01",
        "--to",
        "2025-01-01",
    ];
    env.sim.hold_from(1_500);
    let mut c = tokio::process::Command::from(env.cli());
    let mut child = c
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cio-sync");
    let log = Arc::new(Mutex::new(String::new()));
    let lines = child.stderr.take().expect("piped stderr");
    let writer = log.clone();
    let copying = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(lines).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = writer.lock().unwrap_or_else(|p| p.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    wait_until_held(&env, &mut child, 1_500).await;
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for(&mut child, "the backfill to log \"Stop requested\"", || {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains("Stop requested")
    })
    .await;
    env.sim.release();
    let out = child.wait_with_output().await.expect("wait");
    copying.await.expect("stderr copied");
    assert_eq!(out.status.code(), Some(130), "{}", stdout(&out));
    let at_stop = env.sim.operation_count();
    assert!(at_stop < N, "stopped early: {at_stop}");

    let out = env.cli_output(&args).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("resumed after row"),
        "{}",
        stdout(&out)
    );
    assert!(
        env.sim.duplicate_events().is_empty(),
        "a graceful stop re-sends nothing"
    );
    assert_each_event_once(&env.sim.operations(), &ids_for(1..=N));
}

/// On a terminal, a backfill of a CSV file shows a bar with the share read and an ETA (run
/// under util-linux `script`, which gives the command a pseudo-terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_backfill_draws_a_bar_with_its_eta() {
    let env = TestEnv::new().await;
    env.write_data("orders.csv", &orders_csv(20_000));
    env.write_job("orders", ORDERS_JOB);
    let cmd = format!(
        "{} backfill orders --from {} --to {}",
        env!("CARGO_BIN_EXE_cio-sync"),
        rfc3339(ts(1)),
        rfc3339(ts(20_001))
    );
    let base = env.cli();
    // `script -q -e -c CMD FILE`: CMD on a pty, its exit code passed on; FILE is the typescript.
    let out = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd])
        .arg(env.dir.path().join("typescript"))
        .current_dir(env.dir.path())
        .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("util-linux `script` runs (Debian package bsdutils)");
    assert_exit(&out, 0);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("orders [") && shown.contains("%  ETA "),
        "no bar with an ETA on the terminal: {shown:?}"
    );
    assert_each_event_once(&env.sim.operations(), &ids_for(1..=20_000));
}
