//! Kubernetes access and the three probes built on it: `apiserver` (a GET through the
//! authenticated client), `resource` (objects kept current by a watch, reduced by a CEL
//! expression) and `events` (repeats and warnings among Events).
//!
//! One [`KubeContext`] per run holds the clients (created once, and only when some
//! invariant needs them) and the [`watch::WatchRegistry`], so every invariant on the same
//! objects shares one watch. The agent sees only what its credentials allow: a request
//! RBAC refuses is a failed sample of class `forbidden` saying what to grant, never a
//! crash, and an unreachable API server is failed samples while the agent keeps going.

pub mod apiserver;
pub mod cel;
pub mod client;
pub mod error;
pub mod events;
pub mod lease;
pub mod resource;
pub mod selector;
pub mod watch;

use std::sync::Arc;

pub use client::{ClientError, KubeArgs};

use crate::config::spec::ConnectionMode;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeContext")
            .field("server", &self.server)
            .field("watches", &self.watches)
            .finish_non_exhaustive()
    }
}

/// The clients and watches every Kubernetes probe of a run shares.
#[derive(Clone, Debug)]
pub struct KubeContext {
    inner: Arc<Inner>,
}

struct Inner {
    /// Keep-alive connections: watches and `connection: reused` GETs.
    pooled: kube::Client,
    /// No idle connections: `connection: new` GETs.
    fresh: kube::Client,
    /// `host:port` of the API server, the only part of its URL used in messages.
    server: String,
    watches: watch::WatchRegistry,
}

impl KubeContext {
    /// Loads the credentials `args` select and builds the clients. Nothing is sent to
    /// the API server yet.
    pub async fn connect(args: &KubeArgs) -> Result<Self, ClientError> {
        let (config, source) = client::load_config(args).await?;
        let context = Self::from_config(&config)?;
        match source {
            client::Source::Kubeconfig { path, context: ctx } => tracing::info!(
                server = %context.server(),
                kubeconfig = %path,
                context = ctx.as_deref().unwrap_or("(current)"),
                "Kubernetes probes use a kubeconfig"
            ),
            client::Source::InCluster => tracing::info!(
                server = %context.server(),
                "Kubernetes probes use the pod's ServiceAccount"
            ),
        }
        Ok(context)
    }

    /// Builds the clients for `config`.
    pub fn from_config(config: &kube::Config) -> Result<Self, ClientError> {
        let pooled = client::build_client(config, client::Pooling::Reused)?;
        let fresh = client::build_client(config, client::Pooling::New)?;
        let url = &config.cluster_url;
        let host = url.host().unwrap_or("");
        let port = url
            .port_u16()
            .unwrap_or(if url.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let server = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(KubeContext {
            inner: Arc::new(Inner {
                watches: watch::WatchRegistry::new(pooled.clone(), server.clone()),
                pooled,
                fresh,
                server,
            }),
        })
    }

    /// The client for `connection`.
    pub fn client(&self, connection: ConnectionMode) -> kube::Client {
        match connection {
            ConnectionMode::Reused => self.inner.pooled.clone(),
            ConnectionMode::New => self.inner.fresh.clone(),
        }
    }

    /// `host:port` of the API server.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The watches shared by this run's probes.
    pub fn watches(&self) -> &watch::WatchRegistry {
        &self.inner.watches
    }
}
