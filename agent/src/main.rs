//! The `invariant-agent` binary: parse the command line, set up logging, hand over to the
//! library. Everything else lives in the library (see `cli`).

use std::process::ExitCode;

use clap::Parser;
use invariant_agent::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.logging);
    cli::execute(cli)
}
