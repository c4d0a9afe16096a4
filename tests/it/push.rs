//! Push jobs delivered to the simulator: exact operations, transports, partial rejections.

use std::collections::{BTreeMap, HashSet};

use cio_sync::pipeline::RunMode;
use cio_sync::simulator::{RecordedOp, RejectRule};
use cio_sync::state::{Outcome, StateStore};
use serde_json::json;

use crate::helpers::*;

fn by_id(ops: &[RecordedOp]) -> BTreeMap<String, RecordedOp> {
    ops.iter()
        .map(|o| {
            (
                o.identifiers.get("id").cloned().unwrap_or_default(),
                o.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn identify_rows_arrive_with_exact_attributes_identifiers_and_unix_timestamps() {
    let env = TestEnv::new().await;
    env.write_data(
        "people.csv",
        "customer_id,email,plan,seats,signup_at,updated_at,note\n\
         u 1,ann@example.com,pro,3,2023-11-14T22:13:20Z,1717171717,\n\
         a+b@c,bo@example.com,free,,2024-01-01,1717171718,hello\n",
    );
    env.write_job(
        "people",
        "source: { csv: { path: data/people.csv } }\n\
         identify:\n  identifier: { id: customer_id }\n  timestamp: updated_at\n  attributes:\n    email: email\n    plan: plan\n    seats: { column: seats, as: number }\n    created_at: { column: signup_at, as: timestamp }\n    note: { column: note, empty: null }\n",
    );
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(
        (report.counts.rows_read, report.counts.rows_delivered),
        (2, 2)
    );
    let ops = by_id(&env.sim.operations());
    let ann = &ops["u 1"];
    assert_eq!(ann.action, "identify");
    assert_eq!(ann.timestamp, Some(1_717_171_717));
    assert_eq!(
        serde_json::Value::Object(ann.attributes.clone()),
        json!({"email": "ann@example.com", "plan": "pro", "seats": 3, "created_at": 1_700_000_000, "note": null})
    );
    let bo = &ops["a+b@c"];
    assert_eq!(
        serde_json::Value::Object(bo.attributes.clone()),
        json!({"email": "bo@example.com", "plan": "free", "created_at": 1_704_067_200, "note": "hello"})
    );
}

#[tokio::test]
async fn events_carry_valid_deterministic_ulids_that_are_identical_across_runs() {
    let env = TestEnv::new().await;
    env.write_data("orders.csv", &orders_csv(250));
    env.write_job("orders", ORDERS_JOB);
    let first = env.run("orders").await;
    assert_eq!(first.outcome, Outcome::Succeeded);
    let ops = env.sim.operations();
    assert_eq!(ops.len(), 250);
    let ids: Vec<String> = ops
        .iter()
        .map(|o| o.event_id.clone().expect("event id"))
        .collect();
    for (op, id) in ops.iter().zip(&ids) {
        let ulid = ulid::Ulid::from_string(id).expect("a valid ULID");
        let ts = op.timestamp.expect("timestamp");
        assert!(
            (1_650_000_000..1_700_000_000).contains(&ts),
            "Unix seconds: {ts}"
        );
        assert_eq!(ulid.timestamp_ms(), ts as u64 * 1000);
        assert_eq!(op.name.as_deref(), Some("purchase"));
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250);

    // A second, full run sends the same ids: Customer.io (and the simulator) drop them.
    let again = env.run_mode("orders", RunMode::Normal { full: true }).await;
    assert_eq!(again.counts.rows_delivered, 250);
    let dups: Vec<String> = env
        .sim
        .duplicate_events()
        .into_iter()
        .filter_map(|o| o.event_id)
        .collect();
    assert_eq!(dups.len(), 250);
    assert_eq!(
        dups.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    assert_eq!(env.sim.operations().len(), 250);
}

#[tokio::test]
async fn v1_and_v2_transports_produce_the_same_operations() {
    let mut results = Vec::new();
    for transport in ["v2", "v1"] {
        let env = TestEnv::new().await;
        env.write_data("people.csv", &people_csv(30));
        env.write_data("orders.csv", &orders_csv(30));
        env.write_job("people", &format!("transport: {transport}\n{PEOPLE_JOB}"));
        env.write_job("orders", &format!("transport: {transport}\n{ORDERS_JOB}"));
        env.write_data("gone.csv", "email\nx@example.com\n");
        env.write_job("gone", &format!("transport: {transport}\nsource: {{ csv: {{ path: data/gone.csv }} }}\ndelete: {{ identifier: {{ email: email }} }}\n"));
        for job in ["people", "orders", "gone"] {
            assert_eq!(env.run(job).await.outcome, Outcome::Succeeded);
        }
        let requests = env.sim.requests().len();
        let mut ops: Vec<serde_json::Value> = env
            .sim
            .operations()
            .into_iter()
            .map(|o| {
                let mut v = serde_json::to_value(&o).expect("json");
                v.as_object_mut().expect("object").remove("transport");
                v
            })
            .collect();
        ops.sort_by_key(|v| v.to_string());
        results.push((transport, ops, requests));
    }
    assert_eq!(results[0].1.len(), 61);
    assert_eq!(
        results[0].1, results[1].1,
        "v1 and v2 deliver the same operations"
    );
    // v2 batches (3 requests); v1 sends one request per row.
    assert_eq!(results[0].2, 3);
    assert_eq!(results[1].2, 61);
}

#[tokio::test]
async fn a_207_rejecting_two_rows_mid_batch_dead_letters_exactly_those_rows() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(100));
    env.write_job("people", PEOPLE_JOB);
    for id in ["u-000037", "u-000061"] {
        env.sim.reject_items(RejectRule {
            identifier_id: id.into(),
            reason: format!("invalid attribute for {id}"),
        });
    }
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::RejectedRows);
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (98, 2)
    );
    assert_eq!(env.sim.requests().len(), 1, "one batch, not resent");
    let delivered = ids_of(&env.sim.operations());
    assert_eq!(delivered.len(), 98);
    assert!(!delivered.contains("u-000037") && !delivered.contains("u-000061"));

    let state = StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state");
    let letters = state
        .dead_letters("people", 10)
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].line, Some(38));
    assert_eq!(letters[0].row_data["customer_id"], json!("u-000037"));
    assert!(
        letters[0].reason.contains("invalid attribute for u-000037"),
        "{}",
        letters[0].reason
    );
    assert_eq!(letters[0].stage, "customerio");
    assert_eq!(letters[1].line, Some(62));
    // The run settled every row: the checkpoint is at the end.
    let cp = state
        .checkpoint("people", &cio_sync::state::Scope::Job)
        .await
        .expect("checkpoint")
        .expect("some");
    assert!(cp.complete);
    assert_eq!(cp.resume.rows(), 100);
}

#[tokio::test]
async fn bad_rows_are_dead_lettered_with_line_numbers_while_the_rest_are_delivered() {
    let env = TestEnv::new().await;
    let long = "x".repeat(1001);
    env.write_data(
        "people.csv",
        &format!(
            "customer_id,email,plan,signup_at\n\
             u-1,a@x.com,pro,1600000000\n\
             ,b@x.com,pro,1600000000\n\
             u-3,c@x.com,{long},1600000000\n\
             u-4,d@x.com,pro,1600000000123\n\
             u-5,e@x.com,pro\n\
             u-6,f@x.com,pro,2020-01-01\n"
        ),
    );
    env.write_job("people", PEOPLE_JOB);
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::RejectedRows);
    assert_eq!(
        (
            report.counts.rows_read,
            report.counts.rows_delivered,
            report.counts.rows_rejected
        ),
        (6, 2, 4)
    );
    let delivered: Vec<String> = env
        .sim
        .operations()
        .iter()
        .map(|o| o.identifiers["id"].clone())
        .collect();
    assert_eq!(delivered, vec!["u-1", "u-6"]);

    let out = env.cli_output(&["dead-letters", "people", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let letters: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let summary: Vec<(i64, String)> = letters
        .iter()
        .map(|l| {
            (
                l["line"].as_i64().unwrap_or(0),
                l["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 4);
    assert_eq!(summary[0].0, 3);
    assert!(
        summary[0]
            .1
            .contains("identifier column `customer_id` is empty")
    );
    assert_eq!(summary[1].0, 4);
    assert!(summary[1].1.contains("attribute \"plan\" is 1001 bytes"));
    assert_eq!(summary[2].0, 5);
    assert!(summary[2].1.contains("milliseconds?"));
    assert_eq!(summary[3].0, 6);
    assert!(summary[3].1.contains("3 fields"), "{}", summary[3].1);
    assert!(letters.iter().all(|l| l["job"] == json!("people")));
    assert!(
        letters[0]["source"]
            .as_str()
            .unwrap_or("")
            .ends_with("people.csv")
    );
}

#[tokio::test]
async fn manual_segment_jobs_add_people_in_batches() {
    let env = TestEnv::new().await;
    env.write_data("vip.csv", "customer_id\nu-1\nu-2\nu-3\n");
    env.write_job("vip", "source: { csv: { path: data/vip.csv } }\nsegment: { id: 7, identifier: { id: customer_id } }\n");
    assert_eq!(env.run("vip").await.outcome, Outcome::Succeeded);
    let added = env.sim.segment_members_added();
    assert_eq!(
        added,
        vec![
            (7, "id".into(), "u-1".into()),
            (7, "id".into(), "u-2".into()),
            (7, "id".into(), "u-3".into())
        ]
    );
}

#[tokio::test]
async fn anonymous_events_go_through_the_v1_events_endpoint() {
    let env = TestEnv::new().await;
    env.write_data(
        "visits.csv",
        "cookie,url,at\nc-1,https://x.test/a,1700000000\n",
    );
    env.write_job(
        "visits",
        "source: { csv: { path: data/visits.csv } }\ntrack:\n  anonymous_id: cookie\n  name: { column: url }\n  type: page\n  timestamp: at\n  data: []\n",
    );
    assert_eq!(env.run("visits").await.outcome, Outcome::Succeeded);
    let ops = env.sim.operations();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].anonymous_id.as_deref(), Some("c-1"));
    assert_eq!(ops[0].action, "page");
    assert_eq!(ops[0].name.as_deref(), Some("https://x.test/a"));
}

#[tokio::test]
async fn an_unchanged_finished_file_sends_nothing_and_a_grown_one_sends_only_its_new_rows() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(20));
    env.write_job("people", PEOPLE_JOB);
    assert_eq!(env.run("people").await.counts.rows_delivered, 20);
    let again = env.run("people").await;
    assert_eq!(
        (again.counts.rows_read, again.outcome),
        (0, Outcome::Succeeded)
    );
    env.write_data("people.csv", &people_csv(25));
    let grown = env.run("people").await;
    assert_eq!(
        (grown.counts.rows_read, grown.counts.rows_delivered),
        (5, 5),
        "only the appended rows are read and sent"
    );
}

#[tokio::test]
async fn dead_letters_retry_resends_rows_that_now_pass_and_purge_empties_the_table() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(10));
    env.write_job("people", PEOPLE_JOB);
    env.sim.reject_items(RejectRule {
        identifier_id: "u-000004".into(),
        reason: "temporarily refused".into(),
    });
    assert_eq!(env.run("people").await.counts.rows_rejected, 1);
    env.sim.clear_rejections();
    let out = env.cli_output(&["dead-letters", "retry", "people"]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("0 dead letters left"),
        "{}",
        stdout(&out)
    );
    assert!(
        env.sim
            .operations()
            .iter()
            .any(|o| o.identifiers["id"] == "u-000004")
    );

    env.sim.reject_items(RejectRule {
        identifier_id: "u-000005".into(),
        reason: "no".into(),
    });
    env.run_mode("people", RunMode::Normal { full: true }).await;
    let out = env.cli_output(&["dead-letters", "purge", "people"]).await;
    assert!(
        stdout(&out).contains("purged 1 dead letter"),
        "{}",
        stdout(&out)
    );
    let out = env.cli_output(&["dead-letters", "people"]).await;
    assert!(stdout(&out).contains("no dead letters"));
}
