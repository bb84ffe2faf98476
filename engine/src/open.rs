//! Opening a partition: find its segments, scan them, decide torn tail or corruption, and make
//! the last segment ready for appends. The rules are in `docs/FORMAT.md`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::aligned::{align_down, align_up, AlignedBuf, BLOCK_BYTES};
use crate::blocking::{BlockingIo, FileReader};
use crate::config::{EngineConfig, RecoveryMode};
use crate::error::DataError;
use crate::io::{Disk, FileId, MetaFs};
use crate::layout::{
    parse_segment_file_name, parse_summary_file_name, partition_dir, segment_file_name,
    summary_file_name, LostOffsets, DROPPED_SUFFIX, PREPARED_SEGMENT,
};
use crate::partition::{Limits, Partition};
use crate::prepare::NextSegment;
use crate::producers::Producers;
use crate::recovery::{scan, ReadAt, Scan};
use crate::segment::Segment;
use crate::summary::{self, SegmentSummary};
use crate::trailer::{self, CrcScope, Trailer, TRAILER_BYTES};
use crate::zeroing::ZERO_CHUNK_BYTES;

/// Opens (creating if new) partition `id` of `topic`, recovering its log.
pub fn open_partition<D: Disk>(
    io: &mut BlockingIo<'_, D>,
    cfg: &EngineConfig,
    topic: Arc<str>,
    id: u32,
) -> Result<Partition, DataError> {
    let dir = partition_dir(&cfg.data_dir, &topic, id);
    let limits = Limits::from_config(cfg);
    let files = cfg.meta_fs();
    let bases = list_segments(io.disk, &*files, &dir)?;
    // Repair must find damage wherever it is, so it reads every segment.
    let use_summaries = !cfg.check_sealed_segments && cfg.recovery == RecoveryMode::Strict;
    let mut read_whole = 0usize;
    if !bases.is_empty() {
        // The same for the directory entries of its segments.
        io.disk
            .sync_dir(&dir)
            .map_err(|e| DataError::io("sync directory", &dir, e))?;
    }
    let mut segments: Vec<Segment> = Vec::new();
    let mut opened: Vec<FileId> = Vec::new();
    let mut cleared_bytes = 0u64;
    let mut producers = Producers::default();
    let result = (|| {
        if bases.is_empty() {
            segments.push(create_first_segment(
                io,
                &dir,
                limits.segment_bytes,
                cfg.zero_segments,
            )?);
            return Ok(());
        }
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_file_name(base));
            let file = io
                .disk
                .open(&path, false)
                .map_err(|e| DataError::io("open segment", &path, e))?;
            opened.push(file);
            let is_last = i + 1 == bases.len();
            if let Some(prev) = segments.last() {
                if prev.next_offset != base {
                    return Err(DataError::Corruption {
                        path: path.clone(),
                        position: 0,
                        detail: format!(
                            "segment starts at offset {base} but the previous one ends at {}",
                            prev.next_offset
                        ),
                    });
                }
            }
            if !is_last && use_summaries {
                match load_summary(io, &*files, file, &dir, base) {
                    Ok(summary) => {
                        producers = Producers::restore(summary.producers);
                        let mut segment = Segment::new(
                            base,
                            path,
                            file,
                            summary.durable_end,
                            summary.next_offset,
                            summary.index,
                        );
                        segment.seal_index();
                        segments.push(segment);
                        continue;
                    }
                    Err(NoSummary::Missing) => {}
                    Err(NoSummary::Unusable(why)) => log::warn!(
                        "{}: summary {why}; reading the segment instead",
                        path.display()
                    ),
                }
            }
            read_whole += 1;
            if is_last {
                // Trust nothing a crashed predecessor may have left unsynced: make it durable
                // before deciding where the log ends and writing after it.
                io.disk
                    .sync_all(file)
                    .map_err(|e| DataError::io("sync segment", &path, e))?;
            }
            let mut s = scan_file(io, file, &path, base, limits.max_batch_bytes)?;
            let damage = damage(&s, bases.get(i + 1).copied());
            let truncate_here = match (damage, cfg.recovery) {
                (Some(detail), RecoveryMode::Strict) => {
                    return Err(DataError::Corruption {
                        path,
                        position: s.valid_end,
                        detail,
                    })
                }
                (Some(detail), RecoveryMode::Repair) => {
                    log::warn!(
                        "repair: truncating {} at byte {}: {detail}",
                        path.display(),
                        s.valid_end
                    );
                    let later = &bases[i + 1..];
                    record_lost_offsets(io, &*files, &dir, &s, later, limits.max_batch_bytes)?;
                    true
                }
                (None, _) => false,
            };
            let ends_log = is_last || truncate_here;
            let durable_end = if ends_log {
                let (end, cleared) = make_appendable(io, file, &path, &s, limits.segment_bytes)?;
                cleared_bytes += cleared;
                end
            } else {
                s.sealed_end
            };
            producers.absorb(std::mem::take(&mut s.producers), durable_end);
            let mut segment = Segment::new(base, path, file, durable_end, s.next_offset, s.index);
            if ends_log {
                // Appends go on in it: a summary from when it was sealed before a crash (or
                // before a repair cut it) no longer describes it.
                let removed = summary::remove(&*files, &dir, base)
                    .map_err(|e| DataError::io("remove summary of", &segment.path, e))?;
                if removed {
                    io.disk
                        .sync_dir(&dir)
                        .map_err(|e| DataError::io("sync directory", &dir, e))?;
                }
            } else {
                segment.seal_index();
                summary::save(&*files, &dir, &segment, &producers);
            }
            segments.push(segment);
            if truncate_here {
                remove_segments_after(io.disk, &*files, &dir, &bases[i + 1..])?;
                break;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            if !bases.is_empty() {
                log_recovered(&topic, id, &segments, read_whole, cleared_bytes);
            }
            let mut partition = Partition::new(topic, id, dir, segments, limits, cfg);
            partition.producers = producers;
            partition.producers.set_expiry(cfg.producer_expiry);
            Ok(partition)
        }
        Err(e) => {
            for file in opened {
                io.disk.close(file);
            }
            Err(e)
        }
    }
}

/// Before a repair cuts the log at the end of `s`: records, durably, the offsets the cut takes
/// away (up to the highest one a later flush of this segment, or a later segment, shows was
/// handed out), so that they are never handed out again.
fn record_lost_offsets<D: Disk>(
    io: &mut BlockingIo<'_, D>,
    files: &dyn MetaFs,
    dir: &Path,
    s: &Scan,
    later_bases: &[u64],
    max_batch_bytes: usize,
) -> Result<(), DataError> {
    let later_end = match later_bases.last() {
        Some(&base) => {
            let path = dir.join(segment_file_name(base));
            let file = io
                .disk
                .open(&path, false)
                .map_err(|e| DataError::io("open segment", &path, e))?;
            let scanned = scan_file(io, file, &path, base, max_batch_bytes);
            io.disk.close(file);
            Some(scanned?.next_offset)
        }
        None => None,
    };
    let earlier = LostOffsets::read(files, dir)?.map(|l| l.to);
    let Some(to) = [s.later_next_offset, later_end, earlier]
        .into_iter()
        .flatten()
        .max()
        .filter(|&to| to > s.next_offset)
    else {
        return Ok(());
    };
    let lost = LostOffsets {
        from: s.next_offset,
        to,
    };
    lost.write(files, dir)?;
    log::warn!(
        "repair: {}: offsets {}..{to} were handed out before and are cut away; they will be \
         filled with records marked lost, never handed out again",
        dir.display(),
        lost.from
    );
    Ok(())
}

/// The start-up line of a recovered partition: where its log ends, and what was cleared past
/// the end (bytes of a flush that was in flight, never acknowledged).
fn log_recovered(
    topic: &str,
    id: u32,
    segments: &[Segment],
    read_whole: usize,
    cleared_bytes: u64,
) {
    let end = segments.last().map_or(0, |s| s.next_offset);
    let start = segments.first().map_or(0, |s| s.base_offset);
    let count = segments.len();
    if cleared_bytes == 0 {
        log::info!(
            "{topic}/{id}: recovered offsets {start}..{end} in {count} segment(s), \
             {read_whole} read whole"
        );
    } else {
        log::info!(
            "{topic}/{id}: recovered offsets {start}..{end} in {count} segment(s), \
             {read_whole} read whole; cleared {cleared_bytes} bytes past the end (a flush in \
             flight at the crash, never acknowledged)"
        );
    }
}

/// Why a sealed segment's summary is not used.
enum NoSummary {
    /// There is none (never saved, or lost in a crash).
    Missing,
    /// There is one, but it cannot be believed: why.
    Unusable(String),
}

/// The summary of the sealed segment `file` starting at `base`, once it checks out: its own
/// CRC and bounds, and a valid flush trailer in the segment's last block ending where the
/// summary says its log ends, at the offset it says (`summary.rs`).
fn load_summary<D: Disk>(
    io: &mut BlockingIo<'_, D>,
    files: &dyn MetaFs,
    file: FileId,
    dir: &Path,
    base: u64,
) -> Result<SegmentSummary, NoSummary> {
    let path = dir.join(summary_file_name(base));
    let bytes = match files.read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NoSummary::Missing),
        Err(e) => return Err(NoSummary::Unusable(format!("cannot be read: {e}"))),
    };
    let summary = SegmentSummary::decode(&bytes, base).map_err(NoSummary::Unusable)?;
    let unusable = |why: String| NoSummary::Unusable(why);
    let len = io.disk.len(file).map_err(|e| {
        unusable(format!(
            "cannot be checked: the segment's size is unknown: {e}"
        ))
    })?;
    if summary.durable_end > len {
        return Err(unusable(format!(
            "says the log ends at byte {}, past the segment's {len} bytes",
            summary.durable_end
        )));
    }
    if summary.durable_end == 0 {
        return if summary.next_offset == base {
            Ok(summary)
        } else {
            Err(unusable("gives offsets to an empty segment".into()))
        };
    }
    let block = BLOCK_BYTES as u64;
    let at = summary.durable_end - block;
    let mut reader = FileReader { io, file };
    let (buf, read) = reader.read_at(at, AlignedBuf::zeroed(BLOCK_BYTES), BLOCK_BYTES);
    match read {
        Ok(n) if n == BLOCK_BYTES => {}
        Ok(n) => {
            return Err(unusable(format!(
                "cannot be checked: read {n} bytes at {at}"
            )))
        }
        Err(e) => return Err(unusable(format!("cannot be checked: {e}"))),
    }
    let last = Trailer::decode(&buf.as_slice()[BLOCK_BYTES - TRAILER_BYTES..]);
    match last {
        Some(t) if t.next_offset == summary.next_offset => Ok(summary),
        Some(t) => Err(unusable(format!(
            "says the log ends at offset {}, the segment's last flush at {}",
            summary.next_offset, t.next_offset
        ))),
        None => Err(unusable(format!(
            "says the log ends at byte {}, where the segment has no flush trailer",
            summary.durable_end
        ))),
    }
}

/// Why a scanned segment cannot be used as it is, if it cannot. `next_base` is the first
/// offset of the segment after it, if there is one: a segment followed by a newer one must hold
/// whole sealed flushes up to exactly that offset. What lies after its end does not matter (in
/// a recycled file it is an older part of the log), as long as it proves no later flush.
fn damage(s: &Scan, next_base: Option<u64>) -> Option<String> {
    let why = s.invalid.as_deref().unwrap_or("empty header");
    if let Some(at) = s.later_flush_at {
        return Some(format!(
            "{why}, yet a flush sealed later sits at byte {at}: data that was durable is damaged"
        ));
    }
    let next_base = next_base?;
    if s.valid_end != s.sealed_end || s.next_offset != next_base {
        return Some(format!(
            "{why}; the segment's log ends at offset {} but the next segment starts at \
             {next_base}: data that was durable is damaged",
            s.next_offset
        ));
    }
    None
}

/// The partition's segments' base offsets, ascending. Removes what is not log: a prepared
/// segment never used, dropped segments, and summaries whose segment is gone.
fn list_segments<D: Disk>(
    disk: &mut D,
    files: &dyn MetaFs,
    dir: &Path,
) -> Result<Vec<u64>, DataError> {
    let entries = files
        .list(dir)
        .map_err(|e| DataError::io("list partition", dir, e))?;
    let mut bases = Vec::new();
    let mut summaries = Vec::new();
    for entry in entries {
        if let Some(base) = parse_segment_file_name(&entry.name) {
            bases.push(base);
        } else if let Some(base) = parse_summary_file_name(&entry.name) {
            summaries.push((base, entry.path));
        } else if entry.name == PREPARED_SEGMENT || entry.name.ends_with(DROPPED_SUFFIX) {
            // Never used, or dropped by retention before a crash: neither is log.
            disk.remove(&entry.path)
                .map_err(|e| DataError::io("remove", &entry.path, e))?;
        }
    }
    bases.sort_unstable();
    for (base, path) in summaries {
        if bases.binary_search(&base).is_err() {
            // Left by retention or a repair; gone again should a crash bring it back.
            files
                .remove_file(&path)
                .map_err(|e| DataError::io("remove", &path, e))?;
        }
    }
    Ok(bases)
}

/// Creates segment 0 of a new partition, zeroed before any append reaches it when `zero`
/// (see `zeroing.rs` for why).
fn create_first_segment<D: Disk>(
    io: &mut BlockingIo<'_, D>,
    dir: &Path,
    segment_bytes: u64,
    zero: bool,
) -> Result<Segment, DataError> {
    let first = NextSegment::create(io.disk, dir, segment_bytes)?;
    if zero {
        let mut at = 0;
        while at < segment_bytes {
            let n = (segment_bytes - at).min(ZERO_CHUNK_BYTES) as usize;
            let last = at + n as u64 == segment_bytes;
            let written = io.write(first.file, at, AlignedBuf::zeroed(n), n, last);
            if let Err(e) = written {
                io.disk.close(first.file);
                return Err(DataError::io("zero segment", &first.path, e));
            }
            at += n as u64;
        }
    }
    let path = dir.join(segment_file_name(0));
    io.disk
        .rename(&first.path, &path)
        .map_err(|e| DataError::io("rename prepared segment to", &path, e))?;
    io.disk
        .sync_dir(dir)
        .map_err(|e| DataError::io("sync directory", dir, e))?;
    Ok(Segment::new(0, path, first.file, 0, 0, Vec::new()))
}

fn scan_file<D: Disk>(
    io: &mut BlockingIo<'_, D>,
    file: FileId,
    path: &Path,
    base: u64,
    max_batch_bytes: usize,
) -> Result<Scan, DataError> {
    let len = io
        .disk
        .len(file)
        .map_err(|e| DataError::io("stat segment", path, e))?;
    scan(FileReader { io, file }, len, base, max_batch_bytes)
        .map_err(|e| DataError::io("read segment", path, e))
}

/// Seals a torn last flush, clears what it left past the end, restores the file's size, and
/// makes all of that durable. Returns where the next flush starts and how many bytes past it
/// were cleared.
fn make_appendable<D: Disk>(
    io: &mut BlockingIo<'_, D>,
    file: FileId,
    path: &Path,
    s: &Scan,
    segment_bytes: u64,
) -> Result<(u64, u64), DataError> {
    let fail = |e| DataError::io("recover segment", path, e);
    let len = io.disk.len(file).map_err(fail)?;
    if len < segment_bytes {
        io.disk.allocate(file, segment_bytes).map_err(fail)?;
        io.disk.sync_all(file).map_err(fail)?;
    }
    let mut writes: Vec<(u64, Option<AlignedBuf>, usize)> = Vec::new();
    let mut end = s.sealed_end;
    if s.valid_end > s.sealed_end {
        // The batches of a flush that was in flight survived without its trailer: seal them,
        // rewriting only the block(s) they end in, which never held acknowledged data.
        end = trailer::flush_end(s.valid_end);
        let block_start = align_down(s.valid_end);
        writes.push((
            block_start,
            Some(seal(s, block_start, end)),
            (end - block_start) as usize,
        ));
        log::warn!(
            "{}: sealed a torn tail; the log ends at offset {}",
            path.display(),
            s.next_offset
        );
    }
    let dirty_end = align_up(s.dirty_end).min(segment_bytes);
    let cleared = dirty_end.saturating_sub(end);
    let mut at = end;
    while at < dirty_end {
        let n = (dirty_end - at).min(ZERO_CHUNK_BYTES) as usize;
        writes.push((at, None, n));
        at += n as u64;
    }
    let count = writes.len();
    for (i, (pos, buf, n)) in writes.into_iter().enumerate() {
        let buf = buf.unwrap_or_else(|| AlignedBuf::zeroed(n));
        // The last write carries the one fdatasync that makes all of them durable.
        io.write(file, pos, buf, n, i + 1 == count).map_err(fail)?;
    }
    Ok((end, cleared))
}

/// The block(s) `[block_start, end)` holding the unsealed batches' tail, zeros and a trailer.
fn seal(s: &Scan, block_start: u64, end: u64) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed((end - block_start) as usize);
    let bytes = buf.as_mut_slice();
    bytes[..s.tail_block.len()].copy_from_slice(&s.tail_block);
    let trailer_at = (end - block_start) as usize - TRAILER_BYTES;
    let pad = &bytes[s.tail_block.len()..trailer_at];
    let crc = keel_format::crc::crc32c_append(s.unsealed_prefix_crc, pad);
    let t = Trailer::alone(s.sealed_end, s.next_offset, crc, CrcScope::Headers);
    t.encode(&mut bytes[trailer_at..(end - block_start) as usize]);
    buf
}

fn remove_segments_after<D: Disk>(
    disk: &mut D,
    files: &dyn MetaFs,
    dir: &Path,
    bases: &[u64],
) -> Result<(), DataError> {
    for &base in bases {
        let path: PathBuf = dir.join(segment_file_name(base));
        disk.remove(&path)
            .map_err(|e| DataError::io("remove segment", &path, e))?;
        summary::remove(files, dir, base)
            .map_err(|e| DataError::io("remove summary of", &path, e))?;
    }
    if !bases.is_empty() {
        disk.sync_dir(dir)
            .map_err(|e| DataError::io("sync directory", dir, e))?;
    }
    Ok(())
}
