//! Waking a shard that sleeps in its ring, without polling and without a syscall per request.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The shard is awake. Any other state is the queue length at which a sender wakes it.
const RUNNING: usize = 0;
/// Requests queued behind a busy shard before a sender wakes it early.
pub const WAKE_BATCH: usize = 64;

/// An eventfd the shard keeps a read posted on, plus the shard's sleep state.
///
/// Senders call [`Waker::wake`] after queueing work; only when the shard sleeps and needs the
/// work now does that cost a syscall.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    /// [`RUNNING`], or asleep until this many requests are queued.
    state: AtomicUsize,
}

impl Waker {
    /// Creates the eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            state: AtomicUsize::new(RUNNING),
        })
    }

    /// The eventfd, for the backend to post its read on.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Called by the shard before it re-checks its queue and sleeps: senders wake it once
    /// `queued` requests wait (at least one). With I/O in flight a completion is sure to wake
    /// it, so that is [`WAKE_BATCH`]; with nothing in flight, 1; while a flush waits for a
    /// known number of appends, that number.
    pub fn park(&self, queued: usize) {
        self.state.store(queued.max(1), Ordering::SeqCst);
    }

    /// Called by the shard once it is awake (or decided not to sleep).
    pub fn unpark(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }

    /// Wakes the shard if it sleeps and should see the work now; `queued` is the length of its
    /// queue after the sender's request went in.
    pub fn wake(&self, queued: usize) {
        let wake_at = self.state.load(Ordering::SeqCst);
        if wake_at != RUNNING
            && queued >= wake_at
            && self.state.swap(RUNNING, Ordering::SeqCst) != RUNNING
        {
            self.signal();
        }
    }

    /// For a thread that sleeps on the eventfd itself rather than through a ring: waits until
    /// it is signalled or `timeout` passes, and takes the signal.
    pub fn wait(&self, timeout: Duration) {
        let mut poll = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd that lives on this stack frame for the call.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready > 0 {
            let mut count = [0u8; 8];
            // SAFETY: reads 8 bytes into a local buffer of 8; the eventfd is readable (poll),
            // so the read does not block. A failure leaves the signal for the next wait.
            let _ = unsafe { libc::read(self.fd(), count.as_mut_ptr().cast(), 8) };
        }
    }

    /// Makes the posted read complete, whatever the shard's state.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our own eventfd. A failure can only be
        // EAGAIN (counter saturated), which already guarantees a pending wake-up.
        let _ = unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }
}
