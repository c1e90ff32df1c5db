//! The demo's misbehaving endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Addresses of the running demo endpoints.
pub struct DemoEndpoints {
    /// The HTTP server (`/healthz`, `/api`, `/metrics`).
    pub http: SocketAddr,
    /// A TCP listener that accepts and closes.
    pub tcp: SocketAddr,
}

impl DemoEndpoints {
    /// Binds both on 127.0.0.1 (ephemeral ports) and serves them on the current runtime.
    pub async fn start() -> std::io::Result<Self> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let endpoints = DemoEndpoints {
            http: http.local_addr()?,
            tcp: tcp.local_addr()?,
        };
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = http.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, started));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        tokio::spawn(async move {
            loop {
                // Accept and drop: a TCP probe only needs the handshake.
                let _ = tcp.accept().await;
            }
        });
        Ok(endpoints)
    }
}

async fn answer(
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let t = started.elapsed().as_secs_f64();
    let within = |from: f64, to: f64| t >= from && t < to;
    let (status, body) = match req.uri().path() {
        "/healthz" if within(8.0, 13.0) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure".to_string(),
        ),
        "/healthz" => (StatusCode::OK, "ok".to_string()),
        "/api" => {
            let delay = if within(22.0, 26.0) { 400 } else { 20 };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            (StatusCode::OK, "{\"items\":[]}".to_string())
        }
        "/metrics" => {
            let errors = if t >= 20.0 { 2 } else { 0 };
            let depth = if within(14.0, 20.0) { 12 } else { 3 };
            let body = format!(
                "# HELP demo_internal_errors_total Internal errors.\n# TYPE demo_internal_errors_total counter\n\
                 demo_internal_errors_total{{component=\"scheduler\"}} {errors}\n\
                 demo_internal_errors_total{{component=\"controller\"}} 0\n\
                 # HELP demo_queue_depth Items waiting.\n# TYPE demo_queue_depth gauge\ndemo_queue_depth {depth}\n"
            );
            (StatusCode::OK, body)
        }
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}
