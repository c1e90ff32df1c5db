//! OTLP export against real collectors: the agent pushes to rotel (PyPI) and to the
//! official OpenTelemetry Collector (built from Go modules); each collector forwards what
//! it received to a sink in this process, and the assertions are on that data: names,
//! units, attributes, resource attributes, values, and counter totals equal to the
//! samples the agent took, across a collector outage of several export intervals.
//! Also: a hung collector cannot delay exit past the flush deadline, TLS with a CA file
//! and headers from the environment, and start-up errors for bad settings.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::export_support::{Collector, Data, OtlpSink, Received, latest, series};
use crate::support::{
    Reply, TestHttpServer, Workspace, invariant, signal, spawn_agent_with_env, wait,
};

/// Duration histogram bounds the agent uses (seconds).
const BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn config(ws: &Workspace, web: &TestHttpServer, metrics: &TestHttpServer) -> std::path::PathBuf {
    ws.config(&format!(
        r#"  - name: web-availability
    description: The web endpoint answers 2xx.
    owner: sig-testing
    interval: 200ms
    timeout: 1s
    labels: {{component: web}}
    probe:
      http: {{url: "{web}"}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: queue-depth
    description: The queue stays short.
    owner: sig-scheduling
    interval: 200ms
    timeout: 1s
    labels: {{component: queue, tier: "2"}}
    probe:
      metrics: {{url: "{metrics}", series: queue_depth}}
    condition:
      threshold: {{max: 10, for: 1s}}
"#,
        web = web.url("/healthz"),
        metrics = metrics.url("/metrics"),
    ))
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn wait_for_requests(sink: &OtlpSink, more_than: usize, within: Duration, what: &str) {
    wait_for_requests_or(sink, more_than, within, what, String::new).await
}

async fn wait_for_requests_or(
    sink: &OtlpSink,
    more_than: usize,
    within: Duration,
    what: &str,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while sink.request_count() <= more_than {
        assert!(
            Instant::now() < deadline,
            "{what}: no new export reached the sink within {within:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole scenario against one collector: export, collector crash for several
/// intervals, restart, SIGTERM; then everything the collector forwarded is checked.
async fn scenario(
    mut collector: Collector,
    sink: OtlpSink,
    web: TestHttpServer,
    metrics: TestHttpServer,
) {
    let ws = Workspace::new();
    let config = config(&ws, &web, &metrics);
    let endpoint = collector.endpoint();
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--export-interval",
            "500ms",
            "--otlp-timeout",
            "1s",
            "--cluster",
            "kind-test",
        ],
        &[
            ("BUILD_ID", "build-42"),
            ("NODE_NAME", "node-a"),
            ("POD_NAME", "agent-0"),
            ("POD_NAMESPACE", "invariants"),
            ("OTEL_SERVICE_NAME", "invariant-agent-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
        ],
    );
    let started = Instant::now();

    // A short outage of the target before the collector outage.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    web.set(Reply {
        status: 500,
        body: "down".into(),
        delay: Duration::ZERO,
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    web.set(Reply::ok("ok"));
    wait_for_requests_or(
        &sink,
        0,
        Duration::from_secs(10),
        "before the outage",
        || collector.log(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The collector crashes and stays away for 5 export intervals; the target fails once
    // more meanwhile, so there is something to count while nobody listens.
    collector.stop(true).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before_outage = sink.request_count();
    tokio::time::sleep(Duration::from_millis(600)).await;
    web.set(Reply {
        status: 503,
        body: "down".into(),
        delay: Duration::ZERO,
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    web.set(Reply::ok("ok"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        sink.request_count(),
        before_outage,
        "nothing can arrive while the collector is down"
    );

    collector.start().await;
    wait_for_requests_or(
        &sink,
        before_outage,
        Duration::from_secs(10),
        "after the restart",
        || collector.log(),
    )
    .await;
    let after_restart = sink.request_count();
    tokio::time::sleep(Duration::from_millis(700)).await;

    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    let ran = started.elapsed();
    assert_eq!(done.code, Some(0), "agent failed:\n{}", done.stderr);
    // Give the collector a moment to forward the final flush, then stop it cleanly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    collector.stop(false).await;

    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    assert_eq!(report["run"]["id"], "build-42");
    assert!(
        done.stderr.contains("OTLP export failed")
            && done.stderr.contains("OTLP export works again"),
        "the outage and the recovery are each logged:\n{}",
        done.stderr
    );

    let points = sink.points();
    assert!(!points.is_empty(), "collector log:\n{}", collector.log());
    check_resource_and_names(&points, &report);
    check_final_values(&points, &report);
    check_no_loss_across_outage(&points, before_outage, after_restart, &report, ran);
}

fn check_resource_and_names(points: &[Received], report: &Value) {
    let expected_resource = map(&[
        ("service.name", "invariant-agent-test"),
        ("service.version", env!("CARGO_PKG_VERSION")),
        ("k8s.cluster.name", "kind-test"),
        ("k8s.node.name", "node-a"),
        ("k8s.pod.name", "agent-0"),
        ("k8s.namespace.name", "invariants"),
        ("deployment.environment", "e2e"),
        ("invariant.run.id", report["run"]["id"].as_str().unwrap()),
        ("service.instance.id", "agent-0"),
    ]);
    for p in points {
        for (k, v) in &expected_resource {
            assert_eq!(
                p.resource.get(k),
                Some(v),
                "resource attribute {k} of {p:?}"
            );
        }
        assert_eq!(p.scope, "invariant-agent");
        let invariant = p.attrs.get("invariant").map(String::as_str);
        let mut allowed = vec!["invariant", "owner", "component"];
        match invariant {
            Some("web-availability") => assert_eq!(p.attrs["owner"], "sig-testing"),
            Some("queue-depth") => {
                assert_eq!(p.attrs["owner"], "sig-scheduling");
                assert_eq!(p.attrs["tier"], "2");
                allowed.push("tier");
            }
            other => panic!("unexpected invariant attribute {other:?} on {p:?}"),
        }
        if p.name == "invariant.samples" || p.name == "invariant.probe.duration" {
            allowed.push("outcome");
        }
        let keys: Vec<&str> = p.attrs.keys().map(String::as_str).collect();
        let mut want = allowed.clone();
        want.sort();
        assert_eq!(
            keys, want,
            "attributes of {} come only from the invariant file",
            p.name
        );
    }
    let names: std::collections::BTreeSet<&str> = points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "invariant.availability",
            "invariant.disruption",
            "invariant.probe.duration",
            "invariant.samples",
            "invariant.state",
            "invariant.value",
            "invariant.violations",
        ]
    );
    let units: BTreeMap<&str, &str> = points
        .iter()
        .map(|p| (p.name.as_str(), p.unit.as_str()))
        .collect();
    assert_eq!(units["invariant.samples"], "{sample}");
    assert_eq!(units["invariant.probe.duration"], "s");
    assert_eq!(units["invariant.disruption"], "s");
    assert_eq!(units["invariant.violations"], "{violation}");
    assert_eq!(units["invariant.availability"], "1");
}

fn check_final_values(points: &[Received], report: &Value) {
    for name in ["web-availability", "queue-depth"] {
        let r = invariant(report, name);
        let inv = [("invariant", name)];
        for outcome in ["ok", "failed", "absent", "missed"] {
            let p = latest(
                points,
                "invariant.samples",
                &[("invariant", name), ("outcome", outcome)],
            )
            .unwrap_or_else(|| panic!("no invariant.samples for {name}/{outcome}"));
            assert_eq!(
                p.data,
                Data::Sum(r["samples"][outcome].as_f64().unwrap(), true, 2),
                "{name} {outcome}"
            );
        }
        for outcome in ["ok", "failed", "absent"] {
            let want = r["samples"][outcome].as_u64().unwrap();
            match latest(
                points,
                "invariant.probe.duration",
                &[("invariant", name), ("outcome", outcome)],
            ) {
                Some(p) => match &p.data {
                    Data::Histogram {
                        count,
                        bounds,
                        counts,
                        temporality,
                        ..
                    } => {
                        assert_eq!(*count, want, "histogram count {name}/{outcome}");
                        assert_eq!(counts.iter().sum::<u64>(), want);
                        assert_eq!(bounds, &BOUNDS.to_vec());
                        assert_eq!(*temporality, 2, "cumulative");
                    }
                    other => panic!("not a histogram: {other:?}"),
                },
                None => assert_eq!(want, 0, "no histogram for {name}/{outcome}"),
            }
        }
        let violations = r["violations"].as_array().unwrap().len() as f64;
        let p = latest(points, "invariant.violations", &inv).unwrap();
        assert_eq!(p.data, Data::Sum(violations, true, 2), "{name} violations");
        let p = latest(points, "invariant.disruption", &inv).unwrap();
        let disruption = r["disruption_seconds"].as_f64().unwrap();
        // The counter never decreases: when an outage closes a few ms earlier than its
        // open estimate (last failure + one interval), the exported value keeps the
        // estimate, so it may exceed the report by those milliseconds.
        let exported = p.data.number();
        assert!(
            exported >= disruption - 1e-9 && exported - disruption < 0.05,
            "{name}: exported {exported} vs report {disruption}"
        );
        let state = match r["state"].as_str().unwrap() {
            "unknown" => 0.0,
            "holding" => 1.0,
            "pending" => 2.0,
            "violated" => 3.0,
            other => panic!("state {other}"),
        };
        assert_eq!(
            latest(points, "invariant.state", &inv).unwrap().data,
            Data::Gauge(state)
        );
    }
    let web = invariant(report, "web-availability");
    assert!(
        web["violations"].as_array().unwrap().len() >= 2,
        "both target outages were violations"
    );
    assert!(web["samples"]["failed"].as_u64().unwrap() >= 4);
    assert!(web["disruption_seconds"].as_f64().unwrap() > 0.0);
    let availability = latest(
        points,
        "invariant.availability",
        &[("invariant", "web-availability")],
    )
    .unwrap();
    let window = web["window_availability_percent"].as_f64().unwrap() / 100.0;
    assert!((availability.data.number() - window).abs() < 1e-9);
    assert!(
        latest(
            points,
            "invariant.availability",
            &[("invariant", "queue-depth")]
        )
        .is_none()
    );
    assert_eq!(
        latest(points, "invariant.value", &[("invariant", "queue-depth")])
            .unwrap()
            .data,
        Data::Gauge(4.0)
    );
    assert!(
        latest(
            points,
            "invariant.value",
            &[("invariant", "web-availability")]
        )
        .is_none()
    );
}

fn check_no_loss_across_outage(
    points: &[Received],
    before_outage: usize,
    after_restart: usize,
    report: &Value,
    ran: Duration,
) {
    let web = invariant(report, "web-availability");
    let taken = web["samples"]["ok"].as_u64().unwrap() + web["samples"]["failed"].as_u64().unwrap();
    // Sampling went on through the collector outage: one sample every 200 ms throughout.
    let expected = (ran.as_millis() / 200) as u64;
    assert!(
        taken + 5 >= expected,
        "took {taken} samples in {ran:?}, expected about {expected}"
    );
    assert_eq!(web["samples"]["missed"], 0);

    let failed_series = map(&[
        ("invariant", "web-availability"),
        ("owner", "sig-testing"),
        ("component", "web"),
        ("outcome", "failed"),
    ]);
    for (name, attrs) in [
        ("invariant.samples", failed_series.clone()),
        ("invariant.probe.duration", failed_series.clone()),
        (
            "invariant.disruption",
            map(&[
                ("invariant", "web-availability"),
                ("owner", "sig-testing"),
                ("component", "web"),
            ]),
        ),
    ] {
        let s = series(points, name, &attrs);
        let before: Vec<_> = s.iter().filter(|p| p.request < before_outage).collect();
        let after: Vec<_> = s
            .iter()
            .filter(|p| p.request >= after_restart - 1)
            .collect();
        assert!(
            !before.is_empty() && !after.is_empty(),
            "{name} exported before and after the outage"
        );
        // One cumulative series: same start time throughout, never decreasing.
        let start = s[0].start;
        let mut last = f64::MIN;
        for p in &s {
            assert_eq!(
                p.start, start,
                "{name}: the cumulative series was not restarted"
            );
            let v = match &p.data {
                Data::Histogram { count, .. } => *count as f64,
                d => d.number(),
            };
            assert!(v >= last, "{name} went down from {last} to {v}");
            last = v;
        }
    }
    // Failures counted while the collector was down reached it afterwards.
    let samples = series(points, "invariant.samples", &failed_series);
    let last_before = samples
        .iter()
        .filter(|p| p.request < before_outage)
        .map(|p| p.data.number())
        .fold(0.0, f64::max);
    let final_value = samples.last().unwrap().data.number();
    assert!(
        final_value >= last_before + 2.0,
        "failures during the outage were exported after it: {last_before} -> {final_value}"
    );
    assert_eq!(final_value, web["samples"]["failed"].as_f64().unwrap());
}

async fn targets() -> (TestHttpServer, TestHttpServer) {
    (
        TestHttpServer::start(Reply::ok("ok")).await,
        TestHttpServer::start(Reply::ok("# TYPE queue_depth gauge\nqueue_depth 4\n")).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotel_receives_every_series_and_no_count_is_lost_across_a_collector_outage() {
    let sink = OtlpSink::start().await;
    let collector = Collector::rotel(sink.addr).await;
    let (web, metrics) = targets().await;
    scenario(collector, sink, web, metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_collector_receives_every_series_and_no_count_is_lost_across_an_outage() {
    let sink = OtlpSink::start().await;
    let collector = Collector::otelcol(sink.addr).await;
    let (web, metrics) = targets().await;
    scenario(collector, sink, web, metrics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_does_not_hold_shutdown_past_the_flush_deadline() {
    // Accepts connections and never answers: every export hangs until its timeout.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hung.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hung.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let (web, _) = targets().await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "  - name: web\n    description: d\n    owner: o\n    interval: 200ms\n    probe:\n      http: {{url: \"{}\"}}\n    condition:\n      availability: {{target: 99, window: 1m}}\n",
        web.url("/")
    ));
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &["--export-interval", "300ms", "--otlp-timeout", "10s"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}"))],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !held.lock().unwrap().is_empty(),
        "the agent connected to the hung collector"
    );
    let sent = Instant::now();
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    let took = sent.elapsed();
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        took < Duration::from_millis(2500),
        "exit took {took:?} with a hung collector:\n{}",
        done.stderr
    );
    assert_eq!(ws.report()["run"]["status"], "completed");
    assert!(
        done.stderr
            .contains("did not take the final export in time"),
        "{}",
        done.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_and_headers_from_the_environment() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let sink =
        OtlpSink::start_with_tls(Some((cert.cert.pem(), cert.signing_key.serialize_pem()))).await;
    let ws = Workspace::new();
    let ca = ws.path("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let (web, _) = targets().await;
    let config = ws.config(&format!(
        "  - name: web\n    description: d\n    owner: o\n    interval: 200ms\n    probe:\n      http: {{url: \"{}\"}}\n    condition:\n      availability: {{target: 99, window: 1m}}\n",
        web.url("/")
    ));
    let endpoint = format!("https://localhost:{}", sink.addr.port());
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--export-interval",
            "300ms",
            "--otlp-header",
            "x-tenant=from-flag",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.to_str().unwrap()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20secret-token,x-tenant=from-env",
            ),
        ],
    );
    wait_for_requests(&sink, 0, Duration::from_secs(10), "over TLS").await;
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let metadata = sink.metadata();
    assert!(
        metadata
            .iter()
            .all(|m| m.get("authorization").map(String::as_str) == Some("Bearer secret-token"))
    );
    assert!(
        metadata
            .iter()
            .all(|m| m.get("x-tenant").map(String::as_str) == Some("from-flag")),
        "{metadata:?}"
    );
    assert!(
        !done.stderr.contains("secret-token"),
        "header values are never logged"
    );
    let report = ws.report();
    let p = latest(&sink.points(), "invariant.samples", &[("outcome", "ok")])
        .unwrap()
        .clone();
    assert_eq!(
        p.data.number(),
        invariant(&report, "web")["samples"]["ok"].as_f64().unwrap()
    );
}

#[tokio::test]
async fn without_an_endpoint_export_is_off_and_said_once() {
    let (web, _) = targets().await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "  - name: web\n    description: d\n    owner: o\n    interval: 200ms\n    probe:\n      http: {{url: \"{}\"}}\n    condition:\n      availability: {{target: 99, window: 1m}}\n",
        web.url("/")
    ));
    let done = wait(spawn_agent_with_env(
        &ws,
        &config,
        &["--duration", "1s"],
        &[],
    ))
    .await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(
        done.stderr.matches("OTLP metric export is off").count(),
        1,
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn bad_export_settings_fail_at_start_naming_each_one() {
    let ws = Workspace::new();
    let config = ws.config(
        "  - name: web\n    description: d\n    owner: o\n    probe:\n      tcp: {address: \"127.0.0.1:1\"}\n    condition:\n      availability: {target: 99, window: 1m}\n",
    );
    let done = wait(spawn_agent_with_env(
        &ws,
        &config,
        &["--duration", "5s", "--otlp-header", "no-equals-sign"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ],
    ))
    .await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    for needle in [
        "OTEL_EXPORTER_OTLP_ENDPOINT: \"collector:4317\" has no http:// or https:// scheme",
        "--otlp-header \"no-equals-sign\"",
        "OTEL_METRIC_EXPORT_INTERVAL: \"soon\"",
    ] {
        assert!(
            done.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            done.stderr
        );
    }
    assert!(!ws.report_dir().join("report.json").exists(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_absent_at_start_gets_everything_once_it_comes_up() {
    let sink = OtlpSink::start().await;
    let (web, _) = targets().await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "  - name: web\n    description: d\n    owner: o\n    interval: 200ms\n    timeout: 1s\n    probe:\n      http: {{url: \"{}\"}}\n    condition:\n      availability: {{target: 99, window: 1m}}\n",
        web.url("/")
    ));
    // The collector's address is known, but nothing listens there yet.
    let mut collector = Collector::rotel(sink.addr).await;
    collector.stop(true).await;
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--otlp-endpoint",
            &collector.endpoint(),
            "--export-interval",
            "300ms",
        ],
        &[],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.request_count(), 0);
    collector.start().await;
    wait_for_requests(
        &sink,
        0,
        Duration::from_secs(10),
        "once the collector is up",
    )
    .await;
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    collector.stop(false).await;
    let report = ws.report();
    let points = sink.points();
    let ok = latest(&points, "invariant.samples", &[("outcome", "ok")]).unwrap();
    // Samples taken before the collector existed are in the totals it received.
    assert_eq!(
        ok.data.number(),
        invariant(&report, "web")["samples"]["ok"].as_f64().unwrap()
    );
    assert!(ok.data.number() >= 7.0, "{:?}", ok.data);
}
