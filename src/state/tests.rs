use super::*;
use crate::source::ResumePoint;
use std::borrow::Cow;

/// `old.db` in a new folder, migrated only up to `version`: a state database an earlier
/// release left.
async fn old_sqlite(version: i64) -> (tempfile::TempDir, sqlx::AnyPool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    sqlx::any::install_default_drivers();
    let old = sqlx::AnyPool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    SQLITE_MIGRATIONS.run_to(version, &old).await.unwrap();
    (dir, old)
}

async fn sqlite() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::new(format!(
        "sqlite://{}",
        dir.path().join("nested/state.db").display()
    ));
    (dir, StateStore::open(&url).await.unwrap())
}

/// A commit step under the job's own scope.
fn step<'a>(
    job: &'a str,
    run_id: &'a str,
    checkpoint: Option<&'a Checkpoint>,
    dead: &'a [DeadLetter],
    resolved: &'a [String],
    counts: RunCounts,
) -> Commit<'a> {
    Commit {
        checkpoint,
        dead,
        resolved,
        ..Commit::new(job, run_id, counts)
    }
}

fn letter(row_ref: &str, reason: &str) -> DeadLetter {
    DeadLetter {
        job: "j".into(),
        source: "data.csv".into(),
        row_ref: row_ref.into(),
        line: Some(3),
        row_data: "{\"id\":\"1\"}".into(),
        reason: reason.into(),
        stage: "mapping",
        identity: None,
    }
}

#[tokio::test]
async fn commits_are_atomic_idempotent_and_readable() {
    let (_d, s) = sqlite().await;
    let run = s.start_run("j", "push").await.unwrap();
    let cp = Checkpoint {
        source: serde_json::json!({"f": 1}),
        resume: ResumePoint::Csv {
            byte: 10,
            line: 2,
            row: 1,
        },
        complete: false,
    };
    let counts = RunCounts {
        rows_read: 2,
        rows_delivered: 1,
        rows_rejected: 1,
        requests: 1,
        retries: 0,
        rows_unchanged: 0,
    };
    s.commit(step(
        "j",
        &run,
        Some(&cp),
        &[letter("a", "first")],
        &[],
        counts,
    ))
    .await
    .unwrap();
    // The same row dead-lettered again (a replay after a crash) updates, never duplicates.
    s.commit(step("j", &run, None, &[letter("a", "second")], &[], counts))
        .await
        .unwrap();
    assert_eq!(s.checkpoint("j", &Scope::Job).await.unwrap(), Some(cp));
    let letters = s.dead_letters("j", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "second");
    s.commit(step("j", &run, None, &[], &["a".to_string()], counts))
        .await
        .unwrap();
    assert_eq!(s.count_dead_letters("j").await.unwrap(), 0);
    s.finish_run(&run, Outcome::RejectedRows, None, counts, None)
        .await
        .unwrap();
    let runs = s.runs(Some("j"), 5).await.unwrap();
    assert_eq!(runs[0].outcome, "rejected_rows");
    assert_eq!(runs[0].counts, counts);
    assert_eq!(s.runs(None, 5).await.unwrap().len(), 1);
    assert!(s.runs(Some("other"), 5).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_run_left_running_is_marked_aborted_by_the_next_one() {
    let (_d, s) = sqlite().await;
    let first = s.start_run("j", "push").await.unwrap();
    let _second = s.start_run("j", "push").await.unwrap();
    let runs = s.runs(Some("j"), 5).await.unwrap();
    let old = runs.iter().find(|r| r.id == first).unwrap();
    assert_eq!(old.outcome, "aborted");
}

#[tokio::test]
async fn a_lease_keeps_a_second_holder_out_until_it_expires_or_is_released() {
    let (_d, s) = sqlite().await;
    assert!(s.try_lease("j", "a", 60_000).await.unwrap());
    assert!(
        s.try_lease("j", "a", 60_000).await.unwrap(),
        "renewal by the holder"
    );
    assert!(!s.try_lease("j", "b", 60_000).await.unwrap());
    s.release_lease("j", "a").await.unwrap();
    assert!(s.try_lease("j", "b", 1).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(
        s.try_lease("j", "c", 60_000).await.unwrap(),
        "expired lease taken over"
    );
}

#[tokio::test]
async fn a_fenced_store_writes_checkpoints_only_while_it_holds_the_lease() {
    let (_d, s) = sqlite().await;
    let mine = s.clone().fenced_by("me");
    let run = s.start_run("j", "push").await.unwrap();
    let cp = Checkpoint {
        source: serde_json::json!({}),
        resume: ResumePoint::Csv {
            byte: 1,
            line: 1,
            row: 1,
        },
        complete: false,
    };
    let counts = RunCounts::default();
    // No lease yet: refused, and the dead letters of the same step are not kept either.
    let err = mine
        .commit(step("j", &run, Some(&cp), &[letter("a", "x")], &[], counts))
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::LeaseLost { .. }), "{err}");
    assert_eq!(s.count_dead_letters("j").await.unwrap(), 0);
    assert!(s.try_lease("j", "me", 60_000).await.unwrap());
    mine.commit(step("j", &run, Some(&cp), &[], &[], counts))
        .await
        .unwrap();
    assert_eq!(
        s.checkpoint("j", &Scope::Job).await.unwrap(),
        Some(cp.clone())
    );
    // Another replica takes the lease over: this one's next checkpoint is refused.
    s.release_lease("j", "me").await.unwrap();
    assert!(s.try_lease("j", "other", 60_000).await.unwrap());
    let later = Checkpoint {
        resume: ResumePoint::Csv {
            byte: 9,
            line: 9,
            row: 9,
        },
        ..cp.clone()
    };
    assert!(
        mine.commit(step("j", &run, Some(&later), &[], &[], counts))
            .await
            .is_err()
    );
    assert_eq!(s.checkpoint("j", &Scope::Job).await.unwrap(), Some(cp));
}

/// A fresh PostgreSQL database for one test (the server must be up: this never skips); kept
/// if the test fails, dropped by the guard otherwise.
async fn postgres() -> (crate::testing::TestDb, StateStore) {
    let db = crate::testing::TestDb::create(crate::testing::Server::Postgres).await;
    let store = StateStore::open(&DatabaseUrl::new(db.url().to_string()))
        .await
        .unwrap();
    (db, store)
}

async fn drop_pg(db: crate::testing::TestDb, store: StateStore) {
    store.pool().close().await;
    drop(db);
}

#[tokio::test]
async fn the_same_state_semantics_hold_on_postgresql() {
    let (db, s) = postgres().await;
    let run = s.start_run("j", "push").await.unwrap();
    let cp = Checkpoint {
        source: serde_json::json!({"f": 1}),
        resume: ResumePoint::Csv {
            byte: 10,
            line: 2,
            row: 1,
        },
        complete: true,
    };
    let counts = RunCounts {
        rows_read: 3,
        rows_delivered: 2,
        rows_rejected: 1,
        requests: 1,
        retries: 2,
        rows_unchanged: 0,
    };
    s.commit(step(
        "j",
        &run,
        Some(&cp),
        &[letter("a", "first")],
        &[],
        counts,
    ))
    .await
    .unwrap();
    s.commit(step("j", &run, None, &[letter("a", "second")], &[], counts))
        .await
        .unwrap();
    assert_eq!(
        s.checkpoint("j", &Scope::Job).await.unwrap(),
        Some(cp.clone())
    );
    let letters = s.dead_letters("j", 10).await.unwrap();
    assert_eq!((letters.len(), letters[0].reason.as_str()), (1, "second"));
    s.finish_run(
        &run,
        Outcome::RejectedRows,
        None,
        counts,
        Some(&serde_json::json!({"x": 1})),
    )
    .await
    .unwrap();
    let runs = s.runs(None, 5).await.unwrap();
    assert_eq!(
        (runs[0].outcome.as_str(), runs[0].counts),
        ("rejected_rows", counts)
    );

    // Leases and the checkpoint fence.
    let mine = s.clone().fenced_by("me");
    assert!(s.try_lease("j", "me", 60_000).await.unwrap());
    assert!(!s.try_lease("j", "other", 60_000).await.unwrap());
    mine.commit(step("j", &run, Some(&cp), &[], &[], counts))
        .await
        .unwrap();
    s.release_lease("j", "me").await.unwrap();
    assert!(s.try_lease("j", "other", 60_000).await.unwrap());
    assert!(matches!(
        mine.commit(step("j", &run, Some(&cp), &[], &[], counts))
            .await,
        Err(StateError::LeaseLost { .. })
    ));
    assert_eq!(s.lease_holder("j").await.unwrap().as_deref(), Some("other"));
    drop_pg(db, s).await;
}

fn csv_cp(row: u64) -> Checkpoint {
    Checkpoint {
        source: serde_json::json!({"f": 1}),
        resume: ResumePoint::Csv {
            byte: row * 10,
            line: row + 1,
            row,
        },
        complete: false,
    }
}

#[tokio::test]
async fn a_scope_keeps_its_own_checkpoint_beside_the_jobs_and_status_lists_both() {
    let (_d, s) = sqlite().await;
    let run = s.start_run("j", "push").await.unwrap();
    let backfill = Scope::named("backfill:2026-01");
    let (own, phase) = (csv_cp(5), csv_cp(99));
    let counts = RunCounts::default();
    s.commit(step("j", &run, Some(&own), &[], &[], counts))
        .await
        .unwrap();
    s.commit(Commit {
        scope: &backfill,
        checkpoint: Some(&phase),
        ..Commit::new("j", &run, counts)
    })
    .await
    .unwrap();
    assert_eq!(s.checkpoint("j", &Scope::Job).await.unwrap(), Some(own));
    assert_eq!(s.checkpoint("j", &backfill).await.unwrap(), Some(phase));
    let listed: Vec<(String, String)> = s
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.job, c.scope))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("j".to_string(), "backfill:2026-01".to_string()),
            ("j".to_string(), "job".to_string())
        ]
    );
    // Resetting one scope leaves the other.
    s.reset_checkpoint("j", &backfill).await.unwrap();
    assert_eq!(s.checkpoint("j", &backfill).await.unwrap(), None);
    assert!(s.checkpoint("j", &Scope::Job).await.unwrap().is_some());
    assert_eq!(Scope::named("job"), Scope::Job);
}

#[tokio::test]
async fn a_checkpoint_written_before_scopes_becomes_the_jobs_own() {
    let (dir, old) = old_sqlite(20261127000002).await;
    let path = dir.path().join("old.db");
    let text = serde_json::to_string(&csv_cp(7)).unwrap();
    sqlx::query(
        "INSERT INTO checkpoints (job, position, run_id, updated_at) VALUES ('j', $1, 'r', 1)",
    )
    .bind(text)
    .execute(&old)
    .await
    .unwrap();
    old.close().await;
    let s = StateStore::open(&DatabaseUrl::new(format!("sqlite://{}", path.display())))
        .await
        .unwrap();
    assert_eq!(
        s.checkpoint("j", &Scope::Job).await.unwrap(),
        Some(csv_cp(7))
    );
}

/// Many dead letters with the given reason, one repeated row among them.
fn many_letters(n: usize) -> Vec<DeadLetter> {
    let mut v: Vec<DeadLetter> = (0..n)
        .map(|i| letter(&format!("r{i}"), &format!("reason {i}")))
        .collect();
    // The same row twice in one step: its last record wins, as if written in turn.
    v.push(letter("r0", "again"));
    v
}

async fn assert_many_letters_stored(s: &StateStore, n: usize) {
    let run = s.start_run("j", "push").await.unwrap();
    let dead = many_letters(n);
    s.commit(step("j", &run, None, &dead, &[], RunCounts::default()))
        .await
        .unwrap();
    assert_eq!(s.count_dead_letters("j").await.unwrap(), n as i64);
    let stored = s.dead_letters("j", n as i64).await.unwrap();
    let r0 = stored.iter().find(|d| d.row_ref == "r0").unwrap();
    assert_eq!(r0.reason, "again");
    let last = stored
        .iter()
        .find(|d| d.row_ref == format!("r{}", n - 1))
        .unwrap();
    assert_eq!(last.reason, format!("reason {}", n - 1));
}

#[tokio::test]
async fn dead_letters_beyond_one_statements_bind_limit_are_all_stored_on_sqlite() {
    let (_d, s) = sqlite().await;
    let n = dead_letters::rows_per_statement(Backend::Sqlite) * 2 + 3;
    assert_many_letters_stored(&s, n).await;
}

#[tokio::test]
async fn dead_letters_beyond_one_statements_bind_limit_are_all_stored_on_postgresql() {
    let (name, s) = postgres().await;
    let n = dead_letters::rows_per_statement(Backend::Postgres) + 3;
    assert_many_letters_stored(&s, n).await;
    drop_pg(name, s).await;
}

#[test]
fn a_checkpoint_that_cannot_be_encoded_is_an_internal_error_naming_the_job() {
    struct Unencodable;
    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no JSON for this"))
        }
    }
    let err = checkpoints::encode("orders", &Unencodable).unwrap_err();
    assert!(matches!(err, StateError::EncodeCheckpoint { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("job `orders`") && text.contains("internal error"),
        "{text}"
    );
}

#[tokio::test]
async fn text_with_nul_from_outside_is_stored_in_every_column_on_postgresql() {
    let (name, s) = postgres().await;
    let nul = |what: &str| format!("{what}\0after");
    let job = nul("job");
    let run = s.start_run(&job, &nul("push")).await.unwrap();
    let dead = DeadLetter {
        job: job.clone(),
        source: nul("source"),
        row_ref: nul("row"),
        line: Some(1),
        row_data: format!("{{\"raw\": \"{}\"}}", nul("data")),
        reason: nul("Customer.io said"),
        stage: "customerio",
        identity: Some(nul("id:1")),
    };
    let cp = Checkpoint {
        source: serde_json::json!({ "path": nul("file") }),
        ..csv_cp(1)
    };
    s.commit(Commit {
        checkpoint: Some(&cp),
        dead: std::slice::from_ref(&dead),
        scope: &Scope::named(nul("backfill")),
        ..Commit::new(&job, &run, RunCounts::default())
    })
    .await
    .unwrap();
    s.finish_run(
        &run,
        Outcome::Failed,
        Some(&nul("500 body")),
        RunCounts::default(),
        Some(&serde_json::json!({ "note": nul("summary") })),
    )
    .await
    .unwrap();
    assert!(s.try_lease(&job, &nul("holder"), 60_000).await.unwrap());

    let stored = s.dead_letters(&job, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].reason, "Customer.io said\u{FFFD}after");
    assert_eq!(stored[0].source, "source\u{FFFD}after");
    assert_eq!(stored[0].row_ref, "row\u{FFFD}after");
    assert_eq!(stored[0].job, "job\u{FFFD}after");
    let runs = s.runs(Some(&job), 5).await.unwrap();
    assert_eq!(runs[0].error.as_deref(), Some("500 body\u{FFFD}after"));
    assert_eq!(runs[0].kind, "push\u{FFFD}after");
    assert_eq!(
        s.checkpoint(&job, &Scope::named(nul("backfill")))
            .await
            .unwrap(),
        Some(cp)
    );
    assert_eq!(
        s.lease_holder(&job).await.unwrap().as_deref(),
        Some("holder\u{FFFD}after")
    );
    drop_pg(name, s).await;
}

#[test]
fn storable_text_replaces_nul_and_nothing_else() {
    assert_eq!(storable("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
    assert!(matches!(storable("plain \\0 text"), Cow::Borrowed(_)));
}

#[tokio::test]
async fn many_processes_opening_a_fresh_sqlite_state_at_once_all_succeed() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("s.db").display()));
        let opens: Vec<_> = (0..12)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { StateStore::open(&url).await.map(|_| ()) })
            })
            .collect();
        for (i, open) in opens.into_iter().enumerate() {
            if let Err(e) = open.await.unwrap() {
                panic!("round {round}, open {i} failed: {e}");
            }
        }
    }
}

#[tokio::test]
async fn many_processes_opening_a_fresh_postgresql_state_at_once_all_succeed() {
    for round in 0..5 {
        let db = crate::testing::TestDb::create(crate::testing::Server::Postgres).await;
        let url = DatabaseUrl::new(db.url().to_string());
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { StateStore::open(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for (i, open) in opens.into_iter().enumerate() {
            match open.await.unwrap() {
                Ok(s) => stores.push(s),
                Err(e) => panic!("round {round}, open {i} failed: {e}"),
            }
        }
        for s in stores {
            s.pool().close().await;
        }
        drop(db);
    }
}

#[tokio::test]
async fn a_refused_postgresql_state_is_reported_with_its_root_cause() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = DatabaseUrl::new(format!("postgres://cio:secret@127.0.0.1:{port}/state"));
    // A long connect timeout: the error must come from the refusal, not from waiting.
    let err = StateStore::open_with(&url, std::time::Duration::from_secs(600))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StateError::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}: connection refused")),
        "{text}"
    );
    assert!(
        !text.contains("timed out") && !text.contains("secret"),
        "{text}"
    );
}

#[tokio::test]
async fn a_postgresql_state_that_never_answers_fails_within_the_connect_timeout() {
    // Accepts connections (the kernel completes the handshake) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = DatabaseUrl::new(format!("postgres://cio@127.0.0.1:{port}/state"));
    let err = StateStore::open_with(&url, std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, StateError::Unreachable { secs: 1, .. }),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    drop(silent);
}

#[tokio::test]
async fn an_unopenable_sqlite_state_names_the_file_and_not_a_server() {
    let dir = tempfile::tempdir().unwrap();
    // A folder where the database file should be.
    let path = dir.path().join("state.db");
    std::fs::create_dir(&path).unwrap();
    let err = StateStore::open(&DatabaseUrl::new(format!("sqlite://{}", path.display())))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StateError::OpenSqlite { .. }), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(!text.contains("host") && !text.contains("port"), "{text}");
}

fn fp(attrs: serde_json::Value) -> crate::change::Fingerprint {
    crate::change::Fingerprint::of(attrs.as_object().unwrap())
}

/// The lookup answers only for identities whose stored fingerprint differs (with their
/// attribute hashes) or that are unknown; an identity given twice in one chunk is compared
/// once per occurrence; `run --full` forgets every fingerprint but keeps the identities.
async fn changed_fingerprints_answer_only_for_what_differs(s: &StateStore) {
    let run = s.start_run("j", "push").await.unwrap();
    let a = fp(serde_json::json!({"plan": "pro", "n": 1}));
    let b = fp(serde_json::json!({"plan": "free"}));
    let bare = crate::change::Fingerprint {
        whole: 77,
        attributes: Vec::new(),
    };
    let rows = vec![
        ("id:a".to_string(), a.clone()),
        ("id:b\0x".to_string(), b.clone()),
        ("id:bare".to_string(), bare.clone()),
    ];
    s.commit(Commit {
        fingerprints: &rows,
        ..Commit::new("j", &run, RunCounts::default())
    })
    .await
    .unwrap();
    assert!(s.has_fingerprints("j").await.unwrap());
    assert!(!s.has_fingerprints("other").await.unwrap());
    let changed = fp(serde_json::json!({"plan": "team", "n": 1}));
    let answer = s
        .changed_fingerprints(
            "j",
            &[
                ("id:a", a.whole),
                ("id:b\0x", b.whole),
                ("id:a", changed.whole),
                ("id:new", 5),
                ("id:bare", 78),
            ],
        )
        .await
        .unwrap();
    let mut keys: Vec<&String> = answer.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["id:a", "id:bare", "id:new"]);
    assert_eq!(answer["id:a"], Some(a.clone()), "with its attribute hashes");
    assert_eq!(answer["id:bare"], Some(bare));
    assert_eq!(answer["id:new"], None, "unknown");
    // A fingerprint written again replaces the old one, attribute hashes included.
    s.commit(Commit {
        fingerprints: &[("id:a".to_string(), changed.clone())],
        ..Commit::new("j", &run, RunCounts::default())
    })
    .await
    .unwrap();
    assert_eq!(
        s.fingerprints("j", &["id:a"]).await.unwrap()["id:a"],
        changed
    );
    // Forgotten: every identity differs (and is still known), with no attribute hashes left.
    assert_eq!(s.forget_fingerprints("j").await.unwrap(), 3);
    let answer = s
        .changed_fingerprints("j", &[("id:a", changed.whole), ("id:b\0x", b.whole)])
        .await
        .unwrap();
    assert_eq!(answer.len(), 2);
    assert!(
        answer
            .values()
            .all(|f| f.as_ref().is_some_and(|f| f.is_forgotten()))
    );
    assert_eq!(s.count_fingerprints("j").await.unwrap(), 3);
    s.remove_fingerprints("j", &["id:a".to_string()])
        .await
        .unwrap();
    assert_eq!(s.count_fingerprints("j").await.unwrap(), 2);
}

#[tokio::test]
async fn changed_fingerprints_answer_only_for_what_differs_on_sqlite() {
    let (_dir, s) = sqlite().await;
    changed_fingerprints_answer_only_for_what_differs(&s).await;
}

#[tokio::test]
async fn changed_fingerprints_answer_only_for_what_differs_on_postgresql() {
    let (db, s) = postgres().await;
    changed_fingerprints_answer_only_for_what_differs(&s).await;
    drop_pg(db, s).await;
}

/// Fingerprints written before the attribute hashes had their own table survive the
/// migration: the first night after an upgrade sends only what changed, not every row.
async fn fingerprints_survive_the_split_into_two_tables(old: sqlx::AnyPool, url: DatabaseUrl) {
    let a = fp(serde_json::json!({"plan": "pro", "n": 1}));
    sqlx::query(
        "INSERT INTO fingerprints (job, identity, fingerprint, attributes) VALUES ('j', 'id:a', $1, $2), ('j', 'id:gone', 0, $3)",
    )
    .bind(a.whole as i64)
    .bind(a.pack())
    .bind(Vec::<u8>::new())
    .execute(&old)
    .await
    .unwrap();
    old.close().await;
    let s = StateStore::open(&url).await.unwrap();
    let stored = s.fingerprints("j", &["id:a", "id:gone"]).await.unwrap();
    assert_eq!(stored["id:a"], a);
    assert!(stored["id:gone"].is_forgotten());
    assert!(
        s.changed_fingerprints("j", &[("id:a", a.whole)])
            .await
            .unwrap()
            .is_empty()
    );
    s.pool().close().await;
}

#[tokio::test]
async fn fingerprints_survive_the_split_into_two_tables_on_sqlite() {
    let (dir, old) = old_sqlite(20261203120003).await;
    let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("old.db").display()));
    fingerprints_survive_the_split_into_two_tables(old, url).await;
}

#[tokio::test]
async fn fingerprints_survive_the_split_into_two_tables_on_postgresql() {
    let db = crate::testing::TestDb::create(crate::testing::Server::Postgres).await;
    sqlx::any::install_default_drivers();
    let old = sqlx::AnyPool::connect(db.url()).await.unwrap();
    POSTGRES_MIGRATIONS
        .run_to(20261203120003, &old)
        .await
        .unwrap();
    let url = DatabaseUrl::new(db.url().to_string());
    fingerprints_survive_the_split_into_two_tables(old, url).await;
    drop(db);
}
