//! Simulated Track API routes (v1 and v2): validates requests the way customerio-api.md §3–§7
//! describes, normalises every accepted person operation into one [`RecordedOp`] shape, and
//! hands it to the state for dedupe and recording.
//!
//! Owns the Track validation rules and limits; must not decide faults or auth (the gate does),
//! and must not share code with the daemon's own validation (it exists to check that code).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};

use super::state::{Refusal, Shared};
use super::{Entity, RecordedOp, Transport, respond};

/// v2 batch body limit ("500 KB", read as decimal bytes like the daemon does).
const BATCH_MAX_BYTES: usize = 500_000;
/// v2 entity body and per-batch-item limit ("32 KB").
const ITEM_MAX_BYTES: usize = 32_000;
const ID_MAX_BYTES: usize = 150;
const ATTR_NAME_MAX_BYTES: usize = 150;
const ATTR_VALUE_MAX_BYTES: usize = 1_000;
const ATTR_MAX_COUNT: usize = 300;
const EVENT_NAME_MAX_BYTES: usize = 100;
const EVENT_DATA_MAX_BYTES: usize = 100_000;
/// Timestamps must satisfy `TS_LOW < ts < TS_HIGH` (the Ruby client's range): this rejects
/// milliseconds and tiny values.
const TS_LOW: i64 = 999_999_999;
const TS_HIGH: i64 = 100_000_000_000;
/// Identify keys that carry Customer.io structures rather than attribute values, so the
/// 1000-byte value limit does not apply to them.
const STRUCTURED_KEYS: [&str; 2] = ["cio_relationships", "cio_subscription_preferences"];

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/accounts/region", get(region))
        .route(
            "/api/v1/customers/{identifier}",
            put(identify).delete(delete_person),
        )
        .route("/api/v1/customers/{identifier}/suppress", post(suppress))
        .route(
            "/api/v1/customers/{identifier}/unsuppress",
            post(unsuppress),
        )
        .route("/api/v1/customers/{identifier}/events", post(person_event))
        .route("/api/v1/events", post(anonymous_event))
        .route("/api/v1/merge_customers", post(merge_customers))
        .route(
            "/api/v1/segments/{segment_id}/add_customers",
            post(segment_add),
        )
        .route(
            "/api/v1/segments/{segment_id}/remove_customers",
            post(segment_remove),
        )
        .route("/api/v2/entity", post(v2_entity))
        .route("/api/v2/batch", post(v2_batch))
}

/// Why one operation was refused; becomes a v2 batch error row or a v1 400.
#[derive(Debug)]
pub(crate) struct ItemError {
    reason: &'static str,
    field: &'static str,
    message: String,
    /// Refuses the whole request with HTTP 400 (still naming the item by `batch_index`), as
    /// Customer.io does for a device token inside the device attributes.
    whole: bool,
}

impl ItemError {
    fn new(reason: &'static str, field: &'static str, message: impl Into<String>) -> ItemError {
        ItemError {
            reason,
            field,
            message: message.into(),
            whole: false,
        }
    }

    fn whole_request(mut self) -> ItemError {
        self.whole = true;
        self
    }

    fn v1_response(&self) -> Response {
        respond::v1_error(400, format!("{}: {}", self.reason, self.message))
    }

    fn batch_row(&self, index: usize) -> Value {
        json!({"batch_index": index, "reason": self.reason, "field": self.field, "message": self.message})
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn region(State(sim): State<Arc<Shared>>) -> Response {
    respond::json(
        200,
        json!({"url": sim.region.track_url(), "region": sim.region.as_str(), "environment_id": 1}),
    )
}

async fn identify(
    State(sim): State<Arc<Shared>>,
    Path(identifier): Path<String>,
    body: Bytes,
) -> Response {
    let identifiers = match v1_identifiers(&identifier) {
        Ok(ids) => ids,
        Err(e) => return e.v1_response(),
    };
    let mut attributes = match parse_v1_object(&body, true) {
        Ok(m) => m,
        Err(message) => return respond::v1_error(400, message),
    };
    let timestamp = attributes.remove("_timestamp");
    match identify_op(
        Transport::V1,
        identifiers,
        timestamp.as_ref(),
        "_timestamp",
        attributes,
    ) {
        Ok(op) => accept_v1(&sim, op),
        Err(e) => e.v1_response(),
    }
}

async fn delete_person(State(sim): State<Arc<Shared>>, Path(identifier): Path<String>) -> Response {
    bare_v1(&sim, &identifier, "delete")
}

async fn suppress(State(sim): State<Arc<Shared>>, Path(identifier): Path<String>) -> Response {
    bare_v1(&sim, &identifier, "suppress")
}

async fn unsuppress(State(sim): State<Arc<Shared>>, Path(identifier): Path<String>) -> Response {
    bare_v1(&sim, &identifier, "unsuppress")
}

/// delete / suppress / unsuppress: no body, only the identifier.
fn bare_v1(sim: &Shared, identifier: &str, action: &str) -> Response {
    match v1_identifiers(identifier) {
        Ok(identifiers) => accept_v1(sim, bare_op(Transport::V1, action, identifiers)),
        Err(e) => e.v1_response(),
    }
}

async fn person_event(
    State(sim): State<Arc<Shared>>,
    Path(identifier): Path<String>,
    body: Bytes,
) -> Response {
    let identifiers = match v1_identifiers(&identifier) {
        Ok(ids) => ids,
        Err(e) => return e.v1_response(),
    };
    let body = match parse_v1_object(&body, false) {
        Ok(m) => m,
        Err(message) => return respond::v1_error(400, message),
    };
    match v1_event_op(identifiers, None, body) {
        Ok(op) => accept_v1(&sim, op),
        Err(e) => e.v1_response(),
    }
}

async fn anonymous_event(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut body = match parse_v1_object(&body, false) {
        Ok(m) => m,
        Err(message) => return respond::v1_error(400, message),
    };
    let anonymous_id = match body.remove("anonymous_id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => {
            return ItemError::new(
                "invalid anonymous_id",
                "anonymous_id",
                "anonymous events need a non-empty string anonymous_id",
            )
            .v1_response();
        }
    };
    match v1_event_op(BTreeMap::new(), Some(anonymous_id), body) {
        Ok(op) => accept_v1(&sim, op),
        Err(e) => e.v1_response(),
    }
}

async fn merge_customers(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    let body = match parse_v1_object(&body, false) {
        Ok(m) => m,
        Err(message) => return respond::v1_error(400, message),
    };
    match merge_op(Transport::V1, body) {
        Ok(op) => accept_v1(&sim, op),
        Err(e) => e.v1_response(),
    }
}

async fn segment_add(
    State(sim): State<Arc<Shared>>,
    Path(segment): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    segment_change(&sim, &segment, &query, &body, true)
}

async fn segment_remove(
    State(sim): State<Arc<Shared>>,
    Path(segment): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    segment_change(&sim, &segment, &query, &body, false)
}

fn segment_change(
    sim: &Shared,
    segment: &str,
    query: &HashMap<String, String>,
    body: &[u8],
    add: bool,
) -> Response {
    let Ok(segment_id) = segment.parse::<i64>() else {
        return respond::v1_error(400, format!("segment id {segment:?} is not an integer"));
    };
    let id_type = query.get("id_type").map_or("id", String::as_str);
    if !matches!(id_type, "id" | "email" | "cio_id") {
        return respond::v1_error(
            400,
            format!("id_type {id_type:?} is invalid; use id, email or cio_id"),
        );
    }
    let mut body = match parse_v1_object(body, false) {
        Ok(m) => m,
        Err(message) => return respond::v1_error(400, message),
    };
    let Some(Value::Array(ids)) = body.remove("ids") else {
        return respond::v1_error(400, "body needs \"ids\": an array of identifiers");
    };
    let mut rows = Vec::with_capacity(ids.len());
    for id in ids {
        match id {
            Value::String(s) => rows.push((segment_id, id_type.to_owned(), s)),
            Value::Number(n) => rows.push((segment_id, id_type.to_owned(), n.to_string())),
            other => {
                return respond::v1_error(400, format!("ids must be strings, got {other}"));
            }
        }
    }
    let mut st = sim.lock();
    if add {
        st.segment_adds.extend(rows);
    } else {
        st.segment_removes.extend(rows);
    }
    respond::ok_empty()
}

async fn v2_entity(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    if body.len() > ITEM_MAX_BYTES {
        return respond::v2_error(
            413,
            "request too large",
            "",
            format!(
                "entity body is {} bytes; limit {ITEM_MAX_BYTES}",
                body.len()
            ),
        );
    }
    let item: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return respond::v2_error(400, "malformed", "", format!("invalid JSON: {e}")),
    };
    if let Some(response) = whole_request_failure(&sim, std::slice::from_ref(&item)) {
        return response;
    }
    {
        let mut st = sim.lock();
        if st.record_ops {
            st.v2_items.push(item.clone());
        }
    }
    match parse_v2_item(item) {
        Err(e) => respond::v2_error(400, e.reason, e.field, e.message),
        Ok(None) => respond::ok_empty(),
        Ok(Some(op)) => match sim.lock().accept(op) {
            Ok(()) => respond::ok_empty(),
            Err(Refusal::Rejected { reason, id }) => {
                respond::v2_error(400, &reason, "identifiers", rejected_message(&id))
            }
        },
    }
}

async fn v2_batch(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    if body.len() > BATCH_MAX_BYTES {
        return respond::v2_error(
            413,
            "request too large",
            "",
            format!(
                "batch body is {} bytes; limit {BATCH_MAX_BYTES}",
                body.len()
            ),
        );
    }
    let root: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return respond::v2_error(400, "malformed", "", format!("invalid JSON: {e}")),
    };
    let Value::Object(mut root) = root else {
        return respond::v2_error(400, "malformed", "batch", "body must be {\"batch\":[…]}");
    };
    let Some(Value::Array(items)) = root.remove("batch") else {
        return respond::v2_error(400, "malformed", "batch", "body must be {\"batch\":[…]}");
    };
    if let Some(response) = whole_request_failure(&sim, &items) {
        return response;
    }
    let mut refused: Vec<Value> = Vec::new();
    {
        let mut st = sim.lock();
        if st.record_ops {
            st.v2_items.extend(items.iter().cloned());
        }
        if !st.refuse_400.is_empty() {
            for (index, item) in items.iter().enumerate() {
                let ids = item.get("identifiers");
                let named = ["id", "object_id"]
                    .iter()
                    .filter_map(|k| ids.and_then(|i| i.get(*k)).and_then(id_text))
                    .find_map(|id| st.refuse_400.get(&id).map(|r| (id, r.clone())));
                if let Some((id, reason)) = named {
                    refused.push(json!({"batch_index": index, "reason": reason, "field": "identifiers",
                        "message": format!("identifiers {id:?} is refused by refuse_batch_naming")}));
                }
            }
        }
    }
    // Validate outside the lock; only recording needs it.
    let parsed: Vec<Result<Option<RecordedOp>, ItemError>> = items
        .into_iter()
        .map(|item| match json_len_over(&item, ITEM_MAX_BYTES) {
            Some(size) => Err(ItemError::new(
                "item too large",
                "",
                format!("batch item is {size} bytes; limit {ITEM_MAX_BYTES}"),
            )),
            None => parse_v2_item(item),
        })
        .collect();
    refused.extend(parsed.iter().enumerate().filter_map(|(index, r)| match r {
        Err(e) if e.whole => Some(e.batch_row(index)),
        _ => None,
    }));
    if !refused.is_empty() {
        // The whole request is refused; Customer.io still names the items by batch_index.
        refused.sort_by_key(|e| e.get("batch_index").and_then(Value::as_u64));
        return respond::json(400, json!({ "errors": refused }));
    }
    let mut errors = Vec::new();
    {
        let mut st = sim.lock();
        for (index, result) in parsed.into_iter().enumerate() {
            match result {
                Ok(Some(op)) => {
                    if let Err(Refusal::Rejected { reason, id }) = st.accept(op) {
                        errors.push(json!({
                            "batch_index": index,
                            "reason": reason,
                            "field": "identifiers",
                            "message": rejected_message(&id),
                        }));
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(e.batch_row(index)),
            }
        }
    }
    if errors.is_empty() {
        respond::ok_empty()
    } else {
        respond::json(207, json!({ "errors": errors }))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn accept_v1(sim: &Shared, op: RecordedOp) -> Response {
    match sim.lock().accept(op) {
        Ok(()) => respond::ok_empty(),
        Err(Refusal::Rejected { reason, .. }) => respond::v1_error(400, reason),
    }
}

fn rejected_message(id: &str) -> String {
    format!("identifiers.id {id:?} is rejected by a simulator RejectRule")
}

/// A `fail_batch_containing` match: the whole request gets that status, nothing is applied.
fn whole_request_failure(sim: &Shared, items: &[Value]) -> Option<Response> {
    let st = sim.lock();
    if st.fail_batches.is_empty() {
        return None;
    }
    items.iter().find_map(|item| {
        let id = item.get("identifiers")?.get("id").and_then(id_text)?;
        let status = *st.fail_batches.get(&id)?;
        Some(respond::v2_error(
            status,
            "invalid",
            "identifiers",
            format!("request contains identifiers.id {id:?}, failed by fail_batch_containing"),
        ))
    })
}

/// An identifier value as text: strings as-is, integers in decimal.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a v1 body that must be a JSON object; an empty body counts as `{}` when allowed.
/// The error is the v1 error message.
fn parse_v1_object(body: &[u8], allow_empty: bool) -> Result<Map<String, Value>, String> {
    if allow_empty && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("malformed: body must be a JSON object".to_owned()),
        Err(e) => Err(format!("malformed: invalid JSON: {e}")),
    }
}

/// Compact JSON length of `v` if it exceeds `limit`, else `None`.
///
/// Serializing every batch item just to measure it dominated the simulator's CPU, so a cheap
/// upper bound (every string byte escaped, numbers at their longest) rules out the common small
/// item, and only candidates are measured exactly.
fn json_len_over(v: &Value, limit: usize) -> Option<usize> {
    (json_len_upper_bound(v) > limit)
        .then(|| json_len(v))
        .filter(|len| *len > limit)
}

/// [`json_len_over`] for an object held as a map.
fn map_len_over(m: &Map<String, Value>, limit: usize) -> Option<usize> {
    (map_len_upper_bound(m) > limit)
        .then(|| json_len(m))
        .filter(|len| *len > limit)
}

fn json_len_upper_bound(v: &Value) -> usize {
    // serde_json writes at most 6 bytes per string byte (`\u00XX`) and at most 24 per number.
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() * 6 + 2,
        Value::Array(a) => a.iter().map(|x| json_len_upper_bound(x) + 1).sum::<usize>() + 2,
        Value::Object(m) => map_len_upper_bound(m),
    }
}

fn map_len_upper_bound(m: &Map<String, Value>) -> usize {
    m.iter()
        .map(|(k, x)| k.len() * 6 + 4 + json_len_upper_bound(x))
        .sum::<usize>()
        + 2
}

/// Length of a value's compact JSON without allocating it.
fn json_len<T: serde::Serialize + ?Sized>(v: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // JSON values and maps always serialize, and the writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

fn check_id_len(kind: &str, value: &str) -> Result<(), ItemError> {
    if value.is_empty() {
        return Err(ItemError::new(
            "invalid identifiers",
            "identifiers",
            format!("{kind} is empty"),
        ));
    }
    if value.len() > ID_MAX_BYTES {
        return Err(ItemError::new(
            "invalid identifiers",
            "identifiers",
            format!("{kind} is {} bytes; limit {ID_MAX_BYTES}", value.len()),
        ));
    }
    Ok(())
}

/// v1 path identifier (already percent-decoded by the router): `cio_…` → bare `cio_id`,
/// containing `@` → `email`, anything else → `id`.
fn v1_identifiers(path_identifier: &str) -> Result<BTreeMap<String, String>, ItemError> {
    let (kind, value) = if let Some(bare) = path_identifier.strip_prefix("cio_") {
        ("cio_id", bare)
    } else if path_identifier.contains('@') {
        ("email", path_identifier)
    } else {
        ("id", path_identifier)
    };
    check_id_len(kind, value)?;
    Ok(BTreeMap::from([(kind.to_owned(), value.to_owned())]))
}

/// v2 `identifiers`: exactly one of id / email / phone / cio_id (nulls count as absent).
fn v2_identifiers(v: Option<Value>) -> Result<BTreeMap<String, String>, ItemError> {
    let bad = |message: String| ItemError::new("invalid identifiers", "identifiers", message);
    let Some(Value::Object(m)) = v else {
        return Err(bad(
            "identifiers must be an object with exactly one of id, email, phone, cio_id".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (key, value) in m {
        if value.is_null() {
            continue;
        }
        if !matches!(key.as_str(), "id" | "email" | "phone" | "cio_id") {
            return Err(bad(format!(
                "unknown identifier {key:?}; use one of id, email, phone, cio_id"
            )));
        }
        let text = match (&value, key.as_str()) {
            (Value::String(s), _) => s.clone(),
            (Value::Number(_), "id") => id_text(&value)
                .ok_or_else(|| bad(format!("identifiers.id {value} is not an integer")))?,
            _ => return Err(bad(format!("identifiers.{key} must be a string"))),
        };
        check_id_len(&key, &text)?;
        out.insert(key, text);
    }
    if out.len() != 1 {
        return Err(bad(format!(
            "identifiers has {} of id, email, phone, cio_id; exactly one is required",
            out.len()
        )));
    }
    Ok(out)
}

/// Integer Unix seconds within the accepted range, or absent/null.
fn check_timestamp(v: Option<&Value>, field: &'static str) -> Result<Option<i64>, ItemError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ts) if ts > TS_LOW && ts < TS_HIGH => Ok(Some(ts)),
            Some(ts) if ts >= TS_HIGH => Err(ItemError::new(
                "invalid timestamp",
                field,
                format!("{field} {ts} is too large for Unix seconds (milliseconds?)"),
            )),
            _ => Err(ItemError::new(
                "invalid timestamp",
                field,
                format!("{field} {n} must be integer Unix seconds, {TS_LOW} < ts < {TS_HIGH}"),
            )),
        },
        Some(other) => Err(ItemError::new(
            "invalid timestamp",
            field,
            format!("{field} {other} must be integer Unix seconds, not a string or other type"),
        )),
    }
}

/// Person attributes: at most 300, names ≤ 150 bytes, values ≤ 1000 bytes (strings by UTF-8
/// length, anything else by its JSON).
fn check_person_attributes(attributes: &Map<String, Value>) -> Result<(), ItemError> {
    if attributes.len() > ATTR_MAX_COUNT {
        return Err(ItemError::new(
            "too many attributes",
            "attributes",
            format!(
                "{} attributes; limit {ATTR_MAX_COUNT} per call",
                attributes.len()
            ),
        ));
    }
    for (name, value) in attributes {
        if name.len() > ATTR_NAME_MAX_BYTES {
            return Err(ItemError::new(
                "attribute name too large",
                "attributes",
                format!(
                    "attribute name {name:?} is {} bytes; limit {ATTR_NAME_MAX_BYTES}",
                    name.len()
                ),
            ));
        }
        if STRUCTURED_KEYS.contains(&name.as_str()) {
            continue;
        }
        let size = match value {
            Value::String(s) => s.len(),
            other => json_len(other),
        };
        if size > ATTR_VALUE_MAX_BYTES {
            return Err(ItemError::new(
                "attribute too large",
                "attributes",
                format!("attribute {name:?} is {size} bytes; limit {ATTR_VALUE_MAX_BYTES}"),
            ));
        }
    }
    Ok(())
}

fn bare_op(
    transport: Transport,
    action: &str,
    identifiers: BTreeMap<String, String>,
) -> RecordedOp {
    RecordedOp {
        entity: Entity::Person,
        transport,
        action: action.to_owned(),
        identifiers,
        anonymous_id: None,
        name: None,
        event_id: None,
        timestamp: None,
        attributes: Map::new(),
    }
}

fn identify_op(
    transport: Transport,
    identifiers: BTreeMap<String, String>,
    timestamp: Option<&Value>,
    timestamp_field: &'static str,
    attributes: Map<String, Value>,
) -> Result<RecordedOp, ItemError> {
    let timestamp = check_timestamp(timestamp, timestamp_field)?;
    check_person_attributes(&attributes)?;
    Ok(RecordedOp {
        timestamp,
        attributes,
        ..bare_op(transport, "identify", identifiers)
    })
}

/// The parts of an event as either transport names them.
struct EventParts {
    transport: Transport,
    action: String,
    identifiers: BTreeMap<String, String>,
    anonymous_id: Option<String>,
    name: Option<Value>,
    id: Option<Value>,
    timestamp: Option<Value>,
    data: Option<Value>,
    /// `data` (v1) or `attributes` (v2), for error messages.
    data_field: &'static str,
}

fn event_op(parts: EventParts) -> Result<RecordedOp, ItemError> {
    let name = match &parts.name {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => {
            return Err(ItemError::new(
                "invalid name",
                "name",
                "event name is required and must be a non-empty string",
            ));
        }
    };
    if name.len() > EVENT_NAME_MAX_BYTES {
        return Err(ItemError::new(
            "invalid name",
            "name",
            format!(
                "event name is {} bytes; limit {EVENT_NAME_MAX_BYTES}",
                name.len()
            ),
        ));
    }
    let event_id = match parts.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_ulid(&s) => Some(s),
        Some(other) => {
            return Err(ItemError::new(
                "invalid id",
                "id",
                format!("event id {other} is not a ULID (26 Crockford base32 characters)"),
            ));
        }
    };
    let timestamp = check_timestamp(parts.timestamp.as_ref(), "timestamp")?;
    let attributes = match parts.data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ItemError::new(
                "invalid attributes",
                parts.data_field,
                format!("{} must be an object, got {other}", parts.data_field),
            ));
        }
    };
    if let Some(size) = map_len_over(&attributes, EVENT_DATA_MAX_BYTES) {
        return Err(ItemError::new(
            "data too large",
            parts.data_field,
            format!(
                "event {} is {size} bytes; limit {EVENT_DATA_MAX_BYTES}",
                parts.data_field
            ),
        ));
    }
    Ok(RecordedOp {
        entity: Entity::Person,
        transport: parts.transport,
        action: parts.action,
        identifiers: parts.identifiers,
        anonymous_id: parts.anonymous_id,
        name: Some(name),
        event_id,
        timestamp,
        attributes,
    })
}

/// A ULID: 26 Crockford base32 characters whose first is at most `7` (128 bits).
fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.as_bytes()
            .first()
            .is_some_and(|c| (b'0'..=b'7').contains(c))
        && ulid::Ulid::from_string(s).is_ok()
}

/// v1 event body (`name`, `id`, `type`, `timestamp`, `data`) → event/page/screen op.
fn v1_event_op(
    identifiers: BTreeMap<String, String>,
    anonymous_id: Option<String>,
    mut body: Map<String, Value>,
) -> Result<RecordedOp, ItemError> {
    let action = match body.remove("type") {
        None | Some(Value::Null) => "event".to_owned(),
        Some(Value::String(t)) if matches!(t.as_str(), "event" | "page" | "screen") => t,
        Some(other) => {
            return Err(ItemError::new(
                "invalid type",
                "type",
                format!("event type {other} is invalid; use event, page or screen"),
            ));
        }
    };
    event_op(EventParts {
        transport: Transport::V1,
        action,
        identifiers,
        anonymous_id,
        name: body.remove("name"),
        id: body.remove("id"),
        timestamp: body.remove("timestamp"),
        data: body.remove("data"),
        data_field: "data",
    })
}

/// `primary` and `secondary`, each exactly one of id / email / cio_id.
fn merge_op(transport: Transport, mut body: Map<String, Value>) -> Result<RecordedOp, ItemError> {
    let mut attributes = Map::new();
    for side in ["primary", "secondary"] {
        let value = body.remove(side);
        let valid = match &value {
            Some(Value::Object(m)) => {
                m.len() == 1
                    && m.iter().all(|(k, v)| {
                        matches!(k.as_str(), "id" | "email" | "cio_id") && id_text(v).is_some()
                    })
            }
            _ => false,
        };
        match value {
            Some(v) if valid => {
                attributes.insert(side.to_owned(), v);
            }
            _ => {
                return Err(ItemError::new(
                    "invalid merge",
                    side,
                    format!("{side} must be an object with exactly one of id, email, cio_id"),
                ));
            }
        }
    }
    Ok(RecordedOp {
        attributes,
        ..bare_op(transport, "merge", BTreeMap::new())
    })
}

/// `person_add_device` / `person_delete_device`: add needs `platform` `ios`/`android`,
/// `last_used` is integer seconds, `push_enabled` the string `"true"`/`"false"`, and the token
/// never inside `attributes` (Customer.io answers that with a 400); delete carries the token only.
fn check_device(action: &str, d: &Map<String, Value>) -> Result<(), ItemError> {
    let bad =
        |field: &'static str, message: String| ItemError::new("invalid device", field, message);
    if action == "delete_device" {
        if let Some(k) = d.keys().find(|k| k.as_str() != "token") {
            return Err(bad(
                "device",
                format!("delete_device takes only device.token, not {k:?}"),
            ));
        }
        return Ok(());
    }
    match d.get("platform").and_then(Value::as_str) {
        Some("ios" | "android") => {}
        other => {
            return Err(bad(
                "device.platform",
                format!("platform {other:?} is invalid; use ios or android"),
            ));
        }
    }
    if let Some(v) = d.get("last_used") {
        check_timestamp(Some(v), "device.last_used")?;
    }
    match d.get("attributes") {
        None => {}
        Some(Value::Object(a)) => {
            if a.contains_key("token") {
                return Err(ItemError::new(
                    "invalid",
                    "device.attributes.token",
                    "must be in the top-level device object",
                )
                .whole_request());
            }
            if let Some(v) = a.get("push_enabled")
                && !matches!(v.as_str(), Some("true" | "false"))
            {
                return Err(bad(
                    "device.attributes.push_enabled",
                    format!("push_enabled {v} must be the string \"true\" or \"false\""),
                ));
            }
            check_person_attributes(a)?;
        }
        Some(other) => {
            return Err(bad(
                "device.attributes",
                format!("attributes must be an object, got {other}"),
            ));
        }
    }
    if let Some(k) = d.keys().find(|k| {
        !matches!(
            k.as_str(),
            "token" | "platform" | "last_used" | "attributes"
        )
    }) {
        return Err(bad("device", format!("unknown device key {k:?}")));
    }
    Ok(())
}

/// Object names Customer.io reserves as object attributes.
const RESERVED_OBJECT_ATTRIBUTES: [&str; 4] =
    ["cio_object_id", "object_id", "objectId", "relationship"];
/// "Max size of all attributes associated with an object or relationship".
const OBJECT_ATTRS_MAX_BYTES: usize = 100_000;

/// Object `identifiers`: `{object_type_id, object_id}` (the type id a string of an integer
/// from 1) or `{cio_object_id}`.
fn object_identifiers(v: Option<Value>) -> Result<BTreeMap<String, String>, ItemError> {
    let bad = |message: String| ItemError::new("invalid identifiers", "identifiers", message);
    let Some(Value::Object(m)) = v else {
        return Err(bad(
            "identifiers must be {object_type_id, object_id} or {cio_object_id}".into(),
        ));
    };
    let text = |k: &str| -> Result<Option<String>, ItemError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(format!("identifiers.{k} {other} must be a string"))),
        }
    };
    if let Some(k) = m
        .keys()
        .find(|k| !matches!(k.as_str(), "object_type_id" | "object_id" | "cio_object_id"))
    {
        return Err(bad(format!("unknown object identifier {k:?}")));
    }
    match (
        text("object_type_id")?,
        text("object_id")?,
        text("cio_object_id")?,
    ) {
        (Some(t), Some(id), None) => {
            if !t.parse::<u64>().is_ok_and(|n| n >= 1) {
                return Err(bad(format!(
                    "object_type_id {t:?} must be a string-formatted integer from \"1\""
                )));
            }
            check_id_len("object_id", &id)?;
            Ok(BTreeMap::from([
                ("object_type_id".to_owned(), t),
                ("object_id".to_owned(), id),
            ]))
        }
        (None, None, Some(c)) => {
            check_id_len("cio_object_id", &c)?;
            Ok(BTreeMap::from([("cio_object_id".to_owned(), c)]))
        }
        _ => Err(bad(
            "identifiers must be {object_type_id, object_id} or {cio_object_id}".into(),
        )),
    }
}

/// Object or relationship attributes: the person limits plus 100 KB in all.
fn check_object_attributes(a: &Map<String, Value>, field: &'static str) -> Result<(), ItemError> {
    check_person_attributes(a).map_err(|mut e| {
        e.field = field;
        e
    })?;
    if let Some(size) = map_len_over(a, OBJECT_ATTRS_MAX_BYTES) {
        return Err(ItemError::new(
            "attributes too large",
            field,
            format!(
                "attributes are {size} bytes; limit {OBJECT_ATTRS_MAX_BYTES} per object or relationship"
            ),
        ));
    }
    Ok(())
}

/// An object's `cio_relationships`: people by exactly one of id / email / cio_id, each with
/// optional `relationship_attributes`.
fn object_relationships(v: Option<Value>, required: bool) -> Result<Option<Value>, ItemError> {
    let bad =
        |message: String| ItemError::new("invalid relationships", "cio_relationships", message);
    let list = match v {
        None | Some(Value::Null) if !required => return Ok(None),
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => return Err(bad("cio_relationships must be a non-empty array".into())),
    };
    for (n, entry) in list.iter().enumerate() {
        let Some(e) = entry.as_object() else {
            return Err(bad(format!("cio_relationships[{n}] must be an object")));
        };
        let person_ok = match e.get("identifiers") {
            Some(Value::Object(ids)) => {
                ids.len() == 1
                    && ids.iter().all(|(k, v)| {
                        matches!(k.as_str(), "id" | "email" | "cio_id") && id_text(v).is_some()
                    })
            }
            _ => false,
        };
        if !person_ok {
            return Err(bad(format!(
                "cio_relationships[{n}].identifiers must be exactly one of id, email, cio_id (phone is not accepted here)"
            )));
        }
        match e.get("relationship_attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(a)) => check_object_attributes(a, "cio_relationships")?,
            Some(_) => {
                return Err(bad(format!(
                    "cio_relationships[{n}].relationship_attributes must be an object"
                )));
            }
        }
        if let Some(k) = e
            .keys()
            .find(|k| !matches!(k.as_str(), "identifiers" | "relationship_attributes"))
        {
            return Err(bad(format!("cio_relationships[{n}] has unknown key {k:?}")));
        }
    }
    Ok(Some(Value::Array(list)))
}

/// One `type: object` item: identify, identify_anonymous, delete, add/delete_relationships.
fn object_item(mut m: Map<String, Value>) -> Result<RecordedOp, ItemError> {
    let action = match m.remove("action") {
        Some(Value::String(a)) => a,
        _ => {
            return Err(ItemError::new(
                "invalid action",
                "action",
                "action is required",
            ));
        }
    };
    let identifiers = object_identifiers(m.remove("identifiers"))?;
    let mut attributes = Map::new();
    match action.as_str() {
        "identify" | "identify_anonymous" => {
            match m.remove("attributes") {
                None | Some(Value::Null) => {}
                Some(Value::Object(a)) => {
                    if let Some(k) = a
                        .keys()
                        .find(|k| RESERVED_OBJECT_ATTRIBUTES.contains(&k.as_str()))
                    {
                        return Err(ItemError::new(
                            "invalid attributes",
                            "attributes",
                            format!("attribute {k:?} is reserved on objects"),
                        ));
                    }
                    check_object_attributes(&a, "attributes")?;
                    attributes = a;
                }
                Some(_) => {
                    return Err(ItemError::new(
                        "invalid attributes",
                        "attributes",
                        "attributes must be an object",
                    ));
                }
            }
            let rel = if action == "identify" {
                object_relationships(m.remove("cio_relationships"), false)?
            } else {
                // identify_anonymous relates the object to `{anonymous_id}` people.
                m.remove("cio_relationships")
            };
            if let Some(rel) = rel {
                attributes.insert("cio_relationships".to_owned(), rel);
            }
        }
        "delete" => {}
        "add_relationships" | "delete_relationships" => {
            let rel = object_relationships(m.remove("cio_relationships"), true)?;
            attributes.insert("cio_relationships".to_owned(), rel.unwrap_or_default());
        }
        other => {
            return Err(ItemError::new(
                "invalid action",
                "action",
                format!(
                    "action {other:?} is not an object action; use identify, identify_anonymous, delete, add_relationships or delete_relationships"
                ),
            ));
        }
    }
    m.remove("type");
    if let Some(k) = m.keys().next() {
        return Err(ItemError::new(
            "invalid item",
            "",
            format!("unknown key {k:?} in an object {action} item"),
        ));
    }
    Ok(RecordedOp {
        entity: Entity::Object,
        attributes,
        ..bare_op(Transport::V2, &action, identifiers)
    })
}

/// One v2 operation. `Ok(None)` = accepted but not recorded (deliveries).
fn parse_v2_item(item: Value) -> Result<Option<RecordedOp>, ItemError> {
    let Value::Object(mut m) = item else {
        return Err(ItemError::new(
            "invalid item",
            "",
            "operation must be a JSON object",
        ));
    };
    match m.get("type").and_then(Value::as_str) {
        Some("person") => {}
        Some("object") => return object_item(m).map(Some),
        Some("delivery") => return Ok(None),
        Some(other) => {
            return Err(ItemError::new(
                "invalid type",
                "type",
                format!("type {other:?} is invalid; use person, object or delivery"),
            ));
        }
        None => return Err(ItemError::new("invalid type", "type", "type is required")),
    }
    let action = match m.remove("action") {
        Some(Value::String(a)) => a,
        _ => {
            return Err(ItemError::new(
                "invalid action",
                "action",
                "action is required",
            ));
        }
    };
    let op = match action.as_str() {
        "identify" => {
            let identifiers = v2_identifiers(m.remove("identifiers"))?;
            let mut attributes = match m.remove("attributes") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(a)) => a,
                Some(_) => {
                    return Err(ItemError::new(
                        "invalid attributes",
                        "attributes",
                        "attributes must be an object",
                    ));
                }
            };
            // v1 carries relationships inside the body, so keep them with the attributes to
            // make both transports record the same thing.
            if let Some(rel) = m.remove("cio_relationships") {
                attributes.insert("cio_relationships".to_owned(), rel);
            }
            identify_op(
                Transport::V2,
                identifiers,
                m.get("timestamp"),
                "timestamp",
                attributes,
            )?
        }
        "delete" | "suppress" | "unsuppress" => bare_op(
            Transport::V2,
            &action,
            v2_identifiers(m.remove("identifiers"))?,
        ),
        "event" | "page" | "screen" => {
            let (identifiers, anonymous_id) =
                match (m.remove("identifiers"), m.remove("anonymous_id")) {
                    (None | Some(Value::Null), Some(Value::String(anon))) if !anon.is_empty() => {
                        (BTreeMap::new(), Some(anon))
                    }
                    (ids, _) => (v2_identifiers(ids)?, None),
                };
            event_op(EventParts {
                transport: Transport::V2,
                action,
                identifiers,
                anonymous_id,
                name: m.remove("name"),
                id: m.remove("id"),
                timestamp: m.remove("timestamp"),
                data: m.remove("attributes"),
                data_field: "attributes",
            })?
        }
        "add_device" | "delete_device" => {
            let identifiers = v2_identifiers(m.remove("identifiers"))?;
            let device = match m.remove("device") {
                Some(Value::Object(d))
                    if d.get("token")
                        .and_then(Value::as_str)
                        .is_some_and(|t| !t.is_empty()) =>
                {
                    check_device(&action, &d)?;
                    Value::Object(d)
                }
                Some(Value::Object(d))
                    if d.get("attributes").and_then(|a| a.get("token")).is_some() =>
                {
                    return Err(ItemError::new(
                        "invalid",
                        "device.attributes.token",
                        "must be in the top-level device object",
                    )
                    .whole_request());
                }
                _ => {
                    return Err(ItemError::new(
                        "invalid device",
                        "device",
                        "device must be an object with a non-empty token",
                    ));
                }
            };
            let mut op = bare_op(Transport::V2, &action, identifiers);
            op.attributes.insert("device".to_owned(), device);
            op
        }
        "add_relationships" | "delete_relationships" => {
            let identifiers = v2_identifiers(m.remove("identifiers"))?;
            let Some(rel @ Value::Array(_)) = m.remove("cio_relationships") else {
                return Err(ItemError::new(
                    "invalid relationships",
                    "cio_relationships",
                    "cio_relationships must be an array",
                ));
            };
            let mut op = bare_op(Transport::V2, &action, identifiers);
            op.attributes.insert("cio_relationships".to_owned(), rel);
            op
        }
        "merge" => merge_op(Transport::V2, m)?,
        other => {
            return Err(ItemError::new(
                "invalid action",
                "action",
                format!("action {other:?} is not a person action"),
            ));
        }
    };
    Ok(Some(op))
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    #[test]
    fn v1_path_identifiers_are_classified_by_shape() {
        assert_eq!(v1_identifiers("cio_a300").unwrap()["cio_id"], "a300");
        assert_eq!(v1_identifiers("a+b@x.com").unwrap()["email"], "a+b@x.com");
        assert_eq!(
            v1_identifiers("+14155552671").unwrap()["id"],
            "+14155552671"
        );
        assert!(v1_identifiers(&"x".repeat(151)).is_err());
    }

    #[test]
    fn timestamps_outside_the_seconds_range_are_rejected() {
        assert_eq!(
            check_timestamp(Some(&json!(1_700_000_000)), "timestamp").unwrap(),
            Some(1_700_000_000)
        );
        for bad in [
            json!(1_700_000_000_000_i64),
            json!(999_999_999),
            json!(1.7e9),
            json!("1700000000"),
        ] {
            let e = check_timestamp(Some(&bad), "timestamp").unwrap_err();
            assert_eq!(e.reason, "invalid timestamp", "{bad}");
        }
    }

    #[test]
    fn v2_identifiers_need_exactly_one() {
        assert!(v2_identifiers(Some(json!({"id": "1", "email": "a@x"}))).is_err());
        assert!(v2_identifiers(Some(json!({}))).is_err());
        assert!(v2_identifiers(Some(json!({"anonymous_id": "x"}))).is_err());
        assert_eq!(v2_identifiers(Some(json!({"id": 42}))).unwrap()["id"], "42");
    }

    #[test]
    fn attribute_limits_count_bytes() {
        let ok = json!({"bio": "é".repeat(500)});
        assert!(check_person_attributes(ok.as_object().unwrap()).is_ok());
        let big = json!({"bio": "é".repeat(501)});
        assert_eq!(
            check_person_attributes(big.as_object().unwrap())
                .unwrap_err()
                .reason,
            "attribute too large"
        );
        let many: Map<String, Value> = (0..301).map(|i| (format!("a{i}"), json!(i))).collect();
        assert!(check_person_attributes(&many).is_err());
    }

    #[test]
    fn the_size_upper_bound_is_never_below_the_real_size() {
        let values = [
            json!({"a": "\u{1}\"\\", "b": [1.5e300, -9_223_372_036_854_775_808_i64, u64::MAX, null, true]}),
            json!({"bio": "é".repeat(40), "nested": {"k": ["x", {"y": false}]}}),
            json!([]),
        ];
        for v in values {
            assert!(json_len_upper_bound(&v) >= json_len(&v), "{v}");
        }
        let big = json!({"bio": "x".repeat(40_000)});
        assert_eq!(json_len_over(&big, ITEM_MAX_BYTES), Some(json_len(&big)));
        assert_eq!(
            json_len_over(&json!({"bio": "x".repeat(10_000)}), ITEM_MAX_BYTES),
            None
        );
    }

    #[test]
    fn non_ulid_event_ids_are_rejected() {
        assert!(is_ulid("01HF7YAT004JX7A6R9PKEZRXGP"));
        assert!(!is_ulid("81HF7YAT004JX7A6R9PKEZRXGP"));
        assert!(!is_ulid("not-a-ulid"));
    }
}
