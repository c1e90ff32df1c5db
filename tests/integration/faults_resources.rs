//! Bounded resources: 1,000 invariants on 1,000 servers with reused connections (one
//! socket each: probes share keep-alive connections only within one `host:port`) and 100
//! Tail subscribers (one connection each) under a soft open-file limit of 256 (the hard
//! limit 8,192): the agent raises its soft limit to the hard one at start, so no sample
//! fails for want of a descriptor and every tailer is served, where 256 descriptors
//! would have run out at once. (Memory and report size over long runs: benches/soak.sh.)

use std::time::Duration;

use invariant_agent::api::proto::TailRequest;
use invariant_agent::api::proto::agent_service_client::AgentServiceClient;
use invariant_agent::api::proto::tail_response::Event;

use crate::export_support::{free_port, wait_for_port};
use crate::support::*;

const INVARIANTS: usize = 1_000;
const TAILERS: usize = 100;
const SOFT: u64 = 256;
const HARD: u64 = 8_192;

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn limits_line(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_resources_1000_invariants_and_100_tailers_under_a_low_soft_fd_limit() {
    // This process holds a listener and a connection per target.
    invariant_agent::process::raise_open_file_limit();
    // The targets run on a runtime of their own, so the tailers below never slow them down.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut servers = Vec::with_capacity(INVARIANTS);
            for _ in 0..INVARIANTS {
                servers.push(TestHttpServer::start(Reply::ok("ok")).await);
            }
            tx.send(servers).unwrap();
            std::future::pending::<()>().await
        });
    });
    let servers = rx.recv().unwrap();
    let ws = Workspace::new();
    let mut invariants = String::new();
    for (i, server) in servers.iter().enumerate() {
        invariants.push_str(&format!(
            "  - name: target-{i}\n    description: d\n    owner: o\n    interval: 4s\n    timeout: 4s\n    probe:\n      http: {{url: \"{}\"}}\n    condition:\n      availability: {{target: 100, window: 1m}}\n",
            server.url(&format!("/t{i}"))
        ));
    }
    let config = ws.config(&invariants);
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut command = tokio::process::Command::new(agent_binary());
    command
        .args([
            "run",
            "--duration",
            "20s",
            "--grpc-listen",
            &grpc,
            "--config",
        ])
        .arg(&config)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: SOFT as libc::rlim_t,
                rlim_max: HARD as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let agent = command.spawn().unwrap();
    let pid = agent.id().unwrap();
    wait_for_port(
        grpc.parse().unwrap(),
        "the agent's API",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        limits_line(pid).contains(&format!("{HARD}")),
        "the soft limit was raised to the hard one: {}",
        limits_line(pid)
    );

    // Each tailer on its own connection, following one invariant.
    let mut tailers = Vec::new();
    for i in 0..TAILERS {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap();
        let channel = endpoint.connect().await.expect("connect a tailer");
        let mut client = AgentServiceClient::new(channel);
        let request = TailRequest {
            invariants: vec![format!("target-{i}")],
            ..Default::default()
        };
        let stream = client
            .tail(request)
            .await
            .expect("Tail accepted")
            .into_inner();
        tailers.push(tokio::spawn(async move {
            let mut stream = stream;
            let (mut samples, mut ended) = (0usize, false);
            while let Ok(Some(message)) = stream.message().await {
                match message.event {
                    Some(Event::Sample(_)) => samples += 1,
                    Some(Event::RunEnded(_)) => ended = true,
                    _ => {}
                }
            }
            (samples, ended)
        }));
    }
    // Every invariant's connection stays open once it has sampled: watch the count until
    // the run ends.
    let watcher = tokio::spawn(async move {
        let mut most = 0;
        loop {
            let open = open_files(pid);
            if open == 0 {
                return most;
            }
            most = most.max(open);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let done = wait(agent).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("raised the open-file limit to the hard limit")
            && done.stderr.contains(&format!("before={SOFT}")),
        "{}",
        &done.stderr[..done.stderr.len().min(3000)]
    );
    assert!(
        !done.stderr.contains("Too many open files"),
        "{}",
        &done.stderr[..done.stderr.len().min(3000)]
    );
    let most_open = watcher.await.unwrap();
    let report = ws.report();
    let (mut ok, mut failed, mut missed) = (0, 0, 0);
    for inv in report["invariants"].as_array().unwrap() {
        ok += inv["samples"]["ok"].as_u64().unwrap();
        failed += inv["samples"]["failed"].as_u64().unwrap();
        missed += inv["samples"]["missed"].as_u64().unwrap();
    }
    let errors: std::collections::BTreeSet<String> = report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["violations"].as_array().unwrap().clone())
        .map(|v| format!("{}: {}", v["error_class"], v["first_error"]))
        .collect();
    // The agent's debug build sharing two busy cores with this test's server may time a
    // few requests out; none may fail for want of a descriptor.
    assert!(
        errors
            .iter()
            .all(|e| !e.contains("open files") && !e.contains("os error 24")),
        "{errors:#?}"
    );
    assert!(
        failed * 100 <= ok,
        "{failed} failed samples of {}: {errors:#?}",
        ok + failed
    );
    assert_eq!(missed, 0);
    assert!(
        most_open > INVARIANTS + TAILERS,
        "at most {most_open} files were open ({ok} ok, {failed} failed samples): \
         the 256 of the soft limit the agent started with would not have done"
    );
    // 20 s at 4 s: 5 ticks per invariant, less the start-up and the shutdown edge.
    assert!(ok >= (INVARIANTS * 3) as u64, "{ok} samples");
    for (i, tailer) in tailers.into_iter().enumerate() {
        let (samples, ended) = tailer.await.unwrap();
        assert!(ended, "tailer {i} saw the run end");
        assert!(samples >= 3, "tailer {i} got {samples} samples");
    }
}
