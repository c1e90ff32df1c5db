//! The pull side: `/metrics` (OpenMetrics or Prometheus text, by the `Accept` header),
//! `/healthz` (the process is alive) and `/readyz` (configuration loaded and probes
//! scheduled; not ready again once the run is stopping), on `--metrics-listen`.
//!
//! Every scrape renders the newest report snapshot through a `prometheus-client`
//! collector, with the same series as OTLP under the names the OpenTelemetry →
//! Prometheus conversion gives them (`invariant.samples` → `invariant_samples_total`,
//! `invariant.probe.duration` → `invariant_probe_duration_seconds`, ...). Resource
//! attributes appear once, on `target_info`, as the conversion specifies. A scrape never
//! touches the engine.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::series::{
    self, ATTR_OUTCOME, DURATION_OUTCOMES, DurationHistograms, Identity, Kind, MetricInfo,
    Monotonic, Point, SAMPLE_OUTCOMES,
};
use crate::engine::Snapshots;

/// `Content-Type` of an OpenMetrics response.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of a Prometheus text (0.0.4) response.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for).
    OpenMetrics,
    /// Prometheus text format 0.0.4 (curl, promtool).
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }
}

/// Renders the agent's series from the newest snapshot.
pub struct Exposition {
    registry: Registry,
    /// Length of the previous rendering, to size the next one in one allocation.
    last_len: AtomicUsize,
}

impl Exposition {
    /// An exposition of `identities` (file order) reading `snapshots` and `durations`,
    /// with `resource` on `target_info`.
    pub fn new(
        identities: &[Identity],
        snapshots: Snapshots,
        durations: Arc<DurationHistograms>,
        resource: &[(String, String)],
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector {
            identities: identities.to_vec(),
            snapshots,
            durations,
            disruption: Monotonic::new(identities.len()),
            target_info: resource
                .iter()
                .map(|(k, v)| (label_name(k), v.clone()))
                .collect(),
        }));
        Exposition {
            registry,
            last_len: AtomicUsize::new(0),
        }
    }

    /// The exposition text in `format`.
    pub fn render(&self, format: Format) -> Result<String, fmt::Error> {
        let hint = self.last_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity((hint + hint / 8).max(16 * 1024));
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        self.last_len.store(out.len(), Ordering::Relaxed);
        Ok(out)
    }
}

/// A resource attribute key as a Prometheus label name (`k8s.node.name` →
/// `k8s_node_name`), as the OpenTelemetry → Prometheus conversion does.
pub fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "key_");
    }
    name
}

struct SnapshotCollector {
    identities: Vec<Identity>,
    snapshots: Snapshots,
    durations: Arc<DurationHistograms>,
    disruption: Monotonic,
    target_info: Vec<(String, String)>,
}

impl fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotCollector")
            .field("invariants", &self.identities.len())
            .finish()
    }
}

fn descriptor<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    metric: &'a MetricInfo,
    unit: &'a Option<Unit>,
) -> Result<prometheus_client::encoding::MetricEncoder<'a>, fmt::Error> {
    let metric_type = match metric.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
    };
    encoder.encode_descriptor(metric.prometheus, metric.help, unit.as_ref(), metric_type)
}

fn unit(metric: &MetricInfo) -> Option<Unit> {
    metric.prometheus_unit.map(|u| match u {
        "seconds" => Unit::Seconds,
        other => Unit::Other(other.to_string()),
    })
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let report = self.snapshots.borrow().clone();
        // Invariants a configuration change started after this collector was built take
        // their identity from their report entry.
        let started_later: Vec<Identity> = report
            .as_ref()
            .and_then(|r| r.invariants.get(self.identities.len()..))
            .unwrap_or_default()
            .iter()
            .map(series::entry_identity)
            .collect();
        let identities = || self.identities.iter().chain(&started_later);
        // Points in file order; an entry whose name does not line up is left out, and so
        // is a cluster-scoped invariant that another agent runs now.
        let points: Vec<Option<Point>> = identities()
            .enumerate()
            .map(|(i, id)| {
                let report = report.as_ref()?;
                let entry = report.invariants.get(i)?;
                (entry.name == id.name && series::exported(report, entry))
                    .then(|| Point::from_report(entry))
            })
            .collect();
        let hidden = |i: usize| {
            report.as_ref().is_some_and(|r| {
                r.invariants
                    .get(i)
                    .is_some_and(|entry| !series::exported(r, entry))
            })
        };
        let rows = || {
            identities()
                .zip(&points)
                .enumerate()
                .filter_map(|(i, (id, p))| Some((i, &id.attributes[..], p.as_ref()?)))
        };

        {
            let u = None;
            let mut m = encoder.encode_descriptor(
                "target",
                "Resource attributes of this agent (service, Kubernetes node/pod, run id).",
                u.as_ref(),
                MetricType::Info,
            )?;
            m.encode_info(&self.target_info)?;
        }

        if let Some(leader) = report.as_deref().and_then(series::leader_value) {
            let u = unit(&series::LEADER);
            descriptor(&mut encoder, &series::LEADER, &u)?.encode_gauge(&leader)?;
        }

        if let Some(refused) = report.as_deref().and_then(series::config_refused_value) {
            let u = unit(&series::CONFIG_REFUSED);
            descriptor(&mut encoder, &series::CONFIG_REFUSED, &u)?.encode_gauge(&refused)?;
        }

        let u = unit(&series::SAMPLES);
        let mut m = descriptor(&mut encoder, &series::SAMPLES, &u)?;
        for (_, attrs, p) in rows() {
            for (k, n) in p.samples.iter().enumerate() {
                let labels = (attrs, [(ATTR_OUTCOME, SAMPLE_OUTCOMES[k])]);
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, f64>(n, None)?;
            }
        }

        let u = unit(&series::PROBE_DURATION);
        let mut m = descriptor(&mut encoder, &series::PROBE_DURATION, &u)?;
        for (i, id) in identities().enumerate() {
            if hidden(i) {
                continue;
            }
            for (k, outcome) in DURATION_OUTCOMES.iter().enumerate() {
                if let Some(h) = self.durations.read(i, k) {
                    let labels = (&id.attributes[..], [(ATTR_OUTCOME, *outcome)]);
                    m.encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                }
            }
        }

        let u = unit(&series::VALUE);
        let mut m = descriptor(&mut encoder, &series::VALUE, &u)?;
        for (_, attrs, p) in rows() {
            if let Some(v) = p.value {
                m.encode_family(&attrs)?.encode_gauge(&v)?;
            }
        }

        let u = unit(&series::STATE);
        let mut m = descriptor(&mut encoder, &series::STATE, &u)?;
        for (_, attrs, p) in rows() {
            m.encode_family(&attrs)?.encode_gauge(&p.state)?;
        }

        let u = unit(&series::VIOLATIONS);
        let mut m = descriptor(&mut encoder, &series::VIOLATIONS, &u)?;
        for (_, attrs, p) in rows() {
            m.encode_family(&attrs)?
                .encode_counter::<NoLabelSet, _, f64>(&p.violations, None)?;
        }

        let u = unit(&series::DISRUPTION);
        let mut m = descriptor(&mut encoder, &series::DISRUPTION, &u)?;
        for (i, attrs, p) in rows() {
            let v = self.disruption.at_least(i, p.disruption_seconds);
            m.encode_family(&attrs)?
                .encode_counter::<NoLabelSet, _, f64>(&v, None)?;
        }

        let u = unit(&series::AVAILABILITY);
        let mut m = descriptor(&mut encoder, &series::AVAILABILITY, &u)?;
        for (_, attrs, p) in rows() {
            if let Some(v) = p.availability {
                m.encode_family(&attrs)?.encode_gauge(&v)?;
            }
        }
        Ok(())
    }
}

/// Whether `/readyz` answers 200.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Current readiness.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` is cancelled.
pub fn serve(
    listener: TcpListener,
    exposition: Arc<Exposition>,
    ready: Readiness,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let exposition = exposition.clone();
            let ready = ready.clone();
            let stop = stop.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = respond(&req, &exposition, &ready);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        connections.close();
    })
}

fn respond(
    req: &Request<Incoming>,
    exposition: &Exposition,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            match exposition.render(format) {
                Ok(body) => {
                    let content_type = match format {
                        Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
                        Format::Text => TEXT_CONTENT_TYPE,
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(content_type),
                    );
                    response
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n"),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: probes not scheduled yet, or the run is stopping\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Binds the metrics listener (before anything else starts, so a taken port fails fast).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::engine::{Engine, RunMeta};
    use crate::report::RunStatus;
    use crate::sample::{ErrorClass, Observation, ProbeError, Sample, Timestamp};
    use crate::schedule::Event;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: web
    description: d
    owner: sig-a
    labels: {tier: "1"}
    probe:
      http: {url: "http://127.0.0.1:1/"}
    condition:
      availability: {target: 100, window: 1m}
  - name: queue
    description: d
    owner: sig-b
    probe:
      http: {url: "http://127.0.0.1:1/q", valuePointer: /depth}
    condition:
      threshold: {max: 10}
"#;

    fn exposition() -> Exposition {
        let set = crate::config::parse_str("t.yaml", FILE).unwrap();
        let start = Timestamp(1_000_000);
        let mut engine = Engine::new(
            &set,
            RunMeta {
                id: "r1".into(),
                started_at: start,
                config_files: vec![],
                node: None,
            },
        );
        let durations = Arc::new(DurationHistograms::new(2));
        let sample = |ms: i64, observation| Sample {
            at: Timestamp(start.0 + ms),
            latency: Duration::from_millis(3),
            observation,
        };
        for (invariant, sample) in [
            (0, sample(0, Observation::Ok { value: None })),
            (
                0,
                sample(
                    1000,
                    Observation::Failed(ProbeError::new(ErrorClass::Timeout, "no answer")),
                ),
            ),
            (0, sample(2000, Observation::Ok { value: None })),
            (1, sample(0, Observation::Ok { value: Some(4.0) })),
        ] {
            durations.record(invariant, sample.outcome(), sample.latency.as_secs_f64());
            engine.handle(Event::Sample { invariant, sample });
        }
        let report = engine.report(Timestamp(start.0 + 3000), RunStatus::Running);
        let (_, rx) = watch::channel(Some(Arc::new(report)));
        Exposition::new(
            &series::identities(&set),
            rx,
            durations,
            &[
                ("service.name".into(), "invariant-agent".into()),
                ("k8s.node.name".into(), "n1".into()),
            ],
        )
    }

    #[test]
    fn text_exposition_has_every_series_with_file_attributes_only() {
        let text = exposition().render(Format::Text).unwrap();
        for line in [
            "# TYPE target_info gauge",
            "target_info{service_name=\"invariant-agent\",k8s_node_name=\"n1\"} 1",
            "# TYPE invariant_samples_total counter",
            "invariant_samples_total{invariant=\"web\",owner=\"sig-a\",tier=\"1\",outcome=\"ok\"} 2",
            "invariant_samples_total{invariant=\"web\",owner=\"sig-a\",tier=\"1\",outcome=\"failed\"} 1",
            "invariant_samples_total{invariant=\"web\",owner=\"sig-a\",tier=\"1\",outcome=\"missed\"} 0",
            "# TYPE invariant_probe_duration_seconds histogram",
            "invariant_probe_duration_seconds_bucket{invariant=\"web\",owner=\"sig-a\",tier=\"1\",outcome=\"ok\",le=\"0.005\"} 2",
            "invariant_probe_duration_seconds_count{invariant=\"web\",owner=\"sig-a\",tier=\"1\",outcome=\"failed\"} 1",
            "invariant_value{invariant=\"queue\",owner=\"sig-b\"} 4.0",
            "invariant_state{invariant=\"web\",owner=\"sig-a\",tier=\"1\"} 1",
            "invariant_state{invariant=\"queue\",owner=\"sig-b\"} 1",
            "invariant_violations_total{invariant=\"web\",owner=\"sig-a\",tier=\"1\"} 1",
            // One failed sample counts one interval (the default, 5s).
            "invariant_disruption_seconds_total{invariant=\"web\",owner=\"sig-a\",tier=\"1\"} 5.0",
            "invariant_availability_ratio{invariant=\"web\",owner=\"sig-a\",tier=\"1\"} 0.6666666666666667",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("invariant_value{invariant=\"web\""),
            "no value seen for web"
        );
        assert!(!text.contains("invariant_availability_ratio{invariant=\"queue\""));
        assert!(!text.contains("no answer"), "error text is never a label");
        assert!(
            !text.contains("invariant_agent_leader"),
            "no leader gauge without leader election"
        );
    }

    /// Under leader election the leader gauge says whether this agent leads, and a
    /// cluster-scoped invariant's series come only from the leader.
    #[test]
    fn only_the_leader_exports_cluster_scoped_series() {
        let file = format!(
            "{FILE}  - name: api\n    description: d\n    owner: sig-c\n    scope: cluster\n    probe:\n      http: {{url: \"http://127.0.0.1:1/api\"}}\n    condition:\n      availability: {{target: 100, window: 1m}}\n"
        );
        let set = crate::config::parse_str("t.yaml", &file).unwrap();
        let mut engine = Engine::new(
            &set,
            RunMeta {
                id: "r1".into(),
                started_at: Timestamp(0),
                config_files: vec![],
                node: None,
            },
        );
        let (_leading, rx) = watch::channel(false);
        engine.follow_leadership("ns/l", "me", rx);
        engine.set_leading(true, Timestamp(0));
        let durations = Arc::new(DurationHistograms::new(3));
        for invariant in [0, 2] {
            let sample = Sample {
                at: Timestamp(100),
                latency: Duration::from_millis(3),
                observation: Observation::Ok { value: None },
            };
            durations.record(invariant, sample.outcome(), 0.003);
            engine.handle(Event::Sample { invariant, sample });
        }
        let (tx, rx) = watch::channel(None);
        let exposition = Exposition::new(&series::identities(&set), rx, durations, &[]);

        tx.send_replace(Some(Arc::new(
            engine.report(Timestamp(1000), RunStatus::Running),
        )));
        let text = exposition.render(Format::Text).unwrap();
        assert!(text.contains("\ninvariant_agent_leader 1\n"), "{text}");
        assert!(text.contains("invariant_state{invariant=\"api\",owner=\"sig-c\"} 1"));
        assert!(text.contains("invariant_probe_duration_seconds_count{invariant=\"api\""));

        engine.set_leading(false, Timestamp(2000));
        tx.send_replace(Some(Arc::new(
            engine.report(Timestamp(3000), RunStatus::Running),
        )));
        let text = exposition.render(Format::Text).unwrap();
        assert!(text.contains("\ninvariant_agent_leader 0\n"), "{text}");
        assert!(!text.contains("invariant=\"api\""), "{text}");
        assert!(text.contains("invariant_state{invariant=\"web\",owner=\"sig-a\",tier=\"1\"} 1"));
        assert!(text.contains("invariant_probe_duration_seconds_count{invariant=\"web\""));
    }

    #[test]
    fn openmetrics_exposition_has_units_and_eof() {
        let text = exposition().render(Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE target info\n"));
        assert!(text.contains("# UNIT invariant_probe_duration_seconds seconds\n"));
        assert!(text.contains("# UNIT invariant_availability_ratio ratio\n"));
        assert!(text.contains("# TYPE invariant_samples counter\n"));
        assert!(text.contains("invariant_samples_total{invariant=\"web\",owner=\"sig-a\",tier=\"1\",outcome=\"ok\"} 2\n"));
    }

    #[test]
    fn before_the_first_snapshot_only_descriptors_are_rendered() {
        let set = crate::config::parse_str("t.yaml", FILE).unwrap();
        let (_tx, rx) = watch::channel(None);
        let e = Exposition::new(
            &series::identities(&set),
            rx,
            Arc::new(DurationHistograms::new(2)),
            &[],
        );
        let text = e.render(Format::Text).unwrap();
        assert!(text.contains("# TYPE invariant_samples_total counter"));
        assert!(!text.contains("invariant_samples_total{"));
    }

    #[test]
    fn negotiation_and_label_names() {
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(label_name("k8s.node.name"), "k8s_node_name");
        assert_eq!(label_name("1x"), "key_1x");
        assert_eq!(label_name("a-b/c"), "a_b_c");
    }
}
