//! A ring connection's receive buffer, whose frames can be handed on without copying: a
//! produce's batch goes to the engine as a shared slice of the very bytes the kernel received.
//!
//! Received bytes are frozen into a shared `Bytes`; frames are slices of it. The next receive
//! goes into the rest of the same allocation, after a copy of the unfinished frame (if any) so
//! a frame is always contiguous. An allocation is freed once every frame taken from it is.
//! What a connection pins is therefore what its frames hold (bounded by its budget) plus the
//! allocation being filled.
//!
//! Receives start at a chunk of `min` bytes and double, up to `max`, while each one fills all it
//! was offered (the socket has more waiting); they halve again once receives come in small, so
//! a quiet connection holds a small buffer.

use bytes::{Buf, Bytes, BytesMut};
use keel_protocol::{read_room, SIZE_PREFIX_BYTES};

/// Bytes received and not yet handled, then room for the next receive.
pub struct RecvBuf {
    /// Received, not yet consumed; starts at a frame boundary.
    pending: Bytes,
    /// Where the next receive writes: its initialised part is the unfinished frame copied in
    /// before a receive; the kernel writes its spare capacity.
    next: BytesMut,
    /// What receives are offered now, between `min` and `max`.
    chunk: usize,
    min: usize,
    max: usize,
    /// Room offered to the receive in flight.
    offered: usize,
}

impl RecvBuf {
    /// An empty buffer that receives `min` to `max` bytes at a time (more for a frame larger
    /// than that). Nothing is allocated before the first receive.
    pub fn new(min: usize, max: usize) -> Self {
        let min = min.max(SIZE_PREFIX_BYTES);
        Self {
            pending: Bytes::new(),
            next: BytesMut::new(),
            chunk: min,
            min,
            max: max.max(min),
            offered: 0,
        }
    }

    /// The bytes received and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// The first `n` pending bytes as a shared slice (no copy); they stay pending.
    pub fn frame(&self, n: usize) -> Bytes {
        self.pending.slice(..n.min(self.pending.len()))
    }

    /// Drops `n` bytes from the front (a frame that was handled).
    pub fn consume(&mut self, n: usize) {
        self.pending.advance(n.min(self.pending.len()));
    }

    /// Prepares the next receive and returns where the kernel may write and how much: after
    /// the unfinished frame, with room as [`read_room`] says (growing with what arrived), the
    /// buffer holding at most `limit` bytes (at least a chunk). `None` when it holds that much
    /// already and its frame is not complete: nothing can be received until the limit rises.
    pub fn prepare_receive(&mut self, limit: usize) -> Option<(*mut u8, usize)> {
        let room = read_room(&self.pending, self.chunk).min(limit.max(self.chunk));
        if room <= self.pending.len() {
            return None;
        }
        self.next.clear();
        // A buffer grown for a big frame is let go once frames are small again.
        if self.next.capacity() < room || self.next.capacity() > 4 * room.max(self.max) {
            // The old allocation stays alive as long as frames taken from it do.
            self.next = BytesMut::with_capacity(room.max(self.chunk));
        }
        self.next.extend_from_slice(&self.pending);
        self.pending = Bytes::new();
        let held = self.next.len();
        let spare = self.next.spare_capacity_mut();
        let len = spare.len().min(room - held);
        self.offered = len;
        Some((spare.as_mut_ptr().cast::<u8>(), len))
    }

    /// Records that a receive prepared by [`Self::prepare_receive`] wrote `n` bytes.
    ///
    /// # Safety
    /// The kernel must have written `n` bytes at the start of the space the last
    /// `prepare_receive` returned, and `n` must not exceed its length.
    pub unsafe fn received(&mut self, n: usize) {
        let n = n.min(self.next.capacity() - self.next.len());
        // SAFETY: the caller guarantees the kernel initialised these bytes, within capacity.
        unsafe { self.next.set_len(self.next.len() + n) };
        self.pending = self.next.split().freeze();
        if n == self.offered {
            self.chunk = (self.chunk * 2).min(self.max);
        } else if n < self.chunk / 4 {
            self.chunk = (self.chunk / 2).max(self.min);
        }
    }

    /// What the next receive is offered at least, as it adapts to the connection's pace.
    pub fn chunk(&self) -> usize {
        self.chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_protocol::{encode_request, frame_len, Request, REQUEST_HEADER_BYTES};

    /// Copies `bytes` into the receive space, as the kernel would.
    fn receive(buf: &mut RecvBuf, bytes: &[u8]) -> usize {
        let (at, room) = buf.prepare_receive(usize::MAX).unwrap();
        let n = room.min(bytes.len());
        // SAFETY: `at` has `room` writable bytes, reserved by prepare_receive.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, n);
            buf.received(n);
        }
        n
    }

    #[test]
    fn frames_come_out_whole_and_unchanged_however_the_bytes_arrive() {
        let mut wire = Vec::new();
        for i in 0..60u32 {
            let topic = "t".repeat(i as usize * 37);
            encode_request(i, &Request::Metadata { topic }, &mut wire);
        }
        // Pieces of 1..=97 bytes, through a buffer that receives 16 at a time, so frames
        // straddle receives and outgrow the chunk.
        let mut buf = RecvBuf::new(16, 64);
        let (mut fed, mut got, mut step) = (0, Vec::new(), 1);
        while got.len() < 60 {
            while let Some(len) = frame_len(buf.pending(), REQUEST_HEADER_BYTES, 1 << 20).unwrap() {
                got.push(buf.frame(len));
                buf.consume(len);
            }
            let end = (fed + step).min(wire.len());
            fed += receive(&mut buf, &wire[fed..end]);
            step = step % 97 + 1;
        }
        // Frames taken earlier are not disturbed by later receives into the same allocation.
        let mut expected = Vec::new();
        for (i, frame) in got.iter().enumerate() {
            let topic = "t".repeat(i * 37);
            expected.clear();
            encode_request(i as u32, &Request::Metadata { topic }, &mut expected);
            assert_eq!(&frame[..], &expected[..], "frame {i}");
        }
        assert!(buf.pending().is_empty());
    }

    #[test]
    fn a_taken_frame_shares_the_received_bytes() {
        let mut wire = Vec::new();
        encode_request(1, &Request::ListTopics, &mut wire);
        encode_request(2, &Request::ListTopics, &mut wire);
        let mut buf = RecvBuf::new(4096, 4096);
        receive(&mut buf, &wire);
        let first_len = frame_len(buf.pending(), REQUEST_HEADER_BYTES, 1 << 20)
            .unwrap()
            .unwrap();
        let frame = buf.frame(first_len);
        assert_eq!(
            frame.as_ptr(),
            buf.pending().as_ptr(),
            "a slice, not a copy"
        );
        buf.consume(first_len);
        assert_eq!(buf.pending(), &wire[first_len..]);
    }

    #[test]
    fn receives_grow_while_they_fill_what_they_are_offered_and_shrink_when_they_do_not() {
        let mut buf = RecvBuf::new(1024, 8192);
        let full = vec![0u8; 1 << 16];
        for _ in 0..5 {
            // SAFETY: fills exactly the room prepare_receive reserved.
            unsafe {
                let (at, room) = buf.prepare_receive(usize::MAX).unwrap();
                std::ptr::copy_nonoverlapping(full.as_ptr(), at, room);
                buf.received(room);
            }
            // Dropped as if handled.
            buf.consume(buf.pending().len());
        }
        assert_eq!(buf.chunk(), 8192, "grew to the maximum");
        for _ in 0..4 {
            receive(&mut buf, &full[..10]);
            buf.consume(buf.pending().len());
        }
        assert_eq!(buf.chunk(), 1024, "shrank back to the minimum");
    }
}
