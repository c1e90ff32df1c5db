//! What a probe observed: the one value type that flows from probes to evaluation.
//!
//! A [`Sample`] is stamped with the time the request *started* (not when it ended), so a
//! request that hangs for 10 s during an outage is placed where the outage began, as
//! OpenShift's disruption monitor does.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Wall-clock time in milliseconds since the Unix epoch.
///
/// Milliseconds are plenty for sample intervals of 100 ms and up, and an integer keeps
/// evaluation cheap and exactly reproducible in tests. Serialized as an RFC 3339 string
/// (`2026-11-25T19:56:18.123Z`) so reports are readable and load into BigQuery as-is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp::from_system_time)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system_time(std::time::SystemTime::now())
    }

    /// Converts a `SystemTime`, saturating at the epoch for times before it.
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// This time plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// Time from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// RFC 3339 form with milliseconds, UTC (`2026-11-25T19:56:18.123Z`). Clamped to
    /// years 1970..=9999, the range RFC 3339 can express.
    pub fn to_rfc3339(self) -> String {
        const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        let t = std::time::UNIX_EPOCH + Duration::from_millis(self.0.clamp(0, MAX_MS) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// What one probe run found, before timing is attached.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The target answered as expected; `value` is the number the probe extracted, if any.
    Ok { value: Option<f64> },
    /// The target did not answer as expected.
    Failed(ProbeError),
    /// The target answered, but the series the probe selects is not there. Distinct from
    /// `Ok { value: 0 }`: an absent counter proves nothing either way.
    Absent,
}

/// The outcome of one sample, as counted in reports and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The target answered as expected.
    Ok,
    /// The target failed, timed out or answered unexpectedly.
    Failed,
    /// The target answered but the selected series was absent.
    Absent,
}

impl Outcome {
    /// Lower-case name used in reports, logs and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Absent => "absent",
        }
    }
}

/// Why a probe failed: a short, bounded class (safe as a metric attribute) and a
/// human-readable message (never used as an attribute; may contain addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeError {
    /// Short class such as `timeout`, `connection_refused`, `http_status`.
    pub class: ErrorClass,
    /// What happened, for people. Never contains credentials.
    pub message: String,
}

impl ProbeError {
    /// Builds an error of `class` with `message`, truncating very long messages so a
    /// hostile target cannot grow reports without bound.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        const MAX: usize = 512;
        if message.len() > MAX {
            let mut cut = MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        ProbeError { class, message }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.message)
    }
}

/// The closed set of failure classes. A new violation interval starts when the class
/// changes, so classes must be coarse enough to be stable across retries of one fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// No answer within the invariant's timeout.
    Timeout,
    /// The connection was refused (nothing listening).
    ConnectionRefused,
    /// The peer reset or closed the connection mid-request.
    ConnectionReset,
    /// Any other connect-time failure (unreachable network, bad address).
    Connect,
    /// Name resolution failed or returned fewer/other answers than expected.
    Dns,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The HTTP status was not in the expected set.
    HttpStatus,
    /// The body did not match, or a value could not be extracted from it.
    BodyMismatch,
    /// The body was larger than the probe's cap.
    BodyTooLarge,
    /// The reply could not be parsed (bad HTTP, bad metrics text, bad JSON).
    InvalidResponse,
    /// A credential file (bearer token, CA file) could not be read.
    Credentials,
    /// The API server did not accept the agent's credentials (HTTP 401).
    Unauthorized,
    /// The API server refused the request: the agent's RBAC does not allow it (HTTP 403).
    Forbidden,
    /// A CEL expression could not be evaluated on an object (a missing field, a wrong
    /// type, a result that is neither a number nor a boolean).
    Expression,
    /// The probe itself panicked; a bug in the agent, reported instead of crashing.
    Panic,
    /// Anything else.
    Other,
}

impl ErrorClass {
    /// The snake_case name used in reports, logs and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::ConnectionRefused => "connection_refused",
            ErrorClass::ConnectionReset => "connection_reset",
            ErrorClass::Connect => "connect",
            ErrorClass::Dns => "dns",
            ErrorClass::Tls => "tls",
            ErrorClass::HttpStatus => "http_status",
            ErrorClass::BodyMismatch => "body_mismatch",
            ErrorClass::BodyTooLarge => "body_too_large",
            ErrorClass::InvalidResponse => "invalid_response",
            ErrorClass::Credentials => "credentials",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::Expression => "expression",
            ErrorClass::Panic => "panic",
            ErrorClass::Other => "other",
        }
    }
}

/// One timed observation of one invariant.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When the request started.
    pub at: Timestamp,
    /// How long the request took (up to the timeout).
    pub latency: Duration,
    /// What was observed.
    pub observation: Observation,
}

impl Sample {
    /// The outcome class of this sample.
    pub fn outcome(&self) -> Outcome {
        match self.observation {
            Observation::Ok { .. } => Outcome::Ok,
            Observation::Failed(_) => Outcome::Failed,
            Observation::Absent => Outcome::Absent,
        }
    }

    /// The extracted value, when the probe produced one.
    pub fn value(&self) -> Option<f64> {
        match self.observation {
            Observation::Ok { value } => value,
            _ => None,
        }
    }

    /// The failure, when the sample failed.
    pub fn error(&self) -> Option<&ProbeError> {
        match &self.observation {
            Observation::Failed(e) => Some(e),
            _ => None,
        }
    }
}
