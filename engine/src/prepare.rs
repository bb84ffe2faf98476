//! Creating a segment file before it is needed: reserved with `fallocate` and durable in its
//! directory, so a roll only has to rename it. Zeroing it is [`crate::zeroing`]'s job.

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::io::{Allocation, Disk, FileId};
use crate::layout::PREPARED_SEGMENT;

/// A prepared segment file (`next.prep`).
pub struct NextSegment {
    /// The file, open through the shard's disk.
    pub file: FileId,
    /// Its path.
    pub path: PathBuf,
    /// Everything below this position has been overwritten (with zeros, or, in a recycled
    /// file, with an older part of the log): no write below it converts an extent.
    pub zeroed_to: u64,
}

impl NextSegment {
    /// A segment file retention dropped, already renamed to `path`: every block of its
    /// `size` bytes was written, so it needs no zeroing. What it holds are offsets below the
    /// log's start, which recovery tells apart from the log (docs/FORMAT.md).
    pub fn recycled(file: FileId, path: PathBuf, size: u64) -> Self {
        Self {
            file,
            path,
            zeroed_to: size,
        }
    }

    /// Creates `dir/next.prep` with `size` bytes reserved, durable in its directory.
    pub fn create<D: Disk>(disk: &mut D, dir: &Path, size: u64) -> Result<Self, DataError> {
        let path = dir.join(PREPARED_SEGMENT);
        let file = disk
            .open(&path, true)
            .map_err(|e| DataError::io("create segment", &path, e))?;
        let reserved = disk
            .allocate(file, size)
            .and_then(|how| {
                if how == Allocation::ZeroFilled {
                    log::warn!("{}: the filesystem has no fallocate; the segment was zero-filled inline (slower)", path.display());
                }
                disk.sync_all(file)
            })
            .and_then(|()| disk.sync_dir(dir));
        match reserved {
            Ok(()) => Ok(Self {
                file,
                path,
                zeroed_to: 0,
            }),
            Err(e) => {
                disk.close(file);
                let _ = disk.remove(&path);
                Err(DataError::io("allocate segment", path, e))
            }
        }
    }
}
