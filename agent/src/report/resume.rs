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
//! | `state`, windowed values, `last_value`, `note`, run facts | this segment's (`last_value` falls back to the earlier one) |
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
    /// Resume it when it is the same run (see the module docs); else keep it aside and
    /// start a new run.
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

/// What a new agent is, to tell whether a checkpoint is of the same run.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// The run id this agent would use for a new run: an id from the CI environment must
    /// match; a generated one is replaced by the checkpoint's (also generated) id.
    pub run_id: &'a str,
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
    let ours_generated = is_generated_run_id(identity.run_id);
    if ours_generated && !is_generated_run_id(&run.id) {
        return Some(format!(
            "it is run {:?}, an id from the CI environment, and this agent has none",
            run.id
        ));
    }
    if !ours_generated && run.id != identity.run_id {
        return Some(format!(
            "it is run {:?} and this is run {:?} ($PROW_JOB_ID, else $BUILD_ID)",
            run.id, identity.run_id
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
        ("scope", then.scope.to_string(), now.scope.as_str().to_string()),
        ("probe", then.probe.to_string(), now.probe.kind().to_string()),
        ("target", then.target.clone(), now.probe.target()),
        ("condition", then.condition_text.clone(), now.condition.describe()),
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
    fields.into_iter().find(|(_, a, b)| a != b).map(|(what, a, b)| {
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
        .map(|s| match prior.invariants.iter().find(|p| p.name == s.name) {
            Some(p) => merge_invariant(p, s, cut),
            None => s.clone(),
        })
        .collect();
    // Only a hand-made pair of reports has invariants the segment lacks; keep them.
    for p in &prior.invariants {
        if !segment.invariants.iter().any(|s| s.name == p.name) {
            let mut kept = p.clone();
            close_at_gap(&mut kept.summary, cut);
            invariants.push(kept);
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
    o.availability_percent = percent(o.samples.ok, o.samples.failed);
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

/// `ok / (ok + failed)` in percent, as the evaluator computes it.
fn percent(ok: u64, failed: u64) -> Option<f64> {
    let total = ok.saturating_add(failed);
    (total > 0).then(|| ok as f64 * 100.0 / total as f64)
}
