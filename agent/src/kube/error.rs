//! Turns Kubernetes client errors into a sample's [`ProbeError`]: the same stable classes
//! as every other probe (`connection_refused`, `timeout`, `tls`, `http_status`, ...)
//! plus `unauthorized` (401) and `forbidden` (403), whose messages say what to grant.

use std::sync::OnceLock;

use kube::client::AuthError;
use kube::core::Status;
use kube::runtime::watcher;

use crate::probe::classify::{Stage, classify};
use crate::sample::{ErrorClass, ProbeError};

/// Classifies an error of a request to the API server at `server` (`host:port`).
pub fn from_client_error(error: &kube::Error, server: &str) -> ProbeError {
    match error {
        kube::Error::Api(status) => from_status(status),
        kube::Error::Service(inner) => {
            // A token refresh (exec plugin, token file) fails inside the auth middleware.
            if let Some(auth) = inner.downcast_ref::<AuthError>() {
                return credentials_error(auth);
            }
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
        kube::Error::Auth(e) => credentials_error(e),
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

fn credentials_error(error: &AuthError) -> ProbeError {
    ProbeError::new(
        ErrorClass::Credentials,
        format!(
            "cannot get credentials for the API server: {}",
            auth_message(error)
        ),
    )
}

/// Longest part of an exec plugin's stderr shown in a message.
const STDERR_SHOWN: usize = 200;

/// What went wrong getting credentials, without the secrets kube's own message may hold:
/// a failed exec plugin is named by its executable, exit status and the start of its
/// stderr (kube prints its stdout, which carries the token, and the full command line,
/// whose arguments and environment may carry secrets), and unparsable plugin output is
/// located, not quoted. Samples, the report, Tail and the logs all show this text.
pub fn auth_message(error: &AuthError) -> String {
    match error {
        AuthError::AuthExecRun { cmd, out } => {
            let plugin = match program_of(cmd) {
                Some(program) => format!("the exec plugin {program:?}"),
                None => "the exec plugin".to_string(),
            };
            let mut message = format!("{plugin} failed ({})", out.status);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
            if !stderr.is_empty() {
                message.push_str(": ");
                match stderr.char_indices().nth(STDERR_SHOWN) {
                    Some((cut, _)) => {
                        message.push_str(&stderr[..cut]);
                        message.push('…');
                    }
                    None => message.push_str(&stderr),
                }
            }
            message
        }
        AuthError::AuthExecParse(e) => {
            let at = e
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            format!(
                "the exec plugin's output is not a valid ExecCredential{at} (the output is not \
                 shown: it may hold a token)"
            )
        }
        AuthError::ParseTokenKey(e) => format!(
            "the auth provider command's output is not JSON (line {}, column {}; the output \
             is not shown: it may hold a token)",
            e.line(),
            e.column()
        ),
        AuthError::MalformedTokenExpirationDate(_) => {
            "the credential's expiry time is not a valid RFC 3339 timestamp".to_string()
        }
        // Messages of their own, or a file path, or an io error: no values. Every variant
        // is listed so that a new one in a kube upgrade is reviewed here.
        AuthError::InvalidBasicAuth(_)
        | AuthError::InvalidBearerToken(_)
        | AuthError::UnrefreshableTokenResponse
        | AuthError::ExecPluginFailed
        | AuthError::AuthExecStart(_)
        | AuthError::AuthExecSerialize(_)
        | AuthError::AuthExec(_)
        | AuthError::ReadTokenFile(..)
        | AuthError::MissingCommand
        | AuthError::ExecMissingClusterInfo
        | AuthError::NoValidNativeRootCA(_) => error.to_string(),
    }
}

/// The executable of a command line as kube shows it: an exec plugin's is the `Debug`
/// form of a `std::process::Command` (`[cd "dir" && ][env -u K ][K="v" ]["prog"] "arg0"
/// "arg1"`), an auth provider's is `cmd-path cmd-args`.
fn program_of(cmd: &str) -> Option<String> {
    // Words split at spaces outside double quotes (with backslash escapes inside).
    let mut words = Vec::new();
    let (mut word, mut quoted, mut escaped) = (String::new(), false, false);
    for c in cmd.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ' ' && !quoted {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            continue;
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    if !cmd.contains('"') {
        return words.into_iter().next();
    }
    let unquote = |w: &str| -> Option<String> {
        let inner = w.strip_prefix('"')?.strip_suffix('"')?;
        Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
    };
    let mut words = words.iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "cd" => {
                words.next();
                words.next();
            }
            "-u" => {
                words.next();
            }
            "env" | "-i" => {}
            _ if w.starts_with('"') => return unquote(w),
            _ if w.starts_with('[') => return unquote(w.strip_prefix('[')?.strip_suffix(']')?),
            // K="v": the environment, which may hold secrets.
            _ => {}
        }
    }
    None
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

    const TOKEN: &str = "s3cr3t-T0KEN-value";

    /// A config whose exec plugin runs `sh -c script` with `PLUGIN_SECRET` in its
    /// environment.
    async fn exec_config(script: &str) -> kube::Config {
        let yaml = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "x",
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
            "users": [{"name": "u", "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": "sh", "args": ["-c", script],
                "env": [{"name": "PLUGIN_SECRET", "value": "env-secret-value"}],
                "interactiveMode": "Never"
            }}}]
        });
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml.to_string()).unwrap();
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap()
    }

    /// The error of the first token from `script`, as a start-up error and as a sample's
    /// (the same failure at a token refresh, inside the auth middleware).
    async fn exec_errors(script: &str) -> (String, ProbeError) {
        use kube::client::ConfigExt;
        let config = exec_config(script).await;
        let start = super::super::client::build_client(&config, super::super::client::Pooling::New)
            .err()
            .expect("the client cannot be built")
            .to_string();
        let Err(kube::Error::Auth(auth)) = config.auth_layer() else {
            panic!("the plugin should fail")
        };
        let sample = from_client_error(&kube::Error::Service(Box::new(auth)), "h:443");
        (start, sample)
    }

    #[tokio::test]
    async fn failed_exec_plugins_show_status_and_stderr_but_never_stdout() {
        let script = format!(
            "echo '{{\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{TOKEN}\"}}}}'; \
             echo 'login expired,   run aws sso login' >&2; exit 3"
        );
        let (start, sample) = exec_errors(&script).await;
        for text in [&start, &sample.to_string()] {
            assert!(!text.contains(TOKEN), "{text}");
            assert!(!text.contains("env-secret-value"), "{text}");
            assert!(!text.contains("echo"), "{text}");
        }
        assert_eq!(sample.class, ErrorClass::Credentials);
        assert_eq!(
            sample.message,
            "cannot get credentials for the API server: the exec plugin \"sh\" failed (exit \
             status: 3): login expired, run aws sso login"
        );
        assert!(
            start.ends_with(
                "the exec plugin \"sh\" failed (exit status: 3): login expired, run aws sso login"
            ),
            "{start}"
        );
        // A long stderr is cut.
        let (_, sample) = exec_errors("printf 'x%.0s' $(seq 1 500) >&2; exit 1").await;
        assert!(
            sample.message.ends_with(&format!("{}…", "x".repeat(200))),
            "{sample}"
        );
    }

    #[tokio::test]
    async fn unparsable_exec_output_is_located_not_quoted() {
        let (start, sample) = exec_errors(&format!("echo 'status: {TOKEN}'")).await;
        for text in [&start, &sample.to_string()] {
            assert!(!text.contains(TOKEN), "{text}");
            assert!(
                text.contains("not a valid ExecCredential at line 1"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_program_of_a_command_line() {
        let mut cmd = std::process::Command::new("/usr/local/bin/aws");
        cmd.args(["eks", "get-token", "--secret=x y"])
            .env("KUBERNETES_EXEC_INFO", "{\"spec\": \"a b\"}")
            .env_remove("HOME")
            .current_dir("/tmp/a dir");
        assert_eq!(
            program_of(&format!("{cmd:?}")).as_deref(),
            Some("/usr/local/bin/aws")
        );
        assert_eq!(
            program_of("gcloud config config-helper").as_deref(),
            Some("gcloud")
        );
        assert_eq!(program_of("K=\"v\""), None);
    }

    #[test]
    fn connection_errors_keep_their_class() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = from_client_error(&kube::Error::Service(Box::new(io)), "127.0.0.1:6443");
        assert_eq!(e.class, ErrorClass::ConnectionRefused);
        assert_eq!(e.message, "request to 127.0.0.1:6443: connection refused");
    }
}
