//! The crash simulator's record of directory changes: entries created and renames, each
//! durable once its directory is synced. A power cut undoes, newest first, a run of random
//! length of those not durable yet, as a journaling filesystem loses the tail of what it had
//! not committed. (Removals are taken as durable at once.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Files bigger than this that a rename replaces are not kept for an undo (only small
/// metadata files are replaced by renames; segments never are).
const KEEP_REPLACED_MAX: u64 = 1 << 20;

enum Change {
    /// A file or directory created: undone by removing it.
    Created { path: PathBuf, is_dir: bool },
    /// A rename: undone by renaming back and restoring what it replaced.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<Vec<u8>>,
    },
}

struct Entry {
    dir: PathBuf,
    change: Change,
    durable: bool,
}

/// The log of directory changes.
#[derive(Default)]
pub(super) struct DirChanges {
    log: Mutex<Vec<Entry>>,
}

fn parent(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).to_path_buf()
}

impl DirChanges {
    fn log(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `path` was created.
    pub fn created(&self, path: &Path, is_dir: bool) {
        self.log().push(Entry {
            dir: parent(path),
            change: Change::Created {
                path: path.to_path_buf(),
                is_dir,
            },
            durable: false,
        });
    }

    /// What a rename to `to` is about to replace, kept for an undo.
    pub fn replaced_by_rename(to: &Path) -> Option<Vec<u8>> {
        let meta = fs::metadata(to).ok()?;
        (meta.is_file() && meta.len() <= KEEP_REPLACED_MAX)
            .then(|| fs::read(to).ok())
            .flatten()
    }

    /// `from` was renamed to `to`, replacing `replaced`.
    pub fn renamed(&self, from: &Path, to: &Path, replaced: Option<Vec<u8>>) {
        self.log().push(Entry {
            dir: parent(to),
            change: Change::Renamed {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            },
            durable: false,
        });
    }

    /// `dir` was synced: the changes in it so far are durable.
    pub fn synced(&self, dir: &Path) {
        for e in self.log().iter_mut().filter(|e| e.dir == dir) {
            e.durable = true;
        }
    }

    /// After the engine is gone: undoes, newest first, a run of random length (picked by
    /// `next`) of the changes no sync covered. Returns how many were undone.
    pub fn lose_unsynced(&self, next: &mut impl FnMut() -> u64) -> io::Result<usize> {
        let log = self.log();
        let unsynced: Vec<&Entry> = log.iter().filter(|e| !e.durable).collect();
        let undo = (next() % (unsynced.len() as u64 + 1)) as usize;
        for e in unsynced.iter().rev().take(undo) {
            let undone = match &e.change {
                Change::Created { path, is_dir: true } => fs::remove_dir_all(path),
                Change::Created {
                    path,
                    is_dir: false,
                } => fs::remove_file(path),
                Change::Renamed { from, to, replaced } => {
                    fs::rename(to, from).and_then(|()| match replaced {
                        Some(bytes) => fs::write(to, bytes),
                        None => Ok(()),
                    })
                }
            };
            match undone {
                // Removed since (a removal is durable at once): nothing to undo.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
            if e.dir.exists() {
                fs::File::open(&e.dir)?.sync_all()?;
            }
        }
        Ok(undo)
    }
}
