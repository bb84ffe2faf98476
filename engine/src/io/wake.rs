//! Waking a shard that sleeps in its ring, without polling.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An eventfd the shard keeps a read posted on, plus a flag saying whether it sleeps.
///
/// Producers call [`Waker::wake`] after queueing work; only when the shard has said it is about
/// to sleep does that cost a syscall.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    parked: AtomicBool,
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
            parked: AtomicBool::new(false),
        })
    }

    /// The eventfd, for the backend to post its read on.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Called by the shard before it re-checks its queue and sleeps.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Called by the shard once it is awake (or decided not to sleep).
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Wakes the shard if it is parked.
    pub fn wake(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            self.signal();
        }
    }

    /// Makes the posted read complete, whether or not the shard is parked.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our own eventfd. A failure can only be
        // EAGAIN (counter saturated), which already guarantees a pending wake-up.
        let _ = unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }
}
