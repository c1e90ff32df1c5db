//! The client commands (`tail`, `status`, `report --addr`) as a user runs them: the real
//! binary against a real agent (`run --grpc-listen`) watching a local HTTP server the
//! test makes fail.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::export_support::{free_port, wait_for_port};
use crate::support::*;

/// Both invariants sample every 200 ms; `target` is violated by one failed sample.
fn config(ws: &Workspace, server: &TestHttpServer) -> std::path::PathBuf {
    ws.config(&format!(
        r#"  - name: target
    description: the target answers 2xx
    owner: test
    interval: 200ms
    labels: {{team: web}}
    probe:
      http: {{url: "{url}"}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: port-open
    description: the target's port accepts connections
    owner: test
    interval: 200ms
    labels: {{team: net}}
    probe:
      tcp: {{address: "{addr}"}}
    condition:
      availability: {{target: 100, window: 1m}}
"#,
        url = server.url("/"),
        addr = server.addr,
    ))
}

/// A running agent serving the API, and what it watches.
struct Watched {
    agent: Child,
    server: TestHttpServer,
    addr: String,
    ws: Workspace,
}

/// Starts an agent with the API on a free port (plus `extra` flags) and waits until the
/// API accepts connections.
async fn start_agent(extra: &[&str]) -> Watched {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config(&ws, &server);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--grpc-listen", addr.as_str()];
    args.extend_from_slice(extra);
    let agent = spawn_agent(&ws, &config, &args);
    wait_for_port(
        addr.parse().unwrap(),
        "the agent's API",
        Duration::from_secs(15),
    )
    .await;
    Watched {
        agent,
        server,
        addr,
        ws,
    }
}

fn failing() -> Reply {
    Reply {
        status: 500,
        body: "down".to_string(),
        delay: Duration::ZERO,
    }
}

/// A client command running as a child process, its stdout read line by line.
struct Client {
    child: Child,
    lines: Option<Lines<BufReader<ChildStdout>>>,
    seen: Vec<String>,
}

/// A client command with the connection variables of the developer's environment
/// removed, so only the flags decide.
fn client_command(args: &[&str]) -> Command {
    let mut command = Command::new(agent_binary());
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("INVARIANT_AGENT_ADDR")
        .env_remove("INVARIANT_AGENT_TOKEN_FILE")
        .env_remove("INVARIANT_AGENT_CA_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

impl Client {
    fn spawn(args: &[&str]) -> Client {
        let mut child = client_command(args).spawn().expect("start the client");
        let stdout = child.stdout.take().unwrap();
        Client {
            child,
            lines: Some(BufReader::new(stdout).lines()),
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `want`; fails the test after `within`, showing
    /// everything printed so far.
    async fn line(&mut self, what: &str, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let lines = self.lines.as_mut().expect("stdout still open");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, lines.next_line()).await;
            match next {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Ok(_) => panic!("stdout ended before {what}:\n{}", self.seen.join("\n")),
                Err(_) => panic!("no {what} within {within:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Waits for the exit (within 10 s) and returns the code, the rest of stdout and
    /// stderr.
    async fn finish(mut self) -> Finished {
        let mut rest = Vec::new();
        if let Some(mut lines) = self.lines.take() {
            while let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
            {
                rest.push(line);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(10), self.child.wait_with_output())
            .await
            .expect("the client did not exit within 10 s")
            .expect("wait for the client");
        self.seen.extend(rest);
        Finished {
            code: out.status.code(),
            stdout: self.seen.join("\n"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn signal(&self, name: &str) {
        signal(self.child.id().expect("client still running"), name);
    }
}

/// Runs a client command to the end.
async fn run_client(args: &[&str]) -> Finished {
    Client::spawn(args).finish().await
}

/// The words of a text `tail` line: [time, invariant, outcome-or-"state", ...].
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn is_time(word: &str) -> bool {
    word.len() == 13 && word.ends_with('Z') && word.as_bytes()[2] == b':'
}

fn is_sample(line: &str, invariant: &str, outcome: &str) -> bool {
    let w = words(line);
    w.len() >= 4 && is_time(w[0]) && w[1] == invariant && w[2] == outcome
}

fn is_transition(line: &str) -> bool {
    let w = words(line);
    w.len() >= 4 && is_time(w[0]) && w[2] == "state" && line.contains(" → ")
}

fn is_live(line: &str) -> bool {
    line.contains("── live")
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_samples_and_the_violation_within_an_interval_or_two() {
    let w = start_agent(&[]).await;
    let mut tail = Client::spawn(&["tail", "--addr", &w.addr]);
    let header = tail
        .line("the snapshot table", SOON, |l| l.starts_with("INVARIANT"))
        .await;
    assert!(
        header.contains("STATE") && header.contains("REASON"),
        "{header}"
    );
    tail.line("the live marker", SOON, is_live).await;
    let snapshot = tail.seen.join("\n");
    assert!(
        snapshot.contains("target") && snapshot.contains("port-open"),
        "{snapshot}"
    );
    tail.line("an ok sample", SOON, |l| is_sample(l, "target", "ok"))
        .await;
    tail.line("a sample of the other invariant", SOON, |l| {
        is_sample(l, "port-open", "ok")
    })
    .await;

    let broke = Instant::now();
    w.server.set(failing());
    let transition = tail
        .line("the violation", SOON, |l| {
            is_transition(l) && l.contains("target") && l.contains("→ violated")
        })
        .await;
    let took = broke.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "violation printed {took:?} after the fault (interval 200 ms): {transition}"
    );
    assert!(transition.contains("status 500"), "says why: {transition}");
    // The failed sample comes just before or just after its transition.
    let is_failed = |l: &str| is_sample(l, "target", "failed");
    let failed = match tail.seen.iter().find(|l| is_failed(l)) {
        Some(line) => line.clone(),
        None => tail.line("a failed sample", SOON, is_failed).await,
    };
    assert!(failed.contains("500"), "the error is shown: {failed}");

    tail.signal("INT");
    let done = tail.finish().await;
    assert_eq!(done.code, Some(0), "Ctrl-C exits 0: {}", done.stderr);
    assert_eq!(done.stderr, "", "Ctrl-C is quiet");
    assert!(!done.stdout.contains('\x1b'), "no colour in a pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_only_prints_no_sample_lines() {
    let w = start_agent(&[]).await;
    let mut tail = Client::spawn(&["tail", "--addr", &w.addr, "--transitions-only"]);
    tail.line("the live marker", SOON, is_live).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // three intervals of samples
    w.server.set(failing());
    tail.line("the violation", SOON, |l| {
        is_transition(l) && l.contains("→ violated")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    tail.signal("INT");
    let done = tail.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let after_live: Vec<&str> = done
        .stdout
        .lines()
        .skip_while(|l| !is_live(l))
        .skip(1)
        .collect();
    assert!(!after_live.is_empty());
    for line in after_live {
        assert!(
            is_transition(line),
            "not a transition: {line}\n{}",
            done.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_one_parseable_object_per_event_with_history() {
    let w = start_agent(&[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // some history to replay
    let mut tail = Client::spawn(&[
        "tail",
        "--addr",
        &w.addr,
        "--output",
        "json",
        "--last",
        "2",
        "--invariant",
        "target",
    ]);
    let parse = |l: &str| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    let first = parse(&tail.line("the snapshot", SOON, |_| true).await);
    let snapshot = &first["snapshot"];
    assert_eq!(
        snapshot["invariants"].as_array().unwrap().len(),
        1,
        "{first}"
    );
    assert_eq!(snapshot["invariants"][0]["name"], "target");
    assert_eq!(snapshot["invariants"][0]["state"], "STATE_HOLDING");
    assert!(
        snapshot["run"]["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    tail.line("the live marker", SOON, |l| parse(l).get("live").is_some())
        .await;
    tail.line("a live sample", SOON, |l| parse(l).get("sample").is_some())
        .await;
    tail.signal("INT");
    let done = tail.finish().await;
    let events: Vec<Value> = done.stdout.lines().map(parse).collect();
    let replayed: Vec<&Value> = events
        .iter()
        .take_while(|e| e.get("live").is_none())
        .filter(|e| e["replay"] == true && e.get("sample").is_some())
        .collect();
    assert_eq!(
        replayed.len(),
        2,
        "--last 2 replays two samples:\n{}",
        done.stdout
    );
    for event in events.iter().filter(|e| e.get("sample").is_some()) {
        let s = &event["sample"];
        assert_eq!(s["invariant"], "target");
        assert_eq!(s["outcome"], "OUTCOME_OK", "{event}");
        assert!(s["time"].as_str().unwrap().ends_with('Z'), "{event}");
        assert!(s["latency"].as_str().unwrap().ends_with('s'), "{event}");
        assert!(event["sequence"].as_u64().unwrap() > 0, "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_every_invariant_worst_first() {
    let w = start_agent(&[]).await;
    w.server.set(failing());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let text = run_client(&["status", "--addr", &w.addr]).await;
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(
        lines[0].starts_with("run ") && lines[0].contains("1 violated"),
        "{}",
        text.stdout
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("INVARIANT"))
        .unwrap();
    let rows: Vec<Vec<&str>> = lines[header + 1..].iter().map(|l| words(l)).collect();
    assert_eq!(rows.len(), 2, "{}", text.stdout);
    assert_eq!(rows[0][..2], ["target", "violated"], "{}", text.stdout);
    assert_eq!(rows[1][..2], ["port-open", "holding"], "{}", text.stdout);

    let json = run_client(&["status", "--addr", &w.addr, "--output", "json"]).await;
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).expect("status JSON");
    let names: Vec<&str> = v["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["target", "port-open"], "file order in JSON");
    assert_eq!(v["invariants"][0]["state"], "STATE_VIOLATED");
    assert!(v["invariants"][0]["samplesFailed"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_addr_writes_the_report_atomically() {
    let w = start_agent(&[]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("report.json");
    let path_text = path.to_str().unwrap();
    let done = run_client(&["report", "--addr", &w.addr, "-o", path_text]).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stdout, "");
    let report = read_report(out_dir.path());
    assert_eq!(report["run"]["status"], "running");
    invariant(&report, "target");
    invariant(&report, "port-open");
    let files: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "no temporary file left behind");

    let junit = run_client(&["report", "--addr", &w.addr, "--format", "junit", "-o", "-"]).await;
    assert_eq!(junit.code, Some(0), "{}", junit.stderr);
    assert!(
        junit.stdout.contains("[invariant] target"),
        "{}",
        junit.stdout
    );

    // The saved-report subcommands still work, also with the connection variables set.
    let schema = client_command(&["report", "schema"])
        .env("INVARIANT_AGENT_ADDR", &w.addr)
        .env("INVARIANT_AGENT_TOKEN_FILE", "/nonexistent")
        .output()
        .await
        .unwrap();
    assert_eq!(schema.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&schema.stdout).contains("json-schema.org"));
    let render = run_client(&["report", "render", "--from", path_text, "--format", "text"]).await;
    assert_eq!(render.code, Some(0), "{}", render.stderr);
    let bare = run_client(&["report", "--addr", &w.addr]).await;
    assert_eq!(bare.code, Some(2));
    assert!(bare.stderr.contains("needs -o FILE"), "{}", bare.stderr);
    drop(w.ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_explained_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-agent-token\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let w = start_agent(&["--grpc-token-file", token.to_str().unwrap()]).await;

    let missing = run_client(&["status", "--addr", &w.addr]).await;
    assert_eq!(missing.code, Some(1));
    assert!(
        missing
            .stderr
            .contains("requires a token: pass --token-file"),
        "{}",
        missing.stderr
    );
    let refused = run_client(&[
        "tail",
        "--addr",
        &w.addr,
        "--token-file",
        wrong.to_str().unwrap(),
    ])
    .await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("refused the token in"),
        "{}",
        refused.stderr
    );
    let ok = run_client(&[
        "status",
        "--addr",
        &w.addr,
        "--token-file",
        token.to_str().unwrap(),
    ])
    .await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(ok.stdout.contains("target"));
    for out in [&missing, &refused, &ok] {
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !all.contains("s3cret") && !all.contains("not-the-token"),
            "{all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_exits_0_when_the_run_ends() {
    let w = start_agent(&[]).await;
    let mut tail = Client::spawn(&["tail", "--addr", &w.addr]);
    tail.line("an ok sample", SOON, |l| is_sample(l, "target", "ok"))
        .await;
    signal(w.agent.id().unwrap(), "TERM");
    let done = tail.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stderr.contains("the run ended"),
        "says why it stopped: {}",
        done.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_exits_1_when_the_agent_is_killed() {
    let w = start_agent(&[]).await;
    let mut tail = Client::spawn(&["tail", "--addr", &w.addr]);
    tail.line("an ok sample", SOON, |l| is_sample(l, "target", "ok"))
        .await;
    signal(w.agent.id().unwrap(), "KILL");
    let done = tail.finish().await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    assert!(
        done.stderr
            .contains(&format!("lost the connection to the agent at {}", w.addr)),
        "{}",
        done.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_address_says_what_to_check() {
    let addr = format!("127.0.0.1:{}", free_port());
    for command in ["status", "tail"] {
        let done = run_client(&[command, "--addr", &addr]).await;
        assert_eq!(done.code, Some(1));
        assert_eq!(
            done.stderr,
            format!(
                "error: cannot reach the agent at {addr}: connection refused — is it running \
                 with --grpc-listen {addr}?\n"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_invariant_is_refused_not_silently_empty() {
    let w = start_agent(&[]).await;
    let done = run_client(&["tail", "--addr", &w.addr, "--invariant", "no-such-thing"]).await;
    assert_eq!(done.code, Some(1));
    assert!(
        done.stderr.contains("refused the request") && done.stderr.contains("no-such-thing"),
        "{}",
        done.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_tail_quietly() {
    let w = start_agent(&[]).await;
    let mut tail = Client::spawn(&["tail", "--addr", &w.addr]);
    tail.line("the live marker", SOON, is_live).await;
    drop(tail.lines.take()); // like `| head` exiting
    let done = tail.finish().await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_the_agents_ca_and_plaintext_to_tls_is_explained() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let ca = cert_path.to_str().unwrap();
    let w = start_agent(&[
        "--grpc-tls-cert",
        ca,
        "--grpc-tls-key",
        key_path.to_str().unwrap(),
    ])
    .await;
    let port = w.addr.rsplit(':').next().unwrap();
    let https = format!("https://localhost:{port}");

    let ok = run_client(&["status", "--addr", &https, "--ca-file", ca]).await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(ok.stdout.contains("target"), "{}", ok.stdout);

    let untrusted = run_client(&["status", "--addr", &https]).await;
    assert_eq!(untrusted.code, Some(1));
    assert!(
        untrusted.stderr.contains("pass --ca-file"),
        "{}",
        untrusted.stderr
    );

    let plaintext = run_client(&["status", "--addr", &format!("localhost:{port}")]).await;
    assert_eq!(plaintext.code, Some(1));
    assert!(
        plaintext.stderr.contains("use https://"),
        "{}",
        plaintext.stderr
    );
}
