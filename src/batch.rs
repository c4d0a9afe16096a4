//! Batching: packs mapped operations into request-sized batches.
//!
//! Owns: the size arithmetic: a v2 batch closes before the next item would push the body past
//! `max_bytes` (checked before appending, envelope and commas included) or past `max_items`.
//! It also decides which rows share one v2 item: relationship rows of the same object and
//! change go as one object-side item ([`wire_items`]), each grouped item under the 32 KB item
//! limit. Must not: send anything or decide what a row becomes; it only groups what mapping
//! produced.

use crate::mapping::Mapped;

/// `{"batch":[` + `]}`.
pub const ENVELOPE_BYTES: usize = 12;

/// One mapped operation waiting to be sent, with the source row it came from.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The row's sequence number in this run (for acknowledgement).
    pub seq: u64,
    pub line: u64,
    pub row_ref: String,
    /// The source row, kept so a row Customer.io refuses can be dead-lettered as it was read.
    pub values: Vec<crate::source::Value>,
    pub mapped: Mapped,
}

#[derive(Debug, Default)]
pub struct Batch {
    pub items: Vec<Pending>,
    /// Size of the v2 body these items make.
    pub bytes: usize,
}

pub struct Batcher {
    max_items: usize,
    max_bytes: usize,
    current: Batch,
}

impl Batcher {
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            max_items: max_items.max(1),
            max_bytes,
            current: Batch {
                items: Vec::new(),
                bytes: ENVELOPE_BYTES,
            },
        }
    }

    /// Adds an item; returns the batch that had to close to make room, if any.
    pub fn push(&mut self, item: Pending) -> Option<Batch> {
        let added = item.mapped.encoded.len() + usize::from(!self.current.items.is_empty());
        let full = !self.current.items.is_empty()
            && (self.current.items.len() >= self.max_items
                || self.current.bytes + added > self.max_bytes);
        let closed = if full { self.take() } else { None };
        let added = item.mapped.encoded.len() + usize::from(!self.current.items.is_empty());
        self.current.bytes += added;
        self.current.items.push(item);
        if self.current.items.len() >= self.max_items {
            return closed.or_else(|| self.take());
        }
        closed
    }

    /// The open batch, if it has anything in it.
    pub fn take(&mut self) -> Option<Batch> {
        if self.current.items.is_empty() {
            None
        } else {
            Some(std::mem::replace(
                &mut self.current,
                Batch {
                    items: Vec::new(),
                    bytes: ENVELOPE_BYTES,
                },
            ))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.current.items.is_empty()
    }
}

/// The rows of `batch` (indexes into `items`, only those in `live`, in order) that go as one
/// v2 item each: one row per item, except relationship rows of one object and one change,
/// which share an item while it stays under the item limit. A row of the same object with
/// the other change closes the group, so the order of changes to one object is kept.
pub fn wire_items(batch: &Batch, live: &[usize]) -> Vec<Vec<usize>> {
    let mut items: Vec<Vec<usize>> = Vec::with_capacity(live.len());
    // Upper bound of each grouped item's size: the sum of its rows' single-item sizes.
    let mut sizes: Vec<usize> = Vec::with_capacity(live.len());
    // Open group per object: (object subject of the first row, item index).
    let mut open: Vec<(usize, usize)> = Vec::new();
    for &row in live {
        let Some(p) = batch.items.get(row) else {
            continue;
        };
        let op = &p.mapped.op;
        let len = p.mapped.encoded.len();
        if !matches!(op.action, crate::mapping::Action::Relationship { .. }) {
            items.push(vec![row]);
            sizes.push(len);
            continue;
        }
        let same_object = open
            .iter()
            .position(|(first, _)| batch.items[*first].mapped.op.subject == op.subject);
        if let Some(slot) = same_object {
            let (first, item) = open[slot];
            if batch.items[first].mapped.op.groups_with(op)
                && sizes[item] + len <= crate::mapping::limits::ITEM_BYTES
            {
                items[item].push(row);
                sizes[item] += len;
                continue;
            }
            open.swap_remove(slot);
        }
        open.push((row, items.len()));
        items.push(vec![row]);
        sizes.push(len);
    }
    items
}

/// Which rows each item of a v2 body carries, in item order (an answer's `batch_index` →
/// rows). Flat, so a batch of thousands of one-row items costs two allocations, not one per
/// item.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WireItems {
    rows: Vec<usize>,
    /// End of each item's rows in `rows`.
    ends: Vec<usize>,
}

impl WireItems {
    fn with_capacity(n: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
            ends: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, rows: &[usize]) {
        self.rows.extend_from_slice(rows);
        self.ends.push(self.rows.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The rows of item `i`.
    pub fn get(&self, i: usize) -> Option<&[usize]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.rows.get(start..end)
    }
}

/// The v2 request body for the `live` rows of a batch, and which rows each of its items
/// carries (`batch_index` of an answer → rows).
pub fn v2_wire(batch: &Batch, live: &[usize]) -> (Vec<u8>, WireItems) {
    let mut body = Vec::with_capacity(batch.bytes);
    body.extend_from_slice(b"{\"batch\":[");
    let grouping = live.iter().any(|&r| {
        batch.items.get(r).is_some_and(|p| {
            matches!(
                p.mapped.op.action,
                crate::mapping::Action::Relationship { .. }
            )
        })
    });
    if !grouping {
        // One item per row (every job but relationships): the encoded rows, end to end.
        let mut items = WireItems::with_capacity(live.len());
        for &row in live {
            let Some(p) = batch.items.get(row) else {
                continue;
            };
            if !items.is_empty() {
                body.push(b',');
            }
            body.extend_from_slice(&p.mapped.encoded);
            items.push(&[row]);
        }
        body.extend_from_slice(b"]}");
        return (body, items);
    }
    let mut encoded: Vec<(Vec<usize>, Option<Vec<u8>>)> = Vec::new();
    for rows in wire_items(batch, live) {
        if rows.len() == 1 {
            encoded.push((rows, None));
            continue;
        }
        let ops: Vec<&crate::mapping::Operation> =
            rows.iter().map(|r| &batch.items[*r].mapped.op).collect();
        match crate::mapping::encode_relationship_group(&ops) {
            Some(grouped) => encoded.push((rows, Some(grouped))),
            // `wire_items` groups only rows that encode together; should that ever fail,
            // the rows still go, one item each.
            None => encoded.extend(rows.into_iter().map(|r| (vec![r], None))),
        }
    }
    let mut items = WireItems::with_capacity(live.len());
    for (i, (rows, grouped)) in encoded.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match &grouped {
            Some(g) => body.extend_from_slice(g),
            None => body.extend_from_slice(&batch.items[rows[0]].mapped.encoded),
        }
        items.push(&rows);
    }
    body.extend_from_slice(b"]}");
    (body, items)
}

/// The v2 request body for a batch, one item per row (what the size arithmetic measures).
#[cfg(test)]
pub fn v2_body(batch: &Batch) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.bytes);
    body.extend_from_slice(b"{\"batch\":[");
    for (i, p) in batch.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&p.mapped.encoded);
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentifierKind;
    use crate::mapping::{Action, Operation, Subject};

    fn item(seq: u64, size: usize) -> Pending {
        let op = Operation {
            subject: Subject::Person {
                kind: IdentifierKind::Id,
                value: seq.to_string(),
            },
            action: Action::Delete,
        };
        Pending {
            seq,
            line: seq,
            row_ref: String::new(),
            values: Vec::new(),
            mapped: Mapped {
                op,
                encoded: vec![b'x'; size],
            },
        }
    }

    #[test]
    fn closes_before_the_item_that_would_pass_the_byte_limit() {
        let mut b = Batcher::new(1000, 100);
        // 12 envelope + 40 + 1 + 40 = 93 fits; a third item (+41) would make 134.
        assert!(b.push(item(1, 40)).is_none());
        assert!(b.push(item(2, 40)).is_none());
        let closed = b.push(item(3, 40)).expect("closed");
        assert_eq!(
            closed.items.iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(v2_body(&closed).len(), closed.bytes);
        assert!(closed.bytes <= 100);
        let last = b.take().unwrap();
        assert_eq!(last.items.len(), 1);
        assert_eq!(v2_body(&last).len(), last.bytes);
    }

    fn relationship(seq: u64, object: &str, person: &str, add: bool) -> Pending {
        use crate::mapping::PersonRef;
        let op = Operation {
            subject: Subject::Object {
                type_id: "1".into(),
                id: object.into(),
            },
            action: Action::Relationship {
                add,
                person: PersonRef {
                    kind: IdentifierKind::Id,
                    value: person.into(),
                },
                attributes: Default::default(),
            },
        };
        let encoded = op.encode_v2();
        Pending {
            seq,
            line: seq,
            row_ref: String::new(),
            values: Vec::new(),
            mapped: Mapped { op, encoded },
        }
    }

    #[test]
    fn relationship_rows_of_one_object_share_an_item_without_reordering_its_changes() {
        let batch = Batch {
            items: vec![
                relationship(0, "acme", "1", true),
                item(1, 10),
                relationship(2, "globex", "2", true),
                relationship(3, "acme", "3", true),
                relationship(4, "acme", "1", false),
                relationship(5, "acme", "4", true),
            ],
            bytes: 0,
        };
        let all: Vec<usize> = (0..6).collect();
        // The delete of acme/1 closes acme's add group: the later add starts a new item
        // after it, so Customer.io sees add, delete, add in row order.
        assert_eq!(
            wire_items(&batch, &all),
            vec![vec![0, 3], vec![1], vec![2], vec![4], vec![5]]
        );
        let (body, items) = v2_wire(&batch, &[0, 2, 3]);
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items.get(0), items.get(1), items.get(2)),
            (Some(&[0, 3][..]), Some(&[2][..]), None)
        );
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body["batch"][0],
            serde_json::json!({"type":"object","identifiers":{"object_type_id":"1","object_id":"acme"},
                "action":"add_relationships","cio_relationships":[{"identifiers":{"id":"1"}},{"identifiers":{"id":"3"}}]})
        );
    }

    #[test]
    fn closes_at_the_item_count() {
        let mut b = Batcher::new(2, 480_000);
        assert!(b.push(item(1, 10)).is_none());
        assert_eq!(b.push(item(2, 10)).unwrap().items.len(), 2);
        assert!(b.is_empty());
    }

    #[test]
    fn real_bodies_stay_under_the_limit() {
        let mut b = Batcher::new(10_000, 480_000);
        let mut sizes = Vec::new();
        for i in 0..5000 {
            if let Some(batch) = b.push(item(i, 100 + (i as usize * 37) % 900)) {
                sizes.push(v2_body(&batch).len());
            }
        }
        assert!(
            sizes.iter().all(|&s| s <= 480_000 && s > 470_000),
            "{sizes:?}"
        );
    }

    /// An identify row as the benchmark's people export maps it (~180 bytes encoded).
    fn person(seq: u64) -> Pending {
        let mut attributes = serde_json::Map::new();
        attributes.insert("email".into(), format!("user{seq}@example.com").into());
        attributes.insert(
            "plan".into(),
            ["free", "pro", "team"][seq as usize % 3].into(),
        );
        attributes.insert("seats".into(), (seq % 50).into());
        attributes.insert("created_at".into(), (1_600_000_000 + seq).into());
        attributes.insert("company".into(), format!("Company {}", seq % 1000).into());
        let op = Operation {
            subject: Subject::Person {
                kind: IdentifierKind::Id,
                value: format!("u-{seq:08}"),
            },
            action: Action::Identify {
                attributes,
                timestamp: None,
                update_only: false,
            },
        };
        let encoded = op.encode_v2();
        Pending {
            seq,
            line: seq,
            row_ref: String::new(),
            values: Vec::new(),
            mapped: Mapped { op, encoded },
        }
    }

    #[test]
    fn with_the_default_limits_a_batch_of_real_identify_rows_closes_by_bytes_near_max_bytes() {
        let limits = crate::config::BatchLimits::default();
        let mut b = Batcher::new(limits.max_items, limits.max_bytes);
        let mut closed = Vec::new();
        for seq in 1..=20_000 {
            if let Some(batch) = b.push(person(seq)) {
                closed.push((batch.items.len(), v2_body(&batch).len(), batch.bytes));
            }
        }
        assert!(
            closed.len() >= 3,
            "20,000 rows of ~180 bytes make several batches: {closed:?}"
        );
        for (items, body, counted) in &closed {
            assert_eq!(body, counted, "the size arithmetic is the body's real size");
            assert!(
                *body <= limits.max_bytes && *body as f64 >= limits.max_bytes as f64 * 0.97,
                "a batch of {items} rows is {body} bytes: it should close within 3% of max_bytes ({}) rather than at an item count",
                limits.max_bytes
            );
        }
    }
}
