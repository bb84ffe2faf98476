//! One segment file of a partition: its place in the log and its sparse offset index.

use std::path::PathBuf;

use crate::io::FileId;

/// Distance in bytes between index entries: a lookup lands at most this far before its batch.
pub const INDEX_INTERVAL_BYTES: u64 = 32 * 1024;

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
}
