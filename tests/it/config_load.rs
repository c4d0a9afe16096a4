//! Loading configuration through the real binary: environment overrides, empty secrets,
//! paths resolved against the file that names them, and URL credentials kept out of every
//! output and the state database.

use sqlx::{ConnectOptions, Connection, Executor, Row};

use crate::helpers::*;

/// A local port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn state_errors(env: &TestEnv) -> Vec<(String, Option<String>)> {
    let path = env.path().join("state/state.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .connect()
        .await
        .expect("open the state database");
    let rows = sqlx::query("SELECT job, error FROM runs ORDER BY job")
        .fetch_all(&mut conn)
        .await
        .expect("read runs");
    rows.iter()
        .map(|r| (r.get::<String, _>("job"), r.get::<Option<String>, _>("error")))
        .collect()
}

#[tokio::test]
async fn a_source_url_password_shows_in_no_output_and_no_state_table() {
    let env = TestEnv::new().await;
    let port = closed_port();
    let secrets = ["Hunter2Secret", "Hunter3Secret", "ter4Secret", "Hunter5Secret"];
    let job = |url: String| {
        format!(
            "source: {{ sql: {{ url: \"{url}\", query: \"SELECT 1 AS id\", connect_timeout_secs: 2 }} }}\nidentify: {{ identifier: {{ id: id }} }}\n"
        )
    };
    // Parses and is refused at connect; the password also in a parameter spelled oddly.
    env.write_job(
        "refused",
        &job(format!(
            "postgres://app:Hunter2Secret@127.0.0.1:{port}/crm?sslpassword=Hunter3Secret&PassWord=Hunter5Secret"
        )),
    );
    // An unencoded `/` and `?` in the password: no URL parser reads this as intended.
    env.write_job(
        "unparsable",
        &job(format!("postgres://app:hun/ter4Secret?@127.0.0.1:{port}/crm")),
    );
    let mut outputs = Vec::new();
    for args in [
        &["run", "refused"][..],
        &["-vv", "--log-format", "json", "run", "unparsable"],
        &["validate", "--connect"],
        &["status"],
        &["status", "--json"],
    ] {
        let out = env.cli_output(args).await;
        outputs.push((args.join(" "), out));
    }
    assert_ne!(outputs[0].1.status.code(), Some(0), "the refused source fails the run");
    assert!(
        stderr(&outputs[0].1).contains(&format!("127.0.0.1:{port}"))
            || stdout(&outputs[0].1).contains(&format!("127.0.0.1:{port}")),
        "the error still names the database: {}",
        stderr(&outputs[0].1)
    );
    for (args, out) in &outputs {
        let all = format!("{}{}", stdout(out), stderr(out));
        for s in secrets {
            assert!(!all.contains(s), "`cio-sync {args}` showed {s}: {all}");
        }
    }
    let runs = state_errors(&env).await;
    assert!(
        runs.iter().any(|(job, e)| job == "refused" && e.is_some()),
        "the failed run's error is stored: {runs:?}"
    );
    for (job, error) in &runs {
        for s in secrets {
            assert!(
                !error.as_deref().unwrap_or_default().contains(s),
                "runs.error of {job} holds {s}: {error:?}"
            );
        }
    }
    for entry in std::fs::read_dir(env.path().join("state")).expect("state dir").flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} in {}",
                entry.path().display()
            );
        }
    }
}

#[tokio::test]
async fn a_relative_sqlite_source_is_found_from_another_working_directory() {
    let env = TestEnv::new().await;
    let db = env.path().join("jobs/data/source.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true)
        .connect()
        .await
        .expect("create the source");
    conn.execute(
        "CREATE TABLE people (customer_id TEXT, email TEXT);
         INSERT INTO people VALUES ('u-1', 'a@x.com'), ('u-2', 'b@x.com'), ('u-3', 'c@x.com');",
    )
    .await
    .expect("fill the source");
    conn.close().await.expect("close");
    env.write_job(
        "people",
        "source: { sql: { url: \"sqlite://data/source.db\", query: \"SELECT customer_id, email FROM people\" } }\nidentify: { identifier: { id: customer_id } }\n",
    );
    // Where systemd starts the daemon: not the folder of the job file.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let mut c = env.cli();
    c.current_dir(elsewhere.path()).args(["run", "people"]);
    let out = env.output_of(c).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let mut ids: Vec<String> = env
        .sim
        .operations()
        .iter()
        .filter_map(|op| op.identifiers.get("id").cloned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["u-1", "u-2", "u-3"]);
    assert!(
        std::fs::read_dir(elsewhere.path()).expect("read").next().is_none(),
        "nothing was created in the working directory"
    );
}

#[tokio::test]
async fn environment_overrides_reach_the_binary_and_strays_are_refused_by_name() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(2));
    env.write_job("people", PEOPLE_JOB);
    let with = |vars: &[(&str, &str)]| {
        let mut c = env.cli();
        c.arg("validate");
        for (k, v) in vars {
            c.env(k, v);
        }
        env.output_of(c)
    };
    let ok = with(&[("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC", "50")]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    // The file's rate is valid, so this refusal shows the override was applied after it.
    let zero = with(&[("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC", "0")]).await;
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    assert!(
        stderr(&zero).contains("`track.rate_limit_per_sec`: must be greater than 0"),
        "{}",
        stderr(&zero)
    );

    let stray = with(&[
        ("CIO_SYNC__TRACK__RATE_LIMT", "5"),
        ("CIO_SYNC__TRACK__TIMEOUT_SECS", "soon"),
    ])
    .await;
    assert_eq!(stray.status.code(), Some(2), "{}", stderr(&stray));
    let err = stderr(&stray);
    assert!(
        err.contains("`track.rate_limt`: CIO_SYNC__TRACK__RATE_LIMT sets a key config.yaml does not have"),
        "{err}"
    );
    assert!(
        err.contains("`track.timeout_secs`: CIO_SYNC__TRACK__TIMEOUT_SECS does not hold a valid value"),
        "{err}"
    );
}

#[tokio::test]
async fn validate_refuses_an_empty_secret_naming_the_variable_and_the_key() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(2));
    env.write_job("people", PEOPLE_JOB);
    let mut c = env.cli();
    c.arg("validate").env("CIO_SITE_ID", "");
    let out = env.output_of(c).await;
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "config.yaml: `customerio.site_id`: ${CIO_SITE_ID} is set but empty, and job people needs it"
        ),
        "{}",
        stderr(&out)
    );
}
