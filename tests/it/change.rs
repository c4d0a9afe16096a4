//! Change detection, dead letters keyed by identity, and mirror mode, against the simulator,
//! on SQLite and PostgreSQL state where the state matters.

use std::collections::BTreeSet;

use cio_sync::config::DatabaseUrl;
use cio_sync::pipeline::RunMode;
use cio_sync::state::{Outcome, StateStore};
use serde_json::json;

use crate::helpers::*;

/// `people.csv` rows: id, email, plan, city; `plan_of` picks each row's plan.
fn people(ids: impl IntoIterator<Item = usize>, plan_of: impl Fn(usize) -> &'static str) -> String {
    let mut s = String::from("id,email,plan,city\n");
    for i in ids {
        s.push_str(&format!(
            "p{i},user{i}@example.com,{},city{}\n",
            plan_of(i),
            i % 7
        ));
    }
    s
}

const JOB: &str = "source: { csv: { path: data/people.csv } }\n\
identify:\n  identifier: { id: id }\n  attributes: { email: email, plan: plan, city: city }\n";

async fn env_on(state: StateDb) -> TestEnv {
    let env = TestEnv::with_state(state).await;
    env.write_config("track: { batch: { max_items: 100, max_bytes: 480000 } }\n");
    env
}

async fn store(env: &TestEnv) -> StateStore {
    StateStore::open(&DatabaseUrl::new(env.state_url()))
        .await
        .expect("state")
}

fn ids_sent(env: &TestEnv) -> BTreeSet<String> {
    env.sim
        .operations()
        .iter()
        .filter(|o| o.action == "identify")
        .filter_map(|o| o.identifiers.get("id").cloned())
        .collect()
}

macro_rules! on_both_states {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$name(StateDb::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(StateDb::Postgres).await
            }
        }
    };
}

on_both_states!(an_unchanged_re_export_in_another_order_sends_zero_requests);
async fn an_unchanged_re_export_in_another_order_sends_zero_requests(state: StateDb) {
    let env = env_on(state).await;
    env.write_data("people.csv", &people(1..=250, |_| "free"));
    env.write_job("people", JOB);
    let first = env.run("people").await;
    assert_eq!(
        (first.outcome, first.counts.rows_delivered),
        (Outcome::Succeeded, 250)
    );
    env.sim.reset_records();
    // Next night: a new file, same people, other order.
    env.write_data("people.csv", &people((1..=250).rev(), |_| "free"));
    let again = env.run("people").await;
    assert_eq!(again.outcome, Outcome::Succeeded, "{again:?}");
    assert_eq!(
        again.counts.rows_read, 250,
        "the new export is read in full"
    );
    assert_eq!(again.counts.rows_unchanged, 250);
    assert_eq!(again.counts.rows_delivered, 0);
    assert!(
        env.sim.requests().is_empty(),
        "no request for an unchanged export: {:?}",
        env.sim.requests()
    );
    let st = store(&env).await;
    assert_eq!(st.count_fingerprints("people").await.unwrap(), 250);
    let runs = st.runs(Some("people"), 1).await.unwrap();
    assert_eq!(
        runs[0].counts.rows_unchanged, 250,
        "kept in the run history"
    );
}

on_both_states!(a_person_twice_in_one_export_is_compared_once_per_row);
/// The database compares each row of a lookup chunk on its own: a person listed twice in
/// the next export, once as before and once changed, has the changed row sent.
async fn a_person_twice_in_one_export_is_compared_once_per_row(state: StateDb) {
    let env = env_on(state).await;
    env.write_data("people.csv", &people(1..=50, |_| "free"));
    env.write_job("people", JOB);
    assert_eq!(env.run("people").await.outcome, Outcome::Succeeded);
    env.sim.reset_records();
    // A new export (not the old file grown): the changed copy first, then everyone as before.
    let mut next = people([17], |_| "pro");
    next.push_str(&people(1..=50, |_| "free").replace("id,email,plan,city\n", ""));
    env.write_data("people.csv", &next);
    let run = env.run("people").await;
    assert_eq!(
        (run.counts.rows_delivered, run.counts.rows_unchanged),
        (1, 50),
        "{run:?}"
    );
    let ops = env.sim.operations();
    assert_eq!(ops.len(), 1);
    assert_eq!(
        ops[0].identifiers.get("id").map(String::as_str),
        Some("p17")
    );
    assert_eq!(
        serde_json::Value::Object(ops[0].attributes.clone()),
        json!({"plan": "pro"})
    );
}

on_both_states!(three_changed_rows_send_exactly_those_with_only_their_changed_attributes);
async fn three_changed_rows_send_exactly_those_with_only_their_changed_attributes(state: StateDb) {
    let env = env_on(state).await;
    env.write_data("people.csv", &people(1..=200, |_| "free"));
    env.write_job("people", JOB);
    assert_eq!(env.run("people").await.outcome, Outcome::Succeeded);
    env.sim.reset_records();
    let changed = [7, 88, 150];
    env.write_data(
        "people.csv",
        &people((1..=200).rev(), |i| {
            if changed.contains(&i) { "pro" } else { "free" }
        }),
    );
    let run = env.run("people").await;
    assert_eq!(
        (run.counts.rows_delivered, run.counts.rows_unchanged),
        (3, 197)
    );
    assert_eq!(env.sim.requests().len(), 1, "one batch for three rows");
    let ops = env.sim.operations();
    assert_eq!(ops.len(), 3);
    for op in &ops {
        assert_eq!(
            serde_json::Value::Object(op.attributes.clone()),
            json!({"plan": "pro"}),
            "only the changed attribute: {op:?}"
        );
    }
    assert_eq!(
        ids_sent(&env),
        ["p7", "p88", "p150"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // `diff: row` sends the whole row of a changed person.
    env.sim.reset_records();
    env.write_job("people", &format!("{JOB}  diff: row\n"));
    env.write_data(
        "people.csv",
        &people(1..=200, |i| {
            if i == 9 {
                "team"
            } else if changed.contains(&i) {
                "pro"
            } else {
                "free"
            }
        }),
    );
    let run = env.run("people").await;
    assert_eq!(run.counts.rows_delivered, 1);
    let ops = env.sim.operations();
    assert_eq!(
        serde_json::Value::Object(ops[0].attributes.clone()),
        json!({"email": "user9@example.com", "plan": "team", "city": "city2"})
    );

    // `send: all` sends every row.
    env.sim.reset_records();
    env.write_job("people", &format!("{JOB}  send: all\n"));
    env.write_data(
        "people.csv",
        &people((1..=200).rev(), |i| {
            if i == 9 {
                "team"
            } else if changed.contains(&i) {
                "pro"
            } else {
                "free"
            }
        }),
    );
    assert_eq!(env.run("people").await.counts.rows_delivered, 200);
}

on_both_states!(a_failed_send_leaves_fingerprints_untouched_and_the_next_run_resends);
async fn a_failed_send_leaves_fingerprints_untouched_and_the_next_run_resends(state: StateDb) {
    let env = TestEnv::with_state(state).await;
    env.write_config("track: { batch: { max_items: 100, max_bytes: 480000 } }\nretry: { max_attempts: 2, base_delay_ms: 10 }\n");
    env.write_data("people.csv", &people(1..=50, |_| "free"));
    env.write_job("people", JOB);
    assert_eq!(env.run("people").await.outcome, Outcome::Succeeded);
    env.sim.reset_records();
    env.write_data(
        "people.csv",
        &people((1..=50).rev(), |i| if i <= 3 { "pro" } else { "free" }),
    );
    // Both attempts of the one batch fail.
    env.sim.fail_next(2, 500, None);
    let failed = env.run("people").await;
    assert_eq!(failed.outcome, Outcome::Failed, "{failed:?}");
    assert_eq!(failed.counts.rows_delivered, 0);
    let again = env.run("people").await;
    assert_eq!(again.outcome, Outcome::Succeeded, "{again:?}");
    assert_eq!(again.counts.rows_delivered, 3, "the changed rows go again");
    assert_eq!(
        ids_sent(&env),
        ["p1", "p2", "p3"].iter().map(|s| s.to_string()).collect()
    );
    env.sim.reset_records();
    env.write_data(
        "people.csv",
        &people(1..=50, |i| if i <= 3 { "pro" } else { "free" }),
    );
    let settled = env.run("people").await;
    assert_eq!(
        settled.counts.rows_delivered, 0,
        "acknowledged now: {settled:?}"
    );
}

#[tokio::test]
async fn a_grown_csv_sends_only_the_new_rows_and_no_acknowledged_event_again() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_data("people.csv", &people(1..=100, |_| "free"));
    env.write_job("people", JOB);
    env.write_data("orders.csv", &orders_csv(100));
    env.write_job("orders", ORDERS_JOB);
    assert_eq!(env.run("people").await.counts.rows_delivered, 100);
    assert_eq!(env.run("orders").await.counts.rows_delivered, 100);
    env.sim.reset_records();
    // The same files with rows appended.
    env.write_data("people.csv", &people(1..=105, |_| "free"));
    let orders = orders_csv(110);
    env.write_data("orders.csv", &orders);
    let people_run = env.run("people").await;
    assert_eq!(
        (
            people_run.counts.rows_read,
            people_run.counts.rows_delivered
        ),
        (5, 5),
        "{people_run:?}"
    );
    let orders_run = env.run("orders").await;
    assert_eq!(
        (
            orders_run.counts.rows_read,
            orders_run.counts.rows_delivered
        ),
        (10, 10)
    );
    assert!(env.sim.duplicate_events().is_empty(), "no event twice");
    assert_eq!(
        ids_sent(&env),
        (101..=105).map(|i| format!("p{i}")).collect()
    );

    // `--full` forgets checkpoint and fingerprints: everything goes again.
    env.sim.reset_records();
    let full = env.run_mode("people", RunMode::Normal { full: true }).await;
    assert_eq!(full.counts.rows_delivered, 105);
}

#[tokio::test]
async fn a_sql_source_read_in_full_sends_only_the_changed_rows() {
    let env = env_on(StateDb::Postgres).await;
    let src = env.path().join("crm.db");
    let url = format!("sqlite://{}?mode=rwc", src.display());
    let mut conn = {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect(&url)
            .await
            .expect("source db")
    };
    sqlx::query("CREATE TABLE people (id TEXT PRIMARY KEY, email TEXT, plan TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    for i in 1..=120 {
        sqlx::query("INSERT INTO people VALUES ($1, $2, 'free')")
            .bind(format!("p{i}"))
            .bind(format!("user{i}@example.com"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    env.write_job(
        "crm",
        &format!(
            "source: {{ sql: {{ url: \"sqlite://{}\", query: \"SELECT id, email, plan FROM people\" }} }}\n\
             identify:\n  identifier: {{ id: id }}\n  attributes: {{ email: email, plan: plan }}\n  on_missing: ignore\n",
            src.display()
        ),
    );
    assert_eq!(env.run("crm").await.counts.rows_delivered, 120);
    env.sim.reset_records();
    sqlx::query("UPDATE people SET plan = 'pro' WHERE id IN ('p5', 'p60')")
        .execute(&mut conn)
        .await
        .unwrap();
    let run = env.run("crm").await;
    assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
    assert_eq!(
        (
            run.counts.rows_read,
            run.counts.rows_delivered,
            run.counts.rows_unchanged
        ),
        (120, 2, 118)
    );
    assert_eq!(
        ids_sent(&env),
        ["p5", "p60"].iter().map(|s| s.to_string()).collect()
    );
    assert!(
        env.sim
            .operations()
            .iter()
            .all(|o| serde_json::Value::Object(o.attributes.clone()) == json!({"plan": "pro"}))
    );
}

on_both_states!(dead_letters_are_replaced_on_re_read_and_leave_when_the_row_passes);
async fn dead_letters_are_replaced_on_re_read_and_leave_when_the_row_passes(state: StateDb) {
    let env = env_on(state).await;
    let job = "source: { csv: { path: data/people.csv } }\n\
identify:\n  identifier: { id: id }\n  attributes: { email: email, seats: { column: seats, as: number } }\n";
    env.write_job("people", job);
    let csv = |bad: &str, order: &[usize]| {
        let mut s = String::from("id,email,seats\n");
        for i in order {
            let seats = if *i == 3 {
                bad.to_string()
            } else {
                i.to_string()
            };
            s.push_str(&format!("p{i},u{i}@example.com,{seats}\n"));
        }
        s
    };
    env.write_data("people.csv", &csv("many", &[1, 2, 3, 4, 5]));
    let first = env.run("people").await;
    assert_eq!(
        (first.outcome, first.counts.rows_rejected),
        (Outcome::RejectedRows, 1)
    );
    // Re-exported in another order, still broken: one dead letter, replaced.
    env.write_data("people.csv", &csv("lots", &[5, 3, 4, 1, 2]));
    let again = env.run("people").await;
    assert_eq!(again.counts.rows_rejected, 1);
    let st = store(&env).await;
    let letters = st.dead_letters("people", 100).await.unwrap();
    assert_eq!(letters.len(), 1, "replaced, not duplicated: {letters:?}");
    assert_eq!(letters[0].identity.as_deref(), Some("id:p3"));
    assert_eq!(
        letters[0].row_data["seats"],
        json!("lots"),
        "the latest reading"
    );
    // Fixed: the row passes and its dead letter leaves the table.
    env.write_data("people.csv", &csv("30", &[2, 1, 3, 5, 4]));
    let fixed = env.run("people").await;
    assert_eq!(
        (fixed.outcome, fixed.counts.rows_delivered),
        (Outcome::Succeeded, 1)
    );
    assert_eq!(st.count_dead_letters("people").await.unwrap(), 0);
}

const MIRROR_JOB: &str = "source: { csv: { path: data/people.csv } }\n\
identify:\n  identifier: { id: id }\n  attributes: { email: email, plan: plan, city: city }\n  on_missing: delete\n";

on_both_states!(mirror_deletes_exactly_the_vanished_people_and_refuses_a_cut_export);
async fn mirror_deletes_exactly_the_vanished_people_and_refuses_a_cut_export(state: StateDb) {
    let env = env_on(state).await;
    env.write_job("people", MIRROR_JOB);
    env.write_data("people.csv", &people(1..=100, |_| "free"));
    let first = env.run("people").await;
    assert_eq!(first.outcome, Outcome::Succeeded);
    assert!(env.sim.operations().iter().all(|o| o.action == "identify"));
    env.sim.reset_records();
    // Five people left the export (5% of 100: under the 10% guard).
    let gone = [4, 17, 33, 70, 99];
    env.write_data(
        "people.csv",
        &people((1..=100).rev().filter(|i| !gone.contains(i)), |_| "free"),
    );
    let run = env.run("people").await;
    assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
    let deleted: BTreeSet<String> = env
        .sim
        .operations()
        .iter()
        .filter(|o| o.action == "delete")
        .filter_map(|o| o.identifiers.get("id").cloned())
        .collect();
    assert_eq!(deleted, gone.iter().map(|i| format!("p{i}")).collect());
    assert_eq!(env.sim.operations().len(), 5, "nothing else sent");
    let st = store(&env).await;
    assert_eq!(st.count_fingerprints("people").await.unwrap(), 95);

    // The export is cut in half: the guard refuses, nothing is removed, exit code 5.
    env.sim.reset_records();
    env.write_data(
        "people.csv",
        &people((1..=50).filter(|i| !gone.contains(i)), |_| "free"),
    );
    let out = env.cli_output(&["run", "people"]).await;
    assert_exit(&out, 5);
    assert!(
        stderr(&out).contains("max_missing_share") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.sim.operations().iter().all(|o| o.action != "delete"),
        "nothing deleted"
    );
    let runs = st.runs(Some("people"), 1).await.unwrap();
    assert_eq!(runs[0].outcome, "guarded");
    // `--force` overrides.
    env.write_data(
        "people.csv",
        &people((1..=50).rev().filter(|i| !gone.contains(i)), |_| "free"),
    );
    let out = env.cli_output(&["run", "people", "--force"]).await;
    assert_exit(&out, 0);
    let deleted = env
        .sim
        .operations()
        .iter()
        .filter(|o| o.action == "delete")
        .count();
    assert_eq!(deleted, 95 - 47, "the 48 people past p50 are deleted");
}

#[tokio::test]
async fn a_mirrored_segment_ends_with_exactly_the_rows_people() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_job(
        "vip",
        "source: { csv: { path: data/vip.csv } }\nsegment: { id: 7, identifier: { id: customer_id }, mirror: true }\nguard: { max_missing_share: 0.5 }\n",
    );
    env.write_data("vip.csv", "customer_id\nu-1\nu-2\nu-3\nu-4\n");
    assert_eq!(env.run("vip").await.outcome, Outcome::Succeeded);
    env.write_data("vip.csv", "customer_id\nu-5\nu-3\nu-1\n");
    let run = env.run("vip").await;
    assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
    let mut members: BTreeSet<String> = BTreeSet::new();
    let added = env.sim.segment_members_added();
    let removed = env.sim.segment_members_removed();
    for (_, _, id) in &added {
        members.insert(id.clone());
    }
    for (_, _, id) in &removed {
        members.remove(id);
    }
    assert_eq!(
        members,
        ["u-1", "u-3", "u-5"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(added.len(), 5, "u-1 and u-3 are not added twice: {added:?}");
    assert_eq!(
        removed.iter().map(|r| r.2.clone()).collect::<BTreeSet<_>>(),
        ["u-2", "u-4"].iter().map(|s| s.to_string()).collect()
    );
}

#[tokio::test]
async fn relationships_mirror_removes_exactly_the_vanished_pairs() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_job(
        "members",
        "transport: v2\nsource: { csv: { path: data/members.csv } }\nrelationship: { object: { type_id: 1, id: account_id }, person: { id: user_id }, mirror: true }\nguard: { max_missing_share: 0.5 }\n",
    );
    env.write_data(
        "members.csv",
        "account_id,user_id\nacme,1\nacme,2\nglobex,3\nglobex,4\n",
    );
    assert_eq!(env.run("members").await.outcome, Outcome::Succeeded);
    env.sim.reset_records();
    env.write_data("members.csv", "account_id,user_id\nglobex,3\nacme,1\n");
    let run = env.run("members").await;
    assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
    let items = env.sim.v2_items();
    let mut removed: Vec<(String, String)> = Vec::new();
    for item in &items {
        assert_eq!(
            item["action"], "delete_relationships",
            "only removals: {item}"
        );
        for r in item["cio_relationships"].as_array().unwrap() {
            removed.push((
                item["identifiers"]["object_id"].as_str().unwrap().into(),
                r["identifiers"]["id"].as_str().unwrap().into(),
            ));
        }
    }
    removed.sort();
    assert_eq!(
        removed,
        vec![("acme".into(), "2".into()), ("globex".into(), "4".into())]
    );
}

#[tokio::test]
async fn validation_refuses_mirror_mode_on_an_incremental_sql_job_and_says_why() {
    let env = TestEnv::new().await;
    env.write_job(
        "crm",
        "source: { sql: { url: \"sqlite://crm.db\", query: \"SELECT id, updated_at FROM people\", cursor: { column: updated_at, tiebreak: id } } }\n\
         identify:\n  identifier: { id: id }\n  on_missing: delete\n",
    );
    let out = env.cli_output(&["validate"]).await;
    assert_exit(&out, 2);
    let err = stderr(&out) + &stdout(&out);
    assert!(err.contains("identify.on_missing"), "{err}");
    assert!(err.contains("cannot see which rows were deleted"), "{err}");
}

#[tokio::test]
async fn checkpoint_reset_refuses_off_a_terminal_without_yes_and_forgets_fingerprints() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_data("people.csv", &people(1..=20, |_| "free"));
    env.write_job("people", JOB);
    assert_eq!(env.run("people").await.counts.rows_delivered, 20);
    let show = env
        .cli_output(&["checkpoint", "show", "people", "--json"])
        .await;
    assert_exit(&show, 0);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(shown["fingerprints"]["identities"], 20);
    let refused = env.cli_output(&["checkpoint", "reset", "people"]).await;
    assert_exit(&refused, 2);
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    let reset = env
        .cli_output(&["checkpoint", "reset", "people", "--yes"])
        .await;
    assert_exit(&reset, 0);
    env.sim.reset_records();
    assert_eq!(
        env.run("people").await.counts.rows_delivered,
        20,
        "all sent again"
    );
}

#[tokio::test]
async fn a_dry_run_shows_only_what_a_real_run_would_send() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_data("people.csv", &people(1..=40, |_| "free"));
    env.write_job("people", JOB);
    assert_eq!(env.run("people").await.counts.rows_delivered, 40);
    env.sim.reset_records();
    env.write_data(
        "people.csv",
        &people((1..=40).rev(), |i| {
            if i == 2 || i == 30 { "pro" } else { "free" }
        }),
    );
    let out = env
        .cli_output(&["run", "people", "--dry-run", "--json"])
        .await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let r = if json.is_array() { &json[0] } else { &json };
    assert_eq!(
        (r["operations"].as_u64(), r["unchanged"].as_u64()),
        (Some(2), Some(38)),
        "{text}"
    );
    assert_eq!(
        r["sample_operations"][0]["attributes"],
        json!({"plan": "pro"}),
        "{text}"
    );
    assert!(env.sim.requests().is_empty(), "a dry run sends nothing");
}

#[tokio::test]
async fn object_identify_jobs_send_only_changed_objects() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_job(
        "accounts",
        "transport: v2\nsource: { csv: { path: data/accounts.csv } }\nobject: { type_id: 1, id: account_id, attributes: { name: name, tier: tier } }\n",
    );
    env.write_data(
        "accounts.csv",
        "account_id,name,tier\nacme,Acme,gold\nglobex,Globex,silver\ninitech,Initech,bronze\n",
    );
    assert_eq!(env.run("accounts").await.counts.rows_delivered, 3);
    env.sim.reset_records();
    env.write_data(
        "accounts.csv",
        "account_id,name,tier\ninitech,Initech,bronze\nglobex,Globex,gold\nacme,Acme,gold\n",
    );
    let run = env.run("accounts").await;
    assert_eq!(
        (run.counts.rows_delivered, run.counts.rows_unchanged),
        (1, 2)
    );
    assert_eq!(
        env.sim.v2_items(),
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"globex"},"action":"identify","attributes":{"tier":"gold"}})
        ]
    );
}

/// Measurement, not a check: `CIO_SYNC_CHANGE_ROWS=200000 cargo nextest run --run-ignored only
/// -E 'test(/change_detection_figures/)' --no-capture`. Prints the state size per identity,
/// the lookup cost per row, and the second night's wall time with 1% changed.
#[tokio::test]
#[ignore]
async fn change_detection_figures() {
    let n: usize = std::env::var("CIO_SYNC_CHANGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    for state in [StateDb::Sqlite, StateDb::Postgres] {
        let env = env_on(state).await;
        env.write_config("track: { rate_limit_per_sec: 100000, concurrency: 4, batch: { max_items: 1000, max_bytes: 480000 } }\n");
        env.sim.record_operations(false);
        env.write_data("people.csv", &people(1..=n, |_| "free"));
        env.write_job("people", JOB);
        let t = std::time::Instant::now();
        let first = env.run("people").await;
        let cold = t.elapsed();
        assert_eq!(first.counts.rows_delivered, n as u64);
        let changed = |i: usize| if i.is_multiple_of(100) { "pro" } else { "free" };
        env.write_data("people.csv", &people((1..=n).rev(), changed));
        let before = env.sim.requests().len();
        let t = std::time::Instant::now();
        let second = env.run("people").await;
        let warm = t.elapsed();
        assert_eq!(second.counts.rows_delivered, (n / 100) as u64);
        let st = store(&env).await;
        let bytes = st.fingerprint_bytes("people").await.unwrap();
        let keys: Vec<String> = (0..1000)
            .map(|k| format!("id:p{}", (k * 7919) % n + 1))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let stored = st.fingerprints("people", &refs).await.unwrap();
        assert_eq!(stored.len(), 1000);
        let pairs: Vec<(&str, u64)> = refs.iter().map(|k| (*k, stored[*k].whole)).collect();
        let t = std::time::Instant::now();
        for _ in 0..20 {
            // The run's own lookup: unchanged rows, so the answer is empty.
            assert!(
                st.changed_fingerprints("people", &pairs)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        let lookup = t.elapsed().as_secs_f64() * 1e6 / 20_000.0;
        println!(
            "{state:?}: {n} rows; cold {:.2}s; 1%-changed re-export {:.2}s ({:.2} µs/row), {} requests, {} sent; fingerprints {} bytes ({:.1} B/identity); lookup {:.2} µs/row (chunks of 1000)",
            cold.as_secs_f64(),
            warm.as_secs_f64(),
            warm.as_secs_f64() * 1e6 / n as f64,
            env.sim.requests().len() - before,
            second.counts.rows_delivered,
            bytes,
            bytes as f64 / n as f64,
            lookup
        );
    }
}

#[tokio::test]
async fn validation_refuses_mirror_on_removals_and_objects_cannot_be_suppressed() {
    let env = TestEnv::new().await;
    env.write_data("vip.csv", "customer_id\nu-1\n");
    env.write_job(
        "vip",
        "source: { csv: { path: data/vip.csv } }\nsegment: { id: 7, identifier: { id: customer_id }, action: remove, mirror: true }\n",
    );
    env.write_job(
        "accounts",
        "transport: v2\nsource: { csv: { path: data/vip.csv } }\nobject: { type_id: 1, id: customer_id, on_missing: suppress }\nguard: { max_missing_share: 2 }\n",
    );
    let out = env.cli_output(&["validate"]).await;
    assert_exit(&out, 2);
    let err = stderr(&out) + &stdout(&out);
    for needle in [
        "segment.mirror",
        "object.on_missing",
        "objects cannot be suppressed",
        "guard.max_missing_share",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[tokio::test]
async fn a_one_percent_changed_export_sends_full_batches_not_near_empty_ones() {
    let env = TestEnv::with_state(StateDb::Sqlite).await;
    env.write_config("track: { concurrency: 2, batch: { max_items: 20, max_bytes: 480000 } }\n");
    env.write_data("people.csv", &people(1..=4000, |_| "free"));
    env.write_job("people", JOB);
    assert_eq!(env.run("people").await.counts.rows_delivered, 4000);
    env.sim.reset_records();
    // 40 changed rows spread over the file: two full batches of 20.
    env.write_data(
        "people.csv",
        &people((1..=4000).rev(), |i| {
            if i.is_multiple_of(100) { "pro" } else { "free" }
        }),
    );
    let run = env.run("people").await;
    assert_eq!(run.counts.rows_delivered, 40, "{run:?}");
    assert_eq!(
        env.sim.requests().len(),
        2,
        "{:?}",
        env.sim.requests().len()
    );
}

#[tokio::test]
async fn object_mirror_deletes_exactly_the_vanished_objects() {
    let env = env_on(StateDb::Sqlite).await;
    env.write_job(
        "accounts",
        "transport: v2\nsource: { csv: { path: data/accounts.csv } }\nobject: { type_id: 1, id: account_id, attributes: { name: name }, on_missing: delete }\nguard: { max_missing_share: 0.5 }\n",
    );
    env.write_data(
        "accounts.csv",
        "account_id,name\nacme,Acme\nglobex,Globex\ninitech,Initech\n",
    );
    assert_eq!(env.run("accounts").await.outcome, Outcome::Succeeded);
    env.sim.reset_records();
    env.write_data(
        "accounts.csv",
        "account_id,name\ninitech,Initech\nacme,Acme\n",
    );
    let run = env.run("accounts").await;
    assert_eq!(run.outcome, Outcome::Succeeded, "{run:?}");
    assert_eq!(
        env.sim.v2_items(),
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"globex"},"action":"delete"})
        ]
    );
}
