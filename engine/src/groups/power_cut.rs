//! Power loss for offset tables, simulated on the real disk, for tests.
//!
//! A table is a memory-mapped file: the kernel may write its dirty pages back at any moment, so
//! after a power cut each sector holds either what the last completed sync covered or anything
//! stored since. The plan models exactly that. Each sync (a real `fdatasync`, on the shard's
//! ring or at open) is bracketed by [`TablePowerCut::sync_starting`], which copies the file just
//! before it, and [`TablePowerCut::sync_completed`]: once the sync succeeded that copy is what
//! the disk is known to hold. [`TablePowerCut::cut`] makes every later sync fail, as a dead
//! disk would. After the engine is dropped, [`TablePowerCut::lose_unsynced`]
//! sets each sector that changed since the durable copy back to it, or leaves it, at random.
//! Every ack answered as durable must survive that; nothing never acknowledged may appear.

use std::collections::HashMap;
use std::fs::File;
#[cfg(feature = "testing")]
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(feature = "testing")]
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};

#[cfg(feature = "testing")]
use crate::xorshift::xorshift;

/// Bytes a power cut keeps or loses as a unit (a disk sector).
#[cfg(feature = "testing")]
const SECTOR_BYTES: usize = 512;

/// A table's sync in flight, as [`TablePowerCut`] records it.
pub struct PendingSync {
    path: PathBuf,
    number: u64,
    image: Vec<u8>,
}

#[derive(Default)]
struct CutState {
    cut: bool,
    /// Syncs started so far: a copy taken later supersedes an earlier one.
    started: u64,
    /// Per table: the copy the newest completed sync made durable, and that sync's number.
    durable: HashMap<PathBuf, (u64, Vec<u8>)>,
}

/// The record of what the offset tables hold durably, shared by a test and an engine opened
/// with it (`EngineConfig::table_power_cut`).
#[derive(Default)]
pub struct TablePowerCut {
    state: Mutex<CutState>,
}

impl std::fmt::Debug for TablePowerCut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("TablePowerCut")
            .field("cut", &st.cut)
            .field("syncs", &st.started)
            .finish()
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

impl TablePowerCut {
    #[cfg(feature = "testing")]
    /// A plan with the power on.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> MutexGuard<'_, CutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a table as it is on disk now (just opened and synced).
    pub(crate) fn register(&self, path: &Path) -> io::Result<()> {
        let image = read_whole(&File::open(path)?)?;
        self.state()
            .durable
            .entry(path.to_path_buf())
            .or_insert((0, image));
        Ok(())
    }

    /// A sync of the table at `path` is about to start: what it will make durable, copied now
    /// (everything stored before it is covered by it). Fails with EIO once the power is cut.
    pub(crate) fn sync_starting(&self, path: &Path) -> io::Result<PendingSync> {
        let number = {
            let mut st = self.state();
            if st.cut {
                return Err(eio());
            }
            st.started += 1;
            st.started
        };
        let image = read_whole(&File::open(path)?)?;
        Ok(PendingSync {
            path: path.to_path_buf(),
            number,
            image,
        })
    }

    /// The sync begun with `pending` succeeded: its copy is durable, unless the power was cut
    /// meanwhile (EIO: the answer is decided under the same lock as the cut, so a sync that
    /// reports success made its copy durable before the power went).
    pub(crate) fn sync_completed(&self, pending: PendingSync) -> io::Result<()> {
        let mut st = self.state();
        if st.cut {
            return Err(eio());
        }
        let entry = st.durable.entry(pending.path).or_insert((0, Vec::new()));
        if pending.number > entry.0 {
            *entry = (pending.number, pending.image);
        }
        Ok(())
    }

    #[cfg(feature = "testing")]
    /// Cuts the power: every later sync fails.
    pub fn cut(&self) {
        self.state().cut = true;
    }

    #[cfg(feature = "testing")]
    /// After the store is dropped: each sector of each table that differs from its durable
    /// copy is set back to it or kept, as `seed` picks. Returns how many sectors were set back.
    pub fn lose_unsynced(&self, seed: u64) -> io::Result<usize> {
        let mut next = xorshift(seed);
        let st = self.state();
        let mut lost = 0;
        for (path, (_, durable)) in &st.durable {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            let now = read_whole(&file)?;
            for (i, (was, is)) in durable
                .chunks(SECTOR_BYTES)
                .zip(now.chunks(SECTOR_BYTES))
                .enumerate()
            {
                if was != is && next().is_multiple_of(2) {
                    file.write_all_at(was, (i * SECTOR_BYTES) as u64)?;
                    lost += 1;
                }
            }
            file.sync_all()?;
        }
        Ok(lost)
    }
}
