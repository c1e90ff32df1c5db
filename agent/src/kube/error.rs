//! Turns Kubernetes client errors into a sample's [`ProbeError`]: the same stable classes
//! as every other probe (`connection_refused`, `timeout`, `tls`, `http_status`, ...)
//! plus `unauthorized` (401) and `forbidden` (403), whose messages say what to grant.

use std::sync::OnceLock;

use kube::core::Status;
use kube::runtime::watcher;

use crate::probe::classify::{Stage, classify};
use crate::sample::{ErrorClass, ProbeError};

/// Classifies an error of a request to the API server at `server` (`host:port`).
pub fn from_client_error(error: &kube::Error, server: &str) -> ProbeError {
    match error {
        kube::Error::Api(status) => from_status(status),
        kube::Error::Service(inner) => {
            let connect = inner
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some_and(|e| e.is_connect());
            let stage = if connect {
                Stage::Connect
            } else {
                Stage::Request
            };
            classify(inner.as_ref(), stage, server)
        }
        kube::Error::HyperError(e) => classify(e, Stage::Request, server),
        kube::Error::ReadEvents(e) => classify(e, Stage::Request, server),
        kube::Error::Auth(e) => ProbeError::new(
            ErrorClass::Credentials,
            format!("cannot get credentials for the API server: {e}"),
        ),
        kube::Error::SerdeError(e) => ProbeError::new(
            ErrorClass::InvalidResponse,
            format!("invalid response from the API server {server}: {e}"),
        ),
        kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(_)) => ProbeError::new(
            ErrorClass::Other,
            "the API server does not serve this kind (discovery does not list it)",
        ),
        other => ProbeError::new(ErrorClass::Other, other.to_string()),
    }
}

/// Classifies an error the watcher reported.
pub fn from_watcher_error(error: &watcher::Error, server: &str) -> ProbeError {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => from_client_error(e, server),
        watcher::Error::WatchError(status) => from_status(status),
        watcher::Error::NoResourceVersion => ProbeError::new(
            ErrorClass::InvalidResponse,
            "the API server sent no resourceVersion; this kind cannot be watched",
        ),
    }
}

/// Classifies an error status (`kind: Status`) from the API server.
pub fn from_status(status: &Status) -> ProbeError {
    match status.code {
        401 => ProbeError::new(
            ErrorClass::Unauthorized,
            format!(
                "the API server did not accept the agent's credentials (401 {}); check the \
                 kubeconfig's user or the pod's ServiceAccount token",
                non_empty(&status.message, "Unauthorized")
            ),
        ),
        403 => ProbeError::new(ErrorClass::Forbidden, forbidden_message(&status.message)),
        code => {
            let message = non_empty(&status.message, non_empty(&status.reason, "no message"));
            ProbeError::new(ErrorClass::HttpStatus, format!("status {code}: {message}"))
        }
    }
}

fn non_empty<'a>(text: &'a str, otherwise: &'a str) -> &'a str {
    if text.trim().is_empty() {
        otherwise
    } else {
        text
    }
}

/// What RBAC must grant, from the API server's forbidden message, e.g.
/// `needs verb "list" on resource "nodes" (group "") at the cluster scope — grant it in
/// the agent's ClusterRole (user "system:serviceaccount:ns:sa")`.
pub fn forbidden_message(server_message: &str) -> String {
    static RESOURCE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    static PATH: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let resource = RESOURCE.get_or_init(|| {
        regex::Regex::new(
            r#"User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(?: in the namespace "([^"]*)"| at the cluster scope)?"#,
        )
        .ok()
    });
    let path = PATH
        .get_or_init(|| regex::Regex::new(r#"User "([^"]*)" cannot (\S+) path "([^"]*)""#).ok());
    if let Some(c) = resource.as_ref().and_then(|r| r.captures(server_message)) {
        let scope = match c.get(5) {
            Some(ns) => format!(" in namespace \"{}\"", ns.as_str()),
            None => String::new(),
        };
        return format!(
            "needs verb \"{}\" on resource \"{}\" (group \"{}\"){scope} — grant it in the \
             agent's ClusterRole (user \"{}\")",
            &c[2], &c[3], &c[4], &c[1]
        );
    }
    if let Some(c) = path.as_ref().and_then(|r| r.captures(server_message)) {
        return format!(
            "needs verb \"{}\" on non-resource URL \"{}\" — grant it in the agent's \
             ClusterRole under nonResourceURLs (user \"{}\")",
            &c[2], &c[3], &c[1]
        );
    }
    format!(
        "{} — grant it in the agent's ClusterRole",
        non_empty(server_message, "the API server refused the request (403)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> Status {
        let mut s = Status::failure(message, "");
        s.code = code;
        s
    }

    #[test]
    fn forbidden_names_verb_resource_and_group() {
        let e = from_status(&status(
            403,
            r#"nodes is forbidden: User "system:serviceaccount:probe-ns:prober" cannot list resource "nodes" in API group "" at the cluster scope"#,
        ));
        assert_eq!(e.class, ErrorClass::Forbidden);
        assert_eq!(
            e.to_string(),
            "forbidden: needs verb \"list\" on resource \"nodes\" (group \"\") — grant it in the \
             agent's ClusterRole (user \"system:serviceaccount:probe-ns:prober\")"
        );
        let e = from_status(&status(
            403,
            r#"deployments.apps is forbidden: User "u" cannot watch resource "deployments" in API group "apps" in the namespace "kube-system""#,
        ));
        assert_eq!(
            e.message,
            "needs verb \"watch\" on resource \"deployments\" (group \"apps\") in namespace \
             \"kube-system\" — grant it in the agent's ClusterRole (user \"u\")"
        );
    }

    #[test]
    fn forbidden_paths_and_unknown_messages() {
        let e = from_status(&status(
            403,
            r#"forbidden: User "system:anonymous" cannot get path "/metrics""#,
        ));
        assert_eq!(
            e.message,
            "needs verb \"get\" on non-resource URL \"/metrics\" — grant it in the agent's \
             ClusterRole under nonResourceURLs (user \"system:anonymous\")"
        );
        let e = from_status(&status(403, "no"));
        assert_eq!(e.message, "no — grant it in the agent's ClusterRole");
    }

    #[test]
    fn unauthorized_and_other_statuses() {
        let e = from_status(&status(401, "Unauthorized"));
        assert_eq!(e.class, ErrorClass::Unauthorized);
        assert!(
            e.message.contains("did not accept the agent's credentials"),
            "{e}"
        );
        let e = from_status(&status(503, "etcd is down"));
        assert_eq!(e.class, ErrorClass::HttpStatus);
        assert_eq!(e.message, "status 503: etcd is down");
    }

    #[test]
    fn connection_errors_keep_their_class() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = from_client_error(&kube::Error::Service(Box::new(io)), "127.0.0.1:6443");
        assert_eq!(e.class, ErrorClass::ConnectionRefused);
        assert_eq!(e.message, "request to 127.0.0.1:6443: connection refused");
    }
}
