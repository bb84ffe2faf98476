//! A pipelined producer that owns its connection and reads its acks on the caller's thread.
//!
//! [`Client`](crate::Client) serves any number of threads: a reader thread takes each answer
//! off the socket and hands it over through a channel, which wakes the thread waiting for it.
//! A thread that does nothing but produce pays for two wake-ups per burst of acks there (the
//! reader's, then its own), and a durable server answers in bursts, one per flush. A
//! [`Producer`] reads its answers itself, when it asks for the next one: one wake-up per
//! burst, no channel, no lock.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use keel_protocol::{
    decode_response, encode_request, response_correlation_id, ApiKey, FrameBuffer, Request,
    RESPONSE_HEADER_BYTES,
};

use crate::client::{
    ack_of, connect_failure, encode_produce_frames, fits_frames, open_stream, refusal, server_info,
};
use crate::error::{ClientError, Result};
use crate::{Ack, ClientOptions, ServerInfo, Target};

/// How much a read takes off the socket at least: many acks at once.
const READ_CHUNK: usize = 64 * 1024;
/// Produce and handshake answers are small; a larger size prefix is a broken peer, not a
/// reason to allocate.
const MAX_ANSWER_BYTES: u32 = 1 << 20;

/// A connection for one thread that produces: requests are queued and written together, and
/// their acks are read in the order they arrive with [`Producer::next_ack`]. Each request is
/// known by the id its send returned.
///
/// ```no_run
/// use keel_client::{Producer, Target};
/// # fn main() -> Result<(), keel_client::ClientError> {
/// let mut producer = Producer::connect("127.0.0.1:7070")?;
/// let first = producer.queue_values("events", Target::Partition(0), ["a", "b"])?;
/// let second = producer.queue_values("events", Target::Partition(0), ["c"])?;
/// // Both go out with one write; each ack comes once its batch is durable.
/// while producer.in_flight() > 0 {
///     let (id, ack) = producer.next_ack()?;
///     let ack = ack?;
///     println!("request {id}: offsets {}..={}", ack.first_offset, ack.last_offset);
/// }
/// # let _ = (first, second);
/// # Ok(()) }
/// ```
pub struct Producer {
    stream: TcpStream,
    input: FrameBuffer,
    /// Frames queued and not yet written.
    unsent: Vec<u8>,
    spans: Vec<(u32, usize)>,
    /// Ids of the requests sent and not yet answered, oldest first.
    in_flight: VecDeque<u32>,
    next_id: u32,
    info: ServerInfo,
    timeout: Duration,
    /// Set once the connection failed: why. Every later call fails with it.
    broken: Option<String>,
}

impl Producer {
    /// Connects with default options and shakes hands.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<Self> {
        Self::connect_with(addr, ClientOptions::default())
    }

    /// Connects and shakes hands: fails if the server does not speak the versions this
    /// client needs. [`ClientOptions::request_timeout`] bounds each wait in
    /// [`Producer::next_ack`].
    pub fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Display,
        options: ClientOptions,
    ) -> Result<Self> {
        let fail = connect_failure(&addr);
        let stream = open_stream(&addr, &options)?;
        // A write that cannot finish within the timeout leaves a frame half sent: the
        // connection is given up then (see `flush`).
        let timeout = Some(options.request_timeout.max(Duration::from_millis(1)));
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| fail(format!("set the socket's timeouts: {e}")))?;
        let mut producer = Self {
            stream,
            input: FrameBuffer::new(READ_CHUNK),
            unsent: Vec::new(),
            spans: Vec::new(),
            in_flight: VecDeque::new(),
            next_id: 1,
            info: ServerInfo {
                server: String::new(),
                max_frame_bytes: keel_protocol::DEFAULT_MAX_FRAME_BYTES,
            },
            timeout: options.request_timeout,
            broken: None,
        };
        let id = producer.take_id();
        let hello = Request::Handshake {
            client: options.client_name.clone(),
        };
        encode_request(id, &hello, &mut producer.unsent);
        producer.in_flight.push_back(id);
        // What the handshake says is judged here, as a failure to connect, not a broken
        // connection.
        let (_, info) = producer.next_answer(|frame| {
            Ok(match decode_response(frame, ApiKey::Handshake) {
                Ok((_, Ok(answer))) => server_info(answer),
                Ok((_, Err(e))) => Err(format!("handshake refused: {}", e.message)),
                Err(e) => Err(format!("handshake answer: {e}")),
            })
        })?;
        producer.info = info.map_err(fail)?;
        Ok(producer)
    }

    /// What the server said about itself.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// Requests sent (or queued) and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues `values` as one produce request (with the target's key, if it has one) and
    /// returns its id; it is written with the next [`Producer::flush`], or before the next
    /// wait for an ack. Nothing is queued if `values` is empty or the request is over the
    /// server's largest frame.
    pub fn queue_values<V: AsRef<[u8]>>(
        &mut self,
        topic: &str,
        target: Target<'_>,
        values: impl IntoIterator<Item = V>,
    ) -> Result<u32> {
        self.usable()?;
        let before = self.unsent.len();
        self.spans.clear();
        let id = self.next_id;
        let encoded = encode_produce_frames(
            topic,
            target,
            [values],
            || id,
            &mut self.unsent,
            &mut self.spans,
        )
        .and_then(|()| fits_frames(&self.spans, self.info.max_frame_bytes));
        if let Err(e) = encoded {
            self.unsent.truncate(before);
            return Err(e);
        }
        self.take_id();
        self.in_flight.push_back(id);
        Ok(id)
    }

    /// Queues `values` as one produce request and writes everything queued.
    pub fn send_values<V: AsRef<[u8]>>(
        &mut self,
        topic: &str,
        target: Target<'_>,
        values: impl IntoIterator<Item = V>,
    ) -> Result<u32> {
        let id = self.queue_values(topic, target, values)?;
        self.flush()?;
        Ok(id)
    }

    /// Writes every queued request, with one write. A write that fails or takes longer than
    /// the request timeout ends the connection (a request may have been sent in part).
    pub fn flush(&mut self) -> Result<()> {
        self.usable()?;
        if self.unsent.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(&self.unsent);
        self.unsent.clear();
        written.map_err(|e| self.break_off(format!("send failed: {e}")))
    }

    /// Writes what is queued, then waits for the next answer (at most the request timeout)
    /// and returns the id of the request it answers with its outcome: the ack, or the
    /// server's error for that request. Fails if nothing is in flight, on a timeout (the
    /// requests stay in flight), and once the connection is lost (then the outcome of every
    /// request in flight is unknown).
    pub fn next_ack(&mut self) -> Result<(u32, Result<Ack>)> {
        self.next_answer(produce_outcome)
    }

    /// The next answer if it has already been read off the socket, without waiting or
    /// writing: after [`Producer::next_ack`], the rest of the burst it came in.
    pub fn ready_ack(&mut self) -> Result<Option<(u32, Result<Ack>)>> {
        self.usable()?;
        self.buffered_answer(produce_outcome)
    }

    /// Flushes, then reads until a whole answer to a request in flight is in; returns its id
    /// and what `decode` made of it.
    fn next_answer<T>(&mut self, decode: impl Fn(&[u8]) -> Decoded<T>) -> Result<(u32, T)> {
        if self.in_flight.is_empty() {
            return Err(ClientError::Protocol("no request is in flight".into()));
        }
        self.flush()?;
        loop {
            if let Some(answer) = self.buffered_answer(&decode)? {
                return Ok(answer);
            }
            match self.stream.read(self.input.make_room()) {
                Ok(0) => return Err(self.break_off("the server closed the connection".into())),
                Ok(n) => self.input.filled(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ClientError::Timeout(self.timeout));
                }
                Err(e) => return Err(self.break_off(format!("read failed: {e}"))),
            }
        }
    }

    /// The whole answer at the front of what has been read, if there is one: the id of the
    /// request in flight it answers, and what `decode` made of it, read where it lies.
    fn buffered_answer<T>(
        &mut self,
        decode: impl Fn(&[u8]) -> Decoded<T>,
    ) -> Result<Option<(u32, T)>> {
        let len = match self
            .input
            .next_frame_len(RESPONSE_HEADER_BYTES, MAX_ANSWER_BYTES)
        {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.break_off(format!("bad answer: {e}"))),
        };
        let frame = &self.input.pending()[..len];
        if let Some(why) = refusal(frame) {
            return Err(self.break_off(why));
        }
        let read = response_correlation_id(frame)
            .map_err(|e| format!("bad answer: {e}"))
            .and_then(|id| decode(frame).map(|answer| (id, answer)));
        self.input.consume(len);
        let (id, answer) = read.map_err(|why| self.break_off(why))?;
        // Answers come in the order their batches became durable: almost always the oldest
        // request's first.
        let Some(at) = self.in_flight.iter().position(|&w| w == id) else {
            return Err(self.break_off(format!("an answer to no request in flight ({id})")));
        };
        self.in_flight.remove(at);
        Ok(Some((id, answer)))
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        // Id 0 is the server's own (an unasked refusal): never a request's.
        self.next_id = id.checked_add(1).unwrap_or(1);
        id
    }

    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(ClientError::ConnectionLost(why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the connection unusable; the error to return.
    fn break_off(&mut self, why: String) -> ClientError {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.broken.get_or_insert_with(|| why.clone());
        ClientError::ConnectionLost(why)
    }
}

/// What an answer frame says; `Err`: why the frame cannot be read, which ends the connection.
type Decoded<T> = std::result::Result<T, String>;

/// A produce answer: the ack, or the server's error for that request.
fn produce_outcome(frame: &[u8]) -> Decoded<Result<Ack>> {
    match decode_response(frame, ApiKey::Produce) {
        Ok((_, Ok(response))) => Ok(ack_of(response)),
        Ok((_, Err(e))) => Ok(Err(ClientError::Server {
            code: e.code,
            message: e.message,
        })),
        Err(e) => Err(format!("bad produce answer: {e}")),
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("server", &self.info.server)
            .field("in_flight", &self.in_flight.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}
