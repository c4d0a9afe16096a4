//! The operations cio-sync sends, and their v2 wire form.
//!
//! Owns: [`Operation`] (one change: a person's identify, event, delete, suppress,
//! unsuppress, segment membership, device or merge; an object's identify or delete; an
//! object ↔ person relationship) and its exact Track API v2 JSON encoding, which is also what
//! the size limits are measured on, including several relationship rows of one object grouped
//! into one item. Must not: know about HTTP, endpoints or retries (that is `track/`).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::EventType;
use crate::config::{IdentifierKind, Platform};

/// Who an operation is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    Person {
        kind: IdentifierKind,
        value: String,
    },
    Anonymous(String),
    /// A custom object by type and id; `type_id` is already the string Customer.io expects.
    Object {
        type_id: String,
        id: String,
    },
    /// A custom object by Customer.io's `cio_object_id` (updates only).
    CioObject(String),
}

/// A person named inside another operation (a relationship, a merge's secondary).
#[derive(Debug, Clone, PartialEq)]
pub struct PersonRef {
    pub kind: IdentifierKind,
    pub value: String,
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
    Unsuppress,
    /// Creates or updates an object (the subject is an object).
    ObjectIdentify {
        attributes: Map<String, Value>,
    },
    ObjectDelete,
    /// Adds (`add`) or removes a relationship between the subject object and `person`.
    Relationship {
        add: bool,
        person: PersonRef,
        attributes: Map<String, Value>,
    },
    /// v2 `add_device`: `token` is the v2 key (v1 calls it `id`).
    DeviceAdd {
        token: String,
        platform: Platform,
        /// Integer Unix seconds; `None` lets Customer.io use the time of the request.
        last_used: Option<i64>,
        attributes: Map<String, Value>,
    },
    DeviceDelete {
        token: String,
    },
    /// Merges `secondary` into the subject (the primary), then deletes `secondary`.
    Merge {
        secondary: PersonRef,
    },
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
            Action::Delete | Action::ObjectDelete => "delete",
            Action::Suppress => "suppress",
            Action::Unsuppress => "unsuppress",
            Action::ObjectIdentify { .. } => "identify",
            Action::Relationship { add: true, .. } => "add_relationships",
            Action::Relationship { add: false, .. } => "delete_relationships",
            Action::DeviceAdd { .. } => "add_device",
            Action::DeviceDelete { .. } => "delete_device",
            Action::Merge { .. } => "merge",
            Action::SegmentAdd { .. } => "add_to_segment",
            Action::SegmentRemove { .. } => "remove_from_segment",
        }
    }

    /// The operation as one item of a v2 batch (`{"type":"person",...}`), as bytes. For
    /// operations v2 cannot carry, the same shape is used to measure their size.
    pub fn encode_v2(&self) -> Vec<u8> {
        if let Some(item) = self.object_or_extra_item() {
            // Serialising a map of JSON values into a Vec cannot fail.
            return serde_json::to_vec(&item).unwrap_or_default();
        }
        let (identifiers, anonymous_id) = match &self.subject {
            Subject::Person { kind, value } => (Some((kind.as_str(), value.as_str())), None),
            Subject::Anonymous(a) => (None, Some(a.as_str())),
            // Object subjects are encoded by `object_or_extra_item`.
            Subject::Object { .. } | Subject::CioObject(_) => (None, None),
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
        // Serialising maps of JSON values into a Vec cannot fail. Sized for a typical item
        // so the buffer does not grow four times on the way.
        let mut out = Vec::with_capacity(256);
        match serde_json::to_writer(&mut out, &item) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

impl Operation {
    /// `identifiers` of the subject as v2 JSON.
    fn identifiers_json(&self) -> Value {
        let mut m = Map::new();
        match &self.subject {
            Subject::Person { kind, value } => {
                m.insert(kind.as_str().into(), Value::String(value.clone()));
            }
            Subject::Anonymous(a) => {
                m.insert("anonymous_id".into(), Value::String(a.clone()));
            }
            Subject::Object { type_id, id } => {
                m.insert("object_type_id".into(), Value::String(type_id.clone()));
                m.insert("object_id".into(), Value::String(id.clone()));
            }
            Subject::CioObject(c) => {
                m.insert("cio_object_id".into(), Value::String(c.clone()));
            }
        }
        Value::Object(m)
    }

    /// The v2 item of the operations the person fast path does not cover: object
    /// operations, relationships, devices and merges. `None` for the others.
    fn object_or_extra_item(&self) -> Option<Map<String, Value>> {
        let kind = match &self.subject {
            Subject::Object { .. } | Subject::CioObject(_) => "object",
            _ => "person",
        };
        let mut item = Map::new();
        item.insert("type".into(), Value::String(kind.into()));
        match &self.action {
            Action::Merge { secondary } => {
                // The only v2 action without `identifiers`: primary and secondary instead.
                item.insert("action".into(), "merge".into());
                item.insert("primary".into(), self.identifiers_json());
                item.insert("secondary".into(), person_json(secondary));
                return Some(item);
            }
            Action::ObjectIdentify { .. }
            | Action::ObjectDelete
            | Action::Relationship { .. }
            | Action::DeviceAdd { .. }
            | Action::DeviceDelete { .. } => {}
            _ => return None,
        }
        item.insert("identifiers".into(), self.identifiers_json());
        item.insert("action".into(), self.action_name().into());
        match &self.action {
            Action::ObjectIdentify { attributes } => {
                item.insert("attributes".into(), Value::Object(attributes.clone()));
            }
            Action::Relationship { .. } => {
                item.insert(
                    "cio_relationships".into(),
                    Value::Array(vec![self.relationship_entry().unwrap_or_default()]),
                );
            }
            Action::DeviceAdd {
                token,
                platform,
                last_used,
                attributes,
            } => {
                let mut device = Map::new();
                device.insert("token".into(), Value::String(token.clone()));
                device.insert("platform".into(), platform.as_str().into());
                if let Some(t) = last_used {
                    device.insert("last_used".into(), Value::from(*t));
                }
                if !attributes.is_empty() {
                    device.insert("attributes".into(), Value::Object(attributes.clone()));
                }
                item.insert("device".into(), Value::Object(device));
            }
            Action::DeviceDelete { token } => {
                let mut device = Map::new();
                device.insert("token".into(), Value::String(token.clone()));
                item.insert("device".into(), Value::Object(device));
            }
            _ => {}
        }
        Some(item)
    }

    /// One `cio_relationships` entry (`{"identifiers":{…person…}, "relationship_attributes"}`).
    fn relationship_entry(&self) -> Option<Value> {
        let Action::Relationship {
            person, attributes, ..
        } = &self.action
        else {
            return None;
        };
        let mut entry = Map::new();
        entry.insert("identifiers".into(), person_json(person));
        if !attributes.is_empty() {
            entry.insert(
                "relationship_attributes".into(),
                Value::Object(attributes.clone()),
            );
        }
        Some(Value::Object(entry))
    }

    /// Whether `other` can share one v2 item with `self`: the same relationship change of
    /// the same object.
    pub fn groups_with(&self, other: &Operation) -> bool {
        matches!(
            (&self.action, &other.action),
            (Action::Relationship { add: a, .. }, Action::Relationship { add: b, .. }) if a == b
        ) && self.subject == other.subject
    }
}

/// One object-side item holding the relationships of every operation in `ops` (all of them
/// relationship changes of one object, as [`Operation::groups_with`] says); `None` if they
/// are not.
pub fn encode_relationship_group(ops: &[&Operation]) -> Option<Vec<u8>> {
    let first = ops.first()?;
    if !ops.iter().all(|op| first.groups_with(op)) {
        return None;
    }
    let mut item = first.object_or_extra_item()?;
    let entries = ops
        .iter()
        .map(|op| op.relationship_entry())
        .collect::<Option<Vec<_>>>()?;
    item.insert("cio_relationships".into(), Value::Array(entries));
    serde_json::to_vec(&item).ok()
}

fn person_json(p: &PersonRef) -> Value {
    let mut m = Map::new();
    m.insert(p.kind.as_str().into(), Value::String(p.value.clone()));
    Value::Object(m)
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
