//! The official OpenTelemetry Collector in trouble during one run: killed mid-run and
//! restarted on the same port, flapping (killed and restarted three times in quick
//! succession), and up but answering every export with an error (its backend refuses and
//! the collector, with queue and retries off, passes UNAVAILABLE back). Through all of
//! it sampling goes on at full rate; each outage is logged once when it starts and once
//! when it ends (with the number of failed exports), never once per export; and after
//! each the data arrives again, with cumulative totals that lose nothing.

use std::time::{Duration, Instant};

use crate::export_support::{Collector, OtlpSink, latest};
use crate::support::*;

const FAILED: &str = "OTLP export failed";
const AGAIN: &str = "OTLP export works again";

async fn wait_for_more(sink: &OtlpSink, than: usize, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while sink.request_count() <= than {
        assert!(
            Instant::now() < deadline,
            "{what}: no export reached the sink within 15 s\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `failed_exports=N` of every recovery line.
fn failed_exports(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains(AGAIN))
        .filter_map(|l| {
            let rest = l.split("failed_exports=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_collector_killed_flapping_and_erroring_loses_nothing() {
    let sink = OtlpSink::start().await;
    let mut collector = Collector::otelcol(sink.addr).await;
    let web = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "  - name: web\n    description: d\n    owner: o\n    interval: 200ms\n    timeout: 1s\n    probe:\n      http: {{url: \"{}\"}}\n    condition:\n      availability: {{target: 99, window: 1m}}\n",
        web.url("/")
    ));
    let endpoint = collector.endpoint();
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--export-interval",
            "300ms",
            "--otlp-timeout",
            "1s",
        ],
        &[],
    );
    let started = Instant::now();
    wait_for_more(&sink, 0, "at start", || collector.log()).await;

    // Killed mid-run (a crash), away for 10 export intervals, back on the same port.
    collector.stop(true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = sink.request_count();
    collector.start().await;
    wait_for_more(&sink, before, "after the kill", || collector.log()).await;

    // Flapping: down and up three times, each about one export interval.
    for _ in 0..3 {
        collector.stop(true).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        collector.start().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = sink.request_count();
    wait_for_more(&sink, before, "after flapping", || collector.log()).await;

    // Up, but answering with errors: its backend refuses, and without a queue or retries
    // the collector passes the error back to the agent.
    sink.set_refusing(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = sink.refused_count();
    assert!(
        refused >= 4,
        "the collector forwarded and was refused {refused} times in 3 s"
    );
    let before = sink.request_count();
    sink.set_refusing(false);
    wait_for_more(&sink, before, "after the errors", || collector.log()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    signal(agent.id().unwrap(), "TERM");
    let done = wait(agent).await;
    let ran = started.elapsed();
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    collector.stop(false).await;

    // Sampling never waited for the collector.
    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    let inv = invariant(&report, "web");
    let ok = inv["samples"]["ok"].as_u64().unwrap();
    let expected = (ran.as_millis() / 200) as u64;
    assert!(
        ok + 5 >= expected,
        "{ok} samples in {ran:?}, expected about {expected}"
    );
    assert_eq!(inv["samples"]["missed"], 0);
    assert_eq!(inv["samples"]["failed"], 0);

    // Logged per outage, not per export: at least the kill and the errors (a flap shorter
    // than an export interval may fall between two exports), at most one per outage.
    let failures = done.stderr.matches(FAILED).count();
    let recoveries = done.stderr.matches(AGAIN).count();
    assert!(
        (2..=5).contains(&failures),
        "{failures} failure lines for 5 outages:\n{}",
        done.stderr
    );
    assert_eq!(recoveries, failures, "every outage ended:\n{}", done.stderr);
    let counted = failed_exports(&done.stderr);
    assert_eq!(counted.len(), recoveries, "{}", done.stderr);
    // An export that fails is retried (100, 200, 400 ms) before it counts as failed, and
    // the next one waits for the following interval: a 3 s outage is 2-4 failed exports.
    let total: u64 = counted.iter().sum();
    assert!(
        total as usize > failures && counted.iter().filter(|&&n| n >= 2).count() >= 2,
        "failed exports are counted ({counted:?}) though logged once per outage\n{}",
        done.stderr
    );
    // The errors phase is logged with the collector's answer.
    let last_failure = done.stderr.lines().rfind(|l| l.contains(FAILED)).unwrap();
    assert!(
        last_failure.contains("navailable") || last_failure.contains("UNAVAILABLE"),
        "the collector's error is in the log: {last_failure}"
    );

    // After everything, the totals the collector forwarded equal the report: nothing
    // counted during the outages was lost.
    let points = sink.points();
    let last = latest(&points, "invariant.samples", &[("outcome", "ok")]).unwrap();
    assert_eq!(last.data.number(), ok as f64);
}
