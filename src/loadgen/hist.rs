//! A log-linear latency histogram with a fixed footprint, safe to record into from many tasks.
//!
//! Values (nanoseconds) below 128 are counted exactly; above, every power of two is split into
//! 128 equal buckets, so a reported percentile is within 0.4% of the true value (the bucket
//! midpoint is reported). The whole range of `u64` fits in 7,424 counters (58 KiB), whatever
//! the number of samples: memory stays bounded however long a run is.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-bucket bits: 2^7 = 128 buckets per power of two.
const SUB_BITS: u32 = 7;
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Buckets needed for the whole `u64` range.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB_COUNT;

/// A concurrent histogram of `u64` values (the load modes record nanoseconds).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    max: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("max", &self.max())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample (exact).
    pub max: f64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Count one value.
    #[inline]
    pub fn record(&self, value: u64) {
        self.counts[index_of(value)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The largest value recorded, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0.0 to 1.0): the midpoint of the bucket holding the sample of
    /// rank `ceil(q * count)`, capped at the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return midpoint_of(i).min(self.max());
            }
        }
        self.max()
    }

    /// p50, p90, p99 and max, converted from nanoseconds to microseconds.
    pub fn percentiles_us(&self) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: self.count(),
            p50: us(self.quantile(0.50)),
            p90: us(self.quantile(0.90)),
            p99: us(self.quantile(0.99)),
            max: us(self.max()),
        }
    }
}

#[inline]
fn index_of(value: u64) -> usize {
    if value < SUB_COUNT as u64 {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let mantissa = (value >> shift) as usize; // in [SUB_COUNT, 2 * SUB_COUNT)
    ((shift as usize + 1) << SUB_BITS) + (mantissa - SUB_COUNT)
}

fn midpoint_of(index: usize) -> u64 {
    if index < SUB_COUNT {
        return index as u64;
    }
    let shift = (index >> SUB_BITS) - 1;
    let mantissa = ((index & (SUB_COUNT - 1)) + SUB_COUNT) as u64;
    let low = mantissa << shift;
    low + ((1u64 << shift) >> 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_small_values_are_exact() {
        let h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.max(), 100);
    }

    #[test]
    fn quantile_large_values_within_relative_error() {
        let h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, exact) in [(0.5, 50_000_000u64), (0.9, 90_000_000), (0.99, 99_000_000)] {
            let got = h.quantile(q) as f64;
            let err = (got - exact as f64).abs() / exact as f64;
            assert!(err < 0.005, "q={q} got {got} want {exact}");
        }
    }

    #[test]
    fn index_covers_u64_range_monotonically() {
        let mut last = 0;
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) | ((1u64 << shift) - 1)] {
                let i = index_of(v);
                assert!(i < BUCKETS);
                assert!(i >= last);
                last = i;
            }
        }
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.percentiles_us(), Percentiles::default());
    }
}
