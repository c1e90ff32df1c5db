//! The Kubernetes probes (`apiserver`, `resource`, `events`) of the real agent against a
//! real kube-apiserver and etcd: RBAC refusals are failed samples saying what to grant,
//! a Node going NotReady is one violation with the right bounds, repeated Events trip
//! the pathological-event invariant, and an API server outage is a violation the agent
//! survives, with its watches resuming afterwards.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::kube_support::{KubeApiserver, repo_path};
use crate::support::*;

/// Sample interval of these tests; violation bounds must be within one interval.
const INTERVAL_MS: i64 = 250;

/// Scheduling noise on a loaded 2-core machine running an API server, on top of one
/// interval (kubectl's own start-up is outside the measured window: times are taken
/// just before and after each kubectl call).
const SLACK_MS: i64 = 400;

/// Writes an invariant file with `invariants` (YAML list items indented by two spaces).
fn config(ws: &Workspace, invariants: &str) -> std::path::PathBuf {
    ws.config(invariants)
}

/// Starts the agent with `kubeconfig` for `duration`, checkpointing every second.
fn agent(
    ws: &Workspace,
    config: &Path,
    kubeconfig: &Path,
    duration: &str,
) -> tokio::process::Child {
    spawn_agent(
        ws,
        config,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--duration",
            duration,
            "--checkpoint-interval",
            "1s",
        ],
    )
}

/// Waits for the agent, asserts it ended cleanly with a report that meets
/// docs/report.schema.json, and returns the report and the agent's stderr.
async fn finish(ws: &Workspace, child: tokio::process::Child) -> (Value, String) {
    let done = wait(child).await;
    assert_eq!(
        done.code,
        Some(0),
        "the agent must survive whatever the API server does:\n{}",
        done.stderr
    );
    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed", "{}", done.stderr);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("docs/report.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the report schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "report does not meet the schema: {errors:#?}"
    );
    (report, done.stderr)
}

/// Runs `kubectl` as the admin and returns the wall times just before and after it.
async fn kubectl_timed(kube: &KubeApiserver, args: &[&str]) -> (i64, i64) {
    let before = now_ms();
    kube.kubectl_admin_ok(args).await;
    (before, now_ms())
}

/// Applies `yaml` as the admin.
async fn apply(kube: &KubeApiserver, yaml: &str) {
    let out = kube
        .kubectl_with_stdin(kube.admin_kubeconfig(), &["apply", "-f", "-"], Some(yaml))
        .await;
    assert_eq!(out.code, Some(0), "kubectl apply:\n{yaml}\n{}", out.stderr);
}

fn node_ready_patch(status: &str) -> String {
    format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"{status}","reason":"Test","message":"set by the test"}}]}}}}"#
    )
}

/// The kube invariants of the RBAC test, on whatever the credentials allow.
const RBAC_INVARIANTS: &str = r#"  - name: nodes-listed
    description: Nodes can be listed and watched.
    owner: test
    interval: 500ms
    timeout: 2s
    probe:
      resource: {apiVersion: v1, kind: Node, expression: 'true'}
    condition:
      availability: {target: 100, window: 1m}
  - name: kube-system-restarts
    description: Pods in kube-system can be listed and watched.
    owner: test
    interval: 500ms
    timeout: 2s
    probe:
      resource:
        apiVersion: v1
        kind: Pod
        namespace: kube-system
        expression: 'has(object.status.containerStatuses) ? object.status.containerStatuses.map(s, s.restartCount).sum() : 0'
    condition:
      availability: {target: 100, window: 1m}
  - name: events-watched
    description: Events can be listed and watched.
    owner: test
    interval: 500ms
    timeout: 2s
    probe:
      events: {measure: maxRepeats}
    condition:
      availability: {target: 100, window: 1m}
  - name: default-namespace
    description: The default namespace can be read.
    owner: test
    interval: 500ms
    timeout: 2s
    probe:
      apiserver: {path: /api/v1/namespaces/default, body: {contains: '"kind":"Namespace"'}}
    condition:
      availability: {target: 100, window: 1m}
  - name: apiserver-metrics
    description: The API server's metrics can be read.
    owner: test
    interval: 500ms
    timeout: 2s
    probe:
      apiserver: {path: /metrics, series: apiserver_request_total, aggregation: count}
    condition:
      availability: {target: 100, window: 1m}
  - name: readyz
    description: Every authenticated user may read /readyz.
    owner: test
    interval: 500ms
    timeout: 2s
    probe:
      apiserver: {path: /readyz, connection: new, body: {contains: ok}}
    condition:
      availability: {target: 100, window: 1m}
"#;

/// A probe outside the ServiceAccount's permissions is a failed sample of class
/// `forbidden` saying which verb on which resource to grant, never a crash; a token the
/// API server does not know is `unauthorized`; and with manifests/rbac.yaml applied, the
/// agent's ServiceAccount may do everything these probes need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_probes_forbidden_unauthorized_and_the_shipped_rbac() {
    let kube = KubeApiserver::start().await;
    kube.create_service_account("probe-ns", "prober").await;
    let token = kube.service_account_token("probe-ns", "prober").await;
    let no_rights = kube.kubeconfig_for_token("prober", &token);
    let bogus = kube.kubeconfig_for_token("bogus", "not-a-token");

    let denied_ws = Workspace::new();
    let denied = agent(
        &denied_ws,
        &config(&denied_ws, RBAC_INVARIANTS),
        &no_rights,
        "4s",
    );
    let unknown_ws = Workspace::new();
    let unknown = agent(
        &unknown_ws,
        &config(
            &unknown_ws,
            r#"  - name: readyz
    description: ready
    owner: test
    interval: 500ms
    probe:
      apiserver: {path: /readyz}
    condition:
      availability: {target: 100, window: 1m}
  - name: nodes
    description: nodes
    owner: test
    interval: 500ms
    probe:
      resource: {apiVersion: v1, kind: Node, expression: 'true'}
    condition:
      availability: {target: 100, window: 1m}
"#,
        ),
        &bogus,
        "3s",
    );
    let (report, stderr) = finish(&denied_ws, denied).await;
    let expected = [
        (
            "nodes-listed",
            "forbidden: needs verb \"list\" on resource \"nodes\" (group \"\") — grant it in the agent's ClusterRole (user \"system:serviceaccount:probe-ns:prober\")",
        ),
        (
            "kube-system-restarts",
            "forbidden: needs verb \"list\" on resource \"pods\" (group \"\") in namespace \"kube-system\" — grant it in the agent's ClusterRole (user \"system:serviceaccount:probe-ns:prober\")",
        ),
        (
            "events-watched",
            "forbidden: needs verb \"list\" on resource \"events\" (group \"\") — grant it in the agent's ClusterRole (user \"system:serviceaccount:probe-ns:prober\")",
        ),
        (
            "default-namespace",
            "forbidden: needs verb \"get\" on resource \"namespaces\" (group \"\")",
        ),
        (
            "apiserver-metrics",
            "forbidden: needs verb \"get\" on non-resource URL \"/metrics\" — grant it in the agent's ClusterRole under nonResourceURLs (user \"system:serviceaccount:probe-ns:prober\")",
        ),
    ];
    for (name, message) in expected {
        let v = violations(&report, name);
        assert_eq!(v.len(), 1, "{name}: {v:#?}\n{stderr}");
        assert_eq!(v[0]["error_class"], "forbidden", "{name}: {v:#?}");
        let first = format!("forbidden: {}", v[0]["first_error"].as_str().unwrap());
        assert!(first.starts_with(message), "{name}: {first}");
        assert_eq!(invariant(&report, name)["samples"]["ok"], 0, "{name}");
    }
    let readyz = invariant(&report, "readyz");
    assert_eq!(readyz["verdict"], "held", "{readyz:#}");

    let (report, stderr) = finish(&unknown_ws, unknown).await;
    for name in ["readyz", "nodes"] {
        let v = violations(&report, name);
        assert_eq!(v.len(), 1, "{name}: {v:#?}\n{stderr}");
        assert_eq!(v[0]["error_class"], "unauthorized", "{name}: {v:#?}");
        assert!(
            v[0]["first_error"]
                .as_str()
                .unwrap()
                .contains("did not accept the agent's credentials"),
            "{v:#?}"
        );
    }

    // The shipped RBAC grants all of it to the agent's ServiceAccount.
    for file in ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"] {
        let path = repo_path(&format!("manifests/{file}"));
        kube.kubectl_admin_ok(&["apply", "-f", path.to_str().unwrap()])
            .await;
    }
    let token = kube
        .service_account_token("invariant-agent", "invariant-agent")
        .await;
    let agent_kubeconfig = kube.kubeconfig_for_token("invariant-agent", &token);
    let ws = Workspace::new();
    let granted = agent(&ws, &config(&ws, RBAC_INVARIANTS), &agent_kubeconfig, "3s");
    let (report, stderr) = finish(&ws, granted).await;
    for inv in report["invariants"].as_array().unwrap() {
        assert_eq!(inv["verdict"], "held", "{inv:#}\n{stderr}");
        assert_eq!(inv["samples"]["failed"], 0, "{inv:#}");
    }
    // The metrics series is there (a count of its series, not absent).
    assert!(
        invariant(&report, "apiserver-metrics")["last_value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// A Node whose Ready condition goes False and back is one violation of "all Nodes
/// Ready", bounded within one interval, while an invariant sharing the same watch holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_probes_node_not_ready_is_one_violation_with_exact_bounds() {
    let kube = KubeApiserver::start().await;
    apply(
        &kube,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {role: test}\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-2\n",
    )
    .await;
    for node in ["node-1", "node-2"] {
        kube.kubectl_admin_ok(&[
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=merge",
            "-p",
            &node_ready_patch("True"),
        ])
        .await;
    }
    let ws = Workspace::new();
    let config = config(
        &ws,
        r#"  - name: nodes-ready
    description: every Node is Ready
    owner: sig-node
    interval: 250ms
    timeout: 2s
    probe:
      resource:
        apiVersion: v1
        kind: Node
        expression: '!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")'
    condition:
      threshold: {max: 0}
  - name: nodes-present
    description: both Nodes exist (the same watch as nodes-ready)
    owner: sig-node
    interval: 250ms
    timeout: 2s
    probe:
      resource: {apiVersion: v1, kind: Node, expression: 'true', aggregation: count}
    condition:
      threshold: {min: 2, max: 2}
  - name: test-nodes
    description: the labelled Node is Ready (its own watch, with a label selector)
    owner: sig-node
    interval: 250ms
    timeout: 2s
    probe:
      resource:
        apiVersion: v1
        kind: Node
        labelSelector: role=test
        expression: 'object.status.conditions.filter(c, c.type == "Ready" && c.status != "True").size()'
        aggregation: max
    condition:
      threshold: {max: 0}
"#,
    );
    let child = agent(&ws, &config, kube.admin_kubeconfig(), "10s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patch = |status: &str| {
        [
            "patch".to_string(),
            "node".to_string(),
            "node-1".to_string(),
            "--subresource=status".to_string(),
            "--type=merge".to_string(),
            "-p".to_string(),
            node_ready_patch(status),
        ]
    };
    let args = patch("False");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (down_before, down_after) = kubectl_timed(&kube, &args).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let args = patch("True");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (up_before, up_after) = kubectl_timed(&kube, &args).await;
    let (report, stderr) = finish(&ws, child).await;

    for name in ["nodes-ready", "test-nodes"] {
        let v = violations(&report, name);
        assert_eq!(v.len(), 1, "{name}: {v:#?}\n{stderr}");
        assert_eq!(
            v[0]["error_class"],
            Value::Null,
            "a condition violation, not a failure"
        );
        assert_between(
            &format!("{name} start"),
            ms(&v[0]["start"]),
            down_before - 50,
            down_after + INTERVAL_MS + SLACK_MS,
        );
        assert_between(
            &format!("{name} end"),
            ms(&v[0]["end"]),
            up_before - 50,
            up_after + INTERVAL_MS + SLACK_MS,
        );
        assert_eq!(invariant(&report, name)["verdict"], "violated");
        assert_eq!(invariant(&report, name)["samples"]["failed"], 0);
    }
    let present = invariant(&report, "nodes-present");
    assert_eq!(present["verdict"], "held", "{present:#}");
    assert_eq!(present["last_value"], 2.0);

    // nodes-ready and nodes-present share one watch; test-nodes has its own.
    let synced: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("watch synced"))
        .collect();
    assert_eq!(synced.len(), 2, "{stderr}");
    assert_eq!(
        synced
            .iter()
            .filter(|l| l.contains("v1 Node -l role=test"))
            .count(),
        1,
        "{stderr}"
    );
}

/// An Event repeated 25 times during the run trips "no event repeats more than 20 times";
/// an Event that repeated 50 times before the run does not; Warning events of a listed
/// reason are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_probes_pathological_events_trip_the_repeat_invariant() {
    let kube = KubeApiserver::start().await;
    let event = |name: &str, reason: &str, kind: &str, pod: &str, count: u32| {
        format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: {name}\n  namespace: default\ninvolvedObject:\n  kind: Pod\n  namespace: default\n  name: {pod}\nreason: {reason}\nmessage: test event\ntype: {kind}\ncount: {count}\nsource:\n  component: kubelet\n"
        )
    };
    // Before the run: 50 repeats that must not count.
    apply(&kube, &event("before", "BackOff", "Warning", "web-0", 50)).await;
    // Event timestamps have whole seconds; keep the run's start out of that second.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let ws = Workspace::new();
    let config = config(
        &ws,
        r#"  - name: events-do-not-repeat
    description: no event repeats more than 20 times
    owner: sig-instrumentation
    interval: 250ms
    timeout: 2s
    probe:
      events: {measure: maxRepeats}
    condition:
      threshold: {max: 20}
  - name: no-failed-mounts
    description: no FailedMount warnings
    owner: sig-storage
    interval: 250ms
    timeout: 2s
    probe:
      events: {measure: warnings, reasons: [FailedMount]}
    condition:
      increase: {max: 0}
"#,
    );
    let child = agent(&ws, &config, kube.admin_kubeconfig(), "9s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The old event repeats 5 more times: 5 is below the threshold.
    kube.kubectl_admin_ok(&[
        "patch",
        "event",
        "before",
        "--type=merge",
        "-p",
        r#"{"count": 55}"#,
    ])
    .await;
    apply(&kube, &event("during", "BackOff", "Warning", "web-1", 1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (trip_before, trip_after) = kubectl_timed(
        &kube,
        &[
            "patch",
            "event",
            "during",
            "--type=merge",
            "-p",
            r#"{"count": 25}"#,
        ],
    )
    .await;
    let (mount_before, mount_after) = {
        let before = now_ms();
        apply(&kube, &event("mount", "FailedMount", "Warning", "web-2", 3)).await;
        (before, now_ms())
    };
    let (report, stderr) = finish(&ws, child).await;

    let repeats = invariant(&report, "events-do-not-repeat");
    assert_eq!(repeats["last_value"], 25.0, "{repeats:#}\n{stderr}");
    let v = violations(&report, "events-do-not-repeat");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_between(
        "repeat violation start",
        ms(&v[0]["start"]),
        trip_before - 50,
        trip_after + INTERVAL_MS + SLACK_MS,
    );
    assert_eq!(v[0]["end"], Value::Null, "repeats never un-happen");
    assert!(
        stderr.contains("an event has repeated 25 times in this run")
            && stderr.contains("Pod default/web-1"),
        "{stderr}"
    );

    let mounts = invariant(&report, "no-failed-mounts");
    assert_eq!(mounts["last_value"], 3.0, "{mounts:#}");
    let v = violations(&report, "no-failed-mounts");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_between(
        "warning violation start",
        ms(&v[0]["start"]),
        mount_before - 50,
        mount_after + INTERVAL_MS + SLACK_MS,
    );
}

/// The API server crashes and is back a few seconds later: every probe records failed samples for it,
/// the agent keeps running, and the watches list again and hold once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_probes_survive_an_apiserver_outage_and_watches_resume() {
    let mut kube = KubeApiserver::start().await;
    apply(
        &kube,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n",
    )
    .await;
    let ws = Workspace::new();
    let config = config(
        &ws,
        r#"  - name: readyz-new
    description: ready on new connections
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      apiserver: {path: /readyz, connection: new}
    condition:
      availability: {target: 100, window: 1m}
  - name: namespace-reused
    description: the default namespace from the watch cache, on a reused connection
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      apiserver: {path: '/api/v1/namespaces/default?resourceVersion=0'}
    condition:
      availability: {target: 100, window: 1m}
  - name: nodes-watched
    description: the Node watch is synced
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      resource: {apiVersion: v1, kind: Node, expression: 'true'}
    condition:
      availability: {target: 100, window: 1m}
"#,
    );
    // Stopped by SIGTERM once the watch has seen the API server back.
    let child = agent(&ws, &config, kube.admin_kubeconfig(), "5m");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = now_ms();
    // A crash (SIGKILL): a graceful stop would first drain in-flight requests, the
    // agent's watch among them, for up to the API server's 60 s shutdown timeout.
    kube.kill_apiserver();
    let exited = now_ms();
    tokio::time::sleep(Duration::from_secs(3)).await;
    kube.start_apiserver().await;
    let up = now_ms();
    tokio::time::sleep(Duration::from_secs(7)).await;
    // A Node created after the outage must be seen: the watch is live again.
    apply(
        &kube,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-2\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(child.id().unwrap(), "TERM");
    let (report, stderr) = finish(&ws, child).await;
    let context = format!("down={down} exited={exited} up={up}\n{stderr}");

    for name in ["readyz-new", "namespace-reused", "nodes-watched"] {
        let v = violations(&report, name);
        assert!(
            !v.is_empty(),
            "{name}: no violation for the outage\n{context}"
        );
        let first_start = ms(&v[0]["start"]);
        if name == "nodes-watched" {
            // The watch fails when its stream ends: when the process exits.
            assert_between(
                "watch failure start",
                first_start,
                down - 50,
                exited + 2_000,
            );
        } else {
            assert_between(
                &format!("{name} start"),
                first_start,
                down - 50,
                down + INTERVAL_MS + SLACK_MS,
            );
        }
        let last = v.last().unwrap();
        assert!(
            last["end"].is_string(),
            "{name} never recovered: {v:#?}\n{context}"
        );
        // The watch notices the API server back after its backoff (at most 5 s + 20 %).
        let limit = if name == "nodes-watched" {
            7_000
        } else {
            INTERVAL_MS + SLACK_MS
        };
        assert_between(
            &format!("{name} last violation end"),
            ms(&last["end"]),
            up - 10_000,
            up + limit,
        );
        let inv = invariant(&report, name);
        assert_eq!(inv["verdict"], "violated");
        assert_eq!(inv["state"], "holding", "{name} recovered: {inv:#}");
        let classes: Vec<&str> = v.iter().filter_map(|x| x["error_class"].as_str()).collect();
        assert!(
            classes.contains(&"connection_refused"),
            "{name}: {classes:?}\n{v:#?}"
        );
    }
    assert_eq!(
        invariant(&report, "nodes-watched")["last_value"],
        2.0,
        "{context}"
    );
    assert!(
        stderr.contains("watch synced again after a failure"),
        "{context}"
    );
}

/// Kubernetes probes without any credentials stop the agent at start with one clear
/// message; `validate` does not need credentials.
#[tokio::test]
async fn kube_probes_without_credentials_stop_the_agent_at_start() {
    let ws = Workspace::new();
    let config = config(
        &ws,
        r#"  - name: readyz
    description: ready
    owner: test
    probe:
      apiserver: {path: /readyz}
    condition:
      availability: {target: 100}
"#,
    );
    let home = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(agent_binary())
        .args(["run", "--duration", "2s", "--config"])
        .arg(&config)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no Kubernetes credentials:")
            && stderr.contains("pass --kubeconfig or run in a pod with a ServiceAccount"),
        "{stderr}"
    );

    let validate = agent_command(&["validate", config.to_str().unwrap()]);
    assert_eq!(validate.code, Some(0), "{}", validate.stderr);
}

/// The API call latency SLO invariants of manifests/invariants.yaml, as written there
/// except for a 1 s interval (and a 2 s timeout for the /metrics scrape), keyed by name.
pub(crate) fn slo_invariants() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_path("manifests/invariants.yaml")).unwrap();
    let set: Value = serde_saphyr::from_str(&text).unwrap();
    let mut out = Vec::new();
    for mut inv in set["invariants"].as_array().unwrap().clone() {
        if inv["probe"]["apiserver"]["histogramQuantile"].is_null() {
            continue;
        }
        inv["interval"] = "1s".into();
        inv["timeout"] = "2s".into();
        out.push(inv);
    }
    out
}

/// API calls in each SLO scope, as the admin: LISTs in a namespace and across the
/// cluster, single-object reads and writes (scope=resource).
pub(crate) async fn api_calls_in_every_scope(kube: &KubeApiserver) {
    kube.kubectl_admin_ok(&["get", "configmaps", "-n", "default"])
        .await;
    kube.kubectl_admin_ok(&["get", "pods", "--all-namespaces"])
        .await;
    kube.kubectl_admin_ok(&["get", "namespace", "default"])
        .await;
    kube.kubectl_admin_ok(&["create", "configmap", "slo-probe", "-n", "default"])
        .await;
    kube.kubectl_admin_ok(&["delete", "configmap", "slo-probe", "-n", "default"])
        .await;
}

/// The default API call latency SLO invariants against a real kube-apiserver, read with
/// the agent's own ServiceAccount and RBAC from manifests/: each computes a real p99
/// from the API server's apiserver_request_duration_seconds (a value in seconds, within
/// the SLO on an idle test server), names the group it comes from, and holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_probes_api_call_latency_slo_from_the_real_histogram() {
    let (kube, kubeconfig) = crate::kube_leader::cluster_with_agent_rbac().await;
    let invariants = slo_invariants();
    let names: Vec<String> = invariants
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "apiserver-call-latency-single-object",
            "apiserver-call-latency-namespace-scope",
            "apiserver-call-latency-cluster-scope"
        ]
    );
    let ws = Workspace::new();
    let set = serde_json::json!({
        "apiVersion": "invariant-agent/v1alpha1",
        "kind": "InvariantSet",
        "invariants": invariants,
    });
    // JSON is YAML.
    let config = ws.path("invariants.yaml");
    std::fs::write(&config, serde_json::to_string_pretty(&set).unwrap()).unwrap();
    let child = agent(&ws, &config, &kubeconfig, "9s");
    // The first scrapes are the baseline; the calls after them are what the window sees.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    api_calls_in_every_scope(&kube).await;
    api_calls_in_every_scope(&kube).await;
    let (report, stderr) = finish(&ws, child).await;

    for (name, scope, max) in [
        ("apiserver-call-latency-single-object", "resource", 1.0),
        ("apiserver-call-latency-namespace-scope", "namespace", 30.0),
        ("apiserver-call-latency-cluster-scope", "cluster", 30.0),
    ] {
        let inv = invariant(&report, name);
        assert_eq!(inv["verdict"], "held", "{inv:#}\n{stderr}");
        let p99 = inv["last_value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} has no value: {inv:#}\n{stderr}"));
        // A real latency: more than nothing, within the SLO on an idle test server.
        assert!(p99 > 0.0 && p99 <= max, "{name}: p99 {p99} s");
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("max group is now {resource=")
                    && l.contains(&format!("scope=\"{scope}\"}}"))),
            "{name}: no {scope} group logged:\n{stderr}"
        );
    }
}
