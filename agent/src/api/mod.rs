//! The gRPC API (`proto/invariant/v1/agent.proto`): live tail, status, report and test
//! annotations.
//!
//! Server side: the engine publishes every sample, missed tick and transition to the
//! [`feed`] (history rings plus a broadcast channel; each event is built once and shared
//! by every subscriber); [`tail`] turns a subscription into one client's filtered
//! stream; [`service`] implements the RPCs, asking the engine for fresh reports and
//! handing it annotations through its command channel; [`auth`] checks the bearer token;
//! [`server`] binds the address, adds the health and reflection services and runs it all
//! on its own thread, so API work never competes with probes for the engine's thread.
//! [`convert`] maps the agent's types to the protobuf messages and back; [`codec`] makes
//! a malformed message INVALID_ARGUMENT.
//!
//! Client side: [`client`] connects to a running agent for the `tail`, `status` and
//! `report --addr` commands; [`render`] prints what they receive.

pub mod auth;
pub mod client;
pub mod codec;
pub mod convert;
pub mod feed;
pub mod proto;
pub mod render;
pub mod server;
pub mod service;
pub mod tail;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Largest message the API sends (a report can be large; the proto file's contract).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Largest request the API accepts. No valid request comes near it; a bound this low
/// keeps a hostile client from making the agent buffer and decode 64 MiB per call.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Address the `demo` command serves the API on unless told otherwise.
pub const DEMO_LISTEN: &str = "127.0.0.1:9465";

/// Default of `--tail-history`.
pub const DEFAULT_TAIL_HISTORY: u32 = 120;

/// Default of `--tail-buffer`.
pub const DEFAULT_TAIL_BUFFER: u32 = 4096;

/// gRPC API flags (shared by `run` and `demo`).
#[derive(Clone, Debug, Args)]
pub struct ApiArgs {
    /// Serve the gRPC API (Tail, GetStatus, GetReport, Annotate, plus gRPC health and
    /// reflection) on this address, e.g. 127.0.0.1:9465, or 0.0.0.0:9465 in a pod. Off by
    /// default for `run`; `demo` serves on 127.0.0.1:9465.
    #[arg(
        long,
        value_name = "ADDR",
        env = "INVARIANT_AGENT_GRPC_LISTEN",
        help_heading = "gRPC API"
    )]
    pub grpc_listen: Option<SocketAddr>,
    /// Require `authorization: Bearer <token>` on every API call (health and reflection
    /// stay open); the token is this file's content, read once at start and trimmed.
    #[arg(
        long,
        value_name = "FILE",
        env = "INVARIANT_AGENT_GRPC_TOKEN_FILE",
        help_heading = "gRPC API"
    )]
    pub grpc_token_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (with --grpc-tls-key).
    #[arg(
        long,
        value_name = "FILE",
        env = "INVARIANT_AGENT_GRPC_TLS_CERT",
        requires = "grpc_tls_key",
        help_heading = "gRPC API"
    )]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "INVARIANT_AGENT_GRPC_TLS_KEY",
        requires = "grpc_tls_cert",
        help_heading = "gRPC API"
    )]
    pub grpc_tls_key: Option<PathBuf>,
    /// Recent samples kept per invariant (with the transitions among them) for Tail
    /// requests that ask for history. 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TAIL_HISTORY,
          value_parser = clap::value_parser!(u32).range(0..=100_000),
          help_heading = "gRPC API")]
    pub tail_history: u32,
    /// Events a Tail subscriber may fall behind before it loses some (and is told how
    /// many). Rounded up to a power of two; memory is shared by all subscribers.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TAIL_BUFFER,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576),
          help_heading = "gRPC API")]
    pub tail_buffer: u32,
    /// Set by `demo` for its default address: a taken address is then a warning and the
    /// API stays off, instead of a startup error.
    #[arg(skip)]
    pub listen_optional: bool,
}

impl Default for ApiArgs {
    fn default() -> Self {
        ApiArgs {
            grpc_listen: None,
            grpc_token_file: None,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            tail_history: DEFAULT_TAIL_HISTORY,
            tail_buffer: DEFAULT_TAIL_BUFFER,
            listen_optional: false,
        }
    }
}
