//! Export settings: command-line flags merged with the OpenTelemetry environment variables
//! users already know, resolved and checked once at start.
//!
//! Precedence, highest first: a flag; the metrics-specific variable
//! (`OTEL_EXPORTER_OTLP_METRICS_*`); the generic one (`OTEL_EXPORTER_OTLP_*`); the
//! agent's default. Every problem names the flag or variable it came from, and all of them
//! are reported at once. Header values are never logged (they often carry tokens).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ExportArgs;

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: collector endpoint for every signal.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: collector endpoint for metrics.
pub const ENV_METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value,...` sent with every export.
pub const ENV_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// `OTEL_EXPORTER_OTLP_METRICS_HEADERS`: headers for metric exports.
pub const ENV_METRICS_HEADERS: &str = "OTEL_EXPORTER_OTLP_METRICS_HEADERS";
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`: PEM file of the CA that signed the collector's cert.
pub const ENV_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE`: the same, for metrics.
pub const ENV_METRICS_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`: PEM client certificate (mutual TLS).
pub const ENV_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE`: the same, for metrics.
pub const ENV_METRICS_CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE";
/// `OTEL_EXPORTER_OTLP_CLIENT_KEY`: PEM private key of the client certificate.
pub const ENV_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";
/// `OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY`: the same, for metrics.
pub const ENV_METRICS_CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds one export may take, retries included.
pub const ENV_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`: the same, for metrics.
pub const ENV_METRICS_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT";
/// `OTEL_METRIC_EXPORT_INTERVAL`: milliseconds between exports.
pub const ENV_EXPORT_INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,...` resource attributes.
pub const ENV_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_SERVICE_NAME`: the `service.name` resource attribute.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: only `grpc` is supported.
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`: only `grpc` is supported.
pub const ENV_METRICS_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
/// `OTEL_SDK_DISABLED`: `true` turns OTLP export off.
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Time between exports unless configured. OpenTelemetry's default is 60 s; e2e runs are
/// short and a minute-resolution state gauge would hide most of them.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How long one export may take, retries included, unless configured.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// `service.name` unless configured.
pub const DEFAULT_SERVICE_NAME: &str = "invariant-agent";

/// Resource attribute carrying the run id (the same value as the report's `run.id`).
pub const RUN_ID_ATTRIBUTE: &str = "invariant.run.id";

/// Reads environment variables; a seam so resolution is tested without touching the
/// process environment.
pub trait Env {
    /// The variable's value; `None` when unset or empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name).filter(|v| !v.trim().is_empty())
    }
}

/// Everything export needs, resolved and checked.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// OTLP/gRPC push; `None` when no endpoint is configured (export off).
    pub otlp: Option<OtlpConfig>,
    /// Resource attributes of this agent's series, in a stable order, keys unique.
    pub resource: Vec<(String, String)>,
    /// Resource attributes of the cluster-scoped series under leader election: `resource`
    /// without the attributes that name one agent ([`PER_AGENT_ATTRIBUTES`]), so whichever
    /// agent leads exports them under the same resource.
    pub cluster_resource: Vec<(String, String)>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None` when off.
    pub metrics_listen: Option<SocketAddr>,
}

/// OTLP/gRPC exporter settings.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// Collector endpoint with scheme, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// Where the endpoint came from (flag or variable name), for messages.
    pub endpoint_source: &'static str,
    /// gRPC metadata sent with every export (values may be secrets: never log them).
    pub headers: Vec<(String, String)>,
    /// TLS material, read at start.
    pub tls: TlsFiles,
    /// Limit on one export, retries included.
    pub timeout: Duration,
    /// Time between exports.
    pub interval: Duration,
}

/// PEM material for TLS to the collector (an `https` endpoint).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA certificate(s) to verify the collector with; system roots when `None`.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Export settings that cannot work, every one named.
#[derive(Debug, thiserror::Error)]
#[error("invalid export settings:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

/// What the run already knows about itself, shared with the report so both say the same.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunIdentity<'a> {
    /// The run id (`invariant.run.id`; the report's `run.id`).
    pub run_id: &'a str,
    /// The cluster under test (`k8s.cluster.name`; the report's `--cluster`).
    pub cluster: Option<&'a str>,
}

impl ExportConfig {
    /// Resolves `args` against the environment `env` (flags win), with the run's id and
    /// cluster as resource attributes.
    pub fn resolve(
        args: &ExportArgs,
        env: &dyn Env,
        run: &RunIdentity<'_>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let otlp = resolve_otlp(args, env, &mut errors);
        let resource = resolve_resource(args, env, run, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(ExportConfig {
            otlp,
            cluster_resource: cluster_resource(&resource),
            resource,
            metrics_listen: args.metrics_listen,
        })
    }
}

/// The first of: the flag, then each variable in order; with where it came from.
fn pick<T: Clone>(
    flag: Option<&T>,
    flag_name: &'static str,
    env: &dyn Env,
    vars: &[&'static str],
    parse: impl Fn(String) -> T,
) -> Option<(T, &'static str)> {
    if let Some(v) = flag {
        return Some((v.clone(), flag_name));
    }
    vars.iter()
        .find_map(|name| env.var(name).map(|v| (parse(v), *name)))
}

fn resolve_otlp(args: &ExportArgs, env: &dyn Env, errors: &mut Vec<String>) -> Option<OtlpConfig> {
    if args.otlp_endpoint.is_none()
        && env
            .var(ENV_SDK_DISABLED)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return None;
    }
    let (endpoint, endpoint_source) = pick(
        args.otlp_endpoint.as_ref(),
        "--otlp-endpoint",
        env,
        &[ENV_METRICS_ENDPOINT, ENV_ENDPOINT],
        |v| v,
    )?;
    let endpoint = endpoint.trim().to_string();
    if let Err(problem) = check_endpoint(&endpoint) {
        errors.push(format!("{endpoint_source}: {problem}"));
    }
    if let Some((protocol, var)) = [ENV_METRICS_PROTOCOL, ENV_PROTOCOL]
        .iter()
        .find_map(|var| env.var(var).map(|v| (v, *var)))
        && protocol.trim() != "grpc"
    {
        errors.push(format!(
            "{var}: {protocol:?} is not supported; the agent exports OTLP over gRPC (\"grpc\", usually port 4317)"
        ));
    }

    let mut headers = Vec::new();
    // The variables are merged (metrics-specific entries win), then flags on top.
    for var in [ENV_HEADERS, ENV_METRICS_HEADERS] {
        if let Some(text) = env.var(var) {
            match parse_key_values(&text) {
                Ok(pairs) => merge(&mut headers, pairs),
                Err(problem) => errors.push(format!("{var}: {problem}")),
            }
        }
    }
    for flag in &args.otlp_headers {
        match parse_key_value(flag) {
            Ok(pair) => merge(&mut headers, vec![pair]),
            Err(problem) => errors.push(format!("--otlp-header {flag:?}: {problem}")),
        }
    }
    for (key, value) in &headers {
        if let Err(problem) = check_header(key, value) {
            errors.push(format!("OTLP header {key:?}: {problem}"));
        }
    }

    let file = |flag: Option<&PathBuf>, flag_name, vars: &[&'static str]| {
        pick(flag, flag_name, env, vars, PathBuf::from)
    };
    let read = |found: Option<(PathBuf, &'static str)>, errors: &mut Vec<String>| {
        let (path, source) = found?;
        match read_pem(&path) {
            Ok(bytes) => Some(bytes),
            Err(problem) => {
                errors.push(format!("{source}: {}: {problem}", path.display()));
                None
            }
        }
    };
    let ca_file = file(
        args.otlp_certificate.as_ref(),
        "--otlp-certificate",
        &[ENV_METRICS_CERTIFICATE, ENV_CERTIFICATE],
    );
    let cert_file = file(
        args.otlp_client_certificate.as_ref(),
        "--otlp-client-certificate",
        &[ENV_METRICS_CLIENT_CERTIFICATE, ENV_CLIENT_CERTIFICATE],
    );
    let key_file = file(
        args.otlp_client_key.as_ref(),
        "--otlp-client-key",
        &[ENV_METRICS_CLIENT_KEY, ENV_CLIENT_KEY],
    );
    let tls_configured = ca_file.is_some() || cert_file.is_some() || key_file.is_some();
    let ca = read(ca_file, errors);
    let identity = match (cert_file, key_file) {
        (None, None) => None,
        (Some((_, source)), None) => {
            errors.push(format!(
                "{source} is set but no client key is (--otlp-client-key or {ENV_CLIENT_KEY})"
            ));
            None
        }
        (None, Some((_, source))) => {
            errors.push(format!(
                "{source} is set but no client certificate is (--otlp-client-certificate or {ENV_CLIENT_CERTIFICATE})"
            ));
            None
        }
        (Some(cert), Some(key)) => match (read(Some(cert), errors), read(Some(key), errors)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        },
    };
    let tls = TlsFiles { ca, identity };
    if tls_configured && !endpoint.starts_with("https://") {
        errors.push(format!(
            "{endpoint_source}: TLS files are configured but the endpoint {endpoint:?} is not https://"
        ));
    }

    let millis =
        |v: String, var: &'static str, errors: &mut Vec<String>| match v.trim().parse::<u64>() {
            Ok(0) | Err(_) => {
                errors.push(format!(
                    "{var}: {v:?} is not a positive whole number of milliseconds"
                ));
                None
            }
            Ok(ms) => Some(Duration::from_millis(ms)),
        };
    let timeout = match args.otlp_timeout {
        Some(t) => t,
        None => [ENV_METRICS_TIMEOUT, ENV_TIMEOUT]
            .iter()
            .find_map(|var| env.var(var).map(|v| (v, *var)))
            .and_then(|(v, var)| millis(v, var, errors))
            .unwrap_or(DEFAULT_EXPORT_TIMEOUT),
    };
    let interval = match args.export_interval {
        Some(t) => t,
        None => env
            .var(ENV_EXPORT_INTERVAL)
            .and_then(|v| millis(v, ENV_EXPORT_INTERVAL, errors))
            .unwrap_or(DEFAULT_EXPORT_INTERVAL),
    };

    Some(OtlpConfig {
        endpoint,
        endpoint_source,
        headers,
        tls,
        timeout,
        interval,
    })
}

/// An endpoint must say how to connect: `http://host:port` (plain) or `https://host:port`.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        format!("{endpoint:?} is not a URL ({e}); write e.g. http://otel-collector:4317")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{endpoint:?} has no http:// or https:// scheme; write e.g. http://otel-collector:4317"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{endpoint:?} has no host"));
    }
    Ok(())
}

fn check_header(key: &str, value: &str) -> Result<(), String> {
    tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes()).map_err(
        |_| "not a valid gRPC metadata key (lowercase letters, digits, '-', '_', '.')".to_string(),
    )?;
    if key.ends_with("-bin") {
        return Err("binary (-bin) metadata is not supported".to_string());
    }
    tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value)
        .map_err(|_| "the value has characters not allowed in a header".to_string())?;
    Ok(())
}

/// Replaces or appends each pair, keeping first-seen order.
fn merge(into: &mut Vec<(String, String)>, pairs: Vec<(String, String)>) {
    for (k, v) in pairs {
        match into.iter_mut().find(|(key, _)| *key == k) {
            Some(existing) => existing.1 = v,
            None => into.push((k, v)),
        }
    }
}

/// Parses the W3C-baggage-like list the OpenTelemetry variables use:
/// `key1=value1,key2=value2`, values percent-decoded, blanks around items ignored.
pub fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        merge(&mut out, vec![parse_key_value(item)?]);
    }
    Ok(out)
}

/// One `key=value` item; the value is percent-decoded.
pub fn parse_key_value(item: &str) -> Result<(String, String), String> {
    let Some((key, value)) = item.split_once('=') else {
        return Err(format!("{:?} is not key=value", item.trim()));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{:?} has an empty key", item.trim()));
    }
    let value = percent_decode(value.trim())
        .ok_or_else(|| format!("the value of {key:?} has a bad %-escape"))?;
    Ok((key.to_string(), value))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err("not a PEM file (no -----BEGIN line)".to_string());
    }
    Ok(bytes)
}

/// Resource attributes, highest precedence first: the dedicated flags (or their
/// environment variables: `--service-name`/`OTEL_SERVICE_NAME`, `--node-name`/`NODE_NAME`,
/// the report's `--cluster`/`CLUSTER_NAME`, ...), then `--resource-attribute`, then `OTEL_RESOURCE_ATTRIBUTES`, then defaults.
/// `invariant.run.id` is always the run's id, so metrics join with the report.
fn resolve_resource(
    args: &ExportArgs,
    env: &dyn Env,
    run: &RunIdentity<'_>,
    errors: &mut Vec<String>,
) -> Vec<(String, String)> {
    let run_id = run.run_id;
    let mut attrs: Vec<(String, String)> = vec![
        ("service.name".into(), DEFAULT_SERVICE_NAME.into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
    ];
    if let Some(text) = env.var(ENV_RESOURCE_ATTRIBUTES) {
        match parse_key_values(&text) {
            Ok(pairs) => merge(&mut attrs, pairs),
            Err(problem) => errors.push(format!("{ENV_RESOURCE_ATTRIBUTES}: {problem}")),
        }
    }
    for flag in &args.resource_attributes {
        match parse_key_value(flag) {
            Ok(pair) => merge(&mut attrs, vec![pair]),
            Err(problem) => errors.push(format!("--resource-attribute {flag:?}: {problem}")),
        }
    }
    let service_name = args
        .service_name
        .clone()
        .or_else(|| env.var(ENV_SERVICE_NAME));
    let dedicated = [
        ("service.name", service_name),
        ("k8s.cluster.name", run.cluster.map(str::to_string)),
        ("k8s.node.name", args.node_name.clone()),
        ("k8s.namespace.name", args.pod_namespace.clone()),
        ("k8s.pod.name", args.pod_name.clone()),
    ];
    for (key, value) in dedicated {
        if let Some(v) = value
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
        {
            merge(&mut attrs, vec![(key.to_string(), v)]);
        }
    }
    // Unique per agent, so series from the agents of a DaemonSet stay apart where a
    // backend keys on it (the collector's Prometheus exporters make it `instance`).
    if !attrs.iter().any(|(k, _)| k == INSTANCE_ID_ATTRIBUTE) {
        let instance = args
            .pod_name
            .clone()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| env.var(HOSTNAME_VAR))
            .or_else(host_name)
            .unwrap_or_else(|| run_id.to_string());
        merge(
            &mut attrs,
            vec![(
                INSTANCE_ID_ATTRIBUTE.to_string(),
                instance.trim().to_string(),
            )],
        );
    }
    merge(
        &mut attrs,
        vec![(RUN_ID_ATTRIBUTE.to_string(), run_id.to_string())],
    );
    attrs
}

/// `service.instance.id`: the pod name, else the host name, unless configured.
pub const INSTANCE_ID_ATTRIBUTE: &str = "service.instance.id";

/// Resource attributes that tell one agent (one pod, node, host or process) from another
/// (OpenTelemetry semantic conventions). The cluster-scoped series leave them out: they
/// describe the cluster, whichever agent leads, and a backend keys a series on its whole
/// resource, so keeping them would start a new series at every failover.
pub const PER_AGENT_ATTRIBUTES: [&str; 11] = [
    INSTANCE_ID_ATTRIBUTE,
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.pod.ip",
    "k8s.node.name",
    "k8s.node.uid",
    "host.name",
    "host.id",
    "host.ip",
    "process.pid",
    "container.id",
];

/// The resource of the cluster-scoped series: `agent` without [`PER_AGENT_ATTRIBUTES`].
/// Everything else stays (`service.name`, `k8s.cluster.name`, `k8s.namespace.name`,
/// `invariant.run.id`, configured attributes), so the two resources differ exactly by
/// which agent produced the data.
pub fn cluster_resource(agent: &[(String, String)]) -> Vec<(String, String)> {
    agent
        .iter()
        .filter(|(key, _)| !PER_AGENT_ATTRIBUTES.contains(&key.as_str()))
        .cloned()
        .collect()
}

/// Consulted for `service.instance.id` before the kernel's host name (a seam for tests).
const HOSTNAME_VAR: &str = "HOSTNAME";

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn resolve(args: &ExportArgs, pairs: &[(&str, &str)]) -> Result<ExportConfig, ConfigErrors> {
        resolve_in(args, pairs, None)
    }

    fn resolve_in(
        args: &ExportArgs,
        pairs: &[(&str, &str)],
        cluster: Option<&str>,
    ) -> Result<ExportConfig, ConfigErrors> {
        let run = RunIdentity {
            run_id: "run-1",
            cluster,
        };
        ExportConfig::resolve(args, &env(pairs), &run)
    }

    fn get<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn no_endpoint_means_otlp_off() {
        let c = resolve(&ExportArgs::default(), &[]).unwrap();
        assert!(c.otlp.is_none());
        assert!(c.metrics_listen.is_none());
    }

    #[test]
    fn endpoint_precedence_flag_then_metrics_var_then_generic_var() {
        let generic = [(ENV_ENDPOINT, "http://generic:4317")];
        let both = [
            (ENV_ENDPOINT, "http://generic:4317"),
            (ENV_METRICS_ENDPOINT, "http://metrics:4317"),
        ];
        let otlp =
            |args: &ExportArgs, pairs: &[(&str, &str)]| resolve(args, pairs).unwrap().otlp.unwrap();
        assert_eq!(
            otlp(&ExportArgs::default(), &generic).endpoint,
            "http://generic:4317"
        );
        let o = otlp(&ExportArgs::default(), &both);
        assert_eq!(
            (o.endpoint.as_str(), o.endpoint_source),
            ("http://metrics:4317", ENV_METRICS_ENDPOINT)
        );
        let args = ExportArgs {
            otlp_endpoint: Some("http://flag:4317".into()),
            ..Default::default()
        };
        let o = otlp(&args, &both);
        assert_eq!(
            (o.endpoint.as_str(), o.endpoint_source),
            ("http://flag:4317", "--otlp-endpoint")
        );
        assert_eq!(o.interval, DEFAULT_EXPORT_INTERVAL);
        assert_eq!(o.timeout, DEFAULT_EXPORT_TIMEOUT);
    }

    #[test]
    fn headers_merge_env_then_flags_and_values_are_percent_decoded() {
        let args = ExportArgs {
            otlp_headers: vec!["x-tenant=flag".into()],
            ..Default::default()
        };
        let o = resolve(
            &args,
            &[
                (ENV_ENDPOINT, "http://c:4317"),
                (
                    ENV_HEADERS,
                    "authorization=Bearer%20abc, x-tenant=generic,x-other=1",
                ),
                (ENV_METRICS_HEADERS, "x-other=2"),
            ],
        )
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(
            o.headers,
            vec![
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-tenant".to_string(), "flag".to_string()),
                ("x-other".to_string(), "2".to_string()),
            ]
        );
    }

    #[test]
    fn interval_and_timeout_from_env_in_milliseconds_flags_win() {
        let pairs = [
            (ENV_ENDPOINT, "http://c:4317"),
            (ENV_EXPORT_INTERVAL, "2500"),
            (ENV_TIMEOUT, "700"),
            (ENV_METRICS_TIMEOUT, "800"),
        ];
        let o = resolve(&ExportArgs::default(), &pairs)
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(o.interval, Duration::from_millis(2500));
        assert_eq!(o.timeout, Duration::from_millis(800));
        let args = ExportArgs {
            export_interval: Some(Duration::from_secs(1)),
            otlp_timeout: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        let o = resolve(&args, &pairs).unwrap().otlp.unwrap();
        assert_eq!(
            (o.interval, o.timeout),
            (Duration::from_secs(1), Duration::from_secs(3))
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_source() {
        let args = ExportArgs {
            otlp_headers: vec!["novalue".into()],
            otlp_client_certificate: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        };
        let err = resolve(
            &args,
            &[
                (ENV_ENDPOINT, "collector:4317"),
                (ENV_EXPORT_INTERVAL, "10s"),
                (ENV_RESOURCE_ATTRIBUTES, "a=%zz"),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "OTEL_EXPORTER_OTLP_ENDPOINT: \"collector:4317\" has no http:// or https:// scheme",
            "--otlp-header \"novalue\": \"novalue\" is not key=value",
            "--otlp-client-certificate is set but no client key is",
            "OTEL_METRIC_EXPORT_INTERVAL: \"10s\" is not a positive whole number of milliseconds",
            "OTEL_RESOURCE_ATTRIBUTES: the value of \"a\" has a bad %-escape",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn unreadable_or_non_pem_tls_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let args = ExportArgs {
            otlp_certificate: Some(not_pem),
            ..Default::default()
        };
        let err = resolve(&args, &[(ENV_ENDPOINT, "http://c:4317")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--otlp-certificate"), "{err}");
        assert!(err.contains("not a PEM file"), "{err}");
        assert!(err.contains("is not https://"), "{err}");
    }

    #[test]
    fn resource_precedence_dedicated_flags_then_flag_attributes_then_env_then_defaults() {
        let args = ExportArgs {
            resource_attributes: vec!["deployment.environment=ci".into(), "team=flag".into()],
            node_name: Some("node-a".into()),
            ..Default::default()
        };
        let c = resolve_in(
            &args,
            &[
                (
                    ENV_RESOURCE_ATTRIBUTES,
                    "team=env,k8s.node.name=from-env,service.name=from-attrs,invariant.run.id=spoof",
                ),
                (ENV_SERVICE_NAME, "svc"),
            ],
            Some("kind"),
        )
        .unwrap();
        let r = &c.resource;
        assert_eq!(get(r, "service.name"), Some("svc"));
        assert_eq!(get(r, "service.version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get(r, "team"), Some("flag"));
        assert_eq!(get(r, "deployment.environment"), Some("ci"));
        assert_eq!(get(r, "k8s.node.name"), Some("node-a"));
        assert_eq!(get(r, "k8s.cluster.name"), Some("kind"));
        assert_eq!(get(r, "k8s.pod.name"), None);
        assert_eq!(get(r, RUN_ID_ATTRIBUTE), Some("run-1"));
        assert!(get(r, INSTANCE_ID_ATTRIBUTE).is_some_and(|v| !v.is_empty()));
        let keys: Vec<&str> = r.iter().map(|(k, _)| k.as_str()).collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "duplicate keys in {keys:?}");
    }

    #[test]
    fn service_name_defaults_and_env_attribute_is_used_without_dedicated_setting() {
        let c = resolve(&ExportArgs::default(), &[]).unwrap();
        assert_eq!(get(&c.resource, "service.name"), Some(DEFAULT_SERVICE_NAME));
        let c = resolve(
            &ExportArgs::default(),
            &[(ENV_RESOURCE_ATTRIBUTES, "service.name=x")],
        )
        .unwrap();
        assert_eq!(get(&c.resource, "service.name"), Some("x"));
    }

    #[test]
    fn instance_id_is_the_pod_then_the_host_unless_configured() {
        let pod = ExportArgs {
            pod_name: Some("agent-x7".into()),
            ..Default::default()
        };
        let c = resolve(&pod, &[("HOSTNAME", "host-1")]).unwrap();
        assert_eq!(get(&c.resource, INSTANCE_ID_ATTRIBUTE), Some("agent-x7"));
        let c = resolve(&ExportArgs::default(), &[("HOSTNAME", "host-1")]).unwrap();
        assert_eq!(get(&c.resource, INSTANCE_ID_ATTRIBUTE), Some("host-1"));
        let c = resolve(
            &pod,
            &[(ENV_RESOURCE_ATTRIBUTES, "service.instance.id=mine")],
        )
        .unwrap();
        assert_eq!(get(&c.resource, INSTANCE_ID_ATTRIBUTE), Some("mine"));
    }

    /// The cluster resource is the agent's without what names the agent: two agents of one
    /// deployment (different pod, node and host) get the same cluster resource.
    #[test]
    fn the_cluster_resource_drops_exactly_the_per_agent_attributes() {
        let agent = |pod: &str, node: &str| {
            let args = ExportArgs {
                pod_name: Some(pod.into()),
                node_name: Some(node.into()),
                pod_namespace: Some("invariant-agent".into()),
                resource_attributes: vec![
                    "deployment.environment=ci".into(),
                    format!("host.name={node}"),
                    format!("k8s.pod.uid={pod}-uid"),
                ],
                ..Default::default()
            };
            resolve_in(&args, &[("HOSTNAME", pod)], Some("kind")).unwrap()
        };
        let (a, b) = (agent("agent-a", "node-a"), agent("agent-b", "node-b"));
        assert_ne!(a.resource, b.resource);
        assert_eq!(a.cluster_resource, b.cluster_resource);
        let keys: Vec<&str> = a.cluster_resource.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "service.name",
                "service.version",
                "deployment.environment",
                "k8s.cluster.name",
                "k8s.namespace.name",
                RUN_ID_ATTRIBUTE,
            ]
        );
        assert_eq!(get(&a.cluster_resource, RUN_ID_ATTRIBUTE), Some("run-1"));
        // Everything dropped is per agent; everything kept is in the agent's resource.
        for (key, value) in &a.resource {
            let kept = get(&a.cluster_resource, key);
            assert_eq!(
                kept.is_none(),
                PER_AGENT_ATTRIBUTES.contains(&key.as_str()),
                "{key}"
            );
            assert!(kept.is_none_or(|v| v == value), "{key}");
        }
    }

    #[test]
    fn only_the_grpc_protocol_and_sdk_disabled_turns_export_off() {
        let endpoint = (ENV_ENDPOINT, "http://c:4318");
        let err = resolve(
            &ExportArgs::default(),
            &[endpoint, (ENV_PROTOCOL, "http/protobuf")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL: \"http/protobuf\" is not supported"),
            "{err}"
        );
        let ok = resolve(
            &ExportArgs::default(),
            &[
                endpoint,
                (ENV_METRICS_PROTOCOL, "grpc"),
                (ENV_PROTOCOL, "http/json"),
            ],
        );
        assert!(
            ok.unwrap().otlp.is_some(),
            "the metrics-specific variable wins"
        );
        let off = resolve(
            &ExportArgs::default(),
            &[endpoint, (ENV_SDK_DISABLED, "true")],
        )
        .unwrap();
        assert!(off.otlp.is_none());
    }

    #[test]
    fn header_keys_and_values_are_checked() {
        let args = ExportArgs {
            otlp_headers: vec!["Bad Key=1".into(), "x-ok=line\nbreak".into()],
            ..Default::default()
        };
        let err = resolve(&args, &[(ENV_ENDPOINT, "http://c:4317")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTLP header \"Bad Key\""), "{err}");
        assert!(err.contains("OTLP header \"x-ok\""), "{err}");
    }
}
