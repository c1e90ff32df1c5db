//! Leader election of the real agent against a real kube-apiserver and etcd, with the
//! agent's own ServiceAccount and RBAC from manifests/: node-scoped invariants run in
//! every agent, cluster-scoped ones in exactly one (the holder of the Lease), and another
//! agent takes over when the leader is killed (after the Lease expires) or stopped
//! (at once: the Lease is released). Without --leader-elect, or without cluster-scoped
//! invariants, no Lease is ever created. Through a real OpenTelemetry Collector, the new
//! leader continues the cluster-scoped series under the same resource and run id.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::export_support::{Collector, OtlpSink, Received, free_port, http_get, wait_for_port};
use crate::kube_support::{KubeApiserver, repo_path};
use crate::support::*;

/// Namespace and name of the Lease (manifests/rbac.yaml grants exactly this one).
const NAMESPACE: &str = "invariant-agent";
const LEASE: &str = "invariant-agent";

/// Sample interval of both invariants.
const INTERVAL_MS: i64 = 500;

/// client-go's timings, which the agent uses.
const LEASE_DURATION_MS: i64 = 15_000;
const RETRY_PERIOD_MS: i64 = 2_000;

/// Scheduling noise on a loaded 2-core machine running an API server and three agents.
const SLACK_MS: i64 = 2_000;

const CLUSTER_INVARIANT: &str = r#"  - name: cluster-readyz
    description: The API server is ready (judged by one agent per cluster).
    owner: test
    scope: cluster
    interval: 500ms
    timeout: 2s
    probe:
      apiserver: {path: /readyz}
    condition:
      availability: {target: 100, window: 1m}
"#;

const NODE_INVARIANT: &str = r#"  - name: node-livez
    description: The API server is live, as this node sees it (judged by every agent).
    owner: test
    scope: node
    interval: 500ms
    timeout: 2s
    probe:
      apiserver: {path: /livez}
    condition:
      availability: {target: 100, window: 1m}
"#;

/// A real API server with the agent's namespace, ServiceAccount and RBAC applied, and a
/// kubeconfig with the ServiceAccount's token.
pub(crate) async fn cluster_with_agent_rbac() -> (KubeApiserver, std::path::PathBuf) {
    let kube = KubeApiserver::start().await;
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let path = repo_path(&format!("manifests/{file}"));
        kube.kubectl_admin_ok(&["apply", "-f", path.to_str().unwrap()])
            .await;
    }
    let token = kube
        .service_account_token(NAMESPACE, "invariant-agent")
        .await;
    let kubeconfig = kube.kubeconfig_for_token("invariant-agent", &token);
    (kube, kubeconfig)
}

/// One agent of the "DaemonSet": its own workspace, pod name and metrics port.
struct Agent {
    name: &'static str,
    ws: Workspace,
    metrics: SocketAddr,
    child: Option<tokio::process::Child>,
    pid: u32,
}

impl Agent {
    /// Starts `invariant-agent run` as pod `name` in the agent's namespace (POD_NAME and
    /// POD_NAMESPACE as the DaemonSet sets them), with `extra` flags.
    async fn start(
        name: &'static str,
        invariants: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(name, invariants, kubeconfig, extra, &[]).await
    }

    /// [`Agent::start`] with more environment variables.
    async fn start_with_env(
        name: &'static str,
        invariants: &str,
        kubeconfig: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let ws = Workspace::new();
        let config = ws.config(invariants);
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_flag = metrics.to_string();
        let mut args = vec![
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--checkpoint-interval",
            "1s",
            "--metrics-listen",
            &metrics_flag,
        ];
        args.extend_from_slice(extra);
        let mut vars = vec![("POD_NAME", name), ("POD_NAMESPACE", NAMESPACE)];
        vars.extend_from_slice(env);
        let child = spawn_agent_with_env(&ws, &config, &args, &vars);
        let pid = child.id().unwrap();
        wait_for_port(metrics, name, Duration::from_secs(30)).await;
        Agent {
            name,
            ws,
            metrics,
            child: Some(child),
            pid,
        }
    }

    /// The agent's `/metrics` in Prometheus text.
    async fn metrics(&self) -> String {
        let (status, _, body) = http_get(self.metrics, "/metrics", None).await;
        assert_eq!(status, 200, "{}: /metrics", self.name);
        body
    }

    /// Waits for the agent to exit (after a signal or its duration) and returns its
    /// report and stderr; it must have exited cleanly.
    async fn finish(&mut self) -> (Value, String) {
        let done = wait(self.child.take().expect("already finished")).await;
        assert_eq!(done.code, Some(0), "{}:\n{}", self.name, done.stderr);
        let report = self.ws.report();
        assert_eq!(report["run"]["status"], "completed", "{}", self.name);
        (report, done.stderr)
    }
}

/// The Lease's holder (empty when unheld), or `None` when there is no Lease.
async fn holder(kube: &KubeApiserver) -> Option<String> {
    lease_field(kube, "{.spec.holderIdentity}").await
}

/// A field of the Lease by JSONPath (empty when unset), or `None` when there is no Lease.
async fn lease_field(kube: &KubeApiserver, path: &str) -> Option<String> {
    let jsonpath = format!("jsonpath={path}");
    let out = kube
        .kubectl_admin(&["get", "lease", LEASE, "-n", NAMESPACE, "-o", &jsonpath])
        .await;
    if out.stderr.contains("NotFound") {
        return None;
    }
    assert_eq!(out.code, Some(0), "kubectl get lease: {}", out.stderr);
    Some(out.stdout.trim().to_string())
}

/// Polls the Lease until `agent` holds it (its identity is its pod name and a random
/// suffix); returns the wall time it was first seen holding it.
async fn wait_for_holder(kube: &KubeApiserver, agent: &str, within: Duration) -> i64 {
    let deadline = now_ms() + within.as_millis() as i64;
    let prefix = format!("{agent}_");
    loop {
        let seen = holder(kube).await;
        if seen.as_deref().is_some_and(|h| h.starts_with(&prefix)) {
            return now_ms();
        }
        assert!(
            now_ms() < deadline,
            "{agent} did not take the Lease within {within:?}; holder: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `run.leadership.intervals` of a report as (start, end) in ms.
fn led(report: &Value) -> Vec<(i64, Option<i64>)> {
    report["run"]["leadership"]["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("no leadership in {:#}", report["run"]))
        .iter()
        .map(|i| (ms(&i["start"]), i["end"].as_str().map(|_| ms(&i["end"]))))
        .collect()
}

fn ok_samples(report: &Value, name: &str) -> i64 {
    invariant(report, name)["samples"]["ok"].as_i64().unwrap()
}

/// Without --leader-elect an agent runs its cluster-scoped invariants itself; with it but
/// no cluster-scoped invariant there is nothing to elect. Neither creates a Lease. Then
/// the election proper: two agents, one of them samples the cluster-scoped invariant and
/// both the node-scoped one; SIGKILL the leader and the other takes over once the Lease
/// expires by its clock; SIGTERM the new leader and a third takes over at its next round
/// (the Lease was released). Every report says when its agent led.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_leader_election_fails_over_on_kill_and_on_term() {
    let (kube, kubeconfig) = cluster_with_agent_rbac().await;
    let both = format!("{CLUSTER_INVARIANT}{NODE_INVARIANT}");

    // No election: no Lease, and every invariant runs here.
    let mut plain = Agent::start("plain", &both, &kubeconfig, &["--duration", "3s"]).await;
    let mut node_only = Agent::start(
        "node-only",
        NODE_INVARIANT,
        &kubeconfig,
        &["--duration", "3s", "--leader-elect"],
    )
    .await;
    let (report, stderr) = plain.finish().await;
    assert_eq!(report["run"]["leadership"], Value::Null, "{stderr}");
    let cluster = invariant(&report, "cluster-readyz");
    assert_eq!(cluster["verdict"], "held", "{cluster:#}\n{stderr}");
    assert_eq!(cluster["note"], Value::Null);
    assert!(ok_samples(&report, "cluster-readyz") >= 3, "{cluster:#}");
    let (report, stderr) = node_only.finish().await;
    assert_eq!(report["run"]["leadership"], Value::Null, "{stderr}");
    assert!(
        stderr.contains("no invariant is cluster-scoped"),
        "{stderr}"
    );
    assert_eq!(invariant(&report, "node-livez")["verdict"], "held");
    assert_eq!(holder(&kube).await, None, "a Lease was created");

    // The election. a starts first and takes the free Lease at once.
    let elect = ["--leader-elect"];
    let mut a = Agent::start("agent-a", &both, &kubeconfig, &elect).await;
    wait_for_holder(&kube, "agent-a", Duration::from_secs(10)).await;
    let mut b = Agent::start("agent-b", &both, &kubeconfig, &elect).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Exactly one agent samples the cluster-scoped invariant; both the node-scoped one.
    let cluster_ok =
        "invariant_samples_total{invariant=\"cluster-readyz\",owner=\"test\",outcome=\"ok\"}";
    let node_ok = "invariant_samples_total{invariant=\"node-livez\",owner=\"test\",outcome=\"ok\"}";
    let (on_a, on_b) = (a.metrics().await, b.metrics().await);
    assert_eq!(
        sample_value(&on_a, "invariant_agent_leader"),
        Some(1.0),
        "{on_a}"
    );
    assert_eq!(
        sample_value(&on_b, "invariant_agent_leader"),
        Some(0.0),
        "{on_b}"
    );
    assert!(
        sample_value(&on_a, cluster_ok).unwrap_or(0.0) >= 4.0,
        "{on_a}"
    );
    assert!(
        !on_b.contains("invariant=\"cluster-readyz\""),
        "a follower exports no cluster-scoped series:\n{on_b}"
    );
    assert!(sample_value(&on_b, node_ok).unwrap_or(0.0) >= 4.0, "{on_b}");

    // SIGKILL the leader: b takes over once the Lease has not changed for its duration
    // by b's clock. a renewed at most one retry period before it died, and b saw that
    // at most one retry period after it; b notices the expiry at its next round.
    let killed = now_ms();
    signal(a.pid, "KILL");
    let b_leads = wait_for_holder(&kube, "agent-b", Duration::from_secs(30)).await;
    assert_between(
        "takeover after SIGKILL",
        b_leads - killed,
        LEASE_DURATION_MS - RETRY_PERIOD_MS - SLACK_MS,
        LEASE_DURATION_MS + 2 * RETRY_PERIOD_MS + SLACK_MS,
    );

    // c joins as a follower; SIGTERM b: it releases the Lease and c takes it at its next
    // round instead of after the lease duration.
    let mut c = Agent::start("agent-c", &both, &kubeconfig, &elect).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sample_value(&c.metrics().await, "invariant_agent_leader"),
        Some(0.0)
    );
    let terminated = now_ms();
    signal(b.pid, "TERM");
    let c_leads = wait_for_holder(&kube, "agent-c", Duration::from_secs(10)).await;
    assert_between(
        "takeover after SIGTERM",
        c_leads - terminated,
        0,
        RETRY_PERIOD_MS + SLACK_MS + 1_000,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c_stopped = now_ms();
    signal(c.pid, "TERM");

    // a was killed: its last checkpoint shows it leading from its start, never stopping.
    let a_report = a.ws.report();
    drop(a.child.take());
    assert_eq!(a_report["run"]["status"], "running");
    let a_led = led(&a_report);
    assert_eq!(a_led.len(), 1, "{a_led:?}");
    assert_eq!(a_led[0].1, None, "killed while leading");
    assert!(ok_samples(&a_report, "cluster-readyz") >= 6, "{a_report:#}");

    let (b_report, b_stderr) = b.finish().await;
    let context = format!("killed={killed} b_leads={b_leads} terminated={terminated}\n{b_stderr}");
    let b_led = led(&b_report);
    assert_eq!(b_led.len(), 1, "{b_led:?}\n{context}");
    let (b_start, b_end) = (b_led[0].0, b_led[0].1.expect("closed by the run's end"));
    assert_between("b's leadership start", b_start, killed, b_leads + 100);
    assert_between(
        "b's leadership end",
        b_end,
        terminated,
        terminated + SLACK_MS,
    );
    // b sampled the cluster-scoped invariant exactly while it led, and the node-scoped
    // one all along.
    let expected = (b_end - b_start) / INTERVAL_MS;
    assert_between(
        "b's cluster-scoped samples",
        ok_samples(&b_report, "cluster-readyz"),
        expected - 3,
        expected + 2,
    );
    let b_run = (b_report["run"]["duration_seconds"].as_f64().unwrap() * 1000.0) as i64;
    assert!(
        ok_samples(&b_report, "node-livez") >= b_run / INTERVAL_MS - 4,
        "{context}"
    );
    let b_cluster = invariant(&b_report, "cluster-readyz");
    assert_eq!(b_cluster["verdict"], "held", "{b_cluster:#}");
    assert!(
        b_cluster["note"]
            .as_str()
            .is_some_and(|n| n.contains("sampled only while this agent held the Lease")),
        "{b_cluster:#}"
    );
    assert_eq!(invariant(&b_report, "node-livez")["note"], Value::Null);
    assert_eq!(
        b_report["run"]["leadership"]["lease"],
        format!("{NAMESPACE}/{LEASE}")
    );
    assert!(
        b_stderr.contains("this agent now leads") && b_stderr.contains("released the Lease"),
        "{context}"
    );

    let (c_report, c_stderr) = c.finish().await;
    let c_led = led(&c_report);
    assert_eq!(c_led.len(), 1, "{c_led:?}\n{c_stderr}");
    let (c_start, c_end) = (c_led[0].0, c_led[0].1.unwrap());
    assert!(
        c_start >= b_end,
        "c led from {c_start}, before b stopped at {b_end}"
    );
    assert_between("c's leadership start", c_start, terminated, c_leads + 100);
    assert_between("c's leadership end", c_end, c_stopped, c_stopped + SLACK_MS);
    assert!(ok_samples(&c_report, "cluster-readyz") >= 4, "{c_stderr}");
    assert!(ok_samples(&c_report, "node-livez") >= 10, "{c_stderr}");
    assert_eq!(
        holder(&kube).await.as_deref(),
        Some(""),
        "c released the Lease"
    );
}

/// An agent that never leads reports its cluster-scoped invariant as not examined, with
/// the reason, rather than as held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_leader_a_follower_that_never_led_reports_not_examined_with_the_reason() {
    let (kube, kubeconfig) = cluster_with_agent_rbac().await;
    let both = format!("{CLUSTER_INVARIANT}{NODE_INVARIANT}");
    let elect = ["--leader-elect"];
    let mut leader = Agent::start("leader", &both, &kubeconfig, &elect).await;
    wait_for_holder(&kube, "leader", Duration::from_secs(10)).await;
    let mut follower = Agent::start(
        "follower",
        &both,
        &kubeconfig,
        &["--leader-elect", "--duration", "4s"],
    )
    .await;
    let (report, stderr) = follower.finish().await;
    signal(leader.pid, "TERM");
    leader.finish().await;

    assert!(led(&report).is_empty(), "{stderr}");
    let cluster = invariant(&report, "cluster-readyz");
    assert_eq!(cluster["verdict"], "not_examined", "{cluster:#}");
    assert_eq!(cluster["samples"]["ok"], 0);
    let note = cluster["note"].as_str().unwrap();
    assert!(
        note.contains("never held it") && note.contains("invariant-agent/invariant-agent"),
        "{note}"
    );
    assert_eq!(invariant(&report, "node-livez")["verdict"], "held");
    assert!(stderr.contains("another agent leads"), "{stderr}");
    let junit = std::fs::read_to_string(follower.ws.report_dir().join("report.junit.xml")).unwrap();
    assert!(junit.contains("never held it"), "{junit}");
}

/// Resource attributes that name one agent: absent from the cluster-scoped series.
const PER_AGENT: [&str; 3] = ["service.instance.id", "k8s.pod.name", "k8s.node.name"];

/// The received points of `name` for `invariant` (and `outcome`, if given).
fn points_of<'a>(
    points: &'a [Received],
    name: &str,
    invariant: &str,
    outcome: Option<&str>,
) -> Vec<&'a Received> {
    let mut found: Vec<&Received> = points
        .iter()
        .filter(|p| {
            p.name == name
                && p.attrs.get("invariant").map(String::as_str) == Some(invariant)
                && outcome.is_none_or(|o| p.attrs.get("outcome").map(String::as_str) == Some(o))
        })
        .collect();
    found.sort_by_key(|p| (p.time, p.request));
    found
}

/// Polls the sink until `done` holds for what it received.
async fn wait_for_points(
    sink: &OtlpSink,
    what: &str,
    within: Duration,
    done: impl Fn(&[Received]) -> bool,
) {
    let deadline = now_ms() + within.as_millis() as i64;
    loop {
        if done(&sink.points()) {
            return;
        }
        assert!(now_ms() < deadline, "{what}: not seen within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The label sets (without values) of the `invariant="cluster-readyz"` samples in a
/// Prometheus text exposition, and its `target_info` line.
fn cluster_series_labels(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.contains("invariant=\"cluster-readyz\""))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

fn target_label(text: &str, label: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("target_info{"))?;
    let start = line.find(&format!("{label}=\""))? + label.len() + 2;
    let end = start + line[start..].find('"')?;
    Some(line[start..end].to_string())
}

/// Two agents export over OTLP through the official OpenTelemetry Collector. The leader
/// exports the cluster-scoped invariant's series under the cluster resource (no pod,
/// node or instance), the node-scoped ones under its own; SIGKILL it and the new leader
/// continues the cluster-scoped series under the identical resource and run id (the one
/// on the Lease, in both reports), as a new cumulative stream (a new start time, counted
/// from its takeover, its final export equal to its report). On /metrics the two leaders'
/// cluster-scoped series carry identical labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_leader_the_new_leader_continues_the_cluster_scoped_series() {
    let (kube, kubeconfig) = cluster_with_agent_rbac().await;
    let sink = OtlpSink::start().await;
    let collector = Collector::otelcol(sink.addr).await;
    let endpoint = collector.endpoint();
    let both = format!("{CLUSTER_INVARIANT}{NODE_INVARIANT}");
    let flags = [
        "--leader-elect",
        "--otlp-endpoint",
        &endpoint,
        "--export-interval",
        "1s",
        "--resource-attribute",
        "deployment.environment=e2e",
    ];
    let mut a = Agent::start_with_env(
        "agent-a",
        &both,
        &kubeconfig,
        &flags,
        &[("NODE_NAME", "node-a")],
    )
    .await;
    wait_for_holder(&kube, "agent-a", Duration::from_secs(10)).await;
    let mut b = Agent::start_with_env(
        "agent-b",
        &both,
        &kubeconfig,
        &flags,
        &[("NODE_NAME", "node-b")],
    )
    .await;

    // a's cluster-scoped series and both agents' node-scoped ones arrive.
    wait_for_points(
        &sink,
        "a's cluster series, b's node series",
        Duration::from_secs(30),
        |p| {
            points_of(p, "invariant.samples", "cluster-readyz", Some("ok"))
                .last()
                .is_some_and(|p| p.data.number() >= 4.0)
                && points_of(p, "invariant.samples", "node-livez", Some("ok"))
                    .iter()
                    .any(|p| p.resource.get("k8s.pod.name").map(String::as_str) == Some("agent-b"))
        },
    )
    .await;
    let on_a = a.metrics().await;

    let killed = now_ms();
    signal(a.pid, "KILL");
    let b_leads = wait_for_holder(&kube, "agent-b", Duration::from_secs(30)).await;
    let killed_ns = (killed as u64) * 1_000_000;
    wait_for_points(&sink, "b's cluster series", Duration::from_secs(30), |p| {
        points_of(p, "invariant.samples", "cluster-readyz", Some("ok"))
            .iter()
            .any(|p| p.start > killed_ns && p.data.number() >= 4.0)
    })
    .await;
    let on_b = b.metrics().await;
    let lease_run_id = lease_field(&kube, "{.metadata.annotations.invariant-agent/run-id}")
        .await
        .expect("the Lease exists");
    signal(b.pid, "TERM");
    let (b_report, b_stderr) = b.finish().await;
    let a_report = a.ws.report();
    drop(a.child.take());

    // One run id, from the Lease, in both reports.
    let run_id = b_report["run"]["id"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("run-"), "{run_id}");
    assert_eq!(lease_run_id, run_id, "{b_stderr}");
    assert_eq!(a_report["run"]["id"], run_id);

    let points = sink.points();
    let context = format!("killed={killed} b_leads={b_leads}\n{b_stderr}");

    // The cluster-scoped series: every point (all metrics) under one resource without
    // per-agent attributes, with the shared run id and the configured attribute.
    let cluster: Vec<&Received> = points
        .iter()
        .filter(|p| p.attrs.get("invariant").map(String::as_str) == Some("cluster-readyz"))
        .collect();
    let resources: BTreeSet<&BTreeMap<String, String>> =
        cluster.iter().map(|p| &p.resource).collect();
    assert_eq!(resources.len(), 1, "{resources:#?}\n{context}");
    let resource = *resources.iter().next().unwrap();
    for key in PER_AGENT {
        assert!(!resource.contains_key(key), "{key} in {resource:?}");
    }
    for (key, value) in [
        ("invariant.run.id", run_id.as_str()),
        ("service.name", "invariant-agent"),
        ("deployment.environment", "e2e"),
        ("k8s.namespace.name", NAMESPACE),
    ] {
        assert_eq!(
            resource.get(key).map(String::as_str),
            Some(value),
            "{resource:?}"
        );
    }
    let names: BTreeSet<&str> = cluster.iter().map(|p| p.name.as_str()).collect();
    for name in [
        "invariant.samples",
        "invariant.state",
        "invariant.probe.duration",
    ] {
        assert!(names.contains(name), "{names:?}");
    }

    // Both leaders' data points, each leader's a cumulative stream of its own: a's started
    // before the kill and ended with it, b's started after it; counters never decrease
    // within a stream; b's final export is its report's count.
    let ok = points_of(&points, "invariant.samples", "cluster-readyz", Some("ok"));
    let mut streams: BTreeMap<u64, Vec<(u64, f64)>> = BTreeMap::new();
    for p in &ok {
        streams
            .entry(p.start)
            .or_default()
            .push((p.time, p.data.number()));
    }
    assert_eq!(streams.len(), 2, "{streams:?}\n{context}");
    let (a_stream, b_stream) = (
        &streams.values().next().unwrap(),
        streams.values().last().unwrap(),
    );
    let b_start = *streams.keys().last().unwrap();
    assert!(
        a_stream.iter().all(|(t, _)| *t <= killed_ns),
        "{a_stream:?} {context}"
    );
    assert!(b_start > killed_ns, "{context}");
    for stream in [a_stream, b_stream] {
        assert!(stream.windows(2).all(|w| w[0].1 <= w[1].1), "{stream:?}");
    }
    assert!(a_stream.last().unwrap().1 >= 4.0, "{a_stream:?}");
    assert!(
        b_stream[0].1 <= 6.0 && b_stream[0].1 < a_stream.last().unwrap().1,
        "b counts from its takeover, not from a's total: {b_stream:?}"
    );
    assert_eq!(
        b_stream.last().unwrap().1,
        ok_samples(&b_report, "cluster-readyz") as f64,
        "{context}"
    );

    // The node-scoped series stay per agent: one resource per agent, same run id.
    let node = points_of(&points, "invariant.samples", "node-livez", Some("ok"));
    let pods: BTreeSet<(Option<&String>, Option<&String>, Option<&String>)> = node
        .iter()
        .map(|p| {
            assert_eq!(p.resource.get("invariant.run.id"), Some(&run_id));
            (
                p.resource.get("k8s.pod.name"),
                p.resource.get("k8s.node.name"),
                p.resource.get("service.instance.id"),
            )
        })
        .collect();
    let pod = |s: &str| Some(s.to_string());
    assert_eq!(
        pods,
        BTreeSet::from([
            (
                pod("agent-a").as_ref(),
                pod("node-a").as_ref(),
                pod("agent-a").as_ref()
            ),
            (
                pod("agent-b").as_ref(),
                pod("node-b").as_ref(),
                pod("agent-b").as_ref()
            ),
        ])
    );
    assert!(
        points
            .iter()
            .filter(|p| p.name == "invariant.agent.leader")
            .all(|p| p.resource.contains_key("k8s.pod.name")),
        "who leads is per agent"
    );

    // /metrics: the cluster-scoped series of both leaders carry the same labels (the
    // scrape adds the target's), and both agents name the same run.
    let (labels_a, labels_b) = (cluster_series_labels(&on_a), cluster_series_labels(&on_b));
    assert!(!labels_a.is_empty(), "{on_a}");
    assert_eq!(labels_a, labels_b, "{on_a}\n{on_b}");
    assert_eq!(
        target_label(&on_a, "invariant_run_id"),
        Some(run_id.clone())
    );
    assert_eq!(target_label(&on_b, "invariant_run_id"), Some(run_id));
}
