use super::*;
use crate::source::ResumePoint;

async fn sqlite() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::new(format!(
        "sqlite://{}",
        dir.path().join("nested/state.db").display()
    ));
    (dir, StateStore::open(&url).await.unwrap())
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
    };
    s.commit("j", &run, Some(&cp), &[letter("a", "first")], &[], counts)
        .await
        .unwrap();
    // The same row dead-lettered again (a replay after a crash) updates, never duplicates.
    s.commit("j", &run, None, &[letter("a", "second")], &[], counts)
        .await
        .unwrap();
    assert_eq!(s.checkpoint("j").await.unwrap(), Some(cp));
    let letters = s.dead_letters("j", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "second");
    s.commit("j", &run, None, &[], &["a".to_string()], counts)
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
        .commit("j", &run, Some(&cp), &[letter("a", "x")], &[], counts)
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::LeaseLost { .. }), "{err}");
    assert_eq!(s.count_dead_letters("j").await.unwrap(), 0);
    assert!(s.try_lease("j", "me", 60_000).await.unwrap());
    mine.commit("j", &run, Some(&cp), &[], &[], counts)
        .await
        .unwrap();
    assert_eq!(s.checkpoint("j").await.unwrap(), Some(cp.clone()));
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
        mine.commit("j", &run, Some(&later), &[], &[], counts)
            .await
            .is_err()
    );
    assert_eq!(s.checkpoint("j").await.unwrap(), Some(cp));
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
    };
    s.commit("j", &run, Some(&cp), &[letter("a", "first")], &[], counts)
        .await
        .unwrap();
    s.commit("j", &run, None, &[letter("a", "second")], &[], counts)
        .await
        .unwrap();
    assert_eq!(s.checkpoint("j").await.unwrap(), Some(cp.clone()));
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
    mine.commit("j", &run, Some(&cp), &[], &[], counts)
        .await
        .unwrap();
    s.release_lease("j", "me").await.unwrap();
    assert!(s.try_lease("j", "other", 60_000).await.unwrap());
    assert!(matches!(
        mine.commit("j", &run, Some(&cp), &[], &[], counts).await,
        Err(StateError::LeaseLost { .. })
    ));
    assert_eq!(s.lease_holder("j").await.unwrap().as_deref(), Some("other"));
    drop_pg(db, s).await;
}
