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
    decode_response, encode_request, ApiKey, FrameBuffer, Request, RESPONSE_HEADER_BYTES,
};
use mio::{Events, Poll, Registry, Token, Waker};

use super::accumulator::{gave_up, Rules, Stage};
use super::answers::{handle_answers, init_producer_answer, Told, MAX_ANSWER_BYTES};
use super::link::{send_due, Asked, Bump, Link, Sending, SOCKET};
use super::reading::{ReadSlot, Reader};
use super::{ProducerOptions, Shared, State, TopicState};
use crate::client::{connect_failure, open_stream, refusal, server_info};
use crate::error::{ClientError, Result};
use crate::ServerInfo;

/// Bytes a produce frame takes besides its topic and its records, at most: the size, header,
/// target, producer id, sequence and batch length (64), and the batch's own header (61).
pub(crate) const PRODUCE_FRAME_OVERHEAD: usize = 64 + keel_format::batch::HEADER_BYTES;

const WAKE: Token = Token(0);
/// How much a read takes off the socket at least: many answers at once.
const READ_CHUNK: usize = 64 * 1024;
/// Longest topic name, in bytes.
const TOPIC_NAME_BYTES_MAX: usize = 249;

/// The largest batch the server takes, as it said in the handshake: its batch limit, and what
/// fits its largest frame beside the longest topic name. A producer never builds a larger
/// batch, whatever its `batch_bytes` says.
pub(crate) fn batch_limit(info: &ServerInfo) -> usize {
    let frame_room = (info.max_frame_bytes as usize).saturating_sub(
        PRODUCE_FRAME_OVERHEAD + TOPIC_NAME_BYTES_MAX - keel_format::batch::HEADER_BYTES,
    );
    frame_room.min(info.max_batch_bytes as usize)
}

/// The first pause before connecting again, doubled after each failure up to the second.
const RECONNECT_FIRST_PAUSE: Duration = Duration::from_millis(10);
const RECONNECT_LONGEST_PAUSE: Duration = Duration::from_secs(1);

pub(crate) struct Io {
    shared: Arc<Shared>,
    poll: Poll,
    addr: String,
    /// Why the last connection ended, or the last attempt to connect failed.
    last_failure: String,
    /// While disconnected: when to try again, and the pause after that.
    reconnect_at: Instant,
    pause: Duration,
    /// Deliveries finished under the lock, to be told after it is let go.
    told: Told,
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
        let mut read_slot = ReadSlot::default();
        read_slot.connected(reader);
        let rules = Rules {
            linger: options.linger,
            batch_bytes: batch_limit(&info).min(options.batch_bytes),
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
                read_slot,
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
            last_failure: String::new(),
            reconnect_at: Instant::now(),
            pause: RECONNECT_FIRST_PAUSE,
            told: Told::default(),
        };
        Ok((io, shared))
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(8);
        while let Step::Wait(timeout) = self.step() {
            self.told.tell(&self.shared);
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
                self.read_answers();
            }
        }
        self.told.tell(&self.shared);
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
        let unknown_waiting = st
            .queues()
            .any(|q| q.batches.iter().any(|b| b.maybe_stored));
        st.sending
            .bump_epoch_when_due(st.identity, unknown_waiting, now);
        send_due(st, &rules, now);
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
                t.each_active(|_, q| q.expire(&rules, now, &mut expired));
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
            self.told.finish(st, b, Err(e));
        }
    }

    /// Reads everything the socket has and handles each whole answer, unless a sender is
    /// reading them.
    fn read_answers(&mut self) {
        let shared = Arc::clone(&self.shared);
        let Some(mut reader) = shared.state().read_slot.reader.take() else {
            return;
        };
        let read = reader.read_available();
        let mut st = shared.state();
        let handled = handle_answers(&mut st, &shared, &mut reader.input, &mut self.told);
        st.read_slot.reader = Some(reader);
        if let Err(why) = handled.and(read) {
            self.lose_locked(&mut st, why);
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
        if let Some(link) = st.sending.link.take() {
            link.close(&self.shared.registry);
        }
        st.read_slot.disconnected();
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
                    let Some((q, at)) = st.in_flight_batch(&topic, partition, id) else {
                        continue;
                    };
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
                        self.told.finish(st, b, Err(e));
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
                // The handshake used id 1 on the new connection: ids only need to be unique
                // among the requests in flight on it, and there are none yet.
                self.pause = RECONNECT_FIRST_PAUSE;
                let mut st = self.shared.state();
                st.sending.link = Some(link);
                st.read_slot.connected(reader);
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
            self.told.finish(st, b, Err(e.clone()));
        }
        self.told.wake_senders();
    }
}

/// Whether anything is waiting to be sent or answered.
fn has_work(st: &State) -> bool {
    st.queues().any(|q| !q.batches.is_empty())
        || (!st.closing
            && st
                .topics
                .values()
                .any(|t| matches!(t, TopicState::Asking { .. })))
}

/// Whether the producer's thread has work sooner than it planned to wake for: an epoch to
/// change, a partition count to ask for, a connection to give up, or a batch due (a retry's
/// pause, a linger) before its planned wake-up. A thread that changed the state while that
/// thread was parked (a sender reading answers) wakes it then.
pub(crate) fn wanted_sooner(st: &State, rules: &Rules) -> bool {
    if st.sending.bump == Some(Bump::Due) || st.sending.broken.is_some() {
        return true;
    }
    if st
        .topics
        .values()
        .any(|t| matches!(t, TopicState::Asking { sent: false }))
    {
        return true;
    }
    match (next_due(st, rules, None), st.io_wake_at) {
        (Some(due), Some(planned)) => due < planned,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The soonest a partition's batch becomes due, a waiting batch's delivery timeout ends, or
/// the oldest request in flight times out.
fn next_due(st: &State, rules: &Rules, asked_deadline: Option<Instant>) -> Option<Instant> {
    let mut due = asked_deadline;
    let mut sooner = |t: Instant| {
        due = Some(due.map_or(t, |d| d.min(t)));
    };
    for q in st.queues() {
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
    let link = Link::new(mio::net::TcpStream::from_std(stream), registry)?;
    let reader = Reader::new(mio::net::TcpStream::from_std(read_end), input)
        .map_err(|e| format!("poll the socket: {e}"))?;
    Ok((link, reader))
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
