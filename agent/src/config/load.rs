//! Loading invariant files: YAML text to validated [`InvariantSet`]s.
//!
//! Each file is parsed into a position-carrying tree (see `yaml.rs`) and then walked
//! field by field. The walk never stops early: every unknown field, wrong type, missing
//! field and out-of-range value becomes its own [`ConfigError`] at the position of the
//! offending key or value, so one run of `invariant-agent validate` names every problem.
//! Only a file that is not YAML at all yields a single error.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Location;

use super::duration::{bare_number_message, format_duration, parse_duration};
use super::error::{ConfigError, ConfigErrors};
use super::selector::{is_label_name, parse_selector, regex_error_message};
use super::spec::*;
use super::yaml::{Node, Value, parse_document};
use crate::kube::cel::CelExpression;
use crate::kube::selector::{check_field_selector, check_label_selector};

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "defaults", "invariants"];
const DEFAULTS_FIELDS: &[&str] = &["scope", "interval", "timeout", "labels"];
const INVARIANT_FIELDS: &[&str] = &[
    "name",
    "description",
    "owner",
    "scope",
    "interval",
    "timeout",
    "labels",
    "probe",
    "condition",
    "expectedDisruptions",
];
const PROBE_KINDS: &[&str] = &[
    "http",
    "tcp",
    "dns",
    "metrics",
    "apiserver",
    "resource",
    "events",
];
const HTTP_FIELDS: &[&str] = &[
    "url",
    "method",
    "headers",
    "bearerTokenFile",
    "tls",
    "expectedStatus",
    "body",
    "valuePointer",
    "connection",
    "maxBodyBytes",
    "followRedirects",
];
const METRICS_FIELDS: &[&str] = &[
    "url",
    "series",
    "aggregation",
    "histogramQuantile",
    "headers",
    "bearerTokenFile",
    "tls",
    "connection",
    "maxBodyBytes",
    "followRedirects",
];
/// http fields that metrics probes refuse with a specific reason instead of "unknown".
const METRICS_REFUSED: &[&str] = &["method", "expectedStatus", "body", "valuePointer"];
const APISERVER_FIELDS: &[&str] = &[
    "path",
    "connection",
    "body",
    "series",
    "aggregation",
    "histogramQuantile",
    "maxBodyBytes",
];
const RESOURCE_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "namespace",
    "labelSelector",
    "fieldSelector",
    "expression",
    "aggregation",
];
const EVENTS_FIELDS: &[&str] = &["measure", "namespace", "reasons", "excludeReasons"];
const TCP_FIELDS: &[&str] = &["address", "tls"];
const DNS_FIELDS: &[&str] = &["name", "server", "minAnswers", "expectedAddresses"];
const TLS_FIELDS: &[&str] = &["caFile", "insecureSkipVerify", "serverName"];
const BODY_FIELDS: &[&str] = &["contains", "regex"];
const CONDITION_KINDS: &[&str] = &["availability", "latency", "threshold", "increase"];
const AVAILABILITY_FIELDS: &[&str] = &["target", "window"];
const LATENCY_FIELDS: &[&str] = &["quantile", "max", "window"];
const HISTOGRAM_QUANTILE_FIELDS: &[&str] = &["quantile", "window", "by"];
const THRESHOLD_FIELDS: &[&str] = &["min", "max", "for"];
const INCREASE_FIELDS: &[&str] = &["max", "window"];
const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Reads, parses and validates every file; invariant names must be unique across all.
///
/// Every problem in every file is reported, sorted by file, line and column. A file that
/// cannot be read is one error naming the file and the operating system's reason.
pub fn load_files(paths: &[PathBuf]) -> Result<InvariantSet, ConfigErrors> {
    FileContents::read(paths).load()
}

/// The bytes of invariant files as read at one moment, so what is hashed is exactly what
/// is loaded (a file replaced between the two could otherwise be judged by one version
/// and applied as another).
#[derive(Debug)]
pub struct FileContents {
    files: Vec<(PathBuf, std::io::Result<Vec<u8>>)>,
}

impl FileContents {
    /// Reads every file (following symlinks, so a Kubernetes ConfigMap volume's `..data`
    /// swap is seen); a file that cannot be read keeps its error for [`Self::load`].
    pub fn read(paths: &[PathBuf]) -> Self {
        FileContents {
            files: paths
                .iter()
                .map(|p| (p.clone(), std::fs::read(p)))
                .collect(),
        }
    }

    /// SHA-256 of the files' bytes, concatenated in order, in lowercase hex: for one file
    /// the same as `sha256sum FILE`. `None` when a file could not be read.
    pub fn hash(&self) -> Option<String> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for (_, bytes) in &self.files {
            digest.update(bytes.as_ref().ok()?);
        }
        Some(
            digest
                .finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Parses and validates the files as [`load_files`] does.
    pub fn load(&self) -> Result<InvariantSet, ConfigErrors> {
        let mut loader = Loader::default();
        if self.files.is_empty() {
            loader.errors.push(ConfigError {
                file: String::new(),
                line: 0,
                column: 0,
                path: String::new(),
                message: "no invariant files given".to_string(),
            });
        }
        for (path, read) in &self.files {
            let file = path.display().to_string();
            match read {
                Ok(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => loader.add_file(&file, text),
                    Err(e) => {
                        // Everything before the first bad byte is valid UTF-8 by definition.
                        let prefix = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
                        let line = prefix.matches('\n').count() as u64 + 1;
                        let column =
                            prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
                        loader.errors.push(ConfigError {
                            file,
                            line,
                            column,
                            path: String::new(),
                            message: "the file is not UTF-8 text".to_string(),
                        });
                    }
                },
                Err(e) => loader.errors.push(ConfigError {
                    file,
                    line: 0,
                    column: 0,
                    path: String::new(),
                    message: format!("cannot read the file: {e}"),
                }),
            }
        }
        loader.finish()
    }
}

/// Parses and validates one file's text; `file_name` is used in messages and sources.
pub fn parse_str(file_name: &str, text: &str) -> Result<InvariantSet, ConfigErrors> {
    let mut loader = Loader::default();
    loader.add_file(file_name, text);
    loader.finish()
}

/// State shared across the files of one load.
#[derive(Default)]
struct Loader {
    invariants: Vec<Invariant>,
    errors: Vec<ConfigError>,
    /// Every valid invariant name seen so far, with where its invariant was defined.
    names: HashMap<String, String>,
}

impl Loader {
    fn add_file(&mut self, file: &str, text: &str) {
        match parse_document(text) {
            Ok(root) => {
                let mut checker = Checker {
                    file,
                    errors: &mut self.errors,
                    names: &mut self.names,
                };
                let invariants = checker.file(&root);
                self.invariants.extend(invariants);
            }
            Err(e) => self.errors.push(ConfigError {
                file: file.to_string(),
                line: e.line,
                column: e.column,
                path: String::new(),
                message: e.message,
            }),
        }
    }

    fn finish(self) -> Result<InvariantSet, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(InvariantSet {
                invariants: self.invariants,
            })
        } else {
            Err(ConfigErrors::sorted(self.errors))
        }
    }
}

/// A mapping node whose keys were checked to be unique strings.
struct Map<'n> {
    /// Where the mapping starts: missing required fields are reported here.
    at: Location,
    /// Field path of the mapping itself (empty for the document root).
    path: String,
    /// `(key, key node, value node)` in file order; later duplicates are dropped.
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

impl<'n> Map<'n> {
    fn entry(&self, key: &str) -> Option<(&'n Node, &'n Node)> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|&(_, k, v)| (k, v))
    }

    /// The value of `key`; a null value (`key:` with nothing after it) counts as absent.
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entry(key)
            .map(|(_, v)| v)
            .filter(|v| !matches!(v.value, Value::Null))
    }

    fn key_node(&self, key: &str) -> Option<&'n Node> {
        self.entry(key).map(|(k, _)| k)
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A string for a message: quoted and escaped, and cut short if very long.
fn quote(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{:?}…", head)
    } else {
        format!("{s:?}")
    }
}

fn one_of(names: &[&str]) -> String {
    names.join(", ")
}

/// `expected X, found Y` with the found value shown when it is a scalar.
fn type_error(expected: &str, node: &Node) -> String {
    let found = match &node.value {
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Int(i) => format!("the number {i}"),
        Value::Float(f) => format!("the number {f}"),
        Value::String(s) => format!("the string {}", quote(s)),
        other => other.kind().to_string(),
    };
    let hint = match (&node.value, expected) {
        (Value::Bool(_) | Value::Int(_) | Value::Float(_), "a string") => {
            "; put it in quotes to use it as text"
        }
        _ => "",
    };
    format!("expected {expected}, found {found}{hint}")
}

/// Settings from the file's `defaults` section (or the built-in ones).
struct Defaults {
    scope: Scope,
    /// `None` when the file's default is invalid (already reported).
    interval: Option<Duration>,
    /// `None` when the file's default is invalid (already reported).
    timeout: Option<Duration>,
    /// Whether the file's `defaults` set `timeout`. When nothing sets it, an invariant's
    /// timeout is its interval, at most [`DEFAULT_TIMEOUT`]: one sample in flight at a
    /// time, and no error for short intervals.
    timeout_given: bool,
    labels: BTreeMap<String, String>,
    /// Whether `labels` is trustworthy (false when the default labels had errors).
    labels_ok: bool,
}

/// Walks one file's tree, collecting errors.
struct Checker<'a> {
    file: &'a str,
    errors: &'a mut Vec<ConfigError>,
    names: &'a mut HashMap<String, String>,
}

impl Checker<'_> {
    fn error(&mut self, at: &Location, path: &str, message: impl Into<String>) {
        let (line, column) = if at.line() == 0 {
            // Positions are unknown only for values serde could not track; the start of
            // the file is better than no position at all.
            (1, 1)
        } else {
            (at.line(), at.column())
        };
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn source(&self, at: &Location) -> String {
        format!("{}:{}:{}", self.file, at.line(), at.column())
    }

    // ----- generic readers -------------------------------------------------------------

    /// Checks `node` is a mapping with unique string keys.
    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<Map<'n>> {
        let Value::Map(raw) = &node.value else {
            self.error(&node.referenced, path, type_error("a mapping", node));
            return None;
        };
        let mut entries: Vec<(&'n str, &'n Node, &'n Node)> = Vec::new();
        for (key, value) in raw {
            let Value::String(name) = &key.value else {
                self.error(&key.referenced, path, type_error("a string key", key));
                continue;
            };
            if let Some((_, first, _)) = entries.iter().find(|(k, _, _)| k == name) {
                let message = format!(
                    "duplicate key; first given at line {}, column {}",
                    first.referenced.line(),
                    first.referenced.column()
                );
                self.error(&key.referenced, &join(path, name), message);
                continue;
            }
            entries.push((name, key, value));
        }
        Some(Map {
            at: node.referenced,
            path: path.to_string(),
            entries,
        })
    }

    /// Reports every key of `map` not in `known` (nor in `skip`, handled by the caller).
    fn deny_unknown(&mut self, map: &Map<'_>, known: &[&str], skip: &[&str]) {
        for &(key, key_node, _) in &map.entries {
            if !known.contains(&key) && !skip.contains(&key) {
                let message = format!("unknown field; expected one of {}", one_of(known));
                self.error(&key_node.referenced, &map.path(key), message);
            }
        }
    }

    /// A field that must be present and not empty.
    fn required<'n>(&mut self, map: &Map<'n>, key: &str) -> Option<&'n Node> {
        match map.entry(key) {
            None => {
                self.error(&map.at, &map.path(key), "required field is missing");
                None
            }
            Some((key_node, value)) if matches!(value.value, Value::Null) => {
                self.error(
                    &key_node.referenced,
                    &map.path(key),
                    "required field has no value",
                );
                None
            }
            Some((_, value)) => Some(value),
        }
    }

    fn string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        match &node.value {
            Value::String(s) => Some(s),
            _ => {
                self.error(&node.referenced, path, type_error("a string", node));
                None
            }
        }
    }

    fn non_empty_string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(&node.referenced, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.error(&node.referenced, path, type_error("true or false", node));
                None
            }
        }
    }

    fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match node.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) if f.is_finite() => Some(f),
            Value::Float(_) => {
                self.error(&node.referenced, path, "must be a finite number");
                None
            }
            _ => {
                self.error(&node.referenced, path, type_error("a number", node));
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, path: &str) -> Option<i64> {
        match node.value {
            Value::Int(i) => Some(i),
            // `1e6` is a float in YAML but a fine whole number.
            Value::Float(f)
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 =>
            {
                Some(f as i64)
            }
            _ => {
                self.error(&node.referenced, path, type_error("a whole number", node));
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let parsed = match &node.value {
            Value::String(s) => parse_duration(s),
            Value::Int(i) => Err(bare_number_message(&i.to_string())),
            Value::Float(f) if f.is_finite() => Err(bare_number_message(&f.to_string())),
            _ => Err(type_error("a duration such as 5s, 500ms or 1m30s", node)),
        };
        parsed
            .map_err(|message| self.error(&node.referenced, path, message))
            .ok()
    }

    fn choice<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, path)?;
        let found = options.iter().find(|(name, _)| *name == s).map(|&(_, v)| v);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            let message = format!(
                "unknown value {}; expected one of {}",
                quote(s),
                one_of(&names)
            );
            self.error(&node.referenced, path, message);
        }
        found
    }

    fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.error(&node.referenced, path, type_error("a list", node));
                None
            }
        }
    }

    // ----- the document ------------------------------------------------------------------

    fn file(&mut self, root: &Node) -> Vec<Invariant> {
        let mut invariants = Vec::new();
        match root.value {
            Value::Null => {
                let message = format!(
                    "the file is empty; an invariant file has apiVersion: {API_VERSION}, \
                     kind: {KIND} and a list of invariants"
                );
                self.error(&root.referenced, "", message);
                return invariants;
            }
            Value::Map(_) => {}
            _ => {
                let message = format!(
                    "{}; an invariant file is a mapping with apiVersion, kind and invariants",
                    type_error("a mapping", root)
                );
                self.error(&root.referenced, "", message);
                return invariants;
            }
        }
        let Some(top) = self.map(root, "") else {
            return invariants;
        };
        self.deny_unknown(&top, TOP_FIELDS, &[]);
        for (key, expected) in [("apiVersion", API_VERSION), ("kind", KIND)] {
            let Some(node) = self.required(&top, key) else {
                continue;
            };
            let path = top.path(key);
            let Some(value) = self.string(node, &path) else {
                continue;
            };
            if value != expected {
                let message = format!("unsupported {key} {}; expected {expected}", quote(value));
                self.error(&node.referenced, &path, message);
            }
        }
        let defaults = self.defaults(top.get("defaults"));
        let Some(list_node) = self.required(&top, "invariants") else {
            return invariants;
        };
        let Some(items) = self.list(list_node, "invariants") else {
            return invariants;
        };
        if items.is_empty() {
            self.error(
                &list_node.referenced,
                "invariants",
                "must list at least one invariant",
            );
        }
        for (i, item) in items.iter().enumerate() {
            if let Some(invariant) = self.invariant(item, &format!("invariants[{i}]"), &defaults) {
                invariants.push(invariant);
            }
        }
        invariants
    }

    fn defaults(&mut self, node: Option<&Node>) -> Defaults {
        let mut defaults = Defaults {
            scope: Scope::Node,
            interval: Some(DEFAULT_INTERVAL),
            timeout: Some(DEFAULT_TIMEOUT),
            timeout_given: false,
            labels: BTreeMap::new(),
            labels_ok: true,
        };
        let Some(node) = node else { return defaults };
        let Some(map) = self.map(node, "defaults") else {
            return defaults;
        };
        self.deny_unknown(&map, DEFAULTS_FIELDS, &[]);
        if let Some(n) = map.get("scope") {
            // An invalid default scope is reported; invariants fall back to `node` so
            // their own checks still run.
            defaults.scope = self.scope(n, &map.path("scope")).unwrap_or(Scope::Node);
        }
        if let Some(n) = map.get("interval") {
            defaults.interval = self.interval(n, &map.path("interval"));
        }
        if let Some(n) = map.get("timeout") {
            defaults.timeout = self.timeout(n, &map.path("timeout"));
            defaults.timeout_given = true;
            self.samples_in_flight(&map, defaults.interval, defaults.timeout);
        }
        if let Some(n) = map.get("labels") {
            match self.labels(n, &map.path("labels")) {
                Some(labels) => defaults.labels = labels,
                None => defaults.labels_ok = false,
            }
        }
        defaults
    }

    /// Checks `timeout <= 16 × interval` when `map` sets either; the error goes to the
    /// timeout if `map` sets it, otherwise to the interval.
    fn samples_in_flight(
        &mut self,
        map: &Map<'_>,
        interval: Option<Duration>,
        timeout: Option<Duration>,
    ) {
        let (Some(interval), Some(timeout)) = (interval, timeout) else {
            return;
        };
        let limit = interval.saturating_mul(MAX_SAMPLES_IN_FLIGHT);
        if timeout <= limit {
            return;
        }
        let Some(key) = ["timeout", "interval"]
            .into_iter()
            .find(|k| map.get(k).is_some())
        else {
            return;
        };
        let Some(node) = map.get(key) else { return };
        let message = format!(
            "timeout {} is more than {MAX_SAMPLES_IN_FLIGHT} × interval {} ({}); at most \
             {MAX_SAMPLES_IN_FLIGHT} samples of one invariant may be in flight, so raise the \
             interval or lower the timeout",
            format_duration(timeout),
            format_duration(interval),
            format_duration(limit),
        );
        self.error(&node.referenced, &map.path(key), message);
    }

    fn scope(&mut self, node: &Node, path: &str) -> Option<Scope> {
        self.choice(
            node,
            path,
            &[("node", Scope::Node), ("cluster", Scope::Cluster)],
        )
    }

    fn interval(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if d < MIN_INTERVAL || d > MAX_INTERVAL {
            let message = format!(
                "must be between {} and {}, found {}",
                format_duration(MIN_INTERVAL),
                format_duration(MAX_INTERVAL),
                format_duration(d)
            );
            self.error(&node.referenced, path, message);
            return None;
        }
        Some(d)
    }

    fn timeout(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let d = self.duration(node, path)?;
        if d.is_zero() || d > MAX_TIMEOUT {
            let message = format!(
                "must be greater than 0 and at most {}, found {}",
                format_duration(MAX_TIMEOUT),
                format_duration(d)
            );
            self.error(&node.referenced, path, message);
            return None;
        }
        Some(d)
    }

    fn labels(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let map = self.map(node, path)?;
        let mut ok = true;
        let mut labels = BTreeMap::new();
        for &(key, key_node, value) in &map.entries {
            let label_path = map.path(key);
            if let Err(message) = check_label_name(key) {
                self.error(&key_node.referenced, &label_path, message);
                ok = false;
            }
            match self.string(value, &label_path) {
                Some(v) => {
                    labels.insert(key.to_string(), v.to_string());
                }
                None => ok = false,
            }
        }
        ok.then_some(labels)
    }

    // ----- one invariant -----------------------------------------------------------------

    fn invariant(&mut self, node: &Node, path: &str, defaults: &Defaults) -> Option<Invariant> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, INVARIANT_FIELDS, &[]);
        let source = self.source(&map.at);

        let name = self
            .required(&map, "name")
            .and_then(|n| self.name(n, &map.path("name"), &source));
        let description = self
            .required(&map, "description")
            .and_then(|n| self.non_empty_string(n, &map.path("description")));
        let owner = self
            .required(&map, "owner")
            .and_then(|n| self.non_empty_string(n, &map.path("owner")));
        let scope = match map.get("scope") {
            Some(n) => self.scope(n, &map.path("scope")),
            None => Some(defaults.scope),
        };
        let interval = match map.get("interval") {
            Some(n) => self.interval(n, &map.path("interval")),
            None => defaults.interval,
        };
        let timeout = match map.get("timeout") {
            Some(n) => self.timeout(n, &map.path("timeout")),
            None if defaults.timeout_given => defaults.timeout,
            None => interval.map(|i| i.min(DEFAULT_TIMEOUT)),
        };
        if map.get("interval").is_some() || map.get("timeout").is_some() {
            self.samples_in_flight(&map, interval, timeout);
        }
        let labels = match map.get("labels") {
            Some(n) => self.labels(n, &map.path("labels")).map(|own| {
                let mut labels = defaults.labels.clone();
                labels.extend(own);
                labels
            }),
            None => Some(defaults.labels.clone()),
        }
        .filter(|_| defaults.labels_ok);
        let probe = self
            .required(&map, "probe")
            .and_then(|n| self.probe(n, &map.path("probe"), interval));
        let condition = self
            .required(&map, "condition")
            .and_then(|n| self.condition(n, &map.path("condition"), interval));
        let expected_disruptions = match map.get("expectedDisruptions") {
            Some(n) => self.test_patterns(n, &map.path("expectedDisruptions")),
            None => Some(Vec::new()),
        };

        Some(Invariant {
            name: name?,
            description: description?.to_string(),
            owner: owner?.to_string(),
            scope: scope?,
            interval: interval?,
            timeout: timeout?,
            labels: labels?,
            probe: probe?,
            condition: condition?,
            expected_disruptions: expected_disruptions?,
            source,
        })
    }

    /// A list of regular expressions matched against full test names.
    fn test_patterns(&mut self, node: &Node, path: &str) -> Option<Vec<TestPattern>> {
        let items = self.list(node, path)?;
        let mut ok = true;
        let mut patterns = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(text) = self.non_empty_string(item, &item_path) else {
                ok = false;
                continue;
            };
            match regex::Regex::new(text) {
                Ok(re) => patterns.push(TestPattern(re)),
                Err(e) => {
                    let message = format!(
                        "invalid regex: {}; patterns are regular expressions searched in the \
                         full test name, so escape brackets: '\\[Disruptive\\]'",
                        regex_error_message(&e)
                    );
                    self.error(&item.referenced, &item_path, message);
                    ok = false;
                }
            }
        }
        ok.then_some(patterns)
    }

    /// Checks the name is a DNS label and unique across all files loaded so far.
    fn name(&mut self, node: &Node, path: &str, source: &str) -> Option<String> {
        let name = self.string(node, path)?;
        if !is_dns_label(name) {
            let message = format!(
                "{} is not a DNS label (lowercase letters, digits and '-', at most 63, \
                 starting and ending with a letter or digit)",
                quote(name)
            );
            self.error(&node.referenced, path, message);
            return None;
        }
        if let Some(first) = self.names.get(name) {
            let message = format!("duplicate name {}, first defined at {first}", quote(name));
            self.error(&node.referenced, path, message);
            return None;
        }
        self.names.insert(name.to_string(), source.to_string());
        Some(name.to_string())
    }

    // ----- probes ------------------------------------------------------------------------

    /// The probe; `interval` is the invariant's, for windows a probe keeps itself.
    fn probe(&mut self, node: &Node, path: &str, interval: Option<Duration>) -> Option<ProbeSpec> {
        let map = self.map(node, path)?;
        let kinds = self.one_kind(&map, PROBE_KINDS, "probe");
        let mut result = None;
        for &(kind, _, value) in &kinds.entries {
            let kind_path = map.path(kind);
            let spec = match kind {
                "http" => self.http_probe(value, &kind_path).map(ProbeSpec::Http),
                "tcp" => self.tcp_probe(value, &kind_path).map(ProbeSpec::Tcp),
                "dns" => self.dns_probe(value, &kind_path).map(ProbeSpec::Dns),
                "metrics" => self
                    .metrics_probe(value, &kind_path, interval)
                    .map(ProbeSpec::Metrics),
                "apiserver" => self
                    .apiserver_probe(value, &kind_path, interval)
                    .map(ProbeSpec::Apiserver),
                "resource" => self
                    .resource_probe(value, &kind_path)
                    .map(ProbeSpec::Resource),
                _ => self.events_probe(value, &kind_path).map(ProbeSpec::Events),
            };
            result = spec;
        }
        if kinds.exactly_one { result } else { None }
    }

    /// Checks that `map` holds exactly one of `kinds` and nothing else; returns the known
    /// kinds present (all of them, so each is still validated when there are several).
    fn one_kind<'n>(&mut self, map: &Map<'n>, kinds: &[&str], what: &str) -> Kinds<'n> {
        let mut present = Vec::new();
        let mut unknown = false;
        for &(key, key_node, value) in &map.entries {
            if kinds.contains(&key) {
                if let Some(&(first, _, _)) = present.first() {
                    let message = format!(
                        "more than one {what} kind ({first}, {key}); give exactly one of {}",
                        one_of(kinds)
                    );
                    self.error(&key_node.referenced, &map.path, message);
                }
                present.push((key, key_node, value));
            } else {
                unknown = true;
                let message = format!(
                    "unknown {what} kind {}; expected one of {}",
                    quote(key),
                    one_of(kinds)
                );
                self.error(&key_node.referenced, &map.path, message);
            }
        }
        if present.is_empty() && !unknown {
            let message = format!("no {what} kind given; expected one of {}", one_of(kinds));
            self.error(&map.at, &map.path, message);
        }
        Kinds {
            exactly_one: present.len() == 1 && !unknown,
            entries: present,
        }
    }

    fn http_probe(&mut self, node: &Node, path: &str) -> Option<HttpProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, HTTP_FIELDS, &[]);
        self.http(&map, false)
    }

    /// The fields http and metrics probes share; `metrics` refuses the http-only ones.
    fn http(&mut self, map: &Map<'_>, metrics: bool) -> Option<HttpProbeSpec> {
        let url = self
            .required(map, "url")
            .and_then(|n| self.url(n, &map.path("url")));
        let method = match map.get("method").filter(|_| !metrics) {
            Some(n) => self.method(n, &map.path("method")),
            None => Some(http::Method::GET),
        };
        let headers = match map.get("headers") {
            Some(n) => self.headers(n, &map.path("headers")),
            None => Some(Vec::new()),
        };
        let bearer_token_file = match map.get("bearerTokenFile") {
            Some(n) => self
                .non_empty_string(n, &map.path("bearerTokenFile"))
                .map(|s| Some(PathBuf::from(s))),
            None => Some(None),
        };
        let tls = match map.get("tls") {
            Some(n) => {
                let tls = self.tls(n, &map.path("tls"));
                if let (Some((_, false)), Some(key)) = (&url, map.key_node("tls")) {
                    self.error(
                        &key.referenced,
                        &map.path("tls"),
                        "tls applies only to https:// URLs",
                    );
                    None
                } else {
                    tls
                }
            }
            None => Some(TlsSpec::default()),
        };
        let (expected_status, body_match, value_pointer) = if metrics {
            for key in METRICS_REFUSED {
                if let Some(key_node) = map.key_node(key) {
                    let message = if *key == "method" {
                        "metrics probes always use GET; remove method".to_string()
                    } else {
                        format!(
                            "not used by metrics probes (the scrape must answer 2xx and the value \
                             comes from series); remove {key}"
                        )
                    };
                    self.error(&key_node.referenced, &map.path(key), message);
                }
            }
            (
                Some(vec![StatusRange {
                    low: 200,
                    high: 299,
                }]),
                Some(None),
                Some(None),
            )
        } else {
            let expected_status = match map.get("expectedStatus") {
                Some(n) => self.expected_status(n, &map.path("expectedStatus")),
                None => Some(vec![StatusRange {
                    low: 200,
                    high: 299,
                }]),
            };
            let body_match = match map.get("body") {
                Some(n) => self.body(n, &map.path("body")).map(Some),
                None => Some(None),
            };
            let value_pointer = match map.get("valuePointer") {
                Some(n) => self.value_pointer(n, &map.path("valuePointer")).map(Some),
                None => Some(None),
            };
            (expected_status, body_match, value_pointer)
        };
        let connection = self.connection(map);
        let max_body_bytes = match map.get("maxBodyBytes") {
            Some(n) => self.max_body_bytes(n, &map.path("maxBodyBytes")),
            None if metrics => Some(DEFAULT_METRICS_MAX_BODY_BYTES),
            None => Some(DEFAULT_HTTP_MAX_BODY_BYTES),
        };
        let follow_redirects = match map.get("followRedirects") {
            Some(n) => self.choice(
                n,
                &map.path("followRedirects"),
                &[
                    ("none", FollowRedirects::None),
                    ("sameOrigin", FollowRedirects::SameOrigin),
                    ("any", FollowRedirects::Any),
                ],
            ),
            None => Some(FollowRedirects::None),
        };
        let refused = metrics && METRICS_REFUSED.iter().any(|k| map.key_node(k).is_some());
        if refused {
            return None;
        }
        Some(HttpProbeSpec {
            url: url?.0,
            method: method?,
            headers: headers?,
            bearer_token_file: bearer_token_file?,
            tls: tls?,
            expected_status: expected_status?,
            body_match: body_match?,
            value_pointer: value_pointer?,
            connection: connection?,
            max_body_bytes: max_body_bytes?,
            follow_redirects: follow_redirects?,
        })
    }

    /// A valid http(s) URL with a host; the flag says whether it is https.
    fn url(&mut self, node: &Node, path: &str) -> Option<(String, bool)> {
        let text = self.non_empty_string(node, path)?;
        let problem = match text.parse::<http::Uri>() {
            Err(e) => Some(format!("{} is not a valid URL: {e}", quote(text))),
            Ok(uri) => match (uri.scheme_str(), uri.authority()) {
                (None, _) => Some(format!(
                    "{} is not an absolute URL; start it with http:// or https://",
                    quote(text)
                )),
                // The text itself is checked, not the parsed scheme, so `HTTPS://` is
                // refused instead of reaching probes that look for "https://".
                (Some(scheme), _)
                    if !(text.starts_with("http://") || text.starts_with("https://")) =>
                {
                    Some(format!(
                        "URL scheme must be http or https (lowercase), found {}",
                        quote(scheme)
                    ))
                }
                (_, None) => Some("URL has no host".to_string()),
                (_, Some(a)) if a.host().is_empty() => Some("URL has no host".to_string()),
                (_, Some(a)) if a.as_str().contains('@') => Some(
                    "URL must not contain user information (user:password@); use \
                     bearerTokenFile for credentials"
                        .to_string(),
                ),
                _ => None,
            },
        };
        if let Some(message) = problem {
            self.error(&node.referenced, path, message);
            return None;
        }
        Some((text.to_string(), text.starts_with("https://")))
    }

    fn method(&mut self, node: &Node, path: &str) -> Option<http::Method> {
        let text = self.string(node, path)?;
        let upper = text.to_ascii_uppercase();
        if upper != text && STANDARD_METHODS.contains(&upper.as_str()) {
            let message = format!("HTTP methods are case-sensitive; write {upper}");
            self.error(&node.referenced, path, message);
            return None;
        }
        match http::Method::from_bytes(text.as_bytes()) {
            Ok(method) => Some(method),
            Err(_) => {
                let message = format!(
                    "{} is not a valid HTTP method, e.g. GET or HEAD",
                    quote(text)
                );
                self.error(&node.referenced, path, message);
                None
            }
        }
    }

    fn headers(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
        let map = self.map(node, path)?;
        let mut ok = true;
        let mut headers = Vec::new();
        for &(key, key_node, value) in &map.entries {
            let header_path = map.path(key);
            let name = match http::HeaderName::from_bytes(key.as_bytes()) {
                Ok(name) if name == http::header::AUTHORIZATION => {
                    self.error(
                        &key_node.referenced,
                        &header_path,
                        "do not put credentials in the file; set bearerTokenFile to a file \
                         holding the token",
                    );
                    None
                }
                Ok(name) => Some(name),
                Err(_) => {
                    let message = format!(
                        "{} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)",
                        quote(key)
                    );
                    self.error(&key_node.referenced, &header_path, message);
                    None
                }
            };
            let value = self.string(value, &header_path).and_then(|text| {
                http::HeaderValue::from_str(text)
                    .map_err(|_| {
                        self.error(
                            &value.referenced,
                            &header_path,
                            "not a valid header value (visible ASCII characters, spaces and tabs only)",
                        )
                    })
                    .ok()
            });
            match (name, value) {
                (Some(name), Some(value)) => headers.push((name, value)),
                _ => ok = false,
            }
        }
        ok.then_some(headers)
    }

    fn tls(&mut self, node: &Node, path: &str) -> Option<TlsSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, TLS_FIELDS, &[]);
        let ca_file = match map.get("caFile") {
            Some(n) => self
                .non_empty_string(n, &map.path("caFile"))
                .map(|s| Some(PathBuf::from(s))),
            None => Some(None),
        };
        let insecure = match map.get("insecureSkipVerify") {
            Some(n) => self.bool(n, &map.path("insecureSkipVerify")),
            None => Some(false),
        };
        let server_name = match map.get("serverName") {
            Some(n) => self.server_name(n, &map.path("serverName")).map(Some),
            None => Some(None),
        };
        if let (Some(Some(_)), Some(true), Some(n)) =
            (&ca_file, insecure, map.get("insecureSkipVerify"))
        {
            self.error(
                &n.referenced,
                &map.path("insecureSkipVerify"),
                "caFile and insecureSkipVerify: true contradict each other; remove one",
            );
            return None;
        }
        Some(TlsSpec {
            ca_file: ca_file?,
            insecure_skip_verify: insecure?,
            server_name: server_name?,
        })
    }

    fn server_name(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.non_empty_string(node, path)?;
        if rustls::pki_types::ServerName::try_from(text).is_err() {
            let message = format!("{} is not a valid DNS name or IP address", quote(text));
            self.error(&node.referenced, path, message);
            return None;
        }
        Some(text.to_string())
    }

    fn expected_status(&mut self, node: &Node, path: &str) -> Option<Vec<StatusRange>> {
        let Value::Seq(items) = &node.value else {
            let message = format!(
                "{}, e.g. [200] or [\"200-299\"]",
                type_error("a list", node)
            );
            self.error(&node.referenced, path, message);
            return None;
        };
        if items.is_empty() {
            self.error(
                &node.referenced,
                path,
                "must list at least one status code or range",
            );
            return None;
        }
        let mut ok = true;
        let mut ranges = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let range = match &item.value {
                Value::Int(code) => {
                    status_code(&code.to_string()).map(|c| StatusRange { low: c, high: c })
                }
                Value::String(text) => status_range(text),
                _ => Err(format!(
                    "{}, e.g. 200 or \"200-299\"",
                    type_error("a status code or range", item)
                )),
            };
            match range {
                Ok(range) => ranges.push(range),
                Err(message) => {
                    self.error(&item.referenced, &item_path, message);
                    ok = false;
                }
            }
        }
        ok.then_some(ranges)
    }

    fn body(&mut self, node: &Node, path: &str) -> Option<BodyMatch> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, BODY_FIELDS, &[]);
        let contains = map.get("contains");
        let regex = map.get("regex");
        match (contains, regex) {
            (Some(_), Some(_)) => {
                if let Some(key) = map.key_node("regex") {
                    self.error(
                        &key.referenced,
                        &map.path("regex"),
                        "give exactly one of contains, regex, not both",
                    );
                }
                None
            }
            (None, None) => {
                if !map.entries.iter().any(|(k, _, _)| !BODY_FIELDS.contains(k)) {
                    self.error(&map.at, path, "give exactly one of contains, regex");
                }
                None
            }
            (Some(n), None) => self
                .non_empty_string(n, &map.path("contains"))
                .map(|s| BodyMatch::Substring(s.to_string())),
            (None, Some(n)) => {
                let regex_path = map.path("regex");
                let text = self.non_empty_string(n, &regex_path)?;
                match regex::Regex::new(text) {
                    Ok(re) => Some(BodyMatch::Regex(re)),
                    Err(e) => {
                        let message = format!("invalid regex: {}", regex_error_message(&e));
                        self.error(&n.referenced, &regex_path, message);
                        None
                    }
                }
            }
        }
    }

    fn value_pointer(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.string(node, path)?;
        let problem = if !text.is_empty() && !text.starts_with('/') {
            Some(format!(
                "{} is not a JSON pointer; it must be empty or start with \"/\", e.g. /status/replicas",
                quote(text)
            ))
        } else if has_bad_pointer_escape(text) {
            Some(format!(
                "{} is not a JSON pointer: \"~\" must be followed by 0 (for ~) or 1 (for /)",
                quote(text)
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            self.error(&node.referenced, path, message);
            return None;
        }
        Some(text.to_string())
    }

    fn max_body_bytes(&mut self, node: &Node, path: &str) -> Option<usize> {
        let n = self.integer(node, path)?;
        match usize::try_from(n) {
            Ok(n) if (1..=MAX_BODY_BYTES_LIMIT).contains(&n) => Some(n),
            _ => {
                let message =
                    format!("must be between 1 and {MAX_BODY_BYTES_LIMIT} (64 MiB), found {n}");
                self.error(&node.referenced, path, message);
                None
            }
        }
    }

    fn tcp_probe(&mut self, node: &Node, path: &str) -> Option<TcpProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, TCP_FIELDS, &[]);
        let address = self.required(&map, "address").and_then(|n| {
            let path = map.path("address");
            let text = self.non_empty_string(n, &path)?;
            match check_host_port(text) {
                Ok(()) => Some(text.to_string()),
                Err(message) => {
                    self.error(&n.referenced, &path, message);
                    None
                }
            }
        });
        let tls = match map.get("tls") {
            Some(n) => self.tls(n, &map.path("tls")).map(Some),
            None => Some(None),
        };
        Some(TcpProbeSpec {
            address: address?,
            tls: tls?,
        })
    }

    fn dns_probe(&mut self, node: &Node, path: &str) -> Option<DnsProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, DNS_FIELDS, &[]);
        let name = self.required(&map, "name").and_then(|n| {
            let path = map.path("name");
            let text = self.non_empty_string(n, &path)?;
            match check_dns_name(text) {
                Ok(()) => Some(text.to_string()),
                Err(reason) => {
                    self.error(
                        &n.referenced,
                        &path,
                        format!("{} is not a DNS name: {reason}", quote(text)),
                    );
                    None
                }
            }
        });
        let server = match map.get("server") {
            Some(n) => {
                let path = map.path("server");
                self.string(n, &path)
                    .and_then(|text| match parse_dns_server(text) {
                        Some(addr) => Some(Some(addr)),
                        None => {
                            let message = format!(
                                "{} is not an IP address with an optional port, e.g. 10.96.0.10, \
                             10.96.0.10:53 or [fd00::10]:53",
                                quote(text)
                            );
                            self.error(&n.referenced, &path, message);
                            None
                        }
                    })
            }
            None => Some(None),
        };
        let min_answers = match map.get("minAnswers") {
            Some(n) => {
                let path = map.path("minAnswers");
                self.integer(n, &path)
                    .and_then(|v| match usize::try_from(v) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            self.error(
                                &n.referenced,
                                &path,
                                format!("must be at least 0, found {v}"),
                            );
                            None
                        }
                    })
            }
            None => Some(1),
        };
        let expected_addresses = match map.get("expectedAddresses") {
            Some(n) => {
                let path = map.path("expectedAddresses");
                self.list(n, &path).and_then(|items| {
                    let mut ok = true;
                    let mut addresses = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        let Some(text) = self.string(item, &item_path) else {
                            ok = false;
                            continue;
                        };
                        match text.parse::<std::net::IpAddr>() {
                            Ok(ip) => addresses.push(ip),
                            Err(_) => {
                                let message = format!("{} is not an IP address", quote(text));
                                self.error(&item.referenced, &item_path, message);
                                ok = false;
                            }
                        }
                    }
                    ok.then_some(addresses)
                })
            }
            None => Some(Vec::new()),
        };
        Some(DnsProbeSpec {
            name: name?,
            server: server?,
            min_answers: min_answers?,
            expected_addresses: expected_addresses?,
        })
    }

    fn metrics_probe(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<MetricsProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, METRICS_FIELDS, METRICS_REFUSED);
        let http = self.http(&map, true);
        let selector = self.required(&map, "series").and_then(|n| {
            let path = map.path("series");
            let text = self.string(n, &path)?;
            parse_selector(text)
                .map_err(|e| self.error(&n.referenced, &path, e.to_string()))
                .ok()
        });
        let (aggregation, histogram_quantile) =
            self.series_reading(&map, selector.as_ref(), interval);
        Some(MetricsProbeSpec {
            http: http?,
            selector: selector?,
            aggregation: aggregation?,
            histogram_quantile: histogram_quantile?,
        })
    }

    /// `aggregation` and `histogramQuantile` of a probe reading `series` (already parsed
    /// when valid). With `histogramQuantile` the aggregation reduces the groups' quantiles,
    /// so only `max` (the default: the worst group) and `min` make sense.
    fn series_reading(
        &mut self,
        map: &Map<'_>,
        selector: Option<&MetricSelector>,
        interval: Option<Duration>,
    ) -> (Option<Aggregation>, Option<Option<HistogramQuantileSpec>>) {
        let is_histogram = map.get("histogramQuantile").is_some();
        let buckets_ok = match (selector, map.get("series")) {
            (Some(selector), Some(n)) if is_histogram => self.bucket_series(selector, n, map),
            _ => true,
        };
        let histogram = match map.get("histogramQuantile") {
            Some(n) => self
                .histogram_quantile(n, &map.path("histogramQuantile"), interval)
                .filter(|_| buckets_ok)
                .map(Some),
            None => Some(None),
        };
        let aggregation = match map.get("aggregation") {
            Some(n) => {
                let path = map.path("aggregation");
                self.choice(
                    n,
                    &path,
                    &[
                        ("sum", Aggregation::Sum),
                        ("max", Aggregation::Max),
                        ("min", Aggregation::Min),
                        ("count", Aggregation::Count),
                    ],
                )
                .and_then(|a| {
                    if is_histogram && matches!(a, Aggregation::Sum | Aggregation::Count) {
                        let message = format!(
                            "{} of the groups' quantiles is not a latency; with \
                             histogramQuantile use max (the default: the worst group) or min",
                            a.as_str()
                        );
                        self.error(&n.referenced, &path, message);
                        return None;
                    }
                    Some(a)
                })
            }
            None if is_histogram => Some(Aggregation::Max),
            None => Some(Aggregation::Sum),
        };
        (aggregation, histogram)
    }

    /// `histogramQuantile`; its window must hold the invariant's interval.
    fn histogram_quantile(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<HistogramQuantileSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, HISTOGRAM_QUANTILE_FIELDS, &[]);
        let quantile = self.quantile(&map);
        let window = self.window(&map, interval, Some(DEFAULT_WINDOW));
        let by = match map.get("by") {
            Some(n) => self.group_labels(n, &map.path("by")),
            None => Some(Vec::new()),
        };
        Some(HistogramQuantileSpec {
            quantile: quantile?,
            window: window??,
            by: by?,
        })
    }

    /// Whether `selector` (the `series` at `node`) selects whole histograms' buckets.
    fn bucket_series(&mut self, selector: &MetricSelector, node: &Node, map: &Map<'_>) -> bool {
        let path = map.path("series");
        let mut ok = true;
        if !selector.metric.ends_with("_bucket") {
            let message = format!(
                "series selects {}, but histogramQuantile reads a histogram's bucket series: \
                 name the metric with its _bucket suffix (e.g. \
                 apiserver_request_duration_seconds_bucket)",
                quote(&selector.metric)
            );
            self.error(&node.referenced, &path, message);
            ok = false;
        }
        if selector.matchers.iter().any(|m| matcher_label(m) == "le") {
            self.error(
                &node.referenced,
                &path,
                "a matcher on le drops buckets and skews the quantile; remove it (select whole \
                 histograms)",
            );
            ok = false;
        }
        ok
    }

    /// `by` of histogramQuantile: distinct label names other than `le`.
    fn group_labels(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let mut ok = true;
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(name) = self.string(item, &item_path) else {
                ok = false;
                continue;
            };
            let problem = if !is_label_name(name) {
                Some(format!(
                    "{} is not a label name (letters, digits and '_', not starting with a \
                     digit)",
                    quote(name)
                ))
            } else if name == "le" {
                Some("le is always kept (the buckets are grouped by it); remove it".to_string())
            } else if names.iter().any(|n| n == name) {
                Some(format!("{} is listed twice", quote(name)))
            } else {
                None
            };
            match problem {
                Some(message) => {
                    self.error(&item.referenced, &item_path, message);
                    ok = false;
                }
                None => names.push(name.to_string()),
            }
        }
        ok.then_some(names)
    }

    fn connection(&mut self, map: &Map<'_>) -> Option<ConnectionMode> {
        match map.get("connection") {
            Some(n) => self.choice(
                n,
                &map.path("connection"),
                &[
                    ("new", ConnectionMode::New),
                    ("reused", ConnectionMode::Reused),
                ],
            ),
            None => Some(ConnectionMode::Reused),
        }
    }

    // ----- Kubernetes probes -------------------------------------------------------------

    fn apiserver_probe(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<ApiserverProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, APISERVER_FIELDS, &[]);
        let api_path = self.required(&map, "path").and_then(|n| {
            let path = map.path("path");
            let text = self.non_empty_string(n, &path)?;
            match check_api_path(text) {
                Ok(()) => Some(text.to_string()),
                Err(message) => {
                    self.error(&n.referenced, &path, message);
                    None
                }
            }
        });
        let connection = self.connection(&map);
        let body_match = match map.get("body") {
            Some(n) => self.body(n, &map.path("body")).map(Some),
            None => Some(None),
        };
        let series = match map.get("series") {
            Some(n) => {
                let path = map.path("series");
                self.string(n, &path).and_then(|text| {
                    parse_selector(text)
                        .map(Some)
                        .map_err(|e| self.error(&n.referenced, &path, e.to_string()))
                        .ok()
                })
            }
            None => Some(None),
        };
        let mut without_series = false;
        for field in ["aggregation", "histogramQuantile"] {
            if map.get("series").is_none()
                && let Some(key) = map.key_node(field)
            {
                self.error(
                    &key.referenced,
                    &map.path(field),
                    format!(
                        "{field} applies only with series (a metrics scrape); add series or \
                         remove {field}"
                    ),
                );
                without_series = true;
            }
        }
        let (aggregation, histogram_quantile) =
            self.series_reading(&map, series.as_ref().and_then(Option::as_ref), interval);
        let max_body_bytes = match map.get("maxBodyBytes") {
            Some(n) => self.max_body_bytes(n, &map.path("maxBodyBytes")),
            None if map.get("series").is_some() => Some(DEFAULT_METRICS_MAX_BODY_BYTES),
            None => Some(DEFAULT_HTTP_MAX_BODY_BYTES),
        };
        if without_series {
            return None;
        }
        Some(ApiserverProbeSpec {
            path: api_path?,
            connection: connection?,
            body_match: body_match?,
            series: series?,
            aggregation: aggregation?,
            histogram_quantile: histogram_quantile?,
            max_body_bytes: max_body_bytes?,
        })
    }

    fn resource_probe(&mut self, node: &Node, path: &str) -> Option<ResourceProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, RESOURCE_FIELDS, &[]);
        let api_version = self.required(&map, "apiVersion").and_then(|n| {
            let path = map.path("apiVersion");
            let text = self.non_empty_string(n, &path)?;
            check_api_version(text)
                .map(|()| text.to_string())
                .map_err(|message| self.error(&n.referenced, &path, message))
                .ok()
        });
        let kind = self.required(&map, "kind").and_then(|n| {
            let path = map.path("kind");
            let text = self.non_empty_string(n, &path)?;
            check_kind(text)
                .map(|()| text.to_string())
                .map_err(|message| self.error(&n.referenced, &path, message))
                .ok()
        });
        let namespace = self.namespace(&map);
        let label_selector = self.selector(&map, "labelSelector", check_label_selector);
        let field_selector = self.selector(&map, "fieldSelector", check_field_selector);
        let expression = self.required(&map, "expression").and_then(|n| {
            let path = map.path("expression");
            let text = self.non_empty_string(n, &path)?;
            CelExpression::compile(text)
                .map_err(|message| self.error(&n.referenced, &path, message))
                .ok()
        });
        let aggregation = match map.get("aggregation") {
            Some(n) => self.choice(
                n,
                &map.path("aggregation"),
                &[
                    ("sum", ResourceAggregation::Sum),
                    ("max", ResourceAggregation::Max),
                    ("min", ResourceAggregation::Min),
                    ("count", ResourceAggregation::Count),
                    ("cumulativeSum", ResourceAggregation::CumulativeSum),
                ],
            ),
            None => Some(ResourceAggregation::Sum),
        };
        Some(ResourceProbeSpec {
            api_version: api_version?,
            kind: kind?,
            namespace: namespace?,
            label_selector: label_selector?,
            field_selector: field_selector?,
            expression: expression?,
            aggregation: aggregation?,
        })
    }

    fn events_probe(&mut self, node: &Node, path: &str) -> Option<EventsProbeSpec> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, EVENTS_FIELDS, &[]);
        let measure = self.required(&map, "measure").and_then(|n| {
            self.choice(
                n,
                &map.path("measure"),
                &[
                    ("maxRepeats", EventsMeasure::MaxRepeats),
                    ("warnings", EventsMeasure::Warnings),
                ],
            )
        });
        let namespace = self.namespace(&map);
        let reasons = match map.get("reasons") {
            Some(n) => self.reasons(n, &map.path("reasons")),
            None => Some(Vec::new()),
        };
        let exclude_reasons = match map.get("excludeReasons") {
            Some(n) => self.reasons(n, &map.path("excludeReasons")),
            None => Some(Vec::new()),
        };
        if measure == Some(EventsMeasure::Warnings) && matches!(&reasons, Some(r) if r.is_empty()) {
            let (at, message) = match map.get("reasons") {
                Some(n) => (n.referenced, "must list at least one reason"),
                None => (
                    map.at,
                    "required with measure: warnings; list the reasons to count, e.g. \
                     [FailedMount, BackOff]",
                ),
            };
            self.error(&at, &map.path("reasons"), message);
            return None;
        }
        if let (Some(include), Some(exclude), Some(n)) =
            (&reasons, &exclude_reasons, map.get("excludeReasons"))
            && let Some(both) = exclude.iter().find(|r| include.contains(r))
        {
            let message = format!(
                "{} is also in reasons; a reason cannot be both counted and excluded",
                quote(both)
            );
            self.error(&n.referenced, &map.path("excludeReasons"), message);
            return None;
        }
        Some(EventsProbeSpec {
            measure: measure?,
            namespace: namespace?,
            reasons: reasons?,
            exclude_reasons: exclude_reasons?,
        })
    }

    /// The optional `namespace` field: a DNS label.
    fn namespace(&mut self, map: &Map<'_>) -> Option<Option<String>> {
        let Some(n) = map.get("namespace") else {
            return Some(None);
        };
        let path = map.path("namespace");
        let text = self.non_empty_string(n, &path)?;
        if !is_dns_label(text) {
            let message = format!(
                "{} is not a namespace name (lowercase letters, digits and '-', at most 63)",
                quote(text)
            );
            self.error(&n.referenced, &path, message);
            return None;
        }
        Some(Some(text.to_string()))
    }

    /// An optional selector field, checked by `check`.
    fn selector(
        &mut self,
        map: &Map<'_>,
        key: &str,
        check: fn(&str) -> Result<(), String>,
    ) -> Option<Option<String>> {
        let Some(n) = map.get(key) else {
            return Some(None);
        };
        let path = map.path(key);
        let text = self.string(n, &path)?;
        match check(text) {
            Ok(()) => Some(Some(text.trim().to_string())),
            Err(reason) => {
                let message = format!("invalid {}: {} {reason}", key_words(key), quote(text));
                self.error(&n.referenced, &path, message);
                None
            }
        }
    }

    /// A list of event reasons: non-empty strings without spaces, no duplicates.
    fn reasons(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let mut ok = true;
        let mut reasons: Vec<String> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(text) = self.non_empty_string(item, &item_path) else {
                ok = false;
                continue;
            };
            if text.chars().any(char::is_whitespace) {
                let message = format!(
                    "{} is not an event reason (a single word such as BackOff)",
                    quote(text)
                );
                self.error(&item.referenced, &item_path, message);
                ok = false;
            } else if reasons.iter().any(|r| r == text) {
                self.error(
                    &item.referenced,
                    &item_path,
                    format!("{} is listed twice", quote(text)),
                );
                ok = false;
            } else {
                reasons.push(text.to_string());
            }
        }
        ok.then_some(reasons)
    }

    // ----- conditions --------------------------------------------------------------------

    fn condition(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<Condition> {
        let map = self.map(node, path)?;
        let kinds = self.one_kind(&map, CONDITION_KINDS, "condition");
        let mut result = None;
        for &(kind, _, value) in &kinds.entries {
            let kind_path = map.path(kind);
            result = match kind {
                "availability" => self.availability(value, &kind_path, interval),
                "latency" => self.latency(value, &kind_path, interval),
                "threshold" => self.threshold(value, &kind_path),
                _ => self.increase(value, &kind_path, interval),
            };
        }
        if kinds.exactly_one { result } else { None }
    }

    fn availability(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<Condition> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, AVAILABILITY_FIELDS, &[]);
        let target = self.required(&map, "target").and_then(|n| {
            let path = map.path("target");
            let t = self.number(n, &path)?;
            if t <= 0.0 || t > 100.0 {
                let message =
                    format!("must be a percentage greater than 0 and at most 100, found {t}");
                self.error(&n.referenced, &path, message);
                return None;
            }
            Some(t)
        });
        let window = self.window(&map, interval, Some(DEFAULT_WINDOW));
        Some(Condition::Availability {
            target_percent: target?,
            window: window??,
        })
    }

    fn latency(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<Condition> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, LATENCY_FIELDS, &[]);
        let quantile = self.quantile(&map);
        let max = self.required(&map, "max").and_then(|n| {
            let path = map.path("max");
            let d = self.duration(n, &path)?;
            if d.is_zero() {
                self.error(&n.referenced, &path, "must be greater than 0");
                return None;
            }
            Some(d)
        });
        let window = self.window(&map, interval, Some(DEFAULT_WINDOW));
        Some(Condition::Latency {
            quantile: quantile?,
            max: max?,
            window: window??,
        })
    }

    /// `quantile` of a latency condition or a histogramQuantile: in (0, 1], default 0.99.
    fn quantile(&mut self, map: &Map<'_>) -> Option<f64> {
        let Some(n) = map.get("quantile") else {
            return Some(DEFAULT_QUANTILE);
        };
        let path = map.path("quantile");
        let q = self.number(n, &path)?;
        if q <= 0.0 || q > 1.0 {
            let message =
                format!("must be greater than 0 and at most 1 (e.g. 0.99 for p99), found {q}");
            self.error(&n.referenced, &path, message);
            return None;
        }
        Some(q)
    }

    fn threshold(&mut self, node: &Node, path: &str) -> Option<Condition> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, THRESHOLD_FIELDS, &[]);
        let min = match map.get("min") {
            Some(n) => self.number(n, &map.path("min")).map(Some),
            None => Some(None),
        };
        let max = match map.get("max") {
            Some(n) => self.number(n, &map.path("max")).map(Some),
            None => Some(None),
        };
        if map.get("min").is_none() && map.get("max").is_none() {
            self.error(&map.at, path, "give min, max or both");
            return None;
        }
        if let (Some(Some(lo)), Some(Some(hi)), Some(n)) = (min, max, map.get("max"))
            && lo > hi
        {
            self.error(
                &n.referenced,
                &map.path("max"),
                format!("max {hi} is less than min {lo}"),
            );
            return None;
        }
        let for_duration = match map.get("for") {
            Some(n) => self.duration(n, &map.path("for")),
            None => Some(Duration::ZERO),
        };
        Some(Condition::Threshold {
            min: min?,
            max: max?,
            for_duration: for_duration?,
        })
    }

    fn increase(
        &mut self,
        node: &Node,
        path: &str,
        interval: Option<Duration>,
    ) -> Option<Condition> {
        let map = self.map(node, path)?;
        self.deny_unknown(&map, INCREASE_FIELDS, &[]);
        let max = match map.get("max") {
            Some(n) => {
                let path = map.path("max");
                self.number(n, &path).and_then(|m| {
                    if m < 0.0 {
                        self.error(
                            &n.referenced,
                            &path,
                            format!("must be at least 0, found {m}"),
                        );
                        return None;
                    }
                    Some(m)
                })
            }
            None => Some(0.0),
        };
        let window = self.window(&map, interval, None);
        Some(Condition::Increase {
            max: max?,
            window: window?,
        })
    }

    /// The condition's `window`, or `default`; it must hold at least one interval.
    /// `Some(None)` means no window (only when `default` is `None`).
    fn window(
        &mut self,
        map: &Map<'_>,
        interval: Option<Duration>,
        default: Option<Duration>,
    ) -> Option<Option<Duration>> {
        let path = map.path("window");
        match map.get("window") {
            Some(n) => {
                let d = self.duration(n, &path)?;
                let problem = if d.is_zero() {
                    Some("must be greater than 0".to_string())
                } else {
                    interval.filter(|&i| d < i).map(|i| {
                        format!(
                            "window {} is shorter than the interval {}; a window must hold at \
                             least one sample",
                            format_duration(d),
                            format_duration(i)
                        )
                    })
                };
                if let Some(message) = problem {
                    self.error(&n.referenced, &path, message);
                    return None;
                }
                Some(Some(d))
            }
            None => {
                if let (Some(d), Some(i)) = (default, interval)
                    && d < i
                {
                    let message = format!(
                        "window defaults to {}, which is shorter than the interval {}; set a \
                         window of at least the interval",
                        format_duration(d),
                        format_duration(i)
                    );
                    self.error(&map.at, &path, message);
                    return None;
                }
                Some(default)
            }
        }
    }
}

/// The known kinds found in a probe or condition mapping.
struct Kinds<'n> {
    /// True when exactly one known kind and nothing else was given.
    exactly_one: bool,
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
}

// ----- value checks without positions ---------------------------------------------------

/// RFC 1123 label: 1..=63 of `[a-z0-9-]`, starting and ending alphanumeric.
/// The label a series matcher tests.
fn matcher_label(m: &LabelMatcher) -> &str {
    match m {
        LabelMatcher::Equal(l, _) | LabelMatcher::NotEqual(l, _) => l,
        LabelMatcher::Regex(l, _) | LabelMatcher::NotRegex(l, _) => l,
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{} is not a valid label name (letters, digits and '_', not starting with a digit)",
            quote(name)
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "{} is not allowed: label names starting with \"__\" are reserved",
            quote(name)
        ));
    }
    if RESERVED_LABELS.contains(&name) {
        return Err(format!(
            "{} is reserved: the agent sets {} itself",
            quote(name),
            RESERVED_LABELS.join(", ")
        ));
    }
    Ok(())
}

fn status_code(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("{text} is not an HTTP status code (100-599)")),
    }
}

/// `"204"` or `"200-299"`.
fn status_range(text: &str) -> Result<StatusRange, String> {
    let shape = || {
        format!(
            "{} is not a status code or range; write 200 or \"200-299\"",
            quote(text)
        )
    };
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let is_code = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_code(low.trim()) || !is_code(high.trim()) {
        return Err(shape());
    }
    let low = status_code(low.trim())?;
    let high = status_code(high.trim())?;
    if low > high {
        return Err(format!(
            "{} is not a valid status range: {low} is greater than {high}",
            quote(text)
        ));
    }
    Ok(StatusRange { low, high })
}

fn has_bad_pointer_escape(pointer: &str) -> bool {
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return true;
        }
    }
    false
}

/// `host:port` with a DNS name, IPv4 address or bracketed IPv6 address.
fn check_host_port(text: &str) -> Result<(), String> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let example = "write host:port, e.g. 10.0.0.1:6443, kubernetes.default:443 or [::1]:443";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{} has no port; {example}", quote(text)));
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{}: an IPv6 address needs brackets, e.g. [::1]:443",
            quote(text)
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => {
            return Err(format!(
                "{}: port must be 1-65535, found {}",
                quote(text),
                quote(port)
            ));
        }
    }
    if host.starts_with('[') {
        return Err(format!(
            "{}: {} is not an IPv6 address",
            quote(text),
            quote(host)
        ));
    }
    check_dns_name(host).map_err(|reason| {
        format!(
            "{}: host {} is not valid: {reason}",
            quote(text),
            quote(host)
        )
    })
}

/// A host name: dot-separated labels of letters, digits, '-' and '_', an optional final
/// dot. Underscores are allowed because service records use them (`_http._tcp…`).
fn check_dns_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("it is empty".to_string());
    }
    if trimmed.len() > 253 {
        return Err("it is longer than 253 characters".to_string());
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (\"..\")".to_string());
        }
        if label.len() > 63 {
            return Err(format!(
                "label {} is longer than 63 characters",
                quote(label)
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label {} may only hold letters, digits, '-' and '_'",
                quote(label)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {} starts or ends with '-'", quote(label)));
        }
    }
    Ok(())
}

/// `ip:port`, `[ipv6]:port`, or a bare IP meaning port 53.
fn parse_dns_server(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return (addr.port() != 0).then_some(addr);
    }
    text.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
}

/// `labelSelector` as words for messages.
fn key_words(key: &str) -> &'static str {
    if key == "labelSelector" {
        "label selector"
    } else {
        "field selector"
    }
}

/// An API server path with an optional query: `/readyz`, `/api/v1/nodes?limit=1`.
fn check_api_path(text: &str) -> Result<(), String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        return Err(format!(
            "{} is a URL; give only the path (e.g. /readyz): the server comes from the \
             kubeconfig or the pod's ServiceAccount",
            quote(text)
        ));
    }
    if !text.starts_with('/') || text.starts_with("//") {
        return Err(format!(
            "{} is not an API server path; start it with a single /, e.g. /readyz or \
             /api/v1/namespaces/default",
            quote(text)
        ));
    }
    if text.contains('#') {
        return Err(format!("{} has a fragment (#); remove it", quote(text)));
    }
    text.parse::<http::uri::PathAndQuery>()
        .map(|_| ())
        .map_err(|e| format!("{} is not a valid path: {e}", quote(text)))
}

/// `v1` or `group/version`, e.g. `apps/v1` or `discovery.k8s.io/v1`.
fn check_api_version(text: &str) -> Result<(), String> {
    let (group, version) = match text.split_once('/') {
        Some((group, version)) => (Some(group), version),
        None => (None, text),
    };
    if group == Some("core") || group == Some("") {
        return Err(format!(
            "{} names the core group, which has no name; write {version}",
            quote(text)
        ));
    }
    if let Some(group) = group
        && check_dns_name(group).is_err()
    {
        return Err(format!(
            "{} is not an API version: group {} is not a DNS name; write v1 or group/version, \
             e.g. apps/v1",
            quote(text),
            quote(group)
        ));
    }
    let version_ok = version.starts_with(|c: char| c.is_ascii_lowercase())
        && is_dns_label(version)
        && !version.contains('/');
    if !version_ok {
        return Err(format!(
            "{} is not an API version; write v1 or group/version, e.g. apps/v1 or \
             discovery.k8s.io/v1",
            quote(text)
        ));
    }
    Ok(())
}

/// A kind: CamelCase letters and digits, starting with an upper-case letter.
fn check_kind(text: &str) -> Result<(), String> {
    let valid = text.starts_with(|c: char| c.is_ascii_uppercase())
        && text.chars().all(|c| c.is_ascii_alphanumeric());
    if valid {
        return Ok(());
    }
    let mut hint = String::new();
    if let Some(first) = text.chars().next()
        && first.is_ascii_lowercase()
        && text.chars().all(|c| c.is_ascii_alphanumeric())
    {
        hint = format!(
            ", e.g. {}{}",
            first.to_ascii_uppercase(),
            &text[first.len_utf8()..]
        );
    }
    Err(format!(
        "{} is not a kind; kinds are CamelCase names such as Node, Pod or Deployment{hint}",
        quote(text)
    ))
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
