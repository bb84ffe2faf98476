//! Offset tables: the durable part of consumer-group state. One memory-mapped file per shard
//! of fixed-size slots, one slot per (group, partition): the committed offset (everything
//! below it is acknowledged) and a bitmap of acknowledgements in the window above it.
//!
//! Each slot holds two copies, each with a sequence number and a CRC-32C. The copy a completed
//! sync made durable is never written until a later sync has made the other one durable, so a torn or half-flushed store can only damage the copy being written; the
//! other still holds every state a sync covered. Loading takes the newest copy whose CRC
//! checks. The worst a crash can do is bring back an older state: fewer messages acknowledged,
//! so some are delivered again, never one lost. The layout is in `docs/FORMAT.md`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::IoFailure;
use crate::io::sync_dir;
use crate::io::MappedRecord;

/// Offsets above the committed one whose acknowledgement a slot can hold.
pub const WINDOW: usize = 4096;
/// Bytes of one copy of a slot: room for the header, the bitmap and the CRC, a sector apart
/// from the other copy.
pub const COPY_BYTES: usize = 1024;
/// Bytes of a slot (two copies).
pub const SLOT_BYTES: usize = 2 * COPY_BYTES;
const MAGIC: [u8; 4] = *b"KOFS";
const BITMAP_AT: usize = 28;
const BITMAP_BYTES: usize = WINDOW / 8;
pub(crate) const CRC_AT: usize = BITMAP_AT + BITMAP_BYTES;

/// The durable acknowledgement state of one (group, partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckState {
    /// Identifies whose slot this is (a hash of group, topic and partition), so that a slot
    /// reused for someone else is never read as theirs.
    pub owner: u64,
    /// Every offset below this is acknowledged.
    pub committed: u64,
    /// Bit `i` set: offset `committed + i` is acknowledged (bit 0 is never set: the committed
    /// offset would have moved past it).
    pub window: Box<[u8; BITMAP_BYTES]>,
}

impl AckState {
    /// Nothing acknowledged below `committed`... nothing above it either.
    pub fn new(owner: u64, committed: u64) -> Self {
        Self {
            owner,
            committed,
            window: Box::new([0; BITMAP_BYTES]),
        }
    }

    /// Whether `offset` is acknowledged.
    pub fn is_acked(&self, offset: u64) -> bool {
        match offset.checked_sub(self.committed) {
            None => true,
            Some(d) if d < WINDOW as u64 => self.window[d as usize / 8] & (1 << (d % 8)) != 0,
            Some(_) => false,
        }
    }

    /// Records the acknowledgement of `offset`; returns false when it lies beyond the window
    /// (delivery must wait until the low end is acknowledged). Moves the committed offset past
    /// every acknowledged offset at the low end.
    pub fn ack(&mut self, offset: u64) -> bool {
        let marked = self.mark(offset);
        self.advance();
        marked
    }

    /// [`AckState::ack`] without moving the committed offset: for many acks at once, followed
    /// by one [`AckState::advance`].
    pub fn mark(&mut self, offset: u64) -> bool {
        let Some(d) = offset.checked_sub(self.committed) else {
            return true;
        };
        if d >= WINDOW as u64 {
            return false;
        }
        self.window[d as usize / 8] |= 1 << (d % 8);
        true
    }

    /// Moves the committed offset past every acknowledged offset at the low end.
    pub fn advance(&mut self) {
        let full = self.window.iter().take_while(|&&b| b == 0xff).count();
        let n = if full == BITMAP_BYTES {
            WINDOW
        } else {
            full * 8 + self.window[full].trailing_ones() as usize
        };
        if n > 0 {
            self.shift(n);
        }
    }

    /// Counts every offset below `start` as acknowledged (the log no longer has them);
    /// returns how many of those were not acknowledged before.
    pub fn skip_to(&mut self, start: u64) -> u64 {
        let Some(n) = start.checked_sub(self.committed).filter(|&n| n > 0) else {
            return 0;
        };
        let marked: u64 = (0..n.min(WINDOW as u64))
            .filter(|&d| self.window[d as usize / 8] & (1 << (d % 8)) != 0)
            .count() as u64;
        self.shift(usize::try_from(n).unwrap_or(usize::MAX));
        self.advance();
        n - marked
    }

    /// Moves the window up by `n` offsets (all acknowledged): bytes move whole, then bits.
    fn shift(&mut self, n: usize) {
        let (bytes, bits) = (n / 8, n % 8);
        let old = *self.window;
        let at = |i: usize| old.get(i).copied().unwrap_or(0);
        let bytes = bytes.min(BITMAP_BYTES);
        for i in 0..BITMAP_BYTES {
            let lo = at(i + bytes);
            self.window[i] = if bits == 0 {
                lo
            } else {
                lo >> bits | at(i + bytes + 1) << (8 - bits)
            };
        }
        self.committed = self.committed.saturating_add(n as u64);
    }
}

/// What loading a slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The newest valid copy; the other copy is valid too, or empty.
    State(AckState),
    /// The only valid copy: the other one fails its CRC, and may have been the newer one (a
    /// torn store or damage), so the caller takes this or a newer state it knows, whichever is
    /// newer.
    OtherCopyDamaged(AckState),
    /// Neither copy is valid for this owner: never written, or both damaged. The caller falls
    /// back to an older committed offset it knows (redelivering, never skipping).
    Nothing {
        /// Whether a copy held data that failed its CRC (damage, worth a warning) rather than
        /// nothing at all.
        damaged: bool,
    },
}

/// Where a slot's stores go. The copy a completed sync made durable is *stable*: it is not
/// written again until a later sync has made the other copy durable, so a power cut during
/// writeback (which may tear any sector written since the last sync) always leaves one intact
/// copy holding at least every state a sync has covered. Between syncs, stores overwrite the
/// other copy.
#[derive(Debug, Clone, Copy)]
struct SlotCopies {
    stable: usize,
    stable_seq: u64,
    /// `syncs_started` when the other copy was last written; `None` if it was not written
    /// since it last became the one to write.
    written: Option<u64>,
}

/// One shard's table of slots, memory-mapped.
pub struct OffsetTable {
    path: PathBuf,
    map: MmapMut,
    _file: File,
    /// Per slot, filled on first use from what the file holds.
    copies: Vec<Option<SlotCopies>>,
    syncs_started: u64,
    syncs_done: u64,
    /// Stores that arrived while the copy they would overwrite was being synced: written when
    /// that sync completes.
    held: BTreeMap<usize, AckState>,
}

impl OffsetTable {
    /// Opens (creating if needed) a table of `slots` slots at `path`; a smaller existing file
    /// is grown, the new slots empty.
    pub fn open(path: &Path, slots: usize) -> Result<Self, IoFailure> {
        let io = |op, e| IoFailure::new(op, path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("open offset table", e))?;
        let want = (slots * SLOT_BYTES) as u64;
        let len = file
            .metadata()
            .map_err(|e| io("stat offset table", e))?
            .len();
        if len < want {
            // Real zeros, not a sparse tail: a store into a hole or an unwritten extent would
            // make each sync commit the journal (block allocation), many times slower than a
            // data-only flush.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < want {
                let n = (want - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| io("grow offset table", e))?;
                at += n as u64;
            }
            file.sync_all().map_err(|e| io("sync offset table", e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).map_err(|e| IoFailure::new("sync directory", dir, e))?;
            }
        }
        // After a process crash the page cache may hold copies the disk does not: made durable
        // now, the newest valid copy of each slot really is on disk before it becomes stable.
        file.sync_data().map_err(|e| io("sync offset table", e))?;
        // The file is this process's own (the data directory is locked by flock), and the map
        // lives in the table with the file and is only touched through it.
        // SAFETY: so no one truncates or writes the file behind the map while it is mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| io("map offset table", e))?;
        let slots = map.len() / SLOT_BYTES;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            _file: file,
            copies: vec![None; slots],
            syncs_started: 0,
            syncs_done: 0,
            held: BTreeMap::new(),
        })
    }

    /// Slots in the table.
    pub fn slots(&self) -> usize {
        self.map.len() / SLOT_BYTES
    }

    fn copy(&self, slot: usize, which: usize) -> &[u8] {
        let at = slot * SLOT_BYTES + which * COPY_BYTES;
        &self.map[at..at + COPY_BYTES]
    }

    /// Reads a slot for `owner`: the newest copy that checks, if any.
    pub fn load(&self, slot: usize, owner: u64) -> Loaded {
        if let Some(state) = self.held.get(&slot).filter(|s| s.owner == owner) {
            return Loaded::State(state.clone());
        }
        let mut best: Option<(u64, AckState)> = None;
        let mut damaged = false;
        for which in 0..2 {
            match decode(self.copy(slot, which)) {
                Decoded::Empty => {}
                Decoded::Bad => damaged = true,
                Decoded::Ok(seq, state) if state.owner == owner => {
                    if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                        best = Some((seq, state));
                    }
                }
                // Another owner's state: the slot was reused; not ours.
                Decoded::Ok(..) => {}
            }
        }
        match best {
            Some((_, state)) if damaged => Loaded::OtherCopyDamaged(state),
            Some((_, state)) => Loaded::State(state),
            None => Loaded::Nothing { damaged },
        }
    }

    /// The slot's copies as the file holds them: the newest valid one is stable.
    fn copies_on_disk(&self, slot: usize) -> SlotCopies {
        let mut found = SlotCopies {
            stable: 1,
            stable_seq: 0,
            written: None,
        };
        for which in 0..2 {
            if let Decoded::Ok(seq, _) = decode(self.copy(slot, which)) {
                if seq >= found.stable_seq {
                    found.stable = which;
                    found.stable_seq = seq;
                }
            }
        }
        found
    }

    /// Stores `state` into the slot, never over its stable copy. Durable after the next sync
    /// (see [`Self::sync_starting`]).
    pub fn store(&mut self, slot: usize, state: &AckState) {
        let mut c = match self.copies[slot] {
            Some(c) => c,
            None => self.copies_on_disk(slot),
        };
        if let Some(w) = c.written {
            if w < self.syncs_done {
                // A completed sync covered the other copy: it is the stable one now.
                c = SlotCopies {
                    stable: 1 - c.stable,
                    stable_seq: c.stable_seq + 1,
                    written: None,
                };
            } else if w < self.syncs_started {
                // The sync in flight is writing that copy back, and the stable one is the
                // fallback should it tear: neither may change until it completes.
                self.copies[slot] = Some(c);
                self.held.insert(slot, state.clone());
                return;
            }
        }
        self.held.remove(&slot);
        let at = slot * SLOT_BYTES + (1 - c.stable) * COPY_BYTES;
        encode(c.stable_seq + 1, state, &mut self.map[at..at + COPY_BYTES]);
        // Pair assertion: what a restart would read back is what was stored.
        assert!(
            matches!(decode(&self.map[at..at + COPY_BYTES]), Decoded::Ok(seq, ref back) if seq == c.stable_seq + 1 && back == state),
            "slot {slot} reads back as stored"
        );
        c.written = Some(self.syncs_started);
        self.copies[slot] = Some(c);
    }

    /// To be called just before a sync of the table's file starts: it covers every store so
    /// far. Returns nothing to undo: a sync that fails leaves the table poisoned.
    pub fn sync_starting(&mut self) {
        self.syncs_started += 1;
    }

    /// To be called when the sync begun by the last [`Self::sync_starting`] succeeded: stores
    /// held back while it ran are written now (each into the copy that is no longer stable).
    pub fn sync_done(&mut self) {
        self.syncs_done = self.syncs_started;
        for (slot, state) in std::mem::take(&mut self.held) {
            self.store(slot, &state);
        }
    }

    /// Makes every store so far durable now (`fdatasync` of the file), recording the sync
    /// with `power` when a test simulates power loss. For the table's owner alone, and only
    /// while no sync of it is in flight on a ring.
    pub fn flush(&mut self, power: Option<&MappedRecord>) -> Result<(), IoFailure> {
        let path = self.path.clone();
        let io = |e| IoFailure::new("sync offset table", &path, e);
        let pending = power
            .map(|p| p.mapped_sync_starting(&self.path))
            .transpose()
            .map_err(io)?;
        self.sync_starting();
        self._file.sync_data().map_err(io)?;
        if let (Some(p), Some(pending)) = (power, pending) {
            p.mapped_sync_completed(pending).map_err(io)?;
        }
        self.sync_done();
        Ok(())
    }
}

pub(crate) enum Decoded {
    Empty,
    Bad,
    Ok(u64, AckState),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Copy layout: magic "KOFS" | seq u64 | owner u64 | committed u64 | bitmap (512 bytes) |
/// CRC-32C u32 of everything before it; little-endian; the rest of the copy is zero.
pub(crate) fn encode(seq: u64, state: &AckState, out: &mut [u8]) {
    out.fill(0);
    out[..4].copy_from_slice(&MAGIC);
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    out[12..20].copy_from_slice(&state.owner.to_le_bytes());
    out[20..28].copy_from_slice(&state.committed.to_le_bytes());
    out[BITMAP_AT..CRC_AT].copy_from_slice(&state.window[..]);
    let crc = keel_format::crc::crc32c(&out[..CRC_AT]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

pub(crate) fn decode(b: &[u8]) -> Decoded {
    if b.iter().all(|&x| x == 0) {
        return Decoded::Empty;
    }
    let crc = u32::from_le_bytes([b[CRC_AT], b[CRC_AT + 1], b[CRC_AT + 2], b[CRC_AT + 3]]);
    if b[..4] != MAGIC || keel_format::crc::crc32c(&b[..CRC_AT]) != crc {
        return Decoded::Bad;
    }
    let mut window = Box::new([0u8; BITMAP_BYTES]);
    window.copy_from_slice(&b[BITMAP_AT..CRC_AT]);
    let state = AckState {
        owner: u64_at(b, 12),
        committed: u64_at(b, 20),
        window,
    };
    Decoded::Ok(u64_at(b, 4), state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slots: usize) -> (tempfile::TempDir, OffsetTable) {
        let dir = tempfile::tempdir().unwrap();
        let t = OffsetTable::open(&dir.path().join("offsets"), slots).unwrap();
        (dir, t)
    }

    #[test]
    fn skipping_counts_what_was_not_acknowledged_and_keeps_acks_above_the_start() {
        let mut s = AckState::new(1, 100);
        for o in [101, 103, 110, 111] {
            assert!(s.mark(o));
        }
        assert_eq!(s.skip_to(90), 0, "below the committed offset: nothing");
        assert_eq!(s.skip_to(105), 3, "100, 102 and 104 were not acknowledged");
        assert_eq!(s.committed, 105);
        assert!(s.is_acked(110) && s.is_acked(111) && !s.is_acked(106));
        assert!(s.ack(105) && s.ack(106) && s.ack(107) && s.ack(108) && s.ack(109));
        assert_eq!(
            s.committed, 112,
            "the acks kept above the start still count"
        );
        let far = 112 + 10 * WINDOW as u64;
        assert_eq!(s.skip_to(far), 10 * WINDOW as u64);
        assert_eq!(s.committed, far);
        assert!(!s.is_acked(far));
    }

    #[test]
    fn acks_move_the_committed_offset_past_the_acknowledged_low_end() {
        let mut s = AckState::new(1, 100);
        assert!(s.ack(102) && s.ack(103));
        assert_eq!(s.committed, 100);
        assert!(s.is_acked(102) && !s.is_acked(101) && s.is_acked(99));
        assert!(s.ack(100));
        assert_eq!(s.committed, 101);
        assert!(s.ack(101));
        assert_eq!(s.committed, 104, "102 and 103 were acknowledged already");
        assert!(!s.is_acked(104));
        assert!(!s.ack(104 + WINDOW as u64), "beyond the window");
        assert!(s.ack(104 + WINDOW as u64 - 1));
    }

    #[test]
    fn the_window_shifts_by_any_amount_keeping_every_later_ack() {
        for gap in [1u64, 7, 8, 9, 63, 64, 65, 1000, 4095] {
            let mut s = AckState::new(1, 0);
            let later: Vec<u64> = (gap + 1..WINDOW as u64).step_by(37).collect();
            for &o in &later {
                assert!(s.mark(o));
            }
            for o in 0..gap {
                s.mark(o);
            }
            s.advance();
            assert_eq!(s.committed, gap, "offset {gap} itself is not acknowledged");
            for o in gap..gap + WINDOW as u64 {
                assert_eq!(s.is_acked(o), later.contains(&o), "gap {gap}, offset {o}");
            }
        }
        let mut all = AckState::new(1, 5);
        for o in 5..5 + WINDOW as u64 {
            all.mark(o);
        }
        all.advance();
        assert_eq!(all.committed, 5 + WINDOW as u64);
        assert!(!all.is_acked(5 + WINDOW as u64));
    }

    #[test]
    fn a_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets");
        let mut s = AckState::new(7, 10);
        s.ack(12);
        {
            let mut t = OffsetTable::open(&path, 4).unwrap();
            assert_eq!(t.load(2, 7), Loaded::Nothing { damaged: false });
            t.store(2, &AckState::new(7, 5));
            t.store(2, &s);
            t.flush(None).unwrap();
        }
        let t = OffsetTable::open(&path, 4).unwrap();
        assert_eq!(t.load(2, 7), Loaded::State(s));
        assert_eq!(
            t.load(2, 8),
            Loaded::Nothing { damaged: false },
            "another owner's slot"
        );
        assert_eq!(t.load(1, 7), Loaded::Nothing { damaged: false });
    }

    #[test]
    fn offsets_beyond_the_window_are_not_acknowledged_and_cannot_be() {
        let mut s = AckState::new(1, 100);
        let last = 100 + WINDOW as u64 - 1;
        assert!(s.ack(last), "the window's last offset");
        assert!(s.is_acked(last));
        assert!(!s.is_acked(last + 1), "past the window");
        assert!(!s.ack(last + 1), "refused: past the window");
        assert!(!s.is_acked(last + 1));
        assert!(s.is_acked(99), "below the committed offset");
    }

    #[test]
    fn a_new_table_has_exactly_the_slots_asked_for() {
        // More than the 1 MiB the file is grown by at a time.
        let (dir, t) = table(1000);
        assert_eq!(t.slots(), 1000);
        let len = std::fs::metadata(dir.path().join("offsets")).unwrap().len();
        assert_eq!(len, 1000 * SLOT_BYTES as u64);
    }

    #[test]
    fn after_reopening_a_store_goes_over_the_older_copy_never_the_newest() {
        // States acknowledging 0, 1, 2, 3 offsets past the committed one (never its own).
        let states: Vec<AckState> = (0..4u64)
            .map(|n| {
                let mut s = AckState::new(9, 100);
                for o in 0..n {
                    s.ack(102 + o);
                }
                s
            })
            .collect();
        // Two or three synced stores: the newest durable state in one copy, then the other.
        for synced in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("offsets");
            {
                let mut t = OffsetTable::open(&path, 1).unwrap();
                for s in &states[..synced] {
                    t.store(0, s);
                    t.flush(None).unwrap();
                }
            }
            let durable = &states[synced - 1];
            let mut t = OffsetTable::open(&path, 1).unwrap();
            assert_eq!(t.load(0, 9), Loaded::State(durable.clone()));
            // A store after the reopen, not synced: a power cut may tear the copy it went to.
            t.store(0, &states[synced]);
            let written = (0..2)
                .find(|&which| {
                    matches!(decode(t.copy(0, which)), Decoded::Ok(_, ref s) if *s == states[synced])
                })
                .unwrap();
            t.map[written * COPY_BYTES + 20] ^= 0xff;
            assert_eq!(
                t.load(0, 9),
                Loaded::OtherCopyDamaged(durable.clone()),
                "{synced} syncs: the newest durable state survives a store over the other copy"
            );
        }
    }

    #[test]
    fn a_torn_copy_falls_back_to_the_other_and_both_torn_is_reported() {
        let (_dir, mut t) = table(2);
        let older = AckState::new(3, 40);
        let mut newer = AckState::new(3, 40);
        newer.ack(40);
        newer.ack(41);
        t.store(0, &older);
        t.flush(None).unwrap();
        t.store(0, &newer);
        // The synced older state is in copy 0, the newer in copy 1. Tear copy 1.
        t.map[COPY_BYTES + 20] ^= 0xff;
        assert_eq!(
            t.load(0, 3),
            Loaded::OtherCopyDamaged(older.clone()),
            "the intact older copy, and word of the damage"
        );
        // The next store goes over the torn copy, never over the good one.
        let mut newest = older.clone();
        newest.ack(40);
        t.store(0, &newest);
        assert_eq!(t.load(0, 3), Loaded::State(newest));
        // Damage both: nothing to trust, and the caller is told it is damage.
        t.map[20] ^= 0xff;
        t.map[COPY_BYTES + 20] ^= 0xff;
        assert_eq!(t.load(0, 3), Loaded::Nothing { damaged: true });
    }

    #[test]
    fn a_synced_copy_is_never_written_until_a_sync_covers_the_other() {
        let (_dir, mut t) = table(1);
        let state = |acked: u64| {
            let mut s = AckState::new(5, 0);
            for o in 0..acked {
                s.ack(o);
            }
            s
        };
        t.store(0, &state(1));
        t.flush(None).unwrap();
        let synced = t.map[..COPY_BYTES].to_vec();
        // Many stores between two syncs all go over the other copy.
        for n in 2..10 {
            t.store(0, &state(n));
            assert_eq!(t.map[..COPY_BYTES], synced[..], "store {n}");
        }
        assert_eq!(t.load(0, 5), Loaded::State(state(9)));
        t.flush(None).unwrap();
        // Now copy 1 is the synced one, and copy 0 is written.
        let synced = t.map[COPY_BYTES..SLOT_BYTES].to_vec();
        t.store(0, &state(10));
        assert_eq!(t.map[COPY_BYTES..SLOT_BYTES], synced[..]);
        assert_ne!(t.map[..COPY_BYTES], synced[..]);
        assert_eq!(t.load(0, 5), Loaded::State(state(10)));
    }

    #[test]
    fn a_store_during_the_sync_of_its_copy_is_held_until_the_sync_completes() {
        let (_dir, mut t) = table(1);
        let state = |committed| AckState::new(5, committed);
        t.store(0, &state(1));
        t.flush(None).unwrap();
        t.store(0, &state(2));
        let before = t.map.to_vec();
        t.sync_starting();
        // Copy 1 (holding 2) is being written back and copy 0 (holding 1) is the fallback.
        t.store(0, &state(3));
        t.store(0, &state(4));
        assert_eq!(
            t.map[..],
            before[..],
            "neither copy is touched during the sync"
        );
        assert_eq!(
            t.load(0, 5),
            Loaded::State(state(4)),
            "a load sees the held store"
        );
        t.sync_done();
        assert_eq!(
            t.map[COPY_BYTES..],
            before[COPY_BYTES..],
            "copy 1 is stable now"
        );
        assert_ne!(
            t.map[..COPY_BYTES],
            before[..COPY_BYTES],
            "written to copy 0"
        );
        assert_eq!(t.load(0, 5), Loaded::State(state(4)));
    }

    #[test]
    fn a_torn_store_never_shows_more_acknowledged_than_was_stored() {
        // Whatever prefix of a store reaches the disk, what loads is the old or the new state.
        let (_dir, mut t) = table(1);
        let old = AckState::new(9, 1000);
        t.store(0, &old);
        t.flush(None).unwrap();
        let before = t.map.to_vec();
        let mut new = old.clone();
        for o in (1000..1100).step_by(3) {
            new.ack(o);
        }
        t.store(0, &new);
        let after = t.map.to_vec();
        for cut in (0..SLOT_BYTES).step_by(64) {
            t.map.copy_from_slice(&before);
            t.map[..cut].copy_from_slice(&after[..cut]);
            match t.load(0, 9) {
                Loaded::State(s) | Loaded::OtherCopyDamaged(s) => {
                    assert!(s == old || s == new, "cut at {cut}")
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}
