//! Test helpers for the probe tests: real servers on 127.0.0.1 (HTTP, HTTPS, raw sockets
//! that misbehave on purpose), test certificates, and spec builders.
//!
//! Every server binds port 0 and runs as a task on the test's own runtime, so it ends
//! with the test and tests can run in parallel.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::spec::{
    ConnectionMode, FollowRedirects, HttpProbeSpec, ProbeSpec, StatusRange, TlsSpec,
};
use crate::probe::build;
use crate::sample::{Observation, ProbeError};

/// A request handler for [`TestHttpServer`].
type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// An HTTP/1.1 (optionally TLS) server that counts connections and requests.
pub struct TestHttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Requests served so far.
    pub requests: Arc<AtomicUsize>,
}

impl TestHttpServer {
    /// Starts a plain HTTP server.
    pub async fn start(
        handler: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Self::serve("127.0.0.1", None, Arc::new(handler)).await
    }

    /// Starts a plain HTTP server on another loopback address (e.g. `127.0.0.2`): a
    /// second host for tests that must tell hosts apart.
    pub async fn start_at(
        ip: &str,
        handler: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Self::serve(ip, None, Arc::new(handler)).await
    }

    /// Starts an HTTPS server with `config`.
    pub async fn start_tls(
        config: Arc<ServerConfig>,
        handler: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        Self::serve(
            "127.0.0.1",
            Some(TlsAcceptor::from(config)),
            Arc::new(handler),
        )
        .await
    }

    async fn serve(ip: &str, tls: Option<TlsAcceptor>, handler: Handler) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (accepted2, requests2) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let requests = requests2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        let response = handler(&req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        TestHttpServer {
            addr,
            accepted,
            requests,
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A response with `status` and `body`.
pub fn reply(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// An address where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// How a [`raw_server`] treats each connection after reading the request.
#[derive(Clone)]
pub enum RawBehavior {
    /// Abort the connection (RST).
    Reset,
    /// Close it normally (FIN) without answering.
    CloseAfterRequest,
    /// Write these bytes, then close.
    Write(Vec<u8>),
}

/// A TCP server that reads whatever the client sends first, then misbehaves.
pub async fn raw_server(behavior: RawBehavior) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let behavior = behavior.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                match behavior {
                    RawBehavior::Reset => {
                        let _ = stream.set_zero_linger();
                    }
                    RawBehavior::CloseAfterRequest => {}
                    RawBehavior::Write(bytes) => {
                        let _ = stream.write_all(&bytes).await;
                        let _ = stream.shutdown().await;
                        // Give the client time to read before the socket goes away.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
    });
    addr
}

/// A server that answers one request with a chunked body that never ends, counting the
/// bytes it manages to write before the client goes away.
pub struct EndlessBodyServer {
    /// Where it listens.
    pub addr: SocketAddr,
    done: tokio::task::JoinHandle<usize>,
}

impl EndlessBodyServer {
    /// Starts the server.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let done = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return 0;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return 0;
            }
            let mut chunk = b"10000\r\n".to_vec();
            chunk.extend(std::iter::repeat_n(b'x', 0x10000));
            chunk.extend_from_slice(b"\r\n");
            let mut sent = 0usize;
            // Bounded, so a client that never stops cannot keep the test running.
            while sent < 1 << 30 {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        EndlessBodyServer { addr, done }
    }

    /// Waits until the server stopped writing; returns the bytes it sent.
    pub async fn wait_done(self) -> usize {
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("the server kept writing: the client did not stop reading")
            .unwrap()
    }
}

/// A TLS listener that completes handshakes and then closes.
pub async fn tls_accept_server(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 64];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

/// A self-signed certificate for `localhost`, and a CA file that trusts it.
pub struct TestTls {
    cert: rcgen::CertifiedKey<rcgen::KeyPair>,
    /// PEM file holding the certificate, for `tls.caFile`.
    pub ca_file: tempfile::NamedTempFile,
}

impl TestTls {
    /// Generates a fresh certificate.
    pub fn new() -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let mut ca_file = tempfile::NamedTempFile::new().unwrap();
        ca_file.write_all(cert.cert.pem().as_bytes()).unwrap();
        TestTls { cert, ca_file }
    }

    /// A server configuration presenting the certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            self.cert.signing_key.serialize_der(),
        ));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.cert.cert.der().clone()], key)
                .unwrap();
        Arc::new(config)
    }
}

/// An HTTP probe spec with the defaults the config loader would fill in.
pub fn http_spec(url: &str) -> HttpProbeSpec {
    HttpProbeSpec {
        url: url.to_string(),
        method: Method::GET,
        headers: vec![],
        bearer_token_file: None,
        tls: TlsSpec::default(),
        expected_status: vec![StatusRange {
            low: 200,
            high: 299,
        }],
        body_match: None,
        value_pointer: None,
        connection: ConnectionMode::Reused,
        max_body_bytes: 1024 * 1024,
        follow_redirects: FollowRedirects::None,
    }
}

/// Runs an observation, failing the test rather than hanging if it never ends.
pub async fn guarded(observation: impl Future<Output = Observation>) -> Observation {
    tokio::time::timeout(Duration::from_secs(10), observation)
        .await
        .expect("the probe did not finish within 10 s")
}

/// Builds an HTTP probe and observes once.
pub async fn observe(spec: &HttpProbeSpec) -> Observation {
    let probe = build(&ProbeSpec::Http(spec.clone()), &Default::default()).unwrap();
    guarded(probe.observe()).await
}

/// Builds an HTTP probe, observes once and returns the failure.
pub async fn failure(spec: &HttpProbeSpec) -> ProbeError {
    match observe(spec).await {
        Observation::Failed(e) => e,
        other => panic!("{}: expected a failure, got {other:?}", spec.url),
    }
}

/// Captures everything logged through `tracing` on this thread (which is where a
/// current-thread `#[tokio::test]` runs all its tasks).
pub struct CapturedLogs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLogs {
    /// Starts capturing at TRACE level.
    pub fn install() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || SharedBuffer(sink.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        CapturedLogs {
            buffer,
            _guard: guard,
        }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

/// A `Write` into a shared buffer.
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
