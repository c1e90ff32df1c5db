//! The exported series, shared by the OTLP and Prometheus exporters so both say the same
//! thing: the metric catalogue ([`METRICS`]), each invariant's attributes (only from the
//! invariant file), the values read from a report snapshot ([`Point`]), and the probe
//! duration histogram recorded from every sample ([`DurationHistograms`]).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::InvariantSet;
use crate::config::spec::Scope;
use crate::eval::State;
use crate::report::{InvariantReport, Report};
use crate::sample::Outcome;

/// What kind of instrument a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic cumulative sum.
    Counter,
    /// Latest value.
    Gauge,
    /// Explicit-bucket histogram.
    Histogram,
}

/// One exported metric: its OpenTelemetry name and unit and its Prometheus name.
#[derive(Clone, Copy, Debug)]
pub struct MetricInfo {
    /// OpenTelemetry instrument name, e.g. `invariant.samples`.
    pub otel: &'static str,
    /// OpenTelemetry unit (UCUM), e.g. `s`; empty for none.
    pub unit: &'static str,
    /// Prometheus family name without type suffix, e.g. `invariant_samples` (becomes
    /// `invariant_samples_total`).
    pub prometheus: &'static str,
    /// Prometheus unit suffix, if any (`seconds`, `ratio`).
    pub prometheus_unit: Option<&'static str>,
    /// Instrument kind.
    pub kind: Kind,
    /// Help text.
    pub help: &'static str,
}

impl MetricInfo {
    /// The series name(s) Prometheus stores, e.g. `invariant_samples_total` or, for the
    /// histogram, `..._bucket`, `..._sum`, `..._count`.
    pub fn prometheus_series(&self) -> Vec<String> {
        let base = match self.prometheus_unit {
            Some(unit) => format!("{}_{unit}", self.prometheus),
            None => self.prometheus.to_string(),
        };
        match self.kind {
            Kind::Counter => vec![format!("{base}_total")],
            Kind::Gauge => vec![base],
            Kind::Histogram => ["bucket", "sum", "count"]
                .iter()
                .map(|s| format!("{base}_{s}"))
                .collect(),
        }
    }
}

/// `invariant.samples`: samples by outcome.
pub const SAMPLES: MetricInfo = MetricInfo {
    otel: "invariant.samples",
    unit: "{sample}",
    prometheus: "invariant_samples",
    prometheus_unit: None,
    kind: Kind::Counter,
    help: "Samples taken by outcome (ok, failed, absent), and scheduled ticks that could not run (missed).",
};
/// `invariant.probe.duration`: how long each sample took.
pub const PROBE_DURATION: MetricInfo = MetricInfo {
    otel: "invariant.probe.duration",
    unit: "s",
    prometheus: "invariant_probe_duration",
    prometheus_unit: Some("seconds"),
    kind: Kind::Histogram,
    help: "Duration of each probe request (up to the invariant's timeout), by outcome.",
};
/// `invariant.value`: the newest value a sample carried.
pub const VALUE: MetricInfo = MetricInfo {
    otel: "invariant.value",
    unit: "",
    prometheus: "invariant_value",
    prometheus_unit: None,
    kind: Kind::Gauge,
    help: "The newest finite value a probe extracted (metrics series, JSON value); absent until one was seen.",
};
/// `invariant.state`: where the invariant stands.
pub const STATE: MetricInfo = MetricInfo {
    otel: "invariant.state",
    unit: "",
    prometheus: "invariant_state",
    prometheus_unit: None,
    kind: Kind::Gauge,
    help: "Current state: 0 unknown, 1 holding, 2 pending, 3 violated.",
};
/// `invariant.violations`: violation intervals so far.
pub const VIOLATIONS: MetricInfo = MetricInfo {
    otel: "invariant.violations",
    unit: "{violation}",
    prometheus: "invariant_violations",
    prometheus_unit: None,
    kind: Kind::Counter,
    help: "Violation intervals recorded (an episode that reached violated; a change of error class starts a new one).",
};
/// `invariant.disruption`: seconds the probe was failing.
pub const DISRUPTION: MetricInfo = MetricInfo {
    otel: "invariant.disruption",
    unit: "s",
    prometheus: "invariant_disruption",
    prometheus_unit: Some("seconds"),
    kind: Kind::Counter,
    help: "Seconds the probe was failing, each outage counted as at least one sample interval.",
};
/// `invariant.availability`: window availability of availability conditions.
pub const AVAILABILITY: MetricInfo = MetricInfo {
    otel: "invariant.availability",
    unit: "1",
    prometheus: "invariant_availability",
    prometheus_unit: Some("ratio"),
    kind: Kind::Gauge,
    help: "Share of good samples over the availability condition's window (0..1); only for availability conditions.",
};

/// `invariant.agent.leader`: whether this agent runs the cluster-scoped invariants.
pub const LEADER: MetricInfo = MetricInfo {
    otel: "invariant.agent.leader",
    unit: "",
    prometheus: "invariant_agent_leader",
    prometheus_unit: None,
    kind: Kind::Gauge,
    help: "1 while this agent holds the leader election's Lease and runs the cluster-scoped invariants, 0 while another agent does; only with --leader-elect.",
};

/// `invariant.agent.config.refused`: whether the invariant files on disk are not in
/// effect.
pub const CONFIG_REFUSED: MetricInfo = MetricInfo {
    otel: "invariant.agent.config.refused",
    unit: "",
    prometheus: "invariant_agent_config_refused",
    prometheus_unit: None,
    kind: Kind::Gauge,
    help: "1 while the newest invariant files the agent read were refused as invalid (the invariants of an earlier version run on; the log and the report's run.config_revisions say why), 0 once a change is applied; only after the files changed during the run.",
};

/// Every metric the agent exports, in a fixed order.
pub const METRICS: [MetricInfo; 9] = [
    SAMPLES,
    PROBE_DURATION,
    VALUE,
    STATE,
    VIOLATIONS,
    DISRUPTION,
    AVAILABILITY,
    LEADER,
    CONFIG_REFUSED,
];

/// Whether this agent exports the series of `entry` (an invariant of `report`) now:
/// always, except that under leader election a cluster-scoped invariant's series come
/// only from the agent that leads. A former leader's values stay frozen once it stops
/// sampling; exported beside the new leader's, they would contradict them (a `violated`
/// state that never ends), so they disappear as the new leader's appear. (Over OTLP the
/// leader exports them in a stream of their own, see [`super::cluster`].)
///
/// An entry a configuration change retired is not exported either: a removed invariant's
/// series end, and a changed one's continue from the entry with its new spec (same
/// attributes unless they changed; its counters start again from zero, which reads as a
/// counter reset).
pub fn exported(report: &Report, entry: &InvariantReport) -> bool {
    entry.retired.is_none()
        && (entry.scope != Scope::Cluster.as_str()
            || report.run.leadership.as_ref().is_none_or(|l| l.leading()))
}

/// The value of `invariant.agent.leader` in `report`: 1 while this agent leads, 0 while
/// it does not; `None` without leader election.
pub fn leader_value(report: &Report) -> Option<i64> {
    report
        .run
        .leadership
        .as_ref()
        .map(|l| i64::from(l.leading()))
}

/// The value of `invariant.agent.config.refused` in `report`: whether its newest
/// configuration revision was refused; `None` when the files never changed.
pub fn config_refused_value(report: &Report) -> Option<i64> {
    report
        .run
        .config_revisions
        .last()
        .map(|r| i64::from(r.result == crate::report::RevisionResult::Refused))
}

/// Attribute naming the invariant.
pub const ATTR_INVARIANT: &str = "invariant";
/// Attribute naming the invariant's owner.
pub const ATTR_OWNER: &str = "owner";
/// Attribute naming a sample's outcome.
pub const ATTR_OUTCOME: &str = "outcome";

/// Values of `outcome` on `invariant.samples`, in [`Point::samples`] order.
pub const SAMPLE_OUTCOMES: [&str; 4] = ["ok", "failed", "absent", "missed"];
/// Values of `outcome` on `invariant.probe.duration`, indexed by [`outcome_index`].
pub const DURATION_OUTCOMES: [&str; 3] = ["ok", "failed", "absent"];

/// Upper bounds (seconds) of the probe duration histogram's buckets; the last bucket is
/// everything above. Spans a fast loopback answer to the longest sensible timeout.
pub const DURATION_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Position of an outcome in [`DURATION_OUTCOMES`].
pub fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Failed => 1,
        Outcome::Absent => 2,
    }
}

/// The numeric value of `invariant.state`.
pub fn state_value(state: State) -> i64 {
    match state {
        State::Unknown => 0,
        State::Holding => 1,
        State::Pending => 2,
        State::Violated => 3,
    }
}

/// One invariant's identity as metric attributes: `invariant`, `owner` and its labels,
/// all from the invariant file (never from anything a target sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The invariant's name.
    pub name: String,
    /// Whether the invariant is cluster-scoped (`scope: cluster`).
    pub cluster_scoped: bool,
    /// `(key, value)` pairs: `invariant`, `owner`, then the labels in key order.
    pub attributes: Vec<(String, String)>,
}

/// The identities of every invariant, in file order (the order of report snapshots).
pub fn identities(set: &InvariantSet) -> Vec<Identity> {
    set.invariants
        .iter()
        .map(|i| identity(&i.name, &i.owner, &i.labels, i.scope == Scope::Cluster))
        .collect()
}

/// The identity of a report entry: the same as its invariant's (used for invariants a
/// configuration change started after the exporters did).
pub fn entry_identity(entry: &InvariantReport) -> Identity {
    identity(
        &entry.name,
        &entry.owner,
        &entry.labels,
        entry.scope == Scope::Cluster.as_str(),
    )
}

fn identity(
    name: &str,
    owner: &str,
    labels: &std::collections::BTreeMap<String, String>,
    cluster_scoped: bool,
) -> Identity {
    let mut attributes = Vec::with_capacity(2 + labels.len());
    attributes.push((ATTR_INVARIANT.to_string(), name.to_string()));
    attributes.push((ATTR_OWNER.to_string(), owner.to_string()));
    attributes.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    Identity {
        name: name.to_string(),
        cluster_scoped,
        attributes,
    }
}

/// What one invariant's series read from one report snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// `invariant.samples` by [`SAMPLE_OUTCOMES`].
    pub samples: [u64; 4],
    /// `invariant.value`, when a value was seen.
    pub value: Option<f64>,
    /// `invariant.state`.
    pub state: i64,
    /// `invariant.violations`.
    pub violations: u64,
    /// `invariant.disruption`, seconds.
    pub disruption_seconds: f64,
    /// `invariant.availability`, 0..1, for availability conditions once judged.
    pub availability: Option<f64>,
}

impl Point {
    /// Reads the series from a report entry. Counters are the engine's cumulative
    /// totals, so a value missed by one export is carried by the next.
    pub fn from_report(r: &InvariantReport) -> Self {
        let s = &r.summary;
        Point {
            samples: [
                s.samples.ok,
                s.samples.failed,
                s.samples.absent,
                s.samples.missed,
            ],
            value: s.last_value.filter(|v| v.is_finite()),
            state: state_value(s.state),
            violations: (s.violations.len() as u64).saturating_add(s.violations_dropped),
            disruption_seconds: s.disruption_seconds.max(0.0),
            availability: s
                .window_availability_percent
                .filter(|p| p.is_finite())
                .map(|p| (p / 100.0).clamp(0.0, 1.0)),
        }
    }
}

impl Point {
    /// The point's counters.
    pub fn counters(&self) -> Counters {
        Counters {
            samples: self.samples,
            violations: self.violations,
            disruption_seconds: self.disruption_seconds,
        }
    }

    /// The point with its counters counted from `base` (never below zero); gauges as
    /// they are.
    pub fn since(&self, base: &Counters) -> Point {
        Point {
            samples: std::array::from_fn(|k| self.samples[k].saturating_sub(base.samples[k])),
            violations: self.violations.saturating_sub(base.violations),
            disruption_seconds: (self.disruption_seconds - base.disruption_seconds).max(0.0),
            ..*self
        }
    }
}

/// The counter values of one invariant at one moment: where a leadership term of the
/// cluster stream starts counting from (see [`super::cluster`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// `invariant.samples` by [`SAMPLE_OUTCOMES`].
    pub samples: [u64; 4],
    /// `invariant.violations`.
    pub violations: u64,
    /// `invariant.disruption`, seconds.
    pub disruption_seconds: f64,
}

/// High-water marks that keep float counters monotonic even if a recomputed total ever
/// came out a hair lower (a decrease would read as a counter reset downstream).
#[derive(Debug)]
pub struct Monotonic {
    /// Grows when a configuration change adds invariants.
    bits: RwLock<Vec<AtomicU64>>,
}

impl Monotonic {
    /// `n` counters at zero.
    pub fn new(n: usize) -> Self {
        Monotonic {
            bits: RwLock::new((0..n).map(|_| AtomicU64::new(0f64.to_bits())).collect()),
        }
    }

    /// The larger of `value` and every value seen before for counter `i`.
    pub fn at_least(&self, i: usize, value: f64) -> f64 {
        if read(&self.bits).len() <= i {
            let mut bits = write(&self.bits);
            while bits.len() <= i {
                bits.push(AtomicU64::new(0f64.to_bits()));
            }
        }
        let bits = read(&self.bits);
        let Some(cell) = bits.get(i) else {
            return value;
        };
        let previous = cell
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                (value > f64::from_bits(old)).then(|| value.to_bits())
            })
            .unwrap_or_else(|old| old);
        value.max(f64::from_bits(previous))
    }
}

/// Probe duration histograms per invariant and outcome, for `/metrics`: lock-free counts
/// written by the engine's task (one writer), read by scrapes.
#[derive(Debug)]
pub struct DurationHistograms {
    /// Per invariant × outcome: one count per bucket (the last is +Inf), then the sum's
    /// f64 bits. Grows when a configuration change adds invariants (see
    /// [`DurationHistograms::grow`]); the lock is otherwise only ever read.
    cells: RwLock<Vec<Cell>>,
}

type Cell = [AtomicU64; DURATION_BOUNDS.len() + 2];

/// Reads a lock that no panic can leave inconsistent (every update is whole).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A histogram read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of observed seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// `(upper bound, observations in this bucket alone)`; the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl DurationHistograms {
    /// Empty histograms for `invariants` invariants.
    pub fn new(invariants: usize) -> Self {
        let h = DurationHistograms {
            cells: RwLock::new(Vec::new()),
        };
        h.grow(invariants);
        h
    }

    /// Makes room for `invariants` invariants in all (a configuration change added some).
    pub fn grow(&self, invariants: usize) {
        let mut cells = write(&self.cells);
        while cells.len() < invariants * DURATION_OUTCOMES.len() {
            cells.push(std::array::from_fn(|_| AtomicU64::new(0)));
        }
    }

    /// Records one sample's duration.
    pub fn record(&self, invariant: usize, outcome: Outcome, seconds: f64) {
        let cells = read(&self.cells);
        let Some(cell) = cells.get(invariant * DURATION_OUTCOMES.len() + outcome_index(outcome))
        else {
            return;
        };
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let bucket = DURATION_BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(DURATION_BOUNDS.len());
        cell[bucket].fetch_add(1, Ordering::Relaxed);
        let sum = &cell[DURATION_BOUNDS.len() + 1];
        let _ = sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some((f64::from_bits(old) + seconds).to_bits())
        });
    }

    /// The histogram of one invariant and outcome index; `None` without observations.
    /// The count is the sum of the buckets, so the two always agree.
    pub fn read(&self, invariant: usize, outcome: usize) -> Option<HistogramSnapshot> {
        let cells = read(&self.cells);
        let cell = cells.get(invariant * DURATION_OUTCOMES.len() + outcome)?;
        let mut buckets = Vec::with_capacity(DURATION_BOUNDS.len() + 1);
        let mut count = 0u64;
        for (i, bound) in DURATION_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
        {
            let n = cell[i].load(Ordering::Relaxed);
            count += n;
            buckets.push((bound, n));
        }
        if count == 0 {
            return None;
        }
        let sum = f64::from_bits(cell[DURATION_BOUNDS.len() + 1].load(Ordering::Relaxed));
        Some(HistogramSnapshot {
            sum,
            count,
            buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_otel_conversion() {
        let names: Vec<String> = METRICS.iter().flat_map(|m| m.prometheus_series()).collect();
        assert_eq!(
            names,
            [
                "invariant_samples_total",
                "invariant_probe_duration_seconds_bucket",
                "invariant_probe_duration_seconds_sum",
                "invariant_probe_duration_seconds_count",
                "invariant_value",
                "invariant_state",
                "invariant_violations_total",
                "invariant_disruption_seconds_total",
                "invariant_availability_ratio",
                "invariant_agent_leader",
                "invariant_agent_config_refused",
            ]
        );
    }

    #[test]
    fn histogram_buckets_sum_and_count_agree() {
        let h = DurationHistograms::new(2);
        h.record(1, Outcome::Ok, 0.003);
        h.record(1, Outcome::Ok, 0.003);
        h.record(1, Outcome::Ok, 100.0);
        h.record(1, Outcome::Failed, f64::NAN);
        h.record(7, Outcome::Ok, 1.0); // out of range: ignored
        assert_eq!(h.read(0, 0), None);
        let ok = h.read(1, 0).unwrap();
        assert_eq!(ok.count, 3);
        assert!((ok.sum - 100.006).abs() < 1e-9);
        assert_eq!(ok.buckets[2], (0.005, 2));
        assert_eq!(ok.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(h.read(1, 1).unwrap().buckets[0], (0.001, 1));
    }

    #[test]
    fn a_point_since_a_baseline_counts_from_it_and_never_below_zero() {
        let point = Point {
            samples: [10, 2, 0, 1],
            value: Some(4.0),
            state: 3,
            violations: 2,
            disruption_seconds: 7.5,
            availability: Some(0.5),
        };
        let base = Counters {
            samples: [4, 2, 1, 0],
            violations: 1,
            disruption_seconds: 8.0,
        };
        let since = point.since(&base);
        assert_eq!(since.samples, [6, 0, 0, 1]);
        assert_eq!(since.violations, 1);
        assert_eq!(since.disruption_seconds, 0.0);
        assert_eq!(
            (since.value, since.state, since.availability),
            (Some(4.0), 3, Some(0.5))
        );
        assert_eq!(point.since(&Counters::default()), point);
        assert_eq!(point.since(&point.counters()).samples, [0; 4]);
    }

    #[test]
    fn monotonic_never_goes_down() {
        let m = Monotonic::new(1);
        assert_eq!(m.at_least(0, 2.0), 2.0);
        assert_eq!(m.at_least(0, 1.5), 2.0);
        assert_eq!(m.at_least(0, 3.0), 3.0);
        assert_eq!(m.at_least(5, 1.0), 1.0);
    }
}
