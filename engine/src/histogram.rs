//! A lock-free histogram with power-of-two buckets, cheap enough to feed from a shard's loop
//! and read from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets: bucket `b` counts values in `[2^(b-1), 2^b)` (bucket 0 counts zeros).
pub const LOG2_BUCKETS: usize = 32;

/// Counts of values by power-of-two bucket.
#[derive(Debug)]
pub struct Log2Histogram {
    buckets: [AtomicU64; LOG2_BUCKETS],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LOG2_BUCKETS],
        }
    }
}

impl Log2Histogram {
    /// Counts one value.
    pub fn record(&self, value: u64) {
        let bucket = (u64::BITS - value.leading_zeros()) as usize;
        self.buckets[bucket.min(LOG2_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the current counts into `into`.
    pub fn add_to(&self, into: &mut [u64; LOG2_BUCKETS]) {
        for (sum, b) in into.iter_mut().zip(&self.buckets) {
            *sum += b.load(Ordering::Relaxed);
        }
    }
}

#[cfg(any(test, feature = "testing"))]
/// The upper bound of the bucket holding quantile `q` (0..=1) of `counts`: the value is below
/// it. 0 when nothing was counted.
pub fn quantile_upper_bound(counts: &[u64; LOG2_BUCKETS], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= want {
            return 1u64 << b;
        }
    }
    1u64 << (LOG2_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let h = Log2Histogram::default();
        for v in [0, 1, 2, 3, 100, 100, 100, 100, 100, 5000] {
            h.record(v);
        }
        let mut counts = [0; LOG2_BUCKETS];
        h.add_to(&mut counts);
        assert_eq!(counts.iter().sum::<u64>(), 10);
        assert_eq!(
            quantile_upper_bound(&counts, 0.5),
            128,
            "100 is in [64, 128)"
        );
        assert_eq!(
            quantile_upper_bound(&counts, 1.0),
            8192,
            "5000 is in [4096, 8192)"
        );
        assert_eq!(quantile_upper_bound(&counts, 0.0), 1, "the zero bucket");
        assert_eq!(quantile_upper_bound(&[0; LOG2_BUCKETS], 0.99), 0);
    }
}
