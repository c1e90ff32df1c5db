//! Run lifecycle: SIGTERM writes the final report quickly, SIGKILL leaves the last
//! checkpoint, `--fail-on-violation` sets the exit code.

use std::time::{Duration, Instant};

use crate::support::*;

fn config_for(ws: &Workspace, url: &str) -> std::path::PathBuf {
    ws.config(&format!(
        r#"  - name: target
    description: the target answers 2xx
    owner: test
    interval: 200ms
    probe:
      http: {{url: "{url}"}}
    condition:
      availability: {{target: 100, window: 1m}}
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_a_completed_report_within_two_seconds() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));
    let agent = spawn_agent(&ws, &config, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = Instant::now();
    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    let took = stopped.elapsed();
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    assert!(
        invariant(&report, "target")["samples"]["ok"]
            .as_u64()
            .unwrap()
            >= 7
    );
    assert!(
        done.stdout.contains("target"),
        "summary table on stdout:\n{}",
        done.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_last_checkpoint_marked_running() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));
    let agent = spawn_agent(&ws, &config, &["--checkpoint-interval", "500ms"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(agent.id().unwrap(), "KILL");
    let _ = wait(agent).await;
    let report = ws.report();
    assert_eq!(
        report["run"]["status"], "running",
        "a killed run must be recognisable"
    );
    let ok = invariant(&report, "target")["samples"]["ok"]
        .as_u64()
        .unwrap();
    assert!(
        ok >= 5,
        "checkpoint holds the samples taken before the kill: {ok}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_violation_exits_3_only_when_asked() {
    let server = TestHttpServer::start(Reply {
        status: 503,
        body: String::new(),
        delay: Duration::ZERO,
    })
    .await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));
    let informational = wait(spawn_agent(&ws, &config, &["--duration", "1s"])).await;
    assert_eq!(informational.code, Some(0), "{}", informational.stderr);
    let enforcing = wait(spawn_agent(
        &ws,
        &config,
        &["--duration", "1s", "--fail-on-violation"],
    ))
    .await;
    assert_eq!(enforcing.code, Some(3), "{}", enforcing.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_report_dir_is_logged_and_sampling_continues() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));
    // A regular file where the report directory should be: creating it must fail.
    let blocker = ws.path("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let agent = tokio::process::Command::new(agent_binary())
        .args([
            "run",
            "--duration",
            "2s",
            "--checkpoint-interval",
            "500ms",
            "--config",
        ])
        .arg(&config)
        .arg("--report-dir")
        .arg(blocker.join("report"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stderr.contains("cannot write the report"),
        "{}",
        done.stderr
    );
    // Logged once, not once per checkpoint.
    assert_eq!(
        done.stderr.matches("cannot write the report").count(),
        1,
        "{}",
        done.stderr
    );
    assert!(
        done.stdout.contains("target"),
        "the summary still reports the samples:\n{}",
        done.stdout
    );
}
