//! `invariant-agent demo`, the README's first command, shows what it promises.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_reports_the_scheduled_faults_and_nothing_else() {
    let ws = Workspace::new();
    let child = tokio::process::Command::new(agent_binary())
        .arg("demo")
        .arg("--report-dir")
        .arg(ws.report_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = wait(child).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    let verdict = |name: &str| {
        invariant(&report, name)["verdict"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(verdict("demo-healthz-availability"), "violated");
    assert_eq!(verdict("demo-healthz-new-connections"), "violated");
    assert_eq!(verdict("demo-queue-depth"), "violated");
    assert_eq!(verdict("demo-internal-errors-never-increase"), "violated");
    assert_eq!(verdict("demo-api-latency"), "violated");
    assert_eq!(verdict("demo-tcp-reachable"), "held");
    assert_eq!(verdict("demo-unexported-counter"), "not_examined");
    let started = ms(&report["run"]["started_at"]);
    let v = violations(&report, "demo-healthz-availability");
    assert_eq!(v.len(), 1, "{v:#?}");
    // /healthz fails from 8 s to 13 s after the endpoints start (just before the run).
    let start = ms(&v[0]["start"]) - started;
    let end = ms(&v[0]["end"]) - started;
    assert!(
        (7_000..=9_500).contains(&start),
        "outage start {start} ms after run start"
    );
    assert!(
        (12_000..=14_500).contains(&end),
        "outage end {end} ms after run start"
    );
    assert!(
        done.stdout.contains("demo-healthz-availability"),
        "{}",
        done.stdout
    );
}
