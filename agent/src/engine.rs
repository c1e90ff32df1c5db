//! The engine: the one task that owns all evaluation state.
//!
//! It receives [`Event`]s from the scheduler, feeds each invariant's [`Evaluator`], logs
//! every state change, tells its [`SampleObserver`]s about every sample, missed tick and
//! transition, and publishes a fresh [`Report`] snapshot every second on a `watch`
//! channel. Nothing else mutates evaluation state, so there are no locks; the report
//! writer, exporters and the API read snapshots or observe, and can never slow the engine
//! down. The API talks to it through [`Command`]s, applied in the order sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::spec::Scope;
use crate::config::{Invariant, InvariantSet};
use crate::eval::{Evaluator, State, Transition};
use crate::reload::Diff;
use crate::report::attribution::Attributor;
use crate::report::{
    Annotation, AnnotationLog, ConfigRevision, InvariantReport, Leadership, LeadershipInterval,
    Report, Retired, RetiredReason, RevisionResult, RunContext, RunInfo, RunStatus,
};
use crate::sample::{Sample, Timestamp};
use crate::schedule::Event;

/// Facts about the run that do not change while it runs.
#[derive(Clone, Debug)]
pub struct RunMeta {
    /// Run id (see [`crate::report::configured_run_id`]).
    pub id: String,
    /// When sampling started.
    pub started_at: Timestamp,
    /// Invariant files in use, for the report.
    pub config_files: Vec<String>,
    /// Node the agent runs on.
    pub node: Option<String>,
}

/// Sees every sample as the engine ingests it, and what became of it, for consumers that
/// need each one rather than a snapshot (a latency histogram, the live tail). Runs on the
/// engine's task: it must be cheap and must never block.
///
/// For one invariant the calls come in the order things happened: a sample that changes
/// the state produces [`SampleObserver::on_transition`] first, then
/// [`SampleObserver::on_sample`], so an observer that tracks the state sees the sample
/// with the state it led to.
pub trait SampleObserver: Send {
    /// Called once per sample of the invariant at index `invariant`, after it was judged.
    fn on_sample(&mut self, invariant: usize, sample: &Sample);

    /// Called once per tick of `invariant` due at `at` that could not run.
    fn on_missed(&mut self, _invariant: usize, _at: Timestamp) {}

    /// Called on every state change of `invariant`, from a sample or from time passing.
    fn on_transition(&mut self, _invariant: usize, _transition: &Transition) {}

    /// Called when a configuration change started invariants at new indices (`started`,
    /// each with its declaration; always past every index seen before) and stopped the
    /// invariants at `stopped`. Indices are never reused, so events of a stopped
    /// invariant still in flight keep meaning what they meant.
    fn on_invariants_changed(&mut self, _started: &[(usize, Invariant)], _stopped: &[usize]) {}
}

/// A request to the engine from outside its task (the gRPC API, `run`'s shutdown).
/// Commands and samples share the engine's one task, and commands are applied in the
/// order sent: an annotation acknowledged before a report was asked for is in it.
#[derive(Debug)]
pub enum Command {
    /// Record an annotation (see [`Engine::annotate`]); the sender, if any, learns when
    /// it was applied.
    Annotate(Annotation, Option<oneshot::Sender<()>>),
    /// Apply a configuration change (see [`Engine::reconfigure`]); the reply says at which
    /// indices the starting invariants run.
    Reconfigure(Box<Reconfigure>, oneshot::Sender<Vec<usize>>),
    /// Record a configuration change that was refused (see [`Engine::refused`]).
    RefuseConfig(ConfigRevision),
    /// Build a report now (status `running`), publish it as the latest snapshot and send
    /// it back. After the run ended the reply is the final report.
    Report(oneshot::Sender<Arc<Report>>),
}

/// A valid configuration change for the engine to apply.
#[derive(Debug)]
pub struct Reconfigure {
    /// What changes against the invariants running now.
    pub diff: Diff,
    /// SHA-256 of the new files (see [`crate::config::FileContents::hash`]).
    pub hash: Option<String>,
    /// When the new files were read.
    pub at: Timestamp,
}

/// Most configuration revisions a report keeps: the first ones and, beyond, a count.
pub const MAX_CONFIG_REVISIONS: usize = 100;

/// The latest report snapshot, published by the engine (`None` until the first).
pub type Snapshots = watch::Receiver<Option<Arc<Report>>>;

/// All evaluation state of a run.
pub struct Engine {
    /// Every invariant that ran in this run, by index; a configuration change appends
    /// and retires, never removes, so indices held elsewhere stay valid.
    invariants: Vec<Invariant>,
    evaluators: Vec<Evaluator>,
    /// Each invariant's report entry without its numbers (parallel to `invariants`),
    /// copied into every snapshot (see [`InvariantReport::with_summary`]).
    entries: Vec<InvariantReport>,
    /// When each invariant ran, if not the whole run (parallel to `invariants`).
    lifetimes: Vec<Lifetime>,
    /// Configuration changes seen while running, oldest first.
    revisions: Vec<ConfigRevision>,
    meta: RunMeta,
    observers: Vec<Box<dyn SampleObserver>>,
    /// CI job, build and cluster, for the report.
    context: RunContext,
    /// Tests and phases of the run (see [`Engine::annotate`]).
    annotations: AnnotationLog,
    /// Compiled `expectedDisruptions` patterns, reused across snapshots.
    attributor: Attributor,
    /// Leader election, when on (see [`Engine::follow_leadership`]).
    election: Option<Election>,
}

/// The part of the run an invariant ran in, when not all of it.
#[derive(Clone, Copy, Debug, Default)]
struct Lifetime {
    /// Started by a configuration change at this time.
    from: Option<Timestamp>,
    /// Stopped by a configuration change.
    retired: Option<Retired>,
}

/// Leader election as the engine sees it: when this agent led, and the channel that says
/// so (taken by [`run`]).
struct Election {
    leadership: Leadership,
    leading: Option<watch::Receiver<bool>>,
}

impl Engine {
    /// An engine for `set`, every invariant in state `unknown`.
    pub fn new(set: &InvariantSet, meta: RunMeta) -> Self {
        let evaluators: Vec<_> = set
            .invariants
            .iter()
            .map(|i| Evaluator::new(&i.condition, i.interval))
            .collect();
        let entries = set
            .invariants
            .iter()
            .zip(&evaluators)
            .map(|(i, e)| InvariantReport::new(i, e.summary(meta.started_at)))
            .collect();
        Engine {
            invariants: set.invariants.clone(),
            evaluators,
            entries,
            lifetimes: vec![Lifetime::default(); set.invariants.len()],
            revisions: Vec::new(),
            meta,
            observers: Vec::new(),
            context: RunContext::default(),
            annotations: AnnotationLog::default(),
            attributor: Attributor::default(),
            election: None,
        }
    }

    /// Leader election is on: cluster-scoped invariants run only while `leading` is true
    /// (the scheduler gates them on the same channel). The report then says when this
    /// agent led (`run.leadership`, for the Lease `lease` as `identity`) and why its
    /// cluster-scoped invariants have samples only from then, or none; time-based state
    /// of those invariants does not move while another agent runs them.
    pub fn follow_leadership(
        &mut self,
        lease: &str,
        identity: &str,
        mut leading: watch::Receiver<bool>,
    ) {
        let already = *leading.borrow_and_update();
        self.election = Some(Election {
            leadership: Leadership {
                lease: lease.to_string(),
                identity: identity.to_string(),
                intervals: Vec::new(),
            },
            leading: Some(leading),
        });
        if already {
            self.set_leading(true, Timestamp::now());
        }
    }

    /// Records that this agent started (`true`) or stopped leading at `at`. Without
    /// leader election, does nothing.
    pub fn set_leading(&mut self, leading: bool, at: Timestamp) {
        let Some(election) = &mut self.election else {
            return;
        };
        let intervals = &mut election.leadership.intervals;
        match (leading, intervals.last_mut()) {
            (true, Some(last)) if last.end.is_none() => {}
            (true, _) => intervals.push(LeadershipInterval {
                start: at,
                end: None,
            }),
            (false, Some(last)) if last.end.is_none() => last.end = Some(at.max(last.start)),
            (false, _) => {}
        }
    }

    /// Whether the invariant at `invariant` runs only while this agent leads.
    fn gated(&self, invariant: usize) -> bool {
        self.election.is_some()
            && self
                .invariants
                .get(invariant)
                .is_some_and(|i| i.scope == Scope::Cluster)
    }

    /// Whether the invariant at `invariant` is not running here now: gated, and another
    /// agent leads.
    fn paused(&self, invariant: usize) -> bool {
        self.gated(invariant)
            && !self
                .election
                .as_ref()
                .is_some_and(|e| e.leadership.leading())
    }

    /// A gated sample started at `at` belongs to a time this agent led. The scheduler
    /// and the engine see the channel change separately, so the first sample may be
    /// stamped a moment before the engine noted the start: the interval then starts at
    /// that sample, so every sample lies inside an interval.
    fn cover(&mut self, at: Timestamp) {
        let Some(election) = &mut self.election else {
            return;
        };
        let intervals = &mut election.leadership.intervals;
        let previous_end = intervals
            .len()
            .checked_sub(2)
            .and_then(|i| intervals[i].end)
            .unwrap_or(Timestamp(i64::MIN));
        if let Some(last) = intervals.last_mut()
            && last.end.is_none()
            && at < last.start
            && at >= previous_end
        {
            last.start = at;
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
                if self.retired_before(invariant, sample.at) {
                    return;
                }
                if self.gated(invariant) {
                    self.cover(sample.at);
                }
                let Some(evaluator) = self.evaluators.get_mut(invariant) else {
                    return;
                };
                if let Some(t) = evaluator.ingest(&sample) {
                    self.on_transition(invariant, &t);
                }
                for observer in &mut self.observers {
                    observer.on_sample(invariant, &sample);
                }
            }
            Event::Missed { invariant, at } => {
                if self.retired_before(invariant, at) {
                    return;
                }
                let Some(evaluator) = self.evaluators.get_mut(invariant) else {
                    return;
                };
                evaluator.record_missed(at);
                tracing::warn!(
                    invariant = %self.invariants[invariant].name,
                    "missed a sample: too many samples in flight (target slow or concurrency limit reached)"
                );
                for observer in &mut self.observers {
                    observer.on_missed(invariant, at);
                }
            }
        }
    }

    /// Lets time-based conditions (`for` durations, window expiry) move without samples.
    pub fn advance(&mut self, now: Timestamp) {
        for invariant in 0..self.evaluators.len() {
            // Not sampled here now: a `for` duration must not elapse without evidence.
            if self.paused(invariant) || self.lifetimes[invariant].retired.is_some() {
                continue;
            }
            if let Some(t) = self.evaluators[invariant].advance(now) {
                self.on_transition(invariant, &t);
            }
        }
    }

    /// Logs a state change and tells the observers.
    fn on_transition(&mut self, invariant: usize, t: &Transition) {
        log_transition(&self.invariants[invariant], t);
        for observer in &mut self.observers {
            observer.on_transition(invariant, t);
        }
    }

    /// The report as of `now`.
    pub fn report(&mut self, now: Timestamp, status: RunStatus) -> Report {
        let leadership = self.election.as_ref().map(|e| {
            let mut leadership = e.leadership.clone();
            if status == RunStatus::Completed
                && let Some(last) = leadership.intervals.last_mut()
                && last.end.is_none()
            {
                // The run ended while this agent led.
                last.end = Some(now.max(last.start));
            }
            leadership
        });
        let invariants = self
            .invariants
            .iter()
            .zip(&self.entries)
            .zip(&self.evaluators)
            .zip(&self.lifetimes)
            .map(|(((i, entry), e), lifetime)| {
                // A retired entry's numbers stop when it did.
                let until = lifetime.retired.map_or(now, |r| r.at.min(now));
                let mut entry = entry.with_summary(e.summary(until));
                if i.scope == Scope::Cluster
                    && let Some(leadership) = &leadership
                {
                    entry.note = Some(leadership_note(leadership, now, self.meta.started_at));
                }
                entry.active_from = lifetime.from;
                entry.retired = lifetime.retired;
                entry
            })
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
            leadership,
            gaps: Vec::new(),
            config_revisions: self.revisions.clone(),
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

impl Engine {
    /// The invariants running now (not retired), with their indices.
    pub fn running(&self) -> Vec<(usize, Invariant)> {
        self.invariants
            .iter()
            .zip(&self.lifetimes)
            .enumerate()
            .filter(|(_, (_, l))| l.retired.is_none())
            .map(|(index, (i, _))| (index, i.clone()))
            .collect()
    }

    /// Applies a valid configuration change at `change.at`, all at once between two
    /// events: kept invariants run on untouched (only where they are declared may move);
    /// removed ones are retired, their entries kept with the time; changed ones are
    /// retired and started again at a new index with fresh state; added ones start at
    /// new indices. Returns the indices of the starting invariants, in
    /// [`Diff::starting`] order, for the scheduler.
    pub fn reconfigure(&mut self, change: Reconfigure) -> Vec<usize> {
        let Reconfigure { diff, hash, at } = change;
        let name = |engine: &Engine, index: usize| engine.invariants[index].name.clone();
        for (index, invariant) in &diff.kept {
            if let Some(running) = self.invariants.get_mut(*index) {
                running.source = invariant.source.clone();
            }
            if let Some(entry) = self.entries.get_mut(*index) {
                entry.source = invariant.source.clone();
            }
        }
        let mut stopped = Vec::new();
        for index in &diff.removed {
            self.retire(*index, at, RetiredReason::Removed, &mut stopped);
        }
        for (index, _) in &diff.changed {
            self.retire(*index, at, RetiredReason::Changed, &mut stopped);
        }
        let mut started = Vec::new();
        for invariant in diff.starting() {
            let index = self.invariants.len();
            self.invariants.push(invariant.clone());
            let evaluator = Evaluator::new(&invariant.condition, invariant.interval);
            self.entries
                .push(InvariantReport::new(invariant, evaluator.summary(at)));
            self.evaluators.push(evaluator);
            self.lifetimes.push(Lifetime {
                from: Some(at),
                retired: None,
            });
            started.push((index, invariant.clone()));
        }
        let revision = ConfigRevision {
            at,
            hash,
            result: RevisionResult::Applied,
            added: diff.added.iter().map(|i| i.name.clone()).collect(),
            changed: diff.changed.iter().map(|(_, i)| i.name.clone()).collect(),
            removed: diff.removed.iter().map(|i| name(self, *i)).collect(),
            problems: Vec::new(),
        };
        tracing::info!(
            hash = revision.hash.as_deref().unwrap_or("-"),
            added = ?revision.added,
            changed = ?revision.changed,
            removed = ?revision.removed,
            kept = diff.kept.len(),
            "configuration change applied; unchanged invariants run on untouched"
        );
        self.record_revision(revision);
        for observer in &mut self.observers {
            observer.on_invariants_changed(&started, &stopped);
        }
        started.into_iter().map(|(index, _)| index).collect()
    }

    /// Records a configuration change that was refused: nothing else changes.
    pub fn refused(&mut self, revision: ConfigRevision) {
        self.record_revision(revision);
    }

    fn record_revision(&mut self, revision: ConfigRevision) {
        if self.revisions.len() < MAX_CONFIG_REVISIONS {
            self.revisions.push(revision);
        } else if let Some(last) = self.revisions.last_mut() {
            // The newest one always shows what is in effect (or was last refused).
            *last = revision;
        }
    }

    /// Retires the running invariant at `index` at `at`, once.
    fn retire(&mut self, index: usize, at: Timestamp, reason: RetiredReason, out: &mut Vec<usize>) {
        if self
            .lifetimes
            .get(index)
            .is_none_or(|l| l.retired.is_some())
        {
            return;
        }
        // Time-based state is brought up to the retirement first, so the entry ends as it
        // stood then.
        if !self.paused(index)
            && let Some(t) = self.evaluators[index].advance(at)
        {
            self.on_transition(index, &t);
        }
        self.lifetimes[index].retired = Some(Retired { at, reason });
        out.push(index);
    }

    /// Whether the invariant at `index` was retired before `at` (an event of it still in
    /// flight then is not counted).
    fn retired_before(&self, index: usize, at: Timestamp) -> bool {
        self.lifetimes
            .get(index)
            .and_then(|l| l.retired)
            .is_some_and(|r| at > r.at)
    }
}

/// What a cluster-scoped invariant's report entry says under leader election (also
/// recomputed for a resumed run's merged leadership by `report::resume`).
pub(crate) fn leadership_note(
    leadership: &Leadership,
    now: Timestamp,
    started_at: Timestamp,
) -> String {
    let lease = &leadership.lease;
    if leadership.intervals.is_empty() {
        return format!(
            "cluster-scoped: runs only in the agent holding the Lease {lease}, and this agent \
             ({}) never held it; the report of the agent that did has its samples",
            leadership.identity
        );
    }
    let seconds = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    let n = leadership.intervals.len();
    format!(
        "cluster-scoped: sampled only while this agent held the Lease {lease}: {} of the \
         run's {}, in {n} interval{} (run.leadership)",
        seconds(leadership.led_for(now)),
        seconds(now.since(started_at)),
        if n == 1 { "" } else { "s" },
    )
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

/// Runs the engine until every event sender is gone, applying [`Command`]s as they come
/// and publishing a report snapshot every [`PUBLISH_INTERVAL`] on `snapshots`; returns
/// the final report (also published, with status `completed`).
///
/// The end of the run is the end of `events` alone: command senders may outlive it (the
/// API holds one). Commands already queued then are still applied (annotations are in the
/// final report; report requests get the final report); later ones fail to send.
pub async fn run(
    mut engine: Engine,
    mut events: mpsc::Receiver<Event>,
    mut commands: mpsc::Receiver<Command>,
    snapshots: watch::Sender<Option<Arc<Report>>>,
) -> Arc<Report> {
    let mut commands_open = true;
    let mut leading = engine.election.as_mut().and_then(|e| e.leading.take());
    // Time-based state (a `for` duration elapsing) moves even when samples are sparse.
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            now_leading = leadership_changed(&mut leading) => {
                engine.set_leading(now_leading, Timestamp::now());
            }
            event = events.recv() => match event {
                Some(event) => engine.handle(event),
                None => break,
            },
            command = commands.recv(), if commands_open => match command {
                Some(command) => engine.apply(command, &snapshots, RunStatus::Running),
                None => commands_open = false,
            },
            _ = publish.tick() => {
                engine.publish(&snapshots, RunStatus::Running);
            }
        }
    }
    // Annotations sent before the end belong in the final report; report requests
    // queued behind them are answered with it.
    let mut waiting = Vec::new();
    commands.close();
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Report(reply) => waiting.push(reply),
            annotate => engine.apply(annotate, &snapshots, RunStatus::Running),
        }
    }
    let report = engine.publish(&snapshots, RunStatus::Completed);
    for reply in waiting {
        let _ = reply.send(report.clone());
    }
    report
}

/// The next value of the leadership channel; never resolves without one (or once its
/// sender is gone: the last value stands).
async fn leadership_changed(leading: &mut Option<watch::Receiver<bool>>) -> bool {
    if let Some(rx) = leading {
        if rx.changed().await.is_ok() {
            return *rx.borrow_and_update();
        }
        *leading = None;
    }
    std::future::pending().await
}

impl Engine {
    /// Applies one command; a report it asks for is published with `status`.
    fn apply(
        &mut self,
        command: Command,
        snapshots: &watch::Sender<Option<Arc<Report>>>,
        status: RunStatus,
    ) {
        match command {
            Command::Annotate(annotation, ack) => {
                self.annotate(annotation);
                if let Some(ack) = ack {
                    // The caller may have gone away; the annotation stays recorded.
                    let _ = ack.send(());
                }
            }
            Command::Report(reply) => {
                let _ = reply.send(self.publish(snapshots, status));
            }
            Command::Reconfigure(change, reply) => {
                let started = self.reconfigure(*change);
                // Published at once: GetStatus and the exporters see the new set now.
                self.publish(snapshots, status);
                let _ = reply.send(started);
            }
            Command::RefuseConfig(revision) => self.refused(revision),
        }
    }

    /// Moves time-based state to now, builds the report and publishes it.
    fn publish(
        &mut self,
        snapshots: &watch::Sender<Option<Arc<Report>>>,
        status: RunStatus,
    ) -> Arc<Report> {
        let now = Timestamp::now();
        self.advance(now);
        let report = Arc::new(self.report(now, status));
        snapshots.send_replace(Some(report.clone()));
        report
    }
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

    /// Records what an observer is told, in order.
    struct Recording(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl SampleObserver for Recording {
        fn on_sample(&mut self, _: usize, sample: &Sample) {
            self.0
                .lock()
                .unwrap()
                .push(format!("sample {}", sample.at.0));
        }
        fn on_missed(&mut self, _: usize, at: Timestamp) {
            self.0.lock().unwrap().push(format!("missed {}", at.0));
        }
        fn on_transition(&mut self, _: usize, t: &Transition) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} at {}", t.to.as_str(), t.at.0));
        }
    }

    fn engine() -> Engine {
        let set = crate::config::parse_str("f.yaml", FILE).unwrap();
        let meta = RunMeta {
            id: "r".into(),
            started_at: Timestamp(0),
            config_files: vec![],
            node: None,
        };
        Engine::new(&set, meta)
    }

    #[test]
    fn observers_see_a_transition_right_before_the_sample_that_caused_it() {
        let mut engine = engine();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        engine.observe(Box::new(Recording(seen.clone())));
        engine.handle(sample(0, true));
        engine.handle(sample(1000, true));
        engine.handle(Event::Missed {
            invariant: 0,
            at: Timestamp(2000),
        });
        engine.handle(sample(3000, false));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "holding at 0",
                "sample 0",
                "sample 1000",
                "missed 2000",
                "violated at 3000",
                "sample 3000"
            ]
        );
    }

    const SCOPED: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: node-check
    description: d
    owner: o
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
  - name: cluster-check
    description: d
    owner: o
    scope: cluster
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {threshold: {max: 1, for: 5s}}
"#;

    fn scoped_engine() -> (Engine, watch::Sender<bool>) {
        let set = crate::config::parse_str("f.yaml", SCOPED).unwrap();
        let meta = RunMeta {
            id: "r".into(),
            started_at: Timestamp(0),
            config_files: vec![],
            node: None,
        };
        let mut engine = Engine::new(&set, meta);
        let (tx, rx) = watch::channel(false);
        engine.follow_leadership("ns/lease", "agent-a_1", rx);
        (engine, tx)
    }

    fn value(invariant: usize, at: i64, value: f64) -> Event {
        Event::Sample {
            invariant,
            sample: Sample {
                at: Timestamp(at),
                latency: Duration::from_millis(1),
                observation: Observation::Ok { value: Some(value) },
            },
        }
    }

    /// An agent that never led reports its cluster-scoped invariant as not examined and
    /// says why; its node-scoped invariant is judged as ever.
    #[test]
    fn a_cluster_invariant_of_an_agent_that_never_led_is_not_examined_with_the_reason() {
        let (mut engine, _tx) = scoped_engine();
        engine.handle(value(0, 0, 0.0));
        let report = engine.report(Timestamp(10_000), RunStatus::Completed);
        let leadership = report.run.leadership.as_ref().unwrap();
        assert_eq!(leadership.lease, "ns/lease");
        assert_eq!(leadership.identity, "agent-a_1");
        assert!(leadership.intervals.is_empty());
        assert_eq!(report.invariants[0].verdict, Verdict::Held);
        assert_eq!(report.invariants[0].note, None, "node-scoped");
        let cluster = &report.invariants[1];
        assert_eq!(cluster.verdict, Verdict::NotExamined);
        let note = cluster.note.as_deref().unwrap();
        assert!(
            note.contains("never held it") && note.contains("ns/lease"),
            "{note}"
        );
    }

    /// Leadership intervals are recorded (the last one closed by the end of the run), a
    /// sample stamped just before the engine noted the start is covered, and time-based
    /// state does not move while another agent leads.
    #[test]
    fn leadership_intervals_cover_the_samples_and_pause_time_based_state() {
        let (mut engine, _tx) = scoped_engine();
        engine.set_leading(true, Timestamp(2_000));
        engine.handle(value(1, 1_990, 0.0));
        engine.handle(value(1, 3_000, 5.0)); // out of bounds: pending, violated after 5 s
        engine.set_leading(false, Timestamp(4_000));
        engine.advance(Timestamp(60_000));
        let report = engine.report(Timestamp(60_000), RunStatus::Running);
        assert_eq!(
            report.invariants[1].summary.state,
            State::Pending,
            "no sample since leadership was lost: the `for` must not elapse"
        );
        engine.set_leading(true, Timestamp(70_000));
        engine.set_leading(true, Timestamp(71_000)); // no change
        engine.handle(value(1, 70_500, 0.0));
        let report = engine.report(Timestamp(80_000), RunStatus::Completed);
        let leadership = report.run.leadership.as_ref().unwrap();
        assert_eq!(
            leadership.intervals,
            [
                LeadershipInterval {
                    start: Timestamp(1_990),
                    end: Some(Timestamp(4_000))
                },
                LeadershipInterval {
                    start: Timestamp(70_000),
                    end: Some(Timestamp(80_000))
                },
            ]
        );
        let cluster = &report.invariants[1];
        assert_eq!(cluster.summary.state, State::Holding);
        assert_eq!(cluster.verdict, Verdict::Held);
        let note = cluster.note.as_deref().unwrap();
        assert!(
            note.contains("12s of the run's 1m 20s, in 2 intervals"),
            "{note}"
        );
    }

    /// Reports with leadership (open, closed and never) match docs/report.schema.json.
    #[test]
    fn reports_with_leadership_match_the_schema() {
        let schema: serde_json::Value = serde_json::from_str(crate::report::JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let (mut engine, _tx) = scoped_engine();
        let mut reports = vec![engine.report(Timestamp(1_000), RunStatus::Running)];
        engine.set_leading(true, Timestamp(2_000));
        engine.handle(value(1, 2_500, 0.0));
        reports.push(engine.report(Timestamp(3_000), RunStatus::Running));
        reports.push(engine.report(Timestamp(4_000), RunStatus::Completed));
        for report in reports {
            let json: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| format!("{e} at {}", e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{errors:#?}\n{json:#}");
            assert!(json["invariants"][1]["note"].is_string());
            assert!(json["invariants"][0]["note"].is_null());
        }
    }

    #[tokio::test]
    async fn commands_apply_in_order_and_the_end_answers_what_is_queued() {
        let (events_tx, events) = mpsc::channel(8);
        let (commands_tx, commands) = mpsc::channel(8);
        let (snapshots_tx, snapshots) = watch::channel(None);
        let task = tokio::spawn(run(engine(), events, commands, snapshots_tx));
        let phase = Annotation {
            kind: AnnotationKind::Phase,
            name: "upgrade".into(),
            start: Timestamp(10),
            end: None,
            outcome: None,
        };
        let (ack, applied) = oneshot::channel();
        commands_tx
            .send(Command::Annotate(phase.clone(), Some(ack)))
            .await
            .unwrap();
        let (reply, report) = oneshot::channel();
        commands_tx.send(Command::Report(reply)).await.unwrap();
        applied.await.unwrap();
        let report = report.await.unwrap();
        assert_eq!(report.annotations, vec![phase.clone()]);
        assert_eq!(report.run.status, RunStatus::Running);
        assert!(std::sync::Arc::ptr_eq(
            &report,
            snapshots.borrow().as_ref().unwrap()
        ));

        // Sent as the events end: answered (before or at the end), never left hanging.
        events_tx.send(sample(0, true)).await.unwrap();
        let (reply, last) = oneshot::channel();
        commands_tx.send(Command::Report(reply)).await.unwrap();
        drop(events_tx);
        let done = task.await.unwrap();
        assert_eq!(done.run.status, RunStatus::Completed);
        assert_eq!(done.invariants[0].summary.samples.ok, 1);
        assert_eq!(done.annotations, vec![phase]);
        assert!(last.await.is_ok());
        let late = commands_tx
            .send(Command::Report(oneshot::channel().0))
            .await;
        assert!(late.is_err(), "after the end, commands fail to send");
    }

    const RELOADED: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: added
    description: d
    owner: o
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
  - name: api
    description: d
    owner: o
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
    expectedDisruptions: ['\[Disruptive\]']
"#;

    /// Records which invariants observers are told started and stopped.
    struct Changes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl SampleObserver for Changes {
        fn on_sample(&mut self, _: usize, _: &Sample) {}
        fn on_invariants_changed(&mut self, started: &[(usize, Invariant)], stopped: &[usize]) {
            let started: Vec<String> = started
                .iter()
                .map(|(i, inv)| format!("{i}={}", inv.name))
                .collect();
            self.0
                .lock()
                .unwrap()
                .push(format!("started {started:?} stopped {stopped:?}"));
        }
    }

    /// A kept invariant runs on with its state (its samples before and after the change
    /// are one series); a changed one is retired with its history and restarts fresh at a
    /// new index; a removed one is retired; an added one starts; samples of a retired one
    /// taken after the change are not counted; the report records the revision.
    #[test]
    fn a_configuration_change_keeps_unchanged_invariants_and_retires_the_rest() {
        let set = crate::config::parse_str("f.yaml", SCOPED).unwrap();
        let meta = RunMeta {
            id: "r".into(),
            started_at: Timestamp(0),
            config_files: vec![],
            node: None,
        };
        let mut engine = Engine::new(&set, meta);
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        engine.observe(Box::new(Changes(told.clone())));
        for at in [0, 1000, 2000] {
            engine.handle(value(0, at, 0.0));
            engine.handle(value(1, at, 5.0));
        }
        // A new file: node-check as it was (on another line), cluster-check with another
        // interval.
        let mut new_set = crate::config::parse_str("g.yaml", SCOPED).unwrap();
        new_set.invariants.truncate(1);
        new_set.invariants[0].source = "g.yaml:9:5".into();
        let mut changed = new_set.invariants[0].clone();
        changed.name = "cluster-check".into();
        changed.interval = Duration::from_secs(2);
        new_set.invariants.push(changed);
        let running = engine.running();
        let diff = crate::reload::diff(&running, &new_set);
        assert_eq!(diff.kept.len(), 1);
        assert_eq!(diff.changed.len(), 1);
        let started = engine.reconfigure(Reconfigure {
            diff,
            hash: Some("abc".into()),
            at: Timestamp(2500),
        });
        assert_eq!(started, [2]);
        assert_eq!(
            *told.lock().unwrap(),
            ["started [\"2=cluster-check\"] stopped [1]"]
        );
        for at in [3000, 4000] {
            engine.handle(value(0, at, 0.0));
            engine.handle(value(1, at, 5.0)); // in flight from the old job: not counted
            engine.handle(value(2, at, 0.0));
        }
        // Then the new file drops cluster-check and adds `added`.
        let third = crate::config::parse_str("h.yaml", RELOADED).unwrap();
        let mut third_set = InvariantSet {
            invariants: vec![third.invariants[0].clone()],
        };
        third_set.invariants.push(engine.running()[0].1.clone());
        let diff = crate::reload::diff(&engine.running(), &third_set);
        assert_eq!(diff.removed, [2]);
        let started = engine.reconfigure(Reconfigure {
            diff,
            hash: Some("def".into()),
            at: Timestamp(4500),
        });
        assert_eq!(started, [3]);
        engine.refused(ConfigRevision {
            at: Timestamp(5000),
            hash: Some("bad".into()),
            result: RevisionResult::Refused,
            added: vec![],
            changed: vec![],
            removed: vec![],
            problems: vec!["h.yaml:1:1: kind: must be InvariantSet".into()],
        });
        engine.handle(value(0, 5000, 0.0));

        let report = engine.report(Timestamp(6000), RunStatus::Completed);
        let names: Vec<&str> = report.invariants.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["node-check", "cluster-check", "cluster-check", "added"]
        );
        let [kept, old, new, added] = &report.invariants[..] else {
            unreachable!()
        };
        assert_eq!(kept.summary.samples.ok, 6, "one series across both changes");
        assert_eq!((kept.active_from, kept.retired), (None, None));
        assert_eq!(kept.source, "g.yaml:9:5", "where it is declared now");
        assert_eq!(
            old.summary.samples.ok, 3,
            "the samples after the change are not its"
        );
        assert_eq!(
            old.retired,
            Some(Retired {
                at: Timestamp(2500),
                reason: RetiredReason::Changed
            })
        );
        assert_eq!(
            old.summary.state,
            State::Pending,
            "as it stood when retired"
        );
        assert_eq!(new.active_from, Some(Timestamp(2500)));
        assert_eq!(new.interval_seconds, 2.0);
        assert_eq!(new.summary.samples.ok, 2, "fresh state");
        assert_eq!(new.retired.map(|r| r.reason), Some(RetiredReason::Removed));
        assert_eq!(added.active_from, Some(Timestamp(4500)));
        assert_eq!(added.summary.samples.ok, 0);
        let revisions = &report.run.config_revisions;
        assert_eq!(revisions.len(), 3);
        assert_eq!(revisions[0].changed, ["cluster-check"]);
        assert!(revisions[0].added.is_empty() && revisions[0].removed.is_empty());
        assert_eq!(revisions[1].added, ["added"]);
        assert_eq!(revisions[1].removed, ["cluster-check"]);
        assert_eq!(revisions[2].result, RevisionResult::Refused);
        assert_eq!(revisions[2].hash.as_deref(), Some("bad"));

        let schema: serde_json::Value = serde_json::from_str(crate::report::JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{json:#}");
        assert_eq!(json["invariants"][1]["retired"]["reason"], "changed");
        assert!(json["invariants"][0].get("retired").is_none());
    }
}
