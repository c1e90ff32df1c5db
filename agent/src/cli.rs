//! Command-line interface: argument definitions and one function per command.
//!
//! Exit codes (also in `--help`): 0 success; 1 invalid invariant files or a failed run;
//! 2 bad command-line usage; 3 invariants were violated and `--fail-on-violation` is set.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::report::text;
use crate::run::{self, RunOptions};
use crate::schedule::Limits;

/// Exit code for invalid configuration or a failed run.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when invariants were violated and `--fail-on-violation` is set.
pub const EXIT_VIOLATED: u8 = 3;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 invalid invariant files or a failed run; 2 bad usage;
3 invariants were violated and --fail-on-violation was given.

Start here:
  invariant-agent demo                     watch a few local endpoints, one misbehaving (30 s)
  invariant-agent validate invariants.yaml check an invariant file, every error at once
  invariant-agent run -c invariants.yaml   watch until SIGTERM, report in ./invariant-report
  invariant-agent report render --from invariant-report/report.json --format html";

/// Watches cluster invariants for the whole of an e2e run and reports every violation.
#[derive(Debug, Parser)]
#[command(name = "invariant-agent", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Logging options.
    #[command(flatten)]
    pub logging: LoggingArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags shared by every command.
#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// Log format: `text` for people, `json` (one object per line) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "INVARIANT_AGENT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `invariant_agent=debug,hyper=warn` (RUST_LOG syntax).
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    pub log_level: String,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the invariants in the given files until SIGTERM/SIGINT or --duration, then
    /// write the final report. The report is also checkpointed while running, so a killed
    /// run still leaves one behind (with "status": "running").
    Run(RunArgs),
    /// Check invariant files and print every problem as FILE:LINE:COLUMN: FIELD: PROBLEM.
    /// Exits 1 when any file is invalid.
    Validate {
        /// Invariant files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print Markdown documentation of the invariants in the given files (for review, like
    /// Kubernetes' generated conformance docs).
    Docs {
        /// Invariant files to document.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run a self-contained demonstration: starts local HTTP/TCP/metrics endpoints (one of
    /// which fails on a schedule), watches them with an embedded invariant file, and
    /// prints the report. Needs no cluster and no collector.
    Demo(DemoArgs),
    /// Render saved reports (html, junit, md, ndjson, json, text), compare a run with
    /// past runs, or print the report schemas.
    Report(crate::report::cli::ReportCommand),
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Invariant file (repeat for several; names must be unique across all of them).
    #[arg(
        short = 'c',
        long = "config",
        required = true,
        value_name = "FILE",
        env = "INVARIANT_AGENT_CONFIG",
        value_delimiter = ','
    )]
    pub config: Vec<PathBuf>,
    /// Common run flags.
    #[command(flatten)]
    pub common: CommonRunArgs,
    /// Exit with code 3 when any invariant was violated. Off by default: invariants are
    /// informational and never fail a suite unless asked.
    #[arg(long)]
    pub fail_on_violation: bool,
}

/// Flags shared by `run` and `demo`.
#[derive(Debug, Args)]
pub struct CommonRunArgs {
    /// Directory for report.json (created if missing).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "invariant-report",
        env = "INVARIANT_AGENT_REPORT_DIR"
    )]
    pub report_dir: PathBuf,
    /// Stop after this long (e.g. 90s, 1h30m) instead of waiting for SIGTERM/SIGINT.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// How often report.json is rewritten while running.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Most samples in flight across all invariants; ticks beyond it are counted as missed.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_concurrency)]
    pub max_concurrency: usize,
    /// OTLP export and the /metrics endpoint.
    #[command(flatten)]
    pub export: crate::export::ExportArgs,
    /// Report contents and forms: cluster name, JUnit mode, test timing.
    #[command(flatten)]
    pub report: crate::report::cli::ReportRunArgs,
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Common run flags (the demo stops after 30 s unless --duration says otherwise).
    #[command(flatten)]
    pub common: CommonRunArgs,
}

/// Parses a positive duration flag such as `30s`, `5m` or `1h30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 30s, 5m, 1h30m"))?;
    if d.is_zero() {
        return Err("must be more than zero".to_string());
    }
    Ok(d)
}

/// Sets up logging to stderr (stdout is kept for command output such as reports).
pub fn init_logging(args: &LoggingArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|e| {
        eprintln!(
            "invalid --log-level {:?} ({e}); using \"info\"",
            args.log_level
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Docs { files } => docs(&files),
        Command::Run(args) => run_command(args),
        Command::Demo(args) => crate::demo::run(args.common),
        Command::Report(command) => crate::report::cli::execute(command),
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    match config::load_files(files) {
        Ok(set) => {
            println!(
                "ok: {} invariants in {} file{}",
                set.invariants.len(),
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn docs(files: &[PathBuf]) -> ExitCode {
    match config::load_files(files) {
        Ok(set) => {
            print!("{}", config::markdown_docs(&set));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_command(args: RunArgs) -> ExitCode {
    // Configuration is loaded and validated before anything is started or bound, so a bad
    // file fails fast with every problem named.
    let set = match config::load_files(&args.config) {
        Ok(set) => set,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let names = args
        .config
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let fail_on_violation = args.fail_on_violation;
    let options = run_options(set, names, args.common, None);
    execute_run(options, fail_on_violation)
}

/// Builds [`RunOptions`] from the common flags; `default_duration` applies when
/// `--duration` is not given.
pub fn run_options(
    set: config::InvariantSet,
    config_files: Vec<String>,
    common: CommonRunArgs,
    default_duration: Option<Duration>,
) -> RunOptions {
    RunOptions {
        set,
        config_files,
        report_dir: common.report_dir,
        duration: common.duration.or(default_duration),
        checkpoint_interval: common.checkpoint_interval,
        limits: Limits {
            max_concurrency: common.max_concurrency,
            ..Limits::default()
        },
        export: common.export,
        report: common.report,
    }
}

/// Runs to the end on a fresh runtime, prints the summary, and maps the outcome to an
/// exit code.
pub fn execute_run(options: RunOptions, fail_on_violation: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let report_dir = options.report_dir.clone();
    match runtime.block_on(run::run(options, run::termination_signal())) {
        Ok(report) => {
            print!("{}", text::render(&report));
            println!(
                "\nreport: {}",
                report_dir.join(crate::report::REPORT_FILE).display()
            );
            if fail_on_violation && report.totals.violated > 0 {
                ExitCode::from(EXIT_VIOLATED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
