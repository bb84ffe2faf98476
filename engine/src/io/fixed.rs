//! Flush buffers registered with a shard's ring ("fixed buffers"), so that an O_DIRECT write
//! from one does not pin its pages again: without registration the kernel pins every page of
//! every write and unpins it on completion, 6% of keeld's CPU under a produce load.
//!
//! Buffers are registered the first time they are written from and stay registered while they
//! circulate (gathered into, written, cached for reads, reused). The table is small and
//! bounded in bytes: the least recently written buffer gives its slot up when another needs
//! it. A registered buffer that its owner drops is not freed there: its memory goes back to
//! the ring ([`Released`]), which unregisters it before freeing it, so the kernel never holds
//! a registration for memory that is gone.
//!
//! Registration counts against `RLIMIT_MEMLOCK` for users without `CAP_IPC_LOCK`. When the
//! kernel refuses (`ENOMEM`), the ring keeps what it has registered and tries only smaller
//! buffers; whatever is not registered is written the plain way, pinning its pages as before.

use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::Submitter;

use crate::aligned::AlignedBuf;

/// Slots in a ring's buffer table.
pub(crate) const SLOTS: usize = 32;
/// Most bytes one ring keeps registered (its shard's flush buffers in circulation: gathers,
/// the flushes in flight, the tail caches of its partitions).
pub(crate) const PINNED_BYTES_MAX: usize = 64 << 20;
/// Smaller buffers are written the plain way: their pinning costs little.
pub(crate) const REGISTERED_BYTES_MIN: usize = 64 << 10;

/// What marks a buffer as registered: the ring it is registered with (through that ring's
/// [`Released`]), the slot, and which registration of that slot it is.
pub(crate) struct FixedTag {
    home: Arc<Released>,
    slot: u16,
    generation: u64,
}

impl FixedTag {
    /// Hands the memory of a dropped registered buffer (`raw`, untagged) to its ring, which
    /// frees it once unregistered; frees it now if the ring is gone (its registrations went
    /// with it).
    pub(crate) fn give_back(self, raw: AlignedBuf) {
        let mut released = self.home.lock();
        if released.closed {
            drop(released);
            drop(raw);
        } else {
            released.bufs.push((self.slot, self.generation, raw));
        }
    }
}

/// Registered buffers whose owners dropped them, waiting for their ring to unregister them.
#[derive(Default)]
pub(crate) struct Released {
    inner: Mutex<ReleasedInner>,
}

#[derive(Default)]
struct ReleasedInner {
    bufs: Vec<(u16, u64, AlignedBuf)>,
    /// The ring is gone: dropped buffers are freed at once.
    closed: bool,
}

impl Released {
    fn lock(&self) -> MutexGuard<'_, ReleasedInner> {
        // A list changed by single pushes and takes: consistent after a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dropped buffers waiting for their ring, and whether the ring is gone.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (usize, bool) {
        let inner = self.lock();
        (inner.bufs.len(), inner.closed)
    }
}

struct Slot {
    generation: u64,
    bytes: usize,
    last_use: u64,
}

/// One ring's table of registered buffers.
pub(crate) struct FixedBuffers {
    home: Arc<Released>,
    slots: Vec<Option<Slot>>,
    pinned: usize,
    /// Most bytes registered at once: [`PINNED_BYTES_MAX`], or what the kernel allowed.
    budget: usize,
    clock: u64,
    next_generation: u64,
    refusal_logged: bool,
    /// Writes that used a registered buffer, and registrations made (for tests and tuning).
    pub(crate) fixed_writes: u64,
    pub(crate) registrations: u64,
}

impl FixedBuffers {
    /// An empty table of [`SLOTS`] entries registered with the ring; with no table (an old
    /// kernel, or a refusal) nothing is ever registered.
    pub(crate) fn new(submitter: &Submitter<'_>) -> Self {
        Self::with_limits(submitter, SLOTS, PINNED_BYTES_MAX)
    }

    pub(crate) fn with_limits(submitter: &Submitter<'_>, slots: usize, budget: usize) -> Self {
        let registered = u32::try_from(slots)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
            .and_then(|n| submitter.register_buffers_sparse(n));
        let (slots, budget) = match registered {
            Ok(()) => (slots, budget),
            Err(e) => {
                log::info!("registered write buffers are unavailable ({e}); writes pin their pages each time");
                (0, 0)
            }
        };
        Self {
            home: Arc::new(Released::default()),
            slots: (0..slots).map(|_| None).collect(),
            pinned: 0,
            budget,
            clock: 0,
            next_generation: 1,
            refusal_logged: false,
            fixed_writes: 0,
            registrations: 0,
        }
    }

    /// Bytes registered now.
    #[cfg(test)]
    pub(crate) fn pinned(&self) -> usize {
        self.pinned
    }

    /// Where this ring's dropped registered buffers wait.
    #[cfg(test)]
    pub(crate) fn released(&self) -> Arc<Released> {
        Arc::clone(&self.home)
    }

    /// The slot to write `buf` from with a fixed write, registering it if needed and
    /// possible; `None`: write it the plain way.
    pub(crate) fn slot_for(
        &mut self,
        submitter: &Submitter<'_>,
        buf: &mut AlignedBuf,
    ) -> Option<u16> {
        self.clock += 1;
        if let Some(tag) = buf.fixed_tag() {
            if !Arc::ptr_eq(&tag.home, &self.home) {
                // Registered with another ring, whose registration its drop belongs to.
                return None;
            }
            if let Some(slot) = self
                .slots
                .get_mut(usize::from(tag.slot))
                .and_then(Option::as_mut)
            {
                if slot.generation == tag.generation {
                    slot.last_use = self.clock;
                    self.fixed_writes += 1;
                    return Some(tag.slot);
                }
            }
            // Its slot was given to another buffer since: register it again below.
        }
        let bytes = buf.capacity();
        if bytes < REGISTERED_BYTES_MIN || bytes > self.budget {
            return None;
        }
        let slot = self.make_room(submitter, bytes)?;
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: bytes,
        };
        let index = u32::from(slot);
        // A registered buffer's drop hands its memory to `self.home` instead of freeing it;
        // reclaim() frees it only after clearing the slot, and a dropped ring unregisters
        // everything before marking `home` closed (after which drops free at once).
        // SAFETY: so the buffer's memory stays allocated for as long as it is registered.
        let registered = unsafe { submitter.register_buffers_update(index, &[iov], None) };
        match registered {
            Ok(()) => {
                let generation = self.next_generation;
                self.next_generation += 1;
                self.slots[usize::from(slot)] = Some(Slot {
                    generation,
                    bytes,
                    last_use: self.clock,
                });
                self.pinned += bytes;
                self.registrations += 1;
                self.fixed_writes += 1;
                buf.set_fixed_tag(FixedTag {
                    home: Arc::clone(&self.home),
                    slot,
                    generation,
                });
                Some(slot)
            }
            Err(e) => {
                self.refused(bytes, &e);
                None
            }
        }
    }

    /// After the kernel refused to register `bytes`: with `ENOMEM` (over `RLIMIT_MEMLOCK`)
    /// smaller buffers may still fit, so the budget shrinks to what is registered or just
    /// under what was refused; any other refusal ends registering.
    pub(crate) fn refused(&mut self, bytes: usize, e: &std::io::Error) {
        if !self.refusal_logged {
            self.refusal_logged = true;
            log::info!(
                "the kernel refused to register a {} KiB write buffer ({e}); {} KiB stay registered and other writes pin their pages each time (raise LimitMEMLOCK to avoid it)",
                bytes >> 10,
                self.pinned >> 10
            );
        }
        self.budget = if e.raw_os_error() == Some(libc::ENOMEM) {
            self.pinned.max(bytes - 1)
        } else {
            0
        };
    }

    /// A free slot, with room for `bytes` more registered: least recently written buffers
    /// give theirs up. A write in flight from a buffer that loses its slot is unaffected (the
    /// kernel holds that registration until the write completes).
    fn make_room(&mut self, submitter: &Submitter<'_>, bytes: usize) -> Option<u16> {
        loop {
            let free = self.slots.iter().position(Option::is_none);
            if free.is_some() && self.pinned + bytes <= self.budget {
                return free.and_then(|i| u16::try_from(i).ok());
            }
            let oldest = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_ref().map(|s| (s.last_use, i)))
                .min()?
                .1;
            if !self.clear(submitter, oldest) {
                return None;
            }
        }
    }

    /// Unregisters slot `i`; false if the kernel refused (the slot is then left as it is).
    fn clear(&mut self, submitter: &Submitter<'_>, i: usize) -> bool {
        let Ok(index) = u32::try_from(i) else {
            return false;
        };
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: an empty entry points at no memory.
        if let Err(e) = unsafe { submitter.register_buffers_update(index, &[empty], None) } {
            log::warn!("could not unregister a write buffer ({e}); registering no more");
            self.budget = 0;
            return false;
        }
        if let Some(slot) = self.slots[i].take() {
            self.pinned -= slot.bytes;
        }
        true
    }

    /// Unregisters and frees the buffers their owners dropped since the last call.
    pub(crate) fn reclaim(&mut self, submitter: &Submitter<'_>) {
        let released = std::mem::take(&mut self.home.lock().bufs);
        for (slot, generation, raw) in released {
            let i = usize::from(slot);
            let current = self.slots.get(i).and_then(Option::as_ref);
            if current.is_some_and(|s| s.generation == generation) && !self.clear(submitter, i) {
                // Still registered: keep the memory rather than free what the kernel maps.
                std::mem::forget(raw);
                continue;
            }
            drop(raw);
        }
    }

    /// The ring is going away: from now on dropped buffers are freed at once, as are those
    /// waiting here. No operation can use a registration any more, and the kernel holds its
    /// own references to the pages it pinned until the ring is torn down.
    pub(crate) fn close(&mut self) {
        let mut released = self.home.lock();
        released.closed = true;
        let bufs = std::mem::take(&mut released.bufs);
        drop(released);
        drop(bufs);
    }
}
