//! The `validate`, `docs` and `run` commands on good and bad invariant files.

use std::process::Command;

use crate::support::*;

const GOOD: &str = r#"  - name: api-up
    description: the API answers
    owner: sig-testing
    probe:
      http: {url: "http://127.0.0.1:1/healthz"}
    condition:
      availability: {target: 99.9, window: 5m}
"#;

#[test]
fn validate_accepts_a_good_file() {
    let ws = Workspace::new();
    let config = ws.config(GOOD);
    let out = Command::new(agent_binary())
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 1 invariants"));
}

#[test]
fn validate_reports_every_error_with_its_position() {
    let ws = Workspace::new();
    let path = ws.path("bad.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: Bad_Name
    description: x
    owner: y
    interval: 5
    probe:
      exec: {command: true}
    condition:
      availability: {target: 150}
  - name: ok-name
    owner: y
    colour: blue
    probe:
      http: {url: "http://127.0.0.1/"}
    condition:
      availability: {target: 99}
"#,
    )
    .unwrap();
    let out = Command::new(agent_binary())
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:4:11: invariants[0].name:"),
        format!("{file}:7:15: invariants[0].interval:"),
        format!("{file}:9:7: invariants[0].probe"),
        format!("{file}:11:30: invariants[0].condition.availability.target:"),
        format!("{file}:12:5: invariants[1].description:"),
        format!("{file}:14:5: invariants[1].colour:"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn run_with_an_invalid_file_exits_1_naming_the_problem() {
    let ws = Workspace::new();
    let path = ws.path("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants: []\n",
    )
    .unwrap();
    let out = Command::new(agent_binary())
        .args(["run", "--duration", "1s", "--config"])
        .arg(&path)
        .arg("--report-dir")
        .arg(ws.report_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invariants"), "{stderr}");
    assert!(
        !ws.report_dir().join("report.json").exists(),
        "nothing may start on a bad config"
    );
}

#[test]
fn run_with_a_missing_file_names_it() {
    let out = Command::new(agent_binary())
        .args([
            "run",
            "--config",
            "/nonexistent/invariants.yaml",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/invariants.yaml"));
}

#[test]
fn docs_prints_a_markdown_table_of_the_invariants() {
    let ws = Workspace::new();
    let config = ws.config(GOOD);
    let out = Command::new(agent_binary())
        .arg("docs")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("| [api-up](#api-up) |"), "{md}");
    assert!(md.contains("sig-testing"), "{md}");
    assert!(md.contains("the API answers"), "{md}");
}

#[test]
fn help_explains_exit_codes_and_first_steps() {
    let out = Command::new(agent_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["Exit codes", "demo", "validate", "run"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

/// `run --scope` keeps only the invariants of the selected scope in the run and its
/// report, and a file with none of that scope is a run that samples nothing and says so,
/// not an error.
#[tokio::test]
async fn run_scope_selects_invariants_by_scope() {
    let both = r#"  - name: on-every-node
    description: node-scoped
    owner: sig-testing
    scope: node
    interval: 200ms
    probe:
      tcp: {address: "127.0.0.1:1"}
    condition:
      availability: {target: 50, window: 1m}
  - name: once-per-cluster
    description: cluster-scoped
    owner: sig-testing
    scope: cluster
    interval: 200ms
    probe:
      tcp: {address: "127.0.0.1:1"}
    condition:
      availability: {target: 50, window: 1m}
"#;
    let names = |report: &serde_json::Value| -> Vec<String> {
        report["invariants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (scope, expected) in [
        ("all", vec!["on-every-node", "once-per-cluster"]),
        ("node", vec!["on-every-node"]),
        ("cluster", vec!["once-per-cluster"]),
    ] {
        let ws = Workspace::new();
        let config = ws.config(both);
        let done = wait(spawn_agent(
            &ws,
            &config,
            &["--duration", "1s", "--scope", scope],
        ))
        .await;
        assert_eq!(done.code, Some(0), "--scope {scope}: {}", done.stderr);
        assert_eq!(names(&ws.report()), expected, "--scope {scope}");
    }

    let ws = Workspace::new();
    let only_node = both.split("  - name: once-per-cluster").next().unwrap();
    let config = ws.config(only_node);
    let done = wait(spawn_agent(
        &ws,
        &config,
        &["--duration", "1s", "--scope", "cluster"],
    ))
    .await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("--scope cluster: no invariant in the files has this scope"),
        "{}",
        done.stderr
    );
    assert!(names(&ws.report()).is_empty());
}
