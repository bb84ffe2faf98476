//! Members of consumer groups. A member's record is shared by every shard serving its group
//! (each keeps its own map of the group's members, told of joins and leaves): what several
//! shards change is atomic (when it was last heard from, how many deliveries it holds over all
//! partitions, whether it left), so no shard waits for another on a consume or an ack.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::delivery::MemberId;

/// One member of one group.
#[derive(Debug)]
pub struct Member {
    /// Its id (never reused, also across restarts).
    pub id: MemberId,
    /// The connection it joined on: it leaves when that closes.
    pub conn: u64,
    /// It leaves when it sends nothing for this long.
    pub session_timeout: Duration,
    /// Deliveries it may hold unacknowledged, over all partitions.
    pub max_unacked: usize,
    joined: Instant,
    /// Microseconds from `joined` to when it was last heard from.
    last_seen_us: AtomicU64,
    /// Deliveries it holds unacknowledged, over all partitions.
    held: AtomicUsize,
    gone: AtomicBool,
}

impl Member {
    /// A member joining now.
    pub fn new(id: MemberId, conn: u64, session_timeout: Duration, max_unacked: usize) -> Self {
        Self {
            id,
            conn,
            session_timeout,
            max_unacked,
            joined: crate::clock::now(),
            last_seen_us: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
        }
    }

    /// It was heard from at `now`.
    pub fn touch(&self, now: Instant) {
        let us = now.saturating_duration_since(self.joined).as_micros() as u64;
        self.last_seen_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Whether its session ran out by `now`.
    pub fn silent_since(&self, now: Instant) -> bool {
        let seen = self.joined + Duration::from_micros(self.last_seen_us.load(Ordering::Relaxed));
        now.saturating_duration_since(seen) > self.session_timeout
    }

    /// Marks it gone; true for the caller that did (it left once).
    pub fn leave(&self) -> bool {
        !self.gone.swap(true, Ordering::AcqRel)
    }

    /// Whether it left.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Takes room for up to `want` more deliveries within its prefetch limit; returns how many
    /// it may be handed (give back what is not handed with [`Member::release`]).
    pub fn take_room(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                granted = want.min(self.max_unacked.saturating_sub(held));
                Some(held + granted)
            });
        granted
    }

    /// `n` of its deliveries left flight (or room taken was not used).
    pub fn release(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_bounded_by_the_prefetch_limit_over_every_taker() {
        let m = Member::new(1, 1, Duration::from_secs(10), 10);
        assert_eq!(m.take_room(6), 6);
        assert_eq!(m.take_room(6), 4, "the limit holds over two takers");
        assert_eq!(m.take_room(1), 0);
        m.release(3);
        assert_eq!(m.take_room(5), 3, "7 held of 10");
    }

    #[test]
    fn a_session_ends_after_its_timeout_of_silence_and_leaving_happens_once() {
        let m = Member::new(1, 1, Duration::from_millis(100), 10);
        let t0 = Instant::now();
        m.touch(t0);
        assert!(!m.silent_since(t0 + Duration::from_millis(50)));
        assert!(m.silent_since(t0 + Duration::from_millis(150)));
        m.touch(t0 + Duration::from_millis(120));
        assert!(!m.silent_since(t0 + Duration::from_millis(150)));
        assert!(m.leave());
        assert!(!m.leave());
        assert!(m.is_gone());
    }
}
