//! The engine's answers for a test thread: one completion queue, tickets by tag, answers
//! waited for with a timeout.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::{
    Answer, Completion, CompletionQueue, ConsumedPartition, DataError, GroupError, OffsetRange,
    ReadResult, Ticket, Waker,
};

/// Requests a test may have in flight at once.
const CAPACITY: usize = 1 << 20;

/// A test thread's completion queue.
pub struct Answers {
    queue: Arc<CompletionQueue>,
    got: RefCell<VecDeque<Completion>>,
}

impl Default for Answers {
    fn default() -> Self {
        Self::new()
    }
}

impl Answers {
    /// An empty queue.
    pub fn new() -> Self {
        let waker = Arc::new(Waker::new().expect("an eventfd"));
        Self {
            queue: CompletionQueue::new(CAPACITY, waker),
            got: RefCell::new(VecDeque::new()),
        }
    }

    /// A ticket answered with `tag`.
    pub fn ticket(&self, tag: u64) -> Ticket {
        self.queue
            .reserve()
            .expect("a test never has a million requests in flight")
            .ticket(tag)
    }

    /// The next answer, or `None` if none comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Completion> {
        let until = Instant::now() + timeout;
        let mut got = self.got.borrow_mut();
        while got.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            let mut out = Vec::new();
            if self.queue.wait(&mut out, left) == 0 && Instant::now() >= until {
                return None;
            }
            got.extend(out);
        }
        got.pop_front()
    }

    /// The next answer, as a channel's `recv_timeout` gives it: `Err(())` if none comes
    /// within `timeout`.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Answer, ()> {
        self.next(timeout).map(|c| c.answer).ok_or(())
    }

    /// The next answer; panics if none comes within `timeout`.
    pub fn expect(&self, timeout: Duration) -> Completion {
        self.next(timeout)
            .expect("an answer from the engine in time")
    }

    /// Answers that have arrived, without waiting.
    pub fn ready(&self) -> Vec<Completion> {
        let mut out: Vec<Completion> = self.got.borrow_mut().drain(..).collect();
        self.queue.drain(&mut out);
        out
    }
}

/// An append's outcome.
pub fn appended(answer: Answer) -> Result<OffsetRange, DataError> {
    match answer {
        Answer::Appended(outcome) => outcome,
        other => panic!("an append answered with {other:?}"),
    }
}

/// A read's outcome.
pub fn read(answer: Answer) -> Result<ReadResult, DataError> {
    match answer {
        Answer::Read(outcome) => outcome,
        other => panic!("a read answered with {other:?}"),
    }
}

/// A consume's outcome.
pub fn consumed(answer: Answer) -> Result<Vec<ConsumedPartition>, GroupError> {
    match answer {
        Answer::Consumed(outcome) => outcome,
        other => panic!("a consume answered with {other:?}"),
    }
}

/// An ack's or a nack's outcome.
pub fn settled(answer: Answer) -> Result<(), GroupError> {
    match answer {
        Answer::Settled(outcome) => outcome,
        other => panic!("an ack or nack answered with {other:?}"),
    }
}

/// [`Answers`] that keep what the test wants back with each answer: a ticket is made for a
/// value, and the answer comes with it.
pub struct Tagged<T> {
    answers: Answers,
    kept: RefCell<HashMap<u64, T>>,
    next: Cell<u64>,
}

impl<T> Default for Tagged<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Tagged<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            answers: Answers::new(),
            kept: RefCell::new(HashMap::new()),
            next: Cell::new(0),
        }
    }

    /// A ticket whose answer comes back with `kept`.
    pub fn ticket(&self, kept: T) -> Ticket {
        let tag = self.next.get();
        self.next.set(tag + 1);
        self.kept.borrow_mut().insert(tag, kept);
        self.answers.ticket(tag)
    }

    /// The next answer with what was kept for it: `Err(())` if none comes within `timeout`.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<(T, Answer), ()> {
        let c = self.answers.next(timeout).ok_or(())?;
        let kept = self
            .kept
            .borrow_mut()
            .remove(&c.tag)
            .expect("an answer to a ticket of this queue");
        Ok((kept, c.answer))
    }
}
