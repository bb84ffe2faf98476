//! Warnings that can repeat at a client's pace (refused connections, failed accepts, connections
//! cut off by their limits) are logged at most once per interval, with a count of the ones held
//! back, so a flood of them cannot flood the log.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One kind of repeated warning.
pub struct RateLimitedWarn {
    interval: Duration,
    /// When the last line was logged, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedWarn {
    /// Logs at most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    fn state(&self) -> MutexGuard<'_, (Option<Instant>, u64)> {
        // A time and a count, each set in one step: usable after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs `line()` unless a line went out less than the interval ago; returns whether it
    /// did. A logged line says how many were held back before it.
    pub fn warn(&self, line: impl FnOnce() -> String) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        if state
            .0
            .is_some_and(|at| now.duration_since(at) < self.interval)
        {
            state.1 += 1;
            return false;
        }
        let held_back = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        if held_back == 0 {
            log::warn!("{}", line());
        } else {
            log::warn!("{} (and {held_back} more like it not logged)", line());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_one_line_then_one_per_interval() {
        let limit = RateLimitedWarn::new(Duration::from_millis(200));
        let logged = (0..1000).filter(|_| limit.warn(String::new)).count();
        assert_eq!(logged, 1);
        std::thread::sleep(Duration::from_millis(250));
        assert!(limit.warn(String::new));
        assert_eq!(
            limit.state().1,
            0,
            "the held-back count was reported and reset"
        );
    }
}
