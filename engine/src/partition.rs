//! A partition's write side: gathering appends, group-committed flushes, segment rolls and
//! poisoning. One shard owns each partition; nothing here is shared between threads.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::aligned::{AlignedBuf, BLOCK_BYTES};
use crate::batch::{self, BatchView};
use crate::config::{EngineConfig, FlushSync};
use crate::error::DataError;
use crate::io::{Completion, Disk, IoKind, MetaFs, SyncAfter};
use crate::layout::segment_file_name;
use crate::linger::{Hold, Linger};
use crate::long_poll::WaitingReads;
use crate::prepare::NextSegment;
use crate::producers::{sequenced, Producers, Verdict};
use crate::read::{ReadFor, ReadHints};
use crate::read_ahead::ReadAhead;
use crate::retention::Retired;
use crate::segment::Segment;
use crate::summary;
use crate::tail::{Chunk, TailCache};
use crate::trailer::{self, CrcScope, Trailer, PENDING_BLOCKS_MAX, TRAILER_BYTES};
use crate::zeroing::{Zeroing, ZERO_CHUNK_BYTES, ZERO_FLUSH_BYTES_MAX};
use crate::{AppendDone, OffsetRange};

/// Smallest gather buffer; buffers grow by doubling up to the flush limit.
const MIN_GATHER_BYTES: usize = 64 * 1024;
/// Flush buffers kept for reuse per partition.
const SPARE_BUFFERS_MAX: usize = 2;
/// A flush of at most this many bytes is copied out for the tail cache, and its buffer (at
/// least [`MIN_GATHER_BYTES`]) reused at once. Larger flushes hand their buffer to the cache:
/// copying them costs more than registering a buffer (a fresh allocation to zero, per flush).
const SMALL_FLUSH_BYTES_MAX: usize = 32 << 10;

/// Appends waiting for the same flush.
struct Gather {
    buf: AlignedBuf,
    len: usize,
    /// Position of the flush in its segment (block aligned).
    start_pos: u64,
    /// This flush goes to a new segment starting at `first_offset`.
    new_segment: bool,
    first_offset: u64,
    next_offset: u64,
    waiters: Vec<(AppendDone, OffsetRange)>,
    /// (base offset, position in the flush) of each batch, for the index.
    batches: Vec<(u64, u32)>,
    /// CRC-32C of the batches' unchecked prefixes so far ([`CrcScope::Headers`]).
    prefix_crc: u32,
}

impl Gather {
    /// Bytes the flush occupies on disk: batches, padding and trailer, to a block boundary.
    fn flushed_len(&self) -> usize {
        trailer::flush_end(self.len as u64) as usize
    }
}

/// What must hold of a flush about to be written, gathered to be checked in one place.
struct FlushFacts {
    start_pos: u64,
    /// Where the last flush (durable or in flight) ended in the segment.
    segment_end: u64,
    segment_bytes: u64,
    len: usize,
    capacity: usize,
    first_offset: u64,
    next_offset: u64,
    /// One past the last offset of the last flush (durable or in flight).
    flushed_next: u64,
    /// The trailer as read back from the buffer, and as written.
    trailer: Option<Trailer>,
    written: Trailer,
}

impl FlushFacts {
    /// The first invariant that does not hold, said in words.
    fn check(&self) -> std::result::Result<(), String> {
        let block = crate::aligned::BLOCK_BYTES;
        let rules: [(bool, &str); 8] = [
            (
                self.start_pos == self.segment_end,
                "a flush starts where the last one ended",
            ),
            (
                self.start_pos.is_multiple_of(block as u64),
                "a flush starts on a block",
            ),
            (self.len.is_multiple_of(block), "a flush is whole blocks"),
            (self.len <= self.capacity, "a flush fits its buffer"),
            (
                self.start_pos + self.len as u64 <= self.segment_bytes,
                "a flush fits its segment",
            ),
            (
                self.first_offset == self.flushed_next,
                "a flush's offsets follow the last flush's",
            ),
            (
                self.next_offset > self.first_offset,
                "a flush holds at least one offset",
            ),
            (
                self.trailer == Some(self.written),
                "the trailer reads back as written",
            ),
        ];
        match rules.iter().find(|(holds, _)| !holds) {
            None => Ok(()),
            Some((_, rule)) => Err(format!(
                "{rule} (flush at byte {} of {} bytes, offsets {}..{}; segment flushed to {}, \
                 partition flushed to offset {})",
                self.start_pos,
                self.len,
                self.first_offset,
                self.next_offset,
                self.segment_end,
                self.flushed_next
            )),
        }
    }
}

/// A flush in flight: its write (made durable by itself, or by the `fdatasync` linked to it)
/// was submitted under `token`; its `Sync` completion says the durability holds.
struct Flush {
    token: u64,
    submitted: std::time::Instant,
    gather: Gather,
    len: usize,
    buf: Option<AlignedBuf>,
    write: Option<io::Result<usize>>,
    sync: Option<io::Result<usize>>,
}

/// The limits a partition works within (from [`EngineConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Segment file size.
    pub segment_bytes: u64,
    /// Largest batch.
    pub max_batch_bytes: usize,
    /// Largest flush.
    pub max_flush_bytes: usize,
    /// Bytes of log kept at least, if not everything.
    pub retention_bytes: Option<u64>,
    /// What makes a flush's write durable.
    pub flush_sync: SyncAfter,
    /// Flushes written at once (`EngineConfig::flushes_in_flight`).
    pub flushes_in_flight: usize,
}

impl Limits {
    /// Takes the limits from the engine configuration.
    pub fn from_config(cfg: &EngineConfig) -> Self {
        Self {
            segment_bytes: cfg.segment_bytes,
            max_batch_bytes: cfg.max_batch_bytes,
            max_flush_bytes: cfg.max_flush_bytes,
            retention_bytes: cfg.retention_bytes,
            flush_sync: match cfg.flush_sync {
                FlushSync::DsyncWrite => SyncAfter::ThisWrite,
                // `Auto` is resolved when the engine opens; were it not, the sync that holds on
                // every filesystem is the one to take.
                FlushSync::Fdatasync | FlushSync::Auto => SyncAfter::File,
            },
            flushes_in_flight: cfg.flushes_in_flight,
        }
    }
}

/// One partition of a topic.
pub struct Partition {
    pub(crate) topic: Arc<str>,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    /// The data directory's small files: where sealed segments' summaries go.
    pub(crate) files: Arc<dyn MetaFs>,
    pub(crate) segments: Vec<Segment>,
    /// A roll may have left more log than retention keeps.
    pub(crate) retention_due: bool,
    /// Segments dropped by retention so far, for the shard's counters.
    pub(crate) retired: Retired,
    /// Next offset to assign.
    next_offset: u64,
    /// High watermark: every offset below it is durable.
    pub(crate) durable_next: u64,
    pending: VecDeque<Gather>,
    pending_bytes: usize,
    /// Flushes in flight, oldest first: answered in this order, each only once every earlier
    /// one is durable.
    flushing: VecDeque<Flush>,
    pub(crate) tail: TailCache,
    poisoned: Option<DataError>,
    pub(crate) next_segment: Option<NextSegment>,
    pub(crate) need_prepare: bool,
    zero_segments: bool,
    zeroing: Zeroing,
    /// Moving average of flush sizes: large flushes amortise the extent conversion, so zeroing
    /// would only cost bandwidth.
    flush_bytes_avg: usize,
    spare: Vec<AlignedBuf>,
    /// Disk reads in flight; the partition may not be closed while any are.
    /// Where recent disk reads stopped (`read.rs`).
    pub(crate) read_hints: ReadHints,
    /// Batches a consume's disk read brought in beyond its answer (`read_ahead.rs`).
    pub(crate) read_ahead: Option<ReadAhead>,
    /// Idempotent producers' last batches (`producers.rs`).
    pub(crate) producers: Producers,
    /// Consumes take turns reading this partition from disk (`shard/consume.rs`): whether one
    /// is reading, and the reads (offset, budget, consume) waiting for it, counted in
    /// `reads_in_flight`.
    pub(crate) consume_reading: bool,
    pub(crate) consume_reads_waiting: Vec<(u64, usize, ReadFor)>,
    pub(crate) reads_in_flight: usize,
    /// Reads waiting at the partition's end for data (`long_poll.rs`).
    pub(crate) waiting_reads: WaitingReads,
    pub(crate) limits: Limits,
    /// Whether the next flush waits a moment for the appenders the last one answered.
    linger: Linger,
}

/// What a completed flush did, for the shard's counters.
pub struct FlushDone {
    /// Appends answered.
    pub appends: usize,
    /// Bytes written (whole blocks).
    pub bytes: usize,
    /// Whether it succeeded.
    pub ok: bool,
    /// Microseconds from submission to both completions.
    pub io_us: u64,
    /// The appenders to tell, once the next flush is on its way: the partition's state already
    /// reflects the outcome, so answering them can overlap the next write.
    pub answers: Vec<(AppendDone, Result<OffsetRange, DataError>)>,
}

impl Partition {
    /// A partition whose segments were recovered; `segments` is not empty.
    pub(crate) fn new(
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        segments: Vec<Segment>,
        limits: Limits,
        cfg: &EngineConfig,
    ) -> Self {
        let (tail_cache_bytes, zero_segments) = (cfg.tail_cache_bytes, cfg.zero_segments);
        let next = segments.last().map_or(0, |s| s.next_offset);
        let mut partition = Self {
            topic,
            id,
            dir,
            files: cfg.meta_fs(),
            segments,
            retention_due: true,
            retired: Retired::default(),
            next_offset: next,
            durable_next: next,
            pending: VecDeque::new(),
            pending_bytes: 0,
            flushing: VecDeque::new(),
            tail: TailCache::new(tail_cache_bytes),
            poisoned: None,
            next_segment: None,
            need_prepare: true,
            zero_segments,
            zeroing: Zeroing::new(),
            flush_bytes_avg: 0,
            spare: Vec::new(),
            reads_in_flight: 0,
            read_hints: ReadHints::default(),
            read_ahead: None,
            producers: Producers::default(),
            consume_reading: false,
            consume_reads_waiting: Vec::new(),
            waiting_reads: WaitingReads::default(),
            limits,
            linger: Linger::new(cfg.commit_linger),
        };
        partition.producers.set_expiry(cfg.producer_expiry);
        partition
    }

    /// Bytes gathered and not yet durable.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// True when no flush or read is in flight, and no read waits.
    pub fn is_idle(&self) -> bool {
        self.flushing.is_empty()
            && self.reads_in_flight == 0
            && !self.zeroing.busy()
            && self.waiting_reads.is_empty()
    }

    /// True when no flush of this partition is in flight.
    pub fn is_flushing_idle(&self) -> bool {
        self.flushing.is_empty()
    }

    /// True when appends are gathered and a flush of them may start now: fewer flushes than
    /// the limit are in flight, and a flush into a new segment waits until the old segment's
    /// flushes are done (a roll seals their segment, and recovery reads each segment alone).
    pub fn wants_flush(&self) -> bool {
        let Some(g) = self.pending.front() else {
            return false;
        };
        if self.flushing.is_empty() {
            return true;
        }
        let behind = g.start_pos.saturating_sub(self.pending_from(g));
        self.flushing.len() < self.limits.flushes_in_flight
            && !g.new_segment
            && behind / BLOCK_BYTES as u64 <= PENDING_BLOCKS_MAX
    }

    /// Where the part of the segment not yet durable begins, for a flush of `g`: the start of
    /// the oldest flush in flight, or `g`'s own start.
    fn pending_from(&self, g: &Gather) -> u64 {
        self.flushing
            .front()
            .map_or(g.start_pos, |f| f.gather.start_pos)
    }

    /// Whether the next flush should wait a moment for more appends (`linger.rs`). Only a
    /// lone gather well below the flush limit waits.
    pub fn hold_flush(&mut self, now: Instant) -> Hold {
        let Some(g) = self.pending.front() else {
            return Hold::Go;
        };
        if self.pending.len() > 1
            || self.poisoned.is_some()
            || g.len >= self.limits.max_flush_bytes / 2
        {
            self.linger.reset();
            return Hold::Go;
        }
        self.linger.hold(g.waiters.len(), now)
    }

    /// Appends still expected before a held flush goes (0 when none is held).
    pub fn linger_missing(&self) -> usize {
        self.linger
            .missing(self.pending.front().map_or(0, |g| g.waiters.len()))
    }

    /// First offset kept.
    pub fn log_start(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base_offset)
    }

    /// Validates `batch`, assigns its offsets and gathers it into the next flush. `done` is
    /// called once the batch is durable, or with the reason it never will be.
    pub fn append(&mut self, batch: Bytes, done: AppendDone) {
        if let Some(err) = &self.poisoned {
            return done(Err(err.clone()));
        }
        if batch.len() > self.limits.max_batch_bytes {
            let max = self.limits.max_batch_bytes;
            return done(Err(DataError::BatchTooLarge {
                size: batch.len(),
                max,
            }));
        }
        let checked = BatchView::verify(&batch).and_then(|view| {
            view.check_appendable()?;
            Ok((view.record_count() as u64, sequenced(&view)))
        });
        let (count, seq) = match checked {
            Ok(checked) => checked,
            Err(e) => return done(Err(e.into())),
        };
        if let Some(seq) = &seq {
            match self.producers.check(seq) {
                Verdict::Write => {}
                Verdict::Duplicate(original) => return self.answer_duplicate(original, done),
                refused => return done(Err(refused.refusal(seq))),
            }
        }
        let first = self.next_offset;
        let range = OffsetRange {
            first,
            last: first + count - 1,
        };
        let max_flush = self.limits.max_flush_bytes;
        let g = self.gather_for(batch.len());
        let at = g.len;
        let needed = trailer::flush_end((at + batch.len()) as u64) as usize;
        if needed > g.buf.capacity() {
            let grown = (g.buf.capacity() * 2).min(max_flush);
            let mut bigger = AlignedBuf::zeroed(grown.max(needed));
            bigger.as_mut_slice()[..at].copy_from_slice(&g.buf.as_slice()[..at]);
            g.buf = bigger;
        }
        // The batch arrives shared (it may still be part of a connection's receive buffer), so
        // its offsets are set in the flush's copy, before the prefix that covers them is hashed.
        let copy = &mut g.buf.as_mut_slice()[at..at + batch.len()];
        copy.copy_from_slice(&batch);
        batch::set_base_offset(copy, first);
        g.batches.push((first, at as u32));
        g.prefix_crc =
            keel_format::crc::crc32c_append(g.prefix_crc, trailer::unchecked_prefix(copy));
        g.len += batch.len();
        g.next_offset = first + count;
        g.waiters.push((done, range));
        let end_pos = g.start_pos + g.len as u64;
        self.next_offset = first + count;
        self.pending_bytes += batch.len();
        if let Some(seq) = &seq {
            self.producers.record(seq, range, end_pos);
        }
    }

    /// Answers a batch sent again with the offsets it was first given, once they are durable:
    /// at once, or with the flush that carries them.
    fn answer_duplicate(&mut self, original: OffsetRange, done: AppendDone) {
        if original.last < self.durable_next {
            return done(Ok(original));
        }
        let holds = |g: &Gather| g.first_offset <= original.first && original.last < g.next_offset;
        if let Some(g) = self.pending.iter_mut().find(|g| holds(g)) {
            return g.waiters.push((done, original));
        }
        if let Some(f) = self.flushing.iter_mut().find(|f| holds(&f.gather)) {
            return f.gather.waiters.push((done, original));
        }
        // Not durable, yet in no flush: its flush failed, which poisons the partition, and a
        // poisoned partition answers before looking at sequences.
        done(Err(DataError::BrokenInvariant {
            topic: self.topic.to_string(),
            partition: self.id,
            what: format!(
                "offsets {}..={} of a repeated batch are neither durable nor being flushed",
                original.first, original.last
            ),
        }))
    }

    /// The gather that takes a batch of `len` bytes: the newest one if it has room in its flush
    /// and its segment, else a new one.
    fn gather_for(&mut self, len: usize) -> &mut Gather {
        let limits = self.limits;
        let fits = |g: &Gather| {
            let flushed = trailer::flush_end((g.len + len) as u64);
            flushed as usize <= limits.max_flush_bytes
                && g.start_pos + flushed <= limits.segment_bytes
        };
        if !self.pending.back().is_some_and(fits) {
            let mut start_pos = self.next_gather_pos();
            let new_segment = start_pos + trailer::flush_end(len as u64) > limits.segment_bytes;
            if new_segment {
                start_pos = 0;
            }
            let buf = match self.spare.pop() {
                Some(buf) => buf,
                None => AlignedBuf::zeroed(MIN_GATHER_BYTES),
            };
            self.pending.push_back(Gather {
                buf,
                len: 0,
                start_pos,
                new_segment,
                first_offset: self.next_offset,
                next_offset: self.next_offset,
                waiters: Vec::new(),
                batches: Vec::new(),
                prefix_crc: 0,
            });
        }
        let last = self.pending.len() - 1;
        &mut self.pending[last]
    }

    /// Where a new gather would start in the segment the last gather (or flush) targets.
    fn next_gather_pos(&self) -> u64 {
        if let Some(back) = self.pending.back() {
            return back.start_pos + back.flushed_len() as u64;
        }
        if let Some(f) = self.flushing.back() {
            return f.gather.start_pos + f.len as u64;
        }
        self.segments.last().map_or(0, |s| s.durable_end)
    }

    /// Starts the next flush if [`Partition::wants_flush`]: one aligned write of the gathered
    /// batches, padding and trailer, durable when it completes. Returns whether it submitted
    /// one.
    pub fn start_flush<D: Disk>(&mut self, disk: &mut D, token: u64) -> bool {
        if !self.wants_flush() {
            return false;
        }
        if self.flush_waits_for_zeroing() {
            // Its completion starts the flush.
            return false;
        }
        let Some(mut g) = self.pending.pop_front() else {
            return false;
        };
        if g.new_segment {
            if let Err(e) = self.roll(disk, g.first_offset) {
                // Nothing of these appends was written: fail them and every later one (their
                // offsets follow), and hand the offsets out again.
                self.next_offset = g.first_offset;
                self.pending.push_front(g);
                self.fail_pending(&e);
                return false;
            }
        }
        let Some(seg) = self.segments.last() else {
            self.pending.push_front(g);
            let path = self.dir.clone();
            let err = io::Error::other("partition has no segment");
            self.fail_pending(&DataError::io("flush to", path, err));
            return false;
        };
        let len = g.flushed_len();
        let trailer_at = len - TRAILER_BYTES;
        let pending_from = self.pending_from(&g);
        let (segment_end, flushed_next) = match self.flushing.back() {
            Some(f) => (f.gather.start_pos + f.len as u64, f.gather.next_offset),
            None => (seg.durable_end, self.durable_next),
        };
        let bytes = g.buf.as_mut_slice();
        bytes[g.len..trailer_at].fill(0);
        let t = Trailer {
            flush_start: g.start_pos,
            pending_from,
            next_offset: g.next_offset,
            flush_crc: keel_format::crc::crc32c_append(g.prefix_crc, &bytes[g.len..trailer_at]),
            scope: CrcScope::Headers,
        };
        t.encode(&mut bytes[trailer_at..len]);
        let facts = FlushFacts {
            start_pos: g.start_pos,
            segment_end,
            segment_bytes: self.limits.segment_bytes,
            len,
            capacity: g.buf.capacity(),
            first_offset: g.first_offset,
            next_offset: g.next_offset,
            flushed_next,
            trailer: Trailer::decode(&g.buf.as_slice()[trailer_at..len]),
            written: t,
        };
        if let Err(what) = facts.check() {
            // A bug, caught before the write: nothing is written and nothing is acknowledged.
            let err = DataError::BrokenInvariant {
                topic: self.topic.to_string(),
                partition: self.id,
                what,
            };
            log::error!("{err}; the partition takes no more writes");
            self.pending.push_front(g);
            self.fail_pending(&err);
            self.poisoned = Some(err);
            return false;
        }
        let buf = std::mem::replace(&mut g.buf, AlignedBuf::zeroed(0));
        // Each flush needs only its own bytes made durable: the flushes before it are durable
        // already or have syncs of their own in flight, and it is answered only once they are
        // (`take_finished`). Either kind of sync gives that (`filesystem.rs` says which one
        // this filesystem can be trusted with).
        let sync = self.limits.flush_sync;
        disk.submit_write(seg.file, g.start_pos, buf, len, token, sync);
        self.linger.reset();
        self.flushing.push_back(Flush {
            token,
            submitted: crate::clock::now(),
            gather: g,
            len,
            buf: None,
            write: None,
            sync: None,
        });
        if self.need_prepare {
            // Done while the flush is in the kernel, so the next roll finds its file ready.
            self.need_prepare = false;
            let (dir, size) = (&self.dir, self.limits.segment_bytes);
            match NextSegment::create(disk, dir, size) {
                Ok(next) => self.next_segment = Some(next),
                Err(e) => log::warn!(
                    "{}/{}: could not prepare the next segment: {e}",
                    self.topic,
                    self.id
                ),
            }
        }
        true
    }

    /// Moves to a new segment whose first offset is `base_offset`.
    fn roll<D: Disk>(&mut self, disk: &mut D, base_offset: u64) -> Result<(), DataError> {
        let next = match self.next_segment.take() {
            Some(next) => next,
            None => NextSegment::create(disk, &self.dir, self.limits.segment_bytes)?,
        };
        let path = self.dir.join(segment_file_name(base_offset));
        if let Err(e) = disk.rename(&next.path, &path) {
            self.next_segment = Some(next);
            return Err(DataError::io("rename prepared segment to", path, e));
        }
        let file = next.file;
        // The new name must be durable before anything stored under it is acknowledged.
        disk.sync_dir(&self.dir)
            .map_err(|e| DataError::io("sync directory", &self.dir, e))?;
        if let Some(sealed) = self.segments.last_mut() {
            sealed.seal_index();
        }
        // Nothing of it changes any more, and every flush of it is durable (a roll waits for
        // them).
        if let Some(sealed) = self.segments.last() {
            summary::save(&*self.files, &self.dir, sealed, &self.producers);
        }
        self.segments.push(Segment::new(
            base_offset,
            path,
            file,
            0,
            base_offset,
            Vec::new(),
        ));
        self.need_prepare = true;
        // Before the next segment is prepared: a dropped file can be it.
        self.retention_due = true;
        self.enforce_retention(disk);
        Ok(())
    }

    /// Takes a completion of a flush in flight. Returns true once that flush has all its
    /// completions (its token is done with); [`Partition::take_finished`] then answers it when
    /// its turn comes.
    pub fn on_flush_completion(&mut self, c: Completion) -> bool {
        let Some(f) = self.flushing.iter_mut().find(|f| f.token == c.token) else {
            return false;
        };
        match c.kind {
            IoKind::Write => {
                f.buf = c.buf;
                f.write = Some(c.result);
            }
            IoKind::Sync => f.sync = Some(c.result),
            IoKind::Read => return false,
        }
        f.write.is_some() && f.sync.is_some()
    }

    /// The oldest flush in flight, once it has all its completions: every flush before it was
    /// answered, so its appends can be. Call until it gives `None`. After a failed flush, the
    /// ones written beside it are only taken back (their appends were answered with the
    /// failure).
    pub fn take_finished(&mut self) -> Option<FlushDone> {
        loop {
            let front = self.flushing.front()?;
            if front.write.is_none() || front.sync.is_none() {
                return None;
            }
            let mut f = self.flushing.pop_front()?;
            if self.poisoned.is_some() {
                debug_assert!(f.gather.waiters.is_empty());
                if let Some(buf) = f.buf.take() {
                    self.recycle(vec![buf]);
                }
                continue;
            }
            return Some(self.finish(f));
        }
    }

    /// Commits or fails `f`, the oldest flush, whose completions are all in.
    fn finish(&mut self, mut f: Flush) -> FlushDone {
        let outcome = match (f.write.take(), f.sync.take()) {
            (Some(Ok(n)), Some(Ok(_))) if n == f.len => Ok(()),
            (Some(Ok(n)), Some(Ok(_))) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", f.len),
            )),
            (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
            _ => Err(io::Error::other("flush completion missing")),
        };
        let appends = f.gather.waiters.len();
        let bytes = f.len;
        let io_us = crate::clock::now()
            .saturating_duration_since(f.submitted)
            .as_micros() as u64;
        self.flush_bytes_avg = (self.flush_bytes_avg * 7 + bytes) / 8;
        let ok = outcome.is_ok();
        let answers = match outcome {
            Ok(()) => self.commit(f),
            Err(e) => self.poison(f, e),
        };
        if ok {
            let gathered = self.pending.iter().map(|g| g.waiters.len()).sum();
            self.linger
                .flush_done(appends, gathered, Duration::from_micros(io_us));
        } else {
            self.linger.reset();
        }
        FlushDone {
            appends,
            bytes,
            ok,
            io_us,
            answers,
        }
    }

    fn commit(&mut self, mut f: Flush) -> Vec<(AppendDone, Result<OffsetRange, DataError>)> {
        let g = &mut f.gather;
        if let Some(seg) = self.segments.last_mut() {
            for &(offset, at) in &g.batches {
                seg.note_batch(offset, g.start_pos + u64::from(at));
            }
            seg.durable_end = g.start_pos + f.len as u64;
            seg.next_offset = g.next_offset;
        }
        self.durable_next = g.next_offset;
        self.pending_bytes -= g.len;
        if let Some(buf) = f.buf.take() {
            let mut evicted = Vec::new();
            // A small flush's batches are copied out into a buffer of their size: the flush
            // buffer goes straight back to be gathered into again (keeping its registration
            // with the ring, where handing every flush's buffer to the cache made each flush
            // take a new buffer and register it), and the cache holds what it caches.
            let buf = if f.len <= SMALL_FLUSH_BYTES_MAX {
                let mut small = AlignedBuf::zeroed(g.len);
                small.as_mut_slice()[..g.len].copy_from_slice(&buf.as_slice()[..g.len]);
                evicted.push(buf);
                small
            } else {
                buf
            };
            let chunk = Chunk {
                buf,
                data_len: g.len,
                first_offset: g.first_offset,
            };
            self.tail.push(chunk, &mut evicted);
            self.recycle(evicted);
        }
        g.waiters
            .drain(..)
            .map(|(done, range)| (done, Ok(range)))
            .collect()
    }

    /// A write or sync failed: after an fsync error the file's state is unknown, so the
    /// partition takes no more writes. Everything not yet durable fails, the flushes written
    /// beside this one included (they are taken back as their completions come); reads go on.
    fn poison(
        &mut self,
        mut f: Flush,
        cause: io::Error,
    ) -> Vec<(AppendDone, Result<OffsetRange, DataError>)> {
        let path = self
            .segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        log::error!(
            "{}/{}: write or sync of {} failed, partition stops taking writes: {cause}",
            self.topic,
            self.id,
            path.display()
        );
        let err = DataError::Poisoned {
            topic: self.topic.to_string(),
            partition: self.id,
            path,
            source: Arc::new(cause),
        };
        self.pending_bytes -= f.gather.len;
        let mut answers: Vec<_> = f
            .gather
            .waiters
            .drain(..)
            .map(|(done, _)| (done, Err(err.clone())))
            .collect();
        for later in &mut self.flushing {
            self.pending_bytes -= later.gather.len;
            let failed = later.gather.waiters.drain(..);
            answers.extend(failed.map(|(done, _)| (done, Err(err.clone()))));
        }
        if let Some(buf) = f.buf.take() {
            self.recycle(vec![buf]);
        }
        self.fail_pending(&err);
        self.poisoned = Some(err);
        answers
    }

    /// Fails every gathered append that has not been submitted.
    pub fn fail_pending(&mut self, err: &DataError) {
        let mut freed = Vec::new();
        for mut g in self.pending.drain(..) {
            self.pending_bytes -= g.len;
            for (done, _) in g.waiters.drain(..) {
                done(Err(err.clone()));
            }
            freed.push(g.buf);
        }
        self.recycle(freed);
    }

    fn recycle(&mut self, bufs: Vec<AlignedBuf>) {
        for buf in bufs {
            if self.spare.len() < SPARE_BUFFERS_MAX && buf.capacity() >= MIN_GATHER_BYTES {
                self.spare.push(buf);
            }
        }
    }

    /// True when the next flush would write where a zero chunk is in flight.
    fn flush_waits_for_zeroing(&self) -> bool {
        let Some(g) = self.pending.front() else {
            return false;
        };
        let end = g.start_pos + g.flushed_len() as u64;
        let file = if g.new_segment {
            self.next_segment.as_ref().map(|n| n.file)
        } else {
            self.segments.last().map(|s| s.file)
        };
        file.is_some_and(|f| self.zeroing.overlaps(f, g.start_pos, end))
    }

    /// Submits the next zero chunk into the prepared next segment, if one is due. The active
    /// segment is never zeroed while in use: any metadata change to its file would make the
    /// appenders' next `fdatasync` commit the journal.
    pub fn zero_step<D: Disk>(&mut self, disk: &mut D, token: u64) -> bool {
        let big_flushes = self.flush_bytes_avg >= ZERO_FLUSH_BYTES_MAX;
        if !self.zero_segments || big_flushes || self.poisoned.is_some() {
            return false;
        }
        // Paced to twice the writer's progress through the active segment, so the next one is
        // ready when the active one is half full and zeroing never floods the device.
        let size = self.limits.segment_bytes;
        let written = self.segments.last().map_or(size, |s| s.durable_end);
        let target = written
            .saturating_mul(2)
            .saturating_add(ZERO_CHUNK_BYTES)
            .min(size);
        match &self.next_segment {
            Some(next) if next.zeroed_to < target => {
                self.zeroing
                    .submit(disk, next.file, next.zeroed_to, size, token)
            }
            _ => false,
        }
    }

    /// Takes a completion of the zero chunk in flight.
    pub fn on_zero_completion(&mut self, c: Completion) {
        let Some(done) = self.zeroing.on_completion(c) else {
            return;
        };
        // A failed chunk is given up on: the space stays usable as reserved.
        let end = if done.ok {
            done.end
        } else {
            self.limits.segment_bytes
        };
        if let Some(next) = self.next_segment.as_mut().filter(|n| n.file == done.file) {
            next.zeroed_to = end;
        }
    }

    /// True while a zero chunk is in flight.
    pub fn zeroing(&self) -> bool {
        self.zeroing.busy()
    }

    /// Closes every file (the partition must be idle).
    pub fn close<D: Disk>(self, disk: &mut D) {
        debug_assert!(self.is_idle());
        for seg in &self.segments {
            disk.close(seg.file);
        }
        if let Some(next) = self.next_segment {
            disk.close(next.file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> FlushFacts {
        let t = Trailer::alone(8192, 10, 7, CrcScope::Headers);
        FlushFacts {
            start_pos: 8192,
            segment_end: 8192,
            segment_bytes: 1 << 20,
            len: 4096,
            capacity: 8192,
            first_offset: 5,
            next_offset: 10,
            flushed_next: 5,
            trailer: Some(t),
            written: t,
        }
    }

    #[test]
    fn each_flush_invariant_is_checked_on_its_own() {
        assert_eq!(facts().check(), Ok(()));
        let broken: [(FlushFacts, &str); 5] = [
            (
                FlushFacts {
                    segment_end: 4096,
                    ..facts()
                },
                "starts where the last one ended",
            ),
            (
                FlushFacts {
                    len: 4000,
                    ..facts()
                },
                "whole blocks",
            ),
            (
                FlushFacts {
                    flushed_next: 4,
                    ..facts()
                },
                "follow the last flush's",
            ),
            (
                FlushFacts {
                    next_offset: 5,
                    ..facts()
                },
                "at least one offset",
            ),
            (
                FlushFacts {
                    trailer: None,
                    ..facts()
                },
                "reads back as written",
            ),
        ];
        for (f, rule) in broken {
            let err = f.check().unwrap_err();
            assert!(err.contains(rule), "{err}");
        }
    }
    use crate::io::{Block, MemDisk};
    use crate::zeroing::ZERO_CHUNK_BYTES;

    fn batch(value_len: usize) -> Bytes {
        let mut b = crate::BatchBuilder::new(0);
        b.push(None, &vec![0x33; value_len], &[]);
        b.build().into()
    }

    /// A fresh partition in `dir` on `disk`: 1 MiB segments and flushes.
    fn partition(disk: &mut MemDisk, dir: &std::path::Path, commit_linger: Duration) -> Partition {
        let mut cfg = EngineConfig::new(dir);
        cfg.segment_bytes = 1 << 20;
        cfg.max_flush_bytes = 1 << 20;
        cfg.max_batch_bytes = 256 << 10;
        cfg.commit_linger = commit_linger;
        let first = disk.open(&dir.join(segment_file_name(0)), true).unwrap();
        let segments = vec![Segment::new(
            0,
            dir.join(segment_file_name(0)),
            first,
            0,
            0,
            Vec::new(),
        )];
        Partition::new(
            Arc::from("t"),
            0,
            dir.to_path_buf(),
            segments,
            Limits::from_config(&cfg),
            &cfg,
        )
    }

    /// Completes every operation the disk holds and hands the flushes' completions to `p`;
    /// returns what the last flush answered did.
    fn complete_flush(disk: &mut MemDisk, p: &mut Partition) -> Option<FlushDone> {
        while disk.complete(0).is_some() {}
        let mut c = Vec::new();
        disk.wait(&mut c, Block::No).unwrap();
        for c in c {
            p.on_flush_completion(c);
        }
        std::iter::from_fn(|| p.take_finished()).last()
    }

    #[test]
    fn after_a_flush_that_answered_more_than_gathered_the_next_one_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let linger = Duration::from_secs(5);
        let mut p = partition(&mut disk, dir.path(), linger);
        let done = |_r: Result<OffsetRange, DataError>| {};
        // Flush 1 carries 6 appends; 2 more arrive while it runs.
        for _ in 0..6 {
            p.append(batch(100), Box::new(done));
        }
        assert_eq!(
            p.hold_flush(Instant::now()),
            Hold::Go,
            "nothing expected yet"
        );
        let submitted = Instant::now();
        assert!(p.start_flush(&mut disk, 1));
        for _ in 0..2 {
            p.append(batch(100), Box::new(done));
        }
        // The write+sync "takes" 20 ms: the wait may last up to half of it.
        std::thread::sleep(Duration::from_millis(20));
        let flushed = complete_flush(&mut disk, &mut p).unwrap();
        assert_eq!((flushed.appends, flushed.ok), (6, true));
        let t0 = Instant::now();
        let Hold::Wait { until, began: true } = p.hold_flush(t0) else {
            panic!("2 gathered against 6 answered: the next flush must wait");
        };
        let io_at_most = t0 - submitted;
        assert!(
            until >= t0 + Duration::from_millis(10) && until <= t0 + io_at_most / 2,
            "the wait is half the flush's I/O time (at least 20 ms, at most {io_at_most:?}): {:?}",
            until - t0
        );
        assert_eq!(p.linger_missing(), 6, "6 + 2 expected, 2 in");
        // Five of the six come back: still waiting, for the same deadline.
        for _ in 0..5 {
            p.append(batch(100), Box::new(done));
        }
        assert_eq!(
            p.hold_flush(Instant::now()),
            Hold::Wait {
                until,
                began: false
            }
        );
        assert_eq!(p.linger_missing(), 1);
        // The last one: the flush goes with all 8.
        p.append(batch(100), Box::new(done));
        assert_eq!(p.hold_flush(Instant::now()), Hold::Go);
        assert!(p.start_flush(&mut disk, 2));
        let flushed = complete_flush(&mut disk, &mut p).unwrap();
        assert_eq!(flushed.appends, 8);
        // Nobody is gathered and 8 were answered; one comes back and the rest never do: at
        // the deadline it goes without them.
        p.append(batch(100), Box::new(done));
        let Hold::Wait { until, .. } = p.hold_flush(Instant::now()) else {
            panic!("1 of 8 back: the flush waits");
        };
        assert_eq!(p.hold_flush(until), Hold::GoAtDeadline);
        assert!(p.start_flush(&mut disk, 3));
    }

    /// Appends `n` one-record batches answering into `log` as (offset, ok).
    fn append_logged(p: &mut Partition, n: usize, log: &Arc<std::sync::Mutex<Vec<(u64, bool)>>>) {
        for _ in 0..n {
            let log = Arc::clone(log);
            p.append(
                batch(100),
                Box::new(move |r: Result<OffsetRange, DataError>| {
                    let entry = match r {
                        Ok(range) => (range.first, true),
                        Err(_) => (u64::MAX, false),
                    };
                    log.lock().unwrap().push(entry);
                }),
            );
        }
    }

    /// The completions of the `index`-th queued operation.
    fn complete_one(disk: &mut MemDisk, index: usize) -> Vec<Completion> {
        disk.complete(index).unwrap();
        let mut c = Vec::new();
        disk.wait(&mut c, Block::No).unwrap();
        c
    }

    #[test]
    fn a_later_flush_that_completes_first_is_answered_after_the_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let mut p = partition(&mut disk, dir.path(), Duration::ZERO);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        append_logged(&mut p, 3, &log);
        assert!(p.start_flush(&mut disk, 1));
        append_logged(&mut p, 2, &log);
        assert!(
            p.wants_flush(),
            "a second flush may go while the first syncs"
        );
        assert!(p.start_flush(&mut disk, 2));
        append_logged(&mut p, 1, &log);
        assert!(!p.wants_flush(), "two flushes in flight is the limit");
        assert!(!p.start_flush(&mut disk, 3));

        // The second flush completes first: nothing is answered, nothing is durable.
        for c in complete_one(&mut disk, 1) {
            p.on_flush_completion(c);
        }
        assert!(p.take_finished().is_none());
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(p.durable_next, 0);

        // Then the first: both are answered, in order.
        for c in complete_one(&mut disk, 0) {
            p.on_flush_completion(c);
        }
        let first = p.take_finished().unwrap();
        let second = p.take_finished().unwrap();
        assert!(p.take_finished().is_none());
        assert_eq!((first.answers.len(), second.answers.len()), (3, 2));
        for (answer, outcome) in first.answers.into_iter().chain(second.answers) {
            answer(outcome);
        }
        let offsets: Vec<u64> = log.lock().unwrap().iter().map(|&(o, _)| o).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4]);
        assert_eq!(p.durable_next, 5);

        // The second flush's trailer says the first was still in flight when it was written.
        let bytes = disk.contents(p.segments[0].file).to_vec();
        let end = p.segments[0].durable_end as usize;
        let t = Trailer::decode(&bytes[end - TRAILER_BYTES..end]).unwrap();
        assert_eq!((t.flush_start, t.pending_from), (4096, 0));
        assert!(p.wants_flush(), "the third flush may go now");
    }

    #[test]
    fn a_failed_flush_fails_the_one_written_beside_it_even_if_that_one_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let mut p = partition(&mut disk, dir.path(), Duration::ZERO);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        append_logged(&mut p, 2, &log);
        assert!(p.start_flush(&mut disk, 1));
        append_logged(&mut p, 2, &log);
        assert!(p.start_flush(&mut disk, 2));
        for c in complete_one(&mut disk, 1) {
            p.on_flush_completion(c);
        }
        for mut c in complete_one(&mut disk, 0) {
            if c.kind == IoKind::Sync {
                c.result = Err(io::Error::from_raw_os_error(libc::EIO));
            }
            p.on_flush_completion(c);
        }
        let failed = p.take_finished().unwrap();
        assert!(!failed.ok);
        assert!(
            p.take_finished().is_none(),
            "the second flush is only taken back"
        );
        for (answer, outcome) in failed.answers {
            answer(outcome);
        }
        assert_eq!(*log.lock().unwrap(), vec![(u64::MAX, false); 4]);
        assert_eq!(p.durable_next, 0);
        assert!(p.is_idle());
        assert_eq!(p.pending_bytes(), 0);
        append_logged(&mut p, 1, &log);
        assert_eq!(
            log.lock().unwrap().len(),
            5,
            "a poisoned partition refuses at once"
        );
    }

    #[test]
    fn a_small_flush_gives_its_buffer_back_at_once_and_the_cache_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let mut p = partition(&mut disk, dir.path(), Duration::ZERO);
        let mut buffers = std::collections::HashSet::new();
        for token in 1..=100u64 {
            p.append(batch(100), Box::new(|_| {}));
            let gather = p.pending.front().expect("a gather");
            buffers.insert(gather.buf.as_slice().as_ptr() as usize);
            assert!(p.start_flush(&mut disk, token));
            assert!(complete_flush(&mut disk, &mut p).is_some_and(|f| f.ok));
        }
        // Handing each flush's buffer to the cache made every flush take a new one (and, on
        // the ring, register it).
        assert!(
            buffers.len() <= 2,
            "{} flush buffers for 100 small flushes",
            buffers.len()
        );
        let mut cached = Vec::new();
        assert_eq!(p.tail.read(0, usize::MAX, &mut cached), 100, "all cached");
        let stored: Vec<u64> = batch::trusted_batches(&cached)
            .map(|b| b.base_offset() as u64)
            .collect();
        assert_eq!(stored, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_large_flush_hands_its_own_buffer_to_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let mut p = partition(&mut disk, dir.path(), Duration::ZERO);
        let mut flush = |p: &mut Partition, batches: usize, token: u64| {
            for _ in 0..batches {
                p.append(batch(8 << 10), Box::new(|_| {}));
            }
            let gathered = p.pending.front().expect("a gather").buf.as_slice().as_ptr();
            assert!(p.start_flush(&mut disk, token));
            assert!(complete_flush(&mut disk, p).is_some_and(|f| f.ok));
            gathered
        };
        // Flushes of 512 KiB, past the tail cache's budget: their grown buffers come back
        // from the cache to be gathered into again.
        for token in 1..=12 {
            flush(&mut p, 60, token);
        }
        // 80 KiB gathered into one of them: a small part of its buffer, but no small flush.
        let gathered = flush(&mut p, 10, 13);
        // Copying it would cost a fresh allocation to zero and fill, every flush.
        assert!(
            p.tail.holds_buffer(gathered),
            "an 80 KiB flush is cached in its own buffer"
        );
    }

    #[test]
    fn a_repeated_batch_not_yet_durable_is_answered_with_the_flush_that_carries_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let mut p = partition(&mut disk, dir.path(), Duration::ZERO);
        let sequenced = |seq: i32| -> Bytes {
            let mut b = crate::BatchBuilder::new(0).producer(9, 0, seq);
            b.push(None, b"v", &[]);
            b.push(None, b"w", &[]);
            b.build().into()
        };
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = |tag: &'static str| -> AppendDone {
            let answers = Arc::clone(&answers);
            Box::new(move |r| answers.lock().unwrap().push((tag, r)))
        };
        p.append(sequenced(0), answer("first"));
        p.append(sequenced(0), answer("again, while gathered"));
        assert!(p.start_flush(&mut disk, 1));
        p.append(sequenced(0), answer("again, while written"));
        p.append(sequenced(2), answer("next"));
        p.append(sequenced(2), answer("next again, while gathered"));
        assert!(answers.lock().unwrap().is_empty(), "nothing durable yet");
        let flush = |disk: &mut MemDisk, p: &mut Partition| {
            let f = complete_flush(disk, p).expect("a flush completed");
            assert!(f.ok);
            for (done, r) in f.answers {
                done(r);
            }
        };
        flush(&mut disk, &mut p);
        assert!(p.start_flush(&mut disk, 2));
        flush(&mut disk, &mut p);
        p.append(sequenced(2), answer("next again, durable"));
        let first = OffsetRange { first: 0, last: 1 };
        let next = OffsetRange { first: 2, last: 3 };
        let mut got = answers.lock().unwrap().clone();
        got.sort_by_key(|(tag, _)| *tag);
        let want = vec![
            ("again, while gathered", Ok(first)),
            ("again, while written", Ok(first)),
            ("first", Ok(first)),
            ("next", Ok(next)),
            ("next again, durable", Ok(next)),
            ("next again, while gathered", Ok(next)),
        ];
        let got: Vec<_> = got.into_iter().map(|(t, r)| (t, r.ok())).collect();
        let want: Vec<_> = want
            .into_iter()
            .map(|(t, r): (_, Result<_, ()>)| (t, r.ok()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(p.durable_next, 4, "each batch written once");
    }

    /// A partition whose last flush (2 ms of "I/O") answered 4 appends, none gathered since.
    fn after_a_flush_of_four(
        disk: &mut MemDisk,
        dir: &std::path::Path,
        linger: Duration,
    ) -> Partition {
        let mut p = partition(disk, dir, linger);
        for _ in 0..4 {
            p.append(batch(100), Box::new(|_| {}));
        }
        assert!(p.start_flush(disk, 1));
        std::thread::sleep(Duration::from_millis(2));
        complete_flush(disk, &mut p).unwrap();
        p
    }

    #[test]
    fn a_flush_never_waits_when_linger_is_off_or_the_gather_is_large() {
        let done = |_r: Result<OffsetRange, DataError>| {};
        let mut disk = MemDisk::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut off = after_a_flush_of_four(&mut disk, dir.path(), Duration::ZERO);
        off.append(batch(100), Box::new(done));
        assert_eq!(off.hold_flush(Instant::now()), Hold::Go);

        let dir = tempfile::tempdir().unwrap();
        let mut p = after_a_flush_of_four(&mut disk, dir.path(), Duration::from_secs(5));
        // Half a flush's worth gathered: it goes, whatever is still expected.
        for _ in 0..3 {
            p.append(batch(250_000), Box::new(done));
        }
        assert_eq!(p.hold_flush(Instant::now()), Hold::Go);
    }

    #[test]
    fn a_roll_waits_for_the_zero_write_in_flight_in_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = MemDisk::new().unwrap();
        let mut p = partition(&mut disk, dir.path(), Duration::ZERO);
        let done = |_r: Result<OffsetRange, DataError>| {};

        // Fill most of segment 0 in one flush; that flush also prepares the next segment.
        for _ in 0..4 {
            p.append(batch(200_000), Box::new(done));
        }
        assert!(p.start_flush(&mut disk, 1));
        let next = p.next_segment.as_ref().map(|n| n.file).unwrap();
        // One zero chunk of the next segment goes in flight, and the flush completes.
        assert!(p.zero_step(&mut disk, 2));
        disk.complete(0);
        let mut c = Vec::new();
        disk.wait(&mut c, Block::No).unwrap();
        for c in c {
            p.on_flush_completion(c);
        }
        assert!(p.take_finished().is_some_and(|f| f.ok));
        // The next batch does not fit: its flush must roll into the next segment, where the
        // zero chunk [0, 256 KiB) is still in flight, so it waits.
        p.append(batch(250_000), Box::new(done));
        assert!(
            p.pending.front().is_some_and(|g| g.new_segment),
            "the test needs a roll"
        );
        assert!(
            !p.start_flush(&mut disk, 3),
            "the flush must wait for the zero write"
        );
        let into_next: Vec<_> = disk.writes.iter().filter(|w| w.file == next).collect();
        assert_eq!(
            into_next.len(),
            1,
            "only the zero chunk was written to the next segment"
        );
        assert_eq!(
            (into_next[0].offset, into_next[0].len as u64),
            (0, ZERO_CHUNK_BYTES)
        );
        disk.complete(0);
        let mut c = Vec::new();
        disk.wait(&mut c, Block::No).unwrap();
        for c in c {
            p.on_zero_completion(c);
        }
        assert!(p.start_flush(&mut disk, 4));
        let data_write = disk.writes.last().copied().unwrap();
        assert_eq!((data_write.file, data_write.offset), (next, 0));
        disk.complete(0);
        let written = disk.contents(next);
        let view = BatchView::verify(&written[..batch(250_000).len()]).unwrap();
        assert_eq!(
            view.base_offset(),
            4,
            "the data is intact at the start of the new segment"
        );
    }
}
