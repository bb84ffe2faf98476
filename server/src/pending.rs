//! Requests the engine is working on, kept until their completion records come back: the
//! engine answers with a tag and an outcome ([`keel_engine::Completion`]), and the thread that
//! drains the records turns each into its client's answer. No server code runs on a shard.
//!
//! A network loop keeps its own requests and drains its own queue ([`LoopPending`]); with
//! `--portable-io`, the connections' reader threads share one table, drained by one thread
//! ([`SharedPending`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_engine::{Answer, Completion, CompletionQueue, Reservation, Ticket, Waker};
use keel_protocol::{ErrorCode, Response};
use slab::Slab;

use crate::budget::BudgetHold;
use crate::reply::Reply;

/// How often a reader waiting for a free place looks again on its own (a safety net: the
/// answering thread wakes it).
const ROOM_RECHECK: Duration = Duration::from_millis(100);

/// Which answer a request gets.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// A produce to `partition`.
    Produced {
        /// The partition written.
        partition: u32,
    },
    /// A fetch.
    Fetched,
    /// A consume.
    Consumed,
    /// An ack.
    Acked,
    /// A nack.
    Nacked,
}

/// A request waiting for the engine.
pub struct Waiting {
    /// Where its answer goes.
    pub reply: Reply,
    /// What its answer is.
    pub then: Then,
    /// The shard budget it holds until the engine has answered.
    pub shard_hold: Option<BudgetHold>,
}

impl Waiting {
    /// Answers the client with the engine's answer.
    fn answer(self, answer: Answer) {
        let Self {
            reply,
            then,
            shard_hold,
        } = self;
        // The engine is done with the request: its shard budget goes back first.
        drop(shard_hold);
        match (then, answer) {
            (Then::Produced { partition }, Answer::Appended(Ok(range))) => {
                reply.ok(&Response::Produce {
                    partition,
                    first_offset: range.first,
                    last_offset: range.last,
                });
            }
            (Then::Fetched, Answer::Read(Ok(res))) => reply.fetched(res),
            (Then::Consumed, Answer::Consumed(Ok(parts))) => reply.consumed(parts),
            (Then::Acked, Answer::Settled(Ok(()))) => reply.ok(&Response::Ack),
            (Then::Nacked, Answer::Settled(Ok(()))) => reply.ok(&Response::Nack),
            (Then::Produced { .. }, Answer::Appended(Err(e)))
            | (Then::Fetched, Answer::Read(Err(e))) => reply.engine_error(&e),
            (Then::Consumed, Answer::Consumed(Err(e)))
            | (Then::Acked | Then::Nacked, Answer::Settled(Err(e))) => reply.engine_error(&e),
            (then, other) => {
                log::error!("the engine answered a {then:?} request with {other:?}");
                reply.error(
                    ErrorCode::Internal,
                    "the engine gave an answer of the wrong kind",
                );
            }
        }
    }
}

/// Where requests wait for the engine.
pub trait Tickets {
    /// A place for one more request; `None` when there is none now (the connection stops
    /// reading until answers come back).
    fn reserve(&mut self) -> Option<Reservation>;
    /// Keeps `waiting` in `place`, and gives the ticket the engine answers it through.
    fn ticket(&mut self, place: Reservation, waiting: Waiting) -> Ticket;
}

/// The requests of one network loop, kept and answered on the loop's thread.
pub struct LoopPending {
    queue: Arc<CompletionQueue>,
    waiting: Slab<Waiting>,
    drained: Vec<Completion>,
}

impl LoopPending {
    /// An empty table for up to `capacity` requests, whose answers ring `waker`.
    pub fn new(capacity: usize, waker: Arc<Waker>) -> Self {
        Self {
            queue: CompletionQueue::new(capacity, waker),
            waiting: Slab::new(),
            drained: Vec::new(),
        }
    }

    /// Whether answers wait to be taken.
    pub fn has_ready(&self) -> bool {
        self.queue.has_ready()
    }

    /// Answers every request the engine has finished; returns how many.
    pub fn answer_ready(&mut self) -> usize {
        let n = self.queue.drain(&mut self.drained);
        for c in self.drained.drain(..) {
            if let Some((w, answer)) = take(&mut self.waiting, c) {
                w.answer(answer);
            }
        }
        n
    }
}

impl Tickets for LoopPending {
    fn reserve(&mut self) -> Option<Reservation> {
        self.queue.reserve()
    }

    fn ticket(&mut self, place: Reservation, waiting: Waiting) -> Ticket {
        place.ticket(self.waiting.insert(waiting) as u64)
    }
}

/// The request `c` answers, taken out of `waiting`, with its answer.
fn take(waiting: &mut Slab<Waiting>, c: Completion) -> Option<(Waiting, Answer)> {
    // Tags are keys this table gave out; a record whose key is not there is a bug, logged.
    let w = waiting.try_remove(c.tag as usize);
    if w.is_none() {
        log::error!("an engine answer for request {} that is not waiting", c.tag);
    }
    Some((w?, c.answer))
}

/// The requests of every connection with `--portable-io`: their reader threads keep them, one
/// thread of its own answers them.
pub struct SharedPending {
    queue: Arc<CompletionQueue>,
    waiting: Mutex<Slab<Waiting>>,
    /// Readers waiting for a place are told when answers free some.
    freed: Condvar,
    stop: AtomicBool,
}

/// The portable server's answering thread.
pub struct Answerer {
    pending: Arc<SharedPending>,
    thread: Option<JoinHandle<()>>,
}

impl SharedPending {
    /// An empty table for up to `capacity` requests, and the thread that answers it.
    pub fn start(capacity: usize) -> std::io::Result<(Arc<Self>, Answerer)> {
        let pending = Arc::new(Self {
            queue: CompletionQueue::new(capacity, Arc::new(Waker::new()?)),
            waiting: Mutex::new(Slab::new()),
            freed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let answering = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("keel-answers".into())
            .spawn(move || answering.answer_until_stopped())?;
        Ok((
            Arc::clone(&pending),
            Answerer {
                pending,
                thread: Some(thread),
            },
        ))
    }

    fn waiting(&self) -> MutexGuard<'_, Slab<Waiting>> {
        // Inserts and removals, each one step: consistent after a panic.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer_until_stopped(&self) {
        let mut drained = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            if self.queue.wait(&mut drained, ROOM_RECHECK) == 0 {
                continue;
            }
            // Taken out under the lock, answered outside it: answering wakes writers.
            let answers: Vec<(Waiting, Answer)> = {
                let mut waiting = self.waiting();
                drained
                    .drain(..)
                    .filter_map(|c| take(&mut waiting, c))
                    .collect()
            };
            self.freed.notify_all();
            for (w, answer) in answers {
                w.answer(answer);
            }
        }
    }
}

/// A reader thread's view of the shared table: it waits for a place rather than giving up.
impl Tickets for &SharedPending {
    fn reserve(&mut self) -> Option<Reservation> {
        let mut waiting = self.waiting();
        loop {
            if let Some(place) = self.queue.reserve() {
                return Some(place);
            }
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            waiting = self
                .freed
                .wait_timeout(waiting, ROOM_RECHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn ticket(&mut self, place: Reservation, waiting: Waiting) -> Ticket {
        let tag = self.waiting().insert(waiting) as u64;
        place.ticket(tag)
    }
}

impl Answerer {
    /// Stops the thread, once every connection's answers are written (what is still waiting
    /// then is dropped, which gives its budget back).
    pub fn stop(mut self) {
        self.pending.stop.store(true, Ordering::Release);
        self.pending.freed.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the answering thread panicked");
            }
        }
    }
}
