//! A shard's queue of requests from other threads (and the portable backend's queue of
//! operations for its I/O thread): a crossbeam channel of the list flavor, bounded by its
//! senders.
//!
//! Why not crossbeam's bounded (array) channel: its receiver spins, without ever yielding,
//! while the slot at the head has been claimed by a sender that has not written it yet
//! (crossbeam-rs/crossbeam#997). A sender preempted in that window, on a machine with more
//! runnable threads than cores (for instance by the shard that then spins on it), keeps the
//! shard spinning until the scheduler takes the core from it. In a 5 s run of single-message
//! appends on 2 cores the shards spent 270-390 ms in such waits of 5 µs or more (about 60 µs
//! each), answering nothing and reaping no completions meanwhile. The list flavor's receiver
//! yields after a short spin, so a preempted sender gets its core back.
//!
//! The bound (`EngineConfig::queue_depth`) moves to the senders: a sender waits while the queue
//! holds that many requests, and the shard wakes waiting senders as it takes requests. Senders
//! that look at the same moment may each put one more in: the queue holds at most the depth
//! plus one request per sending thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, SendError, Sender, TryIter, TryRecvError};

/// How long a waiting sender sleeps before it looks again on its own. Only a safety net: the
/// shard wakes waiting senders whenever it takes requests, and when it exits.
const ROOM_RECHECK: Duration = Duration::from_millis(100);

/// What the senders and the shard share besides the channel.
#[derive(Debug)]
struct Room {
    depth: usize,
    /// Senders waiting for room; the shard takes the lock only when there are some.
    waiters: AtomicUsize,
    /// The shard is gone (its end was dropped): waiting senders give up.
    closed: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
}

impl Room {
    fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.notify_all();
        }
    }

    fn notify_all(&self) {
        // Taking the lock orders this wake-up after a waiter's last look at the queue.
        let _held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.freed.notify_all();
    }
}

/// The sending end, shared by every thread that hands the shard requests.
#[derive(Debug)]
pub struct InboxSender<T> {
    tx: Sender<T>,
    room: Arc<Room>,
}

/// The shard's end. Dropping it releases every waiting sender with an error.
#[derive(Debug)]
pub struct Inbox<T> {
    rx: Receiver<T>,
    room: Arc<Room>,
}

/// A queue holding up to `depth` requests (at least 1) before senders wait.
pub fn inbox<T>(depth: usize) -> (InboxSender<T>, Inbox<T>) {
    let (tx, rx) = unbounded();
    let room = Arc::new(Room {
        depth: depth.max(1),
        waiters: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        lock: Mutex::new(()),
        freed: Condvar::new(),
    });
    (
        InboxSender {
            tx,
            room: Arc::clone(&room),
        },
        Inbox { rx, room },
    )
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            room: Arc::clone(&self.room),
        }
    }
}

impl<T> InboxSender<T> {
    /// Queues `msg` once the queue has room, waiting for the shard to take requests if it is
    /// full. Fails, returning `msg`, once the shard is gone.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        if self.tx.len() >= self.room.depth && !self.wait_for_room() {
            return Err(SendError(msg));
        }
        self.tx.send(msg)
    }

    /// Queues `msg` whatever the queue holds (the stop request must always get in).
    pub fn send_now(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.send(msg)
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Waits until the queue has room (true) or the shard is gone (false).
    fn wait_for_room(&self) -> bool {
        let room = &*self.room;
        let mut held = room.lock.lock().unwrap_or_else(PoisonError::into_inner);
        room.waiters.fetch_add(1, Ordering::SeqCst);
        let has_room = loop {
            if room.closed.load(Ordering::SeqCst) {
                break false;
            }
            if self.tx.len() < room.depth {
                break true;
            }
            held = room
                .freed
                .wait_timeout(held, ROOM_RECHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        room.waiters.fetch_sub(1, Ordering::SeqCst);
        has_room
    }
}

impl<T> Inbox<T> {
    /// The next request, if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Every request queued now, taken one by one.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        self.rx.try_iter()
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Waits for the next request and makes room for a waiting sender; fails once every
    /// sender is gone and the queue is empty.
    pub fn recv(&self) -> Result<T, crossbeam_channel::RecvError> {
        let next = self.rx.recv();
        self.made_room();
        next
    }

    /// Called after taking requests: senders waiting for room look again.
    pub fn made_room(&self) {
        self.room.wake_waiters();
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        self.room.closed.store(true, Ordering::SeqCst);
        self.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn a_sender_waits_while_the_queue_is_full_and_goes_once_the_shard_takes_one() {
        let (tx, rx) = inbox::<u32>(2);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let (done_tx, done) = mpsc::channel();
        let sender = thread::spawn(move || {
            let sent = tx.send(3);
            let _ = done_tx.send(sent.is_ok());
        });
        // A queue without a bound would let the third request in at once.
        assert!(
            done.recv_timeout(Duration::from_millis(200)).is_err(),
            "the third request went into a queue of depth 2 that held 2"
        );
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_recv(), Ok(1));
        rx.made_room();
        assert_eq!(done.recv_timeout(PATIENCE), Ok(true));
        sender.join().unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_waiting_sender_gets_its_request_back_when_the_shard_is_gone() {
        let (tx, rx) = inbox::<u32>(1);
        tx.send(1).unwrap();
        let (done_tx, done) = mpsc::channel();
        let sender = thread::spawn(move || {
            let _ = done_tx.send(tx.send(2).map_err(|SendError(back)| back));
        });
        assert!(done.recv_timeout(Duration::from_millis(200)).is_err());
        drop(rx);
        assert_eq!(done.recv_timeout(PATIENCE), Ok(Err(2)));
        sender.join().unwrap();
    }

    #[test]
    fn the_stop_request_gets_into_a_full_queue() {
        let (tx, rx) = inbox::<u32>(1);
        tx.send(1).unwrap();
        tx.send_now(2).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
    }
}
