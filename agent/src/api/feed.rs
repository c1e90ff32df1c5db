//! The feed: every sample, missed tick and state transition the engine publishes, for
//! Tail subscribers, plus the live state GetStatus and Tail snapshots read.
//!
//! The engine publishes on its own task through [`SampleObserver`]; publishing takes one
//! short lock, numbers the event, updates the invariant's live state, keeps the event in
//! the invariant's bounded history and sends it on a broadcast channel, which never
//! blocks. The event is built only when someone can read it (history is kept, or a
//! subscriber is listening), once, and shared by the history and every subscriber.
//!
//! Events hold the agent's own compact types, not protobuf messages: each subscriber's
//! stream converts the events it sends ([`FeedEvent::response`]). tonic needs an owned
//! message per stream anyway, and converting costs the same as cloning a prebuilt
//! message, while the compact form nearly halves the history's memory (measured: about
//! 135 bytes per retained event instead of 245) and keeps the engine's thread from
//! allocating messages nobody may read.
//!
//! Subscribing takes the same lock to copy the live state and the requested history and
//! to join the broadcast, so a subscriber sees every event exactly once: an event is
//! either before its snapshot (in the state and history) or after it (live). The
//! broadcast's capacity is how far a subscriber may fall behind; one that falls further
//! loses the oldest events it has not read, learns how many (see [`super::tail`]), and
//! costs the engine and the other subscribers nothing.
//!
//! A configuration change adds invariants at new indices and stops others (see
//! [`crate::engine::SampleObserver::on_invariants_changed`]): the [`Catalog`] grows and
//! marks what stopped, so GetStatus and new Tail streams show the running set, and
//! streams already open pick up new invariants their filter selects.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use super::{convert, proto};
use crate::config::Invariant;
use crate::engine::{SampleObserver, Snapshots};
use crate::eval::{State, Totals, Transition};
use crate::sample::{Sample, Timestamp};

/// One published event, shared by the history and every subscriber.
#[derive(Debug)]
pub struct FeedEvent {
    /// Position among every event the agent published (from 1); 0 for `RunEnded`.
    pub sequence: u64,
    /// Index of the invariant in the set (0 for `RunEnded`, which has none).
    pub invariant: usize,
    /// When it happened: the sample's start, the missed tick's due time, the
    /// transition's time.
    pub time: Timestamp,
    /// What happened.
    pub message: FeedMessage,
}

/// What a [`FeedEvent`] says.
#[derive(Debug)]
pub enum FeedMessage {
    /// A sample, and the state it left the invariant in.
    Sample(Sample, State),
    /// A tick due at the event's time that could not run, and the state.
    Missed(State),
    /// A state change.
    Transition(Transition),
    /// The run is over; nothing follows.
    RunEnded,
}

impl FeedEvent {
    /// The event as a Tail response for the invariant called `name`; `replay` marks
    /// history.
    pub fn response(&self, name: &str, replay: bool) -> proto::TailResponse {
        use proto::tail_response::Event;
        let event = match &self.message {
            FeedMessage::Sample(s, state) => Event::Sample(convert::sample(name, s, *state)),
            FeedMessage::Missed(state) => Event::Sample(convert::missed(name, self.time, *state)),
            FeedMessage::Transition(t) => Event::Transition(convert::transition(name, t)),
            FeedMessage::RunEnded => Event::RunEnded(proto::RunEnded {}),
        };
        proto::TailResponse {
            sequence: self.sequence,
            replay,
            event: Some(event),
        }
    }

    /// Whether this is a sample (or missed tick), which `transitions_only` leaves out.
    pub fn is_sample(&self) -> bool {
        matches!(
            self.message,
            FeedMessage::Sample(..) | FeedMessage::Missed(_)
        )
    }
}

/// History a subscriber asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// None.
    None,
    /// The last N retained samples per invariant, with the transitions among them.
    Last(usize),
    /// Every retained event at or after this time.
    Since(Timestamp),
}

/// The last sample of an invariant and the state it left it in.
#[derive(Clone, Debug)]
enum LastSample {
    Sample(Sample, State),
    Missed(Timestamp, State),
}

/// What the feed knows about one invariant right now.
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    /// Current state.
    pub state: State,
    /// When it entered `state` (`None` while unknown).
    pub since: Option<Timestamp>,
    /// The latest transition's reason.
    pub reason: String,
    /// Samples so far by outcome.
    pub counts: Totals,
    last: Option<LastSample>,
}

impl LiveState {
    /// Fills the live part of `status`: state, since, reason, counts and last sample.
    pub fn apply(&self, name: &str, status: &mut proto::InvariantStatus) {
        status.state = convert::state(self.state) as i32;
        status.state_since = self.since.map(convert::timestamp);
        status.reason = self.reason.clone();
        status.samples_ok = self.counts.ok;
        status.samples_failed = self.counts.failed;
        status.samples_absent = self.counts.absent;
        status.samples_missed = self.counts.missed;
        status.last_sample = self.last.as_ref().map(|last| match last {
            LastSample::Sample(s, state) => convert::sample(name, s, *state),
            LastSample::Missed(at, state) => convert::missed(name, *at, *state),
        });
    }
}

/// Live state and history of one invariant.
#[derive(Default)]
struct InvariantFeed {
    live: LiveState,
    /// The latest samples (and missed ticks), oldest first.
    samples: VecDeque<Arc<FeedEvent>>,
    /// The latest transitions, oldest first.
    transitions: VecDeque<Arc<FeedEvent>>,
    /// Sequence of the newest sample dropped from `samples` (0: none yet), so `Last(n)`
    /// knows which transitions lie among the samples it returns.
    evicted: u64,
}

struct FeedState {
    /// The sequence of the latest event published.
    sequence: u64,
    invariants: Vec<InvariantFeed>,
    /// Replaced (never changed in place) when the configuration changes, so readers
    /// keep a consistent copy without holding the lock.
    catalog: Arc<Catalog>,
    ended: bool,
}

/// Every invariant of the run the feed knows, by index, including those a configuration
/// change stopped.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Names.
    pub names: Vec<String>,
    /// Declarations (status with state and counts empty).
    pub declarations: Vec<proto::InvariantStatus>,
    /// Labels.
    pub labels: Vec<std::collections::BTreeMap<String, String>>,
    /// Whether each still runs (`false` once a configuration change stopped it).
    pub running: Vec<bool>,
}

impl Catalog {
    fn push(&mut self, invariant: &Invariant) {
        self.names.push(invariant.name.clone());
        self.declarations.push(convert::declaration(invariant));
        self.labels.push(invariant.labels.clone());
        self.running.push(true);
    }

    /// Names of the running invariants, in index order.
    pub fn running_names(&self) -> impl Iterator<Item = &String> {
        self.names
            .iter()
            .zip(&self.running)
            .filter_map(|(n, r)| r.then_some(n))
    }
}

struct Shared {
    state: Mutex<FeedState>,
    events: broadcast::Sender<Arc<FeedEvent>>,
    run: proto::RunInfo,
    history: usize,
}

/// What a new subscriber gets, all as of one instant.
pub struct Subscription {
    /// Live state of each requested invariant, by index.
    pub live: Vec<(usize, LiveState)>,
    /// Retained events asked for, oldest first.
    pub history: Vec<Arc<FeedEvent>>,
    /// Every event published after the above.
    pub receiver: broadcast::Receiver<Arc<FeedEvent>>,
    /// Whether the run had already ended (then nothing more will come).
    pub ended: bool,
}

/// The engine's event feed (cheap to clone: a handle).
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
}

impl Feed {
    /// A feed for `invariants` of the run `run`, keeping `history` samples per invariant
    /// and letting subscribers fall `buffer` events behind.
    pub fn new(
        invariants: &[Invariant],
        run: proto::RunInfo,
        history: usize,
        buffer: usize,
    ) -> Self {
        let (events, _) = broadcast::channel(buffer.max(1));
        let mut catalog = Catalog::default();
        for invariant in invariants {
            catalog.push(invariant);
        }
        let state = FeedState {
            sequence: 0,
            invariants: invariants
                .iter()
                .map(|_| InvariantFeed::default())
                .collect(),
            catalog: Arc::new(catalog),
            ended: false,
        };
        Feed {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                events,
                run,
                history,
            }),
        }
    }

    /// The invariants as of now: names, labels, declarations, and which still run.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.lock().catalog.clone()
    }

    /// Facts about the run.
    pub fn run_info(&self) -> &proto::RunInfo {
        &self.shared.run
    }

    /// Live state of every running invariant with its index, in index order (file order
    /// until a configuration change appends), as of one instant.
    pub fn live(&self) -> Vec<(usize, LiveState)> {
        let state = self.lock();
        state
            .invariants
            .iter()
            .map(|i| i.live.clone())
            .enumerate()
            .filter(|(i, _)| state.catalog.running.get(*i).copied().unwrap_or(false))
            .collect()
    }

    /// The status of each invariant in `live` (indices and live states, from
    /// [`Feed::live`] or [`Feed::subscribe`]), for GetStatus and the Tail snapshot. State,
    /// since, reason, sample counts and last sample are the live state's, exact as of when
    /// it was taken; violations and disruption (which only the evaluator knows) come from
    /// the latest report in `snapshots`, which the engine publishes every second, so they
    /// can be about a second behind. Reading never waits for the engine.
    pub fn statuses(
        &self,
        live: &[(usize, LiveState)],
        snapshots: &Snapshots,
    ) -> Vec<proto::InvariantStatus> {
        let report = snapshots.borrow().clone();
        let catalog = self.catalog();
        live.iter()
            .filter_map(|(i, state)| {
                let mut status = catalog.declarations.get(*i)?.clone();
                state.apply(&catalog.names[*i], &mut status);
                if let Some(entry) = report.as_ref().and_then(|r| r.invariants.get(*i)) {
                    convert::apply_report_totals(&mut status, entry);
                }
                Some(status)
            })
            .collect()
    }

    /// Subscribes to the invariants whose index is set in `wanted`, with `history`.
    pub fn subscribe(&self, wanted: &[bool], history: History) -> Subscription {
        let state = self.lock();
        let receiver = self.shared.events.subscribe();
        let selected = || {
            state
                .invariants
                .iter()
                .enumerate()
                .filter(|(i, _)| wanted.get(*i).copied().unwrap_or(false))
        };
        let live = selected().map(|(i, f)| (i, f.live.clone())).collect();
        let mut events = Vec::new();
        for (_, f) in selected() {
            f.history(history, &mut events);
        }
        let ended = state.ended;
        drop(state);
        // Sorting happens outside the lock: the engine is never held up by it.
        events.sort_unstable_by_key(|e| e.sequence);
        Subscription {
            live,
            history: events,
            receiver,
            ended,
        }
    }

    /// Marks the end of the run: subscribers receive `RunEnded` after every event
    /// published before.
    pub fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        let _ = self.shared.events.send(Arc::new(FeedEvent {
            sequence: 0,
            invariant: 0,
            time: Timestamp::now(),
            message: FeedMessage::RunEnded,
        }));
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // A panic elsewhere while holding the lock leaves consistent data (every update
        // is a few assignments); keep serving rather than propagate it.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether anyone will read the message of an event published now.
    fn wanted(&self) -> bool {
        self.shared.history > 0 || self.shared.events.receiver_count() > 0
    }

    /// Numbers an event of `invariant`, builds it if wanted, updates the live state,
    /// keeps and sends it.
    fn publish(
        &self,
        invariant: usize,
        time: Timestamp,
        update: impl FnOnce(&mut LiveState),
        message: impl FnOnce(&LiveState) -> FeedMessage,
    ) {
        let mut state = self.lock();
        // Under the lock: a subscriber joining now must get this event, live.
        let wanted = self.wanted();
        state.sequence += 1;
        let sequence = state.sequence;
        let Some(feed) = state.invariants.get_mut(invariant) else {
            return;
        };
        update(&mut feed.live);
        if !wanted {
            return;
        }
        let event = Arc::new(FeedEvent {
            sequence,
            invariant,
            time,
            message: message(&feed.live),
        });
        feed.keep(&event, self.shared.history);
        let _ = self.shared.events.send(event);
    }
}

impl InvariantFeed {
    /// Adds `event` to the history, dropping the oldest beyond `limit`.
    fn keep(&mut self, event: &Arc<FeedEvent>, limit: usize) {
        if limit == 0 {
            return;
        }
        let ring = if event.is_sample() {
            &mut self.samples
        } else {
            &mut self.transitions
        };
        if ring.len() >= limit
            && let Some(old) = ring.pop_front()
            && old.is_sample()
        {
            self.evicted = old.sequence;
        }
        ring.push_back(event.clone());
    }

    /// Appends the retained events `history` asks for to `out` (unordered).
    fn history(&self, history: History, out: &mut Vec<Arc<FeedEvent>>) {
        match history {
            History::None => {}
            History::Since(t) => {
                let recent = |e: &&Arc<FeedEvent>| e.time >= t;
                out.extend(self.samples.iter().filter(recent).cloned());
                out.extend(self.transitions.iter().filter(recent).cloned());
            }
            History::Last(n) => {
                let len = self.samples.len();
                let first = len.saturating_sub(n);
                // Transitions come right before the sample that caused them, so those
                // after the newest sample left out belong to the ones returned.
                let after = match first.checked_sub(1) {
                    Some(i) => self.samples[i].sequence,
                    None => self.evicted,
                };
                out.extend(self.samples.iter().skip(first).cloned());
                out.extend(
                    self.transitions
                        .iter()
                        .filter(|e| e.sequence > after)
                        .cloned(),
                );
            }
        }
    }
}

impl SampleObserver for Feed {
    fn on_sample(&mut self, invariant: usize, sample: &Sample) {
        self.publish(
            invariant,
            sample.at,
            |live| {
                match sample.outcome() {
                    crate::sample::Outcome::Ok => live.counts.ok += 1,
                    crate::sample::Outcome::Failed => live.counts.failed += 1,
                    crate::sample::Outcome::Absent => live.counts.absent += 1,
                }
                live.last = Some(LastSample::Sample(sample.clone(), live.state));
            },
            |live| FeedMessage::Sample(sample.clone(), live.state),
        );
    }

    fn on_missed(&mut self, invariant: usize, at: Timestamp) {
        self.publish(
            invariant,
            at,
            |live| {
                live.counts.missed += 1;
                live.last = Some(LastSample::Missed(at, live.state));
            },
            |live| FeedMessage::Missed(live.state),
        );
    }

    fn on_transition(&mut self, invariant: usize, t: &Transition) {
        self.publish(
            invariant,
            t.at,
            |live| {
                live.state = t.to;
                live.since = Some(t.at);
                live.reason = t.reason.clone();
            },
            |_| FeedMessage::Transition(t.clone()),
        );
    }

    fn on_invariants_changed(&mut self, started: &[(usize, Invariant)], stopped: &[usize]) {
        let mut state = self.lock();
        let mut catalog = Catalog::clone(&state.catalog);
        for index in stopped {
            if let Some(running) = catalog.running.get_mut(*index) {
                *running = false;
            }
        }
        for (index, invariant) in started {
            // Indices come in order past every one seen; anything else is a bug, and
            // the feed then leaves the invariant out rather than misname it.
            if *index == catalog.names.len() {
                catalog.push(invariant);
                state.invariants.push(InvariantFeed::default());
            } else {
                tracing::error!(index, invariant = %invariant.name, "feed: invariant index out of order; it is left out of Tail and GetStatus (this is a bug, please report it)");
            }
        }
        state.catalog = Arc::new(catalog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{ErrorClass, Observation, ProbeError};
    use std::time::Duration;

    const FILE: &str = r#"apiVersion: invariant-agent/v1alpha1
kind: InvariantSet
invariants:
  - name: a
    description: d
    owner: o
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
  - name: b
    description: d
    owner: o
    probe: {http: {url: "http://127.0.0.1:1/"}}
    condition: {availability: {target: 100, window: 1m}}
"#;

    fn feed(history: usize, buffer: usize) -> Feed {
        let set = crate::config::parse_str("f.yaml", FILE).unwrap();
        Feed::new(&set.invariants, proto::RunInfo::default(), history, buffer)
    }

    fn sample(at: i64, ok: bool) -> Sample {
        Sample {
            at: Timestamp(at),
            latency: Duration::from_millis(3),
            observation: if ok {
                Observation::Ok { value: None }
            } else {
                Observation::Failed(ProbeError::new(ErrorClass::HttpStatus, "status 500"))
            },
        }
    }

    fn transition(at: i64, from: State, to: State) -> Transition {
        Transition {
            at: Timestamp(at),
            from,
            to,
            reason: format!("to {}", to.as_str()),
        }
    }

    fn sequences(events: &[Arc<FeedEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn history_keeps_the_last_samples_with_their_transitions() {
        let mut f = feed(3, 16);
        f.on_transition(0, &transition(0, State::Unknown, State::Holding)); // 1
        f.on_sample(0, &sample(0, true)); // 2
        f.on_sample(1, &sample(10, true)); // 3 (other invariant)
        f.on_transition(0, &transition(1000, State::Holding, State::Violated)); // 4
        f.on_sample(0, &sample(1000, false)); // 5
        f.on_sample(0, &sample(2000, false)); // 6
        f.on_missed(0, Timestamp(3000)); // 7

        let only_a = [true, false];
        let last = |n| sequences(&f.subscribe(&only_a, History::Last(n)).history);
        assert_eq!(last(1), vec![7]);
        assert_eq!(
            last(2),
            vec![6, 7],
            "no transition among the last two samples"
        );
        assert_eq!(
            last(3),
            vec![4, 5, 6, 7],
            "sample 5 comes with its transition"
        );
        assert_eq!(
            last(50),
            vec![4, 5, 6, 7],
            "only what is retained; transition 1 came before the evicted sample 2"
        );
        let since = f
            .subscribe(&only_a, History::Since(Timestamp(1000)))
            .history;
        assert_eq!(sequences(&since), vec![4, 5, 6, 7]);
        assert!(f.subscribe(&only_a, History::None).history.is_empty());

        let s = f.subscribe(&[true, true], History::Last(1));
        assert_eq!(sequences(&s.history), vec![3, 7]);
        let live = &s.live[0].1;
        assert_eq!(live.state, State::Violated);
        assert_eq!(live.since, Some(Timestamp(1000)));
        assert_eq!(
            (live.counts.ok, live.counts.failed, live.counts.missed),
            (1, 2, 1)
        );
        match s.history[1].response("a", true).event {
            Some(proto::tail_response::Event::Sample(m)) => {
                assert_eq!(m.invariant, "a");
                assert_eq!(m.outcome, proto::Outcome::Missed as i32);
                assert_eq!(m.state, proto::State::Violated as i32);
                assert_eq!(m.time, Some(convert::timestamp(Timestamp(3000))));
            }
            other => panic!("expected a sample, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn subscribers_get_each_event_once_and_learn_what_they_lost() {
        let mut f = feed(8, 16);
        f.on_sample(0, &sample(0, true)); // 1: before the subscription, in history
        let mut s = f.subscribe(&[true, true], History::Last(8));
        assert_eq!(sequences(&s.history), vec![1]);
        for i in 0..40 {
            f.on_sample(1, &sample(i, true)); // 2..=41: more than the buffer of 16
        }
        f.end();
        match s.receiver.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 25),
            other => panic!("expected lag, got {other:?}"),
        }
        let first = s.receiver.recv().await.unwrap();
        assert_eq!(
            first.sequence, 27,
            "nothing between history and live is lost twice"
        );
        let mut last = first;
        while let Ok(e) = s.receiver.try_recv() {
            last = e;
        }
        assert!(matches!(last.message, FeedMessage::RunEnded));
        assert!(f.subscribe(&[true, true], History::None).ended);
    }

    #[test]
    fn nothing_is_built_when_nobody_can_read_it() {
        let mut f = feed(0, 16);
        f.on_sample(0, &sample(0, false));
        let s = f.subscribe(&[true, true], History::Last(10));
        assert!(s.history.is_empty());
        let mut status = proto::InvariantStatus::default();
        s.live[0].1.apply("a", &mut status);
        assert_eq!(status.samples_failed, 1);
        let last = status
            .last_sample
            .expect("last sample kept without history");
        assert_eq!(last.error, "status 500");
        assert_eq!(last.error_class, "http_status");
    }
}
