//! One client connection served by threads (`--net threads`): a reader thread that decodes
//! requests and hands them to the [`Handler`], and a writer thread that sends answers back in
//! the order they complete (clients match them by correlation id).

use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use crate::answers::{answer_queue, AnswerRx, AnswerTx};
use crate::budget::ByteBudget;
use crate::frames::{handle_frames, new_input, Stop};
use crate::handler::Handler;
use crate::server::WriterDone;

/// Answers gathered into one socket write.
const WRITE_BUFFER: usize = 256 * 1024;

/// Serves `stream` until the client closes it, it breaks, or the server stops reading it.
/// Returns once the reader is done; the writer thread finishes on its own once every answer
/// to a request of this connection has been written.
pub fn serve(
    stream: TcpStream,
    conn: u64,
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
    read_requests(stream, conn, peer, handler, &budget, &tx);
    Ok(())
}

fn read_requests(
    mut stream: TcpStream,
    conn: u64,
    peer: SocketAddr,
    handler: &Arc<Handler>,
    budget: &Arc<ByteBudget>,
    tx: &AnswerTx,
) {
    let mut input = new_input();
    // Waits while this connection has too much in flight: the socket is not read meanwhile
    // (backpressure).
    let mut acquire = |n| Some(budget.acquire(n));
    let mut acquire_shard = |shard: &Arc<ByteBudget>, n| Some(shard.acquire(n));
    loop {
        let stop = handle_frames(
            &mut input,
            conn,
            peer,
            handler,
            tx,
            &mut acquire,
            &mut acquire_shard,
        );
        if stop == Stop::Close {
            return;
        }
        match stream.read(input.make_room()) {
            Ok(0) => return,
            Ok(n) => input.filled(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
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
