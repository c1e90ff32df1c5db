//! Connecting to a running agent's gRPC API (`proto/invariant/v1/agent.proto`) for the
//! client commands (`tail`, `status`, `report --addr`): the `--addr`, `--token-file` and
//! `--ca-file` flags, the connection, and errors that say what to do next.
//!
//! Everything that comes back from the network is turned into a [`ClientError`] whose
//! message names the address and the likely fix; nothing here panics on what the agent
//! (or whatever answers at the address) sends. The token is never printed: it lives in a
//! metadata value marked sensitive and no error message includes it.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use http::Uri;
use tonic::codec::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::proto;
use super::proto::agent_service_client::AgentServiceClient;

/// Where the client commands look for the agent unless told otherwise: where `demo`
/// serves the API.
pub const DEFAULT_ADDR: &str = super::DEMO_LISTEN;
/// How long to wait for the TCP connection (and the TLS handshake) before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on an otherwise quiet `tail`, so a peer that vanished without closing
/// the connection (host down, network cut) is noticed within interval + timeout rather
/// than never.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code for a failed client command (cli.rs's convention).
const EXIT_FAILURE: u8 = 1;
/// Exit code for flags that cannot work together (clap uses 2 for usage errors).
const EXIT_USAGE: u8 = 2;

/// How to reach a running agent (flags shared by `tail`, `status` and `report --addr`).
#[derive(Clone, Debug, Args)]
pub struct ConnectArgs {
    /// The agent's API address, as given to its --grpc-listen: HOST:PORT or
    /// http://HOST:PORT (plaintext), https://HOST:PORT (TLS).
    #[arg(long, value_name = "ADDR", env = "INVARIANT_AGENT_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: AgentAddress,
    /// File holding the token the agent was started with (--grpc-token-file); sent as
    /// `authorization: Bearer <token>`, never printed.
    #[arg(long, value_name = "FILE", env = "INVARIANT_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the agent's certificate (https:// only); without
    /// it the system's trusted roots are used.
    #[arg(long, value_name = "FILE", env = "INVARIANT_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// A validated `--addr`: scheme (http or https) and authority, no path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAddress {
    uri: Uri,
    tls: bool,
    /// As the user wrote it, for messages.
    shown: String,
}

impl AgentAddress {
    /// The URI to connect to (`http://HOST:PORT` or `https://HOST:PORT`).
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Whether the connection uses TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn host(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }

    fn port(&self) -> u16 {
        self.uri
            .port_u16()
            .unwrap_or(if self.tls { 443 } else { 80 })
    }

    /// Whether the host is this machine, where `--grpc-listen ADDR` is the likely fix.
    fn is_loopback(&self) -> bool {
        let host = self.host().trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// What to check when nothing answers.
    fn listen_hint(&self) -> String {
        if self.is_loopback() {
            // --grpc-listen takes an IP address, not a host name.
            let listen = match self.host() {
                host if host.eq_ignore_ascii_case("localhost") => "127.0.0.1",
                host => host,
            };
            format!("is it running with --grpc-listen {listen}:{}?", self.port())
        } else {
            format!(
                "is it running with --grpc-listen on port {}, and reachable from this machine?",
                self.port()
            )
        }
    }

    /// What to check when the connection opened but the peer does not speak our
    /// protocol, most often plaintext sent to a TLS port.
    fn protocol_hint(&self) -> String {
        if self.tls {
            self.listen_hint()
        } else {
            format!(
                "{} If it serves TLS (--grpc-tls-cert), use https://",
                self.listen_hint()
            )
        }
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl FromStr for AgentAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        const FORMS: &str =
            "write HOST:PORT, http://HOST:PORT or https://HOST:PORT, e.g. 127.0.0.1:9465";
        let text = text.trim().trim_end_matches('/');
        if text.is_empty() {
            return Err(format!("the address is empty; {FORMS}"));
        }
        let has_scheme = text.contains("://");
        let full = if has_scheme {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = full
            .parse()
            .map_err(|e| format!("{text:?} is not an address ({e}); {FORMS}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{text:?} has an unknown scheme; {FORMS}")),
        };
        let Some(authority) = uri.authority().cloned() else {
            return Err(format!("{text:?} names no host; {FORMS}"));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("{text:?} has a path; {FORMS}"));
        }
        if !has_scheme && authority.port().is_none() {
            return Err(format!("{text:?} has no port; {FORMS}"));
        }
        let uri = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| format!("{text:?} is not an address ({e}); {FORMS}"))?;
        Ok(AgentAddress {
            uri,
            tls,
            shown: text.to_string(),
        })
    }
}

/// Why a client command could not do its job. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--ca-file` was given for a plaintext address.
    #[error(
        "--ca-file {} only applies to https:// addresses, but the address is {address}",
        .path.display()
    )]
    CaWithoutTls {
        /// The CA file.
        path: PathBuf,
        /// The plaintext address.
        address: String,
    },
    /// The token file could not be read or holds no usable token.
    #[error("cannot use the token in {}: {problem}", .path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// What is wrong (never the token itself).
        problem: String,
    },
    /// The CA file could not be read or parsed.
    #[error("cannot use the CA certificates in {}: {problem}", .path.display())]
    CaFile {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Nothing usable answered at the address.
    #[error("cannot reach the agent at {address}: {cause} — {hint}")]
    Unreachable {
        /// Where we looked.
        address: String,
        /// What failed, e.g. "connection refused".
        cause: String,
        /// What to check.
        hint: String,
    },
    /// The agent requires a token and none was given.
    #[error(
        "the agent at {address} requires a token: pass --token-file FILE (or set \
         INVARIANT_AGENT_TOKEN_FILE) with the token of the agent's --grpc-token-file"
    )]
    TokenRequired {
        /// The agent.
        address: String,
    },
    /// The agent refused the token that was sent.
    #[error(
        "the agent at {address} refused the token in {}: it must be the token of the \
         agent's --grpc-token-file",
        .path.display()
    )]
    TokenRejected {
        /// The agent.
        address: String,
        /// The token file that was used.
        path: PathBuf,
    },
    /// The agent does not know the call: another version (or not an invariant-agent).
    #[error(
        "the agent at {address} does not implement {call} (UNIMPLEMENTED): it is probably a \
         different version of invariant-agent than this client ({}); use the same version \
         for both",
        env!("CARGO_PKG_VERSION")
    )]
    Unimplemented {
        /// The agent.
        address: String,
        /// The call, e.g. "Tail".
        call: &'static str,
    },
    /// The agent refused the request, e.g. an unknown invariant name.
    #[error("the agent at {address} refused the request: {message}")]
    InvalidArgument {
        /// The agent.
        address: String,
        /// The agent's explanation.
        message: String,
    },
    /// An established connection broke (the agent was killed, the network failed).
    #[error("lost the connection to the agent at {address}: {cause}")]
    ConnectionLost {
        /// The agent.
        address: String,
        /// What the transport reported.
        cause: String,
    },
    /// Any other failure the agent reported.
    #[error("the agent at {address} failed {call} ({code:?}): {message}")]
    Call {
        /// The agent.
        address: String,
        /// The call, e.g. "GetReport".
        call: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The agent's explanation.
        message: String,
    },
}

impl ClientError {
    /// The process exit code for this error: 2 for flags that cannot work together, 1
    /// for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::CaWithoutTls { .. } => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token, even in debug output.
        let shown = if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        f.debug_tuple("BearerToken").field(&shown).finish()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Reads a token file (surrounding whitespace, such as the final newline, is not part
/// of the token) into a sensitive `authorization` value.
pub fn read_token(path: &Path) -> Result<BearerToken, ClientError> {
    let problem = |problem: String| ClientError::Token {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(problem("the file is empty".to_string()));
    }
    // The error of `try_from` is not shown: it could echo the token.
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        problem("the token must be printable ASCII without line breaks".to_string())
    })?;
    value.set_sensitive(true);
    Ok(BearerToken(Some(value)))
}

/// A connected client of one agent.
pub struct Agent {
    client: AgentServiceClient<InterceptedService<Channel, BearerToken>>,
    address: AgentAddress,
    token_file: Option<PathBuf>,
}

/// Connects to the agent (within [`CONNECT_TIMEOUT`]), so an address where nothing
/// listens fails here with a clear message rather than at the first call.
pub async fn connect(args: &ConnectArgs) -> Result<Agent, ClientError> {
    let token = match &args.token_file {
        Some(path) => read_token(path)?,
        None => BearerToken(None),
    };
    let endpoint = endpoint(args)?;
    if token.0.is_some() && !args.addr.is_tls() && !args.addr.is_loopback() {
        use std::io::Write as _;
        let _ = writeln!(
            io::stderr(),
            "warning: the token is sent in plaintext to {}; serve TLS (--grpc-tls-cert) and use https://",
            args.addr
        );
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(&args.addr, &e))?;
    // The API's limit (see the proto file), so a large report is not refused by the
    // client's smaller default (4 MiB).
    let client = AgentServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    Ok(Agent {
        client,
        address: args.addr.clone(),
        token_file: args.token_file.clone(),
    })
}

/// The endpoint for `args`: timeouts, keep-alive and TLS.
fn endpoint(args: &ConnectArgs) -> Result<Endpoint, ClientError> {
    let address = &args.addr;
    let endpoint = Endpoint::from(address.uri().clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if !address.is_tls() {
        if let Some(path) = &args.ca_file {
            return Err(ClientError::CaWithoutTls {
                path: path.clone(),
                address: address.to_string(),
            });
        }
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new().timeout(CONNECT_TIMEOUT);
    tls = match &args.ca_file {
        Some(path) => tls.ca_certificate(read_ca(path)?),
        None => tls.with_native_roots(),
    };
    endpoint
        .tls_config(tls)
        .map_err(|e| ClientError::Unreachable {
            address: address.to_string(),
            cause: error_chain(&e),
            hint: "check the address and --ca-file".to_string(),
        })
}

fn read_ca(path: &Path) -> Result<Certificate, ClientError> {
    let pem = std::fs::read(path).map_err(|e| ClientError::CaFile {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    // tonic parses the PEM only when connecting; check it here so a wrong file is named
    // as such instead of surfacing as a TLS failure.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ClientError::CaFile {
            path: path.to_path_buf(),
            problem: "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".to_string(),
        });
    }
    Ok(Certificate::from_pem(pem))
}

/// Describes a failed connection attempt with the most likely fix.
fn unreachable(address: &AgentAddress, error: &(dyn StdError + 'static)) -> ClientError {
    let kind = io_error_kind(error);
    let chain = error_chain(error);
    let cause = match kind {
        Some(io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
        Some(io::ErrorKind::TimedOut) => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        _ if chain.contains("timed out") || chain.contains("Timeout expired") => {
            format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())
        }
        _ => chain.clone(),
    };
    let hint = if chain.contains("dns error") {
        format!("check the host name {:?}", address.host())
    } else if chain.contains("certificate") || chain.contains("UnknownIssuer") {
        "pass --ca-file FILE with the CA that signed the agent's certificate (--grpc-tls-cert)"
            .to_string()
    } else if kind.is_none() {
        address.protocol_hint()
    } else {
        address.listen_hint()
    };
    ClientError::Unreachable {
        address: address.to_string(),
        cause,
        hint,
    }
}

/// The kind of the first I/O error in `error`'s source chain, if any.
fn io_error_kind(error: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

/// `error` and its sources joined with ": ", skipping generic wrappers ("transport
/// error") and messages already contained in the previous one.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        let repeated = parts.last().is_some_and(|last| last.contains(&text));
        if !text.is_empty() && !repeated && text != "transport error" {
            parts.push(text);
        }
        current = e.source();
    }
    if parts.is_empty() {
        "unknown error".to_string()
    } else {
        parts.join(": ")
    }
}

impl Agent {
    /// The address this client is connected to.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// The current state of every invariant (GetStatus).
    pub async fn status(&mut self) -> Result<proto::GetStatusResponse, ClientError> {
        self.client
            .get_status(proto::GetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.explain("GetStatus", &s))
    }

    /// The run report so far in `format` (GetReport).
    pub async fn report(
        &mut self,
        format: proto::ReportFormat,
    ) -> Result<proto::GetReportResponse, ClientError> {
        let request = proto::GetReportRequest {
            format: format.into(),
        };
        self.client
            .get_report(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.explain("GetReport", &s))
    }

    /// Opens a Tail stream. Errors while reading it go through [`Agent::stream_error`].
    pub async fn tail(
        &mut self,
        request: proto::TailRequest,
    ) -> Result<Streaming<proto::TailResponse>, ClientError> {
        self.client
            .tail(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.explain("Tail", &s))
    }

    /// Explains an error that ended an open Tail stream: transport failures mean the
    /// connection was lost; anything else is the agent's own answer.
    pub fn stream_error(&self, status: &Status) -> ClientError {
        match status.code() {
            Code::Unknown | Code::Unavailable | Code::Internal | Code::Cancelled => {
                ClientError::ConnectionLost {
                    address: self.address.to_string(),
                    cause: status_cause(status),
                }
            }
            _ => self.explain("Tail", status),
        }
    }

    /// Turns a failed call's status into an error that says what to do.
    fn explain(&self, call: &'static str, status: &Status) -> ClientError {
        let address = self.address.to_string();
        // A status with a source was made here from a transport error, not sent by the
        // agent: the connection broke, or the peer does not speak gRPC this way.
        if status.source().is_some() {
            return ClientError::Unreachable {
                hint: self.address.protocol_hint(),
                address,
                cause: status_cause(status),
            };
        }
        match status.code() {
            Code::Unauthenticated => match &self.token_file {
                Some(path) => ClientError::TokenRejected {
                    address,
                    path: path.clone(),
                },
                None => ClientError::TokenRequired { address },
            },
            Code::Unimplemented => ClientError::Unimplemented { address, call },
            Code::InvalidArgument => ClientError::InvalidArgument {
                address,
                message: status.message().to_string(),
            },
            Code::Unavailable => ClientError::Unreachable {
                hint: self.address.listen_hint(),
                address,
                cause: status_cause(status),
            },
            code => ClientError::Call {
                address,
                call,
                code,
                message: status_cause(status),
            },
        }
    }
}

/// A status's message followed by its transport cause, if any.
fn status_cause(status: &Status) -> String {
    let message = match status.message() {
        "transport error" => "", // says nothing the source does not
        message => message,
    };
    match status.source() {
        Some(source) => {
            let chain = error_chain(source);
            if message.is_empty() || chain.contains(message) {
                chain
            } else if message.contains(&chain) {
                message.to_string()
            } else {
                format!("{message}: {chain}")
            }
        }
        None if message.is_empty() => format!("{:?}", status.code()),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> AgentAddress {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_take_three_forms() {
        let plain = address("127.0.0.1:9465");
        assert_eq!(plain.uri().to_string(), "http://127.0.0.1:9465/");
        assert!(!plain.is_tls());
        assert_eq!(plain.to_string(), "127.0.0.1:9465");
        assert_eq!(
            address("http://localhost:1/").uri().to_string(),
            "http://localhost:1/"
        );
        let tls = address("https://agent.example:8443");
        assert!(tls.is_tls());
        assert_eq!(tls.port(), 8443);
        assert_eq!(address("https://agent.example").port(), 443);
        assert_eq!(address("[::1]:9465").host(), "[::1]");
    }

    #[test]
    fn bad_addresses_say_which_forms_work() {
        for bad in [
            "",
            "localhost",
            "ftp://host:1",
            "http://host:1/path",
            "host:port",
            "http://",
        ] {
            let err = bad.parse::<AgentAddress>().unwrap_err();
            assert!(err.contains("HOST:PORT"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_hint_names_the_listen_flag_for_local_agents() {
        assert_eq!(
            address("127.0.0.1:9465").listen_hint(),
            "is it running with --grpc-listen 127.0.0.1:9465?"
        );
        assert_eq!(
            address("localhost:9465").listen_hint(),
            "is it running with --grpc-listen 127.0.0.1:9465?"
        );
        assert_eq!(
            address("[::1]:1").listen_hint(),
            "is it running with --grpc-listen [::1]:1?"
        );
        assert!(address("localhost:1").is_loopback());
        let remote = address("10.0.0.5:9465").listen_hint();
        assert!(remote.contains("port 9465"), "{remote}");
    }

    #[test]
    fn tokens_are_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let token = read_token(&path).unwrap();
        assert_eq!(
            token.0.as_ref().unwrap().to_str().unwrap(),
            "Bearer s3cret-token"
        );
        assert!(!format!("{token:?}").contains("s3cret"));
        std::fs::write(&path, "bad\u{7}token").unwrap();
        let err = read_token(&path).unwrap_err().to_string();
        assert!(!err.contains("bad"), "{err}");
        assert!(err.contains("printable ASCII"), "{err}");
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token(&path).unwrap_err().to_string().contains("empty"));
        let missing = read_token(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn the_interceptor_sends_the_bearer_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc").unwrap();
        let mut token = read_token(&path).unwrap();
        let request = token.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc"
        );
        let request = BearerToken(None).call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    fn args(addr: &str) -> ConnectArgs {
        ConnectArgs {
            addr: address(addr),
            token_file: None,
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_with_the_fix() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = match connect(&args(&format!("127.0.0.1:{port}"))).await {
            Err(e) => e,
            Ok(_) => panic!("connected to a closed port"),
        };
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the agent at 127.0.0.1:{port}: connection refused — is it \
                 running with --grpc-listen 127.0.0.1:{port}?"
            )
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_ca_file_needs_https() {
        let mut a = args("127.0.0.1:1");
        a.ca_file = Some(PathBuf::from("ca.pem"));
        let err = endpoint(&a).unwrap_err();
        assert!(
            err.to_string().contains("only applies to https://"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let mut a = args("https://127.0.0.1:1");
        a.ca_file = Some(path);
        let err = endpoint(&a).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    fn agent(token_file: Option<&str>) -> Agent {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Agent {
            client: AgentServiceClient::with_interceptor(channel, BearerToken(None)),
            address: address("127.0.0.1:1"),
            token_file: token_file.map(PathBuf::from),
        }
    }

    #[tokio::test]
    async fn statuses_become_advice() {
        let without = agent(None);
        let text = without
            .explain("Tail", &Status::unauthenticated("missing token"))
            .to_string();
        assert!(
            text.contains("requires a token: pass --token-file"),
            "{text}"
        );
        let with = agent(Some("/etc/token"));
        let text = with
            .explain("Tail", &Status::unauthenticated("bad token"))
            .to_string();
        assert!(text.contains("refused the token in /etc/token"), "{text}");
        let text = with
            .explain("GetStatus", &Status::unimplemented(""))
            .to_string();
        assert!(text.contains("different version"), "{text}");
        let text = with
            .explain("Tail", &Status::invalid_argument("unknown invariant \"x\""))
            .to_string();
        assert!(
            text.ends_with("refused the request: unknown invariant \"x\""),
            "{text}"
        );
        let lost = with.stream_error(&Status::unknown("h2 protocol error: connection reset"));
        assert!(matches!(lost, ClientError::ConnectionLost { .. }), "{lost}");
        let exhausted = with.explain("GetReport", &Status::resource_exhausted("too big"));
        assert!(
            exhausted.to_string().contains("ResourceExhausted"),
            "{exhausted}"
        );
    }
}
