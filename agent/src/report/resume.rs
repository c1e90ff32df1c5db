//! Resuming a run after the agent was killed: the report of a restarted agent covers the
//! whole run, with the time it was down marked as a gap.
//!
//! **The journal is the checkpoint.** The writer already puts the whole run's state into
//! `report.json` every `--checkpoint-interval` (status `running`), atomically. On start,
//! [`prepare`] looks there: a checkpoint of an unfinished run that is *the same run*
//! ([`Identity`]) is resumed. The new agent samples a fresh *segment* with fresh
//! evaluators, and every report built for the run record — each checkpoint, GetReport,
//! the final report — is [`merge`]d with the previous checkpoint, so nothing downstream
//! needs to know. What the merge does, field by field:
//!
//! | field | merged report |
//! |-------|---------------|
//! | `run.id`, `run.started_at` | the first segment's |
//! | `run.gaps` | earlier gaps, then `[last checkpoint's updated_at, this segment's start]` (`agent_restarted`) |
//! | `run.leadership` | intervals of both (one open at the kill ends at the last checkpoint) |
//! | `samples`, `disruption_seconds`, `violations_dropped` | added |
//! | `availability_percent` | recomputed from the added counts |
//! | `violations` | earlier ones, then this segment's (capped at 1000, the rest counted); one open at the kill ends at the last checkpoint and has `ended_by_gap: true` |
//! | `annotations` | both, merged as the annotation API merges them (a test's end replaces its start), then attribution and verdicts are recomputed |
//! | `latency` | `max` exact; `p50`/`p90`/`p99` the largest of the segments' (see below) |
//! | `increase` over the run | added (growth during the gap is not seen) |
//! | `examined` | either segment's |
//! | `note` of a cluster-scoped invariant under leader election | recomputed from the merged leadership |
//! | `state`, windowed values, `last_value`, run facts | this segment's (`last_value` falls back to the earlier one) |
//!
//! **What is lost.** Samples taken after the last checkpoint and before the kill: at most
//! one checkpoint interval plus the engine's one-second publish interval. They are not
//! silently lost: the gap starts at the checkpoint's `updated_at`, so the report says
//! exactly which time it has no samples for. A journal appended per sample would shrink
//! the gap by those few seconds at the cost of a disk write per sample; the gap itself
//! (the agent's restart) is usually longer, so the checkpoint is the journal.
//!
//! **Quantiles.** The report holds quantiles, not the latency histogram, so segments'
//! quantiles cannot be combined exactly. The q-quantile of the union of two sample sets
//! lies between the two sets' q-quantiles, so the larger one is an upper bound: a merged
//! report never understates latency. Windows (window availability, window quantile,
//! windowed increase) restart with the agent: they cover this segment only.
//!
//! **Merging is associative** (property-tested below): resuming twice gives the same
//! report whether the three segments are merged left to right or right to left, so a run
//! restarted any number of times is reported the same way.
//!
//! A checkpoint that cannot be read (truncated, not JSON, another schema major) or that
//! is not this run is never resumed and never lost: it is renamed aside
//! (`report.json.unreadable-<ms>`, `report.json.not-resumed-<ms>`) with a WARN naming the
//! file and why, and a fresh run starts. `--resume never` always starts fresh;
//! `--resume require` fails instead of starting fresh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{
    Gap, GapReason, InvariantReport, Leadership, REPORT_FILE, Report, RunContext, RunStatus,
    is_generated_run_id,
};
use crate::config::Invariant;
use crate::eval::{LatencySummary, MAX_VIOLATIONS, Summary, Totals};
use crate::sample::Timestamp;

/// What to do with an unfinished run's checkpoint found in the report directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ResumeMode {
    /// Resume it when it is the same run (same CI run id, node, cluster, job and
    /// invariants, and recent enough); else keep it aside and start a new run.
    #[default]
    Auto,
    /// Always start a new run (an unfinished checkpoint is kept aside).
    Never,
    /// Resume it, or fail to start when there is none that is the same run.
    Require,
}

impl ResumeMode {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeMode::Auto => "auto",
            ResumeMode::Never => "never",
            ResumeMode::Require => "require",
        }
    }
}

/// Default of `--resume-max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// Flags of `run` and `demo` about resuming a killed run.
#[derive(Clone, Debug, Args)]
pub struct ResumeArgs {
    /// What to do when --report-dir holds the checkpoint of an unfinished run (report.json
    /// with "status": "running", left by an agent that was killed). auto: resume it if it
    /// is the same run (same $PROW_JOB_ID/$BUILD_ID when set, same node, cluster, job and
    /// invariants, and not older than --resume-max-age), so the final report covers the
    /// whole run with the time the agent was down marked as a gap; otherwise keep it
    /// aside (renamed) and start a new run. never: always start a new run. require: resume
    /// or refuse to start.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = ResumeMode::Auto,
        env = "INVARIANT_AGENT_RESUME"
    )]
    pub resume: ResumeMode,
    /// The oldest last checkpoint that is resumed: an older one belongs to another run.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "15m",
        value_parser = crate::cli::parse_duration,
        env = "INVARIANT_AGENT_RESUME_MAX_AGE"
    )]
    pub resume_max_age: Duration,
}

impl Default for ResumeArgs {
    fn default() -> Self {
        ResumeArgs {
            resume: ResumeMode::Auto,
            resume_max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// `Identity::run_id_from` of an id the agent made up.
pub const GENERATED: &str = "generated";

/// What a new agent is, to tell whether a checkpoint is of the same run.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// The run id this agent would use for a new run: a configured one (flag, CI
    /// environment, the Lease) must match; a generated one is replaced by the checkpoint's
    /// (also generated) id.
    pub run_id: &'a str,
    /// Where `run_id` came from, as the start-up log says (`"generated"` when made up).
    pub run_id_from: &'a str,
    /// Node (or host) the agent runs on.
    pub node: Option<&'a str>,
    /// CI job, build and cluster.
    pub context: &'a RunContext,
    /// The invariants to watch, in file order.
    pub invariants: &'a [Invariant],
}

/// Why the agent refuses to start under `--resume require`.
#[derive(Debug, thiserror::Error)]
#[error(
    "--resume require: cannot resume from {path}: {reason}; start without --resume require to begin a new run"
)]
pub struct ResumeError {
    /// The checkpoint that was looked for.
    pub path: String,
    /// Why it cannot be resumed.
    pub reason: String,
}

/// A run being resumed: the last checkpoint of the run so far.
#[derive(Debug)]
pub struct Resumed {
    prior: Report,
}

impl Resumed {
    /// Resumes from `prior` (a checkpoint of the run so far).
    pub fn new(prior: Report) -> Self {
        Resumed { prior }
    }

    /// The run's id (the first segment's).
    pub fn run_id(&self) -> &str {
        &self.prior.run.id
    }

    /// The whole run's report: the checkpoint merged with `segment`, this agent's report.
    pub fn merge(&self, segment: &Report) -> Report {
        merge(&self.prior, segment)
    }
}

/// `segment` as the whole run's report: merged when the run was resumed, else itself.
pub fn whole_run(
    resumed: Option<&Resumed>,
    segment: std::sync::Arc<Report>,
) -> std::sync::Arc<Report> {
    match resumed {
        Some(r) => std::sync::Arc::new(r.merge(&segment)),
        None => segment,
    }
}

/// Looks for a checkpoint to resume in `dir` (see the module docs) as of `now`. `Ok(None)`:
/// start a new run (anything in the way has been kept aside and logged).
pub fn prepare(
    dir: &Path,
    args: &ResumeArgs,
    identity: &Identity<'_>,
    now: Timestamp,
) -> Result<Option<Resumed>, ResumeError> {
    let path = dir.join(REPORT_FILE);
    let require = args.resume == ResumeMode::Require;
    let refuse = |reason: String| ResumeError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if require {
                Err(refuse("there is no checkpoint".to_string()))
            } else {
                Ok(None)
            };
        }
        Err(e) => {
            let reason = format!("cannot read it ({e})");
            if require {
                return Err(refuse(reason));
            }
            tracing::warn!(path = %path.display(), error = %e, "cannot read the previous report; starting a new run, whose checkpoints will try to replace it");
            return Ok(None);
        }
    };
    let prior = match Report::from_json(&path.display().to_string(), &bytes) {
        Ok(prior) => prior,
        Err(e) => {
            if require {
                return Err(refuse(e.to_string()));
            }
            let aside = keep_aside(&path, "unreadable", now);
            tracing::warn!(
                path = %path.display(), problem = %e, kept_as = %aside,
                "the previous report cannot be read, so the run it belongs to cannot be resumed; it is kept aside and a new run starts"
            );
            return Ok(None);
        }
    };
    if prior.run.status == RunStatus::Completed {
        // A finished run: its report stays until this run's first checkpoint replaces it,
        // as always.
        return if require {
            Err(refuse(format!(
                "run {} completed; there is nothing to resume",
                prior.run.id
            )))
        } else {
            Ok(None)
        };
    }
    let why_not = match args.resume {
        ResumeMode::Never => Some("--resume never".to_string()),
        _ => different_run(&prior, identity, now, args.resume_max_age),
    };
    match why_not {
        None => {
            tracing::info!(
                run_id = %prior.run.id, path = %path.display(),
                last_checkpoint = %prior.run.updated_at,
                gap_seconds = now.since(prior.run.updated_at).as_secs_f64(),
                "resuming the run from its last checkpoint; the time since is recorded as a gap"
            );
            Ok(Some(Resumed::new(prior)))
        }
        Some(reason) if require => Err(refuse(reason)),
        Some(reason) => {
            let aside = keep_aside(&path, "not-resumed", now);
            tracing::warn!(
                path = %path.display(), run_id = %prior.run.id, reason = %reason, kept_as = %aside,
                "not resuming the unfinished run found in the report directory; its last checkpoint is kept aside and a new run starts"
            );
            Ok(None)
        }
    }
}

/// Renames `path` to `path.<label>-<ms>` so a new run cannot overwrite it; returns the
/// new name (or what went wrong, for the log).
fn keep_aside(path: &Path, label: &str, now: Timestamp) -> String {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{label}-{}", now.0));
    let aside = PathBuf::from(name);
    match std::fs::rename(path, &aside) {
        Ok(()) => aside.display().to_string(),
        Err(e) => format!(
            "(could not rename it to {}: {e}; this run's checkpoints will replace it)",
            aside.display()
        ),
    }
}

/// Why the checkpoint `prior` is not of the run `identity` would start at `now`, or
/// `None` when it is.
pub fn different_run(
    prior: &Report,
    identity: &Identity<'_>,
    now: Timestamp,
    max_age: Duration,
) -> Option<String> {
    let run = &prior.run;
    let ours_generated = identity.run_id_from == GENERATED;
    if ours_generated && !is_generated_run_id(&run.id) {
        return Some(format!(
            "it is run {:?}, a configured id, and this agent has none",
            run.id
        ));
    }
    if !ours_generated && run.id != identity.run_id {
        return Some(format!(
            "it is run {:?} and this is run {:?} (from {})",
            run.id, identity.run_id, identity.run_id_from
        ));
    }
    if run.node.as_deref() != identity.node {
        return Some(format!(
            "it was written on node {:?} and this is node {:?}",
            run.node, identity.node
        ));
    }
    if run.context != *identity.context {
        return Some(format!(
            "it is of job {:?} build {:?} cluster {:?}, and this agent's are {:?} {:?} {:?}",
            run.context.job_name,
            run.context.build_id,
            run.context.cluster,
            identity.context.job_name,
            identity.context.build_id,
            identity.context.cluster
        ));
    }
    // A clock that moved back by more than this is not trusted to order the segments.
    const SKEW: Duration = Duration::from_secs(60);
    if run.updated_at.0 > now.0.saturating_add(SKEW.as_millis() as i64) {
        return Some(format!(
            "its last checkpoint ({}) is later than now ({now}): the clock moved back",
            run.updated_at
        ));
    }
    let age = now.since(run.updated_at);
    if age > max_age {
        return Some(format!(
            "its last checkpoint is {} old, more than --resume-max-age {}",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        ));
    }
    let names = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(", ");
    if prior.invariants.len() != identity.invariants.len()
        || prior
            .invariants
            .iter()
            .zip(identity.invariants)
            .any(|(p, i)| p.name != i.name)
    {
        return Some(format!(
            "it watched other invariants ({}) than this agent ({})",
            names(&mut prior.invariants.iter().map(|i| i.name.as_str())),
            names(&mut identity.invariants.iter().map(|i| i.name.as_str()))
        ));
    }
    prior
        .invariants
        .iter()
        .zip(identity.invariants)
        .find_map(|(p, i)| changed_declaration(p, i))
}

/// What changed in how invariant `now` is judged since checkpoint entry `then`: samples
/// of another probe, target, condition or interval cannot be added up. Owner,
/// description, labels and `expectedDisruptions` may change (attribution is recomputed).
fn changed_declaration(then: &InvariantReport, now: &Invariant) -> Option<String> {
    let fields = [
        (
            "scope",
            then.scope.to_string(),
            now.scope.as_str().to_string(),
        ),
        (
            "probe",
            then.probe.to_string(),
            now.probe.kind().to_string(),
        ),
        ("target", then.target.clone(), now.probe.target()),
        (
            "condition",
            then.condition_text.clone(),
            now.condition.describe(),
        ),
        (
            "interval",
            format!("{}s", then.interval_seconds),
            format!("{}s", now.interval.as_secs_f64()),
        ),
        (
            "timeout",
            format!("{}s", then.timeout_seconds),
            format!("{}s", now.timeout.as_secs_f64()),
        ),
    ];
    fields
        .into_iter()
        .find(|(_, a, b)| a != b)
        .map(|(what, a, b)| {
            format!(
                "invariant {} changed its {what} from {a:?} to {b:?}",
                now.name
            )
        })
}

/// The whole run's report from the checkpoint `prior` (itself possibly merged) and the
/// report `segment` of the agent that resumed it (see the module docs).
pub fn merge(prior: &Report, segment: &Report) -> Report {
    let cut = prior.run.updated_at;
    let mut run = segment.run.clone();
    run.id = prior.run.id.clone();
    run.started_at = prior.run.started_at;
    run.duration_seconds = run.updated_at.since(run.started_at).as_secs_f64();
    run.gaps = prior.run.gaps.clone();
    run.gaps.push(Gap {
        start: cut.min(segment.run.started_at),
        end: segment.run.started_at,
        reason: GapReason::AgentRestarted,
    });
    run.gaps.extend(segment.run.gaps.iter().copied());
    run.leadership = merge_leadership(prior.run.leadership.as_ref(), &segment.run, cut);

    let mut invariants: Vec<InvariantReport> = segment
        .invariants
        .iter()
        .map(
            |s| match prior.invariants.iter().find(|p| p.name == s.name) {
                Some(p) => merge_invariant(p, s, cut),
                None => s.clone(),
            },
        )
        .collect();
    // Only a hand-made pair of reports has invariants the segment lacks; keep them.
    for p in &prior.invariants {
        if !segment.invariants.iter().any(|s| s.name == p.name) {
            let mut kept = p.clone();
            close_at_gap(&mut kept.summary, cut);
            invariants.push(kept);
        }
    }
    if let Some(leadership) = &run.leadership {
        // The note says how long this agent led: of the whole run now.
        for i in invariants.iter_mut().filter(|i| i.scope == "cluster") {
            i.note = Some(crate::engine::leadership_note(
                leadership,
                run.updated_at,
                run.started_at,
            ));
        }
    }
    let mut report = Report::new(run, invariants);
    report.schema_version = segment.schema_version.clone();
    report.annotations = prior.annotations.clone();
    report.annotations_dropped = prior
        .annotations_dropped
        .saturating_add(segment.annotations_dropped);
    // Also attributes every interval to the tests of both segments and recounts verdicts.
    report.add_annotations(segment.annotations.iter().cloned());
    report
}

/// Leadership of both segments: the lease and identity are the new agent's; an interval
/// open at the kill ends at the last checkpoint.
fn merge_leadership(
    prior: Option<&Leadership>,
    segment: &super::RunInfo,
    cut: Timestamp,
) -> Option<Leadership> {
    let earlier = prior.map(|l| {
        let mut intervals = l.intervals.clone();
        for i in &mut intervals {
            if i.end.is_none() {
                i.end = Some(cut.max(i.start));
            }
        }
        (l, intervals)
    });
    match (earlier, &segment.leadership) {
        (None, l) => l.clone(),
        (Some((l, intervals)), None) => Some(Leadership {
            intervals,
            ..l.clone()
        }),
        (Some((_, mut intervals)), Some(l)) => {
            intervals.extend(l.intervals.iter().copied());
            Some(Leadership {
                intervals,
                ..l.clone()
            })
        }
    }
}

/// Ends an interval left open by the kill at the last checkpoint, marked as ended by the
/// gap.
fn close_at_gap(summary: &mut Summary, cut: Timestamp) {
    for v in &mut summary.violations {
        if v.end.is_none() {
            v.end = Some(cut.max(v.start));
            v.ended_by_gap = true;
        }
    }
}

fn merge_invariant(p: &InvariantReport, s: &InvariantReport, cut: Timestamp) -> InvariantReport {
    let mut out = s.clone();
    let (ps, ss) = (&p.summary, &s.summary);
    let o = &mut out.summary;
    o.samples = add_totals(ps.samples, ss.samples);
    o.availability_percent = crate::eval::percent(o.samples.ok, o.samples.failed);
    o.latency = match (ps.latency, ss.latency) {
        (Some(a), Some(b)) => Some(LatencySummary {
            p50: a.p50.max(b.p50),
            p90: a.p90.max(b.p90),
            p99: a.p99.max(b.p99),
            max: a.max.max(b.max),
        }),
        (a, b) => a.or(b),
    };
    o.last_value = ss.last_value.or(ps.last_value);
    if run_long_increase(s) {
        o.increase = match (ps.increase, ss.increase) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
    o.disruption_seconds = ps.disruption_seconds + ss.disruption_seconds;
    o.examined = ps.examined || ss.examined;
    let mut earlier = ps.clone();
    close_at_gap(&mut earlier, cut);
    let mut dropped = ps.violations_dropped.saturating_add(ss.violations_dropped);
    let mut violations = earlier.violations;
    for v in &ss.violations {
        if violations.len() < MAX_VIOLATIONS {
            violations.push(v.clone());
        } else {
            dropped = dropped.saturating_add(1);
        }
    }
    o.violations = violations;
    o.violations_dropped = dropped;
    out.judge();
    out
}

/// Whether `i` is an `increase` condition over the whole run (not over a window): its
/// growth adds up across segments. The condition's text is how the report says so.
fn run_long_increase(i: &InvariantReport) -> bool {
    i.condition == "increase" && i.condition_text.ends_with("over the run")
}

fn add_totals(a: Totals, b: Totals) -> Totals {
    Totals {
        ok: a.ok.saturating_add(b.ok),
        failed: a.failed.saturating_add(b.failed),
        absent: a.absent.saturating_add(b.absent),
        missed: a.missed.saturating_add(b.missed),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::InvariantSet;
    use crate::engine::{Engine, RunMeta};
    use crate::report::{Annotation, AnnotationKind, Verdict};
    use crate::sample::{ErrorClass, Observation, ProbeError, Sample};
    use crate::schedule::Event;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: api
    description: d
    owner: o
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
    expectedDisruptions: ['\[Disruptive\]']
  - name: restarts
    description: d
    owner: o
    interval: 1s
    probe: {metrics: {url: "http://127.0.0.1:1/metrics", series: restarts_total}}
    condition: {increase: {max: 1000000}}
"#;

    fn set() -> InvariantSet {
        crate::config::parse_str("f.yaml", FILE).unwrap()
    }

    /// What happens in one segment: samples of `api` (`ok`) and of `restarts` (counter
    /// value), and tests that ran.
    #[derive(Clone, Debug)]
    struct Segment {
        start: i64,
        samples: Vec<(i64, bool, f64)>,
        tests: Vec<Annotation>,
        end: i64,
    }

    /// This segment's report, as a real engine builds it (status running: the agent was
    /// killed after it, or `completed` for the last one).
    fn segment_report(s: &Segment, status: RunStatus) -> Report {
        let meta = RunMeta {
            id: crate::report::generated_run_id(Timestamp(s.start)),
            started_at: Timestamp(s.start),
            config_files: vec!["f.yaml".into()],
            node: Some("node-1".into()),
        };
        let mut engine = Engine::new(&set(), meta);
        for t in &s.tests {
            engine.annotate(t.clone());
        }
        for &(at, ok, value) in &s.samples {
            let observation = if ok {
                Observation::Ok { value: None }
            } else {
                Observation::Failed(ProbeError::new(ErrorClass::HttpStatus, "status 500"))
            };
            let sample = |observation| Sample {
                at: Timestamp(at),
                latency: Duration::from_millis(1 + (at % 97) as u64),
                observation,
            };
            engine.handle(Event::Sample {
                invariant: 0,
                sample: sample(observation),
            });
            engine.handle(Event::Sample {
                invariant: 1,
                sample: sample(Observation::Ok { value: Some(value) }),
            });
        }
        engine.report(Timestamp(s.end), status)
    }

    fn test_annotation(name: &str, start: i64, end: Option<i64>) -> Annotation {
        Annotation {
            kind: AnnotationKind::Test,
            name: name.into(),
            start: Timestamp(start),
            end: end.map(Timestamp),
            outcome: end.map(|_| "passed".into()),
        }
    }

    /// Segments of a run: samples every second from `start`, failing in `[fail_from,
    /// fail_to)`.
    fn steady(start: i64, end: i64, fail: (i64, i64)) -> Segment {
        let samples = (start..end)
            .step_by(1000)
            .map(|at| (at, !(fail.0..fail.1).contains(&at), (at / 1000) as f64))
            .collect();
        Segment {
            start,
            samples,
            tests: Vec::new(),
            end,
        }
    }

    #[test]
    fn a_violation_open_at_the_kill_ends_at_the_last_checkpoint_and_the_gap_is_recorded() {
        // Failing from 5 s until the kill (last checkpoint at 10 s); restarted at 30 s.
        let a = segment_report(&steady(0, 10_000, (5_000, 99_000)), RunStatus::Running);
        assert_eq!(a.invariants[0].summary.violations[0].end, None);
        let b = segment_report(&steady(30_000, 40_000, (0, 0)), RunStatus::Completed);
        let merged = merge(&a, &b);

        assert_eq!(merged.run.id, a.run.id);
        assert_eq!(merged.run.started_at, Timestamp(0));
        assert_eq!(merged.run.status, RunStatus::Completed);
        assert_eq!(merged.run.duration_seconds, 40.0);
        assert_eq!(
            merged.run.gaps,
            [Gap {
                start: Timestamp(10_000),
                end: Timestamp(30_000),
                reason: GapReason::AgentRestarted
            }]
        );
        let api = &merged.invariants[0];
        let v = &api.summary.violations;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].start, Timestamp(5_000));
        assert_eq!(v[0].end, Some(Timestamp(10_000)));
        assert!(v[0].ended_by_gap);
        assert_eq!(api.verdict, Verdict::Violated);
        assert_eq!(merged.totals.violated, 1);
        let s = &api.summary.samples;
        assert_eq!((s.ok, s.failed), (5 + 10, 5));
        assert_eq!(api.summary.availability_percent, Some(75.0));
        assert_eq!(api.summary.state, crate::eval::State::Holding);
        // The counter grew 0..9 before the kill and 30..39 after: 9 + 9 over the run
        // (growth while the agent was down is not seen).
        assert_eq!(merged.invariants[1].summary.increase, Some(18.0));
        assert_eq!(merged.invariants[1].summary.last_value, Some(39.0));
    }

    #[test]
    fn tests_are_attributed_across_segments_and_a_test_end_after_the_restart_closes_it() {
        let mut a = steady(0, 10_000, (5_000, 99_000));
        a.tests = vec![test_annotation("kill it [Disruptive]", 4_000, None)];
        let mut b = steady(30_000, 40_000, (0, 0));
        b.tests = vec![test_annotation("kill it [Disruptive]", 4_000, Some(32_000))];
        let merged = merge(
            &segment_report(&a, RunStatus::Running),
            &segment_report(&b, RunStatus::Completed),
        );
        assert_eq!(merged.annotations.len(), 1, "the end replaced the start");
        assert_eq!(merged.annotations[0].end, Some(Timestamp(32_000)));
        let v = &merged.invariants[0].summary.violations[0];
        assert_eq!(v.expected_by, ["kill it [Disruptive]"]);
        assert_eq!(merged.invariants[0].verdict, Verdict::ExpectedDisruption);
        assert_eq!(merged.totals.expected_disruption, 1);
    }

    #[test]
    fn merged_reports_match_the_schema_and_every_form_shows_the_gap() {
        let a = segment_report(&steady(0, 10_000, (5_000, 99_000)), RunStatus::Running);
        let b = segment_report(&steady(30_000, 40_000, (0, 0)), RunStatus::Completed);
        let merged = merge(&a, &b);
        let schema: serde_json::Value = serde_json::from_str(crate::report::JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&merged.to_json()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert_eq!(json["run"]["gaps"][0]["reason"], "agent_restarted");
        assert_eq!(json["invariants"][0]["violations"][0]["ended_by_gap"], true);
        // It reads back as it was written.
        let back = Report::from_json("r.json", &merged.to_json()).unwrap();
        assert_eq!(back.run.gaps, merged.run.gaps);

        let text = crate::report::text::render(&merged);
        assert!(text.contains("gap: 1970-01-01T00:00:10.000Z → 1970-01-01T00:00:30.000Z (20.0s): agent restarted; no samples"), "{text}");
        assert!(text.contains("ended by the gap"), "{text}");
        let md = crate::report::markdown::render(&merged);
        assert!(
            md.contains("**Gap:**") && md.contains("ended by gap"),
            "{md}"
        );
        let junit = crate::report::junit::render(&merged, Default::default());
        assert!(
            junit.contains(r#"<property name="run_gaps" value="1"/>"#)
                && junit.contains(r#"<property name="run_gap_seconds" value="20.000"/>"#)
                && junit.contains("gap: 1970-01-01T00:00:10.000Z"),
            "{junit}"
        );
        let html = crate::report::html::render(&merged);
        assert!(
            html.contains(r#"class="gap" data-kind="gap""#)
                && html.contains(r#"data-start="10000" data-end="30000""#)
                && html.contains(r#"id="run-gaps""#)
                && html.contains(r#"data-ended-by-gap="true""#),
            "{html}"
        );
        let bigquery: serde_json::Value =
            serde_json::from_str(crate::report::BIGQUERY_SCHEMA).unwrap();
        for line in crate::report::ndjson::render(&merged).lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let problems =
                crate::report::ndjson::check_row_against_bigquery_schema(&row, &bigquery);
            assert!(problems.is_empty(), "{problems:#?}");
            assert_eq!(row["run_gap_seconds"], 20.0);
            assert_eq!(row["run_gaps"][0]["duration_seconds"], 20.0);
        }
    }

    #[test]
    fn not_examined_invariants_say_the_agent_was_down_in_junit() {
        // Nothing sampled in either segment.
        let a = segment_report(&steady(0, 0, (0, 0)), RunStatus::Running);
        let b = segment_report(&steady(5_000, 5_000, (0, 0)), RunStatus::Completed);
        let merged = merge(&a, &b);
        assert_eq!(merged.totals.not_examined, 2);
        let junit = crate::report::junit::render(&merged, Default::default());
        assert!(
            junit.contains("no invariant was sampled for 5.0s of the run, in 1 gap"),
            "{junit}"
        );
    }

    #[test]
    fn leadership_of_both_agents_is_kept_and_the_note_covers_the_whole_run() {
        let file = FILE.replace(
            "  - name: restarts",
            "  - name: restarts\n    scope: cluster",
        );
        let set = crate::config::parse_str("f.yaml", &file).unwrap();
        let segment = |start: i64, led: (i64, i64), end: i64, status| {
            let meta = RunMeta {
                id: "run-1-0000000a".into(),
                started_at: Timestamp(start),
                config_files: vec![],
                node: None,
            };
            let mut engine = Engine::new(&set, meta);
            let (_tx, rx) = tokio::sync::watch::channel(false);
            engine.follow_leadership("ns/lease", &format!("agent-{start}"), rx);
            engine.set_leading(true, Timestamp(led.0));
            if led.1 < end {
                engine.set_leading(false, Timestamp(led.1));
            }
            engine.report(Timestamp(end), status)
        };
        // The first agent leads from 1 s until it is killed (last checkpoint at 10 s);
        // the second leads from 25 s to 35 s of a run ending at 40 s.
        let a = segment(0, (1_000, 99_000), 10_000, RunStatus::Running);
        let b = segment(20_000, (25_000, 35_000), 40_000, RunStatus::Completed);
        let merged = merge(&a, &b);
        let leadership = merged.run.leadership.as_ref().unwrap();
        assert_eq!(leadership.identity, "agent-20000");
        let spans: Vec<_> = leadership
            .intervals
            .iter()
            .map(|i| (i.start.0, i.end.map(|e| e.0)))
            .collect();
        assert_eq!(spans, [(1_000, Some(10_000)), (25_000, Some(35_000))]);
        let note = merged.invariants[1].note.as_deref().unwrap();
        assert!(
            note.contains("19s of the run's 40s, in 2 intervals"),
            "{note}"
        );
        assert_eq!(merged.invariants[0].note, None, "node-scoped");
    }

    // ----- identity and the report directory -----

    fn identity<'a>(id: &'a str, set: &'a InvariantSet, context: &'a RunContext) -> Identity<'a> {
        Identity {
            run_id: id,
            run_id_from: if is_generated_run_id(id) {
                GENERATED
            } else {
                "$PROW_JOB_ID"
            },
            node: Some("node-1"),
            context,
            invariants: &set.invariants,
        }
    }

    fn checkpoint(dir: &Path, report: &Report) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(REPORT_FILE), report.to_json()).unwrap();
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_same_run_is_resumed_and_a_generated_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = segment_report(&steady(0, 10_000, (0, 0)), RunStatus::Running);
        checkpoint(dir.path(), &a);
        let (set, context) = (set(), RunContext::default());
        let fresh = crate::report::generated_run_id(Timestamp(20_000));
        let resumed = prepare(
            dir.path(),
            &ResumeArgs::default(),
            &identity(&fresh, &set, &context),
            Timestamp(20_000),
        )
        .unwrap()
        .expect("resumed");
        assert_eq!(resumed.run_id(), a.run.id);
        assert_eq!(files(dir.path()), ["report.json"], "left in place");
    }

    #[test]
    fn another_run_is_kept_aside_and_a_new_run_starts() {
        let (set, context) = (set(), RunContext::default());
        let a = segment_report(&steady(0, 10_000, (0, 0)), RunStatus::Running);
        let other_context = RunContext {
            cluster: Some("other".into()),
            ..RunContext::default()
        };
        let mut changed = set.clone();
        changed.invariants[0].interval = Duration::from_secs(2);
        let cases: Vec<(&str, Identity<'_>, i64, &str)> = vec![
            (
                "ci id",
                identity("1234", &set, &context),
                20_000,
                "this is run \"1234\" (from $PROW_JOB_ID)",
            ),
            (
                "node",
                Identity {
                    node: Some("node-2"),
                    ..identity("run-1-0000000a", &set, &context)
                },
                20_000,
                "node",
            ),
            (
                "cluster",
                identity("run-1-0000000a", &set, &other_context),
                20_000,
                "cluster",
            ),
            (
                "too old",
                identity("run-1-0000000a", &set, &context),
                10_000 + 16 * 60_000,
                "--resume-max-age",
            ),
            (
                "future",
                identity("run-1-0000000a", &set, &context),
                10_000 - 120_000,
                "clock moved back",
            ),
            (
                "config",
                identity("run-1-0000000a", &changed, &context),
                20_000,
                "invariant api changed its interval from \"1s\" to \"2s\"",
            ),
        ];
        for (what, id, now, reason) in cases {
            let why = different_run(&a, &id, Timestamp(now), DEFAULT_MAX_AGE)
                .unwrap_or_else(|| panic!("{what}: resumed"));
            assert!(why.contains(reason), "{what}: {why}");
            let dir = tempfile::tempdir().unwrap();
            checkpoint(dir.path(), &a);
            let resumed = prepare(dir.path(), &ResumeArgs::default(), &id, Timestamp(now)).unwrap();
            assert!(resumed.is_none(), "{what}");
            assert_eq!(
                files(dir.path()),
                [format!("report.json.not-resumed-{now}")],
                "{what}: kept aside"
            );
        }
        // An explicit id must match; then it is resumed.
        let mut ci = a.clone();
        ci.run.id = "1234".into();
        assert_eq!(
            different_run(
                &ci,
                &identity("1234", &set, &context),
                Timestamp(20_000),
                DEFAULT_MAX_AGE
            ),
            None
        );
        assert!(
            different_run(
                &ci,
                &identity("5678", &set, &context),
                Timestamp(20_000),
                DEFAULT_MAX_AGE
            )
            .unwrap()
            .contains("\"1234\" and this is run \"5678\"")
        );
        assert!(
            different_run(
                &ci,
                &identity("run-1-0000000a", &set, &context),
                Timestamp(20_000),
                DEFAULT_MAX_AGE
            )
            .unwrap()
            .contains("a configured id, and this agent has none")
        );
    }

    #[test]
    fn an_unreadable_checkpoint_is_kept_aside_and_never_panics() {
        let (set, context) = (set(), RunContext::default());
        let a = segment_report(&steady(0, 10_000, (0, 0)), RunStatus::Running);
        let json = a.to_json();
        let other_schema = String::from_utf8(json.clone()).unwrap().replace(
            "invariant-agent.report/v1alpha1",
            "invariant-agent.report/v2",
        );
        for (what, bytes) in [
            ("truncated", json[..json.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("not a report", b"{\"hello\": 1}".to_vec()),
            ("other schema", other_schema.into_bytes()),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(REPORT_FILE), &bytes).unwrap();
            let id = identity("run-1-0000000a", &set, &context);
            let resumed =
                prepare(dir.path(), &ResumeArgs::default(), &id, Timestamp(20_000)).unwrap();
            assert!(resumed.is_none(), "{what}");
            assert_eq!(
                files(dir.path()),
                ["report.json.unreadable-20000"],
                "{what}"
            );
            let kept = std::fs::read(dir.path().join("report.json.unreadable-20000")).unwrap();
            assert_eq!(kept, bytes, "{what}: kept as it was");
            // With --resume require the agent refuses, and leaves the file alone.
            std::fs::write(dir.path().join(REPORT_FILE), &bytes).unwrap();
            let require = ResumeArgs {
                resume: ResumeMode::Require,
                ..ResumeArgs::default()
            };
            let e = prepare(dir.path(), &require, &id, Timestamp(20_000)).unwrap_err();
            assert!(e.to_string().contains("report.json"), "{what}: {e}");
            assert!(dir.path().join(REPORT_FILE).exists());
        }
    }

    #[test]
    fn modes_never_and_require_and_finished_runs() {
        let (set, context) = (set(), RunContext::default());
        let id = identity("run-1-0000000a", &set, &context);
        let a = segment_report(&steady(0, 10_000, (0, 0)), RunStatus::Running);
        let never = ResumeArgs {
            resume: ResumeMode::Never,
            ..ResumeArgs::default()
        };
        let require = ResumeArgs {
            resume: ResumeMode::Require,
            ..ResumeArgs::default()
        };
        let dir = tempfile::tempdir().unwrap();
        checkpoint(dir.path(), &a);
        assert!(
            prepare(dir.path(), &never, &id, Timestamp(20_000))
                .unwrap()
                .is_none()
        );
        assert_eq!(files(dir.path()), ["report.json.not-resumed-20000"]);
        // Nothing to resume: require refuses to start.
        let e = prepare(dir.path(), &require, &id, Timestamp(20_000)).unwrap_err();
        assert!(e.reason.contains("no checkpoint"), "{e}");
        // A completed run is not resumed, and stays until the new run replaces it.
        let done = segment_report(&steady(0, 10_000, (0, 0)), RunStatus::Completed);
        checkpoint(dir.path(), &done);
        assert!(
            prepare(dir.path(), &ResumeArgs::default(), &id, Timestamp(20_000))
                .unwrap()
                .is_none()
        );
        assert!(dir.path().join(REPORT_FILE).exists());
        assert!(prepare(dir.path(), &require, &id, Timestamp(20_000)).is_err());
        // The same run under require: resumed.
        checkpoint(dir.path(), &a);
        assert!(
            prepare(dir.path(), &require, &id, Timestamp(20_000))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn generated_run_ids_are_recognised() {
        assert!(crate::report::is_generated_run_id(
            &crate::report::generated_run_id(Timestamp(1_764_000_000_000))
        ));
        for id in [
            "1234",
            "run-x-0000000a",
            "run-1-000000a",
            "run-1-0000000g",
            "prow-run-1-0000000a",
        ] {
            assert!(!crate::report::is_generated_run_id(id), "{id}");
        }
    }

    // ----- properties -----

    /// Three consecutive segments of a run: samples at increasing times, some failing,
    /// a counter that grows, and a test that may span a kill.
    fn run_of_three() -> impl Strategy<Value = [Segment; 3]> {
        let samples =
            prop::collection::vec((1i64..3_000, prop::bool::weighted(0.7), 0u8..3), 0..40);
        (
            [samples.clone(), samples.clone(), samples],
            [1i64..60_000, 1i64..60_000, 1i64..60_000],
            [0i64..2_000, 0i64..2_000, 0i64..2_000],
            prop::option::of((0usize..3, 0usize..3)),
        )
            .prop_map(|(streams, gaps, tails, test)| {
                let mut at = 1_000_000;
                let mut value = 0.0;
                let mut segments: Vec<Segment> = Vec::new();
                for ((stream, gap), tail) in streams.into_iter().zip(gaps).zip(tails) {
                    at += gap;
                    let start = at;
                    let samples = stream
                        .into_iter()
                        .map(|(step, ok, grow)| {
                            at += step;
                            value += f64::from(grow);
                            (at, ok, value)
                        })
                        .collect();
                    at += tail;
                    segments.push(Segment {
                        start,
                        samples,
                        tests: Vec::new(),
                        end: at,
                    });
                }
                // A test that starts in one segment and whose end reaches a later agent.
                if let Some((from, to)) = test {
                    let (from, to) = (from.min(to), from.max(to));
                    let start = segments[from].start;
                    let end = segments[to].end;
                    segments[from]
                        .tests
                        .push(test_annotation("t [Disruptive]", start, None));
                    segments[to]
                        .tests
                        .push(test_annotation("t [Disruptive]", start, Some(end)));
                }
                [
                    segments[0].clone(),
                    segments[1].clone(),
                    segments[2].clone(),
                ]
            })
    }

    /// JSON equality with floats compared to 1e-9 relative (sums of the same numbers in
    /// another order may differ in the last bit).
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    fn json(r: &Report) -> serde_json::Value {
        serde_json::from_slice(&r.to_json()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn merging_is_associative_and_adds_up(segments in run_of_three()) {
            let [a, b, c] = &segments;
            let (ra, rb) = (segment_report(a, RunStatus::Running), segment_report(b, RunStatus::Running));
            let rc = segment_report(c, RunStatus::Completed);
            let left = merge(&merge(&ra, &rb), &rc);
            let right = merge(&ra, &merge(&rb, &rc));
            prop_assert!(same(&json(&left), &json(&right)), "left:\n{:#}\nright:\n{:#}", json(&left), json(&right));

            // One gap per restart, each from a segment's last checkpoint to the next start.
            prop_assert_eq!(left.run.gaps.len(), 2);
            for (gap, (before, after)) in left.run.gaps.iter().zip([(&ra, &rb), (&rb, &rc)]) {
                prop_assert_eq!(gap.start, before.run.updated_at);
                prop_assert_eq!(gap.end, after.run.started_at);
            }
            prop_assert_eq!(left.run.started_at, ra.run.started_at);
            prop_assert_eq!(&left.run.id, &ra.run.id);

            for (n, merged) in left.invariants.iter().enumerate() {
                let parts = [&ra.invariants[n], &rb.invariants[n], &rc.invariants[n]];
                let s = &merged.summary;
                let sum = |f: fn(&Totals) -> u64| parts.iter().map(|p| f(&p.summary.samples)).sum::<u64>();
                prop_assert_eq!(s.samples.ok, sum(|t| t.ok));
                prop_assert_eq!(s.samples.failed, sum(|t| t.failed));
                prop_assert_eq!(s.samples.absent, sum(|t| t.absent));
                prop_assert_eq!(s.availability_percent, crate::eval::percent(s.samples.ok, s.samples.failed));
                let disruption: f64 = parts.iter().map(|p| p.summary.disruption_seconds).sum();
                prop_assert!((s.disruption_seconds - disruption).abs() < 1e-9);
                prop_assert_eq!(s.examined, parts.iter().any(|p| p.summary.examined));
                // Every interval of every segment, in order; only the last segment's may
                // stay open, and those open at a kill end at that segment's checkpoint.
                let expected: Vec<(Timestamp, Option<Timestamp>, bool)> = parts
                    .iter()
                    .enumerate()
                    .flat_map(|(k, p)| {
                        let cut = [ra.run.updated_at, rb.run.updated_at][..].get(k).copied();
                        p.summary.violations.iter().map(move |v| match (v.end, cut) {
                            (None, Some(cut)) => (v.start, Some(cut.max(v.start)), true),
                            (end, _) => (v.start, end, false),
                        })
                    })
                    .collect();
                let got: Vec<_> = s.violations.iter().map(|v| (v.start, v.end, v.ended_by_gap)).collect();
                prop_assert_eq!(got, expected);
                // Whole-run quantiles are an upper bound: at least each segment's.
                if let Some(l) = s.latency {
                    for p in parts.iter().filter_map(|p| p.summary.latency) {
                        prop_assert!(l.p99 >= p.p99 && l.max >= p.max && l.p50 >= p.p50);
                    }
                }
            }
            // A report of a merged run is a valid report, and merges like any other.
            let back = Report::from_json("r.json", &left.to_json()).unwrap();
            prop_assert!(same(&json(&back), &json(&left)));
        }
    }
}
