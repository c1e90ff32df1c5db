//! `histogramQuantile`: a quantile of a Prometheus histogram over what it observed within
//! a rolling window, as PromQL's
//! `histogram_quantile(q, sum by (le, <by>) (increase(<series>[<window>])))`, one value
//! per group of `by` labels.
//!
//! A histogram's bucket counters hold every observation since the target started, so a
//! quantile of the raw counters says little about the last five minutes; the increases
//! over a window do (this is how clusterloader2 judges the API call latency SLO). A probe
//! sees one scrape at a time, so [`HistogramWindow`] keeps what the increase needs:
//!
//! * Per bucket series (identified by its label text), the last count. Each scrape adds
//!   the series' growth to a running total per (group, `le`) *cell*: a count that went
//!   down was reset (the target restarted and counted from 0), so the whole new count is
//!   growth, as in Prometheus' `increase`. A series that disappears stops adding, and is
//!   forgotten after a window without it.
//! * A series missing from the previous scrape counts from 0: its whole count is growth.
//!   Kubernetes creates a histogram's label set on its first observation, so a series
//!   that appears mid-run holds only requests made since the last scrape; taking its
//!   first count as a baseline (as Prometheus' `increase` must, not knowing what it had
//!   not scraped) would miss the first calls of every new verb and resource, and all the
//!   calls of a rare one. The agent's `increase` condition counts appearing series the
//!   same way. Only the first scrape is a pure baseline. (A scrape that lands on another
//!   API server behind a load balancer sees other counts; `connection: reused` keeps to
//!   one server.)
//! * Snapshots of the running totals in a bounded ring. The increase over the window is
//!   the current totals minus the newest snapshot at least `window` old (the oldest one
//!   while the run is younger than the window).
//!
//! Unlike Prometheus there is no extrapolation to the window's edges: it multiplies every
//! bucket of a group by the same factor when their samples share timestamps (they come
//! from one scrape), which changes no quantile. The quantile itself is Prometheus'
//! `bucketQuantile` ([`bucket_quantile`]).
//!
//! Memory is bounded: at most [`MAX_SERIES`] bucket series and as many cells are tracked
//! (a scrape that would need more fails and changes nothing), and at most
//! [`MAX_SNAPSHOTS`] snapshots are kept, at least `window / MAX_SNAPSHOTS` apart, so the
//! window is honoured to within that spacing. With apiserver_request_duration_seconds
//! (about 25 buckets per label set) the cap is some 2000 label sets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::metrics::Selector;
use super::prometheus_text::{self, ParseError};
use crate::config::spec::{Aggregation, HistogramQuantileSpec};

/// Most bucket series (and most (group, `le`) cells) one `histogramQuantile` tracks.
pub const MAX_SERIES: usize = 50_000;

/// Most snapshots of the running totals one `histogramQuantile` keeps.
pub const MAX_SNAPSHOTS: usize = 64;

/// One selected bucket sample of a scrape, owned so the body can go before folding.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketSample {
    /// The series' label text as scraped: its identity from one scrape to the next.
    pub key: String,
    /// Values of the `by` labels, in `by` order ("" for a label the series lacks).
    pub group: Vec<String>,
    /// The bucket's upper bound (`le`).
    pub le: f64,
    /// The cumulative count of observations at or below `le`.
    pub count: f64,
}

/// Why a scrape cannot be read as histogram buckets. Nothing collected before is lost.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// The body is not valid metrics text.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A selected series has no `le` label, or one that is not a number.
    #[error(
        "series {series} has no numeric le label; histogramQuantile reads the _bucket \
         series of a histogram"
    )]
    NoBucketBound {
        /// The series, as scraped.
        series: String,
    },
    /// A selected series' count is negative or not finite.
    #[error("series {series} has count {count}, which no bucket counter can have")]
    BadCount {
        /// The series, as scraped.
        series: String,
        /// Its value.
        count: f64,
    },
    /// The same series appears twice in one scrape.
    #[error("series {series} appears more than once in one scrape")]
    Duplicate {
        /// The series' label text.
        series: String,
    },
    /// Tracking the scrape would exceed [`MAX_SERIES`].
    #[error(
        "the scrape needs {needed} tracked bucket series or (group, le) cells, more than the \
         {MAX_SERIES} a histogramQuantile keeps; narrow series with label matchers or group \
         by fewer labels"
    )]
    TooManySeries {
        /// How many it would need.
        needed: usize,
    },
}

/// Parses `text` and returns the bucket samples `selector` selects. The whole body is
/// syntax-checked first, so a truncated scrape fails instead of looking like resets.
pub fn select_buckets(
    text: &str,
    selector: &Selector,
    by: &[String],
) -> Result<Vec<BucketSample>, ScrapeError> {
    let mut out = Vec::new();
    for sample in prometheus_text::samples(text) {
        let sample = sample?;
        if !selector.selects(&sample) {
            continue;
        }
        let series = || format!("{}{{{}}}", sample.name, sample.raw_labels());
        let Some(le) = sample.label("le").as_deref().and_then(parse_le) else {
            return Err(ScrapeError::NoBucketBound { series: series() });
        };
        if !(sample.value.is_finite() && sample.value >= 0.0) {
            return Err(ScrapeError::BadCount {
                series: series(),
                count: sample.value,
            });
        }
        out.push(BucketSample {
            key: sample.raw_labels().to_string(),
            group: by
                .iter()
                .map(|l| sample.label(l).map(|v| v.into_owned()).unwrap_or_default())
                .collect(),
            le,
            count: sample.value,
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    if let Some(pair) = out.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(ScrapeError::Duplicate {
            series: pair[0].key.clone(),
        });
    }
    Ok(out)
}

/// An `le` value as Prometheus reads it (Go's ParseFloat: `+Inf`, `1e-3`, ...); NaN is
/// no bound. `-0` becomes `0` so both land in one bucket.
fn parse_le(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| !v.is_nan())
        .map(|v| v + 0.0)
}

/// Prometheus' `bucketQuantile` (promql/quantile.go): the `q` quantile of cumulative
/// `(upper bound, count)` buckets, interpolated linearly within the bucket it falls in,
/// with 0 as the lower bound of the lowest bucket when that bound is positive. `None`
/// where PromQL yields NaN: no `+Inf` bucket, fewer than two buckets, or no observations.
/// A quantile in the `+Inf` bucket is the second highest bound. Buckets with one bound
/// are merged, near-equal counts (relative 1e-12) are treated as equal, and counts that
/// decrease with the bound are raised to the envelope, as Prometheus does. `q` must be in
/// [0, 1].
pub fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> Option<f64> {
    if buckets.is_empty() || q.is_nan() {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return None;
    }
    buckets.dedup_by(|later, kept| {
        if later.0 == kept.0 {
            kept.1 += later.1;
            true
        } else {
            false
        }
    });
    // correctPrecisionErrors, then ensureMonotonic.
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let delta = (b.1 - prev).abs();
        if delta == 0.0 {
            continue;
        }
        if delta / b.1 <= 1e-12 {
            b.1 = prev;
        } else {
            prev = b.1;
        }
    }
    let mut max = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        if b.1 > max {
            max = b.1;
        } else {
            b.1 = max;
        }
    }
    let n = buckets.len();
    if n < 2 {
        return None;
    }
    let observations = buckets[n - 1].1;
    if observations == 0.0 {
        return None;
    }
    let mut rank = q * observations;
    let b = buckets[..n - 1]
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(n - 1);
    if b == n - 1 {
        return Some(buckets[n - 2].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    Some(start + (end - start) * (rank / count))
}

/// One group's quantile over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupQuantile {
    /// The group's `by` labels, PromQL style: `verb="LIST",scope="cluster"` (empty
    /// without `by`).
    pub group: String,
    /// The quantile.
    pub value: f64,
    /// Observations in the window (the increase of the `+Inf` bucket).
    pub observations: f64,
}

#[derive(Debug)]
struct Series {
    cell: usize,
    last: f64,
    seen: Duration,
}

#[derive(Debug)]
struct Group {
    labels: Vec<String>,
    cells: Vec<usize>,
}

#[derive(Debug)]
struct Snapshot {
    at: Duration,
    totals: Vec<f64>,
}

/// The rolling state of one `histogramQuantile`; see the module docs.
#[derive(Debug)]
pub struct HistogramWindow {
    quantile: f64,
    window: Duration,
    by: Vec<String>,
    series: HashMap<Box<str>, Series>,
    groups: Vec<Group>,
    group_index: HashMap<Vec<String>, usize>,
    /// Each cell's (group, `le`).
    cells: Vec<(usize, f64)>,
    cell_index: HashMap<(usize, u64), usize>,
    /// Each cell's growth since it was created: the sum of its series' growth.
    totals: Vec<f64>,
    snapshots: VecDeque<Snapshot>,
    last_at: Option<Duration>,
}

impl HistogramWindow {
    /// An empty window for `spec`.
    pub fn new(spec: &HistogramQuantileSpec) -> Self {
        HistogramWindow {
            quantile: spec.quantile,
            window: spec.window,
            by: spec.by.clone(),
            series: HashMap::new(),
            groups: Vec::new(),
            group_index: HashMap::new(),
            cells: Vec::new(),
            cell_index: HashMap::new(),
            totals: Vec::new(),
            snapshots: VecDeque::new(),
            last_at: None,
        }
    }

    /// Folds one scrape taken at `at` (time since any fixed origin). A scrape older than
    /// one already folded (a slow request overtaken by the next) is ignored: its lower
    /// counts would look like resets. A scrape that would exceed [`MAX_SERIES`] fails and
    /// changes nothing.
    pub fn fold(&mut self, at: Duration, samples: &[BucketSample]) -> Result<(), ScrapeError> {
        if self.last_at.is_some_and(|last| at < last) {
            return Ok(());
        }
        self.forget_series_unseen_since(at.saturating_sub(self.window));
        let mut new_series = 0;
        let mut new_cells = HashSet::new();
        for s in samples
            .iter()
            .filter(|s| !self.series.contains_key(&*s.key))
        {
            new_series += 1;
            let known = self
                .group_index
                .get(&s.group)
                .is_some_and(|g| self.cell_index.contains_key(&(*g, s.le.to_bits())));
            if !known {
                new_cells.insert((&s.group, s.le.to_bits()));
            }
        }
        let needed = (self.series.len() + new_series).max(self.cells.len() + new_cells.len());
        if needed > MAX_SERIES {
            return Err(ScrapeError::TooManySeries { needed });
        }
        let first_scrape = self.last_at.is_none();
        for s in samples {
            match self.series.get_mut(&*s.key) {
                Some(series) => {
                    // A lower count is a reset: the counter restarted from 0.
                    let growth = if s.count >= series.last {
                        s.count - series.last
                    } else {
                        s.count
                    };
                    self.totals[series.cell] += growth;
                    series.last = s.count;
                    series.seen = at;
                }
                None => {
                    let cell = self.cell(&s.group, s.le);
                    if !first_scrape {
                        // Created since the last scrape: all of it is new.
                        self.totals[cell] += s.count;
                    }
                    let series = Series {
                        cell,
                        last: s.count,
                        seen: at,
                    };
                    self.series.insert(s.key.clone().into_boxed_str(), series);
                }
            }
        }
        self.last_at = Some(at);
        self.snapshot(at);
        Ok(())
    }

    /// Every group's quantile over the window ending at the last scrape, in the order
    /// groups were first seen; groups without observations in the window are left out.
    pub fn quantiles(&self) -> Vec<GroupQuantile> {
        let base = self.snapshots.front().map_or(&[][..], |s| &s.totals[..]);
        let mut buckets = Vec::new();
        self.groups
            .iter()
            .filter_map(|group| {
                buckets.clear();
                buckets.extend(group.cells.iter().map(|&c| {
                    let growth = self.totals[c] - base.get(c).copied().unwrap_or(0.0);
                    (self.cells[c].1, growth)
                }));
                let observations = buckets
                    .iter()
                    .filter(|b| b.0 == f64::INFINITY)
                    .map(|b| b.1)
                    .sum();
                let value = bucket_quantile(self.quantile, &mut buckets)?;
                Some(GroupQuantile {
                    group: self.describe(&group.labels),
                    value,
                    observations,
                })
            })
            .collect()
    }

    /// The groups' quantiles reduced by `aggregation` (`max`: the worst group, `min`: the
    /// best), with the group that gave the value; `None` when no group has observations
    /// in the window. Ties go to the group seen first.
    pub fn reduce(&self, aggregation: Aggregation) -> Option<GroupQuantile> {
        let mut chosen: Option<GroupQuantile> = None;
        for g in self.quantiles() {
            let better = match (&chosen, aggregation) {
                (None, _) => true,
                (Some(c), Aggregation::Min) => g.value < c.value,
                // The loader allows only max and min with histogramQuantile.
                (Some(c), _) => g.value > c.value,
            };
            if better {
                chosen = Some(g);
            }
        }
        chosen
    }

    fn cell(&mut self, group: &[String], le: f64) -> usize {
        let g = match self.group_index.get(group) {
            Some(&g) => g,
            None => {
                self.groups.push(Group {
                    labels: group.to_vec(),
                    cells: Vec::new(),
                });
                self.group_index
                    .insert(group.to_vec(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let key = (g, le.to_bits());
        if let Some(&c) = self.cell_index.get(&key) {
            return c;
        }
        let c = self.cells.len();
        self.cells.push((g, le));
        self.totals.push(0.0);
        self.groups[g].cells.push(c);
        self.cell_index.insert(key, c);
        c
    }

    /// Drops series not scraped since `cutoff`: they add nothing to any later increase.
    /// Their cells stay, so snapshots keep lining up.
    fn forget_series_unseen_since(&mut self, cutoff: Duration) {
        if self.series.values().any(|s| s.seen < cutoff) {
            self.series.retain(|_, s| s.seen >= cutoff);
        }
    }

    /// Keeps a snapshot of the totals at `at` when the last one is far enough back, and
    /// drops snapshots that can no longer be the baseline: all but the newest at or
    /// before `at - window`.
    fn snapshot(&mut self, at: Duration) {
        let spacing = self.window / MAX_SNAPSHOTS as u32;
        if self
            .snapshots
            .back()
            .is_none_or(|s| at.saturating_sub(s.at) >= spacing)
        {
            self.snapshots.push_back(Snapshot {
                at,
                totals: self.totals.clone(),
            });
        }
        if let Some(cutoff) = at.checked_sub(self.window) {
            while self.snapshots.get(1).is_some_and(|s| s.at <= cutoff) {
                self.snapshots.pop_front();
            }
        }
    }

    fn describe(&self, labels: &[String]) -> String {
        self.by
            .iter()
            .zip(labels)
            .map(|(name, value)| format!("{name}={value:?}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::MetricSelector;

    const INF: f64 = f64::INFINITY;

    fn q(quantile: f64, buckets: &[(f64, f64)]) -> Option<f64> {
        bucket_quantile(quantile, &mut buckets.to_vec())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    /// Results worked out by hand from promql/quantile.go's bucketQuantile.
    #[test]
    fn bucket_quantile_matches_prometheus_by_hand() {
        let b = [(0.1, 50.0), (0.5, 90.0), (1.0, 99.0), (INF, 100.0)];
        // rank 99 falls in (0.5, 1]: 0.5 + 0.5 × (99-90)/(99-90).
        assert_eq!(q(0.99, &b), Some(1.0));
        // rank 95: 0.5 + 0.5 × 5/9.
        assert!(close(q(0.95, &b).unwrap(), 0.5 + 0.5 * 5.0 / 9.0));
        // rank 50 in the lowest bucket, interpolated from 0.
        assert_eq!(q(0.5, &b), Some(0.1));
        assert!(close(q(0.25, &b).unwrap(), 0.05));
        // rank 99.5 is past the highest finite bucket: its bound.
        assert_eq!(q(0.995, &b), Some(1.0));
        assert_eq!(q(1.0, &b), Some(1.0));
        // Order of the input does not matter.
        let shuffled = [(INF, 100.0), (0.5, 90.0), (0.1, 50.0), (1.0, 99.0)];
        assert_eq!(q(0.99, &shuffled), Some(1.0));
    }

    #[test]
    fn bucket_quantile_special_cases_are_prometheus_nan_cases() {
        // No +Inf bucket, one bucket, no observations: NaN in PromQL, no value here.
        assert_eq!(q(0.99, &[(0.1, 1.0), (1.0, 2.0)]), None);
        assert_eq!(q(0.99, &[(INF, 7.0)]), None);
        assert_eq!(q(0.99, &[(0.1, 0.0), (INF, 0.0)]), None);
        assert_eq!(q(0.99, &[]), None);
        // A lowest bound at or below 0 is returned as is, not interpolated from 0.
        assert_eq!(
            q(0.1, &[(-1.0, 10.0), (0.0, 10.0), (INF, 20.0)]),
            Some(-1.0)
        );
        // Same bounds are merged: (0.5, 10) + (0.5, 5) is one bucket of 15.
        let merged = q(0.5, &[(0.5, 10.0), (0.5, 5.0), (1.0, 20.0), (INF, 30.0)]).unwrap();
        assert!(close(merged, 0.5));
        // Counts that go down with the bound are raised to the envelope: (0.5, 40)
        // becomes (0.5, 50), so rank 50 is in the lowest bucket.
        assert_eq!(
            q(0.5, &[(0.1, 50.0), (0.5, 40.0), (1.0, 99.0), (INF, 100.0)]),
            Some(0.1)
        );
        // A quantile in the +Inf bucket is the second highest bound.
        assert_eq!(q(0.99, &[(0.1, 1.0), (1.0, 2.0), (INF, 10.0)]), Some(1.0));
    }

    fn spec(window_secs: u64, by: &[&str]) -> HistogramQuantileSpec {
        HistogramQuantileSpec {
            quantile: 0.99,
            window: Duration::from_secs(window_secs),
            by: by.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// One histogram's buckets (bounds 0.1, 1, +Inf) with the `verb` label.
    fn histogram(verb: &str, counts: [f64; 3]) -> Vec<BucketSample> {
        [0.1, 1.0, INF]
            .iter()
            .zip(counts)
            .map(|(&le, count)| BucketSample {
                key: format!("verb=\"{verb}\",le=\"{le}\""),
                group: vec![verb.to_string()],
                le,
                count,
            })
            .collect()
    }

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn the_first_scrape_is_a_baseline_without_a_value() {
        let mut w = HistogramWindow::new(&spec(300, &["verb"]));
        w.fold(at(0), &histogram("GET", [100.0, 200.0, 300.0]))
            .unwrap();
        assert_eq!(w.reduce(Aggregation::Max), None);
        // Nothing observed since: still no value.
        w.fold(at(10), &histogram("GET", [100.0, 200.0, 300.0]))
            .unwrap();
        assert_eq!(w.reduce(Aggregation::Max), None);
    }

    #[test]
    fn the_quantile_is_over_increases_not_totals() {
        let mut w = HistogramWindow::new(&spec(300, &["verb"]));
        // Before the run: 1000 fast requests.
        w.fold(at(0), &histogram("GET", [1000.0, 1000.0, 1000.0]))
            .unwrap();
        // During: 10 requests, all between 0.1 s and 1 s.
        w.fold(at(10), &histogram("GET", [1000.0, 1010.0, 1010.0]))
            .unwrap();
        let g = w.reduce(Aggregation::Max).unwrap();
        // rank 9.9 of 10 in (0.1, 1]: 0.1 + 0.9 × 9.9/10. The totals would say 0.1.
        assert!(close(g.value, 0.1 + 0.9 * 0.99), "{g:?}");
        assert_eq!(g.observations, 10.0);
        assert_eq!(g.group, "verb=\"GET\"");
    }

    #[test]
    fn the_window_starts_at_the_newest_snapshot_at_least_a_window_old() {
        let mut w = HistogramWindow::new(&spec(60, &[]));
        let one = |counts| {
            histogram("GET", counts)
                .into_iter()
                .map(|mut s| {
                    s.group.clear();
                    s
                })
                .collect::<Vec<_>>()
        };
        w.fold(at(0), &one([0.0, 0.0, 0.0])).unwrap();
        // 100 slow requests (over 1 s) early in the run.
        w.fold(at(30), &one([0.0, 0.0, 100.0])).unwrap();
        w.fold(at(60), &one([0.0, 0.0, 100.0])).unwrap();
        assert_eq!(w.reduce(Aggregation::Max).unwrap().value, 1.0);
        // 100 fast ones later: at 90 s the window reaches back to 30 s, which excludes
        // the slow ones; at 60 s it still included them.
        w.fold(at(90), &one([100.0, 100.0, 200.0])).unwrap();
        let g = w.reduce(Aggregation::Max).unwrap();
        assert_eq!((g.value, g.observations), (0.1 * 0.99, 100.0));
        // With nothing new, the window empties after another minute.
        w.fold(at(150), &one([100.0, 100.0, 200.0])).unwrap();
        assert_eq!(w.reduce(Aggregation::Max), None);
    }

    #[test]
    fn a_counter_reset_counts_the_new_value_as_growth() {
        let mut w = HistogramWindow::new(&spec(300, &["verb"]));
        w.fold(at(0), &histogram("GET", [500.0, 600.0, 700.0]))
            .unwrap();
        // The target restarted: counts start again from 0 (10 fast, 0 slow so far)...
        w.fold(at(10), &histogram("GET", [10.0, 10.0, 10.0]))
            .unwrap();
        // ...then 10 slow ones.
        w.fold(at(20), &histogram("GET", [10.0, 10.0, 20.0]))
            .unwrap();
        let g = w.reduce(Aggregation::Max).unwrap();
        // Prometheus' increase: 10 + 0 in le=0.1, 20 in +Inf; rank 19.8 is in +Inf.
        assert_eq!(g.observations, 20.0);
        assert_eq!(g.value, 1.0);
    }

    #[test]
    fn series_that_appear_count_from_zero_and_vanished_ones_stop_adding() {
        let mut w = HistogramWindow::new(&spec(60, &["verb"]));
        w.fold(at(0), &histogram("GET", [0.0, 0.0, 0.0])).unwrap();
        // LIST appears with 5 slow requests: created since the last scrape, so all 5
        // are in the window.
        let mut both = histogram("GET", [10.0, 10.0, 10.0]);
        both.extend(histogram("LIST", [0.0, 0.0, 5.0]));
        w.fold(at(10), &both).unwrap();
        let worst = w.reduce(Aggregation::Max).unwrap();
        assert_eq!((worst.group.as_str(), worst.value), ("verb=\"LIST\"", 1.0));
        assert_eq!(worst.observations, 5.0);
        // Then 5 more.
        let mut both = histogram("GET", [10.0, 10.0, 10.0]);
        both.extend(histogram("LIST", [0.0, 0.0, 10.0]));
        w.fold(at(20), &both).unwrap();
        assert_eq!(w.reduce(Aggregation::Max).unwrap().observations, 10.0);
        let best = w.reduce(Aggregation::Min).unwrap();
        assert_eq!((best.group.as_str(), best.value), ("verb=\"GET\"", 0.099));
        // LIST vanishes: what it added stays in the window until the window passes it.
        w.fold(at(30), &histogram("GET", [10.0, 10.0, 10.0]))
            .unwrap();
        assert_eq!(w.reduce(Aggregation::Max).unwrap().group, "verb=\"LIST\"");
        w.fold(at(85), &histogram("GET", [20.0, 20.0, 20.0]))
            .unwrap();
        let worst = w.reduce(Aggregation::Max).unwrap();
        assert_eq!(
            (worst.group.as_str(), worst.observations),
            ("verb=\"GET\"", 10.0)
        );
        // Gone for more than a window, LIST is forgotten; back (a restarted target
        // recreating it), its count is new again.
        let mut both = histogram("GET", [20.0, 20.0, 20.0]);
        both.extend(histogram("LIST", [0.0, 0.0, 3.0]));
        w.fold(at(95), &both).unwrap();
        assert_eq!(w.series.len(), 6);
        let worst = w.reduce(Aggregation::Max).unwrap();
        assert_eq!(
            (worst.group.as_str(), worst.observations),
            ("verb=\"LIST\"", 3.0)
        );
    }

    #[test]
    fn an_overtaken_scrape_is_ignored() {
        let mut w = HistogramWindow::new(&spec(300, &[]));
        let mut h = histogram("GET", [0.0, 0.0, 0.0]);
        w.fold(at(0), &h).unwrap();
        h[2].count = 10.0;
        w.fold(at(20), &h).unwrap();
        // Started before the last folded scrape: its lower count is not a reset.
        h[2].count = 5.0;
        w.fold(at(10), &h).unwrap();
        assert_eq!(w.reduce(Aggregation::Max).unwrap().observations, 10.0);
    }

    #[test]
    fn too_many_series_fail_the_scrape_and_keep_the_state() {
        let mut w = HistogramWindow::new(&spec(300, &["verb"]));
        w.fold(at(0), &histogram("GET", [0.0, 0.0, 0.0])).unwrap();
        w.fold(at(10), &histogram("GET", [0.0, 0.0, 4.0])).unwrap();
        let many: Vec<BucketSample> = (0..MAX_SERIES)
            .flat_map(|i| histogram(&format!("v{i}"), [0.0, 0.0, 1.0]))
            .take(MAX_SERIES)
            .collect();
        assert_eq!(
            w.fold(at(20), &many),
            Err(ScrapeError::TooManySeries {
                needed: MAX_SERIES + 3
            })
        );
        assert_eq!(w.series.len(), 3);
        w.fold(at(30), &histogram("GET", [0.0, 0.0, 8.0])).unwrap();
        assert_eq!(w.reduce(Aggregation::Max).unwrap().observations, 8.0);
    }

    #[test]
    fn snapshots_stay_bounded_for_a_fast_interval() {
        let mut w = HistogramWindow::new(&spec(64, &["verb"]));
        for i in 0..2_000u64 {
            let n = i as f64;
            w.fold(Duration::from_millis(100 * i), &histogram("GET", [n, n, n]))
                .unwrap();
            assert!(
                w.snapshots.len() <= MAX_SNAPSHOTS + 2,
                "{}",
                w.snapshots.len()
            );
        }
        // 199.9 s in: the baseline is at most one spacing (1 s) before 135.9 s.
        let base = w.snapshots.front().unwrap().at;
        assert!(
            base <= Duration::from_millis(135_900) && base >= Duration::from_millis(134_900),
            "{base:?}"
        );
    }

    fn selector(text: &str) -> Selector {
        let s: MetricSelector = match text {
            "h_bucket" => MetricSelector {
                metric: "h_bucket".into(),
                matchers: vec![],
            },
            _ => unreachable!(),
        };
        Selector::new(&s.metric, &s.matchers).unwrap()
    }

    #[test]
    fn select_buckets_reads_le_and_groups_and_refuses_what_is_not_a_histogram() {
        let body = "# TYPE h histogram\n\
            h_bucket{verb=\"GET\",le=\"0.1\"} 1\n\
            h_bucket{verb=\"GET\",le=\"+Inf\"} 2\n\
            h_bucket{le=\"1e0\"} 3\n\
            h_sum{verb=\"GET\"} 0.3\n\
            h_count{verb=\"GET\"} 2\n";
        let got = select_buckets(body, &selector("h_bucket"), &["verb".to_string()]).unwrap();
        let read: Vec<(String, f64, f64)> = got
            .iter()
            .map(|b| (b.group[0].clone(), b.le, b.count))
            .collect();
        // In the order of the series' label text.
        assert_eq!(
            read,
            vec![
                ("".to_string(), 1.0, 3.0),
                ("GET".to_string(), INF, 2.0),
                ("GET".to_string(), 0.1, 1.0),
            ]
        );
        let err = |body: &str| {
            select_buckets(body, &selector("h_bucket"), &[])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("h_bucket{verb=\"GET\"} 1\n"),
            "series h_bucket{verb=\"GET\"} has no numeric le label; histogramQuantile reads \
             the _bucket series of a histogram"
        );
        assert_eq!(
            err("h_bucket{le=\"x\"} 1\n"),
            "series h_bucket{le=\"x\"} has no numeric le label; histogramQuantile reads the \
             _bucket series of a histogram"
        );
        assert_eq!(
            err("h_bucket{le=\"1\"} -1\n"),
            "series h_bucket{le=\"1\"} has count -1, which no bucket counter can have"
        );
        assert_eq!(
            err("h_bucket{le=\"1\"} 1\nh_bucket{le=\"1\"} 2\n"),
            "series le=\"1\" appears more than once in one scrape"
        );
        // A broken line anywhere fails the whole scrape, before anything is folded.
        assert_eq!(
            err("h_bucket{le=\"1\"} 1\nbroken{\n"),
            "line 2: expected label name or '}'"
        );
    }
}

#[cfg(test)]
mod proptests {
    //! The incremental window agrees with a brute-force recomputation from the whole
    //! scrape history, over random histories with gaps, vanishing series and resets.

    use proptest::prelude::*;

    use super::*;

    const BOUNDS: [f64; 3] = [0.1, 1.0, f64::INFINITY];
    /// Histograms: (verb, code); grouped by verb, so two series per group and bound.
    const HISTOGRAMS: [(&str, &str); 4] = [
        ("GET", "200"),
        ("GET", "500"),
        ("LIST", "200"),
        ("LIST", "500"),
    ];
    const WINDOW_MS: u64 = 64_000;

    /// One scrape: its time, and per histogram its cumulative counts or `None` (absent).
    type Scrape = (u64, Vec<Option<[f64; 3]>>);

    fn history() -> impl Strategy<Value = Vec<Scrape>> {
        // Per step: time gap (at least the snapshot spacing, so every scrape is a
        // snapshot), and per histogram: present?, reset?, new observations per bucket.
        let step = (
            1_000u64..40_000,
            prop::collection::vec((0u8..20, 0u8..20, 0u32..5, 0u32..5, 0u32..5), 4),
        );
        prop::collection::vec(step, 1..40).prop_map(|steps| {
            let mut at = 0;
            let mut counts = [[0.0f64; 3]; 4];
            steps
                .into_iter()
                .map(|(gap, per)| {
                    at += gap;
                    let present = per
                        .iter()
                        .enumerate()
                        .map(|(h, &(absent, reset, a, b, c))| {
                            if reset == 0 {
                                counts[h] = [0.0; 3];
                            }
                            let (a, b, c) = (a as f64, b as f64, c as f64);
                            let [x, y, z] = counts[h];
                            counts[h] = [x + a, y + a + b, z + a + b + c];
                            (absent >= 3).then_some(counts[h])
                        })
                        .collect();
                    (at, present)
                })
                .collect()
        })
    }

    fn samples(scrape: &Scrape) -> Vec<BucketSample> {
        let mut out = Vec::new();
        for (h, counts) in scrape.1.iter().enumerate() {
            let Some(counts) = counts else { continue };
            let (verb, code) = HISTOGRAMS[h];
            for (le, count) in BOUNDS.iter().zip(counts) {
                out.push(BucketSample {
                    key: format!("verb=\"{verb}\",code=\"{code}\",le=\"{le}\""),
                    group: vec![verb.to_string()],
                    le: *le,
                    count: *count,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The window's increase per (verb, bound), straight from the definition.
    fn brute_force(history: &[Scrape]) -> Vec<(String, Option<f64>)> {
        let end = history.last().unwrap().0;
        let base = history
            .iter()
            .rev()
            .find(|s| s.0 + WINDOW_MS <= end)
            .unwrap_or(&history[0])
            .0;
        let mut growth: HashMap<(&str, usize), f64> = HashMap::new();
        for (h, (verb, _)) in HISTOGRAMS.iter().enumerate() {
            // (time, counts) of the scrapes that had this histogram.
            let seen: Vec<(u64, [f64; 3])> = history
                .iter()
                .filter_map(|s| s.1[h].map(|c| (s.0, c)))
                .collect();
            for (i, &(t, cur)) in seen.iter().enumerate() {
                if t == history[0].0 || t <= base {
                    continue;
                }
                let prev = i
                    .checked_sub(1)
                    .map(|j| seen[j])
                    .filter(|&(pt, _)| pt + WINDOW_MS >= t);
                for b in 0..3 {
                    let g = match prev {
                        Some((_, p)) if cur[b] >= p[b] => cur[b] - p[b],
                        _ => cur[b],
                    };
                    *growth.entry((verb, b)).or_default() += g;
                }
            }
        }
        ["GET", "LIST"]
            .iter()
            .filter(|verb| {
                history.iter().any(|s| {
                    s.1.iter()
                        .enumerate()
                        .any(|(h, c)| c.is_some() && HISTOGRAMS[h].0 == **verb)
                })
            })
            .map(|verb| {
                let mut buckets: Vec<(f64, f64)> = (0..3)
                    .map(|b| (BOUNDS[b], growth.get(&(*verb, b)).copied().unwrap_or(0.0)))
                    .collect();
                (
                    format!("verb=\"{verb}\""),
                    bucket_quantile(0.9, &mut buckets),
                )
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_window_agrees_with_brute_force(history in history()) {
            let mut w = HistogramWindow::new(&HistogramQuantileSpec {
                quantile: 0.9,
                window: Duration::from_millis(WINDOW_MS),
                by: vec!["verb".into()],
            });
            for scrape in &history {
                w.fold(Duration::from_millis(scrape.0), &samples(scrape)).unwrap();
            }
            let got: HashMap<String, f64> =
                w.quantiles().into_iter().map(|g| (g.group, g.value)).collect();
            for (group, expected) in brute_force(&history) {
                prop_assert_eq!(got.get(&group).copied(), expected, "{}", group);
            }
            prop_assert!(w.snapshots.len() <= MAX_SNAPSHOTS + 2);
        }
    }
}
