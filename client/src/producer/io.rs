//! The producer's network thread: it owns the connection, writes the batches the accumulator
//! lets go, reads the answers, finishes deliveries, and connects again when the connection is
//! lost, resending what was in flight in order.
//!
//! It waits in one `poll` for either the socket or a sender's wake-up (`mio`, the readiness
//! library the Rust ecosystem builds on): a sender that only adds to a batch already planned
//! for does not wake it, so a burst of sends costs the thread one wake-up, and a burst of
//! answers one read.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keel_protocol::{
    decode_response, encode_request, response_correlation_id, ApiKey, ErrorCode, FrameBuffer,
    Request, Response, RESPONSE_HEADER_BYTES,
};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::accumulator::{gave_up, Batch, Rules, Stage};
use super::delivery::Outcome;
use super::link::{Asked, Bump, Link, Sending, SOCKET};
use super::{ProducerOptions, Shared, State, TopicState};
use crate::client::{ack_of, connect_failure, open_stream, refusal, server_info, unexpected};
use crate::error::{ClientError, Result};
use crate::{Ack, ServerInfo};

/// Bytes a produce frame takes besides its topic and its records, at most: the size, header,
/// target, producer id, sequence and batch length (64), and the batch's own header (61).
pub(crate) const PRODUCE_FRAME_OVERHEAD: usize = 64 + keel_format::batch::HEADER_BYTES;

const WAKE: Token = Token(0);
/// How much a read takes off the socket at least: many answers at once.
const READ_CHUNK: usize = 64 * 1024;
/// The producer's answers are small; a larger size prefix is a broken peer, not a reason to
/// allocate.
const MAX_ANSWER_BYTES: u32 = 1 << 20;
/// The first pause before connecting again, doubled after each failure up to the second.
const RECONNECT_FIRST_PAUSE: Duration = Duration::from_millis(10);
const RECONNECT_LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// The connection's reading end, on the producer's thread only.
struct Reader {
    stream: mio::net::TcpStream,
    input: FrameBuffer,
}

pub(crate) struct Io {
    shared: Arc<Shared>,
    poll: Poll,
    addr: String,
    reader: Option<Reader>,
    /// Why the last connection ended, or the last attempt to connect failed.
    last_failure: String,
    /// While disconnected: when to try again, and the pause after that.
    reconnect_at: Instant,
    pause: Duration,
    /// Deliveries finished under the lock, to be told after it is let go.
    done: Vec<(Arc<Outcome>, Result<Ack>)>,
    /// Senders are waiting for room or a partition count that is now there.
    notify: bool,
}

enum Step {
    Wait(Option<Duration>),
    Exit,
}

impl Io {
    /// Connects, shakes hands and, when idempotent, gets a producer id: all on the caller's
    /// thread, so that a producer that cannot work fails to connect.
    pub fn connect(
        addr: &(impl std::net::ToSocketAddrs + std::fmt::Display),
        options: ProducerOptions,
    ) -> Result<(Self, Arc<Shared>)> {
        let fail = connect_failure(addr);
        let (mut stream, mut input, info) = open(addr, &options)?;
        let identity = if options.idempotence {
            let asked = Request::InitProducer {
                producer_id: -1,
                epoch: 0,
            };
            Some(exchange(
                &mut stream,
                &mut input,
                2,
                &asked,
                init_producer_answer,
            )?)
        } else {
            None
        };
        let poll = Poll::new().map_err(|e| fail(format!("create a poll: {e}")))?;
        let waker =
            Waker::new(poll.registry(), WAKE).map_err(|e| fail(format!("create a waker: {e}")))?;
        let registry = poll
            .registry()
            .try_clone()
            .map_err(|e| fail(format!("share the poll: {e}")))?;
        let (link, reader) = into_link(stream, input, &registry).map_err(&fail)?;
        let rules = Rules {
            linger: options.linger,
            batch_bytes: options.batch_bytes,
            in_flight_max: options.in_flight_per_partition,
            delivery_timeout: options.delivery_timeout,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                topics: HashMap::new(),
                buffered: 0,
                closing: false,
                hurry: 0,
                stopped: None,
                io_parked: false,
                io_wake_at: None,
                senders_waiting: 0,
                stats: Default::default(),
                sticky_seed: random_u32(),
                identity,
                // 1 and 2 went to the handshake and the producer id.
                sending: Sending::new(link, 2),
            }),
            changed: Condvar::new(),
            waker,
            registry,
            options,
            rules,
            info,
        });
        let io = Self {
            shared: Arc::clone(&shared),
            poll,
            addr: addr.to_string(),
            reader: Some(reader),
            last_failure: String::new(),
            reconnect_at: Instant::now(),
            pause: RECONNECT_FIRST_PAUSE,
            done: Vec::new(),
            notify: false,
        };
        Ok((io, shared))
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(8);
        while let Step::Wait(timeout) = self.step() {
            self.tell();
            let written = {
                let mut st = self.shared.state();
                st.sending.write(&self.shared.registry)
            };
            if let Err(why) = written {
                self.lose(why);
                continue;
            }
            events.clear();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    self.stop(format!("its poll failed: {e}"));
                }
                continue;
            }
            let readable = events
                .iter()
                .any(|e| e.token() == SOCKET && (e.is_readable() || e.is_error()));
            if readable {
                if let Err(why) = self.read_answers() {
                    self.lose(why);
                }
            }
        }
        self.tell();
    }

    /// Under the lock: gives up on what is too old, asks for partition counts, sends what
    /// may go; says how long to wait, or that there is nothing left to do.
    fn step(&mut self) -> Step {
        let shared = Arc::clone(&self.shared);
        let rules = shared.rules;
        let now = Instant::now();
        let mut st = shared.state();
        st.io_parked = false;
        if let Some(e) = st.stopped.clone() {
            self.fail_everything(&mut st, &e);
            return Step::Exit;
        }
        self.expire(&mut st, now);
        if let Some(why) = st.sending.broken.take() {
            self.lose_locked(&mut st, why);
        }
        if let Some(oldest) = st.sending.asked.values().map(Asked::sent).min() {
            let timeout = shared.options.connection.request_timeout;
            if now >= oldest + timeout {
                self.lose_locked(
                    &mut st,
                    format!("no answer within the request timeout ({timeout:?})"),
                );
            }
        }
        let has_work = has_work(&st);
        if st.closing && !has_work && st.sending.asked.is_empty() {
            return Step::Exit;
        }
        if st.sending.link.is_none() {
            if !has_work {
                return self.park(&mut st, None, now);
            }
            if now < self.reconnect_at {
                let at = Some(self.reconnect_at);
                return self.park(&mut st, at, now);
            }
            drop(st);
            self.reconnect();
            return Step::Wait(Some(Duration::ZERO));
        }
        let st = &mut *st;
        st.sending.ask_partition_counts(&mut st.topics, now);
        let unknown_waiting = queues(st).any(|q| q.batches.iter().any(|b| b.maybe_stored));
        st.sending
            .bump_epoch_when_due(st.identity, unknown_waiting, now);
        let hurry = st.hurry > 0 || st.closing;
        let (mut sent, mut resent) = (0, 0);
        for t in st.topics.values_mut() {
            let TopicState::Known(t) = t else { continue };
            for (p, q) in t.partitions.iter_mut().enumerate() {
                let (s, r) = st.sending.send_partition(
                    &t.name,
                    p as u32,
                    q,
                    &rules,
                    now,
                    hurry,
                    st.identity,
                );
                sent += s;
                resent += r;
            }
        }
        st.stats.requests += sent;
        st.stats.resends += resent;
        // A sender may put a request in flight while this thread is parked, without waking
        // it: looking again within a request timeout bounds how late a silent server is
        // noticed.
        let timeout = shared.options.connection.request_timeout;
        let due = next_due(st, &rules, self.oldest_asked(st, &shared))
            .map_or(now + timeout, |d| d.min(now + timeout));
        self.park(st, Some(due), now)
    }

    /// Records when the thread means to wake, for senders to judge whether to wake it.
    fn park(&mut self, st: &mut State, due: Option<Instant>, now: Instant) -> Step {
        st.io_parked = true;
        st.io_wake_at = due;
        Step::Wait(due.map(|d| d.saturating_duration_since(now)))
    }

    fn oldest_asked(&self, st: &State, shared: &Shared) -> Option<Instant> {
        let oldest = st.sending.asked.values().map(Asked::sent).min()?;
        Some(oldest + shared.options.connection.request_timeout)
    }

    fn expire(&mut self, st: &mut State, now: Instant) {
        let rules = self.shared.rules;
        let mut expired = Vec::new();
        for t in st.topics.values_mut() {
            if let TopicState::Known(t) = t {
                for q in &mut t.partitions {
                    q.expire(&rules, now, &mut expired);
                }
            }
        }
        for b in expired {
            let unconnected = st
                .sending
                .link
                .is_none()
                .then_some(self.last_failure.as_str());
            let e = gave_up(rules.delivery_timeout, &b, unconnected);
            if self.shared.options.idempotence && b.sequence.is_some() && !b.maybe_stored {
                // Its sequence was given and it was never stored: the batches after it need
                // a new epoch to be stored.
                st.sending.bump.get_or_insert(Bump::Due);
            }
            self.finish(st, b, Err(e));
        }
    }

    /// Reads everything the socket has and handles each whole answer.
    fn read_answers(&mut self) -> std::result::Result<(), String> {
        let Some(mut conn) = self.reader.take() else {
            return Ok(());
        };
        let read = read_available(&mut conn);
        let shared = Arc::clone(&self.shared);
        let mut st = shared.state();
        let handled = (|| {
            while let Some(len) = conn
                .input
                .next_frame_len(RESPONSE_HEADER_BYTES, MAX_ANSWER_BYTES)
                .map_err(|e| format!("bad answer: {e}"))?
            {
                let frame = &conn.input.pending()[..len];
                if let Some(why) = refusal(frame) {
                    return Err(why);
                }
                let id = response_correlation_id(frame).map_err(|e| format!("bad answer: {e}"))?;
                let asked = st
                    .sending
                    .asked
                    .remove(&id)
                    .ok_or_else(|| format!("an answer to no request in flight ({id})"))?;
                self.answer(&mut st, id, asked, frame)?;
                conn.input.consume(len);
            }
            Ok(())
        })();
        self.reader = Some(conn);
        match handled.and(read) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.lose_locked(&mut st, why);
                Ok(())
            }
        }
    }

    /// Handles the answer `frame` to request `id`, which asked `asked`.
    fn answer(
        &mut self,
        st: &mut State,
        id: u32,
        asked: Asked,
        frame: &[u8],
    ) -> std::result::Result<(), String> {
        match asked {
            Asked::Produce {
                topic, partition, ..
            } => {
                let answer = match decode_response(frame, ApiKey::Produce) {
                    Ok((_, Ok(r))) => Ok(ack_of(r).map_err(|e| e.to_string())?),
                    Ok((_, Err(e))) => Err((e.code, e.message)),
                    Err(e) => return Err(format!("bad produce answer: {e}")),
                };
                self.produce_answered(st, &topic, partition, id, answer);
            }
            Asked::Metadata { topic, .. } => {
                let known = match decode_response(frame, ApiKey::Metadata) {
                    Ok((_, Ok(Response::Metadata { partitions }))) => Ok(partitions),
                    Ok((_, Ok(other))) => return Err(unexpected(&other).to_string()),
                    Ok((_, Err(e))) => Err(ClientError::Server {
                        code: e.code,
                        message: e.message,
                    }),
                    Err(e) => return Err(format!("bad metadata answer: {e}")),
                };
                let state = match known {
                    Ok(n) => TopicState::Known(super::TopicQueues::new(&topic, n, st.sticky_seed)),
                    Err(e) => TopicState::Failed(e),
                };
                st.topics.insert(topic, state);
                self.notify = true;
            }
            Asked::InitProducer { .. } => match init_producer_answer(frame) {
                Ok(Ok(identity)) => {
                    st.identity = Some(identity);
                    for t in st.topics.values_mut() {
                        if let TopicState::Known(t) = t {
                            t.partitions.iter_mut().for_each(|q| q.renumber());
                        }
                    }
                    st.sending.bump = None;
                }
                Ok(Err(e)) => st.stopped = Some(e),
                Err(why) => return Err(why),
            },
        }
        Ok(())
    }

    /// A produce answer: the batch is finished, waits to be sent again, or fails.
    fn produce_answered(
        &mut self,
        st: &mut State,
        topic: &str,
        partition: u32,
        id: u32,
        answer: std::result::Result<Ack, (ErrorCode, String)>,
    ) {
        let now = Instant::now();
        let idempotent = self.shared.options.idempotence;
        let backoff = self.shared.options.retry_backoff;
        let Some(TopicState::Known(t)) = st.topics.get_mut(topic) else {
            return;
        };
        let Some(q) = t.partitions.get_mut(partition as usize) else {
            return;
        };
        let Some(at) = q.find(id) else {
            return;
        };
        let (code, message) = match answer {
            Ok(ack) => {
                if let Some(b) = q.batches.remove(at) {
                    self.finish(st, b, Ok(ack));
                }
                return;
            }
            Err(refused) => refused,
        };
        let b = &mut q.batches[at];
        b.maybe_stored = false;
        b.last_refusal = Some(format!("the server refused it ({code:?}): {message}"));
        if retriable(code) {
            b.stage = Stage::Waiting;
            b.retry_at = Some(now + backoff);
            return;
        }
        if code == ErrorCode::OutOfOrderSequence && idempotent {
            // Nothing of it was stored. It goes again after the batch before it, if that one
            // is to be sent again; otherwise that one is lost for good, and a new epoch lets
            // this one be stored.
            b.stage = Stage::Waiting;
            b.retry_at = Some(now + backoff);
            let seq = b.sequence.unwrap_or(0);
            if !q.earlier_pending(seq, at) {
                st.sending.bump.get_or_insert(Bump::Due);
            }
            return;
        }
        if code == ErrorCode::ProducerFenced {
            st.stopped = Some(ClientError::Server {
                code,
                message: format!(
                    "{message} (another producer took over this producer id; this one stops)"
                ),
            });
            return;
        }
        let numbered = b.sequence.is_some();
        if let Some(b) = q.batches.remove(at) {
            if idempotent && numbered {
                st.sending.bump.get_or_insert(Bump::Due);
            }
            self.finish(st, b, Err(ClientError::Server { code, message }));
        }
    }

    /// The connection is lost: what was in flight waits to be sent again (idempotent) or
    /// fails with its outcome unknown.
    fn lose(&mut self, why: String) {
        let shared = Arc::clone(&self.shared);
        let mut st = shared.state();
        self.lose_locked(&mut st, why);
    }

    fn lose_locked(&mut self, st: &mut State, why: String) {
        if let Some(mut link) = st.sending.link.take() {
            let _ = self.shared.registry.deregister(link.stream_mut());
            let _ = link.stream_mut().shutdown(std::net::Shutdown::Both);
        }
        self.reader = None;
        st.sending.broken = None;
        self.last_failure = format!("the connection was lost: {why}");
        let idempotent = self.shared.options.idempotence;
        let mut asked: Vec<(u32, Asked)> = st.sending.asked.drain().collect();
        // Oldest first, so that what fails fails in order.
        asked.sort_by_key(|(id, a)| (a.sent(), *id));
        for (id, a) in asked {
            match a {
                Asked::Produce {
                    topic, partition, ..
                } => {
                    let Some(TopicState::Known(t)) = st.topics.get_mut(&*topic) else {
                        continue;
                    };
                    let Some(q) = t.partitions.get_mut(partition as usize) else {
                        continue;
                    };
                    let Some(at) = q.find(id) else { continue };
                    if idempotent {
                        let b = &mut q.batches[at];
                        b.stage = Stage::Waiting;
                        b.maybe_stored = true;
                        b.last_refusal = Some(format!("the connection was lost: {why}"));
                    } else if let Some(b) = q.batches.remove(at) {
                        let e = ClientError::ConnectionLost(format!(
                            "{why}; whether the message was stored is unknown (the producer \
                             is not idempotent, so it is not sent again)"
                        ));
                        self.finish(st, b, Err(e));
                    }
                }
                Asked::Metadata { topic, .. } => {
                    st.topics.insert(topic, TopicState::Asking { sent: false });
                }
                Asked::InitProducer { .. } => st.sending.bump = Some(Bump::Due),
            }
        }
        self.reconnect_at = Instant::now();
    }

    /// Connects again (the handshake included), or plans the next try.
    fn reconnect(&mut self) {
        let opened = open(&self.addr, &self.shared.options).and_then(|(stream, input, _)| {
            into_link(stream, input, &self.shared.registry).map_err(ClientError::ConnectionLost)
        });
        match opened {
            Ok((link, reader)) => {
                self.reader = Some(reader);
                // The handshake used id 1 on the new connection: ids only need to be unique
                // among the requests in flight on it, and there are none yet.
                self.pause = RECONNECT_FIRST_PAUSE;
                let mut st = self.shared.state();
                st.sending.link = Some(link);
                st.stats.reconnections += 1;
            }
            Err(e) => {
                self.last_failure = e.to_string();
                self.reconnect_at = Instant::now() + self.pause;
                self.pause = (self.pause * 2).min(RECONNECT_LONGEST_PAUSE);
            }
        }
    }

    /// Stops the producer for good: everything it holds fails with `why`.
    fn stop(&mut self, why: String) {
        let shared = Arc::clone(&self.shared);
        let mut st = shared.state();
        st.stopped
            .get_or_insert(ClientError::ProducerStopped(why.clone()));
    }

    fn fail_everything(&mut self, st: &mut State, e: &ClientError) {
        let mut all = Vec::new();
        for t in st.topics.values_mut() {
            if let TopicState::Known(t) = t {
                for q in &mut t.partitions {
                    all.extend(q.batches.drain(..));
                }
            }
        }
        for b in all {
            self.finish(st, b, Err(e.clone()));
        }
        self.notify = true;
    }

    /// Takes `b`'s bytes off the buffer and keeps its answer for [`Io::tell`].
    fn finish(&mut self, st: &mut State, b: Batch, answer: Result<Ack>) {
        st.buffered = st.buffered.saturating_sub(b.bytes);
        if st.senders_waiting > 0 {
            self.notify = true;
        }
        self.done.push((b.outcome, answer));
    }

    /// Finishes the deliveries decided under the lock, and wakes waiting senders.
    fn tell(&mut self) {
        for (outcome, answer) in self.done.drain(..) {
            outcome.finish(answer);
        }
        if std::mem::take(&mut self.notify) {
            self.shared.changed.notify_all();
        }
    }
}

/// Refusals that a later try may not get: the server is busy, stopping, or out of space
/// (retention or an operator may free some within the delivery timeout).
fn retriable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Busy | ErrorCode::ShuttingDown | ErrorCode::NoSpace
    )
}

/// Whether anything is waiting to be sent or answered.
fn has_work(st: &State) -> bool {
    queues(st).any(|q| !q.batches.is_empty())
        || (!st.closing
            && st
                .topics
                .values()
                .any(|t| matches!(t, TopicState::Asking { .. })))
}

fn queues(st: &State) -> impl Iterator<Item = &super::accumulator::PartitionQueue> {
    st.topics
        .values()
        .filter_map(|t| match t {
            TopicState::Known(t) => Some(t),
            _ => None,
        })
        .flat_map(|t| t.partitions.iter())
}

/// The soonest a partition's batch becomes due, a waiting batch's delivery timeout ends, or
/// the oldest request in flight times out.
fn next_due(st: &State, rules: &Rules, asked_deadline: Option<Instant>) -> Option<Instant> {
    let mut due = asked_deadline;
    let mut sooner = |t: Instant| {
        due = Some(due.map_or(t, |d| d.min(t)));
    };
    for q in queues(st) {
        if let Some(t) = q.next_due(rules) {
            sooner(t);
        }
        if let Some(b) = q.batches.iter().find(|b| b.stage == Stage::Waiting) {
            sooner(b.created + rules.delivery_timeout);
        }
    }
    due
}

/// Opens a connection and shakes hands on it (request id 1), blocking, with timeouts.
fn open(
    addr: &(impl std::net::ToSocketAddrs + std::fmt::Display),
    options: &ProducerOptions,
) -> Result<(std::net::TcpStream, FrameBuffer, ServerInfo)> {
    let fail = connect_failure(addr);
    let mut stream = open_stream(addr, &options.connection)?;
    let timeout = Some(
        options
            .connection
            .request_timeout
            .max(Duration::from_millis(1)),
    );
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| fail(format!("set the socket's timeouts: {e}")))?;
    let mut input = FrameBuffer::new(READ_CHUNK);
    let hello = Request::Handshake {
        client: options.connection.client_name.clone(),
    };
    let info = exchange(&mut stream, &mut input, 1, &hello, |frame| {
        Ok(match decode_response(frame, ApiKey::Handshake) {
            Ok((_, Ok(answer))) => server_info(answer).map_err(&fail),
            Ok((_, Err(e))) => Err(fail(format!("handshake refused: {}", e.message))),
            Err(e) => Err(fail(format!("handshake answer: {e}"))),
        })
    })?;
    Ok((stream, input, info))
}

/// The producer id and epoch an InitProducer answer gives, or the server's refusal.
fn init_producer_answer(frame: &[u8]) -> std::result::Result<Result<(i64, i16)>, String> {
    match decode_response(frame, ApiKey::InitProducer) {
        Ok((_, Ok(Response::InitProducer { producer_id, epoch }))) => Ok(Ok((producer_id, epoch))),
        Ok((_, Ok(other))) => Err(unexpected(&other).to_string()),
        Ok((_, Err(e))) => Ok(Err(ClientError::Server {
            code: e.code,
            message: e.message,
        })),
        Err(e) => Err(format!("bad producer id answer: {e}")),
    }
}

/// Sends `request` as `id` on a blocking connection with nothing else in flight and returns
/// what `decode` makes of its answer.
fn exchange<T>(
    stream: &mut std::net::TcpStream,
    input: &mut FrameBuffer,
    id: u32,
    request: &Request<'_>,
    decode: impl Fn(&[u8]) -> std::result::Result<Result<T>, String>,
) -> Result<T> {
    let lost = ClientError::ConnectionLost;
    let mut frame = Vec::new();
    encode_request(id, request, &mut frame);
    stream
        .write_all(&frame)
        .map_err(|e| lost(format!("send failed: {e}")))?;
    loop {
        let len = input
            .next_frame_len(RESPONSE_HEADER_BYTES, MAX_ANSWER_BYTES)
            .map_err(|e| lost(format!("bad answer: {e}")))?;
        if let Some(len) = len {
            let frame = &input.pending()[..len];
            if let Some(why) = refusal(frame) {
                return Err(lost(why));
            }
            let answer = decode(frame).map_err(ClientError::Protocol)?;
            input.consume(len);
            return answer;
        }
        match stream.read(input.make_room()) {
            Ok(0) => return Err(lost("the server closed the connection".into())),
            Ok(n) => input.filled(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout(Duration::ZERO));
            }
            Err(e) => return Err(lost(format!("read failed: {e}"))),
        }
    }
}

/// The blocking connection, made non-blocking: its writing end, registered with the poll,
/// and its reading end (a clone of the same socket).
fn into_link(
    stream: std::net::TcpStream,
    input: FrameBuffer,
    registry: &Registry,
) -> std::result::Result<(Link, Reader), String> {
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("make the socket non-blocking: {e}"))?;
    let read_end = stream
        .try_clone()
        .map_err(|e| format!("clone the socket: {e}"))?;
    let mut stream = mio::net::TcpStream::from_std(stream);
    registry
        .register(&mut stream, SOCKET, Interest::READABLE)
        .map_err(|e| format!("poll the socket: {e}"))?;
    let reader = Reader {
        stream: mio::net::TcpStream::from_std(read_end),
        input,
    };
    Ok((Link::new(stream), reader))
}

/// Reads until the socket has nothing more (the poll reports only changes).
fn read_available(conn: &mut Reader) -> std::result::Result<(), String> {
    loop {
        match conn.stream.read(conn.input.make_room()) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => conn.input.filled(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// A number that differs between producers, to spread their first keyless partitions.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}
