//! Leader election of the real agent against a real kube-apiserver and etcd, with the
//! agent's own ServiceAccount and RBAC from manifests/: node-scoped invariants run in
//! every agent, cluster-scoped ones in exactly one (the holder of the Lease), and another
//! agent takes over when the leader is killed (after the Lease expires) or stopped
//! (at once: the Lease is released). Without --leader-elect, or without cluster-scoped
//! invariants, no Lease is ever created.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::export_support::{free_port, http_get, wait_for_port};
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
        let child = spawn_agent_with_env(
            &ws,
            &config,
            &args,
            &[("POD_NAME", name), ("POD_NAMESPACE", NAMESPACE)],
        );
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
    let out = kube
        .kubectl_admin(&[
            "get",
            "lease",
            LEASE,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
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
