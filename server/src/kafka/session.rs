//! A Kafka connection's state, shared by its two threads: the reader decodes requests and
//! hands their appends to the engine ([`Session`]), the writer waits for the engine's answers
//! in request order and writes the responses ([`Waiter`]). Both take tickets from the
//! connection's one completion queue; only the writer waits on it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::{Answer as EngineAnswer, CompletionQueue, Engine, Ticket, Waker};

use super::coordinator::Coordinator;

/// Engine calls one connection may have in flight at once.
const IN_FLIGHT_MAX: usize = 4096;
/// Longest a request waits for the engine before its missing parts are answered as timed out
/// (the engine answers every request; this bounds a wait on a stalled disk).
pub const ENGINE_PATIENCE: Duration = Duration::from_secs(120);
/// How long the reader sleeps before it looks for a free place again.
const PLACE_RETRY: Duration = Duration::from_millis(1);

/// What both threads of a connection share.
pub struct Session {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The address the client reached: the one given to it as the broker's.
    pub advertised: SocketAddr,
    /// The client's address.
    pub peer: SocketAddr,
    /// The classic consumer groups' membership.
    pub coordinator: Arc<Coordinator>,
    /// Where the engine answers this connection's appends and reads.
    queue: Arc<CompletionQueue>,
    last_tag: AtomicU64,
}

impl Session {
    /// A connection's shared state.
    pub fn new(
        engine: Arc<Engine>,
        coordinator: Arc<Coordinator>,
        advertised: SocketAddr,
        peer: SocketAddr,
    ) -> std::io::Result<Self> {
        Ok(Self {
            engine,
            advertised,
            peer,
            coordinator,
            queue: CompletionQueue::new(IN_FLIGHT_MAX, Arc::new(Waker::new()?)),
            last_tag: AtomicU64::new(0),
        })
    }

    /// A ticket for one engine call, and its tag, if a place is free.
    fn try_ticket(&self) -> Option<(u64, Ticket)> {
        let place = self.queue.reserve()?;
        let tag = self.last_tag.fetch_add(1, Ordering::Relaxed) + 1;
        Some((tag, place.ticket(tag)))
    }

    /// A ticket for the reader: it may not wait on the queue (the writer does), so it looks
    /// again after a moment until the writer has taken answers; `None` after
    /// [`ENGINE_PATIENCE`].
    pub fn ticket(&self) -> Option<(u64, Ticket)> {
        let deadline = Instant::now() + ENGINE_PATIENCE;
        loop {
            if let Some(t) = self.try_ticket() {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(PLACE_RETRY);
        }
    }
}

/// The writer's side: the engine's answers as they arrive.
pub struct Waiter {
    queue: Arc<CompletionQueue>,
    /// Answers arrived, not taken yet.
    arrived: HashMap<u64, EngineAnswer>,
    /// Calls no longer waited for (long polls cut short, timed-out appends): their answers
    /// are dropped when they come.
    abandoned: HashSet<u64>,
}

impl Waiter {
    /// The writer's side of `s`.
    pub fn new(s: &Session) -> Self {
        Self {
            queue: Arc::clone(&s.queue),
            arrived: HashMap::new(),
            abandoned: HashSet::new(),
        }
    }

    /// A ticket for the writer, taking answers while every place is in use.
    pub fn ticket(&mut self, s: &Session) -> Option<(u64, Ticket)> {
        let deadline = Instant::now() + ENGINE_PATIENCE;
        loop {
            if let Some(t) = s.try_ticket() {
                return Some(t);
            }
            if !self.take_arrivals(deadline) {
                return None;
            }
        }
    }

    /// Waits for answers until `deadline`; false if none came.
    fn take_arrivals(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut got = Vec::new();
        if self.queue.wait(&mut got, left) == 0 {
            return false;
        }
        for c in got {
            if !self.abandoned.remove(&c.tag) {
                self.arrived.insert(c.tag, c.answer);
            }
        }
        true
    }

    /// Waits until every call in `tags` is answered, or until `done` says enough is there,
    /// or `deadline`.
    pub fn wait_for(&mut self, tags: &[u64], deadline: Instant, done: impl Fn(&Self) -> bool) {
        while !tags.iter().all(|t| self.arrived.contains_key(t)) && !done(self) {
            if !self.take_arrivals(deadline) {
                return;
            }
        }
    }

    /// The answer to call `tag`, if it came.
    pub fn peek(&self, tag: u64) -> Option<&EngineAnswer> {
        self.arrived.get(&tag)
    }

    /// Takes the answer to call `tag`; a call not answered yet is abandoned (its answer will
    /// be dropped).
    pub fn take(&mut self, tag: u64) -> Option<EngineAnswer> {
        let answer = self.arrived.remove(&tag);
        if answer.is_none() {
            self.abandoned.insert(tag);
        }
        answer
    }
}
