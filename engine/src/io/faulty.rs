//! A wrapper that injects write and sync failures into a real backend, for tests.
//!
//! It sits *around* the production backend rather than replacing it: everything not chosen to
//! fail still goes to the real disk.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use super::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};
use crate::aligned::AlignedBuf;

/// What to break, shared between a test and the shards using it.
///
/// Counters count down: `fail_write_in(n)` makes the n-th write submitted from now on fail
/// (1 = the next one). Every failure after the first keeps failing until [`FaultPlan::heal`],
/// like a disk that went bad.
#[derive(Debug)]
pub struct FaultPlan {
    write_countdown: AtomicI64,
    sync_countdown: AtomicI64,
    allocate_countdown: AtomicI64,
    errno: AtomicI64,
    injected: AtomicU64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            write_countdown: AtomicI64::new(0),
            sync_countdown: AtomicI64::new(0),
            allocate_countdown: AtomicI64::new(0),
            errno: AtomicI64::new(i64::from(libc::EIO)),
            injected: AtomicU64::new(0),
        }
    }
}

impl FaultPlan {
    /// A plan that injects nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// The n-th write from now fails (and every later one).
    pub fn fail_write_in(&self, n: i64) {
        self.write_countdown.store(n, Ordering::SeqCst);
    }
    /// The n-th data sync from now fails (and every later one).
    pub fn fail_sync_in(&self, n: i64) {
        self.sync_countdown.store(n, Ordering::SeqCst);
    }
    /// The n-th allocation from now fails (and every later one).
    pub fn fail_allocate_in(&self, n: i64) {
        self.allocate_countdown.store(n, Ordering::SeqCst);
    }
    /// The OS error number injected (default EIO).
    pub fn set_errno(&self, errno: i32) {
        self.errno.store(i64::from(errno), Ordering::SeqCst);
    }
    /// Stops injecting.
    pub fn heal(&self) {
        for c in [
            &self.write_countdown,
            &self.sync_countdown,
            &self.allocate_countdown,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }
    /// How many failures were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Advances a countdown; true when this operation must fail.
    fn trips(&self, countdown: &AtomicI64) -> bool {
        let trip = match countdown.load(Ordering::SeqCst) {
            n if n <= 0 => false,
            1 => true, // stays at 1: the disk stays bad
            _ => {
                countdown.fetch_sub(1, Ordering::SeqCst);
                false
            }
        };
        if trip {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        trip
    }

    fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno.load(Ordering::SeqCst) as i32)
    }
}

/// A backend that fails what its [`FaultPlan`] says and passes everything else to `D`.
pub struct FaultyDisk<D> {
    inner: D,
    plan: Arc<FaultPlan>,
    injected: Vec<Completion>,
}

impl<D: Disk> FaultyDisk<D> {
    /// Wraps `inner`.
    pub fn new(inner: D, plan: Arc<FaultPlan>) -> Self {
        Self {
            inner,
            plan,
            injected: Vec::new(),
        }
    }
}

impl<D> FaultyDisk<D> {
    /// The injected failure of the sync submitted with `token`.
    fn fail_sync(&mut self, token: u64) {
        self.injected.push(Completion {
            token,
            kind: IoKind::Sync,
            result: Err(self.plan.error()),
            buf: None,
        });
    }
}

impl<D: Disk> Disk for FaultyDisk<D> {
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        self.inner.open(path, create)
    }
    fn close(&mut self, file: FileId) {
        self.inner.close(file);
    }
    fn len(&mut self, file: FileId) -> io::Result<u64> {
        self.inner.len(file)
    }
    fn allocate(&mut self, file: FileId, bytes: u64) -> io::Result<Allocation> {
        if self.plan.trips(&self.plan.allocate_countdown) {
            return Err(self.plan.error());
        }
        self.inner.allocate(file, bytes)
    }
    fn sync_all(&mut self, file: FileId) -> io::Result<()> {
        self.inner.sync_all(file)
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
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
        if self.plan.trips(&self.plan.write_countdown) {
            let err = self.plan.error();
            self.injected.extend(Completion::never_ran(
                token,
                IoKind::Write,
                buf,
                then_sync,
                err,
            ));
            return;
        }
        if then_sync && self.plan.trips(&self.plan.sync_countdown) {
            // The data really goes to the disk; only the sync reports failure, as when a
            // device loses its write cache.
            self.inner
                .submit_write(file, offset, buf, len, token, SyncAfter::Nothing);
            return self.fail_sync(token);
        }
        self.inner.submit_write(file, offset, buf, len, token, sync);
    }

    fn submit_sync(&mut self, file: FileId, token: u64) {
        if self.plan.trips(&self.plan.sync_countdown) {
            return self.fail_sync(token);
        }
        self.inner.submit_sync(file, token);
    }

    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        self.inner.submit_read(file, offset, buf, len, token);
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        let have_injected = !self.injected.is_empty();
        out.append(&mut self.injected);
        self.inner
            .wait(out, if have_injected { Block::No } else { block })
    }

    fn waker(&self) -> Arc<Waker> {
        self.inner.waker()
    }
    fn start_on_thread(&mut self) -> io::Result<()> {
        self.inner.start_on_thread()
    }
}
