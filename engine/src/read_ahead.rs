//! What a consume's disk read brought in beyond its answer: the whole batches that followed,
//! kept (one stretch per partition) so that the group's next consume of them is answered from
//! memory. Consumers draining a backlog take turns on a partition; without this each of them
//! waited for a disk read of its own.

use crate::tail::copy_batches;

/// Whole batches read from disk beyond a read's answer, holding the offsets `[from, next)`.
pub struct ReadAhead {
    from: u64,
    next: u64,
    /// Verified when read: walked by length.
    data: Vec<u8>,
}

impl ReadAhead {
    /// Batches `data` holding offsets `[from, next)`.
    pub fn new(from: u64, next: u64, data: Vec<u8>) -> Self {
        assert!(from < next, "a stretch holds at least one offset");
        Self { from, next, data }
    }

    /// Copies whole batches holding offsets from `from` on into `out`, up to `max_bytes` (at
    /// least one batch). `None` when `from` is not in the stretch; else one past the last
    /// offset copied, and whether that was the stretch's end.
    pub fn read(&self, from: u64, max_bytes: usize, out: &mut Vec<u8>) -> Option<(u64, bool)> {
        if from < self.from || from >= self.next {
            return None;
        }
        let mut next = from;
        copy_batches(&self.data, from, max_bytes, out, &mut next);
        (next > from).then_some((next, next >= self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_format::batch::{set_base_offset, BatchBuilder};

    fn batch_at(base: u64, records: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(0);
        for _ in 0..records {
            b.push(None, &[1; 100], &[]);
        }
        let mut bytes = b.build();
        set_base_offset(&mut bytes, base);
        bytes
    }

    #[test]
    fn answers_the_offsets_it_holds_in_whole_batches_within_the_budget() {
        let (a, b, c) = (batch_at(10, 2), batch_at(12, 2), batch_at(14, 2));
        let data = [a.clone(), b.clone(), c.clone()].concat();
        let ahead = ReadAhead::new(10, 16, data);
        let mut out = Vec::new();
        assert_eq!(ahead.read(9, 1 << 20, &mut out), None, "before the stretch");
        assert_eq!(ahead.read(16, 1 << 20, &mut out), None, "after the stretch");
        assert_eq!(ahead.read(13, a.len(), &mut out), Some((14, false)));
        assert_eq!(out, b, "the batch holding 13, and no more than the budget");
        out.clear();
        assert_eq!(ahead.read(13, 1 << 20, &mut out), Some((16, true)));
        assert_eq!(out, [b, c].concat());
        out.clear();
        assert_eq!(
            ahead.read(10, 1, &mut out),
            Some((12, false)),
            "at least one batch"
        );
        assert_eq!(out, a);
    }
}
