//! Simulated App API routes (`/v1/segments…`, `/v1/campaigns…`, `/v1/object_types`,
//! `/v1/reporting_webhooks…`) answering from the fixtures set
//! on the `Simulator`, including the quirks customerio-api.md §9 warns about: empty lists as
//! `null`, opaque string `next` tokens ending in `""` or `null`, null identifier fields.
//!
//! Owns App response shapes and paging; must not change fixtures (only tests do) and must not
//! decide auth, rate limits or random faults (the gate does).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::respond;
use super::state::{Shared, decode_token, encode_token};

const MEMBERSHIP_DEFAULT_LIMIT: usize = 1_000;
const MEMBERSHIP_MAX_LIMIT: usize = 30_000;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/segments", get(list_segments))
        .route("/v1/segments/{id}", get(get_segment))
        .route("/v1/segments/{id}/customer_count", get(customer_count))
        .route("/v1/segments/{id}/membership", get(membership))
        .route("/v1/campaigns", get(list_campaigns))
        .route("/v1/campaigns/{id}", get(get_campaign))
        .route("/v1/campaigns/{id}/metrics", get(campaign_metrics))
        .route("/v1/object_types", get(list_object_types))
        .route(
            "/v1/reporting_webhooks",
            get(list_reporting_webhooks).post(create_reporting_webhook),
        )
        .route(
            "/v1/reporting_webhooks/{id}",
            get(get_reporting_webhook).put(update_reporting_webhook),
        )
}

/// The fields a reporting webhook takes (createWebhook's body); anything else is a 400, as a
/// strict API would, so the client is checked for sending only these.
const WEBHOOK_FIELDS: [&str; 6] = [
    "name",
    "endpoint",
    "events",
    "disabled",
    "full_resolution",
    "with_content",
];

/// Checks a create or update body; `Err` is the message of the 400 answer.
fn webhook_body(body: &[u8], create: bool) -> Result<serde_json::Map<String, Value>, String> {
    let bad = |m: String| Err(m);
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return bad("the body is not a JSON object".into());
    };
    if let Some(k) = obj.keys().find(|k| !WEBHOOK_FIELDS.contains(&k.as_str())) {
        return bad(format!("unknown field `{k}`"));
    }
    if create {
        for k in ["name", "endpoint", "events"] {
            if !obj.contains_key(k) {
                return bad(format!("`{k}` is required"));
            }
        }
    }
    if let Some(e) = obj.get("endpoint")
        && !e
            .as_str()
            .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://"))
    {
        return bad("`endpoint` must be an http(s) URL".into());
    }
    if let Some(ev) = obj.get("events")
        && !ev
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string))
    {
        return bad("`events` must be a non-empty list of event names".into());
    }
    Ok(obj)
}

/// `GET /v1/reporting_webhooks`: `{"reporting_webhooks":[…]}`.
async fn list_reporting_webhooks(State(sim): State<Arc<Shared>>) -> Response {
    let hooks = sim.lock().reporting_webhooks.clone();
    respond::json(200, json!({ "reporting_webhooks": hooks }))
}

async fn get_reporting_webhook(
    State(sim): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("reporting webhook", &raw);
    };
    let st = sim.lock();
    match find_by_id(&st.reporting_webhooks, id) {
        Some(w) => respond::json(200, w.clone()),
        None => not_found("reporting webhook", &raw),
    }
}

/// `POST /v1/reporting_webhooks`: the new webhook object, with its `id`.
async fn create_reporting_webhook(
    State(sim): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Response {
    let mut obj = match webhook_body(&body, true) {
        Ok(o) => o,
        Err(m) => return respond::app_error(400, m),
    };
    let mut st = sim.lock();
    let id = st
        .reporting_webhooks
        .iter()
        .filter_map(|w| w.get("id").and_then(Value::as_i64))
        .max()
        .unwrap_or(0)
        + 1;
    obj.insert("id".into(), json!(id));
    for k in ["disabled", "full_resolution", "with_content"] {
        obj.entry(k).or_insert(json!(false));
    }
    let hook = Value::Object(obj);
    st.reporting_webhooks.push(hook.clone());
    respond::json(200, hook)
}

/// `PUT /v1/reporting_webhooks/{id}`: the updated webhook object.
async fn update_reporting_webhook(
    State(sim): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("reporting webhook", &raw);
    };
    let obj = match webhook_body(&body, false) {
        Ok(o) => o,
        Err(m) => return respond::app_error(400, m),
    };
    let mut st = sim.lock();
    let Some(hook) = st
        .reporting_webhooks
        .iter_mut()
        .find(|w| w.get("id").and_then(Value::as_i64) == Some(id))
    else {
        return not_found("reporting webhook", &raw);
    };
    if let Value::Object(existing) = hook {
        for (k, v) in obj {
            existing.insert(k, v);
        }
    }
    respond::json(200, hook.clone())
}

/// `GET /v1/object_types`: `{"types":[…]}` (the envelope third-party clients read).
async fn list_object_types(State(sim): State<Arc<Shared>>) -> Response {
    let types = sim.lock().object_types.clone();
    respond::json(200, json!({ "types": types }))
}

/// Customer.io returns some empty lists as `null`; clients must treat both alike.
fn list_or_null(items: Vec<Value>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items)
    }
}

fn find_by_id(items: &[Value], id: i64) -> Option<&Value> {
    items
        .iter()
        .find(|v| v.get("id").and_then(Value::as_i64) == Some(id))
}

/// Path ids that are not integers name nothing, so they are a 404 like a missing id.
fn not_found(what: &str, raw: &str) -> Response {
    respond::app_error(404, format!("{what} {raw} not found"))
}

async fn list_segments(State(sim): State<Arc<Shared>>) -> Response {
    let segments = sim.lock().segments.clone();
    respond::json(200, json!({ "segments": list_or_null(segments) }))
}

async fn get_segment(State(sim): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("segment", &raw);
    };
    let st = sim.lock();
    match find_by_id(&st.segments, id) {
        Some(segment) => respond::json(200, json!({ "segment": segment })),
        None => respond::app_error(404, format!("segment {id} not found")),
    }
}

async fn customer_count(State(sim): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("segment", &raw);
    };
    let st = sim.lock();
    let members = st.membership.get(&id).map(Vec::len);
    if members.is_none() && find_by_id(&st.segments, id).is_none() {
        return respond::app_error(404, format!("segment {id} not found"));
    }
    respond::json(
        200,
        json!({"count": members.unwrap_or(0), "segment_id": id}),
    )
}

async fn membership(
    State(sim): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("segment", &raw);
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => MEMBERSHIP_DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MEMBERSHIP_MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return respond::app_error(
                400,
                format!("limit must be an integer from 1 to {MEMBERSHIP_MAX_LIMIT}"),
            );
        }
    };
    let start = match query.get("start").map(String::as_str) {
        None | Some("") => 0,
        Some(token) => match decode_token(token) {
            Some(offset) => offset,
            None => return respond::app_error(400, format!("invalid start token {token:?}")),
        },
    };

    let st = sim.lock();
    if let Some(status) = st.membership_page_fault(id, start) {
        return respond::canned(super::Api::App, status, None);
    }
    let empty = Vec::new();
    let members = match st.membership.get(&id) {
        Some(m) => m,
        None if find_by_id(&st.segments, id).is_some() => &empty,
        None => return respond::app_error(404, format!("segment {id} not found")),
    };
    let end = start.saturating_add(limit).min(members.len());
    let page = members.get(start..end).unwrap_or(&[]);
    let identifiers: Vec<Value> = page
        .iter()
        .map(|m| json!({"email": m.email, "id": m.id, "cio_id": m.cio_id}))
        .collect();
    // A member without an id shows as "" in `ids`, as in Customer.io.
    let ids: Vec<Value> = page
        .iter()
        .map(|m| Value::String(m.id.clone().unwrap_or_default()))
        .collect();
    let next = if end < members.len() {
        Value::String(encode_token(end))
    } else if id % 2 != 0 {
        // Which end marker Customer.io uses is unverified: odd segments say null, even ones "".
        Value::Null
    } else {
        Value::String(String::new())
    };
    respond::json(
        200,
        json!({
            "identifiers": list_or_null(identifiers),
            "ids": list_or_null(ids),
            "next": next,
            "segment_id": id,
        }),
    )
}

async fn list_campaigns(State(sim): State<Arc<Shared>>) -> Response {
    let campaigns = sim.lock().campaigns.clone();
    respond::json(200, json!({ "campaigns": list_or_null(campaigns) }))
}

async fn get_campaign(State(sim): State<Arc<Shared>>, Path(raw): Path<String>) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("campaign", &raw);
    };
    let st = sim.lock();
    match find_by_id(&st.campaigns, id) {
        Some(campaign) => respond::json(200, json!({ "campaign": campaign })),
        None => respond::app_error(404, format!("campaign {id} not found")),
    }
}

async fn campaign_metrics(
    State(sim): State<Arc<Shared>>,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Ok(id) = raw.parse::<i64>() else {
        return not_found("campaign", &raw);
    };
    if let Some(period) = query.get("period")
        && !matches!(period.as_str(), "hours" | "days" | "weeks" | "months")
    {
        return respond::app_error(
            400,
            format!("period {period:?} is invalid; use hours, days, weeks or months"),
        );
    }
    let steps = match query.get("steps").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => return respond::app_error(400, "steps must be a non-negative integer"),
    };
    let st = sim.lock();
    let series = match st.metrics.get(&id) {
        Some(series) => series.clone(),
        None if find_by_id(&st.campaigns, id).is_some() => Default::default(),
        None => return respond::app_error(404, format!("campaign {id} not found")),
    };
    drop(st);
    // steps=N asks for N+1 periods (the current one included); steps=0 means all.
    let series: serde_json::Map<String, Value> = series
        .into_iter()
        .map(|(name, points)| {
            let keep = if steps > 0 {
                points.len().min(steps.saturating_add(1))
            } else {
                points.len()
            };
            let tail = points[points.len() - keep..].to_vec();
            (name, json!(tail))
        })
        .collect();
    respond::json(200, json!({"metric": {"series": series}}))
}
