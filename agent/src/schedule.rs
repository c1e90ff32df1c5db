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

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc};
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
}

impl Job {
    /// How many samples of this job may be in flight at once: enough that a target hanging
    /// for the whole timeout does not stop the cadence. The extra one absorbs the race at
    /// the boundary, where a tick falls due just before the oldest sample times out.
    pub fn max_in_flight(&self) -> usize {
        let interval = self.interval.as_millis().max(1);
        self.timeout.as_millis().div_ceil(interval).max(1) as usize + 1
    }
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
/// in-flight samples. Events go to `events`; when it is closed the scheduler stops.
pub async fn run(
    jobs: Vec<Job>,
    limits: Limits,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let global = Arc::new(Semaphore::new(limits.max_concurrency.max(1)));
    let samples = TaskTracker::new();
    // Cancelled after the grace period to abandon samples that are still running.
    let abandon = CancellationToken::new();
    let mut tickers = tokio::task::JoinSet::new();
    for job in jobs {
        tickers.spawn(tick_loop(
            job,
            global.clone(),
            samples.clone(),
            events.clone(),
            shutdown.clone(),
            abandon.clone(),
        ));
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
    loop {
        let due = start + job.interval * tick;
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.cancelled() => return,
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
