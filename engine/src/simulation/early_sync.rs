//! A deliberately broken engine, for proving that the simulator's checks can fail: to the
//! engine above it, the sync linked to a write seems to complete as soon as the write does,
//! so the engine acknowledges appends before their data is durable. The disks below (the
//! power-cut simulator) still see the real sync, and a power cut before it loses the data.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::aligned::AlignedBuf;
use crate::io::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};

/// Passes everything to `D`, but answers a write's linked sync early.
pub(crate) struct EarlySyncDisk<D> {
    inner: D,
    /// Writes with a linked sync whose write has not completed.
    linked: HashSet<u64>,
    /// Syncs answered early, whose real completion is swallowed.
    answered: HashSet<u64>,
}

impl<D> EarlySyncDisk<D> {
    pub(crate) fn new(inner: D) -> Self {
        Self {
            inner,
            linked: HashSet::new(),
            answered: HashSet::new(),
        }
    }
}

impl<D: Disk> Disk for EarlySyncDisk<D> {
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
        if sync.any() {
            self.linked.insert(token);
        }
        self.inner.submit_write(file, offset, buf, len, token, sync);
    }
    fn submit_sync(&mut self, file: FileId, token: u64) {
        self.inner.submit_sync(file, token);
    }
    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        self.inner.submit_read(file, offset, buf, len, token);
    }
    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        let mut got = Vec::new();
        self.inner.wait(&mut got, block)?;
        for c in got {
            match c.kind {
                IoKind::Write if c.result.is_ok() && self.linked.remove(&c.token) => {
                    let token = c.token;
                    out.push(c);
                    self.answered.insert(token);
                    out.push(Completion {
                        token,
                        kind: IoKind::Sync,
                        result: Ok(0),
                        buf: None,
                    });
                }
                IoKind::Write => {
                    self.linked.remove(&c.token);
                    out.push(c);
                }
                IoKind::Sync if self.answered.remove(&c.token) => {}
                IoKind::Sync | IoKind::Read => out.push(c),
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
