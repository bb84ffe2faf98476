//! A tiny deterministic generator for the simulated faults of tests: the same seed makes the
//! same choices, so a failing seed can be replayed. Not for anything that needs randomness.

/// Xorshift64 from `seed` (0 is turned into 1: xorshift never leaves 0).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
