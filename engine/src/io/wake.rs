//! Waking a shard that sleeps in its ring, without polling and without a syscall per request.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

const RUNNING: u8 = 0;
/// Asleep with I/O in flight: its completion will wake the shard, so new requests only need to
/// wake it once [`WAKE_BATCH`] of them have queued up.
const PARKED_BUSY: u8 = 1;
/// Asleep with nothing in flight: any request must wake it.
const PARKED_IDLE: u8 = 2;
/// Requests queued behind a busy shard before a sender wakes it early.
pub const WAKE_BATCH: usize = 64;

/// An eventfd the shard keeps a read posted on, plus the shard's sleep state.
///
/// Senders call [`Waker::wake`] after queueing work; only when the shard sleeps and needs the
/// work now does that cost a syscall.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    state: AtomicU8,
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
            state: AtomicU8::new(RUNNING),
        })
    }

    /// The eventfd, for the backend to post its read on.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Called by the shard before it re-checks its queue and sleeps; `busy` when I/O is in
    /// flight (a completion is sure to wake it).
    pub fn park(&self, busy: bool) {
        let state = if busy { PARKED_BUSY } else { PARKED_IDLE };
        self.state.store(state, Ordering::SeqCst);
    }

    /// Called by the shard once it is awake (or decided not to sleep).
    pub fn unpark(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }

    /// Wakes the shard if it sleeps and should see the work now; `queued` is the length of its
    /// queue after the sender's request went in.
    pub fn wake(&self, queued: usize) {
        match self.state.load(Ordering::SeqCst) {
            RUNNING => {}
            PARKED_BUSY if queued < WAKE_BATCH => {}
            _ => {
                if self.state.swap(RUNNING, Ordering::SeqCst) != RUNNING {
                    self.signal();
                }
            }
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
