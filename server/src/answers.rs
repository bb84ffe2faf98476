//! A connection's queue of answers waiting to be written: filled by the thread that drains the
//! engine's completions (`pending.rs`) and by the reader, drained whole by the writer (a thread per connection, or an io_uring event loop).
//!
//! A mutex and a condition variable rather than a channel: channels spin and `sched_yield`
//! before they sleep, and with two threads per connection that spinning took a tenth of the
//! server's CPU under load (seen with `perf`). Draining everything queued at once also turns
//! many answers into one socket write.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::reply::Outgoing;

#[derive(Default)]
struct State {
    items: Vec<Outgoing>,
    /// Live [`AnswerTx`] handles; the queue is finished when none is left and it is empty.
    senders: usize,
    /// The writer is gone: answers are dropped (giving their budget back) instead of queued.
    closed: bool,
    /// The writer is asleep in [`AnswerRx::take_all`]. Senders wake the condition variable only
    /// then: waking it costs a system call even when nobody waits, and an event loop never
    /// does.
    writer_asleep: bool,
}

/// Called when answers become ready or the last sender goes, for a writer that does not wait
/// on the condition variable (an event loop).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    notify: Option<Notify>,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is a push, a swap or a counter step: consistent after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side; clone it for every request that will be answered.
pub struct AnswerTx(Arc<Queue>);

/// The writer's side.
pub struct AnswerRx(Arc<Queue>);

/// A new, empty queue for a writer thread that waits in [`AnswerRx::take_all`].
pub fn answer_queue() -> (AnswerTx, AnswerRx) {
    new_queue(None)
}

/// A new, empty queue that calls `notify` when answers arrive in it while it is empty and
/// when its last sender goes; the writer polls it with [`AnswerRx::try_take_all`].
pub fn notifying_answer_queue(notify: Notify) -> (AnswerTx, AnswerRx) {
    new_queue(Some(notify))
}

fn new_queue(notify: Option<Notify>) -> (AnswerTx, AnswerRx) {
    let q = Arc::new(Queue {
        notify,
        ..Queue::default()
    });
    q.state().senders = 1;
    (AnswerTx(Arc::clone(&q)), AnswerRx(q))
}

impl Queue {
    /// Called after a change the writer must see, with whether it was asleep (read under the
    /// lock that made the change).
    fn wake(&self, writer_asleep: bool) {
        if writer_asleep {
            self.ready.notify_one();
        }
        if let Some(notify) = &self.notify {
            notify();
        }
    }
}

impl AnswerTx {
    /// Queues an answer for the writer.
    pub fn send(&self, answer: Outgoing) {
        let mut s = self.0.state();
        if s.closed {
            return;
        }
        s.items.push(answer);
        let first = s.items.len() == 1;
        let asleep = s.writer_asleep;
        drop(s);
        if first {
            self.0.wake(asleep);
        }
    }
}

impl Clone for AnswerTx {
    fn clone(&self) -> Self {
        self.0.state().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for AnswerTx {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.senders -= 1;
        let last = s.senders == 0;
        let asleep = s.writer_asleep;
        drop(s);
        if last {
            self.0.wake(asleep);
        }
    }
}

impl AnswerRx {
    /// Waits for answers and moves all of them into `out` (which must be empty); returns
    /// false once every sender is gone and nothing is left.
    pub fn take_all(&self, out: &mut Vec<Outgoing>) -> bool {
        let mut s = self.0.state();
        while s.items.is_empty() {
            if s.senders == 0 {
                return false;
            }
            s.writer_asleep = true;
            s = self.0.ready.wait(s).unwrap_or_else(|p| p.into_inner());
            s.writer_asleep = false;
        }
        std::mem::swap(&mut s.items, out);
        true
    }
}

impl AnswerRx {
    /// Moves every queued answer into `out` without waiting.
    pub fn try_take_all(&self, out: &mut Vec<Outgoing>) {
        out.append(&mut self.0.state().items);
    }

    /// Whether no answer is queued and none can come (every sender is gone).
    pub fn finished(&self) -> bool {
        let s = self.0.state();
        s.senders == 0 && s.items.is_empty()
    }
}

impl Drop for AnswerRx {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.closed = true;
        // Dropped outside the lock: their budget holds notify other waiters.
        let dropped = std::mem::take(&mut s.items);
        drop(s);
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ByteBudget;
    use crate::reply::Body;

    #[test]
    fn the_writer_sees_every_answer_then_the_end() {
        let budget = ByteBudget::new(1000);
        let (tx, rx) = answer_queue();
        let other = tx.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..100u8 {
                other.send(Outgoing::new(Body::Frame(vec![i]), budget.acquire(1)));
            }
        });
        let mut got = Vec::new();
        let mut batch = Vec::new();
        drop(tx);
        while rx.take_all(&mut batch) {
            got.extend(batch.drain(..).map(|o| {
                let mut frame = Vec::new();
                o.write_to(&mut frame);
                frame[0]
            }));
        }
        sender.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<u8>>());
    }

    #[test]
    fn a_writer_asleep_on_an_empty_queue_is_woken_by_an_answer_and_by_the_last_sender() {
        let patience = std::time::Duration::from_secs(10);
        let budget = ByteBudget::new(1000);
        let (tx, rx) = answer_queue();
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let mut batch = Vec::new();
            while rx.take_all(&mut batch) {
                let _ = seen_tx.send(Some(batch.len()));
                batch.clear();
            }
            let _ = seen_tx.send(None);
        });
        // Give the writer time to fall asleep, so the send below must wake it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        tx.send(Outgoing::new(Body::Frame(vec![1]), budget.acquire(1)));
        assert_eq!(seen.recv_timeout(patience), Ok(Some(1)));
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(tx);
        assert_eq!(seen.recv_timeout(patience), Ok(None));
        writer.join().unwrap();
    }

    #[test]
    fn answers_for_a_gone_writer_give_their_budget_back() {
        let budget = ByteBudget::new(10);
        let (tx, rx) = answer_queue();
        tx.send(Outgoing::new(Body::Frame(vec![1]), budget.acquire(4)));
        drop(rx);
        assert_eq!(budget.in_use(), 0);
        tx.send(Outgoing::new(Body::Frame(vec![2]), budget.acquire(4)));
        assert_eq!(budget.in_use(), 0);
    }
}
