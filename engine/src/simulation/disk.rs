//! The simulated disk: files on the real filesystem (so the power-cut simulator above it can
//! save and restore what they held), written and read with plain positioned I/O when an
//! operation completes, and operations that complete only in the turns the simulation gives
//! (`mod.rs`). Blocking calls (open, allocate, renames) happen at once, as they do on the
//! real backends.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{Completing, Simulation};
use crate::aligned::AlignedBuf;
use crate::io::{
    read_up_to, Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker,
};
use crate::xorshift::xorshift;

/// How long a shard running free (shutting down) with nothing queued sleeps before it looks
/// at its queue again.
const FREE_NAP: Duration = Duration::from_millis(1);

/// An operation submitted and not completed yet.
pub(super) enum Op {
    Write {
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
        then_sync: bool,
    },
    /// A data sync: of its own, or the one linked to a write that completed.
    Sync { token: u64 },
    Read {
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
    },
}

/// A simulated disk's files and queue, shared with its simulation (which cuts the power).
#[derive(Default)]
pub(super) struct DiskState {
    files: Vec<Option<Arc<File>>>,
    pub(super) queued: VecDeque<Op>,
    /// The power is off: operations complete with EIO and touch nothing.
    off: bool,
}

pub(super) fn lock(state: &Mutex<DiskState>) -> MutexGuard<'_, DiskState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl DiskState {
    fn file(&self, file: FileId) -> io::Result<&Arc<File>> {
        self.files
            .get(file.0 as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// The power goes: writes in flight reach the files whole (the power-cut simulator decides
    /// afterwards which of them stay), and nothing happens any more.
    pub(super) fn power_off(&mut self) {
        for op in &self.queued {
            if let Op::Write {
                file,
                offset,
                buf,
                len,
                ..
            } = op
            {
                if let Ok(f) = self.file(*file) {
                    // A write that cannot land is as if lost: the check afterwards decides.
                    let _ = f.write_all_at(&buf.as_slice()[..*len], *offset);
                }
            }
        }
        self.off = true;
    }

    /// Completes `op`: its completions go to `out`; a write's linked sync goes back to the
    /// queue unless `with_sync`.
    fn complete(&mut self, op: Op, with_sync: bool, out: &mut Vec<Completion>) {
        match op {
            Op::Write {
                file,
                offset,
                buf,
                len,
                token,
                then_sync,
            } => {
                let written = if self.off {
                    Err(eio())
                } else {
                    self.file(file)
                        .and_then(|f| f.write_all_at(&buf.as_slice()[..len], offset))
                };
                if let Err(e) = written {
                    out.extend(Completion::never_ran(
                        token,
                        IoKind::Write,
                        buf,
                        then_sync,
                        e,
                    ));
                    return;
                }
                out.push(Completion {
                    token,
                    kind: IoKind::Write,
                    result: Ok(len),
                    buf: Some(buf),
                });
                if then_sync && with_sync {
                    out.push(Completion {
                        token,
                        kind: IoKind::Sync,
                        result: Ok(0),
                        buf: None,
                    });
                } else if then_sync {
                    self.queued.push_back(Op::Sync { token });
                }
            }
            Op::Sync { token } => out.push(Completion {
                token,
                kind: IoKind::Sync,
                result: if self.off { Err(eio()) } else { Ok(0) },
                buf: None,
            }),
            Op::Read {
                file,
                offset,
                mut buf,
                len,
                token,
            } => {
                let result = if self.off {
                    Err(eio())
                } else {
                    self.file(file)
                        .and_then(|f| read_up_to(f, &mut buf.as_mut_slice()[..len], offset))
                };
                out.push(Completion {
                    token,
                    kind: IoKind::Read,
                    result,
                    buf: Some(buf),
                });
            }
        }
    }
}

/// One shard's simulated disk.
pub(crate) struct SimDisk {
    sim: Arc<Simulation>,
    shard: usize,
    state: Arc<Mutex<DiskState>>,
    draw: Box<dyn FnMut() -> u64 + Send>,
    /// In a random turn, each queued operation completes with a chance of one in this.
    one_in: u64,
    waker: Arc<Waker>,
}

impl SimDisk {
    /// The next shard's disk in `sim`.
    pub(crate) fn new(sim: &Arc<Simulation>) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(DiskState::default()));
        let shard = sim.register(Arc::clone(&state))?;
        let seed = sim.seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(shard as u64 + 1));
        let mut draw = xorshift(seed);
        // Some disks slow, some quick: how long syncs stay in flight varies by seed.
        let one_in = 1 + draw() % 4;
        Ok(Self {
            sim: Arc::clone(sim),
            shard,
            state,
            one_in,
            draw: Box::new(draw),
            waker: Arc::new(Waker::new()?),
        })
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        lock(&self.state)
    }
}

impl Drop for SimDisk {
    fn drop(&mut self) {
        self.sim.exited(self.shard);
    }
}

impl Disk for SimDisk {
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let mut state = self.state();
        state.files.push(Some(Arc::new(file)));
        Ok(FileId(state.files.len() as u32 - 1))
    }
    fn close(&mut self, file: FileId) {
        if let Some(slot) = self.state().files.get_mut(file.0 as usize) {
            *slot = None;
        }
    }
    fn len(&mut self, file: FileId) -> io::Result<u64> {
        Ok(self.state().file(file)?.metadata()?.len())
    }
    fn allocate(&mut self, file: FileId, bytes: u64) -> io::Result<Allocation> {
        let state = self.state();
        let f = state.file(file)?;
        if f.metadata()?.len() < bytes {
            f.set_len(bytes)?;
        }
        Ok(Allocation::Fallocated)
    }
    // Durability is the power-cut simulator's to model (above this disk): a real sync here
    // would only cost time.
    fn sync_all(&mut self, file: FileId) -> io::Result<()> {
        self.state().file(file).map(|_| ())
    }
    fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
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
        self.state().queued.push_back(Op::Write {
            file,
            offset,
            buf,
            len,
            token,
            then_sync: sync.any(),
        });
    }
    fn submit_sync(&mut self, _file: FileId, token: u64) {
        self.state().queued.push_back(Op::Sync { token });
    }
    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        self.state().queued.push_back(Op::Read {
            file,
            offset,
            buf,
            len,
            token,
        });
    }
    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        let how = self.sim.park(self.shard);
        let mut state = lock(&self.state);
        let ops: Vec<Op> = state.queued.drain(..).collect();
        let free_and_idle = ops.is_empty() && how == Completing::All && block != Block::No;
        for op in ops {
            let now = match how {
                Completing::All => true,
                Completing::Random => (self.draw)().is_multiple_of(self.one_in),
            };
            if now {
                state.complete(op, how == Completing::All, out);
            } else {
                state.queued.push_back(op);
            }
        }
        drop(state);
        if free_and_idle && self.sim.turns().free {
            self.waker.wait(FREE_NAP);
        }
        Ok(())
    }
    fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }
}
