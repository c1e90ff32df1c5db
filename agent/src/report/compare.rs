//! `report compare`: judge a run against past runs' reports, per invariant, with a
//! method that stays honest with a handful of past runs.
//!
//! For each invariant and each of two measures — disruption seconds outside expected
//! disruptions, and violation intervals outside expected disruptions — the current run's value `y` is ranked among the values `x₁…xₙ`
//! of the `n` past runs that examined the invariant:
//!
//! ```text
//! p = (1 + #{ i : xᵢ + tolerance ≥ y }) / (n + 1)
//! ```
//!
//! If past runs and this one are exchangeable (nothing changed), `P(p ≤ α) ≤ α` exactly,
//! whatever the distribution, ties included (counting ties as "at least as bad" only makes
//! it conservative). `p` is what the output calls the chance: *if nothing changed, a run at
//! least this much worse than history happens with probability at most p*.
//!
//! * `regression`: `p ≤ α` (default 0.05). Equivalently `y` is above the history's
//!   `⌊α(n+1)⌋`-th largest value (plus tolerance), the `allowed` bound printed: a
//!   distribution-free upper prediction bound, which for large `n` is about the history's
//!   `1 − α` quantile (the P95 for α = 0.05; use `--significance 0.01` for OpenShift's P99).
//! * `possible_regression`: `y` is above every past run (plus tolerance) but `p > α`:
//!   there are too few past runs to be sure. The smallest `p` possible with `n` runs is
//!   `1/(n+1)`, so `regression` at α needs `n ≥ ⌈1/α⌉ − 1` runs (19 for 0.05); the output
//!   says how many.
//! * `within_history`: not worse than history by this test.
//! * `no_history`: no past run examined this invariant.
//! * `not_examined`: this run did not examine it; nothing to compare.
//!
//! The invariant's verdict is the worse of its two measures. See
//! `docs/report-compare.md` for the reasoning and its limits.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{InvariantReport, Report, RunStatus, Verdict};

/// Default significance level α.
pub const DEFAULT_SIGNIFICANCE: f64 = 0.05;

/// Default tolerance on disruption seconds: differences up to this are noise (one
/// sample interval of 1 s).
pub const DEFAULT_TOLERANCE_SECONDS: f64 = 1.0;

/// How deep `--baseline` is searched for report files.
const MAX_DEPTH: usize = 6;

/// Settings of a comparison.
#[derive(Clone, Copy, Debug)]
pub struct CompareOptions {
    /// α: the largest chance of calling a run that is no worse than history a
    /// regression, per invariant and measure.
    pub significance: f64,
    /// Disruption differences up to this many seconds are not "worse".
    pub tolerance_seconds: f64,
    /// Also use past reports with status `running` (cut-short runs; their values are
    /// lower bounds of what the run would have seen).
    pub include_incomplete: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            significance: DEFAULT_SIGNIFICANCE,
            tolerance_seconds: DEFAULT_TOLERANCE_SECONDS,
            include_incomplete: false,
        }
    }
}

/// Past runs' reports found under a directory.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Usable reports, oldest first.
    pub reports: Vec<Report>,
    /// Files left out, with why.
    pub skipped: Vec<Skipped>,
}

/// A file under the baseline directory that was not used.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Why a comparison cannot be made at all.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The baseline directory cannot be listed.
    #[error("cannot read the baseline directory {path}: {source}")]
    Baseline {
        /// The directory.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Loads every `*.json` report under `dir` (recursively), leaving out the current run
/// itself, files that are not reports, and cut-short runs unless asked.
pub fn load_baseline(
    dir: &Path,
    current: &Report,
    include_incomplete: bool,
) -> Result<Baseline, CompareError> {
    let mut files = Vec::new();
    collect(dir, 0, &mut files).map_err(|source| CompareError::Baseline {
        path: dir.display().to_string(),
        source,
    })?;
    files.sort();
    let mut baseline = Baseline::default();
    for path in files {
        let name = path.display().to_string();
        let report = match Report::read(&path) {
            Ok(r) => r,
            Err(e) => {
                baseline.skipped.push(Skipped {
                    path: name,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if report.run.id == current.run.id && report.run.started_at == current.run.started_at {
            baseline.skipped.push(Skipped {
                path: name,
                reason: "this is the run being compared".to_string(),
            });
        } else if report.run.status == RunStatus::Running && !include_incomplete {
            baseline.skipped.push(Skipped {
                path: name,
                reason:
                    "the run was cut short (status running); use --include-incomplete to use it"
                        .to_string(),
            });
        } else {
            baseline.reports.push(report);
        }
    }
    baseline.reports.sort_by_key(|r| r.run.started_at);
    Ok(baseline)
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() && depth < MAX_DEPTH {
            // An unreadable subdirectory is not worth failing the whole comparison.
            let _ = collect(&path, depth + 1, out);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// The verdict of a comparison, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareVerdict {
    /// Worse than history with `p ≤ α`.
    Regression,
    /// Worse than every past run, but too few runs to be sure (`p > α`).
    PossibleRegression,
    /// This run did not examine the invariant.
    NotExamined,
    /// No past run examined the invariant.
    NoHistory,
    /// Not worse than history.
    WithinHistory,
}

impl CompareVerdict {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareVerdict::Regression => "regression",
            CompareVerdict::PossibleRegression => "possible_regression",
            CompareVerdict::NotExamined => "not_examined",
            CompareVerdict::NoHistory => "no_history",
            CompareVerdict::WithinHistory => "within_history",
        }
    }
}

/// One measure of one invariant against its history.
#[derive(Clone, Debug, Serialize)]
pub struct MeasureComparison {
    /// This run's value.
    pub current: f64,
    /// Past runs that examined the invariant.
    pub history_runs: usize,
    /// Smallest past value.
    pub history_min: Option<f64>,
    /// Median past value.
    pub history_median: Option<f64>,
    /// Largest past value.
    pub history_max: Option<f64>,
    /// Past runs with a value above zero.
    pub history_nonzero_runs: usize,
    /// Past runs at least as bad as this one (within tolerance).
    pub history_at_least_as_bad: usize,
    /// Differences up to this are not "worse".
    pub tolerance: f64,
    /// `(1 + history_at_least_as_bad) / (history_runs + 1)`: the chance, if nothing
    /// changed, of a run at least this much worse than history. `None` without history.
    pub p_value: Option<f64>,
    /// The largest value history allows at the significance level (the
    /// `⌊α(n+1)⌋`-th largest past value plus tolerance); `None` while there are too few
    /// runs for any value to be called a regression.
    pub allowed: Option<f64>,
    /// Past runs needed before a run can be called a regression at this significance.
    pub runs_needed: usize,
    /// The measure's verdict.
    pub verdict: CompareVerdict,
}

/// One invariant against its history.
#[derive(Clone, Debug, Serialize)]
pub struct InvariantComparison {
    /// Invariant name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// The invariant's verdict in this run.
    pub run_verdict: Verdict,
    /// The worse of the two measures' verdicts (or `not_examined`).
    pub verdict: CompareVerdict,
    /// The smaller p-value of the two measures (`None` without history).
    pub p_value: Option<f64>,
    /// Disruption seconds outside expected disruptions (see [`unexpected_disruption`]).
    pub disruption_seconds: MeasureComparison,
    /// Violation intervals outside expected disruptions.
    pub unexpected_violations: MeasureComparison,
    /// The verdict in one sentence, saying how sure it is.
    pub explanation: String,
}

/// A whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The run compared.
    pub run_id: String,
    /// Its status (`running` means its values are only lower bounds).
    pub run_status: RunStatus,
    /// Past runs used.
    pub baseline_runs: usize,
    /// Ids of the past runs used, oldest first.
    pub baseline_run_ids: Vec<String>,
    /// Files not used, with why.
    pub skipped: Vec<Skipped>,
    /// α.
    pub significance: f64,
    /// Tolerance on disruption seconds.
    pub tolerance_seconds: f64,
    /// Short name of the method.
    pub method: &'static str,
    /// Invariants judged `regression`.
    pub regressions: usize,
    /// Invariants judged `possible_regression`.
    pub possible_regressions: usize,
    /// One entry per invariant of the run, worst first.
    pub invariants: Vec<InvariantComparison>,
}

/// Compares `current` with `baseline`.
pub fn compare(current: &Report, baseline: &Baseline, options: CompareOptions) -> Comparison {
    let alpha = options.significance;
    let mut invariants: Vec<InvariantComparison> = current
        .invariants
        .iter()
        .map(|inv| {
            let history: Vec<&InvariantReport> = baseline
                .reports
                .iter()
                .filter_map(|r| r.invariants.iter().find(|i| i.name == inv.name))
                .filter(|i| i.summary.examined)
                .collect();
            let disruption = measure(
                unexpected_disruption(current, inv),
                baseline
                    .reports
                    .iter()
                    .flat_map(|r| {
                        r.invariants
                            .iter()
                            .filter(|i| i.name == inv.name && i.summary.examined)
                            .map(move |i| unexpected_disruption(r, i))
                    })
                    .collect(),
                options.tolerance_seconds,
                alpha,
            );
            let violations = measure(
                inv.unexpected_violations as f64,
                history
                    .iter()
                    .map(|i| i.unexpected_violations as f64)
                    .collect(),
                0.0,
                alpha,
            );
            let verdict = if !inv.summary.examined {
                CompareVerdict::NotExamined
            } else {
                disruption.verdict.min(violations.verdict)
            };
            let p_value = match (disruption.p_value, violations.p_value) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let explanation = explain(verdict, &disruption, &violations, alpha);
            InvariantComparison {
                name: inv.name.clone(),
                owner: inv.owner.clone(),
                run_verdict: inv.verdict,
                verdict,
                p_value,
                disruption_seconds: disruption,
                unexpected_violations: violations,
                explanation,
            }
        })
        .collect();
    invariants.sort_by(|a, b| {
        a.verdict
            .cmp(&b.verdict)
            .then(
                a.p_value
                    .unwrap_or(1.0)
                    .total_cmp(&b.p_value.unwrap_or(1.0)),
            )
            .then(a.name.cmp(&b.name))
    });
    Comparison {
        run_id: current.run.id.clone(),
        run_status: current.run.status,
        baseline_runs: baseline.reports.len(),
        baseline_run_ids: baseline.reports.iter().map(|r| r.run.id.clone()).collect(),
        skipped: baseline.skipped.clone(),
        significance: alpha,
        tolerance_seconds: options.tolerance_seconds,
        method: "distribution-free rank test (conformal p-value) per invariant and measure",
        regressions: invariants
            .iter()
            .filter(|i| i.verdict == CompareVerdict::Regression)
            .count(),
        possible_regressions: invariants
            .iter()
            .filter(|i| i.verdict == CompareVerdict::PossibleRegression)
            .count(),
        invariants,
    }
}

/// Disruption seconds not explained by expected disruptions: the invariant's disruption
/// minus the length of its expected violation intervals (at least 0). For availability
/// conditions the two line up to a sample interval; for others it is an approximation
/// that can only lower the value.
pub fn unexpected_disruption(report: &Report, i: &InvariantReport) -> f64 {
    let expected: f64 = i
        .summary
        .violations
        .iter()
        .filter(|v| v.expected)
        .map(|v| {
            v.end
                .unwrap_or(report.end_time())
                .since(v.start)
                .as_secs_f64()
        })
        .sum();
    (i.summary.disruption_seconds - expected).max(0.0)
}

/// Past runs needed before the smallest possible p-value, `1/(n+1)`, reaches `alpha`.
pub fn runs_needed(alpha: f64) -> usize {
    if alpha <= 0.0 {
        return usize::MAX;
    }
    // Smallest n with 1/(n+1) <= alpha; the epsilon keeps 1/0.05 - 1 at 19, not 20.
    ((1.0 / alpha) - 1.0 - 1e-9).ceil().max(0.0) as usize
}

/// Ranks `current` among `history`.
pub fn measure(
    current: f64,
    mut history: Vec<f64>,
    tolerance: f64,
    alpha: f64,
) -> MeasureComparison {
    history.retain(|x| x.is_finite());
    history.sort_by(f64::total_cmp);
    let n = history.len();
    let needed = runs_needed(alpha);
    if n == 0 {
        return MeasureComparison {
            current,
            history_runs: 0,
            history_min: None,
            history_median: None,
            history_max: None,
            history_nonzero_runs: 0,
            history_at_least_as_bad: 0,
            tolerance,
            p_value: None,
            allowed: None,
            runs_needed: needed,
            verdict: CompareVerdict::NoHistory,
        };
    }
    let at_least_as_bad = history
        .iter()
        .filter(|&&x| x + tolerance >= current)
        .count();
    let p = (1 + at_least_as_bad) as f64 / (n + 1) as f64;
    // k-th largest past value: a new run exceeds it (plus tolerance) with probability at
    // most k/(n+1) <= alpha when nothing changed.
    let k = (alpha * (n + 1) as f64 + 1e-9).floor() as usize;
    let allowed = (k >= 1 && k <= n).then(|| history[n - k] + tolerance);
    let max = history[n - 1];
    let verdict = if p <= alpha + 1e-12 {
        CompareVerdict::Regression
    } else if current > max + tolerance {
        CompareVerdict::PossibleRegression
    } else {
        CompareVerdict::WithinHistory
    };
    let median = if n % 2 == 1 {
        history[n / 2]
    } else {
        (history[n / 2 - 1] + history[n / 2]) / 2.0
    };
    MeasureComparison {
        current,
        history_runs: n,
        history_min: Some(history[0]),
        history_median: Some(median),
        history_max: Some(max),
        history_nonzero_runs: history.iter().filter(|&&x| x > 0.0).count(),
        history_at_least_as_bad: at_least_as_bad,
        tolerance,
        p_value: Some(p),
        allowed,
        runs_needed: needed,
        verdict,
    }
}

fn explain(
    verdict: CompareVerdict,
    disruption: &MeasureComparison,
    violations: &MeasureComparison,
    alpha: f64,
) -> String {
    let pct = |p: f64| format!("{:.1}%", p * 100.0);
    // The measure that decided the verdict.
    let (what, m, unit) = if disruption.verdict <= violations.verdict {
        ("disruption", disruption, "s")
    } else {
        ("unexpected violations", violations, "")
    };
    let n = m.history_runs;
    match verdict {
        CompareVerdict::NotExamined => {
            "this run examined nothing for this invariant; nothing to compare".to_string()
        }
        CompareVerdict::NoHistory => {
            "no past run examined this invariant; nothing to compare with yet".to_string()
        }
        CompareVerdict::Regression => format!(
            "{what} {}{unit} is worse than {} of {n} past runs (allowed up to {}{unit}); \
             if nothing changed, a run at least this bad happens with probability ≤ {}: \
             regression at {} significance",
            num(m.current),
            n - m.history_at_least_as_bad,
            m.allowed.map(num).unwrap_or_else(|| "-".into()),
            pct(m.p_value.unwrap_or(1.0)),
            pct(alpha)
        ),
        CompareVerdict::PossibleRegression => format!(
            "{what} {}{unit} is worse than all {n} past runs (max {}{unit}); if nothing changed \
             that happens with probability ≤ {} (1 in {}) — too few past runs to be sure: \
             {} are needed for {} significance",
            num(m.current),
            num(m.history_max.unwrap_or(0.0)),
            pct(m.p_value.unwrap_or(1.0)),
            n + 1,
            m.runs_needed,
            pct(alpha)
        ),
        CompareVerdict::WithinHistory => format!(
            "disruption {}s (past median {}s, max {}s) and {} unexpected violations (past max {}) are within {} past runs",
            num(disruption.current),
            num(disruption.history_median.unwrap_or(0.0)),
            num(disruption.history_max.unwrap_or(0.0)),
            num(violations.current),
            num(violations.history_max.unwrap_or(0.0)),
            n.max(disruption.history_runs)
        ),
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The comparison as a table and one line per invariant that is worse than history.
pub fn render_text(c: &Comparison) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} compared with {} past run{} (significance {}, disruption tolerance {}s; rank test, see docs/report-compare.md)",
        c.run_id,
        c.baseline_runs,
        if c.baseline_runs == 1 { "" } else { "s" },
        c.significance,
        c.tolerance_seconds
    );
    if c.run_status == RunStatus::Running {
        out.push_str("note: this report has status running (in progress or cut short): its values are lower bounds\n");
    }
    if c.baseline_runs > 0 && c.baseline_runs < runs_needed(c.significance) {
        let _ = writeln!(
            out,
            "note: with {} past runs no run can be called a regression at {} significance ({} are needed); runs worse than all of history are flagged possible_regression with the chance they happen anyway",
            c.baseline_runs,
            c.significance,
            runs_needed(c.significance)
        );
    }
    let width = c
        .invariants
        .iter()
        .map(|i| i.name.len())
        .max()
        .unwrap_or(9)
        .max(9);
    let _ = writeln!(
        out,
        "\n{:<width$}  {:<19}  {:>26}  {:>20}  {:>7}  {:>4}",
        "INVARIANT", "VERDICT", "DISRUPTION now (med/max)", "UNEXP. VIOL now (max)", "P", "RUNS"
    );
    for i in &c.invariants {
        let d = &i.disruption_seconds;
        let v = &i.unexpected_violations;
        let hist = |m: &MeasureComparison, both: bool| match (m.history_median, m.history_max) {
            (Some(med), Some(max)) if both => format!("({}/{})", num(med), num(max)),
            (_, Some(max)) => format!("({})", num(max)),
            _ => "(-)".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<19}  {:>26}  {:>20}  {:>7}  {:>4}",
            i.name,
            i.verdict.as_str(),
            format!("{}s {}", num(d.current), hist(d, true)),
            format!("{} {}", num(v.current), hist(v, false)),
            i.p_value
                .map(|p| format!("{p:.3}"))
                .unwrap_or_else(|| "-".to_string()),
            d.history_runs
        );
    }
    let flagged: Vec<_> = c
        .invariants
        .iter()
        .filter(|i| {
            matches!(
                i.verdict,
                CompareVerdict::Regression | CompareVerdict::PossibleRegression
            )
        })
        .collect();
    if !flagged.is_empty() {
        out.push('\n');
        for i in flagged {
            let _ = writeln!(
                out,
                "{} ({}): {}",
                i.name,
                i.verdict.as_str(),
                i.explanation
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{} regression{}, {} possible regression{}",
        c.regressions,
        if c.regressions == 1 { "" } else { "s" },
        c.possible_regressions,
        if c.possible_regressions == 1 { "" } else { "s" }
    );
    if !c.skipped.is_empty() {
        let _ = writeln!(
            out,
            "{} file{} under the baseline directory not used (see --output json for why)",
            c.skipped.len(),
            if c.skipped.len() == 1 { "" } else { "s" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_needed_matches_the_smallest_p_value() {
        assert_eq!(runs_needed(0.05), 19);
        assert_eq!(runs_needed(0.01), 99);
        assert_eq!(runs_needed(0.1), 9);
        assert_eq!(runs_needed(0.5), 1);
    }

    #[test]
    fn a_handful_of_clean_runs_flags_a_disrupted_run_as_possible_with_its_chance() {
        let m = measure(12.0, vec![0.0, 0.0, 0.0, 0.0], 1.0, 0.05);
        assert_eq!(m.verdict, CompareVerdict::PossibleRegression);
        assert_eq!(m.p_value, Some(0.2));
        assert_eq!(m.allowed, None);
        assert_eq!(m.runs_needed, 19);
    }

    #[test]
    fn enough_history_makes_it_a_regression() {
        let history = vec![0.0; 19];
        let m = measure(5.0, history, 1.0, 0.05);
        assert_eq!(m.verdict, CompareVerdict::Regression);
        assert_eq!(m.p_value, Some(0.05));
        assert_eq!(m.allowed, Some(1.0));
    }

    #[test]
    fn the_allowed_bound_is_the_upper_order_statistic_for_long_histories() {
        // 99 runs with disruption 0..98 s: alpha = 0.05 allows the 5th largest (94 s).
        let history: Vec<f64> = (0..99).map(f64::from).collect();
        let m = measure(96.0, history.clone(), 0.0, 0.05);
        assert_eq!(m.allowed, Some(94.0));
        assert_eq!(m.verdict, CompareVerdict::Regression);
        assert_eq!(m.p_value, Some(4.0 / 100.0));
        let ok = measure(93.0, history, 0.0, 0.05);
        assert_eq!(ok.verdict, CompareVerdict::WithinHistory);
    }

    #[test]
    fn within_tolerance_and_ties_are_not_worse() {
        let m = measure(1.0, vec![0.0, 0.0, 0.0], 1.0, 0.05);
        assert_eq!(m.verdict, CompareVerdict::WithinHistory);
        assert_eq!(m.p_value, Some(1.0));
        let tie = measure(3.0, vec![3.0; 30], 0.0, 0.05);
        assert_eq!(tie.verdict, CompareVerdict::WithinHistory);
    }

    #[test]
    fn no_history_says_so() {
        let m = measure(3.0, vec![], 1.0, 0.05);
        assert_eq!(m.verdict, CompareVerdict::NoHistory);
        assert_eq!(m.p_value, None);
    }

    /// Under the null (exchangeable runs), the false-alarm rate is at most alpha.
    #[test]
    fn false_alarm_rate_is_at_most_alpha_when_nothing_changed() {
        let mut rng = fastrand::Rng::with_seed(7);
        for n in [4usize, 19, 50] {
            let trials = 4000;
            let mut alarms = 0;
            for _ in 0..trials {
                // Mostly zero, sometimes a few seconds: the shape of real disruption data.
                let mut draw = || {
                    if rng.f64() < 0.7 {
                        0.0
                    } else {
                        (rng.f64() * 10.0).round()
                    }
                };
                let history: Vec<f64> = (0..n).map(|_| draw()).collect();
                let current = draw();
                if measure(current, history, 0.0, 0.05).verdict == CompareVerdict::Regression {
                    alarms += 1;
                }
            }
            let rate = alarms as f64 / trials as f64;
            assert!(rate <= 0.05 + 0.015, "n={n}: false alarm rate {rate}");
        }
    }
}
