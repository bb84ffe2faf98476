//! What bounds one connection's memory and time, shared by every way of serving connections:
//! bytes held for frames still arriving come from a server-wide pool, a frame must arrive
//! within `frame_read_timeout`, and a connection with nothing to do is closed after
//! `idle_timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_protocol::read_room;

use crate::budget::{BudgetHold, ByteBudget};
use crate::config::ServerConfig;
use crate::log_limit::RateLimitedWarn;

/// Connections cut off for a slow frame, and for idleness: each logged at most once a second.
static CUT_OFF_SLOW: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));
static CUT_OFF_IDLE: RateLimitedWarn = RateLimitedWarn::new(Duration::from_secs(1));

/// Bytes a connection's receive buffer holds without drawing on the partial-frame pool.
pub const OWN_BUFFER_BYTES: usize = 256 * 1024;

/// The limits every connection is served within.
#[derive(Debug)]
pub struct ConnLimits {
    /// Request and answer bytes in flight before the connection is not read any more.
    pub inflight_bytes: usize,
    /// Longest the client may take no answer bytes while answers wait.
    pub write_timeout: Duration,
    /// Longest a frame may take to arrive once its first byte has.
    pub frame_read_timeout: Duration,
    /// Longest a connection may send nothing while nothing of it is in flight.
    pub idle_timeout: Duration,
    /// Bytes a connection's receive buffer may hold without drawing on `partial_pool`.
    pub own_bytes: usize,
    /// Bytes held for partial frames beyond `own_bytes`, server-wide.
    partial_pool: Arc<ByteBudget>,
    /// Requests a network loop (or the portable server) may have waiting on the engine.
    pub waiting_requests: usize,
}

/// Why a connection is closed by its limits, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A frame did not arrive within `frame_read_timeout_ms`.
    FrameTooSlow,
    /// Nothing was sent for `idle_timeout_ms`.
    Idle,
}

impl Expired {
    /// Logs (rate-limited per reason) that `peer`'s connection is closed for this.
    pub fn log(self, peer: std::net::SocketAddr) {
        let (limit, reason) = match self {
            Self::FrameTooSlow => (
                &CUT_OFF_SLOW,
                "a frame did not arrive within frame_read_timeout_ms",
            ),
            Self::Idle => (&CUT_OFF_IDLE, "it sent nothing for idle_timeout_ms"),
        };
        limit.warn(|| format!("{peer}: closing the connection: {reason}"));
    }
}

impl ConnLimits {
    /// The limits `cfg` sets.
    pub fn from_config(cfg: &ServerConfig) -> Arc<Self> {
        let ms = Duration::from_millis;
        Arc::new(Self {
            inflight_bytes: cfg.connection_inflight_bytes,
            write_timeout: ms(cfg.write_timeout_ms),
            frame_read_timeout: ms(cfg.frame_read_timeout_ms),
            idle_timeout: ms(cfg.idle_timeout_ms),
            own_bytes: OWN_BUFFER_BYTES,
            partial_pool: ByteBudget::new(cfg.partial_frame_bytes),
            waiting_requests: cfg.waiting_requests,
        })
    }

    /// How often a server must look at its connections' clocks so that none outlives a limit
    /// by much.
    pub fn check_every(&self) -> Duration {
        let shortest = self
            .frame_read_timeout
            .min(self.idle_timeout)
            .min(self.write_timeout);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What one connection holds of the partial-frame pool, and its clocks.
#[derive(Debug)]
pub struct ConnState {
    limits: Arc<ConnLimits>,
    holds: Vec<BudgetHold>,
    held: usize,
    /// When the first byte of the frame now arriving came (none while the buffer holds no
    /// partial frame).
    frame_started: Option<Instant>,
    last_received: Instant,
}

impl ConnState {
    /// A new connection's state.
    pub fn new(limits: &Arc<ConnLimits>) -> Self {
        Self {
            limits: Arc::clone(limits),
            holds: Vec::new(),
            held: 0,
            frame_started: None,
            last_received: Instant::now(),
        }
    }

    /// The most the receive buffer may hold after its next read, given what it holds
    /// (`pending`, from a frame boundary) and its read size `chunk`: its own bytes, plus what
    /// the pool grants for a frame larger than that. Gives the pool back what a finished frame
    /// no longer needs.
    pub fn buffer_limit(&mut self, pending: &[u8], chunk: usize) -> usize {
        let own = self.limits.own_bytes;
        let wanted = read_room(pending, chunk).saturating_sub(own);
        if pending.len() <= own {
            // No frame larger than the buffer's own bytes is arriving.
            self.holds.clear();
            self.held = 0;
        }
        if wanted > self.held {
            if let Some(hold) = self.limits.partial_pool.try_acquire(wanted - self.held) {
                self.holds.push(hold);
                self.held = wanted;
            }
        }
        own + self.held
    }

    /// Notes that bytes arrived.
    pub fn received(&mut self, now: Instant) {
        self.last_received = now;
    }

    /// Notes what the buffer holds after its whole frames were handled: `partial` when it
    /// holds the start of a frame, `took_frames` when frames were taken since the last call
    /// (a new frame then started).
    pub fn handled(&mut self, partial: bool, took_frames: bool, now: Instant) {
        self.frame_started = match (partial, took_frames, self.frame_started) {
            (false, _, _) => None,
            (true, true, _) | (true, false, None) => Some(now),
            (true, false, Some(at)) => Some(at),
        };
    }

    /// Whether a limit has run out. `waiting_for_server`: the connection is not read because
    /// of the server (its answers or a budget), so a frame's slowness is not the client's;
    /// `busy`: requests of it are in flight, so it is not idle.
    pub fn expired(&self, now: Instant, waiting_for_server: bool, busy: bool) -> Option<Expired> {
        let limits = &self.limits;
        if let Some(at) = self.frame_started {
            if !waiting_for_server && now.duration_since(at) > limits.frame_read_timeout {
                return Some(Expired::FrameTooSlow);
            }
        }
        let quiet = self.frame_started.is_none() && !busy;
        if quiet && now.duration_since(self.last_received) > limits.idle_timeout {
            return Some(Expired::Idle);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pool: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            inflight_bytes: 1 << 20,
            write_timeout: Duration::from_secs(30),
            frame_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            own_bytes: 1000,
            partial_pool: ByteBudget::new(pool),
            waiting_requests: 16,
        })
    }

    #[test]
    fn frames_larger_than_a_connection_s_own_bytes_draw_on_the_pool_until_it_is_spent() {
        let l = limits(8000);
        let mut a = ConnState::new(&l);
        let mut b = ConnState::new(&l);
        let mut frame = 100_000u32.to_le_bytes().to_vec();
        frame.resize(1500, 0);
        // Holding 1500 of a 100,004-byte frame, each wants room for 6000: 5000 from the pool.
        assert_eq!(a.buffer_limit(&frame, 100), 6000);
        let b_limit = b.buffer_limit(&frame, 100);
        assert_eq!(b_limit, 1000, "3000 left, not the 5000 it wants");
        // The frame done, a gives its share back, and b can grow.
        assert_eq!(a.buffer_limit(&[], 100), 1000);
        assert_eq!(b.buffer_limit(&frame, 100), 6000);
    }

    #[test]
    fn a_slow_frame_and_a_silent_connection_expire_but_waiting_on_the_server_does_not() {
        let l = limits(0);
        let start = Instant::now();
        let mut c = ConnState::new(&l);
        c.handled(true, false, start);
        let later = start + Duration::from_millis(1500);
        assert_eq!(c.expired(later, false, false), Some(Expired::FrameTooSlow));
        assert_eq!(c.expired(later, true, false), None, "parked by the server");
        c.handled(true, true, later);
        assert_eq!(
            c.expired(later + Duration::from_millis(500), false, false),
            None
        );
        c.handled(false, true, later);
        let idle = start + Duration::from_secs(6);
        assert_eq!(
            c.expired(idle, false, true),
            None,
            "a long poll is in flight"
        );
        assert_eq!(c.expired(idle, false, false), Some(Expired::Idle));
        c.received(idle);
        assert_eq!(c.expired(idle, false, false), None);
    }
}
