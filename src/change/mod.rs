//! Change detection: which rows, and which of their attributes, changed since Customer.io
//! last acknowledged them.
//!
//! Owns: the 64-bit
//! fingerprint of an operation's mapped attributes (never of its encoded bytes, which hold the
//! row's timestamp), the per-attribute hashes kept for `diff: attributes` (name hash → value
//! hash, packed; no values, so nothing secret is stored) and the decision for one row
//! ([`decide`]). Hashes are SipHash-1-3 with fixed keys over a canonical walk of the JSON
//! values, so they are the same across runs, machines and versions.
//! Identity keys are the mapping's (`mapping/identity.rs`), the policies are config's; both
//! are re-exported here for the pipeline.
//! Must not: do I/O (the state database keeps fingerprints: `state/fingerprints.rs`) or
//! decide when a fingerprint is written (only after Customer.io acknowledged the row, in the
//! commit that moves the checkpoint: the pipeline does that).

use std::hash::Hasher;

use serde_json::{Map, Value};
use siphasher::sip::SipHasher13;

pub use crate::config::{ChangePolicy, DiffPolicy, SendPolicy};
pub use crate::mapping::identity::{KeyParts, identity, parse_key, relationship_key, subject_key};
use crate::mapping::{Action, Operation};

/// Fixed keys: changing them makes every stored fingerprint differ (one full resend).
const KEY0: u64 = 0x6369_6f2d_7379_6e63; // "cio-sync"
const KEY1: u64 = 0x6669_6e67_6572_7031; // "fingerp1"

/// What was last acknowledged for one identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Hash of every attribute (names and values); 0 means "forgotten" (after `run --full`).
    pub whole: u64,
    /// (name hash, value hash) of each attribute, sorted by name hash.
    pub attributes: Vec<(u64, u64)>,
}

impl Fingerprint {
    /// The forgotten fingerprint: the identity is still known (for mirror mode) but every
    /// row of it is sent again.
    pub fn forgotten() -> Self {
        Self::default()
    }

    pub fn is_forgotten(&self) -> bool {
        self.whole == 0 && self.attributes.is_empty()
    }

    /// The attribute hashes as stored: 16 bytes per attribute, little-endian.
    pub fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.attributes.len() * 16);
        for (n, v) in &self.attributes {
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The attribute hashes from their stored form; a trailing partial entry (a damaged
    /// record) is dropped, which only makes the row look changed.
    pub fn unpack(whole: u64, packed: &[u8]) -> Self {
        let attributes = packed
            .chunks_exact(16)
            .map(|c| {
                let mut n = [0u8; 8];
                let mut v = [0u8; 8];
                n.copy_from_slice(&c[..8]);
                v.copy_from_slice(&c[8..]);
                (u64::from_le_bytes(n), u64::from_le_bytes(v))
            })
            .collect();
        Self { whole, attributes }
    }

    /// The fingerprint of a set of attributes.
    pub fn of(attributes: &Map<String, Value>) -> Self {
        let mut attrs: Vec<(u64, u64)> = attributes
            .iter()
            .map(|(k, v)| (hash_str(k), hash_value(v)))
            .collect();
        attrs.sort_unstable();
        let mut h = hasher();
        h.write_u64(attrs.len() as u64);
        for (n, v) in &attrs {
            h.write_u64(*n);
            h.write_u64(*v);
        }
        // 0 is reserved for "forgotten".
        let whole = h.finish().max(1);
        Self {
            whole,
            attributes: attrs,
        }
    }

    fn value_hash(&self, name_hash: u64) -> Option<u64> {
        self.attributes
            .binary_search_by_key(&name_hash, |(n, _)| *n)
            .ok()
            .map(|i| self.attributes[i].1)
    }
}

/// What one row becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Customer.io already has these attributes: settle without sending. `store` is set when
    /// the fingerprint differs yet nothing is left to send (an attribute left the row).
    Unchanged { store: Option<Fingerprint> },
    /// Send `op` (the whole row, or only its changed attributes), then store `fingerprint`.
    Send {
        op: Option<Operation>,
        fingerprint: Fingerprint,
    },
}

/// The identity of an operation change detection and mirror mode know about, and the
/// attributes its fingerprint covers; `None` for operations that are not tracked (events,
/// deletes, devices, merges, removals).
pub fn tracked(op: &Operation) -> Option<(String, Option<&Map<String, Value>>)> {
    let key = match &op.action {
        Action::Identify { .. } | Action::ObjectIdentify { .. } | Action::SegmentAdd { .. } => {
            subject_key(&op.subject)?
        }
        Action::Relationship {
            add: true, person, ..
        } => relationship_key(&op.subject, person)?,
        _ => return None,
    };
    Some((key, tracked_attributes(op)))
}

/// The attributes a tracked operation's fingerprint covers (without building its key).
pub fn tracked_attributes(op: &Operation) -> Option<&Map<String, Value>> {
    match &op.action {
        Action::Identify { attributes, .. }
        | Action::ObjectIdentify { attributes }
        | Action::Relationship {
            add: true,
            attributes,
            ..
        } => Some(attributes),
        _ => None,
    }
}

/// What the state database knows of a row's identity, as far as deciding needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Known<'a> {
    /// Never acknowledged, or forgotten (`run --full`): the whole row is sent.
    New,
    /// Stored with exactly the row's fingerprint.
    Same,
    /// Stored with another fingerprint: these attribute hashes.
    Differs(&'a Fingerprint),
}

/// Decides what a tracked row sends, given its fingerprint now (`now`, of `attributes`) and
/// what was last acknowledged (`known`).
pub fn decide(
    op: &Operation,
    attributes: Option<&Map<String, Value>>,
    now: Fingerprint,
    known: Known<'_>,
    policy: ChangePolicy,
) -> Decision {
    let known = match known {
        Known::Differs(k) if k.is_forgotten() => Known::New,
        Known::Differs(k) if k.whole == now.whole => Known::Same,
        k => k,
    };
    let known = match (known, policy.send) {
        (Known::New, _) | (_, SendPolicy::All) => {
            return Decision::Send {
                op: None,
                fingerprint: now,
            };
        }
        (Known::Same, _) => return Decision::Unchanged { store: None },
        (Known::Differs(k), _) => k,
    };
    let diffable = matches!(
        op.action,
        Action::Identify { .. } | Action::ObjectIdentify { .. }
    );
    if policy.diff == DiffPolicy::Row || !diffable {
        return Decision::Send {
            op: None,
            fingerprint: now,
        };
    }
    // `now` holds each attribute's (name hash, value hash): no second hashing pass.
    let changed: Map<String, Value> = attributes
        .into_iter()
        .flatten()
        .filter(|(k, _)| {
            let name = hash_str(k);
            now.value_hash(name) != known.value_hash(name)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if changed.is_empty() {
        return Decision::Unchanged { store: Some(now) };
    }
    let mut op = op.clone();
    match &mut op.action {
        Action::Identify { attributes, .. } | Action::ObjectIdentify { attributes } => {
            *attributes = changed;
        }
        _ => {}
    }
    Decision::Send {
        op: Some(op),
        fingerprint: now,
    }
}

/// A 64-bit hash of an identity key, for sets of identities seen in one run.
pub fn key_hash(key: &str) -> u64 {
    hash_str(key)
}

fn hasher() -> SipHasher13 {
    SipHasher13::new_with_keys(KEY0, KEY1)
}

fn hash_str(s: &str) -> u64 {
    let mut h = hasher();
    h.write(s.as_bytes());
    h.write_u8(0xff);
    h.finish()
}

fn hash_value(v: &Value) -> u64 {
    let mut h = hasher();
    walk(&mut h, v);
    h.finish()
}

/// A canonical walk: a type tag, then the content; object keys in sorted order so the
/// order a source produced them in does not matter.
fn walk(h: &mut SipHasher13, v: &Value) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => {
            h.write_u8(1);
            h.write_u8(u8::from(*b));
        }
        Value::Number(n) => {
            h.write_u8(2);
            h.write(n.to_string().as_bytes());
            h.write_u8(0xff);
        }
        Value::String(s) => {
            h.write_u8(3);
            h.write_u64(s.len() as u64);
            h.write(s.as_bytes());
        }
        Value::Array(a) => {
            h.write_u8(4);
            h.write_u64(a.len() as u64);
            for x in a {
                walk(h, x);
            }
        }
        Value::Object(m) => {
            h.write_u8(5);
            h.write_u64(m.len() as u64);
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            for k in keys {
                h.write_u64(k.len() as u64);
                h.write(k.as_bytes());
                if let Some(x) = m.get(k) {
                    walk(h, x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentifierKind;
    use crate::mapping::{PersonRef, Subject};
    use serde_json::json;

    fn person(attrs: Value) -> Operation {
        Operation {
            subject: Subject::Person {
                kind: IdentifierKind::Id,
                value: "42".into(),
            },
            action: Action::Identify {
                attributes: attrs.as_object().cloned().unwrap_or_default(),
                timestamp: Some(1),
                update_only: false,
            },
        }
    }

    fn attrs(op: &Operation) -> Option<&Map<String, Value>> {
        tracked(op).and_then(|(_, a)| a)
    }

    /// `decide` as the filter calls it, from what the database would answer.
    fn decide_known(op: &Operation, known: Option<&Fingerprint>, policy: ChangePolicy) -> Decision {
        let now = Fingerprint::of(attrs(op).unwrap());
        let known = match known {
            None => Known::New,
            Some(k) if k.whole == now.whole => Known::Same,
            Some(k) => Known::Differs(k),
        };
        decide(op, attrs(op), now, known, policy)
    }

    #[test]
    fn fingerprints_are_stable_across_versions_and_attribute_order() {
        let a = Fingerprint::of(json!({"plan": "pro", "n": 1}).as_object().unwrap());
        let b = Fingerprint::of(json!({"n": 1, "plan": "pro"}).as_object().unwrap());
        assert_eq!(a, b);
        // Pinned: a change of algorithm or keys would resend every row once; make it on purpose.
        assert_eq!(
            hash_str("plan"),
            0x55ea_63e6_951c_9fe4,
            "{:#x}",
            hash_str("plan")
        );
        assert_eq!(Fingerprint::unpack(a.whole, &a.pack()), a);
    }

    #[test]
    fn an_unchanged_row_sends_nothing_and_a_changed_one_only_its_changed_attributes() {
        let old = person(json!({"plan": "pro", "n": 1, "city": "Oslo"}));
        let known = Fingerprint::of(attrs(&old).unwrap());
        let same = person(json!({"city": "Oslo", "plan": "pro", "n": 1}));
        assert_eq!(
            decide_known(&same, Some(&known), ChangePolicy::default()),
            Decision::Unchanged { store: None }
        );
        let changed = person(json!({"plan": "team", "n": 1, "city": "Oslo"}));
        let Decision::Send { op: Some(op), .. } =
            decide_known(&changed, Some(&known), ChangePolicy::default())
        else {
            panic!("a changed row is sent with only its changed attributes");
        };
        assert_eq!(op, person(json!({"plan": "team"})));
        let row = ChangePolicy {
            diff: DiffPolicy::Row,
            ..Default::default()
        };
        assert!(matches!(
            decide_known(&changed, Some(&known), row),
            Decision::Send { op: None, .. }
        ));
        let all = ChangePolicy {
            send: SendPolicy::All,
            ..Default::default()
        };
        assert!(matches!(
            decide_known(&same, Some(&known), all),
            Decision::Send { op: None, .. }
        ));
        assert!(matches!(
            decide_known(
                &same,
                Some(&Fingerprint::forgotten()),
                ChangePolicy::default()
            ),
            Decision::Send { op: None, .. }
        ));
    }

    #[test]
    fn keys_parse_back_to_what_they_name_even_with_colons_in_values() {
        let s = Subject::Person {
            kind: IdentifierKind::Email,
            value: "a:b%c@x.io".into(),
        };
        let k = subject_key(&s).unwrap();
        assert_eq!(k, "email:a%3Ab%25c@x.io");
        assert_eq!(parse_key(&k), Some(KeyParts::Subject(s)));
        let o = Subject::Object {
            type_id: "1".into(),
            id: "acme:eu".into(),
        };
        let p = PersonRef {
            kind: IdentifierKind::Id,
            value: "7".into(),
        };
        let k = relationship_key(&o, &p).unwrap();
        assert_eq!(k, "rel:1:acme%3Aeu:id:7");
        assert_eq!(
            parse_key(&k),
            Some(KeyParts::Relationship {
                object: o.clone(),
                person: p
            })
        );
        assert_eq!(
            parse_key(&subject_key(&o).unwrap()),
            Some(KeyParts::Subject(o))
        );
        assert_eq!(parse_key("event:01H"), None);
    }
}
