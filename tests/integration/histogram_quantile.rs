//! `histogramQuantile` end to end: the real agent scrapes a real HTTP server serving
//! crafted apiserver_request_duration_seconds histograms. A slow group violates the SLO
//! threshold and the agent names the group; and the agent's value agrees with what a real
//! Prometheus (Debian package) computes with `histogram_quantile` over `increase` from
//! the same scrapes, counter reset included.

use std::time::Duration;

use crate::export_prometheus::{Prometheus, value};
use crate::support::{Reply, TestHttpServer, Workspace, invariant, signal, spawn_agent, wait};

/// Bucket bounds, as the API server writes them.
const BOUNDS: [&str; 7] = ["0.05", "0.1", "0.5", "1", "5", "30", "+Inf"];

/// One label set of the histogram: verb, resource, scope and cumulative counts per bound.
type Histogram = (&'static str, &'static str, &'static str, [u64; 7]);

/// The histogram's exposition, as kube-apiserver writes it (with `_sum` and `_count`,
/// which the probe must not mistake for buckets).
fn body(histograms: &[Histogram]) -> String {
    let mut out = String::from(
        "# HELP apiserver_request_duration_seconds Response latency distribution.\n\
         # TYPE apiserver_request_duration_seconds histogram\n",
    );
    for (verb, resource, scope, counts) in histograms {
        let labels = format!(
            "component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"{resource}\",\
             scope=\"{scope}\",subresource=\"\",verb=\"{verb}\",version=\"v1\""
        );
        for (le, count) in BOUNDS.iter().zip(counts) {
            out.push_str(&format!(
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "apiserver_request_duration_seconds_sum{{{labels}}} 12.5\n\
             apiserver_request_duration_seconds_count{{{labels}}} {}\n",
            counts[6]
        ));
    }
    out
}

const SERIES: &str =
    r#"apiserver_request_duration_seconds_bucket{verb!~"WATCH|WATCHLIST|CONNECT"}"#;
const BY: &str = "[resource, subresource, verb, scope]";

fn config(ws: &Workspace, url: &str, window: &str, max: f64) -> std::path::PathBuf {
    ws.config(&format!(
        r#"  - name: api-call-latency
    description: The worst p99 of API calls stays within the SLO.
    owner: sig-scalability
    scope: cluster
    interval: 200ms
    probe:
      metrics:
        url: "{url}"
        series: '{SERIES}'
        histogramQuantile: {{quantile: 0.99, window: {window}, by: {BY}}}
    condition:
      threshold: {{max: {max}}}
"#
    ))
}

/// Slow cluster-scoped LISTs among fast GETs violate a 1 s threshold; the violation says
/// by how much and the agent's log names the group (verb, resource, scope). A WATCH in
/// the same scrape, slow by nature, is left out by the series' matcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_quantile_violation_names_the_worst_group() {
    let before: [Histogram; 3] = [
        ("GET", "pods", "resource", [100; 7]),
        ("LIST", "pods", "cluster", [10; 7]),
        ("WATCH", "pods", "cluster", [0, 0, 0, 0, 0, 0, 5]),
    ];
    // Then: 50 GETs within 50 ms; 10 LISTs, 2 within 0.5 s and 8 between 1 s and 5 s;
    // 20 WATCHes ending after 30 s.
    let after: [Histogram; 3] = [
        ("GET", "pods", "resource", [150; 7]),
        ("LIST", "pods", "cluster", [10, 10, 12, 12, 20, 20, 20]),
        ("WATCH", "pods", "cluster", [0, 0, 0, 0, 0, 0, 25]),
    ];
    let server = TestHttpServer::start(Reply::ok(&body(&before))).await;
    let ws = Workspace::new();
    let config = config(&ws, &server.url("/metrics"), "1m", 1.0);
    let agent = spawn_agent(&ws, &config, &["--duration", "4s"]);
    // Several scrapes of the baseline (no observations yet: no value), then the change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.set(Reply::ok(&body(&after)));
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);

    let report = ws.report();
    let inv = invariant(&report, "api-call-latency");
    assert_eq!(inv["verdict"], "violated", "{inv:#}");
    // LIST's p99: rank 9.9 of 10 falls in (1, 5] holding 8: 1 + 4 × (9.9 - 2) / 8.
    let expected = 1.0 + 4.0 * (9.9 - 2.0) / 8.0;
    let last = inv["last_value"].as_f64().unwrap();
    assert!((last - expected).abs() < 1e-9, "{last} vs {expected}");
    let violation = &inv["violations"][0];
    assert!(
        violation["first_error"]
            .as_str()
            .unwrap()
            .starts_with("value 4.95"),
        "{violation:#}"
    );
    assert!(
        done.stderr.contains(
            r#"max group is now {resource="pods",subresource="",verb="LIST",scope="cluster"} at 4.95"#
        ),
        "the log does not name the slow group:\n{}",
        done.stderr
    );
    assert!(!done.stderr.contains(r#"verb="WATCH""#), "{}", done.stderr);
}

/// The same scrapes seen by the agent and by a real Prometheus give the same quantile:
/// the agent's value is PromQL's
/// `max(histogram_quantile(0.99, sum by (le, …) (increase(…[1h]))))`, through new
/// observations in every group and a counter reset of one group. (Every series starts
/// high enough that Prometheus' extrapolation scales all buckets alike; a series that
/// starts at 0 would be extrapolated less, which the agent does not imitate.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_quantile_agrees_with_prometheus() {
    let states: [[Histogram; 4]; 4] = [
        [
            (
                "GET",
                "pods",
                "resource",
                [5000, 6000, 7000, 7500, 8000, 8000, 8000],
            ),
            (
                "LIST",
                "pods",
                "cluster",
                [1000, 1200, 1500, 1800, 2000, 2000, 2000],
            ),
            (
                "LIST",
                "configmaps",
                "namespace",
                [300, 300, 400, 500, 600, 600, 600],
            ),
            ("WATCH", "pods", "cluster", [0, 0, 0, 0, 0, 0, 100]),
        ],
        [
            (
                "GET",
                "pods",
                "resource",
                [5100, 6150, 7180, 7690, 8200, 8200, 8200],
            ),
            (
                "LIST",
                "pods",
                "cluster",
                [1010, 1220, 1530, 1860, 2090, 2100, 2100],
            ),
            (
                "LIST",
                "configmaps",
                "namespace",
                [300, 300, 405, 505, 605, 605, 605],
            ),
            ("WATCH", "pods", "cluster", [0, 0, 0, 0, 0, 0, 110]),
        ],
        [
            // The cluster LIST histogram restarts from 0 (an API server restart).
            (
                "GET",
                "pods",
                "resource",
                [5150, 6220, 7260, 7775, 8300, 8300, 8300],
            ),
            ("LIST", "pods", "cluster", [1, 2, 3, 5, 8, 10, 12]),
            (
                "LIST",
                "configmaps",
                "namespace",
                [300, 301, 407, 510, 615, 615, 615],
            ),
            ("WATCH", "pods", "cluster", [0, 0, 0, 0, 0, 0, 120]),
        ],
        [
            (
                "GET",
                "pods",
                "resource",
                [5200, 6290, 7340, 7860, 8400, 8400, 8400],
            ),
            ("LIST", "pods", "cluster", [3, 6, 9, 14, 20, 29, 30]),
            (
                "LIST",
                "configmaps",
                "namespace",
                [300, 302, 410, 515, 625, 625, 625],
            ),
            ("WATCH", "pods", "cluster", [0, 0, 0, 0, 0, 0, 130]),
        ],
    ];
    let server = TestHttpServer::start(Reply::ok(&body(&states[0]))).await;
    let prometheus = Prometheus::start(server.addr).await;
    let ws = Workspace::new();
    let config = config(&ws, &server.url("/metrics"), "1h", 1000.0);
    let agent = spawn_agent(&ws, &config, &[]);

    // Each state stays until Prometheus has scraped it (the GET count differs in every
    // state); the agent scrapes five times a second, so it sees every state too.
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            server.set(Reply::ok(&body(state)));
        }
        let get_count = state[0].3[6];
        prometheus
            .until_some(
                &format!(
                    r#"apiserver_request_duration_seconds_count{{verb="GET"}} == {get_count}"#
                ),
                Duration::from_secs(30),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);

    let quantiles = format!(
        "histogram_quantile(0.99, sum by (le, resource, subresource, verb, scope) \
         (increase({SERIES}[1h])))"
    );
    let promql = prometheus.query(&format!("max({quantiles})")).await;
    assert_eq!(promql.len(), 1, "{promql:?}\n{}", prometheus.log());
    let expected = value(&promql[0]);
    // By hand: the cluster LISTs grew by 110 at 5 s, 129 at 30 s and 130 in all (reset
    // included), so rank 128.7 is interpolated in (5, 30]; the other groups stay below.
    let by_hand = 5.0 + 25.0 * (128.7 - 110.0) / (129.0 - 110.0);
    assert!(
        (expected - by_hand).abs() < 1e-9,
        "Prometheus {expected}, by hand {by_hand}"
    );
    let report = ws.report();
    let inv = invariant(&report, "api-call-latency");
    let agent_value = inv["last_value"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (agent_value - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "agent {agent_value} vs Prometheus {expected} ({inv:#})"
    );
    // The group too: the one Prometheus ranks first is the one the agent names last.
    let top = prometheus.query(&format!("topk(1, {quantiles})")).await;
    let m = &top[0]["metric"];
    let group = format!(
        r#"{{resource="{}",subresource="",verb="{}",scope="{}"}}"#,
        m["resource"].as_str().unwrap(),
        m["verb"].as_str().unwrap(),
        m["scope"].as_str().unwrap()
    );
    let last_logged = done
        .stderr
        .lines()
        .rfind(|l| l.contains("max group is now"))
        .unwrap_or_else(|| panic!("no group logged:\n{}", done.stderr));
    assert!(last_logged.contains(&group), "{last_logged} vs {group}");
}
