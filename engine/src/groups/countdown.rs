//! One answer for a request that several shards each do part of (an ack or a nack naming
//! partitions of more than one shard): the last shard to finish answers, with the first error
//! any of them met. Atomic counting and a bounded channel holding the continuation: no lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{bounded, Receiver};

use crate::error::GroupError;

/// Called once with the outcome of a group request.
pub(crate) type GroupDone = Box<dyn FnOnce(Result<(), GroupError>) + Send>;

/// Parts still to finish, and the answer.
pub struct Countdown {
    left: AtomicUsize,
    error: OnceLock<GroupError>,
    done: Receiver<GroupDone>,
}

impl Countdown {
    /// A request in `parts` parts (at least one), answered through `done`.
    pub fn new(parts: usize, done: GroupDone) -> Arc<Self> {
        assert!(parts > 0, "a request has at least one part");
        let (tx, rx) = bounded(1);
        // The channel was made with room for it.
        let _ = tx.send(done);
        Arc::new(Self {
            left: AtomicUsize::new(parts),
            error: OnceLock::new(),
            done: rx,
        })
    }

    /// One part finished with `outcome`; the last answers.
    pub fn part_done(&self, outcome: Result<(), GroupError>) {
        if let Err(e) = outcome {
            let _ = self.error.set(e);
        }
        let before = self.left.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "no more parts finish than there are");
        if before > 1 {
            return;
        }
        if let Ok(done) = self.done.try_recv() {
            done(self.error.get().map_or(Ok(()), |e| Err(e.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_last_part_answers_once_with_the_first_error() {
        let (tx, rx) = mpsc::channel();
        let c = Countdown::new(3, Box::new(move |r| tx.send(r).unwrap()));
        c.part_done(Ok(()));
        c.part_done(Err(GroupError::ShuttingDown));
        assert!(rx.try_recv().is_err(), "not before the last part");
        c.part_done(Ok(()));
        assert!(matches!(rx.try_recv(), Ok(Err(GroupError::ShuttingDown))));
        assert!(rx.try_recv().is_err());
    }
}
