//! Writes reaching the device out of order, for the power-loss simulator. io_uring promises no
//! order between operations that are not linked, and a device may complete a later write
//! first; on a fast disk two writes in flight usually complete in the order they were
//! submitted, so a test on a real disk rarely sees the other order. Holding some writes back
//! for a few waits, while the ones submitted later go on, makes it common: the later write
//! then really is done (and durable) while the earlier one has not reached the device, and a
//! power cut in between loses the earlier one.

use super::{Disk, FileId, SyncAfter};
use crate::aligned::AlignedBuf;
use crate::xorshift::xorshift;

/// One write in this many is held back.
const HOLD_ONE_IN: u64 = 3;
/// Most waits a write is held back for (while other operations complete).
const HOLD_WAITS_MAX: u64 = 4;

/// A write not yet passed on to the device.
pub(crate) struct HeldWrite {
    pub(crate) file: FileId,
    pub(crate) offset: u64,
    pub(crate) buf: AlignedBuf,
    pub(crate) len: usize,
    pub(crate) token: u64,
    pub(crate) sync: SyncAfter,
}

impl HeldWrite {
    /// Passes the write on to `disk`.
    pub(crate) fn submit_to<D: Disk>(self, disk: &mut D) {
        disk.submit_write(
            self.file,
            self.offset,
            self.buf,
            self.len,
            self.token,
            self.sync,
        );
    }
}

/// Writes held back for a few waits, chosen at random from a seed.
pub(crate) struct Reorder {
    /// Each with the waits it is still held for.
    held: Vec<(HeldWrite, u64)>,
    next: Box<dyn FnMut() -> u64 + Send>,
}

impl Reorder {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            held: Vec::new(),
            next: Box::new(xorshift(seed)),
        }
    }

    /// Takes `w` to hold back, or gives it back to be submitted now.
    pub(crate) fn hold(&mut self, w: HeldWrite) -> Option<HeldWrite> {
        let draw = (self.next)();
        if draw.is_multiple_of(HOLD_ONE_IN) {
            let waits = 1 + (draw / HOLD_ONE_IN) % HOLD_WAITS_MAX;
            self.held.push((w, waits));
            None
        } else {
            Some(w)
        }
    }

    /// A wait begins: the writes held back long enough, to be submitted now, after the ones
    /// that were submitted since.
    pub(crate) fn release_due(&mut self) -> Vec<HeldWrite> {
        let mut due = Vec::new();
        let mut kept = Vec::new();
        for (w, waits) in self.held.drain(..) {
            if waits <= 1 {
                due.push(w);
            } else {
                kept.push((w, waits - 1));
            }
        }
        self.held = kept;
        due
    }

    /// Every write held back: nothing else completed, so the disk would otherwise wait for
    /// writes that were never submitted.
    pub(crate) fn release_all(&mut self) -> Vec<HeldWrite> {
        self.held.drain(..).map(|(w, _)| w).collect()
    }

    /// Whether writes are held back.
    pub(crate) fn holding(&self) -> bool {
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(token: u64) -> HeldWrite {
        HeldWrite {
            file: FileId(0),
            offset: 0,
            buf: AlignedBuf::zeroed(0),
            len: 0,
            token,
            sync: SyncAfter::ThisWrite,
        }
    }

    #[test]
    fn some_writes_go_after_later_ones_and_none_is_lost() {
        let mut r = Reorder::new(7);
        let mut order = Vec::new();
        for token in 0..300u64 {
            if token % 5 == 0 {
                order.extend(r.release_due().into_iter().map(|w| w.token));
            }
            if let Some(now) = r.hold(write(token)) {
                order.push(now.token);
            }
        }
        assert!(r.holding());
        order.extend(r.release_all().into_iter().map(|w| w.token));
        assert!(!r.holding());
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..300).collect::<Vec<_>>());
        assert!(
            order.windows(2).any(|w| w[0] > w[1]),
            "nothing was reordered"
        );
    }
}
