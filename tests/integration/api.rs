//! The gRPC API of the real agent binary, through the generated client: Tail (samples
//! live, filters, history, a stuck subscriber), GetStatus, GetReport, Annotate (and its
//! attribution in report.json), the bearer token, TLS, health, reflection, the end of the
//! run, and requests that are not protobuf at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invariant_agent::api::proto::agent_service_client::AgentServiceClient;
use invariant_agent::api::proto::{
    self, Annotation, AnnotationKind, GetReportRequest, GetStatusRequest, ReportFormat, State,
    TailRequest, TailResponse, tail_request, tail_response::Event,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

use crate::support::*;

/// How long any single expected event may take on a loaded machine before the test
/// gives up (a failure, not a measurement).
const PATIENCE: Duration = Duration::from_secs(20);

/// A running agent with its API on a port it picked.
struct ApiAgent {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    log_task: tokio::task::JoinHandle<()>,
}

impl ApiAgent {
    /// Starts `run` with `--grpc-listen 127.0.0.1:0` (no port race) and JSON logs, and
    /// reads the bound address from the "gRPC API listening" line.
    async fn start(ws: &Workspace, config: &std::path::Path, extra: &[&str]) -> Self {
        let mut args = vec!["--grpc-listen", "127.0.0.1:0", "--log-format", "json"];
        args.extend_from_slice(extra);
        let mut child = spawn_agent(ws, config, &args);
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (found_tx, found) = tokio::sync::oneshot::channel();
        let log_task = tokio::spawn(collect_log(stderr, log.clone(), found_tx));
        let addr = match tokio::time::timeout(PATIENCE, found).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "the agent did not log its API address:\n{}",
                log.lock().unwrap()
            ),
        };
        ApiAgent {
            child,
            addr,
            log,
            log_task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .unwrap()
            // Per call (up to a stream's headers): a hung agent fails the test.
            .timeout(PATIENCE)
            .connect()
            .await
            .expect("connect to the agent's API")
    }

    async fn client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel().await)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit code, stdout and the whole log.
    async fn stop(self) -> Finished {
        signal(self.child.id().unwrap(), "TERM");
        self.finish().await
    }

    async fn finish(self) -> Finished {
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("agent exits")
            .expect("wait for the agent");
        let _ = self.log_task.await;
        let stderr = self.log.lock().unwrap().clone();
        Finished {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        }
    }
}

async fn collect_log(
    stderr: tokio::process::ChildStderr,
    log: Arc<Mutex<String>>,
    found: tokio::sync::oneshot::Sender<SocketAddr>,
) {
    let mut found = Some(found);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "gRPC API listening"
            && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
            && let Some(tx) = found.take()
        {
            let _ = tx.send(addr);
        }
    }
}

fn invariants_yaml(items: &[(&str, &str, &str)]) -> String {
    // (name, interval, extra YAML under the invariant: probe, condition, labels)
    items
        .iter()
        .map(|(name, interval, rest)| {
            format!(
                "  - name: {name}\n    description: {name} answers\n    owner: sig-test\n    \
                 interval: {interval}\n{rest}"
            )
        })
        .collect()
}

fn http_probe(url: &str) -> String {
    format!(
        "    probe:\n      http: {{url: \"{url}\", connection: reused}}\n    condition:\n      \
         availability: {{target: 100, window: 1m}}\n"
    )
}

fn labelled(labels: &str, rest: &str) -> String {
    format!("    labels: {{{labels}}}\n{rest}")
}

/// The next message of a stream, failing the test after [`PATIENCE`].
async fn next(stream: &mut Streaming<TailResponse>) -> TailResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a Tail message in time")
        .expect("the stream stays healthy")
        .expect("the stream stays open")
}

async fn tail(
    client: &mut AgentServiceClient<Channel>,
    request: TailRequest,
) -> Streaming<TailResponse> {
    client
        .tail(request)
        .await
        .expect("Tail accepted")
        .into_inner()
}

/// Reads the snapshot and everything up to `Live`; returns the snapshot and the replay.
async fn until_live(stream: &mut Streaming<TailResponse>) -> (proto::Snapshot, Vec<TailResponse>) {
    let first = next(stream).await;
    assert_eq!(first.sequence, 0);
    let Some(Event::Snapshot(snapshot)) = first.event else {
        panic!("the first message must be the snapshot, got {first:?}");
    };
    let mut replay = Vec::new();
    loop {
        let m = next(stream).await;
        match m.event {
            Some(Event::Live(_)) => {
                assert_eq!(m.sequence, 0);
                return (snapshot, replay);
            }
            _ => {
                assert!(m.replay, "history comes marked as replay: {m:?}");
                replay.push(m);
            }
        }
    }
}

fn sample_of(m: &TailResponse) -> Option<&proto::Sample> {
    match &m.event {
        Some(Event::Sample(s)) => Some(s),
        _ => None,
    }
}

fn transition_of(m: &TailResponse) -> Option<&proto::Transition> {
    match &m.event {
        Some(Event::Transition(t)) => Some(t),
        _ => None,
    }
}

fn millis(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("a time");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn duration_ms(d: &Option<prost_types::Duration>) -> i64 {
    d.as_ref()
        .map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
        .unwrap_or(0)
}

fn wire_time(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Reads live messages until one is a transition of `invariant` to `to`.
async fn until_transition(stream: &mut Streaming<TailResponse>, invariant: &str, to: State) -> i64 {
    within(&format!("{invariant} becomes {to:?}"), async {
        loop {
            let m = next(stream).await;
            if let Some(t) = transition_of(&m)
                && t.invariant == invariant
                && t.to == to as i32
            {
                return millis(&t.time);
            }
        }
    })
    .await
}

/// Runs `steps` (a loop over stream messages, which keep coming) to completion, failing
/// the test after [`PATIENCE`] instead of looping forever.
async fn within<T>(what: &str, steps: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, steps)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_each_sample_within_one_interval_after_a_snapshot() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "200ms",
        &labelled("tier: front", &http_probe(&server.url("/"))),
    )]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let mut client = agent.client().await;
    let mut stream = tail(&mut client, TailRequest::default()).await;
    let (snapshot, replay) = until_live(&mut stream).await;
    assert!(replay.is_empty(), "no history was asked for");
    let run = snapshot.run.expect("run facts");
    assert!(run.id.starts_with("run-"), "{run:?}");
    assert_eq!(run.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(snapshot.invariants.len(), 1);
    let web = &snapshot.invariants[0];
    assert_eq!(
        (
            web.name.as_str(),
            web.owner.as_str(),
            web.probe.as_str(),
            web.scope.as_str()
        ),
        ("web", "sig-test", "http", "node")
    );
    assert_eq!(web.target, server.url("/"));
    assert_eq!(web.condition, "availability >= 100% over 1m");
    assert_eq!(web.labels.get("tier").map(String::as_str), Some("front"));

    // Delivery lag: from the end of the probe (its start + latency) to arrival here.
    let mut lags = Vec::new();
    let mut last_sequence = 0;
    while lags.len() < 15 {
        let m = next(&mut stream).await;
        assert!(!m.replay);
        assert!(m.sequence > last_sequence, "sequence numbers increase");
        last_sequence = m.sequence;
        if let Some(s) = sample_of(&m) {
            assert_eq!(s.invariant, "web");
            assert_eq!(s.outcome, proto::Outcome::Ok as i32);
            assert_eq!(s.state, State::Holding as i32);
            lags.push(now_ms() - (millis(&s.time) + duration_ms(&s.latency)));
        }
    }
    lags.sort_unstable();
    let median = lags[lags.len() / 2];
    assert!(
        median < 200,
        "the median sample reaches a tailer within one interval (200 ms); lags {lags:?}"
    );
    assert!(
        lags[lags.len() - 1] < 2000,
        "no sample is held back: {lags:?}"
    );
    let done = agent.stop().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_filters_by_name_labels_and_transitions_only() {
    let up = TestHttpServer::start(Reply::ok("ok")).await;
    let flaky = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[
        (
            "api",
            "100ms",
            &labelled("component: api", &http_probe(&up.url("/a"))),
        ),
        (
            "dns",
            "100ms",
            &labelled("component: dns", &http_probe(&up.url("/d"))),
        ),
        (
            "api-flaky",
            "100ms",
            &labelled("component: api, tier: edge", &http_probe(&flaky.url("/"))),
        ),
    ]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let mut client = agent.client().await;

    let by_name = TailRequest {
        invariants: vec!["dns".into()],
        ..Default::default()
    };
    let mut stream = tail(&mut client, by_name).await;
    let (snapshot, _) = until_live(&mut stream).await;
    let names: Vec<_> = snapshot
        .invariants
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["dns"]);
    for _ in 0..10 {
        let m = next(&mut stream).await;
        let invariant = sample_of(&m)
            .map(|s| &s.invariant)
            .or(transition_of(&m).map(|t| &t.invariant));
        assert_eq!(invariant.map(String::as_str), Some("dns"), "{m:?}");
    }
    drop(stream);

    let by_label = TailRequest {
        labels: [("component".to_string(), "api".to_string())].into(),
        ..Default::default()
    };
    let mut stream = tail(&mut client, by_label).await;
    let (snapshot, _) = until_live(&mut stream).await;
    let names: Vec<_> = snapshot
        .invariants
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(names, ["api", "api-flaky"], "file order");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    within("5 samples of each api invariant", async {
        while seen.len() < 2 || seen.values().any(|n| *n < 5) {
            let m = next(&mut stream).await;
            if let Some(s) = sample_of(&m) {
                *seen.entry(s.invariant.clone()).or_default() += 1;
            }
            assert!(
                !seen.contains_key("dns"),
                "dns has no component=api label: {seen:?}"
            );
        }
    })
    .await;
    drop(stream);

    let transitions = TailRequest {
        labels: [("tier".to_string(), "edge".to_string())].into(),
        transitions_only: true,
        ..Default::default()
    };
    let mut stream = tail(&mut client, transitions).await;
    until_live(&mut stream).await;
    flaky.set(Reply {
        status: 500,
        body: String::new(),
        delay: Duration::ZERO,
    });
    let m = next(&mut stream).await;
    let t = transition_of(&m).unwrap_or_else(|| panic!("only transitions: {m:?}"));
    assert_eq!(
        (t.invariant.as_str(), t.to),
        ("api-flaky", State::Violated as i32)
    );
    assert!(t.reason.contains("status 500"), "{}", t.reason);
    flaky.set(Reply::ok("ok"));
    let m = next(&mut stream).await;
    let t = transition_of(&m).unwrap_or_else(|| panic!("only transitions: {m:?}"));
    assert_eq!(
        (t.from, t.to),
        (State::Violated as i32, State::Holding as i32)
    );
    drop(stream);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_empty_selections_are_invalid_arguments() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[
        (
            "apiserver-readyz",
            "1s",
            &labelled("component: apiserver", &http_probe(&server.url("/"))),
        ),
        ("dns-resolves", "1s", &http_probe(&server.url("/"))),
    ]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let mut client = agent.client().await;
    let typo = TailRequest {
        invariants: vec!["apiserver-readyz".into(), "apiserver-redyz".into()],
        ..Default::default()
    };
    let e = client.tail(typo).await.expect_err("a typo is an error");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "unknown invariant \"apiserver-redyz\" (did you mean \"apiserver-readyz\"?). This \
         agent watches: apiserver-readyz, dns-resolves"
    );
    let no_match = TailRequest {
        labels: [("component".to_string(), "etcd".to_string())].into(),
        ..Default::default()
    };
    let e = client
        .tail(no_match)
        .await
        .expect_err("nothing selected is an error");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("component=apiserver"),
        "{}",
        e.message()
    );
    let bad_time = TailRequest {
        history: Some(tail_request::History::Since(prost_types::Timestamp {
            seconds: 1,
            nanos: 2_000_000_000,
        })),
        ..Default::default()
    };
    let e = client
        .tail(bad_time)
        .await
        .expect_err("a bad time is an error");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("since"), "{}", e.message());
    let e = client
        .get_report(GetReportRequest { format: 42 })
        .await
        .expect_err("an unknown format is an error");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("REPORT_FORMAT_JSON"),
        "{}",
        e.message()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replays_last_samples_or_since_a_time_then_goes_live_without_gaps() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "100ms",
        &http_probe(&server.url("/")),
    )]));
    let agent = ApiAgent::start(&ws, &config, &["--tail-history", "50"]).await;
    let mut client = agent.client().await;
    let mut watcher = tail(&mut client, TailRequest::default()).await;
    until_live(&mut watcher).await;
    let mut samples = Vec::new();
    while samples.len() < 8 {
        let m = next(&mut watcher).await;
        if let Some(s) = sample_of(&m) {
            samples.push((m.sequence, millis(&s.time)));
        }
    }
    drop(watcher);

    let last = TailRequest {
        history: Some(tail_request::History::Last(3)),
        ..Default::default()
    };
    let mut stream = tail(&mut client, last).await;
    let (_, replay) = until_live(&mut stream).await;
    assert_eq!(
        replay.len(),
        3,
        "the last 3 samples (no transition among them): {replay:?}"
    );
    assert!(replay.iter().all(|m| sample_of(m).is_some()));
    let sequences: Vec<u64> = replay.iter().map(|m| m.sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] + 1 == w[1]),
        "oldest first: {sequences:?}"
    );
    let first_live = next(&mut stream).await;
    assert!(!first_live.replay);
    assert_eq!(
        first_live.sequence,
        sequences[2] + 1,
        "live continues right after the history: nothing lost or repeated"
    );
    drop(stream);

    let (since_sequence, since_time) = samples[2];
    let since = TailRequest {
        history: Some(tail_request::History::Since(wire_time(since_time))),
        ..Default::default()
    };
    let mut stream = tail(&mut client, since).await;
    let (_, replay) = until_live(&mut stream).await;
    assert_eq!(
        replay[0].sequence, since_sequence,
        "starts at the sample taken at `since`"
    );
    assert!(
        replay
            .iter()
            .all(|m| millis(&sample_of(m).unwrap().time) >= since_time)
    );
    assert!(
        replay.len() >= 6,
        "every retained sample since then: {}",
        replay.len()
    );
    assert_eq!(
        next(&mut stream).await.sequence,
        replay.last().unwrap().sequence + 1
    );
    agent.stop().await;
}

/// Per invariant: samples taken (ok + failed) and ticks missed so far.
async fn samples_taken(client: &mut AgentServiceClient<Channel>) -> BTreeMap<String, (u64, u64)> {
    let status = client.get_status(GetStatusRequest {}).await.unwrap();
    status
        .into_inner()
        .invariants
        .into_iter()
        .map(|i| (i.name, (i.samples_ok + i.samples_failed, i.samples_missed)))
        .collect()
}

/// A message of about 600 bytes per sample: the body check fails with a long expected
/// text, which the error repeats.
fn failing_with_long_errors(url: &str) -> String {
    let long = "x".repeat(480);
    format!(
        "    probe:\n      http: {{url: \"{url}\", connection: reused, body: {{contains: \"{long}\"}}}}\n    \
         condition:\n      availability: {{target: 50, window: 1m}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_tailer_delays_nobody_and_learns_how_many_events_it_lost() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let names: Vec<String> = (0..20).map(|i| format!("target-{i:02}")).collect();
    let probe = failing_with_long_errors(&server.url("/"));
    let items: Vec<(&str, &str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), "100ms", probe.as_str()))
        .collect();
    let config = ws.config(&invariants_yaml(&items));
    let agent = ApiAgent::start(&ws, &config, &["--tail-buffer", "64"]).await;

    // The stuck client: its own connection with a small HTTP/2 window, and it never reads.
    let stuck_channel = Endpoint::from_shared(agent.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stuck = AgentServiceClient::new(stuck_channel)
        .tail(TailRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut client = agent.client().await;
    let taken_before = samples_taken(&mut client).await;
    let stuck_since = Instant::now();

    // A healthy tailer on another connection: it must see every event, promptly.
    let mut healthy = tail(&mut client, TailRequest::default()).await;
    until_live(&mut healthy).await;
    let mut lags = Vec::new();
    let mut previous = 0;
    // 1,600 events: several times what the stuck stream can buffer (64 events plus
    // 64 KiB of HTTP/2 window, about 200 events of 600 bytes).
    while lags.len() < 1_600 {
        let m = next(&mut healthy).await;
        assert!(
            !matches!(m.event, Some(Event::Lost(_))),
            "the healthy tailer lost nothing"
        );
        assert!(
            previous == 0 || m.sequence == previous + 1,
            "no gap: {previous} -> {}",
            m.sequence
        );
        previous = m.sequence;
        if let Some(s) = sample_of(&m) {
            lags.push(now_ms() - (millis(&s.time) + duration_ms(&s.latency)));
        }
    }
    lags.sort_unstable();
    let median = lags[lags.len() / 2];
    let p99 = lags[lags.len() * 99 / 100];
    assert!(
        median < 100,
        "median lag {median} ms, more than one interval (100 ms)"
    );
    assert!(
        p99 < 1000,
        "p99 lag {p99} ms: the stuck tailer held the others back"
    );

    // The probes kept their schedule: one sample per interval for every invariant while
    // the tailer was stuck, and no tick missed.
    let taken_after = samples_taken(&mut client).await;
    let stuck_for = stuck_since.elapsed();
    let expected = stuck_for.as_millis() as u64 / 100;
    for (name, (taken, missed)) in &taken_after {
        let (before, missed_before) = taken_before[name];
        let taken = taken - before;
        assert!(
            taken * 10 >= expected * 8,
            "{name}: {taken} samples in {stuck_for:?} (expected about {expected})"
        );
        assert_eq!(*missed, missed_before, "{name} missed ticks");
    }

    // Now the stuck client reads: first what its connection buffered, then `Lost`.
    let mut before = 0;
    let lost = within("the stuck tailer is told it lost events", async {
        loop {
            let m = next(&mut stuck).await;
            match m.event {
                Some(Event::Lost(lost)) => break lost.events,
                _ if m.sequence > 0 => before = m.sequence,
                _ => {}
            }
        }
    })
    .await;
    assert!(lost > 0);
    assert!(before > 0, "it had received events before falling behind");
    let after = loop {
        let m = next(&mut stuck).await;
        if m.sequence > 0 {
            break m.sequence;
        }
    };
    assert_eq!(
        after,
        before + lost + 1,
        "`lost` counts exactly the events between the last one received and the next"
    );
    drop(stuck);
    let done = agent.stop().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_show_in_get_report_and_attribute_violations_in_report_json() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "100ms",
        &http_probe(&server.url("/")),
    )]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let mut client = agent.client().await;
    let mut transitions = tail(
        &mut client,
        TailRequest {
            transitions_only: true,
            ..Default::default()
        },
    )
    .await;
    until_live(&mut transitions).await;

    let test_name = "[sig-network] Services should survive a restart [Disruptive]";
    let started = client
        .annotate(proto::AnnotateRequest {
            annotation: Some(Annotation {
                kind: AnnotationKind::Test as i32,
                name: test_name.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("annotation accepted")
        .into_inner()
        .start
        .expect("the agent returns the start it recorded");
    let phase_start = now_ms();
    client
        .annotate(proto::AnnotateRequest {
            annotation: Some(Annotation {
                kind: AnnotationKind::Phase as i32,
                name: "upgrade".into(),
                start: Some(wire_time(phase_start)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    server.set(Reply {
        status: 503,
        body: String::new(),
        delay: Duration::ZERO,
    });
    until_transition(&mut transitions, "web", State::Violated).await;
    server.set(Reply::ok("ok"));
    until_transition(&mut transitions, "web", State::Holding).await;
    let ended = now_ms();
    let response = client
        .annotate(proto::AnnotateRequest {
            annotation: Some(Annotation {
                kind: AnnotationKind::Test as i32,
                name: test_name.into(),
                start: Some(started),
                end: Some(wire_time(ended)),
                outcome: "passed".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.start, Some(started), "the end replaced the start");

    // Acknowledged before GetReport, so in it.
    let report = client
        .get_report(GetReportRequest {
            format: ReportFormat::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (report.content_type.as_str(), report.file_name.as_str()),
        ("application/json", "report.json")
    );
    let live: serde_json::Value = serde_json::from_slice(&report.content).unwrap();
    assert_eq!(live["run"]["status"], "running");
    let annotations = live["annotations"].as_array().unwrap();
    assert_eq!(annotations.len(), 2, "{annotations:?}");
    let test = annotations.iter().find(|a| a["kind"] == "test").unwrap();
    assert_eq!(test["name"], test_name);
    assert_eq!(test["outcome"], "passed");
    assert_eq!(ms(&test["start"]), millis(&Some(started)));
    assert_eq!(ms(&test["end"]), ended);
    let phase = annotations.iter().find(|a| a["kind"] == "phase").unwrap();
    assert_eq!(ms(&phase["start"]), phase_start);
    let violations = violations(&live, "web");
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0]["tests"], serde_json::json!([test_name]));

    for (format, content_type, file, marker) in [
        (
            ReportFormat::Junit,
            "application/xml",
            "report.junit.xml",
            "<testsuite",
        ),
        (
            ReportFormat::Html,
            "text/html; charset=utf-8",
            "report.html",
            "<html",
        ),
        (
            ReportFormat::Markdown,
            "text/markdown; charset=utf-8",
            "report.md",
            "web",
        ),
    ] {
        let r = client
            .get_report(GetReportRequest {
                format: format as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.content_type.as_str(), r.file_name.as_str()),
            (content_type, file)
        );
        let text = String::from_utf8(r.content).unwrap();
        assert!(text.contains(marker), "{format:?} report:\n{text}");
    }

    drop(transitions);
    let done = agent.stop().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let on_disk = ws.report();
    assert_eq!(on_disk["run"]["status"], "completed");
    assert_eq!(
        violations_of(&on_disk)[0]["tests"],
        serde_json::json!([test_name])
    );
    assert_eq!(on_disk["annotations"].as_array().unwrap().len(), 2);

    // After the run: an annotation is refused, clearly. (The process is gone, so this is
    // checked in-process by the engine's unit tests; here the connection just fails.)
}

fn violations_of(report: &serde_json::Value) -> Vec<serde_json::Value> {
    violations(report, "web")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_refuses_bad_annotations() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "1s",
        &http_probe(&server.url("/")),
    )]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let mut client = agent.client().await;
    let cases = [
        (None, "required"),
        (
            Some(Annotation {
                name: "t".into(),
                ..Default::default()
            }),
            "kind",
        ),
        (
            Some(Annotation {
                kind: AnnotationKind::Test as i32,
                ..Default::default()
            }),
            "empty",
        ),
        (
            Some(Annotation {
                kind: AnnotationKind::Test as i32,
                name: "n".repeat(4097),
                ..Default::default()
            }),
            "4096",
        ),
        (
            Some(Annotation {
                kind: AnnotationKind::Phase as i32,
                name: "p".into(),
                start: Some(wire_time(2_000)),
                end: Some(wire_time(1_000)),
                ..Default::default()
            }),
            "before",
        ),
    ];
    for (annotation, words) in cases {
        let e = client
            .annotate(proto::AnnotateRequest { annotation })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(words), "{words}: {}", e.message());
    }
    let ok = Annotation {
        kind: AnnotationKind::Phase as i32,
        name: "n".repeat(4096),
        ..Default::default()
    };
    let before = now_ms();
    let start = client
        .annotate(proto::AnnotateRequest {
            annotation: Some(ok),
        })
        .await
        .expect("4096 bytes is allowed")
        .into_inner()
        .start;
    assert_between("unset start is now", millis(&start), before, now_ms());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_status_lists_every_invariant_with_its_state() {
    let up = TestHttpServer::start(Reply::ok("ok")).await;
    let down = TestHttpServer::start(Reply {
        status: 500,
        body: String::new(),
        delay: Duration::ZERO,
    })
    .await;
    let metrics = TestHttpServer::start(Reply::ok("other_metric 1\n")).await;
    let ws = Workspace::new();
    let absent = format!(
        "    probe:\n      metrics: {{url: \"{}\", series: missing_total}}\n    condition:\n      \
         increase: {{max: 0}}\n",
        metrics.url("/metrics")
    );
    let config = ws.config(&invariants_yaml(&[
        ("up", "100ms", &http_probe(&up.url("/"))),
        ("down", "100ms", &http_probe(&down.url("/"))),
        ("absent", "100ms", &absent),
    ]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let mut client = agent.client().await;
    let mut stream = tail(&mut client, TailRequest::default()).await;
    until_live(&mut stream).await;
    // Until a sample of each invariant left it where it should be (samples keep coming,
    // so this ends however early the first ones were taken).
    let wanted = [
        ("up", State::Holding),
        ("down", State::Violated),
        ("absent", State::Unknown),
    ];
    let mut settled = std::collections::BTreeSet::new();
    within("every invariant settles", async {
        while settled.len() < wanted.len() {
            let m = next(&mut stream).await;
            if let Some(s) = sample_of(&m)
                && wanted.contains(&(s.invariant.as_str(), State::try_from(s.state).unwrap()))
            {
                settled.insert(s.invariant.clone());
            }
        }
    })
    .await;
    drop(stream);
    // State and sample counts are live; violations and disruption come from the report
    // snapshot the agent publishes every second, so wait for one taken after the
    // violation began.
    let status = within("the violation reaches GetStatus", async {
        loop {
            let status = client
                .get_status(GetStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            if status
                .invariants
                .iter()
                .any(|i| i.name == "down" && i.violations > 0)
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(status.run.unwrap().started_at.is_some());
    let names: Vec<_> = status.invariants.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["up", "down", "absent"],
        "every invariant, in file order"
    );
    let [up, down, absent] = &status.invariants[..] else {
        unreachable!()
    };
    assert_eq!(up.state, State::Holding as i32);
    assert!(
        up.state_since.is_some() && up.reason.contains("first judged sample"),
        "{up:?}"
    );
    assert!(up.samples_ok > 0 && up.samples_failed == 0 && up.violations == 0);
    let last = up.last_sample.as_ref().expect("last sample");
    assert_eq!(
        (last.outcome, last.state),
        (proto::Outcome::Ok as i32, State::Holding as i32)
    );

    assert_eq!(down.state, State::Violated as i32);
    assert_eq!(down.violations, 1);
    assert!(
        down.samples_failed > 0 && down.disruption_seconds > 0.0,
        "{down:?}"
    );
    let last = down.last_sample.as_ref().expect("last sample");
    assert_eq!(last.error_class, "http_status");
    assert!(last.error.contains("status 500"), "{last:?}");

    assert_eq!(absent.state, State::Unknown as i32);
    assert!(absent.state_since.is_none(), "no time while unknown");
    assert!(absent.samples_absent > 0);
    assert_eq!(absent.condition, "increase <= 0 over the run");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_except_for_health_and_never_logged() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "1s",
        &http_probe(&server.url("/")),
    )]));
    let token = "tok-7f3a9c1e5b";
    let token_file = ws.path("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let agent = ApiAgent::start(
        &ws,
        &config,
        &[
            "--grpc-token-file",
            token_file.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
    )
    .await;
    let channel = agent.channel().await;
    let with = |value: Option<&str>| {
        let value = value.map(|v| v.parse::<tonic::metadata::MetadataValue<_>>().unwrap());
        AgentServiceClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            if let Some(v) = &value {
                r.metadata_mut().insert("authorization", v.clone());
            }
            Ok(r)
        })
    };
    for value in [None, Some("Bearer tok-7f3a9c1e5"), Some("Bearer nope")] {
        let e = with(value)
            .get_status(GetStatusRequest {})
            .await
            .expect_err("refused without the right token");
        assert_eq!(e.code(), Code::Unauthenticated, "{value:?}");
        assert!(e.message().contains("bearer token"), "{}", e.message());
        assert!(!e.message().contains(token));
        let e = with(value)
            .tail(TailRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let status = with(Some(&format!("Bearer {token}")))
        .get_status(GetStatusRequest {})
        .await
        .expect("the right token passes");
    assert_eq!(status.into_inner().invariants.len(), 1);
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(
        health.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let done = agent.stop().await;
    assert_eq!(done.code, Some(0));
    assert!(
        done.stderr.contains("refused an API call"),
        "refusals are logged at debug"
    );
    assert!(!done.stderr.contains(token), "the token is never logged");

    // An empty token file stops the agent at start, naming the flag.
    std::fs::write(&token_file, "  \n").unwrap();
    let refused = agent_command(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--report-dir",
        ws.report_dir().to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--grpc-token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--grpc-token-file"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("is empty"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_with_a_given_certificate() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "1s",
        &http_probe(&server.url("/")),
    )]));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(ws.path("cert.pem"), &cert_pem).unwrap();
    std::fs::write(ws.path("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let cert_path = ws.path("cert.pem");
    let key_path = ws.path("key.pem");
    let agent = ApiAgent::start(
        &ws,
        &config,
        &[
            "--grpc-tls-cert",
            cert_path.to_str().unwrap(),
            "--grpc-tls-key",
            key_path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(agent.log().contains("\"tls\":true"), "{}", agent.log());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", agent.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection");
    let status = AgentServiceClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus over TLS");
    assert_eq!(status.into_inner().invariants[0].name, "web");
    // Plaintext gets nowhere.
    let plain = Endpoint::from_shared(agent.url()).unwrap().connect().await;
    if let Ok(channel) = plain {
        let e = AgentServiceClient::new(channel)
            .get_status(GetStatusRequest {})
            .await
            .expect_err("plaintext against TLS fails");
        assert_ne!(e.code(), Code::Ok);
    }
    agent.stop().await;

    // A key that is not a key stops the agent at start.
    std::fs::write(&key_path, "not a key").unwrap();
    let refused = agent_command(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--report-dir",
        ws.report_dir().to_str().unwrap(),
        "--grpc-listen",
        "127.0.0.1:0",
        "--grpc-tls-cert",
        cert_path.to_str().unwrap(),
        "--grpc-tls-key",
        key_path.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--grpc-tls-key"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_describe_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "1s",
        &http_probe(&server.url("/")),
    )]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let channel = agent.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "invariant.v1.AgentService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("invariant.v1.AgentService".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = reflection
        .server_reflection_info(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected the service list");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for wanted in ["invariant.v1.AgentService", "grpc.health.v1.Health"] {
        assert!(services.contains(&wanted), "{services:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_the_run_ends_tails_with_run_ended_and_ok_and_health_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "200ms",
        &http_probe(&server.url("/")),
    )]));
    let agent = ApiAgent::start(&ws, &config, &["--duration", "3s"]).await;
    let channel = agent.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "invariant.v1.AgentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let mut stream = tail(
        &mut AgentServiceClient::new(channel),
        TailRequest::default(),
    )
    .await;
    until_live(&mut stream).await;
    let mut samples = 0;
    loop {
        let m = next(&mut stream).await;
        match m.event {
            Some(Event::RunEnded(_)) => break,
            Some(Event::Sample(_)) => samples += 1,
            _ => {}
        }
    }
    let ended = Instant::now();
    assert!(samples >= 5, "samples until the end: {samples}");
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap();
    assert!(
        matches!(end, Ok(None)),
        "the stream closes with OK after RunEnded: {end:?}"
    );
    let second = tokio::time::timeout(PATIENCE, health.message())
        .await
        .unwrap();
    assert_eq!(
        second
            .expect("health watch delivered the change")
            .map(|r| r.status),
        Some(ServingStatus::NotServing as i32)
    );
    // A watch never ends by itself; a client that kept it would hold the server until
    // its shutdown deadline.
    drop(health);
    let done = agent.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let took = ended.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "exit {took:?} after RunEnded"
    );
    assert_eq!(ws.report()["run"]["status"], "completed");
}

/// Sends bytes as they are, as a gRPC message, and returns the reply's bytes.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_protobuf_are_refused_and_the_agent_keeps_serving() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "1s",
        &http_probe(&server.url("/")),
    )]));
    let agent = ApiAgent::start(&ws, &config, &[]).await;
    let channel = agent.channel().await;
    // Field 1 (length-delimited) with a length varint that never ends, a group that
    // never closes, and a length past the end of the message.
    let garbage: [&[u8]; 3] = [
        &[
            0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        &[0x0b],
        &[0x0a, 0x7f, 0x01],
    ];
    for method in ["Annotate", "Tail", "GetReport"] {
        for bytes in garbage {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let path: http::uri::PathAndQuery = format!("/invariant.v1.AgentService/{method}")
                .parse()
                .unwrap();
            let request = tonic::Request::new(bytes.to_vec());
            let code = if method == "Tail" {
                match grpc.server_streaming(request, path, RawCodec).await {
                    Ok(_) => Code::Ok,
                    Err(e) => e.code(),
                }
            } else {
                match grpc.unary(request, path, RawCodec).await {
                    Ok(_) => Code::Ok,
                    Err(e) => e.code(),
                }
            };
            assert!(
                code == Code::InvalidArgument,
                "{method} with {bytes:?}: {code:?}"
            );
        }
    }
    // Still serving, the same connection and a new one.
    let mut client = AgentServiceClient::new(channel);
    assert_eq!(
        client
            .get_status(GetStatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .invariants
            .len(),
        1
    );
    agent
        .client()
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
    let done = agent.stop().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_stops_run_at_start_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants_yaml(&[(
        "web",
        "1s",
        &http_probe(&server.url("/")),
    )]));
    let done = wait(spawn_agent(
        &ws,
        &config,
        &["--grpc-listen", &addr, "--duration", "5s"],
    ))
    .await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    assert!(
        done.stderr
            .contains(&format!("cannot listen on --grpc-listen {addr}")),
        "{}",
        done.stderr
    );
    assert!(
        !ws.report_dir().join("report.json").exists(),
        "nothing was sampled"
    );
}
