//! One segment file of a partition: its place in the log and its sparse offset index.

use std::path::PathBuf;

use crate::io::FileId;

/// Distance in bytes between index entries of the segment being written: a lookup lands at
/// most this far before its batch.
pub const INDEX_INTERVAL_BYTES: u64 = 32 * 1024;
/// Most index entries a sealed segment keeps, so memory grows with the log only by 1/4096: 64
/// KiB per 256 MiB segment. A read of old data walks at most segment size / this (64 KiB) from
/// its entry; consumers draining a backlog read sealed segments all the time, so the walk must
/// stay small beside a read.
pub const SEALED_INDEX_ENTRIES_MAX: usize = 4096;

/// Maps the first offset of a batch to its byte position in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch.
    pub offset: u64,
    /// Byte position of the batch in the segment.
    pub pos: u64,
}

/// Where a read for an offset starts in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landing {
    /// Position of an indexed batch at or before the batch holding the offset.
    pub pos: u64,
    /// Most bytes that can lie between `pos` and the batch holding the offset.
    pub walk_bytes: u64,
}

/// An open segment.
#[derive(Debug)]
pub struct Segment {
    /// First offset the segment may hold; also its file name.
    pub base_offset: u64,
    /// Path of the file.
    pub path: PathBuf,
    /// The file, opened through the shard's disk.
    pub file: FileId,
    /// Where the next flush starts: everything before is durable (block aligned).
    pub durable_end: u64,
    /// One past the last durable offset in this segment.
    pub next_offset: u64,
    index: Vec<IndexEntry>,
}

impl Segment {
    /// A segment with the given durable contents.
    pub fn new(
        base_offset: u64,
        path: PathBuf,
        file: FileId,
        durable_end: u64,
        next_offset: u64,
        index: Vec<IndexEntry>,
    ) -> Self {
        Self {
            base_offset,
            path,
            file,
            durable_end,
            next_offset,
            index,
        }
    }

    /// Where to start reading to find `offset`: the last indexed batch at or before it.
    pub fn lookup(&self, offset: u64) -> Landing {
        let i = self.index.partition_point(|e| e.offset <= offset);
        let pos = i.checked_sub(1).map_or(0, |before| self.index[before].pos);
        // The batch holding `offset` starts before the next entry's batch (whose first offset
        // is past it), or before the durable end.
        let bound = self.index.get(i).map_or(self.durable_end, |next| next.pos);
        Landing {
            pos,
            walk_bytes: bound.saturating_sub(pos),
        }
    }

    /// Records that a batch starting at `offset` is at `pos`, keeping the index sparse.
    pub fn note_batch(&mut self, offset: u64, pos: u64) {
        let due = self
            .index
            .last()
            .is_none_or(|last| pos >= last.pos + INDEX_INTERVAL_BYTES);
        if due {
            self.index.push(IndexEntry { offset, pos });
        }
    }
}

impl Segment {
    /// Thins the index to at most [`SEALED_INDEX_ENTRIES_MAX`] evenly spread entries, once the
    /// segment is sealed and reads of it become rare.
    pub fn seal_index(&mut self) {
        let n = self.index.len();
        if n <= SEALED_INDEX_ENTRIES_MAX {
            return;
        }
        let keep_every = n.div_ceil(SEALED_INDEX_ENTRIES_MAX);
        let mut i = 0;
        self.index.retain(|_| {
            i += 1;
            (i - 1) % keep_every == 0
        });
        self.index.shrink_to_fit();
    }

    /// The sparse index, offsets ascending.
    pub fn index(&self) -> &[IndexEntry] {
        &self.index
    }

    /// Entries in the index.
    #[cfg(test)]
    pub fn index_len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_lands_on_or_before_the_batch() {
        let mut s = Segment::new(100, PathBuf::new(), FileId(0), 100_000, 100, Vec::new());
        for (offset, pos) in [(100, 0), (110, 20_000), (120, 40_000), (130, 80_000)] {
            s.note_batch(offset, pos);
        }
        assert_eq!(s.index.len(), 3, "20_000 is within the interval of 0");
        let at = |pos, walk_bytes| Landing { pos, walk_bytes };
        assert_eq!(s.lookup(100), at(0, 40_000));
        assert_eq!(s.lookup(119), at(0, 40_000));
        assert_eq!(s.lookup(125), at(40_000, 40_000));
        assert_eq!(
            s.lookup(10_000),
            at(80_000, 20_000),
            "up to the durable end"
        );
    }

    #[test]
    fn sealing_keeps_a_bounded_index_that_still_lands_before_each_batch() {
        let end = 10_000 * INDEX_INTERVAL_BYTES;
        let mut s = Segment::new(0, PathBuf::new(), FileId(0), end, 0, Vec::new());
        for i in 0..10_000u64 {
            s.note_batch(i * 10, i * INDEX_INTERVAL_BYTES);
        }
        s.seal_index();
        assert!(s.index_len() <= SEALED_INDEX_ENTRIES_MAX);
        assert_eq!(s.lookup(0).pos, 0);
        for offset in [5, 999, 54_321, 99_990] {
            let landing = s.lookup(offset);
            let batch = offset / 10 * INDEX_INTERVAL_BYTES;
            assert!(landing.pos <= batch, "lands at or before the batch");
            assert!(
                batch - landing.pos <= landing.walk_bytes,
                "the walk to the batch is within its bound"
            );
        }
    }
}
