//! Export: the run's time series, pushed over OTLP/gRPC to an OpenTelemetry Collector
//! ([`otlp`]) and served for Prometheus on `/metrics` ([`prometheus`]).
//!
//! Both read the engine's report snapshots (the `watch` channel) and never call into the
//! engine; the probe duration histogram is recorded per sample by a
//! [`crate::engine::SampleObserver`] that only does atomic adds and an SDK record. The
//! series are defined once in [`series`]; attributes come only from the invariant file.
//! [`config`] merges flags with the OpenTelemetry environment variables. Under leader
//! election the cluster-scoped series go over OTLP under a resource of their own, by
//! whichever agent leads ([`cluster`]); on `/metrics` only the leader shows them.
//!
//! [`Exporters`] is what `run` starts after the engine exists and stops on the staged
//! shutdown, with a deadline.

pub mod cluster;
pub mod config;
pub mod otlp;
pub mod prometheus;
pub mod series;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::cluster::ClusterStream;
pub use self::config::RunIdentity;
use self::config::{ConfigErrors, ExportConfig, ProcessEnv};
use self::otlp::{DurationRecorder, OtlpExporter};
use self::prometheus::{Exposition, Readiness};
use self::series::DurationHistograms;
use crate::config::InvariantSet;
use crate::engine::{SampleObserver, Snapshots};
use crate::sample::Sample;

/// How long the final OTLP flush may take on shutdown; a hung collector is abandoned
/// after it, well inside the 2 s the final report has.
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(1);

/// Export flags (shared by `run` and `demo`). Each OTLP flag wins over the
/// OpenTelemetry environment variables named in its help.
#[derive(Clone, Debug, Default, Args)]
pub struct ExportArgs {
    /// OTLP/gRPC endpoint of an OpenTelemetry Collector, e.g. http://otel-collector:4317
    /// (https:// for TLS). Default: $OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, then
    /// $OTEL_EXPORTER_OTLP_ENDPOINT; with neither, OTLP export is off.
    #[arg(long, value_name = "URL", help_heading = "Export")]
    pub otlp_endpoint: Option<String>,
    /// Header sent with every export, KEY=VALUE (repeat for several); added to
    /// $OTEL_EXPORTER_OTLP_HEADERS / $OTEL_EXPORTER_OTLP_METRICS_HEADERS, winning per key.
    #[arg(
        long = "otlp-header",
        value_name = "KEY=VALUE",
        help_heading = "Export"
    )]
    pub otlp_headers: Vec<String>,
    /// PEM file with the CA certificate(s) that verify the collector (https endpoints).
    /// Default: $OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE, $OTEL_EXPORTER_OTLP_CERTIFICATE,
    /// else the system roots.
    #[arg(long, value_name = "FILE", help_heading = "Export")]
    pub otlp_certificate: Option<PathBuf>,
    /// PEM client certificate for mutual TLS. Default:
    /// $OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE, $OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE.
    #[arg(long, value_name = "FILE", help_heading = "Export")]
    pub otlp_client_certificate: Option<PathBuf>,
    /// PEM private key of the client certificate. Default:
    /// $OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY, $OTEL_EXPORTER_OTLP_CLIENT_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Export")]
    pub otlp_client_key: Option<PathBuf>,
    /// Limit on one export, retries included (e.g. 5s). Default:
    /// $OTEL_EXPORTER_OTLP_METRICS_TIMEOUT, $OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds), else 5s.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration, help_heading = "Export")]
    pub otlp_timeout: Option<Duration>,
    /// Time between OTLP exports (e.g. 10s). Default: $OTEL_METRIC_EXPORT_INTERVAL
    /// (milliseconds), else 10s.
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration, help_heading = "Export")]
    pub export_interval: Option<Duration>,
    /// The service.name resource attribute. Default: $OTEL_SERVICE_NAME, else invariant-agent.
    #[arg(long, value_name = "NAME", help_heading = "Export")]
    pub service_name: Option<String>,
    /// Extra resource attribute KEY=VALUE (repeat for several); wins over
    /// $OTEL_RESOURCE_ATTRIBUTES per key.
    #[arg(
        long = "resource-attribute",
        value_name = "KEY=VALUE",
        help_heading = "Export"
    )]
    pub resource_attributes: Vec<String>,
    /// The k8s.node.name resource attribute (the DaemonSet sets NODE_NAME from the
    /// downward API).
    #[arg(long, value_name = "NAME", env = "NODE_NAME", help_heading = "Export")]
    pub node_name: Option<String>,
    /// The k8s.pod.name resource attribute (downward API).
    #[arg(long, value_name = "NAME", env = "POD_NAME", help_heading = "Export")]
    pub pod_name: Option<String>,
    /// The k8s.namespace.name resource attribute (downward API).
    #[arg(
        long,
        value_name = "NAME",
        env = "POD_NAMESPACE",
        help_heading = "Export"
    )]
    pub pod_namespace: Option<String>,
    /// Serve /metrics (Prometheus/OpenMetrics), /healthz and /readyz on this address,
    /// e.g. 127.0.0.1:9464, or 0.0.0.0:9464 in a pod for the collector to scrape.
    /// Off by default.
    #[arg(
        long,
        value_name = "ADDR",
        env = "INVARIANT_AGENT_METRICS_LISTEN",
        help_heading = "Export"
    )]
    pub metrics_listen: Option<SocketAddr>,
}

/// Why export could not start. Export problems during the run are logged, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Flags or environment variables that cannot work.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The OTLP exporter could not be built.
    #[error(transparent)]
    Otlp(#[from] otlp::OtlpError),
    /// The metrics address could not be bound.
    #[error("cannot listen on --metrics-listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The exporters of one run.
pub struct Exporters {
    otlp: Option<OtlpExporter>,
    /// The cluster-scoped series' stream under leader election (OTLP only).
    cluster: Option<ClusterStream>,
    snapshots: Snapshots,
    recorder: Recorder,
    readiness: Readiness,
    server: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
    metrics_addr: Option<SocketAddr>,
}

impl Exporters {
    /// Resolves the settings (flags over environment), binds the metrics address and
    /// starts OTLP export. `run` is the report's run id and cluster name, so metrics and
    /// report join. Must be called inside a Tokio runtime.
    pub async fn start(
        args: &ExportArgs,
        set: &InvariantSet,
        run: &RunIdentity<'_>,
        snapshots: Snapshots,
    ) -> Result<Self, ExportError> {
        let config = ExportConfig::resolve(args, &ProcessEnv, run)?;
        Self::start_with(&config, set, snapshots).await
    }

    /// [`Exporters::start`] with settings already resolved.
    pub async fn start_with(
        config: &ExportConfig,
        set: &InvariantSet,
        snapshots: Snapshots,
    ) -> Result<Self, ExportError> {
        let identities = series::identities(set);
        // Bind first: a taken port is a start-up error, before anything else runs.
        let listener = match config.metrics_listen {
            Some(addr) => Some(
                prometheus::bind(addr)
                    .await
                    .map_err(|source| ExportError::Listen { addr, source })?,
            ),
            None => None,
        };

        let (otlp, otlp_recorder) = match &config.otlp {
            Some(otlp_config) => {
                let (exporter, recorder) = OtlpExporter::start(
                    otlp_config,
                    otlp::resource(&config.resource),
                    otlp::resource(&config.cluster_resource),
                    &identities,
                    snapshots.clone(),
                )?;
                tracing::info!(
                    endpoint = %otlp_config.endpoint,
                    from = otlp_config.endpoint_source,
                    interval = ?otlp_config.interval,
                    timeout = ?otlp_config.timeout,
                    headers = otlp_config.headers.len(),
                    tls = otlp_config.endpoint.starts_with("https://"),
                    "OTLP metric export on"
                );
                (Some(exporter), Some(recorder))
            }
            None => {
                tracing::info!(
                    "OTLP metric export is off: no endpoint configured (set OTEL_EXPORTER_OTLP_ENDPOINT or --otlp-endpoint), or OTEL_SDK_DISABLED=true"
                );
                (None, None)
            }
        };

        let readiness = Readiness::default();
        let (server, durations, metrics_addr) = match listener {
            Some(listener) => {
                let durations = Arc::new(DurationHistograms::new(identities.len()));
                let exposition = Arc::new(Exposition::new(
                    &identities,
                    snapshots.clone(),
                    durations.clone(),
                    &config.resource,
                ));
                let addr = listener.local_addr().ok();
                let stop = CancellationToken::new();
                let task = prometheus::serve(listener, exposition, readiness.clone(), stop.clone());
                if let Some(addr) = addr {
                    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
                }
                (Some((task, stop)), Some(durations), addr)
            }
            None => (None, None, None),
        };

        Ok(Exporters {
            otlp,
            cluster: None,
            snapshots,
            recorder: Recorder {
                otlp: otlp_recorder,
                durations,
            },
            readiness,
            server,
            metrics_addr,
        })
    }

    /// The observer that records probe durations, if any exporter needs them. Give it
    /// to [`crate::engine::Engine::observe`].
    pub fn sample_observer(&self) -> Option<Box<dyn SampleObserver>> {
        let r = &self.recorder;
        (r.otlp.is_some() || r.durations.is_some()).then(|| Box::new(r.clone()) as _)
    }

    /// Leader election is on and `leading` says whether this agent leads: from now on
    /// the cluster-scoped series go over OTLP under the cluster resource, exported only
    /// while this agent leads (see [`cluster`]). Call before the election starts.
    pub fn follow_leadership(&mut self, leading: watch::Receiver<bool>) {
        if let Some(otlp) = &self.otlp
            && self.cluster.is_none()
        {
            self.cluster = Some(ClusterStream::follow(
                otlp.cluster_pipelines(),
                leading,
                self.snapshots.clone(),
            ));
        }
    }

    /// Sets what `/readyz` answers: ready once probes are scheduled, not ready again once
    /// the run is stopping.
    pub fn set_ready(&self, ready: bool) {
        self.readiness.set(ready);
    }

    /// The bound metrics address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Flushes the final values to the collector (giving up after `deadline`) and stops
    /// the metrics server. Call once the engine has published its final snapshot.
    pub async fn shutdown(self, deadline: Duration) {
        tokio::join!(
            async {
                if let Some(otlp) = self.otlp {
                    otlp.shutdown(deadline).await;
                }
            },
            async {
                if let Some(cluster) = self.cluster {
                    cluster.shutdown(deadline).await;
                }
            },
        );
        if let Some((task, stop)) = self.server {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
        }
    }
}

/// Records each sample's duration for the exporters that are on.
#[derive(Clone)]
struct Recorder {
    otlp: Option<DurationRecorder>,
    durations: Option<Arc<DurationHistograms>>,
}

impl SampleObserver for Recorder {
    fn on_sample(&mut self, invariant: usize, sample: &Sample) {
        if let Some(otlp) = &self.otlp {
            otlp.record(invariant, sample);
        }
        if let Some(durations) = &self.durations {
            durations.record(invariant, sample.outcome(), sample.latency.as_secs_f64());
        }
    }

    fn on_invariants_changed(
        &mut self,
        started: &[(usize, crate::config::Invariant)],
        _stopped: &[usize],
    ) {
        // Series of stopped invariants end by themselves: their report entries are
        // retired, which `series::exported` leaves out.
        let Some(last) = started.iter().map(|(index, _)| *index).max() else {
            return;
        };
        if let Some(otlp) = &self.otlp {
            let set = InvariantSet {
                invariants: started.iter().map(|(_, i)| i.clone()).collect(),
            };
            otlp.add_invariants(&series::identities(&set));
        }
        if let Some(durations) = &self.durations {
            durations.grow(last + 1);
        }
    }
}

/// Fixtures shared by the export modules' tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::time::Duration;

    use crate::config::InvariantSet;
    use crate::engine::{Engine, RunMeta};
    use crate::sample::{Observation, Sample, Timestamp};

    /// The invariants of `yaml` and an engine for them under leader election, not leading.
    pub fn engine_under_election(yaml: &str) -> (InvariantSet, Engine) {
        let set = crate::config::parse_str("t.yaml", yaml).unwrap();
        let mut engine = Engine::new(
            &set,
            RunMeta {
                id: "r".into(),
                started_at: Timestamp(0),
                config_files: vec![],
                node: None,
            },
        );
        let (_unused, leading) = tokio::sync::watch::channel(false);
        engine.follow_leadership("ns/l", "me", leading);
        (set, engine)
    }

    /// A good sample started at `at` (ms), 3 ms long.
    pub fn ok_sample(at: i64) -> Sample {
        Sample {
            at: Timestamp(at),
            latency: Duration::from_millis(3),
            observation: Observation::Ok { value: None },
        }
    }
}
