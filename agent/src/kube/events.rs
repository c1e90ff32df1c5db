//! The `events` probe: Kubernetes Events (core/v1) seen during the run.
//!
//! Two measures, both counting only what happened during the run:
//!
//! * `maxRepeats`: the highest number of times one (reason, involved object) pair
//!   occurred, summed over every Event object of the pair. This is the "events should not
//!   repeat pathologically" invariant: an event repeated 300 times means something loops.
//! * `warnings`: how many times Warning events with the listed reasons occurred.
//!
//! Occurrences come from the Event's own counters (`count`, or `series.count` for events
//! written through events.k8s.io), so repeats the API server folded into one object are
//! all counted. An Event created before the run started is a baseline: only its later
//! increments count. The values never decrease: an Event deleted by its TTL keeps what it
//! contributed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;

use super::KubeContext;
use super::watch::{Change, Consumer, SharedWatch, WatchKey, WatchedObject, lock};
use crate::config::spec::{EventsMeasure, EventsProbeSpec};
use crate::probe::{Probe, ProbeFuture};
use crate::sample::{Observation, Timestamp};

/// Most (reason, object) pairs one probe remembers. Beyond it, pairs seen only once are
/// forgotten (they cannot be pathological yet; if they repeat later they count from 0).
const MAX_PAIRS: usize = 100_000;

/// The `events` probe.
#[derive(Debug)]
pub struct EventsProbe {
    watch: Arc<SharedWatch>,
    tracker: Arc<EventTracker>,
}

impl EventsProbe {
    /// Subscribes to the (shared) watch of Events in `spec`'s namespace, or all.
    pub fn new(spec: &EventsProbeSpec, kube: &KubeContext) -> Self {
        let watch = kube.watches().watch(WatchKey {
            api_version: "v1".to_string(),
            kind: "Event".to_string(),
            namespace: spec.namespace.clone(),
            label_selector: None,
            field_selector: None,
        });
        let tracker = Arc::new(EventTracker::new(spec, Timestamp::now()));
        watch.subscribe(tracker.clone());
        EventsProbe { watch, tracker }
    }

    async fn run(&self) -> Observation {
        if let Err(e) = self.watch.wait_synced().await {
            return Observation::Failed(e);
        }
        Observation::Ok {
            value: Some(self.tracker.value()),
        }
    }
}

impl Probe for EventsProbe {
    fn observe(&self) -> ProbeFuture<'_> {
        self.run().boxed()
    }
}

/// Counts one `events` invariant's measure from the changes of an Event watch.
#[derive(Debug)]
pub struct EventTracker {
    measure: EventsMeasure,
    reasons: Vec<String>,
    exclude_reasons: Vec<String>,
    /// Start of the run, truncated to the second (Event timestamps have seconds only).
    run_start_second: i64,
    state: Mutex<TrackerState>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// Occurrences last seen, by Event uid (only Events that count for the measure).
    events: HashMap<String, u64>,
    /// Occurrences during the run, by (reason, object) pair (maxRepeats only).
    pairs: HashMap<Pair, u64>,
    max_repeats: u64,
    warnings: u64,
    /// Uids listed by a list in progress.
    relisting: Option<HashSet<String>>,
    /// Whether a list has completed (Events without a creation time listed by the first
    /// list are taken as older than the run).
    listed_once: bool,
    /// The next `max_repeats` that is logged.
    next_logged: u64,
}

/// A reason and the object an Event is about, e.g. (`BackOff`, `Pod default/web-1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pair {
    reason: String,
    object: String,
}

/// What the tracker reads from one Event.
#[derive(Debug, PartialEq)]
struct EventFacts {
    uid: String,
    reason: String,
    warning: bool,
    occurrences: u64,
    object: String,
    /// Creation time, ms since the epoch (second resolution).
    created: Option<i64>,
}

impl EventFacts {
    fn read(o: &serde_json::Value) -> Self {
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        let meta = &o["metadata"];
        let uid = match meta["uid"].as_str() {
            Some(uid) if !uid.is_empty() => uid.to_string(),
            _ => format!("{}/{}", text(&meta["namespace"]), text(&meta["name"])),
        };
        let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let occurrences = count(&o["count"]).max(count(&o["series"]["count"])).max(1);
        let involved = &o["involvedObject"];
        let object = match involved["namespace"].as_str().filter(|s| !s.is_empty()) {
            Some(ns) => format!(
                "{} {ns}/{}",
                text(&involved["kind"]),
                text(&involved["name"])
            ),
            None => format!("{} {}", text(&involved["kind"]), text(&involved["name"])),
        };
        let created = meta["creationTimestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(|t| Timestamp::from_system_time(t).0);
        EventFacts {
            uid,
            reason: text(&o["reason"]),
            warning: o["type"].as_str() == Some("Warning"),
            occurrences,
            object,
            created,
        }
    }
}

impl EventTracker {
    /// A tracker for `spec` in a run that started at `run_start`.
    pub fn new(spec: &EventsProbeSpec, run_start: Timestamp) -> Self {
        EventTracker {
            measure: spec.measure,
            reasons: spec.reasons.clone(),
            exclude_reasons: spec.exclude_reasons.clone(),
            run_start_second: run_start.0 - run_start.0.rem_euclid(1000),
            state: Mutex::new(TrackerState {
                next_logged: 5,
                ..TrackerState::default()
            }),
        }
    }

    /// The measure's current value.
    pub fn value(&self) -> f64 {
        let state = lock(&self.state);
        match self.measure {
            EventsMeasure::MaxRepeats => state.max_repeats as f64,
            EventsMeasure::Warnings => state.warnings as f64,
        }
    }

    /// Whether an Event counts for this measure at all.
    fn counts(&self, facts: &EventFacts) -> bool {
        let reason_ok = (self.reasons.is_empty() || self.reasons.contains(&facts.reason))
            && !self.exclude_reasons.contains(&facts.reason);
        reason_ok && (self.measure == EventsMeasure::MaxRepeats || facts.warning)
    }

    fn observe(&self, state: &mut TrackerState, object: &WatchedObject) -> Option<String> {
        let facts = EventFacts::read(&object.object);
        if !self.counts(&facts) {
            return None;
        }
        let new = match state.events.get(&facts.uid) {
            Some(&previous) => facts.occurrences.saturating_sub(previous),
            None => {
                let during_run = match facts.created {
                    Some(created) => created >= self.run_start_second,
                    None => state.listed_once,
                };
                if during_run { facts.occurrences } else { 0 }
            }
        };
        let seen = state.events.entry(facts.uid.clone()).or_insert(0);
        *seen = (*seen).max(facts.occurrences);
        if new > 0 {
            match self.measure {
                // Counts come from the API server: saturate rather than wrap.
                EventsMeasure::Warnings => state.warnings = state.warnings.saturating_add(new),
                EventsMeasure::MaxRepeats => self.add_repeats(state, &facts, new),
            }
        }
        Some(facts.uid)
    }

    fn add_repeats(&self, state: &mut TrackerState, facts: &EventFacts, new: u64) {
        let pair = Pair {
            reason: facts.reason.clone(),
            object: facts.object.clone(),
        };
        let total = {
            let count = state.pairs.entry(pair.clone()).or_insert(0);
            *count = count.saturating_add(new);
            *count
        };
        if total > state.max_repeats {
            state.max_repeats = total;
            if total >= state.next_logged {
                tracing::info!(
                    reason = %pair.reason,
                    object = %pair.object,
                    repeats = total,
                    "an event has repeated {total} times in this run"
                );
                while state.next_logged <= total && state.next_logged < u64::MAX {
                    state.next_logged = next_in_1_2_5(state.next_logged);
                }
            }
        }
        if state.pairs.len() > MAX_PAIRS {
            let mut keep_above = 1;
            while state.pairs.len() > MAX_PAIRS / 2 {
                state.pairs.retain(|_, c| *c > keep_above);
                keep_above = keep_above.saturating_mul(2);
            }
        }
    }
}

/// 5, 10, 20, 50, 100, 200, 500, ..., ending at `u64::MAX`.
fn next_in_1_2_5(n: u64) -> u64 {
    let mut step: u64 = 1;
    while step.checked_mul(10).is_some_and(|s| s <= n) {
        step *= 10;
    }
    let factor = match n / step {
        0..=1 => 2,
        2..=4 => 5,
        _ => 10,
    };
    step.saturating_mul(factor)
}

impl Consumer for EventTracker {
    fn apply(&self, change: Change<'_>) {
        let mut state = lock(&self.state);
        match change {
            Change::Relisting => state.relisting = Some(HashSet::new()),
            Change::Listed(o) => {
                if let Some(uid) = self.observe(&mut state, o) {
                    state.relisting.get_or_insert_with(HashSet::new).insert(uid);
                }
            }
            Change::Relisted => {
                let listed = state.relisting.take().unwrap_or_default();
                state.events.retain(|uid, _| listed.contains(uid));
                state.listed_once = true;
            }
            Change::Applied(o) => {
                self.observe(&mut state, o);
            }
            Change::Deleted(o) => {
                let facts = EventFacts::read(&o.object);
                state.events.remove(&facts.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::watch::ObjectKey;
    use serde_json::json;

    const START: i64 = 1_800_000_000_000; // a run start, ms

    fn spec(measure: EventsMeasure, reasons: &[&str], exclude: &[&str]) -> EventsProbeSpec {
        EventsProbeSpec {
            measure,
            namespace: None,
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
            exclude_reasons: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rfc3339(ms: i64) -> String {
        Timestamp(ms).to_rfc3339()
    }

    /// An Event about Pod `default/<pod>` with `count`, created at `created` (ms).
    fn event(
        uid: &str,
        reason: &str,
        kind: &str,
        pod: &str,
        count: u64,
        created: i64,
    ) -> WatchedObject {
        WatchedObject {
            key: ObjectKey {
                namespace: Some("default".into()),
                name: uid.into(),
            },
            object: json!({
                "metadata": {"name": uid, "namespace": "default", "uid": uid,
                             "creationTimestamp": rfc3339(created)},
                "reason": reason,
                "type": kind,
                "count": count,
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": pod},
            }),
        }
    }

    fn listed(tracker: &EventTracker, events: &[WatchedObject]) {
        tracker.apply(Change::Relisting);
        for e in events {
            tracker.apply(Change::Listed(e));
        }
        tracker.apply(Change::Relisted);
    }

    #[test]
    fn repeats_before_the_run_are_a_baseline() {
        let t = EventTracker::new(&spec(EventsMeasure::MaxRepeats, &[], &[]), Timestamp(START));
        let old = START - 3_600_000;
        listed(&t, &[event("e1", "BackOff", "Warning", "web", 50, old)]);
        assert_eq!(t.value(), 0.0, "50 repeats before the run do not count");
        t.apply(Change::Applied(&event(
            "e1", "BackOff", "Warning", "web", 53, old,
        )));
        assert_eq!(t.value(), 3.0);
    }

    #[test]
    fn repeats_of_one_pair_add_up_across_event_objects() {
        let t = EventTracker::new(&spec(EventsMeasure::MaxRepeats, &[], &[]), Timestamp(START));
        listed(&t, &[]);
        let during = START + 5_000;
        for count in 1..=12 {
            t.apply(Change::Applied(&event(
                "e1", "BackOff", "Warning", "web", count, during,
            )));
        }
        assert_eq!(t.value(), 12.0);
        // The same reason and object under another Event object (a new message, or the
        // first one expired) continues the count.
        t.apply(Change::Applied(&event(
            "e2", "BackOff", "Warning", "web", 10, during,
        )));
        assert_eq!(t.value(), 22.0);
        // Another object or reason is another pair.
        t.apply(Change::Applied(&event(
            "e3", "BackOff", "Warning", "db", 15, during,
        )));
        t.apply(Change::Applied(&event(
            "e4", "Pulled", "Normal", "web", 15, during,
        )));
        assert_eq!(t.value(), 22.0);
        // Deleted Events keep what they contributed.
        t.apply(Change::Deleted(&event(
            "e1", "BackOff", "Warning", "web", 12, during,
        )));
        assert_eq!(t.value(), 22.0);
    }

    #[test]
    fn series_counts_and_missing_counts() {
        let facts = EventFacts::read(&json!({
            "metadata": {"uid": "u"}, "reason": "R", "type": "Normal",
            "count": 0, "series": {"count": 7},
            "involvedObject": {"kind": "Node", "name": "n1"}
        }));
        assert_eq!(facts.occurrences, 7);
        assert_eq!(facts.object, "Node n1");
        assert_eq!(facts.created, None);
        let facts = EventFacts::read(&json!({"metadata": {"name": "x", "namespace": "d"}}));
        assert_eq!((facts.occurrences, facts.uid.as_str()), (1, "d/x"));
    }

    #[test]
    fn warnings_count_only_listed_reasons_of_warning_events() {
        let t = EventTracker::new(
            &spec(EventsMeasure::Warnings, &["FailedMount", "BackOff"], &[]),
            Timestamp(START),
        );
        let during = START + 1_000;
        listed(
            &t,
            &[event(
                "old",
                "FailedMount",
                "Warning",
                "a",
                9,
                START - 60_000,
            )],
        );
        t.apply(Change::Applied(&event(
            "e1",
            "FailedMount",
            "Warning",
            "a",
            2,
            during,
        )));
        t.apply(Change::Applied(&event(
            "e2", "BackOff", "Warning", "b", 3, during,
        )));
        t.apply(Change::Applied(&event(
            "e3", "BackOff", "Normal", "b", 5, during,
        )));
        t.apply(Change::Applied(&event(
            "e4",
            "Unhealthy",
            "Warning",
            "c",
            5,
            during,
        )));
        assert_eq!(t.value(), 5.0);
        t.apply(Change::Applied(&event(
            "old",
            "FailedMount",
            "Warning",
            "a",
            10,
            START - 60_000,
        )));
        assert_eq!(t.value(), 6.0);
    }

    #[test]
    fn excluded_reasons_never_count() {
        let t = EventTracker::new(
            &spec(EventsMeasure::MaxRepeats, &[], &["BackOff"]),
            Timestamp(START),
        );
        listed(&t, &[]);
        t.apply(Change::Applied(&event(
            "e1", "BackOff", "Warning", "web", 40, START,
        )));
        t.apply(Change::Applied(&event(
            "e2",
            "Unhealthy",
            "Warning",
            "web",
            4,
            START,
        )));
        assert_eq!(t.value(), 4.0);
    }

    #[test]
    fn a_relist_after_an_outage_counts_events_created_meanwhile() {
        let t = EventTracker::new(&spec(EventsMeasure::MaxRepeats, &[], &[]), Timestamp(START));
        listed(
            &t,
            &[event("e1", "BackOff", "Warning", "web", 2, START + 1_000)],
        );
        assert_eq!(t.value(), 2.0);
        // The watch failed; events changed while nobody watched; the relist sees them.
        listed(
            &t,
            &[
                event("e1", "BackOff", "Warning", "web", 6, START + 1_000),
                event("e2", "BackOff", "Warning", "web", 3, START + 20_000),
            ],
        );
        assert_eq!(t.value(), 9.0);
        // e1 is gone after the next relist; nothing is lost.
        listed(
            &t,
            &[event("e2", "BackOff", "Warning", "web", 3, START + 20_000)],
        );
        assert_eq!(t.value(), 9.0);
        assert_eq!(lock(&t.state).events.len(), 1);
    }

    #[test]
    fn logging_thresholds_follow_1_2_5() {
        let mut n = 5;
        let mut seen = vec![];
        for _ in 0..6 {
            seen.push(n);
            n = next_in_1_2_5(n);
        }
        assert_eq!(seen, [5, 10, 20, 50, 100, 200]);
    }

    #[test]
    fn logging_thresholds_end_at_the_largest_count_instead_of_overflowing() {
        let mut n: u64 = 5;
        for _ in 0..100 {
            n = next_in_1_2_5(n);
        }
        assert_eq!(n, u64::MAX);
        assert_eq!(next_in_1_2_5(u64::MAX), u64::MAX);
    }
}
