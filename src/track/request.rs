//! Track API v1 request shapes: path, method and body for each operation.
//!
//! Owns: the v1 endpoints (`PUT /api/v1/customers/{id}`, `…/events`, `/api/v1/events`,
//! `DELETE`, `suppress`, segment `add_customers`/`remove_customers`) and percent-encoding
//! of path identifiers. Must not: send anything.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use crate::batch::Batch;
use crate::config::IdentifierKind;
use crate::mapping::{Action, Operation, Subject};

/// Leave only RFC 3986 unreserved characters, like the official clients.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub struct V1Request {
    pub method: reqwest::Method,
    pub path: String,
    pub body: Option<Value>,
}

/// The v1 path form of a person: ids and emails as they are, cio_ids with `cio_`.
pub fn path_identifier(kind: &IdentifierKind, value: &str) -> String {
    let raw = match kind {
        IdentifierKind::CioId => format!("cio_{value}"),
        _ => value.to_string(),
    };
    utf8_percent_encode(&raw, PATH_SEGMENT).to_string()
}

pub fn v1(op: &Operation) -> V1Request {
    let person = match &op.subject {
        Subject::Person { kind, value } => Some(format!(
            "/api/v1/customers/{}",
            path_identifier(kind, value)
        )),
        Subject::Anonymous(_) => None,
    };
    match (&op.action, person) {
        (
            Action::Identify {
                attributes,
                timestamp,
                update_only,
            },
            Some(p),
        ) => {
            let mut body = attributes.clone();
            if let Some(t) = timestamp {
                body.insert("_timestamp".into(), json!(t));
            }
            if *update_only {
                body.insert("_update".into(), json!(true));
            }
            V1Request {
                method: reqwest::Method::PUT,
                path: p,
                body: Some(Value::Object(body)),
            }
        }
        (
            Action::Event {
                kind,
                name,
                id,
                timestamp,
                data,
            },
            person,
        ) => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("id".into(), json!(id));
            body.insert(
                "type".into(),
                json!(match kind {
                    crate::config::EventType::Event => "event",
                    crate::config::EventType::Page => "page",
                    crate::config::EventType::Screen => "screen",
                }),
            );
            if let Some(t) = timestamp {
                body.insert("timestamp".into(), json!(t));
            }
            body.insert("data".into(), Value::Object(data.clone()));
            let path = match (&op.subject, person) {
                (_, Some(p)) => format!("{p}/events"),
                (Subject::Anonymous(a), None) => {
                    body.insert("anonymous_id".into(), json!(a));
                    "/api/v1/events".to_string()
                }
                (Subject::Person { .. }, None) => "/api/v1/events".to_string(),
            };
            V1Request {
                method: reqwest::Method::POST,
                path,
                body: Some(Value::Object(body)),
            }
        }
        (Action::Delete, Some(p)) => V1Request {
            method: reqwest::Method::DELETE,
            path: p,
            body: None,
        },
        (Action::Suppress, Some(p)) => V1Request {
            method: reqwest::Method::POST,
            path: format!("{p}/suppress"),
            body: None,
        },
        // Mapping never builds these for anonymous subjects; send nothing harmful if it did.
        (_, p) => V1Request {
            method: reqwest::Method::GET,
            path: p.unwrap_or_else(|| "/api/v1/accounts/region".into()),
            body: None,
        },
    }
}

pub struct SegmentRequest {
    pub path: String,
    pub id_type: &'static str,
    pub body: Value,
}

/// One `add_customers` / `remove_customers` call for a batch of one job's segment operations.
pub fn segment(batch: &Batch) -> Option<SegmentRequest> {
    let first = batch.items.first()?;
    let (segment_id, verb) = match first.mapped.op.action {
        Action::SegmentAdd { segment_id } => (segment_id, "add_customers"),
        Action::SegmentRemove { segment_id } => (segment_id, "remove_customers"),
        _ => return None,
    };
    let id_type = match &first.mapped.op.subject {
        Subject::Person { kind, .. } => kind.as_str(),
        Subject::Anonymous(_) => return None,
    };
    let ids: Vec<&str> = batch
        .items
        .iter()
        .filter_map(|p| match &p.mapped.op.subject {
            Subject::Person { value, .. } => Some(value.as_str()),
            Subject::Anonymous(_) => None,
        })
        .collect();
    Some(SegmentRequest {
        path: format!("/api/v1/segments/{segment_id}/{verb}"),
        id_type,
        body: json!({ "ids": ids }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_identifiers_are_percent_encoded() {
        assert_eq!(
            path_identifier(&IdentifierKind::Email, "a+b@c.com"),
            "a%2Bb%40c.com"
        );
        assert_eq!(
            path_identifier(&IdentifierKind::Id, "user 42/&x"),
            "user%2042%2F%26x"
        );
        assert_eq!(path_identifier(&IdentifierKind::Id, "A-z_0.9~"), "A-z_0.9~");
        assert_eq!(
            path_identifier(&IdentifierKind::CioId, "a3000001"),
            "cio_a3000001"
        );
    }

    #[test]
    fn identify_and_events_take_their_v1_shapes() {
        let op = Operation {
            subject: Subject::Person {
                kind: IdentifierKind::Id,
                value: "42".into(),
            },
            action: Action::Identify {
                attributes: [("plan".to_string(), json!("pro"))].into_iter().collect(),
                timestamp: Some(1_717_171_717),
                update_only: false,
            },
        };
        let r = v1(&op);
        assert_eq!(r.method, reqwest::Method::PUT);
        assert_eq!(r.path, "/api/v1/customers/42");
        assert_eq!(r.body, Some(json!({"plan":"pro","_timestamp":1717171717})));

        let ev = Operation {
            subject: Subject::Anonymous("cookie-1".into()),
            action: Action::Event {
                kind: crate::config::EventType::Page,
                name: "https://x.test/".into(),
                id: "01HF7YAT004JX7A6R9PKEZRXGP".into(),
                timestamp: None,
                data: Map::new(),
            },
        };
        let r = v1(&ev);
        assert_eq!(r.path, "/api/v1/events");
        assert_eq!(r.body.unwrap()["anonymous_id"], json!("cookie-1"));
    }
}
