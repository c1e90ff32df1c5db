//! The metrics probe: scrape a Prometheus text endpoint and reduce the selected series to
//! one value.
//!
//! Fetching reuses the HTTP probe's [`HttpFetcher`] (same connection modes, TLS, bearer
//! token and body cap); the status must be 2xx. The body is parsed with
//! [`prometheus_text`], comparing each line's metric name before looking at its labels,
//! so a 10k-series scrape costs one pass and no allocation per non-matching series.
//!
//! No selected series means [`Observation::Absent`]: an absent counter proves nothing
//! either way, which is different from a counter at 0. With `histogramQuantile` the
//! series are a histogram's buckets and the value is a quantile of their increases over a
//! window (see [`super::histogram_quantile`]); a scrape that leaves no observation in the
//! window (the first one, or a quiet target) is a sample without a value.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::histogram_quantile::{HistogramWindow, ScrapeError, select_buckets};
use super::http::{HttpFetcher, KeepAliveClients, status_error};
use super::prometheus_text::{self, ParseError, SampleRef};
use super::{BuildError, Probe, ProbeFuture};
use crate::config::spec::{
    Aggregation, HistogramQuantileSpec, LabelMatcher, MetricSelector, MetricsProbeSpec, StatusRange,
};
use crate::sample::{ErrorClass, Observation, ProbeError};

/// The `metrics` probe.
#[derive(Debug)]
pub struct MetricsProbe {
    fetcher: HttpFetcher,
    reader: SeriesReader,
}

impl MetricsProbe {
    /// Builds the probe for `spec`.
    pub fn new(spec: &MetricsProbeSpec) -> Result<Self, BuildError> {
        Ok(MetricsProbe {
            // A keep-alive connection of its own, not one shared with other probes of the
            // server: counters are read as increases between scrapes, and behind a load
            // balancer a shared pool's connections may reach different servers.
            fetcher: HttpFetcher::new(&spec.http, &KeepAliveClients::default())?,
            reader: SeriesReader::new(
                &spec.selector,
                spec.aggregation,
                spec.histogram_quantile.as_ref(),
            )?,
        })
    }

    async fn run(&self) -> Observation {
        let started = self.reader.clock();
        let response = match self.fetcher.send().await {
            Ok(r) => r,
            Err(e) => return Observation::Failed(e),
        };
        let status = response.status();
        if !status.is_success() {
            let error = status_error(
                &response,
                &[StatusRange {
                    low: 200,
                    high: 299,
                }],
            );
            self.fetcher.drain(response).await;
            return Observation::Failed(error);
        }
        let body = match self.fetcher.read_body(response).await {
            Ok(b) => b,
            Err(e) => return Observation::Failed(e),
        };
        let text = String::from_utf8_lossy(&body);
        match self.reader.read(&text, started) {
            Ok(reading) => reading.observation(),
            // A body that echoes the request (an error page quoting headers) must not carry
            // the token into the sample.
            Err(e) => Observation::Failed(self.fetcher.scrub(e)),
        }
    }
}

impl Probe for MetricsProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run().boxed()
    }
}

/// What a scrape says, before it becomes an [`Observation`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// The value.
    Value(f64),
    /// The series are there but give no value (a histogram without observations in its
    /// window): a sample the condition cannot judge.
    NoValue,
    /// No series is selected.
    Absent,
}

impl Reading {
    /// The observation a probe reports for this reading.
    pub fn observation(self) -> Observation {
        match self {
            Reading::Value(v) => Observation::Ok { value: Some(v) },
            Reading::NoValue => Observation::Ok { value: None },
            Reading::Absent => Observation::Absent,
        }
    }
}

/// How a probe turns a scrape into its value: the selected series reduced by an
/// aggregation, or (with `histogramQuantile`) a quantile of a histogram over a window,
/// which needs state kept from scrape to scrape. Shared by the `metrics` probe and the
/// `apiserver` probe's `series`.
#[derive(Debug)]
pub struct SeriesReader {
    selector: Selector,
    aggregation: Aggregation,
    histogram: Option<HistogramReader>,
}

/// The `histogramQuantile` part of a [`SeriesReader`].
#[derive(Debug)]
struct HistogramReader {
    by: Vec<String>,
    /// The series and quantile in PromQL, for logs.
    expression: String,
    /// Scrape times are measured from here (monotonic, unlike sample timestamps).
    origin: Instant,
    /// The window and the group last logged as the one giving the value. A std mutex:
    /// it is held for a fold, never across an await.
    state: Mutex<(HistogramWindow, Option<String>)>,
}

impl SeriesReader {
    /// Compiles the selector; `histogram` turns on the histogram quantile.
    pub fn new(
        selector: &MetricSelector,
        aggregation: Aggregation,
        histogram: Option<&HistogramQuantileSpec>,
    ) -> Result<Self, BuildError> {
        Ok(SeriesReader {
            selector: Selector::new(&selector.metric, &selector.matchers)?,
            aggregation,
            histogram: histogram.map(|spec| HistogramReader {
                by: spec.by.clone(),
                expression: format!(
                    "p{} of {selector} over {}",
                    spec.quantile * 100.0,
                    humantime::format_duration(spec.window)
                ),
                origin: Instant::now(),
                state: Mutex::new((HistogramWindow::new(spec), None)),
            }),
        })
    }

    /// The time to stamp a scrape with; take it before sending the request.
    pub fn clock(&self) -> Duration {
        self.histogram
            .as_ref()
            .map_or(Duration::ZERO, |h| h.origin.elapsed())
    }

    /// The reading of one scrape's body, started at `started` (from [`Self::clock`]).
    /// A body that is not valid metrics text (or, for a histogram, not valid buckets)
    /// fails the sample with `invalid_response` and leaves earlier scrapes' state as it
    /// was.
    pub fn read(&self, text: &str, started: Duration) -> Result<Reading, ProbeError> {
        let invalid =
            |e: &dyn std::fmt::Display| ProbeError::new(ErrorClass::InvalidResponse, e.to_string());
        let Some(h) = &self.histogram else {
            return match reduce(text, &self.selector, self.aggregation) {
                Ok(Some(v)) => Ok(Reading::Value(v)),
                Ok(None) => Ok(Reading::Absent),
                // The invariant already names the target; the line number is what helps.
                Err(e) => Err(invalid(&e)),
            };
        };
        let buckets = select_buckets(text, &self.selector, &h.by).map_err(|e| invalid(&e))?;
        // A poisoned lock means a bug panicked mid-fold; reading on beats failing every
        // later sample of the run.
        let mut guard = h.state.lock().unwrap_or_else(|p| p.into_inner());
        let (window, logged) = &mut *guard;
        window
            .fold(started, &buckets)
            .map_err(|e: ScrapeError| invalid(&e))?;
        if buckets.is_empty() {
            return Ok(Reading::Absent);
        }
        let Some(chosen) = window.reduce(self.aggregation) else {
            tracing::debug!(
                series = %h.expression,
                buckets = buckets.len(),
                "no observations in the window"
            );
            return Ok(Reading::NoValue);
        };
        // Which group gives the value is what a reader of a violation needs (which verb,
        // which resource); log it when it changes, not on every sample.
        if logged.as_deref() != Some(chosen.group.as_str()) {
            tracing::info!(
                series = %h.expression,
                group = %chosen.group,
                value = chosen.value,
                observations = chosen.observations,
                "{} group is now {{{}}} at {}",
                self.aggregation.as_str(),
                chosen.group,
                chosen.value
            );
            *logged = Some(chosen.group.clone());
        }
        Ok(Reading::Value(chosen.value))
    }
}

/// A compiled selector: metric name plus matchers with fully anchored regexes.
#[derive(Debug)]
pub struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// One label matcher, ready to evaluate.
#[derive(Debug)]
enum Matcher {
    Equal(String, String),
    NotEqual(String, String),
    Regex(String, regex::Regex),
    NotRegex(String, regex::Regex),
}

impl Matcher {
    /// Whether the matcher holds for `sample`. A label the sample lacks counts as "".
    fn holds(&self, sample: &SampleRef<'_>) -> bool {
        let label = match self {
            Matcher::Equal(l, _) | Matcher::NotEqual(l, _) => l,
            Matcher::Regex(l, _) | Matcher::NotRegex(l, _) => l,
        };
        let value = sample.label(label);
        let value = value.as_deref().unwrap_or("");
        match self {
            Matcher::Equal(_, v) => value == v,
            Matcher::NotEqual(_, v) => value != v,
            Matcher::Regex(_, r) => r.is_match(value),
            Matcher::NotRegex(_, r) => !r.is_match(value),
        }
    }
}

impl Selector {
    /// Compiles `metric` and `matchers`. Regexes are anchored (`^(?:re)$`) because PromQL
    /// matchers match the whole value; anchoring an already anchored regex is harmless.
    pub fn new(metric: &str, matchers: &[LabelMatcher]) -> Result<Self, BuildError> {
        let anchored = |label: &str, re: &regex::Regex| {
            regex::Regex::new(&format!("^(?:{})$", re.as_str())).map_err(|e| {
                BuildError::MatcherRegex {
                    label: label.to_string(),
                    regex: re.as_str().to_string(),
                    reason: e.to_string(),
                }
            })
        };
        let matchers = matchers
            .iter()
            .map(|m| {
                Ok(match m {
                    LabelMatcher::Equal(l, v) => Matcher::Equal(l.clone(), v.clone()),
                    LabelMatcher::NotEqual(l, v) => Matcher::NotEqual(l.clone(), v.clone()),
                    LabelMatcher::Regex(l, r) => Matcher::Regex(l.clone(), anchored(l, r)?),
                    LabelMatcher::NotRegex(l, r) => Matcher::NotRegex(l.clone(), anchored(l, r)?),
                })
            })
            .collect::<Result<_, BuildError>>()?;
        Ok(Selector {
            metric: metric.to_string(),
            matchers,
        })
    }

    /// Whether `sample` is selected. A label the sample lacks counts as "".
    pub(crate) fn selects(&self, sample: &SampleRef<'_>) -> bool {
        if sample.name != self.metric {
            return false;
        }
        self.matchers.iter().all(|m| m.holds(sample))
    }
}

/// Parses `text` and reduces the selected samples; `Ok(None)` when none is selected.
/// The whole body is syntax-checked even after matches are found, so a truncated or
/// corrupted scrape fails instead of yielding a partial sum.
pub fn reduce(
    text: &str,
    selector: &Selector,
    aggregation: Aggregation,
) -> Result<Option<f64>, ParseError> {
    let mut count = 0usize;
    let mut acc = 0.0f64;
    for sample in prometheus_text::samples(text) {
        let sample = sample?;
        if !selector.selects(&sample) {
            continue;
        }
        let v = sample.value;
        acc = if count == 0 {
            v
        } else {
            match aggregation {
                Aggregation::Sum => acc + v,
                // f64::max/min ignore a NaN operand, so one NaN series does not hide the
                // others; all-NaN stays NaN.
                Aggregation::Max => acc.max(v),
                Aggregation::Min => acc.min(v),
                Aggregation::Count => acc,
            }
        };
        count += 1;
    }
    Ok(match (count, aggregation) {
        (0, _) => None,
        (n, Aggregation::Count) => Some(n as f64),
        (_, _) => Some(acc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::{MetricSelector, ProbeSpec};
    use crate::probe::testutil::*;

    fn selector(metric: &str, matchers: Vec<LabelMatcher>) -> Selector {
        Selector::new(metric, &matchers).unwrap()
    }

    fn re(s: &str) -> regex::Regex {
        regex::Regex::new(s).unwrap()
    }

    const BODY: &str = "# TYPE req_total counter\n\
        req_total{code=\"200\",verb=\"GET\"} 10\n\
        req_total{code=\"500\",verb=\"GET\"} 2\n\
        req_total{code=\"503\",verb=\"LIST\"} 5\n\
        req_total{code=\"200\"} 1\n\
        req_total_created 1700000000\n\
        other 99\n";

    #[test]
    fn aggregations() {
        let all = selector("req_total", vec![]);
        assert_eq!(reduce(BODY, &all, Aggregation::Sum).unwrap(), Some(18.0));
        assert_eq!(reduce(BODY, &all, Aggregation::Max).unwrap(), Some(10.0));
        assert_eq!(reduce(BODY, &all, Aggregation::Min).unwrap(), Some(1.0));
        assert_eq!(reduce(BODY, &all, Aggregation::Count).unwrap(), Some(4.0));
    }

    #[test]
    fn matchers() {
        let sum = |m: Vec<LabelMatcher>| {
            reduce(BODY, &selector("req_total", m), Aggregation::Sum).unwrap()
        };
        assert_eq!(
            sum(vec![LabelMatcher::Equal("code".into(), "500".into())]),
            Some(2.0)
        );
        assert_eq!(
            sum(vec![LabelMatcher::NotEqual("code".into(), "200".into())]),
            Some(7.0)
        );
        assert_eq!(
            sum(vec![LabelMatcher::Regex("code".into(), re("5.."))]),
            Some(7.0)
        );
        // Regexes match the whole value: "5" alone does not match "500".
        assert_eq!(sum(vec![LabelMatcher::Regex("code".into(), re("5"))]), None);
        assert_eq!(
            sum(vec![LabelMatcher::Regex("code".into(), re("2..|5.."))]),
            Some(18.0)
        );
        assert_eq!(
            sum(vec![LabelMatcher::NotRegex("code".into(), re("5.."))]),
            Some(11.0)
        );
        // An absent label equals "".
        assert_eq!(
            sum(vec![LabelMatcher::Equal("verb".into(), "".into())]),
            Some(1.0)
        );
        assert_eq!(
            sum(vec![LabelMatcher::NotEqual("verb".into(), "".into())]),
            Some(17.0)
        );
        assert_eq!(
            sum(vec![
                LabelMatcher::Equal("verb".into(), "GET".into()),
                LabelMatcher::Regex("code".into(), re("5.*")),
            ]),
            Some(2.0)
        );
    }

    #[test]
    fn absent_and_malformed() {
        assert_eq!(
            reduce(BODY, &selector("missing_total", vec![]), Aggregation::Sum).unwrap(),
            None
        );
        let bad = "a 1\nb{x=\"1\"} 2\nc\n";
        let e = reduce(bad, &selector("a", vec![]), Aggregation::Sum).unwrap_err();
        assert_eq!(e.to_string(), "line 3: expected value after metric name");
    }

    #[test]
    fn realistic_body() {
        let body = crate::probe::prometheus_text::tests_support::APISERVER_BODY;
        let five_xx = selector(
            "apiserver_request_total",
            vec![LabelMatcher::Regex("code".into(), re("5.."))],
        );
        assert_eq!(reduce(body, &five_xx, Aggregation::Sum).unwrap(), Some(6.0));
        assert_eq!(
            reduce(body, &five_xx, Aggregation::Count).unwrap(),
            Some(3.0)
        );
        let mismatch = selector(
            "apiserver_validation_declarative_validation_mismatch_total",
            vec![],
        );
        assert_eq!(
            reduce(body, &mismatch, Aggregation::Sum).unwrap(),
            Some(0.0)
        );
    }

    fn metrics_spec(
        url: &str,
        metric: &str,
        matchers: Vec<LabelMatcher>,
        aggregation: Aggregation,
    ) -> ProbeSpec {
        ProbeSpec::Metrics(MetricsProbeSpec {
            http: http_spec(url),
            selector: MetricSelector {
                metric: metric.to_string(),
                matchers,
            },
            aggregation,
            histogram_quantile: None,
        })
    }

    async fn observe_spec(spec: &ProbeSpec) -> Observation {
        guarded(
            crate::probe::build(spec, &Default::default())
                .unwrap()
                .observe(),
        )
        .await
    }

    #[tokio::test]
    async fn scrapes_a_real_endpoint() {
        let server = TestHttpServer::start(|req| match req.uri().path() {
            "/metrics" => reply(200, BODY),
            "/broken" => reply(200, "ok 1\nnot valid metrics text\n"),
            _ => reply(503, "not ready"),
        })
        .await;
        let url = server.url("/metrics");
        let five_xx = vec![LabelMatcher::Regex("code".into(), re("5.."))];
        assert_eq!(
            observe_spec(&metrics_spec(&url, "req_total", five_xx, Aggregation::Sum)).await,
            Observation::Ok { value: Some(7.0) }
        );
        assert_eq!(
            observe_spec(&metrics_spec(&url, "req_total", vec![], Aggregation::Count)).await,
            Observation::Ok { value: Some(4.0) }
        );
        assert_eq!(
            observe_spec(&metrics_spec(&url, "nope_total", vec![], Aggregation::Sum)).await,
            Observation::Absent
        );
        match observe_spec(&metrics_spec(
            &server.url("/broken"),
            "ok",
            vec![],
            Aggregation::Sum,
        ))
        .await
        {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::InvalidResponse);
                assert_eq!(e.message, "line 2: invalid value \"valid\"");
            }
            other => panic!("{other:?}"),
        }
        match observe_spec(&metrics_spec(
            &server.url("/down"),
            "ok",
            vec![],
            Aggregation::Sum,
        ))
        .await
        {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::HttpStatus);
                assert_eq!(e.message, "status 503, expected 200-299");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A histogramQuantile metrics probe on a real HTTP server whose histogram grows by
    /// one request per scrape: the first scrape is a baseline (a sample without value),
    /// then the value is the quantile of what arrived since; a broken scrape fails the
    /// sample and leaves the window as it was; no series is absent.
    #[tokio::test]
    async fn histogram_quantile_scrapes_keep_their_window() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let scrapes = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = scrapes.clone();
        let server = TestHttpServer::start(move |req| {
            if req.uri().path() == "/empty" {
                return reply(200, "other_metric 1\n");
            }
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if n == 2 {
                return reply(200, "h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} oops\n");
            }
            // Every scrape, one more request, slower than 1 s.
            reply(
                200,
                &format!(
                    "h_bucket{{le=\"1\"}} 10\nh_bucket{{le=\"+Inf\"}} {}\n",
                    10 + n
                ),
            )
        })
        .await;
        let spec = |path: &str| {
            let mut spec = metrics_spec(&server.url(path), "h_bucket", vec![], Aggregation::Max);
            if let ProbeSpec::Metrics(m) = &mut spec {
                m.histogram_quantile = Some(HistogramQuantileSpec {
                    quantile: 0.5,
                    window: std::time::Duration::from_secs(300),
                    by: vec![],
                });
            }
            crate::probe::build(&spec, &Default::default()).unwrap()
        };
        let probe = spec("/metrics");
        assert_eq!(probe.observe().await, Observation::Ok { value: None });
        assert_eq!(probe.observe().await, Observation::Ok { value: Some(1.0) });
        match probe.observe().await {
            Observation::Failed(e) => {
                assert_eq!(e.class, ErrorClass::InvalidResponse);
                assert_eq!(e.message, "line 2: invalid value \"oops\"");
            }
            other => panic!("{other:?}"),
        }
        // Two more requests since the baseline: still all slow, and nothing was lost.
        assert_eq!(probe.observe().await, Observation::Ok { value: Some(1.0) });
        assert_eq!(spec("/empty").observe().await, Observation::Absent);
    }

    #[tokio::test]
    async fn body_cap_applies_to_scrapes() {
        let big = "x_total 1\n".repeat(1000);
        let server = TestHttpServer::start(move |_| reply(200, &big)).await;
        let mut spec = metrics_spec(&server.url("/metrics"), "x_total", vec![], Aggregation::Sum);
        if let ProbeSpec::Metrics(m) = &mut spec {
            m.http.max_body_bytes = 1000;
        }
        match observe_spec(&spec).await {
            Observation::Failed(e) => assert_eq!(e.class, ErrorClass::BodyTooLarge),
            other => panic!("{other:?}"),
        }
    }
}
