//! Markdown: a summary table (worst first) and every violation with the tests running
//! then, for pull-request comments, issues and chat.
//!
//! Every string from the report is escaped: Markdown punctuation is backslash-escaped and
//! `<`, `>` and `&` become entities, so an error message can neither format the page nor
//! inject HTML where Markdown allows it.

use std::fmt::Write;

use super::{Report, RunStatus, Verdict};

/// Renders the report as Markdown.
pub fn render(report: &Report) -> String {
    let run = &report.run;
    let t = &report.totals;
    let mut out = String::new();
    let _ = writeln!(out, "# Invariant report: run {}\n", esc(&run.id));
    let mut facts = vec![
        format!("**Status:** {}", status_text(report)),
        format!(
            "**Time:** {} → {} ({:.0}s)",
            run.started_at,
            report.end_time(),
            run.duration_seconds
        ),
    ];
    if let Some(j) = &run.context.job_name {
        facts.push(format!("**Job:** {}", esc(j)));
    }
    if let Some(b) = &run.context.build_id {
        facts.push(format!("**Build:** {}", esc(b)));
    }
    if let Some(c) = &run.context.cluster {
        facts.push(format!("**Cluster:** {}", esc(c)));
    }
    if let Some(n) = &run.node {
        facts.push(format!("**Node:** {}", esc(n)));
    }
    facts.push(format!("**Agent:** {}", esc(&run.agent_version)));
    for g in &run.gaps {
        facts.push(format!("**Gap:** {}", esc(&g.describe())));
    }
    for f in facts {
        let _ = writeln!(out, "- {f}");
    }
    let _ = writeln!(
        out,
        "\n**{}** violated · **{}** expected disruption · **{}** held · **{}** not examined\n",
        t.violated, t.expected_disruption, t.held, t.not_examined
    );
    out.push_str(
        "| Verdict | Invariant | Owner | Condition | Availability | Disruption | Violations (unexpected / expected) | Samples ok / failed / absent / missed |\n",
    );
    out.push_str("|---|---|---|---|---:|---:|---:|---:|\n");
    for i in report.by_severity() {
        let s = &i.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1}s | {} / {} | {} / {} / {} / {} |",
            badge(i.verdict),
            esc(&i.name),
            esc(&i.owner),
            esc(&i.condition_text),
            s.availability_percent
                .map(|a| format!("{a:.2}%"))
                .unwrap_or_else(|| "–".to_string()),
            s.disruption_seconds,
            i.unexpected_violations,
            i.expected_violations,
            s.samples.ok,
            s.samples.failed,
            s.samples.absent,
            s.samples.missed
        );
    }
    if let Some(note) = run.gap_note() {
        let _ = writeln!(out, "\n*Gaps:* {}.", esc(&note));
    }
    if report
        .invariants
        .iter()
        .any(|i| i.verdict == Verdict::NotExamined)
    {
        out.push_str(
            "\n*not examined* means no sample could be judged (no samples, or only absent series): it is not a pass.\n",
        );
    }
    for i in report.by_severity() {
        if i.summary.violations.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n## {} — {}\n\n{}\n",
            esc(&i.name),
            i.verdict.as_str(),
            esc(&i.description)
        );
        out.push_str(
            "| # | Start | End | Duration | Class | First error | Last error | Tests running |\n",
        );
        out.push_str("|---:|---|---|---:|---|---|---|---|\n");
        for (n, v) in i.summary.violations.iter().enumerate() {
            let end = v.end.unwrap_or(report.end_time());
            let mut tests: Vec<String> = v
                .tests
                .iter()
                .map(|t| {
                    if v.expected_by.contains(t) {
                        format!("{} *(expected)*", esc(t))
                    } else {
                        esc(t)
                    }
                })
                .collect();
            if v.tests_omitted > 0 {
                tests.push(format!("… and {} more", v.tests_omitted));
            }
            let _ = writeln!(
                out,
                "| {}{} | {} | {} | {:.1}s | {} | {} | {} | {} |",
                n + 1,
                match (v.expected, v.ended_by_gap) {
                    (true, true) => " (expected, ended by gap)",
                    (true, false) => " (expected)",
                    (false, true) => " (ended by gap)",
                    (false, false) => "",
                },
                v.start,
                v.end
                    .map(|e| e.to_rfc3339())
                    .unwrap_or_else(|| "still open".to_string()),
                end.since(v.start).as_secs_f64(),
                v.error_class.map(|c| c.as_str()).unwrap_or("condition"),
                esc(v.first_error.as_deref().unwrap_or("")),
                esc(v.last_error.as_deref().unwrap_or("")),
                if tests.is_empty() {
                    "–".to_string()
                } else {
                    tests.join("<br>")
                }
            );
        }
        if i.summary.violations_dropped > 0 {
            let _ = writeln!(
                out,
                "\n… and {} more intervals not stored.",
                i.summary.violations_dropped
            );
        }
    }
    out
}

fn status_text(report: &Report) -> String {
    match report.run.status {
        RunStatus::Completed => "completed".to_string(),
        RunStatus::Running => format!(
            "running — in progress, or cut short after {} (last checkpoint)",
            report.run.updated_at
        ),
    }
}

fn badge(v: Verdict) -> &'static str {
    match v {
        Verdict::Violated => "🔴 violated",
        Verdict::NotExamined => "⚪ not examined",
        Verdict::ExpectedDisruption => "🟡 expected disruption",
        Verdict::Held => "🟢 held",
    }
}

/// Escapes text for a Markdown table cell or paragraph.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' | '~' | '(' | ')' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            esc("<script>|x| [l](u) *a*\n`c`"),
            "&lt;script&gt;\\|x\\| \\[l\\]\\(u\\) \\*a\\* \\`c\\`"
        );
    }
}
