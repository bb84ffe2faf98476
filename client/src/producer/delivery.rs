//! What a sent message's caller holds: a [`Delivery`], finished when the batch the message went
//! out in is answered, waited for on a thread or awaited in any async runtime.
//!
//! All the messages of a batch share one [`Outcome`]: finishing a batch of hundreds of
//! messages is one lock, and one wake-up only if someone is waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{reading, Shared};
use crate::error::{ClientError, Result};
use crate::Ack;

/// Where a message was stored: durable, at this offset of this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The partition the message went to.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
}

/// A batch's answer, shared by the [`Delivery`] of each of its messages.
pub(crate) struct Outcome {
    /// Set once, under `slot`'s lock (so a waiter that looked under the lock is woken); read
    /// without it: checking a finished delivery takes no lock.
    answer: OnceLock<Result<Ack>>,
    slot: Mutex<Slot>,
    done: Condvar,
    /// The producer, whose answers a waiting thread reads itself when no other thread does.
    producer: Weak<Shared>,
    /// Longer than the producer can take to finish the batch (its delivery timeout, and a
    /// request timeout for the answer in flight then): a wait past it means the producer
    /// stopped working, which is reported rather than waited for forever.
    limit: Duration,
}

#[derive(Default)]
struct Slot {
    /// Async tasks waiting.
    tasks: Vec<Waker>,
    /// Threads waiting on the condition variable.
    sleepers: u32,
    /// A thread waiting in the poll of the producer's reading end for more answers, to be
    /// woken if another thread finishes this batch (it read the answer first).
    poller: Option<Arc<mio::Waker>>,
}

impl Outcome {
    /// The outcome of a batch of `producer`'s, waited for at most `limit`.
    pub fn new(producer: Weak<Shared>, limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            answer: OnceLock::new(),
            slot: Mutex::new(Slot::default()),
            done: Condvar::new(),
            producer,
            limit,
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Set once, in one step: still consistent after a panic elsewhere.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the batch's answer (the first one given stays) and wakes whoever waits for it.
    pub fn finish(&self, answer: Result<Ack>) {
        let mut slot = self.slot();
        if self.answer.set(answer).is_err() {
            return;
        }
        let tasks = std::mem::take(&mut slot.tasks);
        let sleepers = slot.sleepers;
        let poller = slot.poller.take();
        drop(slot);
        if sleepers > 0 {
            self.done.notify_all();
        }
        tasks.into_iter().for_each(Waker::wake);
        if let Some(p) = poller {
            let _ = p.wake();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.answer.get().is_some()
    }

    /// Has `poller` woken when the batch is finished; false if it is already.
    pub fn watch(&self, poller: &Arc<mio::Waker>) -> bool {
        let mut slot = self.slot();
        if self.answer.get().is_some() {
            return false;
        }
        slot.poller = Some(Arc::clone(poller));
        true
    }

    /// No longer wakes the poller [`Outcome::watch`] gave.
    pub fn unwatch(&self) {
        self.slot().poller = None;
    }
}

/// A message handed to [`Producer::send`](crate::Producer::send): [`Delivery::wait`] (or
/// `.await`) returns where it was stored once it is durable, or why it was not.
///
/// Dropping it does not cancel the message: it is sent and stored all the same.
#[must_use = "a message is only known to be stored once its delivery is waited for"]
pub struct Delivery {
    outcome: Arc<Outcome>,
    /// The message's place in its batch.
    index: u32,
}

impl Delivery {
    pub(crate) fn new(outcome: Arc<Outcome>, index: u32) -> Self {
        Self { outcome, index }
    }

    /// Waits until the message is stored, or the producer gave up on it. If no other thread
    /// is reading the producer's answers, this one reads them (all of them, not only its own)
    /// until its own comes: a lone message's round trip then wakes only the thread waiting
    /// for it.
    pub fn wait(self) -> Result<Stored> {
        if let Some(known) = self.try_result() {
            // Most deliveries waited for under load are finished already: no clock read.
            return known;
        }
        let limit = self.outcome.limit;
        let deadline = Instant::now() + limit;
        if let Some(producer) = self.outcome.producer.upgrade() {
            while !self.outcome.is_finished()
                && Instant::now() < deadline
                && reading::read_until(&producer, &self.outcome, deadline)
            {}
        }
        let mut slot = self.outcome.slot();
        loop {
            if let Some(answer) = self.outcome.answer.get() {
                return self.stored(answer);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(limit));
            }
            slot.sleepers += 1;
            let (back, _) = self
                .outcome
                .done
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|p| p.into_inner());
            slot = back;
            slot.sleepers -= 1;
        }
    }

    /// The outcome if it is known already, without waiting.
    pub fn try_result(&self) -> Option<Result<Stored>> {
        self.outcome.answer.get().map(|a| self.stored(a))
    }

    /// True once the outcome is known ([`Delivery::wait`] will not wait).
    pub fn is_finished(&self) -> bool {
        self.outcome.is_finished()
    }

    fn stored(&self, answer: &Result<Ack>) -> Result<Stored> {
        match answer {
            Ok(ack) => Ok(Stored {
                partition: ack.partition,
                offset: ack.first_offset + u64::from(self.index),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

impl Future for Delivery {
    type Output = Result<Stored>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(answer) = self.outcome.answer.get() {
            return Poll::Ready(self.stored(answer));
        }
        let mut slot = self.outcome.slot();
        // Set under this lock: looked at again holding it, so the task cannot miss its wake.
        if let Some(answer) = self.outcome.answer.get() {
            return Poll::Ready(self.stored(answer));
        }
        if !slot.tasks.iter().any(|t| t.will_wake(cx.waker())) {
            slot.tasks.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("index", &self.index)
            .field("finished", &self.is_finished())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(first: u64) -> Ack {
        Ack {
            partition: 3,
            first_offset: first,
            last_offset: first + 9,
        }
    }

    #[test]
    fn each_message_gets_its_own_offset_from_the_batch_answer() {
        let o = Outcome::new(Weak::new(), Duration::from_secs(10));
        let a = Delivery::new(Arc::clone(&o), 0);
        let b = Delivery::new(Arc::clone(&o), 4);
        assert!(a.try_result().is_none());
        o.finish(Ok(ack(100)));
        o.finish(Ok(ack(900))); // the first answer stays
        assert_eq!(
            a.wait().unwrap(),
            Stored {
                partition: 3,
                offset: 100
            }
        );
        assert_eq!(b.wait().unwrap().offset, 104);
    }

    #[test]
    fn a_waiting_thread_is_woken_with_the_error() {
        let o = Outcome::new(Weak::new(), Duration::from_secs(10));
        let d = Delivery::new(Arc::clone(&o), 0);
        let waiter = std::thread::spawn(move || d.wait());
        std::thread::sleep(Duration::from_millis(20));
        o.finish(Err(ClientError::Protocol("refused".into())));
        assert!(matches!(
            waiter.join().unwrap(),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn a_wait_is_bounded() {
        let d = Delivery::new(Outcome::new(Weak::new(), Duration::from_millis(30)), 0);
        assert!(matches!(d.wait(), Err(ClientError::Timeout(_))));
    }
}
