//! Identity keys: which row an operation is about, as one string (`id:…`, `email:…`,
//! `cio_id:…`, `phone:…`, `object:<type>:<id>`, `rel:<type>:<id>:<person>`, `event:<id>`),
//! and parsing one back.
//!
//! Owns: the key format (parts percent-escaped, so keys parse back). Dead letters are keyed by
//! it, change detection stores fingerprints under it and mirror mode turns vanished keys back
//! into removals. Must not: hash, or know what is stored under a key (`change/`, `state/`).

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::{Action, Operation, PersonRef, Subject};
use crate::config::IdentifierKind;

/// `:` separates the parts of a key; `%` escapes. Both are escaped inside a part.
const PART: &AsciiSet = &CONTROLS.add(b':').add(b'%');

/// The identity of any operation, for keying its dead letter: events by their id
/// (`event:<id>`), relationships by their pair, the rest by their subject.
pub fn identity(op: &Operation) -> Option<String> {
    match &op.action {
        Action::Event { id, .. } => Some(format!("event:{}", part(id))),
        Action::Relationship { person, .. } => relationship_key(&op.subject, person),
        _ => subject_key(&op.subject),
    }
}

/// The key of a person or object subject.
pub fn subject_key(subject: &Subject) -> Option<String> {
    match subject {
        Subject::Person { kind, value } => Some(format!("{}:{}", kind.as_str(), part(value))),
        Subject::Object { type_id, id } => Some(format!("object:{}:{}", part(type_id), part(id))),
        Subject::Anonymous(_) | Subject::CioObject(_) => None,
    }
}

/// The key of an object ↔ person pair.
pub fn relationship_key(object: &Subject, person: &PersonRef) -> Option<String> {
    let Subject::Object { type_id, id } = object else {
        return None;
    };
    Some(format!(
        "rel:{}:{}:{}:{}",
        part(type_id),
        part(id),
        person.kind.as_str(),
        part(&person.value)
    ))
}

/// What a stored key names.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyParts {
    Subject(Subject),
    Relationship { object: Subject, person: PersonRef },
}

/// Parses a key back (mirror mode turns vanished keys into removals); `None` for a key this
/// version did not write.
pub fn parse_key(key: &str) -> Option<KeyParts> {
    let parts: Vec<String> = key.split(':').map(unpart).collect::<Option<_>>()?;
    match parts.as_slice() {
        [kind, value] => Some(KeyParts::Subject(Subject::Person {
            kind: kind_from(kind)?,
            value: value.clone(),
        })),
        [o, type_id, id] if o == "object" => Some(KeyParts::Subject(Subject::Object {
            type_id: type_id.clone(),
            id: id.clone(),
        })),
        [r, type_id, id, kind, value] if r == "rel" => Some(KeyParts::Relationship {
            object: Subject::Object {
                type_id: type_id.clone(),
                id: id.clone(),
            },
            person: PersonRef {
                kind: kind_from(kind)?,
                value: value.clone(),
            },
        }),
        _ => None,
    }
}

fn kind_from(s: &str) -> Option<IdentifierKind> {
    Some(match s {
        "id" => IdentifierKind::Id,
        "email" => IdentifierKind::Email,
        "cio_id" => IdentifierKind::CioId,
        "phone" => IdentifierKind::Phone,
        _ => return None,
    })
}

fn part(s: &str) -> String {
    utf8_percent_encode(s, PART).to_string()
}

fn unpart(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}
