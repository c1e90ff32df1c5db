//! A bounded log-bucket histogram of latencies, for whole-run quantiles.
//!
//! A run can last hours at sub-second intervals, so storing every latency is out of the
//! question. Latencies are recorded in whole microseconds into buckets laid out like
//! HdrHistogram's: values below 128 µs get one bucket each (exact), and every power of two
//! above is split into 64 equal buckets, so a bucket is at most 1/64 of its lower bound
//! wide. A quantile is reported as its bucket's midpoint (clamped to the observed minimum
//! and maximum), so its **relative error is at most 1/128 (< 0.8 %)**; the maximum is
//! exact. Latencies are truncated to whole microseconds first. Values are clamped at
//! 2^42 µs (about 51 days), which bounds the histogram at 2 368 buckets (9 KiB); the
//! bucket vector only grows as far as the largest value seen (a few KiB: every
//! invariant has one). A bucket counts up to 2^32 - 1 samples, 13 years at the shortest
//! interval (100 ms); it would saturate rather than wrap.

use std::time::Duration;

/// Sub-buckets per power of two, as a power of two: 2^6 = 64 buckets.
const SUB_BITS: u32 = 6;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Largest recorded value in microseconds; larger ones are clamped to it.
const MAX_MICROS: u64 = (1 << 42) - 1;

/// Whole microseconds of a duration, saturating.
#[inline]
pub(crate) fn micros(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

/// The rank (1-based) of the `q`-quantile among `n` sorted values, by the nearest-rank
/// definition: the smallest value with at least `ceil(q * n)` values at or below it.
///
/// The tiny epsilon keeps binary rounding (0.9 * 10 = 9.000000000000002) from pushing
/// the rank one too high. `q` outside (0, 1] or NaN is clamped (validation prevents it).
pub(crate) fn rank(q: f64, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let r = (q * n as f64 - 1e-9).ceil();
    // `as` saturates (NaN becomes 0), then the clamp keeps the rank within 1..=n.
    (r as u64).clamp(1, n)
}

/// Bucket index of a value in microseconds.
#[inline]
fn bucket_of(us: u64) -> usize {
    let us = us.min(MAX_MICROS);
    if us < 2 * SUB {
        us as usize
    } else {
        let exponent = 63 - us.leading_zeros(); // >= SUB_BITS + 1
        let shift = exponent - SUB_BITS; // >= 1
        let mantissa = us >> shift; // in [SUB, 2 * SUB)
        ((u64::from(shift) + 1) * SUB + (mantissa - SUB)) as usize
    }
}

/// The values `[low, high]` (inclusive, microseconds) that fall into bucket `index`.
fn bucket_range(index: usize) -> (u64, u64) {
    let i = index as u64;
    if i < 2 * SUB {
        (i, i)
    } else {
        let shift = i / SUB - 1;
        let mantissa = i % SUB + SUB;
        let low = mantissa << shift;
        (low, low + (1u64 << shift) - 1)
    }
}

/// Latency quantiles over the whole run.
#[derive(Clone, Debug, Default)]
pub(crate) struct LatencyHistogram {
    counts: Vec<u32>,
    total: u64,
    min_us: u64,
    max_us: u64,
}

impl LatencyHistogram {
    /// Records one latency.
    #[inline]
    pub(crate) fn record(&mut self, latency: Duration) {
        let us = micros(latency).min(MAX_MICROS);
        let index = bucket_of(us);
        if index >= self.counts.len() {
            // Grows at most 2 368 times over a run (once per new largest bucket), so exact
            // growth costs nothing, while doubling would leave about 2 KiB unused per
            // invariant (latencies of a few ms reach bucket 300-400).
            self.counts.reserve_exact(index + 1 - self.counts.len());
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] = self.counts[index].saturating_add(1);
        if self.total == 0 {
            self.min_us = us;
            self.max_us = us;
        } else {
            self.min_us = self.min_us.min(us);
            self.max_us = self.max_us.max(us);
        }
        self.total += 1;
    }

    /// The largest recorded latency in seconds (exact up to the clamp).
    pub(crate) fn max_seconds(&self) -> Option<f64> {
        (self.total > 0).then(|| self.max_us as f64 / 1e6)
    }

    /// The `q`-quantile in seconds (relative error < 0.8 %), `None` when empty.
    #[cfg(test)]
    pub(crate) fn quantile_seconds(&self, q: f64) -> Option<f64> {
        self.quantiles_seconds([q]).map(|[v]| v)
    }

    /// Several quantiles in seconds (each as [`Self::quantile_seconds`]), in one walk of
    /// the buckets from the smallest value seen; `qs` must be in ascending order. The
    /// engine asks for three of every invariant each second, so one walk instead of three
    /// from bucket 0 matters at 1,000 invariants.
    pub(crate) fn quantiles_seconds<const N: usize>(&self, qs: [f64; N]) -> Option<[f64; N]> {
        if self.total == 0 {
            return None;
        }
        let mut out = [0.0; N];
        // Buckets below the minimum's are empty.
        let mut index = bucket_of(self.min_us);
        // Samples in the buckets before `index`.
        let mut seen = 0u64;
        for (slot, &q) in out.iter_mut().zip(&qs) {
            let wanted = rank(q, self.total);
            while let Some(&count) = self.counts.get(index)
                && seen + u64::from(count) < wanted
            {
                seen += u64::from(count);
                index += 1;
            }
            *slot = if index < self.counts.len() {
                let (low, high) = bucket_range(index);
                let mid = (low as f64 + high as f64) / 2.0;
                mid.clamp(self.min_us as f64, self.max_us as f64) / 1e6
            } else {
                self.max_us as f64 / 1e6
            };
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut expected_low = 0;
        for index in 0..=bucket_of(MAX_MICROS) {
            let (low, high) = bucket_range(index);
            assert_eq!(low, expected_low, "bucket {index}");
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(high), index);
            assert!((high - low) as f64 <= low as f64 / 64.0 || high == low);
            expected_low = high + 1;
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(MAX_MICROS));
        assert_eq!(bucket_of(MAX_MICROS) + 1, 2_368);
    }

    #[test]
    fn quantiles_within_documented_error() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_seconds(0.5), None);
        // 1 ms .. 10 s in 1 ms steps.
        for ms in 1..=10_000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, exact) in [(0.5, 5.0), (0.9, 9.0), (0.99, 9.9), (1.0, 10.0)] {
            let got = h.quantile_seconds(q).unwrap_or_default();
            assert!(
                (got - exact).abs() / exact <= 1.0 / 128.0,
                "q={q} got {got} want {exact}"
            );
        }
        assert_eq!(h.max_seconds(), Some(10.0));
        assert_eq!(h.total, 10_000);
    }

    /// One walk from the minimum's bucket gives what sorting the values gives, within the
    /// documented error, for values that start well above zero and leave empty buckets.
    #[test]
    fn several_quantiles_in_one_walk_match_the_sorted_values() {
        let mut h = LatencyHistogram::default();
        let mut values: Vec<u64> = (0..997u64)
            .map(|i| 80 + (i * 7919) % 5_000 + if i % 10 == 0 { 90_000 } else { 0 })
            .collect();
        for &us in &values {
            h.record(Duration::from_micros(us));
        }
        values.sort_unstable();
        let qs = [0.0, 0.5, 0.9, 0.99, 1.0];
        let got = h.quantiles_seconds(qs).unwrap();
        for (q, got) in qs.into_iter().zip(got) {
            let exact = values[rank(q, values.len() as u64) as usize - 1] as f64 / 1e6;
            assert!(
                (got - exact).abs() / exact <= 1.0 / 128.0,
                "q={q} got {got} want {exact}"
            );
            assert_eq!(h.quantile_seconds(q), Some(got), "q={q}");
        }
    }

    #[test]
    fn extreme_latencies_are_clamped_not_panicking() {
        let mut h = LatencyHistogram::default();
        h.record(Duration::MAX);
        h.record(Duration::ZERO);
        assert_eq!(h.quantile_seconds(0.0), Some(0.0));
        assert!(h.quantile_seconds(1.0).is_some_and(|s| s > 4e6));
        assert!(h.quantile_seconds(f64::NAN).is_some());
    }

    #[test]
    fn rank_is_nearest_rank() {
        assert_eq!(rank(0.9, 10), 9);
        assert_eq!(rank(0.99, 100), 99);
        assert_eq!(rank(0.5, 3), 2);
        assert_eq!(rank(1.0, 7), 7);
        assert_eq!(rank(0.0, 7), 1);
        assert_eq!(rank(f64::NAN, 7), 1);
        assert_eq!(rank(0.5, 0), 0);
    }

    #[test]
    fn a_full_bucket_saturates_instead_of_wrapping() {
        let mut h = LatencyHistogram::default();
        h.record(Duration::from_micros(5));
        h.counts[5] = u32::MAX;
        h.total = u64::from(u32::MAX);
        h.record(Duration::from_micros(5));
        h.record(Duration::from_micros(9));
        assert_eq!(h.counts[5], u32::MAX);
        assert_eq!(h.total, u64::from(u32::MAX) + 2);
        assert_eq!(h.quantile_seconds(0.5), Some(5e-6));
        assert_eq!(h.quantile_seconds(1.0), Some(9e-6));
    }

    #[test]
    fn buckets_grow_only_as_far_as_the_largest_latency() {
        let mut h = LatencyHistogram::default();
        for us in [100, 2_000, 700] {
            h.record(Duration::from_micros(us));
        }
        let needed = bucket_of(2_000) + 1;
        assert_eq!(h.counts.len(), needed);
        assert_eq!(h.counts.capacity(), needed, "no amortized over-allocation");
    }
}
