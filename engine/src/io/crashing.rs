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
//!
//! Files written through a memory map (the offset tables, [`CrashPlan::register_mapped`]) are
//! not written through the disk: the kernel may write their dirty pages back at any moment, so
//! after a power cut each sector holds either what the last completed sync covered or anything
//! stored since. The plan copies such a file when a sync of it is submitted (through a
//! [`CrashingDisk`], or at open through [`CrashPlan::mapped_sync_starting`]); once the sync
//! succeeded with the power on, that copy is what the disk is known to hold, and
//! [`CrashPlan::lose_unsynced_writes`] sets each sector that differs from it back, or leaves
//! it, at random. One simulator for the logs and the tables.
//!
//! Writes reach the device in an order of their own: some are held back until the next wait,
//! after later ones (`reorder.rs`), as a device may complete writes in any order.
//!
//! Directory changes are durable once their directory is synced: renames made through the
//! disk, and what the plan sees as the engine's metadata filesystem ([`MetaFs`]: topic and
//! group files and directories). A crash undoes a newest-first run of random length of those
//! not yet covered (`dir_changes.rs`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::dir_changes::DirChanges;
use super::meta::{DirEntry, MetaFs, SystemFs};
use super::reorder::{HeldWrite, Reorder};
use super::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};
use crate::aligned::AlignedBuf;
use crate::xorshift::xorshift;

/// How long a wait that may block waits for other completions while writes are held back
/// (`reorder.rs`), before it submits them.
const HOLD_WAIT: std::time::Duration = std::time::Duration::from_micros(500);
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

/// A memory-mapped file, as the plan knows it.
struct Mapped {
    handle: Arc<File>,
    /// The copy the newest completed sync made durable, and that sync's number.
    durable: (u64, Vec<u8>),
}

/// The memory-mapped files a plan knows.
#[derive(Default)]
struct MappedFiles {
    /// Mapped syncs started: a copy taken later supersedes an earlier one.
    started: u64,
    /// By (device, inode).
    files: HashMap<(u64, u64), Mapped>,
}

/// A sync of a memory-mapped file in flight: the copy it will make durable.
pub struct MappedSync {
    inode: (u64, u64),
    number: u64,
    image: Vec<u8>,
}

/// The record of writes shared by a test and the shards' [`CrashingDisk`]s.
#[derive(Default)]
pub struct CrashPlan {
    writes: Mutex<Vec<Written>>,
    /// Renames through the disks, and the metadata files' and directories' changes.
    dirs: DirChanges,
    /// Files written without a sync ([`MetaFs::write_unsynced`]): a power cut may tear them.
    unsynced_files: Mutex<Vec<PathBuf>>,
    mapped: Mutex<MappedFiles>,
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

    fn mapped(&self) -> MutexGuard<'_, MappedFiles> {
        self.mapped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes `path` as a memory-mapped file, durable as it is now (just opened and synced).
    pub fn register_mapped(&self, path: &Path) -> io::Result<()> {
        let handle = OpenOptions::new().read(true).write(true).open(path)?;
        let meta = handle.metadata()?;
        let image = read_whole(&handle)?;
        self.mapped()
            .files
            .entry((meta.dev(), meta.ino()))
            .or_insert(Mapped {
                handle: Arc::new(handle),
                durable: (0, image),
            });
        Ok(())
    }

    fn is_mapped(&self, inode: (u64, u64)) -> bool {
        self.mapped().files.contains_key(&inode)
    }

    /// A sync of the mapped file `path` is about to start: what it will make durable, copied
    /// now. Fails with EIO once the power is cut.
    pub fn mapped_sync_starting(&self, path: &Path) -> io::Result<MappedSync> {
        let meta = std::fs::metadata(path)?;
        self.mapped_sync_of((meta.dev(), meta.ino()))
    }

    fn mapped_sync_of(&self, inode: (u64, u64)) -> io::Result<MappedSync> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(eio());
        }
        let mut mapped = self.mapped();
        mapped.started += 1;
        let number = mapped.started;
        let Some(m) = mapped.files.get(&inode) else {
            return Err(io::Error::other(
                "a sync of a file not registered as mapped",
            ));
        };
        let image = read_whole(&m.handle)?;
        Ok(MappedSync {
            inode,
            number,
            image,
        })
    }

    /// The sync begun with `sync` succeeded: its copy is durable, unless the power was cut
    /// meanwhile (EIO: decided under the same lock as the record, so a sync reported as
    /// successful made its copy durable before the power went).
    pub fn mapped_sync_completed(&self, sync: MappedSync) -> io::Result<()> {
        let mut mapped = self.mapped();
        if self.crashed.load(Ordering::SeqCst) {
            return Err(eio());
        }
        if let Some(m) = mapped.files.get_mut(&sync.inode) {
            if sync.number > m.durable.0 {
                m.durable = (sync.number, sync.image);
            }
        }
        Ok(())
    }

    /// After the engine is gone: each sector of each mapped file that differs from its
    /// durable copy is set back to it or kept, as `next` picks. Returns how many were set back.
    fn lose_unsynced_mapped(&self, next: &mut impl FnMut() -> u64) -> io::Result<usize> {
        let mapped = self.mapped();
        let mut lost = 0;
        for m in mapped.files.values() {
            let now = read_whole(&m.handle)?;
            for (i, (was, is)) in m
                .durable
                .1
                .chunks(SECTOR_BYTES)
                .zip(now.chunks(SECTOR_BYTES))
                .enumerate()
            {
                if was != is && next().is_multiple_of(2) {
                    m.handle.write_all_at(was, (i * SECTOR_BYTES) as u64)?;
                    lost += 1;
                }
            }
            m.handle.sync_all()?;
        }
        Ok(lost)
    }

    /// Cuts the power: every later operation fails with EIO.
    pub fn crash(&self) {
        // Under the mapped files' lock: a mapped sync reported complete finished before.
        let _mapped = self.mapped();
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

    /// After the engine is gone: undoes, newest first, each write no sync covered, and sets
    /// back sectors of mapped files no sync covered. `seed` picks for each write whether it
    /// landed, was lost, or was torn, and for each such sector whether it stays. Returns how
    /// many writes and sectors were undone.
    pub fn lose_unsynced_writes(&self, seed: u64) -> io::Result<usize> {
        let mut next = xorshift(seed);
        let mut undone = self.lose_unsynced_mapped(&mut next)?;
        undone += self.dirs.lose_unsynced(&mut next)?;
        undone += self.tear_unsynced_files(&mut next)?;
        let writes = self.writes();
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

    /// Each file written without a sync that is still there is kept whole, emptied, or cut at
    /// a random length, as `next` picks. Returns how many were damaged.
    fn tear_unsynced_files(&self, next: &mut impl FnMut() -> u64) -> io::Result<usize> {
        let mut torn = 0;
        let files = std::mem::take(
            &mut *self
                .unsynced_files
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for path in files {
            let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                continue; // undone with its directory entry, or removed since
            };
            let len = file.metadata()?.len();
            let keep = match next() % 3 {
                0 => continue,
                1 => 0,
                _ => next() % len.max(1),
            };
            file.set_len(keep)?;
            file.sync_all()?;
            torn += 1;
        }
        Ok(torn)
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

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn read_whole(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len() as usize;
    let mut image = vec![0u8; len];
    file.read_exact_at(&mut image, 0)?;
    Ok(image)
}

/// A backend that records writes for [`CrashPlan`] and passes them to `D`.
pub struct CrashingDisk<D> {
    inner: D,
    plan: Arc<CrashPlan>,
    id: usize,
    handles: HashMap<FileId, (Arc<File>, (u64, u64))>,
    /// Syncs in flight: token → file, and whether the sync covers the whole file.
    syncs: HashMap<u64, (FileId, bool)>,
    /// Syncs of mapped files in flight, by token.
    mapped_syncs: HashMap<u64, MappedSync>,
    failed: Vec<Completion>,
    /// Writes passed on out of order (`reorder.rs`).
    reorder: Reorder,
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
            mapped_syncs: HashMap::new(),
            failed: Vec::new(),
            reorder: Reorder::new(0x5eed_0000 + id as u64),
        }
    }

    fn crashed(&self) -> bool {
        self.plan.crashed.load(Ordering::SeqCst)
    }

    /// Passes writes held back on to the device, or fails them once the power is off.
    fn submit_held(&mut self, writes: Vec<HeldWrite>) {
        for w in writes {
            if self.crashed() {
                let linked = w.sync.any();
                let never = Completion::never_ran(w.token, IoKind::Write, w.buf, linked, eio());
                self.failed.extend(never);
            } else {
                w.submit_to(&mut self.inner);
            }
        }
    }

    fn before_image(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        // Past the end reads as zeros.
        let mut before = vec![0u8; len];
        super::read_up_to(file, &mut before, offset)?;
        Ok(before)
    }
}

impl<D: Disk> Disk for CrashingDisk<D> {
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        if self.crashed() {
            return Err(eio());
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
            return Err(eio());
        }
        self.inner.allocate(file, bytes)
    }
    fn sync_all(&mut self, file: FileId) -> io::Result<()> {
        if self.crashed() {
            return Err(eio());
        }
        self.inner.sync_all(file)?;
        if let Some((_, inode)) = self.handles.get(&file) {
            self.plan.mark_durable(self.id, *inode, None, true);
        }
        Ok(())
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.crashed() {
            return Err(eio());
        }
        self.inner.sync_dir(dir)?;
        self.plan.dirs.synced(dir);
        Ok(())
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        if self.crashed() {
            return Err(eio());
        }
        let replaced = DirChanges::replaced_by_rename(to);
        self.inner.rename(from, to)?;
        self.plan.dirs.renamed(from, to, replaced);
        Ok(())
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        if self.crashed() {
            return Err(eio());
        }
        self.inner.remove(path)
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
            _ => Err(eio()),
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
        let w = HeldWrite {
            file,
            offset,
            buf,
            len,
            token,
            sync,
        };
        if let Some(w) = self.reorder.hold(w) {
            w.submit_to(&mut self.inner);
        }
    }

    fn submit_sync(&mut self, file: FileId, token: u64) {
        if self.crashed() || self.plan.countdown_hits() {
            self.failed.push(Completion {
                token,
                kind: IoKind::Sync,
                result: Err(eio()),
                buf: None,
            });
            return;
        }
        if let Some((_, inode)) = self.handles.get(&file) {
            if self.plan.is_mapped(*inode) {
                match self.plan.mapped_sync_of(*inode) {
                    Ok(sync) => {
                        self.mapped_syncs.insert(token, sync);
                    }
                    Err(e) => {
                        self.failed.push(Completion {
                            token,
                            kind: IoKind::Sync,
                            result: Err(e),
                            buf: None,
                        });
                        return;
                    }
                }
            }
        }
        self.syncs.insert(token, (file, true));
        self.inner.submit_sync(file, token);
    }

    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        self.inner.submit_read(file, offset, buf, len, token);
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        let due = self.reorder.release_due();
        self.submit_held(due);
        let had_failed = !self.failed.is_empty();
        out.append(&mut self.failed);
        let seen = out.len();
        let holding = self.reorder.holding();
        let first = match block {
            _ if had_failed => Block::No,
            Block::No => Block::No,
            // Long enough for a write submitted after the held ones to complete first.
            _ if holding => Block::AtMost(HOLD_WAIT),
            other => other,
        };
        self.inner.wait(out, first)?;
        if holding && first != Block::No && out.len() == seen {
            let all = self.reorder.release_all();
            self.submit_held(all);
            let failed = !self.failed.is_empty();
            out.append(&mut self.failed);
            self.inner
                .wait(out, if failed { Block::No } else { block })?;
        }
        let crashed = self.crashed();
        for c in &mut out[seen..] {
            let mapped = match c.kind {
                IoKind::Sync => self.mapped_syncs.remove(&c.token),
                IoKind::Write | IoKind::Read => None,
            };
            if let (Some(sync), true) = (mapped, c.result.is_ok()) {
                if let Err(e) = self.plan.mapped_sync_completed(sync) {
                    c.result = Err(e);
                }
            }
            if crashed {
                // The power is off: whatever the device says now, nobody may rely on it.
                if c.result.is_ok() {
                    c.result = Err(eio());
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

/// The engine's metadata files and directories under the simulator: the system's calls, their
/// directory changes recorded, and every change refused once the power is cut.
impl MetaFs for CrashPlan {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        self.refuse_when_cut()?;
        SystemFs.create_dir(dir)?;
        self.dirs.created(dir, true);
        Ok(())
    }
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.refuse_when_cut()?;
        let new = !path.exists();
        SystemFs.write_synced(path, bytes)?;
        if new {
            self.dirs.created(path, false);
        }
        Ok(())
    }
    fn write_unsynced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.refuse_when_cut()?;
        let new = !path.exists();
        SystemFs.write_unsynced(path, bytes)?;
        if new {
            self.dirs.created(path, false);
        }
        self.unsynced_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(path.to_path_buf());
        Ok(())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        SystemFs.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.refuse_when_cut()?;
        let replaced = DirChanges::replaced_by_rename(to);
        SystemFs.rename(from, to)?;
        self.dirs.renamed(from, to, replaced);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.refuse_when_cut()?;
        SystemFs.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.refuse_when_cut()?;
        SystemFs.remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.refuse_when_cut()?;
        SystemFs.sync_dir(dir)?;
        self.dirs.synced(dir);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        SystemFs.list(dir)
    }
}

impl CrashPlan {
    fn refuse_when_cut(&self) -> io::Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(eio());
        }
        Ok(())
    }
}
