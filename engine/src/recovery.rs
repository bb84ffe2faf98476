//! Scanning a segment on open: where the log ends, whether the damage is a torn tail or
//! corruption, and the sparse index. See `docs/FORMAT.md` for the rules.

use std::io;

use crate::aligned::{align_down, AlignedBuf, BLOCK_BYTES};
use crate::batch::{self, BatchView, LOG_OVERHEAD_BYTES};
use crate::producers::{sequenced, Producers, Sequenced};
use crate::segment::{IndexEntry, INDEX_INTERVAL_BYTES};
use crate::trailer::{self, CrcScope, Trailer, TRAILER_BYTES};
use crate::OffsetRange;

/// Bytes read per step while scanning.
const SCAN_WINDOW_BYTES: usize = 4 << 20;

/// Positioned reads of one file, block aligned.
pub trait ReadAt {
    /// Reads up to `len` bytes at block-aligned `pos` into `buf`; returns the buffer and the
    /// bytes read (fewer at the end of the file).
    fn read_at(&mut self, pos: u64, buf: AlignedBuf, len: usize)
        -> (AlignedBuf, io::Result<usize>);
}

/// A segment's bytes in memory, read as a file: for tests and fuzzing.
#[cfg(any(test, feature = "testing"))]
pub struct MemFile<'a>(pub &'a [u8]);

#[cfg(any(test, feature = "testing"))]
impl ReadAt for MemFile<'_> {
    fn read_at(
        &mut self,
        pos: u64,
        mut buf: AlignedBuf,
        len: usize,
    ) -> (AlignedBuf, io::Result<usize>) {
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(self.0.len());
        let n = len.min(self.0.len() - start).min(buf.capacity());
        buf.as_mut_slice()[..n].copy_from_slice(&self.0[start..start + n]);
        (buf, Ok(n))
    }
}

/// A sliding window over a file, so batches that straddle read boundaries are seen whole.
struct Window<R> {
    src: R,
    buf: AlignedBuf,
    start: u64,
    filled: usize,
    file_len: u64,
}

impl<R: ReadAt> Window<R> {
    fn new(src: R, file_len: u64, window_bytes: usize) -> Self {
        // No bigger than the file: start-up scans many files smaller than a window.
        let file_bytes = crate::aligned::align_up(file_len).max(BLOCK_BYTES as u64);
        let bytes = usize::try_from(file_bytes).map_or(window_bytes, |f| f.min(window_bytes));
        Self {
            src,
            buf: AlignedBuf::zeroed(bytes),
            start: 0,
            filled: 0,
            file_len,
        }
    }

    /// `n` bytes at `pos`, or `None` when they run past the end of the file.
    fn get(&mut self, pos: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let end = pos + n as u64;
        if end > self.file_len {
            return Ok(None);
        }
        if pos < self.start || end > self.start + self.filled as u64 {
            let start = align_down(pos);
            let want = (end - start) as usize;
            if want > self.buf.capacity() {
                self.buf = AlignedBuf::zeroed(want);
            }
            let len =
                crate::aligned::align_up((self.file_len - start).min(self.buf.capacity() as u64))
                    as usize;
            let buf = std::mem::replace(&mut self.buf, AlignedBuf::zeroed(BLOCK_BYTES));
            let (buf, read) = self.src.read_at(start, buf, len);
            self.buf = buf;
            self.start = start;
            self.filled = read?;
            if end > self.start + self.filled as u64 {
                return Ok(None);
            }
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf.as_slice()[at..at + n]))
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// End of the last valid batch: where the log ends in this segment.
    pub valid_end: u64,
    /// End of the last flush sealed by a valid trailer (block aligned, ≤ `valid_end` rounded up).
    pub sealed_end: u64,
    /// CRC-32C of the bytes `[sealed_end, valid_end)`: the batches of an unsealed torn flush
    /// (what a [`CrcScope::Whole`] trailer covers).
    pub unsealed_crc: u32,
    /// CRC-32C of those batches' unchecked prefixes (what a [`CrcScope::Headers`] trailer
    /// covers).
    pub unsealed_prefix_crc: u32,
    /// One past the last offset found.
    pub next_offset: u64,
    /// Sparse offset → position index.
    pub index: Vec<IndexEntry>,
    /// Why the scan stopped before the end of the file with invalid data, if it did.
    pub invalid: Option<String>,
    /// Position of a valid trailer of a *later* flush beyond the end: proof that the damage is
    /// corruption of data that was durable, not a torn tail.
    pub later_flush_at: Option<u64>,
    /// The highest offset end named by such later trailers: offsets below it were handed out
    /// (and acknowledged) before the damage, so a repair must never hand them out again.
    pub later_next_offset: Option<u64>,
    /// End of the last block past `valid_end` holding non-zero bytes (leftovers to clear).
    pub dirty_end: u64,
    /// Bytes of the last, partial block of the log: `[align_down(valid_end), valid_end)`.
    pub tail_block: Vec<u8>,
    /// Idempotent producers' batches found (each with where it ends, so the caller keeps only
    /// those the log still holds after it decides where the log ends).
    pub producers: Producers,
}

/// Scans a segment whose first offset is `base_offset` and that is `file_len` bytes long.
pub fn scan<R: ReadAt>(
    src: R,
    file_len: u64,
    base_offset: u64,
    max_batch_bytes: usize,
) -> io::Result<Scan> {
    scan_in_windows(
        src,
        file_len,
        base_offset,
        max_batch_bytes,
        SCAN_WINDOW_BYTES,
    )
}

/// [`scan`], reading `window_bytes` (a multiple of the block size) at a time: the tests slide
/// small windows over segments many windows long, as production's slide over 256 MiB ones.
pub(crate) fn scan_in_windows<R: ReadAt>(
    src: R,
    file_len: u64,
    base_offset: u64,
    max_batch_bytes: usize,
    window_bytes: usize,
) -> io::Result<Scan> {
    assert!(window_bytes.is_multiple_of(BLOCK_BYTES));
    let mut w = Window::new(src, file_len, window_bytes);
    let mut s = Scan {
        next_offset: base_offset,
        ..Scan::default()
    };
    let mut pos = 0u64;
    let mut last_indexed: Option<u64> = None;
    let mut flush_first_offset = base_offset;
    loop {
        match sealed_flush_at(&mut w, pos, &s)? {
            Seal::Sealed(end) => {
                s.sealed_end = end;
                s.valid_end = end;
                s.unsealed_crc = 0;
                s.unsealed_prefix_crc = 0;
                flush_first_offset = s.next_offset;
                pos = end;
                continue;
            }
            Seal::Damaged(why) => {
                // Its batches verify but the flush as a whole does not (a byte outside the
                // batch CRCs changed): none of it can be trusted.
                s.valid_end = s.sealed_end;
                s.unsealed_crc = 0;
                s.unsealed_prefix_crc = 0;
                s.next_offset = flush_first_offset;
                s.index.retain(|e| e.pos < s.sealed_end);
                s.invalid = Some(why);
                break;
            }
            Seal::None => {}
        }
        match batch_at(&mut w, pos, s.next_offset, max_batch_bytes)? {
            Step::Batch {
                len,
                next_offset,
                sequenced,
            } => {
                if let Some(seq) = &sequenced {
                    let offsets = OffsetRange {
                        first: s.next_offset,
                        last: next_offset - 1,
                    };
                    s.producers.record(seq, offsets, pos + len as u64);
                }
                if last_indexed.is_none_or(|p| pos >= p + INDEX_INTERVAL_BYTES) {
                    s.index.push(IndexEntry {
                        offset: s.next_offset,
                        pos,
                    });
                    last_indexed = Some(pos);
                }
                let bytes = w.get(pos, len)?.unwrap_or_default();
                s.unsealed_crc = keel_format::crc::crc32c_append(s.unsealed_crc, bytes);
                s.unsealed_prefix_crc = keel_format::crc::crc32c_append(
                    s.unsealed_prefix_crc,
                    trailer::unchecked_prefix(bytes),
                );
                s.next_offset = next_offset;
                pos += len as u64;
                s.valid_end = pos;
            }
            Step::End => break,
            Step::Invalid(why) => {
                s.invalid = Some(why);
                break;
            }
        }
    }
    let tail_start = align_down(s.valid_end);
    s.tail_block = w
        .get(tail_start, (s.valid_end - tail_start) as usize)?
        .unwrap_or_default()
        .to_vec();
    look_past_the_end(&mut w, &mut s)?;
    Ok(s)
}

enum Seal {
    /// A valid trailer seals the flush here; it ends at the given position.
    Sealed(u64),
    /// The flush's trailer is here but its CRC does not match the flush's bytes.
    Damaged(String),
    /// No trailer of this flush right after `pos`.
    None,
}

/// Whether the trailer of the flush that began at `s.sealed_end` follows `pos` (with only
/// zero padding between).
fn sealed_flush_at<R: ReadAt>(w: &mut Window<R>, pos: u64, s: &Scan) -> io::Result<Seal> {
    let end = trailer::flush_end(pos);
    let trailer_at = end - TRAILER_BYTES as u64;
    let Some(raw) = w.get(trailer_at, TRAILER_BYTES)? else {
        return Ok(Seal::None);
    };
    let Some(t) = Trailer::decode(raw) else {
        return Ok(Seal::None);
    };
    if t.flush_start != s.sealed_end || t.next_offset != s.next_offset || pos == s.sealed_end {
        return Ok(Seal::None);
    }
    let Some(pad) = w.get(pos, (trailer_at - pos) as usize)? else {
        return Ok(Seal::None);
    };
    let before_pad = match t.scope {
        CrcScope::Whole => s.unsealed_crc,
        CrcScope::Headers => s.unsealed_prefix_crc,
        CrcScope::Unknown(code) => {
            return Ok(Seal::Damaged(format!(
                "the flush at byte {} has a checksum kind this version does not know ({code}); \
                 was it written by a newer Keel?",
                s.sealed_end
            )))
        }
    };
    if pad.iter().all(|&b| b == 0)
        && keel_format::crc::crc32c_append(before_pad, pad) == t.flush_crc
    {
        Ok(Seal::Sealed(end))
    } else {
        Ok(Seal::Damaged(format!(
            "the flush at byte {} fails its checksum",
            s.sealed_end
        )))
    }
}

enum Step {
    Batch {
        len: usize,
        next_offset: u64,
        sequenced: Option<Sequenced>,
    },
    End,
    Invalid(String),
}

fn batch_at<R: ReadAt>(
    w: &mut Window<R>,
    pos: u64,
    expected: u64,
    max_batch_bytes: usize,
) -> io::Result<Step> {
    let Some(prefix) = w.get(pos, LOG_OVERHEAD_BYTES)? else {
        return Ok(Step::End);
    };
    if prefix.iter().all(|&b| b == 0) {
        return Ok(Step::End);
    }
    let base = i64::from_be_bytes(prefix[..8].try_into().unwrap_or_default());
    let Some(len) = batch::declared_len(prefix).filter(|&n| n <= max_batch_bytes as u64) else {
        return Ok(Step::Invalid(format!(
            "batch at byte {pos} declares an impossible length"
        )));
    };
    if base != expected as i64 {
        return Ok(Step::Invalid(format!(
            "batch at byte {pos} has base offset {base}, expected {expected}"
        )));
    }
    let Some(bytes) = w.get(pos, len as usize)? else {
        return Ok(Step::Invalid(format!(
            "batch at byte {pos} runs past the end of the file"
        )));
    };
    match BatchView::verify(bytes) {
        Ok(view) => Ok(Step::Batch {
            len: len as usize,
            next_offset: view.last_offset() as u64 + 1,
            sequenced: sequenced(&view),
        }),
        Err(e) => Ok(Step::Invalid(format!("batch at byte {pos}: {e}"))),
    }
}

/// Whether trailer `t`, found past the end of the log, can only belong to a flush submitted
/// after the damaged one was durable: it starts on a block boundary beyond that flush's start,
/// it ends at an offset beyond every offset found, and when it was submitted nothing from the
/// damaged flush's start on was still in flight. (A torn flush's own trailer starts *at* that
/// flush's start; a flush written while the damaged one was in flight is part of the torn
/// tail: neither was acknowledged, since flushes are acknowledged in order.)
fn proves_later_flush(t: &Trailer, s: &Scan) -> bool {
    t.flush_start > s.sealed_end
        && t.flush_start.is_multiple_of(BLOCK_BYTES as u64)
        && t.next_offset > s.next_offset
        && t.pending_from > s.sealed_end
}

/// Reads every block after the end: notes leftovers to clear and trailers of later flushes.
fn look_past_the_end<R: ReadAt>(w: &mut Window<R>, s: &mut Scan) -> io::Result<()> {
    let mut block = align_down(s.valid_end);
    s.dirty_end = s.valid_end;
    while let Some(bytes) = w.get(block, BLOCK_BYTES)? {
        let from = s.valid_end.saturating_sub(block) as usize;
        if bytes[from..].iter().any(|&b| b != 0) {
            s.dirty_end = block + BLOCK_BYTES as u64;
        }
        let trailer = Trailer::decode(&bytes[BLOCK_BYTES - TRAILER_BYTES..]);
        if let Some(t) = trailer.filter(|t| proves_later_flush(t, s)) {
            s.later_flush_at
                .get_or_insert(block + (BLOCK_BYTES - TRAILER_BYTES) as u64);
            s.later_next_offset = s.later_next_offset.max(Some(t.next_offset));
        }
        block += BLOCK_BYTES as u64;
    }
    // A file cut short mid-block still has bytes after the last whole block.
    let rest = w.file_len.saturating_sub(block.max(s.valid_end));
    if rest > 0 {
        if let Some(bytes) = w.get(block.max(s.valid_end), rest as usize)? {
            if bytes.iter().any(|&b| b != 0) {
                s.dirty_end = w.file_len;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(missing_docs)]
pub mod tests {
    use super::*;
    use crate::aligned::align_up;

    /// Builds segment bytes from flushes of batches, as the writer lays them out.
    pub fn segment_with(
        flushes: &[Vec<Vec<u8>>],
        base: u64,
        file_len: usize,
    ) -> (Vec<u8>, Vec<u64>) {
        segment_sealed_with(CrcScope::Headers, flushes, base, file_len)
    }

    /// The same, with the flush CRCs covering `scope`.
    pub fn segment_sealed_with(
        scope: CrcScope,
        flushes: &[Vec<Vec<u8>>],
        base: u64,
        file_len: usize,
    ) -> (Vec<u8>, Vec<u64>) {
        let mut out = vec![0u8; file_len];
        let mut pos = 0usize;
        let mut next = base;
        let mut starts = Vec::new();
        for flush in flushes {
            let flush_start = pos;
            for b in flush {
                let mut b = b.clone();
                batch::set_base_offset(&mut b, next);
                next = BatchView::verify(&b).unwrap().last_offset() as u64 + 1;
                starts.push(pos as u64);
                out[pos..pos + b.len()].copy_from_slice(&b);
                pos += b.len();
            }
            let end = trailer::flush_end(pos as u64) as usize;
            let crc = match scope {
                CrcScope::Headers => {
                    let prefixes =
                        starts[starts.len() - flush.len()..]
                            .iter()
                            .fold(0, |crc, &at| {
                                keel_format::crc::crc32c_append(
                                    crc,
                                    trailer::unchecked_prefix(&out[at as usize..]),
                                )
                            });
                    keel_format::crc::crc32c_append(prefixes, &out[pos..end - TRAILER_BYTES])
                }
                _ => keel_format::crc::crc32c(&out[flush_start..end - TRAILER_BYTES]),
            };
            let t = Trailer::alone(flush_start as u64, next, crc, scope);
            t.encode(&mut out[end - TRAILER_BYTES..end]);
            pos = end;
        }
        (out, starts)
    }

    pub fn batch_of(n: usize, value_len: usize) -> Vec<u8> {
        let mut b = batch::BatchBuilder::new(0);
        for i in 0..n {
            b.push(None, &vec![0xa0 + i as u8; value_len], &[]);
        }
        b.build()
    }

    /// Random flushes of 1..=4 batches of 1..=3 records, values from a few bytes to
    /// `max_value` (more than a small scan window).
    fn random_flushes(
        next: &mut impl FnMut() -> u64,
        count: usize,
        max_value: usize,
    ) -> Vec<Vec<Vec<u8>>> {
        (0..count)
            .map(|_| {
                (0..1 + next() % 4)
                    .map(|_| {
                        let records = 1 + (next() % 3) as usize;
                        let value = match next() % 4 {
                            0 => (next() % 64) as usize,
                            1 => (next() % max_value as u64) as usize,
                            _ => (next() % 3000) as usize,
                        };
                        batch_of(records, value)
                    })
                    .collect()
            })
            .collect()
    }

    /// What a scan finds that the tests compare.
    fn found(
        s: &Scan,
    ) -> (
        u64,
        u64,
        u64,
        Vec<IndexEntry>,
        bool,
        Option<u64>,
        u64,
        usize,
    ) {
        (
            s.valid_end,
            s.sealed_end,
            s.next_offset,
            s.index.clone(),
            s.invalid.is_some(),
            s.later_flush_at,
            s.dirty_end,
            s.tail_block.len(),
        )
    }

    /// Scans `bytes` with every small window, and once with a window holding the whole file.
    /// Every small one must find what the whole one finds.
    fn scan_every_window(bytes: &[u8], base: u64) -> Scan {
        let whole = align_up(bytes.len() as u64).max(BLOCK_BYTES as u64) as usize;
        let reference =
            scan_in_windows(MemFile(bytes), bytes.len() as u64, base, 1 << 20, whole).unwrap();
        for window in [
            BLOCK_BYTES,
            2 * BLOCK_BYTES,
            3 * BLOCK_BYTES,
            16 * BLOCK_BYTES,
        ] {
            let s =
                scan_in_windows(MemFile(bytes), bytes.len() as u64, base, 1 << 20, window).unwrap();
            assert_eq!(found(&s), found(&reference), "window of {window} bytes");
        }
        reference
    }

    #[test]
    fn a_segment_many_windows_long_scans_the_same_with_any_window() {
        let mut next = crate::xorshift::xorshift(0x5ca7);
        for layout in 0..40 {
            let count = 1 + (next() % 12) as usize;
            let flushes = random_flushes(&mut next, count, 20_000);
            let (mut bytes, starts) = segment_with(&flushes, 7, 512 * 1024);
            let records: u64 = flushes
                .iter()
                .flatten()
                .map(|b| BatchView::verify(b).unwrap().record_count() as u64)
                .sum();
            let end = (0..bytes.len())
                .rev()
                .find(|&i| bytes[i] != 0)
                .map_or(0, |i| align_up(i as u64 + 1));
            // Every other layout ends its file exactly where its last flush ends.
            if layout % 2 == 0 {
                bytes.truncate(end as usize);
            }
            let s = scan_every_window(&bytes, 7);
            let what = format!("layout {layout}");
            assert_eq!(s.next_offset, 7 + records, "{what}");
            assert_eq!(
                (s.sealed_end, s.valid_end, s.dirty_end),
                (end, end, end),
                "{what}"
            );
            assert!(s.invalid.is_none() && s.later_flush_at.is_none(), "{what}");
            // An entry at the first batch, then at each batch an index interval or more past
            // the last entry.
            let mut expected: Vec<u64> = Vec::new();
            for &at in &starts {
                if expected
                    .last()
                    .is_none_or(|&p| at >= p + INDEX_INTERVAL_BYTES)
                {
                    expected.push(at);
                }
            }
            let positions: Vec<u64> = s.index.iter().map(|e| e.pos).collect();
            assert_eq!(positions, expected, "{what}");
            assert_eq!(s.index[0], IndexEntry { offset: 7, pos: 0 }, "{what}");
        }
    }

    #[test]
    fn damage_is_told_the_same_with_any_window() {
        let mut next = crate::xorshift::xorshift(0xda3a);
        for layout in 0..30 {
            let count = 3 + (next() % 8) as usize;
            let flushes = random_flushes(&mut next, count, 20_000);
            let (clean, starts) = segment_with(&flushes, 0, 512 * 1024);
            // A torn last flush: its last block lost.
            let mut torn = clean.clone();
            let last_end = (0..torn.len())
                .rev()
                .find(|&i| torn[i] != 0)
                .map_or(0, |i| align_up(i as u64 + 1) as usize);
            torn[last_end - BLOCK_BYTES..last_end].fill(0);
            let s = scan_every_window(&torn, 0);
            assert!(s.later_flush_at.is_none(), "layout {layout}: a torn tail");
            assert!(s.sealed_end < last_end as u64);
            // A flipped byte inside a batch of the first flush, later flushes durable.
            let mut flipped = clean.clone();
            flipped[starts[0] as usize + 70] ^= 0x10;
            let s = scan_every_window(&flipped, 0);
            assert_eq!(s.sealed_end, 0, "layout {layout}");
            assert!(
                s.later_flush_at.is_some(),
                "layout {layout}: proof of corruption"
            );
        }
    }

    #[test]
    fn a_damaged_last_flush_leaves_no_index_entry_inside_it() {
        // A first flush of one batch over an index interval long, so the last flush's first
        // batch is indexed, and later ones of it too.
        let flushes = vec![
            vec![batch_of(1, 33_000)],
            (0..12).map(|_| batch_of(2, 3000)).collect(),
        ];
        let (mut bytes, starts) = segment_with(&flushes, 0, 256 * 1024);
        let last_flush = starts[1];
        let clean = scan_every_window(&bytes, 0);
        assert!(
            clean.index.iter().any(|e| e.pos == last_flush)
                && clean.index.iter().any(|e| e.pos > last_flush),
            "the test needs entries at and inside the last flush: {:?}",
            clean.index
        );
        // The leader epoch of its third batch: outside the batch CRC, inside the flush CRC.
        bytes[starts[3] as usize + 13] ^= 1;
        let s = scan_every_window(&bytes, 0);
        assert_eq!(
            (s.sealed_end, s.valid_end, s.next_offset),
            (last_flush, last_flush, 1)
        );
        assert_eq!(
            s.index,
            [IndexEntry { offset: 0, pos: 0 }],
            "only the entries before the dropped flush"
        );
    }

    #[test]
    fn a_file_cut_mid_block_is_cleared_only_where_stale_bytes_lie() {
        let flushes = vec![vec![batch_of(2, 100)], vec![batch_of(1, 5000)]];
        let (bytes, _) = segment_with(&flushes, 0, 64 * 1024);
        let end = scan_every_window(&bytes, 0).sealed_end as usize;
        let mut cut = bytes[..end + 1000].to_vec();
        let s = scan_every_window(&cut, 0);
        assert_eq!(
            (s.sealed_end, s.dirty_end),
            (end as u64, end as u64),
            "zeros"
        );
        cut[end + 999] = 0x7f;
        let s = scan_every_window(&cut, 0);
        assert_eq!(s.sealed_end, end as u64);
        assert_eq!(s.dirty_end, cut.len() as u64, "the stale byte is cleared");
    }

    #[test]
    fn a_scan_finds_each_idempotent_batch_where_it_is() {
        let batch = |seq: i32, n: usize| {
            let mut b = batch::BatchBuilder::new(0).producer(5, 0, seq);
            for _ in 0..n {
                b.push(None, &[7; 900], &[]);
            }
            b.build()
        };
        let flushes = vec![vec![batch(0, 2), batch(2, 3)], vec![batch(5, 1)]];
        let (bytes, starts) = segment_with(&flushes, 100, 64 * 1024);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 100, 1 << 20).unwrap();
        let sequenced = |first_seq, records| Sequenced {
            producer_id: 5,
            epoch: 0,
            first_seq,
            records,
            max_timestamp: 0,
        };
        let at = |first, last| crate::producers::Verdict::Duplicate(OffsetRange { first, last });
        // Kept only up to the first flush's end: the third batch is cut, the others repeat.
        // The third batch starts the second flush, where the first one ends.
        let first_flush_end = starts[2];
        let mut kept = Producers::default();
        kept.absorb(s.producers, first_flush_end);
        assert_eq!(kept.check(&sequenced(0, 2)), at(100, 101));
        assert_eq!(kept.check(&sequenced(2, 3)), at(102, 104));
        assert_eq!(
            kept.check(&sequenced(5, 1)),
            crate::producers::Verdict::Write,
            "cut away: written as new"
        );
    }

    #[test]
    fn clean_segment_scans_to_its_last_flush() {
        let flushes = vec![
            vec![batch_of(2, 100), batch_of(1, 5000)],
            vec![batch_of(3, 10)],
        ];
        let (bytes, _) = segment_with(&flushes, 50, 64 * 1024);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 50, 1 << 20).unwrap();
        assert_eq!(s.next_offset, 56);
        assert_eq!(s.valid_end, s.sealed_end);
        assert_eq!(s.sealed_end, 12288);
        assert!(s.invalid.is_none() && s.later_flush_at.is_none());
        assert_eq!(s.dirty_end, s.valid_end);
        assert_eq!(s.index[0], IndexEntry { offset: 50, pos: 0 });
    }

    #[test]
    fn a_flip_before_a_later_flush_is_reported_as_corruption() {
        let flushes = vec![
            vec![batch_of(2, 100)],
            vec![batch_of(1, 100)],
            vec![batch_of(1, 100)],
        ];
        let (mut bytes, starts) = segment_with(&flushes, 0, 64 * 1024);
        bytes[starts[1] as usize + 30] ^= 1;
        let s = scan(MemFile(&bytes), bytes.len() as u64, 0, 1 << 20).unwrap();
        assert_eq!(s.valid_end, 4096);
        assert!(
            s.invalid.as_deref().is_some_and(|w| w.contains("CRC")),
            "{:?}",
            s.invalid
        );
        assert_eq!(s.later_flush_at, Some(3 * 4096 - TRAILER_BYTES as u64));
    }

    #[test]
    fn only_a_plausible_later_flush_counts_as_proof_of_corruption() {
        let flushes = vec![vec![batch_of(3, 100)]];
        let (mut bytes, _) = segment_with(&flushes, 10, 64 * 1024);
        // Past the end (offsets 10..13), a trailer that is valid on its own but whose offsets do
        // not go beyond the log: leftovers from elsewhere, not a later flush of this log.
        let stale = Trailer::alone(8192, 5, 1, CrcScope::Headers);
        stale.encode(&mut bytes[3 * 4096 - TRAILER_BYTES..3 * 4096]);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 10, 1 << 20).unwrap();
        assert_eq!(s.later_flush_at, None);
        assert_eq!(s.dirty_end, 3 * 4096, "it is still cleared as a leftover");
        // Nor one that ends at the log's own end: a later flush holds at least one record.
        let empty = Trailer::alone(8192, 13, 1, CrcScope::Headers);
        empty.encode(&mut bytes[3 * 4096 - TRAILER_BYTES..3 * 4096]);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 10, 1 << 20).unwrap();
        assert_eq!(s.later_flush_at, None);
        // A trailer that could only come from a later flush of this log is proof.
        let later = Trailer::alone(8192, 20, 1, CrcScope::Headers);
        later.encode(&mut bytes[3 * 4096 - TRAILER_BYTES..3 * 4096]);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 10, 1 << 20).unwrap();
        assert_eq!(s.later_flush_at, Some(3 * 4096 - TRAILER_BYTES as u64));
    }

    /// Rewrites the trailer of the flush ending at `end` to say that the log was still in
    /// flight from `pending_from` when the flush was written.
    fn written_beside(bytes: &mut [u8], end: usize, pending_from: u64) {
        let at = end - TRAILER_BYTES;
        let mut t = Trailer::decode(&bytes[at..end]).unwrap();
        t.pending_from = pending_from;
        t.encode(&mut bytes[at..end]);
    }

    #[test]
    fn a_flush_written_while_a_lost_one_was_in_flight_is_torn_tail_not_proof() {
        // Flushes at blocks 0, 1, 2: the second is lost whole; the third was written while
        // the second was in flight.
        let flushes = vec![
            vec![batch_of(1, 100)],
            vec![batch_of(1, 100)],
            vec![batch_of(1, 100)],
        ];
        let (mut bytes, _) = segment_with(&flushes, 0, 64 * 1024);
        written_beside(&mut bytes, 3 * 4096, 4096);
        bytes[4096..8192].fill(0);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 0, 1 << 20).unwrap();
        assert_eq!((s.sealed_end, s.next_offset), (4096, 1));
        assert_eq!(s.later_flush_at, None, "{:?}", s.invalid);
        assert_eq!(
            s.dirty_end,
            3 * 4096,
            "the third flush is cleared as a leftover"
        );

        // Written after the second one was durable, the same flush proves corruption.
        written_beside(&mut bytes, 3 * 4096, 8192);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 0, 1 << 20).unwrap();
        assert_eq!(s.later_flush_at, Some(3 * 4096 - TRAILER_BYTES as u64));
    }

    #[test]
    fn a_flip_outside_the_batch_crc_fails_the_whole_flush() {
        let flushes = vec![
            vec![batch_of(1, 100)],
            vec![batch_of(2, 100), batch_of(1, 50)],
            vec![batch_of(1, 100)],
        ];
        for scope in [CrcScope::Headers, CrcScope::Whole] {
            // The leader epoch of either batch of the second flush, then its padding: none of
            // them covered by a batch CRC.
            let (clean, starts) = segment_sealed_with(scope, &flushes, 0, 64 * 1024);
            for at in [starts[1] + 13, starts[2] + 14, starts[3] - 4096 + 2000] {
                let mut bytes = clean.clone();
                bytes[at as usize] ^= 1;
                let s = scan(MemFile(&bytes), bytes.len() as u64, 0, 1 << 20).unwrap();
                let found = (s.valid_end, s.sealed_end, s.next_offset);
                assert_eq!(found, (4096, 4096, 1), "{scope:?}, flip at {at}");
                assert!(s.invalid.as_deref().is_some_and(|w| w.contains("checksum")));
                assert!(s.later_flush_at.is_some());
            }
        }
    }

    #[test]
    fn flushes_sealed_over_every_byte_still_open_whole() {
        let flushes = vec![
            vec![batch_of(1, 100), batch_of(3, 700)],
            vec![batch_of(2, 5000)],
        ];
        let (bytes, _) = segment_sealed_with(CrcScope::Whole, &flushes, 40, 64 * 1024);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 40, 1 << 20).unwrap();
        assert_eq!(
            (s.sealed_end, s.next_offset, s.invalid),
            (4 * 4096, 46, None)
        );
    }

    #[test]
    fn a_checksum_kind_from_a_newer_writer_is_not_taken_on_trust() {
        let flushes = vec![vec![batch_of(1, 100)], vec![batch_of(1, 100)]];
        let (bytes, _) = segment_sealed_with(CrcScope::Unknown(7), &flushes, 0, 64 * 1024);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 0, 1 << 20).unwrap();
        assert_eq!((s.sealed_end, s.next_offset), (0, 0));
        assert!(s
            .invalid
            .as_deref()
            .is_some_and(|w| w.contains("does not know (7)")));
    }

    #[test]
    fn a_torn_last_flush_keeps_its_valid_prefix_unsealed() {
        let flushes = vec![
            vec![batch_of(1, 100)],
            vec![batch_of(1, 3000), batch_of(1, 3000)],
        ];
        let (mut bytes, starts) = segment_with(&flushes, 0, 64 * 1024);
        // Lose the block holding the second batch's tail and the trailer.
        bytes[8192..12288].fill(0);
        let s = scan(MemFile(&bytes), bytes.len() as u64, 0, 1 << 20).unwrap();
        assert_eq!(s.sealed_end, 4096);
        assert_eq!(s.valid_end, starts[2]);
        assert_eq!(s.next_offset, 2);
        assert!(s.later_flush_at.is_none());
        assert_eq!(
            s.dirty_end, 8192,
            "the torn second batch's first block is left over"
        );
        assert_eq!(s.tail_block.len() as u64, starts[2] - 4096);
    }
}
