//! The TCP probe: connect to `host:port`, optionally complete a TLS handshake, close.
//!
//! The host is resolved on every sample (through the system resolver, like any client
//! would), and each resolved address is tried in turn until one accepts, so a dual-stack
//! name with one dead family still counts as reachable.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::classify::{Stage, classify_io};
use super::{BuildError, Probe, ProbeFuture, tls};
use crate::config::spec::TcpProbeSpec;
use crate::sample::{ErrorClass, Observation, ProbeError};

/// The `tcp` probe.
pub struct TcpProbe {
    /// `host:port` as configured (used for resolution and messages).
    address: String,
    /// The host part, without IPv6 brackets.
    host: String,
    /// Present when a TLS handshake must also succeed.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for TcpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProbe")
            .field("address", &self.address)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish()
    }
}

impl TcpProbe {
    /// Builds the probe for `spec`.
    pub fn new(spec: &TcpProbeSpec) -> Result<Self, BuildError> {
        let (host, _port) = split_host_port(&spec.address)?;
        let tls = match &spec.tls {
            None => None,
            Some(t) => {
                let config = tls::client_config(t)?;
                let name = tls::server_name(t.server_name.as_deref().unwrap_or(&host))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(TcpProbe {
            address: spec.address.clone(),
            host,
            tls,
        })
    }

    async fn run(&self) -> Result<(), ProbeError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.address.as_str())
            .await
            .map_err(|e| ProbeError::new(ErrorClass::Dns, format!("resolve {}: {e}", self.host)))?
            .collect();
        let mut last_error = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let peer = addr.to_string();
                    if let Some((connector, name)) = &self.tls {
                        let _ = stream.set_nodelay(true);
                        connector
                            .connect(name.clone(), stream)
                            .await
                            .map_err(|e| classify_io(&e, Stage::Connect, &peer))?;
                    }
                    // Dropping the stream closes it: the probe only proves the accept.
                    return Ok(());
                }
                Err(e) => last_error = Some(classify_io(&e, Stage::Connect, &addr.to_string())),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ProbeError::new(ErrorClass::Dns, format!("no addresses for {}", self.host))
        }))
    }
}

impl Probe for TcpProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run()
            .map(|result| match result {
                Ok(()) => Observation::Ok { value: None },
                Err(e) => Observation::Failed(e),
            })
            .boxed()
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6) and checks the port.
fn split_host_port(address: &str) -> Result<(String, u16), BuildError> {
    let bad = |reason: &str| BuildError::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("there is no port"))?;
    let host = match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| bad("unbalanced brackets"))?,
        None if host.contains(':') => {
            return Err(bad("an IPv6 address must be in brackets"));
        }
        None => host,
    };
    if host.is_empty() {
        return Err(bad("there is no host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("the port is not a number from 1 to 65535"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::{ProbeSpec, TlsSpec};
    use crate::probe::build;
    use crate::probe::testutil::*;

    async fn observe_tcp(address: &str, tls: Option<TlsSpec>) -> Observation {
        let probe = build(
            &ProbeSpec::Tcp(TcpProbeSpec {
                address: address.to_string(),
                tls,
            }),
            &Default::default(),
        )
        .unwrap();
        guarded(probe.observe()).await
    }

    #[tokio::test]
    async fn connects_and_reports_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            observe_tcp(&addr.to_string(), None).await,
            Observation::Ok { value: None }
        );
        assert_eq!(
            observe_tcp(&format!("localhost:{}", addr.port()), None).await,
            Observation::Ok { value: None }
        );

        let closed = closed_port().await;
        match observe_tcp(&closed.to_string(), None).await {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::ConnectionRefused);
                assert_eq!(
                    e.message,
                    format!("connect to {closed}: connection refused")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tls_handshake() {
        let tls = TestTls::new();
        let addr = tls_accept_server(tls.server_config()).await;
        let trusted = TlsSpec {
            ca_file: Some(tls.ca_file.path().to_path_buf()),
            ..TlsSpec::default()
        };
        let address = format!("localhost:{}", addr.port());
        assert_eq!(
            observe_tcp(&address, Some(trusted.clone())).await,
            Observation::Ok { value: None }
        );

        let other = TestTls::new();
        let untrusted = TlsSpec {
            ca_file: Some(other.ca_file.path().to_path_buf()),
            ..TlsSpec::default()
        };
        match observe_tcp(&address, Some(untrusted)).await {
            Observation::Failed(e) => assert_eq!(e.class, ErrorClass::Tls, "{e}"),
            other => panic!("{other:?}"),
        }

        let insecure = TlsSpec {
            insecure_skip_verify: true,
            ..TlsSpec::default()
        };
        assert_eq!(
            observe_tcp(&addr.to_string(), Some(insecure)).await,
            Observation::Ok { value: None }
        );

        // A plain TCP listener that closes at once: the handshake cannot complete.
        let addr = raw_server(RawBehavior::CloseAfterRequest).await;
        match observe_tcp(&format!("localhost:{}", addr.port()), Some(trusted)).await {
            Observation::Failed(e) => assert!(
                matches!(e.class, ErrorClass::ConnectionReset | ErrorClass::Tls),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addresses_are_checked_at_build() {
        assert_eq!(split_host_port("a:1").unwrap(), ("a".to_string(), 1));
        assert_eq!(
            split_host_port("[::1]:53").unwrap(),
            ("::1".to_string(), 53)
        );
        for bad in [
            "nohost", ":80", "a:0", "a:99999", "::1:53", "[::1:53", "a:http",
        ] {
            let e = split_host_port(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
