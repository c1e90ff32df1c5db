//! The short plain-text summary printed when a run ends (and `report render --format
//! text`).

use std::fmt::Write;

use super::{InvariantReport, Report, RevisionResult, RunStatus, Verdict};

/// Renders a table of invariants (worst first) and each violation interval.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let run = &report.run;
    let t = &report.totals;
    let _ = write!(
        out,
        "run {} · {:.0}s · {} violated, {} expected disruption, {} held, {} not examined",
        run.id, run.duration_seconds, t.violated, t.expected_disruption, t.held, t.not_examined
    );
    if run.status == RunStatus::Running {
        let _ = write!(
            out,
            " · status running: in progress, or cut short after {}",
            run.updated_at
        );
    }
    out.push('\n');
    for g in &run.gaps {
        let _ = writeln!(out, "gap: {}", g.describe());
    }
    if let Some(l) = &run.leadership {
        let led = match l.intervals.len() {
            0 => "never led, so it ran no cluster-scoped invariant".to_string(),
            n => format!(
                "led {} in {n} interval{}",
                humantime::format_duration(std::time::Duration::from_secs(
                    l.led_for(report.end_time()).as_secs()
                )),
                if n == 1 { "" } else { "s" }
            ),
        };
        let _ = writeln!(
            out,
            "leader election: Lease {} as {}: {led}",
            l.lease, l.identity
        );
    }
    for r in &run.config_revisions {
        let _ = match r.result {
            RevisionResult::Applied => writeln!(
                out,
                "config change applied at {}: added [{}], changed [{}], removed [{}]",
                r.at,
                r.added.join(", "),
                r.changed.join(", "),
                r.removed.join(", ")
            ),
            RevisionResult::Refused => writeln!(
                out,
                "config change refused at {} ({} problem{}): {}",
                r.at,
                r.problems.len(),
                if r.problems.len() == 1 { "" } else { "s" },
                r.problems.first().map_or("", String::as_str)
            ),
        };
    }
    let rows = report.by_severity();
    let width = rows
        .iter()
        .map(|i| label(i).len())
        .max()
        .unwrap_or(4)
        .max(9);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:<19}  {:>17}  {:>8}  {:>10}  CONDITION",
        "INVARIANT", "VERDICT", "OK/FAILED/ABSENT", "AVAIL", "DISRUPTION"
    );
    for i in &rows {
        let s = &i.summary.samples;
        let avail = i
            .summary
            .availability_percent
            .map(|a| format!("{a:.2}%"))
            .unwrap_or_else(|| "-".to_string());
        let _ = writeln!(
            out,
            "{:<width$}  {:<19}  {:>17}  {:>8}  {:>9.1}s  {}",
            label(i),
            i.verdict.as_str(),
            format!("{}/{}/{}", s.ok, s.failed, s.absent),
            avail,
            i.summary.disruption_seconds,
            i.condition_text
        );
    }
    if let Some(note) = run.gap_note() {
        let _ = writeln!(out, "\n{note}.");
    }
    for i in rows.iter().filter(|i| !i.summary.violations.is_empty()) {
        let _ = writeln!(out, "\n{} violations:", i.name);
        for v in &i.summary.violations {
            let end = v
                .end
                .map(|e| e.to_rfc3339())
                .unwrap_or_else(|| "(still open)".to_string());
            let class = v.error_class.map(|c| c.as_str()).unwrap_or("condition");
            let expected = match (v.expected, v.ended_by_gap) {
                (true, true) => " (expected; ended by the gap)",
                (true, false) => " (expected)",
                (false, true) => " (ended by the gap: the agent went down)",
                (false, false) => "",
            };
            let _ = writeln!(
                out,
                "  {} → {}  {} samples  [{}]{} {}",
                v.start,
                end,
                v.samples,
                class,
                expected,
                v.last_error
                    .as_deref()
                    .or(v.first_error.as_deref())
                    .unwrap_or("")
            );
            if !v.tests.is_empty() {
                let more = if v.tests_omitted > 0 {
                    format!(" … and {} more", v.tests_omitted)
                } else {
                    String::new()
                };
                let _ = writeln!(out, "    tests running: {}{more}", v.tests.join("; "));
            }
        }
        if i.summary.violations_dropped > 0 {
            let _ = writeln!(
                out,
                "  … and {} more not stored",
                i.summary.violations_dropped
            );
        }
    }
    if rows.iter().any(|i| i.verdict == Verdict::NotExamined) {
        let _ = writeln!(
            out,
            "\nnot_examined: no sample could be judged (no samples, or only absent series); this is not a pass."
        );
    }
    out
}

/// The invariant's name, with when it started or stopped if a configuration change
/// made it run only part of the run.
fn label(i: &InvariantReport) -> String {
    match (i.retired, i.active_from) {
        (Some(r), _) => format!("{} ({} at {})", i.name, r.reason.as_str(), r.at),
        (None, Some(from)) => format!("{} (from {from})", i.name),
        (None, None) => i.name.clone(),
    }
}
