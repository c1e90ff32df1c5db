//! Newline-delimited JSON: one row per invariant, with the run's facts repeated on every
//! row, so reports of many runs load into one table of a searchable store (BigQuery:
//! `bq load --source_format=NEWLINE_DELIMITED_JSON TABLE report.ndjson
//! docs/report-bigquery-schema.json`).
//!
//! Rows are flat where BigQuery needs it: labels are a list of `{key, value}` (BigQuery
//! has no maps), every list is present (possibly empty, never null), timestamps are RFC
//! 3339 UTC, and each violation carries its `duration_seconds`. The table schema is
//! [`super::BIGQUERY_SCHEMA`]; a test checks every row against it.

use serde::Serialize;

use super::{InvariantReport, Report};
use crate::eval::{LatencySummary, Totals};
use crate::sample::Timestamp;

/// One row: a run's facts and one invariant's results.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    /// Report format version.
    pub schema_version: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// CI job name.
    pub job_name: Option<&'a str>,
    /// CI build id.
    pub build_id: Option<&'a str>,
    /// Cluster under test.
    pub cluster: Option<&'a str>,
    /// Host of the agent.
    pub node: Option<&'a str>,
    /// Agent version.
    pub agent_version: &'a str,
    /// `running` (in progress or cut short) or `completed`.
    pub run_status: &'a str,
    /// When sampling started.
    pub run_started_at: Timestamp,
    /// When the report was written.
    pub run_updated_at: Timestamp,
    /// When the run ended cleanly.
    pub run_ended_at: Option<Timestamp>,
    /// Run length so far.
    pub run_duration_seconds: f64,
    /// Stretches without samples because the agent was down (the run was resumed).
    pub run_gaps: Vec<RowGap>,
    /// Total seconds of `run_gaps`.
    pub run_gap_seconds: f64,
    /// Invariant name.
    pub invariant: &'a str,
    /// What it protects.
    pub description: &'a str,
    /// Who owns it.
    pub owner: &'a str,
    /// `node` or `cluster`.
    pub scope: &'a str,
    /// Labels as key/value pairs.
    pub labels: Vec<Label<'a>>,
    /// Probe kind.
    pub probe: &'a str,
    /// What the probe observes.
    pub target: &'a str,
    /// Condition kind.
    pub condition: &'a str,
    /// The condition in words.
    pub condition_text: &'a str,
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// Sample timeout in seconds.
    pub timeout_seconds: f64,
    /// Where it is declared.
    pub source: &'a str,
    /// Patterns of tests expected to disrupt it.
    pub expected_disruptions: Vec<&'a str>,
    /// Verdict for the run.
    pub verdict: &'a str,
    /// State at the report's time.
    pub state: &'a str,
    /// Whether any sample could be judged.
    pub examined: bool,
    /// Samples by outcome.
    pub samples: Totals,
    /// Whole-run availability.
    pub availability_percent: Option<f64>,
    /// Window availability at the report's time.
    pub window_availability_percent: Option<f64>,
    /// Whole-run latency quantiles.
    pub latency: Option<LatencySummary>,
    /// Window latency quantile at the report's time.
    pub window_latency_seconds: Option<f64>,
    /// Newest value seen.
    pub last_value: Option<f64>,
    /// Counter growth.
    pub increase: Option<f64>,
    /// Seconds the probe was failing.
    pub disruption_seconds: f64,
    /// Stored violation intervals.
    pub violation_count: u64,
    /// Intervals outside expected disruptions, plus dropped ones.
    pub unexpected_violations: u64,
    /// Intervals overlapping an expected test.
    pub expected_violations: u64,
    /// Intervals not stored.
    pub violations_dropped: u64,
    /// The intervals.
    pub violations: Vec<RowViolation<'a>>,
}

/// One label.
#[derive(Debug, Serialize)]
pub struct Label<'a> {
    /// Label name.
    pub key: &'a str,
    /// Label value.
    pub value: &'a str,
}

/// One gap of the run in a row.
#[derive(Debug, Serialize)]
pub struct RowGap {
    /// The last checkpoint before it.
    pub start: Timestamp,
    /// When sampling started again.
    pub end: Timestamp,
    /// Seconds from start to end.
    pub duration_seconds: f64,
    /// Why there were no samples (`agent_restarted`).
    pub reason: &'static str,
}

/// One violation interval in a row.
#[derive(Debug, Serialize)]
pub struct RowViolation<'a> {
    /// First bad sample.
    pub start: Timestamp,
    /// First good sample after it; null while open.
    pub end: Option<Timestamp>,
    /// Seconds from start to end (to the report's end while open).
    pub duration_seconds: f64,
    /// Probe error class; null when the condition failed on a successful probe.
    pub error_class: Option<&'a str>,
    /// First error message.
    pub first_error: Option<&'a str>,
    /// Latest error message.
    pub last_error: Option<&'a str>,
    /// Bad samples in the interval.
    pub samples: u64,
    /// Whether an expected test overlapped it.
    pub expected: bool,
    /// Tests running during it.
    pub tests: Vec<&'a str>,
    /// Overlapping tests not listed.
    pub tests_omitted: u64,
    /// Overlapping tests that are expected to disrupt the invariant.
    pub expected_by: Vec<&'a str>,
    /// Still open when the agent went down: ends at the last checkpoint before the gap.
    pub ended_by_gap: bool,
}

/// The rows of a report, in file order.
pub fn rows(report: &Report) -> Vec<Row<'_>> {
    report.invariants.iter().map(|i| row(report, i)).collect()
}

fn row<'a>(report: &'a Report, i: &'a InvariantReport) -> Row<'a> {
    let run = &report.run;
    let s = &i.summary;
    let end = report.end_time();
    Row {
        schema_version: &report.schema_version,
        run_id: &run.id,
        job_name: run.context.job_name.as_deref(),
        build_id: run.context.build_id.as_deref(),
        cluster: run.context.cluster.as_deref(),
        node: run.node.as_deref(),
        agent_version: &run.agent_version,
        run_status: run.status.as_str(),
        run_started_at: run.started_at,
        run_updated_at: run.updated_at,
        run_ended_at: run.ended_at,
        run_duration_seconds: run.duration_seconds,
        run_gaps: run
            .gaps
            .iter()
            .map(|g| RowGap {
                start: g.start,
                end: g.end,
                duration_seconds: g.duration().as_secs_f64(),
                reason: g.reason.as_str(),
            })
            .collect(),
        run_gap_seconds: run.gap_duration().as_secs_f64(),
        invariant: &i.name,
        description: &i.description,
        owner: &i.owner,
        scope: &i.scope,
        labels: i
            .labels
            .iter()
            .map(|(key, value)| Label { key, value })
            .collect(),
        probe: &i.probe,
        target: &i.target,
        condition: &i.condition,
        condition_text: &i.condition_text,
        interval_seconds: i.interval_seconds,
        timeout_seconds: i.timeout_seconds,
        source: &i.source,
        expected_disruptions: i.expected_disruptions.iter().map(String::as_str).collect(),
        verdict: i.verdict.as_str(),
        state: s.state.as_str(),
        examined: s.examined,
        samples: s.samples,
        availability_percent: s.availability_percent,
        window_availability_percent: s.window_availability_percent,
        latency: s.latency,
        window_latency_seconds: s.window_latency_seconds,
        last_value: s.last_value,
        increase: s.increase,
        disruption_seconds: s.disruption_seconds,
        violation_count: s.violations.len() as u64,
        unexpected_violations: i.unexpected_violations,
        expected_violations: i.expected_violations,
        violations_dropped: s.violations_dropped,
        violations: s
            .violations
            .iter()
            .map(|v| RowViolation {
                start: v.start,
                end: v.end,
                duration_seconds: v.end.unwrap_or(end).since(v.start).as_secs_f64(),
                error_class: v.error_class.map(|c| c.as_str()),
                first_error: v.first_error.as_deref(),
                last_error: v.last_error.as_deref(),
                samples: v.samples,
                expected: v.expected,
                tests: v.tests.iter().map(String::as_str).collect(),
                tests_omitted: v.tests_omitted,
                expected_by: v.expected_by.iter().map(String::as_str).collect(),
                ended_by_gap: v.ended_by_gap,
            })
            .collect(),
    }
}

/// Renders the rows, one JSON object per line.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for row in rows(report) {
        // Plain data structs with finite numbers serialize without error.
        if let Ok(line) = serde_json::to_string(&row) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Checks a JSON row against a BigQuery table schema (the `fields` list of `bq show
/// --schema`): every field is known, types and modes match, required fields are present.
/// Returns the problems found, each naming the field path.
pub fn check_row_against_bigquery_schema(
    row: &serde_json::Value,
    schema: &serde_json::Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    check_record(row, schema, "", &mut problems);
    problems
}

fn check_record(
    value: &serde_json::Value,
    fields: &serde_json::Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    use serde_json::Value;
    let Some(object) = value.as_object() else {
        problems.push(format!("{path}: expected an object"));
        return;
    };
    let Some(fields) = fields.as_array() else {
        problems.push(format!("{path}: schema fields are not a list"));
        return;
    };
    for key in object.keys() {
        if !fields.iter().any(|f| f["name"] == *key) {
            problems.push(format!("{path}{key}: not in the BigQuery schema"));
        }
    }
    for field in fields {
        let name = field["name"].as_str().unwrap_or("?");
        let mode = field["mode"].as_str().unwrap_or("NULLABLE");
        let ty = field["type"].as_str().unwrap_or("?");
        let here = format!("{path}{name}");
        let v = object.get(name).unwrap_or(&Value::Null);
        match (mode, v) {
            ("REQUIRED", Value::Null) => problems.push(format!("{here}: required but missing")),
            ("REPEATED", Value::Array(items)) => {
                for (n, item) in items.iter().enumerate() {
                    check_value(item, ty, field, &format!("{here}[{n}]"), problems);
                }
            }
            ("REPEATED", _) => problems.push(format!("{here}: repeated field must be a list")),
            (_, Value::Null) => {}
            _ => check_value(v, ty, field, &here, problems),
        }
    }
}

fn check_value(
    v: &serde_json::Value,
    ty: &str,
    field: &serde_json::Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    let ok = match ty {
        "STRING" => v.is_string(),
        "INTEGER" | "INT64" => v.is_i64() || v.is_u64(),
        "FLOAT" | "FLOAT64" | "NUMERIC" => v.is_number(),
        "BOOLEAN" | "BOOL" => v.is_boolean(),
        "TIMESTAMP" => v
            .as_str()
            .is_some_and(|s| humantime::parse_rfc3339_weak(s).is_ok()),
        "RECORD" | "STRUCT" => {
            check_record(v, &field["fields"], &format!("{path}."), problems);
            true
        }
        _ => false,
    };
    if !ok {
        problems.push(format!("{path}: {v} is not a {ty}"));
    }
}
