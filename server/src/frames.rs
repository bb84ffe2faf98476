//! Turning a connection's received bytes into requests: shared by both ways of serving
//! connections (a thread pair per connection, or an io_uring loop per core).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use keel_protocol::{
    decode_request, encode_error, frame_len, ErrorCode, FrameBuffer, REQUEST_HEADER_BYTES,
    SIZE_PREFIX_BYTES,
};

use std::sync::Arc;

use crate::answers::AnswerTx;
use crate::budget::{BudgetHold, ByteBudget};
use crate::handler::{Handler, Later};
use crate::log_limit::RateLimitedWarn;
use crate::pending::Tickets;
use crate::recv_buf::RecvBuf;
use crate::reply::{Body, Outgoing, Reply};

/// Bytes read from a socket at a time.
pub const READ_CHUNK: usize = 64 * 1024;
/// The most a ring connection receives at a time, once its receives keep filling what they
/// are offered: fewer, larger receives cost less per byte (about 8% of keeld's CPU per message
/// at 256 KiB against 64 KiB); no gain was measured beyond.
const MAX_RECV_CHUNK: usize = 256 * 1024;

/// Requests that fail to decode, logged at most once a second (a client can send them as fast
/// as it likes).
static BAD_INPUT: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));

/// Why handling stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every whole frame is handled; read more.
    NeedMore,
    /// The connection's budget (or the shard budget its next request needs) is spent: read
    /// nothing more until bytes are given back.
    Parked,
    /// Every place for requests waiting on the engine is taken: read nothing more until
    /// answers come back.
    NoRoom,
    /// The stream is unusable (a size out of bounds, or a header that cannot be read).
    Close,
}

/// A threaded connection's receive buffer.
pub fn new_input() -> FrameBuffer {
    FrameBuffer::new(READ_CHUNK)
}

/// A ring connection's receive buffer.
pub fn new_recv_buf() -> RecvBuf {
    RecvBuf::new(READ_CHUNK, MAX_RECV_CHUNK)
}

/// Received bytes that frames are taken from.
pub trait Input {
    /// The bytes received and not yet consumed.
    fn pending(&self) -> &[u8];
    /// The first `n` pending bytes as a frame of their own; they stay pending.
    fn frame(&self, n: usize) -> Bytes;
    /// Drops `n` handled bytes from the front.
    fn consume(&mut self, n: usize);
}

impl Input for FrameBuffer {
    fn pending(&self) -> &[u8] {
        self.pending()
    }
    fn frame(&self, n: usize) -> Bytes {
        Bytes::copy_from_slice(&self.pending()[..n.min(self.pending().len())])
    }
    fn consume(&mut self, n: usize) {
        self.consume(n);
    }
}

impl Input for RecvBuf {
    fn pending(&self) -> &[u8] {
        self.pending()
    }
    fn frame(&self, n: usize) -> Bytes {
        self.frame(n)
    }
    fn consume(&mut self, n: usize) {
        self.consume(n);
    }
}

/// Takes bytes from a budget for a request; `None`: spent, the frame stays for later.
pub type Acquire<'a> = &'a mut dyn FnMut(&Arc<ByteBudget>, usize) -> Option<BudgetHold>;

/// What a request takes before it is handled, each refusal stopping the reading: bytes of the
/// connection's budget, then of the budget of the shard the request goes to, then (for a
/// request the engine answers later) a place among the requests waiting on the engine.
pub struct Admission<'a> {
    /// Takes the connection's budget.
    pub acquire: &'a mut dyn FnMut(usize) -> Option<BudgetHold>,
    /// Takes a shard's budget.
    pub acquire_shard: Acquire<'a>,
    /// Where requests wait on the engine.
    pub tickets: &'a mut dyn Tickets,
}

/// Handles every whole frame in `input`, each admitted through `admit` first.
pub fn handle_frames(
    input: &mut dyn Input,
    conn: u64,
    peer: SocketAddr,
    handler: &Handler,
    tx: &AnswerTx,
    admit: Admission<'_>,
) -> Stop {
    let Admission {
        acquire,
        acquire_shard,
        tickets,
    } = admit;
    let max_frame = handler.max_frame_bytes();
    loop {
        let pending = input.pending();
        match frame_len(pending, REQUEST_HEADER_BYTES, max_frame) {
            Ok(Some(len)) => {
                // Owned, so a produce's batch can go to the engine as it is: shared, not copied.
                let frame = input.frame(len);
                match decode_request(&frame) {
                    Ok((header, request)) => {
                        let Some(hold) = acquire(handler.cost(len, &request)) else {
                            return Stop::Parked;
                        };
                        let shard_hold = match handler.shard_cost(&request) {
                            Some((budget, bytes)) => match acquire_shard(budget, bytes) {
                                Some(h) => Some(h),
                                None => return Stop::Parked,
                            },
                            None => None,
                        };
                        let later = if handler.answers_later(&request) {
                            let Some(place) = tickets.reserve() else {
                                return Stop::NoRoom;
                            };
                            Some(Later {
                                place,
                                tickets: &mut *tickets,
                            })
                        } else {
                            None
                        };
                        let reply = Reply::new(header.correlation_id, tx.clone(), hold);
                        handler.handle(request, &frame, reply, conn, shard_hold, later);
                    }
                    Err(bad) => {
                        let Some(id) = bad.correlation_id else {
                            BAD_INPUT.warn(|| {
                                format!("{peer}: {bad}; closing the connection (request header unreadable)")
                            });
                            return Stop::Close;
                        };
                        BAD_INPUT.warn(|| format!("{peer}: {bad}"));
                        let Some(hold) = acquire(len) else {
                            return Stop::Parked;
                        };
                        Reply::new(id, tx.clone(), hold).error(
                            ErrorCode::for_decode_error(&bad.error),
                            &bad.error.to_string(),
                        );
                    }
                }
                input.consume(len);
            }
            Ok(None) => return Stop::NeedMore,
            Err(e) => {
                // The stream cannot be resynchronised after a bad size. Answer if the
                // header is there to say whom to answer, then close.
                BAD_INPUT.warn(|| format!("{peer}: {e}; closing the connection"));
                if pending.len() >= SIZE_PREFIX_BYTES + REQUEST_HEADER_BYTES {
                    let id = u32::from_le_bytes([pending[8], pending[9], pending[10], pending[11]]);
                    let mut frame = Vec::new();
                    encode_error(id, ErrorCode::MalformedRequest, &e.to_string(), &mut frame);
                    if let Some(hold) = acquire(frame.len()) {
                        tx.send(Outgoing::new(Body::Frame(frame), hold));
                    }
                }
                return Stop::Close;
            }
        }
    }
}
