//! A latency histogram with fixed buckets for a proxy: 100 µs to 30 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds; one more bucket holds everything above.
pub const BOUNDS_NS: [u64; 17] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Buckets, counting the one above the last bound (`+Inf`).
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// One worker's observations: a count per bucket (not cumulative) and their sum, in
/// microseconds (so 2^64 of them last, at 10,000 thirty-second requests a second, some two
/// thousand years).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least `ns`: bounds are inclusive (`le`).
        let i = BOUNDS_NS.partition_point(|bound| *bound < ns);
        if let Some(count) = self.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(ns / 1_000, Ordering::Relaxed);
    }

    /// Adds these observations to `into`.
    pub fn add_to(&self, into: &mut Merged) {
        for (total, count) in into.counts.iter_mut().zip(&self.counts) {
            *total += count.load(Ordering::Relaxed);
        }
        into.sum_us = into
            .sum_us
            .wrapping_add(self.sum_us.load(Ordering::Relaxed));
    }
}

/// Observations summed over workers (or taken apart over time), for exposition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    pub counts: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Merged {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// `(upper bound in seconds, count)` per bucket, not cumulative, ending with `+Inf`.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let bounds = BOUNDS_NS
            .iter()
            .map(|b| *b as f64 / 1e9)
            .chain([f64::INFINITY]);
        bounds.zip(self.counts).collect()
    }

    /// What was observed since `earlier` (a reading of the same histogram).
    pub fn since(&self, earlier: &Merged) -> Merged {
        let mut out = *self;
        for (c, e) in out.counts.iter_mut().zip(earlier.counts) {
            *c = c.saturating_sub(e);
        }
        out.sum_us = self.sum_us.wrapping_sub(earlier.sum_us);
        out
    }

    pub fn add(&mut self, other: &Merged) {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c += o;
        }
        self.sum_us = self.sum_us.wrapping_add(other.sum_us);
    }

    /// The `q` quantile (0..=1) in seconds, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; the last bound when it falls above it. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            let upto = below + count;
            if *count > 0 && upto as f64 >= rank {
                let Some(upper) = BOUNDS_NS.get(i) else {
                    return BOUNDS_NS.last().map(|b| *b as f64 / 1e9);
                };
                let lower = if i == 0 { 0 } else { BOUNDS_NS[i - 1] };
                let within = (rank - below as f64) / *count as f64;
                let ns = lower as f64 + (*upper - lower) as f64 * within;
                return Some(ns / 1e9);
            }
            below = upto;
        }
        BOUNDS_NS.last().map(|b| *b as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(h: &Histogram) -> Merged {
        let mut m = Merged::default();
        h.add_to(&mut m);
        m
    }

    #[test]
    fn bounds_are_inclusive_and_the_last_bucket_takes_the_rest() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100));
        h.record(Duration::from_micros(101));
        h.record(Duration::from_secs(30));
        h.record(Duration::from_secs(31));
        h.record(Duration::ZERO);
        let m = merged(&h);
        assert_eq!(m.counts[0], 2, "0 and 100 µs are ≤ 100 µs");
        assert_eq!(m.counts[1], 1, "101 µs is in ≤ 250 µs");
        assert_eq!(m.counts[BUCKETS - 2], 1, "30 s is ≤ 30 s");
        assert_eq!(m.counts[BUCKETS - 1], 1, "31 s is above every bound");
        assert_eq!(m.count(), 5);
        assert_eq!(m.sum_us, 61_000_201);
        // A sum far past what nanoseconds hold in 64 bits (584 years) does not wrap.
        let long = Histogram::default();
        for _ in 0..1_000 {
            long.record(Duration::from_secs(365 * 24 * 3600));
        }
        assert!((merged(&long).sum_seconds() - 1_000.0 * 365.0 * 24.0 * 3600.0).abs() < 1.0);
    }

    #[test]
    fn buckets_end_with_inf_and_since_takes_a_difference() {
        let h = Histogram::default();
        h.record(Duration::from_millis(3));
        let before = merged(&h);
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(300));
        let window = merged(&h).since(&before);
        assert_eq!(window.count(), 2);
        let buckets = window.buckets();
        assert_eq!(buckets.len(), BUCKETS);
        assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
        assert_eq!(buckets[5], (0.005, 1));
        assert_eq!(buckets[11], (0.5, 1));
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let h = Histogram::default();
        assert_eq!(merged(&h).quantile(0.99), None);
        for _ in 0..100 {
            h.record(Duration::from_millis(7));
        }
        // All in (5 ms, 10 ms]: the median is half-way.
        let p50 = merged(&h).quantile(0.5).expect("observations");
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        h.record(Duration::from_secs(60));
        assert_eq!(merged(&h).quantile(1.0), Some(30.0));
    }
}
