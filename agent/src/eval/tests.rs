//! Table tests: samples in, states, transitions, intervals and disruption out.

use std::time::Duration;

use super::*;
use crate::sample::ProbeError;

/// One second in ms.
const S: i64 = 1000;
const SEC: Duration = Duration::from_secs(1);

fn ok(at: i64) -> Sample {
    Sample {
        at: Timestamp(at),
        latency: Duration::from_millis(20),
        observation: Observation::Ok { value: None },
    }
}

fn fail(at: i64, class: ErrorClass, message: &str) -> Sample {
    Sample {
        at: Timestamp(at),
        latency: Duration::from_secs(1),
        observation: Observation::Failed(ProbeError::new(class, message)),
    }
}

fn http500(at: i64) -> Sample {
    fail(at, ErrorClass::HttpStatus, "status 500")
}

fn absent(at: i64) -> Sample {
    Sample {
        at: Timestamp(at),
        latency: Duration::from_millis(5),
        observation: Observation::Absent,
    }
}

fn value(at: i64, v: f64) -> Sample {
    Sample {
        at: Timestamp(at),
        latency: Duration::from_millis(5),
        observation: Observation::Ok { value: Some(v) },
    }
}

fn timed(at: i64, latency_ms: u64) -> Sample {
    Sample {
        at: Timestamp(at),
        latency: Duration::from_millis(latency_ms),
        observation: Observation::Ok { value: None },
    }
}

fn availability(target_percent: f64, window: Duration) -> Evaluator {
    Evaluator::new(
        &Condition::Availability {
            target_percent,
            window,
        },
        SEC,
    )
}

fn threshold(
    min: Option<f64>,
    max: Option<f64>,
    for_duration: Duration,
    interval: Duration,
) -> Evaluator {
    Evaluator::new(
        &Condition::Threshold {
            min,
            max,
            for_duration,
        },
        interval,
    )
}

fn increase(max: f64, window: Option<Duration>, interval: Duration) -> Evaluator {
    Evaluator::new(&Condition::Increase { max, window }, interval)
}

fn latency(quantile: f64, max: Duration, window: Duration) -> Evaluator {
    Evaluator::new(
        &Condition::Latency {
            quantile,
            max,
            window,
        },
        SEC,
    )
}

/// Feeds samples; returns `(at, from, to)` of every transition.
fn feed(e: &mut Evaluator, samples: &[Sample]) -> Vec<(i64, State, State)> {
    samples
        .iter()
        .filter_map(|s| e.ingest(s))
        .map(|t| (t.at.0, t.from, t.to))
        .collect()
}

/// `(start, end, class, samples)` of every interval.
fn spans(summary: &Summary) -> Vec<(i64, Option<i64>, Option<ErrorClass>, u64)> {
    summary
        .violations
        .iter()
        .map(|v| (v.start.0, v.end.map(|e| e.0), v.error_class, v.samples))
        .collect()
}

use State::{Holding, Pending, Unknown, Violated};

#[test]
fn availability_burst_gives_one_interval_from_first_failure_to_first_success() {
    let mut e = availability(99.9, Duration::from_secs(300));
    let mut samples: Vec<Sample> = (0..10).map(|i| ok(i * S)).collect();
    samples.extend((10..13).map(|i| http500(i * S)));
    samples.extend((13..20).map(|i| ok(i * S)));
    let transitions = feed(&mut e, &samples);
    assert_eq!(
        transitions,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Violated),
            (13 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(20 * S));
    assert_eq!(
        spans(&s),
        vec![(10 * S, Some(13 * S), Some(ErrorClass::HttpStatus), 3)]
    );
    assert_eq!(s.violations[0].first_error.as_deref(), Some("status 500"));
    assert_eq!(s.violations[0].last_error.as_deref(), Some("status 500"));
    assert_eq!(s.disruption_seconds, 3.0);
    assert_eq!(s.state, Holding);
    assert_eq!(
        s.samples,
        Totals {
            ok: 17,
            failed: 3,
            absent: 0,
            missed: 0
        }
    );
    assert_eq!(s.availability_percent, Some(85.0));
    assert_eq!(s.window_availability_percent, Some(85.0));
    assert!(s.examined);
    assert_eq!(s.violations_dropped, 0);
}

#[test]
fn transition_reasons_explain() {
    let mut e = availability(99.9, Duration::from_secs(300));
    let first = e.ingest(&ok(0)).map(|t| t.reason);
    assert_eq!(
        first.as_deref(),
        Some("first judged sample: probe succeeded")
    );
    for i in 1..13 {
        e.ingest(&ok(i * S));
    }
    let violated = e.ingest(&http500(13 * S)).map(|t| t.reason);
    assert_eq!(
        violated.as_deref(),
        Some("availability 92.857% < 99.9% over 5m; last error: http_status: status 500")
    );
    let recovered = e.ingest(&ok(14 * S)).map(|t| t.reason).unwrap_or_default();
    assert!(
        recovered.starts_with("recovered: probe succeeded (after 1 bad samples since "),
        "{recovered}"
    );
}

#[test]
fn availability_pending_until_window_ratio_drops_below_target() {
    let mut e = availability(50.0, Duration::from_secs(60));
    let mut samples: Vec<Sample> = (0..4).map(|i| ok(i * S)).collect();
    // 4/5 = 80 %, 4/6, 4/7, 4/8 = 50 % (not below), 4/9 < 50 %.
    samples.extend((4..9).map(|i| http500(i * S)));
    samples.push(ok(9 * S));
    let transitions = feed(&mut e, &samples);
    assert_eq!(
        transitions,
        vec![
            (0, Unknown, Holding),
            (4 * S, Holding, Pending),
            (8 * S, Pending, Violated),
            (9 * S, Violated, Holding)
        ]
    );
    // The interval starts at the episode's first failure, not when it became violated.
    assert_eq!(
        spans(&e.summary(Timestamp(9 * S))),
        vec![(4 * S, Some(9 * S), Some(ErrorClass::HttpStatus), 5)]
    );
}

#[test]
fn pending_blip_records_no_interval() {
    let mut e = availability(50.0, Duration::from_secs(60));
    let t = feed(&mut e, &[ok(0), ok(S), http500(2 * S), ok(3 * S)]);
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (2 * S, Holding, Pending),
            (3 * S, Pending, Holding)
        ]
    );
    let s = e.summary(Timestamp(3 * S));
    assert!(s.violations.is_empty());
    // Disruption does not care about the condition.
    assert_eq!(s.disruption_seconds, 1.0);
}

#[test]
fn target_100_violates_on_first_failure() {
    let mut e = availability(100.0, Duration::from_secs(300));
    let t = feed(&mut e, &[http500(0)]);
    assert_eq!(t, vec![(0, Unknown, Violated)]);
    let s = e.summary(Timestamp(5 * S));
    assert_eq!(spans(&s), vec![(0, None, Some(ErrorClass::HttpStatus), 1)]);
    // Open outage: one interval at least.
    assert_eq!(s.disruption_seconds, 1.0);
}

#[test]
fn error_class_change_splits_the_interval() {
    let mut e = availability(99.0, Duration::from_secs(300));
    let samples = [
        ok(0),
        fail(S, ErrorClass::Timeout, "deadline exceeded"),
        fail(2 * S, ErrorClass::Timeout, "deadline exceeded again"),
        fail(3 * S, ErrorClass::ConnectionRefused, "refused"),
        fail(4 * S, ErrorClass::ConnectionRefused, "refused"),
        ok(5 * S),
    ];
    let t = feed(&mut e, &samples);
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (S, Holding, Violated),
            (5 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(5 * S));
    assert_eq!(
        spans(&s),
        vec![
            (S, Some(3 * S), Some(ErrorClass::Timeout), 2),
            (3 * S, Some(5 * S), Some(ErrorClass::ConnectionRefused), 2)
        ]
    );
    assert_eq!(
        s.violations[0].first_error.as_deref(),
        Some("deadline exceeded")
    );
    assert_eq!(
        s.violations[0].last_error.as_deref(),
        Some("deadline exceeded again")
    );
    assert_eq!(s.disruption_seconds, 4.0);
}

#[test]
fn pending_interval_takes_the_class_that_violated_it() {
    let mut e = availability(50.0, Duration::from_secs(60));
    let samples = [
        ok(0),
        ok(S),
        fail(2 * S, ErrorClass::Timeout, "slow"),
        fail(3 * S, ErrorClass::ConnectionRefused, "refused"),
        fail(4 * S, ErrorClass::ConnectionRefused, "refused"),
        ok(5 * S),
    ];
    feed(&mut e, &samples);
    let s = e.summary(Timestamp(5 * S));
    assert_eq!(
        spans(&s),
        vec![(2 * S, Some(5 * S), Some(ErrorClass::ConnectionRefused), 3)]
    );
    assert_eq!(s.violations[0].first_error.as_deref(), Some("slow"));
}

#[test]
fn absent_and_unknown_do_not_end_episodes() {
    let mut e = availability(100.0, Duration::from_secs(60));
    let t = feed(
        &mut e,
        &[ok(0), http500(S), absent(2 * S), http500(3 * S), ok(4 * S)],
    );
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (S, Holding, Violated),
            (4 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(4 * S));
    assert_eq!(
        spans(&s),
        vec![(S, Some(4 * S), Some(ErrorClass::HttpStatus), 2)]
    );
    // Disruption: the absent sample answered, so two one-interval outages.
    assert_eq!(s.disruption_seconds, 2.0);
}

#[test]
fn window_availability_reads_as_of_now() {
    let mut e = availability(99.0, Duration::from_secs(10));
    feed(&mut e, &[http500(0), ok(5 * S), ok(8 * S)]);
    assert_eq!(
        e.summary(Timestamp(8 * S))
            .window_availability_percent
            .map(|p| p.round()),
        Some(67.0)
    );
    // At 12 s the failure at 0 s has left the window.
    assert_eq!(
        e.summary(Timestamp(12 * S)).window_availability_percent,
        Some(100.0)
    );
    // Nothing left at all.
    assert_eq!(
        e.summary(Timestamp(60 * S)).window_availability_percent,
        None
    );
    // Whole-run availability keeps everything.
    assert_eq!(
        e.summary(Timestamp(60 * S))
            .availability_percent
            .map(|p| p.round()),
        Some(67.0)
    );
}

#[test]
fn threshold_pending_then_violated_after_for() {
    let mut e = threshold(
        None,
        Some(5.0),
        Duration::from_secs(30),
        Duration::from_secs(10),
    );
    let samples = [
        value(0, 3.0),
        value(10 * S, 7.0),
        value(20 * S, 8.0),
        value(30 * S, 9.0),
        value(40 * S, 9.0),
        value(50 * S, 4.0),
    ];
    let t = feed(&mut e, &samples);
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Pending),
            (40 * S, Pending, Violated),
            (50 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(50 * S));
    assert_eq!(spans(&s), vec![(10 * S, Some(50 * S), None, 4)]);
    assert_eq!(
        s.violations[0].first_error.as_deref(),
        Some("value 7 > max 5")
    );
    assert_eq!(
        s.violations[0].last_error.as_deref(),
        Some("value 9 > max 5")
    );
    assert_eq!(s.last_value, Some(4.0));
    assert_eq!(s.disruption_seconds, 0.0);
}

#[test]
fn threshold_for_elapses_with_advance_and_unknown_samples() {
    let mut e = threshold(
        Some(0.0),
        None,
        Duration::from_secs(30),
        Duration::from_secs(10),
    );
    assert_eq!(
        feed(&mut e, &[value(100 * S, -1.0)]),
        vec![(100 * S, Unknown, Pending)]
    );
    assert_eq!(e.advance(Timestamp(129 * S)), None);
    let t = e.advance(Timestamp(130 * S));
    assert_eq!(
        t.as_ref()
            .map(|t| (t.at.0, t.from, t.to, t.reason.as_str())),
        Some((130 * S, Pending, Violated, "value -1 < min 0 for 30s"))
    );
    assert_eq!(e.advance(Timestamp(140 * S)), None);
    feed(&mut e, &[value(140 * S, 1.0)]);
    assert_eq!(
        spans(&e.summary(Timestamp(140 * S))),
        vec![(100 * S, Some(140 * S), None, 1)]
    );

    // A failed scrape is Unknown, but its time still counts towards `for`.
    let mut e = threshold(
        Some(0.0),
        None,
        Duration::from_secs(30),
        Duration::from_secs(10),
    );
    let t = feed(
        &mut e,
        &[
            value(0, -1.0),
            fail(20 * S, ErrorClass::Timeout, "t"),
            fail(30 * S, ErrorClass::Timeout, "t"),
        ],
    );
    assert_eq!(t, vec![(0, Unknown, Pending), (30 * S, Pending, Violated)]);
    let s = e.summary(Timestamp(30 * S));
    assert_eq!(s.samples.failed, 2);
    assert_eq!(s.disruption_seconds, 20.0);
}

#[test]
fn threshold_blip_shorter_than_for_records_no_interval() {
    let mut e = threshold(
        None,
        Some(5.0),
        Duration::from_secs(30),
        Duration::from_secs(10),
    );
    let t = feed(
        &mut e,
        &[
            value(0, 3.0),
            value(10 * S, 7.0),
            value(20 * S, 7.0),
            value(30 * S, 3.0),
        ],
    );
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Pending),
            (30 * S, Pending, Holding)
        ]
    );
    let s = e.summary(Timestamp(60 * S));
    assert!(s.violations.is_empty());
    assert_eq!(e.advance(Timestamp(100 * S)), None);
}

#[test]
fn threshold_for_zero_violates_at_once_and_unknowns_are_unknown() {
    let mut e = threshold(Some(1.0), Some(5.0), Duration::ZERO, SEC);
    let samples = [
        fail(0, ErrorClass::Timeout, "t"),
        absent(S),
        Sample {
            at: Timestamp(2 * S),
            latency: Duration::ZERO,
            observation: Observation::Ok { value: None },
        },
        value(3 * S, f64::NAN),
    ];
    assert_eq!(feed(&mut e, &samples), vec![]);
    let s = e.summary(Timestamp(3 * S));
    assert!(!s.examined);
    assert_eq!(s.state, Unknown);
    assert_eq!(s.last_value, None);
    assert_eq!(
        feed(&mut e, &[value(4 * S, 6.0)]),
        vec![(4 * S, Unknown, Violated)]
    );
    assert_eq!(
        feed(&mut e, &[value(5 * S, f64::NAN), value(6 * S, 3.0)]),
        vec![(6 * S, Violated, Holding)]
    );
    let s = e.summary(Timestamp(6 * S));
    assert_eq!(spans(&s), vec![(4 * S, Some(6 * S), None, 1)]);
    // Infinity is a real (out-of-bounds) reading, but not a last_value to report.
    assert_eq!(
        feed(&mut e, &[value(7 * S, f64::INFINITY)]),
        vec![(7 * S, Holding, Violated)]
    );
    assert_eq!(e.summary(Timestamp(7 * S)).last_value, Some(3.0));
}

#[test]
fn increase_with_counter_reset() {
    let mut e = increase(5.0, None, SEC);
    let samples = [
        value(0, 10.0),
        value(S, 12.0),
        value(2 * S, 3.0),
        value(3 * S, 4.0),
    ];
    // +0 (baseline), +2, reset: +3 (= 5, not above max), +1 = 6.
    let t = feed(&mut e, &samples);
    assert_eq!(t, vec![(0, Unknown, Holding), (3 * S, Holding, Violated)]);
    let s = e.summary(Timestamp(3 * S));
    assert_eq!(s.increase, Some(6.0));
    assert_eq!(spans(&s), vec![(3 * S, None, None, 1)]);
    assert_eq!(
        s.violations[0].first_error.as_deref(),
        Some("increased by 6 (max 5)")
    );
}

#[test]
fn increase_counts_a_series_that_appears_after_absent_from_zero() {
    let mut e = increase(0.0, None, SEC);
    let t = feed(&mut e, &[absent(0), absent(S), value(2 * S, 1.0)]);
    assert_eq!(t, vec![(2 * S, Unknown, Violated)]);
    assert_eq!(e.summary(Timestamp(2 * S)).increase, Some(1.0));

    // Without an absent sample first, the first value is only the baseline.
    let mut e = increase(0.0, None, SEC);
    let t = feed(&mut e, &[value(0, 7.0), value(S, 7.0)]);
    assert_eq!(t, vec![(0, Unknown, Holding)]);
    assert_eq!(e.summary(Timestamp(S)).increase, Some(0.0));

    // A failed scrape before the first value is not "absent".
    let mut e = increase(0.0, None, SEC);
    let t = feed(&mut e, &[fail(0, ErrorClass::Timeout, "t"), value(S, 4.0)]);
    assert_eq!(t, vec![(S, Unknown, Holding)]);
}

#[test]
fn increase_keeps_growth_when_series_vanishes() {
    let mut e = increase(10.0, None, SEC);
    let samples = [
        value(0, 1.0),
        value(S, 3.0),
        absent(2 * S),
        fail(3 * S, ErrorClass::Timeout, "t"),
        value(4 * S, 5.0),
        value(5 * S, f64::NAN),
    ];
    assert_eq!(feed(&mut e, &samples), vec![(0, Unknown, Holding)]);
    let s = e.summary(Timestamp(5 * S));
    assert_eq!(s.increase, Some(4.0));
    assert_eq!(s.last_value, Some(5.0));
    assert_eq!(
        s.samples,
        Totals {
            ok: 4,
            failed: 1,
            absent: 1,
            missed: 0
        }
    );
}

#[test]
fn increase_window_expiry_returns_to_holding() {
    let ten = Duration::from_secs(10);
    let mut e = increase(0.0, Some(Duration::from_secs(60)), ten);
    let samples: Vec<Sample> = (0..10)
        .map(|i| value(i * 10 * S, if i == 0 { 0.0 } else { 1.0 }))
        .collect();
    let t = feed(&mut e, &samples);
    // The +1 at 10 s stays in the 60 s window until 70 s; at 80 s it has expired.
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Violated),
            (80 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(90 * S));
    assert_eq!(spans(&s), vec![(10 * S, Some(80 * S), None, 7)]);
    assert_eq!(s.increase, Some(0.0));
    // Read as of an earlier-window `now`, the summary shows window growth.
    let mut e = increase(0.0, Some(Duration::from_secs(60)), ten);
    feed(&mut e, &[value(0, 0.0), value(10 * S, 2.5)]);
    assert_eq!(e.summary(Timestamp(20 * S)).increase, Some(2.5));
    assert_eq!(e.summary(Timestamp(71 * S)).increase, Some(0.0));
    assert_eq!(e.state(), Violated, "expiry alone does not judge");
}

#[test]
fn latency_quantile_over_window() {
    // p90 <= 1s over 10 s, one sample a second.
    let mut e = latency(0.9, SEC, Duration::from_secs(10));
    let mut samples: Vec<Sample> = (0..10).map(|i| timed(i * S, 100)).collect();
    samples.push(timed(10 * S, 2000)); // 11 in window: rank 10, 1 slow allowed
    samples.push(timed(11 * S, 1520)); // 2 slow > 1 allowed
    samples.push(timed(12 * S, 100));
    let t = feed(&mut e, &samples);
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Pending),
            (11 * S, Pending, Violated),
            (12 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(12 * S));
    assert_eq!(spans(&s), vec![(10 * S, Some(12 * S), None, 2)]);
    assert_eq!(
        s.violations[0].first_error.as_deref(),
        Some("latency 2s > 1s")
    );
    assert_eq!(
        s.violations[0].last_error.as_deref(),
        Some("latency 1.52s > 1s")
    );
    // Window [2 s, 12 s]: 9 fast, 2 slow; the 10th smallest is 1.52 s.
    assert_eq!(s.window_latency_seconds, Some(1.52));
    let whole = s.latency.unwrap_or(LatencySummary {
        p50: 0.0,
        p90: 0.0,
        p99: 0.0,
        max: 0.0,
    });
    assert_eq!(whole.max, 2.0);
    assert!((whole.p50 - 0.1).abs() < 0.001);
    // Later, both slow samples have left the window.
    assert_eq!(
        e.summary(Timestamp(22 * S)).window_latency_seconds,
        Some(0.1)
    );
}

#[test]
fn latency_failure_violates_at_once() {
    let mut e = latency(0.99, SEC, Duration::from_secs(60));
    let t = feed(
        &mut e,
        &[
            timed(0, 10),
            fail(S, ErrorClass::Timeout, "deadline"),
            timed(2 * S, 10),
        ],
    );
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (S, Holding, Violated),
            (2 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(2 * S));
    assert_eq!(
        spans(&s),
        vec![(S, Some(2 * S), Some(ErrorClass::Timeout), 1)]
    );
    // A failure's latency is not a latency of the target.
    assert_eq!(s.latency.map(|l| l.max), Some(0.01));
}

#[test]
fn late_failure_moves_interval_start_back() {
    let mut e = availability(99.9, Duration::from_secs(300));
    let mut samples: Vec<Sample> = (0..10).map(|i| ok(i * S)).collect();
    samples.push(http500(11 * S));
    samples.push(fail(10 * S, ErrorClass::HttpStatus, "late")); // hung request, arrives late
    samples.push(ok(12 * S));
    let t = feed(&mut e, &samples);
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (11 * S, Holding, Violated),
            (12 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(12 * S));
    assert_eq!(
        spans(&s),
        vec![(10 * S, Some(12 * S), Some(ErrorClass::HttpStatus), 2)]
    );
    assert_eq!(s.disruption_seconds, 2.0);
}

#[test]
fn late_success_does_not_end_an_episode() {
    let mut e = availability(100.0, Duration::from_secs(300));
    let t = feed(
        &mut e,
        &[
            ok(0),
            http500(10 * S),
            ok(9 * S),
            http500(11 * S),
            ok(12 * S),
        ],
    );
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Violated),
            (12 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(12 * S));
    assert_eq!(
        spans(&s),
        vec![(10 * S, Some(12 * S), Some(ErrorClass::HttpStatus), 2)]
    );
    assert_eq!(s.samples.ok, 3);
    // The late success still counts in the window.
    assert_eq!(s.window_availability_percent, Some(60.0));
}

#[test]
fn late_failure_after_recovery_is_its_own_closed_interval_without_a_transition() {
    let mut e = availability(100.0, Duration::from_secs(300));
    let t = feed(
        &mut e,
        &[
            ok(0),
            ok(2 * S),
            fail(S, ErrorClass::Timeout, "late"),
            ok(3 * S),
        ],
    );
    // The newer ok at 2 s already said it holds: history, not a change of state.
    assert_eq!(t, vec![(0, Unknown, Holding)]);
    let s = e.summary(Timestamp(3 * S));
    assert_eq!(
        spans(&s),
        vec![(S, Some(2 * S), Some(ErrorClass::Timeout), 1)]
    );
    assert_eq!(s.state, Holding);
    assert_eq!(s.samples.failed, 1);
}

#[test]
fn requests_that_hung_through_an_outage_fold_into_its_interval() {
    // 1 s interval, 3 s timeout: the target hangs from 10 s to 15 s. The samples started
    // at 13 and 14 s time out at 16 and 17 s, after the ok sample at 15 s ended the
    // outage; they belong to it and must not open intervals after the recovery.
    let mut e = availability(100.0, Duration::from_secs(300));
    let mut samples: Vec<Sample> = (0..10).map(|i| ok(i * S)).collect();
    samples.extend([
        fail(10 * S, ErrorClass::Timeout, "no answer within 3s"), // arrives at 13 s
        fail(11 * S, ErrorClass::Timeout, "no answer within 3s"), // 14 s
        fail(12 * S, ErrorClass::Timeout, "no answer within 3s"), // 15 s (before the ok)
        ok(15 * S),
        ok(16 * S),
        fail(13 * S, ErrorClass::Timeout, "no answer within 3s"), // 16 s, late
        ok(17 * S),
        fail(14 * S, ErrorClass::Timeout, "no answer within 3s"), // 17 s, late
        ok(18 * S),
    ]);
    let t = feed(&mut e, &samples);
    assert_eq!(
        t,
        vec![
            (0, Unknown, Holding),
            (10 * S, Holding, Violated),
            (15 * S, Violated, Holding)
        ]
    );
    let s = e.summary(Timestamp(18 * S));
    assert_eq!(
        spans(&s),
        vec![(10 * S, Some(15 * S), Some(ErrorClass::Timeout), 5)]
    );
    assert_eq!(s.state, Holding);
    assert_eq!(s.disruption_seconds, 5.0);
}

#[test]
fn stale_samples_are_counted_but_ignored() {
    let mut e = availability(100.0, Duration::from_secs(10));
    let t = feed(&mut e, &[ok(100 * S), http500(50 * S), ok(101 * S)]);
    assert_eq!(t, vec![(100 * S, Unknown, Holding)]);
    let s = e.summary(Timestamp(101 * S));
    assert_eq!(s.samples.failed, 1);
    assert!(s.violations.is_empty());
    assert_eq!(s.disruption_seconds, 0.0);
    assert_eq!(s.window_availability_percent, Some(100.0));

    // Threshold and increase ignore late samples (a late counter value is not a reset).
    let mut e = increase(5.0, None, SEC);
    feed(
        &mut e,
        &[
            value(0, 10.0),
            value(20 * S, 12.0),
            value(10 * S, 11.0),
            value(30 * S, 12.0),
        ],
    );
    let s = e.summary(Timestamp(30 * S));
    assert_eq!(s.increase, Some(2.0));
    assert_eq!(s.last_value, Some(12.0));
    assert_eq!(s.samples.ok, 4);

    let mut e = threshold(None, Some(5.0), Duration::ZERO, SEC);
    let t = feed(&mut e, &[value(10 * S, 1.0), value(5 * S, 9.0)]);
    assert_eq!(t, vec![(10 * S, Unknown, Holding)]);
    assert_eq!(e.summary(Timestamp(10 * S)).last_value, Some(1.0));
}

#[test]
fn only_absent_is_not_examined() {
    let e = availability(99.0, Duration::from_secs(60));
    let s = e.summary(Timestamp(0));
    assert!(!s.examined);
    assert_eq!(s.state, Unknown);
    assert_eq!(s.availability_percent, None);
    assert_eq!(s.window_availability_percent, None);
    assert_eq!(s.latency, None);
    assert_eq!(s.samples.total(), 0);

    let mut e = increase(0.0, None, SEC);
    assert_eq!(feed(&mut e, &[absent(0), absent(S), absent(2 * S)]), vec![]);
    let s = e.summary(Timestamp(2 * S));
    assert!(!s.examined);
    assert_eq!(s.increase, None);
    assert_eq!(s.samples.absent, 3);
    assert!(s.latency.is_some(), "absent samples still answered");
}

#[test]
fn missed_ticks_are_counted_only() {
    let mut e = availability(99.0, Duration::from_secs(60));
    e.record_missed(Timestamp(0));
    e.record_missed(Timestamp(S));
    e.ingest(&ok(2 * S));
    let s = e.summary(Timestamp(2 * S));
    assert_eq!(
        s.samples,
        Totals {
            ok: 1,
            failed: 0,
            absent: 0,
            missed: 2
        }
    );
    assert_eq!(s.samples.total(), 3);
    assert_eq!(s.disruption_seconds, 0.0);
}

#[test]
fn intervals_are_capped_and_counted() {
    let mut e = availability(100.0, Duration::from_secs(1));
    for i in 0..1100 {
        e.ingest(&http500(2 * i * S));
        e.ingest(&ok((2 * i + 1) * S));
    }
    e.ingest(&http500(5000 * S));
    let s = e.summary(Timestamp(5000 * S));
    assert_eq!(s.violations.len(), MAX_VIOLATIONS);
    assert_eq!(s.violations_dropped, 101);
    assert_eq!(s.disruption_seconds, 1101.0);
}

#[test]
fn extreme_inputs_do_not_panic() {
    let conditions = [
        Condition::Availability {
            target_percent: f64::NAN,
            window: Duration::MAX,
        },
        Condition::Latency {
            quantile: f64::NAN,
            max: Duration::MAX,
            window: Duration::ZERO,
        },
        Condition::Threshold {
            min: Some(f64::NAN),
            max: Some(f64::NEG_INFINITY),
            for_duration: Duration::MAX,
        },
        Condition::Increase {
            max: f64::NAN,
            window: Some(Duration::MAX),
        },
        Condition::Increase {
            max: -1.0,
            window: None,
        },
    ];
    let samples = [
        value(i64::MAX, f64::MAX),
        value(i64::MIN, -f64::MAX),
        value(0, f64::INFINITY),
        fail(i64::MAX, ErrorClass::Other, ""),
        Sample {
            at: Timestamp(i64::MAX),
            latency: Duration::MAX,
            observation: Observation::Ok {
                value: Some(f64::MAX),
            },
        },
        value(i64::MAX, -f64::MAX),
        absent(i64::MIN),
        value(i64::MAX, f64::NAN),
    ];
    for c in &conditions {
        for interval in [Duration::ZERO, Duration::MAX] {
            let mut e = Evaluator::new(c, interval);
            for s in &samples {
                e.ingest(s);
                e.advance(Timestamp(i64::MIN));
                e.advance(Timestamp(i64::MAX));
                e.record_missed(Timestamp(i64::MIN));
            }
            let s = e.summary(Timestamp(i64::MIN));
            assert!(s.disruption_seconds.is_finite());
            let _ = e.summary(Timestamp(i64::MAX));
        }
    }
}

#[test]
fn summary_serializes_lowercase_and_snake_case() {
    let mut e = availability(100.0, Duration::from_secs(60));
    feed(
        &mut e,
        &[ok(0), fail(S, ErrorClass::ConnectionRefused, "refused")],
    );
    let json = serde_json::to_value(e.summary(Timestamp(S))).unwrap_or_default();
    assert_eq!(json["state"], "violated");
    assert_eq!(json["samples"]["failed"], 1);
    assert_eq!(json["violations"][0]["error_class"], "connection_refused");
    assert_eq!(json["violations"][0]["start"], "1970-01-01T00:00:01.000Z");
    assert!(json["violations"][0]["end"].is_null());
    assert_eq!(json["examined"], true);
    assert_eq!(State::Pending.as_str(), "pending");
    assert_eq!(
        serde_json::to_value(State::Holding).unwrap_or_default(),
        "holding"
    );
}

#[test]
fn message_buffers_are_reused_not_regrown() {
    // Many pending blips: each opens and recycles a provisional interval.
    let mut e = availability(1.0, Duration::from_secs(60));
    for i in 0..1000 {
        e.ingest(&ok(2 * i * S));
        e.ingest(&http500((2 * i + 1) * S));
    }
    assert!(e.spare.len() <= MAX_SPARE_BUFFERS);
    assert!(e.summary(Timestamp(0)).violations.is_empty());
}
