//! OTLP/gRPC push to an OpenTelemetry Collector with the OpenTelemetry SDK.
//!
//! A [`Pipeline`] is one `SdkMeterProvider` with a periodic reader (its own thread) and
//! the `opentelemetry-otlp` tonic exporter, for one resource. The agent's pipeline runs
//! for the whole run under this agent's resource; under leader election the
//! cluster-scoped invariants leave it for the cluster stream, one pipeline per leadership
//! term under the cluster resource ([`ClusterPipelines`], driven by
//! [`super::cluster`]); both share one gRPC channel. Every series except the probe duration histogram
//! is an *observable* instrument whose callback reads the newest report snapshot, so the
//! engine is never called from here and counters are the engine's cumulative totals: an
//! export that fails (collector down, restarting, hung) loses nothing that the next
//! successful export does not carry. The histogram is recorded per sample by a
//! [`crate::engine::SampleObserver`] and is cumulative too. Only intermediate gauge values
//! (state, value, availability between two successful exports) are lost in an outage.
//!
//! Failure handling: each export is bounded by the configured timeout with the
//! [`retry_policy`]; a failed export is logged once (and its recovery once) and retried at
//! the next interval; memory stays bounded because the SDK keeps one cumulative data point
//! per series and sends one request at a time. Shutdown runs the final collect-and-export
//! on a separate thread and gives up at its deadline, so a hung collector cannot hold the
//! agent's exit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{
    Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality,
};

use super::config::OtlpConfig;
use super::series::{
    self, ATTR_OUTCOME, Counters, DURATION_BOUNDS, DURATION_OUTCOMES, Identity, Monotonic, Point,
    SAMPLE_OUTCOMES,
};
use crate::engine::Snapshots;
use crate::report::Report;
use crate::sample::{Sample, Timestamp};

/// The instrumentation scope name of every metric.
pub const SCOPE: &str = "invariant-agent";

/// The retry policy of one export: up to 3 retries after 100 ms, 200 ms, 400 ms (plus up
/// to 100 ms jitter), only for retryable gRPC codes (UNAVAILABLE, RESOURCE_EXHAUSTED with
/// retry info, ...), never beyond the export timeout. A failed export is not queued: the
/// next interval's export carries the same cumulative totals.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(3)
        .with_initial_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(1600))
        .with_max_jitter(Duration::from_millis(100))
}

/// Why the OTLP exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint or TLS material was refused by the transport.
    #[error("OTLP endpoint {endpoint}: {message}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
    /// The exporter refused its configuration (e.g. an unsupported compression).
    #[error("OTLP exporter: {0}")]
    Build(String),
}

/// The resource every metric is attached to.
pub fn resource(attributes: &[(String, String)]) -> Resource {
    Resource::builder_empty()
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_attributes(
            attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// A running OTLP exporter: this agent's pipeline, and what the cluster stream's
/// pipelines are built from (see [`super::cluster`]).
pub struct OtlpExporter {
    agent: Pipeline,
    cluster: Arc<ClusterPipelines>,
}

impl OtlpExporter {
    /// Connects lazily to the collector (nothing is sent before the first interval; an
    /// absent collector is not an error) and registers the instruments: this agent's
    /// series under `resource`; under leader election the cluster-scoped ones go under
    /// `cluster_resource` instead, by [`OtlpExporter::cluster_pipelines`]. Must be called
    /// inside a Tokio runtime: the gRPC channel lives on it.
    pub fn start(
        config: &OtlpConfig,
        resource: Resource,
        cluster_resource: Resource,
        identities: &[Identity],
        snapshots: Snapshots,
    ) -> Result<(Self, DurationRecorder), OtlpError> {
        let channel = channel(config)?;
        let attrs = Arc::new(RwLock::new(Attributes::new(identities)));
        let routing = Arc::new(ClusterRouting::default());
        let exporter = metric_exporter(config, channel.clone())?;
        let source = Source::new(
            snapshots.clone(),
            attrs.clone(),
            routing.clone(),
            Carries::Agent,
        );
        let (provider, instruments) = provider_for(exporter, config.interval, resource, source);
        let recorder = instruments.recorder();
        let agent = Pipeline {
            provider: Some(provider),
            _instruments: instruments,
            endpoint: config.endpoint.clone(),
            series: "this agent's",
        };
        let cluster = Arc::new(ClusterPipelines {
            config: config.clone(),
            channel,
            resource: cluster_resource,
            snapshots,
            attrs,
            routing,
        });
        Ok((OtlpExporter { agent, cluster }, recorder))
    }

    /// What the cluster stream builds its pipelines from.
    pub fn cluster_pipelines(&self) -> Arc<ClusterPipelines> {
        self.cluster.clone()
    }

    /// Collects the final values and exports them, giving up after `deadline`. Call after
    /// the engine published its final snapshot, so the flush carries the final totals.
    pub async fn shutdown(self, deadline: Duration) {
        self.agent.shutdown(deadline).await;
    }
}

/// One meter provider exporting one resource's series until shut down: this agent's
/// for the whole run, or the cluster stream's for one leadership term.
pub struct Pipeline {
    /// `None` once shut down.
    provider: Option<SdkMeterProvider>,
    /// Kept so the callbacks stay registered for the provider's life.
    _instruments: Instruments,
    endpoint: String,
    /// Which series, for messages: "this agent's" or "cluster-scoped".
    series: &'static str,
}

impl Pipeline {
    /// Collects the final values and exports them, giving up after `deadline`.
    pub async fn shutdown(mut self, deadline: Duration) {
        let endpoint = std::mem::take(&mut self.endpoint);
        let series = self.series;
        let Some(provider) = self.provider.take() else {
            return;
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // A plain thread, not spawn_blocking: if the collector hangs, nothing (not even
        // dropping the runtime) waits for it.
        let spawned = std::thread::Builder::new()
            .name("otlp-shutdown".into())
            .spawn(move || {
                let _ = done_tx.send(provider.shutdown());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, series, "cannot start the OTLP flush; final metric values not exported");
            return;
        }
        match tokio::time::timeout(deadline, done_rx).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(endpoint = %endpoint, series, "final metric values flushed to the collector")
            }
            Ok(Ok(Err(e))) => tracing::warn!(
                endpoint = %endpoint, series, error = %e,
                "final OTLP export failed; the collector keeps the values of the last successful export"
            ),
            Ok(Err(_)) => {
                tracing::warn!(endpoint = %endpoint, series, "OTLP flush ended without a result")
            }
            Err(_) => tracing::warn!(
                endpoint = %endpoint, series, deadline = ?deadline,
                "the collector did not take the final export in time; giving up on it"
            ),
        }
    }
}

impl Drop for Pipeline {
    /// Dropped without [`Pipeline::shutdown`] (a run that failed): the SDK's own drop
    /// would flush synchronously on this thread, so hand the provider to a thread that
    /// nothing waits for.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = std::thread::Builder::new()
                .name("otlp-drop".into())
                .spawn(move || {
                    let _ = provider.shutdown();
                });
        }
    }
}

/// Builds the cluster stream's pipelines, one per leadership term: the agent's collector
/// settings and gRPC channel, the cluster resource, cluster-scoped invariants only.
pub struct ClusterPipelines {
    config: OtlpConfig,
    channel: tonic::transport::Channel,
    resource: Resource,
    snapshots: Snapshots,
    attrs: SharedAttributes,
    routing: Arc<ClusterRouting>,
}

impl ClusterPipelines {
    /// From now on this agent's own pipeline leaves the cluster-scoped series (and
    /// their probe durations) to the cluster stream. Called once, when leader election
    /// is on.
    pub fn take_over_cluster_series(&self) {
        self.routing.elected.store(true, Ordering::Relaxed);
    }

    /// The counters of every invariant in `report`, in file order (zero for an entry
    /// that does not line up): where a term that starts now counts from.
    pub fn counters(&self, report: &Report) -> Vec<Counters> {
        read_attrs(&self.attrs)
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                report
                    .invariants
                    .get(i)
                    .filter(|entry| entry.name == *name)
                    .map(|entry| Point::from_report(entry).counters())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Starts a term: a new provider (so a new start time: backends see a new cumulative
    /// stream of the same series) exporting the cluster-scoped invariants counted from
    /// `baseline`, and taking their probe durations from now on.
    pub fn start_term(&self, baseline: Vec<Counters>) -> Result<Pipeline, OtlpError> {
        let exporter = metric_exporter(&self.config, self.channel.clone())?;
        let source = Source::new(
            self.snapshots.clone(),
            self.attrs.clone(),
            self.routing.clone(),
            Carries::ClusterTerm { baseline },
        );
        let (provider, instruments) = provider_for(
            exporter,
            self.config.interval,
            self.resource.clone(),
            source,
        );
        self.routing
            .begin(instruments.duration.clone(), &self.attrs);
        Ok(Pipeline {
            provider: Some(provider),
            _instruments: instruments,
            endpoint: self.config.endpoint.clone(),
            series: "cluster-scoped",
        })
    }

    /// Ends a term: probe durations stop going to it, and its final values are flushed
    /// (giving up after `deadline`).
    pub async fn end_term(&self, term: Pipeline, deadline: Duration) {
        self.routing.end(Timestamp::now());
        term.shutdown(deadline).await;
    }
}

/// The OTLP metric exporter with the agent's settings, on `channel`, logging failures.
fn metric_exporter(
    config: &OtlpConfig,
    channel: tonic::transport::Channel,
) -> Result<LoggingExporter<opentelemetry_otlp::MetricExporter>, OtlpError> {
    let headers = Arc::new(metadata(&config.headers));
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(config.timeout)
        .with_retry_policy(retry_policy())
        .with_interceptor(move |mut request: tonic::Request<()>| {
            for (key, value) in headers.iter() {
                request.metadata_mut().insert(key.clone(), value.clone());
            }
            Ok(request)
        })
        .with_temporality(Temporality::Cumulative)
        .build()
        .map_err(|e| OtlpError::Build(e.to_string()))?;
    Ok(LoggingExporter::new(exporter, config.endpoint.clone()))
}

/// Builds the gRPC channel: per-request and connect timeouts, TLS for `https`.
fn channel(config: &OtlpConfig) -> Result<tonic::transport::Channel, OtlpError> {
    let transport = |message: String| OtlpError::Transport {
        endpoint: config.endpoint.clone(),
        message,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| transport(e.to_string()))?
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .tcp_keepalive(Some(Duration::from_secs(30)));
    if config.endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &config.tls.ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &config.tls.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| transport(format!("TLS: {}", source_chain(&e))))?;
    }
    Ok(endpoint.connect_lazy())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

type Metadata = Vec<(
    tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
)>;

/// Headers as gRPC metadata (checked at config time; anything invalid is skipped here).
fn metadata(headers: &[(String, String)]) -> Metadata {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).ok()?;
            let value = tonic::metadata::MetadataValue::try_from(v.as_str()).ok()?;
            Some((key, value))
        })
        .collect()
}

/// Invariants configuration changes may add to a run beyond its first set before the
/// SDK would fold their series into the overflow series.
const RELOAD_HEADROOM: usize = 256;

/// A meter provider exporting this agent's series through `exporter` every `interval`,
/// with the agent's instruments registered; used by the benchmarks with an in-memory
/// exporter.
pub fn provider_with<E: PushMetricExporter>(
    exporter: E,
    interval: Duration,
    resource: Resource,
    identities: &[Identity],
    snapshots: Snapshots,
) -> (SdkMeterProvider, Instruments) {
    let source = Source::new(
        snapshots,
        Arc::new(RwLock::new(Attributes::new(identities))),
        Arc::new(ClusterRouting::default()),
        Carries::Agent,
    );
    provider_for(exporter, interval, resource, source)
}

/// A meter provider exporting the series of `source` through `exporter`.
fn provider_for<E: PushMetricExporter>(
    exporter: E,
    interval: Duration,
    resource: Resource,
    source: Source,
) -> (SdkMeterProvider, Instruments) {
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    // The SDK folds series beyond 2000 per instrument into an overflow series; the
    // invariant file bounds ours, so make room for all of them, and for invariants that
    // configuration changes add while running.
    let limit =
        (read_attrs(&source.attrs).names.len() + RELOAD_HEADROOM) * SAMPLE_OUTCOMES.len() + 16;
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .with_view(move |_: &Instrument| {
            Stream::builder().with_cardinality_limit(limit).build().ok()
        })
        .build();
    let meter = provider.meter_with_scope(
        InstrumentationScope::builder(SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    let instruments = Instruments::register(&meter, source);
    (provider, instruments)
}

/// Precomputed attribute sets, so callbacks and recording never build strings.
struct Attributes {
    /// Per invariant: `invariant`, `owner`, labels.
    base: Vec<Vec<KeyValue>>,
    /// Per invariant and [`SAMPLE_OUTCOMES`] entry: base plus `outcome`.
    outcomes: Vec<[Vec<KeyValue>; 4]>,
    /// Invariant names, to check snapshots line up.
    names: Vec<String>,
    /// Per invariant: whether it is cluster-scoped.
    cluster_scoped: Vec<bool>,
}

impl Attributes {
    fn new(identities: &[Identity]) -> Self {
        let mut attributes = Attributes {
            base: Vec::new(),
            outcomes: Vec::new(),
            names: Vec::new(),
            cluster_scoped: Vec::new(),
        };
        attributes.extend(identities);
        attributes
    }

    /// Appends the attribute sets of `identities` (invariants a configuration change
    /// started).
    fn extend(&mut self, identities: &[Identity]) {
        let base: Vec<Vec<KeyValue>> = identities
            .iter()
            .map(|id| {
                id.attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .collect()
            })
            .collect();
        let outcomes: Vec<_> = base
            .iter()
            .map(|b| {
                SAMPLE_OUTCOMES.map(|outcome| {
                    let mut attrs = b.clone();
                    attrs.push(KeyValue::new(ATTR_OUTCOME, outcome));
                    attrs
                })
            })
            .collect();
        self.base.extend(base);
        self.outcomes.extend(outcomes);
        self.names.extend(identities.iter().map(|i| i.name.clone()));
        self.cluster_scoped
            .extend(identities.iter().map(|i| i.cluster_scoped));
    }

    fn cluster_scoped(&self, invariant: usize) -> bool {
        self.cluster_scoped.get(invariant).copied().unwrap_or(false)
    }
}

/// The attribute sets, shared by this agent's pipeline and the cluster stream's terms;
/// grows when a configuration change starts invariants, otherwise only read.
type SharedAttributes = Arc<RwLock<Attributes>>;

/// Reads shared attribute sets. Every update is whole, so a panic elsewhere cannot leave
/// them half-written: a poisoned lock is still read.
fn read_attrs(attrs: &SharedAttributes) -> RwLockReadGuard<'_, Attributes> {
    attrs.read().unwrap_or_else(PoisonError::into_inner)
}

/// Which series a pipeline exports.
enum Carries {
    /// This agent's: every invariant it exports now (see [`series::exported`]), except
    /// the cluster-scoped ones once the cluster stream carries them; and
    /// `invariant.agent.leader`.
    Agent,
    /// One leadership term of the cluster stream: the cluster-scoped invariants, their
    /// counters counted from `baseline` (per invariant, file order).
    ClusterTerm { baseline: Vec<Counters> },
}

/// What the callbacks share: the newest snapshot, the attribute sets and which series.
struct Source {
    snapshots: Snapshots,
    attrs: SharedAttributes,
    routing: Arc<ClusterRouting>,
    disruption: Monotonic,
    carries: Carries,
}

impl Source {
    fn new(
        snapshots: Snapshots,
        attrs: SharedAttributes,
        routing: Arc<ClusterRouting>,
        carries: Carries,
    ) -> Self {
        let known = read_attrs(&attrs).names.len();
        Source {
            snapshots,
            disruption: Monotonic::new(known),
            attrs,
            routing,
            carries,
        }
    }

    /// Calls `f(index, point)` for every invariant of the newest snapshot whose name
    /// matches the file order (always, unless something is badly wrong) and whose series
    /// this pipeline exports now.
    fn each(&self, mut f: impl FnMut(usize, &Point, &Attributes)) {
        let Some(report): Option<Arc<Report>> = self.snapshots.borrow().clone() else {
            return;
        };
        let attrs = read_attrs(&self.attrs);
        for (i, (entry, name)) in report.invariants.iter().zip(&attrs.names).enumerate() {
            if entry.name != *name {
                continue;
            }
            let cluster_scoped = attrs.cluster_scoped(i);
            match &self.carries {
                // A cluster-scoped invariant another agent runs now is that agent's to
                // export; under leader election the cluster stream exports it.
                Carries::Agent => {
                    if series::exported(&report, entry)
                        && !(cluster_scoped && self.routing.elected())
                    {
                        f(i, &Point::from_report(entry), &attrs);
                    }
                }
                Carries::ClusterTerm { baseline } => {
                    if cluster_scoped {
                        let base = baseline.get(i).copied().unwrap_or_default();
                        f(i, &Point::from_report(entry).since(&base), &attrs);
                    }
                }
            }
        }
    }
}

/// The registered instruments (observable ones stay registered while this lives).
pub struct Instruments {
    _observable: Vec<Box<dyn std::any::Any + Send + Sync>>,
    duration: Histogram<f64>,
    source: Arc<Source>,
}

impl Instruments {
    fn register(meter: &Meter, source: Source) -> Self {
        let source = Arc::new(source);
        let mut observable: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();

        let s = source.clone();
        observable.push(Box::new(
            meter
                .u64_observable_counter(series::SAMPLES.otel)
                .with_unit(series::SAMPLES.unit)
                .with_description(series::SAMPLES.help)
                .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                    s.each(|i, p, attrs| {
                        for (k, n) in p.samples.iter().enumerate() {
                            o.observe(*n, &attrs.outcomes[i][k]);
                        }
                    })
                })
                .build(),
        ));
        let s = source.clone();
        observable.push(Box::new(
            meter
                .f64_observable_gauge(series::VALUE.otel)
                .with_description(series::VALUE.help)
                .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                    s.each(|i, p, attrs| {
                        if let Some(v) = p.value {
                            o.observe(v, &attrs.base[i]);
                        }
                    })
                })
                .build(),
        ));
        let s = source.clone();
        observable.push(Box::new(
            meter
                .i64_observable_gauge(series::STATE.otel)
                .with_description(series::STATE.help)
                .with_callback(move |o: &dyn AsyncInstrument<i64>| {
                    s.each(|i, p, attrs| o.observe(p.state, &attrs.base[i]))
                })
                .build(),
        ));
        let s = source.clone();
        observable.push(Box::new(
            meter
                .u64_observable_counter(series::VIOLATIONS.otel)
                .with_unit(series::VIOLATIONS.unit)
                .with_description(series::VIOLATIONS.help)
                .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                    s.each(|i, p, attrs| o.observe(p.violations, &attrs.base[i]))
                })
                .build(),
        ));
        let s = source.clone();
        observable.push(Box::new(
            meter
                .f64_observable_counter(series::DISRUPTION.otel)
                .with_unit(series::DISRUPTION.unit)
                .with_description(series::DISRUPTION.help)
                .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                    s.each(|i, p, attrs| {
                        let v = s.disruption.at_least(i, p.disruption_seconds);
                        o.observe(v, &attrs.base[i]);
                    })
                })
                .build(),
        ));
        let s = source.clone();
        observable.push(Box::new(
            meter
                .f64_observable_gauge(series::AVAILABILITY.otel)
                .with_unit(series::AVAILABILITY.unit)
                .with_description(series::AVAILABILITY.help)
                .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                    s.each(|i, p, attrs| {
                        if let Some(v) = p.availability {
                            o.observe(v, &attrs.base[i]);
                        }
                    })
                })
                .build(),
        ));
        if matches!(source.carries, Carries::Agent) {
            let s = source.clone();
            observable.push(Box::new(
                meter
                    .i64_observable_gauge(series::LEADER.otel)
                    .with_description(series::LEADER.help)
                    .with_callback(move |o: &dyn AsyncInstrument<i64>| {
                        let report = s.snapshots.borrow().clone();
                        if let Some(leader) = report.as_deref().and_then(series::leader_value) {
                            o.observe(leader, &[]);
                        }
                    })
                    .build(),
            ));
            let s = source.clone();
            observable.push(Box::new(
                meter
                    .i64_observable_gauge(series::CONFIG_REFUSED.otel)
                    .with_description(series::CONFIG_REFUSED.help)
                    .with_callback(move |o: &dyn AsyncInstrument<i64>| {
                        let report = s.snapshots.borrow().clone();
                        if let Some(refused) =
                            report.as_deref().and_then(series::config_refused_value)
                        {
                            o.observe(refused, &[]);
                        }
                    })
                    .build(),
            ));
        }
        let duration = meter
            .f64_histogram(series::PROBE_DURATION.otel)
            .with_unit(series::PROBE_DURATION.unit)
            .with_description(series::PROBE_DURATION.help)
            .with_boundaries(DURATION_BOUNDS.to_vec())
            .build();
        Instruments {
            _observable: observable,
            duration,
            source,
        }
    }

    /// A recorder for the probe duration histogram.
    pub fn recorder(&self) -> DurationRecorder {
        DurationRecorder {
            histogram: self.duration.clone(),
            source: self.source.clone(),
        }
    }
}

/// Where the probe durations of cluster-scoped invariants go under leader election: into
/// the histogram of the cluster stream's current term. The scheduler starts sampling on
/// the same leadership change that starts a term, so a sample may finish before its term
/// exists: such durations wait here (a few at most) and go into the term when it starts.
#[derive(Default)]
struct ClusterRouting {
    /// Whether the cluster stream carries the cluster-scoped series (leader election on).
    elected: AtomicBool,
    slot: Mutex<RoutingSlot>,
}

#[derive(Default)]
struct RoutingSlot {
    /// The current term's histogram and attribute sets.
    term: Option<(Histogram<f64>, SharedAttributes)>,
    /// Durations recorded while no term runs: (invariant, outcome index, seconds, start).
    waiting: VecDeque<(usize, usize, f64, Timestamp)>,
    /// When the last term ended: a waiting sample that started before belongs to it (it
    /// was in flight at the step-down), not to the next term.
    ended_at: Option<Timestamp>,
}

/// How many durations may wait for a term; more would mean no term is coming.
const WAITING_LIMIT: usize = 256;

impl ClusterRouting {
    fn elected(&self) -> bool {
        self.elected.load(Ordering::Relaxed)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, RoutingSlot> {
        // Never panic in telemetry: a poisoned lock still holds consistent data here.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, invariant: usize, outcome: usize, seconds: f64, at: Timestamp) {
        let mut slot = self.slot();
        if let Some((histogram, attrs)) = &slot.term {
            if let Some(a) = read_attrs(attrs).outcomes.get(invariant) {
                histogram.record(seconds, &a[outcome]);
            }
            return;
        }
        if slot.waiting.len() >= WAITING_LIMIT {
            slot.waiting.pop_front();
        }
        slot.waiting.push_back((invariant, outcome, seconds, at));
    }

    /// A term starts: durations go to `histogram`, starting with those that waited for it.
    fn begin(&self, histogram: Histogram<f64>, attrs: &SharedAttributes) {
        let mut slot = self.slot();
        let ended_at = slot.ended_at;
        let read = read_attrs(attrs);
        for (invariant, outcome, seconds, at) in slot.waiting.drain(..) {
            if ended_at.is_none_or(|end| at >= end)
                && let Some(a) = read.outcomes.get(invariant)
            {
                histogram.record(seconds, &a[outcome]);
            }
        }
        drop(read);
        slot.term = Some((histogram, attrs.clone()));
    }

    /// The term ended at `at`: durations wait for the next one.
    fn end(&self, at: Timestamp) {
        let mut slot = self.slot();
        slot.term = None;
        slot.waiting.clear();
        slot.ended_at = Some(at);
    }
}

/// Records each sample's duration into `invariant.probe.duration`.
#[derive(Clone)]
pub struct DurationRecorder {
    histogram: Histogram<f64>,
    source: Arc<Source>,
}

impl DurationRecorder {
    /// Records one sample of the invariant at `invariant`: in this agent's histogram, or,
    /// for a cluster-scoped invariant under leader election, in the cluster stream's.
    pub fn record(&self, invariant: usize, sample: &Sample) {
        let outcome = series::outcome_index(sample.outcome());
        debug_assert!(outcome < DURATION_OUTCOMES.len());
        let source = &self.source;
        if read_attrs(&source.attrs).cluster_scoped(invariant) && source.routing.elected() {
            source
                .routing
                .record(invariant, outcome, sample.latency.as_secs_f64(), sample.at);
            return;
        }
        if let Some(attrs) = read_attrs(&self.source.attrs).outcomes.get(invariant) {
            self.histogram
                .record(sample.latency.as_secs_f64(), &attrs[outcome]);
        }
    }
}

impl DurationRecorder {
    /// Adds the invariants a configuration change started (their indices follow every
    /// one known), so their series are exported from their first sample on, by this
    /// agent's pipeline and the cluster stream's terms alike (they share the sets).
    pub fn add_invariants(&self, identities: &[Identity]) {
        self.source
            .attrs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(identities);
    }
}

/// Wraps the OTLP exporter to log failures once and recoveries once (the SDK's own
/// diagnostics are compiled out), without changing what is exported.
pub struct LoggingExporter<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
    failures: AtomicU64,
}

impl<E> LoggingExporter<E> {
    /// Wraps `inner`, which exports to `endpoint`.
    pub fn new(inner: E, endpoint: String) -> Self {
        LoggingExporter {
            inner,
            endpoint,
            failing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for LoggingExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        endpoint = %self.endpoint,
                        failed_exports = self.failures.swap(0, Ordering::Relaxed),
                        "OTLP export works again; counters and histograms are cumulative, so nothing counted meanwhile is lost"
                    );
                }
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint, error = %e,
                        "OTLP export failed; sampling goes on and export is retried every interval"
                    );
                }
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    use tokio::sync::watch;

    use super::*;
    use crate::export::testutil::{engine_under_election, ok_sample as sample};
    use crate::report::RunStatus;
    use crate::schedule::Event;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: web
    description: d
    owner: o
    probe:
      http: {url: "http://127.0.0.1:1/"}
    condition:
      availability: {target: 100, window: 1m}
  - name: api
    description: d
    owner: o
    scope: cluster
    probe:
      http: {url: "http://127.0.0.1:1/api"}
    condition:
      availability: {target: 100, window: 1m}
"#;

    /// Keeps every export as the OTLP request the collector would receive.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

    impl PushMetricExporter for Capture {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            self.0.lock().unwrap().push(metrics.into());
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    /// One received data point: resource `service.instance.id`, metric, `invariant`
    /// (and `outcome`), value (a histogram's count).
    type Point = (Option<String>, String, String, f64);

    impl Capture {
        /// The points of the newest export, sorted.
        fn last(&self) -> Vec<Point> {
            let requests = self.0.lock().unwrap();
            let mut out = Vec::new();
            let Some(request) = requests.last() else {
                return out;
            };
            let text = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
                kvs.iter()
                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                        _ => None,
                    })
                    .collect::<BTreeMap<_, _>>()
            };
            for rm in &request.resource_metrics {
                let resource = text(&rm.resource.as_ref().unwrap().attributes);
                let instance = resource.get(INSTANCE).cloned();
                for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
                    let number = |v: &Option<number_data_point::Value>| match v {
                        Some(number_data_point::Value::AsInt(i)) => *i as f64,
                        Some(number_data_point::Value::AsDouble(d)) => *d,
                        None => f64::NAN,
                    };
                    let mut push = |attrs: &[_], value: f64| {
                        let a = text(attrs);
                        let mut id = a.get("invariant").cloned().unwrap_or_default();
                        if let Some(outcome) = a.get("outcome") {
                            id = format!("{id}/{outcome}");
                        }
                        out.push((instance.clone(), m.name.clone(), id, value));
                    };
                    match &m.data {
                        Some(metric::Data::Sum(s)) => s
                            .data_points
                            .iter()
                            .for_each(|p| push(&p.attributes, number(&p.value))),
                        Some(metric::Data::Gauge(g)) => g
                            .data_points
                            .iter()
                            .for_each(|p| push(&p.attributes, number(&p.value))),
                        Some(metric::Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .for_each(|p| push(&p.attributes, p.count as f64)),
                        _ => {}
                    }
                }
            }
            out.sort_by(|a, b| (&a.1, &a.2).cmp(&(&b.1, &b.2)));
            out
        }
    }

    const INSTANCE: &str = "service.instance.id";

    fn find<'a>(points: &'a [Point], metric: &str, id: &str) -> Option<&'a Point> {
        points.iter().find(|p| p.1 == metric && p.2 == id)
    }

    /// Without leader election the agent's pipeline carries every series; once the
    /// cluster stream takes the cluster-scoped ones over, the agent's keeps only the
    /// node-scoped ones and `invariant.agent.leader`, and a term carries the cluster-scoped
    /// ones alone, under its own resource, counted from its baseline. Probe durations of
    /// cluster-scoped invariants go to the term, those finished before it starts too, but
    /// not those of samples that started before the previous term ended.
    #[test]
    fn the_cluster_scoped_series_move_to_the_term_counted_from_its_baseline() {
        let (set, mut engine) = engine_under_election(FILE);
        let identities = series::identities(&set);
        engine.set_leading(true, Timestamp(0));
        for (invariant, at) in [(0, 100), (1, 100), (1, 200), (1, 300)] {
            engine.handle(Event::Sample {
                invariant,
                sample: sample(at),
            });
        }
        let (tx, snapshots) = watch::channel(None);
        tx.send_replace(Some(Arc::new(
            engine.report(Timestamp(1000), RunStatus::Running),
        )));

        let attrs = Arc::new(RwLock::new(Attributes::new(&identities)));
        let routing = Arc::new(ClusterRouting::default());
        let agent_export = Capture::default();
        let agent_resource = resource(&[(INSTANCE.into(), "agent-a".into())]);
        let source = Source::new(
            snapshots.clone(),
            attrs.clone(),
            routing.clone(),
            Carries::Agent,
        );
        let (agent, instruments) = provider_for(
            agent_export.clone(),
            Duration::from_secs(3600),
            agent_resource,
            source,
        );
        let recorder = instruments.recorder();
        recorder.record(0, &sample(100));
        agent.force_flush().unwrap();
        let seen = agent_export.last();
        let instance = Some("agent-a".to_string());
        assert_eq!(
            find(&seen, "invariant.samples", "api/ok"),
            Some(&(
                instance.clone(),
                "invariant.samples".into(),
                "api/ok".into(),
                3.0
            )),
            "without a cluster stream the agent exports it: {seen:?}"
        );

        // The cluster stream takes over.
        routing.elected.store(true, Ordering::Relaxed);
        recorder.record(1, &sample(400)); // waits for the term
        agent.force_flush().unwrap();
        let seen = agent_export.last();
        assert!(
            seen.iter()
                .all(|p| p.2 != "api" && !p.2.starts_with("api/")),
            "{seen:?}"
        );
        assert!(
            find(&seen, "invariant.samples", "web/ok").is_some(),
            "{seen:?}"
        );
        assert!(
            find(&seen, "invariant.agent.leader", "").is_some(),
            "{seen:?}"
        );
        assert!(seen.iter().all(|p| p.0 == instance));

        // A term counted from 1 ok sample of api (and 1 of web, which it does not carry).
        let baseline = vec![
            Counters {
                samples: [1, 0, 0, 0],
                ..Counters::default()
            };
            2
        ];
        let term_export = Capture::default();
        let term_source = Source::new(
            snapshots.clone(),
            attrs.clone(),
            routing.clone(),
            Carries::ClusterTerm { baseline },
        );
        let (term, term_instruments) = provider_for(
            term_export.clone(),
            Duration::from_secs(3600),
            resource(&[("k8s.cluster.name".into(), "c".into())]),
            term_source,
        );
        routing.begin(term_instruments.duration.clone(), &attrs);
        recorder.record(1, &sample(500));
        recorder.record(0, &sample(500));
        term.force_flush().unwrap();
        let seen = term_export.last();
        assert!(seen.iter().all(|p| p.0.is_none()), "{seen:?}");
        assert!(seen.iter().all(|p| p.2 == "api" || p.2.starts_with("api/")));
        assert_eq!(find(&seen, "invariant.samples", "api/ok").unwrap().3, 2.0);
        assert_eq!(find(&seen, "invariant.violations", "api").unwrap().3, 0.0);
        assert_eq!(find(&seen, "invariant.state", "api").unwrap().3, 1.0);
        assert_eq!(
            find(&seen, "invariant.probe.duration", "api/ok").unwrap().3,
            2.0,
            "the duration that waited and the one after the start"
        );
        assert!(find(&seen, "invariant.agent.leader", "").is_none());
        agent.force_flush().unwrap();
        assert_eq!(
            find(&agent_export.last(), "invariant.probe.duration", "web/ok")
                .unwrap()
                .3,
            2.0
        );

        // The term ends at 1000: a sample in flight then (started at 900) belongs to it and
        // is dropped; one started after waits for the next term.
        routing.end(Timestamp(1000));
        let _ = term.shutdown();
        recorder.record(1, &sample(900));
        recorder.record(1, &sample(1100));
        let next_export = Capture::default();
        let (next, next_instruments) = provider_for(
            next_export.clone(),
            Duration::from_secs(3600),
            resource(&[]),
            Source::new(
                snapshots,
                attrs.clone(),
                routing.clone(),
                Carries::ClusterTerm { baseline: vec![] },
            ),
        );
        routing.begin(next_instruments.duration.clone(), &attrs);
        next.force_flush().unwrap();
        let seen = next_export.last();
        assert_eq!(
            find(&seen, "invariant.probe.duration", "api/ok").unwrap().3,
            1.0
        );
        assert_eq!(
            find(&seen, "invariant.samples", "api/ok").unwrap().3,
            3.0,
            "no baseline: the engine's totals"
        );
        let _ = (next.shutdown(), agent.shutdown());
    }
}
