//! Validated runtime types for an invariant file.
//!
//! Everything here has passed validation (see [`super::load`]): names are unique DNS
//! labels, durations are positive, targets are in range. The rest of the agent never sees
//! a raw, unvalidated value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// All invariants from one or more files, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct InvariantSet {
    /// The invariants; names are unique across the whole set.
    pub invariants: Vec<Invariant>,
}

/// One named, owned, documented invariant.
#[derive(Clone, Debug, PartialEq)]
pub struct Invariant {
    /// Unique DNS label (RFC 1123), e.g. `apiserver-readyz`.
    pub name: String,
    /// What the invariant protects and why it matters.
    pub description: String,
    /// Who answers for it: a SIG or team, e.g. `sig-api-machinery`.
    pub owner: String,
    /// Where it runs: in every agent or in one agent per cluster.
    pub scope: Scope,
    /// Time between sample starts.
    pub interval: Duration,
    /// How long one sample may take before it counts as failed.
    pub timeout: Duration,
    /// Free-form labels copied into reports and metric attributes.
    pub labels: BTreeMap<String, String>,
    /// How to observe the target.
    pub probe: ProbeSpec,
    /// When the invariant holds.
    pub condition: Condition,
    /// Tests expected to disrupt this invariant: a violation interval that overlaps the
    /// run of a test whose full name matches one of these is reported as expected.
    pub expected_disruptions: Vec<TestPattern>,
    /// Where the invariant was declared (`file:line:column`), for messages.
    pub source: String,
}

impl Invariant {
    /// Whether `other` declares the same invariant: every field equal except where it is
    /// declared (`source`), which moves when lines above it change. A config reload keeps
    /// an invariant with the same spec running untouched and restarts any other.
    pub fn same_spec(&self, other: &Invariant) -> bool {
        // Destructured without `..`: a new field must be placed here or in `source: _`.
        let Invariant {
            name,
            description,
            owner,
            scope,
            interval,
            timeout,
            labels,
            probe,
            condition,
            expected_disruptions,
            source: _,
        } = self;
        *name == other.name
            && *description == other.description
            && *owner == other.owner
            && *scope == other.scope
            && *interval == other.interval
            && *timeout == other.timeout
            && *labels == other.labels
            && *probe == other.probe
            && *condition == other.condition
            && *expected_disruptions == other.expected_disruptions
    }
}

/// A regular expression searched for in a test's full name (unanchored, like
/// `ginkgo --focus`), e.g. `\[Disruptive\]` or `^\[sig-node\] .*reboot`.
#[derive(Clone, Debug)]
pub struct TestPattern(pub regex::Regex);

impl TestPattern {
    /// The pattern as written in the invariant file.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the pattern matches somewhere in `test_name`.
    pub fn matches(&self, test_name: &str) -> bool {
        self.0.is_match(test_name)
    }
}

impl PartialEq for TestPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Where an invariant runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In every agent (per node).
    Node,
    /// In exactly one agent per cluster.
    Cluster,
}

impl Scope {
    /// The name used in the invariant file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Node => "node",
            Scope::Cluster => "cluster",
        }
    }
}

/// Which scopes of invariants one agent runs (`run --scope`): the split that keeps the
/// API server's load from growing with the number of nodes. A DaemonSet runs `node` (one
/// agent per node, no Lease), a small Deployment with `--leader-elect` runs `cluster`
/// (one of its replicas samples), and a lone agent (a sidecar, a local run) runs `all`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeSelection {
    /// Every invariant, whatever its scope.
    #[default]
    All,
    /// Only `scope: node` invariants.
    Node,
    /// Only `scope: cluster` invariants.
    Cluster,
}

impl ScopeSelection {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeSelection::All => "all",
            ScopeSelection::Node => "node",
            ScopeSelection::Cluster => "cluster",
        }
    }

    /// Whether an invariant of `scope` runs under this selection.
    pub fn includes(self, scope: Scope) -> bool {
        match self {
            ScopeSelection::All => true,
            ScopeSelection::Node => scope == Scope::Node,
            ScopeSelection::Cluster => scope == Scope::Cluster,
        }
    }

    /// Keeps only the invariants of `set` this selection runs; returns how many it left
    /// out.
    pub fn apply(self, set: &mut InvariantSet) -> usize {
        let before = set.invariants.len();
        set.invariants.retain(|i| self.includes(i.scope));
        before - set.invariants.len()
    }
}

/// How to observe a target. One variant per probe kind.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeSpec {
    /// An HTTP(S) request.
    Http(HttpProbeSpec),
    /// A TCP connect, optionally followed by a TLS handshake.
    Tcp(TcpProbeSpec),
    /// A DNS lookup.
    Dns(DnsProbeSpec),
    /// A scrape of a Prometheus text endpoint, reduced to one value.
    Metrics(MetricsProbeSpec),
    /// A GET through the authenticated Kubernetes client.
    Apiserver(ApiserverProbeSpec),
    /// Objects of one kind, kept current by a watch, reduced to one value by a CEL
    /// expression and an aggregation.
    Resource(ResourceProbeSpec),
    /// Kubernetes Events, kept current by a watch: repeats and warnings during the run.
    Events(EventsProbeSpec),
}

impl ProbeSpec {
    /// The probe kind's name as written in the invariant file.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeSpec::Http(_) => "http",
            ProbeSpec::Tcp(_) => "tcp",
            ProbeSpec::Dns(_) => "dns",
            ProbeSpec::Metrics(_) => "metrics",
            ProbeSpec::Apiserver(_) => "apiserver",
            ProbeSpec::Resource(_) => "resource",
            ProbeSpec::Events(_) => "events",
        }
    }

    /// Whether the probe talks to the Kubernetes API through the agent's credentials.
    pub fn needs_kubernetes(&self) -> bool {
        matches!(
            self,
            ProbeSpec::Apiserver(_) | ProbeSpec::Resource(_) | ProbeSpec::Events(_)
        )
    }

    /// The target as a short human-readable string (URL, address or name).
    pub fn target(&self) -> String {
        match self {
            ProbeSpec::Http(h) => h.url.clone(),
            ProbeSpec::Tcp(t) => t.address.clone(),
            ProbeSpec::Dns(d) => d.name.clone(),
            ProbeSpec::Metrics(m) => format!(
                "{} {}",
                m.http.url,
                series_reading(&m.selector, m.aggregation, m.histogram_quantile.as_ref())
            ),
            ProbeSpec::Apiserver(a) => match &a.series {
                Some(series) => format!(
                    "{} {}",
                    a.path,
                    series_reading(series, a.aggregation, a.histogram_quantile.as_ref())
                ),
                None => a.path.clone(),
            },
            ProbeSpec::Resource(r) => format!(
                "{}: {}({})",
                r.watch_description(),
                r.aggregation.as_str(),
                r.expression.as_str()
            ),
            ProbeSpec::Events(e) => {
                let mut s = format!("{} events", e.measure.as_str());
                if let Some(ns) = &e.namespace {
                    s.push_str(&format!(" in {ns}"));
                }
                if !e.reasons.is_empty() {
                    s.push_str(&format!(", reasons {}", e.reasons.join(", ")));
                }
                if !e.exclude_reasons.is_empty() {
                    s.push_str(&format!(", excluding {}", e.exclude_reasons.join(", ")));
                }
                s
            }
        }
    }
}

/// Whether a probe reuses connections between samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionMode {
    /// A fresh connection (and TLS handshake) per sample: catches accept-path outages.
    New,
    /// Keep-alive connections reused across samples (shared by the probes of the same
    /// `host:port` and TLS settings, as one client would): catches in-flight request
    /// outages.
    Reused,
}

/// TLS settings shared by http, tcp and metrics probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TlsSpec {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification entirely (test clusters only).
    pub insecure_skip_verify: bool,
    /// Name to verify the certificate against, instead of the host in the target.
    pub server_name: Option<String>,
}

/// How to match a response body.
#[derive(Clone, Debug)]
pub enum BodyMatch {
    /// The body contains this text.
    Substring(String),
    /// The body matches this regular expression.
    Regex(regex::Regex),
}

impl PartialEq for BodyMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BodyMatch::Substring(a), BodyMatch::Substring(b)) => a == b,
            (BodyMatch::Regex(a), BodyMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// An HTTP(S) probe.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpProbeSpec {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Request method (`GET` by default).
    pub method: http::Method,
    /// Extra request headers, in file order.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// File holding a bearer token, re-read when it changes (token rotation).
    pub bearer_token_file: Option<PathBuf>,
    /// TLS settings for `https://` URLs.
    pub tls: TlsSpec,
    /// Status codes that count as success (default: 200-299).
    pub expected_status: Vec<StatusRange>,
    /// Optional body match.
    pub body_match: Option<BodyMatch>,
    /// JSON pointer (RFC 6901) to a number in a JSON body, used as the sample's value.
    pub value_pointer: Option<String>,
    /// New connection per sample, or reused.
    pub connection: ConnectionMode,
    /// Largest body read; a longer body fails the sample with `body_too_large`.
    pub max_body_bytes: usize,
    /// Which redirects are followed (none by default).
    pub follow_redirects: FollowRedirects,
}

/// Which HTTP redirects (3xx with a `Location`) an http or metrics probe follows.
///
/// None by default: the probe judges exactly the endpoint the invariant file names, and
/// reaches no host the file does not name unless the file says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FollowRedirects {
    /// A redirect is the reply judged (`status 302, expected 200-299`).
    #[default]
    None,
    /// Redirects to the URL's own scheme, host and port only.
    SameOrigin,
    /// Redirects to any http(s) URL; credentials are not sent to another origin.
    Any,
}

/// An inclusive range of HTTP status codes, e.g. `200-299` or `204`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest accepted code.
    pub low: u16,
    /// Highest accepted code.
    pub high: u16,
}

impl StatusRange {
    /// Whether `code` is within this range.
    pub fn contains(&self, code: u16) -> bool {
        self.low <= code && code <= self.high
    }
}

/// A TCP connect probe.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpProbeSpec {
    /// `host:port`.
    pub address: String,
    /// When set, a TLS handshake must also succeed.
    pub tls: Option<TlsSpec>,
}

/// A DNS lookup probe.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsProbeSpec {
    /// The name to resolve (A and AAAA).
    pub name: String,
    /// `ip:port` of the server to ask; the system resolver configuration when absent.
    pub server: Option<std::net::SocketAddr>,
    /// At least this many addresses must come back (default 1).
    pub min_answers: usize,
    /// When non-empty, every one of these addresses must be among the answers.
    pub expected_addresses: Vec<std::net::IpAddr>,
}

/// How to reduce the selected series of a scrape to one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// Sum of the selected series' values.
    Sum,
    /// Largest value.
    Max,
    /// Smallest value.
    Min,
    /// Number of selected series.
    Count,
}

impl Aggregation {
    /// The name used in the invariant file.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::Min => "min",
            Aggregation::Count => "count",
        }
    }
}

/// A quantile of a histogram over a rolling window (`histogramQuantile` of metrics and
/// apiserver probes): PromQL's
/// `histogram_quantile(quantile, sum by (le, <by>) (increase(<series>[<window>])))`,
/// one value per group, reduced to the sample's value by the probe's aggregation (`max`:
/// the worst group, or `min`).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramQuantileSpec {
    /// Quantile in (0, 1], e.g. 0.99.
    pub quantile: f64,
    /// Window the bucket increases are taken over.
    pub window: Duration,
    /// Labels to group the buckets by, besides `le`; one group when empty.
    pub by: Vec<String>,
}

/// How a probe reads its series, in PromQL: the selector alone, or
/// `max(histogram_quantile(0.99, sum by (le, verb) (increase(x_bucket{…}[5m]))))`.
fn series_reading(
    selector: &MetricSelector,
    aggregation: Aggregation,
    histogram: Option<&HistogramQuantileSpec>,
) -> String {
    let Some(h) = histogram else {
        return selector.to_string();
    };
    let window = humantime::format_duration(h.window)
        .to_string()
        .replace(' ', "");
    let by: Vec<&str> = std::iter::once("le")
        .chain(h.by.iter().map(String::as_str))
        .collect();
    let quantile = format!(
        "histogram_quantile({}, sum by ({}) (increase({selector}[{window}])))",
        h.quantile,
        by.join(", ")
    );
    if h.by.is_empty() {
        quantile
    } else {
        format!("{}({quantile})", aggregation.as_str())
    }
}

/// A label matcher, as in PromQL: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.
#[derive(Clone, Debug)]
pub enum LabelMatcher {
    /// Label equals the value (an absent label equals "").
    Equal(String, String),
    /// Label differs from the value.
    NotEqual(String, String),
    /// Label fully matches the regex.
    Regex(String, regex::Regex),
    /// Label does not fully match the regex.
    NotRegex(String, regex::Regex),
}

impl PartialEq for LabelMatcher {
    fn eq(&self, other: &Self) -> bool {
        use LabelMatcher::*;
        match (self, other) {
            (Equal(a, b), Equal(c, d)) | (NotEqual(a, b), NotEqual(c, d)) => a == c && b == d,
            (Regex(a, b), Regex(c, d)) | (NotRegex(a, b), NotRegex(c, d)) => {
                a == c && b.as_str() == d.as_str()
            }
            _ => false,
        }
    }
}

/// Which series of a scrape a metrics probe reads.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSelector {
    /// Metric (sample) name, e.g. `apiserver_request_total` or `foo_bucket`.
    pub metric: String,
    /// All matchers must hold.
    pub matchers: Vec<LabelMatcher>,
}

impl std::fmt::Display for MetricSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.metric)?;
        if !self.matchers.is_empty() {
            f.write_str("{")?;
            for (i, m) in self.matchers.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                match m {
                    LabelMatcher::Equal(n, v) => write!(f, "{n}={v:?}")?,
                    LabelMatcher::NotEqual(n, v) => write!(f, "{n}!={v:?}")?,
                    LabelMatcher::Regex(n, r) => write!(f, "{n}=~{:?}", as_written(r))?,
                    LabelMatcher::NotRegex(n, r) => write!(f, "{n}!~{:?}", as_written(r))?,
                }
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// A matcher regex as the user wrote it: matchers are stored fully anchored, as PromQL
/// matches them (`^(?:re)$`), but people should read back what they wrote.
fn as_written(r: &regex::Regex) -> &str {
    r.as_str()
        .strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(r.as_str())
}

/// A metrics scrape probe.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsProbeSpec {
    /// How to fetch the endpoint (URL, TLS, token, body cap); status must be 2xx.
    pub http: HttpProbeSpec,
    /// Which series to read.
    pub selector: MetricSelector,
    /// How to reduce them to one value (with `histogram_quantile`: the groups' quantiles).
    pub aggregation: Aggregation,
    /// When set, the series are a histogram's buckets and the value is a quantile over a
    /// window.
    pub histogram_quantile: Option<HistogramQuantileSpec>,
}

/// A GET of an API server path through the agent's Kubernetes client (its credentials,
/// CA and server come from the kubeconfig or the pod's ServiceAccount).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiserverProbeSpec {
    /// Path with an optional query, e.g. `/readyz` or
    /// `/api/v1/namespaces/default?resourceVersion=0`.
    pub path: String,
    /// New connection per sample, or reused.
    pub connection: ConnectionMode,
    /// Optional body match.
    pub body_match: Option<BodyMatch>,
    /// When set, the body is Prometheus text and these series are the sample's value.
    pub series: Option<MetricSelector>,
    /// How to reduce the selected series to one value (with `series` only).
    pub aggregation: Aggregation,
    /// When set (with `series` only), the series are a histogram's buckets and the value
    /// is a quantile over a window.
    pub histogram_quantile: Option<HistogramQuantileSpec>,
    /// Largest body read; a longer body fails the sample with `body_too_large`.
    pub max_body_bytes: usize,
}

/// Objects of one kind, watched, each evaluated by a CEL expression, aggregated.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceProbeSpec {
    /// `v1` or `group/version`, e.g. `apps/v1`.
    pub api_version: String,
    /// The kind, e.g. `Node`.
    pub kind: String,
    /// Only objects in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Label selector, as `kubectl get -l` takes it.
    pub label_selector: Option<String>,
    /// Field selector, as `kubectl get --field-selector` takes it.
    pub field_selector: Option<String>,
    /// Evaluated on each object (bound to `object`): a number, or a boolean as 1/0.
    pub expression: crate::kube::cel::CelExpression,
    /// How the objects' values become the sample's value.
    pub aggregation: ResourceAggregation,
}

/// How a `resource` probe reduces its objects' values to one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceAggregation {
    /// Sum of the current objects' values (0 for no objects).
    Sum,
    /// Largest value (absent for no objects).
    Max,
    /// Smallest value (absent for no objects).
    Min,
    /// Number of objects whose value is true or non-zero.
    Count,
    /// Sum over every object seen during the run, objects deleted (or replaced under the
    /// same name) since counting at their last value: a counter kept on objects, such as
    /// restart counts, that object deletions do not decrease.
    CumulativeSum,
}

impl ResourceAggregation {
    /// The name used in the invariant file.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceAggregation::Sum => "sum",
            ResourceAggregation::Max => "max",
            ResourceAggregation::Min => "min",
            ResourceAggregation::Count => "count",
            ResourceAggregation::CumulativeSum => "cumulativeSum",
        }
    }
}

impl ResourceProbeSpec {
    /// The watched objects, e.g. `v1 Pod in kube-system -l k8s-app=kube-dns`.
    pub fn watch_description(&self) -> String {
        let mut s = format!("{} {}", self.api_version, self.kind);
        if let Some(ns) = &self.namespace {
            s.push_str(&format!(" in {ns}"));
        }
        if let Some(l) = &self.label_selector {
            s.push_str(&format!(" -l {l}"));
        }
        if let Some(f) = &self.field_selector {
            s.push_str(&format!(" --field-selector {f}"));
        }
        s
    }
}

/// What an `events` probe reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsMeasure {
    /// The highest number of times any (reason, involved object) pair occurred in the run.
    MaxRepeats,
    /// How many times Warning events occurred in the run.
    Warnings,
}

impl EventsMeasure {
    /// The name used in the invariant file.
    pub fn as_str(self) -> &'static str {
        match self {
            EventsMeasure::MaxRepeats => "maxRepeats",
            EventsMeasure::Warnings => "warnings",
        }
    }
}

/// Kubernetes Events (core/v1) seen during the run.
#[derive(Clone, Debug, PartialEq)]
pub struct EventsProbeSpec {
    /// What the sample's value is.
    pub measure: EventsMeasure,
    /// Only events in this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Only events with one of these reasons count; every reason when empty.
    pub reasons: Vec<String>,
    /// Events with these reasons never count.
    pub exclude_reasons: Vec<String>,
}

/// When an invariant holds. Every condition is evaluated on timestamped samples.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// The share of successful samples over a rolling window stays at or above a target.
    Availability {
        /// Minimum share of good samples, in percent (0 < target <= 100).
        target_percent: f64,
        /// Rolling window the share is computed over.
        window: Duration,
    },
    /// A latency quantile over a rolling window stays at or below a maximum.
    Latency {
        /// Quantile in (0, 1], e.g. 0.99.
        quantile: f64,
        /// Largest allowed latency at that quantile.
        max: Duration,
        /// Rolling window the quantile is computed over.
        window: Duration,
    },
    /// The sampled value stays within bounds.
    Threshold {
        /// Smallest allowed value (inclusive).
        min: Option<f64>,
        /// Largest allowed value (inclusive).
        max: Option<f64>,
        /// How long the value must be out of bounds before it counts as violated.
        for_duration: Duration,
    },
    /// A counter grows by at most `max` over the run (or a rolling window).
    Increase {
        /// Largest allowed growth.
        max: f64,
        /// Rolling window; the whole run when `None`.
        window: Option<Duration>,
    },
}

impl Condition {
    /// The condition kind's name as written in the invariant file.
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::Availability { .. } => "availability",
            Condition::Latency { .. } => "latency",
            Condition::Threshold { .. } => "threshold",
            Condition::Increase { .. } => "increase",
        }
    }

    /// A one-line human description, e.g. `availability >= 99.9% over 5m`.
    pub fn describe(&self) -> String {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Condition::Availability {
                target_percent,
                window,
            } => {
                format!("availability >= {target_percent}% over {}", d(window))
            }
            Condition::Latency {
                quantile,
                max,
                window,
            } => {
                format!(
                    "p{} latency <= {} over {}",
                    quantile * 100.0,
                    d(max),
                    d(window)
                )
            }
            Condition::Threshold {
                min,
                max,
                for_duration,
            } => {
                let mut s = match (min, max) {
                    (Some(lo), Some(hi)) => format!("{lo} <= value <= {hi}"),
                    (Some(lo), None) => format!("value >= {lo}"),
                    (None, Some(hi)) => format!("value <= {hi}"),
                    (None, None) => "any value".to_string(),
                };
                if !for_duration.is_zero() {
                    s.push_str(&format!(" (violated after {})", d(for_duration)));
                }
                s
            }
            Condition::Increase { max, window } => match window {
                Some(w) => format!("increase <= {max} over {}", d(w)),
                None => format!("increase <= {max} over the run"),
            },
        }
    }
}

/// The `apiVersion` every invariant file declares.
pub const API_VERSION: &str = "invariant-agent/v1alpha1";

/// The `kind` every invariant file declares.
pub const KIND: &str = "InvariantSet";

/// Interval when neither the invariant nor the file's `defaults` sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Largest timeout when neither the invariant nor the file's `defaults` sets one; below
/// it the timeout defaults to the invariant's interval.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest allowed interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Longest allowed interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest allowed timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Most samples of one invariant that may be in flight at once: `timeout` may be at most
/// this many intervals.
pub const MAX_SAMPLES_IN_FLIGHT: u32 = 16;

/// Window of availability and latency conditions when the file does not set one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Quantile of latency conditions when the file does not set one.
pub const DEFAULT_QUANTILE: f64 = 0.99;

/// Body cap of http probes when the file does not set `maxBodyBytes` (1 MiB).
pub const DEFAULT_HTTP_MAX_BODY_BYTES: usize = 1 << 20;

/// Body cap of metrics probes when the file does not set `maxBodyBytes` (16 MiB).
pub const DEFAULT_METRICS_MAX_BODY_BYTES: usize = 16 << 20;

/// Largest `maxBodyBytes` a file may set (64 MiB).
pub const MAX_BODY_BYTES_LIMIT: usize = 64 << 20;

/// Label names the agent sets itself on reports and metrics; invariants may not use them.
pub const RESERVED_LABELS: [&str; 5] = ["invariant", "owner", "outcome", "state", "scope"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_selection_keeps_only_the_selected_scope_in_file_order() {
        let text = "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants:\n\
            - {name: a, description: d, owner: o, scope: node, probe: {tcp: {address: 'h:1'}}, condition: {availability: {target: 100, window: 1m}}}\n\
            - {name: b, description: d, owner: o, scope: cluster, probe: {tcp: {address: 'h:1'}}, condition: {availability: {target: 100, window: 1m}}}\n\
            - {name: c, description: d, owner: o, scope: node, probe: {tcp: {address: 'h:1'}}, condition: {availability: {target: 100, window: 1m}}}\n";
        let set = crate::config::parse_str("t.yaml", text).unwrap();
        let names = |selection: ScopeSelection| {
            let mut s = set.clone();
            let left_out = selection.apply(&mut s);
            let kept: Vec<String> = s.invariants.into_iter().map(|i| i.name).collect();
            (kept, left_out)
        };
        assert_eq!(
            names(ScopeSelection::All),
            (vec!["a".into(), "b".into(), "c".into()], 0)
        );
        assert_eq!(
            names(ScopeSelection::Node),
            (vec!["a".into(), "c".into()], 1)
        );
        assert_eq!(names(ScopeSelection::Cluster), (vec!["b".into()], 2));
    }
}
