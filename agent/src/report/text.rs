//! The short plain-text summary printed when a run ends.

use std::fmt::Write;

use super::{Report, Verdict};

/// Renders a table of invariants (worst first) and each violation interval.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let run = &report.run;
    let _ = writeln!(
        out,
        "run {} · {:.0}s · {} violated, {} held, {} not examined",
        run.id,
        run.duration_seconds,
        report.totals.violated,
        report.totals.held,
        report.totals.not_examined
    );
    let mut rows: Vec<_> = report.invariants.iter().collect();
    rows.sort_by_key(|i| match i.verdict {
        Verdict::Violated => 0,
        Verdict::NotExamined => 1,
        Verdict::Held => 2,
    });
    let width = rows.iter().map(|i| i.name.len()).max().unwrap_or(4).max(9);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:<12}  {:>17}  {:>8}  {:>10}  CONDITION",
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
            "{:<width$}  {:<12}  {:>17}  {:>8}  {:>9.1}s  {}",
            i.name,
            i.verdict.as_str(),
            format!("{}/{}/{}", s.ok, s.failed, s.absent),
            avail,
            i.summary.disruption_seconds,
            i.condition_text
        );
    }
    for i in rows.iter().filter(|i| !i.summary.violations.is_empty()) {
        let _ = writeln!(out, "\n{} violations:", i.name);
        for v in &i.summary.violations {
            let end = v
                .end
                .map(|e| e.to_rfc3339())
                .unwrap_or_else(|| "(still open)".to_string());
            let class = v.error_class.map(|c| c.as_str()).unwrap_or("condition");
            let _ = writeln!(
                out,
                "  {} → {}  {} samples  [{}] {}",
                v.start,
                end,
                v.samples,
                class,
                v.last_error
                    .as_deref()
                    .or(v.first_error.as_deref())
                    .unwrap_or("")
            );
        }
        if i.summary.violations_dropped > 0 {
            let _ = writeln!(
                out,
                "  … and {} more not stored",
                i.summary.violations_dropped
            );
        }
    }
    out
}
