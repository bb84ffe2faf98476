//! Byte budgets: the server's backpressure. A request takes bytes from its connection's budget
//! and its shard's before it is read further; when a budget is spent, the reader waits, so the
//! socket stops being read and the client's sends slow down (TCP flow control) instead of the
//! server buffering without limit.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A pool of bytes that in-flight work draws from.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
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
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    fn used(&self) -> MutexGuard<'_, usize> {
        // The guarded value is one integer, always consistent: a poisoned lock is still usable.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes`, waiting until they fit. A request larger than the whole budget is let in
    /// when nothing else is in flight, so it cannot wait forever.
    pub fn acquire(self: &Arc<Self>, bytes: usize) -> BudgetHold {
        let mut used = self.used();
        while *used > 0 && *used + bytes > self.limit {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += bytes;
        BudgetHold {
            budget: Arc::clone(self),
            bytes,
        }
    }

    /// Takes `bytes` if they fit now (or nothing else is in flight); `None` otherwise.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<BudgetHold> {
        let mut used = self.used();
        if *used > 0 && *used + bytes > self.limit {
            return None;
        }
        *used += bytes;
        Some(BudgetHold {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Bytes currently taken.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        *self.used()
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        let mut used = self.budget.used();
        *used = used.saturating_sub(self.bytes);
        drop(used);
        self.budget.freed.notify_all();
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
    fn an_oversized_request_gets_in_when_nothing_else_is_in_flight() {
        let budget = ByteBudget::new(10);
        let hold = budget.acquire(50);
        assert_eq!(budget.in_use(), 50);
        drop(hold);
        assert_eq!(budget.in_use(), 0);
    }
}
