//! Test timing from Ginkgo's JSON report (`ginkgo --json-report=FILE`, or
//! `e2e.test --ginkgo.json-report=FILE`), as [`Annotation`]s.
//!
//! The file is a list of suite reports (one per suite; a single object is accepted too).
//! Each `SpecReports` entry becomes a `test` annotation named by Ginkgo's full text
//! (`ContainerHierarchyTexts` and `LeafNodeText` joined by spaces, what `--focus` matches)
//! from `StartTime` to `EndTime`, with `State` as the outcome. Suite-level nodes
//! (`BeforeSuite`, `SynchronizedAfterSuite`, ...) become `phase` annotations named by their
//! node type, and each suite as a whole a `phase` named `suite: DESCRIPTION`. Specs that
//! never ran (Go's zero time, year 1) are left out. Only these fields are read; anything
//! else in the file is ignored, so newer Ginkgo versions keep working.

use serde::Deserialize;

use super::{Annotation, AnnotationKind};
use crate::sample::Timestamp;

/// Why a Ginkgo report cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GinkgoError {
    /// The file could not be read.
    #[error("cannot read the Ginkgo report {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a Ginkgo JSON report.
    #[error("{path} is not a Ginkgo JSON report (ginkgo --json-report): {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Go writes nil slices and strings as `null`: read them as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SuiteReport {
    #[serde(default, deserialize_with = "null_as_default")]
    suite_description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    start_time: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    end_time: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    spec_reports: Vec<SpecReport>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SpecReport {
    #[serde(default, deserialize_with = "null_as_default")]
    container_hierarchy_texts: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    container_hierarchy_labels: Vec<Vec<String>>,
    #[serde(default, deserialize_with = "null_as_default")]
    leaf_node_labels: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    leaf_node_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    leaf_node_text: String,
    #[serde(default, deserialize_with = "null_as_default")]
    state: String,
    #[serde(default, deserialize_with = "null_as_default")]
    start_time: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    end_time: Option<String>,
}

impl SpecReport {
    /// The name a test is known by everywhere in the agent: Ginkgo's `FullText()` (what
    /// `--ginkgo.focus` matches), then its labels as Ginkgo prints them, e.g.
    /// `[sig-node] Pods should restart [Disruptive, Slow]`. The Go client's
    /// `invariantginkgo.SpecName` builds the same name, so live annotations and
    /// `--tests-from` agree and `expectedDisruptions` patterns can match labels.
    fn full_text(&self) -> String {
        let mut parts: Vec<&str> = self
            .container_hierarchy_texts
            .iter()
            .map(String::as_str)
            .collect();
        if !self.leaf_node_text.is_empty() {
            parts.push(&self.leaf_node_text);
        }
        let mut name = parts.join(" ");
        let labels = self.labels();
        if !labels.is_empty() {
            name.push_str(" [");
            name.push_str(&labels.join(", "));
            name.push(']');
        }
        name.trim().to_string()
    }

    /// Ginkgo's `Labels()`: container labels then leaf labels, first occurrence kept.
    fn labels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let all = self.container_hierarchy_labels.iter().flatten();
        for label in all.chain(&self.leaf_node_labels) {
            if !out.contains(&label.as_str()) {
                out.push(label);
            }
        }
        out
    }
}

/// Reads a Ginkgo JSON report file.
pub fn read(path: &std::path::Path) -> Result<Vec<Annotation>, GinkgoError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| GinkgoError::Io {
        path: name.clone(),
        source,
    })?;
    parse(&name, &bytes)
}

/// Parses a Ginkgo JSON report; `path` is only used in messages.
pub fn parse(path: &str, bytes: &[u8]) -> Result<Vec<Annotation>, GinkgoError> {
    let invalid = |message: String| GinkgoError::Invalid {
        path: path.to_string(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let suites: Vec<SuiteReport> = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        serde_json::Value::Object(_) => serde_json::from_value(value).map(|r| vec![r]),
        _ => return Err(invalid("expected a list of suite reports".to_string())),
    }
    .map_err(|e| invalid(e.to_string()))?;
    let mut out = Vec::new();
    for suite in suites {
        if let Some(start) = time(suite.start_time.as_deref()).map_err(&invalid)? {
            let name = if suite.suite_description.is_empty() {
                "suite".to_string()
            } else {
                format!("suite: {}", suite.suite_description)
            };
            out.push(Annotation {
                kind: AnnotationKind::Phase,
                name,
                start,
                end: time(suite.end_time.as_deref()).map_err(&invalid)?,
                outcome: None,
            });
        }
        for spec in suite.spec_reports {
            let Some(start) = time(spec.start_time.as_deref()).map_err(&invalid)? else {
                continue;
            };
            let end = time(spec.end_time.as_deref()).map_err(&invalid)?;
            let is_test = spec.leaf_node_type.is_empty() || spec.leaf_node_type == "It";
            let (kind, name, outcome) = if is_test {
                let state = (!spec.state.is_empty()).then(|| spec.state.clone());
                (AnnotationKind::Test, spec.full_text(), state)
            } else {
                (AnnotationKind::Phase, spec.leaf_node_type.clone(), None)
            };
            out.push(Annotation {
                kind,
                name,
                start,
                end,
                outcome,
            });
        }
    }
    Ok(out)
}

/// Parses a Go `time.Time` in JSON (RFC 3339 with nanoseconds and any UTC offset).
/// Missing or zero times (Go's `0001-01-01T00:00:00Z`, a spec that never ran) are `None`.
fn time(text: Option<&str>) -> Result<Option<Timestamp>, String> {
    let Some(text) = text else { return Ok(None) };
    if text.is_empty() || text.starts_with("0001-01-01") {
        return Ok(None);
    }
    parse_rfc3339(text)
        .map(Some)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 time"))
}

/// RFC 3339 with an optional fraction and a `Z` or `±hh:mm` offset.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let t = text.find(['T', 't', ' '])?;
    let zone_at = text[t..]
        .find(['Z', 'z', '+', '-'])
        .map(|i| t + i)
        .unwrap_or(text.len());
    let (local, zone) = text.split_at(zone_at);
    let offset_ms: i64 = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            let h: i64 = h.parse().ok()?;
            let m: i64 = m.parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m) * 60_000
        }
    };
    let utc = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    Some(Timestamp(
        Timestamp::from_system_time(utc).0.checked_sub(offset_ms)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed real `ginkgo --json-report` output (Ginkgo v2): an array of suites.
    const REPORT: &str = r#"[
  {
    "SuitePath": "/go/src/k8s.io/kubernetes/test/e2e",
    "SuiteDescription": "Kubernetes e2e suite",
    "SuiteSucceeded": false,
    "StartTime": "2026-03-01T10:00:00.000000001Z",
    "EndTime": "2026-03-01T10:10:00Z",
    "RunTime": 600000000000,
    "SpecReports": [
      {
        "ContainerHierarchyTexts": null,
        "LeafNodeType": "SynchronizedBeforeSuite",
        "LeafNodeText": "",
        "State": "passed",
        "StartTime": "2026-03-01T10:00:00Z",
        "EndTime": "2026-03-01T10:00:05Z",
        "RunTime": 5000000000,
        "ParallelProcess": 1,
        "NumAttempts": 0
      },
      {
        "ContainerHierarchyTexts": ["[sig-node] Pods", "when rebooted"],
        "ContainerHierarchyLocations": [{"FileName": "pods.go", "LineNumber": 10}],
        "ContainerHierarchyLabels": [["Serial"], ["Disruptive"]],
        "LeafNodeType": "It",
        "LeafNodeLabels": ["Disruptive", "Slow"],
        "LeafNodeText": "should come back [Disruptive]",
        "State": "failed",
        "StartTime": "2026-03-01T11:00:10.5+01:00",
        "EndTime": "2026-03-01T11:00:20.25+01:00",
        "Failure": {"Message": "boom", "Location": {"FileName": "x.go", "LineNumber": 3}},
        "NumAttempts": 1
      },
      {
        "ContainerHierarchyTexts": ["[sig-apps] Deployment"],
        "LeafNodeType": "It",
        "LeafNodeText": "is skipped by focus",
        "State": "skipped",
        "StartTime": "0001-01-01T00:00:00Z",
        "EndTime": "0001-01-01T00:00:00Z"
      }
    ]
  }
]"#;

    #[test]
    fn specs_become_tests_and_suite_nodes_phases() {
        let a = parse("r.json", REPORT.as_bytes()).unwrap();
        assert_eq!(a.len(), 3, "{a:#?}");
        assert_eq!(a[0].kind, AnnotationKind::Phase);
        assert_eq!(a[0].name, "suite: Kubernetes e2e suite");
        assert_eq!(a[0].start.to_rfc3339(), "2026-03-01T10:00:00.000Z");
        assert_eq!(a[0].end.unwrap().to_rfc3339(), "2026-03-01T10:10:00.000Z");
        assert_eq!(a[1].kind, AnnotationKind::Phase);
        assert_eq!(a[1].name, "SynchronizedBeforeSuite");
        assert_eq!(a[2].kind, AnnotationKind::Test);
        assert_eq!(
            a[2].name,
            "[sig-node] Pods when rebooted should come back [Disruptive] [Serial, Disruptive, Slow]",
            "labels follow the text as Ginkgo prints them, each once, containers first"
        );
        assert_eq!(a[2].start.to_rfc3339(), "2026-03-01T10:00:10.500Z");
        assert_eq!(a[2].end.unwrap().to_rfc3339(), "2026-03-01T10:00:20.250Z");
        assert_eq!(a[2].outcome.as_deref(), Some("failed"));
    }

    #[test]
    fn a_single_suite_object_is_accepted() {
        let one = REPORT.trim().trim_start_matches('[').trim_end_matches(']');
        assert_eq!(parse("r.json", one.as_bytes()).unwrap().len(), 3);
    }

    #[test]
    fn offsets_and_fractions_parse() {
        let t = |s| parse_rfc3339(s).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2026-03-01T10:00:00.123456789-07:30").as_deref(),
            Some("2026-03-01T17:30:00.123Z")
        );
        assert_eq!(
            t("2026-03-01T10:00:00Z").as_deref(),
            Some("2026-03-01T10:00:00.000Z")
        );
        assert_eq!(t("yesterday"), None);
        assert_eq!(t("2026-03-01T10:00:00+25:00"), None);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = parse("r.json", b"{\"SpecReports\": 3}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("r.json is not a Ginkgo JSON report"),
            "{e}"
        );
        let e = parse(
            "r.json",
            br#"[{"SpecReports": [{"LeafNodeText": "x", "StartTime": "soon"}]}]"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("\"soon\" is not an RFC 3339 time"),
            "{e}"
        );
    }
}
