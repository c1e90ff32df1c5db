//! How `tail` and `status` print what the agent sends.
//!
//! Text is for people: one line per event, columns aligned on the invariant names of the
//! snapshot, colour only when standard output is a terminal and `NO_COLOR` is unset.
//! Times in text are UTC.
//!
//! JSON is for programs and follows the proto3 JSON mapping of the messages in
//! `proto/invariant/v1/agent.proto`, so one schema serves grpcurl, Go's protojson and
//! this command: lowerCamelCase field names (`errorClass`, `stateSince`, `runEnded`),
//! enum values by name (`"STATE_VIOLATED"`, `"OUTCOME_OK"`), timestamps in RFC 3339 UTC,
//! durations as seconds with an `s` suffix (`"0.012s"`). Two choices within the mapping:
//! scalar fields are always present (also when zero or empty), and 64-bit integers are
//! JSON numbers (protojson accepts both numbers and strings). Unset message fields and an
//! absent `value` are left out. `tail` prints one `TailResponse` object per line;
//! `status` prints one `GetStatusResponse` object.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use prost_types::Timestamp;
use serde_json::{Map, Value, json};

use super::proto::tail_response::Event;
use super::proto::{
    GetStatusResponse, InvariantStatus, Lost, Outcome, RunInfo, Sample, Snapshot, State,
    TailResponse, Transition,
};

/// Output format of `tail` and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable lines and tables (colour on a terminal).
    #[default]
    Text,
    /// JSON in the proto3 JSON mapping (one object per line for `tail`).
    Json,
}

/// Whether text gets ANSI colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    color: bool,
}

/// ANSI colours used (SGR codes).
const RED: &str = "31";
const GREEN: &str = "32";
const YELLOW: &str = "33";
const DIM: &str = "2";
const BOLD_RED: &str = "1;31";
const BOLD_GREEN: &str = "1;32";
const BOLD_YELLOW: &str = "1;33";

impl Style {
    /// Colour when standard output is a terminal and `NO_COLOR` is unset or empty
    /// (<https://no-color.org>).
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    /// No colour.
    pub fn plain() -> Self {
        Style { color: false }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color && !code.is_empty() && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Prints a Tail stream, event by event.
#[derive(Debug)]
pub struct TailPrinter {
    format: OutputFormat,
    style: Style,
    /// Width of the invariant column, from the snapshot's names.
    name_width: usize,
}

impl TailPrinter {
    /// A printer in `format`.
    pub fn new(format: OutputFormat, style: Style) -> Self {
        TailPrinter {
            format,
            style,
            name_width: 0,
        }
    }

    /// The text for one event (each line ending in a newline), or `None` when there is
    /// nothing to print: `run_ended` in text (the caller says so on stderr) and events of
    /// a kind this version does not know (the API lets agents add them).
    pub fn event(&mut self, response: &TailResponse, now: SystemTime) -> Option<String> {
        let event = response.event.as_ref()?;
        if self.format == OutputFormat::Json {
            let mut line = tail_json(response)?.to_string();
            line.push('\n');
            return Some(line);
        }
        match event {
            Event::Snapshot(snapshot) => Some(self.snapshot(snapshot, now)),
            Event::Sample(sample) => Some(self.sample(sample)),
            Event::Transition(transition) => Some(self.transition(transition)),
            Event::Live(_) => Some(format!(
                "{}\n",
                self.style
                    .paint(DIM, "── live: new events follow (Ctrl-C to stop) ──")
            )),
            Event::Lost(lost) => Some(format!(
                "{}\n",
                self.style.paint(BOLD_YELLOW, &lost_warning(lost))
            )),
            Event::RunEnded(_) => None,
        }
    }

    fn snapshot(&mut self, snapshot: &Snapshot, now: SystemTime) -> String {
        self.name_width = snapshot
            .invariants
            .iter()
            .map(|i| i.name.chars().count())
            .max()
            .unwrap_or(0);
        status_table(snapshot.run.as_ref(), &snapshot.invariants, now, self.style)
    }

    fn sample(&self, sample: &Sample) -> String {
        let outcome = outcome_name(sample.outcome);
        let outcome_color = match Outcome::try_from(sample.outcome) {
            Ok(Outcome::Ok) => "",
            Ok(Outcome::Failed) => RED,
            _ => YELLOW,
        };
        let latency = sample
            .latency
            .as_ref()
            .and_then(|d| Duration::try_from(*d).ok())
            .map_or_else(|| "-".to_string(), format_latency);
        let mut line = format!(
            "{}  {:<w$}  {}  {latency:>8}  {}",
            clock(sample.time.as_ref()),
            sample.invariant,
            self.style.paint(outcome_color, &format!("{outcome:<7}")),
            self.style.paint(
                state_color(sample.state),
                &format!("{:<8}", state_name(sample.state))
            ),
            w = self.name_width,
        );
        if let Some(value) = sample.value {
            let _ = write!(line, "  value={value}");
        }
        if let Some(error) = sample_error(sample) {
            let _ = write!(line, "  {}", self.style.paint(RED, &error));
        }
        trim_padding(&mut line);
        line.push('\n');
        line
    }

    fn transition(&self, transition: &Transition) -> String {
        let color = match State::try_from(transition.to) {
            Ok(State::Violated) => BOLD_RED,
            Ok(State::Pending) => BOLD_YELLOW,
            Ok(State::Holding) => BOLD_GREEN,
            _ => DIM,
        };
        let change = format!(
            "state    {} → {}",
            state_name(transition.from),
            state_name(transition.to)
        );
        let mut line = format!(
            "{}  {:<w$}  {}",
            clock(transition.time.as_ref()),
            transition.invariant,
            self.style.paint(color, &change),
            w = self.name_width,
        );
        if !transition.reason.is_empty() {
            let _ = write!(line, "  {}", transition.reason);
        }
        line.push('\n');
        line
    }
}

/// The warning for a `lost` event: how many events this client missed and where the
/// resulting state can be read.
pub fn lost_warning(lost: &Lost) -> String {
    format!(
        "WARNING: {} event{} lost: this client read too slowly and the agent dropped them \
         for this stream only; `invariant-agent status` shows the current state",
        lost.events,
        if lost.events == 1 { "" } else { "s" }
    )
}

/// `failed` samples' "class: error", if any.
fn sample_error(sample: &Sample) -> Option<String> {
    match (sample.error_class.is_empty(), sample.error.is_empty()) {
        (true, true) => None,
        (false, true) => Some(sample.error_class.clone()),
        (true, false) => Some(sample.error.clone()),
        (false, false) => Some(format!("{}: {}", sample.error_class, sample.error)),
    }
}

/// The `status` command's text: the run line, then one row per invariant, worst state
/// first (violated, pending, unknown, holding) and in file order within a state.
pub fn status_text(response: &GetStatusResponse, now: SystemTime, style: Style) -> String {
    status_table(response.run.as_ref(), &response.invariants, now, style)
}

fn status_table(
    run: Option<&RunInfo>,
    invariants: &[InvariantStatus],
    now: SystemTime,
    style: Style,
) -> String {
    let mut out = run_line(run, invariants, now);
    if invariants.is_empty() {
        out.push_str("no invariant matches\n");
        return out;
    }
    let mut rows: Vec<&InvariantStatus> = invariants.iter().collect();
    rows.sort_by_key(|i| severity(i.state)); // stable: file order within a state
    let width = rows
        .iter()
        .map(|i| i.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("INVARIANT".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:<8}  {:<24}  {:>16}  {:>10}  {:>10}  REASON",
        "INVARIANT", "STATE", "SINCE", "OK/FAILED/ABSENT", "VIOLATIONS", "DISRUPTION"
    );
    for i in rows {
        let since = i
            .state_since
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| since(t, now));
        let counts = format!("{}/{}/{}", i.samples_ok, i.samples_failed, i.samples_absent);
        let state = style.paint(state_color(i.state), &format!("{:<8}", state_name(i.state)));
        let mut row = format!(
            "{:<width$}  {state}  {since:<24}  {counts:>16}  {:>10}  {:>9.1}s  {}",
            i.name,
            i.violations,
            finite_or_zero(i.disruption_seconds),
            one_line(&i.reason)
        );
        trim_padding(&mut row);
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// "run ID · node N · ... · 1 violated, 2 holding" (and a blank line).
fn run_line(run: Option<&RunInfo>, invariants: &[InvariantStatus], now: SystemTime) -> String {
    let mut parts = Vec::new();
    if let Some(run) = run {
        parts.push(format!("run {}", run.id));
        for (what, value) in [
            ("node", &run.node),
            ("cluster", &run.cluster),
            ("job", &run.job_name),
            ("build", &run.build_id),
        ] {
            if !value.is_empty() {
                parts.push(format!("{what} {value}"));
            }
        }
        if let Some(started) = &run.started_at {
            parts.push(format!("started {}", since(started, now)));
        }
        if !run.agent_version.is_empty() {
            parts.push(format!("agent {}", run.agent_version));
        }
    }
    parts.push(state_counts(invariants));
    format!("{}\n\n", parts.join(" · "))
}

/// "1 violated, 0 pending, 3 holding, 1 unknown" (states with no invariant left out,
/// except violated, whose 0 is news too).
fn state_counts(invariants: &[InvariantStatus]) -> String {
    let count = |state: State| {
        invariants
            .iter()
            .filter(|i| State::try_from(i.state).unwrap_or(State::Unspecified) == state)
            .count()
    };
    let mut parts = vec![format!("{} violated", count(State::Violated))];
    for state in [State::Pending, State::Holding, State::Unknown] {
        let n = count(state);
        if n > 0 {
            parts.push(format!("{n} {}", state_name(state as i32)));
        }
    }
    parts.join(", ")
}

/// Sort key: worst first.
fn severity(state: i32) -> u8 {
    match State::try_from(state) {
        Ok(State::Violated) => 0,
        Ok(State::Pending) => 1,
        Ok(State::Holding) => 3,
        _ => 2,
    }
}

fn state_color(state: i32) -> &'static str {
    match State::try_from(state) {
        Ok(State::Violated) => RED,
        Ok(State::Pending) => YELLOW,
        Ok(State::Holding) => GREEN,
        _ => DIM,
    }
}

/// "violated", "holding", ... ("state 7" for a value this version does not know).
pub fn state_name(state: i32) -> String {
    match State::try_from(state) {
        Ok(s) => enum_word(s.as_str_name(), "STATE_"),
        Err(_) => format!("state {state}"),
    }
}

/// "ok", "failed", "absent", "missed" ("outcome 7" for an unknown value).
pub fn outcome_name(outcome: i32) -> String {
    match Outcome::try_from(outcome) {
        Ok(o) => enum_word(o.as_str_name(), "OUTCOME_"),
        Err(_) => format!("outcome {outcome}"),
    }
}

fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Drops the padding of an empty last column.
fn trim_padding(line: &mut String) {
    line.truncate(line.trim_end().len());
}

/// Reasons are one table cell: line breaks become spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// Seconds since the epoch that RFC 3339 can write (years 0001 to 9999), as in the
/// proto3 JSON mapping. Anything outside is not a real time and is not formatted (the
/// formatter's arithmetic is not meant for it).
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

fn valid(ts: &Timestamp) -> bool {
    (MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) && (0..1_000_000_000).contains(&ts.nanos)
}

/// RFC 3339 UTC, e.g. "2024-05-01T12:00:00.250Z".
pub fn rfc3339(ts: &Timestamp) -> String {
    if valid(ts) {
        ts.to_string()
    } else {
        format!("(invalid time {}s {}ns)", ts.seconds, ts.nanos)
    }
}

/// Time of day in UTC with milliseconds, e.g. "12:00:00.250Z"; "-" when unset.
pub fn clock(ts: Option<&Timestamp>) -> String {
    let Some(ts) = ts.filter(|t| valid(t)) else {
        return format!("{:<13}", "-");
    };
    let day = ts.seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ts.nanos / 1_000_000
    )
}

/// "12:00:00Z (3m20s ago)", or the full time when it is not today (UTC).
fn since(ts: &Timestamp, now: SystemTime) -> String {
    if !valid(ts) {
        return rfc3339(ts);
    }
    let now_seconds = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let when = if ts.seconds.div_euclid(86_400) == now_seconds.div_euclid(86_400) {
        let mut time = clock(Some(ts));
        time.replace_range(8..12, ""); // whole seconds are enough here
        time
    } else {
        rfc3339(&Timestamp {
            seconds: ts.seconds,
            nanos: 0,
        })
    };
    match u64::try_from(now_seconds - ts.seconds) {
        Ok(ago) => format!("{when} ({} ago)", compact_duration(ago)),
        Err(_) => when, // the agent's clock is ahead of ours
    }
}

/// "45s", "3m20s", "2h5m", "3d4h".
fn compact_duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// "850µs", "12.3ms", "1.25s".
fn format_latency(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// One Tail event in the proto3 JSON mapping (`None` for an event of a kind this
/// version does not know).
pub fn tail_json(response: &TailResponse) -> Option<Value> {
    let (key, body) = match response.event.as_ref()? {
        Event::Snapshot(s) => ("snapshot", snapshot_json(s)),
        Event::Sample(s) => ("sample", sample_json(s)),
        Event::Transition(t) => ("transition", transition_json(t)),
        Event::Live(_) => ("live", json!({})),
        Event::Lost(l) => ("lost", json!({ "events": l.events })),
        Event::RunEnded(_) => ("runEnded", json!({})),
    };
    Some(json!({
        "sequence": response.sequence,
        "replay": response.replay,
        key: body,
    }))
}

/// A GetStatus response in the proto3 JSON mapping, invariants in file order.
pub fn status_json(response: &GetStatusResponse) -> Value {
    let mut object = Map::new();
    if let Some(run) = &response.run {
        object.insert("run".into(), run_json(run));
    }
    object.insert(
        "invariants".into(),
        response.invariants.iter().map(invariant_json).collect(),
    );
    Value::Object(object)
}

fn snapshot_json(snapshot: &Snapshot) -> Value {
    let mut object = Map::new();
    if let Some(run) = &snapshot.run {
        object.insert("run".into(), run_json(run));
    }
    object.insert(
        "invariants".into(),
        snapshot.invariants.iter().map(invariant_json).collect(),
    );
    Value::Object(object)
}

fn run_json(run: &RunInfo) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(run.id));
    insert_time(&mut object, "startedAt", run.started_at.as_ref());
    object.insert("node".into(), json!(run.node));
    object.insert("cluster".into(), json!(run.cluster));
    object.insert("jobName".into(), json!(run.job_name));
    object.insert("buildId".into(), json!(run.build_id));
    object.insert("agentVersion".into(), json!(run.agent_version));
    Value::Object(object)
}

fn invariant_json(i: &InvariantStatus) -> Value {
    let mut object = Map::new();
    for (key, value) in [
        ("name", &i.name),
        ("description", &i.description),
        ("owner", &i.owner),
        ("scope", &i.scope),
        ("probe", &i.probe),
        ("target", &i.target),
        ("condition", &i.condition),
    ] {
        object.insert(key.into(), json!(value));
    }
    object.insert("labels".into(), json!(i.labels));
    object.insert("state".into(), enum_json(i.state, State::try_from));
    insert_time(&mut object, "stateSince", i.state_since.as_ref());
    object.insert("reason".into(), json!(i.reason));
    if let Some(sample) = &i.last_sample {
        object.insert("lastSample".into(), sample_json(sample));
    }
    for (key, value) in [
        ("samplesOk", i.samples_ok),
        ("samplesFailed", i.samples_failed),
        ("samplesAbsent", i.samples_absent),
        ("samplesMissed", i.samples_missed),
        ("violations", i.violations),
    ] {
        object.insert(key.into(), json!(value));
    }
    object.insert(
        "disruptionSeconds".into(),
        double_json(i.disruption_seconds),
    );
    Value::Object(object)
}

fn sample_json(s: &Sample) -> Value {
    let mut object = Map::new();
    object.insert("invariant".into(), json!(s.invariant));
    insert_time(&mut object, "time", s.time.as_ref());
    if let Some(latency) = &s.latency {
        object.insert("latency".into(), duration_json(latency));
    }
    object.insert("outcome".into(), enum_json(s.outcome, Outcome::try_from));
    if let Some(value) = s.value {
        object.insert("value".into(), double_json(value));
    }
    object.insert("errorClass".into(), json!(s.error_class));
    object.insert("error".into(), json!(s.error));
    object.insert("state".into(), enum_json(s.state, State::try_from));
    Value::Object(object)
}

fn transition_json(t: &Transition) -> Value {
    let mut object = Map::new();
    object.insert("invariant".into(), json!(t.invariant));
    insert_time(&mut object, "time", t.time.as_ref());
    object.insert("from".into(), enum_json(t.from, State::try_from));
    object.insert("to".into(), enum_json(t.to, State::try_from));
    object.insert("reason".into(), json!(t.reason));
    Value::Object(object)
}

fn insert_time(object: &mut Map<String, Value>, key: &str, ts: Option<&Timestamp>) {
    if let Some(ts) = ts {
        object.insert(key.into(), json!(rfc3339(ts)));
    }
}

/// Proto3 JSON durations: seconds with an "s" suffix ("1.500s").
fn duration_json(d: &prost_types::Duration) -> Value {
    const MAX: i64 = 315_576_000_000; // the proto's range: ±10,000 years
    if (-MAX..=MAX).contains(&d.seconds) && (-999_999_999..=999_999_999).contains(&d.nanos) {
        json!(d.to_string())
    } else {
        Value::Null
    }
}

/// Enum values by name; a value this version does not know stays a number (as the
/// mapping says).
fn enum_json<E: EnumName>(
    value: i32,
    parse: impl Fn(i32) -> Result<E, prost::UnknownEnumValue>,
) -> Value {
    match parse(value) {
        Ok(e) => json!(e.name()),
        Err(_) => json!(value),
    }
}

/// The proto name of a generated enum's value.
trait EnumName {
    fn name(&self) -> &'static str;
}

impl EnumName for State {
    fn name(&self) -> &'static str {
        self.as_str_name()
    }
}

impl EnumName for Outcome {
    fn name(&self) -> &'static str {
        self.as_str_name()
    }
}

/// Doubles: numbers, or "NaN", "Infinity", "-Infinity" as the mapping writes them.
fn double_json(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{Live, RunEnded};

    /// 2024-05-01T12:00:00Z.
    const NOON: i64 = 1_714_564_800;

    fn at(seconds: i64, millis: i32) -> Option<Timestamp> {
        Some(Timestamp {
            seconds,
            nanos: millis * 1_000_000,
        })
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOON as u64 + 200)
    }

    fn event(event: Event) -> TailResponse {
        TailResponse {
            sequence: 7,
            replay: false,
            event: Some(event),
        }
    }

    fn status(name: &str, state: State) -> InvariantStatus {
        InvariantStatus {
            name: name.to_string(),
            state: state as i32,
            state_since: at(NOON, 0),
            samples_ok: 25,
            samples_failed: 5,
            violations: u64::from(state == State::Violated),
            disruption_seconds: 5.0,
            reason: "availability 83.3% < 100% over 1m;\nlast error: status 500".to_string(),
            ..InvariantStatus::default()
        }
    }

    fn run() -> RunInfo {
        RunInfo {
            id: "run-1".to_string(),
            started_at: at(NOON - 60, 0),
            node: "node-a".to_string(),
            agent_version: "0.1.0".to_string(),
            ..RunInfo::default()
        }
    }

    fn failed_sample() -> Sample {
        Sample {
            invariant: "healthz".to_string(),
            time: at(NOON + 5, 123),
            latency: Some(prost_types::Duration {
                seconds: 0,
                nanos: 3_000_000,
            }),
            outcome: Outcome::Failed as i32,
            value: None,
            error_class: "http_status".to_string(),
            error: "status 500".to_string(),
            state: State::Pending as i32,
        }
    }

    fn text(printer: &mut TailPrinter, e: Event) -> String {
        printer.event(&event(e), now()).unwrap_or_default()
    }

    #[test]
    fn status_is_worst_first_and_counts_states() {
        let response = GetStatusResponse {
            run: Some(run()),
            invariants: vec![
                status("a-holding", State::Holding),
                status("b-violated", State::Violated),
                status("c-pending", State::Pending),
                status("d-holding", State::Holding),
            ],
        };
        let out = status_text(&response, now(), Style::plain());
        let names: Vec<&str> = out
            .lines()
            .skip(3)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(names, ["b-violated", "c-pending", "a-holding", "d-holding"]);
        let first = out.lines().next().unwrap();
        assert_eq!(
            first,
            "run run-1 · node node-a · started 11:59:00Z (4m20s ago) · agent 0.1.0 · \
             1 violated, 1 pending, 2 holding"
        );
        let row = out.lines().nth(3).unwrap();
        assert!(row.contains("12:00:00Z (3m20s ago)"), "{row}");
        assert!(row.contains("25/5/0"), "{row}");
        assert!(row.ends_with("last error: status 500"), "{row}");
        assert!(!out.contains('\x1b'), "no colour in plain style");
    }

    #[test]
    fn sample_lines_show_outcome_latency_state_and_error() {
        let mut p = TailPrinter::new(OutputFormat::Text, Style::plain());
        let line = text(&mut p, Event::Sample(failed_sample()));
        assert_eq!(
            line,
            "12:00:05.123Z  healthz  failed      3.0ms  pending   http_status: status 500\n"
        );
        let mut ok = failed_sample();
        ok.outcome = Outcome::Ok as i32;
        ok.state = State::Holding as i32;
        ok.value = Some(42.5);
        ok.error_class.clear();
        ok.error.clear();
        ok.latency = None;
        let line = text(&mut p, Event::Sample(ok));
        assert_eq!(
            line,
            "12:00:05.123Z  healthz  ok              -  holding   value=42.5\n"
        );
    }

    #[test]
    fn columns_align_on_the_snapshot_names() {
        let mut p = TailPrinter::new(OutputFormat::Text, Style::plain());
        let snapshot = Snapshot {
            run: Some(run()),
            invariants: vec![
                status("healthz", State::Holding),
                status("a-much-longer-name", State::Holding),
            ],
        };
        text(&mut p, Event::Snapshot(snapshot));
        let line = text(&mut p, Event::Sample(failed_sample()));
        assert!(
            line.starts_with("12:00:05.123Z  healthz             failed"),
            "{line}"
        );
    }

    #[test]
    fn transitions_say_from_to_and_why() {
        let mut p = TailPrinter::new(OutputFormat::Text, Style::plain());
        let t = Transition {
            invariant: "healthz".to_string(),
            time: at(NOON + 8, 0),
            from: State::Pending as i32,
            to: State::Violated as i32,
            reason: "availability 93.1% < 99.9% over 5m".to_string(),
        };
        let line = text(&mut p, Event::Transition(t.clone()));
        assert_eq!(
            line,
            "12:00:08.000Z  healthz  state    pending → violated  availability 93.1% < 99.9% over 5m\n"
        );
        let mut colored = TailPrinter::new(OutputFormat::Text, Style { color: true });
        let line = text(&mut colored, Event::Transition(t));
        assert!(
            line.contains("\x1b[1;31mstate    pending → violated\x1b[0m"),
            "{line:?}"
        );
    }

    #[test]
    fn markers_and_lost_are_plain_lines_and_run_end_is_silent() {
        let mut p = TailPrinter::new(OutputFormat::Text, Style::plain());
        assert!(text(&mut p, Event::Live(Live {})).contains("live"));
        let lost = text(&mut p, Event::Lost(Lost { events: 42 }));
        assert!(lost.starts_with("WARNING: 42 events lost"), "{lost}");
        assert_eq!(p.event(&event(Event::RunEnded(RunEnded {})), now()), None);
        let unknown = TailResponse {
            sequence: 1,
            replay: false,
            event: None,
        };
        assert_eq!(p.event(&unknown, now()), None);
    }

    #[test]
    fn json_follows_the_proto3_mapping() {
        let mut p = TailPrinter::new(OutputFormat::Json, Style::plain());
        let mut sample = failed_sample();
        sample.value = Some(f64::NAN);
        let line = text(&mut p, Event::Sample(sample));
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["replay"], false);
        let s = &v["sample"];
        assert_eq!(s["time"], "2024-05-01T12:00:05.123Z");
        assert_eq!(s["latency"], "0.003s");
        assert_eq!(s["outcome"], "OUTCOME_FAILED");
        assert_eq!(s["state"], "STATE_PENDING");
        assert_eq!(s["errorClass"], "http_status");
        assert_eq!(s["value"], "NaN");
        let ended = text(&mut p, Event::RunEnded(RunEnded {}));
        let v: Value = serde_json::from_str(&ended).unwrap();
        assert_eq!(v["runEnded"], json!({}));
        let lost: Value =
            serde_json::from_str(&text(&mut p, Event::Lost(Lost { events: 3 }))).unwrap();
        assert_eq!(lost["lost"]["events"], 3);
    }

    #[test]
    fn status_json_keeps_file_order_and_all_counts() {
        let mut violated = status("b", State::Violated);
        violated.labels.insert("team".into(), "net".into());
        violated.state = 99; // a state a newer agent might add
        let response = GetStatusResponse {
            run: Some(run()),
            invariants: vec![status("a", State::Holding), violated],
        };
        let v = status_json(&response);
        assert_eq!(v["run"]["startedAt"], "2024-05-01T11:59:00Z");
        assert_eq!(v["run"]["agentVersion"], "0.1.0");
        assert_eq!(v["invariants"][0]["name"], "a");
        assert_eq!(v["invariants"][1]["state"], 99);
        assert_eq!(v["invariants"][1]["labels"]["team"], "net");
        assert_eq!(v["invariants"][0]["samplesFailed"], 5);
        assert_eq!(v["invariants"][0]["stateSince"], "2024-05-01T12:00:00Z");
        assert!(v["invariants"][0].get("lastSample").is_none());
    }

    #[test]
    fn hostile_times_do_not_panic() {
        for ts in [
            Timestamp {
                seconds: i64::MAX,
                nanos: i32::MAX,
            },
            Timestamp {
                seconds: i64::MIN,
                nanos: -1,
            },
        ] {
            assert!(rfc3339(&ts).starts_with("(invalid time"));
            assert_eq!(clock(Some(&ts)).trim(), "-");
            let _ = since(&ts, now());
        }
        let d = prost_types::Duration {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        assert_eq!(duration_json(&d), Value::Null);
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(compact_duration(45), "45s");
        assert_eq!(compact_duration(200), "3m20s");
        assert_eq!(compact_duration(7500), "2h5m");
        assert_eq!(compact_duration(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(format_latency(Duration::from_micros(850)), "850µs");
        assert_eq!(format_latency(Duration::from_micros(12_340)), "12.3ms");
        assert_eq!(format_latency(Duration::from_millis(1250)), "1.25s");
    }

    #[test]
    fn colour_is_off_with_no_color_or_a_pipe() {
        // Tests run with stdout captured (not a terminal), so detection says no colour.
        assert_eq!(Style::detect(), Style::plain());
    }
}
