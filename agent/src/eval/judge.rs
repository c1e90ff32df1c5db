//! Per-sample verdicts: what one sample says about one condition.
//!
//! A [`Judge`] holds the condition's parameters and whatever rolling state the condition
//! needs (a window, a counter baseline) and turns each sample into a [`Judgement`]: Good,
//! Bad (with an error class and a reason) or Unknown, plus whether a Bad sample violates
//! the condition on its own. The state machine in [`super::Evaluator`] does the rest.
//!
//! Nothing here allocates per sample: a judgement carries a [`Why`] that borrows the
//! probe error or holds a few numbers, and is rendered to text only when someone needs it.

use std::fmt;
use std::time::Duration;

use super::fmt::{Human, Num, Percent, Secs};
use super::histogram::{micros, rank};
use super::window::RollingWindow;
use crate::config::Condition;
use crate::sample::{ErrorClass, Observation, ProbeError, Sample};

/// What a sample says about the condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The condition holds for this sample.
    Good,
    /// The condition does not hold for this sample.
    Bad,
    /// The sample says nothing about the condition.
    Unknown,
}

/// Why a sample got its verdict, rendered lazily.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Why<'a> {
    /// Nothing to say (unknown verdicts).
    Nothing,
    /// The probe succeeded.
    ProbeOk,
    /// The probe failed; rendered as the probe's message (the class is kept apart).
    ProbeFailed(&'a ProbeError),
    /// A latency against its maximum, in microseconds.
    Latency {
        /// Observed latency.
        micros: u64,
        /// Largest allowed latency.
        max_micros: u64,
    },
    /// A value against its bounds.
    Value {
        /// Observed value.
        value: f64,
        /// Smallest allowed value.
        min: Option<f64>,
        /// Largest allowed value.
        max: Option<f64>,
    },
    /// A counter's growth against its maximum.
    Increase {
        /// Growth over the run or window.
        growth: f64,
        /// Largest allowed growth.
        max: f64,
    },
}

impl fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Why::Nothing => Ok(()),
            Why::ProbeOk => f.write_str("probe succeeded"),
            Why::ProbeFailed(e) => f.write_str(&e.message),
            Why::Latency { micros, max_micros } => {
                let op = if micros > max_micros { ">" } else { "<=" };
                write!(f, "latency {} {op} {}", Secs(micros), Secs(max_micros))
            }
            Why::Value { value, min, max } => match (min, max) {
                (_, Some(hi)) if value > hi => write!(f, "value {} > max {}", Num(value), Num(hi)),
                (Some(lo), _) if value < lo => write!(f, "value {} < min {}", Num(value), Num(lo)),
                _ => write!(f, "value {} within bounds", Num(value)),
            },
            Why::Increase { growth, max } => {
                write!(f, "increased by {} (max {})", Num(growth), Num(max))
            }
        }
    }
}

impl Why<'_> {
    /// A compact identity of a numeric reason, so a message that would render the same
    /// as last time is not formatted again (a violated `increase` stays Bad, with the same
    /// growth, for every sample of a long run). `None` for text reasons, which are compared
    /// as text. The condition's bounds are fixed per evaluator, so only readings count.
    pub(crate) fn key(&self) -> Option<[u64; 2]> {
        match *self {
            Why::Latency { micros, .. } => Some([1, micros]),
            Why::Value { value, .. } => Some([2, value.to_bits()]),
            Why::Increase { growth, .. } => Some([3, growth.to_bits()]),
            Why::Nothing | Why::ProbeOk | Why::ProbeFailed(_) => None,
        }
    }
}

/// The verdict on one sample, with what the state machine needs to act on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Judgement<'a> {
    /// Good, Bad or Unknown.
    pub(crate) verdict: Verdict,
    /// For Bad: the probe's error class, or `None` when the probe succeeded but the
    /// condition failed (slow, out of bounds, grew too much).
    pub(crate) class: Option<ErrorClass>,
    /// Why, for messages.
    pub(crate) why: Why<'a>,
    /// For Bad: the condition is violated by this sample alone (window ratio below
    /// target, quantile above max, growth above max). Threshold `for` durations are
    /// decided by the state machine, which knows when the episode started.
    pub(crate) violates: bool,
}

impl<'a> Judgement<'a> {
    const UNKNOWN: Judgement<'static> = Judgement {
        verdict: Verdict::Unknown,
        class: None,
        why: Why::Nothing,
        violates: false,
    };

    fn good(why: Why<'a>) -> Self {
        Judgement {
            verdict: Verdict::Good,
            class: None,
            why,
            violates: false,
        }
    }

    fn bad(class: Option<ErrorClass>, why: Why<'a>, violates: bool) -> Self {
        Judgement {
            verdict: Verdict::Bad,
            class,
            why,
            violates,
        }
    }

    /// Text for reasons: the class (when there is one) and the message.
    pub(crate) fn describe(&self) -> String {
        match self.class {
            Some(class) => format!("{}: {}", class.as_str(), self.why),
            None => self.why.to_string(),
        }
    }
}

/// `ok / (ok + failed)` in percent, `None` without samples.
pub(crate) fn percent(ok: u64, failed: u64) -> Option<f64> {
    let total = ok.saturating_add(failed);
    // ok * 100 / total is correctly rounded, so a ratio exactly at the target compares
    // equal to it (999 of 1000 is not below 99.9 %).
    (total > 0).then(|| ok as f64 * 100.0 / total as f64)
}

/// Availability: the share of ok samples in a rolling window.
#[derive(Clone, Debug)]
pub(crate) struct AvailabilityJudge {
    target: f64,
    window: RollingWindow<bool>,
    ok: u64,
    failed: u64,
}

impl AvailabilityJudge {
    fn observe<'a>(&mut self, sample: &'a Sample, at: i64, end: i64) -> Judgement<'a> {
        let (ok_count, failed_count) = (&mut self.ok, &mut self.failed);
        let mut evicted = |ok: bool| {
            let count = if ok {
                &mut *ok_count
            } else {
                &mut *failed_count
            };
            *count = count.saturating_sub(1);
        };
        self.window.expire(end, &mut evicted);
        let ok = match &sample.observation {
            Observation::Ok { .. } => true,
            Observation::Failed(_) => false,
            Observation::Absent => return Judgement::UNKNOWN,
        };
        if self.window.insert(at, ok, &mut evicted) {
            if ok {
                self.ok += 1;
            } else {
                self.failed += 1;
            }
        }
        match &sample.observation {
            Observation::Failed(e) => {
                let below = self.window_percent().is_some_and(|p| p < self.target);
                Judgement::bad(Some(e.class), Why::ProbeFailed(e), below)
            }
            _ => Judgement::good(Why::ProbeOk),
        }
    }

    /// Availability over the window as of the last sample.
    fn window_percent(&self) -> Option<f64> {
        percent(self.ok, self.failed)
    }

    /// Availability over the window ending at `end` (at or after the newest sample).
    fn window_percent_at(&self, end: i64) -> Option<f64> {
        let (mut ok, mut failed) = (self.ok, self.failed);
        for good in self.window.older_than(self.window.cutoff(end)) {
            if good {
                ok = ok.saturating_sub(1);
            } else {
                failed = failed.saturating_sub(1);
            }
        }
        percent(ok, failed)
    }
}

/// Latency: a quantile of non-failed samples' latencies in a rolling window.
#[derive(Clone, Debug)]
pub(crate) struct LatencyJudge {
    quantile: f64,
    max_micros: u64,
    window: RollingWindow<u64>,
    slow: u64,
}

impl LatencyJudge {
    fn observe<'a>(&mut self, sample: &'a Sample, at: i64, end: i64) -> Judgement<'a> {
        let max_micros = self.max_micros;
        let slow = &mut self.slow;
        let mut evicted = |us: u64| {
            if us > max_micros {
                *slow = slow.saturating_sub(1);
            }
        };
        self.window.expire(end, &mut evicted);
        match &sample.observation {
            Observation::Absent => Judgement::UNKNOWN,
            // You can't be fast if you don't answer: a failure violates at once.
            Observation::Failed(e) => Judgement::bad(Some(e.class), Why::ProbeFailed(e), true),
            Observation::Ok { .. } => {
                let us = micros(sample.latency);
                let is_slow = us > self.max_micros;
                if self.window.insert(at, us, &mut evicted) && is_slow {
                    self.slow += 1;
                }
                let why = Why::Latency {
                    micros: us,
                    max_micros: self.max_micros,
                };
                if is_slow {
                    Judgement::bad(None, why, self.slow > self.allowed_slow())
                } else {
                    Judgement::good(why)
                }
            }
        }
    }

    /// How many samples of the window may be slower than `max` while the quantile stays
    /// at or below it: with `n` samples the nearest-rank quantile is the `rank`-th
    /// smallest, so it is <= max iff at least `rank` samples are, i.e. at most
    /// `n - rank` are slower. This keeps the check O(1) per sample.
    fn allowed_slow(&self) -> u64 {
        let n = self.window.len() as u64;
        n - rank(self.quantile, n)
    }

    /// The quantile (µs) over the window ending at `end`; O(n), for summaries and
    /// reasons only.
    fn window_quantile_at(&self, end: i64) -> Option<u64> {
        let mut values: Vec<u64> = self.window.since(self.window.cutoff(end)).collect();
        let k = rank(self.quantile, values.len() as u64);
        if k == 0 {
            return None;
        }
        let (_, v, _) = values.select_nth_unstable((k - 1) as usize);
        Some(*v)
    }
}

/// Threshold: the value stays within `[min, max]`.
#[derive(Clone, Debug)]
pub(crate) struct ThresholdJudge {
    min: Option<f64>,
    max: Option<f64>,
    /// How long an episode must last before it is violated, in ms.
    pub(crate) for_ms: i64,
    /// The same, for messages.
    pub(crate) for_duration: Duration,
}

impl ThresholdJudge {
    fn observe<'a>(&self, sample: &'a Sample) -> Judgement<'a> {
        // A failed scrape or an absent series says nothing about the value.
        let Some(value) = sample.value().filter(|v| !v.is_nan()) else {
            return Judgement::UNKNOWN;
        };
        let why = Why::Value {
            value,
            min: self.min,
            max: self.max,
        };
        let above = self.max.is_some_and(|hi| value > hi);
        let below = self.min.is_some_and(|lo| value < lo);
        if above || below {
            Judgement::bad(None, why, false)
        } else {
            Judgement::good(why)
        }
    }
}

/// Increase: a counter's growth over the run or a window, with reset detection.
#[derive(Clone, Debug)]
pub(crate) struct IncreaseJudge {
    max: f64,
    /// The last present value (the baseline for the next delta).
    previous: Option<f64>,
    /// The probe succeeded with the series absent before it ever had a value.
    absent_before_first: bool,
    run_growth: f64,
    /// Deltas (only non-zero ones) by sample time, and their sum.
    window: Option<(RollingWindow<f64>, f64)>,
}

impl IncreaseJudge {
    fn observe<'a>(&mut self, sample: &'a Sample, at: i64, end: i64) -> Judgement<'a> {
        if let Some((window, sum)) = &mut self.window {
            window.expire(end, |delta| *sum -= delta);
            if window.is_empty() {
                // Floating-point sums drift; an empty window has grown by exactly 0, which
                // matters for the common `max: 0`.
                *sum = 0.0;
            }
        }
        let value = match sample.observation {
            Observation::Ok { value: Some(v) } if v.is_finite() => v,
            Observation::Absent => {
                // Series not there yet: remember it, so its first value counts as growth
                // from an implicit 0 (Kubernetes counter vectors only create a label set
                // on first increment). After a value, the series vanished: keep growth.
                if self.previous.is_none() {
                    self.absent_before_first = true;
                }
                return Judgement::UNKNOWN;
            }
            // Failed scrape, no value, NaN or infinite: nothing to learn.
            _ => return Judgement::UNKNOWN,
        };
        let delta = match self.previous {
            None if self.absent_before_first => value.max(0.0),
            None => 0.0,
            Some(prev) if value >= prev => value - prev,
            // The counter restarted from 0 and has since grown to `value`.
            Some(_) => value.max(0.0),
        };
        self.previous = Some(value);
        self.run_growth += delta;
        let growth = match &mut self.window {
            Some((window, sum)) => {
                if delta > 0.0 && window.insert(at, delta, |old| *sum -= old) {
                    *sum += delta;
                }
                sum.max(0.0)
            }
            None => self.run_growth,
        };
        let why = Why::Increase {
            growth,
            max: self.max,
        };
        if growth > self.max {
            Judgement::bad(None, why, true)
        } else {
            Judgement::good(why)
        }
    }

    /// Growth over the run, or over the window ending at `end`; `None` before the first
    /// value.
    fn growth_at(&self, end: i64) -> Option<f64> {
        self.previous?;
        Some(match &self.window {
            None => self.run_growth,
            Some((window, sum)) => {
                let (mut gone, mut expired) = (0, 0.0);
                for delta in window.older_than(window.cutoff(end)) {
                    gone += 1;
                    expired += delta;
                }
                // As in `observe`: an empty window is exactly 0, whatever the float drift.
                if gone == window.len() {
                    0.0
                } else {
                    (sum - expired).max(0.0)
                }
            }
        })
    }
}

/// The condition of one invariant with its rolling state.
#[derive(Clone, Debug)]
pub(crate) enum Judge {
    /// See [`Condition::Availability`].
    Availability(AvailabilityJudge),
    /// See [`Condition::Latency`].
    Latency(LatencyJudge),
    /// See [`Condition::Threshold`].
    Threshold(ThresholdJudge),
    /// See [`Condition::Increase`].
    Increase(IncreaseJudge),
}

impl Judge {
    /// A judge for `condition` with empty windows.
    pub(crate) fn new(condition: &Condition) -> Self {
        match condition {
            Condition::Availability {
                target_percent,
                window,
            } => Judge::Availability(AvailabilityJudge {
                target: *target_percent,
                window: RollingWindow::new(*window),
                ok: 0,
                failed: 0,
            }),
            Condition::Latency {
                quantile,
                max,
                window,
            } => Judge::Latency(LatencyJudge {
                quantile: *quantile,
                max_micros: micros(*max),
                window: RollingWindow::new(*window),
                slow: 0,
            }),
            Condition::Threshold {
                min,
                max,
                for_duration,
            } => Judge::Threshold(ThresholdJudge {
                min: *min,
                max: *max,
                for_ms: super::window::millis(*for_duration),
                for_duration: *for_duration,
            }),
            Condition::Increase { max, window } => Judge::Increase(IncreaseJudge {
                max: *max,
                previous: None,
                absent_before_first: false,
                run_growth: 0.0,
                window: window.map(|w| (RollingWindow::new(w), 0.0)),
            }),
        }
    }

    /// The condition's rolling window in ms, if it has one.
    pub(crate) fn window_ms(&self) -> Option<i64> {
        match self {
            Judge::Availability(a) => Some(a.window.span_ms()),
            Judge::Latency(l) => Some(l.window.span_ms()),
            Judge::Threshold(_) => None,
            Judge::Increase(i) => i.window.as_ref().map(|(w, _)| w.span_ms()),
        }
    }

    /// Judges one sample taken at `at`. `end` is the newest sample time seen (the right
    /// edge of the window); `late` when `at < end`.
    ///
    /// Late samples enter availability and latency windows at their place (so ratios stay
    /// exact) but are Unknown for threshold and increase: a gauge's newer reading already
    /// supersedes them, and an older counter value fed after a newer one would look like a
    /// counter reset.
    #[inline]
    pub(crate) fn observe<'a>(
        &mut self,
        sample: &'a Sample,
        at: i64,
        end: i64,
        late: bool,
    ) -> Judgement<'a> {
        match self {
            Judge::Availability(a) => a.observe(sample, at, end),
            Judge::Latency(l) => l.observe(sample, at, end),
            Judge::Threshold(_) | Judge::Increase(_) if late => Judgement::UNKNOWN,
            Judge::Threshold(t) => t.observe(sample),
            Judge::Increase(i) => i.observe(sample, at, end),
        }
    }

    /// Availability over the window ending at `end` (availability condition only).
    pub(crate) fn window_availability_at(&self, end: i64) -> Option<f64> {
        match self {
            Judge::Availability(a) => a.window_percent_at(end),
            _ => None,
        }
    }

    /// The latency quantile over the window ending at `end` (latency condition only).
    pub(crate) fn window_latency_at(&self, end: i64) -> Option<f64> {
        match self {
            Judge::Latency(l) => l.window_quantile_at(end).map(|us| us as f64 / 1e6),
            _ => None,
        }
    }

    /// Growth so far (increase condition only).
    pub(crate) fn increase_at(&self, end: i64) -> Option<f64> {
        match self {
            Judge::Increase(i) => i.growth_at(end),
            _ => None,
        }
    }

    /// The threshold condition's `for` duration, when this is one.
    pub(crate) fn threshold(&self) -> Option<&ThresholdJudge> {
        match self {
            Judge::Threshold(t) => Some(t),
            _ => None,
        }
    }

    /// Why a bad sample leaves the episode pending rather than violated.
    pub(crate) fn pending_reason(&self, j: &Judgement<'_>) -> String {
        match self {
            Judge::Availability(a) => format!(
                "probe failed ({}); availability {}% >= {}% over {}",
                j.describe(),
                Percent(a.window_percent().unwrap_or(100.0)),
                Num(a.target),
                Human(duration_ms(a.window.span_ms())),
            ),
            Judge::Latency(l) => format!(
                "{}; p{} over {} still within {} ({} of {} samples slower, {} allowed)",
                j.describe(),
                Num(l.quantile * 100.0),
                Human(duration_ms(l.window.span_ms())),
                Secs(l.max_micros),
                l.slow,
                l.window.len(),
                l.allowed_slow(),
            ),
            Judge::Threshold(t) => format!(
                "{} (violated after {})",
                j.describe(),
                Human(t.for_duration)
            ),
            Judge::Increase(_) => j.describe(),
        }
    }

    /// Why a bad sample violates the condition. `end` is the newest sample time.
    pub(crate) fn violation_reason(&self, j: &Judgement<'_>, end: i64) -> String {
        match self {
            Judge::Availability(a) => format!(
                "availability {}% < {}% over {}; last error: {}",
                Percent(a.window_percent().unwrap_or(0.0)),
                Num(a.target),
                Human(duration_ms(a.window.span_ms())),
                j.describe(),
            ),
            Judge::Latency(l) if j.class.is_some() => format!(
                "probe failed, so p{} latency cannot be within {}; last error: {}",
                Num(l.quantile * 100.0),
                Secs(l.max_micros),
                j.describe()
            ),
            Judge::Latency(l) => format!(
                "p{} latency {} > {} over {} ({} of {} samples slower, {} allowed); last: {}",
                Num(l.quantile * 100.0),
                Secs(l.window_quantile_at(end).unwrap_or(0)),
                Secs(l.max_micros),
                Human(duration_ms(l.window.span_ms())),
                l.slow,
                l.window.len(),
                l.allowed_slow(),
                j.describe(),
            ),
            Judge::Threshold(t) => {
                format!("{} for {}", j.describe(), Human(t.for_duration))
            }
            Judge::Increase(i) => match &i.window {
                Some((w, _)) => {
                    format!("{} over {}", j.describe(), Human(duration_ms(w.span_ms())))
                }
                None => format!("{} over the run", j.describe()),
            },
        }
    }
}

/// Milliseconds back to a `Duration` (negative counts as zero).
fn duration_ms(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}
