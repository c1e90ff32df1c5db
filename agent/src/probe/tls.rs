//! Builds rustls client configurations from a probe's [`TlsSpec`].
//!
//! The ring crypto provider is passed explicitly to every configuration, so nothing here
//! depends on a process-wide default provider being installed (and two dependencies that
//! each pull in a different provider cannot make the agent panic at start-up).
//!
//! Trust comes from exactly one place: the `caFile` PEM bundle when set, the system roots
//! (loaded once per process) otherwise, or nothing at all with `insecureSkipVerify`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::BuildError;
use crate::config::spec::TlsSpec;

/// TLS sessions a probe's configuration remembers for resumption, one per server name.
/// A probe talks to one server (a redirect may add a few), while rustls' default cache
/// sizes its table for 256 servers up front: about 14 KiB per probe, most of the agent's
/// memory with 1,000 targets. Resumption itself is unchanged.
const SESSIONS_PER_PROBE: usize = 4;

/// The crypto provider every probe uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a client configuration for `spec` (no ALPN; callers add what they speak).
pub fn client_config(spec: &TlsSpec) -> Result<ClientConfig, BuildError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls {
            reason: e.to_string(),
        })?;
    let config = if spec.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let roots = match &spec.ca_file {
            Some(path) => Arc::new(roots_from_file(path)?),
            None => system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(with_probe_sized_session_cache(config))
}

fn with_probe_sized_session_cache(mut config: ClientConfig) -> ClientConfig {
    config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_PROBE);
    config
}

/// A configuration that trusts nothing, for connectors that will never speak TLS (an
/// `http://` probe) so they need not load the system roots. It keeps no sessions.
pub fn unused_config() -> Result<ClientConfig, BuildError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls {
            reason: e.to_string(),
        })?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Parses a TLS server name (DNS name or IP address), stripping IPv6 brackets.
pub fn server_name(name: &str) -> Result<ServerName<'static>, BuildError> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(bare.to_string()).map_err(|_| BuildError::ServerName {
        name: name.to_string(),
    })
}

/// Reads a PEM bundle of CA certificates.
fn roots_from_file(path: &Path) -> Result<RootCertStore, BuildError> {
    let pem = std::fs::read(path).map_err(|e| BuildError::CaFileUnreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let invalid = |reason: String| BuildError::CaFileInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| invalid(format!("PEM block {}: {e}", index + 1)))?;
        roots
            .add(cert)
            .map_err(|e| invalid(format!("certificate {}: {e}", index + 1)))?;
    }
    if roots.is_empty() {
        return Err(invalid("it holds no CERTIFICATE block".to_string()));
    }
    Ok(roots)
}

/// The system trust store, loaded once per process: reading and parsing a few hundred
/// certificates per probe would slow start-up for nothing.
fn system_roots() -> Result<Arc<RootCertStore>, BuildError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none found".to_string());
                return Err(why);
            }
            if !loaded.errors.is_empty() {
                tracing::warn!(
                    loaded = added,
                    errors = loaded.errors.len(),
                    "some system CA certificates could not be loaded"
                );
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(|reason| BuildError::SystemRoots { reason })
}

/// Accepts any certificate (`insecureSkipVerify`). Handshake signatures are still
/// checked, so the peer must at least own the key of the certificate it sent.
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ca_file_errors_name_the_file_and_say_what_to_do() {
        let missing = Path::new("/nonexistent/ca.pem");
        let e = roots_from_file(missing).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, BuildError::CaFileUnreadable { .. }));
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");

        let mut junk = tempfile::NamedTempFile::new().unwrap();
        junk.write_all(b"not a certificate\n").unwrap();
        let e = roots_from_file(junk.path()).unwrap_err();
        assert!(matches!(e, BuildError::CaFileInvalid { .. }), "{e}");
        assert!(e.to_string().contains(&junk.path().display().to_string()));
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");

        let mut broken = tempfile::NamedTempFile::new().unwrap();
        broken
            .write_all(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let e = roots_from_file(broken.path()).unwrap_err();
        assert!(matches!(e, BuildError::CaFileInvalid { .. }), "{e}");
    }

    #[test]
    fn ca_file_with_a_real_certificate_loads() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(cert.cert.pem().as_bytes()).unwrap();
        let roots = roots_from_file(file.path()).unwrap();
        assert_eq!(roots.len(), 1);
        let spec = TlsSpec {
            ca_file: Some(file.path().to_path_buf()),
            ..TlsSpec::default()
        };
        assert!(client_config(&spec).is_ok());
    }

    #[test]
    fn server_names() {
        assert!(server_name("example.com").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(matches!(
            server_name("bad name!"),
            Err(BuildError::ServerName { .. })
        ));
    }
}
