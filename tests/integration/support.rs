//! Shared test fixtures: real local servers the tests control, the real agent binary,
//! and report helpers.

#![allow(dead_code)] // each test module uses a different subset

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// Milliseconds since the epoch, the agent's time base.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Parses an RFC 3339 timestamp from a report into milliseconds since the epoch.
pub fn ms(v: &Value) -> i64 {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    humantime::parse_rfc3339_weak(text)
        .unwrap_or_else(|e| panic!("bad timestamp {text}: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a [`TestHttpServer`] answers with.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Reply {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

/// A real HTTP server on loopback whose reply the test changes while the agent runs.
pub struct TestHttpServer {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
}

impl TestHttpServer {
    pub async fn start(initial: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(initial));
        let shared = reply.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let r = shared.lock().unwrap().clone();
                            if !r.delay.is_zero() {
                                tokio::time::sleep(r.delay).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(r.body)));
                            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestHttpServer { addr, reply }
    }

    /// Changes the reply and returns the wall time of the change.
    pub fn set(&self, reply: Reply) -> i64 {
        *self.reply.lock().unwrap() = reply;
        now_ms()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A temporary directory holding an invariant file and the report directory.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes an invariant file with the standard header and the given invariants (YAML
    /// list items, already indented by two spaces).
    pub fn config(&self, invariants: &str) -> PathBuf {
        let text = format!(
            "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants:\n{invariants}"
        );
        let path = self.path("invariants.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn report_dir(&self) -> PathBuf {
        self.path("report")
    }

    pub fn report(&self) -> Value {
        read_report(&self.report_dir())
    }
}

pub fn read_report(dir: &Path) -> Value {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON: {e}\n{text}"))
}

/// The agent binary built by cargo for this test run.
pub fn agent_binary() -> &'static str {
    env!("CARGO_BIN_EXE_invariant-agent")
}

/// Starts `invariant-agent run` on `config`, writing to the workspace's report dir.
pub fn spawn_agent(ws: &Workspace, config: &Path, extra: &[&str]) -> Child {
    spawn_agent_with_env(ws, config, extra, &[])
}

/// As [`spawn_agent`], with extra environment variables (e.g. `JOB_NAME`). Every variable
/// the agent reads is cleared first, so a developer's or CI's environment (a `BUILD_ID`,
/// an `OTEL_EXPORTER_OTLP_ENDPOINT`) cannot change what a test observes.
pub fn spawn_agent_with_env(
    ws: &Workspace,
    config: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let mut command = Command::new(agent_binary());
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    for var in [
        "BUILD_ID",
        "PROW_JOB_ID",
        "INVARIANT_AGENT_RUN_ID",
        "JOB_NAME",
        "CLUSTER_NAME",
        "NODE_NAME",
        "POD_NAME",
        "POD_NAMESPACE",
        "INVARIANT_AGENT_METRICS_LISTEN",
        "INVARIANT_AGENT_GRPC_LISTEN",
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
    ] {
        command.env_remove(var);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent")
}

/// Output of a finished agent.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub async fn wait(child: Child) -> Finished {
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("agent did not exit within 120s")
        .expect("wait for agent");
    Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends a signal (`TERM`, `KILL`, `HUP`, ...) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The report entry of the invariant called `name`.
pub fn invariant<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .expect("invariants array")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no invariant {name} in report"))
}

/// The violation intervals of an invariant.
pub fn violations(report: &Value, name: &str) -> Vec<Value> {
    invariant(report, name)["violations"]
        .as_array()
        .expect("violations array")
        .clone()
}

/// Asserts `actual` lies within `[low, high]`, with a readable message.
#[track_caller]
pub fn assert_between(what: &str, actual: i64, low: i64, high: i64) {
    assert!(
        low <= actual && actual <= high,
        "{what}: {actual} not within [{low}, {high}] (off by {} ms below / {} ms above)",
        low - actual,
        actual - high
    );
}

/// A UDP/TCP DNS server (dnsmasq from Debian) on a loopback port, answering from a hosts
/// file the test rewrites. Fails the test when dnsmasq is not installed: `.ci/setup`
/// installs it.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    hosts: PathBuf,
    binary: &'static str,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start(hosts: &str) -> Self {
        let binary = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq is not installed; run scripts/install-test-deps (Debian package dnsmasq-base)");
        let dir = tempfile::tempdir().unwrap();
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        let port = free_udp_port();
        let mut dns = Dnsmasq {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            hosts: hosts_path,
            binary,
            child: None,
            _dir: dir,
        };
        dns.resume();
        dns
    }

    /// Starts dnsmasq (again) on the same port and waits until it accepts TCP.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "dnsmasq is already running");
        let child = std::process::Command::new(self.binary)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--user=root",
                "--cache-size=0",
                "--log-facility=-",
            ])
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.child = Some(child);
        // dnsmasq binds TCP too; wait until it accepts.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills dnsmasq (the DNS server is gone: its port answers nothing) and returns the
    /// wall time once it has exited.
    pub fn stop(&mut self) -> i64 {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        now_ms()
    }

    /// Rewrites the hosts file and makes dnsmasq reload it; returns the wall time.
    pub fn set_hosts(&self, hosts: &str) -> i64 {
        std::fs::write(&self.hosts, hosts).unwrap();
        let child = self.child.as_ref().expect("dnsmasq is not running");
        signal(child.id(), "HUP");
        now_ms()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_udp_port() -> u16 {
    // Both UDP and TCP must be free; try until one pair is.
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for dnsmasq");
}

/// Runs `invariant-agent ARGS...` to completion (no stdin) and returns its output.
pub fn agent_command(args: &[&str]) -> Finished {
    let out = std::process::Command::new(agent_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
