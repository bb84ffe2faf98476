//! Who reads the server's answers. The connection's reading end sits in a slot under the
//! producer's lock; whoever takes it reads:
//!
//! - a sender waiting for its delivery, when the slot is free: it reads and handles every
//!   answer itself (its own, and any other), sends what the answers let go, and gives the
//!   reading end back once its delivery is finished. A lone message's round trip then wakes
//!   one thread, the one waiting for it;
//! - otherwise the producer's own thread, when its poll says an answer came.
//!
//! While a sender reads, the producer's thread is not told of arrivals (the socket is taken
//! out of its poll for reading), so it is not woken for answers someone else is handling;
//! giving the reading end back puts the socket back, and the poll then reports anything that
//! arrived meanwhile.

use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::time::Instant;

use keel_protocol::FrameBuffer;
use mio::{Events, Interest, Poll, Token, Waker};

use super::answers::{handle_answers, Told};
use super::delivery::Outcome;
use super::io::wanted_sooner;
use super::link::send_due;
use super::Shared;

/// The reading end's token in its own poll.
const READABLE: Token = Token(0);
/// The token of the waker that ends a wait in that poll when the awaited batch was finished
/// by another thread (which read its answer first).
const FINISHED: Token = Token(1);

/// The connection's reading end: a clone of its socket, what was read of it, and a poll of
/// its own for a sender to wait in.
pub(crate) struct Reader {
    stream: mio::net::TcpStream,
    pub input: FrameBuffer,
    poll: Poll,
    events: Events,
    finished: Arc<Waker>,
}

impl Reader {
    pub fn new(mut stream: mio::net::TcpStream, input: FrameBuffer) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut stream, READABLE, Interest::READABLE)?;
        let finished = Arc::new(Waker::new(poll.registry(), FINISHED)?);
        Ok(Self {
            stream,
            input,
            poll,
            events: Events::with_capacity(4),
            finished,
        })
    }

    /// Reads until the socket has nothing more (polls report only arrivals).
    pub fn read_available(&mut self) -> Result<(), String> {
        loop {
            match self.stream.read(self.input.make_room()) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.input.filled(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }
}

/// The slot the reading end sits in when no thread reads it.
#[derive(Default)]
pub(crate) struct ReadSlot {
    pub reader: Option<Reader>,
    /// Changes with the connection: a reading end taken before belongs to a closed one.
    pub generation: u64,
}

impl ReadSlot {
    /// The reading end of a new connection.
    pub fn connected(&mut self, reader: Reader) {
        self.generation += 1;
        self.reader = Some(reader);
    }

    /// The connection is gone.
    pub fn disconnected(&mut self) {
        self.generation += 1;
        self.reader = None;
    }
}

/// Reads and handles answers on the calling thread until `outcome` is finished or `deadline`
/// passes, if no other thread is reading. False if one is: its reader will finish `outcome`.
pub(crate) fn read_until(shared: &Shared, outcome: &Outcome, deadline: Instant) -> bool {
    let mut st = shared.state();
    if outcome.is_finished() {
        return true;
    }
    let Some(mut reader) = st.read_slot.reader.take() else {
        return false;
    };
    let generation = st.read_slot.generation;
    if let Some(link) = st.sending.link.as_mut() {
        if let Err(why) = link.read_elsewhere(true, &shared.registry) {
            st.sending.broken = Some(why);
        }
    }
    drop(st);
    let mut told = Told::default();
    let failed = loop {
        let read = reader.read_available();
        let mut st = shared.state();
        if st.read_slot.generation != generation {
            // The producer's thread gave the connection up meanwhile.
            break None;
        }
        let handled = handle_answers(&mut st, shared, &mut reader.input, &mut told);
        send_due(&mut st, &shared.rules, Instant::now());
        let written = st.sending.write(&shared.registry);
        // What the answers left for later (a retry's pause, a new epoch) is the producer's
        // thread's to do: it is woken if it would not look in time.
        let wake = st.io_parked && wanted_sooner(&st, &shared.rules);
        if wake {
            st.io_parked = false;
        }
        drop(st);
        if wake {
            let _ = shared.waker.wake();
        }
        told.tell(shared);
        if let Err(why) = handled.and(read).and(written) {
            break Some(why);
        }
        let now = Instant::now();
        // Another thread may have read this batch's answer before this one took the reading
        // end, and be finishing it now: it then wakes this poll.
        if now >= deadline || !outcome.watch(&reader.finished) {
            break None;
        }
        let polled = reader.poll.poll(&mut reader.events, Some(deadline - now));
        outcome.unwatch();
        if let Err(e) = polled {
            if e.kind() != ErrorKind::Interrupted {
                break Some(format!("poll the socket: {e}"));
            }
        }
    };
    let mut st = shared.state();
    if st.read_slot.generation != generation {
        return true;
    }
    let wake = match failed {
        Some(why) => {
            // Only the producer's thread gives a connection up and connects again.
            st.sending.broken = Some(why);
            true
        }
        None => {
            st.read_slot.reader = Some(reader);
            if let Some(link) = st.sending.link.as_mut() {
                if let Err(why) = link.read_elsewhere(false, &shared.registry) {
                    st.sending.broken = Some(why);
                }
            }
            st.sending.broken.is_some()
        }
    };
    if wake {
        st.io_parked = false;
        drop(st);
        let _ = shared.waker.wake();
    }
    true
}
