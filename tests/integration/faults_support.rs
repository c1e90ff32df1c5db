//! Fault injectors for the faults_* tests: a raw-TCP HTTP target whose misbehaviour the
//! test switches while the agent runs (reset, hang after accept, slow body, malformed or
//! huge replies), and a small filesystem fault (a tmpfs that can be filled).
//!
//! The target speaks just enough HTTP/1.1 by hand so that it can misbehave in ways a real
//! HTTP server library never would (RST in the middle of a request, a body that never
//! ends); everything it does is on a real loopback socket.

#![allow(dead_code)] // each faults module uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::now_ms;

/// How a [`FaultyTarget`] answers the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 OK` with body `ok`, keep-alive.
    Ok,
    /// Reads the request, then resets the connection (SO_LINGER 0, close: a TCP RST).
    Reset,
    /// Reads the request and never answers (holds the connection until the peer closes).
    Hang,
    /// Sends the head at once, then a 64-byte body one byte every 200 ms (12.8 s).
    SlowBody,
    /// Answers with a head that is not HTTP (`Content-Length: lots`).
    Malformed,
    /// Answers 200 with a 1 MiB body.
    Huge,
}

/// A loopback HTTP target whose [`Behaviour`] the test changes while the agent runs.
pub struct FaultyTarget {
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl FaultyTarget {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour::Ok));
        let shared = behaviour.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        FaultyTarget { addr, behaviour }
    }

    /// Switches the behaviour for every request read from now on; returns the wall time.
    pub fn set(&self, behaviour: Behaviour) -> i64 {
        *self.behaviour.lock().unwrap() = behaviour;
        now_ms()
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Reads one request head; `false` when the peer closed or the head is unreadable.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
        if head.len() > 64 * 1024 {
            return false;
        }
    }
    true
}

async fn serve(mut stream: TcpStream, behaviour: Arc<Mutex<Behaviour>>) {
    while read_head(&mut stream).await {
        let now = *behaviour.lock().unwrap();
        match now {
            Behaviour::Ok => {
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(reply).await.is_err() {
                    return;
                }
            }
            Behaviour::Reset => {
                let _ = stream.set_zero_linger();
                return; // dropped with SO_LINGER 0: the kernel sends RST
            }
            Behaviour::Hang => {
                // Never answer; return once the peer gives up and closes.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Behaviour::SlowBody => {
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                for _ in 0..64 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            }
            Behaviour::Malformed => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nok")
                    .await;
                return;
            }
            Behaviour::Huge => {
                let body = vec![b'x'; 1 << 20];
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&body).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A small tmpfs mounted for one test, unmounted on drop: a filesystem that really fills
/// up (ENOSPC). `None` when this user may not mount (then the caller says why it falls
/// back to something else).
pub struct SmallTmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallTmpfs {
    pub fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallTmpfs { path, _dir: dir })
    }

    /// Fills the filesystem with one file (`filler`) until the kernel says ENOSPC.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        let _ = file.sync_all();
        filler
    }

    pub fn dir(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A TLS-terminating HTTP/1.1 proxy in front of the real kube-apiserver that injects the
/// faults a real API server shows under load or upgrade: answers of a chosen status
/// (429, 500) for paths with a given prefix, watch streams ended cleanly (as the API
/// server's own watch timeout does) or cut mid-stream (a dropped connection), and watch
/// requests held back (a client whose watch falls behind). Everything else is forwarded
/// unchanged, bearer token included.
pub struct KubeFaultProxy {
    pub port: u16,
    /// PEM file of the proxy's own (self-signed) certificate, for the agent's kubeconfig.
    pub ca_file: PathBuf,
    faults: Arc<Mutex<ProxyFaults>>,
    streams: tokio::sync::watch::Sender<StreamCommand>,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct ProxyFaults {
    /// `(path prefix, status)`: requests whose path starts with the prefix get the status.
    status: Option<(String, u16)>,
    /// While set, watch requests wait before they are forwarded.
    hold_watches: bool,
    /// Watch requests forwarded so far.
    watches: usize,
}

/// What open watch responses do next; each change of the generation applies once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StreamCommand {
    generation: u64,
    cut: bool,
}

type ProxyBody = http_body_util::combinators::BoxBody<hyper::body::Bytes, std::io::Error>;

impl KubeFaultProxy {
    /// Starts the proxy for the API server at `upstream` (`https://127.0.0.1:PORT`) whose
    /// CA is `upstream_ca`.
    pub async fn start(upstream: &str, upstream_ca: &Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca_file = dir.path().join("proxy-ca.crt");
        std::fs::write(&ca_file, cert.cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                    .unwrap(),
            )
            .unwrap();
        server_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));

        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(upstream_ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls)
            .https_only()
            .enable_http1()
            .build();
        let client: hyper_util::client::legacy::Client<
            _,
            http_body_util::Full<hyper::body::Bytes>,
        > = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Mutex::new(ProxyFaults::default()));
        let (streams, _) = tokio::sync::watch::channel(StreamCommand::default());
        let upstream = upstream.trim_end_matches('/').to_string();
        let (f, s) = (faults.clone(), streams.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, client, upstream) =
                    (acceptor.clone(), client.clone(), upstream.clone());
                let (faults, streams) = (f.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        proxy_one(
                            req,
                            client.clone(),
                            upstream.clone(),
                            faults.clone(),
                            streams.clone(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        KubeFaultProxy {
            port,
            ca_file,
            faults,
            streams,
            _dir: dir,
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Answers `status` to requests whose path starts with `prefix` (`None`: forward all).
    /// Returns the wall time.
    pub fn set_status(&self, fault: Option<(&str, u16)>) -> i64 {
        self.faults.lock().unwrap().status = fault.map(|(p, s)| (p.to_string(), s));
        now_ms()
    }

    /// Holds new watch requests back (`true`) or lets them, and the held ones, through.
    pub fn hold_watches(&self, hold: bool) {
        self.faults.lock().unwrap().hold_watches = hold;
    }

    /// Watch requests forwarded so far.
    pub fn watches(&self) -> usize {
        self.faults.lock().unwrap().watches
    }

    /// Ends every open watch response cleanly (the client resumes from its last
    /// resourceVersion, as after the API server's own watch timeout).
    pub fn end_watches(&self) -> i64 {
        self.streams.send_modify(|c| {
            c.generation += 1;
            c.cut = false;
        });
        now_ms()
    }

    /// Cuts every open watch response mid-stream (the connection drops).
    pub fn cut_watches(&self) -> i64 {
        self.streams.send_modify(|c| {
            c.generation += 1;
            c.cut = true;
        });
        now_ms()
    }

    /// A kubeconfig for this proxy with `token`, written into the proxy's directory.
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self._dir.path().join("proxy.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: admin\ncurrent-context: proxy\n",
                self.url(),
                self.ca_file.display()
            ),
        )
        .unwrap();
        path
    }
}

async fn proxy_one<C>(
    req: hyper::Request<hyper::body::Incoming>,
    client: hyper_util::client::legacy::Client<C, http_body_util::Full<hyper::body::Bytes>>,
    upstream: String,
    faults: Arc<Mutex<ProxyFaults>>,
    streams: tokio::sync::watch::Sender<StreamCommand>,
) -> Result<hyper::Response<ProxyBody>, std::convert::Infallible>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let is_watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let error = |status: u16, text: &str| {
        let body = format!(
            r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"{text}","code":{status}}}"#
        );
        let mut resp = hyper::Response::new(
            http_body_util::Full::new(hyper::body::Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        if status == 429 {
            resp.headers_mut()
                .insert("retry-after", "1".parse().unwrap());
        }
        Ok(resp)
    };
    if let Some((_, status)) = faults
        .lock()
        .unwrap()
        .status
        .clone()
        .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
    {
        return error(status, "injected by the test's fault proxy");
    }
    if is_watch {
        while faults.lock().unwrap().hold_watches {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        faults.lock().unwrap().watches += 1;
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return error(502, "cannot read the request");
    };
    let uri = format!(
        "{upstream}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut forward = hyper::Request::builder().method(parts.method).uri(uri);
    for (k, v) in &parts.headers {
        if k != "host" {
            forward = forward.header(k, v);
        }
    }
    let forward = forward.body(http_body_util::Full::new(body)).unwrap();
    let Ok(response) = client.request(forward).await else {
        return error(502, "upstream unreachable");
    };
    let (parts, mut body) = response.into_parts();
    if !is_watch {
        let body = body.map_err(std::io::Error::other).boxed();
        return Ok(hyper::Response::from_parts(parts, body));
    }
    // A watch: relay frames until the test ends or cuts the stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<hyper::body::Bytes>, std::io::Error>,
    >(16);
    let mut commands = streams.subscribe();
    let start = *commands.borrow_and_update();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    Some(Ok(frame)) => {
                        if tx.send(Ok(frame)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        return;
                    }
                    None => return,
                },
                changed = commands.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *commands.borrow_and_update();
                    if now.generation != start.generation {
                        if now.cut {
                            let _ = tx
                                .send(Err(std::io::Error::other("cut by the test's fault proxy")))
                                .await;
                        }
                        return; // dropping tx ends the body cleanly
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = http_body_util::StreamBody::new(stream).boxed();
    Ok(hyper::Response::from_parts(parts, body))
}
