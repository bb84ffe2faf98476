//! The disk seam: every disk operation a shard performs goes through [`Disk`].
//!
//! Writes, reads and data syncs are submitted and complete later ([`Disk::wait`]); the buffer
//! travels into the backend with the submission and comes back in the completion, so nothing
//! can free or reuse it while the kernel owns it. Rare operations (open, allocate, full file and
//! directory syncs, renames and removals of a partition's files) are blocking calls. The storage code is generic over this trait:
//! - [`UringDisk`]: io_uring with O_DIRECT, in production;
//! - [`PortableDisk`]: pwrite + fdatasync on a thread, for hosts that block io_uring;
//! - [`FaultyDisk`]: wraps a real backend and fails chosen writes, syncs or allocations;
//! - [`CrashingDisk`]: wraps a real backend and can undo every write no sync covered (power loss);
//! - [`MemDisk`]: in memory, completes operations on command (to pin an interleaving).

#[cfg(feature = "testing")]
mod crashing;
#[cfg(feature = "testing")]
mod dir_changes;
#[cfg(feature = "testing")]
mod faulty;
mod files;
mod fixed;
#[cfg(any(test, feature = "testing"))]
mod memory;
mod meta;
mod portable;
#[cfg(feature = "testing")]
mod reorder;
mod uring;
mod wake;

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::aligned::AlignedBuf;

#[cfg(feature = "testing")]
pub use crashing::{CrashPlan, CrashingDisk, MappedSync};

/// What records the syncs of memory-mapped files (the offset tables) made outside a shard's
/// ring, at open: the crash simulator's plan in power-loss tests; in keeld a type with no
/// values, so the hook is always `None` there.
#[cfg(feature = "testing")]
pub type MappedRecord = CrashPlan;
/// See the `testing` build's alias: no values.
#[cfg(not(feature = "testing"))]
#[derive(Debug)]
pub enum MappedRecord {}
/// See the `testing` build: no values.
#[cfg(not(feature = "testing"))]
pub enum MappedSync {}

#[cfg(not(feature = "testing"))]
impl MappedRecord {
    /// Never called: there is no value.
    pub fn register_mapped(&self, _path: &Path) -> io::Result<()> {
        match *self {}
    }
    /// Never called: there is no value.
    pub fn mapped_sync_starting(&self, _path: &Path) -> io::Result<MappedSync> {
        match *self {}
    }
    /// Never called: there is no value.
    pub fn mapped_sync_completed(&self, sync: MappedSync) -> io::Result<()> {
        match sync {}
    }
}
#[cfg(feature = "testing")]
pub use faulty::{FaultPlan, FaultyDisk};
#[cfg(feature = "testing")]
pub(crate) use files::read_up_to;
pub(crate) use files::sync_dir;
pub(crate) use fixed::FixedTag;
#[cfg(any(test, feature = "testing"))]
pub use memory::{MemDisk, WriteRecord};
pub use meta::{MetaFs, SystemFs};
pub use portable::PortableDisk;
pub use uring::UringDisk;
pub use wake::{Waker, WAKE_BATCH};

/// A file opened through a [`Disk`], valid until [`Disk::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// What a completion reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// A write; carries the buffer back.
    Write,
    /// A read; carries the buffer back.
    Read,
    /// The data sync linked after a write.
    Sync,
}

/// What makes a submitted write durable. Either way the write's completion is followed by a
/// `Sync` completion once the promised durability holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAfter {
    /// Nothing: the write may stay in volatile caches.
    Nothing,
    /// This write's own bytes, and only those (`RWF_DSYNC` on io_uring: no separate sync and
    /// no kernel worker thread for it). On a device with FUA the kernel may make just this
    /// write durable, so earlier writes to the file are *not* covered.
    ThisWrite,
    /// An `fdatasync` after the write succeeded: the write and every write to the file that
    /// completed before it.
    File,
}

impl SyncAfter {
    /// Whether a `Sync` completion follows the write.
    pub fn any(self) -> bool {
        self != Self::Nothing
    }

    /// [`SyncAfter::File`] when `sync`, else nothing: for writers that rely on the sync
    /// covering their earlier unsynced writes too.
    pub fn file_if(sync: bool) -> Self {
        if sync {
            Self::File
        } else {
            Self::Nothing
        }
    }
}

/// How long [`Disk::wait`] may sleep when no completion is ready yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Not at all: take what is ready.
    No,
    /// Until a completion or a wake-up through the [`Waker`].
    Yes,
    /// Until a completion, a wake-up, or this much time has passed (a shard holding a flush
    /// back for a moment, see `EngineConfig::commit_linger`).
    AtMost(Duration),
}

/// The result of one submitted operation.
#[derive(Debug)]
pub struct Completion {
    /// The token given at submission.
    pub token: u64,
    /// Which operation this is.
    pub kind: IoKind,
    /// Bytes transferred (0 for syncs), or the OS error.
    pub result: io::Result<usize>,
    /// The buffer of a write or read, returned to its owner.
    pub buf: Option<AlignedBuf>,
}

impl Completion {
    /// The completions of an operation that never ran: it failed with `err`, and the sync
    /// linked to it, if any, was cancelled. Every backend reports such failures this way.
    pub fn never_ran(
        token: u64,
        kind: IoKind,
        buf: AlignedBuf,
        linked_sync: bool,
        err: io::Error,
    ) -> impl Iterator<Item = Completion> {
        let op = Completion {
            token,
            kind,
            result: Err(err),
            buf: Some(buf),
        };
        let sync = linked_sync.then(|| Completion {
            token,
            kind: IoKind::Sync,
            result: Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            buf: None,
        });
        std::iter::once(op).chain(sync)
    }
}

/// How [`Disk::allocate`] reserved the space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// `fallocate` reserved the blocks.
    Fallocated,
    /// The filesystem has no `fallocate`; zeros were written instead.
    ZeroFilled,
}

/// Disk operations of one shard. Not shared between threads: one backend per shard.
pub trait Disk {
    /// Opens (optionally creating) a file for O_DIRECT reads and writes.
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId>;
    /// Closes a file. No operation on it may be in flight.
    fn close(&mut self, file: FileId);
    /// Current length of the file in bytes.
    fn len(&mut self, file: FileId) -> io::Result<u64>;
    /// Reserves `bytes` for the file (blocking), so later writes inside it need no new blocks.
    fn allocate(&mut self, file: FileId, bytes: u64) -> io::Result<Allocation>;
    /// `fsync` of the file, data and metadata (blocking).
    fn sync_all(&mut self, file: FileId) -> io::Result<()>;
    /// `fsync` of a directory, making entries created or renamed in it durable (blocking).
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// Renames a file within its directory (blocking); durable once the directory is synced.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (blocking); durable once its directory is synced.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Submits a write of `buf[..len]` at `offset`, made durable as `sync` says. Completions:
    /// one `Write` (with the buffer), and one `Sync` unless `sync` is [`SyncAfter::Nothing`].
    /// `offset`, `len` must be block aligned.
    fn submit_write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
        sync: SyncAfter,
    );
    /// Submits an `fdatasync` of the file on its own: one `Sync` completion once every write
    /// to it that completed before is durable (a memory-mapped file's stores included).
    fn submit_sync(&mut self, file: FileId, token: u64);
    /// Submits a read of `len` bytes at `offset` into `buf`.
    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64);
    /// Collects finished operations into `out`, sleeping first as `block` allows when none
    /// has finished.
    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()>;
    /// The handle other threads use to interrupt a blocking [`Disk::wait`].
    fn waker(&self) -> std::sync::Arc<Waker>;
    /// Called once on the thread that will use the disk, after it is pinned, before any
    /// submission.
    fn start_on_thread(&mut self) -> io::Result<()> {
        Ok(())
    }
}
