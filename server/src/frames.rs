//! Turning a connection's received bytes into requests: shared by both ways of serving
//! connections (a thread pair per connection, or an io_uring loop per core).

use std::net::SocketAddr;

use keel_protocol::{
    decode_request, encode_error, frame_len, ErrorCode, REQUEST_HEADER_BYTES, SIZE_PREFIX_BYTES,
};

use crate::answers::AnswerTx;
use crate::budget::BudgetHold;
use crate::handler::Handler;
use crate::reply::{Outgoing, Reply};

/// Bytes read from a socket at a time.
pub const READ_CHUNK: usize = 64 * 1024;

/// Received bytes not yet handled: `buf[start..end]`.
pub struct InBuffer {
    /// Storage; reads go into `buf[end..]`.
    pub buf: Vec<u8>,
    /// First byte not yet handled.
    pub start: usize,
    /// One past the last byte received.
    pub end: usize,
}

/// Why handling stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every whole frame is handled; read more.
    NeedMore,
    /// The connection's budget is spent: read nothing more until answers go out.
    Parked,
    /// The stream is unusable (a size out of bounds, or a header that cannot be read).
    Close,
}

impl InBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Handles every whole frame in the buffer. `acquire` takes connection budget for a
    /// request (`None`: spent; the frame stays for later).
    pub fn handle_frames(
        &mut self,
        peer: SocketAddr,
        handler: &Handler,
        tx: &AnswerTx,
        acquire: &mut dyn FnMut(usize) -> Option<BudgetHold>,
    ) -> Stop {
        let max_frame = handler.max_frame_bytes();
        loop {
            let pending = &self.buf[self.start..self.end];
            match frame_len(pending, REQUEST_HEADER_BYTES, max_frame) {
                Ok(Some(len)) => {
                    let frame = &pending[..len];
                    match decode_request(frame) {
                        Ok((header, request)) => {
                            let Some(hold) = acquire(handler.cost(len, &request)) else {
                                return Stop::Parked;
                            };
                            handler.handle(
                                request,
                                Reply::new(header.correlation_id, tx.clone(), hold),
                            );
                        }
                        Err(bad) => {
                            log::warn!("{peer}: {bad}");
                            let Some(id) = bad.correlation_id else {
                                log::warn!(
                                    "{peer}: closing the connection (request header unreadable)"
                                );
                                return Stop::Close;
                            };
                            let Some(hold) = acquire(len) else {
                                return Stop::Parked;
                            };
                            Reply::new(id, tx.clone(), hold).error(
                                ErrorCode::for_decode_error(&bad.error),
                                &bad.error.to_string(),
                            );
                        }
                    }
                    self.start += len;
                }
                Ok(None) => return Stop::NeedMore,
                Err(e) => {
                    // The stream cannot be resynchronised after a bad size. Answer if the
                    // header is there to say whom to answer, then close.
                    log::warn!("{peer}: {e}; closing the connection");
                    if pending.len() >= SIZE_PREFIX_BYTES + REQUEST_HEADER_BYTES {
                        let id =
                            u32::from_le_bytes([pending[8], pending[9], pending[10], pending[11]]);
                        let mut frame = Vec::new();
                        encode_error(id, ErrorCode::MalformedRequest, &e.to_string(), &mut frame);
                        if let Some(hold) = acquire(frame.len()) {
                            tx.send(Outgoing::new(frame, hold));
                        }
                    }
                    return Stop::Close;
                }
            }
        }
    }

    /// Moves the unhandled bytes to the front and makes room to read the rest of the frame
    /// they start (its size is known once 4 bytes are in); a buffer grown for a big frame
    /// shrinks back afterwards. Returns the free space to read into, `buf[end..]`.
    pub fn make_room(&mut self) -> &mut [u8] {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let frame_bytes = match self.buf.get(..SIZE_PREFIX_BYTES) {
            Some(p) if self.end >= SIZE_PREFIX_BYTES => {
                SIZE_PREFIX_BYTES + u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize
            }
            _ => 0,
        };
        let room = frame_bytes.max(self.end + READ_CHUNK / 2).max(READ_CHUNK);
        if self.buf.len() < room {
            self.buf.resize(room, 0);
        } else if self.buf.len() > 4 * READ_CHUNK && room == READ_CHUNK {
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
        &mut self.buf[self.end..]
    }
}
