//! A receive buffer for a stream of frames: bytes go in at the end, whole frames come out at
//! the front. No I/O: the caller reads into [`FrameBuffer::make_room`] and reports how much
//! arrived with [`FrameBuffer::filled`].

use crate::frame::{frame_len, DecodeError, SIZE_PREFIX_BYTES};

/// Bytes received and not yet taken: `buf[start..end]`.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    chunk: usize,
}

impl FrameBuffer {
    /// An empty buffer that reads at least `chunk` bytes at a time.
    pub fn new(chunk: usize) -> Self {
        let chunk = chunk.max(SIZE_PREFIX_BYTES);
        Self {
            buf: vec![0; chunk],
            start: 0,
            end: 0,
            chunk,
        }
    }

    /// The bytes received and not yet taken.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The length of the whole frame at the front, if it is all there; an error when its size
    /// is outside `min_size..=max_frame_bytes` (see [`frame_len`]).
    pub fn next_frame_len(
        &self,
        min_size: usize,
        max_frame_bytes: u32,
    ) -> Result<Option<usize>, DecodeError> {
        frame_len(self.pending(), min_size, max_frame_bytes)
    }

    /// Drops `n` bytes from the front (a frame that was handled).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Moves what is left to the front and makes room to read into, as [`read_room`] says; a
    /// buffer grown for a big frame shrinks back afterwards. Returns the free space.
    pub fn make_room(&mut self) -> &mut [u8] {
        let room = self.room(usize::MAX);
        self.resize_to(room);
        &mut self.buf[self.end..]
    }

    /// [`FrameBuffer::make_room`] holding at most `limit` bytes (at least a chunk);
    /// `None` when the buffer holds that much already and its frame is not complete: nothing
    /// can be read until the limit is raised.
    pub fn make_room_within(&mut self, limit: usize) -> Option<&mut [u8]> {
        let room = self.room(limit.max(self.chunk));
        if room <= self.end - self.start {
            return None;
        }
        self.resize_to(room);
        Some(&mut self.buf[self.end..])
    }

    /// Bytes the buffer should hold after the next read, at most `limit`.
    fn room(&self, limit: usize) -> usize {
        read_room(self.pending(), self.chunk).min(limit)
    }

    fn resize_to(&mut self, room: usize) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < room {
            self.buf.resize(room, 0);
        } else if self.buf.len() > 4 * self.chunk && room == self.chunk {
            self.buf.truncate(self.chunk);
            self.buf.shrink_to_fit();
        }
    }

    /// Records that `n` bytes were read into the space [`Self::make_room`] returned.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

/// How many bytes a buffer holding `pending` (the start of a frame, or nothing) should have
/// room for before its next read: at least a `chunk`, and half a chunk more than it holds; for
/// a larger frame it starts, up to that frame's size, but never more than four times what it
/// holds. So a buffer grows with the bytes that actually arrive, not with the size a frame's
/// prefix claims: a peer that announces a large frame and sends nothing more makes it hold
/// nothing more. (Fourfold rather than twofold growth: a 1 MiB frame is then copied once on
/// its way in, not twice, which kept the throughput of 1 MiB produces as it was.)
pub fn read_room(pending: &[u8], chunk: usize) -> usize {
    let frame_bytes = match pending.get(..SIZE_PREFIX_BYTES) {
        Some(p) => SIZE_PREFIX_BYTES + u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize,
        None => 0,
    };
    let growth = frame_bytes.min(pending.len().saturating_mul(4));
    growth.max(pending.len() + chunk / 2).max(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Request, REQUEST_HEADER_BYTES};

    #[test]
    fn room_grows_with_what_arrives_not_with_what_a_prefix_claims() {
        let chunk = 64 * 1024;
        let mut claim = (16u32 << 20).to_le_bytes().to_vec();
        claim.extend_from_slice(&[0; 8]);
        assert_eq!(
            read_room(&claim, chunk),
            chunk,
            "a bare prefix gets a chunk"
        );
        let half_mib = vec![0u8; 512 * 1024];
        let mut big = (16u32 << 20).to_le_bytes().to_vec();
        big.extend_from_slice(&half_mib);
        assert_eq!(
            read_room(&big, chunk),
            4 * big.len(),
            "four times what it holds"
        );
        let mut small = 100_000u32.to_le_bytes().to_vec();
        small.extend_from_slice(&[0; 90_000]);
        assert_eq!(read_room(&small, chunk), 90_004 + chunk / 2);
        let mut fb = FrameBuffer::new(chunk);
        fb.make_room()[..big.len().min(chunk)].copy_from_slice(&big[..chunk]);
        fb.filled(chunk);
        assert_eq!(
            fb.make_room_within(chunk).map(|r| r.len()),
            None,
            "full at its limit"
        );
        assert_eq!(
            fb.make_room_within(3 * chunk).map(|r| r.len()),
            Some(2 * chunk)
        );
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let mut wire = Vec::new();
        for i in 0..50u32 {
            let topic = "t".repeat(i as usize * 40);
            encode_request(i, &Request::Metadata { topic }, &mut wire);
        }
        // Fed in pieces of 1..=97 bytes, through a buffer that reads 16 at a time.
        let mut fb = FrameBuffer::new(16);
        let (mut fed, mut got, mut step) = (0, Vec::new(), 1);
        while got.len() < 50 {
            while let Some(len) = fb.next_frame_len(REQUEST_HEADER_BYTES, 1 << 20).unwrap() {
                got.push(fb.pending()[..len].to_vec());
                fb.consume(len);
            }
            let room = fb.make_room();
            let n = room.len().min(step).min(wire.len() - fed);
            room[..n].copy_from_slice(&wire[fed..fed + n]);
            fb.filled(n);
            fed += n;
            step = step % 97 + 1;
        }
        assert_eq!(got.concat(), wire);
        assert!(fb.pending().is_empty());
    }
}
