//! The gRPC server: binds `--grpc-listen`, serves `invariant.v1.AgentService` (behind the
//! bearer token, when configured), gRPC health and reflection, optionally over TLS, and
//! stops in stages.
//!
//! It runs on its own thread with its own single-threaded runtime: encoding and writing
//! to many tailers, or rendering a report, never competes with probes and the engine for
//! their thread. Everything it shares with them (the feed, the engine's command channel,
//! the report snapshots) is thread-safe and never blocks the engine.
//!
//! Everything that can fail (reading the token and TLS files, binding) fails in
//! [`ApiServer::start`], before sampling starts, with the flag named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::auth::{BearerAuth, Token, TokenError};
use super::feed::Feed;
use super::proto::agent_service_server::AgentServiceServer;
use super::service::AgentApi;
use super::{ApiArgs, MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, proto};
use crate::engine::{Command, Snapshots};
use crate::report::junit::JunitMode;

/// Most concurrent calls (streams) on one client connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 pings on idle connections, so a client that vanished (host down, cable cut)
/// releases its streams within interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that connects but never finishes the TLS handshake is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the deadline of [`ApiServer::shutdown`], how long closing every connection may
/// take.
const FORCE_CLOSE_WAIT: Duration = Duration::from_millis(200);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The token file cannot be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A TLS file could not be read.
    #[error("cannot read {flag} {}: {source}", .path.display())]
    TlsFile {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The certificate and key do not make a TLS identity.
    #[error(
        "--grpc-tls-cert and --grpc-tls-key do not make a usable TLS identity ({0}); give \
         a PEM certificate chain and its PEM private key"
    )]
    Tls(String),
    /// The address could not be bound.
    #[error("cannot listen on --grpc-listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server could not be set up (a bug, or the system is out of threads).
    #[error("cannot start the gRPC API: {0}")]
    Setup(String),
}

/// What the service needs from the run.
pub struct ApiContext {
    /// The engine's event feed.
    pub feed: Feed,
    /// The engine's command channel.
    pub commands: mpsc::Sender<Command>,
    /// The engine's report snapshots.
    pub snapshots: Snapshots,
    /// How GetReport renders JUnit.
    pub junit_mode: JunitMode,
    /// The run so far when this agent resumed it: GetReport merges it in, so the report
    /// covers the whole run (see `report::resume`).
    pub resumed: Option<std::sync::Arc<crate::report::resume::Resumed>>,
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    health: HealthReporter,
    stop: CancellationToken,
    force: CancellationToken,
    stopped: oneshot::Receiver<()>,
}

impl ApiServer {
    /// Reads the token and TLS files, binds the address and starts serving, unless
    /// `--grpc-listen` is absent (`Ok(None)`). With `listen_optional` (the demo's default
    /// address), a taken address is logged and the API stays off.
    pub async fn start(args: &ApiArgs, context: ApiContext) -> Result<Option<Self>, ApiError> {
        let Some(addr) = args.grpc_listen else {
            return Ok(None);
        };
        let token = args
            .grpc_token_file
            .as_deref()
            .map(Token::read)
            .transpose()?;
        let tls = tls_config(args)?;
        let listener = match std::net::TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) if args.listen_optional => {
                tracing::warn!(%addr, error = %e, "gRPC API off: the address is taken; pass --grpc-listen ADDR (port 0 picks a free one)");
                return Ok(None);
            }
            Err(source) => return Err(ApiError::Listen { addr, source }),
        };
        let setup = |e: &dyn std::fmt::Display| ApiError::Setup(e.to_string());
        listener.set_nonblocking(true).map_err(|e| setup(&e))?;
        let bound = listener.local_addr().map_err(|e| setup(&e))?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(service_name(), ServingStatus::Serving)
            .await;
        let router = router(tls, token.clone(), context, health_service)?;
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        let stopped = spawn(router, listener, stop.clone(), force.clone())?;
        tracing::info!(
            addr = %bound,
            tls = args.grpc_tls_cert.is_some(),
            token = token.is_some(),
            "gRPC API listening"
        );
        warn_if_token_in_clear(&bound, args);
        Ok(Some(ApiServer {
            addr: bound,
            health,
            stop,
            force,
            stopped,
        }))
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: health turns NOT_SERVING, new connections are refused, calls in
    /// progress may finish until `deadline`, then every connection is closed. Call after
    /// the feed has ended, so tailers have `RunEnded` and their streams close by
    /// themselves.
    pub async fn shutdown(self, deadline: Duration) {
        for name in ["", service_name()] {
            self.health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        self.stop.cancel();
        let mut stopped = self.stopped;
        if tokio::time::timeout(deadline, &mut stopped).await.is_err() {
            tracing::warn!(
                "gRPC API clients still connected {deadline:?} after the run ended (a client not reading?); closing their connections"
            );
            self.force.cancel();
            let _ = tokio::time::timeout(FORCE_CLOSE_WAIT, stopped).await;
        }
    }
}

fn service_name() -> &'static str {
    <AgentServiceServer<AgentApi> as NamedService>::NAME
}

fn tls_config(args: &ApiArgs) -> Result<Option<ServerTlsConfig>, ApiError> {
    let (Some(cert), Some(key)) = (&args.grpc_tls_cert, &args.grpc_tls_key) else {
        // clap requires both or neither.
        return Ok(None);
    };
    let read = |flag: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ApiError::TlsFile {
            flag,
            path: path.to_path_buf(),
            source,
        })
    };
    let identity = Identity::from_pem(read("--grpc-tls-cert", cert)?, read("--grpc-tls-key", key)?);
    Ok(Some(
        ServerTlsConfig::new()
            .identity(identity)
            .timeout(TLS_HANDSHAKE_TIMEOUT),
    ))
}

/// The services: the agent's (with its message limits, behind the token), health, and
/// reflection (v1 and v1alpha, for grpcurl and older tools).
fn router(
    tls: Option<ServerTlsConfig>,
    token: Option<Token>,
    context: ApiContext,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Router, ApiError> {
    let mut builder = Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        // This parses the certificate and key: a bad pair fails here, at start.
        builder = builder
            .tls_config(tls)
            .map_err(|e| ApiError::Tls(error_chain(&e)))?;
    }
    let api = AgentServiceServer::new(AgentApi::new(
        context.feed,
        context.commands,
        context.snapshots,
        context.junit_mode,
        context.resumed,
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let setup = |e: tonic_reflection::server::Error| ApiError::Setup(e.to_string());
    let v1 = reflection().build_v1().map_err(setup)?;
    let v1alpha = reflection().build_v1alpha().map_err(setup)?;
    Ok(builder
        .add_service(InterceptedService::new(api, BearerAuth::new(token)))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha))
}

/// Serves `router` on `listener` on a thread of its own until `stop` (graceful: calls in
/// progress finish) or `force` (every connection dropped). The receiver resolves when
/// the server is gone.
fn spawn(
    router: Router,
    listener: std::net::TcpListener,
    stop: CancellationToken,
    force: CancellationToken,
) -> Result<oneshot::Receiver<()>, ApiError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ApiError::Setup(e.to_string()))?;
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("grpc-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "gRPC API stopped: cannot use its socket");
                        return;
                    }
                };
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let serve = router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
                tokio::select! {
                    result = serve => if let Err(e) = result {
                        tracing::error!(error = %error_chain(&e), "gRPC API stopped");
                    },
                    () = force.cancelled() => {}
                }
            });
            // Dropping the runtime drops every connection task still running.
            drop(runtime);
            let _ = done.send(());
        })
        .map_err(|e| ApiError::Setup(e.to_string()))?;
    Ok(stopped)
}

/// Warns when a token would cross the network unencrypted.
fn warn_if_token_in_clear(addr: &SocketAddr, args: &ApiArgs) {
    if args.grpc_token_file.is_some() && args.grpc_tls_cert.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the API token is sent in clear text over this non-loopback address; add --grpc-tls-cert and --grpc-tls-key"
        );
    }
}

/// An error and its sources, one after another (tonic's errors hide the cause in them).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
