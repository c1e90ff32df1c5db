//! The HTTP(S) probe, and the request machinery the metrics probe shares.
//!
//! With `connection: reused` a sample is a request on an established keep-alive
//! connection (what in-flight API calls see); with `connection: new` the probe's client
//! keeps no connection and sends `Connection: close`, so every sample dials and handshakes
//! (what a new client sees). OpenShift's disruption monitor measures both for the same
//! reason: an outage of the accept path and an outage of established connections look
//! different.
//!
//! The `http` probes' reused connections belong to [`KeepAliveClients`], one client per
//! TLS setting for all the probes of a run, as one program's HTTP client would hold them:
//! probes of the same `host:port` share its idle connections, and a sample dials only when
//! none is idle (the first one, after the server closed one, or when more requests are in
//! flight at once than connections are open). A connection per probe would cost each one
//! hyper's buffers (about 27 KiB) for a connection that sits idle all but a few
//! milliseconds of each interval: with 1,000 invariants on one server, most of the
//! agent's memory. Behind a load balancer, successive samples may therefore reach
//! different backends, as a client's requests do. The `metrics` probe keeps a connection
//! of its own: it reads counters as increases between scrapes, which must come from one
//! server.
//!
//! The bearer token is read from its file on first use and re-read whenever the file's
//! identity, length or modification time changes (Kubernetes rotates projected tokens by
//! swapping the file). It is kept only inside a sensitive `HeaderValue` and never enters a
//! message, log line or `Debug` output; a message built from what the target sent (a
//! target that echoes request headers) has it cut out.
//!
//! Redirects are not followed unless the probe's `followRedirects` says so: the probe
//! judges the endpoint the invariant file names and reaches no host the file does not
//! name. `sameOrigin` follows only to the URL's own scheme, host and port; `any` follows
//! anywhere over http(s) but never sends the token (or an `Authorization` or `Cookie`
//! header) to another origin. Either stops after [`MAX_REDIRECTS`]; a redirect not
//! followed is the reply judged, and its status error says where it pointed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::FutureExt;
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, LOCATION, PROXY_AUTHORIZATION,
};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::classify::{Stage, classify};
use super::{BuildError, Probe, ProbeFuture, tls};
use crate::config::spec::{
    BodyMatch, ConnectionMode, FollowRedirects, HttpProbeSpec, StatusRange, TlsSpec,
};
use crate::sample::{ErrorClass, Observation, ProbeError};

/// The client every HTTP request of a probe goes through.
type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The clients that keep the `connection: reused` probes' keep-alive connections: one
/// per TLS setting (`http://` targets share one that speaks no TLS), shared by all probes
/// built with the same `KeepAliveClients`. Its clones share the clients.
#[derive(Clone, Default)]
pub struct KeepAliveClients {
    by_tls: Arc<Mutex<HashMap<Option<TlsSpec>, HttpClient>>>,
}

impl fmt::Debug for KeepAliveClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clients = self.by_tls.lock().map_or(0, |clients| clients.len());
        f.debug_struct("KeepAliveClients")
            .field("clients", &clients)
            .finish()
    }
}

impl KeepAliveClients {
    /// The shared client for `tls` (`None`: `http://` only), built on first use.
    fn get(&self, tls: Option<&TlsSpec>) -> Result<HttpClient, BuildError> {
        let mut clients = self.by_tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&tls.cloned()) {
            return Ok(client.clone());
        }
        let client = build_client(tls, ConnectionMode::Reused)?;
        clients.insert(tls.cloned(), client.clone());
        Ok(client)
    }
}

/// A client for `tls` (`None`: one that never speaks TLS); with `ConnectionMode::New` it
/// keeps no idle connection.
fn build_client(
    tls: Option<&TlsSpec>,
    connection: ConnectionMode,
) -> Result<HttpClient, BuildError> {
    let tls_config = match tls {
        Some(tls) => tls::client_config(tls)?,
        None => tls::unused_config()?,
    };
    let schemes = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let schemes = match tls.and_then(|tls| tls.server_name.as_deref()) {
        Some(name) => {
            schemes.with_server_name_resolver(FixedServerNameResolver::new(tls::server_name(name)?))
        }
        None => schemes,
    };
    let mut tcp = HttpConnector::new();
    // The HTTPS connector wraps this one and needs it to accept https:// URIs.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let connector = schemes.enable_http1().wrap_connector(tcp);

    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_timer(TokioTimer::new());
    if connection == ConnectionMode::New {
        builder.pool_max_idle_per_host(0);
    }
    Ok(builder.build(connector))
}

/// Sends one configured request per sample and reads the reply under a size cap.
pub struct HttpFetcher {
    client: HttpClient,
    uri: Uri,
    /// `host:port` of the target, the only part of the URL used in messages.
    peer: String,
    method: Method,
    headers: HeaderMap,
    connection: ConnectionMode,
    token: Option<BearerToken>,
    max_body_bytes: usize,
    follow_redirects: FollowRedirects,
}

/// Most redirects followed for one sample (as browsers and Go's HTTP client).
pub const MAX_REDIRECTS: usize = 10;

/// Kept in a response's extensions when it is a redirect the fetcher did not follow, so
/// the status error can say why.
#[derive(Clone, Debug)]
struct RedirectNotFollowed {
    /// `host:port` the redirect pointed to.
    to: String,
    /// Why it was not followed.
    reason: &'static str,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Headers are left out: a configured header may carry a credential too.
        f.debug_struct("HttpFetcher")
            .field("peer", &self.peer)
            .field("method", &self.method)
            .field("connection", &self.connection)
            .field("token", &self.token)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("follow_redirects", &self.follow_redirects)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// Builds the fetcher for `spec`: parses the URL, loads TLS trust for `https://`, and
    /// with `connection: reused` takes its client from `keep_alive`.
    pub fn new(spec: &HttpProbeSpec, keep_alive: &KeepAliveClients) -> Result<Self, BuildError> {
        let bad_url = |reason: &str| BuildError::Url {
            url: spec.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = spec
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_url(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url("the scheme must be http or https")),
        };
        uri.host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad_url("it has no host"))?;
        let peer = peer_of(&uri);

        let tls = https.then_some(&spec.tls);
        let client = match spec.connection {
            ConnectionMode::Reused => keep_alive.get(tls)?,
            ConnectionMode::New => build_client(tls, ConnectionMode::New)?,
        };

        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            headers.append(name.clone(), value.clone());
        }
        if spec.connection == ConnectionMode::New {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(HttpFetcher {
            client,
            uri,
            peer,
            method: spec.method.clone(),
            headers,
            connection: spec.connection,
            token: spec.bearer_token_file.as_deref().map(BearerToken::new),
            max_body_bytes: spec.max_body_bytes,
            follow_redirects: spec.follow_redirects,
        })
    }

    /// Sends the request, follows the redirects `followRedirects` allows, and waits for
    /// the last response head.
    pub async fn send(&self) -> Result<http::Response<Incoming>, ProbeError> {
        let mut uri = self.uri.clone();
        let mut method = self.method.clone();
        let mut hop = 0;
        loop {
            let credentials = hop == 0 || same_origin(&self.uri, &uri);
            let mut response = self.send_once(&method, &uri, credentials).await?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            // A 304, or a 3xx without a usable http(s) Location, is simply the reply.
            let Some(next) = redirect_target(&uri, &response) else {
                return Ok(response);
            };
            let refused = match self.follow_redirects {
                FollowRedirects::None => Some("followRedirects is none"),
                FollowRedirects::SameOrigin if !same_origin(&self.uri, &next) => {
                    Some("it leaves the URL's origin and followRedirects is sameOrigin")
                }
                _ if hop == MAX_REDIRECTS => Some("the redirect limit (10) was reached"),
                _ => None,
            };
            if let Some(reason) = refused {
                response.extensions_mut().insert(RedirectNotFollowed {
                    to: peer_of(&next),
                    reason,
                });
                return Ok(response);
            }
            if response.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
            }
            self.drain(response).await;
            uri = next;
            hop += 1;
        }
    }

    /// One request to `uri`; `credentials` is false once a redirect left the origin, and
    /// then neither the token nor a configured credential header is sent.
    async fn send_once(
        &self,
        method: &Method,
        uri: &Uri,
        credentials: bool,
    ) -> Result<http::Response<Incoming>, ProbeError> {
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = self.headers.clone();
        if credentials {
            if let Some(token) = &self.token {
                request.headers_mut().insert(AUTHORIZATION, token.header()?);
            }
        } else {
            for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
                request.headers_mut().remove(name);
            }
        }
        self.client.request(request).await.map_err(|e| {
            let stage = if e.is_connect() {
                Stage::Connect
            } else {
                Stage::Request
            };
            classify(&e, stage, &peer_of(uri))
        })
    }

    /// `error` with the bearer token cut out of its message: messages quote a little of
    /// what the target sent (a JSON string, a bad metrics value), and a target may echo
    /// the request's headers.
    pub fn scrub(&self, mut error: ProbeError) -> ProbeError {
        if let Some(token) = self.token.as_ref().and_then(BearerToken::cached) {
            let token = token.as_bytes();
            let secret = token.strip_prefix(b"Bearer ").unwrap_or(token);
            if let Ok(secret) = std::str::from_utf8(secret) {
                error.message = redact(&error.message, secret);
            }
        }
        error
    }

    /// Reads the body, failing with `body_too_large` as soon as it exceeds the cap (the
    /// rest is never read: dropping the body closes the connection).
    pub async fn read_body(
        &self,
        response: http::Response<Incoming>,
    ) -> Result<Vec<u8>, ProbeError> {
        let source = Prefixed("from", &self.peer);
        read_capped(response, self.max_body_bytes, source, |e| {
            classify(&e, Stage::Request, &self.peer)
        })
        .await
    }

    /// Reads and discards the body (up to the cap) so a keep-alive connection can go back
    /// to the pool instead of being closed; does nothing when connections are not reused.
    pub async fn drain(&self, response: http::Response<Incoming>) {
        if self.connection == ConnectionMode::Reused {
            let _ = self.read_body(response).await;
        }
    }
}

/// The `http` probe.
#[derive(Debug)]
pub struct HttpProbe {
    fetcher: HttpFetcher,
    expected_status: Vec<StatusRange>,
    body_match: Option<BodyMatch>,
    value_pointer: Option<String>,
}

impl HttpProbe {
    /// Builds the probe for `spec`, its reused connections kept by `keep_alive`.
    pub fn new(spec: &HttpProbeSpec, keep_alive: &KeepAliveClients) -> Result<Self, BuildError> {
        Ok(HttpProbe {
            fetcher: HttpFetcher::new(spec, keep_alive)?,
            expected_status: if spec.expected_status.is_empty() {
                vec![StatusRange {
                    low: 200,
                    high: 299,
                }]
            } else {
                spec.expected_status.clone()
            },
            body_match: spec.body_match.clone(),
            value_pointer: spec.value_pointer.clone(),
        })
    }

    async fn run(&self) -> Result<Option<f64>, ProbeError> {
        let response = self.fetcher.send().await?;
        let status = response.status();
        if !self
            .expected_status
            .iter()
            .any(|r| r.contains(status.as_u16()))
        {
            let error = status_error(&response, &self.expected_status);
            self.fetcher.drain(response).await;
            return Err(error);
        }
        let body = self.fetcher.read_body(response).await?;
        if let Some(matcher) = &self.body_match {
            check_body(&body, matcher)?;
        }
        match &self.value_pointer {
            Some(pointer) => extract_value(&body, pointer).map(Some),
            None => Ok(None),
        }
    }
}

impl Probe for HttpProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run()
            .map(|result| match result {
                Ok(value) => Observation::Ok { value },
                Err(e) => Observation::Failed(self.fetcher.scrub(e)),
            })
            .boxed()
    }
}

/// `host:port` of a URL (the default port when it names none): the only part of a URL
/// that goes into messages, since paths and queries may carry credentials.
fn peer_of(uri: &Uri) -> String {
    format!("{}:{}", uri.host().unwrap_or(""), port_of(uri))
}

/// Whether two http(s) URLs have the same scheme, host (ignoring case) and port.
fn same_origin(a: &Uri, b: &Uri) -> bool {
    a.scheme_str() == b.scheme_str()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port_of(a) == port_of(b)
}

/// The URL's port, or its scheme's default.
fn port_of(uri: &Uri) -> u16 {
    let https = uri.scheme_str() == Some("https");
    uri.port_u16().unwrap_or(if https { 443 } else { 80 })
}

/// The http(s) URL a redirect's `Location` points to, resolved against `current` (it
/// may be relative); `None` without one, or for another scheme.
fn redirect_target<B>(current: &Uri, response: &http::Response<B>) -> Option<Uri> {
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    let base = url::Url::parse(&current.to_string()).ok()?;
    let mut next = base.join(location).ok()?;
    if !matches!(next.scheme(), "http" | "https") || next.host_str().is_none_or(str::is_empty) {
        return None;
    }
    next.set_fragment(None);
    next.as_str().parse().ok()
}

/// `status 500, expected 200-299`, and for a redirect not followed, where it pointed and
/// why it was not followed.
pub fn status_error<B>(response: &http::Response<B>, expected: &[StatusRange]) -> ProbeError {
    let status = response.status();
    let ranges: Vec<String> = expected
        .iter()
        .map(|r| {
            if r.low == r.high {
                r.low.to_string()
            } else {
                format!("{}-{}", r.low, r.high)
            }
        })
        .collect();
    let redirect = response
        .extensions()
        .get::<RedirectNotFollowed>()
        .map(|r| format!(" (a redirect to {}, not followed: {})", r.to, r.reason))
        .unwrap_or_default();
    ProbeError::new(
        ErrorClass::HttpStatus,
        format!(
            "status {}, expected {}{redirect}",
            status.as_u16(),
            ranges.join(", ")
        ),
    )
}

/// Checks the body (as lossy UTF-8) against the configured match.
pub(crate) fn check_body(body: &[u8], matcher: &BodyMatch) -> Result<(), ProbeError> {
    let text = String::from_utf8_lossy(body);
    let (ok, what) = match matcher {
        BodyMatch::Substring(s) => (text.contains(s.as_str()), format!("does not contain {s:?}")),
        BodyMatch::Regex(r) => (
            r.is_match(&text),
            format!("does not match /{}/", r.as_str()),
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ProbeError::new(
            ErrorClass::BodyMismatch,
            format!("body ({} bytes) {what}", body.len()),
        ))
    }
}

/// Reads the number at JSON pointer `pointer`. Numeric strings and booleans (1/0) count
/// as numbers, since health endpoints often report `"ready": true` or `"count": "3"`.
fn extract_value(body: &[u8], pointer: &str) -> Result<f64, ProbeError> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ProbeError::new(
            ErrorClass::InvalidResponse,
            format!("body is not JSON: {e}"),
        )
    })?;
    let mismatch = |what: String| ProbeError::new(ErrorClass::BodyMismatch, what);
    let value = json
        .pointer(pointer)
        .ok_or_else(|| mismatch(format!("no value at {pointer}")))?;
    use serde_json::Value as J;
    match value {
        J::Number(n) => n
            .as_f64()
            .ok_or_else(|| mismatch(format!("value at {pointer} is out of range"))),
        J::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        J::String(s) => s.trim().parse::<f64>().map_err(|_| {
            let shown: String = s.chars().take(40).collect();
            mismatch(format!(
                "value at {pointer} is the string {shown:?}, not a number"
            ))
        }),
        J::Null => Err(mismatch(format!(
            "value at {pointer} is null, not a number"
        ))),
        J::Array(_) => Err(mismatch(format!(
            "value at {pointer} is an array, not a number"
        ))),
        J::Object(_) => Err(mismatch(format!(
            "value at {pointer} is an object, not a number"
        ))),
    }
}

/// A bearer token file, read lazily and re-read when it changes.
struct BearerToken {
    path: PathBuf,
    cached: Mutex<Option<CachedToken>>,
}

/// The last token read and the file identity it was read from.
struct CachedToken {
    stamp: FileStamp,
    header: HeaderValue,
}

/// What tells a rotated token file from the one already read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    /// Inode on Unix: Kubernetes rotates projected tokens by swapping in a new file.
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl BearerToken {
    fn new(path: &Path) -> Self {
        BearerToken {
            path: path.to_path_buf(),
            cached: Mutex::new(None),
        }
    }

    /// The header value last read, if any (no file access).
    fn cached(&self) -> Option<HeaderValue> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cached.as_ref().map(|c| c.header.clone())
    }

    /// The `Authorization` header value, from the cache unless the file changed.
    fn header(&self) -> Result<HeaderValue, ProbeError> {
        let credentials = |what: String| ProbeError::new(ErrorClass::Credentials, what);
        let path = self.path.display();
        // A small file on local disk: reading it synchronously is cheaper than a trip
        // through the blocking pool.
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| credentials(format!("cannot read bearer token file {path}: {e}")))?;
        let stamp = FileStamp::of(&meta);
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.stamp == stamp) {
            return Ok(c.header.clone());
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| credentials(format!("cannot read bearer token file {path}: {e}")))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(credentials(format!("bearer token file {path} is empty")));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            credentials(format!(
                "bearer token in {path} has characters not allowed in an HTTP header"
            ))
        })?;
        header.set_sensitive(true);
        *cached = Some(CachedToken {
            stamp,
            header: header.clone(),
        });
        Ok(header)
    }
}

/// Reads the body of `response`, failing with `body_too_large` (naming `source`, e.g.
/// `from host:port`, formatted only then) as
/// soon as it exceeds `cap` bytes, before reading anything when Content-Length already
/// says so; the rest is never read. `read_error` classifies a failure mid-body. Shared by
/// the http and apiserver probes.
pub(crate) async fn read_capped<B>(
    response: http::Response<B>,
    cap: usize,
    source: impl std::fmt::Display,
    read_error: impl Fn(B::Error) -> ProbeError,
) -> Result<Vec<u8>, ProbeError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let too_large = || {
        ProbeError::new(
            ErrorClass::BodyTooLarge,
            format!("response body {source} is larger than {cap} bytes"),
        )
    };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap as u64) {
        return Err(too_large());
    }
    let mut body = response.into_body();
    let mut out = Vec::with_capacity(declared.map_or(0, |len| len as usize).min(cap));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(&read_error)?.into_data() {
            if out.len().saturating_add(data.len()) > cap {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// `{0} {1}`, formatted only when displayed: every sample passes one to [`read_capped`],
/// which needs it only for an error.
pub(crate) struct Prefixed<'a>(pub &'static str, pub &'a str);

impl std::fmt::Display for Prefixed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// The shortest start of a secret that [`redact`] cuts out: error messages quote bodies
/// truncated to a few dozen characters, so a long token may appear only in part, and a
/// partial token still helps an attacker; shorter fragments would redact ordinary words.
const MIN_REDACTED_PREFIX: usize = 8;

/// `message` without `secret`: every occurrence of the whole secret, and every start of it
/// (at least [`MIN_REDACTED_PREFIX`] bytes) that the message ends or is cut off with, is
/// replaced by `<redacted>`.
fn redact(message: &str, secret: &str) -> String {
    if secret.is_empty() {
        return message.to_string();
    }
    let mut out = message.replace(secret, "<redacted>");
    // A quoted value cut short keeps only a prefix of the token; the longest such prefix
    // first, so a shorter one inside it is not left behind.
    let mut len = secret.len().saturating_sub(1);
    while len >= MIN_REDACTED_PREFIX.min(secret.len()) && len > 0 {
        if secret.is_char_boundary(len) && out.contains(&secret[..len]) {
            out = out.replace(&secret[..len], "<redacted>");
        }
        len -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_cut_short_in_a_quoted_value_is_still_redacted() {
        let token = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ";
        let quoted = format!("value at /x is the string \"Bearer {}…\"", &token[..33]);
        let redacted = redact(&quoted, token);
        assert!(
            !redacted.contains(&token[..MIN_REDACTED_PREFIX]),
            "{redacted}"
        );
        assert!(redacted.contains("<redacted>"), "{redacted}");
        // Whole occurrences too, and ordinary text stays.
        assert_eq!(
            redact(&format!("got {token} twice {token}"), token),
            "got <redacted> twice <redacted>"
        );
        assert_eq!(redact("abc status 500", token), "abc status 500");
    }

    use super::*;
    use crate::probe::testutil::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[tokio::test]
    async fn ok_and_status_ranges() {
        let server = TestHttpServer::start(|req| match req.uri().path() {
            "/ok" => reply(200, "fine"),
            "/fail" => reply(500, "boom"),
            _ => reply(204, ""),
        })
        .await;
        let ok = observe(&http_spec(&server.url("/ok"))).await;
        assert_eq!(ok, Observation::Ok { value: None });

        let failed = failure(&http_spec(&server.url("/fail"))).await;
        assert_eq!(failed.class, ErrorClass::HttpStatus);
        assert_eq!(failed.message, "status 500, expected 200-299");

        let mut spec = http_spec(&server.url("/fail"));
        spec.expected_status = vec![StatusRange {
            low: 500,
            high: 503,
        }];
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });

        let mut spec = http_spec(&server.url("/other"));
        spec.expected_status = vec![
            StatusRange {
                low: 200,
                high: 200,
            },
            StatusRange {
                low: 300,
                high: 399,
            },
        ];
        let failed = failure(&spec).await;
        assert_eq!(failed.message, "status 204, expected 200, 300-399");
    }

    #[tokio::test]
    async fn method_and_headers_are_sent() {
        let server = TestHttpServer::start(|req| {
            let method = req.method().to_string();
            let header = req
                .headers()
                .get("x-probe")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            reply(200, &format!("{method} {header}"))
        })
        .await;
        let mut spec = http_spec(&server.url("/"));
        spec.method = Method::POST;
        spec.headers = vec![(
            http::HeaderName::from_static("x-probe"),
            HeaderValue::from_static("yes"),
        )];
        spec.body_match = Some(BodyMatch::Substring("POST yes".into()));
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });
    }

    #[tokio::test]
    async fn body_match_substring_and_regex() {
        let server = TestHttpServer::start(|_| reply(200, "status: ok\nchecks: 12 passed")).await;
        let mut spec = http_spec(&server.url("/"));
        spec.body_match = Some(BodyMatch::Substring("status: ok".into()));
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });

        spec.body_match = Some(BodyMatch::Substring("status: degraded".into()));
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::BodyMismatch);
        assert!(
            e.message.contains("does not contain \"status: degraded\""),
            "{e}"
        );

        spec.body_match = Some(BodyMatch::Regex(
            regex::Regex::new(r"checks: \d+ passed").unwrap(),
        ));
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });

        spec.body_match = Some(BodyMatch::Regex(regex::Regex::new(r"^failed").unwrap()));
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::BodyMismatch);
        assert!(e.message.contains("does not match /^failed/"), "{e}");
    }

    #[tokio::test]
    async fn json_pointer_values() {
        let server = TestHttpServer::start(|_| {
            reply(
                200,
                r#"{"queue":{"depth":7.5},"ready":true,"count":"3","name":"x","none":null}"#,
            )
        })
        .await;
        let mut spec = http_spec(&server.url("/"));
        let cases = [
            ("/queue/depth", Ok(7.5)),
            ("/ready", Ok(1.0)),
            ("/count", Ok(3.0)),
            ("/name", Err("is the string \"x\", not a number")),
            ("/none", Err("is null")),
            ("/queue", Err("is an object")),
            ("/missing", Err("no value at /missing")),
        ];
        for (pointer, want) in cases {
            spec.value_pointer = Some(pointer.to_string());
            let got = observe(&spec).await;
            match want {
                Ok(v) => assert_eq!(got, Observation::Ok { value: Some(v) }, "{pointer}"),
                Err(text) => match got {
                    Observation::Failed(e) => {
                        assert_eq!(e.class, ErrorClass::BodyMismatch, "{pointer}");
                        assert!(e.message.contains(text), "{pointer}: {e}");
                    }
                    other => panic!("{pointer}: {other:?}"),
                },
            }
        }

        let server = TestHttpServer::start(|_| reply(200, "<html>not json</html>")).await;
        let mut spec = http_spec(&server.url("/"));
        spec.value_pointer = Some("/x".into());
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::InvalidResponse);
        assert!(e.message.starts_with("body is not JSON"), "{e}");
    }

    #[tokio::test]
    async fn endless_body_stops_at_the_cap() {
        let server = EndlessBodyServer::start().await;
        let mut spec = http_spec(&format!("http://{}/", server.addr));
        spec.max_body_bytes = 64 * 1024;
        let started = std::time::Instant::now();
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::BodyTooLarge, "{e}");
        assert!(e.message.contains("larger than 65536 bytes"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The server stops once its writes fail; it must have sent far less than it
        // would have if the client had kept reading.
        let sent = server.wait_done().await;
        assert!(sent < 64 * 1024 * 1024, "server sent {sent} bytes");
    }

    #[tokio::test]
    async fn declared_length_over_the_cap_fails_without_reading() {
        let server = TestHttpServer::start(|_| reply(200, &"x".repeat(10_000))).await;
        let mut spec = http_spec(&server.url("/"));
        spec.max_body_bytes = 1000;
        assert_eq!(failure(&spec).await.class, ErrorClass::BodyTooLarge);
        spec.max_body_bytes = 10_000;
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });
    }

    #[tokio::test]
    async fn connection_refused() {
        let addr = closed_port().await;
        let e = failure(&http_spec(&format!("http://{addr}/healthz"))).await;
        assert_eq!(e.class, ErrorClass::ConnectionRefused, "{e}");
        assert_eq!(e.message, format!("connect to {addr}: connection refused"));
    }

    #[tokio::test]
    async fn reset_and_early_close_are_connection_reset() {
        let addr = raw_server(RawBehavior::Reset).await;
        let e = failure(&http_spec(&format!("http://{addr}/"))).await;
        assert_eq!(e.class, ErrorClass::ConnectionReset, "{e}");

        let addr = raw_server(RawBehavior::CloseAfterRequest).await;
        let e = failure(&http_spec(&format!("http://{addr}/"))).await;
        assert_eq!(e.class, ErrorClass::ConnectionReset, "{e}");
        assert!(
            e.message
                .contains("closed before the response was complete"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn garbage_is_invalid_response() {
        let addr = raw_server(RawBehavior::Write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())).await;
        let e = failure(&http_spec(&format!("http://{addr}/"))).await;
        assert_eq!(e.class, ErrorClass::InvalidResponse, "{e}");
        assert!(
            e.message
                .starts_with(&format!("invalid HTTP response from {addr}")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn reused_connections_are_reused_and_new_ones_are_not() {
        let server = TestHttpServer::start(|_| reply(200, "ok")).await;
        let probe =
            HttpProbe::new(&http_spec(&server.url("/")), &KeepAliveClients::default()).unwrap();
        for _ in 0..4 {
            assert_eq!(probe.observe().await, Observation::Ok { value: None });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(server.requests.load(Ordering::SeqCst), 4);

        let server = TestHttpServer::start(|req| {
            let close = req
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            reply(if close { 200 } else { 400 }, "")
        })
        .await;
        let mut spec = http_spec(&server.url("/"));
        spec.connection = ConnectionMode::New;
        let probe = HttpProbe::new(&spec, &KeepAliveClients::default()).unwrap();
        for _ in 0..4 {
            assert_eq!(probe.observe().await, Observation::Ok { value: None });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn probes_of_one_server_share_their_keep_alive_connections() {
        let server = TestHttpServer::start(|_| reply(200, "ok")).await;
        let keep_alive = KeepAliveClients::default();
        let probes: Vec<HttpProbe> = (0..20)
            .map(|i| HttpProbe::new(&http_spec(&server.url(&format!("/p{i}"))), &keep_alive))
            .collect::<Result<_, _>>()
            .unwrap();
        for _ in 0..3 {
            for probe in &probes {
                assert_eq!(probe.observe().await, Observation::Ok { value: None });
            }
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), 60);
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            1,
            "one after the other, every probe's request went over the one idle connection"
        );

        // All at once: as many connections as requests in flight, at most, and no new
        // ones afterwards.
        let results = futures_util::future::join_all(probes.iter().map(|p| p.observe())).await;
        assert!(
            results
                .iter()
                .all(|r| *r == Observation::Ok { value: None })
        );
        let after_burst = server.accepted.load(Ordering::SeqCst);
        assert!((1..=20).contains(&after_burst), "{after_burst} connections");
        for probe in &probes {
            assert_eq!(probe.observe().await, Observation::Ok { value: None });
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), after_burst);

        // Probes built with other keep-alive clients (another revision of the files) have
        // connections of their own.
        let other = HttpProbe::new(
            &http_spec(&server.url("/other")),
            &KeepAliveClients::default(),
        )
        .unwrap();
        assert_eq!(other.observe().await, Observation::Ok { value: None });
        assert_eq!(server.accepted.load(Ordering::SeqCst), after_burst + 1);
    }

    #[tokio::test]
    async fn a_connection_is_shared_only_by_probes_with_the_same_tls_settings() {
        let tls = TestTls::new();
        let server = TestHttpServer::start_tls(tls.server_config(), |_| reply(200, "secure")).await;
        let url = format!("https://localhost:{}/", server.addr.port());
        let keep_alive = KeepAliveClients::default();

        let mut trusting = http_spec(&url);
        trusting.tls.ca_file = Some(tls.ca_file.path().to_path_buf());
        let trusting = HttpProbe::new(&trusting, &keep_alive).unwrap();
        assert_eq!(trusting.observe().await, Observation::Ok { value: None });
        assert_eq!(trusting.observe().await, Observation::Ok { value: None });
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

        // Trusting another CA, the same server is rejected, although a connection another
        // probe verified is idle in the same keep-alive clients.
        let other = TestTls::new();
        let mut wrong_ca = http_spec(&url);
        wrong_ca.tls.ca_file = Some(other.ca_file.path().to_path_buf());
        let wrong_ca = HttpProbe::new(&wrong_ca, &keep_alive).unwrap();
        match wrong_ca.observe().await {
            Observation::Failed(e) => assert_eq!(e.class, ErrorClass::Tls, "{e}"),
            ok => panic!("expected a TLS failure, got {ok:?}"),
        }
        assert_eq!(trusting.observe().await, Observation::Ok { value: None });
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            2,
            "the rejected one dialed its own"
        );
    }

    #[tokio::test]
    async fn reused_connection_survives_a_bad_status() {
        let server = TestHttpServer::start(|_| reply(503, "unavailable")).await;
        let probe =
            HttpProbe::new(&http_spec(&server.url("/")), &KeepAliveClients::default()).unwrap();
        for _ in 0..3 {
            assert!(matches!(probe.observe().await, Observation::Failed(_)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bearer_token_is_sent_and_reread_after_rotation() {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let server = TestHttpServer::start(move |req| {
            let auth = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            seen2.lock().unwrap().push(auth);
            reply(200, "")
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let mut spec = http_spec(&server.url("/"));
        spec.bearer_token_file = Some(path.clone());
        let probe = HttpProbe::new(&spec, &KeepAliveClients::default()).unwrap();
        probe.observe().await;
        probe.observe().await;

        // Same length, so only the modification time (or inode) tells it changed.
        std::fs::write(&path, "secnd-token\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        drop(file);
        probe.observe().await;

        // Rotation by swapping in a new file, as the kubelet does.
        let next = dir.path().join("token.next");
        std::fs::write(&next, "  third-token-longer  ").unwrap();
        std::fs::rename(&next, &path).unwrap();
        probe.observe().await;

        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "Bearer first-token",
                "Bearer first-token",
                "Bearer secnd-token",
                "Bearer third-token-longer"
            ]
        );
    }

    #[tokio::test]
    async fn unreadable_token_file_is_a_credentials_failure() {
        let server = TestHttpServer::start(|_| reply(200, "")).await;
        let mut spec = http_spec(&server.url("/"));
        spec.bearer_token_file = Some(PathBuf::from("/nonexistent/token"));
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::Credentials);
        assert!(e.message.contains("/nonexistent/token"), "{e}");
        assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_token_never_appears_in_errors_logs_or_debug() {
        const TOKEN: &str = "sekret-3f9a7c";
        let logs = CapturedLogs::install();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, TOKEN).unwrap();

        let server = TestHttpServer::start(|req| match req.uri().path() {
            "/500" => reply(500, TOKEN),
            // A target that echoes the request's Authorization header where the probe
            // reads its value: the message quotes the string it found.
            "/echo-json" => {
                let auth = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
                let auth = String::from_utf8_lossy(auth.unwrap_or_default()).into_owned();
                reply(200, &serde_json::json!({ "x": auth }).to_string())
            }
            _ => reply(200, &format!("echo {TOKEN}")),
        })
        .await;
        let refused = closed_port().await;
        let reset = raw_server(RawBehavior::Reset).await;
        let garbage = raw_server(RawBehavior::Write(format!("{TOKEN}\r\n\r\n").into_bytes())).await;
        let mut specs = Vec::new();
        for url in [
            server.url("/500"),
            format!("http://{refused}/"),
            format!("http://{reset}/"),
            format!("http://{garbage}/"),
        ] {
            let mut spec = http_spec(&url);
            spec.bearer_token_file = Some(path.clone());
            specs.push(spec);
        }
        let mut mismatch = http_spec(&server.url("/ok"));
        mismatch.bearer_token_file = Some(path.clone());
        mismatch.body_match = Some(BodyMatch::Substring("absent".into()));
        specs.push(mismatch.clone());
        mismatch.body_match = None;
        mismatch.value_pointer = Some("/x".into());
        specs.push(mismatch.clone());
        mismatch.url = server.url("/echo-json");
        specs.push(mismatch);

        for spec in &specs {
            let probe = HttpProbe::new(spec, &KeepAliveClients::default()).unwrap();
            let got = probe.observe().await;
            let Observation::Failed(e) = &got else {
                panic!("{}: expected a failure, got {got:?}", spec.url)
            };
            assert!(!e.message.contains(TOKEN), "token leaked in {e}");
            assert!(!format!("{got:?}").contains(TOKEN));
            let debug = format!("{probe:?}");
            assert!(!debug.contains(TOKEN), "token leaked in {debug}");
            assert!(debug.contains("token"), "{debug}");
        }

        // A token that cannot be a header value must not be quoted back either.
        std::fs::write(&path, format!("{TOKEN}\u{1}bad")).unwrap();
        let mut spec = http_spec(&server.url("/ok"));
        spec.bearer_token_file = Some(path.clone());
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::Credentials);
        assert!(!e.message.contains(TOKEN), "{e}");

        assert!(!logs.text().contains(TOKEN), "token leaked in logs");
    }

    #[tokio::test]
    async fn https_with_ca_file_and_with_insecure_skip_verify() {
        let tls = TestTls::new();
        let server = TestHttpServer::start_tls(tls.server_config(), |_| reply(200, "secure")).await;
        let url = format!("https://localhost:{}/", server.addr.port());

        let mut spec = http_spec(&url);
        spec.tls.ca_file = Some(tls.ca_file.path().to_path_buf());
        spec.body_match = Some(BodyMatch::Substring("secure".into()));
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });

        // The certificate is for "localhost", not for the IP address.
        let mut by_ip = spec.clone();
        by_ip.url = format!("https://127.0.0.1:{}/", server.addr.port());
        let e = failure(&by_ip).await;
        assert_eq!(e.class, ErrorClass::Tls, "{e}");
        by_ip.tls.server_name = Some("localhost".into());
        assert_eq!(observe(&by_ip).await, Observation::Ok { value: None });

        let mut insecure = http_spec(&url);
        insecure.tls.insecure_skip_verify = true;
        assert_eq!(observe(&insecure).await, Observation::Ok { value: None });

        // Trusting another CA: the certificate is rejected.
        let other = TestTls::new();
        let mut wrong_ca = http_spec(&url);
        wrong_ca.tls.ca_file = Some(other.ca_file.path().to_path_buf());
        let e = failure(&wrong_ca).await;
        assert_eq!(e.class, ErrorClass::Tls, "{e}");
        assert!(e.message.contains("certificate"), "{e}");
    }

    #[tokio::test]
    async fn tls_to_a_plain_http_server_is_a_tls_failure() {
        let server = TestHttpServer::start(|_| reply(200, "")).await;
        let mut spec = http_spec(&format!("https://127.0.0.1:{}/", server.addr.port()));
        spec.tls.insecure_skip_verify = true;
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::Tls, "{e}");
    }

    #[test]
    fn bad_urls_are_build_errors() {
        for url in ["ftp://x/", "not a url", "http:///path"] {
            let e = HttpProbe::new(&http_spec(url), &KeepAliveClients::default()).unwrap_err();
            assert!(matches!(e, BuildError::Url { .. }), "{url}: {e}");
            assert!(e.to_string().contains(url), "{e}");
        }
    }

    /// What a test server saw, one line per request.
    type Seen = Arc<Mutex<Vec<String>>>;

    /// A server on `ip` that redirects `/away` to `target`, `/here` to `/ok`, `/loop` to
    /// itself, answers `/ok` with 200, and records the credential headers it receives.
    async fn redirecting_server(ip: &str, target: String, seen: Seen) -> TestHttpServer {
        TestHttpServer::start_at(ip, move |req| {
            let header = |name: http::HeaderName| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            seen.lock().unwrap().push(format!(
                "{} {} auth={} cookie={}",
                req.method(),
                req.uri().path(),
                header(AUTHORIZATION),
                header(COOKIE)
            ));
            let redirect = |to: &str| {
                http::Response::builder()
                    .status(302)
                    .header(LOCATION, to)
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap()
            };
            match req.uri().path() {
                "/away" => redirect(&target),
                "/here" => redirect("ok"),
                "/loop" => redirect("/loop"),
                "/ok" => reply(200, "landed"),
                _ => reply(404, ""),
            }
        })
        .await
    }

    /// Two real servers on two loopback hosts: `a` on 127.0.0.1 redirects `/away` to
    /// `b` on 127.0.0.2.
    async fn two_hosts() -> (TestHttpServer, Seen, Seen) {
        let (seen_a, seen_b) = (Seen::default(), Seen::default());
        let b = redirecting_server("127.0.0.2", String::new(), seen_b.clone()).await;
        let a = redirecting_server("127.0.0.1", b.url("/ok"), seen_a.clone()).await;
        (a, seen_a, seen_b)
    }

    #[tokio::test]
    async fn redirects_are_not_followed_by_default() {
        let (a, seen_a, seen_b) = two_hosts().await;
        for path in ["/away", "/here"] {
            let e = failure(&http_spec(&a.url(path))).await;
            assert_eq!(e.class, ErrorClass::HttpStatus);
            let to = if path == "/away" {
                "127.0.0.2"
            } else {
                "127.0.0.1"
            };
            assert!(
                e.message.starts_with(&format!(
                    "status 302, expected 200-299 (a redirect to {to}:"
                )) && e
                    .message
                    .ends_with("not followed: followRedirects is none)"),
                "{e}"
            );
        }
        assert_eq!(seen_a.lock().unwrap().len(), 2);
        assert!(
            seen_b.lock().unwrap().is_empty(),
            "the other host was never asked"
        );
        // A redirect the invariant expects is simply a success.
        let mut spec = http_spec(&a.url("/away"));
        spec.expected_status = vec![StatusRange {
            low: 302,
            high: 302,
        }];
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });
    }

    #[tokio::test]
    async fn same_origin_follows_only_within_the_origin() {
        let (a, seen_a, seen_b) = two_hosts().await;
        let mut spec = http_spec(&a.url("/here"));
        spec.follow_redirects = FollowRedirects::SameOrigin;
        spec.body_match = Some(BodyMatch::Substring("landed".into()));
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });

        spec.url = a.url("/away");
        let e = failure(&spec).await;
        assert_eq!(e.class, ErrorClass::HttpStatus);
        assert!(
            e.message.contains("a redirect to 127.0.0.2:")
                && e.message.contains(
                    "not followed: it leaves the URL's origin and followRedirects is sameOrigin"
                ),
            "{e}"
        );
        assert!(
            seen_b.lock().unwrap().is_empty(),
            "the other host was never asked"
        );
        // `localhost` is another origin than 127.0.0.1, though it is the same machine.
        spec.url = format!("http://localhost:{}/away", a.addr.port());
        assert!(failure(&spec).await.message.contains("sameOrigin"));
        assert_eq!(
            seen_a.lock().unwrap().len(),
            4,
            "{:?}",
            seen_a.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn any_follows_off_host_without_sending_credentials() {
        let (a, seen_a, seen_b) = two_hosts().await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-redirect").unwrap();
        let mut spec = http_spec(&a.url("/away"));
        spec.follow_redirects = FollowRedirects::Any;
        spec.bearer_token_file = Some(token);
        spec.headers = vec![(COOKIE, HeaderValue::from_static("session=s1"))];
        spec.body_match = Some(BodyMatch::Substring("landed".into()));
        assert_eq!(observe(&spec).await, Observation::Ok { value: None });
        assert_eq!(
            *seen_a.lock().unwrap(),
            ["GET /away auth=Bearer tok-redirect cookie=session=s1"]
        );
        assert_eq!(*seen_b.lock().unwrap(), ["GET /ok auth=- cookie=-"]);
    }

    #[tokio::test]
    async fn a_redirect_loop_stops_at_the_limit() {
        let (a, seen_a, _) = two_hosts().await;
        let mut spec = http_spec(&a.url("/loop"));
        spec.follow_redirects = FollowRedirects::SameOrigin;
        let e = failure(&spec).await;
        assert!(
            e.message
                .ends_with("not followed: the redirect limit (10) was reached)"),
            "{e}"
        );
        assert_eq!(seen_a.lock().unwrap().len(), MAX_REDIRECTS + 1);
    }
}
