//! Offset tables: the durable part of consumer-group state. One memory-mapped file per shard
//! of fixed-size slots, one slot per (group, partition): the committed offset (everything
//! below it is acknowledged) and a bitmap of acknowledgements in the window above it.
//!
//! Each slot holds two copies, each with a sequence number and a CRC-32C. A store writes the
//! copy that is *not* the newest valid one, so a torn or half-flushed store can only damage the
//! copy being written; the other still holds the previous state. Loading takes the newest copy
//! whose CRC checks. The worst a crash can do is bring back an older state: fewer messages
//! acknowledged, so some are delivered again, never one lost. The layout is in
//! `docs/FORMAT.md`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::{EngineError, Result};
use crate::layout::sync_dir;

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
const CRC_AT: usize = BITMAP_AT + BITMAP_BYTES;

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

    /// Moves the window up by `n` offsets (all acknowledged): bytes move whole, then bits.
    fn shift(&mut self, n: usize) {
        let (bytes, bits) = (n / 8, n % 8);
        let old = *self.window;
        let at = |i: usize| old.get(i).copied().unwrap_or(0);
        for i in 0..BITMAP_BYTES {
            let lo = at(i + bytes);
            self.window[i] = if bits == 0 {
                lo
            } else {
                lo >> bits | at(i + bytes + 1) << (8 - bits)
            };
        }
        self.committed += n as u64;
    }
}

/// What loading a slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The newest valid copy.
    State(AckState),
    /// Neither copy is valid for this owner: never written, or both damaged. The caller falls
    /// back to an older committed offset it knows (redelivering, never skipping).
    Nothing {
        /// Whether a copy held data that failed its CRC (damage, worth a warning) rather than
        /// nothing at all.
        damaged: bool,
    },
}

/// One shard's table of slots, memory-mapped.
pub struct OffsetTable {
    path: PathBuf,
    map: MmapMut,
    _file: File,
}

impl OffsetTable {
    /// Opens (creating if needed) a table of `slots` slots at `path`; a smaller existing file
    /// is grown, the new slots empty.
    pub fn open(path: &Path, slots: usize) -> Result<Self> {
        let io = |op, e| EngineError::io(op, path, e);
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
                sync_dir(dir)?;
            }
        }
        // The file is this process's own (the data directory is locked by flock), and the map
        // lives in the table with the file and is only touched through it.
        // SAFETY: so no one truncates or writes the file behind the map while it is mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| io("map offset table", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            _file: file,
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
            Some((_, state)) => Loaded::State(state),
            None => Loaded::Nothing { damaged },
        }
    }

    /// Writes `state` into the slot's older (or invalid) copy. Durable after [`Self::flush`].
    pub fn store(&mut self, slot: usize, state: &AckState) {
        let (mut newest, mut target) = (0u64, 0usize);
        for which in 0..2 {
            if let Decoded::Ok(seq, _) = decode(self.copy(slot, which)) {
                if seq >= newest {
                    newest = seq;
                    target = 1 - which;
                }
            }
        }
        let at = slot * SLOT_BYTES + target * COPY_BYTES;
        encode(newest + 1, state, &mut self.map[at..at + COPY_BYTES]);
    }

    /// Makes every store so far durable (`msync`).
    pub fn flush(&self) -> Result<()> {
        self.map
            .flush()
            .map_err(|e| EngineError::io("msync offset table", &self.path, e))
    }
}

enum Decoded {
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
fn encode(seq: u64, state: &AckState, out: &mut [u8]) {
    out.fill(0);
    out[..4].copy_from_slice(&MAGIC);
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    out[12..20].copy_from_slice(&state.owner.to_le_bytes());
    out[20..28].copy_from_slice(&state.committed.to_le_bytes());
    out[BITMAP_AT..CRC_AT].copy_from_slice(&state.window[..]);
    let crc = crc32c::crc32c(&out[..CRC_AT]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

fn decode(b: &[u8]) -> Decoded {
    if b.iter().all(|&x| x == 0) {
        return Decoded::Empty;
    }
    let crc = u32::from_le_bytes([b[CRC_AT], b[CRC_AT + 1], b[CRC_AT + 2], b[CRC_AT + 3]]);
    if b[..4] != MAGIC || crc32c::crc32c(&b[..CRC_AT]) != crc {
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
            t.flush().unwrap();
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
    fn a_torn_copy_falls_back_to_the_other_and_both_torn_is_reported() {
        let (_dir, mut t) = table(2);
        let older = AckState::new(3, 40);
        let mut newer = AckState::new(3, 40);
        newer.ack(40);
        newer.ack(41);
        t.store(0, &older);
        t.store(0, &newer);
        // Stores alternate copies: the newer is in copy 1. Tear it (a half-written sector).
        t.map[COPY_BYTES + 20] ^= 0xff;
        assert_eq!(
            t.load(0, 3),
            Loaded::State(older.clone()),
            "the intact older copy"
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
    fn a_torn_store_never_shows_more_acknowledged_than_was_stored() {
        // Whatever prefix of a store reaches the disk, what loads is the old or the new state.
        let (_dir, mut t) = table(1);
        let old = AckState::new(9, 1000);
        t.store(0, &old);
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
                Loaded::State(s) => assert!(s == old || s == new, "cut at {cut}"),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}
