//! Security properties of the real agent binary: credentials (a probe's bearer token
//! file, the gRPC API's token, a Kubernetes ServiceAccount token) never reach a log line
//! at debug level, a report in any format, an error sample, `/metrics` or an API
//! response, even from a target that echoes the request's headers back; without listen
//! flags the agent listens on nothing, and the demo only on loopback; the API's token
//! guards every AgentService call; and no API call can make the agent contact a host
//! (probe targets come only from the invariant file).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use invariant_agent::api::proto::agent_service_client::AgentServiceClient;
use invariant_agent::api::proto::{
    AnnotateRequest, Annotation, AnnotationKind, GetReportRequest, GetStatusRequest, ReportFormat,
    TailRequest, tail_request, tail_response::Event,
};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::kube_support::KubeApiserver;
use crate::support::*;

/// How long any single expected event may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// A real HTTP server that echoes the request's `Authorization` header back, as a
/// misbehaving or debugging endpoint would: in a 500's body and headers, in a JSON string
/// the probe reads, and in a `/metrics` body. Counts the requests it serves.
struct EchoServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl EchoServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let token = auth.strip_prefix("Bearer ").unwrap_or(&auth).to_string();
                        let (status, body) = match req.uri().path() {
                            "/echo-500" => (500, format!("denied: you sent authorization: {auth}")),
                            "/echo-json" => (200, serde_json::json!({ "x": auth }).to_string()),
                            "/echo-metrics" => (
                                200,
                                format!("# HELP up echo\nup{{auth=\"{auth}\"}} 1\nup {token}\n"),
                            ),
                            _ => (200, "ok".to_string()),
                        };
                        let response = Response::builder()
                            .status(status)
                            .header("x-echo-authorization", auth)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EchoServer { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until the server has served at least `n` requests.
    async fn wait_requests(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.requests.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the agent never probed the echo server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running agent with its gRPC API and `/metrics` on ports it picked, logging JSON.
struct ServingAgent {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: Arc<Mutex<String>>,
    log_task: tokio::task::JoinHandle<()>,
}

impl ServingAgent {
    /// Starts `run` with the API and `/metrics` on `127.0.0.1:0`, JSON logs at debug
    /// level, and `extra` flags; reads both bound addresses from the log.
    async fn start(ws: &Workspace, config: &Path, extra: &[&str]) -> Self {
        let mut args = vec![
            "--grpc-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ];
        args.extend_from_slice(extra);
        let mut child = spawn_agent(ws, config, &args);
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let log_task = tokio::spawn(collect_addresses(stderr, log.clone(), tx));
        let Ok(Ok((grpc, metrics))) = tokio::time::timeout(PATIENCE, rx).await else {
            panic!(
                "the agent did not log both addresses:\n{}",
                log.lock().unwrap()
            );
        };
        ServingAgent {
            child,
            grpc,
            metrics,
            log,
            log_task,
        }
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .timeout(PATIENCE)
            .connect()
            .await
            .expect("connect to the agent's API")
    }

    /// An API client that sends `token` (if any) as the bearer token.
    async fn client(&self, token: Option<&str>) -> AgentServiceClient<Authorized> {
        let header = token.map(|t| format!("Bearer {t}"));
        AgentServiceClient::with_interceptor(self.channel().await, SendAuthorization(header))
    }

    /// Everything the API and `/metrics` show while the agent runs, each with its name:
    /// the status, the report in every format, the Tail history, and `/metrics`.
    async fn served_outputs(&self, token: &str) -> Vec<(String, String)> {
        let mut client = self.client(Some(token)).await;
        let mut out = Vec::new();
        let status = client
            .get_status(GetStatusRequest {})
            .await
            .expect("GetStatus with the right token");
        out.push((
            "GetStatus".to_string(),
            format!("{:?}", status.into_inner()),
        ));
        for format in [
            ReportFormat::Json,
            ReportFormat::Junit,
            ReportFormat::Html,
            ReportFormat::Markdown,
        ] {
            let report = client
                .get_report(GetReportRequest {
                    format: format as i32,
                })
                .await
                .expect("GetReport with the right token")
                .into_inner();
            out.push((
                format!("GetReport {format:?}"),
                String::from_utf8_lossy(&report.content).into_owned(),
            ));
        }
        let mut stream = client
            .tail(TailRequest {
                history: Some(tail_request::History::Last(1000)),
                ..TailRequest::default()
            })
            .await
            .expect("Tail with the right token")
            .into_inner();
        let mut events = String::new();
        loop {
            let next = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .expect("the Tail history arrives")
                .expect("Tail stream");
            let Some(message) = next else { break };
            events.push_str(&format!("{message:?}\n"));
            if matches!(message.event, Some(Event::Live(_))) {
                break;
            }
        }
        out.push(("Tail".to_string(), events));
        out.push((
            "/metrics".to_string(),
            http_get(self.metrics, "/metrics").await,
        ));
        out
    }

    /// Waits for the run to end (it has a --duration) and returns stdout and the log.
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

/// Sends its value (if any) as the `authorization` metadata of every call.
#[derive(Clone)]
struct SendAuthorization(Option<String>);

impl tonic::service::Interceptor for SendAuthorization {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            r.metadata_mut()
                .insert("authorization", value.parse().expect("printable ASCII"));
        }
        Ok(r)
    }
}

/// A channel whose calls carry [`SendAuthorization`]'s value.
type Authorized = tonic::service::interceptor::InterceptedService<Channel, SendAuthorization>;

/// Collects the JSON log and sends the gRPC and `/metrics` addresses once both appeared.
async fn collect_addresses(
    stderr: tokio::process::ChildStderr,
    log: Arc<Mutex<String>>,
    found: tokio::sync::oneshot::Sender<(SocketAddr, SocketAddr)>,
) {
    let mut found = Some(found);
    let (mut grpc, mut metrics) = (None, None);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            let addr = v["addr"]
                .as_str()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match v["message"].as_str() {
                Some("gRPC API listening") => grpc = addr,
                Some("serving /metrics, /healthz and /readyz") => metrics = addr,
                _ => {}
            }
        }
        if let (Some(g), Some(m)) = (grpc, metrics)
            && let Some(tx) = found.take()
        {
            let _ = tx.send((g, m));
        }
    }
}

/// A plain HTTP/1.0 GET on loopback; the whole response, head and body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .expect("the response ends")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

/// Every file the run left in the report directory, and the report rendered by
/// `report render` in every format.
fn written_outputs(ws: &Workspace) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![ws.report_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    assert!(
        out.iter().any(|(name, _)| name.ends_with("report.json")),
        "the run wrote a report: {:?}",
        out.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let from = ws.report_dir().join("report.json");
    for format in ["json", "junit", "html", "md", "ndjson", "text"] {
        let to = ws.path(&format!("rendered.{format}"));
        let done = agent_command(&[
            "report",
            "render",
            "--from",
            from.to_str().unwrap(),
            "--format",
            format,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(done.code, Some(0), "render {format}: {}", done.stderr);
        out.push((
            format!("report render --format {format}"),
            std::fs::read_to_string(&to).unwrap(),
        ));
    }
    out
}

/// Fails naming the output that holds any of `secrets`.
fn assert_no_secret(outputs: &[(String, String)], secrets: &[&str]) {
    for (name, text) in outputs {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "a credential leaked into {name}:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// One invariant of the files these tests write.
fn invariant_yaml(name: &str, probe: &str) -> String {
    format!(
        "  - name: {name}\n    description: {name}\n    owner: sig-test\n    interval: 250ms\n    \
         timeout: 2s\n    probe:\n      {probe}\n    condition:\n      \
         availability: {{target: 100, window: 1m}}\n"
    )
}

/// A probe's bearer token and the API's token, with a target that echoes the
/// Authorization header in a 500, in the JSON value the probe reads and in a `/metrics`
/// body: neither token shows up in the debug log, stdout, any report file or rendering,
/// the error samples, `/metrics`, or any API response; and the samples did fail, so the
/// error paths really ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_logs_reports_metrics_or_api_responses() {
    let echo = EchoServer::start().await;
    let ws = Workspace::new();
    let probe_token = format!("probe-{:016x}", fastrand::u64(..));
    let api_token = format!("api-{:016x}", fastrand::u64(..));
    let probe_token_file = ws.path("probe-token");
    let api_token_file = ws.path("api-token");
    std::fs::write(&probe_token_file, format!("{probe_token}\n")).unwrap();
    std::fs::write(&api_token_file, format!("{api_token}\n")).unwrap();
    let token_file = probe_token_file.display();
    let config = ws.config(
        &[
            invariant_yaml(
                "echo-500",
                &format!(
                    "http: {{url: '{}', bearerTokenFile: '{token_file}'}}",
                    echo.url("/echo-500")
                ),
            ),
            invariant_yaml(
                "echo-json",
                &format!(
                    "http: {{url: '{}', bearerTokenFile: '{token_file}', valuePointer: /x}}",
                    echo.url("/echo-json")
                ),
            ),
            invariant_yaml(
                "echo-metrics",
                &format!(
                    "metrics: {{url: '{}', bearerTokenFile: '{token_file}', series: up}}",
                    echo.url("/echo-metrics")
                ),
            ),
        ]
        .concat(),
    );
    let agent = ServingAgent::start(
        &ws,
        &config,
        &[
            "--grpc-token-file",
            api_token_file.to_str().unwrap(),
            "--duration",
            "5s",
            "--checkpoint-interval",
            "1s",
        ],
    )
    .await;
    // Every invariant has failed a few times before the outputs are read.
    echo.wait_requests(9).await;
    let mut outputs = agent.served_outputs(&api_token).await;
    let done = agent.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    outputs.push(("stderr (debug log)".to_string(), done.stderr.clone()));
    outputs.push(("stdout".to_string(), done.stdout));
    outputs.extend(written_outputs(&ws));
    assert_no_secret(&outputs, &[&probe_token, &api_token]);

    // The samples failed on the echoing target, and what they say is in the report.
    let report = ws.report();
    for (name, expected) in [
        ("echo-500", "status 500, expected 200-299"),
        (
            "echo-json",
            "value at /x is the string \\\"Bearer <redacted>\\\"",
        ),
        ("echo-metrics", "invalid value"),
    ] {
        let text = invariant(&report, name).to_string();
        assert!(text.contains(expected), "{name}: {text}");
    }
    assert!(
        done.stderr.contains("\"level\":\"DEBUG\""),
        "the log was at debug level"
    );
}

/// A ServiceAccount token (from a real kube-apiserver) the API server refuses for lack
/// of RBAC, and an unknown token it does not accept at all: neither appears in the debug
/// log (kube's client, hyper and rustls included), the reports, the error samples,
/// `/metrics` or the API's responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_tokens_never_reach_logs_reports_metrics_or_api_responses() {
    let kube = KubeApiserver::start().await;
    kube.create_service_account("sec-ns", "prober").await;
    let sa_token = kube.service_account_token("sec-ns", "prober").await;
    let bogus_token = format!("bogus-{:016x}", fastrand::u64(..));
    let api_token = format!("api-{:016x}", fastrand::u64(..));
    let invariants = [
        invariant_yaml("nodes-api", "apiserver: {path: /api/v1/nodes}"),
        invariant_yaml("readyz", "apiserver: {path: /readyz}"),
        invariant_yaml(
            "nodes-watch",
            "resource: {apiVersion: v1, kind: Node, expression: 'true'}",
        ),
        invariant_yaml("events", "events: {measure: maxRepeats}"),
    ]
    .concat();
    for (name, token) in [("prober", &sa_token), ("bogus", &bogus_token)] {
        let ws = Workspace::new();
        let kubeconfig = kube.kubeconfig_for_token(name, token);
        let api_token_file = ws.path("api-token");
        std::fs::write(&api_token_file, &api_token).unwrap();
        let config = ws.config(&invariants);
        let agent = ServingAgent::start(
            &ws,
            &config,
            &[
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--grpc-token-file",
                api_token_file.to_str().unwrap(),
                "--duration",
                "4s",
                "--checkpoint-interval",
                "1s",
            ],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut outputs = agent.served_outputs(&api_token).await;
        let done = agent.finish().await;
        assert_eq!(done.code, Some(0), "{}", done.stderr);
        outputs.push(("stderr (debug log)".to_string(), done.stderr.clone()));
        outputs.push(("stdout".to_string(), done.stdout));
        outputs.extend(written_outputs(&ws));
        assert_no_secret(&outputs, &[token, &api_token]);
        // The probes really ran into the refusal.
        let class = if name == "prober" {
            "forbidden"
        } else {
            "unauthorized"
        };
        let text = invariant(&ws.report(), "nodes-api").to_string();
        assert!(text.contains(class), "{name}: {text}");
    }
}

/// Every AgentService call needs the token when one is configured (missing, wrong, a
/// prefix of it, or without the `Bearer` scheme are all UNAUTHENTICATED), while the
/// standard health and reflection services stay open so liveness checks and grpcurl's
/// `list` work without it (they carry no run data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_needs_the_token() {
    let echo = EchoServer::start().await;
    let ws = Workspace::new();
    let token = format!("api-{:016x}", fastrand::u64(..));
    let token_file = ws.path("api-token");
    std::fs::write(&token_file, &token).unwrap();
    let config = ws.config(&invariant_yaml(
        "web",
        &format!("http: {{url: '{}'}}", echo.url("/ok")),
    ));
    let agent = ServingAgent::start(
        &ws,
        &config,
        &[
            "--grpc-token-file",
            token_file.to_str().unwrap(),
            "--duration",
            "30s",
        ],
    )
    .await;
    let prefix = &token[..token.len() - 1];
    for presented in [None, Some("wrong"), Some(prefix)] {
        let mut client = agent.client(presented).await;
        let codes = [
            client.get_status(GetStatusRequest {}).await.err(),
            client.get_report(GetReportRequest::default()).await.err(),
            client.tail(TailRequest::default()).await.err(),
            client
                .annotate(AnnotateRequest {
                    annotation: Some(Annotation {
                        kind: AnnotationKind::Test as i32,
                        name: "x".into(),
                        ..Annotation::default()
                    }),
                })
                .await
                .err(),
        ]
        .map(|e| e.map(|e| e.code()));
        assert_eq!(codes, [Some(Code::Unauthenticated); 4], "{presented:?}");
    }
    // The token without the `Bearer ` scheme is refused too.
    let channel = agent.channel().await;
    let mut bare = AgentServiceClient::with_interceptor(
        channel.clone(),
        SendAuthorization(Some(token.clone())),
    );
    let e = bare.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let mut client = agent.client(Some(&token)).await;
    client
        .get_status(GetStatusRequest {})
        .await
        .expect("the token passes");
    client
        .get_report(GetReportRequest::default())
        .await
        .expect("the token passes");

    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection needs no token")
        .into_inner();
    let listed = responses.message().await.unwrap().expect("a reply");
    assert!(format!("{listed:?}").contains("invariant.v1.AgentService"));
    signal(agent.child.id().unwrap(), "TERM");
    let done = agent.finish().await;
    assert!(!done.stderr.contains(&token), "the token is never logged");
}

/// No API call can make the agent contact a host. The API has exactly four calls and
/// their requests carry no address: filters (invariant names, labels), history bounds, a
/// report format, and annotations (a name and an outcome, stored as text). This test
/// lists the calls and every string field of their requests from the API's own
/// descriptor, so a new call or field fails here until someone has checked it cannot be
/// a target; then it sends each call with every string set to the URL of a listener and
/// checks that nothing ever connected to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_call_makes_the_agent_contact_a_host() {
    let descriptor =
        prost_types::FileDescriptorSet::decode(invariant_agent::api::proto::FILE_DESCRIPTOR_SET)
            .unwrap();
    let file = descriptor
        .file
        .iter()
        .find(|f| f.package() == "invariant.v1")
        .expect("the API's file");
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "AgentService")
        .unwrap();
    let calls: Vec<(&str, &str)> = service
        .method
        .iter()
        .map(|m| (m.name(), m.input_type()))
        .collect();
    assert_eq!(
        calls,
        [
            ("Tail", ".invariant.v1.TailRequest"),
            ("GetStatus", ".invariant.v1.GetStatusRequest"),
            ("GetReport", ".invariant.v1.GetReportRequest"),
            ("Annotate", ".invariant.v1.AnnotateRequest"),
        ],
        "a new API call: check it cannot make the agent contact a host, then list it here"
    );
    // Every string reachable from a request message (maps are messages of key/value).
    let message = |name: &str| {
        let short = name.rsplit('.').next().unwrap();
        file.message_type
            .iter()
            .find(|m| m.name() == short)
            .or_else(|| {
                file.message_type
                    .iter()
                    .flat_map(|m| &m.nested_type)
                    .find(|m| m.name() == short)
            })
    };
    let mut strings = BTreeSet::new();
    let mut todo: Vec<(String, String)> = calls
        .iter()
        .map(|(_, input)| {
            (
                input.rsplit('.').next().unwrap().to_string(),
                input.to_string(),
            )
        })
        .collect();
    while let Some((path, type_name)) = todo.pop() {
        let Some(m) = message(&type_name) else {
            continue; // google.protobuf.Timestamp and the like: numbers only
        };
        for field in &m.field {
            let here = format!("{path}.{}", field.name());
            match field.r#type() {
                prost_types::field_descriptor_proto::Type::String
                | prost_types::field_descriptor_proto::Type::Bytes => {
                    strings.insert(here);
                }
                prost_types::field_descriptor_proto::Type::Message => {
                    todo.push((here, field.type_name().to_string()));
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        strings.into_iter().collect::<Vec<_>>(),
        [
            "AnnotateRequest.annotation.name",
            "AnnotateRequest.annotation.outcome",
            "TailRequest.invariants",
            "TailRequest.labels.key",
            "TailRequest.labels.value",
        ],
        "a new string in a request: check the agent never contacts it, then list it here"
    );

    // A listener that no invariant names; the API is asked to reach it every way it can.
    let canary = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let canary_url = format!("http://{}/", canary.local_addr().unwrap());
    let connected = Arc::new(AtomicUsize::new(0));
    let counter = connected.clone();
    tokio::spawn(async move {
        while canary.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let echo = EchoServer::start().await;
    let ws = Workspace::new();
    let config = ws.config(&invariant_yaml(
        "web",
        &format!("http: {{url: '{}'}}", echo.url("/ok")),
    ));
    let agent = ServingAgent::start(&ws, &config, &["--duration", "30s"]).await;
    let mut client = agent.client(None).await;
    // Tail's filters must name what the file defines: anything else is refused.
    for request in [
        TailRequest {
            invariants: vec![canary_url.clone()],
            ..TailRequest::default()
        },
        TailRequest {
            labels: [(canary_url.clone(), canary_url.clone())].into(),
            ..TailRequest::default()
        },
    ] {
        let refused = client
            .tail(request)
            .await
            .expect_err("a filter the file does not define");
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    client
        .annotate(AnnotateRequest {
            annotation: Some(Annotation {
                kind: AnnotationKind::Test as i32,
                name: canary_url.clone(),
                outcome: canary_url.clone(),
                ..Annotation::default()
            }),
        })
        .await
        .expect("Annotate");
    client
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus");
    client
        .get_report(GetReportRequest::default())
        .await
        .expect("GetReport");
    // The agent keeps probing what its file names, and nothing else.
    let before = echo.requests.load(Ordering::SeqCst);
    echo.wait_requests(before + 4).await;
    assert_eq!(
        connected.load(Ordering::SeqCst),
        0,
        "the agent contacted a host named only in an API request"
    );
    signal(agent.child.id().unwrap(), "TERM");
    agent.finish().await;
}

/// The TCP sockets `pid` listens on, from /proc (the addresses of listening sockets
/// whose inodes are among the process's open files).
fn listening_sockets(pid: u32) -> Vec<SocketAddr> {
    let mut inodes = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        if let Ok(target) = std::fs::read_link(entry.unwrap().path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is column 1, st column 3 (0A = LISTEN), inode column 9.
            if cols.len() < 10 || cols[3] != "0A" || !inodes.contains(cols[9]) {
                continue;
            }
            let (ip, port) = cols[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            // /proc prints each 32-bit word of the address in host (little-endian) order.
            let words: Vec<u32> = (0..ip.len() / 8)
                .map(|i| {
                    u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)
                        .unwrap()
                        .swap_bytes()
                })
                .collect();
            let ip = match words.as_slice() {
                [a] => IpAddr::V4(Ipv4Addr::from(*a)),
                [a, b, c, d] => {
                    let bytes: Vec<u8> =
                        [a, b, c, d].iter().flat_map(|w| w.to_be_bytes()).collect();
                    IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap()))
                }
                _ => panic!("unexpected address {ip} in /proc/net/{table}"),
            };
            found.push(SocketAddr::new(ip, port));
        }
    }
    found
}

/// Without `--grpc-listen` or `--metrics-listen` the agent listens on nothing (every
/// listener needs an explicit address); with them, on exactly those; and the demo,
/// which serves its API and demo endpoints by default, listens only on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_need_explicit_addresses_and_the_demo_stays_on_loopback() {
    let echo = EchoServer::start().await;
    let ws = Workspace::new();
    let config = ws.config(&invariant_yaml(
        "web",
        &format!("http: {{url: '{}'}}", echo.url("/ok")),
    ));
    // Probing has started, so everything the agent binds is bound.
    let plain = spawn_agent(&ws, &config, &["--duration", "30s"]);
    echo.wait_requests(2).await;
    let sockets = listening_sockets(plain.id().unwrap());
    assert_eq!(sockets, [], "run without listen flags listens on nothing");
    signal(plain.id().unwrap(), "TERM");
    wait(plain).await;

    // The inspection sees listeners when there are some.
    let ws2 = Workspace::new();
    let serving = ServingAgent::start(&ws2, &config, &["--duration", "30s"]).await;
    let mut sockets = listening_sockets(serving.child.id().unwrap());
    sockets.sort();
    let mut expected = vec![serving.grpc, serving.metrics];
    expected.sort();
    assert_eq!(sockets, expected);
    signal(serving.child.id().unwrap(), "TERM");
    serving.finish().await;

    let mut demo = tokio::process::Command::new(agent_binary())
        .args(["demo", "--duration", "30s", "--report-dir"])
        .arg(ws.path("demo-report"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = demo.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // The demo prints where its endpoints are before it starts probing them.
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match tokio::time::timeout(PATIENCE, lines.next_line()).await {
            Ok(Ok(Some(line))) if line.contains("follow the run live") => break,
            Ok(Ok(Some(_))) => continue,
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sockets = listening_sockets(demo.id().unwrap());
    assert!(!sockets.is_empty(), "the demo serves its endpoints");
    for socket in &sockets {
        assert!(
            socket.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST),
            "the demo listens on {socket}, not loopback: {sockets:?}"
        );
    }
    signal(demo.id().unwrap(), "TERM");
    let _ = demo.wait().await;
}
