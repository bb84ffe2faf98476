//! One client connection: a reader thread that decodes requests and hands them to the
//! [`Handler`], and a writer thread that sends answers back in the order they complete
//! (clients match them by correlation id).

use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use keel_protocol::{
    decode_request, encode_error, frame_len, ErrorCode, REQUEST_HEADER_BYTES, SIZE_PREFIX_BYTES,
};

use crate::answers::{answer_queue, AnswerRx, AnswerTx};
use crate::budget::ByteBudget;
use crate::handler::Handler;
use crate::reply::{Outgoing, Reply};
use crate::server::WriterDone;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Answers gathered into one socket write.
const WRITE_BUFFER: usize = 256 * 1024;

/// Serves `stream` until the client closes it, it breaks, or the server stops reading it.
/// Returns once the reader is done; the writer thread finishes on its own once every answer
/// to a request of this connection has been written.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &Arc<Handler>,
    inflight_bytes: usize,
    writer_done: WriterDone,
) -> io::Result<()> {
    let (tx, rx) = answer_queue();
    let writer_stream = stream.try_clone()?;
    std::thread::Builder::new()
        .name(format!("keel-write-{peer}"))
        .spawn(move || {
            write_answers(writer_stream, &rx, peer);
            drop(writer_done);
        })?;
    let budget = ByteBudget::new(inflight_bytes);
    read_requests(stream, peer, handler, &budget, &tx);
    Ok(())
}

fn read_requests(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &Arc<Handler>,
    budget: &Arc<ByteBudget>,
    tx: &AnswerTx,
) {
    let max_frame = handler.max_frame_bytes();
    let mut buf = vec![0u8; READ_CHUNK];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        match frame_len(&buf[start..end], REQUEST_HEADER_BYTES, max_frame) {
            Ok(Some(len)) => {
                let frame = &buf[start..start + len];
                start += len;
                match decode_request(frame) {
                    Ok((header, request)) => {
                        // Waits while this connection has too much in flight: the socket
                        // is not read meanwhile (backpressure).
                        let hold = budget.acquire(handler.cost(len, &request));
                        handler
                            .handle(request, Reply::new(header.correlation_id, tx.clone(), hold));
                    }
                    Err(bad) => {
                        log::warn!("{peer}: {bad}");
                        let Some(id) = bad.correlation_id else {
                            log::warn!(
                                "{peer}: closing the connection (request header unreadable)"
                            );
                            return;
                        };
                        let hold = budget.acquire(len);
                        Reply::new(id, tx.clone(), hold).error(
                            ErrorCode::for_decode_error(&bad.error),
                            &bad.error.to_string(),
                        );
                    }
                }
            }
            Ok(None) => {
                // Keep only the partial frame, at the front, with room for all of it once its
                // size is known; a buffer grown for a big frame shrinks back afterwards.
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                let frame_bytes = match buf
                    .get(..SIZE_PREFIX_BYTES)
                    .filter(|_| end >= SIZE_PREFIX_BYTES)
                {
                    Some(p) => {
                        SIZE_PREFIX_BYTES + u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize
                    }
                    None => 0,
                };
                let room = frame_bytes.max(READ_CHUNK);
                if buf.len() < room {
                    buf.resize(room, 0);
                } else if buf.len() > 4 * READ_CHUNK && room == READ_CHUNK && end <= READ_CHUNK {
                    buf.truncate(READ_CHUNK);
                    buf.shrink_to_fit();
                }
                match stream.read(&mut buf[end..]) {
                    Ok(0) => return,
                    Ok(n) => end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("{peer}: read failed: {e}");
                        return;
                    }
                }
            }
            Err(e) => {
                // The stream cannot be resynchronised after a bad size. Answer if the header
                // is there to say whom to answer, then close.
                log::warn!("{peer}: {e}; closing the connection");
                let head = &buf[start..end];
                if head.len() >= SIZE_PREFIX_BYTES + REQUEST_HEADER_BYTES {
                    let id = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
                    let mut frame = Vec::new();
                    encode_error(id, ErrorCode::MalformedRequest, &e.to_string(), &mut frame);
                    let hold = budget.acquire(frame.len());
                    tx.send(Outgoing::new(frame, hold));
                }
                return;
            }
        }
    }
}

fn write_answers(stream: TcpStream, rx: &AnswerRx, peer: SocketAddr) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, &stream);
    let mut answers = Vec::new();
    while rx.take_all(&mut answers) {
        // Everything answered so far goes out together; written answers give their bytes back
        // to the connection's budget as they are dropped.
        let written = answers
            .drain(..)
            .try_for_each(|a| out.write_all(&a.frame))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            log::debug!("{peer}: write failed: {e}; closing the connection");
            // Wakes the reader too, which then stops taking requests.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
    let _ = out.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
