//! Resuming a killed run: the real agent is SIGKILLed mid-run and started again on the
//! same report directory; the final report covers the whole run, with the time it was
//! down recorded as one gap per restart.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::export_support::{free_port, wait_for_port};
use crate::report_html::{body_attr, elements, headless};
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

const CHECKPOINT: &[&str] = &["--checkpoint-interval", "300ms"];

fn failing() -> Reply {
    Reply {
        status: 503,
        body: String::new(),
        delay: Duration::ZERO,
    }
}

/// Waits (up to 15 s) until the checkpoint in `dir` satisfies `ready`, and returns it.
async fn checkpoint_where(dir: &Path, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("report.json"))
            && let Ok(report) = serde_json::from_str::<Value>(&text)
            && ready(&report)
        {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint with {what} within 15s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn samples(report: &Value, outcome: &str) -> u64 {
    invariant(report, "target")["samples"][outcome]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_agent_reports_the_whole_run_with_one_gap() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));

    let first = spawn_agent(&ws, &config, CHECKPOINT);
    checkpoint_where(&ws.report_dir(), "ok samples", |r| samples(r, "ok") >= 3).await;
    let fault = server.set(failing());
    // Killed while the violation is open, after a checkpoint recorded it.
    checkpoint_where(&ws.report_dir(), "an open violation", |r| {
        violations(r, "target")
            .first()
            .is_some_and(|v| v["end"].is_null())
    })
    .await;
    signal(first.id().unwrap(), "KILL");
    let _ = wait(first).await;
    let killed_at = now_ms();
    let before = ws.report();
    assert_eq!(before["run"]["status"], "running");
    server.set(Reply::ok("ok"));

    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = CHECKPOINT.to_vec();
    args.extend(["--grpc-listen", addr.as_str()]);
    let second = spawn_agent(&ws, &config, &args);
    // The resumed agent's own checkpoints already cover the whole run.
    let resumed = checkpoint_where(&ws.report_dir(), "a gap", |r| {
        r["run"]["gaps"].as_array().is_some_and(|g| !g.is_empty())
            && samples(r, "ok") > samples(&before, "ok") + 3
    })
    .await;
    assert_eq!(resumed["run"]["status"], "running");
    // GetReport serves the whole run too.
    wait_for_port(addr.parse().unwrap(), "the API", Duration::from_secs(15)).await;
    let fetched = agent_command(&["report", "--addr", &addr, "-o", "-"]);
    assert_eq!(fetched.code, Some(0), "{}", fetched.stderr);
    let fetched: Value = serde_json::from_str(&fetched.stdout).unwrap();
    assert_eq!(fetched["run"]["started_at"], before["run"]["started_at"]);
    assert_eq!(fetched["run"]["gaps"].as_array().unwrap().len(), 1);
    assert!(samples(&fetched, "failed") >= samples(&before, "failed"));
    assert_eq!(violations(&fetched, "target")[0]["ended_by_gap"], true);
    signal(second.id().unwrap(), "TERM");
    let done = wait(second).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(done.stderr.contains("resuming the run"), "{}", done.stderr);

    let report = ws.report();
    let run = &report["run"];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["id"], before["run"]["id"], "the run keeps its id");
    assert_eq!(
        run["started_at"], before["run"]["started_at"],
        "the first segment's start"
    );
    let gaps = run["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["reason"], "agent_restarted");
    assert_eq!(
        gaps[0]["start"], before["run"]["updated_at"],
        "the gap starts at the last checkpoint before the kill"
    );
    assert_between(
        "gap end (restart)",
        ms(&gaps[0]["end"]),
        killed_at,
        ms(&run["updated_at"]),
    );

    // The violation from before the kill is there, cut at the gap.
    let v = violations(&report, "target");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_between("violation start", ms(&v[0]["start"]), fault, fault + 600);
    assert_eq!(v[0]["end"], gaps[0]["start"]);
    assert_eq!(v[0]["ended_by_gap"], true);
    assert_eq!(invariant(&report, "target")["verdict"], "violated");

    // Samples of both segments count.
    assert!(samples(&report, "failed") >= samples(&before, "failed"));
    assert!(samples(&before, "failed") >= 1);
    assert!(
        samples(&report, "ok") >= samples(&before, "ok") + 4,
        "ok {} before the kill, {} in the end",
        samples(&before, "ok"),
        samples(&report, "ok")
    );
    let (ok, failed) = (samples(&report, "ok"), samples(&report, "failed"));
    let availability = invariant(&report, "target")["availability_percent"]
        .as_f64()
        .unwrap();
    assert!((availability - ok as f64 * 100.0 / (ok + failed) as f64).abs() < 1e-9);

    // Every form says so.
    let junit = std::fs::read_to_string(ws.report_dir().join("report.junit.xml")).unwrap();
    assert!(
        junit.contains(r#"<property name="run_gaps" value="1"/>"#),
        "{junit}"
    );
    let html = std::fs::read_to_string(ws.report_dir().join("report.html")).unwrap();
    assert!(html.contains(r#"class="gap" data-kind="gap""#));
    let ndjson = std::fs::read_to_string(ws.report_dir().join("report.ndjson")).unwrap();
    let row: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert_eq!(row["run_gaps"].as_array().unwrap().len(), 1);
    assert!(done.stdout.contains("gap: "), "{}", done.stdout);

    // In a real browser, the gap is a band across the timeline where the report says.
    let dom = headless(&ws.report_dir().join("report.html"), &["--dump-dom"]);
    assert_eq!(body_attr(&dom, "data-ready"), "true");
    let full = |name: &str| body_attr(&dom, name).parse::<f64>().unwrap();
    let (t0, t1) = (full("data-full-start"), full("data-full-end"));
    let bands = elements(&dom, r#"<div class="gap"[^>]*>"#);
    assert_eq!(bands.len(), 1, "{dom}");
    let percent = |style: &str, key: &str| -> f64 {
        let at = style.find(&format!("{key}:")).unwrap() + key.len() + 1;
        style[at..]
            .trim_start()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let style = &bands[0]["style"];
    let (start, end) = (ms(&gaps[0]["start"]) as f64, ms(&gaps[0]["end"]) as f64);
    let want_left = (start - t0) / (t1 - t0) * 100.0;
    let want_width = (end - start) / (t1 - t0) * 100.0;
    assert!(
        (percent(style, "left") - want_left).abs() < 0.01,
        "{style} vs left {want_left}"
    );
    assert!(
        (percent(style, "width") - want_width).abs() < 0.01,
        "{style} vs width {want_width}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restarts_leave_two_gaps_and_keep_the_ci_run_id() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));
    let env = [("PROW_JOB_ID", "job-42")];
    let mut last_ok = 0;
    let mut checkpoints = Vec::new();
    for restart in 0..2 {
        let agent = spawn_agent_with_env(&ws, &config, CHECKPOINT, &env);
        let seen = checkpoint_where(&ws.report_dir(), "this agent's samples", |r| {
            r["run"]["gaps"].as_array().map_or(0, Vec::len) == restart
                && samples(r, "ok") >= last_ok + 3
        })
        .await;
        last_ok = samples(&seen, "ok");
        signal(agent.id().unwrap(), "KILL");
        let _ = wait(agent).await;
        checkpoints.push(ws.report());
    }
    let last = spawn_agent_with_env(&ws, &config, CHECKPOINT, &env);
    checkpoint_where(&ws.report_dir(), "two gaps and new samples", |r| {
        r["run"]["gaps"].as_array().map_or(0, Vec::len) == 2 && samples(r, "ok") >= last_ok + 3
    })
    .await;
    signal(last.id().unwrap(), "TERM");
    let done = wait(last).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);

    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    assert_eq!(report["run"]["id"], "job-42");
    assert_eq!(
        report["run"]["started_at"],
        checkpoints[0]["run"]["started_at"]
    );
    let gaps = report["run"]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    for (gap, before) in gaps.iter().zip(&checkpoints) {
        assert_eq!(gap["start"], before["run"]["updated_at"]);
        assert!(ms(&gap["end"]) > ms(&gap["start"]));
    }
    assert!(ms(&gaps[0]["end"]) < ms(&gaps[1]["start"]));
    assert!(samples(&report, "ok") > samples(&checkpoints[1], "ok"));
    assert_eq!(invariant(&report, "target")["verdict"], "held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_kept_aside_and_a_new_run_starts() {
    let server = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = config_for(&ws, &server.url("/"));
    std::fs::create_dir_all(ws.report_dir()).unwrap();
    let garbage = br#"{"schema_version": "invariant-agent.report/v1alpha1", "run": {"id": "run-"#;
    std::fs::write(ws.report_dir().join("report.json"), garbage).unwrap();

    let done = wait(spawn_agent(&ws, &config, &["--duration", "1s"])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stderr.contains("WARN")
            && done.stderr.contains("report.json")
            && done.stderr.contains("cannot be read")
            && done.stderr.contains("not JSON"),
        "{}",
        done.stderr
    );
    let aside: Vec<_> = std::fs::read_dir(ws.report_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("report.json.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "kept aside once");
    assert_eq!(
        std::fs::read(ws.report_dir().join(&aside[0])).unwrap(),
        garbage,
        "kept as it was"
    );
    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    assert_eq!(report["run"]["gaps"], serde_json::json!([]), "a new run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_require_refuses_to_start_a_new_run() {
    let ws = Workspace::new();
    let config = config_for(&ws, "http://127.0.0.1:1/");
    let done = wait(spawn_agent(&ws, &config, &["--resume", "require"])).await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("--resume require") && done.stderr.contains("no checkpoint"),
        "{}",
        done.stderr
    );
    assert!(!ws.report_dir().join("report.json").exists());
}
