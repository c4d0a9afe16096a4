//! Mapping: one source row → one Customer.io operation, or the reason it cannot be sent.
//!
//! Owns: resolving the job's column names against the source's header, building each
//! operation, and checking every Customer.io limit before anything is sent (identifier and
//! attribute sizes, attribute count, event name, item size; object ids, object and
//! relationship attribute totals, device platforms, merge sides). Pure: no I/O, no panics; a bad
//! row yields a [`RowRejected`] reason and the run goes on.

pub mod convert;
pub mod event_id;
pub mod identity;
pub mod operation;

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value as J};

use crate::config::{
    AddOrDelete, DeleteAction, EmptyPolicy, EventType, ObjectAction, ObjectIdentSpec, Platform,
    PlatformSpec, SegmentAction, ValueType,
};
use crate::config::{
    EventName, EventSubject, FieldMapping, FieldSet, FieldSource, IdentifierSpec, MappingSpec,
    TimestampColumn,
};
use crate::source::Value;
use convert::TimeFormat;
pub use operation::{Action, Operation, PersonRef, Subject, encode_relationship_group};

/// Customer.io's documented limits (bytes are UTF-8 bytes; "KB" read as 1000 bytes).
pub mod limits {
    pub const ID_BYTES: usize = 150;
    pub const ATTRIBUTE_NAME_BYTES: usize = 150;
    pub const ATTRIBUTE_VALUE_BYTES: usize = 1000;
    pub const ATTRIBUTES: usize = 300;
    pub const EVENT_NAME_BYTES: usize = 100;
    pub const EVENT_DATA_BYTES: usize = 100_000;
    pub const ITEM_BYTES: usize = 32_000;
    /// "Max size of all attributes associated with an object or relationship" (100 KB).
    pub const OBJECT_ATTRIBUTES_BYTES: usize = 100_000;
}

/// Attribute names Customer.io reserves on objects.
const RESERVED_OBJECT_ATTRIBUTES: [&str; 4] =
    ["cio_object_id", "object_id", "objectId", "relationship"];

/// Why a row cannot be sent: shown to the user and kept in the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RowRejected(pub String);

/// A job's mapping that references a column the source does not have.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the job uses column `{column}` (in `{key}`), but the source has no such column; it has: {available}"
)]
pub struct UnknownColumn {
    pub column: String,
    pub key: String,
    pub available: String,
}

/// A mapped row: the operation and its v2 encoding (measured once, reused by the batcher).
#[derive(Debug, Clone)]
pub struct Mapped {
    pub op: Operation,
    pub encoded: Vec<u8>,
}

/// The job's mapping bound to a source's columns.
pub struct Mapper {
    job: String,
    columns: Vec<String>,
    plan: Plan,
}

struct Field {
    name: String,
    source: Src,
    as_type: ValueType,
    time: TimeFormat,
    empty: EmptyPolicy,
}

enum Src {
    Col(usize),
    Const(J),
}

struct Ts {
    col: usize,
    time: TimeFormat,
}

enum Fields {
    Explicit(Vec<Field>),
    /// Every column not used elsewhere, in header order.
    Rest {
        cols: Vec<usize>,
        empty: EmptyPolicy,
    },
}

struct Ident {
    kind: crate::config::IdentifierKind,
    col: usize,
}

enum Plan {
    Identify {
        ident: Ident,
        fields: Fields,
        ts: Option<Ts>,
        update_only: bool,
    },
    Track {
        who: Who,
        name: Name,
        kind: EventType,
        ts: Option<Ts>,
        key: Vec<usize>,
        fields: Fields,
    },
    Delete {
        ident: Ident,
        action: DeleteAction,
    },
    Segment {
        ident: Ident,
        segment_id: i64,
        action: SegmentAction,
    },
    Object {
        object: ObjectCol,
        fields: Fields,
        action: ObjectAction,
    },
    Relationship {
        type_id: String,
        object_col: usize,
        person: Ident,
        fields: Fields,
        action: AddOrDelete,
    },
    Device {
        ident: Ident,
        token: usize,
        platform: Option<PlatformSrc>,
        last_used: Option<Ts>,
        fields: Fields,
        action: AddOrDelete,
    },
    Merge {
        primary: Ident,
        secondary: Ident,
    },
}

enum ObjectCol {
    Typed { type_id: String, col: usize },
    Cio(usize),
}

enum PlatformSrc {
    Fixed(Platform),
    Col(usize),
}

enum Who {
    Person(Ident),
    Anonymous(usize),
}

enum Name {
    Fixed(String),
    Col(usize),
}

impl Mapper {
    pub fn new(job: &str, spec: &MappingSpec, columns: &[String]) -> Result<Mapper, UnknownColumn> {
        let index: HashMap<&str, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let col = |name: &str, key: &str| -> Result<usize, UnknownColumn> {
            index.get(name).copied().ok_or_else(|| UnknownColumn {
                column: name.to_string(),
                key: key.to_string(),
                available: columns.join(", "),
            })
        };
        let ident = |s: &IdentifierSpec, key: &str| -> Result<Ident, UnknownColumn> {
            Ok(Ident {
                kind: s.kind.clone(),
                col: col(&s.column, key)?,
            })
        };
        let ts = |t: &Option<TimestampColumn>, key: &str| -> Result<Option<Ts>, UnknownColumn> {
            t.as_ref()
                .map(|t| {
                    Ok(Ts {
                        col: col(&t.column, key)?,
                        time: TimeFormat::new(t.format.clone(), t.timezone),
                    })
                })
                .transpose()
        };
        let fields = |set: &FieldSet, key: &str, used: &[usize]| -> Result<Fields, UnknownColumn> {
            match set {
                FieldSet::AllOtherColumns { empty } => Ok(Fields::Rest {
                    cols: (0..columns.len()).filter(|i| !used.contains(i)).collect(),
                    empty: *empty,
                }),
                FieldSet::Explicit(list) => list
                    .iter()
                    .map(|f: &FieldMapping| {
                        Ok(Field {
                            name: f.name.clone(),
                            source: match &f.source {
                                FieldSource::Column(c) => {
                                    Src::Col(col(c, &format!("{key}.{}", f.name))?)
                                }
                                FieldSource::Constant(v) => Src::Const(v.clone()),
                            },
                            as_type: f.as_type,
                            time: TimeFormat::new(f.format.clone(), f.timezone),
                            empty: f.empty,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Fields::Explicit),
            }
        };
        let plan = match spec {
            MappingSpec::Identify {
                identifier,
                attributes,
                timestamp,
                update_only,
            } => {
                let ident = ident(identifier, "identify.identifier")?;
                let ts = ts(timestamp, "identify.timestamp")?;
                let mut used = vec![ident.col];
                used.extend(ts.as_ref().map(|t| t.col));
                Plan::Identify {
                    fields: fields(attributes, "identify.attributes", &used)?,
                    ident,
                    ts,
                    update_only: *update_only,
                }
            }
            MappingSpec::Track {
                who,
                name,
                event_type,
                timestamp,
                key_columns,
                data,
            } => {
                let who = match who {
                    EventSubject::Person(s) => Who::Person(ident(s, "track.identifier")?),
                    EventSubject::Anonymous { column } => {
                        Who::Anonymous(col(column, "track.anonymous_id")?)
                    }
                };
                let name = match name {
                    EventName::Fixed(n) => Name::Fixed(n.clone()),
                    EventName::Column(c) => Name::Col(col(c, "track.name.column")?),
                };
                let ts = ts(timestamp, "track.timestamp")?;
                let key = key_columns
                    .iter()
                    .map(|c| col(c, "track.event_id"))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut used: Vec<usize> = key.clone();
                used.push(match &who {
                    Who::Person(i) => i.col,
                    Who::Anonymous(c) => *c,
                });
                used.extend(ts.as_ref().map(|t| t.col));
                if let Name::Col(c) = &name {
                    used.push(*c);
                }
                Plan::Track {
                    fields: fields(data, "track.data", &used)?,
                    who,
                    name,
                    kind: *event_type,
                    ts,
                    key,
                }
            }
            MappingSpec::Delete { identifier, action } => Plan::Delete {
                ident: ident(identifier, "delete.identifier")?,
                action: *action,
            },
            MappingSpec::Segment {
                segment_id,
                identifier,
                action,
            } => Plan::Segment {
                ident: ident(identifier, "segment.identifier")?,
                segment_id: *segment_id,
                action: *action,
            },
            MappingSpec::Object {
                object,
                attributes,
                action,
            } => {
                let object = match object {
                    ObjectIdentSpec::Typed { type_id, column } => ObjectCol::Typed {
                        type_id: type_id.clone(),
                        col: col(column, "object.id")?,
                    },
                    ObjectIdentSpec::CioObjectId { column } => {
                        ObjectCol::Cio(col(column, "object.cio_object_id")?)
                    }
                };
                let used = [match &object {
                    ObjectCol::Typed { col, .. } | ObjectCol::Cio(col) => *col,
                }];
                Plan::Object {
                    fields: fields(attributes, "object.attributes", &used)?,
                    object,
                    action: *action,
                }
            }
            MappingSpec::Relationship {
                type_id,
                object_column,
                person,
                attributes,
                action,
            } => {
                let object_col = col(object_column, "relationship.object.id")?;
                let person = ident(person, "relationship.person")?;
                let used = [object_col, person.col];
                Plan::Relationship {
                    fields: fields(attributes, "relationship.attributes", &used)?,
                    type_id: type_id.clone(),
                    object_col,
                    person,
                    action: *action,
                }
            }
            MappingSpec::Device {
                identifier,
                token,
                platform,
                last_used,
                attributes,
                action,
            } => {
                let ident = ident(identifier, "device.identifier")?;
                let token = col(token, "device.token")?;
                let platform = match platform {
                    None => None,
                    Some(PlatformSpec::Fixed(p)) => Some(PlatformSrc::Fixed(*p)),
                    Some(PlatformSpec::Column(c)) => {
                        Some(PlatformSrc::Col(col(c, "device.platform")?))
                    }
                };
                let last_used = ts(last_used, "device.last_used")?;
                let mut used = vec![ident.col, token];
                if let Some(PlatformSrc::Col(c)) = &platform {
                    used.push(*c);
                }
                used.extend(last_used.as_ref().map(|t| t.col));
                Plan::Device {
                    fields: fields(attributes, "device.attributes", &used)?,
                    ident,
                    token,
                    platform,
                    last_used,
                    action: *action,
                }
            }
            MappingSpec::Merge { primary, secondary } => Plan::Merge {
                primary: ident(primary, "merge.primary")?,
                secondary: ident(secondary, "merge.secondary")?,
            },
        };
        Ok(Mapper {
            job: job.to_string(),
            columns: columns.to_vec(),
            plan,
        })
    }

    /// Maps one row (values in header order).
    pub fn map(&self, values: &[Value]) -> Result<Mapped, RowRejected> {
        let op = self.operation(values)?;
        let encoded = op.encode_v2();
        if encoded.len() > limits::ITEM_BYTES {
            return Err(RowRejected(format!(
                "the operation is {} bytes, over Customer.io's limit of {} bytes per item",
                encoded.len(),
                limits::ITEM_BYTES
            )));
        }
        Ok(Mapped { op, encoded })
    }

    /// The row's identity key (see `change/`), for keying its dead letter: from the mapped
    /// operation when there is one, else from the identifier columns alone (a row that failed
    /// another rule); `None` when not even those can be read (the row is then keyed by its
    /// source and line). Events are keyed by their id (`event:<id>`).
    pub fn identity(&self, values: &[Value], mapped: Option<&Mapped>) -> Option<String> {
        if let Some(m) = mapped {
            return identity::identity(&m.op);
        }
        match &self.plan {
            Plan::Identify { ident, .. }
            | Plan::Delete { ident, .. }
            | Plan::Segment { ident, .. }
            | Plan::Device { ident, .. } => self
                .subject(ident, values)
                .ok()
                .and_then(|s| identity::subject_key(&s)),
            Plan::Merge { primary, .. } => self
                .subject(primary, values)
                .ok()
                .and_then(|s| identity::subject_key(&s)),
            Plan::Object {
                object: ObjectCol::Typed { type_id, col },
                ..
            } => self
                .object_id(*col, values, "object id")
                .ok()
                .and_then(|id| {
                    identity::subject_key(&Subject::Object {
                        type_id: type_id.clone(),
                        id,
                    })
                }),
            Plan::Relationship {
                type_id,
                object_col,
                person,
                ..
            } => {
                let id = self.object_id(*object_col, values, "object id").ok()?;
                let person = self.person_ref(person, values).ok()?;
                let object = Subject::Object {
                    type_id: type_id.clone(),
                    id,
                };
                identity::relationship_key(&object, &person)
            }
            Plan::Object { .. } | Plan::Track { .. } => None,
        }
    }

    /// The row as a JSON object (column → value), for dead letters and dry runs.
    pub fn row_json(columns: &[String], values: &[Value]) -> J {
        J::Object(
            columns
                .iter()
                .cloned()
                .zip(values.iter().map(Value::to_json))
                .collect(),
        )
    }

    fn operation(&self, values: &[Value]) -> Result<Operation, RowRejected> {
        match &self.plan {
            Plan::Identify {
                ident,
                fields,
                ts,
                update_only,
            } => {
                let subject = self.subject(ident, values)?;
                let attributes = self.fields(fields, values)?;
                let timestamp = self.timestamp(ts, values)?;
                // Every key of the call counts, `_timestamp` and `_update` included.
                let extra = usize::from(*update_only) + usize::from(timestamp.is_some());
                check_attributes(&attributes, extra, "attributes")?;
                Ok(Operation {
                    subject,
                    action: Action::Identify {
                        attributes,
                        timestamp,
                        update_only: *update_only,
                    },
                })
            }
            Plan::Track {
                who,
                name,
                kind,
                ts,
                key,
                fields,
            } => {
                let subject = match who {
                    Who::Person(i) => self.subject(i, values)?,
                    Who::Anonymous(c) => {
                        Subject::Anonymous(self.required_text(*c, values, "anonymous id")?)
                    }
                };
                let name = match name {
                    Name::Fixed(n) => n.clone(),
                    Name::Col(c) => self
                        .required_text(*c, values, "event name")?
                        .trim()
                        .to_string(),
                };
                if name.trim().is_empty() || name.len() > limits::EVENT_NAME_BYTES {
                    return Err(RowRejected(format!(
                        "event name is {} bytes; Customer.io needs 1 to {} bytes",
                        name.len(),
                        limits::EVENT_NAME_BYTES
                    )));
                }
                let timestamp = self.timestamp(ts, values)?;
                let data = self.fields(fields, values)?;
                let data_size = J::Object(data.clone()).to_string().len();
                if data_size > limits::EVENT_DATA_BYTES {
                    return Err(RowRejected(format!(
                        "event data is {data_size} bytes, over Customer.io's limit of {}",
                        limits::EVENT_DATA_BYTES
                    )));
                }
                let row_key = self.row_key(key, values)?;
                let id = event_id::event_id(&self.job, &row_key, &name, timestamp);
                Ok(Operation {
                    subject,
                    action: Action::Event {
                        kind: *kind,
                        name,
                        id,
                        timestamp,
                        data,
                    },
                })
            }
            Plan::Delete { ident, action } => Ok(Operation {
                subject: self.subject(ident, values)?,
                action: match action {
                    DeleteAction::Delete => Action::Delete,
                    DeleteAction::Suppress => Action::Suppress,
                    DeleteAction::Unsuppress => Action::Unsuppress,
                },
            }),
            Plan::Object {
                object,
                fields,
                action,
            } => {
                let subject = match object {
                    ObjectCol::Typed { type_id, col } => Subject::Object {
                        type_id: type_id.clone(),
                        id: self.object_id(*col, values, "object id")?,
                    },
                    ObjectCol::Cio(col) => {
                        Subject::CioObject(self.object_id(*col, values, "cio_object_id")?)
                    }
                };
                let action = match action {
                    ObjectAction::Delete => Action::ObjectDelete,
                    ObjectAction::Identify => {
                        let attributes = self.fields(fields, values)?;
                        if let Some(k) = attributes
                            .keys()
                            .find(|k| RESERVED_OBJECT_ATTRIBUTES.contains(&k.as_str()))
                        {
                            return Err(RowRejected(format!(
                                "attribute \"{k}\" is a name Customer.io reserves on objects (cio_object_id, object_id, objectId, relationship); rename it in `object.attributes`"
                            )));
                        }
                        check_object_attributes(&attributes, "object attributes")?;
                        Action::ObjectIdentify { attributes }
                    }
                };
                Ok(Operation { subject, action })
            }
            Plan::Relationship {
                type_id,
                object_col,
                person,
                fields,
                action,
            } => {
                let subject = Subject::Object {
                    type_id: type_id.clone(),
                    id: self.object_id(*object_col, values, "object id")?,
                };
                let attributes = self.fields(fields, values)?;
                check_object_attributes(&attributes, "relationship attributes")?;
                Ok(Operation {
                    subject,
                    action: Action::Relationship {
                        add: *action == AddOrDelete::Add,
                        person: self.person_ref(person, values)?,
                        attributes,
                    },
                })
            }
            Plan::Device {
                ident,
                token,
                platform,
                last_used,
                fields,
                action,
            } => {
                let subject = self.subject(ident, values)?;
                let token = self
                    .required_text(*token, values, "device token")?
                    .trim()
                    .to_string();
                let action = match action {
                    AddOrDelete::Delete => Action::DeviceDelete { token },
                    AddOrDelete::Add => {
                        let platform = match platform {
                            Some(PlatformSrc::Fixed(p)) => *p,
                            Some(PlatformSrc::Col(c)) => {
                                let text = self.required_text(*c, values, "device platform")?;
                                Platform::parse(&text).ok_or_else(|| {
                                    RowRejected(format!(
                                        "device platform column `{}` holds {text:?}; Customer.io accepts `ios` or `android`",
                                        self.column(*c)
                                    ))
                                })?
                            }
                            None => {
                                return Err(RowRejected(
                                    "adding a device needs a platform (`device.platform`)".into(),
                                ));
                            }
                        };
                        // An empty `last_used` is left out: Customer.io then uses the time
                        // of the request.
                        let last_used = match last_used {
                            Some(t) if !values.get(t.col).unwrap_or(&Value::Null).is_empty() => {
                                self.timestamp(last_used, values)?
                            }
                            _ => None,
                        };
                        let mut attributes = self.fields(fields, values)?;
                        if let Some(v) = attributes.get_mut("push_enabled") {
                            *v = push_enabled(v)?;
                        }
                        check_attributes(&attributes, 0, "device attributes")?;
                        Action::DeviceAdd {
                            token,
                            platform,
                            last_used,
                            attributes,
                        }
                    }
                };
                Ok(Operation { subject, action })
            }
            Plan::Merge { primary, secondary } => {
                let subject = self.subject(primary, values)?;
                let secondary = self.person_ref(secondary, values)?;
                if let Subject::Person { kind, value } = &subject
                    && *kind == secondary.kind
                    && *value == secondary.value
                {
                    return Err(RowRejected(format!(
                        "primary and secondary are the same person ({} {value:?}); a merge needs two different people",
                        kind.as_str()
                    )));
                }
                Ok(Operation {
                    subject,
                    action: Action::Merge { secondary },
                })
            }
            Plan::Segment {
                ident,
                segment_id,
                action,
            } => Ok(Operation {
                subject: self.subject(ident, values)?,
                action: match action {
                    SegmentAction::Add => Action::SegmentAdd {
                        segment_id: *segment_id,
                    },
                    SegmentAction::Remove => Action::SegmentRemove {
                        segment_id: *segment_id,
                    },
                },
            }),
        }
    }

    fn column(&self, c: usize) -> &str {
        self.columns.get(c).map(String::as_str).unwrap_or("?")
    }

    fn required_text(&self, c: usize, values: &[Value], what: &str) -> Result<String, RowRejected> {
        self.required_str(c, values, what).map(Cow::into_owned)
    }

    /// [`required_text`](Self::required_text), borrowed when the value is text.
    fn required_str<'v>(
        &self,
        c: usize,
        values: &'v [Value],
        what: &str,
    ) -> Result<Cow<'v, str>, RowRejected> {
        match values.get(c).and_then(Value::text) {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(RowRejected(format!(
                "{what} column `{}` is empty",
                self.column(c)
            ))),
        }
    }

    fn subject(&self, ident: &Ident, values: &[Value]) -> Result<Subject, RowRejected> {
        let value = self
            .required_str(ident.col, values, "identifier")?
            .trim()
            .to_string();
        if value.len() > limits::ID_BYTES {
            return Err(RowRejected(format!(
                "identifier `{}` is {} bytes, over Customer.io's limit of {}",
                self.column(ident.col),
                value.len(),
                limits::ID_BYTES
            )));
        }
        // The App API returns cio_ids bare; accept the v1 path form too.
        let value = match ident.kind {
            crate::config::IdentifierKind::CioId => {
                value.strip_prefix("cio_").unwrap_or(&value).to_string()
            }
            _ => value,
        };
        Ok(Subject::Person {
            kind: ident.kind.clone(),
            value,
        })
    }

    fn person_ref(&self, ident: &Ident, values: &[Value]) -> Result<PersonRef, RowRejected> {
        match self.subject(ident, values)? {
            Subject::Person { kind, value } => Ok(PersonRef { kind, value }),
            // `subject` builds only people.
            _ => Err(RowRejected("the person identifier is missing".into())),
        }
    }

    /// An object id (or cio_object_id): non-empty, trimmed, at most 150 bytes.
    fn object_id(&self, c: usize, values: &[Value], what: &str) -> Result<String, RowRejected> {
        let value = self.required_str(c, values, what)?.trim().to_string();
        if value.len() > limits::ID_BYTES {
            return Err(RowRejected(format!(
                "{what} column `{}` is {} bytes, over Customer.io's limit of {} for objects",
                self.column(c),
                value.len(),
                limits::ID_BYTES
            )));
        }
        Ok(value)
    }

    fn timestamp(&self, ts: &Option<Ts>, values: &[Value]) -> Result<Option<i64>, RowRejected> {
        let Some(ts) = ts else { return Ok(None) };
        let v = values.get(ts.col).unwrap_or(&Value::Null);
        if v.is_empty() {
            return Err(RowRejected(format!(
                "timestamp column `{}` is empty",
                self.column(ts.col)
            )));
        }
        convert::timestamp(v, &ts.time)
            .map(Some)
            .map_err(|e| RowRejected(format!("timestamp column `{}`: {e}", self.column(ts.col))))
    }

    fn row_key(&self, key: &[usize], values: &[Value]) -> Result<String, RowRejected> {
        let mut out = String::new();
        if key.is_empty() {
            // No key configured: the row's whole content identifies it, so an identical
            // replay dedupes and any change makes a new event.
            for (c, v) in self.columns.iter().zip(values) {
                out.push_str(c);
                out.push('\u{1f}');
                out.push_str(&v.text().unwrap_or_default());
                out.push('\u{1e}');
            }
            return Ok(out);
        }
        for (n, &c) in key.iter().enumerate() {
            let v = self.required_str(c, values, "event id")?;
            if n > 0 {
                out.push('\u{1f}');
            }
            out.push_str(&v);
        }
        Ok(out)
    }

    fn fields(&self, fields: &Fields, values: &[Value]) -> Result<Map<String, J>, RowRejected> {
        // Sized up front: growing the map row after row was a good part of its cost.
        let mut out = Map::with_capacity(match fields {
            Fields::Rest { cols, .. } => cols.len(),
            Fields::Explicit(list) => list.len(),
        });
        match fields {
            Fields::Rest { cols, empty } => {
                for &c in cols {
                    let v = values.get(c).unwrap_or(&Value::Null);
                    if v.is_empty() {
                        if *empty == EmptyPolicy::Null {
                            out.insert(self.column(c).to_string(), J::Null);
                        }
                        continue;
                    }
                    out.insert(self.column(c).to_string(), v.to_json());
                }
            }
            Fields::Explicit(list) => {
                for f in list {
                    let v = match &f.source {
                        Src::Const(j) => {
                            out.insert(f.name.clone(), j.clone());
                            continue;
                        }
                        Src::Col(c) => values.get(*c).unwrap_or(&Value::Null),
                    };
                    if v.is_empty() {
                        if f.empty == EmptyPolicy::Null {
                            out.insert(f.name.clone(), J::Null);
                        }
                        continue;
                    }
                    let j = convert::convert(v, f.as_type, &f.time).map_err(|e| {
                        let col = match &f.source {
                            Src::Col(c) => self.column(*c),
                            Src::Const(_) => "",
                        };
                        RowRejected(format!("attribute \"{}\" (column `{col}`): {e}", f.name))
                    })?;
                    out.insert(f.name.clone(), j);
                }
            }
        }
        Ok(out)
    }
}

/// The per-attribute limits (count with `extra` keys, name and value sizes), shared by
/// people, devices, objects and relationships.
fn check_attributes(
    attributes: &Map<String, J>,
    extra: usize,
    what: &str,
) -> Result<(), RowRejected> {
    let keys = attributes.len() + extra;
    if keys > limits::ATTRIBUTES {
        return Err(RowRejected(format!(
            "has {keys} {what}, over Customer.io's limit of {} per call",
            limits::ATTRIBUTES
        )));
    }
    for (k, v) in attributes {
        if k.len() > limits::ATTRIBUTE_NAME_BYTES {
            return Err(RowRejected(format!(
                "attribute name \"{k}\" is {} bytes, over Customer.io's limit of {}",
                k.len(),
                limits::ATTRIBUTE_NAME_BYTES
            )));
        }
        let size = match v {
            J::String(s) => s.len(),
            // Numbers and booleans are far below the limit; only nested JSON is measured.
            J::Null | J::Bool(_) | J::Number(_) => 0,
            other => json_len(other),
        };
        if size > limits::ATTRIBUTE_VALUE_BYTES {
            return Err(RowRejected(format!(
                "attribute \"{k}\" is {size} bytes, over Customer.io's limit of {} bytes",
                limits::ATTRIBUTE_VALUE_BYTES
            )));
        }
    }
    Ok(())
}

/// Bytes of `v` as compact JSON, counted without building the text.
fn json_len(v: &J) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Writing into a counter cannot fail.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

/// [`check_attributes`] plus the 100 KB total of an object's or relationship's attributes.
fn check_object_attributes(attributes: &Map<String, J>, what: &str) -> Result<(), RowRejected> {
    check_attributes(attributes, 0, what)?;
    let total = J::Object(attributes.clone()).to_string().len();
    if total > limits::OBJECT_ATTRIBUTES_BYTES {
        return Err(RowRejected(format!(
            "{what} are {total} bytes, over Customer.io's limit of {} per object or relationship",
            limits::OBJECT_ATTRIBUTES_BYTES
        )));
    }
    Ok(())
}

/// `push_enabled` as Customer.io expects it: the string `"true"` or `"false"`.
fn push_enabled(v: &J) -> Result<J, RowRejected> {
    let text = match v {
        J::Bool(b) => Some(*b),
        J::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        J::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "t" | "y" => Some(true),
            "false" | "0" | "no" | "f" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    };
    text.map(|b| J::String(b.to_string())).ok_or_else(|| {
        RowRejected(format!(
            "device attribute \"push_enabled\" is {v}; use true or false (sent as the string \"true\"/\"false\")"
        ))
    })
}

#[cfg(test)]
mod tests;
