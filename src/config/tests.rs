//! Loading as a whole: the layers in order, every problem of every file in one pass, the
//! expansion budget, empty secrets, and paths resolved against the file that names them.

use std::path::{Path, PathBuf};

use super::*;

const CONFIG: &str = "state: { url: \"sqlite://state/s.db\" }\n\
customerio:\n  site_id: ${CIO_SITE_ID}\n  track_api_key: ${CIO_TRACK_API_KEY}\n  track_url: http://127.0.0.1:9\n\
track:\n  rate_limit_per_sec: 10\n";

const JOB: &str =
    "source: { csv: { path: data/people.csv } }\nidentify: { identifier: { id: customer_id } }\n";

fn env(name: &str) -> Option<String> {
    match name {
        "CIO_SITE_ID" => Some("site".into()),
        "CIO_TRACK_API_KEY" => Some("key".into()),
        _ => None,
    }
}

/// A config folder: `config.yaml` and `jobs/*.yaml`.
fn folder(config: &str, jobs: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("jobs")).expect("jobs dir");
    std::fs::write(dir.path().join("config.yaml"), config).expect("config.yaml");
    for (name, text) in jobs {
        std::fs::write(dir.path().join(format!("jobs/{name}.yaml")), text).expect("job");
    }
    let path = dir.path().join("config.yaml");
    (dir, path)
}

fn overrides(vars: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

#[track_caller]
fn problems(path: &Path, vars: &[(&str, &str)]) -> Vec<ConfigError> {
    match load_layered(path, &env, &overrides(vars)) {
        Ok(_) => panic!("{} loaded, but problems were expected", path.display()),
        Err(e) => e.0,
    }
}

#[test]
fn an_environment_override_wins_over_the_file_and_takes_the_keys_type() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let cfg = load_layered(
        &path,
        &env,
        &overrides(&[
            ("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC", "50"),
            // A section the file does not have, a string key given digits, an enum.
            ("CIO_SYNC__TRACK__BATCH__MAX_ITEMS", "200"),
            ("CIO_SYNC__CUSTOMERIO__SITE_ID", "12345"),
            ("CIO_SYNC__TRACK__TRANSPORT", "v1"),
            ("CIO_SYNC__CUSTOMERIO__TRACK_URL", "http://127.0.0.1:8"),
        ]),
    )
    .expect("loads");
    let s = &cfg.settings;
    assert_eq!(
        s.track.rate_limit_per_sec, 50,
        "the override wins over the file's 10"
    );
    assert_eq!(s.track.batch.max_items, 200);
    assert_eq!(
        s.track.batch.max_bytes, 480_000,
        "the rest of the section keeps its default"
    );
    assert_eq!(
        s.customerio.site_id.as_ref().map(Secret::expose),
        Some("12345")
    );
    assert_eq!(s.track.transport, Transport::V1);
    assert_eq!(s.customerio.track_url, "http://127.0.0.1:8");

    // Without overrides the file's value stands.
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    assert_eq!(cfg.settings.track.rate_limit_per_sec, 10);
}

#[test]
fn an_override_of_an_unknown_key_is_refused_by_the_variables_name() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let errs = problems(
        &path,
        &[
            ("CIO_SYNC__TRACK__RATE_LIMT", "5"),
            ("CIO_SYNC__TRAK__RATE_LIMIT_PER_SEC", "5"),
            ("CIO_SYNC__TRACK____X", "5"),
            ("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC", "50"),
            // A section the file lacks, shared with a bad value: both are reported.
            ("CIO_SYNC__APP__RATE", "1"),
            ("CIO_SYNC__APP__TIMEOUT_SECS", "soon"),
        ],
    );
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        errs.len(),
        5,
        "one problem per stray variable, none for the good one: {text:#?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("CIO_SYNC__APP__RATE sets a key")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|e| e.contains(
            "`app.timeout_secs`: CIO_SYNC__APP__TIMEOUT_SECS does not hold a valid value"
        )),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|e| e.contains("`track.rate_limt`")
            && e.contains("CIO_SYNC__TRACK__RATE_LIMT sets a key config.yaml does not have")
            && e.contains("unknown field `rate_limt`")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(
            |e| e.contains("CIO_SYNC__TRAK__RATE_LIMIT_PER_SEC sets a key")
                && e.contains("unknown field `trak`")
        ),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("CIO_SYNC__TRACK____X does not name a config.yaml key")),
        "{text:#?}"
    );
    assert!(text.iter().all(|e| e.contains("config.yaml")), "{text:#?}");
}

#[test]
fn an_override_with_a_bad_value_is_refused_naming_the_variable() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let errs = problems(&path, &[("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC", "fast")]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "track.rate_limit_per_sec");
    assert!(
        errs[0]
            .message
            .starts_with("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC does not hold a valid value"),
        "{}",
        errs[0]
    );
    // A value of the right type is still checked like the file's own.
    let errs = problems(&path, &[("CIO_SYNC__TRACK__RATE_LIMIT_PER_SEC", "0")]);
    assert_eq!(errs[0].key, "track.rate_limit_per_sec");
    assert!(errs[0].message.contains("greater than 0"), "{}", errs[0]);
}

#[test]
fn every_problem_of_config_yaml_and_every_job_file_is_listed_at_once() {
    let (_dir, path) = folder(
        &format!("{CONFIG}trak: {{}}\n"),
        &[
            ("a", &format!("{JOB}atributes: [x]\n")),
            (
                "b",
                "source: { csv: { path: x.csv } }\ntrack: { identifier: { id: a }, name: \"\" }\n",
            ),
            ("good", JOB),
        ],
    );
    let err = load_layered(&path, &env, &[]).expect_err("three problems");
    let text = err.to_string();
    assert!(text.starts_with("3 problems"), "{text}");
    // More than one problem in one file, too.
    let (_dir2, path2) = folder(
        &format!("{CONFIG}trak: {{}}\nretry: {{ max_attempts: many }}\n"),
        &[("a", &format!("{JOB}atributes: [x]\nconcurrency: -1\n"))],
    );
    let err2 = load_layered(&path2, &env, &[])
        .expect_err("four problems")
        .to_string();
    assert!(err2.starts_with("4 problems"), "{err2}");
    assert!(
        err2.contains("config.yaml: `retry.max_attempts`: invalid type"),
        "{err2}"
    );
    assert!(
        err2.contains("a.yaml: `concurrency`: invalid value"),
        "{err2}"
    );
    // A required key taken out after its error is not reported again as missing.
    let (_dir3, path3) = folder(
        &CONFIG.replace("url: \"sqlite://state/s.db\"", "url: 5"),
        &[],
    );
    let errs = problems(&path3, &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "state.url");
    assert!(
        text.contains("config.yaml: `trak`: unknown field `trak`"),
        "{text}"
    );
    assert!(
        text.contains("a.yaml: `atributes`: unknown field `atributes`"),
        "{text}"
    );
    assert!(
        text.contains("b.yaml: `track.name`: an event name must be 1 to 100 bytes"),
        "{text}"
    );
}

#[test]
fn a_secret_a_job_needs_must_not_be_empty() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let empty_site = |name: &str| match name {
        "CIO_SITE_ID" => Some(String::new()),
        other => env(other),
    };
    let err = load_layered(&path, &empty_site, &[]).expect_err("empty site id");
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].key, "customerio.site_id");
    assert!(
        err.0[0].message.starts_with(
            "${CIO_SITE_ID} is set but empty, and job people needs it: set CIO_SITE_ID"
        ),
        "{}",
        err.0[0]
    );
    // Written empty in the file itself, and an App key only a pull job needs.
    let text = CONFIG
        .replace("${CIO_TRACK_API_KEY}", "\"\"")
        .replace("  track_url:", "  app_api_key: \"\"\n  track_url:");
    let (_dir, path) = folder(&text, &[("people", JOB)]);
    let err = load_layered(&path, &env, &[]);
    let text = format!("{:?}", err.as_ref().map(|_| ()));
    let errs = err.expect_err("empty track key").0;
    assert_eq!(
        errs.len(),
        1,
        "the App key is not needed without a pull job: {text}"
    );
    assert_eq!(errs[0].key, "customerio.track_api_key");
    assert!(
        errs[0]
            .message
            .starts_with("is empty, and job people needs it"),
        "{}",
        errs[0]
    );
}

#[test]
fn expanding_variables_is_bounded_like_the_file_size() {
    let big = "x".repeat(64 * 1024);
    let lookup = |name: &str| (name == "BIG").then(|| big.clone());
    // 100,000 references in a 600 KB file would expand to 6.4 GB.
    let job = format!(
        "source: {{ csv: {{ path: \"{}\" }} }}\nidentify: {{ identifier: {{ id: customer_id }} }}\n",
        "${BIG}".repeat(100_000)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("huge.yaml");
    std::fs::write(&file, job).expect("job");
    let errs = load_job(&file, &lookup).expect_err("over the budget");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].file, file);
    assert_eq!(errs[0].key, "source.csv.path");
    assert!(errs[0].message.contains("past 4 MiB"), "{}", errs[0]);

    // A file larger than the bound is not read at all.
    std::fs::write(&file, "#".repeat(MAX_FILE_BYTES + 1)).expect("big file");
    let errs = load_job(&file, &lookup).expect_err("too large");
    assert!(errs[0].message.contains("larger than 4 MiB"), "{}", errs[0]);
}

#[test]
fn a_relative_sqlite_source_resolves_against_the_job_files_folder() {
    let (dir, path) = folder(
        CONFIG,
        &[
            (
                "a",
                "source: { sql: { url: \"sqlite://data/src.db?mode=ro\", query: \"SELECT 1\" } }\nidentify: { identifier: { id: id } }\n",
            ),
            (
                "b",
                "source: { sql: { url: \"sqlite:src.db\", query: \"SELECT 1\" } }\nidentify: { identifier: { id: id } }\n",
            ),
        ],
    );
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    let url = |name: &str| match &cfg.job(name).map(|j| &j.kind) {
        Some(JobKind::Push(p)) => match &p.source {
            SourceSpec::Sql(s) => s.url.expose().to_string(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let jobs = dir.path().join("jobs");
    assert_eq!(
        url("a"),
        format!("sqlite://{}/data/src.db?mode=ro", jobs.display())
    );
    assert_eq!(url("b"), format!("sqlite://{}/src.db", jobs.display()));
}

#[test]
fn object_device_and_merge_jobs_refuse_what_customerio_cannot_take_naming_the_key() {
    let src = "source: { csv: { path: data/x.csv } }\n";
    let (_dir, path) = folder(
        CONFIG,
        &[
            (
                "cio-delete",
                &format!("{src}object: {{ cio_object_id: c, action: delete }}\n"),
            ),
            (
                "bad-type",
                &format!("{src}object: {{ type_id: acme, id: c }}\n"),
            ),
            (
                "no-platform",
                &format!("{src}device: {{ identifier: {{ id: u }}, token: t }}\n"),
            ),
            (
                "delete-extra",
                &format!(
                    "{src}device: {{ identifier: {{ id: u }}, token: t, platform: ios, action: delete }}\n"
                ),
            ),
            (
                "token-attr",
                &format!(
                    "{src}device: {{ identifier: {{ id: u }}, token: t, platform: ios, attributes: {{ token: t }} }}\n"
                ),
            ),
            (
                "merge-phone",
                &format!("{src}merge: {{ primary: {{ id: a }}, secondary: {{ phone: b }} }}\n"),
            ),
            (
                "segment-phone",
                &format!("{src}segment: {{ id: 7, identifier: {{ phone: p }} }}\n"),
            ),
        ],
    );
    let all = problems(&path, &[]);
    let find = |file: &str, key: &str| {
        all.iter()
            .find(|e| e.file.ends_with(format!("{file}.yaml")) && e.key == key)
            .unwrap_or_else(|| panic!("no problem {file}: {key} in {all:?}"))
            .message
            .clone()
    };
    assert!(find("cio-delete", "object.cio_object_id").contains("updates only"));
    assert!(find("bad-type", "object.type_id").contains("numbers object types 1, 2"));
    assert!(find("no-platform", "device.platform").contains("ios"));
    assert!(find("delete-extra", "device").contains("only the token"));
    assert!(find("token-attr", "device.attributes.token").contains("device.token"));
    assert!(find("merge-phone", "merge.secondary.phone").contains("merge"));
    assert!(find("segment-phone", "segment.identifier.phone").contains("add_customers"));
}

#[test]
fn object_type_ids_are_strings_whatever_the_yaml_holds() {
    let (_dir, path) = folder(
        CONFIG,
        &[
            (
                "a",
                "source: { csv: { path: x.csv } }\nobject: { type_id: 1, id: c }\n",
            ),
            (
                "b",
                "source: { csv: { path: x.csv } }\nobject: { type_id: \"2\", id: c }\n",
            ),
        ],
    );
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    let ids: Vec<String> = cfg
        .jobs
        .iter()
        .filter_map(|j| match &j.kind {
            JobKind::Push(p) => match &p.mapping {
                MappingSpec::Object {
                    object: ObjectIdentSpec::Typed { type_id, .. },
                    ..
                } => Some(type_id.clone()),
                _ => None,
            },
            JobKind::Pull(_) => None,
        })
        .collect();
    assert_eq!(ids, vec!["1".to_string(), "2".to_string()]);
}

#[test]
fn a_job_talks_to_the_workspace_it_names_with_that_workspaces_limits() {
    let config = format!(
        "{CONFIG}workspaces:\n  eu:\n    region: eu\n    site_id: eu-site\n    track_api_key: eu-key\n    track_rate_limit_per_sec: 7\n"
    );
    let eu_job = format!(
        "workspace: eu\nschedule: \"0 2 * * *\"\ntimezone: Europe/Paris\ncatch_up: true\n{JOB}"
    );
    let (_dir, path) = folder(&config, &[("people", JOB), ("eu-people", &eu_job)]);
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    let eu = cfg.job("eu-people").expect("job");
    assert_eq!(eu.workspace.as_deref(), Some("eu"));
    assert_eq!(eu.timezone, Some(chrono_tz::Europe::Paris));
    assert!(eu.catch_up && eu.enabled);
    let s = cfg.settings.for_workspace(Some("eu")).expect("eu settings");
    assert_eq!(
        s.customerio.site_id.as_ref().map(Secret::expose),
        Some("eu-site")
    );
    assert_eq!(s.customerio.track_url, "https://track-eu.customer.io");
    assert_eq!(s.track.rate_limit_per_sec, 7);
    assert_eq!(
        s.app.rate_limit_per_sec, 10,
        "the App limit defaults to app's"
    );
    let default = cfg.settings.for_workspace(None).expect("default");
    assert_eq!(
        default.customerio.site_id.as_ref().map(Secret::expose),
        Some("site")
    );
    assert_eq!(default.track.rate_limit_per_sec, 10);
}

#[test]
fn a_workspace_nobody_configured_an_unknown_workspace_key_and_a_lone_timezone_are_refused() {
    let config =
        format!("{CONFIG}workspaces:\n  eu: {{ site_id: s, track_api_key: k, rate: 3 }}\n");
    let job = format!("workspace: us2\ntimezone: Mars/Olympus\n{JOB}");
    let (_dir, path) = folder(&config, &[("people", &job)]);
    let err = load_layered(&path, &env, &[])
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("`workspaces.eu.rate`") && err.contains("unknown field"),
        "{err}"
    );
    assert!(err.contains("unknown time zone `Mars/Olympus`"), "{err}");

    let config = format!("{CONFIG}workspaces:\n  eu: {{ site_id: s, track_api_key: k }}\n");
    let job = format!("workspace: us2\n{JOB}");
    let lone = format!("timezone: Europe/Paris\n{JOB}");
    let (_dir, path) = folder(&config, &[("people", &job), ("lone", &lone)]);
    let err = load_layered(&path, &env, &[])
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(
            "people.yaml: `workspace`: `us2` is not a workspace of config.yaml (it has eu)"
        ),
        "{err}"
    );
    assert!(
        err.contains("lone.yaml: `timezone`: only means something with a `schedule`"),
        "{err}"
    );
}

#[test]
fn the_heartbeat_is_reachable_through_an_environment_override() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let cfg = load_layered(
        &path,
        &env,
        &overrides(&[("CIO_SYNC__DAEMON__HEARTBEAT_SECS", "3")]),
    )
    .expect("loads");
    assert_eq!(cfg.settings.heartbeat, std::time::Duration::from_secs(3));
}

#[test]
fn the_http_listener_is_off_by_default_loopback_for_a_bare_port_and_set_by_override() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    assert_eq!(cfg.settings.http_listen, None, "off unless configured");
    let cfg = load_layered(
        &path,
        &env,
        &overrides(&[("CIO_SYNC__HTTP__LISTEN", "9464")]),
    )
    .expect("loads");
    assert_eq!(
        cfg.settings.http_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let (_dir, path) = folder(
        &format!("{CONFIG}http: {{ listen: \"0.0.0.0:9100\" }}\n"),
        &[("people", JOB)],
    );
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    assert_eq!(
        cfg.settings.http_listen,
        Some("0.0.0.0:9100".parse().unwrap())
    );
    let (_dir, path) = folder(
        &format!("{CONFIG}http: {{ listen: \"localhost:9100\" }}\n"),
        &[("people", JOB)],
    );
    let msg = problems(&path, &[])
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        msg.contains("http.listen") && msg.contains("localhost:9100"),
        "{msg}"
    );
}

#[test]
fn the_webhooks_section_is_off_by_default_and_checked_key_by_key() {
    let (_dir, path) = folder(CONFIG, &[("people", JOB)]);
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    assert!(cfg.settings.webhooks.is_none(), "off unless configured");

    let (_dir, path) = folder(
        &format!(
            "{CONFIG}webhooks:\n  listen: \"8088\"\n  signing_keys: [new-key, old-key]\n  database: sqlite://events.db\n"
        ),
        &[("people", JOB)],
    );
    let cfg = load_layered(&path, &env, &[]).expect("loads");
    let w = cfg.settings.webhooks.expect("configured");
    assert_eq!(w.listen, "127.0.0.1:8088".parse().unwrap());
    assert_eq!(w.path, "/cio/webhook");
    assert_eq!(w.tolerance, std::time::Duration::from_secs(300));
    assert_eq!(w.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(w.signing_keys.len(), 2);
    let db = w.database.expect("database");
    assert!(
        db.expose().ends_with("/events.db") && db.expose().len() > "sqlite://events.db".len(),
        "relative to config.yaml: {}",
        db.expose()
    );
    assert!(
        !format!("{:?}", w.signing_keys).contains("new-key"),
        "keys never show in Debug"
    );

    let (_dir, path) = folder(
        &format!(
            "{CONFIG}http: {{ listen: \"9100\" }}\nwebhooks:\n  listen: \"9100\"\n  path: cio\n  tolerance_secs: 0\n  max_body_bytes: 10\n"
        ),
        &[("people", JOB)],
    );
    let msg = problems(&path, &[])
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for key in [
        "`webhooks.listen`: is the same address as `http.listen`",
        "`webhooks.path`",
        "`webhooks.signing_key`: is missing",
        "`webhooks.tolerance_secs`: 0 is out of range",
        "`webhooks.max_body_bytes`: 10 is out of range",
    ] {
        assert!(msg.contains(key), "{key} in:\n{msg}");
    }

    let (_dir, path) = folder(
        &format!("{CONFIG}webhooks:\n  listen: \"8088\"\n  signing_key: k\n  secret: k\n"),
        &[("people", JOB)],
    );
    let msg = problems(&path, &[])
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(msg.contains("secret"), "an unknown key is named: {msg}");
}
