//! The agent's own report directory fails under it: it cannot be created (a regular file
//! stands where a directory should be; `chmod 0555` would not stop these tests, which run
//! as root in CI) or its filesystem is full (a real ENOSPC from a 256 KiB tmpfs). Either
//! way the error is logged once with the path and the reason, sampling goes on at full
//! rate, the recovery is logged, and once the directory is usable again the report is
//! written and the final one holds every sample of the run.

use std::time::Duration;

use crate::faults_support::SmallTmpfs;
use crate::support::*;

const CANNOT: &str = "cannot write the report";
const AGAIN: &str = "report checkpoint written again";

fn config(ws: &Workspace, url: &str) -> std::path::PathBuf {
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

fn spawn(config: &std::path::Path, report_dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(agent_binary())
        .args([
            "run",
            "--duration",
            "6s",
            "--checkpoint-interval",
            "500ms",
            "--config",
        ])
        .arg(config)
        .arg("--report-dir")
        .arg(report_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The final report of a 6 s run at 200 ms holds all of its samples: sampling never
/// waited for the disk.
#[track_caller]
fn assert_complete(report_dir: &std::path::Path, stderr: &str) {
    let report = read_report(report_dir);
    assert_eq!(report["run"]["status"], "completed", "{stderr}");
    let inv = invariant(&report, "target");
    let ok = inv["samples"]["ok"].as_u64().unwrap();
    assert!(ok >= 27, "only {ok} samples in 6 s at 200 ms:\n{stderr}");
    assert_eq!(inv["samples"]["missed"], 0, "{inv:#}");
    for file in ["report.ndjson", "report.junit.xml", "report.html"] {
        assert!(report_dir.join(file).is_file(), "{file} written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_report_dir_uncreatable_then_fixed_is_written_once_usable() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config(&ws, &server.url("/"));
    // A regular file where the report directory's parent should be.
    let blocker = ws.path("artifacts");
    std::fs::write(&blocker, "x").unwrap();
    let report_dir = blocker.join("report");
    let agent = spawn(&config, &report_dir);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Someone fixes the artifacts directory mid-run.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stderr.matches(CANNOT).count(), 1, "{}", done.stderr);
    let line = done.stderr.lines().find(|l| l.contains(CANNOT)).unwrap();
    assert!(
        line.contains(&*report_dir.join("report.json").to_string_lossy())
            && line.contains("Not a directory"),
        "the error names the path and the reason: {line}"
    );
    assert_eq!(done.stderr.matches(AGAIN).count(), 1, "{}", done.stderr);
    assert_complete(&report_dir, &done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_report_dir_full_disk_is_logged_once_and_written_after_space_frees() {
    let tmpfs = SmallTmpfs::mount("256k").unwrap_or_else(|e| {
        panic!(
            "this test needs a real full filesystem: a 256 KiB tmpfs, which needs root \
             (CI runs as root): {e}"
        )
    });
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config(&ws, &server.url("/"));
    let report_dir = tmpfs.dir().join("report");
    std::fs::create_dir(&report_dir).unwrap();
    let filler = tmpfs.fill();
    let agent = spawn(&config, &report_dir);
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&filler).unwrap();
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stderr.matches(CANNOT).count(), 1, "{}", done.stderr);
    let line = done.stderr.lines().find(|l| l.contains(CANNOT)).unwrap();
    assert!(
        line.contains("No space left on device"),
        "the error says the disk is full: {line}"
    );
    assert_eq!(done.stderr.matches(AGAIN).count(), 1, "{}", done.stderr);
    assert_complete(&report_dir, &done.stderr);
}
