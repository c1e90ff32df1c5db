//! Finding Kubernetes credentials and building the clients every probe shares.
//!
//! Credentials come from exactly one place, chosen in this order: `--kubeconfig FILE`
//! (or `$KUBECONFIG`, which may list several files to merge), with `--context`; else the
//! pod's ServiceAccount when running in a pod (`KUBERNETES_SERVICE_HOST` is set); else
//! `~/.kube/config`. Nothing is sent to the API server at start: an API server that is
//! down when the agent starts gives failed samples, not a failed start.
//!
//! The clients are kube's, with a smaller middleware stack than `Client::try_from`: no
//! retries (a probe must see a 503, not a retried success), no per-request error logs (a
//! failing probe is recorded in the report, not logged every second), a 10 s connect
//! timeout and a 70 s read timeout (every request the agent makes answers or sends
//! data within 60 s, so a hung API server is noticed instead of waited on forever).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use tower::{BoxError, ServiceBuilder};

/// Where the agent finds Kubernetes credentials (only used when an invariant has an
/// `apiserver`, `resource` or `events` probe).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeArgs {
    /// kubeconfig file for Kubernetes probes (a list separated by ':' is merged, as
    /// kubectl does). Without it: the pod's ServiceAccount in a pod, else ~/.kube/config.
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    pub kubeconfig: Option<OsString>,
    /// kubeconfig context to use (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// Why the Kubernetes client could not be set up. Stops the run at start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No source of credentials exists at all.
    #[error(
        "no Kubernetes credentials: no --kubeconfig given, KUBECONFIG is not set, this is not \
         a pod (KUBERNETES_SERVICE_HOST is not set) and {default} does not exist; pass \
         --kubeconfig or run in a pod with a ServiceAccount"
    )]
    NoCredentials {
        /// The default kubeconfig path that was looked for.
        default: String,
    },
    /// The kubeconfig could not be read or used.
    #[error("cannot use kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The file (or files) given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Running in a pod, but the ServiceAccount credentials are not usable.
    #[error(
        "cannot use the pod's ServiceAccount credentials: {reason}; check that the pod \
         mounts a ServiceAccount token (automountServiceAccountToken), or pass --kubeconfig"
    )]
    InCluster {
        /// What is missing.
        reason: String,
    },
    /// The configuration was read but the client could not be built from it.
    #[error("cannot set up the Kubernetes client: {reason}")]
    Client {
        /// What failed.
        reason: String,
    },
}

/// Where the configuration came from, for the start-up log line.
#[derive(Clone, Debug)]
pub enum Source {
    /// A kubeconfig file (or list), with the context used.
    Kubeconfig {
        /// The file or files.
        path: String,
        /// The context, when one was given.
        context: Option<String>,
    },
    /// The pod's ServiceAccount.
    InCluster,
}

/// Loads the configuration `args` selects.
pub async fn load_config(args: &KubeArgs) -> Result<(kube::Config, Source), ClientError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let explicit = args.kubeconfig.as_ref().filter(|v| !v.is_empty());
    if let Some(value) = explicit {
        let paths: Vec<PathBuf> = std::env::split_paths(value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        let shown = value.to_string_lossy().into_owned();
        return from_files(&paths, &options, &shown).await.map(|config| {
            (
                config,
                Source::Kubeconfig {
                    path: shown.clone(),
                    context: args.context.clone(),
                },
            )
        });
    }
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    if in_pod && args.context.is_none() {
        return kube::Config::incluster()
            .map(|config| (config, Source::InCluster))
            .map_err(|e| ClientError::InCluster {
                reason: e.to_string(),
            });
    }
    let default = std::env::home_dir()
        .map(|h| h.join(".kube").join("config"))
        .unwrap_or_else(|| PathBuf::from("~/.kube/config"));
    let shown = default.display().to_string();
    if !default.is_file() {
        if args.context.is_some() {
            return Err(ClientError::Kubeconfig {
                path: shown,
                reason: "--context needs a kubeconfig, and the file does not exist".to_string(),
            });
        }
        return Err(ClientError::NoCredentials { default: shown });
    }
    from_files(&[default], &options, &shown)
        .await
        .map(|config| {
            (
                config,
                Source::Kubeconfig {
                    path: shown.clone(),
                    context: args.context.clone(),
                },
            )
        })
}

async fn from_files(
    paths: &[PathBuf],
    options: &KubeConfigOptions,
    shown: &str,
) -> Result<kube::Config, ClientError> {
    let problem = |reason: String| ClientError::Kubeconfig {
        path: shown.to_string(),
        reason,
    };
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        let one = Kubeconfig::read_from(path).map_err(|e| {
            let reason = kubeconfig_reason(&e);
            problem(if paths.len() > 1 {
                format!("{}: {reason}", path.display())
            } else {
                reason
            })
        })?;
        merged = Some(match merged {
            Some(m) => m.merge(one).map_err(|e| problem(kubeconfig_reason(&e)))?,
            None => one,
        });
    }
    let kubeconfig = merged.ok_or_else(|| problem("no file given".to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, options)
        .await
        .map_err(|e| problem(kubeconfig_reason(&e)))?;
    if config.proxy_url.is_some() {
        return Err(problem(
            "it sets proxy-url, which the agent does not support; reach the API server \
             directly"
                .to_string(),
        ));
    }
    Ok(config)
}

/// What is wrong with a kubeconfig, without quoting it: the YAML parser's message shows
/// the offending value and the lines around it, which may be a token or a key under the
/// wrong name, and a base64 error shows a character of the data (a private key's).
fn kubeconfig_reason(error: &KubeconfigError) -> String {
    use kube::config::LoadDataError;
    let data = |what: &str, e: &LoadDataError| match e {
        LoadDataError::DecodeBase64(_) => format!("failed to load {what}: it is not valid base64"),
        other => format!("failed to load {what}: {other}"),
    };
    match error {
        KubeconfigError::Parse(e) => {
            let at = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            format!(
                "not a valid kubeconfig: the YAML is malformed or does not match the kubeconfig \
                 format{at} (the text is not shown: it may hold a secret)"
            )
        }
        KubeconfigError::LoadCertificateAuthority(e) => data("certificate authority", e),
        KubeconfigError::LoadClientCertificate(e) => data("client certificate", e),
        KubeconfigError::LoadClientKey(e) => data("client key", e),
        other => other.to_string(),
    }
}

/// How a client treats connections between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Keep-alive connections, reused across requests (watches, reused-connection GETs).
    Reused,
    /// No idle connections kept: every request dials and handshakes anew.
    New,
}

/// Builds a kube client from `config`.
pub fn build_client(config: &kube::Config, pooling: Pooling) -> Result<kube::Client, ClientError> {
    // kube builds its rustls configuration from the process-wide crypto provider; make
    // it ring, the provider the rest of the agent uses, whatever else is compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config
        .rustls_https_connector_with_connector(http)
        .map_err(|e| failed(&e))?;
    let mut connector = TimeoutConnector::new(https);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_read_timeout(Some(READ_TIMEOUT));
    connector.set_write_timeout(Some(READ_TIMEOUT));
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder.pool_timer(TokioTimer::new());
    if pooling == Pooling::New {
        builder.pool_max_idle_per_host(0);
    }
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        builder.build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(|e| failed(&e))?)
        .layer(config.extra_headers_layer().map_err(|e| failed(&e))?)
        .map_err(BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// Why `build_client` failed, without the secrets kube's message may hold: getting the
/// first token runs the exec plugin, whose failure kube describes with its output (the
/// token), and the client key's base64 error shows one of its characters.
fn failed(error: &kube::Error) -> ClientError {
    let reason = match error {
        kube::Error::Auth(auth) => format!(
            "cannot get credentials: {}",
            super::error::auth_message(auth)
        ),
        kube::Error::InferKubeconfig(e) => kubeconfig_reason(e),
        other => other.to_string(),
    };
    ClientError::Client { reason }
}

/// Longest a TCP connect (and TLS handshake) to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the API server may stay silent on a connection with a request in flight.
/// Watches ask the server to end them after [`super::watch::WATCH_TIMEOUT_SECS`], lists
/// and GETs are cut by the API server itself after 60 s.
const READ_TIMEOUT: Duration = Duration::from_secs(70);

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-T0KEN-value";

    async fn error_for(kubeconfig: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, kubeconfig).unwrap();
        let args = KubeArgs {
            kubeconfig: Some(path.clone().into_os_string()),
            context: None,
        };
        let error = load_config(&args).await.unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        error
    }

    #[tokio::test]
    async fn kubeconfig_errors_locate_but_never_quote_values() {
        // A token where a mapping belongs: the parser's message would quote it.
        let misplaced = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:6443\nusers:\n- name: u\n  user: {SECRET}\n"
        );
        let error = error_for(&misplaced).await;
        assert!(!error.contains(SECRET), "{error}");
        assert!(error.contains("at line 9, column"), "{error}");
        // Broken YAML around the token.
        let broken = format!("users:\n- name: u\n  user:\n    token: \"{SECRET}\n   [\n");
        let error = error_for(&broken).await;
        assert!(!error.contains(SECRET), "{error}");
        assert!(error.contains("not a valid kubeconfig"), "{error}");
        // Key data that is not base64 would show one of its characters.
        let key = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\ncontexts:\n- name: x\n  \
             context: {{cluster: c, user: u}}\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:6443\nusers:\n- name: u\n  user:\n    client-key-data: \
             \"{SECRET}!\"\n    client-certificate-data: \"{SECRET}!\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, key).unwrap();
        let args = KubeArgs {
            kubeconfig: Some(path.into_os_string()),
            context: None,
        };
        let (config, _) = load_config(&args).await.unwrap();
        let error = build_client(&config, Pooling::Reused)
            .err()
            .expect("the client cannot be built")
            .to_string();
        assert!(
            !error.contains(SECRET) && !error.contains("symbol"),
            "{error}"
        );
        assert!(error.contains("not valid base64"), "{error}");
    }
}
