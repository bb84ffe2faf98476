//! The recent tail of a partition, kept in memory after its flush so consumers reading the
//! tail are served without touching the disk.

use std::collections::VecDeque;

use crate::aligned::AlignedBuf;
use crate::batch;

/// The batches of one completed flush.
pub struct Chunk {
    /// The flush buffer; `[0, data_len)` holds whole batches.
    pub buf: AlignedBuf,
    /// Bytes of batches at the start of `buf`.
    pub data_len: usize,
    /// First offset in the chunk.
    pub first_offset: u64,
}

/// Recent chunks within a byte budget (counted by buffer capacity, which is what they hold).
pub struct TailCache {
    chunks: VecDeque<Chunk>,
    held_bytes: usize,
    budget_bytes: usize,
}

impl TailCache {
    /// An empty cache holding at most `budget_bytes`.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            held_bytes: 0,
            budget_bytes,
        }
    }

    /// Adds the newest chunk; returns the buffers that no longer fit, for reuse.
    pub fn push(&mut self, chunk: Chunk, evicted: &mut Vec<AlignedBuf>) {
        if chunk.buf.capacity() > self.budget_bytes {
            self.clear(evicted);
            evicted.push(chunk.buf);
            return;
        }
        while self.held_bytes + chunk.buf.capacity() > self.budget_bytes {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.held_bytes -= old.buf.capacity();
            evicted.push(old.buf);
        }
        self.held_bytes += chunk.buf.capacity();
        self.chunks.push_back(chunk);
    }

    /// Drops everything (the partition's log changed under it).
    pub fn clear(&mut self, evicted: &mut Vec<AlignedBuf>) {
        evicted.extend(self.chunks.drain(..).map(|c| c.buf));
        self.held_bytes = 0;
    }

    /// Whether a chunk is held in the buffer starting at `ptr`.
    #[cfg(test)]
    pub fn holds_buffer(&self, ptr: *const u8) -> bool {
        self.chunks.iter().any(|c| c.buf.as_slice().as_ptr() == ptr)
    }

    /// True when every offset from `offset` on (up to the durable end) is in memory.
    pub fn covers(&self, offset: u64) -> bool {
        self.chunks
            .front()
            .is_some_and(|c| c.first_offset <= offset)
    }

    /// Copies whole batches holding offsets from `from` on into `out`, up to `max_bytes` (at
    /// least one batch); returns one past the last offset copied, or `from` if none.
    pub fn read(&self, from: u64, max_bytes: usize, out: &mut Vec<u8>) -> u64 {
        let mut next = from;
        let start = self
            .chunks
            .partition_point(|c| c.first_offset <= from)
            .saturating_sub(1);
        for chunk in self.chunks.iter().skip(start) {
            // These bytes were verified on append and never left memory.
            let batches = &chunk.buf.as_slice()[..chunk.data_len];
            if !copy_batches(batches, from, max_bytes, out, &mut next) {
                return next;
            }
        }
        next
    }
}

/// Copies the whole batches of `batches` (verified before, so walked by length) holding
/// offsets from `from` on into `out`, while `max_bytes` allows (at least one batch in `out`);
/// `next` becomes one past the last offset copied. False when the budget stopped it.
pub(crate) fn copy_batches(
    batches: &[u8],
    from: u64,
    max_bytes: usize,
    out: &mut Vec<u8>,
    next: &mut u64,
) -> bool {
    for view in batch::trusted_batches(batches) {
        if (view.last_offset() as u64) < from {
            continue;
        }
        if !out.is_empty() && out.len() + view.bytes().len() > max_bytes {
            return false;
        }
        out.extend_from_slice(view.bytes());
        *next = view.last_offset() as u64 + 1;
    }
    true
}
