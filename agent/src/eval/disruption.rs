//! Disruption: how long the probe was failing, independent of the condition.
//!
//! An outage is a run of consecutive failed samples. A closed outage lasts from its first
//! failed sample to the next non-failed sample; an open one from its first failed sample
//! to one interval after its last. Either way an outage counts at least one interval: the
//! target may have gone down anywhere inside the gap before the first failed sample, so
//! one failed sample is one interval of disruption, not zero.
//!
//! Late samples (older than the newest sample seen, still within the evaluator's lateness
//! horizon) are folded in without reordering history:
//! - a late failed sample newer than the last non-failed sample belongs to the open
//!   outage and moves its start back to the sample's time;
//! - a late failed sample inside the last closed outage is already covered;
//! - any other late failed sample counts as a separate one-interval outage;
//! - a late non-failed sample does not end an outage (it predates the failures that
//!   opened it).

/// An outage that has not seen a non-failed sample yet.
#[derive(Clone, Copy, Debug)]
struct OpenOutage {
    start: i64,
    last_failed: i64,
}

/// Running disruption total.
#[derive(Clone, Debug)]
pub(crate) struct Disruption {
    interval_ms: i64,
    closed_ms: i64,
    open: Option<OpenOutage>,
    last_non_failed: Option<i64>,
    last_closed: Option<(i64, i64)>,
}

impl Disruption {
    /// No disruption yet; `interval_ms` is the invariant's sample interval.
    pub(crate) fn new(interval_ms: i64) -> Self {
        Disruption {
            interval_ms: interval_ms.max(0),
            closed_ms: 0,
            open: None,
            last_non_failed: None,
            last_closed: None,
        }
    }

    /// Folds in one sample at `at`; `late` when older than the newest sample seen.
    #[inline]
    pub(crate) fn observe(&mut self, at: i64, failed: bool, late: bool) {
        match (failed, late) {
            (true, false) => match &mut self.open {
                Some(o) => o.last_failed = o.last_failed.max(at),
                None => {
                    self.open = Some(OpenOutage {
                        start: at,
                        last_failed: at,
                    })
                }
            },
            (false, false) => {
                if let Some(o) = self.open.take() {
                    let lasted = at.saturating_sub(o.start).max(self.interval_ms);
                    self.closed_ms = self.closed_ms.saturating_add(lasted);
                    self.last_closed = Some((o.start, at));
                }
                self.last_non_failed = Some(at);
            }
            (true, true) => self.observe_late_failure(at),
            (false, true) => {}
        }
    }

    fn observe_late_failure(&mut self, at: i64) {
        let after_last_ok = self.last_non_failed.is_none_or(|ok| at > ok);
        if let Some(o) = &mut self.open
            && after_last_ok
        {
            o.start = o.start.min(at);
            return;
        }
        if self
            .last_closed
            .is_some_and(|(start, end)| start <= at && at < end)
        {
            return;
        }
        self.closed_ms = self.closed_ms.saturating_add(self.interval_ms);
    }

    /// Total disruption in seconds: closed outages plus the open one.
    pub(crate) fn seconds(&self) -> f64 {
        let open = self.open.map_or(0, |o| {
            o.last_failed
                .saturating_sub(o.start)
                .saturating_add(self.interval_ms)
                .max(self.interval_ms)
        });
        self.closed_ms.saturating_add(open) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(interval_ms: i64, samples: &[(i64, bool, bool)]) -> f64 {
        let mut d = Disruption::new(interval_ms);
        for &(at, failed, late) in samples {
            d.observe(at, failed, late);
        }
        d.seconds()
    }

    #[test]
    fn outages_count_at_least_one_interval() {
        // 3 s of failures in a 1 s stream, then recovery: 3 s.
        let s = [
            (0, false, false),
            (1000, true, false),
            (2000, true, false),
            (3000, true, false),
            (4000, false, false),
        ];
        assert_eq!(run(1000, &s), 3.0);
        // A single failure between two successes 200 ms apart still counts one interval.
        assert_eq!(run(1000, &[(0, true, false), (200, false, false)]), 1.0);
        // Open outage: last failed + interval - first failed.
        assert_eq!(run(1000, &[(0, true, false), (1000, true, false)]), 2.0);
        assert_eq!(run(1000, &[]), 0.0);
    }

    #[test]
    fn late_failures_extend_or_add_without_double_counting() {
        // Failures at 11 and 13 arrive first; the hanging request started at 10 and one at
        // 12 arrive late. The outage really started at 10.
        let s = [
            (9_000, false, false),
            (11_000, true, false),
            (13_000, true, false),
            (10_000, true, true),
            (15_000, false, false),
            (12_000, true, true),
        ];
        assert_eq!(run(1000, &s), 5.0);
        // A late failure before the last success is its own one-interval outage.
        let s = [
            (9_000, false, false),
            (10_000, false, false),
            (8_000, true, true),
        ];
        assert_eq!(run(1000, &s), 1.0);
        // A late success does not end an open outage.
        let s = [
            (10_000, true, false),
            (9_000, false, true),
            (11_000, true, false),
        ];
        assert_eq!(run(1000, &s), 2.0);
    }

    #[test]
    fn extreme_times_saturate() {
        let s = [(i64::MIN, true, false), (i64::MAX, false, false)];
        assert!(run(1000, &s).is_finite());
    }
}
