//! Conversions between the agent's types and the API's protobuf messages.
//!
//! Outgoing conversions cannot fail. Incoming values (timestamps and enums a client sent)
//! are checked here and fail with `INVALID_ARGUMENT` naming the field, so handlers never
//! see an unchecked value.

use std::time::Duration;

use tonic::Status;

use super::proto;
use crate::config::Invariant;
use crate::eval::{State, Transition};
use crate::report::{self, AnnotationKind, InvariantReport, RunContext};
use crate::sample::{Outcome, Sample, Timestamp};

/// A timestamp for the wire.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1000),
        // In 0..1000 ms, so the product is below 10^9 and fits.
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A client's timestamp, truncated to milliseconds. `field` names it in the error.
pub fn from_timestamp(t: &prost_types::Timestamp, field: &str) -> Result<Timestamp, Status> {
    // 1970-01-01 .. 9999-12-31: google.protobuf.Timestamp allows years from 1, but
    // reports write times from the epoch on, and a time the report cannot hold would
    // make a saved report attribute differently from the live agent.
    const MIN_SECONDS: i64 = 0;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) || !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(Status::invalid_argument(format!(
            "{field} is not a valid timestamp (seconds {}, nanos {}): nanos must be in \
             0..1e9 and the time between 1970 and 9999",
            t.seconds, t.nanos
        )));
    }
    Ok(Timestamp(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
}

/// A duration for the wire.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// An invariant's state for the wire.
pub fn state(s: State) -> proto::State {
    match s {
        State::Unknown => proto::State::Unknown,
        State::Holding => proto::State::Holding,
        State::Pending => proto::State::Pending,
        State::Violated => proto::State::Violated,
    }
}

fn outcome(o: Outcome) -> proto::Outcome {
    match o {
        Outcome::Ok => proto::Outcome::Ok,
        Outcome::Failed => proto::Outcome::Failed,
        Outcome::Absent => proto::Outcome::Absent,
    }
}

/// One sample of `invariant`, judged to leave it in `after`.
pub fn sample(invariant: &str, s: &Sample, after: State) -> proto::Sample {
    let (error_class, error) = match s.error() {
        Some(e) => (e.class.as_str().to_string(), e.message.clone()),
        None => (String::new(), String::new()),
    };
    proto::Sample {
        invariant: invariant.to_string(),
        time: Some(timestamp(s.at)),
        latency: Some(duration(s.latency)),
        outcome: outcome(s.outcome()) as i32,
        value: s.value(),
        error_class,
        error,
        state: state(after) as i32,
    }
}

/// A tick of `invariant` due at `at` that could not run.
pub fn missed(invariant: &str, at: Timestamp, after: State) -> proto::Sample {
    proto::Sample {
        invariant: invariant.to_string(),
        time: Some(timestamp(at)),
        latency: None,
        outcome: proto::Outcome::Missed as i32,
        value: None,
        error_class: String::new(),
        error: String::new(),
        state: state(after) as i32,
    }
}

/// A state change of `invariant`.
pub fn transition(invariant: &str, t: &Transition) -> proto::Transition {
    proto::Transition {
        invariant: invariant.to_string(),
        time: Some(timestamp(t.at)),
        from: state(t.from) as i32,
        to: state(t.to) as i32,
        reason: t.reason.clone(),
    }
}

/// Facts about the run that do not change while it runs.
pub fn run_info(meta: &crate::engine::RunMeta, context: &RunContext) -> proto::RunInfo {
    proto::RunInfo {
        id: meta.id.clone(),
        started_at: Some(timestamp(meta.started_at)),
        node: meta.node.clone().unwrap_or_default(),
        cluster: context.cluster.clone().unwrap_or_default(),
        job_name: context.job_name.clone().unwrap_or_default(),
        build_id: context.build_id.clone().unwrap_or_default(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The declaration part of an invariant's status (state and counts left empty).
pub fn declaration(i: &Invariant) -> proto::InvariantStatus {
    proto::InvariantStatus {
        name: i.name.clone(),
        description: i.description.clone(),
        owner: i.owner.clone(),
        labels: i.labels.clone().into_iter().collect(),
        scope: i.scope.as_str().to_string(),
        probe: i.probe.kind().to_string(),
        target: i.probe.target(),
        condition: i.condition.describe(),
        state: proto::State::Unknown as i32,
        ..Default::default()
    }
}

/// Copies the violations and disruption of a report entry (what only the evaluator
/// knows) into `status`, leaving state and counts alone.
pub fn apply_report_totals(status: &mut proto::InvariantStatus, entry: &InvariantReport) {
    let s = &entry.summary;
    status.violations = (s.violations.len() as u64).saturating_add(s.violations_dropped);
    status.disruption_seconds = s.disruption_seconds;
}

/// Longest annotation name (and outcome) accepted, in bytes.
pub const MAX_ANNOTATION_TEXT: usize = 4096;

/// A client's annotation, checked. `now` is used when it has no start.
pub fn annotation(
    a: Option<proto::Annotation>,
    now: Timestamp,
) -> Result<report::Annotation, Status> {
    let a = a.ok_or_else(|| {
        Status::invalid_argument("annotation is required: set AnnotateRequest.annotation")
    })?;
    let kind = match proto::AnnotationKind::try_from(a.kind) {
        Ok(proto::AnnotationKind::Test) => AnnotationKind::Test,
        Ok(proto::AnnotationKind::Phase) => AnnotationKind::Phase,
        _ => {
            return Err(Status::invalid_argument(format!(
                "annotation.kind {} is not supported: use ANNOTATION_KIND_TEST (1) or \
                 ANNOTATION_KIND_PHASE (2)",
                a.kind
            )));
        }
    };
    if a.name.trim().is_empty() {
        return Err(Status::invalid_argument(
            "annotation.name is empty: give the test's full name or the phase's name",
        ));
    }
    check_length("annotation.name", &a.name)?;
    check_length("annotation.outcome", &a.outcome)?;
    let start = match &a.start {
        Some(t) => from_timestamp(t, "annotation.start")?,
        None => now,
    };
    let end = a
        .end
        .as_ref()
        .map(|t| from_timestamp(t, "annotation.end"))
        .transpose()?;
    if let Some(end) = end
        && end < start
    {
        return Err(Status::invalid_argument(format!(
            "annotation.end ({end}) is before annotation.start ({start}): send the start the \
             agent returned for this annotation"
        )));
    }
    let outcome = a.outcome.trim();
    Ok(report::Annotation {
        kind,
        name: a.name,
        start,
        end,
        outcome: (!outcome.is_empty()).then(|| outcome.to_string()),
    })
}

fn check_length(field: &str, text: &str) -> Result<(), Status> {
    if text.len() > MAX_ANNOTATION_TEXT {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes long; at most {MAX_ANNOTATION_TEXT} are accepted",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_bad_ones_are_refused() {
        for ms in [0, 1, 999, 1_700_000_000_123] {
            let wire = timestamp(Timestamp(ms));
            assert!((0..1_000_000_000).contains(&wire.nanos), "{ms}: {wire:?}");
            assert_eq!(from_timestamp(&wire, "t").unwrap(), Timestamp(ms));
        }
        for ms in [-1, -1001] {
            let wire = timestamp(Timestamp(ms));
            assert!((0..1_000_000_000).contains(&wire.nanos), "{ms}: {wire:?}");
            let e = from_timestamp(&wire, "t").unwrap_err();
            assert!(e.message().contains("between 1970 and 9999"), "{ms}: {e}");
        }
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        };
        let e = from_timestamp(&bad, "annotation.start").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("annotation.start"), "{}", e.message());
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(from_timestamp(&huge, "t").is_err());
    }

    fn request(kind: proto::AnnotationKind, name: &str) -> proto::Annotation {
        proto::Annotation {
            kind: kind as i32,
            name: name.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn annotations_are_checked_and_default_to_now() {
        let now = Timestamp(5_000);
        let a = annotation(Some(request(proto::AnnotationKind::Test, "t")), now).unwrap();
        assert_eq!(
            (a.kind, a.start, a.end, a.outcome),
            (AnnotationKind::Test, now, None, None)
        );

        let invalid = |a: Option<proto::Annotation>| {
            let e = annotation(a, now).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            e.message().to_string()
        };
        assert!(invalid(None).contains("required"));
        assert!(invalid(Some(request(proto::AnnotationKind::Unspecified, "t"))).contains("kind"));
        assert!(invalid(Some(request(proto::AnnotationKind::Phase, " "))).contains("empty"));
        let long = "x".repeat(MAX_ANNOTATION_TEXT + 1);
        assert!(invalid(Some(request(proto::AnnotationKind::Phase, &long))).contains("4096"));
        let mut backwards = request(proto::AnnotationKind::Test, "t");
        backwards.start = Some(timestamp(Timestamp(2_000)));
        backwards.end = Some(timestamp(Timestamp(1_000)));
        assert!(invalid(Some(backwards)).contains("before"));

        let mut done = request(proto::AnnotationKind::Test, "t");
        done.start = Some(timestamp(Timestamp(1_000)));
        done.end = Some(timestamp(Timestamp(1_000)));
        done.outcome = "passed".into();
        let a = annotation(Some(done), now).unwrap();
        assert_eq!(a.end, Some(Timestamp(1_000)));
        assert_eq!(a.outcome.as_deref(), Some("passed"));
    }
}
