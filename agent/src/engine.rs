//! The engine: the one task that owns all evaluation state.
//!
//! It receives [`Event`]s from the scheduler, feeds each invariant's [`Evaluator`], logs
//! every state change, and publishes a fresh [`Report`] snapshot every second on a
//! `watch` channel. Nothing else mutates evaluation state, so there are no locks; the
//! report writer and exporters read snapshots and can never slow the engine down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{Invariant, InvariantSet};
use crate::eval::{Evaluator, State, Transition};
use crate::report::attribution::Attributor;
use crate::report::{
    Annotation, AnnotationLog, InvariantReport, Report, RunContext, RunInfo, RunStatus,
};
use crate::sample::{Sample, Timestamp};
use crate::schedule::Event;

/// Facts about the run that do not change while it runs.
#[derive(Clone, Debug)]
pub struct RunMeta {
    /// Run id (see [`crate::report::run_id_from_env`]).
    pub id: String,
    /// When sampling started.
    pub started_at: Timestamp,
    /// Invariant files in use, for the report.
    pub config_files: Vec<String>,
    /// Node the agent runs on.
    pub node: Option<String>,
}

/// Sees every sample as the engine ingests it, for consumers that need each one rather
/// than a snapshot (a latency histogram, say). Runs on the engine's task: it must be
/// cheap and must never block.
pub trait SampleObserver: Send {
    /// Called once per sample of the invariant at index `invariant`.
    fn on_sample(&mut self, invariant: usize, sample: &Sample);
}

/// The latest report snapshot, published by the engine (`None` until the first).
pub type Snapshots = watch::Receiver<Option<Arc<Report>>>;

/// All evaluation state of a run.
pub struct Engine {
    invariants: Vec<Invariant>,
    evaluators: Vec<Evaluator>,
    meta: RunMeta,
    observers: Vec<Box<dyn SampleObserver>>,
    /// CI job, build and cluster, for the report.
    context: RunContext,
    /// Tests and phases of the run (see [`Engine::annotate`]).
    annotations: AnnotationLog,
    /// Compiled `expectedDisruptions` patterns, reused across snapshots.
    attributor: Attributor,
}

impl Engine {
    /// An engine for `set`, every invariant in state `unknown`.
    pub fn new(set: &InvariantSet, meta: RunMeta) -> Self {
        let evaluators = set
            .invariants
            .iter()
            .map(|i| Evaluator::new(&i.condition, i.interval))
            .collect();
        Engine {
            invariants: set.invariants.clone(),
            evaluators,
            meta,
            observers: Vec::new(),
            context: RunContext::default(),
            annotations: AnnotationLog::default(),
            attributor: Attributor::default(),
        }
    }

    /// Sets the CI job, build and cluster reported for the run.
    pub fn set_context(&mut self, context: RunContext) {
        self.context = context;
    }

    /// Records a test or phase of the run: the entry point of the annotation API. Send
    /// an annotation when it starts (`end: None`) and again with the same kind, name and
    /// start when it ends; the second replaces the first. Violation intervals are
    /// attributed to the tests that overlapped them in every report from then on.
    pub fn annotate(&mut self, annotation: Annotation) {
        self.annotations.add(annotation);
    }

    /// Adds an observer that sees every sample.
    pub fn observe(&mut self, observer: Box<dyn SampleObserver>) {
        self.observers.push(observer);
    }

    /// Applies one scheduler event.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Sample { invariant, sample } => {
                for observer in &mut self.observers {
                    observer.on_sample(invariant, &sample);
                }
                if let Some(t) = self
                    .evaluators
                    .get_mut(invariant)
                    .and_then(|evaluator| evaluator.ingest(&sample))
                {
                    log_transition(&self.invariants[invariant], &t);
                }
            }
            Event::Missed { invariant, at } => {
                if let Some(evaluator) = self.evaluators.get_mut(invariant) {
                    evaluator.record_missed(at);
                    tracing::warn!(
                        invariant = %self.invariants[invariant].name,
                        "missed a sample: too many samples in flight (target slow or concurrency limit reached)"
                    );
                }
            }
        }
    }

    /// Lets time-based conditions (`for` durations, window expiry) move without samples.
    pub fn advance(&mut self, now: Timestamp) {
        for (invariant, evaluator) in self.invariants.iter().zip(self.evaluators.iter_mut()) {
            if let Some(t) = evaluator.advance(now) {
                log_transition(invariant, &t);
            }
        }
    }

    /// The report as of `now`.
    pub fn report(&mut self, now: Timestamp, status: RunStatus) -> Report {
        let invariants = self
            .invariants
            .iter()
            .zip(&self.evaluators)
            .map(|(i, e)| InvariantReport::new(i, e.summary(now)))
            .collect();
        let run = RunInfo {
            id: self.meta.id.clone(),
            context: self.context.clone(),
            agent_version: std::borrow::Cow::Borrowed(env!("CARGO_PKG_VERSION")),
            status,
            started_at: self.meta.started_at,
            updated_at: now,
            ended_at: (status == RunStatus::Completed).then_some(now),
            duration_seconds: now.since(self.meta.started_at).as_secs_f64(),
            config_files: self.meta.config_files.clone(),
            node: self.meta.node.clone(),
        };
        let mut report = Report::new(run, invariants);
        if !self.annotations.items().is_empty() || self.annotations.dropped() > 0 {
            report.annotations = self.annotations.items().to_vec();
            report
                .annotations
                .sort_by(|a, b| (a.start, a.kind, &a.name).cmp(&(b.start, b.kind, &b.name)));
            report.annotations_dropped = self.annotations.dropped();
            self.attributor.apply(&mut report);
        }
        report
    }
}

fn log_transition(invariant: &Invariant, t: &Transition) {
    let name = invariant.name.as_str();
    match t.to {
        State::Violated => tracing::warn!(
            invariant = name, owner = %invariant.owner, from = t.from.as_str(), to = t.to.as_str(),
            at = %t.at, reason = %t.reason, "invariant violated"
        ),
        State::Pending => tracing::info!(
            invariant = name, from = t.from.as_str(), to = t.to.as_str(), at = %t.at,
            reason = %t.reason, "invariant pending"
        ),
        _ => tracing::info!(
            invariant = name, from = t.from.as_str(), to = t.to.as_str(), at = %t.at,
            reason = %t.reason, "invariant state changed"
        ),
    }
}

/// How often the engine publishes a snapshot (and lets time-based state move).
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the engine until every event sender is gone, publishing a report snapshot every
/// [`PUBLISH_INTERVAL`] on `snapshots`, and returns the final report (also published,
/// with status `completed`).
pub async fn run(
    engine: Engine,
    events: mpsc::Receiver<Event>,
    snapshots: watch::Sender<Option<Arc<Report>>>,
) -> Report {
    // No annotation source: a receiver whose sender is already gone.
    let (_, annotations) = mpsc::channel(1);
    run_with_annotations(engine, events, annotations, snapshots).await
}

/// As [`run`], also applying [`Engine::annotate`] to every annotation received. The
/// final report includes every annotation sent before the events channel closed.
pub async fn run_with_annotations(
    mut engine: Engine,
    mut events: mpsc::Receiver<Event>,
    mut annotations: mpsc::Receiver<Annotation>,
    snapshots: watch::Sender<Option<Arc<Report>>>,
) -> Report {
    let mut annotations_open = true;
    // Time-based state (a `for` duration elapsing) moves even when samples are sparse.
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => engine.handle(event),
                None => break,
            },
            annotation = annotations.recv(), if annotations_open => match annotation {
                Some(a) => engine.annotate(a),
                None => annotations_open = false,
            },
            _ = publish.tick() => {
                let now = Timestamp::now();
                engine.advance(now);
                snapshots.send_replace(Some(Arc::new(engine.report(now, RunStatus::Running))));
            }
        }
    }
    while let Ok(a) = annotations.try_recv() {
        engine.annotate(a);
    }
    let now = Timestamp::now();
    engine.advance(now);
    let report = engine.report(now, RunStatus::Completed);
    snapshots.send_replace(Some(Arc::new(report.clone())));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AnnotationKind, Verdict};
    use crate::sample::{ErrorClass, Observation, ProbeError};

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: api
    description: d
    owner: o
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
    expectedDisruptions: ['\[Disruptive\]']
"#;

    fn sample(at: i64, ok: bool) -> Event {
        Event::Sample {
            invariant: 0,
            sample: Sample {
                at: Timestamp(at),
                latency: Duration::from_millis(1),
                observation: if ok {
                    Observation::Ok { value: None }
                } else {
                    Observation::Failed(ProbeError::new(ErrorClass::HttpStatus, "500"))
                },
            },
        }
    }

    #[test]
    fn annotations_attribute_violations_and_a_test_end_replaces_its_start() {
        let set = crate::config::parse_str("f.yaml", FILE).unwrap();
        let meta = RunMeta {
            id: "r".into(),
            started_at: Timestamp(0),
            config_files: vec![],
            node: None,
        };
        let mut engine = Engine::new(&set, meta);
        engine.set_context(RunContext {
            cluster: Some("c".into()),
            ..RunContext::default()
        });
        let test = |end: Option<i64>| Annotation {
            kind: AnnotationKind::Test,
            name: "x [Disruptive]".into(),
            start: Timestamp(1500),
            end: end.map(Timestamp),
            outcome: end.map(|_| "passed".into()),
        };
        engine.annotate(test(None));
        for (at, ok) in [
            (0, true),
            (1000, true),
            (2000, false),
            (3000, false),
            (4000, true),
        ] {
            engine.handle(sample(at, ok));
        }
        let running = engine.report(Timestamp(4500), RunStatus::Running);
        assert_eq!(running.run.context.cluster.as_deref(), Some("c"));
        assert_eq!(running.run.ended_at, None);
        assert_eq!(running.invariants[0].verdict, Verdict::ExpectedDisruption);
        engine.annotate(test(Some(5000)));
        let done = engine.report(Timestamp(6000), RunStatus::Completed);
        assert_eq!(done.annotations.len(), 1, "the end replaced the start");
        assert_eq!(done.annotations[0].outcome.as_deref(), Some("passed"));
        assert_eq!(done.run.ended_at, Some(Timestamp(6000)));
        assert_eq!(done.totals.expected_disruption, 1);
    }
}
