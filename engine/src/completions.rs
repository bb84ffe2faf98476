//! How the engine answers: as completion records in a bounded queue the caller owns and drains,
//! like an io_uring completion queue. The engine runs none of the caller's code: a shard that
//! finishes a request pushes a record (a tag the caller chose, and the outcome) and rings the
//! caller's [`Waker`], which costs a system call only when the caller sleeps.
//!
//! The bound holds by reservation: a caller takes a place ([`CompletionQueue::reserve`]) before
//! it hands the engine a request, and gets it back when it takes the request's record out. A
//! queue of capacity N never holds more than N records, so a shard's push never waits and never
//! fails; a caller whose places are all taken stops taking requests until it has drained some
//! (backpressure, as with a full shard queue).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::{DataError, GroupError};
use crate::groups::ConsumedPartition;
use crate::io::Waker;
use crate::read::ReadResult;
use crate::OffsetRange;

/// What a finished request gives back: its kind, and its outcome with the errors of its layer.
#[derive(Debug)]
pub enum Answer {
    /// An append: durable, with the offsets it was given, or why not.
    Appended(Result<OffsetRange, DataError>),
    /// A read's batches.
    Read(Result<ReadResult, DataError>),
    /// A consume's messages, by partition.
    Consumed(Result<Vec<ConsumedPartition>, GroupError>),
    /// An ack or a nack took effect (a durable ack: is durable).
    Settled(Result<(), GroupError>),
}

/// Which kind of request a ticket went with: what it answers if the engine drops it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Append,
    Read,
    Consume,
    Settle,
}

impl Kind {
    fn shutting_down(self) -> Answer {
        match self {
            Kind::Append => Answer::Appended(Err(DataError::ShuttingDown)),
            Kind::Read => Answer::Read(Err(DataError::ShuttingDown)),
            Kind::Consume => Answer::Consumed(Err(GroupError::ShuttingDown)),
            Kind::Settle => Answer::Settled(Err(GroupError::ShuttingDown)),
        }
    }
}

/// One finished request.
#[derive(Debug)]
pub struct Completion {
    /// The tag the caller gave the request's [`Ticket`].
    pub tag: u64,
    /// Its answer.
    pub answer: Answer,
}

/// A caller's queue of finished requests.
///
/// A crossbeam channel of the list flavor, bounded by the reservations: lock-free, and its
/// receiver yields rather than spinning while a preempted pusher finishes a push (the array
/// flavor spins; see `inbox.rs`).
#[derive(Debug)]
pub struct CompletionQueue {
    tx: Sender<Completion>,
    ready: Receiver<Completion>,
    capacity: usize,
    /// Places reserved and not yet given back by draining (or by dropping a reservation).
    taken: AtomicUsize,
    waker: Arc<Waker>,
}

/// A place in a queue, taken before a request is made; dropped unused, it is given back.
#[derive(Debug)]
pub struct Reservation {
    queue: Arc<CompletionQueue>,
}

/// A request's way back: handed to the engine with the request, it is answered exactly once
/// (dropped unanswered, by an engine that stops, it answers that the engine is shutting down;
/// dropped by its caller before any request, it gives its place back).
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<CompletionQueue>,
    tag: u64,
    /// Set when the engine takes it with a request.
    kind: Option<Kind>,
    answered: bool,
}

impl CompletionQueue {
    /// A queue holding at most `capacity` records (at least 1); `waker` is rung when a record
    /// arrives.
    pub fn new(capacity: usize, waker: Arc<Waker>) -> Arc<Self> {
        let capacity = capacity.max(1);
        let (tx, ready) = unbounded();
        Arc::new(Self {
            tx,
            ready,
            capacity,
            taken: AtomicUsize::new(0),
            waker,
        })
    }

    /// Takes a place for one request; `None` while every place is taken (drain first).
    pub fn reserve(self: &Arc<Self>) -> Option<Reservation> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()?;
        Some(Reservation {
            queue: Arc::clone(self),
        })
    }

    /// Moves every finished request into `out`, giving their places back; returns how many.
    pub fn drain(&self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        out.extend(self.ready.try_iter());
        let n = out.len() - before;
        if n > 0 {
            self.give_back(n);
        }
        n
    }

    /// Whether a finished request waits to be drained.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// [`CompletionQueue::drain`] for a caller without an event loop: waits until at least one
    /// request has finished, or `timeout` passes (then returns 0). Only one thread may wait on
    /// the queue's waker at a time.
    pub fn wait(&self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.drain(out);
            if n > 0 {
                return n;
            }
            // Asleep before the last look: a push after it rings the waker.
            self.waker.park(1);
            if self.has_ready() {
                self.waker.unpark();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.waker.unpark();
                return 0;
            }
            self.waker.wait(left);
            self.waker.unpark();
        }
    }

    /// Places taken now.
    pub fn in_use(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    fn give_back(&self, n: usize) {
        let before = self.taken.fetch_sub(n, Ordering::AcqRel);
        assert!(
            before >= n,
            "a queue gives back no more places than it lent"
        );
    }

    fn push(&self, c: Completion) {
        // Every record had a place reserved, and a place is given back only once its record
        // is drained.
        assert!(
            self.ready.len() < self.capacity,
            "a completion queue overflowed"
        );
        // The queue holds its own receiver: the send cannot fail.
        let _ = self.tx.send(c);
        self.waker.wake(usize::MAX);
    }
}

impl Reservation {
    /// The place, as a ticket for one request, answered with `tag`.
    pub fn ticket(self, tag: u64) -> Ticket {
        let queue = Arc::clone(&self.queue);
        // The place passes to the ticket: its record gives it back when drained.
        std::mem::forget(self);
        Ticket {
            queue,
            tag,
            kind: None,
            answered: false,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.queue.give_back(1);
    }
}

impl Ticket {
    /// The ticket, taken by the engine with a request of `kind`.
    pub(crate) fn taken_for(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Answers the request.
    pub(crate) fn answer(mut self, answer: Answer) {
        self.answered = true;
        self.queue.push(Completion {
            tag: self.tag,
            answer,
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        match self.kind {
            Some(kind) => self.queue.push(Completion {
                tag: self.tag,
                answer: kind.shutting_down(),
            }),
            // Never given to the engine: only its place goes back.
            None => self.queue.give_back(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> Arc<CompletionQueue> {
        CompletionQueue::new(capacity, Arc::new(Waker::new().unwrap()))
    }

    #[test]
    fn places_run_out_at_the_capacity_and_come_back_when_drained() {
        let q = queue(2);
        let a = q.reserve().unwrap().ticket(1).taken_for(Kind::Settle);
        let b = q.reserve().unwrap().ticket(2).taken_for(Kind::Append);
        assert!(q.reserve().is_none(), "a third place in a queue of two");
        a.answer(Answer::Settled(Ok(())));
        assert!(
            q.reserve().is_none(),
            "answered but not drained: still taken"
        );
        let mut out = Vec::new();
        assert_eq!(q.drain(&mut out), 1);
        assert_eq!(out[0].tag, 1);
        let c = q.reserve().unwrap();
        drop(c);
        assert_eq!(q.in_use(), 1);
        drop(b);
        out.clear();
        assert_eq!(q.drain(&mut out), 1);
        assert!(matches!(
            out[0].answer,
            Answer::Appended(Err(DataError::ShuttingDown))
        ));
        assert_eq!(q.in_use(), 0);
        drop(q.reserve().unwrap().ticket(3));
        assert_eq!(q.in_use(), 0, "an unused ticket gives its place back");
        assert!(!q.has_ready(), "and answers nothing");
    }

    #[test]
    fn a_waiting_caller_is_woken_by_an_answer_from_another_thread() {
        let q = queue(4);
        let t = q.reserve().unwrap().ticket(7).taken_for(Kind::Settle);
        let answerer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t.answer(Answer::Settled(Ok(())));
        });
        let mut out = Vec::new();
        assert_eq!(q.wait(&mut out, Duration::from_secs(10)), 1);
        assert_eq!(out[0].tag, 7);
        answerer.join().unwrap();
        assert_eq!(q.wait(&mut out, Duration::from_millis(20)), 0);
    }
}
