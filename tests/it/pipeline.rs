//! The push pipeline's own guarantees: the dry run plans requests exactly as a run sends
//! them, a refused batch is logged once, and an operation that cannot be put on the wire is
//! never sent or counted.

use std::sync::Arc;
use std::time::Duration;

use cio_sync::batch::{Batch, Pending};
use cio_sync::config::{IdentifierKind, Secret};
use cio_sync::http::{RateGate, RetryPolicy, RunCounters};
use cio_sync::mapping::{Action, Mapped, Operation, Subject};
use cio_sync::state::Outcome;
use cio_sync::track::{BatchOutcome, TrackClient, Wire};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Requests that carried rows (the region self-check is not one).
fn row_requests(env: &TestEnv) -> usize {
    env.sim
        .requests()
        .iter()
        .filter(|r| r.path != "/api/v1/accounts/region")
        .count()
}

#[track_caller]
fn dry_run_requests(out: &std::process::Output) -> u64 {
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("dry run --json: {e}: {}{}", stdout(out), stderr(out)));
    reports[0]["requests"]
        .as_u64()
        .unwrap_or_else(|| panic!("no request count in {reports}"))
}

#[tokio::test]
async fn dry_run_request_counts_equal_the_real_runs_for_identify_anonymous_track_and_segment_jobs()
{
    let env = TestEnv::new().await;
    env.write_config("track: { batch: { max_items: 10, max_bytes: 480000 } }\n");
    env.write_data("people.csv", &people_csv(25));
    env.write_job("people", PEOPLE_JOB);
    let mut visits = String::from("cookie,url,at\n");
    for i in 1..=7 {
        visits.push_str(&format!("c-{i},https://x.test/{i},{}\n", 1_700_000_000 + i));
    }
    env.write_data("visits.csv", &visits);
    env.write_job(
        "visits",
        "source: { csv: { path: data/visits.csv } }\ntrack:\n  anonymous_id: cookie\n  name: { column: url }\n  type: page\n  timestamp: at\n  data: []\n",
    );
    let mut vip = String::from("customer_id\n");
    for i in 1..=2500 {
        vip.push_str(&format!("u-{i}\n"));
    }
    env.write_data("vip.csv", &vip);
    // Batches of 2000 asked for; a segment call carries at most 1000 ids.
    env.write_job(
        "vip",
        "batch: { max_items: 2000, max_bytes: 480000 }\nsource: { csv: { path: data/vip.csv } }\nsegment: { id: 7, identifier: { id: customer_id } }\n",
    );
    // 25 people in batches of 10; 7 anonymous events, one v1 call each; 2500 ids by 1000.
    for (job, expected) in [("people", 3), ("visits", 7), ("vip", 3)] {
        let out = env.cli_output(&["run", job, "--dry-run", "--json"]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        let planned = dry_run_requests(&out);
        env.sim.reset_records();
        let report = env.run(job).await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
        let sent = row_requests(&env);
        assert_eq!(
            (planned, sent),
            (expected, expected as usize),
            "job {job}: the dry run planned {planned} requests, the run sent {sent}"
        );
    }
}

#[tokio::test]
async fn a_whole_batch_refused_with_400_logs_one_warning_with_the_row_count_and_lines() {
    let env = TestEnv::new().await;
    env.write_config("track: { concurrency: 1, batch: { max_items: 1000, max_bytes: 480000 } }\n");
    env.write_data("people.csv", &people_csv(1500));
    env.write_job("people", PEOPLE_JOB);
    env.sim.fail_batch_containing("u-000500".into(), 400);
    let out = env.cli_output(&["run", "people"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let log = stderr(&out);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the refused batch, not one per row:\n{}",
        warnings
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let w = warnings[0];
    for part in ["rows=1000", "first_line=2", "last_line=1001", "HTTP 400"] {
        assert!(w.contains(part), "`{part}` in {w}");
    }
    assert!(stdout(&out).contains("rejected 1000"), "{}", stdout(&out));
}

fn client(env: &TestEnv) -> TrackClient {
    TrackClient::new(
        &env.sim.url(),
        Secret::new(SITE.to_string()),
        Secret::new(TRACK_KEY.to_string()),
        Arc::new(RateGate::per_second(1000)),
        RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_wait: Duration::from_millis(100),
            max_total_wait: Duration::from_secs(1),
        },
        Duration::from_secs(5),
    )
    .expect("track client")
}

fn batch_of(ops: Vec<Operation>) -> Batch {
    let items = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| Pending {
            seq: i as u64,
            line: i as u64 + 2,
            row_ref: format!("line:{}", i + 2),
            values: Vec::new(),
            mapped: Mapped {
                encoded: op.encode_v2(),
                op,
            },
        })
        .collect();
    Batch { items, bytes: 0 }
}

fn person(id: &str) -> Subject {
    Subject::Person {
        kind: IdentifierKind::Id,
        value: id.into(),
    }
}

#[tokio::test]
async fn a_v1_operation_without_a_v1_call_is_dead_lettered_and_never_sent_or_counted() {
    let env = TestEnv::new().await;
    let batch = batch_of(vec![Operation {
        subject: Subject::Anonymous("cookie-1".into()),
        action: Action::Identify {
            attributes: serde_json::Map::new(),
            timestamp: None,
            update_only: false,
        },
    }]);
    let counters = Arc::new(RunCounters::default());
    let outcome = client(&env)
        .send(&batch, Wire::V1, &counters, &CancellationToken::new())
        .await;
    assert!(
        env.sim.requests().is_empty(),
        "nothing may be sent: {:?}",
        env.sim.requests()
    );
    match outcome {
        BatchOutcome::Settled { rejected } => {
            assert_eq!(rejected.len(), 1, "the row is dead-lettered, not delivered");
            assert!(
                rejected[0].1.contains("internal error"),
                "{}",
                rejected[0].1
            );
        }
        other => panic!("the row settles as rejected: {other:?}"),
    }
}

#[tokio::test]
async fn a_segment_batch_that_cannot_be_one_call_sends_nothing_and_counts_nothing() {
    let env = TestEnv::new().await;
    let add = Action::SegmentAdd { segment_id: 7 };
    let batch = batch_of(vec![
        Operation {
            subject: person("u-1"),
            action: add.clone(),
        },
        Operation {
            subject: Subject::Anonymous("cookie-1".into()),
            action: add,
        },
    ]);
    let counters = Arc::new(RunCounters::default());
    let outcome = client(&env)
        .send(&batch, Wire::Segment, &counters, &CancellationToken::new())
        .await;
    assert!(
        env.sim.requests().is_empty(),
        "nothing may be sent: {:?}",
        env.sim.requests()
    );
    assert!(env.sim.segment_members_added().is_empty());
    assert!(
        matches!(&outcome, BatchOutcome::Unsendable(e) if e.to_string().contains("internal error")),
        "{outcome:?}"
    );
}
