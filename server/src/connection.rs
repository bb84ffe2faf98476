//! One client connection served by threads (with `--portable-io`): a reader thread that decodes
//! requests and hands them to the [`Handler`], and a writer thread that sends answers back in
//! the order they complete (clients match them by correlation id).

use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crate::answers::{answer_queue, AnswerRx, AnswerTx};
use crate::budget::ByteBudget;
use crate::conn_limits::{ConnLimits, ConnState};
use crate::frames::{handle_frames, new_input, Admission, Stop, READ_CHUNK};
use crate::handler::Handler;
use crate::pending::SharedPending;
use crate::server::WriterDone;

/// Answers gathered into one socket write.
const WRITE_BUFFER: usize = 256 * 1024;

/// What the reader threads of every connection share.
pub struct Shared {
    /// Turns requests into engine calls.
    pub handler: Arc<Handler>,
    /// Bounds each connection's memory and time.
    pub limits: Arc<ConnLimits>,
    /// Requests waiting for the engine.
    pub pending: Arc<SharedPending>,
}

/// Serves `stream` until the client closes it, it breaks, or the server stops reading it.
/// Returns once the reader is done; the writer thread finishes on its own once every answer
/// to a request of this connection has been written.
pub fn serve(
    stream: TcpStream,
    conn: u64,
    peer: SocketAddr,
    shared: &Shared,
    writer_done: WriterDone,
) -> io::Result<()> {
    let limits = &shared.limits;
    let (tx, rx) = answer_queue();
    let writer_stream = stream.try_clone()?;
    std::thread::Builder::new()
        .name(format!("keel-write-{peer}"))
        .spawn(move || {
            write_answers(writer_stream, &rx, peer);
            drop(writer_done);
        })?;
    // Reads wake up this often to look at the connection's clocks.
    stream.set_read_timeout(Some(limits.check_every()))?;
    let budget = ByteBudget::new(limits.inflight_bytes);
    read_requests(stream, conn, peer, shared, &budget, &tx);
    Ok(())
}

fn read_requests(
    mut stream: TcpStream,
    conn: u64,
    peer: SocketAddr,
    shared: &Shared,
    budget: &Arc<ByteBudget>,
    tx: &AnswerTx,
) {
    let limits = &shared.limits;
    let mut tickets = &*shared.pending;
    let mut input = new_input();
    let mut state = ConnState::new(limits);
    // Waits while this connection has too much in flight: the socket is not read meanwhile
    // (backpressure).
    let mut acquire = |n| Some(budget.acquire(n));
    let mut acquire_shard = |shard: &Arc<ByteBudget>, n| Some(shard.acquire(n));
    loop {
        let before = input.pending().len();
        let stop = handle_frames(
            &mut input,
            conn,
            peer,
            &shared.handler,
            tx,
            Admission {
                acquire: &mut acquire,
                acquire_shard: &mut acquire_shard,
                tickets: &mut tickets,
            },
        );
        // Only a stopping server has no place for a request: stop reading.
        if matches!(stop, Stop::Close | Stop::NoRoom) {
            return;
        }
        let left = input.pending().len();
        state.handled(left > 0, left < before, Instant::now());
        let limit = state.buffer_limit(input.pending(), READ_CHUNK);
        let read = match input.make_room_within(limit) {
            Some(room) => stream.read(room),
            // The partial-frame pool is spent: wait a moment, as a timed-out read would.
            None => {
                std::thread::sleep(limits.check_every());
                Err(io::ErrorKind::TimedOut.into())
            }
        };
        match read {
            Ok(0) => return,
            Ok(n) => {
                input.filled(n);
                state.received(Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(why) = state.expired(Instant::now(), false, budget.in_use() > 0) {
                    why.log(peer);
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
            Err(e) => {
                log::debug!("{peer}: read failed: {e}");
                return;
            }
        }
    }
}

fn write_answers(stream: TcpStream, rx: &AnswerRx, peer: SocketAddr) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, &stream);
    let mut answers = Vec::new();
    let mut frame = Vec::new();
    while rx.take_all(&mut answers) {
        // Everything answered so far goes out together; written answers give their bytes back
        // to the connection's budget as they are dropped.
        let written = answers
            .drain(..)
            .try_for_each(|a| {
                frame.clear();
                a.write_to(&mut frame);
                out.write_all(&frame)
            })
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
