//! The per-batch stage: the slot between a batch closing and its being sent.
//!
//! Owns: the [`BatchStage`] contract and its identity default. A stage such as change
//! filtering takes rows out of a batch before it is sent; the rows it takes out are settled
//! (they move the checkpoint) without being sent or counted as delivered. Must not: send
//! anything or touch the state database itself.

use crate::batch::{Batch, Pending};

/// What a stage made of a closed batch.
#[derive(Debug)]
pub struct Staged {
    /// What to send; `None` when the stage took every row out.
    pub send: Option<Batch>,
    /// Rows settled without sending.
    pub skipped: Vec<Pending>,
}

/// Runs on every batch between close and send.
pub trait BatchStage: Send {
    fn stage(&mut self, batch: Batch) -> Staged;
}

/// Sends every batch as it closed: today's only stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendAll;

impl BatchStage for SendAll {
    fn stage(&mut self, batch: Batch) -> Staged {
        Staged {
            send: Some(batch),
            skipped: Vec::new(),
        }
    }
}
