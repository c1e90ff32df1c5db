//! What Tail subscribers cost the agent, and how fast events reach them.
//!
//! Starts the release agent on N HTTP invariants (default 200 at 1 s, as
//! `agent-load.sh`) against a keep-alive server in this process. First without the API
//! (`API off`: the agent's CPU, % of one core from /proc, and RSS over one window), then
//! again with its gRPC API on, measuring over equal windows of the same run:
//!
//! 1. `0 tailers`: CPU and RSS (the feed and its history, nobody reading);
//! 2. `100 tailers`: the same, plus for every sample each tailer receives the delay from
//!    the probe's end (its start + latency, as the agent reports them) to its arrival
//!    here, and for every event the spread between the first and the last of the 100
//!    tailers to receive it (the fan-out, measured on this process's clock alone);
//! 3. `100 tailers + 1 stuck`: the same with one more tailer, on its own connection
//!    with a 64 KiB HTTP/2 window, that never reads; at the end it reads and reports the
//!    `Lost` count it is told.
//!
//! Each tailer has its own connection, like separate clients. The tailers, the target
//! server and this harness share the machine with the agent: their CPU is not counted,
//! but they compete with it for the cores.
//!
//!     cargo bench --bench tail -- [INVARIANTS=200] [INTERVAL_MS=1000] [SECONDS=30] [TAILERS=100]
//!
//! Under `cargo test --all-targets` (no `--bench`) it runs a seconds-long smoke version.
//!
//! `TAIL_BENCH_AGENT_ARGS` adds agent flags (e.g. `--tail-history 0`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use invariant_agent::api::proto::agent_service_client::AgentServiceClient;
use invariant_agent::api::proto::tail_response::Event;
use invariant_agent::api::proto::{TailRequest, TailResponse};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

struct Settings {
    invariants: usize,
    interval_ms: u64,
    seconds: u64,
    tailers: usize,
}

fn settings() -> Settings {
    // `cargo bench` passes `--bench`; the rest are positional numbers. Without `--bench`
    // this runs under `cargo test --all-targets`, as a quick check that the harness still
    // works, not a measurement: a few invariants, tailers and seconds.
    let measuring = std::env::args().any(|a| a == "--bench");
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let at = |i: usize, bench: u64, smoke: u64| {
        numbers
            .get(i)
            .copied()
            .unwrap_or(if measuring { bench } else { smoke })
    };
    Settings {
        invariants: at(0, 200, 5) as usize,
        interval_ms: at(1, 1000, 200),
        seconds: at(2, 30, 1),
        tailers: at(3, 100, 3) as usize,
    }
}

fn main() {
    let s = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(s));
}

async fn bench(s: Settings) {
    let target = serve_target().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("invariants.yaml");
    std::fs::write(&config, invariants(&s, target)).expect("write invariants");
    let window = Duration::from_secs(s.seconds);
    println!(
        "{} HTTP invariants every {} ms ({:.0} samples/s), windows of {} s\n",
        s.invariants,
        s.interval_ms,
        s.invariants as f64 * 1000.0 / s.interval_ms as f64,
        s.seconds
    );
    println!(
        "| tailers | agent CPU (one core) | agent RSS | samples received | probe end → tailer p50 / p99 | fan-out spread p50 / p99 | lost |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");

    let (mut agent, _) = start_agent(&config, &dir.path().join("report-off"), false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu, rss) = measure(agent.id(), window).await;
    println!("| API off | {cpu:.2}% | {rss:.1} MiB | - | - | - | - |");
    stop(&mut agent);

    let (mut agent, addr) = start_agent(&config, &dir.path().join("report"), true);
    let addr = addr.expect("the API address");
    let pid = agent.id();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu, rss) = measure(pid, window).await;
    println!("| 0 | {cpu:.2}% | {rss:.1} MiB | - | - | - | - |");
    if s.tailers == 0 {
        stop(&mut agent);
        return;
    }

    let tailers = start_tailers(addr, s.tailers).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tailers.reset();
    let (cpu, rss) = measure(pid, window).await;
    println!(
        "| {} | {cpu:.2}% | {rss:.1} MiB | {} |",
        s.tailers,
        tailers.summary()
    );

    let mut stuck = stuck_tailer(addr).await;
    tailers.reset();
    let (cpu, rss) = measure(pid, window).await;
    println!(
        "| {} + 1 stuck | {cpu:.2}% | {rss:.1} MiB | {} |",
        s.tailers,
        tailers.summary()
    );
    let lost = lost_after_reading(&mut stuck).await;
    println!("\nthe stuck tailer, once it read: {lost}");

    stop(&mut agent);
    println!(
        "ticks missed in the whole run: {}",
        missed_ticks(&dir.path().join("report").join("report.json"))
    );
}

/// Ticks counted as missed over the run, from its final report.
fn missed_ticks(report: &std::path::Path) -> u64 {
    let text = std::fs::read_to_string(report).expect("the final report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report JSON");
    report["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .map(|i| i["samples"]["missed"].as_u64().unwrap_or(0))
        .sum()
}

fn stop(agent: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status();
    let _ = agent.wait();
}

fn invariants(s: &Settings, target: SocketAddr) -> String {
    let mut text = format!(
        "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ndefaults: {{interval: {}ms, timeout: 1s}}\ninvariants:\n",
        s.interval_ms
    );
    for i in 0..s.invariants {
        text.push_str(&format!(
            "  - name: target-{i}\n    description: bench target {i}\n    owner: bench\n    probe:\n      http: {{url: \"http://{target}/t{i}\", connection: reused}}\n    condition:\n      availability: {{target: 99, window: 1m}}\n"
        ));
    }
    text
}

/// A keep-alive HTTP/1.1 server answering 200 "ok", in this process.
async fn serve_target() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Starts the agent built for this benchmark, with its API when `api`; returns it and
/// the API's address.
fn start_agent(
    config: &std::path::Path,
    report: &std::path::Path,
    api: bool,
) -> (Child, Option<SocketAddr>) {
    let extra = std::env::var("TAIL_BENCH_AGENT_ARGS").unwrap_or_default();
    let mut command = Command::new(env!("CARGO_BIN_EXE_invariant-agent"));
    command
        .args(["--log-format", "json"])
        .args(["--log-level", "warn,invariant_agent::api=info"])
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--report-dir")
        .arg(report)
        .args(extra.split_whitespace());
    if api {
        command.args(["--grpc-listen", "127.0.0.1:0"]);
    }
    let mut child = command
        .env_remove("INVARIANT_AGENT_GRPC_LISTEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .env_remove("INVARIANT_AGENT_METRICS_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    if !api {
        std::thread::spawn(move || lines.for_each(drop));
        return (child, None);
    }
    let addr = loop {
        let line = lines
            .next()
            .expect("the agent logs its API address")
            .expect("read the agent's log");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "gRPC API listening" {
            break v["addr"]
                .as_str()
                .expect("addr")
                .parse()
                .expect("an address");
        }
    };
    // Keep draining the log so the agent never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, Some(addr))
}

/// CPU (% of one core) and RSS (MiB) of `pid` over `window`.
async fn measure(pid: u32, window: Duration) -> (f64, f64) {
    let ticks = clock_ticks();
    let c0 = cpu_ticks(pid);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let c1 = cpu_ticks(pid);
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = (c1 - c0) as f64 / ticks / seconds * 100.0;
    (cpu, rss_mib(pid))
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// What one tailer records: (sequence, arrival, probe end → arrival in µs) per sample,
/// and the `Lost` counts it was told.
#[derive(Default)]
struct Record {
    received: Vec<(u64, Instant, i64)>,
    lost: u64,
}

struct Tailers {
    records: Vec<Arc<Mutex<Record>>>,
}

async fn start_tailers(addr: SocketAddr, count: usize) -> Tailers {
    let mut records = Vec::new();
    for _ in 0..count {
        let record = Arc::new(Mutex::new(Record::default()));
        let mut stream = open_tail(&connect(addr, None).await).await;
        let shared = record.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                let arrived = Instant::now();
                let wall = SystemTime::now();
                let mut r = shared.lock().unwrap();
                match &m.event {
                    Some(Event::Sample(s)) => {
                        let end = s
                            .time
                            .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
                            .unwrap_or(0)
                            + s.latency
                                .map(|d| d.seconds * 1_000_000 + i64::from(d.nanos) / 1000)
                                .unwrap_or(0);
                        let now = wall.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
                        r.received.push((m.sequence, arrived, now - end));
                    }
                    Some(Event::Lost(l)) => r.lost += l.events,
                    _ => {}
                }
            }
        });
        records.push(record);
    }
    Tailers { records }
}

impl Tailers {
    fn reset(&self) {
        for r in &self.records {
            *r.lock().unwrap() = Record::default();
        }
    }

    /// `samples | p50 / p99 | spread p50 / p99 | lost` for the table.
    fn summary(&self) -> String {
        let mut delays = Vec::new();
        let mut arrivals: HashMap<u64, (Instant, Instant)> = HashMap::new();
        let mut lost = 0;
        for r in &self.records {
            let r = r.lock().unwrap();
            lost += r.lost;
            for &(sequence, at, delay) in &r.received {
                delays.push(delay);
                let e = arrivals.entry(sequence).or_insert((at, at));
                e.0 = e.0.min(at);
                e.1 = e.1.max(at);
            }
        }
        let mut spreads: Vec<i64> = arrivals
            .values()
            .map(|(first, last)| last.duration_since(*first).as_micros() as i64)
            .collect();
        format!(
            "{} | {} / {} | {} / {} | {lost}",
            delays.len(),
            ms(quantile(&mut delays, 0.5)),
            ms(quantile(&mut delays, 0.99)),
            ms(quantile(&mut spreads, 0.5)),
            ms(quantile(&mut spreads, 0.99)),
        )
    }
}

fn quantile(values: &mut [i64], q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[((values.len() as f64 * q) as usize).min(values.len() - 1)]
}

fn ms(micros: i64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

async fn connect(addr: SocketAddr, window: Option<u32>) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .expect("connect to the agent")
}

async fn open_tail(channel: &Channel) -> Streaming<TailResponse> {
    AgentServiceClient::new(channel.clone())
        .tail(TailRequest::default())
        .await
        .expect("Tail")
        .into_inner()
}

/// A tailer with a 64 KiB window that does not read (until [`lost_after_reading`]).
async fn stuck_tailer(addr: SocketAddr) -> Streaming<TailResponse> {
    open_tail(&connect(addr, Some(65_535)).await).await
}

async fn lost_after_reading(stream: &mut Streaming<TailResponse>) -> String {
    let started = Instant::now();
    let mut read = 0u64;
    while started.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Ok(Ok(Some(m))) => {
                read += 1;
                if let Some(Event::Lost(l)) = m.event {
                    return format!(
                        "`Lost {{ events: {} }}` after {read} buffered messages",
                        l.events
                    );
                }
            }
            _ => break,
        }
    }
    format!("no `Lost` within {read} messages (it never fell behind by more than the buffer)")
}
