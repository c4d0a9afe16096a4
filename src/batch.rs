//! Batching: packs mapped operations into request-sized batches.
//!
//! Owns: the size arithmetic: a v2 batch closes before the next item would push the body past
//! `max_bytes` (checked before appending, envelope and commas included) or past `max_items`.
//! Must not: send anything or decide what a row becomes; it only groups what mapping produced.

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

/// The v2 request body for a batch.
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
}
