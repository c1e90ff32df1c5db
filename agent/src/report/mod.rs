//! The run report: what every invariant did during the run, written as `report.json`.
//!
//! The engine builds a [`Report`] from its state; [`writer`] checkpoints it to disk
//! atomically every few seconds, so a suite that is killed mid-run still leaves the last
//! checkpoint (with `status: running`) behind. [`text`] renders the short summary printed
//! at the end of a run.

pub mod text;
pub mod writer;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Invariant;
use crate::eval::Summary;
use crate::sample::Timestamp;

/// Version of the report format; bumped on incompatible changes.
pub const SCHEMA_VERSION: &str = "invariant-agent.report/v1alpha1";

/// File name of the report inside the report directory.
pub const REPORT_FILE: &str = "report.json";

/// The whole run report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: &'static str,
    /// Facts about the run.
    pub run: RunInfo,
    /// Counts of invariants by verdict.
    pub totals: VerdictTotals,
    /// One entry per invariant, in file order.
    pub invariants: Vec<InvariantReport>,
}

/// Whether the run is still going or ended cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A checkpoint of a run in progress. Found on disk after the run, it means the run
    /// was cut short (killed) after `updated_at`.
    Running,
    /// The run ended (duration reached or SIGTERM/SIGINT) and this is its final report.
    Completed,
}

/// Facts about the run.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// Run id: `$PROW_JOB_ID` or `$BUILD_ID` when set, else generated at start.
    pub id: String,
    /// Version of the agent that wrote this report.
    pub agent_version: &'static str,
    /// Whether the run is still going or ended cleanly.
    pub status: RunStatus,
    /// When the agent started sampling.
    pub started_at: Timestamp,
    /// When this report was written (the run's end for a completed report).
    pub updated_at: Timestamp,
    /// Seconds from `started_at` to `updated_at`.
    pub duration_seconds: f64,
    /// Invariant files the run used (`<embedded demo>` for the demo).
    pub config_files: Vec<String>,
    /// Host the agent ran on (`$NODE_NAME` when set, else the host name).
    pub node: Option<String>,
}

/// Counts of invariants by verdict.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct VerdictTotals {
    /// Invariants that were violated at some point of the run.
    pub violated: usize,
    /// Invariants that were examined and never violated.
    pub held: usize,
    /// Invariants that never saw a sample they could judge: NOT a pass.
    pub not_examined: usize,
}

/// The verdict on one invariant for the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Violated at least once.
    Violated,
    /// Examined and never violated.
    Held,
    /// Never examined (no samples, or only absent series).
    NotExamined,
}

impl Verdict {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Violated => "violated",
            Verdict::Held => "held",
            Verdict::NotExamined => "not_examined",
        }
    }
}

/// One invariant in the report: its declaration and what happened.
#[derive(Clone, Debug, Serialize)]
pub struct InvariantReport {
    /// Unique name.
    pub name: String,
    /// What it protects.
    pub description: String,
    /// Who owns it.
    pub owner: String,
    /// `node` or `cluster`.
    pub scope: &'static str,
    /// Labels from the invariant file.
    pub labels: BTreeMap<String, String>,
    /// Probe kind (`http`, `tcp`, `dns`, `metrics`).
    pub probe: &'static str,
    /// What the probe observes.
    pub target: String,
    /// Condition kind (`availability`, `latency`, `threshold`, `increase`).
    pub condition: &'static str,
    /// The condition in words, e.g. `availability >= 99.9% over 5m`.
    pub condition_text: String,
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// Seconds before a sample is cut.
    pub timeout_seconds: f64,
    /// Where the invariant is declared.
    pub source: String,
    /// The verdict for the run.
    pub verdict: Verdict,
    /// What the evaluator measured.
    #[serde(flatten)]
    pub summary: Summary,
}

impl InvariantReport {
    /// Builds the report entry for `invariant` from its evaluator summary.
    pub fn new(invariant: &Invariant, summary: Summary) -> Self {
        let verdict = if !summary.violations.is_empty() || summary.violations_dropped > 0 {
            Verdict::Violated
        } else if summary.examined {
            Verdict::Held
        } else {
            Verdict::NotExamined
        };
        InvariantReport {
            name: invariant.name.clone(),
            description: invariant.description.clone(),
            owner: invariant.owner.clone(),
            scope: invariant.scope.as_str(),
            labels: invariant.labels.clone(),
            probe: invariant.probe.kind(),
            target: invariant.probe.target(),
            condition: invariant.condition.kind(),
            condition_text: invariant.condition.describe(),
            interval_seconds: invariant.interval.as_secs_f64(),
            timeout_seconds: invariant.timeout.as_secs_f64(),
            source: invariant.source.clone(),
            verdict,
            summary,
        }
    }
}

impl Report {
    /// Assembles a report and counts verdicts.
    pub fn new(run: RunInfo, invariants: Vec<InvariantReport>) -> Self {
        let mut totals = VerdictTotals::default();
        for i in &invariants {
            match i.verdict {
                Verdict::Violated => totals.violated += 1,
                Verdict::Held => totals.held += 1,
                Verdict::NotExamined => totals.not_examined += 1,
            }
        }
        Report {
            schema_version: SCHEMA_VERSION,
            run,
            totals,
            invariants,
        }
    }

    /// Pretty JSON, as written to `report.json`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data structs cannot fail; an empty document would be noticed.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The run id: `$PROW_JOB_ID`, else `$BUILD_ID`, else generated from the start time and
/// randomness, so reports from CI join with the job that produced them.
pub fn run_id_from_env(started_at: Timestamp) -> String {
    for var in ["PROW_JOB_ID", "BUILD_ID"] {
        if let Ok(v) = std::env::var(var) {
            let v = v.trim();
            if !v.is_empty() {
                return v.to_string();
            }
        }
    }
    format!("run-{}-{:08x}", started_at.0, fastrand::u32(..))
}

/// The node name: `$NODE_NAME` (set by the DaemonSet from the downward API), else the
/// host name.
pub fn node_name_from_env() -> Option<String> {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
}
