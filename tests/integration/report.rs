//! Report formats from real runs: the agent watches real servers while a fault is
//! injected and a Ginkgo JSON report says which tests ran; then every form it wrote (and
//! every form `report render` makes) must say the same thing, a run killed with SIGKILL
//! must still render, and `report compare` must judge a run against real past runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::*;

/// Test names of the Ginkgo report of the shared run.
pub const DISRUPTIVE_TEST: &str = "[sig-node] Kubelet [Disruptive] restarts the kubelet";
pub const SCRIPT_TEST: &str = "[sig-apps] Deployment <script>alert(1)</script> rolls out";
pub const EARLY_TEST: &str = "[sig-cli] kubectl version prints the version";
/// A JSON string the injector serves; the probe's error quotes it (at most 40 chars).
pub const INJECTED: &str = "<script>document.title=\"PWNED\"</script>";

/// A finished real run and what the test knows about it.
pub struct RealRun {
    /// Holds the report directory and the files the run used.
    pub ws: Workspace,
    /// Wall time the flaky server started answering 500.
    pub down: i64,
    /// Wall time it recovered.
    pub up: i64,
    /// The agent's stdout and exit code.
    pub finished: Finished,
}

fn invariants(flaky: &str, steady: &str, metrics: &str, inject: &str) -> String {
    format!(
        r#"  - name: flaky-availability
    description: The flaky server answers 2xx.
    owner: sig-test
    interval: 250ms
    timeout: 1s
    labels: {{tier: front}}
    probe:
      http: {{url: "{flaky}"}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: flaky-expected
    description: The flaky server answers 2xx on new connections, except while disruptive tests run.
    owner: sig-node
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{flaky}", connection: new}}
    condition:
      availability: {{target: 100, window: 1m}}
    expectedDisruptions: ['\[Disruptive\]']
  - name: steady
    description: The steady server answers 2xx.
    owner: sig-test
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{steady}"}}
    condition:
      availability: {{target: 100, window: 1m}}
  - name: missing-series
    description: A counter the server never exports.
    owner: sig-instrumentation
    interval: 250ms
    timeout: 1s
    probe:
      metrics: {{url: "{metrics}", series: 'missing_total'}}
    condition:
      increase: {{max: 0}}
  - name: injected-error
    description: A JSON value whose error message carries markup.
    owner: sig-security
    interval: 250ms
    timeout: 1s
    probe:
      http: {{url: "{inject}", valuePointer: /v}}
    condition:
      availability: {{target: 100, window: 1m}}
"#
    )
}

fn rfc(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

fn spec(containers: &[&str], leaf: &str, node: &str, state: &str, start: i64, end: i64) -> Value {
    json!({
        "ContainerHierarchyTexts": containers,
        "LeafNodeType": node,
        "LeafNodeText": leaf,
        "LeafNodeLabels": [],
        "State": state,
        "StartTime": rfc(start),
        "EndTime": rfc(end),
        "RunTime": (end - start) * 1_000_000,
        "ParallelProcess": 1,
        "NumAttempts": 1
    })
}

/// Splits a full test name into Ginkgo's container text and leaf text.
fn split(name: &str) -> (&str, &str) {
    name.split_once("] ")
        .map_or(("", name), |(c, l)| (&name[..c.len() + 1], l))
}

/// Writes a Ginkgo v2 JSON report as `ginkgo --json-report` does.
fn write_ginkgo(path: &Path, start: i64, down: i64, up: i64) {
    let test = |name: &str, state: &str, s: i64, e: i64| {
        let (c, l) = split(name);
        spec(&[c], l, "It", state, s, e)
    };
    let report = json!([{
        "SuitePath": "/tmp/e2e",
        "SuiteDescription": "Kubernetes e2e suite",
        "SuiteSucceeded": false,
        "StartTime": rfc(start - 1000),
        "EndTime": rfc(up + 2000),
        "SpecReports": [
            spec(&[], "", "SynchronizedBeforeSuite", "passed", start, start + 500),
            test(EARLY_TEST, "passed", start, start + 800),
            test(DISRUPTIVE_TEST, "passed", down - 300, up + 300),
            test(SCRIPT_TEST, "failed", down + 500, down + 1500),
            spec(&["[sig-apps] Deployment"], "is skipped", "It", "skipped", 0, 0)
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("StartTime".into(), json!("0001-01-01T00:00:00Z"));
                    o.insert("EndTime".into(), json!("0001-01-01T00:00:00Z"));
                    Value::Object(o)
                })
                .unwrap(),
        ]
    }]);
    std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
}

async fn produce_run() -> RealRun {
    let flaky = TestHttpServer::start(Reply::ok("ok")).await;
    let steady = TestHttpServer::start(Reply::ok("ok")).await;
    let metrics = TestHttpServer::start(Reply::ok("other_metric 1\n")).await;
    let inject = TestHttpServer::start(Reply::ok(&json!({ "v": INJECTED }).to_string())).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants(
        &flaky.url("/healthz"),
        &steady.url("/healthz"),
        &metrics.url("/metrics"),
        &inject.url("/value"),
    ));
    let ginkgo = ws.path("ginkgo-report.json");
    let start = now_ms();
    let ginkgo_arg = ginkgo.display().to_string();
    let agent = spawn_agent_with_env(
        &ws,
        &config,
        &[
            "--duration",
            "8s",
            "--checkpoint-interval",
            "1s",
            "--cluster",
            "kind-report-test",
            "--tests-from",
            &ginkgo_arg,
        ],
        &[("JOB_NAME", "ci-invariants-e2e"), ("BUILD_ID", "1234")],
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let down = flaky.set(Reply {
        status: 500,
        body: "injected".into(),
        delay: Duration::ZERO,
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let up = flaky.set(Reply::ok("ok"));
    // The suite writes its JSON report as it ends, before the agent is stopped.
    write_ginkgo(&ginkgo, start, down, up);
    let finished = wait(agent).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    RealRun {
        ws,
        down,
        up,
        finished,
    }
}

/// The one real run shared by the report tests (made once, on its own runtime so its
/// servers outlive any one test's runtime while it runs).
pub fn shared_run() -> &'static RealRun {
    static RUN: OnceLock<RealRun> = OnceLock::new();
    RUN.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(produce_run())
        })
        .join()
        .expect("the shared real run failed")
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Every error of `instance` against the JSON Schema in docs/.
fn schema_errors(instance: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read(&repo_file("docs/report.schema.json"))).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the report schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

// ----- JUnit -------------------------------------------------------------------------------

/// What a test needs from a JUnit document.
#[derive(Debug, Default)]
pub struct Junit {
    pub suite: HashMap<String, String>,
    pub suite_properties: HashMap<String, String>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Default)]
pub struct Case {
    pub name: String,
    pub classname: String,
    pub properties: HashMap<String, String>,
    pub failure: Option<String>,
    pub skipped: Option<String>,
}

/// Parses JUnit XML with a real XML parser, failing on any well-formedness error.
pub fn parse_junit(xml: &str) -> Junit {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let attrs = |e: &quick_xml::events::BytesStart<'_>| -> HashMap<String, String> {
        e.attributes()
            .map(|a| {
                let a = a.expect("well-formed attribute");
                (
                    String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                    a.unescape_value().expect("valid escapes").into_owned(),
                )
            })
            .collect()
    };
    let mut junit = Junit::default();
    let mut in_case = false;
    loop {
        match reader.read_event() {
            Err(e) => panic!(
                "JUnit is not well-formed XML at {}: {e}\n{xml}",
                reader.buffer_position()
            ),
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let a = attrs(&e);
                match e.name().as_ref() {
                    b"testsuite" => junit.suite = a,
                    b"testcase" => {
                        in_case = true;
                        junit.cases.push(Case {
                            name: a["name"].clone(),
                            classname: a["classname"].clone(),
                            ..Case::default()
                        });
                    }
                    b"property" => {
                        let (k, v) = (a["name"].clone(), a["value"].clone());
                        if in_case {
                            junit.cases.last_mut().unwrap().properties.insert(k, v);
                        } else {
                            junit.suite_properties.insert(k, v);
                        }
                    }
                    b"failure" => {
                        junit.cases.last_mut().unwrap().failure = Some(a["message"].clone())
                    }
                    b"skipped" => {
                        junit.cases.last_mut().unwrap().skipped = Some(a["message"].clone())
                    }
                    _ => {}
                }
            }
            Ok(Event::End(e)) if e.name().as_ref() == b"testcase" => in_case = false,
            Ok(_) => {}
        }
    }
    junit
}

impl Junit {
    pub fn case(&self, invariant: &str) -> &Case {
        let name = format!("[invariant] {invariant}");
        self.cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no testcase {name} in {self:#?}"))
    }
}

// ----- the tests ---------------------------------------------------------------------------

#[test]
fn report_json_has_run_metadata_attribution_and_matches_the_schema() {
    let run = shared_run();
    let report = run.ws.report();
    assert!(
        schema_errors(&report).is_empty(),
        "{:#?}",
        schema_errors(&report)
    );
    // The schema is strict enough to notice an undocumented or mistyped field.
    let mut wrong = report.clone();
    wrong["invariants"][0]["surprise"] = json!(1);
    wrong["run"]["status"] = json!("finished");
    assert_eq!(
        schema_errors(&wrong).len(),
        2,
        "{:#?}",
        schema_errors(&wrong)
    );
    let r = &report["run"];
    assert_eq!(r["status"], "completed");
    assert_eq!(r["job_name"], "ci-invariants-e2e");
    assert_eq!(r["build_id"], "1234");
    assert_eq!(
        r["id"], "1234",
        "BUILD_ID is the run id without PROW_JOB_ID"
    );
    assert_eq!(r["cluster"], "kind-report-test");
    assert_eq!(ms(&r["ended_at"]), ms(&r["updated_at"]));

    // Attribution: both flaky invariants saw the 500 window, with the tests running then.
    for name in ["flaky-availability", "flaky-expected"] {
        let v = violations(&report, name);
        assert_eq!(v.len(), 1, "{name}: {v:#?}");
        assert_between(
            &format!("{name} start"),
            ms(&v[0]["start"]),
            run.down - 50,
            run.down + 400,
        );
        assert_between(
            &format!("{name} end"),
            ms(&v[0]["end"]),
            run.up - 50,
            run.up + 400,
        );
        let tests: Vec<&str> = v[0]["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tests, [DISRUPTIVE_TEST, SCRIPT_TEST], "{name}");
    }
    let plain = invariant(&report, "flaky-availability");
    assert_eq!(plain["verdict"], "violated");
    assert_eq!(plain["violations"][0]["expected"], false);
    assert_eq!(plain["unexpected_violations"], 1);
    let expected = invariant(&report, "flaky-expected");
    assert_eq!(expected["verdict"], "expected_disruption");
    assert_eq!(expected["violations"][0]["expected"], true);
    assert_eq!(
        expected["violations"][0]["expected_by"],
        json!([DISRUPTIVE_TEST])
    );
    assert_eq!(expected["expected_disruptions"], json!([r"\[Disruptive\]"]));
    assert_eq!(
        (
            expected["expected_violations"].as_u64(),
            expected["unexpected_violations"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(invariant(&report, "steady")["verdict"], "held");
    let missing = invariant(&report, "missing-series");
    assert_eq!(
        missing["verdict"], "not_examined",
        "absent series are never a pass"
    );
    assert_eq!(missing["examined"], false);
    let injected = invariant(&report, "injected-error");
    assert_eq!(injected["verdict"], "violated");
    assert!(
        injected["violations"][0]["first_error"]
            .as_str()
            .unwrap()
            .contains("<script>")
    );
    assert_eq!(
        report["totals"],
        json!({"violated": 2, "expected_disruption": 1, "held": 1, "not_examined": 1})
    );
    // Annotations: the suite, one suite-level node, three tests; never-run specs left out.
    let kinds: Vec<(&str, &str)> = report["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["name"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert!(kinds.contains(&("phase", "SynchronizedBeforeSuite")));
    assert!(kinds.contains(&("phase", "suite: Kubernetes e2e suite")));
    assert!(!kinds.iter().any(|(_, n)| n.contains("is skipped")));
    // The end-of-run summary says the same.
    assert!(
        run.finished.stdout.contains("expected_disruption"),
        "{}",
        run.finished.stdout
    );
}

#[test]
fn ndjson_has_one_row_per_invariant_that_loads_with_the_bigquery_schema() {
    let run = shared_run();
    let schema: Value =
        serde_json::from_str(&read(&repo_file("docs/report-bigquery-schema.json"))).unwrap();
    let written = read(&run.ws.report_dir().join("report.ndjson"));
    let rendered = agent_command(&[
        "report",
        "render",
        "--from",
        run.ws.report_dir().join("report.json").to_str().unwrap(),
        "--format",
        "ndjson",
    ]);
    assert_eq!(rendered.code, Some(0), "{}", rendered.stderr);
    assert_eq!(
        rendered.stdout, written,
        "render reproduces the file the agent wrote"
    );
    let rows: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(rows.len(), 5);
    for row in &rows {
        let problems =
            invariant_agent::report::ndjson::check_row_against_bigquery_schema(row, &schema);
        assert!(
            problems.is_empty(),
            "row {} does not load: {problems:#?}",
            row["invariant"]
        );
        assert_eq!(row["run_id"], "1234");
        assert_eq!(row["cluster"], "kind-report-test");
        assert_eq!(row["run_status"], "completed");
    }
    let by_name: HashMap<&str, &Value> = rows
        .iter()
        .map(|r| (r["invariant"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_name["flaky-availability"]["verdict"], "violated");
    assert_eq!(
        by_name["flaky-availability"]["labels"],
        json!([{"key": "tier", "value": "front"}])
    );
    assert_eq!(by_name["flaky-expected"]["violations"][0]["expected"], true);
    let d = by_name["flaky-availability"]["violations"][0]["duration_seconds"]
        .as_f64()
        .unwrap();
    assert!((2.0..=3.5).contains(&d), "{d}");
    assert_eq!(by_name["missing-series"]["verdict"], "not_examined");
}

#[test]
fn junit_is_well_formed_with_stable_names_owner_properties_and_informational_default() {
    let run = shared_run();
    let xml = read(&run.ws.report_dir().join("report.junit.xml"));
    let junit = parse_junit(&xml);
    assert_eq!(junit.cases.len(), 5);
    assert_eq!(
        junit.suite["failures"], "0",
        "informational by default: nothing fails"
    );
    assert_eq!(junit.suite["skipped"], "1");
    assert_eq!(junit.suite_properties["run_id"], "1234");
    assert_eq!(junit.suite_properties["junit_mode"], "informational");
    for c in &junit.cases {
        assert_eq!(c.classname, "invariant-agent");
        assert!(c.failure.is_none(), "{c:#?}");
    }
    let flaky = junit.case("flaky-availability");
    assert_eq!(flaky.properties["owner"], "sig-test");
    assert_eq!(flaky.properties["verdict"], "violated");
    assert_eq!(
        junit.case("flaky-expected").properties["verdict"],
        "expected_disruption"
    );
    assert!(
        junit
            .case("missing-series")
            .skipped
            .as_deref()
            .unwrap()
            .contains("not examined")
    );
    // Details in system-out, escaped.
    assert!(xml.contains("tests running:"), "{xml}");
    assert!(xml.contains("[sig-apps] Deployment &lt;script&gt;alert(1)&lt;/script&gt; rolls out"));
    assert!(!xml.contains("<script>"));

    // Enforcing: violated invariants fail; expected disruptions and held ones do not.
    let enforcing = agent_command(&[
        "report",
        "render",
        "--from",
        run.ws.report_dir().join("report.json").to_str().unwrap(),
        "--format",
        "junit",
        "--junit-mode",
        "enforcing",
    ]);
    assert_eq!(enforcing.code, Some(0), "{}", enforcing.stderr);
    let junit = parse_junit(&enforcing.stdout);
    assert_eq!(junit.suite["failures"], "2");
    assert!(
        junit
            .case("flaky-availability")
            .failure
            .as_deref()
            .unwrap()
            .contains("status 500")
    );
    assert!(junit.case("injected-error").failure.is_some());
    assert!(junit.case("flaky-expected").failure.is_none());
    assert!(junit.case("steady").failure.is_none());
    assert!(junit.case("missing-series").failure.is_none());
    assert!(junit.case("missing-series").skipped.is_some());
}

#[test]
fn markdown_lists_violations_with_tests_and_escapes_markup() {
    let run = shared_run();
    let out = agent_command(&[
        "report",
        "render",
        "--from",
        run.ws.report_dir().join("report.json").to_str().unwrap(),
        "--format",
        "md",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let md = out.stdout;
    assert!(md.starts_with("# Invariant report: run 1234"), "{md}");
    assert!(
        md.contains("| 🔴 violated | flaky-availability | sig-test |"),
        "{md}"
    );
    assert!(md.contains("🟡 expected disruption"), "{md}");
    assert!(md.contains("⚪ not examined"), "{md}");
    assert!(md.contains("*(expected)*"), "{md}");
    assert!(
        !md.contains("<script>"),
        "markup from errors and test names is escaped:\n{md}"
    );
    assert!(md.contains("&lt;script&gt;"), "{md}");
    // Severity order: violated rows before the expected disruption, then held.
    let pos = |s: &str| md.find(s).unwrap_or_else(|| panic!("{s} missing"));
    assert!(pos("| 🔴 violated") < pos("| ⚪ not examined"));
    assert!(pos("| ⚪ not examined") < pos("| 🟡 expected disruption"));
    assert!(pos("| 🟡 expected disruption") < pos("| 🟢 held"));
}

#[test]
fn tests_given_at_render_time_attribute_a_report_saved_without_them() {
    let run = shared_run();
    // Strip the annotations and attribution, as a report from a run without
    // --tests-from would be; render must attribute from the Ginkgo file alone.
    let mut bare = run.ws.report();
    bare["annotations"] = json!([]);
    for inv in bare["invariants"].as_array_mut().unwrap() {
        for v in inv["violations"].as_array_mut().unwrap() {
            let v = v.as_object_mut().unwrap();
            for k in ["tests", "tests_omitted", "expected_by", "expected"] {
                v.remove(k);
            }
        }
    }
    let saved = run.ws.path("bare.json");
    std::fs::write(&saved, serde_json::to_vec(&bare).unwrap()).unwrap();
    let plain = agent_command(&[
        "report",
        "render",
        "--from",
        saved.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    let plain: Value = serde_json::from_str(&plain.stdout).unwrap();
    assert_eq!(
        invariant(&plain, "flaky-expected")["verdict"],
        "violated",
        "no tests, nothing expected"
    );
    let ginkgo = run.ws.path("ginkgo-report.json");
    let with = agent_command(&[
        "report",
        "render",
        "--from",
        saved.to_str().unwrap(),
        "--format",
        "json",
        "--tests",
        ginkgo.to_str().unwrap(),
    ]);
    assert_eq!(with.code, Some(0), "{}", with.stderr);
    let with: Value = serde_json::from_str(&with.stdout).unwrap();
    assert_eq!(
        invariant(&with, "flaky-expected")["verdict"],
        "expected_disruption"
    );
    assert_eq!(
        with["invariants"],
        run.ws.report()["invariants"],
        "same attribution as the live run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_sigkill_leaves_every_form_and_its_checkpoint_renders() {
    let server = TestHttpServer::start(Reply {
        status: 503,
        body: String::new(),
        delay: Duration::ZERO,
    })
    .await;
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"  - name: down-all-along
    description: the server answers 2xx
    owner: sig-test
    interval: 200ms
    probe:
      http: {{url: "{}"}}
    condition:
      availability: {{target: 100, window: 1m}}
"#,
        server.url("/")
    ));
    let agent = spawn_agent(&ws, &config, &["--checkpoint-interval", "500ms"]);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    signal(agent.id().unwrap(), "KILL");
    let _ = wait(agent).await;
    let dir = ws.report_dir();
    let report = ws.report();
    assert_eq!(report["run"]["status"], "running");
    assert_eq!(report["run"]["ended_at"], Value::Null);
    assert!(
        schema_errors(&report).is_empty(),
        "{:#?}",
        schema_errors(&report)
    );
    let v = violations(&report, "down-all-along");
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0]["end"],
        Value::Null,
        "the interval was still open at the last checkpoint"
    );

    // The agent left every form of its last checkpoint behind.
    let junit = parse_junit(&read(&dir.join("report.junit.xml")));
    assert_eq!(junit.suite_properties["run_status"], "running");
    assert!(read(&dir.join("report.html")).contains("data-status=\"running\""));
    assert_eq!(read(&dir.join("report.ndjson")).lines().count(), 1);

    // And the checkpoint renders in every format.
    let from = dir.join("report.json");
    for format in ["html", "junit", "md", "ndjson", "json", "text"] {
        let out = agent_command(&[
            "report",
            "render",
            "--from",
            from.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert_eq!(out.code, Some(0), "{format}: {}", out.stderr);
        assert!(!out.stdout.is_empty(), "{format}");
        match format {
            "junit" => {
                let j = parse_junit(&out.stdout);
                assert_eq!(j.cases.len(), 1);
                assert!(out.stdout.contains("cut short"), "{}", out.stdout);
            }
            "md" => assert!(out.stdout.contains("cut short"), "{}", out.stdout),
            "text" => assert!(out.stdout.contains("cut short"), "{}", out.stdout),
            "html" => assert!(out.stdout.contains("it was cut short"), "{format}"),
            "ndjson" => {
                let row: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
                assert_eq!(row["run_status"], "running");
                assert_eq!(row["violations"][0]["end"], Value::Null);
            }
            _ => {}
        }
    }
}

#[test]
fn render_names_unreadable_inputs() {
    let ws = Workspace::new();
    let missing = ws.path("nope.json");
    let out = agent_command(&["report", "render", "--from", missing.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("cannot read") && out.stderr.contains("nope.json"),
        "{}",
        out.stderr
    );
    let not_report = ws.path("other.json");
    std::fs::write(&not_report, r#"{"schema_version": "someone-else/v9"}"#).unwrap();
    let out = agent_command(&["report", "render", "--from", not_report.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("unsupported schema_version"),
        "{}",
        out.stderr
    );
    let run = shared_run();
    let bad_tests = ws.path("ginkgo.json");
    std::fs::write(&bad_tests, "[1, 2]").unwrap();
    let out = agent_command(&[
        "report",
        "render",
        "--from",
        run.ws.report_dir().join("report.json").to_str().unwrap(),
        "--tests",
        bad_tests.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("is not a Ginkgo JSON report"),
        "{}",
        out.stderr
    );
}

#[test]
fn schemas_are_printed_from_the_documented_files() {
    let out = agent_command(&["report", "schema"]);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.stdout, read(&repo_file("docs/report.schema.json")));
    let out = agent_command(&["report", "schema", "--format", "bigquery"]);
    assert_eq!(
        out.stdout,
        read(&repo_file("docs/report-bigquery-schema.json"))
    );
}

// ----- compare -----------------------------------------------------------------------------

/// A real run of the same invariants against healthy servers: the clean history.
async fn clean_run() -> Value {
    let ok = TestHttpServer::start(Reply::ok("ok")).await;
    let metrics = TestHttpServer::start(Reply::ok("other_metric 1\n")).await;
    let inject = TestHttpServer::start(Reply::ok(r#"{"v": 1}"#)).await;
    let ws = Workspace::new();
    let config = ws.config(&invariants(
        &ok.url("/healthz"),
        &ok.url("/healthz"),
        &metrics.url("/metrics"),
        &inject.url("/value"),
    ));
    let done = wait(spawn_agent(&ws, &config, &["--duration", "2s"])).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    ws.report()
}

/// Writes `n` past runs into `dir`, copies of `clean` with their own ids and times.
fn write_history(dir: &Path, clean: &Value, n: usize) {
    for k in 0..n {
        let mut r = clean.clone();
        r["run"]["id"] = json!(format!("past-{k}"));
        let started = ms(&r["run"]["started_at"]) - (k as i64 + 1) * 3_600_000;
        r["run"]["started_at"] = json!(rfc(started));
        let sub = dir.join(format!("run-{k:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join("report.json"),
            serde_json::to_vec_pretty(&r).unwrap(),
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_says_how_sure_it_is_with_few_runs_and_flags_regressions_with_enough() {
    let run = shared_run();
    let current = run.ws.report_dir().join("report.json");
    let clean = clean_run().await;
    assert_eq!(invariant(&clean, "flaky-availability")["verdict"], "held");
    let ws = Workspace::new();
    let baseline = ws.path("history");
    write_history(&baseline, &clean, 4);
    // Noise the baseline directory may hold: not a report, and a cut-short run.
    std::fs::write(baseline.join("notes.json"), "{}").unwrap();
    let mut cut = clean.clone();
    cut["run"]["id"] = json!("cut-short");
    cut["run"]["status"] = json!("running");
    std::fs::write(baseline.join("cut.json"), serde_json::to_vec(&cut).unwrap()).unwrap();

    let args = |extra: &[&str]| -> Finished {
        let mut a = vec![
            "report",
            "compare",
            "--baseline",
            baseline.to_str().unwrap(),
            current.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        agent_command(&a)
    };
    // Four past runs: worse than all of them, but too few to be sure.
    let out = args(&["--output", "json", "--fail-on-regression"]);
    assert_eq!(
        out.code,
        Some(0),
        "no regression can be certain with 4 runs:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let c: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(c["baseline_runs"], 4);
    assert_eq!(c["skipped"].as_array().unwrap().len(), 2, "{c:#}");
    let by: HashMap<&str, &Value> = c["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i))
        .collect();
    let flaky = by["flaky-availability"];
    assert_eq!(flaky["verdict"], "possible_regression", "{flaky:#}");
    assert_eq!(flaky["p_value"], 0.2);
    assert_eq!(flaky["disruption_seconds"]["runs_needed"], 19);
    assert!(
        flaky["explanation"]
            .as_str()
            .unwrap()
            .contains("too few past runs"),
        "{flaky:#}"
    );
    assert_eq!(
        by["flaky-expected"]["verdict"], "within_history",
        "expected disruptions are not held against a run: {:#}",
        by["flaky-expected"]
    );
    assert_eq!(by["steady"]["verdict"], "within_history");
    assert_eq!(by["missing-series"]["verdict"], "not_examined");
    assert_eq!(by["injected-error"]["verdict"], "possible_regression");
    let text = args(&[]);
    assert_eq!(text.code, Some(0));
    assert!(
        text.stdout.contains("possible_regression"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("19 are needed"), "{}", text.stdout);

    // Twenty past runs: now it is a regression at 5 %, and --fail-on-regression says so.
    write_history(&baseline, &clean, 20);
    let out = args(&["--output", "json", "--fail-on-regression"]);
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    let c: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(c["baseline_runs"], 20);
    assert_eq!(c["regressions"], 2);
    let flaky = c["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "flaky-availability")
        .unwrap();
    assert_eq!(flaky["verdict"], "regression");
    assert!((flaky["p_value"].as_f64().unwrap() - 1.0 / 21.0).abs() < 1e-9);
    // Without the flag the exit code stays 0: comparisons are informational unless asked.
    assert_eq!(args(&[]).code, Some(0));
}
