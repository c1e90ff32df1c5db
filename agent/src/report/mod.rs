//! The run report: what every invariant did during the run, and every form it is read in.
//!
//! The engine builds a [`Report`] from its state; [`writer`] checkpoints it to disk
//! atomically every few seconds (`report.json`, the source of truth, plus the derived
//! `report.ndjson`, `report.junit.xml` and `report.html`), so a suite that is killed
//! mid-run still leaves the last checkpoint (with `status: running`) behind in every
//! form. A saved report reads back with [`Report::from_json`] and renders again with
//! `invariant-agent report render` ([`cli`]).
//!
//! [`attribution`] relates violation intervals to the tests that ran during them (test
//! [`Annotation`]s, from the engine or from a Ginkgo JSON report read by [`ginkgo`]) and
//! marks the ones an invariant's `expectedDisruptions` explain. [`compare`] judges a run
//! against past runs' reports. Formats: [`text`] (end-of-run summary), [`markdown`],
//! [`junit`], [`html`], [`ndjson`] (one row per invariant, with a BigQuery schema).
//! The JSON format is specified by `docs/report.schema.json` ([`JSON_SCHEMA`]).
//!
//! An agent killed and restarted with the same report directory resumes the run from its
//! last checkpoint ([`resume`]): every report it builds then covers the whole run, with
//! the time it was down recorded in `run.gaps`.

pub mod attribution;
pub mod cli;
pub mod compare;
pub mod ginkgo;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod ndjson;
pub mod resume;
pub mod text;
pub mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Invariant;
use crate::eval::Summary;
use crate::sample::Timestamp;

/// Version of the report format; bumped on incompatible changes. Additions (new fields)
/// keep the version: readers ignore fields they do not know.
pub const SCHEMA_VERSION: &str = "invariant-agent.report/v1alpha1";

/// File name of the report inside the report directory.
pub const REPORT_FILE: &str = "report.json";

/// JSON Schema (draft 2020-12) of `report.json`, also in `docs/report.schema.json`.
pub const JSON_SCHEMA: &str = include_str!("../../../docs/report.schema.json");

/// BigQuery table schema of the rows of `report.ndjson`, also in
/// `docs/report-bigquery-schema.json`.
pub const BIGQUERY_SCHEMA: &str = include_str!("../../../docs/report-bigquery-schema.json");

/// Most annotations a report keeps; later ones are only counted (a suite has a few
/// thousand tests, so this bounds memory only against a misbehaving client).
pub const MAX_ANNOTATIONS: usize = 50_000;

/// Most bytes of annotation names and outcomes a report keeps (16 MiB); later
/// annotations are only counted, as beyond [`MAX_ANNOTATIONS`]. Each name and outcome may
/// be 4 KiB, so the count alone would let one client make the agent hold (and copy into
/// every report) about 400 MB; a few thousand real test names take a few MB. A
/// replacement (the same kind, name and start) is always applied, so a test's end still
/// closes it; its outcome is left out if it does not fit.
pub const MAX_ANNOTATION_BYTES: usize = 16 * 1024 * 1024;

/// The whole run report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA_VERSION`] when written by this agent.
    pub schema_version: Cow<'static, str>,
    /// Facts about the run.
    pub run: RunInfo,
    /// Counts of invariants by verdict.
    pub totals: VerdictTotals,
    /// One entry per invariant, in file order.
    pub invariants: Vec<InvariantReport>,
    /// Tests and phases of the run, oldest first: what was running when.
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    /// Annotations beyond [`MAX_ANNOTATIONS`] or [`MAX_ANNOTATION_BYTES`]: counted, not
    /// stored.
    #[serde(default)]
    pub annotations_dropped: u64,
}

/// Whether the run is still going or ended cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A checkpoint of a run in progress. Found on disk after the run, it means the run
    /// was cut short (killed) after `updated_at`.
    Running,
    /// The run ended (duration reached or SIGTERM/SIGINT) and this is its final report.
    Completed,
}

impl RunStatus {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
        }
    }
}

/// Facts about the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// Run id: `--run-id`, `$PROW_JOB_ID` or `$BUILD_ID` when set, else the one on the
    /// leader election's Lease (shared by every agent), else generated at start (see
    /// [`configured_run_id`]).
    pub id: String,
    /// Where the run happened: CI job, build and cluster.
    #[serde(flatten)]
    pub context: RunContext,
    /// Version of the agent that wrote this report.
    pub agent_version: Cow<'static, str>,
    /// Whether the run is still going or ended cleanly.
    pub status: RunStatus,
    /// When the agent started sampling.
    pub started_at: Timestamp,
    /// When this report was written (the run's end for a completed report).
    pub updated_at: Timestamp,
    /// When the run ended cleanly; `None` while running, and in a report of a run that was
    /// cut short.
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
    /// Seconds from `started_at` to `updated_at`.
    pub duration_seconds: f64,
    /// Invariant files the run used (`<embedded demo>` for the demo).
    pub config_files: Vec<String>,
    /// Host the agent ran on (`$NODE_NAME` when set, else the host name).
    pub node: Option<String>,
    /// Leader election (`--leader-elect` with cluster-scoped invariants): when this agent
    /// led and so ran the cluster-scoped invariants. `None` without leader election,
    /// where this agent ran every invariant all along.
    #[serde(default)]
    pub leadership: Option<Leadership>,
    /// Stretches of the run without samples because the agent was down (killed and
    /// restarted; see [`resume`]), oldest first. Empty for a run that was never
    /// interrupted.
    #[serde(default)]
    pub gaps: Vec<Gap>,
    /// Every change of the invariant files seen while running (see
    /// [`ConfigRevision`]), oldest first; empty when the files never changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_revisions: Vec<ConfigRevision>,
}

/// A stretch of the run with no samples at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The last checkpoint before it: everything up to here is in the report.
    pub start: Timestamp,
    /// When sampling started again.
    pub end: Timestamp,
    /// Why there were no samples.
    pub reason: GapReason,
}

/// Why a [`Gap`] has no samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The agent stopped without writing a final report (killed, OOM, node lost) and a
    /// new agent resumed the run from its last checkpoint.
    AgentRestarted,
}

impl GapReason {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::AgentRestarted => "agent_restarted",
        }
    }

    /// The reason in words.
    pub fn describe(self) -> &'static str {
        match self {
            GapReason::AgentRestarted => "agent restarted; no samples",
        }
    }
}

impl Gap {
    /// Its length.
    pub fn duration(&self) -> std::time::Duration {
        self.end.since(self.start)
    }

    /// One line for summaries: `START → END (12.3s): agent restarted; no samples`.
    pub fn describe(&self) -> String {
        format!(
            "{} → {} ({:.1}s): {}",
            self.start,
            self.end,
            self.duration().as_secs_f64(),
            self.reason.describe()
        )
    }
}

impl RunInfo {
    /// Total time in [`RunInfo::gaps`].
    pub fn gap_duration(&self) -> std::time::Duration {
        self.gaps.iter().map(Gap::duration).sum()
    }

    /// What the gaps mean for every invariant, for summaries; `None` without gaps.
    pub fn gap_note(&self) -> Option<String> {
        let n = self.gaps.len();
        (n > 0).then(|| {
            format!(
                "no invariant was sampled for {:.1}s of the run, in {n} gap{} while the agent was down (run.gaps)",
                self.gap_duration().as_secs_f64(),
                if n == 1 { "" } else { "s" }
            )
        })
    }
}

/// One change of the invariant files seen while running: applied (the invariants named
/// were added, restarted with their new spec, or stopped; all others ran on untouched) or
/// refused (invalid: nothing changed, the problems say why).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRevision {
    /// When the agent read the changed files.
    pub at: Timestamp,
    /// SHA-256 of the files' bytes, concatenated in order (`sha256sum` of a single file);
    /// `None` when a file could not be read.
    pub hash: Option<String>,
    /// Whether the change was applied or refused.
    pub result: RevisionResult,
    /// Invariants that started with this revision.
    #[serde(default)]
    pub added: Vec<String>,
    /// Invariants whose spec changed: the entry of the old spec is retired and a new
    /// entry, with fresh state, follows it.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Invariants that stopped with this revision.
    #[serde(default)]
    pub removed: Vec<String>,
    /// Why a refused revision was refused, one `file:line:column: field: problem` each.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// What became of a [`ConfigRevision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionResult {
    /// Valid and in effect from its time on.
    Applied,
    /// Invalid; the invariants before it kept running.
    Refused,
}

/// Why an invariant's entry stopped before the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetiredReason {
    /// The invariant is no longer in the files.
    Removed,
    /// Its spec changed; the entry with the new spec follows this one.
    Changed,
}

impl RetiredReason {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RetiredReason::Removed => "removed",
            RetiredReason::Changed => "changed",
        }
    }
}

/// When and why an invariant's entry stopped sampling before the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// When the configuration revision that stopped it was applied.
    pub at: Timestamp,
    /// Why.
    pub reason: RetiredReason,
}

/// When this agent held the leader election's Lease, and so ran the cluster-scoped
/// invariants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The Lease, `namespace/name`.
    pub lease: String,
    /// This agent's identity in the Lease (its `holderIdentity` while it leads).
    pub identity: String,
    /// The intervals this agent led, oldest first; the last one's `end` is `None` while
    /// it leads (in a report of a completed run, intervals end by the run's end).
    pub intervals: Vec<LeadershipInterval>,
}

/// One stretch of time this agent led.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadershipInterval {
    /// When this agent took the Lease.
    pub start: Timestamp,
    /// When it stopped leading; `None` while it leads.
    #[serde(default)]
    pub end: Option<Timestamp>,
}

impl Leadership {
    /// Whether this agent leads (its last interval is open).
    pub fn leading(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.end.is_none())
    }

    /// Time this agent led up to `now`.
    pub fn led_for(&self, now: Timestamp) -> std::time::Duration {
        self.intervals
            .iter()
            .map(|i| i.end.unwrap_or(now).since(i.start))
            .sum()
    }
}

/// Where a run happened, from the CI environment and the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContext {
    /// CI job name (`$JOB_NAME`, set by Prow and Jenkins).
    #[serde(default)]
    pub job_name: Option<String>,
    /// CI build number (`$BUILD_ID`, set by Prow and Jenkins).
    #[serde(default)]
    pub build_id: Option<String>,
    /// Cluster under test (`--cluster`, else `$CLUSTER_NAME`).
    #[serde(default)]
    pub cluster: Option<String>,
}

impl RunContext {
    /// Job and build from `$JOB_NAME` and `$BUILD_ID`; `cluster` from the command line
    /// (which clap fills from `$CLUSTER_NAME` when the flag is absent).
    pub fn from_env(cluster: Option<String>) -> Self {
        RunContext {
            job_name: non_empty_env("JOB_NAME"),
            build_id: non_empty_env("BUILD_ID"),
            cluster: cluster
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty()),
        }
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Counts of invariants by verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictTotals {
    /// Invariants violated at least once outside expected disruptions.
    pub violated: usize,
    /// Invariants violated only while tests expected to disrupt them ran.
    #[serde(default)]
    pub expected_disruption: usize,
    /// Invariants that were examined and never violated.
    pub held: usize,
    /// Invariants that never saw a sample they could judge: NOT a pass.
    pub not_examined: usize,
}

/// The verdict on one invariant for the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Violated at least once outside expected disruptions (or violations were dropped,
    /// which cannot be known to be expected).
    Violated,
    /// Never examined (no samples, or only absent series): not a pass.
    NotExamined,
    /// Violated, but every violation overlapped a test the invariant declares in
    /// `expectedDisruptions`: reported, not a problem.
    ExpectedDisruption,
    /// Examined and never violated.
    Held,
}

impl Verdict {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Violated => "violated",
            Verdict::NotExamined => "not_examined",
            Verdict::ExpectedDisruption => "expected_disruption",
            Verdict::Held => "held",
        }
    }

    /// Worst first: violated, not examined, expected disruption, held. Verdicts sort in
    /// this order too.
    pub fn severity_rank(self) -> u8 {
        self as u8
    }
}

/// One invariant in the report: its declaration and what happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvariantReport {
    /// Unique name.
    pub name: String,
    /// What it protects.
    pub description: String,
    /// Who owns it.
    pub owner: String,
    /// `node` or `cluster`.
    pub scope: Cow<'static, str>,
    /// Labels from the invariant file.
    pub labels: BTreeMap<String, String>,
    /// Probe kind (`http`, `tcp`, `dns`, `metrics`).
    pub probe: Cow<'static, str>,
    /// What the probe observes.
    pub target: String,
    /// Condition kind (`availability`, `latency`, `threshold`, `increase`).
    pub condition: Cow<'static, str>,
    /// The condition in words, e.g. `availability >= 99.9% over 5m`.
    pub condition_text: String,
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// Seconds before a sample is cut.
    pub timeout_seconds: f64,
    /// Where the invariant is declared.
    pub source: String,
    /// Regular expressions on full test names: tests expected to disrupt this invariant.
    #[serde(default)]
    pub expected_disruptions: Vec<String>,
    /// The verdict for the run.
    pub verdict: Verdict,
    /// Violation intervals that overlapped no expected test, plus dropped ones.
    #[serde(default)]
    pub unexpected_violations: u64,
    /// Violation intervals that overlapped a test expected to disrupt the invariant.
    #[serde(default)]
    pub expected_violations: u64,
    /// Why the invariant was sampled only part of the run or not at all, when that was
    /// by design: a cluster-scoped invariant under leader election runs only while this
    /// agent leads. `None` otherwise.
    #[serde(default)]
    pub note: Option<String>,
    /// When this entry started, if later than the run: a configuration change added the
    /// invariant or changed its spec (see `run.config_revisions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_from: Option<Timestamp>,
    /// When and why this entry stopped before the run ended (removed from the files, or
    /// its spec changed); its numbers cover the time until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Retired>,
    /// What the evaluator measured.
    #[serde(flatten)]
    pub summary: Summary,
}

impl InvariantReport {
    /// Builds the report entry for `invariant` from its evaluator summary. The verdict
    /// counts every violation as unexpected until [`attribution`] looks at tests.
    pub fn new(invariant: &Invariant, summary: Summary) -> Self {
        let mut entry = InvariantReport {
            name: invariant.name.clone(),
            description: invariant.description.clone(),
            owner: invariant.owner.clone(),
            scope: Cow::Borrowed(invariant.scope.as_str()),
            labels: invariant.labels.clone(),
            probe: Cow::Borrowed(invariant.probe.kind()),
            target: invariant.probe.target(),
            condition: Cow::Borrowed(invariant.condition.kind()),
            condition_text: invariant.condition.describe(),
            interval_seconds: invariant.interval.as_secs_f64(),
            timeout_seconds: invariant.timeout.as_secs_f64(),
            source: invariant.source.clone(),
            expected_disruptions: invariant
                .expected_disruptions
                .iter()
                .map(|p| p.as_str().to_string())
                .collect(),
            verdict: Verdict::NotExamined,
            unexpected_violations: 0,
            expected_violations: 0,
            note: None,
            active_from: None,
            retired: None,
            summary,
        };
        entry.judge();
        entry
    }

    /// A copy of this entry with `summary`, judged again. The engine keeps one entry per
    /// invariant and copies it for every snapshot (one a second) rather than formatting
    /// the target and the condition text anew, which was a tenth of its work at 1,000
    /// invariants.
    pub fn with_summary(&self, summary: Summary) -> Self {
        // The copied summary is the entry's first one, without samples or intervals.
        let mut entry = InvariantReport {
            summary,
            ..self.clone()
        };
        entry.judge();
        entry
    }

    /// Recounts expected and unexpected violations from the intervals' `expected` flags
    /// and sets the verdict.
    pub fn judge(&mut self) {
        let s = &self.summary;
        let expected = s.violations.iter().filter(|v| v.expected).count() as u64;
        let unexpected =
            (s.violations.len() as u64 - expected).saturating_add(s.violations_dropped);
        self.expected_violations = expected;
        self.unexpected_violations = unexpected;
        self.verdict = if unexpected > 0 {
            Verdict::Violated
        } else if expected > 0 {
            Verdict::ExpectedDisruption
        } else if s.examined {
            Verdict::Held
        } else {
            Verdict::NotExamined
        };
    }
}

/// Something that ran during the run: a test or a phase of the suite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    /// `test` or `phase`.
    pub kind: AnnotationKind,
    /// Full test name (Ginkgo's container texts and leaf text joined by spaces), or the
    /// phase's name (e.g. `BeforeSuite`, `upgrade`).
    pub name: String,
    /// When it started.
    pub start: Timestamp,
    /// When it ended; `None` while it runs.
    #[serde(default)]
    pub end: Option<Timestamp>,
    /// How a test ended (`passed`, `failed`, `skipped`, `panicked`, `interrupted`,
    /// `aborted`, ...); `None` for phases and running tests.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// What an [`Annotation`] marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationKind {
    /// One test (spec).
    Test,
    /// A phase of the suite (setup, upgrade, teardown, ...).
    Phase,
}

impl AnnotationKind {
    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnotationKind::Test => "test",
            AnnotationKind::Phase => "phase",
        }
    }
}

/// Annotations of a run, bounded: what the engine keeps and reports carry.
#[derive(Clone, Debug, Default)]
pub struct AnnotationLog {
    items: Vec<Annotation>,
    dropped: u64,
    /// [`text_bytes`] of `items`, kept at most [`MAX_ANNOTATION_BYTES`] by `add`.
    bytes: usize,
}

/// Bytes of an annotation's name and outcome, what [`MAX_ANNOTATION_BYTES`] bounds.
fn text_bytes(a: &Annotation) -> usize {
    a.name.len() + a.outcome.as_ref().map_or(0, String::len)
}

impl AnnotationLog {
    /// Records `annotation`. One with the same kind, name and start as a recorded one
    /// replaces it, so a client may send a test when it starts (no `end`) and again when
    /// it ends (with `end` and `outcome`); the replacement loses its outcome if that would
    /// take the log beyond [`MAX_ANNOTATION_BYTES`]. A new annotation beyond
    /// [`MAX_ANNOTATIONS`] or [`MAX_ANNOTATION_BYTES`] is only counted.
    pub fn add(&mut self, mut annotation: Annotation) {
        let size = text_bytes(&annotation);
        if let Some(existing) = self.items.iter_mut().rev().find(|a| {
            a.kind == annotation.kind && a.start == annotation.start && a.name == annotation.name
        }) {
            // `bytes` includes `existing`. Without its outcome the replacement is no
            // larger than `existing` (same name), so the total never grows past the bound.
            let rest = self.bytes - text_bytes(existing);
            if rest + size > MAX_ANNOTATION_BYTES {
                annotation.outcome = None;
            }
            self.bytes = rest + text_bytes(&annotation);
            *existing = annotation;
        } else if self.items.len() < MAX_ANNOTATIONS && self.bytes + size <= MAX_ANNOTATION_BYTES {
            self.bytes += size;
            self.items.push(annotation);
        } else {
            self.dropped += 1;
        }
    }

    /// The annotations, in the order recorded.
    pub fn items(&self) -> &[Annotation] {
        &self.items
    }

    /// Annotations not stored because the log was full (by count or by bytes).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Why a saved report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The text is not a report.
    #[error("{path} is not an invariant-agent report: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Report {
    /// Assembles a report and counts verdicts.
    pub fn new(run: RunInfo, invariants: Vec<InvariantReport>) -> Self {
        let mut report = Report {
            schema_version: Cow::Borrowed(SCHEMA_VERSION),
            run,
            totals: VerdictTotals::default(),
            invariants,
            annotations: Vec::new(),
            annotations_dropped: 0,
        };
        report.count_verdicts();
        report
    }

    /// Adds `annotations` (merged as [`AnnotationLog::add`] does, then ordered by start)
    /// and attributes violation intervals to the tests that overlapped them.
    pub fn with_annotations(mut self, annotations: impl IntoIterator<Item = Annotation>) -> Self {
        self.add_annotations(annotations);
        self
    }

    /// As [`Report::with_annotations`], in place.
    pub fn add_annotations(&mut self, annotations: impl IntoIterator<Item = Annotation>) {
        let items = std::mem::take(&mut self.annotations);
        let mut log = AnnotationLog {
            bytes: items.iter().map(text_bytes).sum(),
            items,
            dropped: self.annotations_dropped,
        };
        for a in annotations {
            log.add(a);
        }
        self.annotations = log.items;
        self.annotations_dropped = log.dropped;
        self.annotations
            .sort_by(|a, b| (a.start, a.kind, &a.name).cmp(&(b.start, b.kind, &b.name)));
        attribution::apply(self);
    }

    /// Recounts [`Report::totals`] from the invariants' verdicts.
    pub fn count_verdicts(&mut self) {
        let mut totals = VerdictTotals::default();
        for i in &self.invariants {
            match i.verdict {
                Verdict::Violated => totals.violated += 1,
                Verdict::ExpectedDisruption => totals.expected_disruption += 1,
                Verdict::Held => totals.held += 1,
                Verdict::NotExamined => totals.not_examined += 1,
            }
        }
        self.totals = totals;
    }

    /// Pretty JSON, as written to `report.json`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data structs cannot fail; an empty document would be noticed.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a report written by this or an older agent of the same major schema
    /// (`invariant-agent.report/v1…`). `path` is only used in messages. Attribution is
    /// recomputed, so reports from before it existed gain it.
    pub fn from_json(path: &str, bytes: &[u8]) -> Result<Self, ReadError> {
        let invalid = |message: String| ReadError::Invalid {
            path: path.to_string(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON ({e})")))?;
        match value.get("schema_version").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("invariant-agent.report/v1") => {}
            Some(v) => {
                return Err(invalid(format!(
                    "unsupported schema_version {v:?}; this agent reads {SCHEMA_VERSION}"
                )));
            }
            None => return Err(invalid("no schema_version field".to_string())),
        }
        let mut report: Report =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        attribution::apply(&mut report);
        Ok(report)
    }

    /// Reads a report file; `-` reads standard input.
    pub fn read(path: &std::path::Path) -> Result<Self, ReadError> {
        let name = path.display().to_string();
        let bytes = if name == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
        } else {
            std::fs::read(path)
        }
        .map_err(|source| ReadError::Io {
            path: name.clone(),
            source,
        })?;
        Report::from_json(&name, &bytes)
    }

    /// The end of the report's time range: when the run ended, or its last checkpoint.
    pub fn end_time(&self) -> Timestamp {
        self.run.ended_at.unwrap_or(self.run.updated_at)
    }

    /// Invariants worst first (by verdict, then by unexpected violations and disruption,
    /// then by name), for summaries.
    pub fn by_severity(&self) -> Vec<&InvariantReport> {
        let mut rows: Vec<&InvariantReport> = self.invariants.iter().collect();
        rows.sort_by(|a, b| {
            a.verdict
                .cmp(&b.verdict)
                .then(b.unexpected_violations.cmp(&a.unexpected_violations))
                .then(
                    b.summary
                        .disruption_seconds
                        .total_cmp(&a.summary.disruption_seconds),
                )
                .then(a.name.cmp(&b.name))
        });
        rows
    }
}

/// Where the run id comes from, first that applies (the rule `--run-id --help` and the
/// README state):
///
/// 1. `--run-id` (or `$INVARIANT_AGENT_RUN_ID`);
/// 2. `$PROW_JOB_ID`, then `$BUILD_ID` (set by Prow and Jenkins), so reports from CI join
///    with the job that produced them;
/// 3. under `--leader-elect` with cluster-scoped invariants, the id on the leader
///    election's Lease, written by the first agent of the deployment, so all of them
///    share it ([`crate::kube::lease::agree_on_run_id`]);
/// 4. generated at start ([`generated_run_id`]).
///
/// This returns the first two (with the flag or variable it came from), `None` otherwise.
pub fn configured_run_id(flag: Option<&str>) -> Option<(String, &'static str)> {
    if let Some(id) = flag.map(str::trim).filter(|id| !id.is_empty()) {
        return Some((id.to_string(), "--run-id"));
    }
    ["PROW_JOB_ID", "BUILD_ID"].into_iter().find_map(|var| {
        let id = non_empty_env(var)?;
        Some((id.trim().to_string(), var))
    })
}

/// A new run id: `run-<start in ms>-<8 random hex digits>`.
pub fn generated_run_id(started_at: Timestamp) -> String {
    format!("run-{}-{:08x}", started_at.0, fastrand::u32(..))
}

/// Whether `id` has the shape of [`generated_run_id`]: the agent made it up, so a run
/// resumed without a CI id keeps the id of the checkpoint it resumes.
pub fn is_generated_run_id(id: &str) -> bool {
    let Some((start, random)) = id.strip_prefix("run-").and_then(|r| r.rsplit_once('-')) else {
        return false;
    };
    start.parse::<i64>().is_ok()
        && random.len() == 8
        && random.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a `--run-id` value: it becomes a resource attribute, a Lease annotation and part
/// of report file contents, so printable and short.
pub fn parse_run_id(value: &str) -> Result<String, String> {
    let id = value.trim();
    if id.is_empty() {
        return Err("the run id is empty".to_string());
    }
    if id.chars().count() > 128 {
        return Err("a run id has at most 128 characters".to_string());
    }
    if id.chars().any(char::is_control) {
        return Err("a run id has no control characters".to_string());
    }
    Ok(id.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn annotation(name: &str, start: i64, outcome: Option<&str>) -> Annotation {
        Annotation {
            kind: AnnotationKind::Test,
            name: name.to_string(),
            start: Timestamp(start),
            end: outcome.map(|_| Timestamp(start + 1)),
            outcome: outcome.map(str::to_string),
        }
    }

    /// The bytes `log` counts agree with what it holds.
    fn recount(log: &AnnotationLog) -> usize {
        log.items().iter().map(text_bytes).sum()
    }

    #[test]
    fn a_run_id_flag_wins_and_is_checked() {
        assert_eq!(
            configured_run_id(Some(" e2e-42 ")),
            Some(("e2e-42".to_string(), "--run-id"))
        );
        assert!(generated_run_id(Timestamp(7)).starts_with("run-7-"));
        assert_ne!(
            generated_run_id(Timestamp(7)),
            generated_run_id(Timestamp(7))
        );
        assert_eq!(parse_run_id(" a b "), Ok("a b".to_string()));
        assert!(parse_run_id("  ").unwrap_err().contains("empty"));
        assert!(parse_run_id("a\nb").unwrap_err().contains("control"));
        assert!(parse_run_id(&"x".repeat(129)).unwrap_err().contains("128"));
    }

    #[test]
    fn annotations_are_bounded_by_bytes_and_replacements_keep_the_total_right() {
        // 4 KiB names (the API's longest) fill the bytes long before the count.
        let name = |i: usize| format!("{i:04096}");
        let fit = MAX_ANNOTATION_BYTES / 4096;
        assert!(fit < MAX_ANNOTATIONS);
        let mut log = AnnotationLog::default();
        for i in 0..fit {
            log.add(annotation(&name(i), 0, None));
        }
        assert_eq!((log.items().len(), log.dropped()), (fit, 0));
        assert_eq!(log.bytes, MAX_ANNOTATION_BYTES);

        log.add(annotation(&name(fit), 0, None));
        log.add(annotation("x", 0, None));
        assert_eq!(
            (log.items().len(), log.dropped()),
            (fit, 2),
            "new ones beyond the bytes are counted, however small"
        );

        // A full log still takes a test's end; an outcome that does not fit is left out,
        // and the end still closes the test.
        log.add(annotation(&name(7), 0, Some("passed")));
        let ended = &log.items()[7];
        assert_eq!(
            (ended.end, ended.outcome.as_deref()),
            (Some(Timestamp(1)), None)
        );
        assert_eq!(log.dropped(), 2, "a replacement is never dropped");
        assert_eq!(log.bytes, recount(&log));

        // With room, a replacement's outcome is kept and counted once, however often it
        // is replaced.
        let mut log = AnnotationLog::default();
        log.add(annotation("a", 5, None));
        log.add(annotation("b", 5, None));
        log.add(annotation("a", 5, Some("failed")));
        log.add(annotation("a", 5, Some("passed")));
        assert_eq!(log.items().len(), 2);
        assert_eq!(log.items()[0].outcome.as_deref(), Some("passed"));
        assert_eq!(log.bytes, "a".len() + "passed".len() + "b".len());
        assert_eq!(log.bytes, recount(&log));
    }

    #[test]
    fn reports_merging_annotations_start_from_the_bytes_they_hold() {
        let big = "x".repeat(MAX_ANNOTATION_BYTES - 10);
        let run = RunInfo {
            id: "r".into(),
            context: RunContext::default(),
            agent_version: "test".into(),
            status: RunStatus::Running,
            started_at: Timestamp(0),
            updated_at: Timestamp(0),
            ended_at: None,
            duration_seconds: 0.0,
            config_files: vec![],
            node: None,
            leadership: None,
            gaps: Vec::new(),
            config_revisions: Vec::new(),
        };
        let report = Report::new(run, Vec::new())
            .with_annotations([annotation(&big, 0, None)])
            .with_annotations([
                annotation("eleven byte", 1, None),
                annotation("ten bytes!", 2, None),
            ]);
        // The second merge counts the first one's bytes: 11 more do not fit, 10 do.
        let names: Vec<_> = report.annotations.iter().map(|a| a.name.len()).collect();
        assert_eq!(names, [big.len(), 10]);
        assert_eq!(report.annotations_dropped, 1);
    }
}
