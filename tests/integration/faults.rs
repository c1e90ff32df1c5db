//! Faults injected at known times show up in the report as exactly those violations, with
//! boundaries within one sample interval, and nothing else.

use std::time::Duration;

use crate::support::*;

/// Interval used by these tests; boundaries must be within one interval of the truth.
const INTERVAL_MS: i64 = 250;
/// Scheduling noise on a loaded 2-core CI machine, on top of one interval.
const SLACK_MS: i64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_window_is_one_violation_with_exact_bounds() {
    let flaky = TestHttpServer::start(Reply::ok("ok")).await;
    let steady = TestHttpServer::start(Reply::ok("ok")).await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"  - name: flaky-availability
    description: the flaky server answers 2xx
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{flaky}"}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: flaky-new-connections
    description: the flaky server answers 2xx on new connections
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{flaky}", connection: new}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: steady-availability
    description: the steady server answers 2xx
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{steady}", body: {{contains: ok}}}}
    condition:
      availability: {{target: 100, window: 1m}}
"#,
        flaky = flaky.url("/healthz"),
        steady = steady.url("/healthz"),
    ));
    let agent = spawn_agent(
        &ws,
        &config,
        &["--duration", "9s", "--checkpoint-interval", "1s"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = flaky.set(Reply {
        status: 500,
        body: "injected".into(),
        delay: Duration::ZERO,
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up = flaky.set(Reply::ok("ok"));
    let done = wait(agent).await;
    assert_eq!(
        done.code,
        Some(0),
        "violations alone must not fail the run:\n{}",
        done.stderr
    );

    let report = ws.report();
    assert_eq!(report["run"]["status"], "completed");
    for name in ["flaky-availability", "flaky-new-connections"] {
        let v = violations(&report, name);
        assert_eq!(
            v.len(),
            1,
            "{name}: expected exactly one violation, got {v:#?}"
        );
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
        assert_eq!(v[0]["error_class"], "http_status");
        assert!(
            v[0]["first_error"].as_str().unwrap().contains("500"),
            "{v:#?}"
        );
        let inv = invariant(&report, name);
        assert_eq!(inv["verdict"], "violated");
        let disruption = inv["disruption_seconds"].as_f64().unwrap();
        assert!(
            (2.5..=3.8).contains(&disruption),
            "{name}: disruption {disruption}s for a 3s outage"
        );
        let failed = inv["samples"]["failed"].as_u64().unwrap();
        assert!(
            (10..=14).contains(&failed),
            "{name}: {failed} failed samples in 3s at 250ms"
        );
    }
    let steady = invariant(&report, "steady-availability");
    assert_eq!(steady["verdict"], "held");
    assert_eq!(steady["samples"]["failed"], 0);
    assert!(violations(&report, "steady-availability").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_gone_is_connection_refused_for_exactly_that_time() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(64).unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"  - name: port-open
    description: the port accepts connections
    owner: test
    interval: 250ms
    timeout: 1s
    probe:
      tcp: {{address: "{addr}"}}
    condition:
      availability: {{target: 100, window: 1m}}
"#
    ));
    let agent = spawn_agent(&ws, &config, &["--duration", "8s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    accept.abort();
    let _ = accept.await;
    let down = now_ms();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(64).unwrap();
    let up = now_ms();
    tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    let v = violations(&report, "port-open");
    assert_eq!(v.len(), 1, "expected one violation, got {v:#?}");
    assert_eq!(v[0]["error_class"], "connection_refused");
    assert_between(
        "start",
        ms(&v[0]["start"]),
        down - 50,
        down + INTERVAL_MS + SLACK_MS,
    );
    assert_between(
        "end",
        ms(&v[0]["end"]),
        up - 50,
        up + INTERVAL_MS + SLACK_MS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counter_increase_and_threshold_for_duration() {
    let metrics = |errors: u32, depth: u32| {
        Reply::ok(&format!(
            "# TYPE internal_errors_total counter\ninternal_errors_total{{kind=\"a\"}} {errors}\n\
             internal_errors_total{{kind=\"b\"}} 7\n# TYPE queue_depth gauge\nqueue_depth {depth}\n"
        ))
    };
    let server = TestHttpServer::start(metrics(0, 1)).await;
    let ws = Workspace::new();
    let url = server.url("/metrics");
    let config = ws.config(&format!(
        r#"  - name: errors-never-increase
    description: the error counter never increases
    owner: test
    interval: 250ms
    probe:
      metrics: {{url: "{url}", series: 'internal_errors_total{{kind="a"}}'}}
    condition:
      increase: {{max: 0}}
  - name: queue-depth
    description: queue depth at most 5, violated after 1s
    owner: test
    interval: 250ms
    probe:
      metrics: {{url: "{url}", series: queue_depth, aggregation: max}}
    condition:
      threshold: {{max: 5, for: 1s}}
  - name: absent-series
    description: a series the server never exports
    owner: test
    interval: 250ms
    probe:
      metrics: {{url: "{url}", series: never_exported_total}}
    condition:
      increase: {{max: 0}}
"#
    ));
    let agent = spawn_agent(&ws, &config, &["--duration", "9s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A short spike, shorter than `for`: must not count.
    server.set(metrics(0, 9));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.set(metrics(0, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spike = server.set(metrics(0, 9));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spike_end = server.set(metrics(0, 1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let increased = server.set(metrics(3, 1));
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();

    let v = violations(&report, "queue-depth");
    assert_eq!(v.len(), 1, "the short spike must not count; got {v:#?}");
    assert_between(
        "spike start",
        ms(&v[0]["start"]),
        spike - 50,
        spike + INTERVAL_MS + SLACK_MS,
    );
    assert_between(
        "spike end",
        ms(&v[0]["end"]),
        spike_end - 50,
        spike_end + INTERVAL_MS + SLACK_MS,
    );

    let v = violations(&report, "errors-never-increase");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_between(
        "increase start",
        ms(&v[0]["start"]),
        increased - 50,
        increased + INTERVAL_MS + SLACK_MS,
    );
    assert!(
        v[0]["end"].is_null(),
        "a run-long increase stays violated to the end: {v:#?}"
    );
    assert_eq!(invariant(&report, "errors-never-increase")["increase"], 3.0);

    let absent = invariant(&report, "absent-series");
    assert_eq!(
        absent["verdict"], "not_examined",
        "an absent series is never a pass: {absent:#}"
    );
    assert_eq!(absent["examined"], false);
    assert!(absent["samples"]["absent"].as_u64().unwrap() > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_changing_on_a_real_server_are_reported() {
    let dns = Dnsmasq::start("10.1.2.3 svc.test.internal\n");
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
    let agent = spawn_agent(&ws, &config, &["--duration", "8s"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wrong = dns.set_hosts("10.9.9.9 svc.test.internal\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let right = dns.set_hosts("10.1.2.3 svc.test.internal\n");
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    let v = violations(&report, "dns-resolves");
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["error_class"], "dns");
    assert!(
        v[0]["first_error"].as_str().unwrap().contains("10.1.2.3"),
        "{v:#?}"
    );
    assert_between(
        "start",
        ms(&v[0]["start"]),
        wrong - 50,
        wrong + INTERVAL_MS + SLACK_MS,
    );
    assert_between(
        "end",
        ms(&v[0]["end"]),
        right - 50,
        right + INTERVAL_MS + SLACK_MS,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_is_sampled_at_interval_resolution() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }
    });
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"  - name: hangs
    description: a server that accepts and never answers
    owner: test
    interval: 200ms
    timeout: 1s
    probe:
      http: {{url: "http://{addr}/", connection: new}}
    condition:
      availability: {{target: 100, window: 1m}}
"#
    ));
    let agent = spawn_agent(&ws, &config, &["--duration", "4s"]);
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    let inv = invariant(&report, "hangs");
    let failed = inv["samples"]["failed"].as_u64().unwrap();
    // 4 s at 200 ms = 20 ticks; samples still hanging at shutdown are abandoned.
    assert!(
        failed >= 12,
        "a 1s timeout must not slow 200ms sampling: only {failed} failed samples"
    );
    assert_eq!(
        inv["samples"]["missed"], 0,
        "5 in flight is within the bound: {inv:#}"
    );
    assert_eq!(violations(&report, "hangs")[0]["error_class"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_huge_bodies_fail_samples_without_hurting_the_agent() {
    // Raw TCP server answering garbage.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            if let Ok((mut s, _)) = garbage.accept().await {
                let _ = s.write_all(b"\x00\x01NOT HTTP AT ALL\r\n\r\n").await;
            }
        }
    });
    let huge = TestHttpServer::start(Reply::ok(&"x".repeat(4 << 20))).await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"  - name: garbage
    description: garbage replies
    owner: test
    interval: 250ms
    probe:
      http: {{url: "http://{garbage_addr}/"}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: huge
    description: a 4 MiB body against a 64 KiB cap
    owner: test
    interval: 250ms
    probe:
      http: {{url: "{huge}", maxBodyBytes: 65536}}
    condition:
      availability: {{target: 100, window: 1m}}
"#,
        huge = huge.url("/")
    ));
    let agent = spawn_agent(&ws, &config, &["--duration", "3s"]);
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let report = ws.report();
    assert_eq!(
        violations(&report, "garbage")[0]["error_class"],
        "invalid_response"
    );
    assert_eq!(
        violations(&report, "huge")[0]["error_class"],
        "body_too_large"
    );
    for name in ["garbage", "huge"] {
        let s = &invariant(&report, name)["samples"];
        assert!(
            s["failed"].as_u64().unwrap() >= 8 && s["ok"] == 0,
            "{name}: {s}"
        );
    }
}
