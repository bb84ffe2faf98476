//! Work hosted on a shard's own thread and ring: how the server serves its connections from
//! the shards themselves, so a request for a partition the connection's shard owns is handled
//! without a thread hop and its socket I/O shares the ring and the wait with the disk I/O.
//!
//! The engine knows nothing of sockets: a guest submits whatever operations it likes through
//! [`GuestRing`] and is told when they complete. Only the io_uring backend can host a guest.

use std::cell::Cell;
use std::io;

pub use io_uring::squeue::Entry as GuestEntry;

/// Work living on a shard thread, driven by the shard's loop.
///
/// Every method runs on the shard thread and must not block: no waiting engine calls
/// (`*_wait`, topic administration), no waiting for budgets other shards' work gives back.
/// Engine calls made from a shard thread ([`crate::Engine::append`], [`crate::Engine::read`])
/// never block there.
pub trait ShardGuest: Send {
    /// Called once per turn of the shard loop, before the shard takes its requests: take what
    /// other threads handed over and submit operations.
    fn turn(&mut self, ring: &mut dyn GuestRing);
    /// An operation submitted with `token` completed with `result` (bytes, or the OS error).
    fn complete(&mut self, token: u64, result: io::Result<usize>, ring: &mut dyn GuestRing);
    /// Whether another thread handed over work since the last turn: the shard does not sleep.
    fn has_work(&self) -> bool;
    /// Whether no operation of the guest is in flight and it will submit none by itself: the
    /// shard exits only then (or gives up after a while and leaks the guest, never frees
    /// memory the kernel may still use).
    fn idle(&self) -> bool;
}

/// A shard's ring, as a guest sees it.
pub trait GuestRing {
    /// Queues `entry` with `token` (below 2^62) as its user data; its completion comes back
    /// through [`ShardGuest::complete`]. A submission the ring refuses completes with the error.
    ///
    /// # Safety
    /// Every buffer, descriptor and structure `entry` points to must stay valid, and must not
    /// be moved or freed, until its completion has been passed to [`ShardGuest::complete`].
    unsafe fn push(&mut self, entry: GuestEntry, token: u64);
    /// Asks for the guest's operation with `token` to be cancelled; it then completes (with
    /// `ECANCELED` if it had not finished).
    fn cancel(&mut self, token: u64);
}

/// The largest token a guest may use.
pub const GUEST_TOKEN_MAX: u64 = (1 << 62) - 1;

thread_local! {
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as a shard thread.
pub(crate) fn mark_shard_thread() {
    ON_SHARD.with(|s| s.set(true));
}

/// Whether the caller runs on a shard thread (in a guest or in an append's or read's
/// callback): it must not wait for any shard, its own included.
pub fn on_shard_thread() -> bool {
    ON_SHARD.with(Cell::get)
}
