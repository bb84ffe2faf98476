//! Reads that wait for data: a read from a partition's end that may wait is parked in the
//! partition until a flush makes more of it durable, or its deadline passes. It is shard
//! state, woken by the flush completion and by the shard's own clock (the deadline bounds the
//! shard's sleep on its ring): no thread of its own, no queue between threads.
//!
//! Bounded by the callers: each waiting read holds its share of the server's per-shard byte
//! budget until answered.

use std::time::Instant;

use crate::read::ReadResult;
use crate::ReadDone;

/// A read waiting at its partition's end.
pub struct ParkedRead {
    /// Offset asked for: the partition's end when it was parked.
    pub from: u64,
    /// Byte budget of the answer.
    pub max_bytes: usize,
    /// Answered with nothing once this passes.
    pub until: Instant,
    /// Where the answer goes.
    pub done: ReadDone,
}

impl ParkedRead {
    /// Answers with no data: nothing arrived in time (or the shard stops).
    pub fn answer_empty(self, high_watermark: u64) {
        (self.done)(Ok(ReadResult {
            data: Vec::new(),
            next_offset: self.from,
            high_watermark,
        }));
    }
}

/// The reads waiting at one partition's end.
#[derive(Default)]
pub struct WaitingReads {
    reads: Vec<ParkedRead>,
}

impl WaitingReads {
    /// Parks `read` until data arrives or its deadline.
    pub fn park(&mut self, read: ParkedRead) {
        self.reads.push(read);
    }

    /// Whether no read waits.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// The earliest deadline of the reads waiting.
    pub fn earliest(&self) -> Option<Instant> {
        self.reads.iter().map(|r| r.until).min()
    }

    /// Every read waiting (data arrived, or the partition goes).
    pub fn take_all(&mut self) -> Vec<ParkedRead> {
        std::mem::take(&mut self.reads)
    }

    /// The reads whose deadline is at or before `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<ParkedRead> {
        let (due, keep) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|r| r.until <= now);
        self.reads = keep;
        due
    }
}
