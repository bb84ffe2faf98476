//! The other half of the disk seam: the blocking filesystem operations on the data directory's
//! small files and directories (topic and group metadata, the record of offsets a repair cut
//! out, topic and partition directories), made by the engine's callers and at open rather than
//! through a shard's ring. In production they are the system's calls ([`SystemFs`]); under the
//! crash simulator the directory changes they make are recorded and a power cut can undo those
//! no directory sync covered (`crashing.rs`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An entry of a listed directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// Blocking operations on the data directory's small files and directories. A new entry, a
/// rename or a removal is durable once its directory is synced ([`MetaFs::sync_dir`]).
pub trait MetaFs: Send + Sync {
    /// Creates `dir`, whose parent exists.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates (or truncates) the file at `path`, writes `bytes` and syncs the file.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Creates (or truncates) the file at `path` and writes `bytes`, without a sync: for a
    /// file whose loss or damage costs only time (a cache checked when read).
    fn write_unsynced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Reads the whole file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Syncs a directory, making its entries' changes durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The entries of a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
}

/// The system's filesystem calls: production.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemFs;

impl MetaFs for SystemFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)
    }
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
    fn write_unsynced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        fs::write(path, bytes)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        super::files::sync_dir(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            out.push(DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: entry.file_type()?.is_dir(),
                path: entry.path(),
            });
        }
        Ok(out)
    }
}
