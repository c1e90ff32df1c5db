//! JUnit XML for CI ingestion (Kettle, TestGrid, Spyglass, GitLab, Jenkins).
//!
//! One `<testcase>` per invariant, named `[invariant] NAME` with classname
//! `invariant-agent`: the name depends only on the invariant's name, so TestGrid rows
//! line up across runs. The owner, verdict and condition are testcase `<property>`s; the
//! details (samples, disruption, every violation interval with its errors and the tests
//! running then) are in `<system-out>`.
//!
//! | verdict               | informational (default) | enforcing   |
//! |-----------------------|-------------------------|-------------|
//! | `violated`            | passes, details in system-out | `<failure>` |
//! | `expected_disruption` | passes                  | passes      |
//! | `held`                | passes                  | passes      |
//! | `not_examined`        | `<skipped>`             | `<skipped>` |
//!
//! Informational is the default so that no job turns red unless its owners ask; an
//! invariant that examined nothing is skipped (never shown as passing) in both modes.

use std::borrow::Cow;
use std::fmt::Write;

use super::{InvariantReport, Report, RunStatus, Verdict};
use crate::eval::ViolationInterval;

/// Whether violations fail their testcase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum JunitMode {
    /// Violations are recorded in system-out; the testcase passes.
    #[default]
    Informational,
    /// A `violated` invariant is a `<failure>`.
    Enforcing,
}

impl JunitMode {
    /// The name used on the command line and in the report's properties.
    pub fn as_str(self) -> &'static str {
        match self {
            JunitMode::Informational => "informational",
            JunitMode::Enforcing => "enforcing",
        }
    }
}

/// The testcase name of an invariant: stable across runs.
pub fn testcase_name(invariant: &str) -> String {
    format!("[invariant] {invariant}")
}

/// Renders the report as a JUnit XML document.
pub fn render(report: &Report, mode: JunitMode) -> String {
    let run = &report.run;
    let tests = report.invariants.len();
    let failures = if mode == JunitMode::Enforcing {
        report.totals.violated
    } else {
        0
    };
    let skipped = report.totals.not_examined;
    let time = format!("{:.3}", run.duration_seconds);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"invariant-agent\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time}\">"
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"invariant-agent\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time}\" timestamp=\"{}\"{}>",
        attr(&run.started_at.to_rfc3339()),
        run.node
            .as_deref()
            .map(|n| format!(" hostname=\"{}\"", attr(n)))
            .unwrap_or_default()
    );
    out.push_str("    <properties>\n");
    let mut suite_props: Vec<(&str, String)> = vec![
        ("run_id", run.id.clone()),
        ("run_status", run.status.as_str().to_string()),
        ("agent_version", run.agent_version.to_string()),
        ("junit_mode", mode.as_str().to_string()),
        ("schema_version", report.schema_version.to_string()),
    ];
    for (k, v) in [
        ("job_name", &run.context.job_name),
        ("build_id", &run.context.build_id),
        ("cluster", &run.context.cluster),
    ] {
        if let Some(v) = v {
            suite_props.push((k, v.clone()));
        }
    }
    if !run.gaps.is_empty() {
        suite_props.push(("run_gaps", run.gaps.len().to_string()));
        suite_props.push((
            "run_gap_seconds",
            format!("{:.3}", run.gap_duration().as_secs_f64()),
        ));
    }
    for (k, v) in &suite_props {
        property(&mut out, 6, k, v);
    }
    out.push_str("    </properties>\n");
    for i in &report.invariants {
        testcase(&mut out, report, i, mode, &time);
    }
    if run.status == RunStatus::Running {
        let _ = writeln!(
            out,
            "    <system-err>{}</system-err>",
            text(&format!(
                "This report is a checkpoint of a run with status running: in progress, or cut short (killed) after {}.",
                run.updated_at
            ))
        );
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn testcase(out: &mut String, report: &Report, i: &InvariantReport, mode: JunitMode, time: &str) {
    let _ = writeln!(
        out,
        "    <testcase name=\"{}\" classname=\"invariant-agent\" time=\"{time}\">",
        attr(&testcase_name(&i.name))
    );
    out.push_str("      <properties>\n");
    property(out, 8, "owner", &i.owner);
    property(out, 8, "verdict", i.verdict.as_str());
    property(out, 8, "condition", &i.condition_text);
    property(
        out,
        8,
        "disruption_seconds",
        &format!("{:.3}", i.summary.disruption_seconds),
    );
    property(
        out,
        8,
        "unexpected_violations",
        &i.unexpected_violations.to_string(),
    );
    property(
        out,
        8,
        "expected_violations",
        &i.expected_violations.to_string(),
    );
    out.push_str("      </properties>\n");
    let details = details(report, i, mode);
    match i.verdict {
        Verdict::Violated if mode == JunitMode::Enforcing => {
            let message = headline(i);
            let _ = writeln!(
                out,
                "      <failure message=\"{}\" type=\"violated\">{}</failure>",
                attr(&message),
                text(&details)
            );
        }
        Verdict::NotExamined => {
            let _ = writeln!(
                out,
                "      <skipped message=\"{}\"/>",
                attr(&{
                    let mut message = match &i.note {
                        Some(note) => format!("not examined: {note}"),
                        None => format!(
                            "not examined: no sample of {} could be judged (no samples, or only absent series); this is not a pass",
                            i.name
                        ),
                    };
                    if let Some(gaps) = report.run.gap_note() {
                        message.push_str("; ");
                        message.push_str(&gaps);
                    }
                    message
                })
            );
        }
        _ => {}
    }
    let _ = writeln!(out, "      <system-out>{}</system-out>", text(&details));
    out.push_str("    </testcase>\n");
}

/// One line saying what went wrong, for a failure message.
fn headline(i: &InvariantReport) -> String {
    let first = i
        .summary
        .violations
        .iter()
        .find(|v| !v.expected)
        .and_then(|v| v.first_error.as_deref())
        .unwrap_or("condition violated");
    format!(
        "{} violated {} time{} outside expected disruptions ({:.1}s disruption): {}",
        i.name,
        i.unexpected_violations,
        if i.unexpected_violations == 1 {
            ""
        } else {
            "s"
        },
        i.summary.disruption_seconds,
        first
    )
}

/// The plain-text details in system-out (and in a failure's body).
fn details(report: &Report, i: &InvariantReport, mode: JunitMode) -> String {
    let s = &i.summary;
    let mut d = String::new();
    let _ = writeln!(d, "invariant: {}", i.name);
    let _ = writeln!(d, "verdict: {}", i.verdict.as_str());
    let _ = writeln!(d, "owner: {}", i.owner);
    let _ = writeln!(d, "description: {}", i.description);
    let _ = writeln!(d, "condition: {}", i.condition_text);
    let _ = writeln!(d, "probe: {} {}", i.probe, i.target);
    let _ = writeln!(
        d,
        "samples: ok {}, failed {}, absent {}, missed {}",
        s.samples.ok, s.samples.failed, s.samples.absent, s.samples.missed
    );
    if let Some(a) = s.availability_percent {
        let _ = writeln!(d, "availability: {a:.3}%");
    }
    if let Some(l) = &s.latency {
        let _ = writeln!(
            d,
            "latency: p50 {:.3}s, p90 {:.3}s, p99 {:.3}s, max {:.3}s",
            l.p50, l.p90, l.p99, l.max
        );
    }
    if let Some(inc) = s.increase {
        let _ = writeln!(d, "increase: {inc}");
    }
    let _ = writeln!(d, "disruption: {:.3}s", s.disruption_seconds);
    let _ = writeln!(
        d,
        "violations: {} unexpected, {} expected",
        i.unexpected_violations, i.expected_violations
    );
    for (n, v) in s.violations.iter().enumerate() {
        interval(&mut d, report, n + 1, v);
    }
    if s.violations_dropped > 0 {
        let _ = writeln!(
            d,
            "… and {} more intervals not stored (counted as unexpected)",
            s.violations_dropped
        );
    }
    if i.verdict == Verdict::Violated && mode == JunitMode::Informational {
        let _ = writeln!(
            d,
            "informational: violations do not fail this testcase (render with --junit-mode enforcing to fail it)"
        );
    }
    for g in &report.run.gaps {
        let _ = writeln!(d, "gap: {}", g.describe());
    }
    if report.run.status == RunStatus::Running {
        let _ = writeln!(
            d,
            "run status: running (in progress, or cut short after {})",
            report.run.updated_at
        );
    }
    d
}

fn interval(d: &mut String, report: &Report, n: usize, v: &ViolationInterval) {
    let end = v.end.unwrap_or(report.end_time());
    let _ = writeln!(
        d,
        "violation {n}{}{}: {} → {} ({:.1}s{}) [{}] {} samples",
        if v.expected { " (expected)" } else { "" },
        if v.ended_by_gap {
            " (ended by a gap: the agent went down while it was open)"
        } else {
            ""
        },
        v.start,
        v.end
            .map(|e| e.to_rfc3339())
            .unwrap_or_else(|| "still open".to_string()),
        end.since(v.start).as_secs_f64(),
        if v.end.is_none() { "+" } else { "" },
        v.error_class.map(|c| c.as_str()).unwrap_or("condition"),
        v.samples
    );
    if let Some(e) = &v.first_error {
        let _ = writeln!(d, "  first error: {e}");
    }
    if let Some(e) = v
        .last_error
        .as_ref()
        .filter(|e| Some(*e) != v.first_error.as_ref())
    {
        let _ = writeln!(d, "  last error: {e}");
    }
    if !v.tests.is_empty() {
        let _ = writeln!(d, "  tests running:");
        for t in &v.tests {
            let mark = if v.expected_by.contains(t) {
                " (expected to disrupt)"
            } else {
                ""
            };
            let _ = writeln!(d, "    - {t}{mark}");
        }
        if v.tests_omitted > 0 {
            let _ = writeln!(d, "    … and {} more", v.tests_omitted);
        }
    }
}

fn property(out: &mut String, indent: usize, name: &str, value: &str) {
    let _ = writeln!(
        out,
        "{:indent$}<property name=\"{}\" value=\"{}\"/>",
        "",
        attr(name),
        attr(value)
    );
}

/// Escapes text content. Characters XML 1.0 cannot carry at all (most control
/// characters) become U+FFFD, so error messages from remote servers can never make the
/// document ill-formed.
fn text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Escapes an attribute value (also quotes, and newlines so they survive parsing).
fn attr(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, attribute: bool) -> Cow<'_, str> {
    // The report of 1,000 invariants is rendered at every checkpoint, and most strings
    // need nothing or little: copy the runs between replacements, not char by char.
    let mut out = String::new();
    let mut copied = 0;
    for (at, c) in s.char_indices() {
        if let Some(with) = replacement(c, attribute) {
            out.reserve(s.len() - copied + with.len());
            out.push_str(&s[copied..at]);
            out.push_str(with);
            copied = at + c.len_utf8();
        }
    }
    if copied == 0 {
        return Cow::Borrowed(s);
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// What `c` becomes in text (or, with `attribute`, in an attribute value); `None` when
/// it stays as it is.
fn replacement(c: char, attribute: bool) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' if attribute => Some("&quot;"),
        '\'' if attribute => Some("&apos;"),
        '\n' if attribute => Some("&#10;"),
        '\t' if attribute => Some("&#9;"),
        '\r' => Some("&#13;"),
        '\t' | '\n' => None,
        c if valid_xml_char(c) => None,
        _ => Some("\u{FFFD}"),
    }
}

fn valid_xml_char(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_the_document_well_formed() {
        assert_eq!(
            attr("a<b>&\"c'\n\u{0}\u{1b}"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{FFFD}\u{FFFD}"
        );
        assert_eq!(text("x]]><y>\r\n"), "x]]&gt;&lt;y&gt;&#13;\n");
    }

    #[test]
    fn testcase_names_depend_on_the_invariant_name_only() {
        assert_eq!(
            testcase_name("apiserver-readyz"),
            "[invariant] apiserver-readyz"
        );
    }
}
