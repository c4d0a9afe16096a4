//! Crash safety through the real binary: SIGKILL at three points, SIGTERM with a grace period.

use std::collections::HashSet;
use std::process::Stdio;

use std::time::{Duration, Instant};
use tokio::process::Child;

use cio_sync::simulator::Faults;

use crate::faults::expected_event_ids;
use crate::helpers::*;

fn spawn(env: &TestEnv, job: &str) -> Child {
    let mut c = tokio::process::Command::from(env.cli());
    c.args(["run", job])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cio-sync")
}

/// Waits until the simulator holds at least `n` operations, then SIGKILLs the child.
async fn kill_after(env: &TestEnv, child: &mut Child, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.sim.operation_count() < n {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before {n} operations arrived");
        }
        assert!(Instant::now() < deadline, "no progress to {n} operations");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().await.expect("SIGKILL");
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
    // Slow enough that the kills land mid-run.
    env.sim.set_faults(Faults {
        latency: Duration::from_millis(15),
        ..Faults::default()
    });

    for job in ["orders", "people"] {
        let base = env.sim.operation_count();
        for at in [3_000, 9_000, 15_000] {
            let mut child = spawn(&env, job);
            kill_after(&env, &mut child, base + at).await;
        }
        let out = env.cli_output(&["run", job]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("resumed after row"),
            "the last run resumed: {}",
            stdout(&out)
        );
    }

    let ops = env.sim.operations();
    let events: Vec<String> = ops.iter().filter_map(|o| o.event_id.clone()).collect();
    assert_eq!(events.len(), N, "each event accepted exactly once");
    assert_eq!(
        events.into_iter().collect::<HashSet<_>>(),
        expected_event_ids(N)
    );
    let people: HashSet<String> = ops
        .iter()
        .filter(|o| o.action == "identify")
        .map(|o| o.identifiers["id"].clone())
        .collect();
    assert_eq!(people.len(), N, "every person arrived");
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
    env.sim.set_faults(Faults {
        latency: Duration::from_millis(30),
        ..Faults::default()
    });
    let child = spawn(&env, "orders");
    while env.sim.operation_count() < 1_000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().await.expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
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
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.sim.operation_count(), N);
    assert!(
        env.sim.duplicate_events().is_empty(),
        "a graceful stop re-sends nothing"
    );
}
