//! The `report` command (render, compare and describe saved reports) and the report flags
//! of `run` and `demo`.
//!
//! `report render --from report.json --format html|junit|md|ndjson|json|text` renders a
//! saved report (also a checkpoint of a run that was cut short, or one pulled from a
//! running agent: `--from -` reads standard input) in any format, optionally adding test
//! timing from Ginkgo JSON reports (`--tests`). `report compare --baseline DIR
//! report.json` judges a run against past runs (see [`super::compare`]). `report schema`
//! prints the JSON Schema of `report.json` or the BigQuery table schema of the NDJSON rows.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use super::compare::{self, CompareOptions};
use super::junit::JunitMode;
use super::{Annotation, Report, ginkgo};

/// Exit code for unusable input (a report or Ginkgo file that cannot be read).
const EXIT_FAILURE: u8 = 1;
/// Exit code of `compare --fail-on-regression` when a regression was found.
pub const EXIT_REGRESSION: u8 = 3;

/// Report flags of `run` and `demo`.
#[derive(Clone, Debug, Default, Args)]
pub struct ReportRunArgs {
    /// Name of the cluster under test, recorded in the report (and its JUnit and NDJSON
    /// forms) so reports from many clusters can be told apart.
    #[arg(long, value_name = "NAME", env = "CLUSTER_NAME")]
    pub cluster: Option<String>,
    /// Whether violations fail their testcase in report.junit.xml. `informational`
    /// (default): violations are recorded in system-out and the testcase passes, so no job
    /// turns red unasked. `enforcing`: a violated invariant is a failure.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = JunitMode::Informational,
        env = "INVARIANT_AGENT_JUNIT_MODE"
    )]
    pub junit_mode: JunitMode,
    /// Ginkgo JSON report (ginkgo --json-report) read when the run ends, so the final
    /// report shows which tests ran during each violation. A missing or unreadable file
    /// is logged and the report is written without it. Repeat for several.
    #[arg(
        long,
        value_name = "FILE",
        env = "INVARIANT_AGENT_TESTS_FROM",
        value_delimiter = ','
    )]
    pub tests_from: Vec<PathBuf>,
}

/// `invariant-agent report ...`.
#[derive(Debug, Args)]
pub struct ReportCommand {
    /// What to do with reports.
    #[command(subcommand)]
    pub command: ReportSubcommand,
}

/// The `report` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportSubcommand {
    /// Render a saved report.json in another format (works on checkpoints of runs that
    /// were cut short too).
    Render(RenderArgs),
    /// Compare a run's report with past runs' reports: flags invariants whose disruption
    /// or unexpected violations are above what history allows, and says how sure that is.
    Compare(CompareArgs),
    /// Print the JSON Schema of report.json, or the BigQuery table schema of the NDJSON
    /// rows.
    Schema(SchemaArgs),
}

/// Output formats of `report render`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    /// Self-contained HTML page with a zoomable timeline.
    Html,
    /// JUnit XML, one testcase per invariant.
    Junit,
    /// Markdown summary and violations.
    Md,
    /// One JSON row per invariant (BigQuery-loadable).
    Ndjson,
    /// The report itself, re-attributed (with --tests merged in).
    Json,
    /// The plain-text summary printed at the end of a run.
    Text,
}

/// Flags of `report render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The report to render (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = RenderFormat::Text)]
    pub format: RenderFormat,
    /// Ginkgo JSON report (ginkgo --json-report) whose specs are added as test
    /// annotations, so violations are attributed to the tests running then. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub tests: Vec<PathBuf>,
    /// For --format junit: whether violations fail their testcase.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = JunitMode::Informational)]
    pub junit_mode: JunitMode,
    /// Write here instead of standard output (atomically).
    #[arg(long, value_name = "FILE")]
    pub to: Option<PathBuf>,
}

/// Output of `report compare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompareOutput {
    /// A table and one sentence per flagged invariant.
    Text,
    /// Everything, machine-readable.
    Json,
}

/// Flags of `report compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Directory holding past runs' report.json files (searched recursively; files that
    /// are not reports are skipped).
    #[arg(long, value_name = "DIR")]
    pub baseline: PathBuf,
    /// The run to judge.
    #[arg(value_name = "REPORT")]
    pub report: PathBuf,
    /// Ginkgo JSON report of the run to judge, for attributing its violations (expected
    /// disruptions are not counted against it). Repeatable.
    #[arg(long, value_name = "FILE")]
    pub tests: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareOutput::Text)]
    pub output: CompareOutput,
    /// Significance level α: the largest chance, per invariant and measure, of calling a
    /// run that is no worse than history a regression.
    #[arg(long, value_name = "ALPHA", default_value_t = compare::DEFAULT_SIGNIFICANCE, value_parser = parse_probability)]
    pub significance: f64,
    /// Disruption differences up to this many seconds are noise, not "worse".
    #[arg(long, value_name = "SECONDS", default_value_t = compare::DEFAULT_TOLERANCE_SECONDS)]
    pub tolerance: f64,
    /// Also use past reports of runs that were cut short (status running).
    #[arg(long)]
    pub include_incomplete: bool,
    /// Exit with code 3 when any invariant is a `regression`. Off by default.
    #[arg(long)]
    pub fail_on_regression: bool,
}

/// Schemas `report schema` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SchemaFormat {
    /// JSON Schema (draft 2020-12) of report.json.
    JsonSchema,
    /// BigQuery table schema of report.ndjson rows.
    Bigquery,
}

/// Flags of `report schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which schema.
    #[arg(long, value_enum, default_value_t = SchemaFormat::JsonSchema)]
    pub format: SchemaFormat,
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 1.0 => Ok(p),
        _ => Err(format!(
            "{text:?} is not a probability between 0 and 1 (exclusive), e.g. 0.05"
        )),
    }
}

/// Runs a `report` subcommand and returns the exit code.
pub fn execute(command: ReportCommand) -> ExitCode {
    let result = match command.command {
        ReportSubcommand::Render(args) => render(args),
        ReportSubcommand::Compare(args) => compare_command(args),
        ReportSubcommand::Schema(args) => {
            let text = match args.format {
                SchemaFormat::JsonSchema => super::JSON_SCHEMA,
                SchemaFormat::Bigquery => super::BIGQUERY_SCHEMA,
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|message| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// Reads every Ginkgo report in `files`.
pub fn read_tests(files: &[PathBuf]) -> Result<Vec<Annotation>, ginkgo::GinkgoError> {
    let mut all = Vec::new();
    for f in files {
        all.extend(ginkgo::read(f)?);
    }
    Ok(all)
}

fn load(path: &Path, tests: &[PathBuf]) -> Result<Report, String> {
    let report = Report::read(path).map_err(|e| e.to_string())?;
    let annotations = read_tests(tests).map_err(|e| e.to_string())?;
    Ok(if annotations.is_empty() {
        report
    } else {
        report.with_annotations(annotations)
    })
}

fn render(args: RenderArgs) -> Result<ExitCode, String> {
    let report = load(&args.from, &args.tests)?;
    let bytes = match args.format {
        RenderFormat::Html => super::html::render(&report).into_bytes(),
        RenderFormat::Junit => super::junit::render(&report, args.junit_mode).into_bytes(),
        RenderFormat::Md => super::markdown::render(&report).into_bytes(),
        RenderFormat::Ndjson => super::ndjson::render(&report).into_bytes(),
        RenderFormat::Json => report.to_json(),
        RenderFormat::Text => super::text::render(&report).into_bytes(),
    };
    write_output(args.to.as_deref(), &bytes)?;
    Ok(ExitCode::SUCCESS)
}

fn write_output(to: Option<&Path>, bytes: &[u8]) -> Result<(), String> {
    match to {
        Some(path) => super::writer::write_atomically(path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write to standard output: {e}"))
        }
    }
}

fn compare_command(args: CompareArgs) -> Result<ExitCode, String> {
    let current = load(&args.report, &args.tests)?;
    let baseline = compare::load_baseline(&args.baseline, &current, args.include_incomplete)
        .map_err(|e| e.to_string())?;
    let options = CompareOptions {
        significance: args.significance,
        tolerance_seconds: args.tolerance.max(0.0),
        include_incomplete: args.include_incomplete,
    };
    let comparison = compare::compare(&current, &baseline, options);
    let text = match args.output {
        CompareOutput::Text => compare::render_text(&comparison),
        CompareOutput::Json => {
            let mut s = serde_json::to_string_pretty(&comparison)
                .map_err(|e| format!("cannot serialize the comparison: {e}"))?;
            s.push('\n');
            s
        }
    };
    write_output(None, text.as_bytes())?;
    if args.fail_on_regression && comparison.regressions > 0 {
        Ok(ExitCode::from(EXIT_REGRESSION))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
