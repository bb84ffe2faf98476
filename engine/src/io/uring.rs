//! The production backend: one io_uring per shard, files opened with O_DIRECT.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{opcode, squeue, types, IoUring};

use super::files::{self, FileTable};
use super::fixed::FixedBuffers;
use super::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};
use crate::aligned::{AlignedBuf, BLOCK_BYTES};

/// Submission queue entries per ring; the shard bounds what it keeps in flight well below this.
const RING_ENTRIES: u32 = 256;
/// Completion queue size: generous so a burst of completions never has to wait for space.
const COMPLETION_ENTRIES: u32 = 4096;
/// user_data of the eventfd read that wakes the shard.
const WAKE_TOKEN: u64 = u64::MAX;
/// Set in user_data for the sync linked after a write.
const SYNC_BIT: u64 = 1 << 63;

/// io_uring disk backend.
pub struct UringDisk {
    ring: IoUring,
    files: FileTable,
    /// Buffers the kernel may be touching, by user_data; returned only with their completion.
    /// The flag marks a write made durable by itself (`RWF_DSYNC`), whose completion is also
    /// its `Sync` completion.
    in_flight: HashMap<u64, (IoKind, AlignedBuf, bool)>,
    /// Linked syncs not yet completed.
    syncs_in_flight: usize,
    waker: Arc<Waker>,
    /// Target of the posted eventfd read; boxed so its address is stable while the read runs.
    wake_buf: Box<[u8; 8]>,
    wake_posted: bool,
    /// Completions for submissions that failed before reaching the kernel, handed out by the
    /// next `wait` so callers see one path for every failure.
    submit_failures: Vec<Completion>,
    /// The kernel can bound a wait with a timeout (`IORING_FEAT_EXT_ARG`).
    timed_wait: bool,
    /// Write buffers registered with the ring, so writes from them skip pinning pages.
    fixed: FixedBuffers,
}

impl UringDisk {
    /// Creates a ring. The error is the raw one; [`crate::OpenError::uring_unavailable`] turns
    /// it into advice.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETION_ENTRIES)
            .build(RING_ENTRIES)?;
        let timed_wait = ring.params().is_feature_ext_arg();
        let fixed = FixedBuffers::new(&ring.submitter());
        Ok(Self {
            ring,
            files: FileTable::default(),
            in_flight: HashMap::new(),
            syncs_in_flight: 0,
            waker: Arc::new(Waker::new()?),
            wake_buf: Box::new([0; 8]),
            wake_posted: false,
            submit_failures: Vec::new(),
            timed_wait,
            fixed,
        })
    }

    /// The completion of a sync that could not be submitted.
    fn sync_failed(token: u64, err: io::Error) -> Completion {
        Completion {
            token,
            kind: IoKind::Sync,
            result: Err(err),
            buf: None,
        }
    }

    fn fd(&self, file: FileId) -> io::Result<i32> {
        self.files.get(file).map(|f| f.as_raw_fd())
    }

    /// Makes room for `n` entries in the submission queue, submitting queued ones if needed.
    fn reserve(&mut self, n: usize) -> io::Result<()> {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Pushes entries after [`Self::reserve`] made room for them.
    fn push_reserved(&mut self, entries: &[squeue::Entry]) {
        for entry in entries {
            // SAFETY: each entry's memory outlives its operation: data buffers sit in `in_flight`,
            // the wake buffer is boxed in self, and Drop waits for every completion first.
            let pushed = unsafe { self.ring.submission().push(entry) };
            debug_assert!(pushed.is_ok(), "reserve() guaranteed room");
        }
    }

    fn post_wake_read(&mut self) -> io::Result<()> {
        if self.wake_posted {
            return Ok(());
        }
        let entry = opcode::Read::new(types::Fd(self.waker.fd()), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE_TOKEN);
        self.reserve(1)?;
        self.push_reserved(&[entry]);
        self.wake_posted = true;
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in cqes {
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            if user_data == WAKE_TOKEN {
                self.wake_posted = false;
            } else if user_data & SYNC_BIT != 0 {
                self.syncs_in_flight -= 1;
                out.push(Completion {
                    token: user_data & !SYNC_BIT,
                    kind: IoKind::Sync,
                    result: result.map(|_| 0),
                    buf: None,
                });
            } else if let Some((kind, buf, self_synced)) = self.in_flight.remove(&user_data) {
                if self_synced {
                    // A failed write reports its own error; its durability never came.
                    let synced = match &result {
                        Ok(_) => Ok(0),
                        Err(_) => Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    };
                    out.push(Completion {
                        token: user_data,
                        kind: IoKind::Sync,
                        result: synced,
                        buf: None,
                    });
                }
                out.push(Completion {
                    token: user_data,
                    kind,
                    result,
                    buf: Some(buf),
                });
            }
        }
    }

    /// Checks a submission and makes room in the queue for it (and its linked sync); if that is
    /// impossible, reports it failed through the next `wait` and returns nothing.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        kind: IoKind,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
        sync: SyncAfter,
    ) -> Option<(i32, AlignedBuf)> {
        // O_DIRECT: the kernel refuses (or, worse, some filesystems accept) anything else.
        assert!(
            offset.is_multiple_of(BLOCK_BYTES as u64),
            "{kind:?} at {offset}"
        );
        assert!(len.is_multiple_of(BLOCK_BYTES), "{kind:?} of {len} bytes");
        assert!(
            len <= buf.capacity(),
            "{kind:?} of {len} bytes with a {} byte buffer",
            buf.capacity()
        );
        let ready = self.fd(file).and_then(|fd| {
            self.reserve(1 + usize::from(sync == SyncAfter::File))
                .map(|()| fd)
        });
        match ready {
            Ok(fd) => Some((fd, buf)),
            Err(e) => {
                self.fail_now(token, kind, buf, e, sync.any());
                None
            }
        }
    }

    fn fail_now(
        &mut self,
        token: u64,
        kind: IoKind,
        buf: AlignedBuf,
        err: io::Error,
        then_sync: bool,
    ) {
        self.submit_failures
            .extend(Completion::never_ran(token, kind, buf, then_sync, err));
    }
}

impl Disk for UringDisk {
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        self.files.open(path, create)
    }

    fn close(&mut self, file: FileId) {
        self.files.close(file);
    }

    fn len(&mut self, file: FileId) -> io::Result<u64> {
        Ok(self.files.get(file)?.metadata()?.len())
    }

    fn allocate(&mut self, file: FileId, bytes: u64) -> io::Result<Allocation> {
        files::allocate(self.files.get(file)?, bytes)
    }

    fn sync_all(&mut self, file: FileId) -> io::Result<()> {
        self.files.get(file)?.sync_all()
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        files::sync_dir(dir)
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
        let Some((fd, mut buf)) = self.admit(IoKind::Write, file, offset, buf, len, token, sync)
        else {
            return;
        };
        let self_synced = sync == SyncAfter::ThisWrite;
        // RWF_DSYNC: the write completes only once its data is durable (the kernel issues FUA
        // or a cache flush itself), so no sync goes to an io-wq worker thread.
        let rw_flags = if self_synced { libc::RWF_DSYNC } else { 0 };
        // A fixed write reads the pages registered for this very buffer (slot_for checks the
        // registration is the buffer's current one), which stay pinned while it is in flight.
        let write = match self.fixed.slot_for(&self.ring.submitter(), &mut buf) {
            Some(slot) => {
                opcode::WriteFixed::new(types::Fd(fd), buf.as_mut_ptr(), len as u32, slot)
                    .offset(offset)
                    .rw_flags(rw_flags)
                    .build()
            }
            None => opcode::Write::new(types::Fd(fd), buf.as_mut_ptr(), len as u32)
                .offset(offset)
                .rw_flags(rw_flags)
                .build(),
        }
        .user_data(token);
        self.in_flight
            .insert(token, (IoKind::Write, buf, self_synced));
        if sync == SyncAfter::File {
            // Linked: the kernel starts the sync only after the write succeeded, and cancels
            // it if the write failed. Unlinked entries may run in any order.
            let sync = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(token | SYNC_BIT);
            self.push_reserved(&[write.flags(squeue::Flags::IO_LINK), sync]);
            self.syncs_in_flight += 1;
        } else {
            self.push_reserved(&[write]);
        }
    }

    fn submit_sync(&mut self, file: FileId, token: u64) {
        let fd = match self.fd(file) {
            Ok(fd) => fd,
            Err(e) => return self.submit_failures.push(Self::sync_failed(token, e)),
        };
        if let Err(e) = self.reserve(1) {
            return self.submit_failures.push(Self::sync_failed(token, e));
        }
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(token | SYNC_BIT);
        self.push_reserved(&[sync]);
        self.syncs_in_flight += 1;
    }

    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        let Some((fd, mut buf)) = self.admit(
            IoKind::Read,
            file,
            offset,
            buf,
            len,
            token,
            SyncAfter::Nothing,
        ) else {
            return;
        };
        let read = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len as u32)
            .offset(offset)
            .build()
            .user_data(token);
        self.in_flight.insert(token, (IoKind::Read, buf, false));
        self.push_reserved(&[read]);
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        self.fixed.reclaim(&self.ring.submitter());
        let had_failures = !self.submit_failures.is_empty();
        out.append(&mut self.submit_failures);
        self.post_wake_read()?;
        let block = if had_failures || !out.is_empty() {
            Block::No
        } else {
            block
        };
        loop {
            let submitted = match block {
                Block::No => self.ring.submit_and_wait(0),
                Block::Yes => self.ring.submit_and_wait(1),
                // Without the kernel's timed wait (Linux < 5.11) a timed sleep becomes a poll:
                // the caller comes back at once and, while its time lasts, asks again.
                Block::AtMost(_) if !self.timed_wait => self.ring.submit_and_wait(0),
                Block::AtMost(d) => {
                    let ts = Timespec::from(d);
                    let args = SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            match submitted {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => break,
                Err(e) => return Err(e),
            }
        }
        self.reap(out);
        Ok(())
    }

    fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Lets the kernel's io_uring workers (which run our fdatasyncs) use every core. They would
    /// otherwise inherit the shard's pinning and wait behind their own busy shard for a
    /// scheduler slice, milliseconds, before a sync could even start.
    fn start_on_thread(&mut self) -> io::Result<()> {
        // The workers belong to the thread that submits; the kernel creates them on this
        // thread's first submission and refuses (EINVAL) to set the affinity of workers that
        // do not exist yet.
        self.post_wake_read()?;
        self.ring.submit()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: cpu_set_t is plain data; an all-zero value is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for cpu in 0..cores.min(libc::CPU_SETSIZE as usize) {
            // SAFETY: cpu is below CPU_SETSIZE, the capacity of the set.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        self.ring.submitter().register_iowq_aff(&set)
    }
}

#[cfg(test)]
#[path = "uring_fixed_tests.rs"]
mod fixed_tests;

impl Drop for UringDisk {
    fn drop(&mut self) {
        // The kernel may still write into buffers of unfinished operations; wait for every one
        // of them (and the posted wake read) before the memory is freed.
        if self.wake_posted {
            self.waker.signal();
        }
        let mut sink = Vec::new();
        for _ in 0..10_000 {
            if self.in_flight.is_empty() && self.syncs_in_flight == 0 && !self.wake_posted {
                // Nothing in flight: registered buffers can go. (Failing to unregister leaves
                // them to the ring's teardown; no operation can use them any more.)
                let _ = self.ring.submitter().unregister_buffers();
                self.fixed.close();
                log::debug!(
                    "ring closed: {} writes from registered buffers, {} registrations",
                    self.fixed.fixed_writes,
                    self.fixed.registrations
                );
                return;
            }
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap(&mut sink);
        }
        // Could not drain: leak the buffers rather than free memory the kernel may write.
        std::mem::forget(std::mem::take(&mut self.in_flight));
        let wake = std::mem::replace(&mut self.wake_buf, Box::new([0; 8]));
        std::mem::forget(wake);
    }
}
