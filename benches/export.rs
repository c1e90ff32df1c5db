//! Cost of one export cycle for 100 and 1,000 invariants, on the exporters' side only (the
//! engine builds the snapshot anyway, once a second, for the report writer).
//!
//! * `otlp_cycle`: one collection through the OpenTelemetry SDK (observable callbacks
//!   reading the snapshot, the duration histogram) plus the conversion to the OTLP
//!   protobuf request and its encoding, i.e. everything an export does except the network.
//! * `prometheus_scrape`: rendering `/metrics` (Prometheus text and OpenMetrics).
//!
//! Before the timings it prints the allocations and bytes allocated per cycle, measured
//! with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use invariant_agent::engine::{Engine, RunMeta};
use invariant_agent::export::otlp::{self, DurationRecorder};
use invariant_agent::export::prometheus::{Exposition, Format};
use invariant_agent::export::series::{self, DurationHistograms};
use invariant_agent::report::{Report, RunStatus};
use invariant_agent::sample::{ErrorClass, Observation, ProbeError, Sample, Timestamp};
use invariant_agent::schedule::Event;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use prost::Message;
use tokio::sync::watch;

/// Counts allocations so a cycle's allocation cost can be printed.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `n` invariants with two labels each, alternating availability and threshold
/// conditions, and a report snapshot after a minute of samples with some failures.
fn fixture(n: usize) -> (invariant_agent::config::InvariantSet, Arc<Report>) {
    let mut yaml = String::from(
        "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ndefaults: {interval: 1s, labels: {suite: bench, tier: '1'}}\ninvariants:\n",
    );
    for i in 0..n {
        let condition = if i.is_multiple_of(2) {
            "availability: {target: 99, window: 5m}"
        } else {
            "threshold: {max: 100, for: 10s}"
        };
        yaml.push_str(&format!(
            "  - name: invariant-{i}\n    description: d\n    owner: sig-{}\n    probe:\n      http: {{url: \"http://127.0.0.1:1/{i}\"}}\n    condition:\n      {condition}\n",
            i % 10
        ));
    }
    let set =
        invariant_agent::config::parse_str("bench.yaml", &yaml).expect("valid bench invariants");
    let start = Timestamp(1_767_225_600_000);
    let mut engine = Engine::new(
        &set,
        RunMeta {
            id: "bench".into(),
            started_at: start,
            config_files: vec![],
            node: None,
        },
    );
    for s in 0..60 {
        for invariant in 0..n {
            let at = Timestamp(start.0 + s * 1000);
            let observation = if (s as usize + invariant).is_multiple_of(17) {
                Observation::Failed(ProbeError::new(ErrorClass::Timeout, "no answer"))
            } else {
                Observation::Ok {
                    value: Some((s % 50) as f64),
                }
            };
            engine.handle(Event::Sample {
                invariant,
                sample: Sample {
                    at,
                    latency: Duration::from_millis(20 + s as u64),
                    observation,
                },
            });
        }
    }
    let report = Arc::new(engine.report(Timestamp(start.0 + 60_000), RunStatus::Running));
    (set, report)
}

/// Encodes what it is given as the OTLP exporter would, and keeps the size.
struct EncodingExporter(Arc<Mutex<usize>>);

impl PushMetricExporter for EncodingExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let request = ExportMetricsServiceRequest::from(metrics);
        let bytes = request.encode_to_vec();
        *self.0.lock().unwrap() = bytes.len();
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

fn measure(what: &str, mut f: impl FnMut()) {
    f(); // warm up (first collection creates the series)
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    const ROUNDS: u64 = 20;
    for _ in 0..ROUNDS {
        f();
    }
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    eprintln!(
        "{what}: {} allocations, {:.1} KiB allocated per cycle",
        (a1 - a0) / ROUNDS,
        (b1 - b0) as f64 / ROUNDS as f64 / 1024.0
    );
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("export_cycle");
    group.measurement_time(Duration::from_secs(5));
    for n in [100usize, 1000] {
        let (set, report) = fixture(n);
        let identities = series::identities(&set);
        let (_tx, rx) = watch::channel(Some(report.clone()));

        // OTLP: the reader's interval is long; each iteration forces one collection.
        let size = Arc::new(Mutex::new(0));
        let (provider, instruments) = otlp::provider_with(
            EncodingExporter(size.clone()),
            Duration::from_secs(3600),
            otlp::resource(&[("service.name".into(), "bench".into())]),
            &identities,
            rx.clone(),
        );
        let recorder: DurationRecorder = instruments.recorder();
        for i in 0..report.invariants.len() {
            recorder.record(
                i,
                &Sample {
                    at: Timestamp(0),
                    latency: Duration::from_millis(30),
                    observation: Observation::Ok { value: None },
                },
            );
        }
        measure(&format!("otlp_cycle/{n}"), || {
            provider.force_flush().unwrap()
        });
        eprintln!(
            "otlp_cycle/{n}: request of {:.1} KiB",
            *size.lock().unwrap() as f64 / 1024.0
        );
        group.bench_with_input(BenchmarkId::new("otlp_cycle", n), &n, |b, _| {
            b.iter(|| provider.force_flush().unwrap())
        });
        let _ = provider.shutdown();

        let durations = Arc::new(DurationHistograms::new(n));
        for i in 0..n {
            durations.record(i, invariant_agent::sample::Outcome::Ok, 0.03);
        }
        let exposition = Exposition::new(
            &identities,
            rx,
            durations,
            &[("service.name".into(), "bench".into())],
        );
        for format in [Format::Text, Format::OpenMetrics] {
            let name = match format {
                Format::Text => "prometheus_text",
                Format::OpenMetrics => "openmetrics",
            };
            measure(&format!("{name}/{n}"), || {
                black_box(exposition.render(format).unwrap());
            });
            eprintln!(
                "{name}/{n}: {:.1} KiB of text",
                exposition.render(format).unwrap().len() as f64 / 1024.0
            );
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| black_box(exposition.render(format).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
