//! A disk in memory whose operations complete only when a test says so, to pin down an
//! interleaving (which write lands first) that real hardware makes a matter of luck.
//!
//! File contents live in memory; the files are also created, empty, on the real filesystem so
//! that renames and directory syncs done through `std::fs` behave as usual.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};
use crate::aligned::AlignedBuf;

/// One submitted write, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRecord {
    /// File written.
    pub file: FileId,
    /// Byte offset.
    pub offset: u64,
    /// Bytes.
    pub len: usize,
    /// Whether a sync was linked after it.
    pub sync: bool,
}

struct Submitted {
    token: u64,
    kind: IoKind,
    file: FileId,
    offset: u64,
    len: usize,
    buf: AlignedBuf,
    sync: bool,
}

/// In-memory [`Disk`]: writes and reads wait in submission order until [`MemDisk::complete`].
pub struct MemDisk {
    files: Vec<Vec<u8>>,
    queued: VecDeque<Submitted>,
    done: Vec<Completion>,
    /// Every write submitted, in order.
    pub writes: Vec<WriteRecord>,
    waker: Arc<Waker>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            files: Vec::new(),
            queued: VecDeque::new(),
            done: Vec::new(),
            writes: Vec::new(),
            waker: Arc::new(Waker::new()?),
        })
    }

    /// Operations submitted and not yet completed.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Completes the `index`-th queued operation (0 = oldest): applies it and makes its
    /// completions available to [`Disk::wait`]. Returns its token.
    pub fn complete(&mut self, index: usize) -> Option<u64> {
        let mut op = self.queued.remove(index)?;
        let data = &mut self.files[op.file.0 as usize];
        let end = op.offset as usize + op.len;
        if op.kind == IoKind::Write {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[op.offset as usize..end].copy_from_slice(&op.buf.as_slice()[..op.len]);
        } else {
            let have = data.len().saturating_sub(op.offset as usize).min(op.len);
            op.buf.as_mut_slice()[..have]
                .copy_from_slice(&data[op.offset as usize..op.offset as usize + have]);
        }
        self.done.push(Completion {
            token: op.token,
            kind: op.kind,
            result: Ok(op.len),
            buf: Some(op.buf),
        });
        if op.sync {
            self.done.push(Completion {
                token: op.token,
                kind: IoKind::Sync,
                result: Ok(0),
                buf: None,
            });
        }
        Some(op.token)
    }

    /// The bytes of a file.
    pub fn contents(&self, file: FileId) -> &[u8] {
        &self.files[file.0 as usize]
    }
}

impl Disk for MemDisk {
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        if create {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
        }
        self.files.push(Vec::new());
        Ok(FileId(self.files.len() as u32 - 1))
    }
    fn close(&mut self, _file: FileId) {}
    fn len(&mut self, file: FileId) -> io::Result<u64> {
        Ok(self.files[file.0 as usize].len() as u64)
    }
    fn allocate(&mut self, file: FileId, bytes: u64) -> io::Result<Allocation> {
        let data = &mut self.files[file.0 as usize];
        if (data.len() as u64) < bytes {
            data.resize(bytes as usize, 0);
        }
        Ok(Allocation::Fallocated)
    }
    fn sync_all(&mut self, _file: FileId) -> io::Result<()> {
        Ok(())
    }
    fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        // The files' bytes live in memory by id; only their names are on disk.
        std::fs::rename(from, to)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
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
        let sync = sync.any();
        self.writes.push(WriteRecord {
            file,
            offset,
            len,
            sync,
        });
        self.queued.push_back(Submitted {
            token,
            kind: IoKind::Write,
            file,
            offset,
            len,
            buf,
            sync,
        });
    }
    fn submit_sync(&mut self, _file: FileId, token: u64) {
        // Everything written is in memory already: durable at once.
        self.done.push(Completion {
            token,
            kind: IoKind::Sync,
            result: Ok(0),
            buf: None,
        });
    }
    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        self.queued.push_back(Submitted {
            token,
            kind: IoKind::Read,
            file,
            offset,
            len,
            buf,
            sync: false,
        });
    }
    fn wait(&mut self, out: &mut Vec<Completion>, _block: Block) -> io::Result<()> {
        out.append(&mut self.done);
        Ok(())
    }
    fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }
}
