//! One segment file of a partition: its place in the log and its sparse offset index.

use std::path::PathBuf;

use crate::io::FileId;

/// Distance in bytes between index entries of the segment being written: a lookup lands at
/// most this far before its batch.
pub const INDEX_INTERVAL_BYTES: u64 = 32 * 1024;
/// Most index entries a sealed segment keeps, so memory does not grow with the log: 4 KiB per
/// segment, and a read of old data walks at most segment size / this from its entry.
pub const SEALED_INDEX_ENTRIES_MAX: usize = 256;

/// Maps the first offset of a batch to its byte position in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch.
    pub offset: u64,
    /// Byte position of the batch in the segment.
    pub pos: u64,
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

    /// Position to start reading at to find `offset`: the last indexed batch at or before it.
    pub fn lookup(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|e| e.offset <= offset);
        if i == 0 {
            0
        } else {
            self.index[i - 1].pos
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
        let mut s = Segment::new(100, PathBuf::new(), FileId(0), 0, 100, Vec::new());
        for (offset, pos) in [(100, 0), (110, 20_000), (120, 40_000), (130, 80_000)] {
            s.note_batch(offset, pos);
        }
        assert_eq!(s.index.len(), 3, "20_000 is within the interval of 0");
        assert_eq!(s.lookup(100), 0);
        assert_eq!(s.lookup(119), 0);
        assert_eq!(s.lookup(125), 40_000);
        assert_eq!(s.lookup(10_000), 80_000);
    }

    #[test]
    fn sealing_keeps_a_bounded_index_that_still_lands_before_each_batch() {
        let mut s = Segment::new(0, PathBuf::new(), FileId(0), 0, 0, Vec::new());
        for i in 0..10_000u64 {
            s.note_batch(i * 10, i * INDEX_INTERVAL_BYTES);
        }
        s.seal_index();
        assert!(s.index_len() <= SEALED_INDEX_ENTRIES_MAX);
        assert_eq!(s.lookup(0), 0);
        for offset in [5, 999, 54_321, 99_990] {
            let pos = s.lookup(offset);
            assert!(
                pos <= offset / 10 * INDEX_INTERVAL_BYTES,
                "lands at or before the batch"
            );
        }
    }
}
