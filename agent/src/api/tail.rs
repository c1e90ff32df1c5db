//! One Tail stream: the request checked into a [`TailPlan`], then the stream itself.
//!
//! The stream is pulled by tonic only as fast as the client reads (HTTP/2 flow control),
//! and reads the feed's broadcast receiver directly: no task and no queue per subscriber.
//! A client that stops reading stops the pulling; the broadcast then overwrites what this
//! subscriber has not read, and the next pull reports `Lost` with the count. So a slow or
//! stuck client holds only its connection's buffers, never the engine or other
//! subscribers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::Status;

use super::feed::{Catalog, Feed, FeedEvent, FeedMessage, History};
use super::{convert, proto};
use crate::engine::Snapshots;

/// The response stream of one Tail call.
pub type TailStream = Pin<Box<dyn Stream<Item = Result<proto::TailResponse, Status>> + Send>>;

/// Most names (or label pairs) listed in an error message.
const MAX_LISTED: usize = 20;

/// What a checked Tail request asks for.
#[derive(Debug)]
pub struct TailPlan {
    /// Per invariant index: whether the request selects it.
    pub wanted: Vec<bool>,
    /// The request's filters, for invariants a configuration change starts later.
    pub filter: Filter,
    /// Leave samples out.
    pub transitions_only: bool,
    /// History to replay first.
    pub history: History,
}

/// What a Tail request selects: invariants by name (any, when empty) that carry all the
/// labels.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    names: BTreeSet<String>,
    labels: BTreeMap<String, String>,
}

impl Filter {
    fn of(request: &proto::TailRequest) -> Self {
        Filter {
            names: request.invariants.iter().cloned().collect(),
            labels: request
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Whether the running invariant at `index` of `catalog` is selected.
    fn selects(&self, catalog: &Catalog, index: usize) -> bool {
        let (Some(name), Some(labels)) = (catalog.names.get(index), catalog.labels.get(index))
        else {
            return false;
        };
        catalog.running.get(index).copied().unwrap_or(false)
            && (self.names.is_empty() || self.names.contains(name))
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

/// Checks `request` against the running invariants of `feed`. Unknown names and filters
/// that select nothing are `INVALID_ARGUMENT`, so a typo never tails silence.
pub fn plan(request: &proto::TailRequest, feed: &Feed) -> Result<TailPlan, Status> {
    check_filter_size(request)?;
    let catalog = feed.catalog();
    let names: Vec<String> = catalog.running_names().cloned().collect();
    let unknown: Vec<&str> = request
        .invariants
        .iter()
        .filter(|n| !names.contains(n))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Status::invalid_argument(unknown_names(&unknown, &names)));
    }
    let filter = Filter::of(request);
    let wanted: Vec<bool> = (0..catalog.names.len())
        .map(|i| filter.selects(&catalog, i))
        .collect();
    if !wanted.contains(&true) && !names.is_empty() {
        return Err(Status::invalid_argument(no_match(request, &catalog)));
    }
    use proto::tail_request::History as Wire;
    let history = match &request.history {
        None => History::None,
        Some(Wire::Last(n)) => History::Last(*n as usize),
        Some(Wire::Since(t)) => History::Since(convert::from_timestamp(t, "since")?),
    };
    Ok(TailPlan {
        wanted,
        filter,
        transitions_only: request.transitions_only,
        history,
    })
}

/// Most names and labels one Tail request may filter by. The checks below cost names ×
/// invariants, so they are bounded before any work is done.
const MAX_FILTERS: usize = 1000;

/// Longest name, label key or label value accepted in a filter (invariant names are DNS
/// labels; label keys and values follow Kubernetes' limits, well under this).
const MAX_FILTER_BYTES: usize = 317;

fn check_filter_size(request: &proto::TailRequest) -> Result<(), Status> {
    if request.invariants.len() + request.labels.len() > MAX_FILTERS {
        return Err(Status::invalid_argument(format!(
            "too many filters ({} names and {} labels; at most {MAX_FILTERS} in all): \
             filter by labels, or tail everything and filter on your side",
            request.invariants.len(),
            request.labels.len()
        )));
    }
    let too_long = request
        .invariants
        .iter()
        .chain(request.labels.keys())
        .chain(request.labels.values())
        .any(|s| s.len() > MAX_FILTER_BYTES);
    if too_long {
        return Err(Status::invalid_argument(format!(
            "a name, label key or label value is longer than {MAX_FILTER_BYTES} bytes, \
             so it cannot match any invariant"
        )));
    }
    Ok(())
}

fn unknown_names(unknown: &[&str], names: &[String]) -> String {
    let mut text = String::new();
    for name in unknown {
        let close: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| is_close(name, n))
            .take(3)
            .collect();
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!("unknown invariant {name:?}"));
        if !close.is_empty() {
            text.push_str(&format!(" (did you mean {}?)", quoted(&close).join(" or ")));
        }
    }
    format!(
        "{text}. This agent watches: {}",
        listed(names.iter().map(String::as_str))
    )
}

fn no_match(request: &proto::TailRequest, catalog: &Catalog) -> String {
    let asked: BTreeMap<&String, &String> = request.labels.iter().collect();
    let asked = asked
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let in_use: BTreeSet<String> = catalog
        .labels
        .iter()
        .zip(&catalog.running)
        .filter(|(_, running)| **running)
        .flat_map(|(l, _)| l.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let scope = if request.invariants.is_empty() {
        "no invariant".to_string()
    } else {
        format!("none of {}", quoted(&request.invariants).join(", "))
    };
    let in_use = if in_use.is_empty() {
        "none".to_string()
    } else {
        listed(in_use.iter().map(String::as_str))
    };
    format!("{scope} has all the labels {asked}. Labels in use: {in_use}")
}

fn quoted<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    names.iter().map(|n| format!("{:?}", n.as_ref())).collect()
}

fn listed<'a>(items: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = items.len();
    let mut text = items.take(MAX_LISTED).collect::<Vec<_>>().join(", ");
    if total > MAX_LISTED {
        text.push_str(&format!(" and {} more", total - MAX_LISTED));
    }
    text
}

/// Whether `typed` looks like a misspelling of `name`: a small edit distance, or one
/// contains the other.
fn is_close(typed: &str, name: &str) -> bool {
    let limit = (name.len() / 4).clamp(1, 3);
    name.contains(typed) || typed.contains(name) || edit_distance(typed, name) <= limit
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Starts the stream for `plan`: snapshot, history, `Live`, then live events until the
/// run ends. `permit` counts the stream against the agent's limit while it lives.
pub fn stream(
    feed: &Feed,
    plan: TailPlan,
    snapshots: &Snapshots,
    permit: OwnedSemaphorePermit,
) -> TailStream {
    let subscription = feed.subscribe(&plan.wanted, plan.history);
    let snapshot = snapshot(feed, &subscription.live, snapshots);
    let mut replay: VecDeque<Arc<FeedEvent>> = subscription.history.into();
    if plan.transitions_only {
        replay.retain(|e| !e.is_sample());
    }
    let state = TailState {
        feed: feed.clone(),
        catalog: feed.catalog(),
        filter: plan.filter,
        snapshot: Some(snapshot),
        replay,
        live_sent: false,
        receiver: (!subscription.ended).then_some(subscription.receiver),
        wanted: plan.wanted,
        transitions_only: plan.transitions_only,
        done: false,
        _permit: permit,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let next = state.next().await?;
            Some((Ok(next), state))
        },
    ))
}

/// The first message: run facts and the status of every selected invariant (see
/// [`Feed::statuses`]), exact as of the subscription but for violations and disruption.
fn snapshot(
    feed: &Feed,
    live: &[(usize, super::feed::LiveState)],
    snapshots: &Snapshots,
) -> proto::TailResponse {
    marker(proto::tail_response::Event::Snapshot(proto::Snapshot {
        run: Some(feed.run_info().clone()),
        invariants: feed.statuses(live, snapshots),
    }))
}

fn marker(event: proto::tail_response::Event) -> proto::TailResponse {
    proto::TailResponse {
        sequence: 0,
        replay: false,
        event: Some(event),
    }
}

/// A configuration change started invariants after the subscription: those `filter`
/// selects are followed from their first event on.
fn learn_new_invariants(catalog: &Catalog, filter: &Filter, wanted: &mut Vec<bool>) {
    for index in wanted.len()..catalog.names.len() {
        wanted.push(filter.selects(catalog, index));
    }
}

/// Whether a subscriber that wants the invariants set in `wanted` gets `event`.
fn selects(wanted: &[bool], transitions_only: bool, event: &FeedEvent) -> bool {
    wanted.get(event.invariant).copied().unwrap_or(false)
        && !(transitions_only && event.is_sample())
}

struct TailState {
    /// For invariant names.
    feed: Feed,
    /// The invariants as last looked up; refreshed when an event names one it lacks.
    catalog: Arc<Catalog>,
    /// Selects invariants started after the subscription.
    filter: Filter,
    snapshot: Option<proto::TailResponse>,
    replay: VecDeque<Arc<FeedEvent>>,
    live_sent: bool,
    /// `None` when the run had ended before the subscription.
    receiver: Option<broadcast::Receiver<Arc<FeedEvent>>>,
    wanted: Vec<bool>,
    transitions_only: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl TailState {
    /// The next message, or `None` once `RunEnded` was sent.
    async fn next(&mut self) -> Option<proto::TailResponse> {
        use proto::tail_response::Event;
        if let Some(snapshot) = self.snapshot.take() {
            return Some(snapshot);
        }
        if let Some(event) = self.replay.pop_front() {
            return Some(self.response(&event, true));
        }
        if !self.live_sent {
            self.live_sent = true;
            return Some(marker(Event::Live(proto::Live {})));
        }
        if self.done {
            return None;
        }
        let Some(receiver) = self.receiver.as_mut() else {
            return Some(self.finish());
        };
        loop {
            match receiver.recv().await {
                Ok(event) => match event.message {
                    FeedMessage::RunEnded => return Some(self.finish()),
                    _ if event.invariant >= self.wanted.len() => {
                        self.catalog = self.feed.catalog();
                        learn_new_invariants(&self.catalog, &self.filter, &mut self.wanted);
                        if selects(&self.wanted, self.transitions_only, &event) {
                            return Some(self.response(&event, false));
                        }
                    }
                    _ if selects(&self.wanted, self.transitions_only, &event) => {
                        return Some(self.response(&event, false));
                    }
                    _ => {}
                },
                Err(RecvError::Lagged(events)) => {
                    return Some(marker(Event::Lost(proto::Lost { events })));
                }
                // The feed is gone without an end (the agent is stopping): end anyway.
                Err(RecvError::Closed) => return Some(self.finish()),
            }
        }
    }

    fn response(&self, event: &FeedEvent, replay: bool) -> proto::TailResponse {
        let name = self.catalog.names.get(event.invariant);
        event.response(name.map_or("", String::as_str), replay)
    }

    fn finish(&mut self) -> proto::TailResponse {
        self.done = true;
        self.receiver = None;
        marker(proto::tail_response::Event::RunEnded(proto::RunEnded {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: apiserver-readyz
    description: d
    owner: o
    labels: {component: apiserver}
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
  - name: dns-resolves
    description: d
    owner: o
    labels: {component: dns}
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
"#;

    fn feed() -> Feed {
        let set = crate::config::parse_str("f.yaml", FILE).unwrap();
        Feed::new(&set.invariants, proto::RunInfo::default(), 10, 16)
    }

    #[test]
    fn names_and_labels_select_invariants() {
        let f = feed();
        let all = plan(&proto::TailRequest::default(), &f).unwrap();
        assert_eq!(all.wanted, vec![true, true]);
        assert_eq!(all.history, History::None);
        let dns = proto::TailRequest {
            labels: [("component".to_string(), "dns".to_string())].into(),
            history: Some(proto::tail_request::History::Last(5)),
            ..Default::default()
        };
        let p = plan(&dns, &f).unwrap();
        assert_eq!((p.wanted, p.history), (vec![false, true], History::Last(5)));
        let one = proto::TailRequest {
            invariants: vec!["apiserver-readyz".into()],
            ..Default::default()
        };
        assert_eq!(plan(&one, &f).unwrap().wanted, vec![true, false]);
    }

    #[test]
    fn typos_and_empty_selections_are_invalid_arguments_that_help() {
        let f = feed();
        let typo = proto::TailRequest {
            invariants: vec!["apiserver-redyz".into()],
            ..Default::default()
        };
        let e = plan(&typo, &f).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "unknown invariant \"apiserver-redyz\" (did you mean \"apiserver-readyz\"?). \
             This agent watches: apiserver-readyz, dns-resolves"
        );
        let nothing = proto::TailRequest {
            invariants: vec!["dns-resolves".into()],
            labels: [("component".to_string(), "apiserver".to_string())].into(),
            ..Default::default()
        };
        let e = plan(&nothing, &f).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "none of \"dns-resolves\" has all the labels component=apiserver. Labels in use: \
             component=apiserver, component=dns"
        );
    }

    #[tokio::test]
    async fn the_stream_is_snapshot_history_live_events_lost_and_run_ended() {
        use crate::engine::SampleObserver;
        use crate::sample::{Observation, Sample, Timestamp};
        use futures_util::StreamExt;

        let mut f = feed();
        let sample = |at| Sample {
            at: Timestamp(at),
            latency: std::time::Duration::from_millis(1),
            observation: Observation::Ok { value: None },
        };
        f.on_sample(1, &sample(0)); // 1, replayed
        let request = proto::TailRequest {
            invariants: vec!["dns-resolves".into()],
            history: Some(proto::tail_request::History::Last(10)),
            ..Default::default()
        };
        let (_, snapshots) = tokio::sync::watch::channel(None);
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = permits.clone().try_acquire_owned().unwrap();
        let mut stream = stream(&f, plan(&request, &f).unwrap(), &snapshots, permit);
        f.on_sample(0, &sample(10)); // 2, filtered out
        for at in 0..40 {
            f.on_sample(1, &sample(100 + at)); // 3..=42, more than the buffer of 16
        }
        f.end();
        use proto::tail_response::Event;
        async fn next(stream: &mut TailStream) -> Event {
            stream.next().await.unwrap().unwrap().event.unwrap()
        }
        let Event::Snapshot(s) = next(&mut stream).await else {
            panic!("snapshot first")
        };
        assert_eq!(s.invariants.len(), 1);
        assert_eq!(s.invariants[0].samples_ok, 1);
        assert_eq!(permits.available_permits(), 0, "counted while it lives");
        assert!(
            matches!(next(&mut stream).await, Event::Sample(s) if s.invariant == "dns-resolves")
        );
        assert!(matches!(next(&mut stream).await, Event::Live(_)));
        assert!(matches!(
            next(&mut stream).await,
            Event::Lost(proto::Lost { events: 26 })
        ));
        let mut samples = 0;
        loop {
            match next(&mut stream).await {
                Event::Sample(_) => samples += 1,
                Event::RunEnded(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(samples, 15, "the 16 newest events, RunEnded among them");
        assert!(
            stream.next().await.is_none(),
            "the stream ends after RunEnded"
        );
        assert_eq!(
            permits.available_permits(),
            1,
            "released when the stream ends"
        );
    }

    #[test]
    fn oversized_filters_are_refused_before_any_matching() {
        let f = feed();
        let many = proto::TailRequest {
            invariants: (0..1001).map(|i| format!("n{i}")).collect(),
            ..Default::default()
        };
        let e = plan(&many, &f).expect_err("1001 names are refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("too many filters (1001 names"),
            "{e}"
        );
        assert!(e.message().len() < 200, "the names are not echoed back");

        let long = proto::TailRequest {
            labels: [("component".to_string(), "x".repeat(318))].into(),
            ..Default::default()
        };
        let e = plan(&long, &f).expect_err("a 318-byte label value is refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("longer than 317 bytes"), "{e}");
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("same", "same"), 0);
        assert!(!is_close("etcd", "apiserver-readyz"));
    }

    /// After a configuration change, an open stream follows the new invariants its
    /// filter selects (a changed invariant under its name, at its new index) and new
    /// requests and GetStatus know only the running set.
    #[tokio::test]
    async fn streams_and_plans_follow_a_configuration_change() {
        use crate::engine::SampleObserver;
        use crate::sample::{Observation, Sample, Timestamp};
        use futures_util::StreamExt;
        use proto::tail_response::Event;

        let mut f = feed();
        let sample = |at| Sample {
            at: Timestamp(at),
            latency: std::time::Duration::from_millis(1),
            observation: Observation::Ok { value: None },
        };
        let by_name = proto::TailRequest {
            invariants: vec!["dns-resolves".into()],
            ..Default::default()
        };
        let (_, snapshots) = tokio::sync::watch::channel(None);
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        let mut dns = stream(
            &f,
            plan(&by_name, &f).unwrap(),
            &snapshots,
            permits.clone().try_acquire_owned().unwrap(),
        );
        let mut all = stream(
            &f,
            plan(&proto::TailRequest::default(), &f).unwrap(),
            &snapshots,
            permits.clone().try_acquire_owned().unwrap(),
        );
        // dns-resolves changed (now index 2), apiserver-readyz removed, `etcd` added (3).
        let set = crate::config::parse_str("f.yaml", FILE).unwrap();
        let mut etcd = set.invariants[0].clone();
        etcd.name = "etcd".into();
        f.on_invariants_changed(&[(2, set.invariants[1].clone()), (3, etcd)], &[0, 1]);
        f.on_sample(2, &sample(10));
        f.on_sample(3, &sample(20));
        f.end();
        async fn events(stream: &mut TailStream) -> Vec<String> {
            let mut seen = Vec::new();
            while let Some(Ok(response)) = stream.next().await {
                seen.push(match response.event.unwrap() {
                    Event::Snapshot(s) => format!("snapshot {}", s.invariants.len()),
                    Event::Sample(s) => format!("sample {}", s.invariant),
                    Event::Live(_) => "live".into(),
                    Event::RunEnded(_) => "end".into(),
                    other => format!("{other:?}"),
                });
            }
            seen
        }
        assert_eq!(
            events(&mut dns).await,
            ["snapshot 1", "live", "sample dns-resolves", "end"]
        );
        assert_eq!(
            events(&mut all).await,
            [
                "snapshot 2",
                "live",
                "sample dns-resolves",
                "sample etcd",
                "end"
            ]
        );

        let removed = proto::TailRequest {
            invariants: vec!["apiserver-readyz".into()],
            ..Default::default()
        };
        let e = plan(&removed, &f).unwrap_err();
        assert!(
            e.message()
                .ends_with("This agent watches: dns-resolves, etcd"),
            "{}",
            e.message()
        );
        assert_eq!(
            plan(&by_name, &f).unwrap().wanted,
            [false, false, true, false]
        );
        let live: Vec<usize> = f.live().iter().map(|(i, _)| *i).collect();
        assert_eq!(live, [2, 3], "GetStatus shows the running invariants");
        let statuses = f.statuses(&f.live(), &snapshots);
        assert_eq!(statuses[0].name, "dns-resolves");
        assert_eq!(statuses[0].samples_ok, 1);
    }
}
