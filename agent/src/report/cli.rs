//! The `report` command (fetch the report from a running agent; render, compare and
//! describe saved reports) and the report flags of `run` and `demo`.
//!
//! `report --addr ADDR -o FILE [--format json|junit|html|md]` asks a running agent for
//! its report as it is now (GetReport) and writes it atomically (`-o -`: standard output).
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
use crate::api::client::{self, ConnectArgs};
use crate::api::proto::ReportFormat;
use crate::cli::remote;

/// Exit code for unusable input (a report or Ginkgo file that cannot be read).
const EXIT_FAILURE: u8 = 1;
/// Exit code for a bad command line (as clap's).
const EXIT_USAGE: u8 = 2;
/// Exit code of `compare --fail-on-regression` when a regression was found.
pub const EXIT_REGRESSION: u8 = 3;

/// Report flags of `run` and `demo`.
#[derive(Clone, Debug, Default, Args)]
pub struct ReportRunArgs {
    /// Name of the cluster under test, recorded in the report (and its JUnit and NDJSON
    /// forms) so reports from many clusters can be told apart.
    #[arg(long, value_name = "NAME", env = "CLUSTER_NAME")]
    pub cluster: Option<String>,
    /// Run id of the report (`run.id`) and the metrics (the `invariant.run.id` resource
    /// attribute), so both join. Default: $PROW_JOB_ID, else $BUILD_ID; else, with
    /// --leader-elect and cluster-scoped invariants, the id on the leader election's Lease
    /// (written by the first agent, so every agent of the deployment shares it; delete the
    /// Lease to start a new one); else one generated at start.
    #[arg(long, value_name = "ID", env = "INVARIANT_AGENT_RUN_ID", value_parser = super::parse_run_id)]
    pub run_id: Option<String>,
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
    /// Resuming a run whose agent was killed.
    #[command(flatten)]
    pub resume: super::resume::ResumeArgs,
}

const REPORT_AFTER_HELP: &str = "\
Two forms:
  report [--addr ADDR] -o FILE [--format json|junit|html|md]
      fetch the report of a running agent (run --grpc-listen ADDR, or demo) as it is now
  report render|compare|schema ...
      work on saved report files (invariant-agent report <COMMAND> --help)

Exit codes: 0 success; 1 unreadable input or the agent cannot be reached; 2 bad usage;
3 compare --fail-on-regression found a regression.

Examples:
  invariant-agent report --addr 127.0.0.1:9465 -o report.json
  invariant-agent report --addr 10.0.0.5:9465 --token-file token --format html -o report.html
  invariant-agent report -o - | jq -r '.invariants[] | select(.verdict == \"violated\") | .name'
  invariant-agent report render --from invariant-report/report.json --format html --to report.html
  invariant-agent report compare --baseline past-reports/ invariant-report/report.json";

/// `invariant-agent report ...`: without a subcommand, fetch from a running agent.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, after_help = REPORT_AFTER_HELP)]
pub struct ReportCommand {
    /// Fetch the report from a running agent (the form without a subcommand).
    #[command(flatten, next_help_heading = "Fetch from a running agent")]
    pub fetch: FetchArgs,
    /// Work on saved reports instead.
    #[command(subcommand)]
    pub command: Option<ReportSubcommand>,
}

/// Flags of `report --addr ADDR -o FILE`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// How to reach the agent.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Write the fetched report here, atomically (`-` for standard output). Required
    /// for this form.
    #[arg(short = 'o', long = "to", value_name = "FILE")]
    pub to: Option<PathBuf>,
    /// Form of the fetched report.
    #[arg(long, value_enum, default_value_t = FetchFormat::Json)]
    pub format: FetchFormat,
}

/// Forms of `report --addr` (those the agent renders, see GetReport).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FetchFormat {
    /// report.json itself.
    Json,
    /// JUnit XML, one testcase per invariant (in the agent's --junit-mode).
    Junit,
    /// Self-contained HTML page with a zoomable timeline.
    Html,
    /// Markdown summary and violations.
    Md,
}

impl From<FetchFormat> for ReportFormat {
    fn from(format: FetchFormat) -> Self {
        match format {
            FetchFormat::Json => ReportFormat::Json,
            FetchFormat::Junit => ReportFormat::Junit,
            FetchFormat::Html => ReportFormat::Html,
            FetchFormat::Md => ReportFormat::Markdown,
        }
    }
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

/// Runs `report` (the fetch form, or a subcommand) and returns the exit code.
pub fn execute(command: ReportCommand) -> ExitCode {
    let Some(subcommand) = command.command else {
        return fetch(command.fetch);
    };
    let result = match subcommand {
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

/// `report --addr ADDR -o FILE`: asks the agent for its report and writes it.
fn fetch(args: FetchArgs) -> ExitCode {
    // Checked here rather than by clap, whose message would not mention the other form.
    let Some(to) = args.to.clone() else {
        eprintln!(
            "error: `report` needs -o FILE to fetch the report of a running agent, or a \
             subcommand (render, compare, schema) for saved reports; see `invariant-agent \
             report --help`"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    remote::run_client(async move {
        let mut agent = match client::connect(&args.connect).await {
            Ok(agent) => agent,
            Err(e) => return remote::fail(&e),
        };
        let report = match agent.report(args.format.into()).await {
            Ok(report) => report,
            Err(e) => return remote::fail(&e),
        };
        let to = Some(to.as_path()).filter(|path| *path != Path::new("-"));
        match write_output(to, &report.content) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    })
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
