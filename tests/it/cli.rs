//! The real binary: secrets never shown, dry runs, status, exit codes.

use cio_sync::simulator::RejectRule;

use crate::helpers::*;

const PLANTED: &str = "sk-planted-SECRET-9f8e7d";

#[tokio::test]
async fn a_secret_never_appears_in_logs_dry_run_output_errors_or_the_state_database() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(5));
    env.write_job("people", PEOPLE_JOB);
    let with_secret = |args: &[&str]| {
        let mut c = env.cli();
        c.env("CIO_TRACK_API_KEY", PLANTED)
            .env("CIO_APP_API_KEY", PLANTED)
            .args(args);
        env.output_of(c)
    };

    let dry = with_secret(&["-vv", "run", "people", "--dry-run"]).await;
    assert_exit(&dry, 0);
    assert!(stdout(&dry).contains("would send"), "{}", stdout(&dry));
    // A real run: the simulator refuses the planted key (401), so the error path is covered.
    let run = with_secret(&["-vv", "--log-format", "json", "run", "people"]).await;
    assert_exit(&run, 3);
    assert!(
        stdout(&run).contains("refused the Track credentials"),
        "{}",
        stdout(&run)
    );
    let status = with_secret(&["status", "--json"]).await;
    let validate = with_secret(&["-vv", "validate"]).await;
    for out in [&dry, &run, &status, &validate] {
        let all = format!("{}{}", stdout(out), stderr(out));
        assert!(!all.contains(PLANTED), "secret leaked: {all}");
        assert!(!all.contains(&base64_of_auth()), "basic-auth header leaked");
    }
    let db = std::fs::read(env.path().join("state/state.db")).expect("state db");
    assert!(
        !contains(&db, PLANTED.as_bytes()),
        "secret in the state database"
    );
    for entry in std::fs::read_dir(env.path().join("state"))
        .expect("state dir")
        .flatten()
    {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        assert!(
            !contains(&bytes, PLANTED.as_bytes()),
            "secret in {}",
            entry.path().display()
        );
    }
}

fn base64_of_auth() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{SITE}:{PLANTED}"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn dry_run_shows_operations_and_rejections_and_sends_nothing() {
    let env = TestEnv::new().await;
    env.write_data(
        "people.csv",
        "customer_id,email,plan,signup_at\nu-1,a@x.com,pro,1600000000\n,b@x.com,pro,1600000000\n",
    );
    env.write_job("people", PEOPLE_JOB);
    let out = env.cli_output(&["run", "people", "--dry-run"]).await;
    // Rejections make exit code 1.
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("2 rows read"), "{text}");
    assert!(text.contains(r#""identifiers":{"id":"u-1"}"#), "{text}");
    assert!(
        text.contains("would reject line 3: identifier column `customer_id` is empty"),
        "{text}"
    );
    assert!(env.sim.requests().is_empty(), "nothing sent");
    assert!(!env.path().join("state").exists(), "nothing written");
}

#[tokio::test]
async fn run_prints_a_summary_and_status_reports_runs_and_checkpoints() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(12));
    env.write_job("people", PEOPLE_JOB);
    env.sim.reject_items(RejectRule {
        identifier_id: "u-000003".into(),
        reason: "nope".into(),
    });
    let out = env.cli_output(&["run", "--all"]).await;
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("people: rejected_rows — read 12, delivered 11, rejected 1"),
        "{}",
        stdout(&out)
    );
    let out = env.cli_output(&["status", "--json"]).await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["runs"][0]["job"], "people");
    assert_eq!(v["runs"][0]["outcome"], "rejected_rows");
    assert_eq!(v["runs"][0]["rows_delivered"], 11);
    assert_eq!(v["checkpoints"][0]["position"]["resume"]["row"], 12);
    assert_eq!(v["checkpoints"][0]["position"]["complete"], true);
    let text = stdout(&env.cli_output(&["status"]).await);
    assert!(
        text.contains("people") && text.contains("after row 12, input complete"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_jobs_and_missing_arguments_are_usage_errors() {
    let env = TestEnv::new().await;
    let out = env.cli_output(&["run", "nope"]).await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("no job named `nope`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_job_whose_columns_do_not_exist_fails_with_the_column_and_the_fix() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", "id,mail\nu-1,a@x.com\n");
    env.write_job("people", PEOPLE_JOB);
    let out = env.cli_output(&["run", "people"]).await;
    assert_exit(&out, 3);
    let text = stdout(&out);
    assert!(text.contains("people.yaml: the job uses column `customer_id` (in `identify.identifier`), but the source has no such column; it has: id, mail"), "{text}");
}
