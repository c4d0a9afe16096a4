//! Track API v1 request shapes: path, method and body for each operation.
//!
//! Owns: the v1 endpoints (`PUT /api/v1/customers/{id}`, `…/events`, `/api/v1/events`,
//! `DELETE`, `suppress`, `unsuppress`, `merge_customers`, segment
//! `add_customers`/`remove_customers`) and percent-encoding
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

/// Why an operation could not be put on the wire. Mapping and the wire plan never produce
/// these cases; if one happens anyway nothing is sent for it, and nothing is counted as
/// delivered: the row is dead-lettered (v1) or the run fails (a segment batch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(
        "internal error: the Track API has no v1 request for `{action}` of {subject}; nothing was sent for this row (a bug in cio-sync: please report it with the job file)"
    )]
    NoV1Request {
        action: &'static str,
        /// `an anonymous visitor`, or `a person` for operations v1 sends as lists.
        subject: &'static str,
    },
    #[error(
        "internal error: a segment batch holds {found}; nothing of the batch was sent (a bug in cio-sync: please report it with the job file)"
    )]
    NotOneSegment {
        /// What broke the rule: `no rows`, `an anonymous visitor`, `two segments`, ….
        found: String,
    },
    #[error(
        "internal error: the {what} request body could not be encoded ({reason}); nothing was sent (a bug in cio-sync: please report it with the job file)"
    )]
    Encode { what: &'static str, reason: String },
}

pub struct V1Request {
    pub method: reqwest::Method,
    pub path: String,
    /// The JSON body, already encoded; `None` for calls that take none (`DELETE`, `suppress`).
    pub body: Option<Vec<u8>>,
}

/// The v1 path form of a person: ids and emails as they are, cio_ids with `cio_`.
pub fn path_identifier(kind: &IdentifierKind, value: &str) -> String {
    let raw = match kind {
        IdentifierKind::CioId => format!("cio_{value}"),
        _ => value.to_string(),
    };
    utf8_percent_encode(&raw, PATH_SEGMENT).to_string()
}

fn encode(what: &'static str, body: &Value) -> Result<Vec<u8>, RequestError> {
    serde_json::to_vec(body).map_err(|e| RequestError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// The v1 call for one operation. Segment membership goes as a list ([`segment`]), and an
/// anonymous visitor can only send events; anything else is a [`RequestError`], never a
/// stand-in request.
pub fn v1(op: &Operation) -> Result<V1Request, RequestError> {
    let no_request = |subject| RequestError::NoV1Request {
        action: op.action_name(),
        subject,
    };
    let person = match &op.subject {
        // v1 paths take an id, email or cio_id; a phone would be read as an id.
        Subject::Person {
            kind: IdentifierKind::Phone,
            ..
        } => Err(no_request("a person named by phone")),
        Subject::Person { kind, value } => Ok(format!(
            "/api/v1/customers/{}",
            path_identifier(kind, value)
        )),
        Subject::Anonymous(_) => Err(no_request("an anonymous visitor")),
        Subject::Object { .. } | Subject::CioObject(_) => Err(no_request("an object")),
    };
    match &op.action {
        Action::Identify {
            attributes,
            timestamp,
            update_only,
        } => {
            let path = person?;
            let mut body = attributes.clone();
            if let Some(t) = timestamp {
                body.insert("_timestamp".into(), json!(t));
            }
            if *update_only {
                body.insert("_update".into(), json!(true));
            }
            Ok(V1Request {
                method: reqwest::Method::PUT,
                path,
                body: Some(encode("identify", &Value::Object(body))?),
            })
        }
        Action::Event {
            kind,
            name,
            id,
            timestamp,
            data,
        } => {
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
                (_, Ok(p)) => format!("{p}/events"),
                (Subject::Anonymous(a), Err(_)) => {
                    body.insert("anonymous_id".into(), json!(a));
                    "/api/v1/events".to_string()
                }
                (_, Err(e)) => return Err(e),
            };
            Ok(V1Request {
                method: reqwest::Method::POST,
                path,
                body: Some(encode("event", &Value::Object(body))?),
            })
        }
        Action::Delete => Ok(V1Request {
            method: reqwest::Method::DELETE,
            path: person?,
            body: None,
        }),
        Action::Suppress => Ok(V1Request {
            method: reqwest::Method::POST,
            path: format!("{}/suppress", person?),
            body: None,
        }),
        Action::Unsuppress => Ok(V1Request {
            method: reqwest::Method::POST,
            path: format!("{}/unsuppress", person?),
            body: None,
        }),
        Action::Merge { secondary } => {
            person?;
            let side = |kind: &IdentifierKind, value: &str| json!({ kind.as_str(): value });
            let Subject::Person { kind, value } = &op.subject else {
                return Err(no_request("a person"));
            };
            if *kind == IdentifierKind::Phone || secondary.kind == IdentifierKind::Phone {
                return Err(no_request("a person named by phone"));
            }
            Ok(V1Request {
                method: reqwest::Method::POST,
                path: "/api/v1/merge_customers".into(),
                body: Some(encode(
                    "merge",
                    &json!({"primary": side(kind, value), "secondary": side(&secondary.kind, &secondary.value)}),
                )?),
            })
        }
        Action::SegmentAdd { .. } | Action::SegmentRemove { .. } => Err(no_request("a person")),
        // Validation refuses these on v1: Track v1 has no such request in cio-sync.
        Action::ObjectIdentify { .. }
        | Action::ObjectDelete
        | Action::Relationship { .. }
        | Action::DeviceAdd { .. }
        | Action::DeviceDelete { .. } => Err(no_request("an object or device (v2 only)")),
    }
}

pub struct SegmentRequest {
    pub path: String,
    pub id_type: &'static str,
    /// `{"ids":[…]}`, encoded.
    pub body: Vec<u8>,
}

/// One `add_customers` / `remove_customers` call for a batch of one job's segment operations.
/// Every row must be the same change to the same segment for a person with the same kind of
/// identifier: a row that is not would otherwise be left out of the call and still counted.
pub fn segment(batch: &Batch) -> Result<SegmentRequest, RequestError> {
    let broken = |found: &str| RequestError::NotOneSegment {
        found: found.to_string(),
    };
    let first = batch.items.first().ok_or_else(|| broken("no rows"))?;
    let (action, verb) = match &first.mapped.op.action {
        a @ Action::SegmentAdd { segment_id } => (a, format!("{segment_id}/add_customers")),
        a @ Action::SegmentRemove { segment_id } => (a, format!("{segment_id}/remove_customers")),
        _ => {
            let found = format!("a `{}` operation", first.mapped.op.action_name());
            return Err(broken(&found));
        }
    };
    let kind = match &first.mapped.op.subject {
        Subject::Person { kind, .. } if *kind == IdentifierKind::Phone => {
            return Err(broken("a person named by phone"));
        }
        Subject::Person { kind, .. } => kind,
        Subject::Anonymous(_) => return Err(broken("an anonymous visitor")),
        Subject::Object { .. } | Subject::CioObject(_) => return Err(broken("an object")),
    };
    let mut ids: Vec<&str> = Vec::with_capacity(batch.items.len());
    for p in &batch.items {
        if &p.mapped.op.action != action {
            return Err(broken("changes of more than one kind or segment"));
        }
        match &p.mapped.op.subject {
            Subject::Person { kind: k, value } if k == kind => ids.push(value),
            Subject::Person { .. } => return Err(broken("two kinds of identifier")),
            Subject::Anonymous(_) => return Err(broken("an anonymous visitor")),
            Subject::Object { .. } | Subject::CioObject(_) => return Err(broken("an object")),
        }
    }
    Ok(SegmentRequest {
        path: format!("/api/v1/segments/{verb}"),
        id_type: kind.as_str(),
        body: encode("segment", &json!({ "ids": ids }))?,
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
        let r = v1(&op).expect("identify has a v1 request");
        assert_eq!(r.method, reqwest::Method::PUT);
        assert_eq!(r.path, "/api/v1/customers/42");
        assert_eq!(
            r.body
                .map(|b| serde_json::from_slice::<Value>(&b).expect("json")),
            Some(json!({"plan":"pro","_timestamp":1717171717}))
        );

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
        let r = v1(&ev).expect("anonymous events have a v1 request");
        assert_eq!(r.path, "/api/v1/events");
        let body: Value = serde_json::from_slice(&r.body.expect("a body")).expect("json");
        assert_eq!(body["anonymous_id"], json!("cookie-1"));
    }
}
