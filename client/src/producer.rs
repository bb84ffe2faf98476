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
use std::time::{Duration, Instant};

use keel_protocol::{
    decode_response, encode_produce_request, encode_request, response_correlation_id, ApiKey,
    FrameBuffer, PartitionTarget, Request, Response, RESPONSE_HEADER_BYTES,
};

use crate::client::{
    ack_of, connect_failure, encode_produce_frames, fits_frames, now_ms, open_stream, refusal,
    server_info,
};
use crate::error::{ClientError, Result};
use crate::idempotence::{Idempotence, Sequencing, IN_FLIGHT_PER_PARTITION_MAX};
use crate::{Ack, BatchBuilder, ClientOptions, ServerInfo, Target};

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
    /// Where it connected (again, after a lost connection, when idempotent).
    addr: String,
    options: Box<ClientOptions>,
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
    /// Set once the connection failed: why. Every later call fails with it, unless the
    /// producer is idempotent and connects again.
    broken: Option<String>,
    /// Producer id, sequences and the requests in flight, when idempotent.
    sequencing: Option<Box<Sequencing>>,
    /// Acks read while waiting for room to send, for [`Producer::next_ack`] to return.
    ready: VecDeque<(u32, Result<Ack>)>,
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
            addr: addr.to_string(),
            options: Box::new(options.clone()),
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
            sequencing: None,
            ready: VecDeque::new(),
        };
        producer.info = producer.handshake()?.map_err(fail)?;
        Ok(producer)
    }

    /// Connects as [`Producer::connect_with`] does, as an idempotent producer: it gets a
    /// producer id from the server and numbers its batches per partition, so that when the
    /// connection is lost it connects again and resends what is in flight, in order, and the
    /// server stores each batch once (answering a repeat with the offsets it first gave). It
    /// sends to explicit partitions ([`Target::Partition`]), at most five requests in flight
    /// per partition (a send waits for an ack past that), and gives up on a request after
    /// [`Idempotence::delivery_timeout`].
    pub fn connect_idempotent(
        addr: impl ToSocketAddrs + std::fmt::Display,
        options: ClientOptions,
        idempotence: Idempotence,
    ) -> Result<Self> {
        let mut producer = Self::connect_with(addr, options)?;
        let (producer_id, epoch) = producer.init_producer()?;
        producer.sequencing = Some(Box::new(Sequencing::new(idempotence, producer_id, epoch)));
        Ok(producer)
    }

    /// The producer id and epoch, when idempotent.
    pub fn identity(&self) -> Option<(i64, i16)> {
        self.sequencing.as_ref().map(|s| (s.producer_id, s.epoch))
    }

    /// Shakes hands on the connection (nothing else in flight): what the server says about
    /// itself, or why it will not do.
    fn handshake(&mut self) -> Result<std::result::Result<ServerInfo, String>> {
        let id = self.take_id();
        let hello = Request::Handshake {
            client: self.options.client_name.clone(),
        };
        encode_request(id, &hello, &mut self.unsent);
        self.in_flight.push_back(id);
        // What the handshake says is judged by the caller, as a failure to connect, not a
        // broken connection.
        let (_, info) = self.next_answer(|frame| {
            Ok(match decode_response(frame, ApiKey::Handshake) {
                Ok((_, Ok(answer))) => server_info(answer),
                Ok((_, Err(e))) => Err(format!("handshake refused: {}", e.message)),
                Err(e) => Err(format!("handshake answer: {e}")),
            })
        })?;
        Ok(info)
    }

    /// A producer id and epoch from the server (nothing else in flight).
    fn init_producer(&mut self) -> Result<(i64, i16)> {
        let id = self.take_id();
        let request = Request::InitProducer {
            producer_id: -1,
            epoch: 0,
        };
        encode_request(id, &request, &mut self.unsent);
        self.in_flight.push_back(id);
        let (_, identity) = self.next_answer(|frame| {
            Ok(match decode_response(frame, ApiKey::InitProducer) {
                Ok((_, Ok(Response::InitProducer { producer_id, epoch }))) => {
                    Ok((producer_id, epoch))
                }
                Ok((_, Ok(other))) => Err(crate::client::unexpected(&other)),
                Ok((_, Err(e))) => Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                }),
                Err(e) => return Err(format!("bad producer id answer: {e}")),
            })
        })?;
        identity
    }

    /// What the server said about itself.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// Requests sent (or queued) whose ack [`Producer::next_ack`] has not returned yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.ready.len()
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
        if self.sequencing.is_some() {
            return match target {
                Target::Partition(p) => self.queue_sequenced(topic, p, values),
                Target::Key(_) => Err(ClientError::Protocol(
                    "an idempotent producer sends to explicit partitions (Target::Partition)"
                        .into(),
                )),
            };
        }
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

    /// An idempotent producer's produce: numbered, kept until answered, and sent once fewer
    /// than [`IN_FLIGHT_PER_PARTITION_MAX`] requests are in flight to the partition.
    fn queue_sequenced<V: AsRef<[u8]>>(
        &mut self,
        topic: &str,
        partition: u32,
        values: impl IntoIterator<Item = V>,
    ) -> Result<u32> {
        let values: Vec<V> = values.into_iter().collect();
        if values.is_empty() {
            return Err(ClientError::Protocol(
                "a produce needs at least one message".into(),
            ));
        }
        while self
            .sequencing
            .as_ref()
            .is_some_and(|s| s.in_flight_to(topic, partition) >= IN_FLIGHT_PER_PARTITION_MAX)
        {
            let answer = self.next_produce_answer()?;
            self.ready.push_back(answer);
        }
        // A lost connection is not checked for here: the request is kept, and sent again
        // with the rest once the producer connects again.
        let id = self.next_id;
        let Some(seq) = self.sequencing.as_mut() else {
            return Err(ClientError::Protocol("not an idempotent producer".into()));
        };
        let (producer_id, epoch) = (seq.producer_id, seq.epoch);
        let first_seq = seq.peek_sequence(topic, partition);
        let mut batch = BatchBuilder::new(now_ms()).producer(producer_id, epoch, first_seq);
        for v in &values {
            batch.push(None, v.as_ref(), &[]);
        }
        let mut frame = Vec::new();
        let target = PartitionTarget::Partition(partition);
        encode_produce_request(
            id,
            topic,
            &target,
            producer_id,
            first_seq,
            &batch,
            &mut frame,
        );
        fits_frames(&[(id, frame.len())], self.info.max_frame_bytes)?;
        seq.take_sequence(topic, partition, values.len());
        self.unsent.extend_from_slice(&frame);
        seq.sent(id, topic, partition, frame);
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
    /// the request timeout ends the connection (a request may have been sent in part); an
    /// idempotent producer then connects again here, resending what is in flight.
    pub fn flush(&mut self) -> Result<()> {
        if let (Some(why), true) = (self.broken.clone(), self.sequencing.is_some()) {
            // Connecting again queues everything in flight to be written here.
            self.reconnect(&why)?;
        }
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
    ///
    /// An idempotent producer whose connection is lost connects again and resends what is in
    /// flight instead, until its delivery timeout runs out.
    pub fn next_ack(&mut self) -> Result<(u32, Result<Ack>)> {
        if let Some(answer) = self.ready.pop_front() {
            return Ok(answer);
        }
        self.next_produce_answer()
    }

    /// The next answer if it has already been read off the socket, without waiting or
    /// writing: after [`Producer::next_ack`], the rest of the burst it came in.
    pub fn ready_ack(&mut self) -> Result<Option<(u32, Result<Ack>)>> {
        if let Some(answer) = self.ready.pop_front() {
            return Ok(Some(answer));
        }
        if self.broken.is_some() && self.sequencing.is_some() {
            // The next wait connects again.
            return Ok(None);
        }
        self.usable()?;
        let answer = self.buffered_answer(produce_outcome)?;
        if let (Some((id, _)), Some(seq)) = (&answer, self.sequencing.as_mut()) {
            seq.answered(*id);
        }
        Ok(answer)
    }

    /// The next produce answer off the socket; an idempotent producer connects again and
    /// resends when the connection is lost.
    fn next_produce_answer(&mut self) -> Result<(u32, Result<Ack>)> {
        loop {
            match self.next_answer(produce_outcome) {
                Ok((id, outcome)) => {
                    if let Some(seq) = self.sequencing.as_mut() {
                        seq.answered(id);
                    }
                    return Ok((id, outcome));
                }
                Err(ClientError::ConnectionLost(why)) if self.sequencing.is_some() => {
                    self.reconnect(&why)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects again (backing off, until the oldest request in flight runs out of time),
    /// shakes hands, and queues every request in flight again, in order, as first sent.
    fn reconnect(&mut self, why: &str) -> Result<()> {
        let Some(seq) = self.sequencing.as_ref() else {
            return Err(ClientError::ConnectionLost(why.to_string()));
        };
        // Nothing in flight: as long as a request just sent would have.
        let deadline = seq
            .deadline()
            .unwrap_or_else(|| Instant::now() + seq.options.delivery_timeout);
        let waiting: Vec<u32> = std::mem::take(&mut self.in_flight).into();
        let mut pause = Duration::from_millis(10);
        loop {
            let now = Instant::now();
            if now >= deadline {
                let timeout = self
                    .sequencing
                    .as_ref()
                    .map_or(Duration::ZERO, |s| s.options.delivery_timeout);
                self.in_flight = waiting.iter().copied().collect();
                return Err(ClientError::ConnectionLost(format!(
                    "{why}; gave up connecting again after the delivery timeout ({timeout:?}): \
                     whether requests {waiting:?} were stored is unknown (each at most once); \
                     every request answered before was stored once"
                )));
            }
            if self.connect_again() {
                let Some(seq) = self.sequencing.as_ref() else {
                    return Err(ClientError::ConnectionLost(why.to_string()));
                };
                for id in &waiting {
                    if let Some(frame) = seq.frame(*id) {
                        self.unsent.extend_from_slice(frame);
                    }
                }
                self.in_flight = waiting.into_iter().collect();
                return Ok(());
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// A new connection to the same address, with the handshake done; false if either fails.
    fn connect_again(&mut self) -> bool {
        let Ok(stream) = open_stream(&self.addr, &self.options) else {
            return false;
        };
        let timeout = Some(self.options.request_timeout.max(Duration::from_millis(1)));
        let timeouts = stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout));
        if timeouts.is_err() {
            return false;
        }
        self.stream = stream;
        self.input = FrameBuffer::new(READ_CHUNK);
        self.unsent.clear();
        self.broken = None;
        match self.handshake() {
            Ok(Ok(info)) => {
                self.info = info;
                true
            }
            _ => false,
        }
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
