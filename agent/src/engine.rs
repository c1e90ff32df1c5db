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
use crate::report::{InvariantReport, Report, RunInfo, RunStatus};
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
        }
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
    pub fn report(&self, now: Timestamp, status: RunStatus) -> Report {
        let invariants = self
            .invariants
            .iter()
            .zip(&self.evaluators)
            .map(|(i, e)| InvariantReport::new(i, e.summary(now)))
            .collect();
        let run = RunInfo {
            id: self.meta.id.clone(),
            agent_version: env!("CARGO_PKG_VERSION"),
            status,
            started_at: self.meta.started_at,
            updated_at: now,
            duration_seconds: now.since(self.meta.started_at).as_secs_f64(),
            config_files: self.meta.config_files.clone(),
            node: self.meta.node.clone(),
        };
        Report::new(run, invariants)
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
    mut engine: Engine,
    mut events: mpsc::Receiver<Event>,
    snapshots: watch::Sender<Option<Arc<Report>>>,
) -> Report {
    // Time-based state (a `for` duration elapsing) moves even when samples are sparse.
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => engine.handle(event),
                None => break,
            },
            _ = publish.tick() => {
                let now = Timestamp::now();
                engine.advance(now);
                snapshots.send_replace(Some(Arc::new(engine.report(now, RunStatus::Running))));
            }
        }
    }
    let now = Timestamp::now();
    engine.advance(now);
    let report = engine.report(now, RunStatus::Completed);
    snapshots.send_replace(Some(Arc::new(report.clone())));
    report
}
