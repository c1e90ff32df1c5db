//! Fixtures for the export tests: an in-process OTLP/gRPC sink that records every request
//! it receives (what a collector forwarded), the real collectors (rotel from PyPI and the
//! official OpenTelemetry Collector built from Go modules), Prometheus, and small helpers.
//! Every real component is installed by `scripts/install-test-deps`; a missing one fails
//! the test with a message naming that script.

#![allow(dead_code)] // each export test module uses a different subset

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const INSTALL_HINT: &str = "run scripts/install-test-deps";

/// The cache directory the install scripts use.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set")
        .join("invariant-agent")
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------
// OTLP sink

/// One data point as received, flattened with its metric and resource.
#[derive(Clone, Debug)]
pub struct Received {
    /// Position of the request it came in (0-based), in arrival order.
    pub request: usize,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub name: String,
    pub unit: String,
    pub attrs: BTreeMap<String, String>,
    pub start: u64,
    pub time: u64,
    pub data: Data,
}

/// A data point's payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Gauge(f64),
    /// A sum: value, monotonic, temporality (2 = cumulative).
    Sum(f64, bool, i32),
    /// An explicit-bucket histogram: count, sum, bounds, bucket counts, temporality.
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        counts: Vec<u64>,
        temporality: i32,
    },
    Other,
}

impl Data {
    /// The number of a gauge or sum.
    pub fn number(&self) -> f64 {
        match self {
            Data::Gauge(v) | Data::Sum(v, _, _) => *v,
            other => panic!("not a number: {other:?}"),
        }
    }
}

#[derive(Default)]
struct SinkState {
    requests: Vec<(ExportMetricsServiceRequest, BTreeMap<String, String>)>,
    /// While set, every request is refused with UNAVAILABLE (a backend in trouble).
    refusing: bool,
    /// Requests refused so far.
    refused: usize,
}

/// An OTLP/gRPC metrics receiver in the test process: records every request (and its
/// metadata) and answers OK.
#[derive(Clone)]
pub struct OtlpSink {
    pub addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
}

struct SinkService(Arc<Mutex<SinkState>>);

#[tonic::async_trait]
impl MetricsService for SinkService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                _ => None,
            })
            .collect();
        let mut state = self.0.lock().unwrap();
        if state.refusing {
            state.refused += 1;
            return Err(tonic::Status::unavailable("the sink refuses (test fault)"));
        }
        state.requests.push((request.into_inner(), metadata));
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpSink {
    /// A plaintext sink on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with_tls(None).await
    }

    /// A sink; with `tls = Some((cert_pem, key_pem))` it serves TLS.
    pub async fn start_with_tls(tls: Option<(String, String)>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState::default()));
        // Collectors compress their exports (the official one with gzip by default).
        let service = MetricsServiceServer::new(SinkService(state.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .unwrap();
        }
        let router = builder.add_service(service);
        tokio::spawn(async move {
            let incoming = tokio_stream_from(listener);
            let _ = router.serve_with_incoming(incoming).await;
        });
        OtlpSink { addr, state }
    }

    /// Refuses every request from now on with UNAVAILABLE (`true`), or takes them again.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.lock().unwrap().refusing = refusing;
    }

    /// Requests refused so far.
    pub fn refused_count(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// The metadata (headers) of every request received.
    pub fn metadata(&self) -> Vec<BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every data point received so far, in arrival order.
    pub fn points(&self) -> Vec<Received> {
        let state = self.state.lock().unwrap();
        let mut out = Vec::new();
        for (index, (req, _)) in state.requests.iter().enumerate() {
            for rm in &req.resource_metrics {
                let resource = rm
                    .resource
                    .as_ref()
                    .map(|r| attrs(&r.attributes))
                    .unwrap_or_default();
                for sm in &rm.scope_metrics {
                    let scope = sm
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    for m in &sm.metrics {
                        let base = |a: &[KeyValue], start, time, data| Received {
                            request: index,
                            resource: resource.clone(),
                            scope: scope.clone(),
                            name: m.name.clone(),
                            unit: m.unit.clone(),
                            attrs: attrs(a),
                            start,
                            time,
                            data,
                        };
                        match &m.data {
                            Some(metric::Data::Gauge(g)) => {
                                for p in &g.data_points {
                                    out.push(base(
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        Data::Gauge(number(&p.value)),
                                    ));
                                }
                            }
                            Some(metric::Data::Sum(s)) => {
                                for p in &s.data_points {
                                    out.push(base(
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        Data::Sum(
                                            number(&p.value),
                                            s.is_monotonic,
                                            s.aggregation_temporality,
                                        ),
                                    ));
                                }
                            }
                            Some(metric::Data::Histogram(h)) => {
                                for p in &h.data_points {
                                    out.push(base(
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        Data::Histogram {
                                            count: p.count,
                                            sum: p.sum.unwrap_or(f64::NAN),
                                            bounds: p.explicit_bounds.clone(),
                                            counts: p.bucket_counts.clone(),
                                            temporality: h.aggregation_temporality,
                                        },
                                    ));
                                }
                            }
                            _ => out.push(base(&[], 0, 0, Data::Other)),
                        }
                    }
                }
            }
        }
        out
    }
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => f64::NAN,
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The newest received point of `name` whose attributes include every pair of `want`.
pub fn latest<'a>(
    points: &'a [Received],
    name: &str,
    want: &[(&str, &str)],
) -> Option<&'a Received> {
    points
        .iter()
        .filter(|p| {
            p.name == name
                && want
                    .iter()
                    .all(|(k, v)| p.attrs.get(*k).map(String::as_str) == Some(*v))
        })
        .max_by_key(|p| (p.time, p.request))
}

/// Every received point of one series (exact attribute match), oldest first.
pub fn series<'a>(
    points: &'a [Received],
    name: &str,
    attrs: &BTreeMap<String, String>,
) -> Vec<&'a Received> {
    let mut s: Vec<&Received> = points
        .iter()
        .filter(|p| p.name == name && &p.attrs == attrs)
        .collect();
    s.sort_by_key(|p| (p.time, p.request));
    s
}

// ---------------------------------------------------------------------------------------
// Collectors

/// A collector process receiving OTLP/gRPC on `grpc` and forwarding metrics to a sink.
pub struct Collector {
    pub grpc: SocketAddr,
    kind: CollectorKind,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
enum CollectorKind {
    Rotel {
        binary: PathBuf,
        http: SocketAddr,
        sink: SocketAddr,
    },
    Otelcol {
        binary: PathBuf,
        config: PathBuf,
    },
}

/// rotel's binary in the venv the install script creates.
pub fn rotel_binary() -> PathBuf {
    let venv = cache_dir().join("rotel-venv");
    let found = std::fs::read_dir(venv.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "rotel is not installed (looked for {}/lib/python3*/site-packages/rotel/rotel-agent); {INSTALL_HINT}",
            venv.display()
        )
    })
}

/// The official collector built by scripts/build-otelcol.
pub fn otelcol_binary() -> PathBuf {
    let found = std::fs::read_dir(cache_dir())
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("otelcol-0"))
        .map(|e| e.path().join("otelcol"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "the OpenTelemetry Collector is not built (looked for {}/otelcol-<version>/otelcol); {INSTALL_HINT} (it runs scripts/build-otelcol)",
            cache_dir().display()
        )
    })
}

impl Collector {
    /// rotel receiving on free ports, forwarding every batch at once to `sink`.
    pub async fn rotel(sink: SocketAddr) -> Self {
        let binary = rotel_binary();
        let dir = tempfile::tempdir().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("collector.log");
        let mut c = Collector {
            grpc,
            kind: CollectorKind::Rotel { binary, http, sink },
            child: None,
            log,
            _dir: dir,
        };
        c.start().await;
        c
    }

    /// The official collector: otlp receiver → otlp exporter to `sink` (+ debug exporter).
    pub async fn otelcol(sink: SocketAddr) -> Self {
        let binary = otelcol_binary();
        let dir = tempfile::tempdir().unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {grpc}
exporters:
  debug:
    verbosity: basic
  otlp:
    endpoint: {sink}
    tls:
      insecure: true
    sending_queue:
      enabled: false
    # A failing backend is answered to the sender at once, not retried for minutes.
    retry_on_failure:
      enabled: false
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [otlp, debug]
"#
            ),
        )
        .unwrap();
        let log = dir.path().join("collector.log");
        let mut c = Collector {
            grpc,
            kind: CollectorKind::Otelcol { binary, config },
            child: None,
            log,
            _dir: dir,
        };
        c.start().await;
        c
    }

    /// The agent's endpoint for this collector.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Starts (or restarts) the collector on the same ports and waits until it listens.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "collector already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.kind {
            CollectorKind::Rotel { binary, http, sink } => {
                let mut cmd = Command::new(binary);
                cmd.arg("start")
                    .arg("--otlp-grpc-endpoint")
                    .arg(self.grpc.to_string())
                    .arg("--otlp-http-endpoint")
                    .arg(http.to_string())
                    .args(["--exporter", "otlp", "--otlp-exporter-endpoint"])
                    .arg(format!("http://{sink}"))
                    // Forward every request at once: the test reads what arrived.
                    .arg("--disable-batching");
                cmd
            }
            CollectorKind::Otelcol { binary, config } => {
                let mut cmd = Command::new(binary);
                cmd.arg("--config").arg(config);
                cmd
            }
        };
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the collector");
        self.child = Some(child);
        wait_for_port(self.grpc, "the collector", Duration::from_secs(20)).await;
    }

    /// Stops the collector: SIGTERM (it flushes what it holds) or SIGKILL (a crash).
    pub async fn stop(&mut self, kill: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if kill {
            let _ = child.kill().await;
        } else if let Some(pid) = child.id() {
            crate::support::signal(pid, "TERM");
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let _ = child.wait().await;
    }

    /// What the collector printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A plain HTTP GET on loopback: `(status, content type, body)`.
pub async fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            // HTTP/1.0: the whole body until close, never chunked.
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response within 10s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Metric family names (series names without labels) in a Prometheus/OpenMetrics text.
pub fn series_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}
