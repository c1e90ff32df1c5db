//! `invariant.v1.AgentService`: each RPC checks its request, then reads the feed or asks
//! the engine (through its command channel, in order) and answers. Handlers never touch
//! evaluation state themselves.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Request, Response, Status};

use super::feed::Feed;
use super::proto::agent_service_server::AgentService;
use super::{MAX_MESSAGE_BYTES, convert, proto, tail};
use crate::engine::{Command, Snapshots};
use crate::report::junit::JunitMode;
use crate::report::resume::Resumed;
use crate::report::{Report, RunStatus};
use crate::sample::Timestamp;

/// Most Tail streams open at once across all clients; each holds a little memory and a
/// share of the fan-out work.
pub const MAX_TAILERS: usize = 1024;

/// How long a call waits for the final report once the run is ending.
const FINAL_REPORT_WAIT: Duration = Duration::from_secs(2);

/// The service: handles to the feed, the engine and its snapshots.
pub struct AgentApi {
    feed: Feed,
    commands: mpsc::Sender<Command>,
    snapshots: Snapshots,
    junit_mode: JunitMode,
    tailers: Arc<Semaphore>,
    /// The run so far, when this agent resumed it (merged into every report served).
    resumed: Option<Arc<Resumed>>,
}

impl AgentApi {
    /// The service over `feed`, sending commands to the engine on `commands` and reading
    /// its `snapshots`; JUnit reports are rendered in `junit_mode`. When this agent
    /// resumed a run, reports are merged with the run so far (`resumed`).
    pub fn new(
        feed: Feed,
        commands: mpsc::Sender<Command>,
        snapshots: Snapshots,
        junit_mode: JunitMode,
        resumed: Option<Arc<Resumed>>,
    ) -> Self {
        AgentApi {
            feed,
            commands,
            snapshots,
            junit_mode,
            tailers: Arc::new(Semaphore::new(MAX_TAILERS)),
            resumed,
        }
    }

    /// This agent's report built now by the engine; once the run has ended, the final
    /// one. When the run was resumed, GetReport merges it with the run so far.
    async fn report(&self) -> Result<Arc<Report>, Status> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Report(reply)).await.is_ok()
            && let Ok(report) = answer.await
        {
            return Ok(report);
        }
        // The engine has stopped taking commands: the run is ending, and its last
        // published report is (or is about to be) the final one.
        let mut snapshots = self.snapshots.clone();
        let completed = |r: &Option<Arc<Report>>| {
            r.as_ref()
                .is_some_and(|r| r.run.status == RunStatus::Completed)
        };
        let _ = tokio::time::timeout(FINAL_REPORT_WAIT, snapshots.wait_for(completed)).await;
        let latest = snapshots.borrow().clone();
        latest.ok_or_else(|| Status::unavailable("the agent has no report yet; retry in a second"))
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type TailStream = tail::TailStream;

    async fn tail(
        &self,
        request: Request<proto::TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let plan = tail::plan(request.get_ref(), &self.feed)?;
        let permit = self.tailers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_TAILERS} Tail streams are open on this agent, the most it serves; \
                 close some (or follow fewer invariants per stream) and retry"
            ))
        })?;
        Ok(Response::new(tail::stream(
            &self.feed,
            plan,
            &self.snapshots,
            permit,
        )))
    }

    async fn get_status(
        &self,
        _request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        // From the feed and the latest snapshot, never through the engine: polling
        // GetStatus must not hold up the judging of samples.
        let live = self.feed.live();
        Ok(Response::new(proto::GetStatusResponse {
            run: Some(self.feed.run_info().clone()),
            invariants: self.feed.statuses(&live, &self.snapshots),
        }))
    }

    async fn get_report(
        &self,
        request: Request<proto::GetReportRequest>,
    ) -> Result<Response<proto::GetReportResponse>, Status> {
        let wire = request.get_ref().format;
        let format = proto::ReportFormat::try_from(wire).map_err(|_| {
            Status::invalid_argument(format!(
                "report format {wire} is not supported: use REPORT_FORMAT_JSON (1), \
                 REPORT_FORMAT_JUNIT (2), REPORT_FORMAT_HTML (3) or REPORT_FORMAT_MARKDOWN (4)"
            ))
        })?;
        let report = self.report().await?;
        let junit_mode = self.junit_mode;
        let resumed = self.resumed.clone();
        // Merging and rendering a large report take milliseconds: keep them off the
        // thread that streams to tailers.
        let rendered = tokio::task::spawn_blocking(move || {
            let report = crate::report::resume::whole_run(resumed.as_deref(), report);
            render(&report, format, junit_mode)
        })
        .await
        .map_err(|e| Status::internal(format!("rendering the report failed: {e}")))?;
        if rendered.content.len() > MAX_MESSAGE_BYTES - 1024 {
            return Err(Status::resource_exhausted(format!(
                "the rendered report is {} bytes, more than the API's {MAX_MESSAGE_BYTES}-byte \
                 message limit: read {} from the agent's report directory instead",
                rendered.content.len(),
                rendered.file_name
            )));
        }
        Ok(Response::new(rendered))
    }

    async fn annotate(
        &self,
        request: Request<proto::AnnotateRequest>,
    ) -> Result<Response<proto::AnnotateResponse>, Status> {
        let annotation = convert::annotation(request.into_inner().annotation, Timestamp::now())?;
        let start = annotation.start;
        let (ack, applied) = oneshot::channel();
        let ended = || {
            Status::failed_precondition(
                "the run has ended, so annotations are no longer recorded; the final \
                 report (GetReport, or report.json) has every annotation sent before the end",
            )
        };
        self.commands
            .send(Command::Annotate(annotation, Some(ack)))
            .await
            .map_err(|_| ended())?;
        applied.await.map_err(|_| ended())?;
        Ok(Response::new(proto::AnnotateResponse {
            start: Some(convert::timestamp(start)),
        }))
    }
}

/// Renders `report` in `format`, with its media type and a fitting file name.
fn render(
    report: &Report,
    format: proto::ReportFormat,
    junit_mode: JunitMode,
) -> proto::GetReportResponse {
    use crate::report::{REPORT_FILE, html, junit, markdown, writer};
    let (content, content_type, file_name) = match format {
        proto::ReportFormat::Unspecified | proto::ReportFormat::Json => {
            (report.to_json(), "application/json", REPORT_FILE)
        }
        proto::ReportFormat::Junit => (
            junit::render(report, junit_mode).into_bytes(),
            "application/xml",
            writer::JUNIT_FILE,
        ),
        proto::ReportFormat::Html => (
            html::render(report).into_bytes(),
            "text/html; charset=utf-8",
            writer::HTML_FILE,
        ),
        proto::ReportFormat::Markdown => (
            markdown::render(report).into_bytes(),
            "text/markdown; charset=utf-8",
            "report.md",
        ),
    };
    proto::GetReportResponse {
        content,
        content_type: content_type.to_string(),
        file_name: file_name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, RunMeta};
    use crate::sample::{ErrorClass, Observation, ProbeError, Sample};
    use crate::schedule::Event;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: api
    description: d
    owner: o
    interval: 1s
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
"#;

    fn sample(at: i64, ok: bool) -> Event {
        Event::Sample {
            invariant: 0,
            sample: Sample {
                at: Timestamp(at),
                latency: Duration::from_millis(1),
                observation: if ok {
                    Observation::Ok { value: None }
                } else {
                    Observation::Failed(ProbeError::new(ErrorClass::HttpStatus, "500"))
                },
            },
        }
    }

    /// GetStatus with an engine that never reads its commands: the call must not wait
    /// for it. Returns the response and whether a command was sent.
    async fn get_status(feed: &Feed, snapshots: Snapshots) -> (proto::GetStatusResponse, bool) {
        let (commands, mut inbox) = mpsc::channel(8);
        let api = AgentApi::new(
            feed.clone(),
            commands,
            snapshots,
            JunitMode::default(),
            None,
        );
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            api.get_status(Request::new(proto::GetStatusRequest {})),
        )
        .await
        .expect("GetStatus answers without the engine")
        .unwrap()
        .into_inner();
        (status, inbox.try_recv().is_ok())
    }

    #[tokio::test]
    async fn get_status_reads_the_feed_and_the_latest_snapshot_never_the_engine() {
        let set = crate::config::parse_str("f.yaml", FILE).unwrap();
        let run = proto::RunInfo {
            id: "r".into(),
            ..Default::default()
        };
        let feed = Feed::new(&set.invariants, run, 0, 16);
        let meta = RunMeta {
            id: "r".into(),
            started_at: Timestamp(0),
            config_files: vec![],
            node: None,
        };
        let mut engine = Engine::new(&set, meta);
        engine.observe(Box::new(feed.clone()));

        // Before the first snapshot: live state alone, no violation count yet.
        engine.handle(sample(0, true));
        let (tx, snapshots) = tokio::sync::watch::channel(None);
        let (status, asked) = get_status(&feed, snapshots.clone()).await;
        assert!(!asked, "nothing sent to the engine");
        assert_eq!(status.run.unwrap().id, "r");
        let api = &status.invariants[0];
        assert_eq!(
            (api.name.as_str(), api.state, api.samples_ok, api.violations),
            ("api", proto::State::Holding as i32, 1, 0)
        );

        // A snapshot taken in the violation, then more samples: state, counts and last
        // sample are the feed's (exact), violations and disruption the snapshot's.
        engine.handle(sample(1000, false));
        let report = Arc::new(engine.report(Timestamp(1500), RunStatus::Running));
        let disruption = report.invariants[0].summary.disruption_seconds;
        assert!(disruption > 0.0);
        tx.send_replace(Some(report));
        engine.handle(sample(2000, false));
        engine.handle(sample(3000, false));
        let (status, asked) = get_status(&feed, snapshots).await;
        assert!(!asked, "nothing sent to the engine");
        let api = &status.invariants[0];
        assert_eq!(api.state, proto::State::Violated as i32);
        assert_eq!(api.state_since, Some(convert::timestamp(Timestamp(1000))));
        assert!(!api.reason.is_empty());
        assert_eq!((api.samples_ok, api.samples_failed), (1, 3));
        let last = api.last_sample.as_ref().unwrap();
        assert_eq!(last.time, Some(convert::timestamp(Timestamp(3000))));
        assert_eq!(last.state, proto::State::Violated as i32);
        assert_eq!(api.violations, 1);
        assert_eq!(api.disruption_seconds, disruption, "as of the snapshot");
    }
}
