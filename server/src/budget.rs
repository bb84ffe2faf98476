//! Byte budgets: the server's backpressure. A request takes bytes from its connection's budget
//! and its shard's before it is read further; when a budget is spent, the reader waits, so the
//! socket stops being read and the client's sends slow down (TCP flow control) instead of the
//! server buffering without limit.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Called once when bytes are given back to a budget that refused a request.
pub type OnFreed = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    used: usize,
    /// Registered by refused [`ByteBudget::try_acquire_or_notify`] calls.
    waiting: Vec<OnFreed>,
    /// Threads asleep in [`ByteBudget::acquire`]. A give-back wakes the condition variable
    /// only when there are some: waking it costs a system call even when nobody waits, and
    /// every request gives bytes back twice.
    sleepers: usize,
}

/// A pool of bytes that in-flight work draws from.
pub struct ByteBudget {
    limit: usize,
    state: Mutex<State>,
    freed: Condvar,
}

impl std::fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteBudget")
            .field("limit", &self.limit)
            .field("used", &self.state().used)
            .finish()
    }
}

/// Bytes taken from a budget, given back when dropped.
#[derive(Debug)]
pub struct BudgetHold {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // An integer and a list, each changed in one step: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fits(&self, used: usize, bytes: usize) -> bool {
        used == 0 || used + bytes <= self.limit
    }

    fn hold(self: &Arc<Self>, state: &mut State, bytes: usize) -> BudgetHold {
        state.used += bytes;
        BudgetHold {
            budget: Arc::clone(self),
            bytes,
        }
    }

    /// Takes `bytes`, waiting until they fit. A request larger than the whole budget is let in
    /// when nothing else is in flight, so it cannot wait forever.
    pub fn acquire(self: &Arc<Self>, bytes: usize) -> BudgetHold {
        let mut state = self.state();
        while !self.fits(state.used, bytes) {
            state.sleepers += 1;
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.sleepers -= 1;
        }
        self.hold(&mut state, bytes)
    }

    /// Takes `bytes` if they fit now (or nothing else is in flight); `None` otherwise.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<BudgetHold> {
        let mut state = self.state();
        self.fits(state.used, bytes)
            .then(|| self.hold(&mut state, bytes))
    }

    /// [`ByteBudget::try_acquire`] for callers that must never wait (a network loop): when
    /// the bytes do not fit, the callback `on_freed` makes is called once bytes are next given
    /// back (on the thread giving them back), and the caller tries again then. The callback is
    /// only made when needed, so a request that fits allocates nothing.
    pub fn try_acquire_or_notify(
        self: &Arc<Self>,
        bytes: usize,
        on_freed: impl FnOnce() -> OnFreed,
    ) -> Option<BudgetHold> {
        let mut state = self.state();
        if self.fits(state.used, bytes) {
            return Some(self.hold(&mut state, bytes));
        }
        // Registered under the same lock as the check: a give-back cannot slip in between.
        state.waiting.push(on_freed());
        None
    }

    /// Bytes currently taken.
    pub(crate) fn in_use(&self) -> usize {
        self.state().used
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        let mut state = self.budget.state();
        state.used = state.used.saturating_sub(self.bytes);
        let waiting = std::mem::take(&mut state.waiting);
        let sleepers = state.sleepers > 0;
        drop(state);
        if sleepers {
            self.budget.freed.notify_all();
        }
        for on_freed in waiting {
            on_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn acquire_waits_until_enough_is_given_back() {
        let budget = ByteBudget::new(100);
        let first = budget.acquire(80);
        let (tx, rx) = mpsc::channel();
        let b = Arc::clone(&budget);
        let waiter = std::thread::spawn(move || {
            let hold = b.acquire(40);
            tx.send(()).unwrap();
            drop(hold);
        });
        // 80 + 40 > 100: the second acquire must still be waiting.
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert_eq!(budget.in_use(), 80);
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn try_acquire_refuses_what_does_not_fit() {
        let budget = ByteBudget::new(100);
        let a = budget.try_acquire(70).unwrap();
        assert!(budget.try_acquire(40).is_none());
        drop(a);
        assert!(budget.try_acquire(40).is_some());
    }

    #[test]
    fn a_refused_caller_is_told_when_bytes_come_back() {
        let budget = ByteBudget::new(100);
        let a = budget.try_acquire(70).unwrap();
        let (tx, rx) = mpsc::channel();
        let refused = budget.try_acquire_or_notify(40, || Box::new(move || tx.send(()).unwrap()));
        assert!(refused.is_none());
        assert!(
            rx.try_recv().is_err(),
            "not told before anything is given back"
        );
        drop(a);
        rx.try_recv().expect("told once bytes were given back");
        let fits = budget.try_acquire_or_notify(40, || panic!("it fit: no callback is made"));
        assert!(fits.is_some());
        drop(fits);
    }

    #[test]
    fn an_oversized_request_gets_in_when_nothing_else_is_in_flight() {
        let budget = ByteBudget::new(10);
        let hold = budget.acquire(50);
        assert_eq!(budget.in_use(), 50);
        drop(hold);
        assert_eq!(budget.in_use(), 0);
    }
}
