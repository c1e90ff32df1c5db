//! The `run` command's wiring: probes, scheduler, engine and report writer, from start
//! to a final report on shutdown.
//!
//! Shutdown is staged so nothing collected is lost: stop ticking; give in-flight samples a
//! short grace; the engine drains every queued sample and command and builds the final
//! report; API tailers receive `RunEnded`; then, each on its own deadline and at the same
//! time, the writer puts the report on disk, the exporters flush, the API server turns
//! NOT_SERVING and closes, and a leader releases its Lease (so another agent takes the
//! cluster-scoped invariants over at once). The whole sequence is bounded (about 2 s with
//! defaults).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::feed::Feed;
use crate::api::server::{ApiContext, ApiServer};
use crate::config::InvariantSet;
use crate::engine::{self, Command, Engine, RunMeta};
use crate::report::{self, REPORT_FILE, Report};
use crate::sample::Timestamp;
use crate::schedule::{self, Job, Limits};

/// Everything `run` needs, already validated.
pub struct RunOptions {
    /// The invariants to watch.
    pub set: InvariantSet,
    /// Names of the invariant files, for the report.
    pub config_files: Vec<String>,
    /// Directory for `report.json`.
    pub report_dir: PathBuf,
    /// Stop after this long; run until a signal when `None`.
    pub duration: Option<Duration>,
    /// How often the report is checkpointed to disk.
    pub checkpoint_interval: Duration,
    /// Concurrency and shutdown limits.
    pub limits: Limits,
    /// OTLP export and `/metrics` settings (resolved against the environment at start).
    pub export: crate::export::ExportArgs,
    /// Cluster name, JUnit mode and test timing for the report.
    pub report: crate::report::cli::ReportRunArgs,
    /// The gRPC API's address, token, TLS and tail settings.
    pub api: crate::api::ApiArgs,
    /// Kubernetes credentials, used only when an invariant has a Kubernetes probe (or for
    /// leader election).
    pub kube: crate::kube::KubeArgs,
    /// Which scopes of invariants this agent runs; the others are left out of `set`
    /// before anything starts (a reload must apply it again).
    pub scope: crate::config::ScopeSelection,
    /// Leader election: whether only the agent holding a Lease runs cluster-scoped
    /// invariants.
    pub leader_elect: crate::kube::lease::LeaderElectArgs,
    /// Where the invariants came from, to apply changes while running; `None` when they
    /// cannot change (the demo's embedded file).
    pub reload: Option<crate::reload::ReloadOptions>,
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A probe could not be built (for example a CA file that is not PEM).
    #[error("invariant {invariant} ({source_location}): {message}")]
    Probe {
        /// The invariant's name.
        invariant: String,
        /// Where it is declared.
        source_location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The engine task died (a bug); the last checkpoint on disk is the report.
    #[error(
        "the evaluation engine stopped unexpectedly ({0}); the last report checkpoint on disk is the best record of this run"
    )]
    Engine(String),
    /// Export settings that cannot work, or a metrics address that cannot be bound.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// API settings that cannot work, or an API address that cannot be bound.
    #[error(transparent)]
    Api(#[from] crate::api::server::ApiError),
    /// Kubernetes probes are configured but no usable credentials were found.
    #[error(transparent)]
    Kube(#[from] crate::kube::ClientError),
    /// Leader election was asked for but cannot work.
    #[error(transparent)]
    LeaderElection(#[from] crate::kube::lease::ElectionError),
    /// `--resume require`, and there is no checkpoint of this run that can be resumed.
    #[error(transparent)]
    Resume(#[from] report::resume::ResumeError),
}

/// When, after sampling starts, the code that only started the run is released.
const RELEASE_STARTUP_CODE_AFTER: Duration = Duration::from_secs(10);

/// How long the API may take to close after the run ended (inside the 2 s budget).
const API_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(1);

/// Runs until `stop` resolves or the duration passes, then returns the final report.
pub async fn run(
    mut options: RunOptions,
    stop: impl Future<Output = ()>,
) -> Result<Report, RunError> {
    select_scope(&mut options);
    let mut jobs = Vec::with_capacity(options.set.invariants.len());
    let probe_context = crate::probe::ProbeContext::new(&options.set, &options.kube).await?;
    // The run id: configured, else (under leader election) the one on the Lease that
    // every agent shares, else generated (report::configured_run_id has the rule).
    let configured_run_id = report::configured_run_id(options.report.run_id.as_deref());
    let mut election = crate::kube::lease::for_run(
        &options.leader_elect,
        &options.set,
        probe_context.kube(),
        &options.kube,
        configured_run_id.as_ref().map(|(id, _)| id.as_str()),
    )
    .await?;
    let leading = election.as_ref().map(|e| e.leading());
    for (index, invariant) in options.set.invariants.iter().enumerate() {
        jobs.push(job(index, invariant, &probe_context, leading.as_ref())?);
    }
    // From before sampling starts: an unhandled SIGHUP would end the process.
    let hangup = options
        .reload
        .as_ref()
        .and_then(|_| crate::reload::listen_for_hangup());

    let started_at = Timestamp::now();
    let context = report::RunContext::from_env(options.report.cluster.clone());
    let node = report::node_name_from_env();
    let election_run_id = election.as_ref().and_then(|e| e.run_id());
    let (run_id, run_id_from) = match (configured_run_id, election_run_id) {
        (Some((id, from)), _) => (id, from),
        (None, Some(id)) => (id.to_string(), "leader election"),
        (None, None) => (
            report::generated_run_id(started_at),
            report::resume::GENERATED,
        ),
    };
    // Before anything writes to the report directory: an unfinished checkpoint of this
    // run there is resumed, so every report of this agent covers the whole run.
    let identity = report::resume::Identity {
        run_id: &run_id,
        run_id_from,
        node: node.as_deref(),
        context: &context,
        invariants: &options.set.invariants,
    };
    let resumed = report::resume::prepare(
        &options.report_dir,
        &options.report.resume,
        &identity,
        started_at,
    )?
    .map(Arc::new);
    let id = resumed.as_ref().map_or(run_id, |r| r.run_id().to_string());
    let meta = RunMeta {
        id,
        started_at,
        config_files: options.config_files.clone(),
        node,
    };
    let report_path = options.report_dir.join(REPORT_FILE);
    tracing::info!(
        run_id = %meta.id,
        run_id_from,
        invariants = jobs.len(),
        report = %report_path.display(),
        "starting run"
    );

    let (snapshots_tx, snapshots) = watch::channel(None);
    let (commands_tx, commands_rx) = mpsc::channel(1024);
    let (feed, api) = start_api(
        &options,
        &meta,
        &context,
        &commands_tx,
        &snapshots,
        resumed.clone(),
    )
    .await?;
    // Export settings are checked and the metrics address bound before sampling starts;
    // the run id is the report's, so metrics and report join.
    let run_identity = crate::export::RunIdentity {
        run_id: &meta.id,
        cluster: options.report.cluster.as_deref(),
    };
    let mut exporters = crate::export::Exporters::start(
        &options.export,
        &options.set,
        &run_identity,
        snapshots.clone(),
    )
    .await?;
    let writer = report::writer::spawn_with(
        options.report_dir.clone(),
        options.checkpoint_interval,
        snapshots.clone(),
        report::writer::WriterOptions {
            junit_mode: options.report.junit_mode,
            resumed: resumed.clone(),
        },
    );
    // Room for a few seconds of samples from every invariant; the engine is much faster
    // than probes, so a full queue only briefly delays sample tasks, never probes' timing.
    let (events_tx, events_rx) = mpsc::channel(4096.max(jobs.len() * 4));
    let mut engine = Engine::new(&options.set, meta);
    engine.set_context(context);
    if let Some(observer) = exporters.sample_observer() {
        engine.observe(observer);
    }
    if let Some(feed) = &feed {
        engine.observe(Box::new(feed.clone()));
    }
    if let Some(election) = &mut election {
        engine.follow_leadership(election.lease(), election.identity(), election.leading());
        exporters.follow_leadership(election.leading());
        election.start();
    }
    let engine_task = tokio::spawn(engine::run(engine, events_rx, commands_rx, snapshots_tx));

    let shutdown = CancellationToken::new();
    let (control_tx, control_rx) = mpsc::channel(16);
    let scheduler = tokio::spawn(schedule::run(
        jobs,
        options.limits,
        events_tx,
        shutdown.clone(),
        Some(control_rx),
    ));
    // By now the run is set up and running; the code that only started it need not stay
    // resident (see `process`). The delay lets the first samples and the first
    // checkpoint run first, so the code they keep using is mapped back once, not twice.
    let release_startup_code = tokio::spawn(async {
        tokio::time::sleep(RELEASE_STARTUP_CODE_AFTER).await;
        // It reads /proc/self/smaps: off the runtime thread the engine and probes share.
        if let Ok(resident) =
            tokio::task::spawn_blocking(crate::process::release_startup_code).await
        {
            tracing::debug!(bytes = resident, "released the start-up code's pages");
        }
    });
    let stop_reloading = CancellationToken::new();
    let reloader = options.reload.clone().map(|reload| {
        let election = match (&leading, options.leader_elect.leader_elect) {
            (Some(leading), _) => crate::reload::Election::On(leading.clone()),
            (None, true) => crate::reload::Election::NotStarted,
            (None, false) => crate::reload::Election::Off,
        };
        let reloader = crate::reload::Reloader {
            options: reload,
            running: options.set.invariants.iter().cloned().enumerate().collect(),
            probes: probe_context.clone(),
            kube: options.kube.clone(),
            election,
            commands: commands_tx.clone(),
            control: control_tx.clone(),
        };
        tokio::spawn(reloader.run(hangup, stop_reloading.clone()))
    });
    drop(control_tx);
    exporters.set_ready(true);

    let duration = options.duration;
    let deadline = async move {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop => tracing::info!("stop requested; finishing the run"),
        _ = deadline => tracing::info!("run duration reached; finishing the run"),
    }
    exporters.set_ready(false);
    release_startup_code.abort();
    // No configuration change is applied once the run is finishing.
    stop_reloading.cancel();
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    // Test timing written by the suite as it ended goes into the final report.
    send_test_timing(&options.report.tests_from, &commands_tx).await;
    drop(commands_tx);
    shutdown.cancel();
    let _ = scheduler.await;
    // The engine has no fallible paths; if it died anyway (a bug), the last checkpoint on
    // disk stays the best record of the run.
    let report = engine_task
        .await
        .map_err(|e| RunError::Engine(e.to_string()))?;
    if let Some(feed) = &feed {
        feed.end();
    }
    // The final snapshot is published: flush it to the collector while the report is
    // written and the API closes, each on its own deadline.
    // Sampling has stopped: hand the Lease over (released at once, so failover takes
    // one round of the next agent instead of the lease duration).
    let (written, (), (), ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), writer),
        exporters.shutdown(crate::export::FLUSH_DEADLINE),
        async {
            if let Some(api) = api {
                api.shutdown(API_SHUTDOWN_DEADLINE).await;
            }
        },
        async {
            if let Some(election) = election {
                election.stop(crate::kube::lease::RELEASE_DEADLINE).await;
            }
        },
    );
    if written.is_err() {
        tracing::error!(report = %report_path.display(), "writing the final report took longer than 2s; giving up on it");
    }
    Ok(Arc::unwrap_or_clone(report::resume::whole_run(
        resumed.as_deref(),
        report,
    )))
}

/// The scheduler's job for `invariant` at `index`: its probe built with what `probes`
/// shares; under leader election (`leading`), a cluster-scoped one runs only while this
/// agent leads.
pub(crate) fn job(
    index: usize,
    invariant: &crate::config::Invariant,
    probes: &crate::probe::ProbeContext,
    leading: Option<&schedule::Gate>,
) -> Result<Job, RunError> {
    let probe = crate::probe::build(&invariant.probe, probes).map_err(|e| RunError::Probe {
        invariant: invariant.name.clone(),
        source_location: invariant.source.clone(),
        message: e.to_string(),
    })?;
    Ok(Job {
        invariant: index,
        interval: invariant.interval,
        timeout: invariant.timeout,
        probe,
        gate: leading
            .filter(|_| invariant.scope == crate::config::spec::Scope::Cluster)
            .cloned(),
    })
}

/// Leaves out the invariants `--scope` does not select, and says what this agent runs.
fn select_scope(options: &mut RunOptions) {
    let scope = options.scope;
    let left_out = scope.apply(&mut options.set);
    let kept = options.set.invariants.len();
    if scope == crate::config::ScopeSelection::All {
        return;
    }
    if kept == 0 {
        tracing::warn!(
            scope = scope.as_str(),
            left_out,
            "--scope {}: no invariant in the files has this scope, so this agent samples nothing",
            scope.as_str()
        );
    } else {
        tracing::info!(
            scope = scope.as_str(),
            invariants = kept,
            left_out,
            "--scope {}: running only the {} invariants; the others are left to agents with another --scope",
            scope.as_str(),
            scope.as_str()
        );
    }
}

/// Starts the gRPC API when `--grpc-listen` is given (binding before sampling starts, like
/// the metrics address), with the feed the engine will publish to.
async fn start_api(
    options: &RunOptions,
    meta: &RunMeta,
    context: &report::RunContext,
    commands: &mpsc::Sender<Command>,
    snapshots: &engine::Snapshots,
    resumed: Option<Arc<report::resume::Resumed>>,
) -> Result<(Option<Feed>, Option<ApiServer>), RunError> {
    if options.api.grpc_listen.is_none() {
        return Ok((None, None));
    }
    let feed = Feed::new(
        &options.set.invariants,
        crate::api::convert::run_info(meta, context),
        options.api.tail_history as usize,
        options.api.tail_buffer as usize,
    );
    let api_context = ApiContext {
        feed: feed.clone(),
        commands: commands.clone(),
        snapshots: snapshots.clone(),
        junit_mode: options.report.junit_mode,
        resumed,
    };
    Ok(match ApiServer::start(&options.api, api_context).await? {
        Some(api) => (Some(feed), Some(api)),
        // The demo's default address was taken: no API, and nothing to publish to.
        None => (None, None),
    })
}

/// Reads the Ginkgo JSON reports given with `--tests-from` and hands their specs to the
/// engine. A file that is missing or unreadable is logged, never fatal: the report is
/// still written, without that timing.
async fn send_test_timing(files: &[PathBuf], commands: &mpsc::Sender<Command>) {
    for file in files {
        match report::ginkgo::read(file) {
            Ok(list) => {
                tracing::info!(file = %file.display(), annotations = list.len(), "read test timing");
                for a in list {
                    if commands.send(Command::Annotate(a, None)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "test timing not added to the report"),
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
