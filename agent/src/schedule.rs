//! Scheduling: runs every invariant's probe on its own fixed grid for the whole run.
//!
//! Each invariant starts at a random offset within its first interval (so a file of
//! 1 s invariants does not fire in lock-step) and then ticks at exact multiples of its
//! interval from that start, so the cadence never drifts however long a probe takes.
//!
//! A tick never waits for the previous sample: when a target hangs, up to
//! `ceil(timeout / interval)` samples of one invariant are in flight at once, each stamped
//! with its own start time, so an outage is measured at interval resolution (as
//! OpenShift's disruption monitor does with 1 s samples and a 10 s timeout). A tick that
//! cannot start (that bound, or the global concurrency bound, is reached; or the process
//! was stalled past a tick) is reported as [`Event::Missed`], never silently dropped.
//!
//! A job may have a [`Gate`] (cluster-scoped invariants under leader election: "this
//! agent leads"). While it is closed the job takes no samples and counts no missed
//! ticks; when it opens the job resumes on its own grid, at the first tick after that.
//!
//! Jobs can be started and stopped while running ([`Control`], for configuration
//! changes); the others never notice: each job has its own task and its own grid.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::probe::Probe;
use crate::sample::{ErrorClass, Observation, ProbeError, Sample, Timestamp};

/// What the scheduler tells the engine.
#[derive(Debug)]
pub enum Event {
    /// A sample of the invariant at `invariant` (index into the invariant set).
    Sample {
        /// Index of the invariant in the set.
        invariant: usize,
        /// What was observed.
        sample: Sample,
    },
    /// A tick at `at` that could not run.
    Missed {
        /// Index of the invariant in the set.
        invariant: usize,
        /// When the tick was due.
        at: Timestamp,
    },
}

/// One invariant as the scheduler sees it: when to run which probe.
#[derive(Clone)]
pub struct Job {
    /// Index of the invariant in the set (carried in every [`Event`]).
    pub invariant: usize,
    /// Time between sample starts.
    pub interval: Duration,
    /// Longest a sample may take; it is then cut and counted as failed.
    pub timeout: Duration,
    /// The probe to run.
    pub probe: Arc<dyn Probe>,
    /// When set, the job samples only while the gate is open (see the module docs).
    pub gate: Option<Gate>,
}

/// Whether a gated job may sample now (`true`: open). A gate whose sender is gone stays
/// as it was last set.
pub type Gate = watch::Receiver<bool>;

impl Job {
    /// How many samples of this job may be in flight at once: enough that a target hanging
    /// for the whole timeout does not stop the cadence. The extra one absorbs the race at
    /// the boundary, where a tick falls due just before the oldest sample times out.
    pub fn max_in_flight(&self) -> usize {
        let interval = self.interval.as_millis().max(1);
        self.timeout.as_millis().div_ceil(interval).max(1) as usize + 1
    }
}

/// A change to the running jobs (a configuration change applied by the engine).
#[derive(Clone)]
pub enum Control {
    /// Start these jobs (their invariant indices are new).
    Start(Vec<Job>),
    /// Stop ticking the jobs of these invariants. Their samples in flight finish and are
    /// sent as usual.
    Stop(Vec<usize>),
}

/// Limits that apply across all jobs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most samples in flight across all invariants; ticks beyond it are missed.
    pub max_concurrency: usize,
    /// How long in-flight samples may still finish after shutdown starts; the rest are
    /// abandoned (neither success nor failure is recorded for them).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrency: 512,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// Runs all jobs until `shutdown` is cancelled, then waits up to the grace period for
/// in-flight samples. Events go to `events`; when it is closed the scheduler stops. Jobs
/// are started and stopped as `control` says, if given.
pub async fn run(
    jobs: Vec<Job>,
    limits: Limits,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    mut control: Option<mpsc::Receiver<Control>>,
) {
    let global = Arc::new(Semaphore::new(limits.max_concurrency.max(1)));
    let samples = TaskTracker::new();
    // Cancelled after the grace period to abandon samples that are still running.
    let abandon = CancellationToken::new();
    let mut tickers = tokio::task::JoinSet::new();
    // Per invariant index: what stops its job (a child of `shutdown`).
    let mut stops = std::collections::HashMap::new();
    let start = |jobs: Vec<Job>,
                 tickers: &mut tokio::task::JoinSet<()>,
                 stops: &mut std::collections::HashMap<usize, CancellationToken>| {
        for job in jobs {
            let stop = shutdown.child_token();
            stops.insert(job.invariant, stop.clone());
            tickers.spawn(tick_loop(
                job,
                global.clone(),
                samples.clone(),
                events.clone(),
                stop,
                abandon.clone(),
            ));
        }
    };
    start(jobs, &mut tickers, &mut stops);
    loop {
        tokio::select! {
            change = next_control(&mut control) => match change {
                Some(Control::Start(jobs)) => start(jobs, &mut tickers, &mut stops),
                Some(Control::Stop(indices)) => {
                    for index in indices {
                        if let Some(stop) = stops.remove(&index) {
                            stop.cancel();
                        }
                    }
                }
                None => control = None,
            },
            // Reaps the tasks of stopped jobs.
            Some(_) = tickers.join_next(), if !tickers.is_empty() => {}
            _ = shutdown.cancelled() => break,
            // Every job returns once the engine is gone: nothing more can be delivered.
            _ = events.closed() => break,
        }
    }
    while tickers.join_next().await.is_some() {}
    samples.close();
    if tokio::time::timeout(limits.shutdown_grace, samples.wait())
        .await
        .is_err()
    {
        tracing::debug!("abandoning samples still in flight at shutdown");
        abandon.cancel();
        samples.wait().await;
    }
}

async fn tick_loop(
    job: Job,
    global: Arc<Semaphore>,
    samples: TaskTracker,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    abandon: CancellationToken,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = job.max_in_flight();
    let phase = start_offset(job.interval);
    let start = Instant::now() + phase;
    let mut tick: u32 = 0;
    let mut gate = job.gate.clone();
    loop {
        if let Some(gate) = &mut gate
            && !*gate.borrow_and_update()
        {
            // Closed: nothing is sampled and nothing counts as missed until it opens.
            tokio::select! {
                open = gate.wait_for(|open| *open) => if open.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            tick = first_tick_after(start, job.interval, Instant::now());
        }
        let due = start + job.interval * tick;
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.cancelled() => return,
        }
        if gate.as_ref().is_some_and(|g| !*g.borrow()) {
            // Closed while waiting for this tick.
            continue;
        }
        // A stalled process (or a suspended VM) can wake us past several ticks. Those
        // ticks are counted as missed rather than fired in a burst.
        let late = Instant::now().saturating_duration_since(due);
        let skipped = (late.as_millis() / job.interval.as_millis().max(1)) as u32;
        for k in 0..skipped {
            let missed_at = wall_time_of(due + job.interval * k);
            if send(
                &events,
                Event::Missed {
                    invariant: job.invariant,
                    at: missed_at,
                },
            )
            .await
            .is_err()
            {
                return;
            }
        }
        tick = tick.saturating_add(skipped);

        let permit = if in_flight.load(Ordering::Acquire) < max_in_flight {
            global.clone().try_acquire_owned().ok()
        } else {
            None
        };
        match permit {
            None => {
                let missed = Event::Missed {
                    invariant: job.invariant,
                    at: Timestamp::now(),
                };
                if send(&events, missed).await.is_err() {
                    return;
                }
            }
            Some(permit) => {
                in_flight.fetch_add(1, Ordering::AcqRel);
                let guard = InFlight(in_flight.clone());
                let job = job.clone();
                let events = events.clone();
                let abandon = abandon.clone();
                samples.spawn(async move {
                    let _permit = permit;
                    let _guard = guard;
                    tokio::select! {
                        sample = take_sample(job.probe.as_ref(), job.timeout) => {
                            let _ = send(&events, Event::Sample { invariant: job.invariant, sample }).await;
                        }
                        _ = abandon.cancelled() => {}
                    }
                });
            }
        }
        tick = tick.saturating_add(1);
    }
}

/// The next control message; never resolves without a control channel.
async fn next_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The number of the first tick of a grid starting at `start` that falls strictly after
/// `now` (a job whose gate opens at `now` resumes there, on its own cadence).
fn first_tick_after(start: Instant, interval: Duration, now: Instant) -> u32 {
    if now < start {
        return 0;
    }
    let elapsed = now.duration_since(start).as_nanos();
    let interval = interval.as_nanos().max(1);
    u32::try_from(elapsed / interval + 1).unwrap_or(u32::MAX)
}

/// Invariants start at offsets on a 50 ms grid: spread enough that a file of 1 s
/// invariants does not fire in lock-step, coarse enough that many ticks share one wake-up
/// (200 invariants at 1 s wake the process 20 times a second, not 200).
const START_OFFSET_QUANTUM: Duration = Duration::from_millis(50);

/// A random start offset within the first interval, on the [`START_OFFSET_QUANTUM`] grid.
fn start_offset(interval: Duration) -> Duration {
    let slots = (interval.as_millis() / START_OFFSET_QUANTUM.as_millis()).max(1) as u32;
    START_OFFSET_QUANTUM * fastrand::u32(0..slots)
}

/// Decrements the in-flight count however the sample task ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn send(events: &mpsc::Sender<Event>, event: Event) -> Result<(), ()> {
    events.send(event).await.map_err(|_| ())
}

/// Converts a tokio instant to wall time by its distance from now.
fn wall_time_of(t: Instant) -> Timestamp {
    let now = Instant::now();
    let wall = Timestamp::now();
    if t <= now {
        Timestamp(wall.0 - now.duration_since(t).as_millis() as i64)
    } else {
        wall.plus(t.duration_since(now))
    }
}

/// Runs one probe observation: stamps the start, cuts it at `timeout`, and turns a panic
/// inside the probe into a failed sample instead of a dead task.
pub async fn take_sample(probe: &dyn Probe, timeout: Duration) -> Sample {
    let at = Timestamp::now();
    let started = Instant::now();
    let observation = observe_guarded(probe.observe(), timeout).await;
    Sample {
        at,
        latency: started.elapsed(),
        observation,
    }
}

async fn observe_guarded(
    observation: impl Future<Output = Observation>,
    timeout: Duration,
) -> Observation {
    match tokio::time::timeout(timeout, AssertUnwindSafe(observation).catch_unwind()).await {
        Ok(Ok(observation)) => observation,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!(panic = %what, "probe panicked; recorded as a failed sample (this is a bug, please report it)");
            Observation::Failed(ProbeError::new(
                ErrorClass::Panic,
                format!("probe panicked: {what}"),
            ))
        }
        Err(_) => Observation::Failed(ProbeError::new(
            ErrorClass::Timeout,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeFuture;

    struct AlwaysOk;

    impl Probe for AlwaysOk {
        fn observe(&self) -> ProbeFuture<'_> {
            Box::pin(async { Observation::Ok { value: None } })
        }
    }

    fn job(gate: Option<Gate>) -> Job {
        Job {
            invariant: 0,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            probe: Arc::new(AlwaysOk),
            gate,
        }
    }

    /// Counts samples and missed ticks received within `window` (tokio time).
    async fn count(events: &mut mpsc::Receiver<Event>, window: Duration) -> (u32, u32) {
        let until = Instant::now() + window;
        let (mut samples, mut missed) = (0, 0);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Sample { .. }) => samples += 1,
                    Some(Event::Missed { .. }) => missed += 1,
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        (samples, missed)
    }

    /// A gated job samples only while its gate is open, counts nothing as missed while it
    /// is closed, and resumes on its grid when it opens again.
    #[tokio::test(start_paused = true)]
    async fn a_gated_job_samples_only_while_its_gate_is_open() {
        let (open, gate) = watch::channel(false);
        let (tx, mut events) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let scheduler = tokio::spawn(run(
            vec![
                job(Some(gate)),
                Job {
                    invariant: 1,
                    ..job(None)
                },
            ],
            Limits::default(),
            tx,
            shutdown.clone(),
            None,
        ));
        // Closed: only the ungated job samples (one per second).
        let mut per_invariant = [0u32; 2];
        let until = Instant::now() + Duration::from_millis(5500);
        while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
            match event {
                Event::Sample { invariant, .. } => per_invariant[invariant] += 1,
                Event::Missed { .. } => panic!("nothing may be missed"),
            }
        }
        assert_eq!(per_invariant[0], 0);
        assert!((5..=6).contains(&per_invariant[1]), "{per_invariant:?}");

        open.send_replace(true);
        let (samples, missed) = count(&mut events, Duration::from_millis(10_500)).await;
        assert_eq!(missed, 0);
        assert!(
            (20..=22).contains(&samples),
            "both jobs for 10.5s: {samples}"
        );

        open.send_replace(false);
        // In-flight samples finish; then only the ungated job goes on.
        let (samples, missed) = count(&mut events, Duration::from_millis(20_500)).await;
        assert_eq!(missed, 0, "closed ticks are not missed ticks");
        assert!((20..=22).contains(&samples), "one job for 20.5s: {samples}");

        shutdown.cancel();
        scheduler.await.unwrap();
    }

    #[test]
    fn the_first_tick_after_a_gate_opens_is_on_the_grid() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(first_tick_after(start + second, second, start), 0);
        assert_eq!(first_tick_after(start, second, start), 1);
        assert_eq!(
            first_tick_after(start, second, start + Duration::from_millis(2500)),
            3
        );
        assert_eq!(first_tick_after(start, second, start + second * 4), 5);
    }

    /// Jobs started and stopped while running: the others keep their grid untouched.
    #[tokio::test(start_paused = true)]
    async fn jobs_start_and_stop_on_control_without_disturbing_the_others() {
        let (tx, mut events) = mpsc::channel(64);
        let (control, control_rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let scheduler = tokio::spawn(run(
            vec![job(None)],
            Limits::default(),
            tx,
            shutdown.clone(),
            Some(control_rx),
        ));
        let mut per_invariant = [0u32; 3];
        let collect = async |events: &mut mpsc::Receiver<Event>, ms: u64, counts: &mut [u32; 3]| {
            let until = Instant::now() + Duration::from_millis(ms);
            while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
                match event {
                    Event::Sample { invariant, .. } => counts[invariant] += 1,
                    Event::Missed { .. } => panic!("nothing may be missed"),
                }
            }
        };
        collect(&mut events, 5500, &mut per_invariant).await;
        control
            .send(Control::Start(vec![
                Job {
                    invariant: 1,
                    ..job(None)
                },
                Job {
                    invariant: 2,
                    ..job(None)
                },
            ]))
            .await
            .unwrap();
        collect(&mut events, 5000, &mut per_invariant).await;
        control.send(Control::Stop(vec![2])).await.unwrap();
        collect(&mut events, 5000, &mut per_invariant).await;
        // 15.5 s at 1/s for the first job, 10 s for the second, 5 s for the third.
        assert!((15..=16).contains(&per_invariant[0]), "{per_invariant:?}");
        assert!((9..=11).contains(&per_invariant[1]), "{per_invariant:?}");
        assert!((4..=6).contains(&per_invariant[2]), "{per_invariant:?}");
        shutdown.cancel();
        scheduler.await.unwrap();
    }
}
