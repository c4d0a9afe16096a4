//! Objects, relationships, devices, merges, suppress/unsuppress and phone-identified people,
//! delivered to the simulator: the exact v2 items, each checked against Customer.io's own
//! OpenAPI document with a JSON-schema validator.
//!
//! The schema is read from `../shared/specs/journeys-track.openapi.json` beside the clone (CI
//! keeps the shared folder there). It is not copied into the repository: the document states
//! no licence, so cio-sync may read it but not redistribute it. A missing file fails the test.

use std::path::PathBuf;
use std::sync::OnceLock;

use cio_sync::pipeline::RunMode;
use cio_sync::simulator::Entity;
use cio_sync::state::{Outcome, StateStore};
use serde_json::{Value, json};

use crate::helpers::*;

/// The Track OpenAPI document, with its one self-contradiction fixed (see [`fix_spec`]).
fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/specs/journeys-track.openapi.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the Track OpenAPI document is needed at {}: {e}",
                path.display()
            )
        });
        let mut spec: Value = serde_json::from_str(&text).expect("the spec is JSON");
        fix_spec(&mut spec);
        spec
    })
}

/// `v2_cio_relationships.items.identifiers` is a `oneOf` of `{id}`, `{email}` and
/// `{cio_id}` whose branches require nothing, so every object matches all three and no
/// relationship (not even the spec's own example) passes `oneOf`. Each branch is made to
/// require its key, which is what its title says it means.
fn fix_spec(spec: &mut Value) {
    let branches = spec
        .pointer_mut("/components/schemas/v2_cio_relationships/items/properties/identifiers/oneOf")
        .and_then(Value::as_array_mut)
        .expect("v2_cio_relationships identifiers");
    for b in branches {
        let key = b["title"].as_str().expect("a titled branch").to_string();
        b["required"] = json!([key]);
    }
}

/// A validator for one schema of the document, references resolved inside it.
fn validator(pointer: &str) -> jsonschema::Validator {
    let mut doc = spec().clone();
    doc["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    doc["$ref"] = json!(format!("#{pointer}"));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&doc)
        .unwrap_or_else(|e| panic!("schema {pointer}: {e}"))
}

const BATCH_ITEM: &str = "/paths/~1api~1v2~1batch/post/requestBody/content/application~1json/schema/properties/batch/items";

/// The schema named for an item's `type` and `action`.
fn operation_schema(item: &Value) -> String {
    let name = match (item["type"].as_str(), item["action"].as_str()) {
        (Some("person"), Some("identify")) => "identify_person",
        (Some("person"), Some(a)) => return format!("/components/schemas/person_{a}"),
        (Some("object"), Some(a)) => return format!("/components/schemas/object_{a}"),
        other => panic!("no schema for {other:?}: {item}"),
    };
    format!("/components/schemas/{name}")
}

/// Every item valid as a batch item and as its own operation's schema.
#[track_caller]
fn assert_valid(items: &[Value]) {
    assert!(!items.is_empty(), "nothing was sent");
    let batch_item = validator(BATCH_ITEM);
    for item in items {
        let errors: Vec<String> = batch_item
            .iter_errors(item)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{item} is not a valid batch item: {errors:?}"
        );
        let own = operation_schema(item);
        let errors: Vec<String> = validator(&own)
            .iter_errors(item)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{item} does not match {own}: {errors:?}");
    }
}

#[test]
fn the_schema_check_refuses_what_customerio_would() {
    // The check has teeth: a numeric object_type_id, a merge with identifiers and no
    // secondary, a device without a platform, a relationship by phone are all refused.
    for bad in [
        json!({"type":"object","identifiers":{"object_type_id":1,"object_id":"acme"},"action":"identify"}),
        json!({"type":"person","action":"merge","primary":{"id":"1"}}),
        json!({"type":"person","identifiers":{"id":"1"},"action":"add_device","device":{"token":"t"}}),
        json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},"action":"add_relationships","cio_relationships":[{"identifiers":{"phone":"+15550100"}}]}),
    ] {
        let own = operation_schema(&bad);
        assert!(!validator(&own).is_valid(&bad), "{bad} should fail {own}");
    }
    // And the spec's own examples pass.
    assert_valid(&[
        json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},"action":"add_relationships","cio_relationships":[{"identifiers":{"id":"42"},"relationship_attributes":{"role":"admin"}}]}),
    ]);
}

async fn state(env: &TestEnv) -> StateStore {
    StateStore::open(&cio_sync::config::DatabaseUrl::new(env.state_url()))
        .await
        .expect("state")
}

#[tokio::test]
async fn object_identify_and_delete_send_exact_valid_items_with_string_type_ids() {
    let env = TestEnv::new().await;
    env.write_data(
        "accounts.csv",
        "account_id,name,plan,seats\nacme,Acme Corp,enterprise,50\nglobex,Globex,,7\n,Nameless,free,1\n",
    );
    env.write_job(
        "accounts",
        "source: { csv: { path: data/accounts.csv } }\n\
         object:\n  type_id: 1\n  id: account_id\n  attributes:\n    name: name\n    plan: plan\n    seats: { column: seats, as: number }\n",
    );
    let report = env.run("accounts").await;
    assert_eq!(report.outcome, Outcome::RejectedRows, "{report:?}");
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (2, 1),
        "the row without an id is dead-lettered, its neighbours delivered"
    );
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},"action":"identify","attributes":{"name":"Acme Corp","plan":"enterprise","seats":50}}),
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"globex"},"action":"identify","attributes":{"name":"Globex","seats":7}}),
        ]
    );
    assert_valid(&items);
    let ops = env.sim.operations();
    assert!(ops.iter().all(|o| o.entity == Entity::Object), "{ops:?}");
    let letters = state(&env)
        .await
        .dead_letters("accounts", 10)
        .await
        .expect("dl");
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .reason
            .contains("object id column `account_id` is empty"),
        "{}",
        letters[0].reason
    );

    env.sim.reset_records();
    env.write_job(
        "accounts-gone",
        "source: { csv: { path: data/accounts.csv } }\nobject: { type_id: \"1\", id: account_id, action: delete }\n",
    );
    let report = env.run("accounts-gone").await;
    assert_eq!(report.counts.rows_delivered, 2, "{report:?}");
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},"action":"delete"}),
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"globex"},"action":"delete"}),
        ]
    );
    assert_valid(&items);
}

#[tokio::test]
async fn object_limits_and_reserved_names_are_checked_per_row() {
    let env = TestEnv::new().await;
    let long_id = "x".repeat(151);
    let long_value = "v".repeat(1001);
    env.write_data(
        "accounts.csv",
        &format!("account_id,note\nok,fine\n{long_id},fine\nbig,{long_value}\n"),
    );
    env.write_job(
        "accounts",
        "source: { csv: { path: data/accounts.csv } }\nobject: { type_id: 1, id: account_id }\n",
    );
    let report = env.run("accounts").await;
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (1, 2),
        "{report:?}"
    );
    let letters = state(&env)
        .await
        .dead_letters("accounts", 10)
        .await
        .expect("dl");
    assert!(
        letters[0].reason.contains("151 bytes"),
        "{}",
        letters[0].reason
    );
    assert!(
        letters[1].reason.contains("1001 bytes"),
        "{}",
        letters[1].reason
    );
    assert_eq!(
        env.sim.v2_items(),
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"ok"},"action":"identify","attributes":{"note":"fine"}})
        ]
    );

    env.write_data("reserved.csv", "account_id,object_id\nacme,123\n");
    env.write_job(
        "reserved",
        "source: { csv: { path: data/reserved.csv } }\nobject: { type_id: 1, id: account_id, attributes: { object_id: object_id } }\n",
    );
    let report = env.run("reserved").await;
    assert_eq!(report.counts.rows_rejected, 1, "{report:?}");
    let letters = state(&env)
        .await
        .dead_letters("reserved", 10)
        .await
        .expect("dl");
    assert!(
        letters[0].reason.contains("reserves"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test]
async fn relationships_of_one_object_are_grouped_into_one_item_and_deleted_alike() {
    let env = TestEnv::new().await;
    env.write_data(
        "members.csv",
        "account_id,user_id,role\nacme,42,admin\nacme,43,member\nglobex,44,admin\nacme,45,\n",
    );
    env.write_job(
        "members",
        "source: { csv: { path: data/members.csv } }\n\
         relationship:\n  object: { type_id: 1, id: account_id }\n  person: { id: user_id }\n  attributes: { role: role }\n",
    );
    let report = env.run("members").await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(report.counts.rows_delivered, 4);
    assert_eq!(env.sim.requests().len(), 1);
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},"action":"add_relationships","cio_relationships":[
                {"identifiers":{"id":"42"},"relationship_attributes":{"role":"admin"}},
                {"identifiers":{"id":"43"},"relationship_attributes":{"role":"member"}},
                {"identifiers":{"id":"45"}}
            ]}),
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"globex"},"action":"add_relationships","cio_relationships":[
                {"identifiers":{"id":"44"},"relationship_attributes":{"role":"admin"}}
            ]}),
        ]
    );
    assert_valid(&items);

    env.sim.reset_records();
    env.write_job(
        "members-gone",
        "source: { csv: { path: data/members.csv } }\n\
         relationship: { object: { type_id: 1, id: account_id }, person: { id: user_id }, action: delete }\n",
    );
    let report = env.run("members-gone").await;
    assert_eq!(report.counts.rows_delivered, 4, "{report:?}");
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},"action":"delete_relationships","cio_relationships":[
                {"identifiers":{"id":"42"}},{"identifiers":{"id":"43"}},{"identifiers":{"id":"45"}}
            ]}),
            json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"globex"},"action":"delete_relationships","cio_relationships":[
                {"identifiers":{"id":"44"}}
            ]}),
        ]
    );
    assert_valid(&items);
}

#[tokio::test]
async fn a_refused_relationship_item_dead_letters_every_row_it_carried_and_no_other() {
    let env = TestEnv::new().await;
    env.write_data(
        "members.csv",
        "account_id,user_id\nacme,42\nglobex,43\nacme,44\n",
    );
    env.write_job(
        "members",
        "source: { csv: { path: data/members.csv } }\nrelationship: { object: { type_id: 1, id: account_id }, person: { id: user_id } }\n",
    );
    env.sim
        .refuse_batch_naming("acme".into(), "object acme is locked".into());
    let report = env.run("members").await;
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (1, 2),
        "{report:?}"
    );
    let letters = state(&env)
        .await
        .dead_letters("members", 10)
        .await
        .expect("dl");
    let users: Vec<&Value> = letters.iter().map(|l| &l.row_data["user_id"]).collect();
    assert_eq!(users, vec![&json!("42"), &json!("44")]);
    assert!(
        letters[0].reason.contains("object acme is locked"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test]
async fn devices_are_added_with_token_platform_integer_last_used_and_string_push_enabled() {
    let env = TestEnv::new().await;
    env.write_data(
        "devices.csv",
        "user_id,token,platform,seen,push,os\n\
         42,tok-a,iOS,2024-04-19T00:00:00Z,true,17.4\n\
         43,tok-b,android,,0,\n\
         44,tok-c,windows,1713484800,true,11\n",
    );
    env.write_job(
        "devices",
        "source: { csv: { path: data/devices.csv } }\n\
         device:\n  identifier: { id: user_id }\n  token: token\n  platform: platform\n  last_used: seen\n  attributes: { push_enabled: push, device_os: os }\n",
    );
    let report = env.run("devices").await;
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (2, 1),
        "{report:?}"
    );
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"person","identifiers":{"id":"42"},"action":"add_device","device":{"token":"tok-a","platform":"ios","last_used":1713484800,"attributes":{"push_enabled":"true","device_os":"17.4"}}}),
            json!({"type":"person","identifiers":{"id":"43"},"action":"add_device","device":{"token":"tok-b","platform":"android","attributes":{"push_enabled":"false"}}}),
        ]
    );
    assert_valid(&items);
    let letters = state(&env)
        .await
        .dead_letters("devices", 10)
        .await
        .expect("dl");
    assert!(
        letters[0].reason.contains("\"windows\"") && letters[0].reason.contains("ios"),
        "{}",
        letters[0].reason
    );

    env.sim.reset_records();
    env.write_job(
        "devices-gone",
        "source: { csv: { path: data/devices.csv } }\ndevice: { identifier: { id: user_id }, token: token, action: delete }\n",
    );
    let report = env.run("devices-gone").await;
    assert_eq!(report.counts.rows_delivered, 3, "{report:?}");
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        ["42", "43", "44"]
            .iter()
            .zip(["tok-a", "tok-b", "tok-c"])
            .map(|(id, tok)| json!({"type":"person","identifiers":{"id":id},"action":"delete_device","device":{"token":tok}}))
            .collect::<Vec<_>>()
    );
    assert_valid(&items);
}

#[tokio::test]
async fn merges_send_primary_and_secondary_without_identifiers_and_refuse_self_merges() {
    let env = TestEnv::new().await;
    env.write_data(
        "dupes.csv",
        "keep,drop\nann@example.com,ann.old@example.com\nbo@example.com,bo@example.com\n",
    );
    env.write_job(
        "dupes",
        "source: { csv: { path: data/dupes.csv } }\nmerge: { primary: { email: keep }, secondary: { email: drop } }\n",
    );
    let report = env.run("dupes").await;
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (1, 1),
        "{report:?}"
    );
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"person","action":"merge","primary":{"email":"ann@example.com"},"secondary":{"email":"ann.old@example.com"}})
        ]
    );
    assert_valid(&items);
    let letters = state(&env)
        .await
        .dead_letters("dupes", 10)
        .await
        .expect("dl");
    assert!(
        letters[0].reason.contains("same person"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test]
async fn phone_people_are_identified_suppressed_and_unsuppressed_over_v2() {
    let env = TestEnv::new().await;
    env.write_data("phones.csv", "phone,plan\n+15550100,pro\n+15550101,free\n");
    env.write_job(
        "phones",
        "source: { csv: { path: data/phones.csv } }\nidentify: { identifier: { phone: phone }, attributes: [plan] }\n",
    );
    env.write_job(
        "blocked",
        "source: { csv: { path: data/phones.csv } }\ndelete: { identifier: { phone: phone }, action: suppress }\n",
    );
    env.write_job(
        "unblocked",
        "source: { csv: { path: data/phones.csv } }\ndelete: { identifier: { phone: phone }, action: unsuppress }\n",
    );
    for job in ["phones", "blocked", "unblocked"] {
        let report = env.run_mode(job, RunMode::Normal { full: false }).await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{job}: {report:?}");
    }
    let items = env.sim.v2_items();
    assert_eq!(
        items,
        vec![
            json!({"type":"person","identifiers":{"phone":"+15550100"},"action":"identify","attributes":{"plan":"pro"}}),
            json!({"type":"person","identifiers":{"phone":"+15550101"},"action":"identify","attributes":{"plan":"free"}}),
            json!({"type":"person","identifiers":{"phone":"+15550100"},"action":"suppress"}),
            json!({"type":"person","identifiers":{"phone":"+15550101"},"action":"suppress"}),
            json!({"type":"person","identifiers":{"phone":"+15550100"},"action":"unsuppress"}),
            json!({"type":"person","identifiers":{"phone":"+15550101"},"action":"unsuppress"}),
        ]
    );
    assert_valid(&items);
}

#[tokio::test]
async fn a_400_naming_one_item_by_batch_index_dead_letters_only_that_row() {
    let env = TestEnv::new().await;
    env.write_data("people.csv", &people_csv(10));
    env.write_job(
        "people",
        "source: { csv: { path: data/people.csv } }\nidentify: { identifier: { id: customer_id }, attributes: [email] }\n",
    );
    env.sim
        .refuse_batch_naming("u-000004".into(), "invalid".into());
    let report = env.run("people").await;
    assert_eq!(report.outcome, Outcome::RejectedRows, "{report:?}");
    assert_eq!(
        (report.counts.rows_delivered, report.counts.rows_rejected),
        (9, 1)
    );
    let statuses: Vec<u16> = env.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![400, 200],
        "refused, then sent again without the bad row"
    );
    let delivered = ids_of(&env.sim.operations());
    assert_eq!(delivered.len(), 9);
    assert!(!delivered.contains("u-000004"));
    let letters = state(&env)
        .await
        .dead_letters("people", 10)
        .await
        .expect("dl");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].row_data["customer_id"], json!("u-000004"));
}

#[tokio::test]
async fn v1_transport_is_refused_for_objects_devices_and_phone_with_the_reason() {
    let env = TestEnv::new().await;
    env.write_config("track: { transport: v1 }\n");
    env.write_data("x.csv", "id,phone,token\n1,+1555,t\n");
    env.write_job(
        "accounts",
        "source: { csv: { path: data/x.csv } }\nobject: { type_id: 1, id: id }\n",
    );
    env.write_job(
        "devices",
        "source: { csv: { path: data/x.csv } }\ndevice: { identifier: { id: id }, token: token, platform: ios }\n",
    );
    env.write_job(
        "phones",
        "source: { csv: { path: data/x.csv } }\nidentify: { identifier: { phone: phone } }\n",
    );
    env.write_job(
        "members",
        "source: { csv: { path: data/x.csv } }\nrelationship: { object: { type_id: 1, id: id }, person: { phone: phone } }\n",
    );
    let err = match cio_sync::config::load(&env.config_path(), &TestEnv::env) {
        Ok(_) => panic!("v1 must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("accounts.yaml") && err.contains("`object` jobs need `transport: v2`"),
        "{err}"
    );
    assert!(
        err.contains("devices.yaml") && err.contains("`device` jobs need `transport: v2`"),
        "{err}"
    );
    assert!(
        err.contains("phones.yaml")
            && err.contains("identify.identifier.phone")
            && err.contains("only in Track v2"),
        "{err}"
    );
    assert!(
        err.contains("relationship.person.phone") && err.contains("cio_relationships"),
        "{err}"
    );
}

#[tokio::test]
async fn validate_connect_refuses_an_object_type_the_workspace_does_not_have() {
    let env = TestEnv::new().await;
    env.sim
        .set_object_types(vec![json!({"id": "1", "name": "Accounts"})]);
    env.write_data("accounts.csv", "account_id\nacme\n");
    env.write_job(
        "accounts",
        "source: { csv: { path: data/accounts.csv } }\nobject: { type_id: 2, id: account_id }\n",
    );
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("job `accounts`")
            && err.contains("`object.type_id` is \"2\"")
            && err.contains("1 (Accounts)"),
        "{err}"
    );
    assert!(
        env.sim.operations().is_empty(),
        "validation sends nothing to Track"
    );

    env.write_job(
        "accounts",
        "source: { csv: { path: data/accounts.csv } }\nobject: { type_id: 1, id: account_id }\n",
    );
    let out = env.cli_output(&["validate", "--connect"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("every job's type_id exists"),
        "{}",
        stdout(&out)
    );
}
