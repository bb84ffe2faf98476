//! Power loss, simulated on top of a real backend, for tests.
//!
//! Every write's pre-image is saved before the write is submitted. A completed `fdatasync` of a
//! file makes durable every write to that file whose completion was seen before it (and the
//! write it is linked to); a blocking `fsync` does the same. A write made durable by itself
//! ([`SyncAfter::ThisWrite`]) covers only itself, as on a device with FUA. [`CrashPlan::crash`]
//! cuts the disk off: from then on every operation fails. After the engine is dropped,
//! [`CrashPlan::lose_unsynced_writes`] rolls each write that never became durable back to its
//! pre-image, wholly or sector by sector (a torn write), as a power cut could. Whatever was
//! acknowledged must still be there.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};
use crate::aligned::AlignedBuf;
use crate::xorshift::xorshift;

/// Bytes a torn write keeps or loses as a unit (a disk sector).
const SECTOR_BYTES: usize = 512;

struct Written {
    disk: usize,
    /// The file's (device, inode): the same across engines and renames.
    inode: (u64, u64),
    /// A handle of our own: it follows renames, and outlives the engine for the rollback.
    handle: Arc<File>,
    offset: u64,
    before: Vec<u8>,
    token: u64,
    completed: bool,
    durable: bool,
}

/// The record of writes shared by a test and the shards' [`CrashingDisk`]s.
#[derive(Default)]
pub struct CrashPlan {
    writes: Mutex<Vec<Written>>,
    crashed: AtomicBool,
    disks: AtomicUsize,
    /// Writes still allowed before the power is cut by itself (0: no such countdown).
    writes_until_crash: AtomicUsize,
    /// Whether a countdown cut the power.
    cut_by_countdown: AtomicBool,
}

impl std::fmt::Debug for CrashPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashPlan")
            .field("writes", &self.writes().len())
            .field("crashed", &self.crashed.load(Ordering::SeqCst))
            .finish()
    }
}

impl CrashPlan {
    /// A plan recording writes, not crashed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn writes(&self) -> MutexGuard<'_, Vec<Written>> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power: every later operation fails with EIO.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// Cuts the power by itself when the `n`-th write from now is submitted (that write and all
    /// later operations fail), e.g. in the middle of a recovery.
    pub fn crash_at_write(&self, n: usize) {
        self.writes_until_crash.store(n, Ordering::SeqCst);
    }

    /// True when a countdown set by [`CrashPlan::crash_at_write`] reaches this write.
    fn countdown_hits(&self) -> bool {
        let hit = self
            .writes_until_crash
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then(|| n - 1)
            })
            .is_ok_and(|before| before == 1);
        if hit {
            self.cut_by_countdown.store(true, Ordering::SeqCst);
            self.crash();
        }
        hit
    }

    /// True once a countdown set by [`CrashPlan::crash_at_write`] has cut the power (false if
    /// fewer writes than that were made).
    pub fn cut_by_countdown(&self) -> bool {
        self.cut_by_countdown.load(Ordering::SeqCst)
    }

    /// Turns [`CrashPlan::crash`] into a process crash instead: the power stayed on, so every
    /// write submitted before it reached the device (volatile until a later sync covers it),
    /// and a new engine may use the disk.
    pub fn power_stays(&self) {
        for w in self.writes().iter_mut() {
            w.completed = true;
        }
        self.crashed.store(false, Ordering::SeqCst);
    }

    /// After the engine is gone: undoes, newest first, each write no sync covered. `seed` picks
    /// for each one whether it landed, was lost, or was torn. Returns how many were undone.
    pub fn lose_unsynced_writes(&self, seed: u64) -> io::Result<usize> {
        let mut next = xorshift(seed);
        let writes = self.writes();
        let mut undone = 0;
        for w in writes.iter().rev().filter(|w| !w.durable) {
            let file = &w.handle;
            match next() % 3 {
                0 => continue, // it landed whole
                1 => file.write_all_at(&w.before, w.offset)?,
                _ => {
                    for (i, sector) in w.before.chunks(SECTOR_BYTES).enumerate() {
                        if next().is_multiple_of(2) {
                            file.write_all_at(sector, w.offset + (i * SECTOR_BYTES) as u64)?;
                        }
                    }
                }
            }
            file.sync_all()?;
            undone += 1;
        }
        Ok(undone)
    }

    /// A sync of the file `inode` makes durable the write linked to it and, when `whole_file`,
    /// every write to the file that had completed, from whichever engine.
    fn mark_durable(
        &self,
        disk: usize,
        inode: (u64, u64),
        linked_token: Option<u64>,
        whole_file: bool,
    ) {
        for w in self.writes().iter_mut() {
            let linked = w.disk == disk && Some(w.token) == linked_token;
            if w.inode == inode && ((whole_file && w.completed) || linked) {
                w.durable = true;
            }
        }
    }
}

/// A backend that records writes for [`CrashPlan`] and passes them to `D`.
pub struct CrashingDisk<D> {
    inner: D,
    plan: Arc<CrashPlan>,
    id: usize,
    handles: HashMap<FileId, (Arc<File>, (u64, u64))>,
    /// Syncs in flight: token → file, and whether the sync covers the whole file.
    syncs: HashMap<u64, (FileId, bool)>,
    failed: Vec<Completion>,
}

impl<D: Disk> CrashingDisk<D> {
    /// Wraps `inner`.
    pub fn new(inner: D, plan: Arc<CrashPlan>) -> Self {
        let id = plan.disks.fetch_add(1, Ordering::SeqCst);
        Self {
            inner,
            plan,
            id,
            handles: HashMap::new(),
            syncs: HashMap::new(),
            failed: Vec::new(),
        }
    }

    fn crashed(&self) -> bool {
        self.plan.crashed.load(Ordering::SeqCst)
    }

    fn eio() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    fn before_image(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut before = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match file.read_at(&mut before[got..], offset + got as u64)? {
                0 => break, // past the end reads as zeros
                n => got += n,
            }
        }
        Ok(before)
    }
}

impl<D: Disk> Disk for CrashingDisk<D> {
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        if self.crashed() {
            return Err(Self::eio());
        }
        let file = self.inner.open(path, create)?;
        let handle = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .and_then(|h| {
                let meta = h.metadata()?;
                Ok((h, (meta.dev(), meta.ino())))
            });
        match handle {
            Ok((handle, inode)) => {
                self.handles.insert(file, (Arc::new(handle), inode));
                Ok(file)
            }
            Err(e) => {
                self.inner.close(file);
                Err(e)
            }
        }
    }
    fn close(&mut self, file: FileId) {
        self.handles.remove(&file);
        self.inner.close(file);
    }
    fn len(&mut self, file: FileId) -> io::Result<u64> {
        self.inner.len(file)
    }
    fn allocate(&mut self, file: FileId, bytes: u64) -> io::Result<Allocation> {
        if self.crashed() {
            return Err(Self::eio());
        }
        self.inner.allocate(file, bytes)
    }
    fn sync_all(&mut self, file: FileId) -> io::Result<()> {
        if self.crashed() {
            return Err(Self::eio());
        }
        self.inner.sync_all(file)?;
        if let Some((_, inode)) = self.handles.get(&file) {
            self.plan.mark_durable(self.id, *inode, None, true);
        }
        Ok(())
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.crashed() {
            return Err(Self::eio());
        }
        self.inner.sync_dir(dir)
    }

    fn submit_write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
        sync: SyncAfter,
    ) {
        let then_sync = sync.any();
        let cut = self.plan.countdown_hits();
        let recorded = match self.handles.get(&file) {
            Some((handle, inode)) if !cut && !self.crashed() => {
                Self::before_image(handle, offset, len)
                    .map(|before| (Arc::clone(handle), *inode, before))
            }
            _ => Err(Self::eio()),
        };
        let (handle, inode, before) = match recorded {
            Ok(r) => r,
            Err(e) => {
                self.failed.extend(Completion::never_ran(
                    token,
                    IoKind::Write,
                    buf,
                    then_sync,
                    e,
                ));
                return;
            }
        };
        self.plan.writes().push(Written {
            disk: self.id,
            inode,
            handle,
            offset,
            before,
            token,
            completed: false,
            durable: false,
        });
        if then_sync {
            self.syncs.insert(token, (file, sync == SyncAfter::File));
        }
        self.inner.submit_write(file, offset, buf, len, token, sync);
    }

    fn submit_sync(&mut self, file: FileId, token: u64) {
        if self.crashed() || self.plan.countdown_hits() {
            self.failed.push(Completion {
                token,
                kind: IoKind::Sync,
                result: Err(Self::eio()),
                buf: None,
            });
            return;
        }
        self.syncs.insert(token, (file, true));
        self.inner.submit_sync(file, token);
    }

    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        self.inner.submit_read(file, offset, buf, len, token);
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        let had_failed = !self.failed.is_empty();
        out.append(&mut self.failed);
        let seen = out.len();
        self.inner
            .wait(out, if had_failed { Block::No } else { block })?;
        let crashed = self.crashed();
        for c in &mut out[seen..] {
            if crashed {
                // The power is off: whatever the device says now, nobody may rely on it.
                if c.result.is_ok() {
                    c.result = Err(Self::eio());
                }
                continue;
            }
            match (c.kind, &c.result) {
                (IoKind::Write, Ok(_)) => {
                    for w in self.plan.writes().iter_mut() {
                        if w.disk == self.id && w.token == c.token && !w.completed {
                            w.completed = true;
                        }
                    }
                }
                (IoKind::Sync, Ok(_)) => {
                    if let Some((file, whole_file)) = self.syncs.remove(&c.token) {
                        if let Some((_, inode)) = self.handles.get(&file) {
                            self.plan
                                .mark_durable(self.id, *inode, Some(c.token), whole_file);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn waker(&self) -> Arc<Waker> {
        self.inner.waker()
    }
    fn start_on_thread(&mut self) -> io::Result<()> {
        self.inner.start_on_thread()
    }
}
