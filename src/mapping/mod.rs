//! Mapping: one source row → one Customer.io operation, or the reason it cannot be sent.
//!
//! Owns: resolving the job's column names against the source's header, building each
//! operation, and checking every Customer.io limit before anything is sent (identifier and
//! attribute sizes, attribute count, event name, item size). Pure: no I/O, no panics; a bad
//! row yields a [`RowRejected`] reason and the run goes on.

pub mod convert;
pub mod event_id;
pub mod operation;

use std::collections::HashMap;

use serde_json::{Map, Value as J};

use crate::config::{DeleteAction, EmptyPolicy, EventType, SegmentAction, ValueType};
use crate::config::{
    EventName, EventSubject, FieldMapping, FieldSet, FieldSource, IdentifierSpec, MappingSpec,
    TimestampColumn,
};
use crate::source::Value;
use convert::TimeFormat;
pub use operation::{Action, Operation, Subject};

/// Customer.io's documented limits (bytes are UTF-8 bytes; "KB" read as 1000 bytes).
pub mod limits {
    pub const ID_BYTES: usize = 150;
    pub const ATTRIBUTE_NAME_BYTES: usize = 150;
    pub const ATTRIBUTE_VALUE_BYTES: usize = 1000;
    pub const ATTRIBUTES: usize = 300;
    pub const EVENT_NAME_BYTES: usize = 100;
    pub const EVENT_DATA_BYTES: usize = 100_000;
    pub const ITEM_BYTES: usize = 32_000;
}

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
                let keys =
                    attributes.len() + usize::from(*update_only) + usize::from(timestamp.is_some());
                if keys > limits::ATTRIBUTES {
                    return Err(RowRejected(format!(
                        "has {keys} attributes, over Customer.io's limit of {} per call",
                        limits::ATTRIBUTES
                    )));
                }
                for (k, v) in &attributes {
                    if k.len() > limits::ATTRIBUTE_NAME_BYTES {
                        return Err(RowRejected(format!(
                            "attribute name \"{k}\" is {} bytes, over Customer.io's limit of {}",
                            k.len(),
                            limits::ATTRIBUTE_NAME_BYTES
                        )));
                    }
                    let size = match v {
                        J::String(s) => s.len(),
                        other => other.to_string().len(),
                    };
                    if size > limits::ATTRIBUTE_VALUE_BYTES {
                        return Err(RowRejected(format!(
                            "attribute \"{k}\" is {size} bytes, over Customer.io's limit of {} bytes",
                            limits::ATTRIBUTE_VALUE_BYTES
                        )));
                    }
                }
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
                },
            }),
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
        match values.get(c).and_then(Value::to_text) {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(RowRejected(format!(
                "{what} column `{}` is empty",
                self.column(c)
            ))),
        }
    }

    fn subject(&self, ident: &Ident, values: &[Value]) -> Result<Subject, RowRejected> {
        let value = self
            .required_text(ident.col, values, "identifier")?
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
                out.push_str(&v.to_text().unwrap_or_default());
                out.push('\u{1e}');
            }
            return Ok(out);
        }
        for (n, &c) in key.iter().enumerate() {
            let v = self.required_text(c, values, "event id")?;
            if n > 0 {
                out.push('\u{1f}');
            }
            out.push_str(&v);
        }
        Ok(out)
    }

    fn fields(&self, fields: &Fields, values: &[Value]) -> Result<Map<String, J>, RowRejected> {
        let mut out = Map::new();
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

#[cfg(test)]
mod tests;
