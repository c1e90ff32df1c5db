//! Tests for loading and validating invariant files.
//!
//! Most tests feed one small invariant through [`parse_str`] and compare the exact
//! `path: message` lines, so a change of wording or of field path is a visible diff.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const HEAD: &str = "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\n";

/// Every error of `text` as `line:column: path: message` (file name left out).
fn errors(text: &str) -> Vec<String> {
    match parse_str("f.yaml", text) {
        Ok(set) => panic!("expected errors, got {set:#?}"),
        Err(e) => {
            e.0.iter()
                .map(|e| e.to_string().trim_start_matches("f.yaml:").to_string())
                .collect()
        }
    }
}

/// Errors of a file with one invariant whose fields after `owner` are `fields`
/// (written at the invariant's indentation), as `path: message` without positions.
fn invariant_errors(fields: &str) -> Vec<String> {
    let text = invariant_file(fields);
    match parse_str("f.yaml", &text) {
        Ok(set) => panic!("expected errors for\n{text}\ngot {set:#?}"),
        Err(e) => {
            e.0.iter()
                .map(|e| {
                    if e.path.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.path, e.message)
                    }
                })
                .collect()
        }
    }
}

fn invariant_file(fields: &str) -> String {
    let mut text = format!("{HEAD}invariants:\n  - name: x\n    description: d\n    owner: o\n");
    for line in fields.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The one invariant of a valid file built like [`invariant_errors`].
fn parse_invariant(fields: &str) -> Invariant {
    let text = invariant_file(fields);
    match parse_str("f.yaml", &text) {
        Ok(mut set) => set.invariants.remove(0),
        Err(e) => panic!("unexpected errors for\n{text}\n{e}"),
    }
}

const HTTP: &str = "probe: {http: {url: 'http://a/'}}";
const AVAILABILITY: &str = "condition: {availability: {target: 99}}";

fn with_probe(probe: &str) -> String {
    format!("probe:\n  {probe}\n{AVAILABILITY}")
}

fn with_condition(condition: &str) -> String {
    format!("{HTTP}\ncondition:\n  {condition}")
}

/// Asserts each `(fields, expected)` case yields exactly the expected errors.
fn assert_cases(cases: &[(&str, &[&str])]) {
    for (fields, expected) in cases {
        assert_eq!(invariant_errors(fields), *expected, "for fields:\n{fields}");
    }
}

fn re(s: &str) -> regex::Regex {
    regex::Regex::new(s).unwrap()
}

// ----- whole files -------------------------------------------------------------------

const FULL: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
defaults:
  scope: node
  interval: 2s
  timeout: 3s
  labels: {suite: e2e, component: default}
invariants:
  - name: apiserver-readyz
    description: The API server reports ready.
    owner: sig-api-machinery
    scope: cluster
    interval: 1s
    timeout: 10s
    labels: {component: apiserver}
    probe:
      http:
        url: https://127.0.0.1:6443/readyz
        method: HEAD
        headers: {X-Name: value, Accept: application/json}
        bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
        tls: {caFile: /path/ca.crt, serverName: kubernetes.default}
        expectedStatus: [200, "300-399", "404"]
        body: {regex: "^ok$"}
        valuePointer: /status/replicas
        connection: new
        maxBodyBytes: 4096
        followRedirects: sameOrigin
    condition:
      availability: {target: 99.9, window: 10m}
    expectedDisruptions:
      - '\[Disruptive\]'
      - "^\\[sig-api-machinery\\] .*restart"
  - name: apiserver-port
    description: The API server port accepts TLS connections.
    owner: sig-network
    probe:
      tcp:
        address: "[::1]:443"
        tls: {insecureSkipVerify: true}
    condition:
      latency: {quantile: 0.9, max: 250ms, window: 1m30s}
  - name: cluster-dns
    description: Cluster DNS resolves the API service.
    owner: sig-network
    probe:
      dns:
        name: kubernetes.default.svc.cluster.local
        server: 10.96.0.10
        minAnswers: 2
        expectedAddresses: [10.0.0.1, "fd00::1"]
    condition:
      threshold: {min: 0, max: 10, for: 30s}
  - name: no-5xx
    description: The API server returns no 5xx.
    owner: sig-api-machinery
    probe:
      metrics:
        url: https://127.0.0.1:6443/metrics
        series: 'apiserver_request_total{verb="GET",code=~"5.."}'
        aggregation: max
        tls: {insecureSkipVerify: true}
    condition:
      increase: {max: 0, window: 10m}
  - name: plain-defaults
    description: Everything left to defaults.
    owner: sig-testing
    probe:
      http: {url: "http://10.0.0.1:8080/healthz"}
    condition:
      latency: {max: 1s}
"#;

fn http_defaults(url: &str) -> HttpProbeSpec {
    HttpProbeSpec {
        url: url.to_string(),
        method: http::Method::GET,
        headers: vec![],
        bearer_token_file: None,
        tls: TlsSpec::default(),
        expected_status: vec![StatusRange {
            low: 200,
            high: 299,
        }],
        body_match: None,
        value_pointer: None,
        connection: ConnectionMode::Reused,
        max_body_bytes: 1_048_576,
        follow_redirects: FollowRedirects::None,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_full_file_parses_into_the_exact_spec() {
    let set = parse_str("full.yaml", FULL).unwrap();
    let secs = Duration::from_secs;
    let expected = InvariantSet {
        invariants: vec![
            Invariant {
                name: "apiserver-readyz".into(),
                description: "The API server reports ready.".into(),
                owner: "sig-api-machinery".into(),
                scope: Scope::Cluster,
                interval: secs(1),
                timeout: secs(10),
                labels: labels(&[("component", "apiserver"), ("suite", "e2e")]),
                probe: ProbeSpec::Http(HttpProbeSpec {
                    url: "https://127.0.0.1:6443/readyz".into(),
                    method: http::Method::HEAD,
                    headers: vec![
                        (
                            http::HeaderName::from_static("x-name"),
                            http::HeaderValue::from_static("value"),
                        ),
                        (
                            http::header::ACCEPT,
                            http::HeaderValue::from_static("application/json"),
                        ),
                    ],
                    bearer_token_file: Some(PathBuf::from(
                        "/var/run/secrets/kubernetes.io/serviceaccount/token",
                    )),
                    tls: TlsSpec {
                        ca_file: Some(PathBuf::from("/path/ca.crt")),
                        insecure_skip_verify: false,
                        server_name: Some("kubernetes.default".into()),
                    },
                    expected_status: vec![
                        StatusRange {
                            low: 200,
                            high: 200,
                        },
                        StatusRange {
                            low: 300,
                            high: 399,
                        },
                        StatusRange {
                            low: 404,
                            high: 404,
                        },
                    ],
                    body_match: Some(BodyMatch::Regex(re("^ok$"))),
                    value_pointer: Some("/status/replicas".into()),
                    connection: ConnectionMode::New,
                    max_body_bytes: 4096,
                    follow_redirects: FollowRedirects::SameOrigin,
                }),
                condition: Condition::Availability {
                    target_percent: 99.9,
                    window: secs(600),
                },
                expected_disruptions: vec![
                    TestPattern(re(r"\[Disruptive\]")),
                    TestPattern(re("^\\[sig-api-machinery\\] .*restart")),
                ],
                source: "full.yaml:9:5".into(),
            },
            Invariant {
                name: "apiserver-port".into(),
                description: "The API server port accepts TLS connections.".into(),
                owner: "sig-network".into(),
                scope: Scope::Node,
                interval: secs(2),
                timeout: secs(3),
                labels: labels(&[("component", "default"), ("suite", "e2e")]),
                probe: ProbeSpec::Tcp(TcpProbeSpec {
                    address: "[::1]:443".into(),
                    tls: Some(TlsSpec {
                        insecure_skip_verify: true,
                        ..TlsSpec::default()
                    }),
                }),
                condition: Condition::Latency {
                    quantile: 0.9,
                    max: Duration::from_millis(250),
                    window: secs(90),
                },
                expected_disruptions: Vec::new(),
                source: "full.yaml:34:5".into(),
            },
            Invariant {
                name: "cluster-dns".into(),
                description: "Cluster DNS resolves the API service.".into(),
                owner: "sig-network".into(),
                scope: Scope::Node,
                interval: secs(2),
                timeout: secs(3),
                labels: labels(&[("component", "default"), ("suite", "e2e")]),
                probe: ProbeSpec::Dns(DnsProbeSpec {
                    name: "kubernetes.default.svc.cluster.local".into(),
                    server: Some("10.96.0.10:53".parse().unwrap()),
                    min_answers: 2,
                    expected_addresses: vec![
                        "10.0.0.1".parse().unwrap(),
                        "fd00::1".parse().unwrap(),
                    ],
                }),
                condition: Condition::Threshold {
                    min: Some(0.0),
                    max: Some(10.0),
                    for_duration: secs(30),
                },
                expected_disruptions: Vec::new(),
                source: "full.yaml:43:5".into(),
            },
            Invariant {
                name: "no-5xx".into(),
                description: "The API server returns no 5xx.".into(),
                owner: "sig-api-machinery".into(),
                scope: Scope::Node,
                interval: secs(2),
                timeout: secs(3),
                labels: labels(&[("component", "default"), ("suite", "e2e")]),
                probe: ProbeSpec::Metrics(MetricsProbeSpec {
                    http: HttpProbeSpec {
                        tls: TlsSpec {
                            insecure_skip_verify: true,
                            ..TlsSpec::default()
                        },
                        max_body_bytes: 16_777_216,
                        ..http_defaults("https://127.0.0.1:6443/metrics")
                    },
                    selector: MetricSelector {
                        metric: "apiserver_request_total".into(),
                        matchers: vec![
                            LabelMatcher::Equal("verb".into(), "GET".into()),
                            LabelMatcher::Regex("code".into(), re("^(?:5..)$")),
                        ],
                    },
                    aggregation: Aggregation::Max,
                    histogram_quantile: None,
                }),
                condition: Condition::Increase {
                    max: 0.0,
                    window: Some(secs(600)),
                },
                expected_disruptions: Vec::new(),
                source: "full.yaml:54:5".into(),
            },
            Invariant {
                name: "plain-defaults".into(),
                description: "Everything left to defaults.".into(),
                owner: "sig-testing".into(),
                scope: Scope::Node,
                interval: secs(2),
                timeout: secs(3),
                labels: labels(&[("component", "default"), ("suite", "e2e")]),
                probe: ProbeSpec::Http(http_defaults("http://10.0.0.1:8080/healthz")),
                condition: Condition::Latency {
                    quantile: 0.99,
                    max: secs(1),
                    window: Duration::from_secs(300),
                },
                expected_disruptions: Vec::new(),
                source: "full.yaml:65:5".into(),
            },
        ],
    };
    assert_eq!(set, expected);
}

#[test]
fn built_in_defaults_apply_without_a_defaults_section() {
    let inv = parse_invariant(&format!("{HTTP}\n{AVAILABILITY}"));
    assert_eq!(inv.scope, Scope::Node);
    assert_eq!(inv.interval, DEFAULT_INTERVAL);
    assert_eq!(inv.timeout, DEFAULT_TIMEOUT);
    assert!(inv.labels.is_empty());
    assert_eq!(
        inv.condition,
        Condition::Availability {
            target_percent: 99.0,
            window: DEFAULT_WINDOW
        }
    );
}

const MANY_MISTAKES: &str = r#"apiVersion: invariant-agent/v1
kind: InvariantSet
colour: blue
defaults:
  interval: 5
  labels: {owner: me}
invariants:
  - name: Foo_bar
    description: ""
    owner: sig-x
    scope: everywhere
    timeout: 0s
    probe:
      exec: {command: "true"}
    condition:
      availability: {target: 150, window: 1s}
  - name: ok-name
    owner: 7
    interval: 1s
    labels: {"bad-key": x, __meta: y, version: 2}
    probe:
      http:
        url: ftp://example.com/
        method: get
        headers: {Authorization: "Bearer x"}
        unexpected: 1
        expectedStatus: [200, "300-200", 600]
        body: {contains: ok, regex: "("}
        connection: keep
        maxBodyBytes: 0
    condition:
      latency: {quantile: 99, max: 5}
      threshold: {}
  - name: ok-name
    description: d
    owner: o
    probe:
      metrics:
        url: http://127.0.0.1/metrics
        series: 'up{job=~"("}'
        method: POST
        aggregation: avg
        tls: {}
    condition:
      increase: {max: -1, window: 500ms}
  - just a string
"#;

#[test]
fn every_mistake_is_reported_at_once_with_its_position() {
    let expected = [
        "1:13: apiVersion: unsupported apiVersion \"invariant-agent/v1\"; expected invariant-agent/v1alpha1",
        "3:1: colour: unknown field; expected one of apiVersion, kind, defaults, invariants",
        "5:13: defaults.interval: \"5\" is not a duration; write it with a unit, e.g. 5s or 500ms",
        "6:12: defaults.labels.owner: \"owner\" is reserved: the agent sets invariant, owner, outcome, state, scope itself",
        "8:11: invariants[0].name: \"Foo_bar\" is not a DNS label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)",
        "9:18: invariants[0].description: must not be empty",
        "11:12: invariants[0].scope: unknown value \"everywhere\"; expected one of node, cluster",
        "12:14: invariants[0].timeout: must be greater than 0 and at most 10m, found 0s",
        "14:7: invariants[0].probe: unknown probe kind \"exec\"; expected one of http, tcp, dns, metrics, apiserver, resource, events",
        "16:30: invariants[0].condition.availability.target: must be a percentage greater than 0 and at most 100, found 150",
        "17:5: invariants[1].description: required field is missing",
        "18:12: invariants[1].owner: expected a string, found the number 7; put it in quotes to use it as text",
        "20:14: invariants[1].labels.bad-key: \"bad-key\" is not a valid label name (letters, digits and '_', not starting with a digit)",
        "20:28: invariants[1].labels.__meta: \"__meta\" is not allowed: label names starting with \"__\" are reserved",
        "20:48: invariants[1].labels.version: expected a string, found the number 2; put it in quotes to use it as text",
        "23:14: invariants[1].probe.http.url: URL scheme must be http or https (lowercase), found \"ftp\"",
        "24:17: invariants[1].probe.http.method: HTTP methods are case-sensitive; write GET",
        "25:19: invariants[1].probe.http.headers.Authorization: do not put credentials in the file; set bearerTokenFile to a file holding the token",
        "26:9: invariants[1].probe.http.unexpected: unknown field; expected one of url, method, headers, bearerTokenFile, tls, expectedStatus, body, valuePointer, connection, maxBodyBytes, followRedirects",
        "27:31: invariants[1].probe.http.expectedStatus[1]: \"300-200\" is not a valid status range: 300 is greater than 200",
        "27:42: invariants[1].probe.http.expectedStatus[2]: 600 is not an HTTP status code (100-599)",
        "28:30: invariants[1].probe.http.body.regex: give exactly one of contains, regex, not both",
        "29:21: invariants[1].probe.http.connection: unknown value \"keep\"; expected one of new, reused",
        "30:23: invariants[1].probe.http.maxBodyBytes: must be between 1 and 67108864 (64 MiB), found 0",
        "32:27: invariants[1].condition.latency.quantile: must be greater than 0 and at most 1 (e.g. 0.99 for p99), found 99",
        "32:36: invariants[1].condition.latency.max: \"5\" is not a duration; write it with a unit, e.g. 5s or 500ms",
        "33:7: invariants[1].condition: more than one condition kind (latency, threshold); give exactly one of availability, latency, threshold, increase",
        "33:18: invariants[1].condition.threshold: give min, max or both",
        "34:11: invariants[2].name: duplicate name \"ok-name\", first defined at f.yaml:17:5",
        "40:17: invariants[2].probe.metrics.series: invalid series selector at character 9: invalid regex: unclosed group",
        "41:9: invariants[2].probe.metrics.method: metrics probes always use GET; remove method",
        "42:22: invariants[2].probe.metrics.aggregation: unknown value \"avg\"; expected one of sum, max, min, count",
        "43:9: invariants[2].probe.metrics.tls: tls applies only to https:// URLs",
        "45:23: invariants[2].condition.increase.max: must be at least 0, found -1",
        "46:5: invariants[3]: expected a mapping, found the string \"just a string\"",
    ];
    let got = errors(MANY_MISTAKES);
    assert_eq!(got, expected, "\ngot:\n{}", got.join("\n"));
}

// ----- file-level rules --------------------------------------------------------------

#[test]
fn an_empty_file_is_one_clear_error() {
    let want = "1:1: the file is empty; an invariant file has apiVersion: invariant-agent/v1alpha1, kind: InvariantSet and a list of invariants";
    assert_eq!(errors(""), [want]);
    assert_eq!(errors("# only a comment\n").len(), 1);
    assert_eq!(errors("---\n").len(), 1);
}

#[test]
fn a_yaml_syntax_error_is_one_error_with_the_parser_position() {
    assert_eq!(
        errors(&format!("{HEAD}invariants: [\n  {{name: x\n")),
        ["4:3: invalid YAML: unclosed bracket '{'"]
    );
}

#[test]
fn several_documents_are_refused() {
    let text = format!("{HEAD}---\n{HEAD}");
    assert_eq!(
        errors(&text),
        [
            "4:1: an invariant file holds exactly one YAML document; this starts a second one (remove the `---` or split the file)"
        ]
    );
}

#[test]
fn the_document_must_be_a_mapping() {
    assert_eq!(
        errors("- a\n- b\n"),
        [
            "1:1: expected a mapping, found a list; an invariant file is a mapping with apiVersion, kind and invariants"
        ]
    );
}

#[test]
fn header_fields_are_required_and_exact() {
    assert_eq!(
        errors("invariants: []\n"),
        [
            "1:1: apiVersion: required field is missing",
            "1:1: kind: required field is missing",
            "1:13: invariants: must list at least one invariant",
        ]
    );
    assert_eq!(
        errors("apiVersion: invariant-agent/v1alpha1\nkind: Invariants\ninvariants:\n"),
        [
            "2:7: kind: unsupported kind \"Invariants\"; expected InvariantSet",
            "3:1: invariants: required field has no value",
        ]
    );
    assert_eq!(
        errors(&format!("{HEAD}invariants: {{a: 1}}\n")),
        ["3:13: invariants: expected a list, found a mapping"]
    );
}

#[test]
fn duplicate_keys_are_named_with_the_first_position() {
    let text = format!("{HEAD}kind: InvariantSet\ninvariants: []\n");
    assert_eq!(
        errors(&text),
        [
            "3:1: kind: duplicate key; first given at line 2, column 1",
            "4:13: invariants: must list at least one invariant",
        ]
    );
}

#[test]
fn non_string_keys_are_refused() {
    let text = format!("{HEAD}1: x\ninvariants: []\n");
    assert_eq!(
        errors(&text),
        [
            "3:1: expected a string key, found the number 1",
            "4:13: invariants: must list at least one invariant",
        ]
    );
}

// ----- defaults ----------------------------------------------------------------------

#[test]
fn defaults_apply_where_the_invariant_is_silent_and_labels_merge() {
    let text = format!(
        "{HEAD}defaults:\n  scope: cluster\n  interval: 1s\n  timeout: 2s\n  labels: {{suite: e2e, tier: a}}\n\
         invariants:\n  - name: x\n    description: d\n    owner: o\n    labels: {{tier: b}}\n    {HTTP}\n    {AVAILABILITY}\n"
    );
    let inv = parse_str("f.yaml", &text).unwrap().invariants.remove(0);
    assert_eq!(inv.scope, Scope::Cluster);
    assert_eq!(inv.interval, Duration::from_secs(1));
    assert_eq!(inv.timeout, Duration::from_secs(2));
    assert_eq!(inv.labels, labels(&[("suite", "e2e"), ("tier", "b")]));
}

#[test]
fn defaults_are_validated_once_with_defaults_paths() {
    let text = format!(
        "{HEAD}defaults:\n  interval: 100ms\n  timeout: 2s\n  retries: 3\n  scope: zone\ninvariants:\n  - name: x\n    description: d\n    owner: o\n    {HTTP}\n    {AVAILABILITY}\n"
    );
    assert_eq!(
        errors(&text),
        [
            "5:12: defaults.timeout: timeout 2s is more than 16 × interval 100ms (1s600ms); at most 16 samples of one invariant may be in flight, so raise the interval or lower the timeout",
            "6:3: defaults.retries: unknown field; expected one of scope, interval, timeout, labels",
            "7:10: defaults.scope: unknown value \"zone\"; expected one of node, cluster",
        ]
    );
}

#[test]
fn an_empty_defaults_section_is_allowed() {
    let text = format!(
        "{HEAD}defaults:\ninvariants:\n  - name: x\n    description: d\n    owner: o\n    {HTTP}\n    {AVAILABILITY}\n"
    );
    assert!(parse_str("f.yaml", &text).is_ok());
}

// ----- invariant fields --------------------------------------------------------------

#[test]
fn names_must_be_dns_labels() {
    let base = format!("{HTTP}\n{AVAILABILITY}");
    let long = "a".repeat(64);
    for bad in ["Foo_bar", "-a", "a-", "a.b", "\"\"", long.as_str()] {
        let text = invariant_file(&base).replace("name: x", &format!("name: {bad}"));
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(errs[0].contains("is not a DNS label"), "{bad}: {errs:?}");
    }
    for good in ["a", "'0'", "a-b", "0abc-9", &"a".repeat(63)] {
        let text = invariant_file(&base).replace("name: x", &format!("name: {good}"));
        assert!(parse_str("f.yaml", &text).is_ok(), "{good}");
    }
    let text = invariant_file(&base).replace("name: x", "name: 123");
    assert_eq!(
        errors(&text),
        [
            "4:11: invariants[0].name: expected a string, found the number 123; put it in quotes to use it as text"
        ]
    );
}

#[test]
fn description_and_owner_are_required_and_non_empty() {
    let text = invariant_file(&format!("{HTTP}\n{AVAILABILITY}"))
        .replace("    description: d\n", "    description:\n")
        .replace("    owner: o\n", "    owner: '  '\n");
    assert_eq!(
        errors(&text),
        [
            "5:5: invariants[0].description: required field has no value",
            "6:12: invariants[0].owner: must not be empty",
        ]
    );
}

#[test]
fn interval_and_timeout_ranges() {
    let rest = format!("{HTTP}\n{AVAILABILITY}");
    assert_cases(&[
        (
            &format!("interval: 50ms\n{rest}"),
            &["invariants[0].interval: must be between 100ms and 24h, found 50ms"],
        ),
        (
            &format!("interval: 25h\n{rest}"),
            &["invariants[0].interval: must be between 100ms and 24h, found 25h"],
        ),
        (
            &format!("interval: 5\n{rest}"),
            &[
                "invariants[0].interval: \"5\" is not a duration; write it with a unit, e.g. 5s or 500ms",
            ],
        ),
        (
            &format!("interval: 1.5\n{rest}"),
            &[
                "invariants[0].interval: \"1.5\" is not a duration; write it with a unit, e.g. 5s or 500ms",
            ],
        ),
        (
            &format!("interval: 5d\n{rest}"),
            &[
                "invariants[0].interval: \"5d\" is not a duration: unknown unit \"d\"; use ms, s, m or h, e.g. 1m30s",
            ],
        ),
        (
            &format!("timeout: 11m\n{rest}"),
            &["invariants[0].timeout: must be greater than 0 and at most 10m, found 11m"],
        ),
        (
            &format!("interval: 100ms\ntimeout: 1601ms\n{rest}"),
            &[
                "invariants[0].timeout: timeout 1s601ms is more than 16 × interval 100ms (1s600ms); at most 16 samples of one invariant may be in flight, so raise the interval or lower the timeout",
            ],
        ),
    ]);
    let inv = parse_invariant(&format!("interval: 100ms\ntimeout: 1600ms\n{rest}"));
    assert_eq!(inv.timeout, Duration::from_millis(1600));
    // Without a timeout anywhere, a short interval is its own timeout: no error.
    let inv = parse_invariant(&format!("interval: 200ms\n{rest}"));
    assert_eq!(inv.timeout, Duration::from_millis(200));
}

#[test]
fn labels_rules() {
    let rest = format!("{HTTP}\n{AVAILABILITY}");
    assert_cases(&[
        (
            &format!("labels: {{scope: x, invariant: y}}\n{rest}"),
            &[
                "invariants[0].labels.scope: \"scope\" is reserved: the agent sets invariant, owner, outcome, state, scope itself",
                "invariants[0].labels.invariant: \"invariant\" is reserved: the agent sets invariant, owner, outcome, state, scope itself",
            ],
        ),
        (
            &format!("labels: {{1abc: x, a.b: y}}\n{rest}"),
            &[
                "invariants[0].labels.1abc: \"1abc\" is not a valid label name (letters, digits and '_', not starting with a digit)",
                "invariants[0].labels.a.b: \"a.b\" is not a valid label name (letters, digits and '_', not starting with a digit)",
            ],
        ),
        (
            &format!("labels: [a]\n{rest}"),
            &["invariants[0].labels: expected a mapping, found a list"],
        ),
    ]);
    let inv = parse_invariant(&format!("labels: {{_ok: '', Tier2: 'true'}}\n{rest}"));
    assert_eq!(inv.labels, labels(&[("Tier2", "true"), ("_ok", "")]));
}

#[test]
fn unknown_invariant_fields_are_named() {
    assert_cases(&[(
        &format!("{HTTP}\n{AVAILABILITY}\nretries: 3"),
        &[
            "invariants[0].retries: unknown field; expected one of name, description, owner, scope, interval, timeout, labels, probe, condition, expectedDisruptions",
        ],
    )]);
}

#[test]
fn probe_and_condition_are_required() {
    assert_cases(&[(
        "",
        &[
            "invariants[0].probe: required field is missing",
            "invariants[0].condition: required field is missing",
        ],
    )]);
}

// ----- probes ------------------------------------------------------------------------

#[test]
fn probe_kind_rules() {
    assert_cases(&[
        (
            &format!("probe: {{}}\n{AVAILABILITY}"),
            &[
                "invariants[0].probe: no probe kind given; expected one of http, tcp, dns, metrics, apiserver, resource, events",
            ],
        ),
        (
            &format!(
                "probe: {{http: {{url: 'http://a/'}}, tcp: {{address: 'a:1'}}}}\n{AVAILABILITY}"
            ),
            &[
                "invariants[0].probe: more than one probe kind (http, tcp); give exactly one of http, tcp, dns, metrics, apiserver, resource, events",
            ],
        ),
        (
            &format!("probe: {{exec: {{}}, http: {{url: 'http://a/'}}}}\n{AVAILABILITY}"),
            &[
                "invariants[0].probe: unknown probe kind \"exec\"; expected one of http, tcp, dns, metrics, apiserver, resource, events",
            ],
        ),
        (
            &format!("probe: http\n{AVAILABILITY}"),
            &["invariants[0].probe: expected a mapping, found the string \"http\""],
        ),
        (
            &format!("probe: {{http: }}\n{AVAILABILITY}"),
            &["invariants[0].probe.http: expected a mapping, found an empty value"],
        ),
    ]);
}

#[test]
fn http_url_rules() {
    let p = "invariants[0].probe.http.url";
    assert_cases(&[
        (
            &with_probe("http: {}"),
            &[&format!("{p}: required field is missing")],
        ),
        (
            &with_probe("http: {url: 'ftp://a/'}"),
            &[&format!(
                "{p}: URL scheme must be http or https (lowercase), found \"ftp\""
            )],
        ),
        (
            &with_probe("http: {url: '/readyz'}"),
            &[&format!(
                "{p}: \"/readyz\" is not an absolute URL; start it with http:// or https://"
            )],
        ),
        (
            &with_probe("http: {url: 'http://u:p@a/'}"),
            &[&format!(
                "{p}: URL must not contain user information (user:password@); use bearerTokenFile for credentials"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a b/'}"),
            &[&format!(
                "{p}: \"http://a b/\" is not a valid URL: invalid uri character"
            )],
        ),
        (
            &with_probe("http: {url: ''}"),
            &[&format!("{p}: must not be empty")],
        ),
        (
            &with_probe("http: {url: 'HTTPS://a/'}"),
            &[&format!(
                "{p}: URL scheme must be http or https (lowercase), found \"https\""
            )],
        ),
    ]);
}

#[test]
fn http_method_and_headers() {
    let p = "invariants[0].probe.http";
    assert_cases(&[
        (
            &with_probe("http: {url: 'http://a/', method: post}"),
            &[&format!(
                "{p}.method: HTTP methods are case-sensitive; write POST"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', method: 'G ET'}"),
            &[&format!(
                "{p}.method: \"G ET\" is not a valid HTTP method, e.g. GET or HEAD"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', headers: {authorization: x}}"),
            &[&format!(
                "{p}.headers.authorization: do not put credentials in the file; set bearerTokenFile to a file holding the token"
            )],
        ),
        (
            &with_probe(
                "http: {url: 'http://a/', headers: {'bad name': x, X-A: \"a\\nb\", X-N: 5}}",
            ),
            &[
                &format!(
                    "{p}.headers.bad name: \"bad name\" is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
                &format!(
                    "{p}.headers.X-A: not a valid header value (visible ASCII characters, spaces and tabs only)"
                ),
                &format!(
                    "{p}.headers.X-N: expected a string, found the number 5; put it in quotes to use it as text"
                ),
            ],
        ),
    ]);
    let inv = parse_invariant(&with_probe("http: {url: 'http://a/', method: PROPFIND}"));
    let ProbeSpec::Http(h) = inv.probe else {
        panic!("not http")
    };
    assert_eq!(h.method.as_str(), "PROPFIND");
}

#[test]
fn tls_rules() {
    let p = "invariants[0].probe";
    assert_cases(&[
        (
            &with_probe("http: {url: 'http://a/', tls: {insecureSkipVerify: true}}"),
            &[&format!("{p}.http.tls: tls applies only to https:// URLs")],
        ),
        (
            &with_probe(
                "http: {url: 'https://a/', tls: {caFile: /ca.crt, insecureSkipVerify: true}}",
            ),
            &[&format!(
                "{p}.http.tls.insecureSkipVerify: caFile and insecureSkipVerify: true contradict each other; remove one"
            )],
        ),
        (
            &with_probe(
                "tcp: {address: 'a:1', tls: {serverName: 'bad name', insecureSkipVerify: yes, ca: x}}",
            ),
            &[
                &format!(
                    "{p}.tcp.tls.serverName: \"bad name\" is not a valid DNS name or IP address"
                ),
                &format!(
                    "{p}.tcp.tls.insecureSkipVerify: expected true or false, found the string \"yes\""
                ),
                &format!(
                    "{p}.tcp.tls.ca: unknown field; expected one of caFile, insecureSkipVerify, serverName"
                ),
            ],
        ),
    ]);
    let inv = parse_invariant(&with_probe(
        "http: {url: 'https://a/', tls: {caFile: /ca.crt, insecureSkipVerify: false}}",
    ));
    let ProbeSpec::Http(h) = inv.probe else {
        panic!("not http")
    };
    assert_eq!(h.tls.ca_file, Some(PathBuf::from("/ca.crt")));
}

#[test]
fn expected_status_rules() {
    let p = "invariants[0].probe.http.expectedStatus";
    assert_cases(&[
        (
            &with_probe(
                "http: {url: 'http://a/', expectedStatus: [99, '2xx', true, '100-600', ' 200 - 204 ']}",
            ),
            &[
                &format!("{p}[0]: 99 is not an HTTP status code (100-599)"),
                &format!("{p}[1]: \"2xx\" is not a status code or range; write 200 or \"200-299\""),
                &format!(
                    "{p}[2]: expected a status code or range, found the boolean true, e.g. 200 or \"200-299\""
                ),
                &format!("{p}[3]: 600 is not an HTTP status code (100-599)"),
            ],
        ),
        (
            &with_probe("http: {url: 'http://a/', expectedStatus: []}"),
            &[&format!("{p}: must list at least one status code or range")],
        ),
        (
            &with_probe("http: {url: 'http://a/', expectedStatus: 200}"),
            &[&format!(
                "{p}: expected a list, found the number 200, e.g. [200] or [\"200-299\"]"
            )],
        ),
    ]);
}

#[test]
fn body_value_pointer_connection_and_body_size() {
    let p = "invariants[0].probe.http";
    assert_cases(&[
        (
            &with_probe("http: {url: 'http://a/', body: {}}"),
            &[&format!("{p}.body: give exactly one of contains, regex")],
        ),
        (
            &with_probe("http: {url: 'http://a/', body: {contains: ''}}"),
            &[&format!("{p}.body.contains: must not be empty")],
        ),
        (
            &with_probe("http: {url: 'http://a/', body: {regex: 'a['}}"),
            &[&format!(
                "{p}.body.regex: invalid regex: unclosed character class"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', body: {equals: x}}"),
            &[&format!(
                "{p}.body.equals: unknown field; expected one of contains, regex"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', valuePointer: status/replicas}"),
            &[&format!(
                "{p}.valuePointer: \"status/replicas\" is not a JSON pointer; it must be empty or start with \"/\", e.g. /status/replicas"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', valuePointer: /a~2}"),
            &[&format!(
                "{p}.valuePointer: \"/a~2\" is not a JSON pointer: \"~\" must be followed by 0 (for ~) or 1 (for /)"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', maxBodyBytes: 67108865}"),
            &[&format!(
                "{p}.maxBodyBytes: must be between 1 and 67108864 (64 MiB), found 67108865"
            )],
        ),
        (
            &with_probe("http: {url: 'http://a/', maxBodyBytes: 1.5}"),
            &[&format!(
                "{p}.maxBodyBytes: expected a whole number, found the number 1.5"
            )],
        ),
    ]);
    let inv = parse_invariant(&with_probe(
        "http: {url: 'http://a/', body: {contains: ok}, valuePointer: '', maxBodyBytes: 67108864, connection: reused}",
    ));
    let ProbeSpec::Http(h) = inv.probe else {
        panic!("not http")
    };
    assert_eq!(h.body_match, Some(BodyMatch::Substring("ok".into())));
    assert_eq!(h.value_pointer, Some(String::new()));
    assert_eq!(h.max_body_bytes, 67_108_864);
    let inv = parse_invariant(&with_probe(
        "http: {url: 'http://a/', maxBodyBytes: 1e6, valuePointer: /a~0b~1c}",
    ));
    let ProbeSpec::Http(h) = inv.probe else {
        panic!("not http")
    };
    assert_eq!(h.max_body_bytes, 1_000_000);
}

#[test]
fn expected_disruptions_are_regexes_on_test_names() {
    let p = "invariants[0].expectedDisruptions";
    assert_cases(&[
        (
            &format!("{HTTP}\n{AVAILABILITY}\nexpectedDisruptions: ['[Disruptive', '', 3, 'ok']"),
            &[
                &format!(
                    "{p}[0]: invalid regex: unclosed character class; patterns are regular \
                     expressions searched in the full test name, so escape brackets: '\\[Disruptive\\]'"
                ),
                &format!("{p}[1]: must not be empty"),
                &format!(
                    "{p}[2]: expected a string, found the number 3; put it in quotes to use it as text"
                ),
            ],
        ),
        (
            &format!("{HTTP}\n{AVAILABILITY}\nexpectedDisruptions: '[Disruptive]'"),
            &[&format!(
                "{p}: expected a list, found the string \"[Disruptive]\""
            )],
        ),
    ]);
    let inv = parse_invariant(&format!(
        "{HTTP}\n{AVAILABILITY}\nexpectedDisruptions: ['\\[Disruptive\\]', 'should survive a (reboot|restart)']"
    ));
    let names: Vec<&str> = inv
        .expected_disruptions
        .iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(
        names,
        [r"\[Disruptive\]", "should survive a (reboot|restart)"]
    );
    let [disruptive, reboot] = &inv.expected_disruptions[..] else {
        panic!("two patterns")
    };
    assert!(disruptive.matches("[sig-node] Nodes should drain [Disruptive] [Serial]"));
    assert!(!disruptive.matches("[sig-node] Nodes should drain D"));
    assert!(reboot.matches("[sig-cloud] nodes should survive a reboot quickly"));
    assert!(
        parse_invariant(&format!("{HTTP}\n{AVAILABILITY}"))
            .expected_disruptions
            .is_empty()
    );
}

#[test]
fn expected_disruption_errors_carry_file_line_and_column() {
    let text = invariant_file(&format!(
        "{HTTP}\n{AVAILABILITY}\nexpectedDisruptions:\n  - ok\n  - '(unclosed'"
    ));
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "11:9: invariants[0].expectedDisruptions[1]: invalid regex: unclosed group"
        ),
        "{e:?}"
    );
}

#[test]
fn tcp_address_rules() {
    let p = "invariants[0].probe.tcp.address";
    let example = "write host:port, e.g. 10.0.0.1:6443, kubernetes.default:443 or [::1]:443";
    assert_cases(&[
        (
            &with_probe("tcp: {}"),
            &[&format!("{p}: required field is missing")],
        ),
        (
            &with_probe("tcp: {address: host}"),
            &[&format!("{p}: \"host\" has no port; {example}")],
        ),
        (
            &with_probe("tcp: {address: '::1:443'}"),
            &[&format!(
                "{p}: \"::1:443\": an IPv6 address needs brackets, e.g. [::1]:443"
            )],
        ),
        (
            &with_probe("tcp: {address: 'h:0'}"),
            &[&format!("{p}: \"h:0\": port must be 1-65535, found \"0\"")],
        ),
        (
            &with_probe("tcp: {address: 'h:70000'}"),
            &[&format!(
                "{p}: \"h:70000\": port must be 1-65535, found \"70000\""
            )],
        ),
        (
            &with_probe("tcp: {address: '[nope]:1'}"),
            &[&format!(
                "{p}: \"[nope]:1\": \"[nope]\" is not an IPv6 address"
            )],
        ),
        (
            &with_probe("tcp: {address: 'bad!host:80'}"),
            &[&format!(
                "{p}: \"bad!host:80\": host \"bad!host\" is not valid: label \"bad!host\" may only hold letters, digits, '-' and '_'"
            )],
        ),
    ]);
    for good in [
        "10.0.0.1:6443",
        "kubernetes.default:443",
        "[::1]:443",
        "localhost:1",
    ] {
        let inv = parse_invariant(&with_probe(&format!("tcp: {{address: '{good}'}}")));
        assert_eq!(
            inv.probe,
            ProbeSpec::Tcp(TcpProbeSpec {
                address: good.into(),
                tls: None
            })
        );
    }
    let inv = parse_invariant(&with_probe("tcp: {address: 'a:1', tls: {}}"));
    assert_eq!(
        inv.probe,
        ProbeSpec::Tcp(TcpProbeSpec {
            address: "a:1".into(),
            tls: Some(TlsSpec::default())
        })
    );
}

#[test]
fn dns_rules() {
    let p = "invariants[0].probe.dns";
    assert_cases(&[
        (
            &with_probe("dns: {name: 'a..b'}"),
            &[&format!(
                "{p}.name: \"a..b\" is not a DNS name: it has an empty label (\"..\")"
            )],
        ),
        (
            &with_probe("dns: {name: a, server: 'dns:53'}"),
            &[&format!(
                "{p}.server: \"dns:53\" is not an IP address with an optional port, e.g. 10.96.0.10, 10.96.0.10:53 or [fd00::10]:53"
            )],
        ),
        (
            &with_probe("dns: {name: a, minAnswers: -1}"),
            &[&format!("{p}.minAnswers: must be at least 0, found -1")],
        ),
        (
            &with_probe("dns: {name: a, expectedAddresses: [10.0.0.1, 1.2.3.400, 7]}"),
            &[
                &format!("{p}.expectedAddresses[1]: \"1.2.3.400\" is not an IP address"),
                &format!(
                    "{p}.expectedAddresses[2]: expected a string, found the number 7; put it in quotes to use it as text"
                ),
            ],
        ),
    ]);
    let inv = parse_invariant(&with_probe(
        "dns: {name: kubernetes.default., server: '[fd00::10]:5353', minAnswers: 0}",
    ));
    assert_eq!(
        inv.probe,
        ProbeSpec::Dns(DnsProbeSpec {
            name: "kubernetes.default.".into(),
            server: Some("[fd00::10]:5353".parse().unwrap()),
            min_answers: 0,
            expected_addresses: vec![],
        })
    );
    let inv = parse_invariant(&with_probe("dns: {name: a, server: 'fd00::10'}"));
    let ProbeSpec::Dns(d) = inv.probe else {
        panic!("not dns")
    };
    assert_eq!(d.server, Some("[fd00::10]:53".parse().unwrap()));
    assert_eq!(d.min_answers, 1);
}

#[test]
fn metrics_rules() {
    let p = "invariants[0].probe.metrics";
    assert_cases(&[
        (
            &with_probe(
                "metrics: {url: 'http://a/', series: up, body: {contains: x}, valuePointer: /a, expectedStatus: [200]}",
            ),
            &[
                &format!(
                    "{p}.body: not used by metrics probes (the scrape must answer 2xx and the value comes from series); remove body"
                ),
                &format!(
                    "{p}.valuePointer: not used by metrics probes (the scrape must answer 2xx and the value comes from series); remove valuePointer"
                ),
                &format!(
                    "{p}.expectedStatus: not used by metrics probes (the scrape must answer 2xx and the value comes from series); remove expectedStatus"
                ),
            ],
        ),
        (
            &with_probe("metrics: {url: 'http://a/', series: 'up{job}', extra: 1}"),
            &[
                &format!(
                    "{p}.series: invalid series selector at character 7: expected =, !=, =~ or !~ after label name \"job\""
                ),
                &format!(
                    "{p}.extra: unknown field; expected one of url, series, aggregation, histogramQuantile, headers, bearerTokenFile, tls, connection, maxBodyBytes, followRedirects"
                ),
            ],
        ),
        (
            &with_probe("metrics: {url: 'http://a/'}"),
            &[&format!("{p}.series: required field is missing")],
        ),
    ]);
    let inv = parse_invariant(&with_probe(
        "metrics: {url: 'http://a/m', series: up, aggregation: count, connection: new, maxBodyBytes: 10}",
    ));
    let ProbeSpec::Metrics(m) = inv.probe else {
        panic!("not metrics")
    };
    assert_eq!(m.aggregation, Aggregation::Count);
    assert_eq!(m.http.connection, ConnectionMode::New);
    assert_eq!(m.http.max_body_bytes, 10);
    assert_eq!(
        m.selector,
        MetricSelector {
            metric: "up".into(),
            matchers: vec![]
        }
    );
}

// ----- conditions --------------------------------------------------------------------

#[test]
fn condition_kind_rules() {
    let p = "invariants[0].condition";
    assert_cases(&[
        (
            &with_condition("{}"),
            &[&format!(
                "{p}: no condition kind given; expected one of availability, latency, threshold, increase"
            )],
        ),
        (
            &with_condition("errors: {max: 0}"),
            &[&format!(
                "{p}: unknown condition kind \"errors\"; expected one of availability, latency, threshold, increase"
            )],
        ),
    ]);
}

#[test]
fn availability_rules() {
    let p = "invariants[0].condition.availability";
    assert_cases(&[
        (
            &with_condition("availability: {window: 1m}"),
            &[&format!("{p}.target: required field is missing")],
        ),
        (
            &with_condition("availability: {target: 0}"),
            &[&format!(
                "{p}.target: must be a percentage greater than 0 and at most 100, found 0"
            )],
        ),
        (
            &with_condition("availability: {target: '99%'}"),
            &[&format!(
                "{p}.target: expected a number, found the string \"99%\""
            )],
        ),
        (
            &with_condition("availability: {target: .nan}"),
            &[&format!("{p}.target: must be a finite number")],
        ),
        (
            &with_condition("availability: {target: 99, window: 0s}"),
            &[&format!("{p}.window: must be greater than 0")],
        ),
        (
            &format!(
                "interval: 10m\n{}",
                with_condition("availability: {target: 99}")
            ),
            &[&format!(
                "{p}.window: window defaults to 5m, which is shorter than the interval 10m; set a window of at least the interval"
            )],
        ),
    ]);
    let inv = parse_invariant(&with_condition("availability: {target: 100, window: 5s}"));
    assert_eq!(
        inv.condition,
        Condition::Availability {
            target_percent: 100.0,
            window: Duration::from_secs(5)
        }
    );
}

#[test]
fn latency_rules() {
    let p = "invariants[0].condition.latency";
    assert_cases(&[
        // Sorted by position: the missing field is reported at the mapping's start.
        (
            &with_condition("latency: {quantile: 0}"),
            &[
                &format!("{p}.max: required field is missing"),
                &format!(
                    "{p}.quantile: must be greater than 0 and at most 1 (e.g. 0.99 for p99), found 0"
                ),
            ],
        ),
        (
            &with_condition("latency: {max: 0s}"),
            &[&format!("{p}.max: must be greater than 0")],
        ),
        (
            &with_condition("latency: {max: 1s, window: 1s}"),
            &[&format!(
                "{p}.window: window 1s is shorter than the interval 5s; a window must hold at least one sample"
            )],
        ),
    ]);
    let inv = parse_invariant(&with_condition("latency: {quantile: 1, max: 1.5s}"));
    assert_eq!(
        inv.condition,
        Condition::Latency {
            quantile: 1.0,
            max: Duration::from_millis(1500),
            window: DEFAULT_WINDOW
        }
    );
}

#[test]
fn threshold_rules() {
    let p = "invariants[0].condition.threshold";
    assert_cases(&[
        (
            &with_condition("threshold: {for: 1s}"),
            &[&format!("{p}: give min, max or both")],
        ),
        (
            &with_condition("threshold: {min: 10, max: 5}"),
            &[&format!("{p}.max: max 5 is less than min 10")],
        ),
        (
            &with_condition("threshold: {max: .inf}"),
            &[&format!("{p}.max: must be a finite number")],
        ),
        (
            &with_condition("threshold: {max: 1, for: soon}"),
            &[&format!(
                "{p}.for: \"soon\" is not a duration; write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s"
            )],
        ),
    ]);
    let inv = parse_invariant(&with_condition("threshold: {min: -1.5}"));
    assert_eq!(
        inv.condition,
        Condition::Threshold {
            min: Some(-1.5),
            max: None,
            for_duration: Duration::ZERO
        }
    );
    let inv = parse_invariant(&with_condition("threshold: {min: 3, max: 3}"));
    assert_eq!(
        inv.condition,
        Condition::Threshold {
            min: Some(3.0),
            max: Some(3.0),
            for_duration: Duration::ZERO
        }
    );
}

#[test]
fn increase_rules() {
    let p = "invariants[0].condition.increase";
    assert_cases(&[
        (
            &with_condition("increase: {max: -1}"),
            &[&format!("{p}.max: must be at least 0, found -1")],
        ),
        (
            &with_condition("increase: {window: 1s}"),
            &[&format!(
                "{p}.window: window 1s is shorter than the interval 5s; a window must hold at least one sample"
            )],
        ),
    ]);
    let inv = parse_invariant(&with_condition("increase: {}"));
    assert_eq!(
        inv.condition,
        Condition::Increase {
            max: 0.0,
            window: None
        }
    );
    let inv = parse_invariant(&format!(
        "interval: 1h\n{}",
        with_condition("increase: {max: 2}")
    ));
    assert_eq!(
        inv.condition,
        Condition::Increase {
            max: 2.0,
            window: None
        }
    );
}

// ----- several files -----------------------------------------------------------------

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn names_are_unique_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let one = invariant_file(&format!("{HTTP}\n{AVAILABILITY}"));
    let a = write(&dir, "a.yaml", &one);
    let b = write(&dir, "b.yaml", &one.replace("  - name: x", "  - name: y\n    description: d\n    owner: o\n    probe: {tcp: {address: 'a:1'}}\n    condition: {increase: {}}\n  - name: x"));
    let err = load_files(&[a.clone(), b.clone()]).unwrap_err();
    let (a, b) = (a.display().to_string(), b.display().to_string());
    assert_eq!(
        err.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!(
            "{b}:9:11: invariants[1].name: duplicate name \"x\", first defined at {a}:4:5"
        )]
    );
}

#[test]
fn files_load_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let one = invariant_file(&format!("{HTTP}\n{AVAILABILITY}"));
    let a = write(&dir, "a.yaml", &one);
    let b = write(&dir, "b.yaml", &one.replace("name: x", "name: y"));
    let set = load_files(&[b.clone(), a]).unwrap();
    let names: Vec<&str> = set.invariants.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["y", "x"]);
    assert_eq!(set.invariants[0].source, format!("{}:4:5", b.display()));
}

#[test]
fn unreadable_and_non_utf8_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"apiVersion: x\nkind: \xff\n").unwrap();
    let err = load_files(&[missing.clone(), binary.clone()]).unwrap_err();
    let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.contains(&format!(
            "{}:2:7: the file is not UTF-8 text",
            binary.display()
        )),
        "{lines:?}"
    );
    let missing_line = lines
        .iter()
        .find(|l| l.starts_with(&format!("{}: cannot read the file: ", missing.display())));
    assert!(
        missing_line.is_some_and(|l| l.contains("os error")),
        "{lines:?}"
    );
}

#[test]
fn no_files_is_an_error() {
    assert_eq!(
        load_files(&[]).unwrap_err().to_string(),
        "no invariant files given\n1 error in invariant files"
    );
}

#[test]
fn errors_display_one_per_line_with_a_count() {
    let err = parse_str("f.yaml", "kind: InvariantSet\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "f.yaml:1:1: apiVersion: required field is missing\n\
         f.yaml:1:1: invariants: required field is missing\n\
         2 errors in invariant files"
    );
}

#[test]
fn yaml_features_keep_positions() {
    // Anchors and merge keys are ordinary YAML; values keep the position they are used at.
    let text = format!(
        "{HEAD}x-probe: &p {{http: {{url: 'http://a/'}}}}\ninvariants:\n  - name: a\n    description: d\n    owner: o\n    probe: *p\n    condition: {{availability: {{target: 200}}}}\n"
    );
    assert_eq!(
        errors(&text),
        [
            "3:1: x-probe: unknown field; expected one of apiVersion, kind, defaults, invariants",
            "9:40: invariants[0].condition.availability.target: must be a percentage greater than 0 and at most 100, found 200",
        ]
    );
}

// ----- Kubernetes probes -----------------------------------------------------------------

#[test]
fn apiserver_probes_parse_with_defaults() {
    let inv = parse_invariant(&with_probe("apiserver: {path: /readyz}"));
    assert_eq!(
        inv.probe,
        ProbeSpec::Apiserver(ApiserverProbeSpec {
            path: "/readyz".into(),
            connection: ConnectionMode::Reused,
            body_match: None,
            series: None,
            aggregation: Aggregation::Sum,
            histogram_quantile: None,
            max_body_bytes: DEFAULT_HTTP_MAX_BODY_BYTES,
        })
    );
    assert!(inv.probe.needs_kubernetes());
    assert_eq!(inv.probe.target(), "/readyz");

    let inv = parse_invariant(&with_probe(
        "apiserver: {path: '/api/v1/namespaces/default?resourceVersion=0', connection: new, body: {contains: '\"kind\":\"Namespace\"'}}",
    ));
    let ProbeSpec::Apiserver(a) = &inv.probe else {
        panic!("{:?}", inv.probe)
    };
    assert_eq!(a.path, "/api/v1/namespaces/default?resourceVersion=0");
    assert_eq!(a.connection, ConnectionMode::New);
    assert_eq!(
        a.body_match,
        Some(BodyMatch::Substring("\"kind\":\"Namespace\"".into()))
    );

    let inv = parse_invariant(&with_probe(
        "apiserver: {path: /metrics, series: 'apiserver_request_total{code=~\"5..\"}', aggregation: max}",
    ));
    let ProbeSpec::Apiserver(a) = &inv.probe else {
        panic!("{:?}", inv.probe)
    };
    assert_eq!(a.aggregation, Aggregation::Max);
    assert_eq!(a.max_body_bytes, DEFAULT_METRICS_MAX_BODY_BYTES);
    assert_eq!(
        inv.probe.target(),
        "/metrics apiserver_request_total{code=~\"5..\"}"
    );
}

#[test]
fn apiserver_probe_errors() {
    assert_cases(&[
        (
            &with_probe("apiserver: {}"),
            &["invariants[0].probe.apiserver.path: required field is missing"],
        ),
        (
            &with_probe("apiserver: {path: readyz}"),
            &[
                "invariants[0].probe.apiserver.path: \"readyz\" is not an API server path; start it with a single /, e.g. /readyz or /api/v1/namespaces/default",
            ],
        ),
        (
            &with_probe("apiserver: {path: 'https://10.0.0.1:6443/readyz'}"),
            &[
                "invariants[0].probe.apiserver.path: \"https://10.0.0.1:6443/readyz\" is a URL; give only the path (e.g. /readyz): the server comes from the kubeconfig or the pod's ServiceAccount",
            ],
        ),
        (
            &with_probe("apiserver: {path: '/readyz#x'}"),
            &["invariants[0].probe.apiserver.path: \"/readyz#x\" has a fragment (#); remove it"],
        ),
        (
            &with_probe("apiserver: {path: /readyz, aggregation: max}"),
            &[
                "invariants[0].probe.apiserver.aggregation: aggregation applies only with series (a metrics scrape); add series or remove aggregation",
            ],
        ),
        (
            &with_probe("apiserver: {path: /readyz, connection: fresh, url: x}"),
            &[
                "invariants[0].probe.apiserver.connection: unknown value \"fresh\"; expected one of new, reused",
                "invariants[0].probe.apiserver.url: unknown field; expected one of path, connection, body, series, aggregation, histogramQuantile, maxBodyBytes",
            ],
        ),
        (
            &with_probe("apiserver: {path: /metrics, series: 'up{'}"),
            &[
                "invariants[0].probe.apiserver.series: invalid series selector at character 4: expected a label name (letters, digits and '_', not starting with a digit) or '}'",
            ],
        ),
    ]);
}

const NODES_NOT_READY: &str =
    r#"!object.status.conditions.exists(c, c.type == "Ready" && c.status == "True")"#;

#[test]
fn resource_probes_parse_and_compile_their_expression() {
    let inv = parse_invariant(&format!(
        "probe:\n  resource:\n    apiVersion: v1\n    kind: Node\n    expression: '{NODES_NOT_READY}'\ncondition: {{threshold: {{max: 0}}}}"
    ));
    let ProbeSpec::Resource(r) = &inv.probe else {
        panic!("{:?}", inv.probe)
    };
    assert_eq!(
        (r.api_version.as_str(), r.kind.as_str(), &r.namespace),
        ("v1", "Node", &None)
    );
    assert_eq!(r.expression.as_str(), NODES_NOT_READY);
    assert_eq!(r.aggregation, ResourceAggregation::Sum);
    assert_eq!(
        inv.probe.target(),
        format!("v1 Node: sum({NODES_NOT_READY})")
    );

    let inv = parse_invariant(
        "probe:\n  resource:\n    apiVersion: apps/v1\n    kind: Deployment\n    namespace: kube-system\n    labelSelector: 'k8s-app in (kube-dns, coredns)'\n    fieldSelector: metadata.name!=x\n    expression: object.status.replicas - object.status.readyReplicas\n    aggregation: max\ncondition: {threshold: {max: 0}}",
    );
    let ProbeSpec::Resource(r) = &inv.probe else {
        panic!("{:?}", inv.probe)
    };
    assert_eq!(r.namespace.as_deref(), Some("kube-system"));
    assert_eq!(
        r.label_selector.as_deref(),
        Some("k8s-app in (kube-dns, coredns)")
    );
    assert_eq!(r.field_selector.as_deref(), Some("metadata.name!=x"));
    assert_eq!(r.aggregation, ResourceAggregation::Max);
    assert_eq!(
        r.watch_description(),
        "apps/v1 Deployment in kube-system -l k8s-app in (kube-dns, coredns) --field-selector metadata.name!=x"
    );
}

#[test]
fn resource_probe_errors() {
    assert_cases(&[
        (
            &with_probe("resource: {}"),
            &[
                "invariants[0].probe.resource.apiVersion: required field is missing",
                "invariants[0].probe.resource.kind: required field is missing",
                "invariants[0].probe.resource.expression: required field is missing",
            ],
        ),
        (
            &with_probe("resource: {apiVersion: core/v1, kind: node, expression: 'true'}"),
            &[
                "invariants[0].probe.resource.apiVersion: \"core/v1\" names the core group, which has no name; write v1",
                "invariants[0].probe.resource.kind: \"node\" is not a kind; kinds are CamelCase names such as Node, Pod or Deployment, e.g. Node",
            ],
        ),
        (
            &with_probe("resource: {apiVersion: 'apps/V1', kind: Deployment, expression: 'true'}"),
            &[
                "invariants[0].probe.resource.apiVersion: \"apps/V1\" is not an API version; write v1 or group/version, e.g. apps/v1 or discovery.k8s.io/v1",
            ],
        ),
        (
            &with_probe(
                "resource: {apiVersion: v1, kind: Pod, namespace: Kube_System, expression: 'true'}",
            ),
            &[
                "invariants[0].probe.resource.namespace: \"Kube_System\" is not a namespace name (lowercase letters, digits and '-', at most 63)",
            ],
        ),
        (
            &with_probe(
                "resource: {apiVersion: v1, kind: Pod, labelSelector: 'app=web;x', fieldSelector: 'status.phase', expression: 'true'}",
            ),
            &[
                "invariants[0].probe.resource.labelSelector: invalid label selector: \"app=web;x\" expected \",\" at character 8, found ';'",
                "invariants[0].probe.resource.fieldSelector: invalid field selector: \"status.phase\" term \"status.phase\" at character 1 has no operator; write field=value, field==value or field!=value",
            ],
        ),
        (
            &with_probe(
                "resource: {apiVersion: v1, kind: Node, expression: 'object.status.conditions.exists(c, c.type == )', aggregation: avg}",
            ),
            &[
                "invariants[0].probe.resource.expression: invalid CEL expression: Syntax error: mismatched input ')' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} at character 46",
                "invariants[0].probe.resource.aggregation: unknown value \"avg\"; expected one of sum, max, min, count, cumulativeSum",
            ],
        ),
    ]);
}

#[test]
fn a_bad_expression_is_reported_at_its_position_in_the_file() {
    let text = invariant_file(
        "probe:\n  resource:\n    apiVersion: v1\n    kind: Node\n    expression: 'object.x +'\ncondition: {threshold: {max: 0}}",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "11:21: invariants[0].probe.resource.expression: invalid CEL expression: "
        ),
        "{errors:?}"
    );
}

#[test]
fn events_probes_parse() {
    let inv = parse_invariant(
        "probe: {events: {measure: maxRepeats, excludeReasons: [BackOff]}}\ncondition: {threshold: {max: 20}}",
    );
    assert_eq!(
        inv.probe,
        ProbeSpec::Events(EventsProbeSpec {
            measure: EventsMeasure::MaxRepeats,
            namespace: None,
            reasons: vec![],
            exclude_reasons: vec!["BackOff".into()],
        })
    );
    assert_eq!(inv.probe.target(), "maxRepeats events, excluding BackOff");
    let inv = parse_invariant(
        "probe: {events: {measure: warnings, namespace: kube-system, reasons: [FailedMount, Evicted]}}\ncondition: {increase: {max: 0}}",
    );
    assert_eq!(
        inv.probe.target(),
        "warnings events in kube-system, reasons FailedMount, Evicted"
    );
}

#[test]
fn events_probe_errors() {
    assert_cases(&[
        (
            &with_probe("events: {}"),
            &["invariants[0].probe.events.measure: required field is missing"],
        ),
        (
            &with_probe("events: {measure: warnings}"),
            &[
                "invariants[0].probe.events.reasons: required with measure: warnings; list the reasons to count, e.g. [FailedMount, BackOff]",
            ],
        ),
        (
            &with_probe("events: {measure: warnings, reasons: []}"),
            &["invariants[0].probe.events.reasons: must list at least one reason"],
        ),
        (
            &with_probe("events: {measure: repeats, reasons: [Back Off, X, X, 3]}"),
            &[
                "invariants[0].probe.events.measure: unknown value \"repeats\"; expected one of maxRepeats, warnings",
                "invariants[0].probe.events.reasons[0]: \"Back Off\" is not an event reason (a single word such as BackOff)",
                "invariants[0].probe.events.reasons[2]: \"X\" is listed twice",
                "invariants[0].probe.events.reasons[3]: expected a string, found the number 3; put it in quotes to use it as text",
            ],
        ),
        (
            &with_probe(
                "events: {measure: maxRepeats, reasons: [BackOff], excludeReasons: [BackOff]}",
            ),
            &[
                "invariants[0].probe.events.excludeReasons: \"BackOff\" is also in reasons; a reason cannot be both counted and excluded",
            ],
        ),
    ]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        let _ = parse_str("p.yaml", &text);
    }

    #[test]
    fn schema_shaped_noise_never_panics(
        tokens in proptest::collection::vec(
            proptest::sample::select(vec![
                "apiVersion: invariant-agent/v1alpha1\n", "kind: InvariantSet\n", "invariants:\n",
                "  - name: a\n", "    probe:\n", "      http:\n", "        url: http://a/\n",
                "      metrics: {series: 'up{a=~\"(\"}'}\n", "    condition:\n",
                "      availability: {target: 99}\n", "      latency: {max: 1s}\n", "interval: 1.5\n",
                "timeout: 99999999999999999999h\n", "  labels: {__a: 1}\n", "- ", "{", "}", "[", "]",
                ": ", "&a ", "*a ", "<<: ", "~", ".nan", "-1e999", "'", "\"", "\n", "  ", "\t", "#",
            ]),
            0..40,
        )
    ) {
        let text: String = tokens.concat();
        let _ = parse_str("p.yaml", &text);
    }
}

/// The hash is `sha256sum` of the bytes (of all files, concatenated), and what is
/// loaded is what was hashed; an unreadable file has no hash and is a load error.
#[test]
fn file_contents_hash_what_they_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.yaml");
    std::fs::write(&path, "abc").unwrap();
    let contents = FileContents::read(std::slice::from_ref(&path));
    assert_eq!(
        contents.hash().as_deref(),
        // sha256("abc"), FIPS 180-2 example.
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert!(contents.load().is_err(), "\"abc\" is no invariant file");
    std::fs::write(&path, invariant_file(&format!("{HTTP}\n{AVAILABILITY}"))).unwrap();
    let contents = FileContents::read(std::slice::from_ref(&path));
    std::fs::write(&path, "replaced after reading").unwrap();
    assert_eq!(contents.load().unwrap().invariants.len(), 1);
    let missing = FileContents::read(&[dir.path().join("missing.yaml")]);
    assert_eq!(missing.hash(), None);
    let error = missing.load().unwrap_err().to_string();
    assert!(
        error.contains("missing.yaml: cannot read the file"),
        "{error}"
    );
}

/// Where an invariant is declared is not part of its spec; every other field is.
#[test]
fn same_spec_ignores_only_the_source() {
    let a = parse_invariant(&format!("{HTTP}\n{AVAILABILITY}"));
    let mut b = a.clone();
    b.source = "elsewhere.yaml:40:5".into();
    assert!(a.same_spec(&b));
    b.description.push('!');
    assert!(!a.same_spec(&b));
    let mut c = a.clone();
    c.labels.insert("team".into(), "x".into());
    assert!(!a.same_spec(&c));
}

// ----- histogramQuantile -----------------------------------------------------------------

const SLO_SERIES: &str = r#"apiserver_request_duration_seconds_bucket{verb!~"WATCH|CONNECT"}"#;

#[test]
fn histogram_quantile_parses_with_defaults_and_reads_back_as_promql() {
    let inv = parse_invariant(&format!(
        "probe:\n  apiserver:\n    path: /metrics\n    series: '{SLO_SERIES}'\n    histogramQuantile: {{by: [resource, verb, scope]}}\ncondition: {{threshold: {{max: 1}}}}"
    ));
    let ProbeSpec::Apiserver(a) = &inv.probe else {
        panic!("{:?}", inv.probe)
    };
    assert_eq!(
        a.histogram_quantile,
        Some(HistogramQuantileSpec {
            quantile: 0.99,
            window: Duration::from_secs(300),
            by: vec!["resource".into(), "verb".into(), "scope".into()],
        })
    );
    // The worst group is the default: a sum of quantiles means nothing.
    assert_eq!(a.aggregation, Aggregation::Max);
    assert_eq!(
        inv.probe.target(),
        "/metrics max(histogram_quantile(0.99, sum by (le, resource, verb, scope) \
         (increase(apiserver_request_duration_seconds_bucket{verb!~\"WATCH|CONNECT\"}[5m]))))"
    );

    let inv = parse_invariant(&with_probe(
        "metrics: {url: 'http://a/m', series: x_bucket, aggregation: min, histogramQuantile: {quantile: 0.5, window: 1m}}",
    ));
    let ProbeSpec::Metrics(m) = &inv.probe else {
        panic!("{:?}", inv.probe)
    };
    assert_eq!(m.aggregation, Aggregation::Min);
    assert_eq!(
        m.histogram_quantile,
        Some(HistogramQuantileSpec {
            quantile: 0.5,
            window: Duration::from_secs(60),
            by: vec![],
        })
    );
    assert_eq!(
        inv.probe.target(),
        "http://a/m histogram_quantile(0.5, sum by (le) (increase(x_bucket[1m])))"
    );
}

#[test]
fn histogram_quantile_errors_name_the_field_and_the_fix() {
    let p = "invariants[0].probe.metrics";
    let metrics = |fields: &str| with_probe(&format!("metrics: {{url: 'http://a/m', {fields}}}"));
    assert_cases(&[
        (
            &metrics("series: x_bucket, histogramQuantile: {quantile: 0}"),
            &[&format!(
                "{p}.histogramQuantile.quantile: must be greater than 0 and at most 1 (e.g. 0.99 for p99), found 0"
            )],
        ),
        (
            &metrics("series: x_bucket, histogramQuantile: {quantile: 1.5}"),
            &[&format!(
                "{p}.histogramQuantile.quantile: must be greater than 0 and at most 1 (e.g. 0.99 for p99), found 1.5"
            )],
        ),
        (
            // The test invariant's interval is the default, 5s.
            &metrics("series: x_bucket, histogramQuantile: {window: 1s}"),
            &[&format!(
                "{p}.histogramQuantile.window: window 1s is shorter than the interval 5s; a window must hold at least one sample"
            )],
        ),
        (
            &metrics("series: x_bucket, histogramQuantile: {by: [verb, le, verb, 1x], extra: 1}"),
            &[
                &format!(
                    "{p}.histogramQuantile.by[1]: le is always kept (the buckets are grouped by it); remove it"
                ),
                &format!("{p}.histogramQuantile.by[2]: \"verb\" is listed twice"),
                &format!(
                    "{p}.histogramQuantile.by[3]: \"1x\" is not a label name (letters, digits and '_', not starting with a digit)"
                ),
                &format!(
                    "{p}.histogramQuantile.extra: unknown field; expected one of quantile, window, by"
                ),
            ],
        ),
        (
            &metrics("series: 'x_count{le=\"1\"}', histogramQuantile: {}"),
            &[
                &format!(
                    "{p}.series: series selects \"x_count\", but histogramQuantile reads a histogram's bucket series: name the metric with its _bucket suffix (e.g. apiserver_request_duration_seconds_bucket)"
                ),
                &format!(
                    "{p}.series: a matcher on le drops buckets and skews the quantile; remove it (select whole histograms)"
                ),
            ],
        ),
        (
            &metrics("series: x_bucket, aggregation: sum, histogramQuantile: {}"),
            &[&format!(
                "{p}.aggregation: sum of the groups' quantiles is not a latency; with histogramQuantile use max (the default: the worst group) or min"
            )],
        ),
        (
            &metrics("histogramQuantile: {}"),
            &[&format!("{p}.series: required field is missing")],
        ),
        (
            &with_probe("apiserver: {path: /readyz, histogramQuantile: {}}"),
            &[
                "invariants[0].probe.apiserver.histogramQuantile: histogramQuantile applies only with series (a metrics scrape); add series or remove histogramQuantile",
            ],
        ),
        (
            &with_probe("apiserver: {path: /metrics, series: x_bucket, histogramQuantile: 0.99}"),
            &[
                "invariants[0].probe.apiserver.histogramQuantile: expected a mapping, found the number 0.99",
            ],
        ),
    ]);
}
