//! `invariant-agent demo`: the agent's main job on this machine alone.
//!
//! Starts a small HTTP server and a TCP listener on loopback that misbehave on a fixed
//! schedule, watches them with the embedded `invariants.yaml`, and prints the report, so
//! a newcomer sees samples, violations and a report within a minute, with no cluster and
//! no collector. The gRPC API is on (127.0.0.1:9465 unless `--grpc-listen` says
//! otherwise), so the run can be followed live from another terminal.

mod server;

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{self, CommonRunArgs};
use crate::config;

/// The embedded invariant file, with `${HTTP}` and `${TCP}` placeholders.
pub const INVARIANTS: &str = include_str!("invariants.yaml");

/// How long the demo runs unless `--duration` says otherwise.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Runs the demo and returns the exit code.
pub fn run(mut common: CommonRunArgs) -> ExitCode {
    if common.api.grpc_listen.is_none() {
        // The default address may be taken (another demo running): then the demo runs
        // without its API rather than failing.
        common.api.grpc_listen = crate::api::DEMO_LISTEN.parse().ok();
        common.api.listen_optional = true;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    // The demo endpoints live on their own runtime thread so they keep answering on
    // schedule independently of the agent's runtime.
    let endpoints = match runtime.block_on(server::DemoEndpoints::start()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the demo endpoints on loopback: {e}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));

    let text = INVARIANTS
        .replace("${HTTP}", &endpoints.http.to_string())
        .replace("${TCP}", &endpoints.tcp.to_string());
    let set = match config::parse_str("<embedded demo invariants>", &text) {
        Ok(set) => set,
        Err(errors) => {
            // The embedded file is tested; this is a bug, not a user error.
            eprintln!("the embedded demo invariants are invalid (a bug):\n{errors}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    eprintln!(
        "demo: endpoints on http://{} and tcp {}; /healthz fails from 8 s to 13 s, queue depth spikes 14-20 s, \
         the error counter increases at 20 s, /api is slow 22-26 s. Watching {} invariants for {}.",
        endpoints.http,
        endpoints.tcp,
        set.invariants.len(),
        humantime::format_duration(common.duration.unwrap_or(DEFAULT_DURATION)),
    );
    if let Some(addr) = common.api.grpc_listen {
        eprintln!(
            "demo: follow the run live from another terminal with `invariant-agent tail --addr \
             {addr}` (the gRPC API; off with a warning if the port is taken)."
        );
    }
    let options = cli::run_options(
        set,
        vec!["<embedded demo invariants>".to_string()],
        common,
        Some(DEFAULT_DURATION),
    );
    cli::execute_run(options, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_invariants_are_valid() {
        let text = INVARIANTS
            .replace("${HTTP}", "127.0.0.1:8080")
            .replace("${TCP}", "127.0.0.1:8081");
        let set = config::parse_str("demo", &text).expect("demo invariants must be valid");
        assert_eq!(set.invariants.len(), 7);
    }
}
