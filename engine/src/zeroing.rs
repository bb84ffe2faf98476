//! Overwriting the prepared next segment with zeros through the ring, before it is used.
//!
//! `fallocate` leaves "unwritten extents": the first write into each turns it into a written
//! one, a metadata change the next `fdatasync` must commit to the filesystem journal, which
//! roughly doubles its cost. Zeroing the next segment
//! while the current one is in use pays that cost off the appenders' path, so their syncs flush
//! data only. Its chunks carry no sync of their own (that file is not being synced by anyone);
//! the last one carries the `fdatasync` that makes them all durable. One chunk is in flight per
//! partition; a roll that would overlap it waits for it; a roll that comes before zeroing is
//! done uses the rest of the file as reserved.

use std::io;

use crate::aligned::AlignedBuf;
use crate::io::{Completion, Disk, FileId, IoKind, SyncAfter};

/// Zeroing stops while flushes average this size or more: the conversion's cost per sync is
/// then small beside the write, and writing every byte twice would halve the bandwidth.
pub const ZERO_FLUSH_BYTES_MAX: usize = 512 << 10;
/// Bytes zeroed per write.
pub const ZERO_CHUNK_BYTES: u64 = 256 << 10;

/// The zero chunk in flight, if any, and the buffer of zeros it writes from.
pub struct Zeroing {
    zeros: Option<AlignedBuf>,
    in_flight: Option<Chunk>,
}

/// A zero write in flight.
#[derive(Clone, Copy)]
struct Chunk {
    file: FileId,
    start: u64,
    end: u64,
    /// Completions still expected: the write and its linked sync.
    awaiting: u8,
    failed: bool,
}

/// A finished chunk: `file`'s `[start, end)` is zeroed (or failed to be).
pub struct Zeroed {
    /// The file written.
    pub file: FileId,
    /// End of the zeroed range.
    pub end: u64,
    /// False if the write or its sync failed (the space stays usable as reserved).
    pub ok: bool,
}

impl Zeroing {
    /// Nothing in flight yet.
    pub fn new() -> Self {
        Self {
            zeros: Some(AlignedBuf::zeroed(ZERO_CHUNK_BYTES as usize)),
            in_flight: None,
        }
    }

    /// True while a chunk is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// True if the chunk in flight touches `file`'s `[start, end)`.
    pub fn overlaps(&self, file: FileId, start: u64, end: u64) -> bool {
        self.in_flight
            .is_some_and(|c| c.file == file && c.start < end && start < c.end)
    }

    /// Submits zeros for `file`'s `[start, end)` (at most one chunk, block aligned); the chunk
    /// that reaches `end` carries the `fdatasync` that makes all of them durable. Nothing
    /// happens if a chunk is already in flight.
    pub fn submit<D: Disk>(
        &mut self,
        disk: &mut D,
        file: FileId,
        start: u64,
        end: u64,
        token: u64,
    ) -> bool {
        let sync = end <= start + ZERO_CHUNK_BYTES;
        let end = end.min(start + ZERO_CHUNK_BYTES);
        if self.busy() || end <= start {
            return false;
        }
        let Some(zeros) = self.zeros.take() else {
            return false;
        };
        let durable = SyncAfter::file_if(sync);
        disk.submit_write(file, start, zeros, (end - start) as usize, token, durable);
        self.in_flight = Some(Chunk {
            file,
            start,
            end,
            awaiting: 1 + u8::from(sync),
            failed: false,
        });
        true
    }

    /// Takes a completion of the chunk in flight; returns the chunk once both its completions
    /// are in.
    pub fn on_completion(&mut self, c: Completion) -> Option<Zeroed> {
        let chunk = self.in_flight.as_mut()?;
        if c.kind == IoKind::Write {
            self.zeros = c.buf;
        }
        let expected = (chunk.end - chunk.start) as usize;
        let error = match c.result {
            Ok(n) if c.kind == IoKind::Write && n != expected => {
                Some(io::Error::new(io::ErrorKind::WriteZero, "short write"))
            }
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = error {
            if !chunk.failed {
                log::warn!("zeroing segment space failed ({e}); it stays usable as reserved");
            }
            chunk.failed = true;
        }
        chunk.awaiting -= 1;
        if chunk.awaiting > 0 {
            return None;
        }
        let done = self.in_flight.take()?;
        Some(Zeroed {
            file: done.file,
            end: done.end,
            ok: !done.failed,
        })
    }
}
