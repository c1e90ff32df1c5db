//! The engine: the one task that owns all evaluation state.
//!
//! It receives [`Event`]s from the scheduler, feeds each invariant's [`Evaluator`], logs
//! every state change, and hands a fresh report checkpoint to the writer every
//! `checkpoint_interval`. Nothing else mutates evaluation state, so there are no locks;
//! readers get snapshots.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Invariant, InvariantSet};
use crate::eval::{Evaluator, State, Transition};
use crate::report::writer::CheckpointSender;
use crate::report::{InvariantReport, Report, RunInfo, RunStatus};
use crate::sample::Timestamp;
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

/// All evaluation state of a run.
pub struct Engine {
    invariants: Vec<Invariant>,
    evaluators: Vec<Evaluator>,
    meta: RunMeta,
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
        }
    }

    /// Applies one scheduler event.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Sample { invariant, sample } => {
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

/// Runs the engine until every event sender is gone, checkpointing the report every
/// `checkpoint_interval`, and returns the final report (also handed to the writer).
pub async fn run(
    mut engine: Engine,
    mut events: mpsc::Receiver<Event>,
    checkpoint_interval: Duration,
    checkpoints: CheckpointSender,
) -> Report {
    let mut checkpoint = tokio::time::interval(checkpoint_interval);
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Time-based state (a `for` duration elapsing) should move within a second even when
    // samples are sparse, independently of how often the report is written.
    let mut advance = tokio::time::interval(Duration::from_secs(1));
    advance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => engine.handle(event),
                None => break,
            },
            _ = advance.tick() => engine.advance(Timestamp::now()),
            _ = checkpoint.tick() => {
                let report = engine.report(Timestamp::now(), RunStatus::Running);
                checkpoints.send_replace(Some(std::sync::Arc::new(report.to_json())));
            }
        }
    }
    let now = Timestamp::now();
    engine.advance(now);
    let report = engine.report(now, RunStatus::Completed);
    checkpoints.send_replace(Some(std::sync::Arc::new(report.to_json())));
    report
}
