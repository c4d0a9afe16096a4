//! What a user reads, through the real binary: `status`, dead-letter commands, help, the
//! demo, the daemon's log, and a refused database reported with its cause.

use std::time::{Duration, Instant};

use cio_sync::simulator::{RejectRule, SimConfig};
use cio_sync::state::StateStore;

use crate::helpers::*;

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs `people` once with one row refused, so it has a run, a checkpoint and a dead letter.
async fn with_one_dead_letter(env: &TestEnv) {
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", PEOPLE_JOB);
    env.sim.reject_items(RejectRule {
        identifier_id: "u-000002".into(),
        reason: "nope".into(),
    });
    let out = env.cli_output(&["run", "people"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("  1 row dead-lettered"),
        "singular: {}",
        stdout(&out)
    );
}

#[tokio::test]
async fn status_aligns_columns_filters_by_job_marks_removed_jobs_and_shows_next_runs() {
    let env = TestEnv::new().await;
    with_one_dead_letter(&env).await;
    env.write_data("orders.csv", &orders_csv(2));
    env.write_job("a-much-longer-job-name", ORDERS_JOB);
    let out = env.cli_output(&["run", "a-much-longer-job-name"]).await;
    // Its first order is for u-000002, whom the simulator still refuses.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // `people` goes away; a scheduled job arrives.
    std::fs::remove_file(env.path().join("jobs/people.yaml")).expect("remove job");
    env.write_job(
        "nightly",
        &format!("schedule: \"0 0 2 * * *\"\n{}", ORDERS_JOB),
    );

    let out = env.cli_output(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let section = |title: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| *l != title)
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter(|l| !l.starts_with("      error"))
            .map(str::to_string)
            .collect()
    };
    let runs = section("Last runs:");
    assert_eq!(runs.len(), 2, "{text}");
    // Aligned: the outcome column starts at the same place on every line.
    let at = |l: &str, word: &str| l.find(word).unwrap_or(usize::MAX);
    let outcome_cols: Vec<usize> = runs
        .iter()
        .map(|l| at(l, "succeeded").min(at(l, "rejected_rows")))
        .collect();
    assert!(
        outcome_cols
            .iter()
            .all(|c| *c == outcome_cols[0] && *c != usize::MAX),
        "{text}"
    );
    assert!(
        runs.iter().any(|l| l.contains("people (removed)")),
        "a removed job's leftovers are marked: {text}"
    );
    let checkpoints = section("Checkpoints:");
    assert_eq!(checkpoints.len(), 2, "{text}");
    let after_cols: Vec<usize> = checkpoints.iter().map(|l| at(l, "after row")).collect();
    assert!(after_cols.iter().all(|c| *c == after_cols[0]), "{text}");
    let next = section("Next runs (UTC):");
    assert_eq!(next.len(), 1, "{text}");
    assert!(
        next[0].contains("T02:00:00Z") && next[0].contains("nightly"),
        "{text}"
    );

    // --job filters every section.
    let text = stdout(&env.cli_output(&["status", "--job", "nightly"]).await);
    assert!(!text.contains("people"), "{text}");
    assert!(!text.contains("a-much-longer-job-name"), "{text}");
    assert!(text.contains("nightly"), "{text}");

    // JSON: RFC 3339 times, the same facts.
    let out = env.cli_output(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for run in v["runs"].as_array().expect("runs") {
        let t = run["started_at"].as_str().expect("started_at is text");
        chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339");
        assert_eq!(run["removed"], run["job"] == "people", "{run}");
    }
    let t = v["checkpoints"][0]["updated_at"].as_str().expect("text");
    chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339");
    assert_eq!(v["schedules"][0]["job"], "nightly");
    let text = stdout(
        &env.cli_output(&["status", "--json", "--job", "people"])
            .await,
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert!(
        v["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .iter()
            .all(|c| c["job"] == "people"),
        "{text}"
    );
}

#[tokio::test]
async fn dead_letters_of_an_unknown_job_is_a_usage_error_naming_the_jobs() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(1));
    env.write_job("people", PEOPLE_JOB);
    for args in [
        &["dead-letters", "nosuchjob"][..],
        &["dead-letters", "purge", "nosuchjob"][..],
        &["dead-letters", "retry", "nosuchjob"][..],
    ] {
        let out = env.cli_output(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("no job named `nosuchjob`") && err.contains("(jobs: people)"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn retry_with_nothing_to_retry_records_no_run_and_exits_0() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(2));
    env.write_job("people", PEOPLE_JOB);
    let out = env.cli_output(&["run", "people"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = env.cli_output(&["dead-letters", "retry", "people"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("people: no dead letters to retry"),
        "{}",
        stdout(&out)
    );
    let out = env.cli_output(&["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "only the real run is recorded: {v}");
    assert_eq!(runs[0]["outcome"], "succeeded");
}

#[tokio::test]
async fn retry_against_a_busy_lease_is_skipped_with_exit_4() {
    let env = TestEnv::new().await;
    with_one_dead_letter(&env).await;
    let state = StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state");
    assert!(
        state
            .try_lease("people", "another-host:1:replica", 60_000)
            .await
            .expect("lease"),
        "the other replica holds the lease"
    );
    let out = env.cli_output(&["dead-letters", "retry", "people"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_eq!(state.count_dead_letters("people").await.expect("count"), 1);
}

#[tokio::test]
async fn dead_letter_list_says_how_many_more_there_are() {
    let env = TestEnv::new().await;
    with_one_dead_letter(&env).await;
    env.sim.reject_items(RejectRule {
        identifier_id: "u-000003".into(),
        reason: "nope".into(),
    });
    let out = env.cli_output(&["run", "people", "--full"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = env
        .cli_output(&["dead-letters", "people", "--limit", "1"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("… and 1 more"), "{}", stdout(&out));
}

#[tokio::test]
async fn simulate_help_names_the_credentials_it_accepts() {
    let env = TestEnv::new().await;
    let out = env.cli_output(&["simulate", "--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let sim = SimConfig::default();
    for credential in [&sim.site_id, &sim.track_api_key, &sim.app_api_key] {
        assert!(text.contains(credential.as_str()), "{credential}: {text}");
    }
    assert!(text.contains("Address and port to listen on"), "{text}");
}

fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[tokio::test]
async fn the_demo_counts_hidden_dead_letters_and_its_suggested_commands_work() {
    let env = TestEnv::new().await;
    let state = format!("sqlite://{}", env.path().join("demo.db").display());
    let mut c = env.cli();
    c.args(["--config"])
        .arg(repo_file("config.yaml"))
        .args(["--state", &state, "demo"]);
    let out = env.output_of(c).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("… and "),
        "hidden dead letters counted: {text}"
    );
    // Commands on their own line, and those quoted in backticks.
    let suggested: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cargo run -- "))
        .chain(
            text.split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|quoted| quoted.strip_prefix("cargo run -- ")),
        )
        .collect();
    assert!(
        suggested
            .iter()
            .any(|s| s.contains("dead-letters crm-people")),
        "{text}"
    );
    assert!(
        suggested.iter().any(|s| s.ends_with(" status")),
        "the demo suggests commands cargo can run: {text}"
    );
    for cmd in suggested {
        let args: Vec<&str> = cmd.trim_matches('`').split_whitespace().collect();
        let mut c = env.cli();
        c.arg("--config").arg(repo_file("config.yaml")).args(&args);
        let out = env.output_of(c).await;
        assert_eq!(out.status.code(), Some(0), "{cmd}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn a_config_mistake_makes_the_demo_exit_2() {
    let env = TestEnv::new().await;
    env.write_config("trak: {}\n");
    let out = env.cli_output(&["demo"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown field `trak`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("1 problem found"), "{}", stderr(&out));
}

#[tokio::test]
async fn the_daemon_log_has_none_of_the_scheduler_crates_chatter() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(1));
    env.write_job(
        "people",
        &format!("schedule: \"0 0 2 1 1 *\"\n{PEOPLE_JOB}"),
    );
    let mut c = tokio::process::Command::from(env.cli());
    c.arg("daemon")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("daemon");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if log
            .lock()
            .map(|l| l.contains("daemon started"))
            .unwrap_or(false)
        {
            break;
        }
        if let Some(status) = child.try_wait().expect("poll daemon") {
            panic!(
                "the daemon exited ({status}) before it started: {:?}",
                log.lock().map(|l| l.clone())
            );
        }
        assert!(
            Instant::now() < deadline,
            "waited 60 s for \"daemon started\" in the daemon's log: {:?}",
            log.lock().map(|l| l.clone())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the daemon stops within 60 s of SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let _ = reader.await;
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(log.contains("daemon started"), "{log}");
    for noise in ["Uninited", "Job creator created"] {
        assert!(!log.contains(noise), "`{noise}` in the daemon's log: {log}");
    }
}

#[tokio::test]
async fn a_state_database_that_refuses_connections_is_reported_at_once_by_every_command() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(1));
    env.write_job("people", PEOPLE_JOB);
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/cio_state");
    for args in [
        &["status"][..],
        &["run", "people"][..],
        &["dead-letters", "people"][..],
        &["daemon"][..],
    ] {
        let started = Instant::now();
        let mut all = vec!["--state", url.as_str()];
        all.extend_from_slice(args);
        let out = env.cli_output(&all).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}"))
                && err.to_lowercase().contains("connection refused"),
            "{args:?} names the root cause: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{args:?} reported at once, not after a pool timeout ({:?})",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn status_needs_no_credentials_and_keeps_variable_defaults() {
    let env = TestEnv::new().await;
    with_one_dead_letter(&env).await;
    let config = std::fs::read_to_string(env.config_path()).expect("config");
    std::fs::write(
        env.config_path(),
        config.replace("region: us", "region: ${CIO_REGION:-us}"),
    )
    .expect("config");
    for args in [&["status"][..], &["dead-letters", "people"][..]] {
        let mut c = env.cli();
        c.args(args)
            .env_remove("CIO_SITE_ID")
            .env_remove("CIO_TRACK_API_KEY")
            .env_remove("CIO_APP_API_KEY")
            .env_remove("CIO_REGION");
        let out = env.output_of(c).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("people"), "{}", stdout(&out));
    }
}
