//! Attribution: which tests ran during each violation interval, and which violations the
//! invariant's `expectedDisruptions` explain.
//!
//! A test *overlaps* an interval when its run `[start, end]` meets the interval widened by
//! one sample interval before its start: the interval starts at the first bad sample, and
//! the fault may have begun anywhere in the gap before it. An open interval ends at the
//! report's end time, and so does a test still running. The overlapping tests are listed on
//! the interval (earliest first, at most [`MAX_TESTS_PER_INTERVAL`]); those whose full
//! name matches one of the invariant's patterns are listed again in `expected_by`, and
//! then the interval is `expected`. The invariant's verdict follows
//! ([`InvariantReport::judge`]).
//!
//! Attribution is a pure function of the report (annotations, intervals, patterns), so it
//! is recomputed whenever a report is built, read back or given more annotations: a saved
//! report and a Ginkgo JSON file given to `report render --tests` attribute exactly as the
//! live agent would.

use std::collections::HashMap;

use regex::Regex;

use super::{AnnotationKind, InvariantReport, Report};

/// Most test names listed per interval (and in `expected_by`); the rest are counted in
/// `tests_omitted`.
pub const MAX_TESTS_PER_INTERVAL: usize = 100;

/// One test run as attribution sees it: `[start, end]` in ms.
struct TestRun<'a> {
    start: i64,
    end: i64,
    name: &'a str,
}

/// Attributes every interval of `report` and recounts verdicts.
pub fn apply(report: &mut Report) {
    Attributor::default().apply(report);
}

/// Attribution with compiled patterns cached across reports (the engine builds one every
/// second).
#[derive(Debug, Default)]
pub struct Attributor {
    /// Pattern text to compiled regex; `None` for a pattern that does not compile (only
    /// possible in a hand-edited report: the invariant file is validated).
    patterns: HashMap<String, Option<Regex>>,
}

impl Attributor {
    /// Attributes every interval of `report` and recounts verdicts.
    pub fn apply(&mut self, report: &mut Report) {
        let report_end = report.end_time().0;
        let mut tests: Vec<TestRun<'_>> = report
            .annotations
            .iter()
            .filter(|a| a.kind == AnnotationKind::Test)
            .map(|a| TestRun {
                start: a.start.0,
                end: a.end.map_or(report_end, |e| e.0).max(a.start.0),
                name: &a.name,
            })
            .collect();
        tests.sort_by_key(|t| t.start);
        let longest = tests.iter().map(|t| t.end - t.start).max().unwrap_or(0);
        for invariant in &report.invariants {
            for p in &invariant.expected_disruptions {
                if !self.patterns.contains_key(p) {
                    self.patterns.insert(p.clone(), Regex::new(p).ok());
                }
            }
        }
        for invariant in &mut report.invariants {
            let patterns: Vec<&Regex> = invariant
                .expected_disruptions
                .iter()
                .filter_map(|p| self.patterns.get(p).and_then(Option::as_ref))
                .collect();
            attribute(invariant, &tests, longest, report_end, &patterns);
        }
        report.count_verdicts();
    }
}

fn attribute(
    invariant: &mut InvariantReport,
    tests: &[TestRun<'_>],
    longest: i64,
    report_end: i64,
    patterns: &[&Regex],
) {
    let widen = (invariant.interval_seconds * 1000.0).round() as i64;
    for v in &mut invariant.summary.violations {
        v.tests.clear();
        v.tests_omitted = 0;
        v.expected_by.clear();
        let low = v.start.0.saturating_sub(widen);
        let high = v.end.map_or(report_end, |e| e.0).max(v.start.0);
        // Tests are sorted by start: those starting after `high` cannot overlap, and a
        // test starting before `low - longest` ended before `low`.
        let last = tests.partition_point(|t| t.start <= high);
        let first = tests[..last].partition_point(|t| t.start < low.saturating_sub(longest));
        for t in tests[first..last].iter().filter(|t| t.end >= low) {
            if v.tests.len() < MAX_TESTS_PER_INTERVAL {
                v.tests.push(t.name.to_string());
            } else {
                v.tests_omitted += 1;
            }
            if v.expected_by.len() < MAX_TESTS_PER_INTERVAL
                && patterns.iter().any(|p| p.is_match(t.name))
            {
                v.expected_by.push(t.name.to_string());
            }
        }
        v.expected = !v.expected_by.is_empty();
    }
    invariant.judge();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::eval::{Evaluator, Summary};
    use crate::report::{Annotation, RunContext, RunInfo, RunStatus, Verdict};
    use crate::sample::{ErrorClass, Observation, ProbeError, Sample, Timestamp};
    use std::time::Duration;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: api
    description: d
    owner: sig-x
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
    expectedDisruptions: ['\[Disruptive\]']
"#;

    /// An invariant with one violation per `(start_s, end_s)` (seconds after 1000 s).
    fn summary(intervals: &[(i64, Option<i64>)]) -> Summary {
        let set = config::parse_str("f.yaml", FILE).unwrap();
        let inv = &set.invariants[0];
        let mut e = Evaluator::new(&inv.condition, inv.interval);
        let at = |s: i64| Timestamp(1_000_000 + s * 1000);
        let ok = |s| Sample {
            at: at(s),
            latency: Duration::from_millis(1),
            observation: Observation::Ok { value: None },
        };
        let bad = |s| Sample {
            at: at(s),
            latency: Duration::from_millis(1),
            observation: Observation::Failed(ProbeError::new(ErrorClass::HttpStatus, "500")),
        };
        let mut t = 0;
        for &(start, end) in intervals {
            while t < start {
                e.ingest(&ok(t));
                t += 1;
            }
            let stop = end.unwrap_or(start + 1);
            while t < stop {
                e.ingest(&bad(t));
                t += 1;
            }
        }
        if intervals.last().is_some_and(|(_, end)| end.is_some()) {
            e.ingest(&ok(t));
        }
        e.summary(at(100))
    }

    fn report(intervals: &[(i64, Option<i64>)], tests: &[(&str, i64, Option<i64>)]) -> Report {
        let set = config::parse_str("f.yaml", FILE).unwrap();
        let run = RunInfo {
            id: "r".into(),
            context: RunContext::default(),
            agent_version: "test".into(),
            status: RunStatus::Completed,
            started_at: Timestamp(1_000_000),
            updated_at: Timestamp(1_100_000),
            ended_at: Some(Timestamp(1_100_000)),
            duration_seconds: 100.0,
            config_files: vec![],
            node: None,
            leadership: None,
            gaps: Vec::new(),
            config_revisions: Vec::new(),
        };
        let inv = InvariantReport::new(&set.invariants[0], summary(intervals));
        Report::new(run, vec![inv]).with_annotations(tests.iter().map(|&(name, s, e)| Annotation {
            kind: AnnotationKind::Test,
            name: name.to_string(),
            start: Timestamp(1_000_000 + s * 1000),
            end: e.map(|e| Timestamp(1_000_000 + e * 1000)),
            outcome: e.map(|_| "passed".to_string()),
        }))
    }

    #[test]
    fn overlapping_tests_are_listed_and_expected_ones_explain_the_violation() {
        let r = report(
            &[(10, Some(15))],
            &[
                ("a before", 0, Some(5)),
                ("b [Disruptive] during", 12, Some(20)),
                ("c ends in the widened second", 3, Some(9)),
                ("d after", 16, Some(30)),
            ],
        );
        let v = &r.invariants[0].summary.violations[0];
        assert_eq!(
            v.tests,
            ["c ends in the widened second", "b [Disruptive] during"]
        );
        assert_eq!(v.expected_by, ["b [Disruptive] during"]);
        assert!(v.expected);
        assert_eq!(r.invariants[0].verdict, Verdict::ExpectedDisruption);
        assert_eq!(r.invariants[0].expected_violations, 1);
        assert_eq!(r.invariants[0].unexpected_violations, 0);
        assert_eq!(r.totals.expected_disruption, 1);
        assert_eq!(r.totals.violated, 0);
    }

    #[test]
    fn one_unexpected_interval_makes_the_invariant_violated() {
        let r = report(
            &[(10, Some(15)), (40, Some(45))],
            &[("x [Disruptive]", 9, Some(16)), ("y normal", 39, Some(50))],
        );
        let inv = &r.invariants[0];
        assert_eq!(inv.verdict, Verdict::Violated);
        assert_eq!((inv.expected_violations, inv.unexpected_violations), (1, 1));
        assert!(!inv.summary.violations[1].expected);
        assert_eq!(inv.summary.violations[1].tests, ["y normal"]);
    }

    #[test]
    fn open_intervals_and_running_tests_extend_to_the_report_end() {
        let r = report(&[(90, None)], &[("still running [Disruptive]", 95, None)]);
        let v = &r.invariants[0].summary.violations[0];
        assert_eq!(v.end, None);
        assert_eq!(v.tests, ["still running [Disruptive]"]);
        assert!(v.expected);
    }

    #[test]
    fn long_tests_that_started_early_are_found() {
        let r = report(
            &[(50, Some(52))],
            &[("long", 0, Some(99)), ("short", 1, Some(2))],
        );
        assert_eq!(r.invariants[0].summary.violations[0].tests, ["long"]);
    }

    #[test]
    fn attribution_is_idempotent_and_survives_a_round_trip() {
        let r = report(&[(10, Some(15))], &[("b [Disruptive]", 12, Some(20))]);
        let again = Report::from_json("r.json", &r.to_json()).unwrap();
        assert_eq!(again.to_json(), r.to_json());
    }

    #[test]
    fn without_tests_every_violation_is_unexpected() {
        let r = report(&[(10, Some(15))], &[]);
        assert_eq!(r.invariants[0].verdict, Verdict::Violated);
        assert!(r.invariants[0].summary.violations[0].tests.is_empty());
    }

    #[test]
    fn long_lists_are_capped_and_counted() {
        let names: Vec<String> = (0..150).map(|i| format!("t{i:03}")).collect();
        let tests: Vec<(&str, i64, Option<i64>)> =
            names.iter().map(|n| (n.as_str(), 10, Some(20))).collect();
        let r = report(&[(10, Some(15))], &tests);
        let v = &r.invariants[0].summary.violations[0];
        assert_eq!(v.tests.len(), MAX_TESTS_PER_INTERVAL);
        assert_eq!(v.tests_omitted, 50);
    }
}
