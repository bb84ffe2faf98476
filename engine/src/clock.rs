//! The engine's clock: when timers (lingering flushes, long polls, ack deadlines, sessions,
//! nack delays, table syncs) are due. In keeld it is the monotonic clock. Under the
//! deterministic simulator (`testing` builds, [`crate::simulation`]) time stands still until
//! the simulator moves it, so a deadline passes when a seed says so, never because the machine
//! was slow, and no test sleeps for it.

use std::time::Instant;

/// Now, on the engine's clock.
#[cfg(not(feature = "testing"))]
#[inline]
pub fn now() -> Instant {
    Instant::now()
}

/// Now, on the engine's clock: simulated time while a simulation runs in this process.
#[cfg(feature = "testing")]
pub fn now() -> Instant {
    simulated::now().unwrap_or_else(Instant::now)
}

/// Simulated time, process-wide: one simulation at a time moves it (the simulator holds a
/// lock for its run).
#[cfg(feature = "testing")]
pub mod simulated {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    static ON: AtomicBool = AtomicBool::new(false);
    /// The real instant simulated time counts from.
    static BASE: OnceLock<Instant> = OnceLock::new();
    /// Nanoseconds of simulated time after [`BASE`]; never goes back, across simulations.
    static NANOS: AtomicU64 = AtomicU64::new(0);

    /// Simulated now, while simulated time is on.
    pub(crate) fn now() -> Option<Instant> {
        if !ON.load(Ordering::Acquire) {
            return None;
        }
        let base = *BASE.get()?;
        Some(base + Duration::from_nanos(NANOS.load(Ordering::Acquire)))
    }

    /// Stops the engine's clock: from now on it moves only by [`advance`].
    pub fn start() {
        let base = *BASE.get_or_init(Instant::now);
        // Not before any instant the engine took from the real clock until now.
        let real = Instant::now().saturating_duration_since(base).as_nanos();
        let real = u64::try_from(real).unwrap_or(u64::MAX);
        NANOS.fetch_max(real, Ordering::AcqRel);
        ON.store(true, Ordering::Release);
    }

    /// Moves simulated time on by `by`.
    pub fn advance(by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        NANOS.fetch_add(nanos, Ordering::AcqRel);
    }

    /// Gives the engine the real clock back.
    pub fn stop() {
        ON.store(false, Ordering::Release);
    }
}
