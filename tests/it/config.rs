//! Configuration: strict keys, regions, interpolation, validation through the real binary.

use crate::helpers::*;

#[tokio::test]
async fn an_unknown_key_is_rejected_with_its_name_and_file() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(1));
    env.write_job("people", &format!("{PEOPLE_JOB}  atributes_typo: 1\n"));
    let out = env.cli_output(&["validate"]).await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("people.yaml"), "{err}");
    assert!(err.contains("unknown field `atributes_typo`"), "{err}");
    assert!(
        err.contains("`identify.atributes_typo`"),
        "the key's path is named: {err}"
    );

    // The same in config.yaml, and nothing is written by validating.
    env.write_config("trak: {}\n");
    let before: Vec<_> = walk(env.path());
    let out = env.cli_output(&["validate"]).await;
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("config.yaml: `trak`: unknown field `trak`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before, walk(env.path()), "validate wrote nothing");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_error_is_listed_with_file_and_key() {
    let env = TestEnv::new().await;
    env.write_job("a", "schedule: \"0 25 * * *\"\nsource: { csv: { path: x.csv } }\nidentify: { identifier: { id: a, email: b } }\n");
    env.write_job(
        "b",
        "source: { csv: { path: x.csv } }\ntrack: { identifier: { id: a }, name: \"\" }\n",
    );
    let mut c = env.cli();
    c.arg("validate").env_remove("CIO_TRACK_API_KEY");
    let out = env.output_of(c).await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains(
            "config.yaml: `customerio.track_api_key`: uses ${CIO_TRACK_API_KEY}, which is not set"
        ),
        "{err}"
    );
    let env2 = TestEnv::new().await;
    env2.write_job("a", "schedule: \"0 25 * * *\"\nsource: { csv: { path: x.csv } }\nidentify: { identifier: { id: a, email: b } }\n");
    env2.write_job(
        "b",
        "source: { csv: { path: x.csv } }\ntrack: { identifier: { id: a }, name: \"\" }\n",
    );
    let err = stderr(&env2.cli_output(&["validate"]).await);
    assert!(
        err.contains(
            "a.yaml: `schedule`: `0 25 * * *`: the hour field `25` is not valid: it takes 0-23"
        ),
        "{err}"
    );
    assert!(
        err.contains("a.yaml: `identify.identifier`: set exactly one of"),
        "{err}"
    );
    assert!(
        err.contains("b.yaml: `track.name`: an event name must be 1 to 100 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn the_eu_region_picks_the_eu_hosts() {
    let env = TestEnv::new().await;
    let text = "state: { url: \"sqlite://s.db\" }\ncustomerio: { region: eu, site_id: s, track_api_key: k, app_api_key: a }\n";
    std::fs::write(env.config_path(), text).expect("write");
    let settings =
        cio_sync::config::load_settings(&env.config_path(), &TestEnv::env).expect("settings");
    assert_eq!(
        settings.customerio.track_url,
        "https://track-eu.customer.io"
    );
    assert_eq!(settings.customerio.app_url, "https://api-eu.customer.io");
    let us = text.replace("region: eu", "region: us");
    std::fs::write(env.config_path(), us).expect("write");
    let settings =
        cio_sync::config::load_settings(&env.config_path(), &TestEnv::env).expect("settings");
    assert_eq!(settings.customerio.track_url, "https://track.customer.io");
    assert_eq!(settings.customerio.app_url, "https://api.customer.io");
    let bad = text.replace("region: eu", "region: asia");
    std::fs::write(env.config_path(), bad).expect("write");
    let err = cio_sync::config::load_settings(&env.config_path(), &TestEnv::env).unwrap_err();
    assert_eq!(err[0].key, "customerio.region");
    assert!(
        err[0].message.contains("unknown variant `asia`"),
        "{}",
        err[0].message
    );
}

#[tokio::test]
async fn the_shipped_config_and_example_jobs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg =
        cio_sync::config::load(&root.join("config.yaml"), &TestEnv::env).expect("shipped config");
    assert!(
        cfg.jobs.len() >= 4,
        "example jobs: {:?}",
        cfg.jobs.iter().map(|j| &j.name).collect::<Vec<_>>()
    );
    for job in &cfg.jobs {
        let cio_sync::config::JobKind::Push(push) = &job.kind else {
            continue;
        };
        let columns = cio_sync::source::check::columns(&push.source, &job.name)
            .await
            .expect("example job source");
        if let Err(e) = cio_sync::mapping::Mapper::new(&job.name, &push.mapping, &columns) {
            panic!("example job {}: {e}", job.name);
        }
    }
}

#[tokio::test]
async fn validate_connect_checks_credentials_region_and_columns() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", PEOPLE_JOB);
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("credentials accepted") && stdout(&out).contains("region us"),
        "{}",
        stdout(&out)
    );

    // The workspace is in the EU, but config.yaml says us.
    let eu = TestEnv::with_sim(cio_sync::simulator::SimConfig {
        region: cio_sync::simulator::Region::Eu,
        ..Default::default()
    })
    .await;
    eu.write_data("people.csv", "id\n1\n");
    eu.write_job("people", PEOPLE_JOB);
    let out = eu.cli_output(&["validate", "--connect"]).await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("belong to a workspace in the `eu` region")
            && err.contains("set `customerio.region: eu`"),
        "{err}"
    );
    assert!(
        err.contains("column `customer_id`"),
        "the missing column is reported too: {err}"
    );

    // A job of a named workspace: the message names that workspace's key.
    let env = TestEnv::new().await;
    let eu = cio_sync::simulator::Simulator::start(cio_sync::simulator::SimConfig {
        region: cio_sync::simulator::Region::Eu,
        site_id: "eu-site".into(),
        track_api_key: "eu-key".into(),
        ..Default::default()
    })
    .await
    .expect("second simulator");
    env.write_config(&format!(
        "workspaces:\n  emea:\n    site_id: eu-site\n    track_api_key: eu-key\n    track_url: {}\n",
        eu.url()
    ));
    env.write_data("people.csv", &people_csv(3));
    env.write_job("people", &format!("workspace: emea\n{PEOPLE_JOB}"));
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("says `workspaces.emea.region: us`")
            && err.contains("set `workspaces.emea.region: eu`"),
        "{err}"
    );
}
