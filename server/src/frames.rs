//! Turning a connection's received bytes into requests: shared by both ways of serving
//! connections (a thread pair per connection, or an io_uring loop per core).

use std::net::SocketAddr;

use keel_protocol::{
    decode_request, encode_error, frame_len, ErrorCode, FrameBuffer, REQUEST_HEADER_BYTES,
    SIZE_PREFIX_BYTES,
};

use std::sync::Arc;

use crate::answers::AnswerTx;
use crate::budget::{BudgetHold, ByteBudget};
use crate::handler::Handler;
use crate::reply::{Outgoing, Reply};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Why handling stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every whole frame is handled; read more.
    NeedMore,
    /// The connection's budget (or the shard budget its next request needs) is spent: read
    /// nothing more until bytes are given back.
    Parked,
    /// The stream is unusable (a size out of bounds, or a header that cannot be read).
    Close,
}

/// A connection's receive buffer.
pub fn new_input() -> FrameBuffer {
    FrameBuffer::new(READ_CHUNK)
}

/// Takes bytes from a budget for a request; `None`: spent, the frame stays for later.
pub type Acquire<'a> = &'a mut dyn FnMut(&Arc<ByteBudget>, usize) -> Option<BudgetHold>;

/// Handles every whole frame in `input`. `acquire` takes the connection's budget for a
/// request, then `acquire_shard` the budget of the shard the request goes to.
pub fn handle_frames(
    input: &mut FrameBuffer,
    conn: u64,
    peer: SocketAddr,
    handler: &Handler,
    tx: &AnswerTx,
    acquire: &mut dyn FnMut(usize) -> Option<BudgetHold>,
    acquire_shard: Acquire<'_>,
) -> Stop {
    let max_frame = handler.max_frame_bytes();
    loop {
        let pending = input.pending();
        match frame_len(pending, REQUEST_HEADER_BYTES, max_frame) {
            Ok(Some(len)) => {
                let frame = &pending[..len];
                match decode_request(frame) {
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
                        let reply = Reply::new(header.correlation_id, tx.clone(), hold);
                        handler.handle(request, reply, conn, shard_hold);
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
                input.consume(len);
            }
            Ok(None) => return Stop::NeedMore,
            Err(e) => {
                // The stream cannot be resynchronised after a bad size. Answer if the
                // header is there to say whom to answer, then close.
                log::warn!("{peer}: {e}; closing the connection");
                if pending.len() >= SIZE_PREFIX_BYTES + REQUEST_HEADER_BYTES {
                    let id = u32::from_le_bytes([pending[8], pending[9], pending[10], pending[11]]);
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
