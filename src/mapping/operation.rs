//! The operations cio-sync sends, and their v2 wire form.
//!
//! Owns: [`Operation`] (one person change: identify, event, delete, suppress, segment
//! membership) and its exact Track API v2 JSON encoding, which is also what the size limits
//! are measured on. Must not: know about HTTP, endpoints or retries (that is `track/`).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::EventType;
use crate::config::IdentifierKind;

/// Who an operation is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    Person { kind: IdentifierKind, value: String },
    Anonymous(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Identify {
        attributes: Map<String, Value>,
        /// The row's change time, Unix seconds: orders updates (v2 `timestamp`, v1 `_timestamp`).
        timestamp: Option<i64>,
        /// Only update existing people (`_update`).
        update_only: bool,
    },
    Event {
        kind: EventType,
        name: String,
        /// Deterministic ULID (see `event_id.rs`).
        id: String,
        /// Unix seconds; `None` lets Customer.io use the time of receipt.
        timestamp: Option<i64>,
        data: Map<String, Value>,
    },
    Delete,
    Suppress,
    SegmentAdd {
        segment_id: i64,
    },
    SegmentRemove {
        segment_id: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub subject: Subject,
    pub action: Action,
}

impl Operation {
    /// Whether the v2 batch API can carry this operation (anonymous events and manual
    /// segment membership have only v1 endpoints).
    pub fn fits_v2(&self) -> bool {
        matches!(self.subject, Subject::Person { .. })
            && !matches!(
                self.action,
                Action::SegmentAdd { .. } | Action::SegmentRemove { .. }
            )
    }

    /// A short label for logs and dry-run output.
    pub fn action_name(&self) -> &'static str {
        match &self.action {
            Action::Identify { .. } => "identify",
            Action::Event {
                kind: EventType::Event,
                ..
            } => "event",
            Action::Event {
                kind: EventType::Page,
                ..
            } => "page",
            Action::Event {
                kind: EventType::Screen,
                ..
            } => "screen",
            Action::Delete => "delete",
            Action::Suppress => "suppress",
            Action::SegmentAdd { .. } => "add_to_segment",
            Action::SegmentRemove { .. } => "remove_from_segment",
        }
    }

    /// The operation as one item of a v2 batch (`{"type":"person",...}`), as bytes. For
    /// operations v2 cannot carry, the same shape is used to measure their size.
    pub fn encode_v2(&self) -> Vec<u8> {
        let (identifiers, anonymous_id) = match &self.subject {
            Subject::Person { kind, value } => (Some((kind.as_str(), value.as_str())), None),
            Subject::Anonymous(a) => (None, Some(a.as_str())),
        };
        let mut item = V2Item {
            kind: "person",
            identifiers: identifiers.map(|(k, v)| Identifiers { key: k, value: v }),
            anonymous_id,
            action: self.action_name(),
            name: None,
            id: None,
            timestamp: None,
            attributes: None,
        };
        match &self.action {
            Action::Identify {
                attributes,
                timestamp,
                update_only,
            } => {
                item.timestamp = *timestamp;
                item.attributes = Some(AttributesOut {
                    map: attributes,
                    update: *update_only,
                });
            }
            Action::Event {
                name,
                id,
                timestamp,
                data,
                ..
            } => {
                item.name = Some(name);
                item.id = Some(id);
                item.timestamp = *timestamp;
                item.attributes = Some(AttributesOut {
                    map: data,
                    update: false,
                });
            }
            _ => {}
        }
        // Serialising maps of JSON values into a Vec cannot fail.
        serde_json::to_vec(&item).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct V2Item<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifiers: Option<Identifiers<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<AttributesOut<'a>>,
}

struct Identifiers<'a> {
    key: &'a str,
    value: &'a str,
}

impl Serialize for Identifiers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.key, self.value)?;
        m.end()
    }
}

/// Attributes, plus `_update` when the job only updates existing people.
struct AttributesOut<'a> {
    map: &'a Map<String, Value>,
    update: bool,
}

impl Serialize for AttributesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.map.len() + usize::from(self.update)))?;
        for (k, v) in self.map {
            m.serialize_entry(k, v)?;
        }
        if self.update {
            m.serialize_entry("_update", &true)?;
        }
        m.end()
    }
}
