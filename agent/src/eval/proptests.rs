//! Property tests: the incremental evaluator agrees with brute-force recomputation over
//! random sample streams.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::sample::ProbeError;

/// What one generated sample is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ok,
    Failed(ErrorClass),
    Absent,
}

/// A stream of `(time ms, kind)`, strictly increasing in time.
fn stream() -> impl Strategy<Value = Vec<(i64, Kind)>> {
    let kind = prop_oneof![
        6 => Just(Kind::Ok),
        2 => Just(Kind::Failed(ErrorClass::Timeout)),
        2 => Just(Kind::Failed(ErrorClass::HttpStatus)),
        1 => Just(Kind::Absent),
    ];
    prop::collection::vec((1i64..3_000, kind), 0..200).prop_map(|steps| {
        let mut at = 1_000_000;
        steps
            .into_iter()
            .map(|(gap, kind)| {
                at += gap;
                (at, kind)
            })
            .collect()
    })
}

fn sample(at: i64, kind: Kind) -> Sample {
    Sample {
        at: Timestamp(at),
        latency: Duration::from_millis(10),
        observation: match kind {
            Kind::Ok => Observation::Ok { value: None },
            Kind::Failed(class) => Observation::Failed(ProbeError::new(class, class.as_str())),
            Kind::Absent => Observation::Absent,
        },
    }
}

/// Availability over `[end - window, end]` by counting every sample.
fn brute_window(samples: &[(i64, Kind)], end: i64, window_ms: i64) -> Option<f64> {
    let (mut ok, mut failed) = (0u64, 0u64);
    for &(at, kind) in samples {
        if at >= end - window_ms && at <= end {
            match kind {
                Kind::Ok => ok += 1,
                Kind::Failed(_) => failed += 1,
                Kind::Absent => {}
            }
        }
    }
    percent(ok, failed)
}

/// Disruption in ms by walking outages.
fn brute_disruption(samples: &[(i64, Kind)], interval_ms: i64) -> i64 {
    let mut total = 0;
    let mut outage: Option<(i64, i64)> = None;
    for &(at, kind) in samples {
        match (kind, outage) {
            (Kind::Failed(_), None) => outage = Some((at, at)),
            (Kind::Failed(_), Some((start, _))) => outage = Some((start, at)),
            (_, Some((start, _))) => {
                total += (at - start).max(interval_ms);
                outage = None;
            }
            (_, None) => {}
        }
    }
    if let Some((start, last)) = outage {
        total += (last - start + interval_ms).max(interval_ms);
    }
    total
}

proptest! {
    #[test]
    fn window_availability_matches_brute_force(
        samples in stream(),
        window_s in 1u64..30,
        target in 50.0f64..100.0,
        later in 0i64..40_000,
    ) {
        let window_ms = window_s as i64 * 1000;
        let mut e = Evaluator::new(
            &Condition::Availability { target_percent: target, window: Duration::from_secs(window_s) },
            Duration::from_secs(1),
        );
        for (i, &(at, kind)) in samples.iter().enumerate() {
            e.ingest(&sample(at, kind));
            let got = e.summary(Timestamp(at)).window_availability_percent;
            let want = brute_window(&samples[..=i], at, window_ms);
            prop_assert_eq!(got, want, "after sample {} at {}", i, at);
        }
        if let Some(&(last, _)) = samples.last() {
            let now = last + later;
            prop_assert_eq!(
                e.summary(Timestamp(now)).window_availability_percent,
                brute_window(&samples, now, window_ms)
            );
        }
    }

    #[test]
    fn disruption_matches_brute_force(samples in stream(), interval_ms in 1i64..5_000) {
        let interval = Duration::from_millis(interval_ms as u64);
        let mut e = Evaluator::new(&Condition::Threshold { min: None, max: None, for_duration: Duration::ZERO }, interval);
        for (i, &(at, kind)) in samples.iter().enumerate() {
            e.ingest(&sample(at, kind));
            let got = e.summary(Timestamp(at)).disruption_seconds;
            let want = brute_disruption(&samples[..=i], interval_ms) as f64 / 1000.0;
            prop_assert!((got - want).abs() < 1e-9, "after sample {}: got {} want {}", i, got, want);
        }
    }

    #[test]
    fn intervals_are_sorted_disjoint_and_cover_violated_failures(
        samples in stream(),
        window_s in 1u64..30,
        target in prop_oneof![Just(100.0), 50.0f64..100.0],
    ) {
        let window_ms = window_s as i64 * 1000;
        let mut e = Evaluator::new(
            &Condition::Availability { target_percent: target, window: Duration::from_secs(window_s) },
            Duration::from_secs(1),
        );
        for &(at, kind) in &samples {
            e.ingest(&sample(at, kind));
        }
        let now = samples.last().map_or(0, |s| s.0);
        let summary = e.summary(Timestamp(now));
        let intervals = &summary.violations;
        for (i, v) in intervals.iter().enumerate() {
            if let Some(end) = v.end {
                prop_assert!(v.start <= end, "interval {} ends before it starts", i);
            } else {
                prop_assert_eq!(i, intervals.len() - 1, "only the last interval may be open");
            }
            if let Some(next) = intervals.get(i + 1) {
                prop_assert!(v.end.is_some_and(|end| end <= next.start), "intervals {} and {} overlap", i, i + 1);
            }
        }
        let inside = |at: i64| {
            intervals
                .iter()
                .any(|v| v.start.0 <= at && v.end.is_none_or(|end| at < end.0))
        };
        // Brute force: episodes are runs of failures that only an ok sample ends; an
        // episode is violated when the window ratio at one of its failures is below target.
        let mut episode: Vec<i64> = Vec::new();
        let mut violated = false;
        let check = |episode: &mut Vec<i64>, violated: &mut bool| -> Result<(), TestCaseError> {
            if *violated {
                for &at in episode.iter() {
                    prop_assert!(inside(at), "failed sample at {} of a violated episode is outside every interval", at);
                }
            }
            episode.clear();
            *violated = false;
            Ok(())
        };
        for (i, &(at, kind)) in samples.iter().enumerate() {
            match kind {
                Kind::Failed(_) => {
                    episode.push(at);
                    let ratio = brute_window(&samples[..=i], at, window_ms);
                    violated |= ratio.is_some_and(|r| r < target);
                }
                Kind::Ok => {
                    prop_assert!(!inside(at), "ok sample at {} lies inside an interval", at);
                    check(&mut episode, &mut violated)?;
                }
                Kind::Absent => {}
            }
        }
        check(&mut episode, &mut violated)?;
        let violated_samples: u64 = intervals.iter().map(|v| v.samples).sum();
        prop_assert!(violated_samples <= summary.samples.failed);
    }
}
