//! Delivery under faults: 5xx, dropped connections, server rate limits, 401, 400, Retry-After,
//! retries running out.

use std::collections::HashSet;
use std::time::Duration;

use cio_sync::simulator::{Api, Faults};
use cio_sync::state::{Outcome, StateStore};

use crate::helpers::*;

/// Runs `work` while moving the simulator's paused clock on by a second each time it has
/// answered another 429, so rate limiting depends on counts, not on this machine's speed.
async fn refilling_after_each_429<T>(
    env: &TestEnv,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut refused = 0;
    loop {
        tokio::select! {
            out = &mut work => return out,
            // A poll interval; `work` itself is bounded by its retry budget.
            _ = tokio::time::sleep(Duration::from_millis(2)) => {
                let now = env.sim.requests().iter().filter(|r| r.status == 429).count();
                if now > refused {
                    refused = now;
                    env.sim.advance_clock(Duration::from_secs(1));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_arrives_once_under_5xx_dropped_connections_and_a_tighter_server_rate_limit() {
    const N: usize = 20_000;
    let env = TestEnv::new().await;
    env.write_config(FAST_RETRY);
    env.write_data("people.csv", &people_csv(N));
    env.write_data("orders.csv", &orders_csv(N));
    env.write_job("people", PEOPLE_JOB);
    env.write_job("orders", ORDERS_JOB);
    // The server's bucket runs on a paused clock that moves on only after a refusal: the limit
    // binds however fast or slow this machine sends, and every 429 is followed by a refill.
    env.sim.pause_clock();
    env.sim.set_faults(Faults {
        error_5xx_rate: 0.10,
        drop_before_rate: 0.01,
        drop_after_rate: 0.01,
        // The client may send 2000/s (a burst of 200); the server allows 500/s (a burst of 51).
        rate_limit_per_sec: Some(500),
        retry_after_secs: 1,
        latency: Duration::ZERO,
        seed: 42,
    });
    let people = refilling_after_each_429(&env, env.run("people")).await;
    let orders = refilling_after_each_429(&env, env.run("orders")).await;
    for r in [&people, &orders] {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        assert_eq!(r.counts.rows_delivered, N as u64);
        assert!(r.counts.retries > 0, "faults were exercised: {r:?}");
    }
    let ops = env.sim.operations();
    let identified: Vec<_> = ops
        .iter()
        .filter(|o| o.action == "identify")
        .cloned()
        .collect();
    assert_eq!(ids_of(&identified).len(), N, "every person arrived");
    assert_each_event_once(&ops, &expected_event_ids(N));
    let statuses: HashSet<u16> = env.sim.requests().iter().map(|r| r.status).collect();
    for s in [0, 429, 200] {
        assert!(statuses.contains(&s), "status {s} seen: {statuses:?}");
    }
    assert!(statuses.iter().any(|s| (500..600).contains(s)));
}

#[tokio::test]
async fn a_401_stops_the_run_at_once_and_sends_nothing_more() {
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 1, batch: { max_items: 10, max_bytes: 480000 } }\n");
    env.write_data("people.csv", &people_csv(100));
    env.write_job("people", PEOPLE_JOB);
    env.sim.fail_next(1, 401, None);
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::Failed);
    let err = report.error.unwrap_or_default();
    assert!(
        err.contains("refused the Track credentials (HTTP 401)")
            && err.contains("CIO_TRACK_API_KEY"),
        "{err}"
    );
    assert_eq!(env.sim.requests().len(), 1, "nothing sent after the 401");
    assert_eq!(report.counts.rows_delivered, 0);
}

#[tokio::test]
async fn a_400_for_one_batch_dead_letters_exactly_that_batchs_rows() {
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 2, batch: { max_items: 100, max_bytes: 480000 } }\n");
    env.write_data("people.csv", &people_csv(1000));
    env.write_job("people", PEOPLE_JOB);
    env.sim.fail_batch_containing("u-000450".into(), 400);
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::RejectedRows);
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (900, 100)
    );
    let state = StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state");
    let letters = state.dead_letters("people", 1000).await.expect("letters");
    let lines: Vec<i64> = letters.iter().filter_map(|l| l.line).collect();
    assert_eq!(
        lines,
        (402..=501).collect::<Vec<i64>>(),
        "rows 401..=500 (lines 402..=501)"
    );
    assert!(
        letters[0]
            .reason
            .contains("rejected the whole batch: HTTP 400"),
        "{}",
        letters[0].reason
    );
    let delivered = ids_of(&env.sim.operations());
    assert_eq!(delivered.len(), 900);
    assert!(!delivered.contains("u-000450"));
    assert!(delivered.contains("u-000400") && delivered.contains("u-000501"));
}

#[tokio::test]
async fn retry_after_is_honoured_by_the_simulators_clock() {
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 1 }\nretry: { base_delay_ms: 10 }\n");
    env.write_data("people.csv", &people_csv(5));
    env.write_job("people", PEOPLE_JOB);
    env.sim.fail_next(1, 429, Some(2));
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::Succeeded);
    let reqs: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.api == Api::Track)
        .collect();
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].status, reqs[1].status), (429, 200));
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "waited {gap:?}, Retry-After said 2 s"
    );
    assert!(gap < Duration::from_secs(10), "not the 60 s cap: {gap:?}");
    assert_eq!(report.counts.retries, 1);
}

#[tokio::test]
async fn when_retries_run_out_the_run_fails_and_the_next_resumes_from_the_settled_prefix() {
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 4, batch: { max_items: 100, max_bytes: 480000 } }\nretry: { max_attempts: 2, base_delay_ms: 10 }\n");
    env.write_data("people.csv", &people_csv(1000));
    env.write_job("people", PEOPLE_JOB);
    // The sixth batch (rows 501..=600) fails with a retried status until retries run out.
    env.sim.fail_batch_containing("u-000550".into(), 503);
    let first = env.run("people").await;
    assert_eq!(first.outcome, Outcome::Failed);
    assert!(
        first
            .error
            .as_deref()
            .unwrap_or("")
            .contains("gave up after 2 attempts"),
        "{first:?}"
    );
    let state = StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state");
    let cp = state.checkpoint("people").await.expect("cp").expect("some");
    assert_eq!(
        cp.resume.rows(),
        500,
        "the checkpoint stops before the failed batch"
    );
    assert!(!cp.complete);

    env.sim.clear_rejections();
    let second = env.run("people").await;
    assert_eq!(second.outcome, Outcome::Succeeded, "{second:?}");
    assert_eq!(second.resumed_after_rows, 500);
    assert_eq!(second.counts.rows_read, 500);
    assert_eq!(
        ids_of(&env.sim.operations()).len(),
        1000,
        "every row delivered across the two runs"
    );
}
