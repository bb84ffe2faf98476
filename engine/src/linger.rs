//! Adaptive commit linger: a partition's next flush may wait a moment for the appenders its
//! last flush just answered.
//!
//! Appenders that each wait for their ack split into groups that alternate: while one group's
//! flush runs, the next gathers (and, with a second flush allowed in flight, goes at once), so
//! each sync is shared by a part of them. When a flush completes with fewer appends gathered than it
//! answered plus those, the answered ones are likely to come straight back; holding the next
//! flush until they do (or until a short budget runs out) lets one sync carry them all.
//! PostgreSQL's `commit_delay` with `commit_siblings` is the same idea with a fixed delay; here
//! the expected count comes from the last flush, and the wait is bounded by a fraction of the
//! last flush's own I/O time, so it never costs more than a part of one sync.
//!
//! When appenders are not held up by their acks (a stream that is CPU-bound, or open loop), the
//! expected ones do not come back in time and waits run out: each wait that runs out makes the
//! partition skip waiting for twice as many flushes as the last time (up to [`BACKOFF_MAX`]),
//! and a wait that is met ends the back-off.

use std::time::{Duration, Instant};

/// The wait is at most this fraction (1/N) of the last flush's write+sync time.
const IO_TIME_FRACTION: u32 = 2;
/// Most flushes skipped without waiting after waits ran out.
const BACKOFF_MAX: u32 = 64;

/// What a flush gathered so far should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Go now: nothing expected, or everything expected is in.
    Go,
    /// Go now: the wait is over, not everything expected came.
    GoAtDeadline,
    /// Wait until `until`; `began` on the call that started the wait.
    Wait {
        /// When it goes anyway.
        until: Instant,
        /// This call started the wait.
        began: bool,
    },
}

impl Hold {
    /// The deadline while waiting.
    pub fn until(self) -> Option<Instant> {
        match self {
            Hold::Wait { until, .. } => Some(until),
            Hold::Go | Hold::GoAtDeadline => None,
        }
    }
}

/// One partition's linger state.
#[derive(Debug, Default)]
pub(crate) struct Linger {
    /// The longest any flush waits (`EngineConfig::commit_linger`); zero turns lingering off.
    max: Duration,
    /// Appends the next flush should carry before it goes: those the last flush answered plus
    /// those already gathered when it completed. Zero: nothing expected, go at once.
    expected: usize,
    /// How long the next flush may wait for them.
    budget: Duration,
    /// When the current wait ends, once one has begun.
    until: Option<Instant>,
    /// Flushes still to go without waiting, after a wait ran out.
    skip: u32,
    /// Length of the last back-off (0: no wait has run out since the last one that was met).
    backoff: u32,
}

impl Linger {
    pub(crate) fn new(max: Duration) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// A flush completed: it answered `answered` appends after `io` of write and sync, and
    /// `gathered` appends wait for the next one.
    pub(crate) fn flush_done(&mut self, answered: usize, gathered: usize, io: Duration) {
        self.until = None;
        self.budget = self.max.min(io / IO_TIME_FRACTION);
        let skipping = self.skip > 0;
        self.skip = self.skip.saturating_sub(1);
        self.expected = if self.budget.is_zero() || skipping || gathered >= answered {
            // As many came during the flush as it carried: the flow is not waiting on acks.
            0
        } else {
            answered + gathered
        };
    }

    /// A failed flush, or a flush that went: expect nothing until the next completion.
    pub(crate) fn reset(&mut self) {
        self.expected = 0;
        self.until = None;
    }

    /// Whether the next flush, with `gathered` appends so far, should wait. The wait begins
    /// at the first call and ends at its deadline, or once the expected appends are in.
    pub(crate) fn hold(&mut self, gathered: usize, now: Instant) -> Hold {
        if gathered >= self.expected {
            if self.until.is_some() {
                self.backoff = 0;
            }
            self.reset();
            return Hold::Go;
        }
        let began = self.until.is_none();
        let until = *self.until.get_or_insert(now + self.budget);
        if now >= until {
            self.backoff = (self.backoff * 2).clamp(1, BACKOFF_MAX);
            self.skip = self.backoff;
            self.reset();
            return Hold::GoAtDeadline;
        }
        Hold::Wait { until, began }
    }

    /// Appends still to come before a holding flush goes (0 when not holding).
    pub(crate) fn missing(&self, gathered: usize) -> usize {
        if self.until.is_some() {
            self.expected.saturating_sub(gathered)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_flush_waits_for_the_appenders_the_last_one_answered_and_no_longer() {
        let mut l = Linger::new(MS);
        let t0 = Instant::now();
        l.flush_done(30, 20, 10 * MS);
        // Budget: the configured 1 ms, below half the 10 ms flush.
        assert_eq!(
            l.hold(20, t0),
            Hold::Wait {
                until: t0 + MS,
                began: true
            }
        );
        assert_eq!(l.missing(20), 30);
        // The deadline is fixed when the wait begins, not pushed back by later checks.
        assert_eq!(
            l.hold(40, t0 + MS / 2),
            Hold::Wait {
                until: t0 + MS,
                began: false
            }
        );
        assert_eq!(l.missing(40), 10);
        assert_eq!(l.hold(50, t0 + MS / 2), Hold::Go);
        assert_eq!(l.missing(50), 0);
        // Once it went, the next flush goes at once until a completion says otherwise.
        assert_eq!(l.hold(1, t0 + MS), Hold::Go);
    }

    #[test]
    fn the_wait_ends_at_its_deadline_and_is_bounded_by_half_the_last_io_time() {
        let mut l = Linger::new(MS);
        let t0 = Instant::now();
        l.flush_done(64, 0, MS / 5);
        assert_eq!(l.hold(1, t0).until(), Some(t0 + MS / 10));
        assert_eq!(l.hold(1, t0 + MS / 10), Hold::GoAtDeadline);
        // Over: the next flush goes at once.
        assert_eq!(l.hold(1, t0 + MS / 5), Hold::Go);
    }

    #[test]
    fn waits_that_run_out_back_off_for_twice_as_many_flushes_each_time_until_one_is_met() {
        let t0 = Instant::now();
        let mut l = Linger::new(MS);
        // Flushes that waited (true) or went at once (false), with nobody ever coming back.
        let mut waited = Vec::new();
        for _ in 0..12 {
            l.flush_done(8, 0, 10 * MS);
            let w = l.hold(1, t0).until().is_some();
            if w {
                assert_eq!(l.hold(1, t0 + MS), Hold::GoAtDeadline);
            }
            waited.push(w);
        }
        let t = true;
        let f = false;
        assert_eq!(waited, [t, f, t, f, f, t, f, f, f, f, t, f]);
        // A wait that is met ends the back-off: after the skipped flushes, every flush waits
        // again.
        for _ in 0..8 {
            l.flush_done(8, 0, 10 * MS);
            assert_eq!(l.hold(8, t0), Hold::Go);
        }
        l.flush_done(8, 0, 10 * MS);
        assert!(l.hold(1, t0).until().is_some());
        assert_eq!(l.hold(8, t0), Hold::Go);
        for _ in 0..3 {
            l.flush_done(8, 0, 10 * MS);
            assert!(l.hold(1, t0).until().is_some(), "no back-off left");
            assert_eq!(l.hold(9, t0), Hold::Go);
        }
    }

    #[test]
    fn nothing_waits_when_as_many_arrived_during_the_flush_as_it_carried_or_when_off() {
        let t0 = Instant::now();
        let mut l = Linger::new(MS);
        l.flush_done(10, 10, 10 * MS);
        assert_eq!(l.hold(10, t0), Hold::Go);
        l.flush_done(1, 0, 10 * MS);
        // A lone appender that came back: one expected, one there.
        assert_eq!(l.hold(1, t0), Hold::Go);
        let mut off = Linger::new(Duration::ZERO);
        off.flush_done(64, 0, 10 * MS);
        assert_eq!(off.hold(1, t0), Hold::Go);
    }
}
