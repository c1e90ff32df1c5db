//! Probes: one module per kind behind the [`Probe`] trait.
//!
//! A probe only says what it saw ([`Observation`]); the scheduler owns timing (it stamps
//! the start, measures latency and cuts the probe off at the invariant's timeout by
//! dropping its future). [`build`] turns a validated [`ProbeSpec`] into a ready probe and
//! does everything that can fail for configuration reasons up front (reading CA files,
//! parsing URLs, reading the system DNS configuration), so a run never starts with a probe
//! that could only ever fail. Whatever comes from the network afterwards is a failed
//! sample, never a panic.
//!
//! Probes share what a [`ProbeContext`] holds: the keep-alive connections of `http`
//! probes with `connection: reused` (see [`http`]), and for the Kubernetes
//! probes (`apiserver`, `resource`, `events`, in [`crate::kube`]) the API server clients
//! and the watches, so invariants on the same objects share one watch.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::InvariantSet;
use crate::config::spec::ProbeSpec;
use crate::kube::{ClientError, KubeArgs, KubeContext};
use crate::sample::Observation;

pub(crate) mod classify;
pub mod dns;
pub mod histogram_quantile;
pub mod http;
pub mod metrics;
pub mod prometheus_text;
pub mod tcp;
pub mod tls;

#[cfg(test)]
mod testutil;

/// The future a probe returns for one observation.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Observation> + Send + 'a>>;

/// Something that can observe a target once.
pub trait Probe: Send + Sync + 'static {
    /// Runs one observation. The caller applies the timeout (it drops the future) and
    /// stamps start time and latency; the probe only says what it saw.
    fn observe(&self) -> ProbeFuture<'_>;
}

/// Why a probe could not be built. Each message names what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The `caFile` could not be read.
    #[error(
        "cannot read CA file {}: {reason}; check the path and that the agent may read it",
        path.display()
    )]
    CaFileUnreadable {
        /// The configured file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The `caFile` is not a PEM bundle of usable certificates.
    #[error(
        "CA file {} is not a usable PEM bundle ({reason}); it must hold one or more \
         -----BEGIN CERTIFICATE----- blocks",
        path.display()
    )]
    CaFileInvalid {
        /// The configured file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// No `caFile` was given and the system trust store has no usable certificates.
    #[error(
        "no system CA certificates could be loaded ({reason}); install the CA certificates \
         package or set tls.caFile"
    )]
    SystemRoots {
        /// Why loading failed.
        reason: String,
    },
    /// A TLS server name (`tls.serverName` or the target's host) is not a DNS name or IP.
    #[error(
        "{name:?} is not a valid TLS server name; set tls.serverName to a DNS name or IP address"
    )]
    ServerName {
        /// The offending name.
        name: String,
    },
    /// The TLS configuration could not be assembled.
    #[error("cannot set up TLS: {reason}")]
    Tls {
        /// rustls' reason.
        reason: String,
    },
    /// The probe URL cannot be used.
    #[error("invalid URL {url:?}: {reason}; expected http://host[:port]/path or https://...")]
    Url {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TCP probe address is not `host:port`.
    #[error(
        "invalid address {address:?}: {reason}; expected host:port, e.g. 10.0.0.1:6443 or [::1]:53"
    )]
    Address {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A DNS probe without `server` needs the system resolver configuration.
    #[error(
        "cannot use the system DNS configuration {}: {reason}; set the probe's server to \
         the DNS server's ip:port",
        path.display()
    )]
    ResolvConf {
        /// The file read (normally /etc/resolv.conf).
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The DNS name to look up is not a valid name.
    #[error("{name:?} is not a valid DNS name: {reason}")]
    DnsName {
        /// The configured name.
        name: String,
        /// The parser's reason.
        reason: String,
    },
    /// The DNS resolver could not be set up.
    #[error("cannot set up the DNS resolver: {reason}")]
    Resolver {
        /// hickory's reason.
        reason: String,
    },
    /// A Kubernetes probe was built without Kubernetes access (a bug in the caller).
    #[error(
        "this probe needs Kubernetes access, which this command did not set up (a bug; \
         please report it)"
    )]
    NoKubernetes,
    /// A label matcher's regular expression cannot be anchored and compiled.
    #[error("label matcher regex {regex:?} for {label:?}: {reason}")]
    MatcherRegex {
        /// The label name.
        label: String,
        /// The configured expression.
        regex: String,
        /// The compiler's reason.
        reason: String,
    },
}

/// What probes of one run share.
#[derive(Clone, Debug, Default)]
pub struct ProbeContext {
    kube: Option<KubeContext>,
    keep_alive: http::KeepAliveClients,
}

impl ProbeContext {
    /// The context for `set`: Kubernetes clients from `kube` when some invariant needs
    /// them (an error when no credentials can be found), nothing otherwise.
    pub async fn new(set: &InvariantSet, kube: &KubeArgs) -> Result<Self, ClientError> {
        let needs_kubernetes = set.invariants.iter().any(|i| i.probe.needs_kubernetes());
        if !needs_kubernetes {
            return Ok(ProbeContext::default());
        }
        Ok(ProbeContext::with_kube(KubeContext::connect(kube).await?))
    }

    /// A context with the given Kubernetes access.
    pub fn with_kube(kube: KubeContext) -> Self {
        ProbeContext {
            kube: Some(kube),
            ..ProbeContext::default()
        }
    }

    /// The same Kubernetes access with keep-alive clients of its own, for the probes of a
    /// new revision of the invariant files: their TLS settings are read anew (a changed
    /// CA file takes effect) instead of reusing a client built from the old ones.
    pub fn for_new_revision(&self) -> Self {
        ProbeContext {
            kube: self.kube.clone(),
            ..ProbeContext::default()
        }
    }

    /// The Kubernetes access, when set up.
    pub fn kube(&self) -> Option<&KubeContext> {
        self.kube.as_ref()
    }
}

/// Builds the probe that `spec` describes, sharing what `context` holds.
pub fn build(spec: &ProbeSpec, context: &ProbeContext) -> Result<Arc<dyn Probe>, BuildError> {
    let kube = || context.kube.as_ref().ok_or(BuildError::NoKubernetes);
    Ok(match spec {
        ProbeSpec::Http(s) => Arc::new(http::HttpProbe::new(s, &context.keep_alive)?),
        ProbeSpec::Tcp(s) => Arc::new(tcp::TcpProbe::new(s)?),
        ProbeSpec::Dns(s) => Arc::new(dns::DnsProbe::new(s)?),
        ProbeSpec::Metrics(s) => Arc::new(metrics::MetricsProbe::new(s)?),
        ProbeSpec::Apiserver(s) => {
            Arc::new(crate::kube::apiserver::ApiserverProbe::new(s, kube()?)?)
        }
        ProbeSpec::Resource(s) => Arc::new(crate::kube::resource::ResourceProbe::new(s, kube()?)),
        ProbeSpec::Events(s) => Arc::new(crate::kube::events::EventsProbe::new(s, kube()?)),
    })
}
