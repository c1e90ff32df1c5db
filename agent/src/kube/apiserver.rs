//! The `apiserver` probe: a GET of an API server path through the agent's Kubernetes
//! client, so it authenticates as the agent (ServiceAccount or kubeconfig user) and
//! trusts the cluster's CA without any of it in the invariant file.
//!
//! `connection: reused` sends every sample over the shared keep-alive pool (what a
//! long-running client sees); `connection: new` uses a client without a pool and sends
//! `Connection: close`, so each sample dials and handshakes (what a new client sees).
//! The status must be 2xx: 401 fails as `unauthorized`, 403 as `forbidden` (naming what
//! RBAC must grant), anything else as `http_status` with the API server's message. With
//! `series`, the body is Prometheus text read like the `metrics` probe's (a reduction of
//! the selected series, or a `histogramQuantile` over a window).

use futures_util::FutureExt;
use http::header::{ACCEPT, CONNECTION};
use http::{HeaderValue, Request};

use super::KubeContext;
use super::error::{from_client_error, from_status};
use crate::config::spec::{ApiserverProbeSpec, BodyMatch, ConnectionMode};
use crate::probe::http::{Prefixed, check_body, read_capped};
use crate::probe::metrics::{Reading, SeriesReader};
use crate::probe::{BuildError, Probe, ProbeFuture};
use crate::sample::{ErrorClass, Observation, ProbeError};

/// The `apiserver` probe.
pub struct ApiserverProbe {
    client: kube::Client,
    server: String,
    path: String,
    connection: ConnectionMode,
    body_match: Option<BodyMatch>,
    series: Option<SeriesReader>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for ApiserverProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiserverProbe")
            .field("server", &self.server)
            .field("path", &self.path)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl ApiserverProbe {
    /// Builds the probe for `spec` on the shared clients of `kube`.
    pub fn new(spec: &ApiserverProbeSpec, kube: &KubeContext) -> Result<Self, BuildError> {
        let series = match &spec.series {
            Some(s) => Some(SeriesReader::new(
                s,
                spec.aggregation,
                spec.histogram_quantile.as_ref(),
            )?),
            None => None,
        };
        Ok(ApiserverProbe {
            client: kube.client(spec.connection),
            server: kube.server().to_string(),
            path: spec.path.clone(),
            connection: spec.connection,
            body_match: spec.body_match.clone(),
            series,
            max_body_bytes: spec.max_body_bytes,
        })
    }

    async fn run(&self) -> Result<Reading, ProbeError> {
        let started = self.series.as_ref().map(SeriesReader::clock);
        let mut request = Request::get(self.path.as_str());
        if self.connection == ConnectionMode::New {
            request = request.header(CONNECTION, HeaderValue::from_static("close"));
        }
        if self.series.is_some() {
            request = request.header(ACCEPT, HeaderValue::from_static("text/plain"));
        }
        let request = request
            .body(kube::client::Body::empty())
            .map_err(|e| ProbeError::new(ErrorClass::Other, format!("invalid request: {e}")))?;
        let response = self
            .client
            .send(request)
            .await
            .map_err(|e| from_client_error(&e, &self.server))?;
        let status = response.status();
        let body = self.read_body(response).await;
        if !status.is_success() {
            let text = body.unwrap_or_default();
            // Error replies are a Status object; a plain text one becomes its message.
            let mut parsed = serde_json::from_slice::<kube::core::Status>(&text)
                .ok()
                .filter(|s| !s.message.is_empty())
                .unwrap_or_else(|| {
                    let message: String =
                        String::from_utf8_lossy(&text).chars().take(200).collect();
                    kube::core::Status::failure(message.trim(), "")
                });
            parsed.code = status.as_u16();
            return Err(from_status(&parsed));
        }
        let body = body?;
        if let Some(matcher) = &self.body_match {
            check_body(&body, matcher)?;
        }
        let (Some(reader), Some(started)) = (&self.series, started) else {
            // Without series the sample has no value (`NoValue` is `Ok { value: None }`).
            return Ok(Reading::NoValue);
        };
        reader.read(&String::from_utf8_lossy(&body), started)
    }

    /// Reads the body under the cap; the rest is never read.
    async fn read_body(
        &self,
        response: http::Response<kube::client::Body>,
    ) -> Result<Vec<u8>, ProbeError> {
        let source = Prefixed("of", &self.path);
        read_capped(response, self.max_body_bytes, source, |e| {
            from_client_error(&kube::Error::Service(e.into()), &self.server)
        })
        .await
    }
}

impl Probe for ApiserverProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run()
            .map(|result| match result {
                Ok(reading) => reading.observation(),
                Err(e) => Observation::Failed(e),
            })
            .boxed()
    }
}
