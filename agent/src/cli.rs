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
  invariant-agent report render --from invariant-report/report.json --format html
  invariant-agent tail                     follow a running agent (run --grpc-listen, or demo) live
  invariant-agent status                   the current state of every invariant of a running agent";

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
    /// run still leaves one behind (with "status": "running"). Changed invariant files are
    /// applied while running (see --config-poll-interval; SIGHUP reloads at once); an
    /// invalid change is refused and the running invariants go on.
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
    /// Fetch the report from a running agent (`report --addr ADDR -o FILE`), or render
    /// saved reports (html, junit, md, ndjson, json, text), compare a run with past runs,
    /// or print the report schemas.
    Report(crate::report::cli::ReportCommand),
    /// Follow a running agent live: every sample and state change of its invariants, as
    /// they happen (the agent must serve the API: run --grpc-listen, or demo).
    Tail(remote::TailArgs),
    /// Print the current state of every invariant of a running agent.
    Status(remote::StatusArgs),
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
    /// Applying changed invariant files while running.
    #[command(flatten)]
    pub reload: crate::reload::ReloadArgs,
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
    /// How often the report files (report.json, NDJSON, JUnit, HTML) are rewritten while
    /// running.
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
    /// The gRPC API: address, token, TLS, tail history.
    #[command(flatten)]
    pub api: crate::api::ApiArgs,
    /// Kubernetes credentials for apiserver, resource and events probes.
    #[command(flatten)]
    pub kube: crate::kube::KubeArgs,
    /// Which scopes of invariants this agent runs (node, cluster, or all).
    #[arg(
        long,
        value_enum,
        value_name = "SCOPE",
        default_value_t = config::ScopeSelection::All,
        env = "INVARIANT_AGENT_SCOPE",
        help_heading = "Leader election",
        long_help = "Which invariants this agent runs, by their scope: `node` (only \
            scope: node ones; the DaemonSet, one agent per node, no Lease), `cluster` (only \
            scope: cluster ones; a small Deployment with --leader-elect, so one replica \
            samples them), or `all` (a sidecar, a local run). The others are left out of \
            this agent's run and report. A file with no invariant of the selected scope is \
            not an error: the agent says so and samples nothing."
    )]
    pub scope: config::ScopeSelection,
    /// Leader election: which agent runs the cluster-scoped invariants.
    #[command(flatten)]
    pub leader_elect: crate::kube::lease::LeaderElectArgs,
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
        Command::Tail(args) => remote::tail_command(args),
        Command::Status(args) => remote::status_command(args),
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
    // file fails fast with every problem named. The bytes loaded are the ones hashed, to
    // tell a later change of the files.
    let contents = config::FileContents::read(&args.config);
    let set = match contents.load() {
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
    let mut options = run_options(set, names, args.common, None);
    let reload =
        crate::reload::ReloadOptions::new(args.config, &contents, &args.reload, options.scope);
    options.reload = Some(reload);
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
        api: common.api,
        kube: common.kube,
        scope: common.scope,
        leader_elect: common.leader_elect,
        reload: None,
    }
}

/// Runs to the end on a fresh runtime, prints the summary, and maps the outcome to an
/// exit code.
pub fn execute_run(options: RunOptions, fail_on_violation: bool) -> ExitCode {
    if let Some((before, after)) = crate::process::raise_open_file_limit() {
        tracing::info!(
            before,
            after,
            "raised the open-file limit to the hard limit (sockets for reused connections, tailers and watches)"
        );
    }
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

/// Commands that talk to a running agent over its gRPC API (`tail`, `status`; the fetch
/// form of `report` lives in `report::cli` and uses the helpers here). The agent must
/// serve the API: `run --grpc-listen ADDR`, or `demo` (127.0.0.1:9465).
pub mod remote {
    use std::future::Future;
    use std::io::{self, Write as _};
    use std::process::ExitCode;
    use std::str::FromStr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use clap::Args;
    use prost_types::Timestamp;
    use tonic::codec::Streaming;

    use super::EXIT_FAILURE;
    use crate::api::client::{self, Agent, AgentAddress, ClientError, ConnectArgs};
    use crate::api::proto::tail_request::History;
    use crate::api::proto::tail_response::Event;
    use crate::api::proto::{TailRequest, TailResponse};
    use crate::api::render::{self, OutputFormat, Style, TailPrinter};

    const TAIL_AFTER_HELP: &str = "\
Prints the current state of each matching invariant (worst first), then one line per
event as it happens (times are UTC):
  TIME           INVARIANT  OUTCOME  LATENCY  STATE     [value=V]  [ERROR]     a sample
  TIME           INVARIANT  state    FROM → TO  REASON                         a state change
A WARNING line says how many events were lost if this client reads too slowly.
--output json prints one object per event instead: the TailResponse message of
proto/invariant/v1/agent.proto in the proto3 JSON mapping (lowerCamelCase fields, enum
names such as \"STATE_VIOLATED\", RFC 3339 times, durations such as \"0.012s\").

Ends when the run ends (exit 0, says so on stderr), on Ctrl-C (exit 0), or when the
connection to the agent is lost (exit 1). Exit 2: bad command line.

Examples:
  invariant-agent tail                                   all events of the local agent (or demo)
  invariant-agent tail --transitions-only                only state changes
  invariant-agent tail --invariant apiserver-readyz --last 20
  invariant-agent tail --label team=network --since 10m
  invariant-agent tail --addr https://10.0.0.5:9465 --ca-file ca.pem --token-file token
  invariant-agent tail --output json | jq -c 'select(.transition)'";

    const STATUS_AFTER_HELP: &str = "\
The table lists every invariant, worst state first (violated, pending, unknown, holding)
and in file order within a state: its state and since when (UTC), samples so far by
outcome, violation intervals so far, seconds of disruption, and why it is in that state.
--output json prints the GetStatusResponse of proto/invariant/v1/agent.proto in the
proto3 JSON mapping, invariants in file order.

Exit codes: 0 success; 1 the agent cannot be reached or refused; 2 bad command line.

Examples:
  invariant-agent status
  invariant-agent status --addr 10.0.0.5:9465 --token-file token
  invariant-agent status --output json | jq -r '.invariants[] | select(.violations > 0) | .name'";

    /// Flags of `tail`.
    #[derive(Debug, Args)]
    #[command(after_help = TAIL_AFTER_HELP)]
    pub struct TailArgs {
        /// Only this invariant (repeat, or separate with commas, for several). A name the
        /// agent does not know is an error, so a typo does not silently print nothing.
        #[arg(long = "invariant", value_name = "NAME", value_delimiter = ',')]
        pub invariants: Vec<String>,
        /// Only invariants carrying this label (repeat: all must match; combined with
        /// --invariant by AND).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        pub labels: Vec<(String, String)>,
        /// Only state changes (plus the snapshot, the live marker and lost warnings): no
        /// sample lines.
        #[arg(long)]
        pub transitions_only: bool,
        /// First replay the history the agent kept from this point on: a duration ago
        /// (10m, 1h30m) or a time (RFC 3339, e.g. 2024-05-01T12:00:00Z).
        #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since, conflicts_with = "last")]
        pub since: Option<Since>,
        /// First replay the last N samples the agent kept of each invariant (with the
        /// state changes among them).
        #[arg(long, value_name = "N")]
        pub last: Option<u32>,
        /// `text` for people, `json` for one JSON object per event.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        pub output: OutputFormat,
        /// How to reach the agent.
        #[command(flatten, next_help_heading = "Connection")]
        pub connect: ConnectArgs,
    }

    /// Flags of `status`.
    #[derive(Debug, Args)]
    #[command(after_help = STATUS_AFTER_HELP)]
    pub struct StatusArgs {
        /// `text` for a table, `json` for the whole response.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        pub output: OutputFormat,
        /// How to reach the agent.
        #[command(flatten, next_help_heading = "Connection")]
        pub connect: ConnectArgs,
    }

    /// Where `tail --since` starts.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Since {
        /// This long before the command starts.
        Ago(Duration),
        /// At this time.
        At(Timestamp),
    }

    impl Since {
        fn resolve(self, now: SystemTime) -> Timestamp {
            match self {
                Since::At(at) => at,
                Since::Ago(ago) => Timestamp::from(
                    now.checked_sub(ago)
                        .filter(|t| *t >= UNIX_EPOCH)
                        .unwrap_or(UNIX_EPOCH),
                ),
            }
        }
    }

    fn parse_since(text: &str) -> Result<Since, String> {
        if let Ok(at) = Timestamp::from_str(text.trim()) {
            return Ok(Since::At(at));
        }
        super::parse_duration(text).map(Since::Ago).map_err(|_| {
            format!(
                "{text:?} is neither a duration (10m, 1h30m) nor a time (RFC 3339, e.g. \
                 2024-05-01T12:00:00Z)"
            )
        })
    }

    fn parse_label(text: &str) -> Result<(String, String), String> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(format!("{text:?} is not KEY=VALUE, e.g. team=network")),
        }
    }

    /// The Tail request for `args`; `--since DURATION` counts back from `now`.
    fn tail_request(args: &TailArgs, now: SystemTime) -> TailRequest {
        let history = match (args.since, args.last) {
            (Some(since), _) => Some(History::Since(since.resolve(now))),
            (None, Some(last)) => Some(History::Last(last)),
            (None, None) => None,
        };
        TailRequest {
            invariants: args.invariants.clone(),
            labels: args.labels.iter().cloned().collect(),
            transitions_only: args.transitions_only,
            history,
        }
    }

    /// Runs a client command on a fresh single-threaded runtime (one connection needs no
    /// more).
    pub(crate) fn run_client(command: impl Future<Output = ExitCode>) -> ExitCode {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(command),
            Err(e) => {
                say(&format!("error: cannot start the async runtime: {e}"));
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }

    /// Prints `error` and returns its exit code.
    pub(crate) fn fail(error: &ClientError) -> ExitCode {
        say(&format!("error: {error}"));
        ExitCode::from(error.exit_code())
    }

    /// A line on stderr. Unlike `eprintln!`, a closed stderr is not a panic.
    fn say(line: &str) {
        let _ = writeln!(io::stderr(), "{line}");
    }

    /// Writes to stdout and flushes, so each event shows as soon as it arrives (also in
    /// a pipe).
    fn write_stdout(text: &str) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// A failed write to stdout: a closed pipe (`| head`) is a quiet success, anything
    /// else an error.
    fn output_failed(error: &io::Error) -> ExitCode {
        if error.kind() == io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
        say(&format!("error: cannot write to standard output: {error}"));
        ExitCode::from(EXIT_FAILURE)
    }

    /// Resolves when Ctrl-C (SIGINT) arrives; never, if it cannot be watched.
    async fn interrupted() {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `invariant-agent tail`.
    pub fn tail_command(args: TailArgs) -> ExitCode {
        // Ctrl-C at any point, also while connecting, ends quietly with 0: stopping to
        // watch is what the user asked for.
        run_client(async move {
            tokio::select! {
                code = tail(args) => code,
                () = interrupted() => ExitCode::SUCCESS,
            }
        })
    }

    async fn tail(args: TailArgs) -> ExitCode {
        let mut agent = match client::connect(&args.connect).await {
            Ok(agent) => agent,
            Err(e) => return fail(&e),
        };
        let stream = match agent.tail(tail_request(&args, SystemTime::now())).await {
            Ok(stream) => stream,
            Err(e) => return fail(&e),
        };
        let mut printer = TailPrinter::new(args.output, Style::detect());
        let end = follow(&agent, stream, &mut printer, args.output).await;
        finish(end, agent.address())
    }

    /// Why a Tail stream stopped being printed.
    enum TailEnd {
        /// The agent said the run ended.
        RunEnded,
        /// The stream closed without `run_ended`.
        Closed,
        /// The connection failed.
        Lost(ClientError),
        /// Standard output could not be written.
        Output(io::Error),
    }

    async fn follow(
        agent: &Agent,
        mut stream: Streaming<TailResponse>,
        printer: &mut TailPrinter,
        format: OutputFormat,
    ) -> TailEnd {
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return TailEnd::Closed,
                Err(status) => return TailEnd::Lost(agent.stream_error(&status)),
            };
            if let (OutputFormat::Json, Some(Event::Lost(lost))) = (format, &response.event) {
                // The JSON line is for programs; tell the person too.
                say(&render::lost_warning(lost));
            }
            if let Some(text) = printer.event(&response, SystemTime::now())
                && let Err(e) = write_stdout(&text)
            {
                return TailEnd::Output(e);
            }
            if matches!(response.event, Some(Event::RunEnded(_))) {
                return TailEnd::RunEnded;
            }
        }
    }

    fn finish(end: TailEnd, address: &AgentAddress) -> ExitCode {
        match end {
            TailEnd::RunEnded => {
                say(&format!(
                    "the run ended: the agent at {address} finished and closed the stream"
                ));
                ExitCode::SUCCESS
            }
            TailEnd::Closed => {
                say(&format!(
                    "error: the agent at {address} closed the stream before the run ended"
                ));
                ExitCode::from(EXIT_FAILURE)
            }
            TailEnd::Lost(e) => fail(&e),
            TailEnd::Output(e) => output_failed(&e),
        }
    }

    /// `invariant-agent status`.
    pub fn status_command(args: StatusArgs) -> ExitCode {
        run_client(status(args))
    }

    async fn status(args: StatusArgs) -> ExitCode {
        let mut agent = match client::connect(&args.connect).await {
            Ok(agent) => agent,
            Err(e) => return fail(&e),
        };
        let response = match agent.status().await {
            Ok(response) => response,
            Err(e) => return fail(&e),
        };
        let text = match args.output {
            OutputFormat::Text => {
                render::status_text(&response, SystemTime::now(), Style::detect())
            }
            OutputFormat::Json => format!("{:#}\n", render::status_json(&response)),
        };
        match write_stdout(&text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => output_failed(&e),
        }
    }

    #[cfg(test)]
    mod tests {
        use clap::Parser as _;

        use super::super::{Cli, Command};
        use super::*;

        fn tail_args(args: &[&str]) -> Result<TailArgs, clap::Error> {
            let mut argv = vec!["invariant-agent", "tail"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv)?.command {
                Command::Tail(args) => Ok(args),
                other => panic!("parsed as {other:?}"),
            }
        }

        #[test]
        fn since_takes_a_duration_or_a_time() {
            assert_eq!(
                parse_since("10m").unwrap(),
                Since::Ago(Duration::from_secs(600))
            );
            assert_eq!(
                parse_since("2024-05-01T12:00:00Z").unwrap(),
                Since::At(Timestamp {
                    seconds: 1_714_564_800,
                    nanos: 0
                })
            );
            let err = parse_since("yesterday").unwrap_err();
            assert!(err.contains("RFC 3339"), "{err}");
            let now = UNIX_EPOCH + Duration::from_secs(1000);
            assert_eq!(
                Since::Ago(Duration::from_secs(600)).resolve(now).seconds,
                400
            );
            assert_eq!(
                Since::Ago(Duration::from_secs(5000)).resolve(now).seconds,
                0
            );
        }

        #[test]
        fn labels_are_key_value() {
            assert_eq!(
                parse_label("team=net=work").unwrap(),
                ("team".to_string(), "net=work".to_string())
            );
            assert_eq!(parse_label("empty=").unwrap().1, "");
            assert!(parse_label("team").is_err());
            assert!(parse_label("=x").is_err());
        }

        #[test]
        fn flags_become_the_request() {
            let args = tail_args(&[
                "--invariant",
                "a,b",
                "--invariant",
                "c",
                "--label",
                "team=net",
                "--transitions-only",
                "--last",
                "20",
            ])
            .unwrap();
            let request = tail_request(&args, SystemTime::now());
            assert_eq!(request.invariants, ["a", "b", "c"]);
            assert_eq!(request.labels.get("team").map(String::as_str), Some("net"));
            assert!(request.transitions_only);
            assert_eq!(request.history, Some(History::Last(20)));
            let plain = tail_request(&tail_args(&[]).unwrap(), SystemTime::now());
            assert_eq!(plain.history, None);
            assert_eq!(args.connect.addr.to_string(), client::DEFAULT_ADDR);
        }

        #[test]
        fn since_and_last_exclude_each_other_and_bad_flags_are_usage_errors() {
            for bad in [
                &["--since", "5m", "--last", "3"][..],
                &["--label", "nokey"],
                &["--addr", "localhost"],
                &["--output", "yaml"],
            ] {
                let err = tail_args(bad).unwrap_err();
                assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
            }
        }
    }
}
