//! The open files of a disk backend, and the blocking file operations every backend shares.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use super::{Allocation, FileId};
use crate::aligned::{align_up, AlignedBuf};

/// Bytes written per call when zero-filling a file on a filesystem without `fallocate`.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// Files by [`FileId`], reusing the ids of closed ones.
#[derive(Default)]
pub struct FileTable {
    files: Vec<Option<Arc<File>>>,
    free_ids: Vec<u32>,
}

impl FileTable {
    /// Opens (optionally creating) `path` for O_DIRECT reads and writes.
    pub fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)?;
        let file = Some(Arc::new(file));
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.files[id as usize] = file;
                id
            }
            None => {
                self.files.push(file);
                (self.files.len() - 1) as u32
            }
        };
        Ok(FileId(id))
    }

    /// Closes a file (once no operation uses it).
    pub fn close(&mut self, file: FileId) {
        if let Some(slot) = self.files.get_mut(file.0 as usize) {
            if slot.take().is_some() {
                self.free_ids.push(file.0);
            }
        }
    }

    /// The open file `id`.
    pub fn get(&self, file: FileId) -> io::Result<&Arc<File>> {
        match self.files.get(file.0 as usize) {
            Some(Some(f)) => Ok(f),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "file id not open")),
        }
    }
}

/// Reserves `bytes` for `file` with `fallocate`; where the filesystem has none, writes zeros.
pub fn allocate(file: &File, bytes: u64) -> io::Result<Allocation> {
    // SAFETY: plain syscall on a descriptor we own; result checked.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc == 0 {
        return Ok(Allocation::Fallocated);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    let zeros = AlignedBuf::zeroed(ZERO_FILL_CHUNK_BYTES);
    let mut at = 0u64;
    while at < bytes {
        let n = align_up((bytes - at).min(ZERO_FILL_CHUNK_BYTES as u64)) as usize;
        file.write_all_at(&zeros.as_slice()[..n], at)?;
        at += n as u64;
    }
    Ok(Allocation::ZeroFilled)
}

/// `fsync` of a directory.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads until `buf` is full or the file ends; past the end nothing is read.
pub(crate) fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
