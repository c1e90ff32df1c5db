//! OTLP/gRPC push to an OpenTelemetry Collector with the OpenTelemetry SDK.
//!
//! One `SdkMeterProvider` with a periodic reader (its own thread) and the
//! `opentelemetry-otlp` tonic exporter. Every series except the probe duration histogram
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    self, ATTR_OUTCOME, DURATION_BOUNDS, DURATION_OUTCOMES, Identity, Monotonic, Point,
    SAMPLE_OUTCOMES,
};
use crate::engine::Snapshots;
use crate::report::Report;
use crate::sample::Sample;

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

/// A running OTLP exporter.
pub struct OtlpExporter {
    /// `None` once shut down.
    provider: Option<SdkMeterProvider>,
    /// Kept so the callbacks stay registered for the provider's life.
    _instruments: Instruments,
    endpoint: String,
}

impl OtlpExporter {
    /// Connects lazily to the collector (nothing is sent before the first interval; an
    /// absent collector is not an error) and registers the instruments. Must be called
    /// inside a Tokio runtime: the gRPC channel lives on it.
    pub fn start(
        config: &OtlpConfig,
        resource: Resource,
        identities: &[Identity],
        snapshots: Snapshots,
    ) -> Result<(Self, DurationRecorder), OtlpError> {
        let channel = channel(config)?;
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
        let exporter = LoggingExporter::new(exporter, config.endpoint.clone());
        let (provider, instruments) =
            provider_with(exporter, config.interval, resource, identities, snapshots);
        let recorder = instruments.recorder();
        Ok((
            OtlpExporter {
                provider: Some(provider),
                _instruments: instruments,
                endpoint: config.endpoint.clone(),
            },
            recorder,
        ))
    }

    /// Collects the final values and exports them, giving up after `deadline`. Call after
    /// the engine published its final snapshot, so the flush carries the final totals.
    pub async fn shutdown(mut self, deadline: Duration) {
        let endpoint = std::mem::take(&mut self.endpoint);
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
            tracing::warn!(error = %e, "cannot start the OTLP flush; final metric values not exported");
            return;
        }
        match tokio::time::timeout(deadline, done_rx).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(endpoint = %endpoint, "final metric values flushed to the collector")
            }
            Ok(Ok(Err(e))) => tracing::warn!(
                endpoint = %endpoint, error = %e,
                "final OTLP export failed; the collector keeps the values of the last successful export"
            ),
            Ok(Err(_)) => tracing::warn!(endpoint = %endpoint, "OTLP flush ended without a result"),
            Err(_) => tracing::warn!(
                endpoint = %endpoint, deadline = ?deadline,
                "the collector did not take the final export in time; giving up on it"
            ),
        }
    }
}

impl Drop for OtlpExporter {
    /// Dropped without [`OtlpExporter::shutdown`] (a run that failed): the SDK's own drop
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

/// A meter provider exporting through `exporter` every `interval`, with the agent's
/// instruments registered; also used by the benchmarks with an in-memory exporter.
/// Invariants configuration changes may add to a run beyond its first set before the
/// SDK would fold their series into the overflow series.
const RELOAD_HEADROOM: usize = 256;

pub fn provider_with<E: PushMetricExporter>(
    exporter: E,
    interval: Duration,
    resource: Resource,
    identities: &[Identity],
    snapshots: Snapshots,
) -> (SdkMeterProvider, Instruments) {
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    // The SDK folds series beyond 2000 per instrument into an overflow series; the
    // invariant file bounds ours, so make room for all of them, and for invariants that
    // configuration changes add while running.
    let limit = (identities.len() + RELOAD_HEADROOM) * SAMPLE_OUTCOMES.len() + 16;
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
    let instruments = Instruments::register(&meter, identities, snapshots);
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
}

impl Attributes {
    fn new(identities: &[Identity]) -> Self {
        let mut attributes = Attributes {
            base: Vec::new(),
            outcomes: Vec::new(),
            names: Vec::new(),
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
        let outcomes = base
            .iter()
            .map(|b| {
                SAMPLE_OUTCOMES.map(|outcome| {
                    let mut attrs = b.clone();
                    attrs.push(KeyValue::new(ATTR_OUTCOME, outcome));
                    attrs
                })
            })
            .collect::<Vec<_>>();
        self.base.extend(base);
        self.outcomes.extend(outcomes);
        self.names.extend(identities.iter().map(|i| i.name.clone()));
    }
}

/// What the callbacks share: the newest snapshot and the attribute sets.
struct Source {
    snapshots: Snapshots,
    /// Grows when a configuration change starts invariants; otherwise only read.
    attrs: std::sync::RwLock<Attributes>,
    disruption: Monotonic,
}

impl Source {
    /// Calls `f(index, point)` for every invariant of the newest snapshot whose name
    /// matches the file order (always, unless something is badly wrong) and whose series
    /// this agent exports now (see [`series::exported`]).
    fn each(&self, mut f: impl FnMut(usize, &Point, &Attributes)) {
        let Some(report): Option<Arc<Report>> = self.snapshots.borrow().clone() else {
            return;
        };
        let attrs = self.attrs();
        for (i, (entry, name)) in report.invariants.iter().zip(&attrs.names).enumerate() {
            // A cluster-scoped invariant another agent runs now is that agent's to export.
            if entry.name == *name && series::exported(&report, entry) {
                f(i, &Point::from_report(entry), &attrs);
            }
        }
    }

    fn attrs(&self) -> std::sync::RwLockReadGuard<'_, Attributes> {
        // Every update is whole: a panic elsewhere cannot leave it half-written.
        self.attrs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The registered instruments (observable ones stay registered while this lives).
pub struct Instruments {
    _observable: Vec<Box<dyn std::any::Any + Send + Sync>>,
    duration: Histogram<f64>,
    source: Arc<Source>,
}

impl Instruments {
    fn register(meter: &Meter, identities: &[Identity], snapshots: Snapshots) -> Self {
        let source = Arc::new(Source {
            snapshots,
            attrs: std::sync::RwLock::new(Attributes::new(identities)),
            disruption: Monotonic::new(identities.len()),
        });
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
                    if let Some(refused) = report.as_deref().and_then(series::config_refused_value)
                    {
                        o.observe(refused, &[]);
                    }
                })
                .build(),
        ));
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

/// Records each sample's duration into `invariant.probe.duration`.
#[derive(Clone)]
pub struct DurationRecorder {
    histogram: Histogram<f64>,
    source: Arc<Source>,
}

impl DurationRecorder {
    /// Records one sample of the invariant at `invariant`.
    pub fn record(&self, invariant: usize, sample: &Sample) {
        let outcome = series::outcome_index(sample.outcome());
        debug_assert!(outcome < DURATION_OUTCOMES.len());
        if let Some(attrs) = self.source.attrs().outcomes.get(invariant) {
            self.histogram
                .record(sample.latency.as_secs_f64(), &attrs[outcome]);
        }
    }
}

impl DurationRecorder {
    /// Adds the invariants a configuration change started (their indices follow every
    /// one known), so their series are exported from their first sample on.
    pub fn add_invariants(&self, identities: &[Identity]) {
        self.source
            .attrs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
