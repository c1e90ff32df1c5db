//! The cluster stream: under leader election, the OTLP series of the cluster-scoped
//! invariants, exported by whichever agent leads under one resource for the whole run.
//!
//! A backend keys a series on its resource and attributes. This agent's resource names
//! the agent (`service.instance.id`, `k8s.pod.name`, `k8s.node.name`), so series it
//! exports for the cluster would become different series at every failover. The cluster
//! stream uses the cluster resource instead ([`super::config::cluster_resource`]: the same
//! without the per-agent attributes; with the shared run id), so the new leader continues
//! the same series.
//!
//! Each stretch of time an agent leads is a *term*, exported by a pipeline of its own
//! ([`ClusterPipelines::start_term`]) that this module starts when the agent takes the
//! Lease and ends (flushing the final values) when it steps down. The series are
//! cumulative, so a term is one cumulative stream: a new start time
//! (`start_time_unix_nano`), counters counted from zero at the takeover. Backends read a
//! new start time as a counter reset, as after any restart: Prometheus' `increase()` and
//! `rate()` and OpenTelemetry's cumulative-to-delta conversion count the new leader's
//! samples on top of the old leader's, so the series never seems to go backwards in an
//! aggregate. Carrying the old leader's totals over instead is not possible reliably: it
//! may die (SIGKILL) at any time after its last export, so what it counted since then is
//! lost with it either way, and a carried-over total could then be lower than what the
//! backend already holds, which is a reset anyway.
//!
//! Counting from zero at the takeover needs the totals at that moment: the engine's
//! counters are this agent's totals over the whole run, including earlier terms, so a
//! term subtracts the counters of the newest snapshot taken while the agent did not lead
//! ([`Counters`]). Gauges (state, value, availability) are exported as they are. At a
//! step-down the term waits for the engine's next snapshot (at most about two publish
//! intervals), so its final export carries the samples of its last moments.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::FLUSH_DEADLINE;
use super::otlp::{ClusterPipelines, OtlpError, Pipeline};
use super::series::Counters;
use crate::engine::{PUBLISH_INTERVAL, Snapshots};
use crate::report::Report;

/// How long a stepping-down term waits for a snapshot that shows it stopped leading,
/// so that its final export carries its last samples.
const STEP_DOWN_WAIT: Duration = Duration::from_millis(2 * PUBLISH_INTERVAL.as_millis() as u64);

/// What the cluster stream's loop asks of the OTLP side; [`ClusterPipelines`] in the
/// agent, a recording fake in tests.
pub trait Terms: Send + Sync + 'static {
    /// A running term.
    type Term: Send;
    /// From now on this agent's own series leave the cluster-scoped ones to the terms.
    fn take_over_cluster_series(&self);
    /// The counters of every invariant in `report`, in file order.
    fn counters(&self, report: &Report) -> Vec<Counters>;
    /// Starts a term counting from `baseline`.
    fn start_term(&self, baseline: Vec<Counters>) -> Result<Self::Term, OtlpError>;
    /// Ends `term`, flushing its final values within `deadline`.
    fn end_term(&self, term: Self::Term, deadline: Duration) -> impl Future<Output = ()> + Send;
}

impl Terms for ClusterPipelines {
    type Term = Pipeline;

    fn take_over_cluster_series(&self) {
        ClusterPipelines::take_over_cluster_series(self)
    }

    fn counters(&self, report: &Report) -> Vec<Counters> {
        ClusterPipelines::counters(self, report)
    }

    fn start_term(&self, baseline: Vec<Counters>) -> Result<Pipeline, OtlpError> {
        ClusterPipelines::start_term(self, baseline)
    }

    fn end_term(&self, term: Pipeline, deadline: Duration) -> impl Future<Output = ()> + Send {
        ClusterPipelines::end_term(self, term, deadline)
    }
}

/// The task that follows this agent's leadership and runs the cluster stream's terms.
pub struct ClusterStream {
    task: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<Duration>,
}

impl ClusterStream {
    /// Follows `leading` (whether this agent holds the Lease): from now on the
    /// cluster-scoped series are exported only by the terms this starts. Must be called
    /// inside a Tokio runtime, before the election starts.
    pub fn follow<T: Terms>(
        pipelines: Arc<T>,
        leading: watch::Receiver<bool>,
        snapshots: Snapshots,
    ) -> Self {
        pipelines.take_over_cluster_series();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(follow(pipelines, leading, snapshots, stopped));
        ClusterStream { task, stop }
    }

    /// Ends the running term, if any, flushing its final values (giving up after
    /// `deadline`). Call once the engine has published its final snapshot.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.stop.send(deadline);
        let mut task = self.task;
        // A step-down flush may be under way when the stop arrives: allow for both.
        if tokio::time::timeout(2 * deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Whether `report` says this agent leads.
fn leads(report: &Report) -> bool {
    report.run.leadership.as_ref().is_some_and(|l| l.leading())
}

/// The loop: starts a term when `leading` turns true, ends it when it turns false (after
/// the next snapshot, see [`STEP_DOWN_WAIT`]) or when `stop` arrives.
async fn follow<T: Terms>(
    pipelines: Arc<T>,
    mut leading: watch::Receiver<bool>,
    mut snapshots: Snapshots,
    mut stop: oneshot::Receiver<Duration>,
) {
    // Where the next term counts from: the counters of the newest snapshot taken while
    // this agent did not lead (none yet: zero).
    let mut baseline: Option<Vec<Counters>> = None;
    let note_baseline = |report: Option<Arc<Report>>, baseline: &mut Option<Vec<Counters>>| {
        if let Some(report) = report.filter(|r| !leads(r)) {
            *baseline = Some(pipelines.counters(&report));
        }
    };
    note_baseline(snapshots.borrow_and_update().clone(), &mut baseline);

    let mut term: Option<T::Term> = None;
    // Set while a term waits for its final snapshot.
    let mut stepping_down: Option<Instant> = None;
    let (mut leading_open, mut snapshots_open) = (true, true);
    let mut now_leading = *leading.borrow_and_update();
    // Whether a term was started (or tried) since this agent last took the Lease.
    let mut started = false;
    loop {
        if now_leading && !started {
            started = true;
            term = start_term(&*pipelines, baseline.clone().unwrap_or_default());
        }
        if now_leading {
            stepping_down = None;
        } else if term.is_none() {
            started = false;
        } else if stepping_down.is_none() {
            stepping_down = Some(Instant::now() + STEP_DOWN_WAIT);
        }
        let step_down_at = stepping_down.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            deadline = &mut stop => {
                if let Some(term) = term.take() {
                    pipelines.end_term(term, deadline.unwrap_or(FLUSH_DEADLINE)).await;
                }
                return;
            }
            changed = leading.changed(), if leading_open => match changed {
                Ok(()) => now_leading = *leading.borrow_and_update(),
                // The election is gone: it said false before it went (or never led).
                Err(_) => {
                    leading_open = false;
                    now_leading = false;
                }
            },
            changed = snapshots.changed(), if snapshots_open => {
                if changed.is_err() {
                    snapshots_open = false;
                    continue;
                }
                let report = snapshots.borrow_and_update().clone();
                let not_leading = report.as_deref().is_some_and(|r| !leads(r));
                note_baseline(report, &mut baseline);
                if not_leading && stepping_down.is_some() {
                    end_term(&*pipelines, &mut term, &mut stepping_down).await;
                }
            }
            _ = tokio::time::sleep_until(step_down_at), if stepping_down.is_some() => {
                end_term(&*pipelines, &mut term, &mut stepping_down).await;
            }
        }
    }
}

/// Starts a term counted from `baseline`; a pipeline that cannot be built (it was built
/// with the same settings at start, so this is unexpected) is logged and skipped.
fn start_term<T: Terms>(pipelines: &T, baseline: Vec<Counters>) -> Option<T::Term> {
    match pipelines.start_term(baseline) {
        Ok(term) => {
            tracing::info!(
                "this agent leads: exporting the cluster-scoped series under the cluster resource"
            );
            Some(term)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot export the cluster-scoped series while this agent leads");
            None
        }
    }
}

async fn end_term<T: Terms>(
    pipelines: &T,
    term: &mut Option<T::Term>,
    stepping_down: &mut Option<Instant>,
) {
    *stepping_down = None;
    if let Some(term) = term.take() {
        pipelines.end_term(term, FLUSH_DEADLINE).await;
        tracing::info!(
            "this agent stopped leading: the next leader continues the cluster-scoped series"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::engine::Engine;
    use crate::export::testutil::{engine_under_election, ok_sample};
    use crate::report::RunStatus;
    use crate::sample::Timestamp;
    use crate::schedule::Event;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: api
    description: d
    owner: o
    scope: cluster
    probe:
      http: {url: "http://127.0.0.1:1/"}
    condition:
      availability: {target: 100, window: 1m}
"#;

    /// What the loop asked for.
    #[derive(Debug, PartialEq)]
    enum Call {
        /// A term started, counting `ok` samples from this many.
        Start(u64),
        /// A term ended with this flush deadline.
        End(Duration),
    }

    #[derive(Default)]
    struct FakeTerms {
        calls: Mutex<Vec<Call>>,
        taken_over: std::sync::atomic::AtomicBool,
    }

    impl FakeTerms {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl Terms for FakeTerms {
        type Term = ();

        fn take_over_cluster_series(&self) {
            self.taken_over
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }

        fn counters(&self, report: &Report) -> Vec<Counters> {
            report
                .invariants
                .iter()
                .map(|e| super::super::series::Point::from_report(e).counters())
                .collect()
        }

        fn start_term(&self, baseline: Vec<Counters>) -> Result<(), OtlpError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Start(baseline.first().map_or(0, |c| c.samples[0])));
            Ok(())
        }

        async fn end_term(&self, _term: (), deadline: Duration) {
            self.calls.lock().unwrap().push(Call::End(deadline));
        }
    }

    /// Lets the loop run (time is paused: tokio advances it when every task waits).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    /// A term starts when this agent takes the Lease, counting from the counters it had
    /// before; at a step-down it waits for the snapshot that shows it (so the final export
    /// has the last samples), or gives up on it after a while; a Lease lost and retaken
    /// before that snapshot keeps the term; the run's end flushes the open term.
    #[tokio::test(start_paused = true)]
    async fn terms_follow_leadership_and_count_from_the_counters_before_each() {
        let (_, mut engine) = engine_under_election(FILE);
        let mut at = 0;
        let mut publish = |engine: &mut Engine, tx: &watch::Sender<_>| {
            at += 1000;
            tx.send_replace(Some(Arc::new(
                engine.report(Timestamp(at), RunStatus::Running),
            )));
        };
        let sample = |engine: &mut Engine, ms: i64| {
            engine.handle(Event::Sample {
                invariant: 0,
                sample: ok_sample(ms),
            })
        };

        let (snapshots_tx, snapshots) = watch::channel(None);
        publish(&mut engine, &snapshots_tx);
        let (leading, leading_rx) = watch::channel(false);
        let terms = Arc::new(FakeTerms::default());
        let stream = ClusterStream::follow(terms.clone(), leading_rx, snapshots);
        settle().await;
        assert!(terms.taken_over.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(terms.take(), []);

        // First term: nothing counted before.
        leading.send_replace(true);
        settle().await;
        assert_eq!(terms.take(), [Call::Start(0)]);
        engine.set_leading(true, Timestamp(1500));
        for ms in [1600, 1700, 1800] {
            sample(&mut engine, ms);
        }
        publish(&mut engine, &snapshots_tx);

        // Step-down: the term waits for the snapshot that shows it.
        leading.send_replace(false);
        settle().await;
        assert_eq!(terms.take(), [], "ended before its final snapshot");
        engine.set_leading(false, Timestamp(2500));
        publish(&mut engine, &snapshots_tx);
        settle().await;
        assert_eq!(terms.take(), [Call::End(FLUSH_DEADLINE)]);

        // Second term counts from the 3 samples of the first.
        leading.send_replace(true);
        settle().await;
        assert_eq!(terms.take(), [Call::Start(3)]);

        // Lost and retaken before any snapshot: the same term goes on.
        leading.send_replace(false);
        settle().await;
        leading.send_replace(true);
        tokio::time::sleep(STEP_DOWN_WAIT * 2).await;
        assert_eq!(terms.take(), []);

        // Lost with no snapshot coming: ended after the wait.
        leading.send_replace(false);
        tokio::time::sleep(STEP_DOWN_WAIT - Duration::from_millis(100)).await;
        assert_eq!(terms.take(), []);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(terms.take(), [Call::End(FLUSH_DEADLINE)]);

        // The run ends while leading: the open term is flushed with the given deadline.
        leading.send_replace(true);
        settle().await;
        assert_eq!(terms.take(), [Call::Start(3)]);
        stream.shutdown(Duration::from_millis(300)).await;
        assert_eq!(terms.take(), [Call::End(Duration::from_millis(300))]);
    }
}
