//! What one workload measured, in the shape every report (table, JSON, plot) reads it from.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// "p50 / p90 / p99 / p99.9 / max µs", for tables.
    pub fn cells(&self) -> String {
        format!(
            "{} / {} / {} / {} / {} µs",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes at 3 significant digits.
pub fn latency_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())
}

/// Records `n` samples of `us` microseconds, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, us: u64, n: u64) {
    let us = us.clamp(1, h.high());
    // In range by the clamp above, so recording cannot fail.
    let _ = h.record_n(us, n);
}

/// Throughput and latency of one measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Messages acknowledged (produce) or consumed and acknowledged (consume).
    pub messages: u64,
    /// Seconds from the first send to the last acknowledgement.
    pub seconds: f64,
    pub msgs_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Produce→ack (or, for a drain, ack request→answer) latency.
    pub latency_us: Percentiles,
    /// Produce→consume latency, for end-to-end runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_us: Option<Percentiles>,
}

impl Figures {
    pub fn new(messages: u64, seconds: f64, message_bytes: usize, latency: Percentiles) -> Self {
        let msgs_per_s = if seconds > 0.0 {
            messages as f64 / seconds
        } else {
            0.0
        };
        Self {
            messages,
            seconds,
            msgs_per_s,
            mb_per_s: msgs_per_s * message_bytes as f64 / 1e6,
            latency_us: latency,
            end_to_end_us: None,
        }
    }

    /// "N msg/s, M MB/s, produce→ack p50 …", for progress and one-line reports.
    pub fn line(&self) -> String {
        let mut s = format!("{:.0} msg/s, {:.1} MB/s", self.msgs_per_s, self.mb_per_s);
        // A drain of a peer has no latency of its own to report.
        if self.latency_us.max > 0 {
            s += &format!(
                ", latency p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                self.latency_us.p50,
                self.latency_us.p90,
                self.latency_us.p99,
                self.latency_us.p999,
                self.latency_us.max
            );
        }
        if let Some(e) = &self.end_to_end_us {
            s += &format!(
                "; produce→consume p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
                e.p50, e.p99, e.p999, e.max
            );
        }
        s
    }

    /// The final table of a run: throughput, then one row per latency measured.
    pub fn table(&self) -> String {
        let mut t = format!(
            "| messages | seconds | msg/s | MB/s |\n|---|---|---|---|\n| {} | {:.2} | {:.0} | {:.1} |\n\n",
            self.messages, self.seconds, self.msgs_per_s, self.mb_per_s
        );
        t += "| latency | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|\n";
        let mut row = |name: &str, p: &Percentiles| {
            t += &format!(
                "| {name} | {} µs | {} µs | {} µs | {} µs | {} µs |\n",
                p.p50, p.p90, p.p99, p.p999, p.max
            );
        };
        row("produce→ack", &self.latency_us);
        if let Some(e) = &self.end_to_end_us {
            row("produce→consume", e);
        }
        t
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &std::path::Path, value: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_samples() -> Result<(), String> {
        let mut h = latency_histogram()?;
        for us in 1..=1000 {
            record(&mut h, us, 1);
        }
        record(&mut h, 0, 1); // clamped up to 1 µs
        record(&mut h, u64::MAX, 1); // clamped down to the top
        let p = Percentiles::of(&h);
        assert!((495..=505).contains(&p.p50), "{p:?}");
        assert!((895..=905).contains(&p.p90), "{p:?}");
        assert!((985..=995).contains(&p.p99), "{p:?}");
        assert!(p.max >= 599_000_000, "{p:?}");
        Ok(())
    }

    #[test]
    fn rates_come_from_messages_and_seconds() {
        let f = Figures::new(2_000, 2.0, 1000, Percentiles::default());
        assert_eq!(f.msgs_per_s, 1000.0);
        assert_eq!(f.mb_per_s, 1.0);
        assert_eq!(
            Figures::new(5, 0.0, 1, Percentiles::default()).msgs_per_s,
            0.0
        );
    }
}
