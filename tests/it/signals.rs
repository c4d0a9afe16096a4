//! Signals through the real binary: SIGHUP in the middle of a run is logged and ignored by
//! `run` and is a reload for the daemon, and either way the run delivers every row; a
//! SIGTERM-stopped daemon exits 0.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cio_sync::simulator::Faults;
use tokio::process::Child;

use crate::helpers::*;

const N: usize = 3_000;

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

/// A job slow enough (small batches, simulator latency) that a signal lands mid-run.
async fn slow_env(schedule: Option<&str>) -> TestEnv {
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 2, batch: { max_items: 50, max_bytes: 480000 } }\n");
    env.write_data("orders.csv", &orders_csv(N));
    let job = match schedule {
        Some(s) => format!("schedule: \"{s}\"\n{ORDERS_JOB}"),
        None => ORDERS_JOB.to_string(),
    };
    env.write_job("orders", &job);
    env.sim.set_faults(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    });
    env
}

/// Waits until `n` operations reached the simulator, failing if the child ends first.
async fn wait_for_operations(env: &TestEnv, child: &mut Child, n: usize, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.sim.operation_count() < n {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "cio-sync ended ({status}) before {n} operations arrived:\n{}",
                read(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} operations at the simulator within 120 s ({} arrived)",
            env.sim.operation_count()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_in_the_middle_of_run_is_ignored_and_every_row_is_delivered() {
    let env = slow_env(None).await;
    let log = env.path().join("stderr.log");
    let mut child = tokio::process::Command::from(env.cli())
        .args(["run", "orders"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn cio-sync run");
    wait_for_operations(&env, &mut child, 500, &log).await;
    signal(&child, "-HUP");
    let at_hup = env.sim.operation_count();
    assert!(at_hup < N, "the SIGHUP landed mid-run ({at_hup} of {N})");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the run finished within 120 s of the SIGHUP")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the run survived SIGHUP and finished: {}{}",
        stdout(&out),
        read(&log)
    );
    assert!(
        stdout(&out).contains(&format!("orders: succeeded — read {N}, delivered {N}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.sim.operation_count(), N, "every row arrived");
    assert!(env.sim.duplicate_events().is_empty(), "and none twice");
    assert!(
        read(&log).contains("SIGHUP received"),
        "the SIGHUP is logged: {}",
        read(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_to_the_daemon_mid_run_reloads_and_the_run_delivers_every_row() {
    let env = slow_env(Some("* * * * * *")).await;
    let log = env.path().join("stderr.log");
    let mut daemon = tokio::process::Command::from(env.cli())
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn cio-sync daemon");
    wait_for_operations(&env, &mut daemon, 500, &log).await;
    signal(&daemon, "-HUP");
    let at_hup = env.sim.operation_count();
    assert!(at_hup < N, "the SIGHUP landed mid-run ({at_hup} of {N})");

    // The scheduled run goes on to the end; later ticks find nothing new to send.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(env.sim.operation_count() >= N && read(&log).contains("Scheduled run finished")) {
        if let Some(status) = daemon.try_wait().expect("try_wait") {
            panic!("the daemon ended ({status}) after SIGHUP:\n{}", read(&log));
        }
        assert!(
            Instant::now() < deadline,
            "the scheduled run did not finish within 120 s of the SIGHUP ({} of {N} arrived):\n{}",
            env.sim.operation_count(),
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = read(&log);
    assert!(
        text.contains("SIGHUP received: reloading the configuration and the job files.")
            && text.contains("Reloaded: changes take effect from each job's next tick; running jobs finish as they started."),
        "the daemon says what it did with the SIGHUP:\n{text}"
    );
    assert!(
        text.contains(&format!("delivered={N}")),
        "the run that was going at the SIGHUP delivered every row:\n{text}"
    );

    signal(&daemon, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), daemon.wait())
        .await
        .expect("the daemon stopped within 60 s of SIGTERM")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM-stopped daemon exits 0:\n{}",
        read(&log)
    );
    assert_eq!(env.sim.operation_count(), N, "every row arrived");
    assert!(env.sim.duplicate_events().is_empty(), "and none twice");
}
