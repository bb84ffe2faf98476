//! A sealed segment's summary: what start-up needs of it — where its log ends, its sparse
//! index, and the idempotent producers' state at its end — saved in `BASE.sum` beside it by the
//! roll that seals it, so that start-up reads a small file instead of the whole segment.
//!
//! A summary is a cache of what a scan of the segment would find, never the only copy of
//! anything: it is written without a sync, and believed only once it passes its own CRC and its
//! bounds, and the segment's last block holds a valid flush trailer ending where the summary
//! says the log ends, at the offset it says. A summary that is missing or fails a check costs
//! one scan of its segment, after which it is written again. Layout in `docs/FORMAT.md`.

use std::io;
use std::path::Path;

use crate::aligned::BLOCK_BYTES;
use crate::io::MetaFs;
use crate::layout::summary_file_name;
use crate::producers::{ProducedBatch, Producers, SavedProducer, BATCHES_KEPT, PRODUCERS_MAX};
use crate::segment::{IndexEntry, Segment, SEALED_INDEX_ENTRIES_MAX};
use crate::OffsetRange;

const MAGIC: &[u8; 4] = b"KSUM";
const VERSION: u16 = 1;
const CRC_BYTES: usize = 4;

/// What start-up needs of one sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// First offset of the segment.
    pub base_offset: u64,
    /// One past its last offset.
    pub next_offset: u64,
    /// Where its log ends: the end of its last flush (block aligned).
    pub durable_end: u64,
    /// Its sparse offset → position index, sealed (thinned).
    pub index: Vec<IndexEntry>,
    /// The partition's idempotent producers as they were at the segment's end.
    pub producers: Vec<SavedProducer>,
}

impl SegmentSummary {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        for n in [self.base_offset, self.next_offset, self.durable_end] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        // Both counts are bounded far below u32::MAX (checked on decode as well).
        out.extend_from_slice(&(self.index.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for e in &self.index {
            out.extend_from_slice(&e.offset.to_be_bytes());
            out.extend_from_slice(&e.pos.to_be_bytes());
        }
        for p in &self.producers {
            out.extend_from_slice(&p.id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.extend_from_slice(&(p.batches.len() as u16).to_be_bytes());
            out.extend_from_slice(&p.last_timestamp.to_be_bytes());
            out.extend_from_slice(&p.last_seen_ms.to_be_bytes());
            for b in &p.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.offsets.first.to_be_bytes());
                out.extend_from_slice(&b.offsets.last.to_be_bytes());
            }
        }
        let crc = keel_format::crc::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a summary of the segment starting at `base_offset`, or says why it cannot be
    /// believed.
    pub fn decode(bytes: &[u8], base_offset: u64) -> Result<Self, String> {
        let Some(body_len) = bytes.len().checked_sub(CRC_BYTES) else {
            return Err(format!("{} bytes: too short", bytes.len()));
        };
        let (body, crc) = bytes.split_at(body_len);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if keel_format::crc::crc32c(body) != stored {
            return Err("fails its checksum".into());
        }
        let mut r = Cursor { bytes: body, at: 0 };
        let short = || "shorter than its counts say".to_string();
        if r.take(4).ok_or_else(short)? != MAGIC {
            return Err("not a segment summary (bad magic)".into());
        }
        let version = r.u16().ok_or_else(short)?;
        if version != VERSION {
            return Err(format!("version {version}, not {VERSION}"));
        }
        let reserved = r.u16().ok_or_else(short)?;
        if reserved != 0 {
            return Err(format!("reserved bytes hold {reserved}, not 0"));
        }
        let base = r.u64().ok_or_else(short)?;
        let next_offset = r.u64().ok_or_else(short)?;
        let durable_end = r.u64().ok_or_else(short)?;
        let index_len = r.u32().ok_or_else(short)? as usize;
        let producers_len = r.u32().ok_or_else(short)? as usize;
        if base != base_offset {
            return Err(format!("names base offset {base}, not {base_offset}"));
        }
        if next_offset < base || !durable_end.is_multiple_of(BLOCK_BYTES as u64) {
            return Err(format!(
                "impossible end: offset {next_offset}, byte {durable_end}"
            ));
        }
        if index_len > SEALED_INDEX_ENTRIES_MAX || producers_len > PRODUCERS_MAX {
            return Err(format!(
                "{index_len} index entries and {producers_len} producers: more than kept"
            ));
        }
        let mut index: Vec<IndexEntry> = Vec::with_capacity(index_len);
        for _ in 0..index_len {
            let e = IndexEntry {
                offset: r.u64().ok_or_else(short)?,
                pos: r.u64().ok_or_else(short)?,
            };
            let after_last = index
                .last()
                .is_none_or(|last| e.offset > last.offset && e.pos > last.pos);
            let inside = base <= e.offset && e.offset < next_offset && e.pos < durable_end;
            if !(after_last && inside) {
                return Err(format!("index entry {e:?} out of order or past the end"));
            }
            index.push(e);
        }
        let mut producers: Vec<SavedProducer> = Vec::with_capacity(producers_len);
        for _ in 0..producers_len {
            let id = r.i64().ok_or_else(short)?;
            let epoch = r.u16().ok_or_else(short)? as i16;
            let batches_len = r.u16().ok_or_else(short)? as usize;
            let last_timestamp = r.i64().ok_or_else(short)?;
            let last_seen_ms = r.i64().ok_or_else(short)?;
            let in_order = producers.last().is_none_or(|last| id > last.id);
            if id < 0 || !in_order || batches_len == 0 || batches_len > BATCHES_KEPT {
                return Err(format!(
                    "producer {id} with {batches_len} batches: out of order or out of bounds"
                ));
            }
            let mut batches = Vec::with_capacity(batches_len);
            for _ in 0..batches_len {
                let first_seq = r.u32().ok_or_else(short)? as i32;
                let last_seq = r.u32().ok_or_else(short)? as i32;
                let offsets = OffsetRange {
                    first: r.u64().ok_or_else(short)?,
                    last: r.u64().ok_or_else(short)?,
                };
                if first_seq < 0 || last_seq < 0 || offsets.first > offsets.last {
                    return Err(format!("producer {id}: impossible batch"));
                }
                if offsets.last >= next_offset {
                    return Err(format!("producer {id}: a batch past the segment's end"));
                }
                batches.push(ProducedBatch {
                    first_seq,
                    last_seq,
                    offsets,
                    end_pos: 0,
                });
            }
            producers.push(SavedProducer {
                id,
                epoch,
                last_timestamp,
                last_seen_ms,
                batches,
            });
        }
        if r.at != body.len() {
            return Err(format!("{} bytes past its end", body.len() - r.at));
        }
        Ok(Self {
            base_offset,
            next_offset,
            durable_end,
            index,
            producers,
        })
    }
}

/// Saves the summary of `segment`, sealed, beside it in the partition directory `dir`, without
/// a sync; `producers` is the partition's state at its end or later. A failure is logged: it
/// costs only a read of the whole segment at the next start.
pub fn save(files: &dyn MetaFs, dir: &Path, segment: &Segment, producers: &Producers) {
    let summary = SegmentSummary {
        base_offset: segment.base_offset,
        next_offset: segment.next_offset,
        durable_end: segment.durable_end,
        index: segment.index().to_vec(),
        producers: producers.saved_before(segment.next_offset),
    };
    let path = dir.join(summary_file_name(summary.base_offset));
    if let Err(e) = files.write_unsynced(&path, &summary.encode()) {
        log::warn!(
            "{}: could not save its summary ({e}); the next start reads it whole instead",
            segment.path.display()
        );
    }
}

/// Removes the summary of the segment starting at `base_offset`, if there is one; returns
/// whether there was. Not durable by itself: the caller syncs `dir` when that matters.
pub fn remove(files: &dyn MetaFs, dir: &Path, base_offset: u64) -> io::Result<bool> {
    match files.remove_file(&dir.join(summary_file_name(base_offset))) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Big-endian fields read one after another.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(bytes)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xorshift::xorshift;

    fn sample() -> SegmentSummary {
        let batch = |first_seq, first, last| ProducedBatch {
            first_seq,
            last_seq: first_seq + (last - first) as i32,
            offsets: OffsetRange { first, last },
            end_pos: 0,
        };
        SegmentSummary {
            base_offset: 1000,
            next_offset: 1500,
            durable_end: 64 * 4096,
            index: vec![
                IndexEntry {
                    offset: 1000,
                    pos: 0,
                },
                IndexEntry {
                    offset: 1200,
                    pos: 40_000,
                },
            ],
            producers: vec![
                SavedProducer {
                    id: 3,
                    epoch: 2,
                    last_timestamp: 17,
                    last_seen_ms: 1_700_000_000_000,
                    batches: vec![batch(0, 1000, 1009), batch(10, 1010, 1010)],
                },
                SavedProducer {
                    id: 40,
                    epoch: 0,
                    last_timestamp: 18,
                    last_seen_ms: 1_700_000_000_001,
                    batches: vec![batch(7, 1499, 1499)],
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(SegmentSummary::decode(&s.encode(), 1000), Ok(s));
    }

    #[test]
    fn any_flipped_bit_or_cut_is_refused() {
        let bytes = sample().encode();
        for at in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                assert!(SegmentSummary::decode(&damaged, 1000).is_err(), "byte {at}");
            }
        }
        for len in 0..bytes.len() {
            assert!(
                SegmentSummary::decode(&bytes[..len], 1000).is_err(),
                "{len}"
            );
        }
    }

    #[test]
    fn a_summary_of_another_segment_or_out_of_bounds_is_refused() {
        let s = sample();
        let why = SegmentSummary::decode(&s.encode(), 999).unwrap_err();
        assert!(why.contains("base offset 1000"), "{why}");
        let mut past_end = s.clone();
        past_end.producers[1].batches[0].offsets.last = 1500;
        assert!(SegmentSummary::decode(&past_end.encode(), 1000).is_err());
        let mut unordered = s.clone();
        unordered.index.swap(0, 1);
        assert!(SegmentSummary::decode(&unordered.encode(), 1000).is_err());
        let mut unaligned = s.clone();
        unaligned.durable_end += 1;
        assert!(SegmentSummary::decode(&unaligned.encode(), 1000).is_err());
        // Found by fuzzing: a reserved field that is not zero, sealed with a valid CRC, was
        // read as if it were (and would have been written back as zero).
        let mut reserved = s.encode();
        reserved[7] = 10;
        let body = reserved.len() - 4;
        let crc = keel_format::crc::crc32c(&reserved[..body]);
        reserved[body..].copy_from_slice(&crc.to_be_bytes());
        assert!(SegmentSummary::decode(&reserved, 1000).is_err());
    }

    /// A summary with `index` entries, `producers` producers of `batches` batches each, over
    /// offsets 0..100_000 and bytes 0..4096 * 100_000.
    fn sized(index: usize, producers: usize, batches: usize) -> SegmentSummary {
        SegmentSummary {
            base_offset: 0,
            next_offset: 100_000,
            durable_end: 4096 * 100_000,
            index: (0..index as u64)
                .map(|i| IndexEntry {
                    offset: i,
                    pos: i * 4096,
                })
                .collect(),
            producers: (0..producers as i64)
                .map(|id| SavedProducer {
                    id,
                    epoch: 0,
                    last_timestamp: 0,
                    last_seen_ms: 0,
                    batches: (0..batches as u64)
                        .map(|b| ProducedBatch {
                            first_seq: b as i32,
                            last_seq: b as i32,
                            offsets: OffsetRange { first: b, last: b },
                            end_pos: 0,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn decodes(s: &SegmentSummary) -> bool {
        SegmentSummary::decode(&s.encode(), s.base_offset).is_ok()
    }

    #[test]
    fn every_bound_is_taken_up_to_its_limit_and_refused_past_it() {
        assert!(decodes(&sized(0, 0, 0)), "nothing in it");
        let empty = SegmentSummary {
            base_offset: 7,
            next_offset: 7,
            durable_end: 0,
            ..sized(0, 0, 0)
        };
        assert!(decodes(&empty), "an empty segment");
        assert!(!decodes(&SegmentSummary {
            next_offset: 6,
            ..empty.clone()
        }));
        assert!(decodes(&sized(SEALED_INDEX_ENTRIES_MAX, 0, 0)));
        assert!(!decodes(&sized(SEALED_INDEX_ENTRIES_MAX + 1, 0, 0)));
        assert!(decodes(&sized(0, PRODUCERS_MAX, 1)));
        assert!(!decodes(&sized(0, PRODUCERS_MAX + 1, 1)));
        assert!(decodes(&sized(0, 1, BATCHES_KEPT)));
        assert!(!decodes(&sized(0, 1, BATCHES_KEPT + 1)));
        assert!(!decodes(&sized(0, 1, 0)), "a producer without batches");
    }

    #[test]
    fn each_field_out_of_its_range_is_refused() {
        let s = sample();
        let refused = |change: &dyn Fn(&mut SegmentSummary)| {
            let mut bad = s.clone();
            change(&mut bad);
            !decodes(&bad)
        };
        assert!(decodes(&s));
        // Index entries: strictly ascending in both offset and position, inside the segment.
        assert!(refused(&|b| b.index[1].offset = b.index[0].offset));
        assert!(refused(&|b| b.index[1].pos = b.index[0].pos));
        assert!(refused(&|b| b.index[1].offset = b.next_offset));
        assert!(refused(&|b| b.index[1].pos = b.durable_end));
        assert!(refused(&|b| b.index[0].offset = b.base_offset - 1));
        // Producers: ids ascending, not negative; batches with sane sequences and offsets.
        assert!(refused(&|b| b.producers[1].id = b.producers[0].id));
        assert!(refused(&|b| b.producers[0].id = -1));
        assert!(refused(&|b| b.producers[0].batches[0].first_seq = -1));
        assert!(refused(&|b| b.producers[0].batches[0].last_seq = -1));
        assert!(refused(&|b| {
            let batch = &mut b.producers[0].batches[0];
            batch.offsets.first = batch.offsets.last + 1;
        }));
        assert!(
            !refused(&|b| {
                let batch = &mut b.producers[0].batches[1];
                batch.offsets.first = batch.offsets.last;
            }),
            "a batch of one record"
        );
        assert!(!refused(
            &|b| b.producers[1].batches[0].offsets.last = b.next_offset - 1
        ));
    }

    #[test]
    fn random_bytes_with_a_valid_checksum_never_panic() {
        let mut next = xorshift(7);
        for _ in 0..2000 {
            let len = (next() % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next().is_multiple_of(2) && bytes.len() >= 8 {
                bytes[..4].copy_from_slice(MAGIC);
                bytes[4..6].copy_from_slice(&VERSION.to_be_bytes());
            }
            let crc = keel_format::crc::crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_be_bytes());
            let _ = SegmentSummary::decode(&bytes, 0);
        }
    }
}
