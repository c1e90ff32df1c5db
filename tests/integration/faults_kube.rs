//! The real kube-apiserver (and etcd) misbehaving under the agent, through a
//! TLS-terminating fault proxy in front of it (tests/integration/faults_support.rs):
//! `/readyz` answers 429 then 500 for known windows, the watch streams are cut mid-stream,
//! and a watch that fell behind resumes from a resourceVersion that a real etcd
//! compaction has removed, so the API server answers 410 Gone. The report must show the
//! 429/500 window on the availability invariant with the right bounds and errors; after
//! the cut the watch resumes and still sees a change made meanwhile; after the 410 the
//! watch lists again quietly and the resource invariant reads the values as they are now.

use std::time::Duration;

use serde_json::Value;

use crate::faults_support::KubeFaultProxy;
use crate::kube_support::KubeApiserver;
use crate::support::*;

/// Sample interval of these tests.
const INTERVAL_MS: i64 = 250;
/// Scheduling noise on a loaded 2-core machine running an API server and etcd.
const SLACK_MS: i64 = 400;

fn node_ready_patch(status: &str) -> String {
    format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"{status}","reason":"Test","message":"set by the test"}}]}}}}"#
    )
}

async fn set_ready(kube: &KubeApiserver, node: &str, status: &str) {
    kube.kubectl_admin_ok(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &node_ready_patch(status),
    ])
    .await;
}

/// POSTs `body` to etcd's JSON gateway and returns the parsed answer.
async fn etcd_call(port: u16, path: &str, body: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("etcd answers within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, json) = text.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.contains(" 200 "), "etcd {path}: {text}");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd {path}: {e}: {json}"))
}

/// Compacts etcd's history up to its current revision (what the API server itself does
/// every 5 minutes) and returns that revision.
async fn etcd_compact_now(port: u16) -> i64 {
    // Any key: the answer's header carries the store's current revision.
    let range = etcd_call(port, "/v3/kv/range", r#"{"key":"AA=="}"#).await;
    let revision: i64 = range["header"]["revision"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    etcd_call(
        port,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )
    .await;
    revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_kube_429_500_cut_watches_and_410_after_compaction() {
    // Without the watch cache every watch is served by etcd, so a watch that resumes from
    // a compacted revision gets 410 Gone at once (the cache would serve it from memory).
    let kube = KubeApiserver::start_with_args(&["--watch-cache=false"]).await;
    for node in ["node-1", "node-2"] {
        let out = kube
            .kubectl_with_stdin(
                kube.admin_kubeconfig(),
                &["apply", "-f", "-"],
                Some(&format!(
                    "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n"
                )),
            )
            .await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        set_ready(&kube, node, "True").await;
    }
    let proxy = KubeFaultProxy::start(&kube.url(), kube.ca_file()).await;
    let kubeconfig = proxy.kubeconfig(kube.admin_token());
    let ws = Workspace::new();
    let config = ws.config(
        r#"  - name: readyz
    description: the API server answers /readyz
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      apiserver: {path: /readyz}
    condition:
      availability: {target: 100, window: 1m}
  - name: nodes-not-ready
    description: Nodes whose Ready condition is not True, from a watch
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      resource:
        apiVersion: v1
        kind: Node
        expression: '!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")'
    condition:
      availability: {target: 100, window: 1m}
"#,
    );
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--checkpoint-interval",
            "1s",
        ],
        &[("RUST_LOG", "info,invariant_agent::kube::watch=debug")],
    );
    tokio::time::sleep(Duration::from_secs(4)).await;

    // 1. /readyz is throttled (429), then fails (500), then is fine.
    let throttled = proxy.set_status(Some(("/readyz", 429)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failing = proxy.set_status(Some(("/readyz", 500)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cleared = proxy.set_status(None);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. The watch stream is cut mid-stream, and node-1 goes NotReady right after: the
    // watcher takes the cut for the end of the stream and resumes from its last
    // resourceVersion, so it still sees the change.
    let cut = proxy.cut_watches();
    set_ready(&kube, "node-1", "False").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let checkpoint = ws.report();
    assert_eq!(
        invariant(&checkpoint, "nodes-not-ready")["last_value"],
        1.0,
        "the change made during the cut is seen: {:#}",
        invariant(&checkpoint, "nodes-not-ready")
    );

    // 3. The watch falls behind: it ends (as on the API server's watch timeout), its
    // re-watch is held back while both Nodes go NotReady and etcd compacts everything up
    // to now, then it is let through from its old resourceVersion.
    proxy.hold_watches(true);
    let watches_before = proxy.watches();
    let behind = proxy.end_watches();
    set_ready(&kube, "node-2", "False").await;
    // One more write, so the compaction below reaches past the watch's next revision:
    // compacting exactly at node-2's write would keep that event but not its previous
    // value, and the API server then fails the watch with a 500 ("PrevKv=nil") instead.
    kube.kubectl_admin_ok(&["create", "namespace", "after-the-watch"])
        .await;
    let compacted = etcd_compact_now(kube.etcd_port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.hold_watches(false);
    let released = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    let context = format!(
        "throttled={throttled} failing={failing} cleared={cleared} cut={cut} behind={behind} \
         compacted@{compacted} released={released}\n{}",
        done.stderr
    );

    // The 429/500 window: one interval (one error class, http_status), whose first error
    // is the 429 and last the 500, bounded within one interval.
    let v = violations(&report, "readyz");
    assert_eq!(v.len(), 1, "{v:#?}\n{context}");
    assert_eq!(v[0]["error_class"], "http_status", "{v:#?}");
    assert!(
        v[0]["first_error"].as_str().unwrap().contains("429"),
        "{v:#?}"
    );
    assert!(
        v[0]["last_error"].as_str().unwrap().contains("500"),
        "{v:#?}"
    );
    assert_between(
        "429 start",
        ms(&v[0]["start"]),
        throttled - 50,
        throttled + INTERVAL_MS + SLACK_MS,
    );
    assert_between(
        "500 end",
        ms(&v[0]["end"]),
        cleared - 50,
        cleared + INTERVAL_MS + SLACK_MS,
    );
    let readyz = invariant(&report, "readyz");
    let failed = readyz["samples"]["failed"].as_u64().unwrap();
    assert!((14..=18).contains(&failed), "{failed} failed in 4 s");

    // Neither the cut nor the 410 is a failure of the watch's invariant: a resumed watch
    // and a quiet relist lose nothing.
    let nodes = violations(&report, "nodes-not-ready");
    assert!(nodes.is_empty(), "{nodes:#?}\n{context}");
    assert_eq!(
        invariant(&report, "nodes-not-ready")["samples"]["failed"],
        0,
        "{context}"
    );

    // The 410: the resumed watch was refused as too old, the watcher listed again
    // quietly (no failed sample after the cut's interval), and the values are current.
    assert!(
        proxy.watches() > watches_before,
        "the held watch went through\n{context}"
    );
    assert!(
        done.stderr.contains("watch expired (410 Gone)"),
        "the resumed watch met the compaction\n{context}"
    );
    let inv = invariant(&report, "nodes-not-ready");
    assert_eq!(inv["last_value"], 2.0, "both Nodes NotReady now\n{context}");
    assert_eq!(inv["state"], "holding", "{inv:#}");
}
