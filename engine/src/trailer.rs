//! The flush trailer: the last bytes of every flush, marking where it began and sealing it.
//!
//! Every flush covers whole blocks: its batches, zero padding, and this 40-byte trailer ending
//! exactly on the flush's final block boundary. A partition may have a few flushes in flight at
//! once, and each trailer says where the part of the log not yet durable began when its flush
//! was submitted ([`Trailer::pending_from`]). So a valid trailer on disk proves that everything
//! before that position was durable. Recovery uses that to tell a torn tail (damage inside the
//! flushes that were in flight together) from corruption (damage before a later flush that
//! was submitted after it was durable). Layout (big-endian), see `docs/FORMAT.md`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8   | marker: eight 0xFF bytes (base offset -1, which no batch can have) |
//! | 8..12  | magic `KFLU` |
//! | 12..20 | position in the segment where this flush starts (block aligned) |
//! | 20..28 | next offset: one past the last record of the flush |
//! | 28..32 | flush CRC: CRC-32C of the flush's bytes its batches' own CRCs leave out |
//! | 32..34 | blocks between `pending_from` and the flush's start (0: nothing earlier in flight) |
//! | 34..36 | which bytes the flush CRC covers ([`CrcScope`]) |
//! | 36..40 | CRC-32C of bytes 0..36 of the trailer |

use crate::aligned::{align_up, BLOCK_BYTES};
use crate::batch::CRC_START;

/// Size of a trailer in bytes.
pub const TRAILER_BYTES: usize = 40;
/// Most blocks a trailer can say were still in flight before its flush (a 16-bit field).
pub const PENDING_BLOCKS_MAX: u64 = u16::MAX as u64;
const MARKER: [u8; 8] = [0xff; 8];
const MAGIC: &[u8; 4] = b"KFLU";

/// A decoded, self-consistent trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Segment position where the sealed flush begins.
    pub flush_start: u64,
    /// Segment position where the log's part not yet durable began when this flush was
    /// submitted: `flush_start` itself, or the start of the oldest earlier flush still in
    /// flight then. Everything before it was durable before this flush was written. At most
    /// [`PENDING_BLOCKS_MAX`] blocks before `flush_start`, block aligned.
    pub pending_from: u64,
    /// One past the last offset in the flush.
    pub next_offset: u64,
    /// CRC-32C of the flush's bytes named by `scope`.
    pub flush_crc: u32,
    /// Which bytes `flush_crc` covers.
    pub scope: CrcScope,
}

/// Which bytes of a flush its trailer's CRC covers. Both leave no byte unchecked: what the
/// flush CRC skips, each batch's own CRC covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcScope {
    /// Every byte from the flush's start up to the trailer (batches and padding): what the
    /// first versions wrote. Still read, never written.
    Whole,
    /// Of each batch only its first [`CRC_START`] bytes (the ones its own CRC leaves out,
    /// that CRC included), then the padding. Written today: appends verify every batch's CRC
    /// anyway, and hashing all the bytes a second time cost the shards a tenth of their time.
    Headers,
    /// A value this version does not know (a newer writer).
    Unknown(u16),
}

impl CrcScope {
    fn code(self) -> u16 {
        match self {
            Self::Whole => 0,
            Self::Headers => 1,
            Self::Unknown(code) => code,
        }
    }

    fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Whole,
            1 => Self::Headers,
            other => Self::Unknown(other),
        }
    }
}

/// The bytes of `batch` that a [`CrcScope::Headers`] flush CRC covers.
pub fn unchecked_prefix(batch: &[u8]) -> &[u8] {
    &batch[..CRC_START.min(batch.len())]
}

impl Trailer {
    /// A trailer of a flush with nothing earlier in flight.
    pub fn alone(flush_start: u64, next_offset: u64, flush_crc: u32, scope: CrcScope) -> Self {
        Self {
            flush_start,
            pending_from: flush_start,
            next_offset,
            flush_crc,
            scope,
        }
    }

    /// Blocks between `pending_from` and `flush_start`, as the trailer stores them.
    fn pending_blocks(&self) -> u16 {
        let back = self.flush_start - self.pending_from;
        assert!(self.pending_from <= self.flush_start);
        assert!(back.is_multiple_of(BLOCK_BYTES as u64));
        assert!(back / BLOCK_BYTES as u64 <= PENDING_BLOCKS_MAX);
        (back / BLOCK_BYTES as u64) as u16
    }

    /// Encodes into exactly [`TRAILER_BYTES`] bytes.
    pub fn encode(&self, out: &mut [u8]) {
        assert_eq!(out.len(), TRAILER_BYTES);
        out[0..8].copy_from_slice(&MARKER);
        out[8..12].copy_from_slice(MAGIC);
        out[12..20].copy_from_slice(&self.flush_start.to_be_bytes());
        out[20..28].copy_from_slice(&self.next_offset.to_be_bytes());
        out[28..32].copy_from_slice(&self.flush_crc.to_be_bytes());
        out[32..34].copy_from_slice(&self.pending_blocks().to_be_bytes());
        out[34..36].copy_from_slice(&self.scope.code().to_be_bytes());
        let crc = keel_format::crc::crc32c(&out[..36]);
        out[36..40].copy_from_slice(&crc.to_be_bytes());
    }

    /// Decodes `bytes` if they hold a trailer whose own CRC verifies.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != TRAILER_BYTES || bytes[0..8] != MARKER || &bytes[8..12] != MAGIC {
            return None;
        }
        let stored = u32::from_be_bytes([bytes[36], bytes[37], bytes[38], bytes[39]]);
        if keel_format::crc::crc32c(&bytes[..36]) != stored {
            return None;
        }
        let u64_at = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(raw)
        };
        let flush_start = u64_at(12);
        let pending_blocks = u64::from(u16::from_be_bytes([bytes[32], bytes[33]]));
        Some(Self {
            flush_start,
            pending_from: flush_start.checked_sub(pending_blocks * BLOCK_BYTES as u64)?,
            next_offset: u64_at(20),
            flush_crc: u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]),
            scope: CrcScope::from_code(u16::from_be_bytes([bytes[34], bytes[35]])),
        })
    }
}

/// Where a flush must end when its batches end at `data_end`: the first block boundary that
/// leaves room for the trailer.
pub fn flush_end(data_end: u64) -> u64 {
    align_up(data_end + TRAILER_BYTES as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_any_damage() {
        let t = Trailer {
            flush_start: 8192,
            pending_from: 4096,
            next_offset: 77,
            flush_crc: 0xdead_beef,
            scope: CrcScope::Headers,
        };
        let mut bytes = [0u8; TRAILER_BYTES];
        t.encode(&mut bytes);
        assert_eq!(Trailer::decode(&bytes), Some(t));
        for i in 0..TRAILER_BYTES {
            let mut bad = bytes;
            bad[i] ^= 0x20;
            assert_eq!(Trailer::decode(&bad), None, "flip at {i}");
        }
        assert_eq!(Trailer::decode(&[0u8; TRAILER_BYTES]), None);
    }

    #[test]
    fn a_trailer_of_a_flush_alone_reads_as_the_first_versions_wrote_it() {
        // Before flushes overlapped, bytes 32..36 were the CRC kind as a u32: the same bytes
        // as no blocks pending and a 16-bit kind.
        let t = Trailer::alone(8192, 77, 0xdead_beef, CrcScope::Whole);
        let mut bytes = [0u8; TRAILER_BYTES];
        t.encode(&mut bytes);
        assert_eq!(bytes[32..36], 0u32.to_be_bytes());
        let headers = Trailer::alone(8192, 77, 0xdead_beef, CrcScope::Headers);
        headers.encode(&mut bytes);
        assert_eq!(bytes[32..36], 1u32.to_be_bytes());
    }

    #[test]
    fn a_trailer_pending_from_before_the_segment_start_is_not_a_trailer() {
        let t = Trailer {
            flush_start: 8192,
            pending_from: 0,
            next_offset: 77,
            flush_crc: 1,
            scope: CrcScope::Headers,
        };
        let mut bytes = [0u8; TRAILER_BYTES];
        t.encode(&mut bytes);
        // Three blocks back from byte 8192, with the trailer's own CRC made to match.
        bytes[32..34].copy_from_slice(&3u16.to_be_bytes());
        let crc = keel_format::crc::crc32c(&bytes[..36]);
        bytes[36..40].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(Trailer::decode(&bytes), None);
    }

    #[test]
    fn flush_end_leaves_room_for_the_trailer() {
        assert_eq!(flush_end(0), 4096);
        assert_eq!(flush_end(4096 - 40), 4096);
        assert_eq!(flush_end(4096 - 39), 8192);
        assert_eq!(flush_end(5000), 8192);
    }
}
