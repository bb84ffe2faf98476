//! The read path: whole batches from an offset on, from the tail cache when it holds them,
//! else with O_DIRECT reads of the segments.

use crate::aligned::{align_down, align_up};
use crate::batch::{self, BatchView, LOG_OVERHEAD_BYTES};
use crate::error::DataError;
use crate::groups::ConsumeTask;
use crate::io::{Completion, FileId};
use crate::partition::Partition;
use crate::read_ahead::ReadAhead;
use crate::trailer::{self, Trailer, TRAILER_BYTES};
use crate::ReadDone;

/// Smallest disk read; reads are at least this long so small fetches still move forward.
const MIN_READ_BYTES: usize = 64 * 1024;
/// Largest single disk read.
const MAX_READ_BYTES: usize = 8 << 20;
/// Where recent reads stopped, remembered per partition.
const READ_HINTS: usize = 16;

/// Where recent disk reads of a partition stopped: the byte position of the batch starting at
/// the offset a reader will ask for next. A reader coming back for what follows (a fetch loop, a
/// group's next consume) starts there, not at the segment's sparse index entry before it,
/// which in a sealed segment can lie a megabyte earlier: that walk read and checked every batch
/// in between again, for each read.
#[derive(Debug, Default)]
pub struct ReadHints {
    ring: [Option<ReadHint>; READ_HINTS],
    next: usize,
}

#[derive(Debug, Clone, Copy)]
struct ReadHint {
    segment_base: u64,
    offset: u64,
    pos: u64,
}

impl ReadHints {
    fn note(&mut self, segment_base: u64, offset: u64, pos: u64) {
        self.ring[self.next] = Some(ReadHint {
            segment_base,
            offset,
            pos,
        });
        self.next = (self.next + 1) % READ_HINTS;
    }

    /// Where the batch starting at `offset` lies in segment `segment_base`, if a read saw it.
    fn find(&self, segment_base: u64, offset: u64) -> Option<u64> {
        self.ring
            .iter()
            .flatten()
            .find(|h| h.segment_base == segment_base && h.offset == offset)
            .map(|h| h.pos)
    }
}

/// What a read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, concatenated, exactly as stored (base offsets assigned).
    pub data: Vec<u8>,
    /// The offset to read from next: one past the last record returned.
    pub next_offset: u64,
    /// One past the last durable offset of the partition when the read was answered.
    pub high_watermark: u64,
}

/// Who a read answers.
pub enum ReadFor {
    /// A caller of the engine (answered through its ticket), or the engine itself.
    Caller(ReadDone),
    /// A consume being served on this shard, which goes on with what was read.
    Consume(Box<ConsumeTask>),
}

/// Where a read is: answered, or waiting for the disk.
pub enum ReadStep {
    /// Done: the answer, for whom it is.
    Done(ReadFor, Result<ReadResult, DataError>),
    /// The disk read to issue next.
    Disk(DiskRead),
}

/// A read waiting for the disk.
pub struct DiskRead {
    /// What it collects, and where it stands.
    collecting: Collecting,
    /// Segment being read (by base offset).
    segment_base: u64,
    /// Most bytes that may lie between `pos` and the batch holding `from`, before the first
    /// disk read: that read brings them in too, rather than stopping short of its budget.
    walk_bytes: usize,
    /// The length of the batch at `pos`, when a previous read saw only its start.
    need_bytes: usize,
    /// Bytes to read beyond the budget, whose whole batches the partition keeps for the next
    /// read (`read_ahead.rs`).
    ahead_bytes: usize,
    /// Who the answer goes to.
    pub target: ReadFor,
}

/// Batches collected from an offset on within a budget, and where the walk through a segment
/// stands.
struct Collecting {
    /// Offset asked for.
    from: u64,
    /// Byte budget (at least one batch is collected).
    max_bytes: usize,
    /// Position in the segment to continue parsing at.
    pos: u64,
    /// Batches collected so far.
    out: Vec<u8>,
    /// One past the last offset collected.
    next_offset: u64,
    /// Where the batch starting at `next_offset` lies, once the budget stopped the walk there.
    resume: Option<u64>,
}

impl Collecting {
    fn new(from: u64, max_bytes: usize, pos: u64) -> Self {
        Self {
            from,
            max_bytes,
            pos,
            out: Vec::new(),
            next_offset: from,
            resume: None,
        }
    }
}

impl DiskRead {
    /// Also reads `bytes` beyond the budget, for the partition to keep.
    pub fn read_ahead(&mut self, bytes: usize) {
        self.ahead_bytes = bytes;
    }

    /// The read as asked for (offset, budget, for whom), to be begun again later.
    pub fn into_request(self) -> (u64, usize, ReadFor) {
        (self.collecting.from, self.collecting.max_bytes, self.target)
    }
}

/// What parsing a region found.
enum Parsed {
    /// The byte budget is used up.
    Full,
    /// Needs the bytes from `pos` on (`need` of them when the batch length is known); past
    /// the segment's durable end this means the segment is done.
    More { pos: u64, need: usize },
}

impl Partition {
    /// Starts a read. Done at once when it can be (from memory, or with an error); otherwise
    /// the disk read to issue.
    pub fn begin_read(&mut self, from: u64, max_bytes: usize, target: ReadFor) -> ReadStep {
        let (start, end) = (self.log_start(), self.durable_next);
        if from < start || from > end {
            let err = DataError::OffsetOutOfRange {
                offset: from,
                start,
                end,
            };
            return ReadStep::Done(target, Err(err));
        }
        if from == end || self.tail.covers(from) {
            let mut data = Vec::new();
            let next_offset = self.tail.read(from, max_bytes, &mut data);
            let answer = ReadResult {
                data,
                next_offset,
                high_watermark: end,
            };
            return ReadStep::Done(target, Ok(answer));
        }
        let mut data = Vec::new();
        let ahead = self.read_ahead.as_ref();
        if let Some((next_offset, used_up)) = ahead.and_then(|a| a.read(from, max_bytes, &mut data))
        {
            if used_up {
                self.read_ahead = None;
            }
            let answer = ReadResult {
                data,
                next_offset,
                high_watermark: end,
            };
            return ReadStep::Done(target, Ok(answer));
        }
        let Some(seg) = self.segments.iter().rev().find(|s| s.base_offset <= from) else {
            // Below every segment, yet not below the log's start: nothing to read.
            let answer = ReadResult {
                data: Vec::new(),
                next_offset: from,
                high_watermark: end,
            };
            return ReadStep::Done(target, Ok(answer));
        };
        // Both lie at or before the batch holding `from` (a hint may lie on the padding ending
        // the flush before it, and the index may have an entry for that very batch): the later
        // one is the closer.
        let indexed = seg.lookup(from);
        let (pos, walk_bytes) = match self.read_hints.find(seg.base_offset, from) {
            Some(hint) if hint >= indexed.pos => (hint, 0),
            _ => (indexed.pos, indexed.walk_bytes),
        };
        ReadStep::Disk(DiskRead {
            collecting: Collecting::new(from, max_bytes, pos),
            segment_base: seg.base_offset,
            walk_bytes: usize::try_from(walk_bytes).unwrap_or(MAX_READ_BYTES),
            need_bytes: 0,
            ahead_bytes: 0,
            target,
        })
    }

    /// The file, aligned position and length of the next disk read for `r`, or `None` when the
    /// read is finished.
    pub fn next_read(&self, r: &DiskRead) -> Option<(FileId, u64, usize)> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.base_offset == r.segment_base)?;
        let pos = r.collecting.pos;
        if pos >= seg.durable_end {
            return None;
        }
        let start = align_down(pos);
        let body = r
            .collecting
            .max_bytes
            .saturating_add(r.walk_bytes)
            .saturating_add(r.ahead_bytes)
            .clamp(MIN_READ_BYTES, MAX_READ_BYTES)
            .max(r.need_bytes);
        let len = align_up((pos - start) + body as u64).min(seg.durable_end - start);
        Some((seg.file, start, len as usize))
    }

    /// Takes the completion of `r`'s disk read: the read again if it needs another disk read,
    /// or its answer.
    pub fn continue_read(&mut self, mut r: DiskRead, read_pos: u64, c: Completion) -> ReadStep {
        let Some(seg_index) = self
            .segments
            .iter()
            .position(|s| s.base_offset == r.segment_base)
        else {
            return self.finish_read(r, Ok(()));
        };
        let seg = &self.segments[seg_index];
        let (path, durable_end) = (seg.path.clone(), seg.durable_end);
        let n = match c.result {
            Ok(n) => n,
            Err(e) => return self.finish_read(r, Err(DataError::io("read segment", path, e))),
        };
        let Some(buf) = c.buf else {
            return self.finish_read(r, Ok(()));
        };
        r.walk_bytes = 0;
        let region_end = (read_pos + n as u64).min(durable_end);
        let region = &buf.as_slice()[..(region_end - read_pos) as usize];
        match collect(region, read_pos, &mut r.collecting) {
            Err((position, detail)) => {
                let err = DataError::Corruption {
                    path,
                    position,
                    detail,
                };
                self.finish_read(r, Err(err))
            }
            Ok(Parsed::Full) => {
                if let Some(pos) = r.collecting.resume {
                    self.read_hints
                        .note(r.segment_base, r.collecting.next_offset, pos);
                    if r.ahead_bytes > 0 {
                        let from = r.collecting.next_offset;
                        self.keep_ahead(region, read_pos, r.segment_base, from, pos);
                    }
                }
                self.finish_read(r, Ok(()))
            }
            Ok(Parsed::More { pos, need }) if pos < durable_end => {
                r.collecting.pos = pos;
                r.need_bytes = need;
                ReadStep::Disk(r)
            }
            Ok(_) => match self.segments.get(seg_index + 1) {
                Some(next) if next.base_offset < self.durable_next => {
                    r.segment_base = next.base_offset;
                    r.collecting.pos = 0;
                    r.need_bytes = 0;
                    ReadStep::Disk(r)
                }
                _ => self.finish_read(r, Ok(())),
            },
        }
    }

    /// `r`'s answer, with what it collected so far.
    pub fn finish_read(&self, r: DiskRead, outcome: Result<(), DataError>) -> ReadStep {
        let answer = outcome.map(|()| ReadResult {
            data: r.collecting.out,
            next_offset: r.collecting.next_offset,
            high_watermark: self.durable_next,
        });
        ReadStep::Done(r.target, answer)
    }

    /// Keeps the whole batches of `region` (read at `region_pos` of segment `segment_base`)
    /// from `pos`, where the batch starting at offset `from` lies, for the next read.
    fn keep_ahead(
        &mut self,
        region: &[u8],
        region_pos: u64,
        segment_base: u64,
        from: u64,
        pos: u64,
    ) {
        let mut ahead = Collecting::new(from, usize::MAX, pos);
        match collect(region, region_pos, &mut ahead) {
            Ok(Parsed::More { pos, .. }) if !ahead.out.is_empty() => {
                self.read_hints.note(segment_base, ahead.next_offset, pos);
                self.read_ahead = Some(ReadAhead::new(from, ahead.next_offset, ahead.out));
            }
            // Nothing whole beyond the answer, or damage the next read will report.
            _ => {}
        }
    }
}

/// Walks batches in `region` (which starts at segment position `region_pos`) from `r.pos`,
/// skipping padding and trailers, appending wanted batches to `r.out`.
fn collect(
    region: &[u8],
    region_pos: u64,
    r: &mut Collecting,
) -> std::result::Result<Parsed, (u64, String)> {
    let mut pos = r.pos;
    loop {
        let at = (pos - region_pos) as usize;
        // Only zeros up to where this flush's trailer would sit, then a trailer: the flush ends
        // here. No batch can look like that (its length field is non-zero and not negative).
        let flush_end = trailer::flush_end(pos);
        // Once something was collected every later batch is wanted, and whether it fits is
        // known from its length field alone, where that field lies before any trailer could
        // (padding is all zeros there, a batch's length never is): a batch that does not fit
        // must not cost a disk read of the rest of its flush, or of itself.
        let before_trailer = pos + LOG_OVERHEAD_BYTES as u64 <= flush_end - TRAILER_BYTES as u64;
        if !r.out.is_empty() && before_trailer {
            let prefix = region.get(at..at + LOG_OVERHEAD_BYTES);
            if let Some(len) = prefix.and_then(batch::declared_len) {
                if r.out.len() as u64 + len > r.max_bytes as u64 {
                    r.resume = Some(pos);
                    return Ok(Parsed::Full);
                }
            }
        }
        let Some(until_flush_end) = region.get(at..(flush_end - region_pos) as usize) else {
            return Ok(Parsed::More {
                pos,
                need: (flush_end - pos) as usize,
            });
        };
        let (padding, trailer) = until_flush_end.split_at(until_flush_end.len() - TRAILER_BYTES);
        if padding.iter().all(|&b| b == 0) && Trailer::decode(trailer).is_some() {
            pos = flush_end;
            continue;
        }
        let prefix = &until_flush_end[..LOG_OVERHEAD_BYTES.min(until_flush_end.len())];
        let len = batch::declared_len(prefix).ok_or((pos, "impossible batch length".to_string()))?
            as usize;
        let Some(bytes) = region.get(at..at + len) else {
            return Ok(Parsed::More { pos, need: len });
        };
        let view = BatchView::verify(bytes).map_err(|e| (pos, e.to_string()))?;
        if view.last_offset() as u64 >= r.from {
            // Where the length field shared bytes with a possible trailer, this is the check.
            if !r.out.is_empty() && r.out.len() + len > r.max_bytes {
                r.resume = Some(pos);
                return Ok(Parsed::Full);
            }
            r.out.extend_from_slice(bytes);
            r.next_offset = view.last_offset() as u64 + 1;
            if r.out.len() >= r.max_bytes {
                r.resume = Some(pos + len as u64);
                return Ok(Parsed::Full);
            }
        }
        pos += len as u64;
    }
}
