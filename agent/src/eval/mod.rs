//! Rolling evaluation of one invariant: per-sample verdicts, a state machine, violation
//! intervals and disruption (pure and clock-injected: time comes only from sample
//! timestamps and explicit `now` arguments).
//!
//! One [`Evaluator`] per invariant is fed every [`Sample`] ([`Evaluator::ingest`]), told
//! when time passes without samples ([`Evaluator::advance`]) and asked for a
//! [`Summary`] whenever a report is written.
//!
//! # Semantics
//!
//! **1. Verdicts.** Each sample gets a verdict from the condition: Good, Bad (with an
//! error class and a message) or Unknown.
//! - *availability*: Bad iff the probe failed (class and message from the probe error);
//!   Absent is Unknown.
//! - *latency*: Bad iff the probe failed, or the latency is above `max` (class `None`,
//!   message `latency 1.52s > 1s`); Absent is Unknown.
//! - *threshold*: a value outside `[min, max]` is Bad (`value 7 > max 5`); a failed probe,
//!   an absent series, no value or NaN is Unknown: a scrape failure says nothing about the
//!   value (it still counts in `samples.failed` and in disruption).
//! - *increase*: a counter with reset detection. Each present value adds `v - prev` when
//!   `v >= prev`, else `v` (the counter restarted from 0). The first present value is the
//!   baseline (growth 0), except when the probe earlier succeeded with the series absent:
//!   then it counts as growth `v` from an implicit 0, because Kubernetes counter vectors
//!   only create a label set on its first increment. Growth is over the run, or over the
//!   window (sum of deltas whose sample time is in the window). Bad iff growth > `max`
//!   (`increased by 3 (max 0)`). Failed, absent, no value, NaN or infinite is Unknown; an
//!   absent series after a value keeps its growth and baseline (it vanished). Negative
//!   values are treated as a reset to 0 (`max(v, 0)` is added), never as shrinkage.
//!
//! **2. State.** Unknown until the first Good or Bad verdict. A run of consecutive Bad
//! verdicts is an *episode*: the state is Pending until the condition is violated, then
//! Violated (for the rest of the episode); a Good verdict ends the episode (Holding).
//! Unknown verdicts neither start nor end episodes. Violated when:
//! - *availability*: on a Bad sample, `ok / (ok + failed)` over samples in
//!   `[t - window, t]` is below the target (so a target of 100 violates on the first
//!   failure);
//! - *latency*: on a slow sample, the condition's nearest-rank quantile of non-failed
//!   latencies in the window is above `max`, checked in O(1) as "more than
//!   `n - ceil(q * n)` slow samples"; any failed sample violates at once (you can't be fast
//!   if you don't answer);
//! - *threshold*: the episode has lasted at least `for`, from its first Bad sample to the
//!   current sample's time or [`Evaluator::advance`]'s `now` (`for: 0s` violates at once);
//! - *increase*: at once when growth > `max`.
//!
//! **3. Violation intervals** are recorded only for episodes that reached Violated.
//! `start` is the first Bad sample of the episode (when it really started, not when it
//! became violated); `end` is the first Good sample after it (the recovery observed),
//! `None` while open. While Violated, a Bad sample whose error class differs from the
//! open interval's class closes it at that sample's time and opens the next one. While
//! the episode is pending its provisional interval follows the class of the latest Bad
//! sample, so it becomes violated labelled with the fault that violated it (and never
//! splits before that). `first_error`/`last_error` are the first and latest messages
//! (`first_error` of the first interval is the episode's first message, whatever its
//! class), `samples` counts the interval's Bad samples. At most [`MAX_VIOLATIONS`] intervals are stored per invariant;
//! later ones are only counted in `violations_dropped`.
//!
//! **4. Disruption** is independent of the condition: the time the probe was failing. An
//! outage is a run of failed samples; it lasts from its first failed sample to the next
//! non-failed sample (or, still open, to its last failed sample plus one interval), and
//! at least one interval, because the target may have gone down anywhere in the gap
//! before the first failed sample.
//!
//! **5. Transitions** are returned on every state change (including Unknown → Holding),
//! with a reason such as `availability 93.1% < 99.9% over 5m; last error: http_status:
//! status 500`. A split of intervals within Violated is not a state change.
//!
//! **6. Bounded memory.** Windows drop entries older than the window and hold at most
//! [`MAX_WINDOW_ENTRIES`] entries (a tiny interval with a long window then covers
//! the most recent entries only); increase windows store only non-zero deltas; the
//! whole-run latency histogram is bounded (9 KiB at most, relative error below 0.8 %);
//! intervals are capped.
//!
//! # Time and late samples
//!
//! Samples are stamped when the request started and probes run concurrently, so a slow
//! request can arrive after a later one: late samples are normal during outages. Time
//! never goes backwards inside the evaluator; a sample older than the newest sample seen
//! is *late* and is handled like this:
//! - every sample, however late, counts in `samples`, the whole-run availability and the
//!   latency histogram;
//! - a sample older than the newest by more than the *lateness horizon* (the condition's
//!   window, or [`LATE_HORIZON`] for conditions without one) is stale: counted as above,
//!   then ignored, so a stray old sample cannot corrupt state;
//! - otherwise, for availability and latency it enters the window at its own time (ratios
//!   stay exact) and its verdict is applied at the newest time seen, except that a late
//!   Good verdict never ends an episode (it predates the Bad samples that opened it). A
//!   late Bad sample newer than the last Good sample moves the start of the episode's
//!   first interval back to its own time. A late Bad sample older than a Good one is
//!   history, not news: the newer Good sample already said the invariant holds, so it
//!   changes no state. It is folded into the closed interval it falls in (a request that
//!   hung through an outage arrives after the recovery: it belongs to that outage), or,
//!   if it falls in none and its verdict violates, it is recorded as a closed interval
//!   of its own, from its time to the first Good sample after it;
//! - for threshold and increase a late sample is Unknown: a gauge's newer reading already
//!   supersedes it, and an older counter value after a newer one would look like a reset;
//! - disruption folds late failures in without reordering: a late failure newer than the
//!   last non-failed sample moves the open outage's start back; one inside the last closed
//!   outage is already counted; any other counts as a separate one-interval outage; a late
//!   non-failed sample does not end an outage.
//!
//! [`Evaluator::advance`] never judges: with no sample there is no verdict. It only lets
//! a threshold's `for` elapse. Windows are read as of `now` by [`Evaluator::summary`] (the
//! window ends at `now`, or at the newest sample when that is later), so expiry shows in
//! reports without samples; an availability or increase episode ends only with a Good
//! sample.
//!
//! # Cost
//!
//! `ingest` is O(1) amortized and allocation-free except when a Bad sample opens an
//! interval (two strings, recycled from ended episodes where possible) or a transition
//! happens (its reason). `summary` is O(window) for the latency quantile and O(intervals)
//! to copy them.

mod disruption;
mod fmt;
mod histogram;
mod judge;
mod window;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::disruption::Disruption;
use self::fmt::{At, Human};
use self::histogram::LatencyHistogram;
/// Availability in percent: the one formula for the evaluator and for merged reports.
pub(crate) use self::judge::percent;
use self::judge::{Judge, Judgement, Verdict, Why};
use crate::config::Condition;
use crate::sample::{ErrorClass, Observation, Sample, Timestamp};

pub use self::window::MAX_WINDOW_ENTRIES;

/// Most violation intervals stored per invariant; later ones are only counted.
pub const MAX_VIOLATIONS: usize = 1000;

/// How late a sample may be, for conditions without a window, before it is ignored.
pub const LATE_HORIZON: Duration = Duration::from_secs(300);

/// Spare message buffers kept for reuse by the next interval.
const MAX_SPARE_BUFFERS: usize = 4;

/// Times of recent Good samples kept to end the interval of a late Bad sample at the
/// first Good sample after it. A sample is at most `timeout / interval` (16) intervals
/// late, so twice that many always reaches back far enough.
const RECENT_GOOD: usize = 2 * crate::config::spec::MAX_SAMPLES_IN_FLIGHT as usize;

/// Where an invariant stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No sample could be judged yet.
    #[default]
    Unknown,
    /// The latest judged sample was good.
    Holding,
    /// Bad samples, but the condition is not violated yet (e.g. a `for` is running).
    Pending,
    /// The condition is violated.
    Violated,
}

impl State {
    /// Lower-case name used in reports, logs and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Holding => "holding",
            State::Pending => "pending",
            State::Violated => "violated",
        }
    }
}

/// A change of state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// When it happened: the sample's time (the newest time seen, for a late sample), or
    /// `now` given to [`Evaluator::advance`].
    pub at: Timestamp,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why, for people.
    pub reason: String,
}

/// Sample counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Samples where the target answered as expected.
    pub ok: u64,
    /// Samples where the probe failed.
    pub failed: u64,
    /// Samples where the target answered but the series was absent.
    pub absent: u64,
    /// Scheduled ticks that could not run (concurrency bound hit).
    pub missed: u64,
}

impl Totals {
    /// Every scheduled tick: samples taken plus ticks missed.
    pub fn total(&self) -> u64 {
        self.ok
            .saturating_add(self.failed)
            .saturating_add(self.absent)
            .saturating_add(self.missed)
    }
}

/// Whole-run latency quantiles in seconds, from a bounded histogram (relative error
/// below 0.8 %; `max` exact). Covers samples where the target answered (ok or absent).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest latency.
    pub max: f64,
}

/// A stretch of time during which the invariant was violated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViolationInterval {
    /// Time of the first bad sample (of the episode, or of this class after a split).
    pub start: Timestamp,
    /// Time of the first good sample after it (or of the split); `None` while open.
    pub end: Option<Timestamp>,
    /// The probe's error class; `None` when the probe succeeded but the condition failed.
    pub error_class: Option<ErrorClass>,
    /// Message of the first bad sample.
    pub first_error: Option<String>,
    /// Message of the latest bad sample.
    pub last_error: Option<String>,
    /// Bad samples in the interval.
    pub samples: u64,
    /// Tests whose run overlapped the interval, earliest first. The evaluator leaves this
    /// empty; the report fills it from test annotations (see `report::attribution`).
    #[serde(default)]
    pub tests: Vec<String>,
    /// Overlapping tests beyond those listed in `tests` (the list is capped).
    #[serde(default)]
    pub tests_omitted: u64,
    /// The overlapping tests that the invariant's `expectedDisruptions` patterns match.
    #[serde(default)]
    pub expected_by: Vec<String>,
    /// Whether a test expected to disrupt the invariant overlapped the interval: then the
    /// violation is reported as expected, not as a problem.
    #[serde(default)]
    pub expected: bool,
    /// Whether the interval was still open when the agent stopped without a final report:
    /// it then ends at the last checkpoint before the gap (see `report::resume`), not at
    /// an observed recovery. The evaluator leaves this `false`.
    #[serde(default)]
    pub ended_by_gap: bool,
}

impl ViolationInterval {
    /// An interval at time 0 with no attribution, for filling the other fields in.
    fn unattributed() -> Self {
        ViolationInterval {
            start: Timestamp(0),
            end: None,
            error_class: None,
            first_error: None,
            last_error: None,
            samples: 0,
            tests: Vec::new(),
            tests_omitted: 0,
            expected_by: Vec::new(),
            expected: false,
            ended_by_gap: false,
        }
    }
}

/// Everything a report needs about one invariant, as of some `now`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Current state.
    pub state: State,
    /// Sample counts by outcome.
    pub samples: Totals,
    /// Whole run: `ok / (ok + failed) * 100`; `None` without ok or failed samples.
    pub availability_percent: Option<f64>,
    /// Over the condition's window ending at `now` (availability condition only).
    pub window_availability_percent: Option<f64>,
    /// Whole-run latency quantiles; `None` without samples.
    pub latency: Option<LatencySummary>,
    /// The condition's quantile over its window ending at `now`, in seconds (latency
    /// condition only).
    pub window_latency_seconds: Option<f64>,
    /// The newest finite value a sample carried.
    pub last_value: Option<f64>,
    /// Counter growth over the run or window (increase condition only; `None` before the
    /// first value).
    pub increase: Option<f64>,
    /// Seconds the probe was failing (see the module docs).
    pub disruption_seconds: f64,
    /// Violation intervals, oldest first; the last one may be open.
    pub violations: Vec<ViolationInterval>,
    /// Intervals beyond [`MAX_VIOLATIONS`]: counted, not stored.
    pub violations_dropped: u64,
    /// Whether any sample could be judged. `false` (no samples, or only absent/unknown
    /// ones) must never be reported as passing.
    pub examined: bool,
}

/// Writes a judgement's message into `buf`, reusing its allocation. A probe error equal
/// to what `buf` holds is not copied again, and a numeric reason whose [`Why::key`]
/// equals `last_key` (what `buf` was rendered from) is not formatted again.
fn write_message(buf: &mut String, last_key: &mut Option<[u64; 2]>, why: &Why<'_>) {
    let key = why.key();
    if key.is_some() && key == *last_key {
        return;
    }
    *last_key = key;
    match why {
        Why::ProbeFailed(e) => {
            if *buf != e.message {
                buf.clear();
                buf.push_str(&e.message);
            }
        }
        other => {
            buf.clear();
            // Writing to a String cannot fail.
            let _ = write!(buf, "{other}");
        }
    }
}

/// The current stretch of an episode with one error class: a provisional interval while
/// the episode is pending, the open interval once it is violated.
#[derive(Clone, Debug)]
struct Segment {
    start: i64,
    class: Option<ErrorClass>,
    first_error: String,
    last_error: String,
    /// What `last_error` was rendered from (see [`write_message`]).
    last_key: Option<[u64; 2]>,
    samples: u64,
}

impl Segment {
    fn open(start: i64, j: &Judgement<'_>, spare: &mut Vec<String>) -> Self {
        let mut first_error = spare.pop().unwrap_or_default();
        first_error.clear();
        let mut last_key = None;
        write_message(&mut first_error, &mut last_key, &j.why);
        let mut last_error = spare.pop().unwrap_or_default();
        last_error.clear();
        last_error.push_str(&first_error);
        Segment {
            start,
            class: j.class,
            first_error,
            last_error,
            last_key,
            samples: 1,
        }
    }

    fn record(&mut self, j: &Judgement<'_>) {
        self.samples += 1;
        write_message(&mut self.last_error, &mut self.last_key, &j.why);
    }

    fn to_interval(&self, end: Option<i64>) -> ViolationInterval {
        ViolationInterval {
            start: Timestamp(self.start),
            end: end.map(Timestamp),
            error_class: self.class,
            first_error: (!self.first_error.is_empty()).then(|| self.first_error.clone()),
            last_error: (!self.last_error.is_empty()).then(|| self.last_error.clone()),
            samples: self.samples,
            ..ViolationInterval::unattributed()
        }
    }

    fn into_interval(self, end: i64) -> ViolationInterval {
        let text = |s: String| (!s.is_empty()).then_some(s);
        ViolationInterval {
            start: Timestamp(self.start),
            end: Some(Timestamp(end)),
            error_class: self.class,
            first_error: text(self.first_error),
            last_error: text(self.last_error),
            samples: self.samples,
            ..ViolationInterval::unattributed()
        }
    }

    fn recycle(self, spare: &mut Vec<String>) {
        for s in [self.first_error, self.last_error] {
            if spare.len() < MAX_SPARE_BUFFERS {
                spare.push(s);
            }
        }
    }
}

/// A run of consecutive Bad verdicts.
#[derive(Clone, Debug)]
struct Episode {
    /// Time of its first Bad sample (threshold `for` counts from here).
    start: i64,
    /// Whether it reached Violated.
    violated: bool,
    /// Whether `segment` is the episode's first (only then may a late sample move its
    /// start back without overlapping an earlier interval).
    first_segment: bool,
    /// Bad samples in the whole episode.
    bad_samples: u64,
    /// The current segment.
    segment: Segment,
}

/// Closed violation intervals, capped.
#[derive(Clone, Debug, Default)]
struct IntervalLog {
    closed: Vec<ViolationInterval>,
    dropped: u64,
}

impl IntervalLog {
    /// Records a late Bad sample at `at`, older than a Good sample already applied: adds
    /// it to the closed interval that contains it, else (when `j` violates) inserts a
    /// closed interval `[at, first Good after it]` in time order, cut short of the next
    /// interval so intervals never overlap.
    fn record_late(
        &mut self,
        at: i64,
        j: &Judgement<'_>,
        first_good_after: i64,
        spare: &mut Vec<String>,
    ) {
        let next = self.closed.partition_point(|v| v.start.0 <= at);
        if let Some(v) = next.checked_sub(1).map(|i| &mut self.closed[i])
            && v.end.is_none_or(|end| at < end.0)
        {
            v.samples += 1;
            return;
        }
        if !j.violates {
            return;
        }
        if self.closed.len() >= MAX_VIOLATIONS {
            self.dropped += 1;
            return;
        }
        let end = self
            .closed
            .get(next)
            .map_or(first_good_after, |v| v.start.0.min(first_good_after));
        let interval = Segment::open(at, j, spare).into_interval(end.max(at));
        self.closed.insert(next, interval);
    }

    fn push(&mut self, interval: ViolationInterval, spare: &mut Vec<String>) {
        if self.closed.len() < MAX_VIOLATIONS {
            self.closed.push(interval);
        } else {
            self.dropped += 1;
            for s in [interval.first_error, interval.last_error]
                .into_iter()
                .flatten()
            {
                if spare.len() < MAX_SPARE_BUFFERS {
                    spare.push(s);
                }
            }
        }
    }
}

/// Rolling evaluation of one invariant (see the module docs for the semantics).
#[derive(Clone, Debug)]
pub struct Evaluator {
    judge: Judge,
    state: State,
    totals: Totals,
    latencies: LatencyHistogram,
    disruption: Disruption,
    /// How late a sample may be before it is ignored, in ms.
    horizon_ms: i64,
    /// Time of the newest sample seen.
    newest: Option<i64>,
    /// Time of the newest Good sample applied.
    last_good: Option<i64>,
    /// Times of the latest [`RECENT_GOOD`] Good samples, in arrival order.
    recent_good: std::collections::VecDeque<i64>,
    last_value: Option<f64>,
    /// Whether any sample was judged Good or Bad.
    judged: bool,
    episode: Option<Episode>,
    log: IntervalLog,
    /// Message buffers of ended episodes, reused by the next ones.
    spare: Vec<String>,
}

impl Evaluator {
    /// An evaluator for `condition`, sampled every `interval`, in state Unknown.
    pub fn new(condition: &Condition, interval: Duration) -> Self {
        let judge = Judge::new(condition);
        let horizon_ms = judge
            .window_ms()
            .unwrap_or_else(|| window::millis(LATE_HORIZON));
        Evaluator {
            judge,
            state: State::Unknown,
            totals: Totals::default(),
            latencies: LatencyHistogram::default(),
            disruption: Disruption::new(window::millis(interval)),
            horizon_ms,
            newest: None,
            last_good: None,
            recent_good: std::collections::VecDeque::with_capacity(RECENT_GOOD),
            last_value: None,
            judged: false,
            episode: None,
            log: IntervalLog::default(),
            spare: Vec::new(),
        }
    }

    /// Feeds one sample. Samples normally come in time order; a late one (older than the
    /// newest seen) is applied as the module docs describe, and one older than the newest
    /// by more than the lateness horizon (the condition's window, or [`LATE_HORIZON`]) is
    /// only counted, so it cannot corrupt state.
    pub fn ingest(&mut self, sample: &Sample) -> Option<Transition> {
        let at = sample.at.0;
        let failed = match &sample.observation {
            Observation::Ok { .. } => {
                self.totals.ok += 1;
                false
            }
            Observation::Failed(_) => {
                self.totals.failed += 1;
                true
            }
            Observation::Absent => {
                self.totals.absent += 1;
                false
            }
        };
        // A failure's latency is the time it took to fail (often the timeout): not a
        // latency of the target.
        if !failed {
            self.latencies.record(sample.latency);
        }
        let (late, end) = match self.newest {
            Some(newest) if at < newest => (true, newest),
            _ => (false, at),
        };
        if late && at < end.saturating_sub(self.horizon_ms) {
            return None;
        }
        if !late {
            self.newest = Some(at);
            if let Some(v) = sample.value().filter(|v| v.is_finite()) {
                self.last_value = Some(v);
            }
        }
        self.disruption.observe(at, failed, late);
        let j = self.judge.observe(sample, at, end, late);
        match j.verdict {
            Verdict::Unknown => self.check_for(end),
            Verdict::Good => self.on_good(&j, at, end, late),
            Verdict::Bad => self.on_bad(&j, at, end, late),
        }
    }

    /// Moves time forward to `now` without a sample: lets a threshold's `for` elapse.
    /// Nothing else is judged without a sample; windows are read as of `now` by
    /// [`Evaluator::summary`].
    pub fn advance(&mut self, now: Timestamp) -> Option<Transition> {
        self.check_for(now.0)
    }

    /// Counts a scheduled tick that could not run. It is not a sample: it neither fails
    /// nor passes the condition, and it is not disruption (the target was not asked).
    pub fn record_missed(&mut self, _at: Timestamp) {
        self.totals.missed += 1;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Everything a report needs, as of `now`. Windows end at `now` (or at the newest
    /// sample, when later); an open interval has `end: None`.
    pub fn summary(&self, now: Timestamp) -> Summary {
        let end = self.newest.map_or(now.0, |newest| newest.max(now.0));
        let mut violations = self.log.closed.clone();
        let mut violations_dropped = self.log.dropped;
        if let Some(ep) = &self.episode
            && ep.violated
        {
            if violations.len() < MAX_VIOLATIONS {
                violations.push(ep.segment.to_interval(None));
            } else {
                violations_dropped += 1;
            }
        }
        let latency = self
            .latencies
            .quantiles_seconds([0.5, 0.9, 0.99])
            .zip(self.latencies.max_seconds())
            .map(|([p50, p90, p99], max)| LatencySummary { p50, p90, p99, max });
        Summary {
            state: self.state,
            samples: self.totals,
            availability_percent: percent(self.totals.ok, self.totals.failed),
            window_availability_percent: self.judge.window_availability_at(end),
            latency,
            window_latency_seconds: self.judge.window_latency_at(end),
            last_value: self.last_value,
            increase: self.judge.increase_at(end),
            disruption_seconds: self.disruption.seconds(),
            violations,
            violations_dropped,
            examined: self.judged,
        }
    }

    fn on_good(&mut self, j: &Judgement<'_>, at: i64, end: i64, late: bool) -> Option<Transition> {
        if self.recent_good.len() == RECENT_GOOD {
            self.recent_good.pop_front();
        }
        self.recent_good.push_back(at);
        if late && self.episode.is_some() {
            // It predates the Bad samples of the episode: evidence about the past, not a
            // recovery.
            return None;
        }
        self.judged = true;
        self.last_good = Some(self.last_good.map_or(at, |g| g.max(at)));
        let from = self.state;
        self.state = State::Holding;
        let reason = match self.episode.take() {
            Some(ep) => {
                let reason = format!(
                    "recovered: {} (after {} bad samples since {})",
                    j.describe(),
                    ep.bad_samples,
                    At(ep.start)
                );
                if ep.violated {
                    // The interval ends at the recovery observed.
                    self.log.push(ep.segment.into_interval(at), &mut self.spare);
                } else {
                    ep.segment.recycle(&mut self.spare);
                }
                reason
            }
            None if from == State::Holding => return None,
            None => format!("first judged sample: {}", j.describe()),
        };
        Some(Transition {
            at: Timestamp(end),
            from,
            to: State::Holding,
            reason,
        })
    }

    fn on_bad(&mut self, j: &Judgement<'_>, at: i64, end: i64, late: bool) -> Option<Transition> {
        self.judged = true;
        let from = self.state;
        if let Some(last_good) = self.last_good.filter(|&g| late && at <= g) {
            // A newer Good sample was already applied: this is history, not a change of
            // state (see the module docs).
            let first_good_after = self
                .recent_good
                .iter()
                .copied()
                .filter(|&g| g >= at)
                .min()
                .unwrap_or(last_good);
            self.log
                .record_late(at, j, first_good_after, &mut self.spare);
            return None;
        }
        let for_ms = self.judge.threshold().map(|t| t.for_ms);
        let for_elapsed = |start: i64| for_ms.is_some_and(|f| end.saturating_sub(start) >= f);
        let violated = match &mut self.episode {
            None => {
                let violated = j.violates || for_elapsed(at);
                self.episode = Some(Episode {
                    start: at,
                    violated,
                    first_segment: true,
                    bad_samples: 1,
                    segment: Segment::open(at, j, &mut self.spare),
                });
                violated
            }
            Some(ep) => {
                ep.bad_samples += 1;
                if ep.first_segment && at < ep.segment.start {
                    ep.segment.start = at;
                    ep.start = ep.start.min(at);
                }
                let was_violated = ep.violated;
                let violated = was_violated || j.violates || for_elapsed(ep.start);
                if was_violated && j.class != ep.segment.class {
                    // A new class of error while violated is a new interval.
                    let next = Segment::open(end, j, &mut self.spare);
                    let done = std::mem::replace(&mut ep.segment, next);
                    self.log.push(done.into_interval(end), &mut self.spare);
                    ep.first_segment = false;
                } else {
                    // While pending, the provisional interval takes the latest class, so
                    // it becomes violated labelled with the fault that violated it.
                    ep.segment.class = j.class;
                    ep.segment.record(j);
                }
                ep.violated = violated;
                violated
            }
        };
        let to = if violated {
            State::Violated
        } else {
            State::Pending
        };
        if to == from {
            return None;
        }
        self.state = to;
        let reason = if violated {
            self.judge.violation_reason(j, end)
        } else {
            self.judge.pending_reason(j)
        };
        Some(Transition {
            at: Timestamp(end),
            from,
            to,
            reason,
        })
    }

    /// Violates a pending threshold episode once its `for` has elapsed at `now`.
    fn check_for(&mut self, now: i64) -> Option<Transition> {
        let threshold = self.judge.threshold()?;
        let ep = self.episode.as_mut()?;
        if ep.violated || now.saturating_sub(ep.start) < threshold.for_ms {
            return None;
        }
        ep.violated = true;
        let from = self.state;
        self.state = State::Violated;
        Some(Transition {
            at: Timestamp(now),
            from,
            to: State::Violated,
            reason: format!(
                "{} for {}",
                ep.segment.last_error,
                Human(threshold.for_duration)
            ),
        })
    }
}
