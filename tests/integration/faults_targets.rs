//! Target faults at the transport level, each injected for a known window: a connection
//! reset (RST), a server that accepts and never answers, a body that trickles in slower
//! than the timeout, a reply that is not HTTP, a body over the cap, and a DNS server that
//! is gone. For each, the report holds exactly one violation interval of the right error
//! class whose bounds are within one sample interval of the injected window.

use std::time::Duration;

use crate::faults_support::{Behaviour, FaultyTarget};
use crate::support::*;

/// Sample interval of these tests.
const INTERVAL_MS: i64 = 250;
/// Scheduling noise on a loaded 2-core machine, on top of one interval.
const SLACK_MS: i64 = 200;

fn http_invariant(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    description: {name}
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{url}"{extra}}}
    condition:
      availability: {{target: 100, window: 1m}}
"#
    )
}

/// Asserts that `name` has exactly one violation of `class`, bounded by the fault window
/// `[down, up]` within one interval, and that it held outside it.
#[track_caller]
fn assert_one_window(report: &serde_json::Value, name: &str, class: &str, down: i64, up: i64) {
    let v = violations(report, name);
    assert_eq!(v.len(), 1, "{name}: expected one violation, got {v:#?}");
    assert_eq!(v[0]["error_class"], class, "{name}: {v:#?}");
    assert_between(
        &format!("{name} start"),
        ms(&v[0]["start"]),
        down - 50,
        down + INTERVAL_MS + SLACK_MS,
    );
    assert_between(
        &format!("{name} end"),
        ms(&v[0]["end"]),
        up - 50,
        up + INTERVAL_MS + SLACK_MS,
    );
    let inv = invariant(report, name);
    assert_eq!(inv["verdict"], "violated", "{inv:#}");
    assert_eq!(inv["state"], "holding", "{name} recovered: {inv:#}");
    assert_eq!(inv["samples"]["missed"], 0, "{name}: {inv:#}");
    // 3 s of fault at 250 ms: 12 samples, give or take the edges.
    let failed = inv["samples"]["failed"].as_u64().unwrap();
    assert!(
        (10..=14).contains(&failed),
        "{name}: {failed} failed samples"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_targets_reset_hang_slow_malformed_huge_each_one_window() {
    let cases = [
        (
            "reset-new",
            Behaviour::Reset,
            ", connection: new",
            "connection_reset",
        ),
        ("reset-reused", Behaviour::Reset, "", "connection_reset"),
        ("hang-new", Behaviour::Hang, ", connection: new", "timeout"),
        ("hang-reused", Behaviour::Hang, "", "timeout"),
        ("slow-body", Behaviour::SlowBody, "", "timeout"),
        ("malformed", Behaviour::Malformed, "", "invalid_response"),
        (
            "huge",
            Behaviour::Huge,
            ", maxBodyBytes: 65536",
            "body_too_large",
        ),
    ];
    let mut targets = Vec::new();
    let mut invariants = String::new();
    for (name, _, extra, _) in &cases {
        let target = FaultyTarget::start().await;
        invariants.push_str(&http_invariant(name, &target.url(), extra));
        targets.push(target);
    }
    let ws = Workspace::new();
    let config = ws.config(&invariants);
    let agent = spawn_agent(&ws, &config, &["--duration", "10s"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut down = Vec::new();
    for (target, (_, behaviour, _, _)) in targets.iter().zip(&cases) {
        down.push(target.set(*behaviour));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut up = Vec::new();
    for target in &targets {
        up.push(target.set(Behaviour::Ok));
    }
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    for (i, (name, _, _, class)) in cases.iter().enumerate() {
        assert_one_window(&report, name, class, down[i], up[i]);
    }
    let first = |name: &str| violations(&report, name)[0]["first_error"].clone();
    assert!(
        first("reset-new").as_str().unwrap().contains("reset")
            || first("reset-new").as_str().unwrap().contains("closed"),
        "{}",
        first("reset-new")
    );
    assert!(
        first("huge").as_str().unwrap().contains("65536"),
        "the cap is named: {}",
        first("huge")
    );
}

/// The DNS server the probe asks is killed (its port answers nothing, or ICMP
/// port-unreachable), then started again on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_targets_dns_server_gone_is_one_window() {
    let mut dns = Dnsmasq::start("10.1.2.3 svc.test.internal\n");
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"  - name: dns-resolves
    description: svc.test.internal resolves to its address
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      dns: {{name: svc.test.internal, server: "{server}", expectedAddresses: [10.1.2.3]}}
    condition:
      availability: {{target: 100, window: 1m}}
"#,
        server = dns.addr
    ));
    let agent = spawn_agent(&ws, &config, &["--duration", "9s"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = dns.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // dnsmasq answers at some point while `resume` waits for its TCP port.
    let restarting = now_ms();
    dns.resume();
    let up = now_ms();
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    let v = violations(&report, "dns-resolves");
    assert_eq!(v.len(), 1, "one interval for the outage: {v:#?}");
    // Nothing answers on the dead port (the ICMP port-unreachable does not end the
    // resolver's wait), so each sample runs into the invariant's timeout.
    assert_eq!(v[0]["error_class"], "timeout", "{v:#?}");
    assert_between(
        "start",
        ms(&v[0]["start"]),
        down - 50,
        down + INTERVAL_MS + SLACK_MS,
    );
    // The resolver retransmits within the sample's timeout, so a sample that started up
    // to one timeout (1 s) before the restart can already succeed (it is stamped at its
    // start), and one that started just after it can still be waiting out a
    // retransmission: the recovery is seen within one timeout of the restart.
    assert_between(
        "end",
        ms(&v[0]["end"]),
        restarting - 1_000 - 50,
        up + 1_000 + SLACK_MS,
    );
    let inv = invariant(&report, "dns-resolves");
    assert_eq!(inv["state"], "holding", "{inv:#}");
    assert_eq!(inv["samples"]["missed"], 0, "{inv:#}");
}
