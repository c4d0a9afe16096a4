//! `cio-sync validate` as the pre-flight, through the real binary: what it catches without
//! the network (and that it writes nothing), and what `--connect` adds.

use std::time::{Duration, Instant};

use crate::helpers::*;

/// A local port nobody listens on: bound, noted, and closed again.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn files_under(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn validate_lists_every_missing_file_column_and_state_problem_in_one_pass() {
    let env = TestEnv::new().await;
    // A file where the state's folder should be: the state cannot be created (a permission
    // check would not show it, as the tests may run as root, which access(2) always allows).
    std::fs::write(env.path().join("blocker"), "not a folder").expect("blocker");
    env.write_config("");
    let config = std::fs::read_to_string(env.config_path()).expect("config");
    std::fs::write(
        env.config_path(),
        config.replace("sqlite://state/state.db", "sqlite://blocker/state.db"),
    )
    .expect("config");
    env.write_job(
        "missing",
        "source: { csv: { path: data/nope.csv } }\nidentify: { identifier: { id: customer_id } }\n",
    );
    env.write_data("people.csv", "id,mail\nu-1,a@x.com\n");
    env.write_job("people", PEOPLE_JOB);
    env.write_job(
        "lite",
        "source: { sql: { url: \"sqlite://data/absent.db\", query: \"SELECT id FROM t\" } }\nidentify: { identifier: { id: id } }\n",
    );
    let before = files_under(env.path());

    let out = env.cli_output(&["validate"]).await;

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("job `missing`") && err.contains("nope.csv: cannot open"),
        "{err}"
    );
    assert!(
        err.contains("the job uses column `customer_id` (in `identify.identifier`), but the source has no such column; it has: id, mail"),
        "the header is listed: {err}"
    );
    assert!(
        err.contains("job `lite`") && err.contains("absent.db does not exist"),
        "{err}"
    );
    assert!(
        err.contains("`state.url`") && err.contains("blocker is not a folder"),
        "{err}"
    );
    assert!(err.contains("cio-sync: 4 problems found"), "{err}");
    assert!(!stdout(&out).contains("OK"), "{}", stdout(&out));
    assert_eq!(before, files_under(env.path()), "validate wrote nothing");
}

#[tokio::test]
async fn validate_passes_a_good_config_and_creates_no_state() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", PEOPLE_JOB);
    let out = env.cli_output(&["validate"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("OK (1 job: people)"),
        "{}",
        stdout(&out)
    );
    assert!(!env.path().join("state").exists(), "nothing created");
}

#[tokio::test]
async fn validate_connect_fails_a_wrong_app_key_naming_cio_app_api_key() {
    let env = TestEnv::new().await;
    env.write_job("reporting", "pull: { segments: true }\n");
    let mut c = env.cli();
    c.args(["validate", "--connect"])
        .env("CIO_APP_API_KEY", "not-the-app-key");
    let out = env.output_of(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("App API check") && err.contains("CIO_APP_API_KEY"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-app-key"),
        "the key is not shown: {err}"
    );
    assert!(err.contains("1 problem found"), "{err}");

    // The right key passes, with one App request and nothing written.
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("App API: key accepted"),
        "{}",
        stdout(&out)
    );
    assert!(!env.path().join("state").exists(), "nothing created");
}

#[tokio::test]
async fn validate_connect_fails_at_once_when_the_state_postgres_refuses_connections() {
    let env = TestEnv::new().await;
    let port = closed_port();
    let url = format!("postgres://postgres:pw-not-shown@127.0.0.1:{port}/cio_state");
    let started = Instant::now();
    let out = env
        .cli_output(&["--state", &url, "validate", "--connect"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}: connection refused")),
        "the root cause is named: {err}"
    );
    assert!(!err.contains("pw-not-shown"), "password masked: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "reported at once, not after a pool timeout ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn validate_connect_opens_a_reachable_state_postgres_and_migrates_nothing() {
    let env = TestEnv::with_state(StateDb::Postgres).await;
    env.write_config("");
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    use sqlx::{Connection, Row};
    let mut db = sqlx::PgConnection::connect(&env.state_url())
        .await
        .expect("the test's state database");
    let tables: i64 =
        sqlx::query("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&mut db)
            .await
            .expect("count tables")
            .get(0);
    assert_eq!(tables, 0, "validate --connect created no table");
}
