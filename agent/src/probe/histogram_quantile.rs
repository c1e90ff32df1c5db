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
//!   growth, as in Prometheus' `increase`. A series seen for the first time is its own
//!   baseline (it adds nothing until its next scrape), as `increase` ignores what a series
//!   counted before its first sample in the range. A series that disappears stops adding,
//!   and is forgotten after a window without it.
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
        for s in samples.iter().filter(|s| !self.series.contains_key(&*s.key)) {
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
