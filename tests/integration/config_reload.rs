//! Changing the invariant files while the agent runs: a ConfigMap-style `..data` symlink
//! swap is picked up by polling, SIGHUP reloads at once, an invalid change is refused
//! with its problems named while the running invariants sample on, and an invalid file
//! at start exits 1.
//!
//! What the agent really did is read from a real HTTP server that records when each path
//! was requested: one path per invariant, so a gap or a restart shows in the requests,
//! and the report must agree with them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::export_support::{free_port, http_get, wait_for_port};
use crate::support::*;

/// An HTTP server answering 200 to everything and recording when each path was asked.
struct RecordingServer {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<(String, i64)>>>,
}

impl RecordingServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let shared = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        shared
                            .lock()
                            .unwrap()
                            .push((req.uri().path().to_string(), now_ms()));
                        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingServer { addr, hits }
    }

    /// When `path` was requested, oldest first.
    fn hits(&self, path: &str) -> Vec<i64> {
        let mut times: Vec<i64> = self
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect();
        times.sort_unstable();
        times
    }
}

/// One invariant on `path` of `server`, sampled every `interval`.
fn invariant(name: &str, interval: &str, server: &RecordingServer) -> String {
    format!(
        r#"  - name: {name}
    description: the {name} path answers
    owner: test
    interval: {interval}
    labels: {{case: reload}}
    probe:
      http: {{url: "http://{addr}/{name}"}}
    condition:
      availability: {{target: 100, window: 1m}}
"#,
        addr = server.addr
    )
}

fn file(invariants: &[String]) -> String {
    format!(
        "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants:\n{}",
        invariants.concat()
    )
}

/// A directory laid out as the kubelet lays out a ConfigMap volume: the file is a
/// symlink through `..data`, a symlink to a timestamped directory, and an update writes
/// a new directory and swaps `..data` atomically.
struct ConfigMapVolume {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapVolume {
    fn new(ws: &Workspace, text: &str) -> Self {
        let dir = ws.path("configmap");
        std::fs::create_dir(&dir).unwrap();
        let mut volume = ConfigMapVolume { dir, version: 0 };
        volume.update(text);
        std::os::unix::fs::symlink("..data/invariants.yaml", volume.file()).unwrap();
        volume
    }

    fn file(&self) -> PathBuf {
        self.dir.join("invariants.yaml")
    }

    /// Writes `text` as a new version and swaps `..data` to it, as the kubelet does.
    fn update(&mut self, text: &str) {
        self.version += 1;
        let version = format!("..2026_11_26_00_00_0{}.000", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("invariants.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn sha256(text: &str) -> String {
    let path = std::env::temp_dir().join(format!("reload-hash-{}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The report entries called `name`, in report order.
fn entries<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == name)
        .collect()
}

fn ok_samples(entry: &Value) -> i64 {
    entry["samples"]["ok"].as_i64().unwrap()
}

/// The longest time between two consecutive requests, in ms.
fn longest_gap(times: &[i64]) -> i64 {
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

/// Asserts the report counts what the server saw: at most one sample of difference at
/// each end (a request in flight when a count was taken).
fn assert_counts_agree(what: &str, report_count: i64, server_count: usize) {
    let server_count = server_count as i64;
    assert!(
        (report_count - server_count).abs() <= 2,
        "{what}: the report counts {report_count} samples, the server saw {server_count} requests"
    );
}

/// A ConfigMap update adds, changes and removes invariants while the unchanged one
/// samples on without a gap in one report entry; an invalid update after it is refused,
/// named in the log, recorded in the report and on /metrics, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_applies_without_a_gap_and_an_invalid_one_is_refused() {
    let server = RecordingServer::start().await;
    let ws = Workspace::new();
    let first = file(&[
        invariant("kept", "200ms", &server),
        invariant("changed", "200ms", &server),
        invariant("removed", "200ms", &server),
    ]);
    let mut volume = ConfigMapVolume::new(&ws, &first);
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = spawn_agent(
        &ws,
        &volume.file(),
        &[
            "--config-poll-interval",
            "300ms",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    );
    wait_for_port(
        metrics,
        "the agent's metrics endpoint",
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // `kept` moves down a line (same spec), `changed` samples slower, `removed` goes,
    // `added` comes.
    let second = format!(
        "# updated\n{}",
        file(&[
            invariant("added", "200ms", &server),
            invariant("kept", "200ms", &server),
            invariant("changed", "300ms", &server),
        ])
    );
    let swapped = now_ms();
    volume.update(&second);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // An invalid update: a bare number as the interval, and an unknown field.
    let invalid = second.replace("interval: 300ms", "interval: 5\n    colour: blue");
    volume.update(&invalid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _, text) = http_get(metrics, "/metrics", None).await;
    assert_eq!(status, 200);

    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();

    // The applied revision, and when it took effect.
    let revisions = report["run"]["config_revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 2, "{revisions:#?}");
    let applied = &revisions[0];
    assert_eq!(applied["result"], "applied");
    assert_eq!(applied["hash"], sha256(&second));
    assert_eq!(applied["added"], serde_json::json!(["added"]));
    assert_eq!(applied["changed"], serde_json::json!(["changed"]));
    assert_eq!(applied["removed"], serde_json::json!(["removed"]));
    let at = ms(&applied["at"]);
    assert_between("the change is read within a poll", at - swapped, 0, 1500);

    // `kept`: one entry, every request counted, never a gap.
    let kept = entries(&report, "kept");
    assert_eq!(kept.len(), 1);
    assert!(kept[0].get("retired").is_none() && kept[0].get("active_from").is_none());
    assert!(
        kept[0]["source"].as_str().unwrap().ends_with(":14:5"),
        "declared where the new file has it: {}",
        kept[0]["source"]
    );
    let kept_hits = server.hits("/kept");
    assert_counts_agree("kept", ok_samples(kept[0]), kept_hits.len());
    let gap = longest_gap(&kept_hits);
    assert!(gap < 1000, "kept was not requested for {gap} ms");
    let span = kept_hits.last().unwrap() - kept_hits.first().unwrap();
    assert!(
        kept_hits.len() as i64 >= span / 200 * 8 / 10,
        "{} requests in {span} ms at 200 ms",
        kept_hits.len()
    );

    // `changed`: the old entry retired at the change, the new one from then on.
    let changed = entries(&report, "changed");
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[0]["retired"]["reason"], "changed");
    assert_eq!(ms(&changed[0]["retired"]["at"]), at);
    assert_eq!(changed[0]["interval_seconds"], 0.2);
    assert_eq!(ms(&changed[1]["active_from"]), at);
    assert_eq!(changed[1]["interval_seconds"], 0.3);
    assert!(changed[1].get("retired").is_none());
    let changed_hits = server.hits("/changed");
    assert_counts_agree(
        "changed",
        ok_samples(changed[0]) + ok_samples(changed[1]),
        changed_hits.len(),
    );
    assert!(ok_samples(changed[1]) >= 10, "the new spec samples on");

    // `removed`: retired, and no request after the change (one might be in flight).
    let removed = entries(&report, "removed");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["retired"]["reason"], "removed");
    let after: Vec<i64> = server
        .hits("/removed")
        .into_iter()
        .filter(|t| *t > at + 250)
        .collect();
    assert!(after.is_empty(), "removed was still requested at {after:?}");

    // `added`: from the change on.
    let added = entries(&report, "added");
    assert_eq!(added.len(), 1);
    assert_eq!(ms(&added[0]["active_from"]), at);
    let added_hits = server.hits("/added");
    assert!(added_hits[0] >= at, "added was requested before the change");
    assert_counts_agree("added", ok_samples(added[0]), added_hits.len());

    // The invalid update: refused with every problem, logged on one line, nothing changed.
    let refused = &revisions[1];
    assert_eq!(refused["result"], "refused");
    let problems: Vec<&str> = refused["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let file_name = volume.file().display().to_string();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&format!("{file_name}:"))
                && p.contains("invariants[2].interval:")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("invariants[2].colour:")),
        "{problems:#?}"
    );
    let line = done
        .stderr
        .lines()
        .find(|l| l.contains("configuration change refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{}", done.stderr));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("invariants[2].interval:") && line.contains(&file_name),
        "{line}"
    );
    assert_eq!(
        changed[1]["interval_seconds"], 0.3,
        "the refused change is not applied"
    );
    assert_eq!(report["invariants"].as_array().unwrap().len(), 5);

    // The summary on stdout says which entries ran only part of the run.
    for expected in [
        "config change applied at ",
        "config change refused at ",
        "removed (removed at ",
        "changed (changed at ",
        "changed (from ",
        "added (from ",
    ] {
        assert!(
            done.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            done.stdout
        );
    }

    // /metrics: the running set, and the refusal.
    assert!(text.contains("invariant_agent_config_refused 1"), "{text}");
    assert!(
        text.contains("invariant_state{invariant=\"added\""),
        "{text}"
    );
    assert!(
        text.contains("invariant_state{invariant=\"changed\""),
        "{text}"
    );
    assert!(!text.contains("invariant=\"removed\""), "{text}");
    assert_eq!(
        text.matches("invariant_state{invariant=\"changed\"")
            .count(),
        1,
        "only the running entry of `changed` is exported:\n{text}"
    );
}

/// With polling off, a changed file is applied on SIGHUP and not before; a SIGHUP
/// without a change says so and the agent runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once_and_only_a_change_counts() {
    let server = RecordingServer::start().await;
    let ws = Workspace::new();
    let path = ws.path("invariants.yaml");
    let replace = |text: &str| {
        let tmp = ws.path("invariants.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    replace(&file(&[invariant("kept", "200ms", &server)]));
    let agent = spawn_agent(
        &ws,
        &path,
        &[
            "--config-poll-interval",
            "0",
            "--checkpoint-interval",
            "300ms",
        ],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = agent.id().unwrap();
    replace(&file(&[
        invariant("kept", "200ms", &server),
        invariant("added", "200ms", &server),
    ]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server.hits("/added").is_empty(),
        "no polling: nothing may change before SIGHUP"
    );
    let hup = now_ms();
    signal(pid, "HUP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nothing changed since: this one only says so.
    signal(pid, "HUP");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal(pid, "TERM");
    let done = wait(agent).await;
    assert_eq!(
        done.code,
        Some(0),
        "SIGHUP must not end the agent:\n{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("SIGHUP: the invariant files are unchanged"),
        "{}",
        done.stderr
    );
    let report = ws.report();
    let revisions = report["run"]["config_revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 1, "{revisions:#?}");
    assert_eq!(revisions[0]["added"], serde_json::json!(["added"]));
    assert_between("applied on SIGHUP", ms(&revisions[0]["at"]) - hup, 0, 1000);
    let added = server.hits("/added");
    assert!(
        !added.is_empty() && added[0] >= hup,
        "added sampled after SIGHUP"
    );
    let kept = entries(&report, "kept");
    assert_eq!(kept.len(), 1);
    assert_counts_agree("kept", ok_samples(kept[0]), server.hits("/kept").len());
    assert!(longest_gap(&server.hits("/kept")) < 1000);
}

/// An invalid file at start: exit 1 before anything runs, naming the file, the position,
/// the field and the problem.
#[test]
fn an_invalid_file_at_start_exits_1_naming_file_line_field_and_problem() {
    let ws = Workspace::new();
    let path = ws.path("invariants.yaml");
    std::fs::write(
        &path,
        "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants:\n  - name: a\n    \
         description: d\n    owner: o\n    interval: 5\n    probe: {http: {url: \"http://127.0.0.1:1/\"}}\n    \
         condition: {availability: {target: 100, window: 1m}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(agent_binary())
        .args(["run", "--duration", "5s", "--config"])
        .arg(&path)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:7:15: invariants[0].interval:", path.display());
    assert!(
        stderr.contains(&expected),
        "missing {expected:?} in:\n{stderr}"
    );
    assert!(!ws.report_dir().join("report.json").exists());
}

/// Through the official OpenTelemetry Collector: an invariant added by a configuration
/// change is exported (its counters and probe durations) with the attributes from the
/// file, the unchanged one's counter carries on without a reset, and the removed one's
/// series stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_follows_a_configuration_change() {
    use crate::export_support::{Collector, OtlpSink, series};

    let sink = OtlpSink::start().await;
    let collector = Collector::otelcol(sink.addr).await;
    let server = RecordingServer::start().await;
    let ws = Workspace::new();
    let path = ws.path("invariants.yaml");
    let replace = |text: &str| {
        let tmp = ws.path("invariants.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    replace(&file(&[
        invariant("kept", "200ms", &server),
        invariant("removed", "200ms", &server),
    ]));
    let agent = spawn_agent(
        &ws,
        &path,
        &[
            "--config-poll-interval",
            "300ms",
            "--otlp-endpoint",
            &collector.endpoint(),
            "--export-interval",
            "500ms",
        ],
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    replace(&file(&[
        invariant("kept", "200ms", &server),
        invariant("added", "200ms", &server),
    ]));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    let at = ms(&report["run"]["config_revisions"][0]["at"]) as u64 * 1_000_000;
    // The collector forwards what it has within its own batch time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let points = sink.points();
    let attrs = |name: &str, outcome: Option<&str>| {
        let mut a: std::collections::BTreeMap<String, String> =
            [("invariant", name), ("owner", "test"), ("case", "reload")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        if let Some(o) = outcome {
            a.insert("outcome".into(), o.into());
        }
        a
    };
    let samples = |name: &str| series(&points, "invariant.samples", &attrs(name, Some("ok")));

    let added = samples("added");
    let last = added
        .last()
        .unwrap_or_else(|| panic!("no samples of `added` exported"));
    assert_eq!(
        last.data.number() as i64,
        entries(&report, "added")[0]["samples"]["ok"]
            .as_i64()
            .unwrap(),
        "the final export carries the report's count"
    );
    assert!(
        series(
            &points,
            "invariant.probe.duration",
            &attrs("added", Some("ok"))
        )
        .last()
        .is_some(),
        "probe durations of `added` are exported"
    );

    let kept = samples("kept");
    assert!(
        kept.windows(2)
            .all(|w| w[0].data.number() <= w[1].data.number())
    );
    assert!(kept.first().unwrap().time < at && kept.last().unwrap().time > at);
    let removed = samples("removed");
    assert!(!removed.is_empty());
    assert!(
        removed.iter().all(|p| p.time < at + 1_000_000_000),
        "`removed` is exported until the change only"
    );
    let refused = series(
        &points,
        "invariant.agent.config.refused",
        &Default::default(),
    );
    assert_eq!(refused.last().map(|p| p.data.number()), Some(0.0));
}
