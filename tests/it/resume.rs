//! Crash safety through the real binary: SIGKILL at three points, SIGTERM with a grace period.
//!
//! Kill and stop points are counts of delivered operations, never times: the simulator holds
//! requests from the chosen count on, the test waits until the child is stuck there, acts, and
//! then lets the held requests go (as a real server would still apply what it had received).

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use crate::helpers::*;

fn spawn(env: &TestEnv, job: &str) -> Child {
    let mut c = tokio::process::Command::from(env.cli());
    c.args(["run", job])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cio-sync")
}

/// Runs `job` until `n` operations have arrived in all, then SIGKILLs it while rows remain.
async fn run_and_kill_at(env: &TestEnv, job: &str, n: usize) {
    env.sim.hold_from(n);
    let mut child = spawn(env, job);
    wait_until_held(env, &mut child, n).await;
    child.kill().await.expect("SIGKILL");
    env.sim.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_killed_at_three_points_then_restarted_deliver_every_row_and_each_event_once() {
    const N: usize = 20_000;
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 4, batch: { max_items: 100, max_bytes: 480000 } }\n");
    env.write_data("orders.csv", &orders_csv(N));
    env.write_data("people.csv", &people_csv(N));
    env.write_job("orders", ORDERS_JOB);
    env.write_job("people", PEOPLE_JOB);

    for job in ["orders", "people"] {
        let base = env.sim.operation_count();
        for at in [3_000, 9_000, 15_000] {
            run_and_kill_at(&env, job, base + at).await;
        }
        let out = env.cli_output(&["run", job]).await;
        assert_exit(&out, 0);
        assert!(
            stdout(&out).contains("resumed after row"),
            "the last run resumed: {}",
            stdout(&out)
        );
    }

    let ops = env.sim.operations();
    assert_each_event_once(&ops, &expected_event_ids(N));
    let identified: Vec<_> = ops
        .iter()
        .filter(|o| o.action == "identify")
        .cloned()
        .collect();
    assert_eq!(ids_of(&identified).len(), N, "every person arrived");
    // Re-sends are bounded by what was in flight (and not yet checkpointed) at each kill.
    let resent_events = env.sim.duplicate_events().len();
    let identifies = ops.iter().filter(|o| o.action == "identify").count();
    eprintln!("re-sent events: {resent_events}, identify calls: {identifies} for {N} people");
    // At most the window of rows past the checkpoint, (concurrency + 1) × batch, per kill.
    let bound = 3 * (4 + 1) * 100;
    assert!(resent_events <= bound, "{resent_events}");
    assert!(identifies <= N + bound, "{identifies}");

    let out = env.cli_output(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let aborted = v["runs"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["outcome"] == "aborted").count())
        .unwrap_or(0);
    assert_eq!(aborted, 6, "killed runs are marked aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_reading_finishes_in_flight_requests_and_writes_the_checkpoint() {
    const N: usize = 5_000;
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 2, batch: { max_items: 50, max_bytes: 480000 } }\nshutdown: { grace_secs: 30 }\n");
    env.write_data("orders.csv", &orders_csv(N));
    env.write_job("orders", ORDERS_JOB);
    env.sim.hold_from(1_000);
    let mut child = spawn(&env, "orders");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr_lines = child.stderr.take().expect("piped stderr");
    let log_writer = log.clone();
    let copying = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr_lines).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log_writer.lock().unwrap_or_else(|p| p.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    wait_until_held(&env, &mut child, 1_000).await;
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    // Only once the run has stopped reading may its held requests finish.
    let logged = |needle: &str| {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(needle)
    };
    wait_for(&mut child, "the run to log \"Stop requested\"", || {
        logged("Stop requested")
    })
    .await;
    env.sim.release();
    let out = child.wait_with_output().await.expect("wait");
    copying.await.expect("stderr copied");
    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(out.status.code(), Some(130), "{}{log}", stdout(&out),);
    assert!(
        stdout(&out).contains("orders: interrupted"),
        "{}",
        stdout(&out)
    );
    let at_stop = env.sim.operation_count();
    assert!(at_stop < N, "stopped early: {at_stop}");

    let out = env.cli_output(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let checkpointed = v["checkpoints"][0]["position"]["resume"]["row"]
        .as_u64()
        .unwrap_or(0) as usize;
    assert_eq!(
        checkpointed, at_stop,
        "in-flight batches finished and the checkpoint covers exactly what arrived"
    );

    let out = env.cli_output(&["run", "orders"]).await;
    assert_exit(&out, 0);
    assert_eq!(env.sim.operation_count(), N);
    assert!(
        env.sim.duplicate_events().is_empty(),
        "a graceful stop re-sends nothing"
    );
}
