//! Tests of the simulator through real HTTP with reqwest, as the daemon will talk to it.
//!
//! Owns only test code; every test starts its own simulator on port 0 and never sleeps.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

const ULID_A: &str = "01HF7YAT004JX7A6R9PKEZRXGP";
const ULID_B: &str = "01HF7YAT004JX7A6R9PKEZRXGQ";

async fn start() -> Simulator {
    Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts on 127.0.0.1:0")
}

fn track(
    c: &reqwest::Client,
    sim: &Simulator,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    c.request(method, format!("{}{path}", sim.url()))
        .basic_auth("demo-site", Some("demo-track-key"))
}

fn app(c: &reqwest::Client, sim: &Simulator, path: &str) -> reqwest::RequestBuilder {
    c.get(format!("{}{path}", sim.url()))
        .bearer_auth("demo-app-key")
}

async fn batch(c: &reqwest::Client, sim: &Simulator, items: Value) -> (u16, Value) {
    let response = track(c, sim, reqwest::Method::POST, "/api/v2/batch")
        .json(&json!({ "batch": items }))
        .send()
        .await
        .expect("batch request reaches the simulator");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Compares two ops on everything but the transport.
#[track_caller]
fn assert_same_op(a: &RecordedOp, b: &RecordedOp) {
    let mut b = b.clone();
    b.transport = a.transport;
    assert_eq!(a, &b);
}

#[tokio::test]
async fn both_apis_answer_401_without_the_right_credentials() {
    let sim = start().await;
    let c = reqwest::Client::new();

    let anonymous = c
        .get(format!("{}/api/v1/accounts/region", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["meta"]["error"], "Unauthorized request");

    let wrong_key = c
        .get(format!("{}/api/v1/accounts/region", sim.url()))
        .basic_auth("demo-site", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);

    let app_wrong = c
        .get(format!("{}/v1/segments", sim.url()))
        .bearer_auth("demo-track-key")
        .send()
        .await
        .unwrap();
    assert_eq!(app_wrong.status(), 401);

    let region = track(&c, &sim, reqwest::Method::GET, "/api/v1/accounts/region")
        .send()
        .await
        .unwrap();
    assert_eq!(region.status(), 200);
    let body: Value = region.json().await.unwrap();
    assert_eq!(
        body,
        json!({"url": "https://track.customer.io", "region": "us", "environment_id": 1})
    );

    let segments = app(&c, &sim, "/v1/segments").send().await.unwrap();
    assert_eq!(segments.status(), 200);
    assert_eq!(
        segments.json::<Value>().await.unwrap(),
        json!({"segments": null})
    );

    let seen: Vec<(u16, Api, bool)> = sim
        .requests()
        .iter()
        .map(|r| (r.status, r.api, r.auth_ok))
        .collect();
    assert_eq!(
        seen,
        vec![
            (401, Api::Track, false),
            (401, Api::Track, false),
            (401, Api::App, false),
            (200, Api::Track, true),
            (200, Api::App, true),
        ]
    );
    assert!(sim.operations().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn v1_and_v2_identify_and_event_record_the_same_operation() {
    let sim = start().await;
    let c = reqwest::Client::new();

    let r = track(
        &c,
        &sim,
        reqwest::Method::PUT,
        "/api/v1/customers/user%2042",
    )
    .json(&json!({"email": "ann@example.com", "plan": "pro", "_timestamp": 1_717_171_717}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({}));
    let r = track(&c, &sim, reqwest::Method::POST, "/api/v1/customers/cio_a300/events")
        .json(&json!({"name": " purchase ", "id": ULID_A, "timestamp": 1_700_000_000, "data": {"sku": "A1", "price": 23.45}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, body) = batch(
        &c,
        &sim,
        json!([
            {"type": "person", "identifiers": {"id": "user 42"}, "action": "identify", "timestamp": 1_717_171_717,
             "attributes": {"plan": "pro", "email": "ann@example.com"}},
            {"type": "person", "identifiers": {"cio_id": "a300"}, "action": "event", "name": "purchase",
             "id": ULID_B, "timestamp": 1_700_000_000, "attributes": {"sku": "A1", "price": 23.45}},
        ]),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));

    let ops = sim.operations();
    assert_eq!(ops.len(), 4);
    assert_eq!(ops[0].transport, Transport::V1);
    assert_eq!(ops[2].transport, Transport::V2);
    assert_eq!(
        ops[0].identifiers,
        BTreeMap::from([("id".to_owned(), "user 42".to_owned())])
    );
    assert_eq!(ops[0].timestamp, Some(1_717_171_717));
    assert!(!ops[0].attributes.contains_key("_timestamp"));
    assert_same_op(&ops[0], &ops[2]);

    assert_eq!(
        ops[1].identifiers,
        BTreeMap::from([("cio_id".to_owned(), "a300".to_owned())])
    );
    assert_eq!(ops[1].name.as_deref(), Some("purchase"));
    let mut v2_event = ops[3].clone();
    v2_event.event_id = ops[1].event_id.clone();
    assert_same_op(&ops[1], &v2_event);
    sim.shutdown().await;
}

#[tokio::test]
async fn batch_item_failures_answer_207_with_their_batch_index() {
    let sim = start().await;
    let c = reqwest::Client::new();
    sim.reject_items(RejectRule {
        identifier_id: "blocked-7".into(),
        reason: "blocked by test".into(),
    });

    let (status, body) = batch(
        &c,
        &sim,
        json!([
            {"type": "person", "identifiers": {"id": "1"}, "action": "identify", "attributes": {"a": 1}},
            {"type": "person", "identifiers": {"id": "blocked-7"}, "action": "identify", "attributes": {"a": 2}},
            {"type": "person", "identifiers": {"id": "3"}, "action": "event", "name": "x", "timestamp": 1_700_000_000_000_i64},
            {"type": "person", "identifiers": {"id": "4"}, "action": "event", "name": "y", "timestamp": 1_700_000_000},
        ]),
    )
    .await;
    assert_eq!(status, 207);
    let errors = body["errors"].as_array().expect("207 body has errors");
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["batch_index"], 1);
    assert_eq!(errors[0]["reason"], "blocked by test");
    assert_eq!(errors[0]["field"], "identifiers");
    assert_eq!(errors[1]["batch_index"], 2);
    assert_eq!(errors[1]["reason"], "invalid timestamp");
    let applied: Vec<String> = sim
        .operations()
        .iter()
        .map(|o| o.identifiers["id"].clone())
        .collect();
    assert_eq!(applied, ["1", "4"]);

    // The same rule on v1 is a 400 with the reason.
    let r = track(
        &c,
        &sim,
        reqwest::Method::PUT,
        "/api/v1/customers/blocked-7",
    )
    .json(&json!({"a": 3}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"meta": {"errors": ["blocked by test"]}})
    );

    // fail_batch_containing rejects the whole request and applies nothing.
    sim.fail_batch_containing("poison".into(), 400);
    let (status, body) = batch(
        &c,
        &sim,
        json!([
            {"type": "person", "identifiers": {"id": "5"}, "action": "identify"},
            {"type": "person", "identifiers": {"id": "poison"}, "action": "identify"},
        ]),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["reason"], "invalid");
    assert_eq!(sim.operations().len(), 2);

    // Malformed JSON is a 400 as well.
    let r = track(&c, &sim, reqwest::Method::POST, "/api/v2/batch")
        .body("{\"batch\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn oversized_batches_are_413_and_oversized_items_207() {
    let sim = start().await;
    let c = reqwest::Client::new();
    let big_item = |i: usize| {
        json!({"type": "person", "identifiers": {"id": i.to_string()}, "action": "identify",
               "attributes": {"bio": "x".repeat(9_000)}})
    };
    let items: Vec<Value> = (0..56).map(big_item).collect();
    let (status, body) = batch(&c, &sim, Value::Array(items)).await;
    assert_eq!(status, 413);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("500000")
    );
    assert!(sim.operations().is_empty());

    let attributes: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("a{i}"), json!("y".repeat(900))))
        .collect();
    let (status, body) = batch(
        &c,
        &sim,
        json!([
            {"type": "person", "identifiers": {"id": "big"}, "action": "identify", "attributes": attributes},
            {"type": "person", "identifiers": {"id": "small"}, "action": "identify", "attributes": {"bio": "z".repeat(1_001)}},
            {"type": "person", "identifiers": {"id": "ok"}, "action": "identify"},
        ]),
    )
    .await;
    assert_eq!(status, 207);
    assert_eq!(body["errors"][0]["batch_index"], 0);
    assert_eq!(body["errors"][0]["reason"], "item too large");
    assert_eq!(body["errors"][1]["batch_index"], 1);
    assert_eq!(body["errors"][1]["reason"], "attribute too large");
    assert_eq!(sim.operations().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_already_accepted_event_id_is_a_duplicate_not_an_operation() {
    let sim = start().await;
    let c = reqwest::Client::new();
    let event = json!({"type": "person", "identifiers": {"id": "42"}, "action": "event", "name": "paid", "id": ULID_A});
    assert_eq!(batch(&c, &sim, json!([event.clone()])).await.0, 200);
    // Twice in one batch and once more via v1: all answered as success.
    assert_eq!(batch(&c, &sim, json!([event.clone(), event])).await.0, 200);
    let r = track(
        &c,
        &sim,
        reqwest::Method::POST,
        "/api/v1/customers/42/events",
    )
    .json(&json!({"name": "paid", "id": ULID_A}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(sim.operations().len(), 1);
    let dups = sim.duplicate_events();
    assert_eq!(dups.len(), 3);
    assert!(dups.iter().all(|d| d.event_id.as_deref() == Some(ULID_A)));

    // Non-ULID ids are rejected outright.
    let r = track(
        &c,
        &sim,
        reqwest::Method::POST,
        "/api/v1/customers/42/events",
    )
    .json(&json!({"name": "paid", "id": "order-1"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn membership_pages_with_opaque_string_tokens_until_an_empty_or_null_next() {
    let sim = start().await;
    let c = reqwest::Client::new();
    sim.set_segments(vec![
        json!({"id": 8, "name": "even", "type": "manual", "tags": null}),
        json!({"id": 7, "name": "odd", "type": "dynamic", "tags": null}),
    ]);
    let members: Vec<Member> = (0..5)
        .map(|i| Member {
            id: (i != 3).then(|| format!("u{i}")),
            email: (i != 1).then(|| format!("u{i}@example.com")),
            cio_id: format!("a{i}"),
        })
        .collect();
    sim.set_membership(8, members.clone());
    sim.set_membership(7, members);

    for (segment, end_marker) in [(8, json!("")), (7, Value::Null)] {
        let mut start = String::new();
        let mut pages = Vec::new();
        loop {
            let body: Value = app(&c, &sim, &format!("/v1/segments/{segment}/membership"))
                .query(&[("start", start.as_str()), ("limit", "2")])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(body["segment_id"], segment);
            pages.push(body["identifiers"].as_array().unwrap().len());
            assert!(
                pages.len() <= 3,
                "5 members at 2 a page end after 3 pages: {pages:?}"
            );
            match &body["next"] {
                Value::String(next) if !next.is_empty() => {
                    assert!(next.parse::<u64>().is_err(), "token {next} must be opaque");
                    start = next.clone();
                }
                last => {
                    assert_eq!(last, &end_marker);
                    if segment == 8 {
                        assert_eq!(body["identifiers"][0]["cio_id"], "a4");
                    }
                    break;
                }
            }
            if pages.len() == 2 && segment == 8 {
                // Second page holds u2 and the member without an id.
                assert_eq!(body["identifiers"][1]["id"], Value::Null);
                assert_eq!(body["ids"][1], "");
            }
        }
        assert_eq!(pages, [2, 2, 1]);
    }

    let too_big = app(&c, &sim, "/v1/segments/8/membership?limit=30001")
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 400);
    let count: Value = app(&c, &sim, "/v1/segments/8/customer_count")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count, json!({"count": 5, "segment_id": 8}));
    assert_eq!(
        app(&c, &sim, "/v1/segments/99")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    sim.app_fault(AppFault::FailMembershipPage {
        segment_id: 8,
        page_start_offset: 0,
        status: 500,
    });
    let failed = app(&c, &sim, "/v1/segments/8/membership")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    sim.shutdown().await;
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after() {
    let sim = start().await;
    let c = reqwest::Client::new();
    // The bucket reads the simulator's clock: paused, no token comes back between requests
    // however slowly this machine runs them.
    sim.pause_clock();
    sim.set_faults(Faults {
        rate_limit_per_sec: Some(2),
        retry_after_secs: 3,
        ..Faults::default()
    });
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let r = track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/1")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let last = last.unwrap();
    assert_eq!(last.headers()["retry-after"], "3");
    let body: Value = last.json().await.unwrap();
    assert_eq!(body["errors"][0]["status"], "429");
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("rate limited")
    );
    assert_eq!(sim.operations().len(), 2);

    // Half a second at 2/s refills one token: one more request passes, the next does not.
    sim.advance_clock(std::time::Duration::from_millis(500));
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/1")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 429]);
    assert_eq!(sim.operations().len(), 3);

    // Deterministic faults: fail_next on Track and the n-th App request.
    sim.set_faults(Faults::default());
    sim.fail_next(1, 503, Some(2));
    let r = track(&c, &sim, reqwest::Method::DELETE, "/api/v1/customers/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    let r = track(&c, &sim, reqwest::Method::DELETE, "/api/v1/customers/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    sim.app_fault(AppFault::RateLimitOnRequest {
        n: 2,
        retry_after_secs: 1,
    });
    assert_eq!(
        app(&c, &sim, "/v1/campaigns")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let limited = app(&c, &sim, "/v1/campaigns").send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(
        app(&c, &sim, "/v1/campaigns")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error() {
    let sim = start().await;
    let c = reqwest::Client::new();
    sim.set_faults(Faults {
        drop_before_rate: 1.0,
        ..Faults::default()
    });
    let err = track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/1")
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect_err("the connection is dropped, not answered");
    assert!(err.status().is_none());
    assert!(sim.operations().is_empty());
    let requests = sim.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, 0);

    // drop_after applies first, then drops: the client cannot tell it was applied.
    sim.set_faults(Faults {
        drop_after_rate: 1.0,
        ..Faults::default()
    });
    let err = track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/2")
        .json(&json!({"plan": "pro"}))
        .send()
        .await
        .expect_err("the connection is dropped after applying");
    assert!(err.status().is_none());
    assert_eq!(sim.operations().len(), 1);

    // The same client recovers on a fresh connection.
    sim.set_faults(Faults::default());
    let r = track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.operations().len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn random_5xx_faults_are_seeded_and_apply_nothing() {
    let sim = start().await;
    let c = reqwest::Client::new();
    let faults = Faults {
        error_5xx_rate: 0.5,
        seed: 7,
        ..Faults::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        sim.set_faults(faults.clone());
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let r = track(
                &c,
                &sim,
                reqwest::Method::POST,
                "/api/v1/customers/1/suppress",
            )
            .send()
            .await
            .unwrap();
            statuses.push(r.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert!(runs[0].iter().all(|s| [200, 500, 502, 503].contains(s)));
    let ok = runs[0].iter().filter(|s| **s == 200).count();
    assert!(ok > 0 && ok < 20);
    assert_eq!(sim.operations().len(), 2 * ok);
    sim.shutdown().await;
}

#[tokio::test]
async fn campaigns_metrics_and_manual_segment_changes() {
    let sim = start().await;
    let c = reqwest::Client::new();
    sim.set_campaigns(vec![
        json!({"id": 5, "name": "Welcome", "state": "running"}),
    ]);
    sim.set_campaign_metrics(
        5,
        BTreeMap::from([
            ("sent".to_owned(), vec![1, 2, 3, 4]),
            ("opened".to_owned(), vec![0, 1]),
        ]),
    );
    let body: Value = app(&c, &sim, "/v1/campaigns/5/metrics?period=days&steps=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"metric": {"series": {"opened": [0, 1], "sent": [3, 4]}}})
    );
    let body: Value = app(&c, &sim, "/v1/campaigns/5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["campaign"]["name"], "Welcome");
    assert_eq!(
        app(&c, &sim, "/v1/campaigns/6")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let r = track(
        &c,
        &sim,
        reqwest::Method::POST,
        "/api/v1/segments/3/add_customers",
    )
    .query(&[("id_type", "email")])
    .json(&json!({"ids": ["a@x.com", "b@x.com"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = track(
        &c,
        &sim,
        reqwest::Method::POST,
        "/api/v1/segments/3/remove_customers",
    )
    .json(&json!({"ids": ["9"]}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        sim.segment_members_added(),
        [
            (3, "email".to_owned(), "a@x.com".to_owned()),
            (3, "email".to_owned(), "b@x.com".to_owned())
        ]
    );
    assert_eq!(
        sim.segment_members_removed(),
        [(3, "id".to_owned(), "9".to_owned())]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_held_request_waits_unanswered_until_released() {
    let sim = start().await;
    let c = reqwest::Client::new();
    sim.hold_from(1);
    let r = track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "below the count nothing is held");
    let held = tokio::spawn(track(&c, &sim, reqwest::Method::PUT, "/api/v1/customers/2").send());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sim.held() == 0 {
        assert!(
            !held.is_finished(),
            "the second request was answered instead of held"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the second request never reached the hold"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(sim.operations().len(), 1, "a held request is not applied");
    assert!(sim.requests().len() == 1 && !held.is_finished());
    sim.release();
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.held(), 0);
    assert_eq!(sim.operations().len(), 2);
    sim.shutdown().await;
}
