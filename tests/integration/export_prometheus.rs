//! The pull side against real tools: `/metrics` passes `promtool check metrics`, a real
//! Prometheus (Debian package) scrapes it with OpenMetrics and answers queries over it,
//! every query of the Grafana dashboard in manifests/ runs and returns data, the
//! collector config in manifests/ is valid for the official collector, and the health
//! endpoints answer for the kubelet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::export_support::{free_port, http_get, otelcol_binary, series_names, wait_for_port};
use crate::support::{Reply, TestHttpServer, Workspace, signal, spawn_agent_with_env, wait};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn binary(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is not installed (Debian package prometheus); run scripts/install-test-deps"
    );
    path
}

/// An agent with an availability and a value invariant and /metrics on a free port.
async fn agent_with_metrics(
    ws: &Workspace,
) -> (tokio::process::Child, SocketAddr, [TestHttpServer; 2]) {
    let web = TestHttpServer::start(Reply::ok("ok")).await;
    let metrics = TestHttpServer::start(Reply::ok("queue_depth 7\n")).await;
    let config = ws.config(&format!(
        r#"  - name: web-availability
    description: The web endpoint answers 2xx.
    owner: sig-testing
    interval: 200ms
    labels: {{component: web}}
    probe:
      http: {{url: "{}"}}
    condition:
      availability: {{target: 99, window: 1m}}
  - name: queue-depth
    description: The queue stays short.
    owner: sig-scheduling
    interval: 200ms
    probe:
      metrics: {{url: "{}", series: queue_depth}}
    condition:
      threshold: {{max: 10, for: 1s}}
"#,
        web.url("/"),
        metrics.url("/metrics")
    ));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = spawn_agent_with_env(
        ws,
        &config,
        &["--metrics-listen", &addr.to_string()],
        &[("NODE_NAME", "node-a"), ("BUILD_ID", "build-7")],
    );
    wait_for_port(
        addr,
        "the agent's metrics endpoint",
        Duration::from_secs(20),
    )
    .await;
    // Let a few samples and snapshots happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (agent, addr, [web, metrics])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_health_endpoints_answer() {
    let promtool = binary("promtool");
    let ws = Workspace::new();
    let (agent, addr, _targets) = agent_with_metrics(&ws).await;

    assert_eq!(http_get(addr, "/healthz", None).await.0, 200);
    let (status, _, body) = http_get(addr, "/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(http_get(addr, "/nope", None).await.0, 404);

    let (status, content_type, text) = http_get(addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    for line in [
        "invariant_samples_total{invariant=\"web-availability\",owner=\"sig-testing\",component=\"web\",outcome=\"ok\"}",
        "invariant_value{invariant=\"queue-depth\",owner=\"sig-scheduling\"} 7",
        "invariant_state{invariant=\"web-availability\",owner=\"sig-testing\",component=\"web\"} 1",
        "# TYPE invariant_probe_duration_seconds histogram",
        "target_info{service_name=\"invariant-agent\"",
        "k8s_node_name=\"node-a\"",
        "invariant_run_id=\"build-7\"",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n---\n{text}"
    );

    let (status, content_type, open) = http_get(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# UNIT invariant_disruption_seconds seconds"));
    assert_eq!(
        series_names(&open),
        series_names(&text),
        "both formats carry the same series"
    );

    signal(agent.id().unwrap(), "TERM");
    assert_eq!(wait(agent).await.code, Some(0));
}

#[tokio::test]
async fn metrics_listen_on_a_taken_port_fails_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ws = Workspace::new();
    let config = ws.config(
        "  - name: t\n    description: d\n    owner: o\n    probe:\n      tcp: {address: \"127.0.0.1:1\"}\n    condition:\n      availability: {target: 99, window: 1m}\n",
    );
    let done = wait(spawn_agent_with_env(
        &ws,
        &config,
        &["--metrics-listen", &addr, "--duration", "5s"],
        &[],
    ))
    .await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    assert!(
        done.stderr
            .contains(&format!("cannot listen on --metrics-listen {addr}")),
        "{}",
        done.stderr
    );
}

/// A real Prometheus scraping `target` every second.
pub(crate) struct Prometheus {
    addr: SocketAddr,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let binary = binary("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: invariant-agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        wait_for_port(addr, "prometheus", Duration::from_secs(30)).await;
        // The port opens before the storage is ready; queries answer 503 until then.
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(addr, "/-/ready", None).await.0 != 200 {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus {
            addr,
            child,
            _dir: dir,
        }
    }

    pub(crate) async fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, _, body) = http_get(self.addr, &path, None).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            (status, v["status"].as_str()),
            (200, Some("success")),
            "query {promql}: {body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `promql` returns at least one series.
    pub(crate) async fn until_some(&self, promql: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.query(promql).await;
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no result for {promql} within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn value(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

/// Every `expr` in the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("manifests/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has its panels");
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "5s")
                .replace("$__range", "1m")
                .replace("$invariant", ".*")
                .replace("$owner", ".*")
                .replace("$service", ".*")
        })
        .collect()
}

/// Metric names a query selects: identifiers directly followed by `{` (the dashboard
/// writes every selector with braces).
fn selected_metrics(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{").unwrap();
    re.captures_iter(expr).map(|c| c[1].to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_every_dashboard_query_returns_data() {
    let ws = Workspace::new();
    let (agent, addr, _targets) = agent_with_metrics(&ws).await;
    let exported = series_names(&http_get(addr, "/metrics", None).await.2);
    let prometheus = Prometheus::start(addr).await;

    let up = prometheus
        .until_some("up{job=\"invariant-agent\"}", Duration::from_secs(30))
        .await;
    assert_eq!(
        value(&up[0]),
        1.0,
        "scrape failed; log:\n{}",
        prometheus.log()
    );
    let ok = prometheus
        .until_some(
            "invariant_samples_total{invariant=\"web-availability\",outcome=\"ok\"}",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ok.len(), 1);
    assert!(value(&ok[0]) > 0.0);
    assert_eq!(ok[0]["metric"]["owner"], "sig-testing");
    assert_eq!(ok[0]["metric"]["component"], "web");
    let info = prometheus
        .until_some("target_info", Duration::from_secs(10))
        .await;
    assert_eq!(info[0]["metric"]["invariant_run_id"], "build-7");

    // Rates need two scrapes of each series.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut covered = std::collections::BTreeSet::new();
    for expr in dashboard_queries() {
        for metric in selected_metrics(&expr) {
            assert!(
                exported.contains(&metric),
                "the dashboard queries {metric}, which the agent does not export ({exported:?})"
            );
            covered.insert(metric);
        }
        let result = prometheus.query(&expr).await;
        assert!(
            !result.is_empty(),
            "dashboard query returned nothing: {expr}"
        );
    }
    for family in [
        "invariant_samples_total",
        "invariant_probe_duration_seconds_bucket",
        "invariant_value",
        "invariant_state",
        "invariant_violations_total",
        "invariant_disruption_seconds_total",
        "invariant_availability_ratio",
    ] {
        assert!(covered.contains(family), "the dashboard shows {family}");
    }

    signal(agent.id().unwrap(), "TERM");
    assert_eq!(wait(agent).await.code, Some(0));
    drop(prometheus.child);
}

#[tokio::test]
async fn the_collector_config_in_manifests_is_valid_for_the_official_collector() {
    let out = tokio::process::Command::new(otelcol_binary())
        .arg("validate")
        .arg("--config")
        .arg(repo_file("manifests/otel-collector-config.yaml"))
        .env("OTLP_BACKEND_ENDPOINT", "backend.example:4317")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "otelcol validate failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
