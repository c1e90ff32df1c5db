//! Turns transport errors (io, TLS, HTTP) into a stable [`ErrorClass`] and a short message.
//!
//! Errors from hyper, hyper-util, hyper-rustls and tokio-rustls arrive as chains of
//! wrappers, and some wrappers are `io::Error`s that hide their cause from `source()`
//! (`io::Error::other(e)` reports `e.source()`, not `e`). The walk below therefore also
//! looks inside every `io::Error` with `get_ref`, so a certificate error wrapped three
//! times is still found and classed as `tls`.
//!
//! Messages name the peer (`host:port`, never the full URL, whose query or user-info may
//! carry secrets) and say what happened in a few words, e.g.
//! `connect to 127.0.0.1:8080: connection refused`.

use std::error::Error as StdError;
use std::io;

use crate::sample::{ErrorClass, ProbeError};

/// The stage a request was in when it failed, for the message prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Establishing the connection (TCP connect and TLS handshake).
    Connect,
    /// Sending the request or reading the response.
    Request,
}

impl Stage {
    fn describe(self, peer: &str) -> String {
        match self {
            Stage::Connect => format!("connect to {peer}"),
            Stage::Request => format!("request to {peer}"),
        }
    }
}

/// Classifies `err`, which happened at `stage` while talking to `peer`.
pub fn classify(err: &(dyn StdError + 'static), stage: Stage, peer: &str) -> ProbeError {
    let mut fallback: Option<ProbeError> = None;
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    // Bounded, so a (buggy) cyclic chain cannot hang the probe.
    for _ in 0..32 {
        let Some(e) = current else { break };
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return ProbeError::new(ErrorClass::Tls, format!("TLS with {peer}: {tls}"));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some((class, what)) = io_kind(io.kind()) {
                return ProbeError::new(class, format!("{}: {what}", stage.describe(peer)));
            }
            if let Some(inner) = io.get_ref() {
                current = Some(inner as &(dyn StdError + 'static));
                continue;
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return ProbeError::new(
                    ErrorClass::InvalidResponse,
                    format!("invalid HTTP response from {peer}: {h}"),
                );
            }
            // Unsolicited bytes on a pooled connection: the peer speaks garbage. hyper has
            // no predicate for this kind, only its fixed description.
            if h.to_string().starts_with("received unexpected message") {
                return ProbeError::new(
                    ErrorClass::InvalidResponse,
                    format!("invalid HTTP response from {peer}: {h}"),
                );
            }
            if h.is_incomplete_message() {
                return ProbeError::new(
                    ErrorClass::ConnectionReset,
                    format!(
                        "{}: connection closed before the response was complete",
                        stage.describe(peer)
                    ),
                );
            }
        }
        // hyper-util's connector error type is private; "dns error" is its fixed
        // description for a failed name lookup.
        if e.to_string() == "dns error" {
            let cause = e
                .source()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "lookup failed".to_string());
            return ProbeError::new(
                ErrorClass::Dns,
                format!("resolve {}: {cause}", host_of(peer)),
            );
        }
        if fallback.is_none() && e.source().is_none() {
            // The innermost error usually says the most.
            fallback = Some(ProbeError::new(
                if stage == Stage::Connect {
                    ErrorClass::Connect
                } else {
                    ErrorClass::Other
                },
                format!("{}: {e}", stage.describe(peer)),
            ));
        }
        current = e.source();
    }
    fallback.unwrap_or_else(|| {
        ProbeError::new(
            if stage == Stage::Connect {
                ErrorClass::Connect
            } else {
                ErrorClass::Other
            },
            format!("{}: {err}", stage.describe(peer)),
        )
    })
}

/// Classifies a bare `io::Error` (TCP probes, body reads).
pub fn classify_io(err: &io::Error, stage: Stage, peer: &str) -> ProbeError {
    classify(err, stage, peer)
}

/// The class and a short description for io error kinds that say something precise.
fn io_kind(kind: io::ErrorKind) -> Option<(ErrorClass, &'static str)> {
    use io::ErrorKind as K;
    Some(match kind {
        K::ConnectionRefused => (ErrorClass::ConnectionRefused, "connection refused"),
        K::ConnectionReset => (ErrorClass::ConnectionReset, "connection reset by peer"),
        K::ConnectionAborted => (ErrorClass::ConnectionReset, "connection aborted"),
        K::BrokenPipe => (
            ErrorClass::ConnectionReset,
            "connection closed by peer (broken pipe)",
        ),
        K::UnexpectedEof => (
            ErrorClass::ConnectionReset,
            "connection closed unexpectedly",
        ),
        K::NotConnected => (ErrorClass::ConnectionReset, "not connected"),
        K::TimedOut => (ErrorClass::Timeout, "timed out"),
        K::AddrNotAvailable => (ErrorClass::Connect, "address not available"),
        K::NetworkUnreachable => (ErrorClass::Connect, "network unreachable"),
        K::HostUnreachable => (ErrorClass::Connect, "host unreachable"),
        K::NetworkDown => (ErrorClass::Connect, "network down"),
        K::PermissionDenied => (ErrorClass::Connect, "permission denied"),
        _ => return None,
    })
}

/// The host part of `host:port` (brackets kept for IPv6), for DNS messages.
fn host_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn io_kinds_inside_wrappers_are_found() {
        let wrapped = Outer(io::Error::other(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        let e = classify(&wrapped, Stage::Connect, "127.0.0.1:1");
        assert_eq!(e.class, ErrorClass::ConnectionRefused);
        assert_eq!(e.message, "connect to 127.0.0.1:1: connection refused");
    }

    #[test]
    fn rustls_errors_inside_io_errors_are_tls() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, inner));
        let e = classify(&wrapped, Stage::Connect, "h:443");
        assert_eq!(e.class, ErrorClass::Tls, "{e}");
        assert!(
            e.message
                .starts_with("TLS with h:443: invalid peer certificate"),
            "{e}"
        );
    }

    #[test]
    fn unknown_errors_fall_back_by_stage() {
        let e = classify(&io::Error::other("weird"), Stage::Connect, "h:1");
        assert_eq!(e.class, ErrorClass::Connect);
        assert_eq!(e.message, "connect to h:1: weird");
        let e = classify(&io::Error::other("weird"), Stage::Request, "h:1");
        assert_eq!(e.class, ErrorClass::Other);
    }

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("example.com:443"), "example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
