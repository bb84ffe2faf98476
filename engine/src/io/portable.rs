//! The portable backend, for hosts where io_uring is blocked (containers with the default
//! seccomp profile, `kernel.io_uring_disabled`): plain `pwrite`/`pread` and `fdatasync` with
//! O_DIRECT, executed in order by one I/O thread per shard. Slower than io_uring (a thread hop
//! per operation, one operation at a time per shard), with the same durability: a write's sync
//! runs only after the write succeeded, and completes before the flush is acknowledged.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::files::{self, FileTable};
use super::{Allocation, Block, Completion, Disk, FileId, IoKind, SyncAfter, Waker};
use crate::aligned::AlignedBuf;
use crate::inbox::{inbox, Inbox, InboxSender};

enum Op {
    Write {
        file: Arc<File>,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
        sync: bool,
    },
    Read {
        file: Arc<File>,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        token: u64,
    },
    Sync {
        file: Arc<File>,
        token: u64,
    },
}

/// Operations queued for the I/O thread at most, as an io_uring's submission queue holds a
/// bounded number: past it the shard waits for the thread to take one (the thread never waits
/// for the shard, so it always does). A list channel bounded by its sender (`inbox.rs`), not
/// crossbeam's array channel, whose receiver spins on a preempted sender.
const QUEUED_OPS_MAX: usize = 256;

/// Where the I/O thread leaves completions, and the eventfd it rings when it does.
struct Done {
    queue: Mutex<Vec<Completion>>,
    bell: OwnedFd,
}

impl Done {
    fn push(&self, mut completions: Vec<Completion>) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .append(&mut completions);
        ring(&self.bell);
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn ring(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an eventfd we own; EAGAIN (counter full)
    // already means a pending wake-up.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn drain(fd: i32) {
    let mut sink = 0u64;
    // SAFETY: reads 8 bytes into a live local from a non-blocking eventfd; EAGAIN is fine.
    let _ = unsafe { libc::read(fd, (&mut sink as *mut u64).cast(), 8) };
}

/// Portable disk backend: see the module documentation.
pub struct PortableDisk {
    files: FileTable,
    ops: Option<InboxSender<Op>>,
    done: Arc<Done>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl PortableDisk {
    /// Starts the I/O thread.
    pub fn new() -> io::Result<Self> {
        let (ops, rx) = inbox(QUEUED_OPS_MAX);
        let done = Arc::new(Done {
            queue: Mutex::new(Vec::new()),
            bell: eventfd()?,
        });
        let worker_done = Arc::clone(&done);
        let thread = std::thread::Builder::new()
            .name("keel-portable-io".into())
            .spawn(move || execute(&rx, &worker_done))?;
        Ok(Self {
            files: FileTable::default(),
            ops: Some(ops),
            done,
            waker: Arc::new(Waker::new()?),
            thread: Some(thread),
        })
    }

    fn submit(&mut self, op: Op) {
        let sent = match &self.ops {
            Some(ops) => ops.send(op).map_err(|crossbeam_channel::SendError(op)| op),
            None => Err(op),
        };
        if let Err(op) = sent {
            // The I/O thread is gone (it only stops when we drop): report the op failed.
            let err = io::Error::other("the I/O thread stopped");
            let failed = match op {
                Op::Write {
                    token, buf, sync, ..
                } => Completion::never_ran(token, IoKind::Write, buf, sync, err).collect(),
                Op::Read { token, buf, .. } => {
                    Completion::never_ran(token, IoKind::Read, buf, false, err).collect()
                }
                Op::Sync { token, .. } => vec![Completion {
                    token,
                    kind: IoKind::Sync,
                    result: Err(err),
                    buf: None,
                }],
            };
            self.done.push(failed);
        }
    }
}

/// The I/O thread: runs ops in submission order until the sender is dropped.
fn execute(rx: &Inbox<Op>, done: &Done) {
    while let Ok(op) = rx.recv() {
        let completions = match op {
            Op::Write {
                file,
                offset,
                buf,
                len,
                token,
                sync,
            } => {
                let written = file
                    .write_all_at(&buf.as_slice()[..len], offset)
                    .map(|()| len);
                let synced = match (&written, sync) {
                    (Ok(_), true) => Some(file.sync_data().map(|()| 0)),
                    (Err(_), true) => Some(Err(io::Error::from_raw_os_error(libc::ECANCELED))),
                    (_, false) => None,
                };
                let mut out = vec![Completion {
                    token,
                    kind: IoKind::Write,
                    result: written,
                    buf: Some(buf),
                }];
                if let Some(result) = synced {
                    out.push(Completion {
                        token,
                        kind: IoKind::Sync,
                        result,
                        buf: None,
                    });
                }
                out
            }
            Op::Read {
                file,
                offset,
                mut buf,
                len,
                token,
            } => {
                let result = files::read_up_to(&file, &mut buf.as_mut_slice()[..len], offset);
                vec![Completion {
                    token,
                    kind: IoKind::Read,
                    result,
                    buf: Some(buf),
                }]
            }
            Op::Sync { file, token } => vec![Completion {
                token,
                kind: IoKind::Sync,
                result: file.sync_data().map(|()| 0),
                buf: None,
            }],
        };
        done.push(completions);
    }
}

impl Disk for PortableDisk {
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
        // Either durability is an `fdatasync` here: it covers this write and the earlier ones.
        let then_sync = sync.any();
        match self.files.get(file) {
            Ok(f) => {
                let file = Arc::clone(f);
                self.submit(Op::Write {
                    file,
                    offset,
                    buf,
                    len,
                    token,
                    sync: then_sync,
                });
            }
            Err(e) => self
                .done
                .push(Completion::never_ran(token, IoKind::Write, buf, then_sync, e).collect()),
        }
    }

    fn submit_sync(&mut self, file: FileId, token: u64) {
        match self.files.get(file) {
            Ok(f) => {
                let file = Arc::clone(f);
                self.submit(Op::Sync { file, token });
            }
            Err(e) => self.done.push(vec![Completion {
                token,
                kind: IoKind::Sync,
                result: Err(e),
                buf: None,
            }]),
        }
    }

    fn submit_read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, len: usize, token: u64) {
        match self.files.get(file) {
            Ok(f) => {
                let file = Arc::clone(f);
                self.submit(Op::Read {
                    file,
                    offset,
                    buf,
                    len,
                    token,
                });
            }
            Err(e) => self
                .done
                .push(Completion::never_ran(token, IoKind::Read, buf, false, e).collect()),
        }
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: Block) -> io::Result<()> {
        let deadline = match block {
            Block::AtMost(d) => Some(Instant::now() + d),
            Block::No | Block::Yes => None,
        };
        loop {
            {
                let mut queue = self
                    .done
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !queue.is_empty() || block == Block::No {
                    out.append(&mut queue);
                    return Ok(());
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(());
            }
            let timeout = left.map(|d| libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            });
            let mut fds = [
                libc::pollfd {
                    fd: self.done.bell.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.waker.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let timeout_ptr = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: fds is a live array of two pollfds (its length passed alongside); timeout_ptr
            // is null or a timespec on this frame, alive for the call; a null mask changes nothing.
            let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timeout_ptr, std::ptr::null()) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            drain(fds[0].fd);
            if fds[1].revents != 0 {
                drain(fds[1].fd);
                let mut queue = self
                    .done
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                out.append(&mut queue);
                return Ok(());
            }
        }
    }

    fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }
}

impl Drop for PortableDisk {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish queued ops and exit; buffers travel with
        // the ops, so nothing the thread still touches is freed under it.
        self.ops = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
