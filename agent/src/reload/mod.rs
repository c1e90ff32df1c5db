//! Configuration reload: the invariant files are re-read while the run goes on, and a
//! valid change is applied without a gap.
//!
//! A Kubernetes ConfigMap volume is updated by swapping a `..data` symlink, which
//! watching the file itself (inotify) misses; so the files are read again every
//! `--config-poll-interval`, and at once on SIGHUP. Only a change of their content
//! (SHA-256) counts. The new files go through the same loader as at start; anything it
//! finds wrong, or a probe that cannot be built, refuses the whole change: one ERROR line
//! names every problem, the report records the refused revision, and the running
//! invariants go on untouched.
//!
//! A valid change is applied by the engine at one instant (see
//! [`crate::engine::Engine::reconfigure`]), then the scheduler stops the jobs of retired
//! invariants and starts those of new ones. Invariants whose spec did not change keep
//! their state, schedule and series.

pub mod diff;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use self::diff::{Diff, diff};
use crate::config::spec::Scope;
use crate::config::{FileContents, Invariant, InvariantSet};
use crate::engine::{Command, Reconfigure};
use crate::probe::ProbeContext;
use crate::report::{ConfigRevision, RevisionResult};
use crate::sample::Timestamp;
use crate::schedule::{Control, Job};

/// Reload flags of `run`.
#[derive(Clone, Debug, Args)]
pub struct ReloadArgs {
    /// How often the invariant files are read again to see whether they changed (a
    /// ConfigMap update); 0 turns polling off. SIGHUP reads them at once either way. Only
    /// a change of content reloads (a poll reads the files only when their inode, size or
    /// modification time moved); an invalid change is refused and logged, and the running
    /// invariants go on unchanged.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_poll_interval,
        env = "INVARIANT_AGENT_CONFIG_POLL_INTERVAL"
    )]
    pub config_poll_interval: Duration,
}

fn parse_poll_interval(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 5s, 1m, or 0 for off"))
}

/// What `run` needs to watch the files it loaded.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    /// The invariant files, as given.
    pub files: Vec<PathBuf>,
    /// Time between reads; `None`: only on SIGHUP.
    pub poll: Option<Duration>,
    /// SHA-256 of the files the run started with.
    pub hash: Option<String>,
    /// `--scope`: a changed file is narrowed to the same scopes as at start.
    pub scope: crate::config::ScopeSelection,
    /// The files' metadata at the last check (see [`Reloader::check`]).
    stamps: Option<Vec<Option<FileStamp>>>,
}

impl ReloadOptions {
    /// Options for `files`, read at start into `contents`, narrowed to `scope` like at
    /// start.
    pub fn new(
        files: Vec<PathBuf>,
        contents: &FileContents,
        args: &ReloadArgs,
        scope: crate::config::ScopeSelection,
    ) -> Self {
        ReloadOptions {
            files,
            poll: (!args.config_poll_interval.is_zero()).then_some(args.config_poll_interval),
            hash: contents.hash(),
            scope,
            stamps: None,
        }
    }
}

/// Leader election as a reload must respect it.
#[derive(Clone, Debug)]
pub enum Election {
    /// Not asked for: every invariant runs here.
    Off,
    /// Asked for, but not started (no invariant was cluster-scoped at start): a
    /// cluster-scoped invariant cannot be added without a restart.
    NotStarted,
    /// Running: cluster-scoped jobs are gated on this channel.
    On(watch::Receiver<bool>),
}

/// Everything a reload touches.
pub struct Reloader {
    /// Where to read, how often, and what was read last.
    pub options: ReloadOptions,
    /// The invariants running now, by index (mirrors the engine's).
    pub running: Vec<(usize, Invariant)>,
    /// Shared by the probes; gains Kubernetes access when a change first needs it.
    pub probes: ProbeContext,
    /// Kubernetes credentials, for that case.
    pub kube: crate::kube::KubeArgs,
    /// Gates of cluster-scoped jobs.
    pub election: Election,
    /// To the engine.
    pub commands: mpsc::Sender<Command>,
    /// To the scheduler.
    pub control: mpsc::Sender<Control>,
}

/// What a file's metadata says about its content: a write changes the size or the
/// modification times (kept to the nanosecond), and a ConfigMap update swaps the
/// `..data` symlink, so the path then leads to another inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file `path` leads to; `None` when it cannot be read.
    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Why a reload happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Poll,
    Hangup,
}

impl Reloader {
    /// Watches the files until `stop` is cancelled. `hangup` resolves on each SIGHUP
    /// (install it before sampling starts: an unhandled SIGHUP ends the process).
    pub async fn run(
        mut self,
        mut hangup: Option<tokio::signal::unix::Signal>,
        stop: CancellationToken,
    ) {
        let mut poll = self.options.poll.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        tracing::info!(
            files = ?self.options.files,
            poll = %self.options.poll.map_or("off".to_string(), |d| humantime::format_duration(d).to_string()),
            hash = self.options.hash.as_deref().unwrap_or("-"),
            "watching the invariant files for changes (and on SIGHUP)"
        );
        loop {
            let trigger = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick(&mut poll) => Trigger::Poll,
                _ = hangup_received(&mut hangup) => Trigger::Hangup,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.check(trigger) => {}
            }
        }
    }

    /// Reads the files; when their content changed, applies or refuses it. A poll reads
    /// nothing while the files' metadata is what it was at the last check: a file of
    /// 1,000 invariants is about 250 KiB, and hashing it every few seconds was a
    /// measurable share of the agent's CPU. SIGHUP always reads.
    async fn check(&mut self, trigger: Trigger) {
        let files = self.options.files.clone();
        let previous = self
            .options
            .stamps
            .take()
            .filter(|_| trigger == Trigger::Poll);
        let read = tokio::task::spawn_blocking(move || {
            let now: Vec<_> = files.iter().map(|p| FileStamp::of(p)).collect();
            let contents = (previous.as_ref() != Some(&now)).then(|| FileContents::read(&files));
            (now, contents)
        });
        let contents = match read.await {
            Ok((now, contents)) => {
                self.options.stamps = Some(now);
                match contents {
                    Some(contents) => contents,
                    None => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the invariant files failed; trying again at the next poll");
                return;
            }
        };
        let at = Timestamp::now();
        let hash = contents.hash();
        if hash == self.options.hash {
            if trigger == Trigger::Hangup {
                tracing::info!(
                    hash = hash.as_deref().unwrap_or("-"),
                    "SIGHUP: the invariant files are unchanged; nothing to reload"
                );
            }
            return;
        }
        // Remembered whether applied or refused: the same content is judged once.
        self.options.hash = hash.clone();
        let set = match contents.load() {
            Ok(mut set) => {
                self.options.scope.apply(&mut set);
                set
            }
            Err(errors) => {
                let problems = errors.0.iter().map(|e| e.to_string()).collect();
                return self.refuse(at, hash, problems).await;
            }
        };
        let diff = diff(&self.running, &set);
        let jobs = match self.prepare(&diff, &set).await {
            Ok(jobs) => jobs,
            Err(problems) => return self.refuse(at, hash, problems).await,
        };
        self.apply(diff, jobs, hash, at).await;
    }

    /// Builds the probes of the starting invariants (in [`Diff::starting`] order), with
    /// their gates; every problem that keeps the change from working is returned.
    async fn prepare(
        &mut self,
        diff: &Diff,
        set: &InvariantSet,
    ) -> Result<Vec<(Invariant, Job)>, Vec<String>> {
        let mut problems = Vec::new();
        if matches!(self.election, Election::NotStarted) {
            for i in diff.starting().filter(|i| i.scope == Scope::Cluster) {
                problems.push(format!(
                    "{}: scope: {:?} is cluster-scoped, but leader election did not start (no \
                     invariant was cluster-scoped when the agent started); restart the agent to \
                     run it in one agent only",
                    i.source, i.name
                ));
            }
        }
        if self.probes.kube().is_none() && diff.starting().any(|i| i.probe.needs_kubernetes()) {
            match ProbeContext::new(set, &self.kube).await {
                Ok(context) => self.probes = context,
                Err(e) => problems.push(format!(
                    "a Kubernetes probe was added, but Kubernetes access cannot be set up: {e}"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let gate = match &self.election {
            Election::On(leading) => Some(leading.clone()),
            _ => None,
        };
        let probes = self.probes.for_new_revision();
        let mut jobs = Vec::new();
        for invariant in diff.starting() {
            // The index is the engine's to assign, when it applies the change.
            match crate::run::job(usize::MAX, invariant, &probes, gate.as_ref()) {
                Ok(job) => jobs.push((invariant.clone(), job)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(jobs)
        } else {
            Err(problems)
        }
    }

    /// Has the engine apply `diff`, then stops and starts the jobs.
    async fn apply(
        &mut self,
        diff: Diff,
        jobs: Vec<(Invariant, Job)>,
        hash: Option<String>,
        at: Timestamp,
    ) {
        let (reply, started) = oneshot::channel();
        let stopping: Vec<usize> = diff
            .removed
            .iter()
            .copied()
            .chain(diff.changed.iter().map(|(index, _)| *index))
            .collect();
        let kept = diff.kept.clone();
        let change = Reconfigure { diff, hash, at };
        if self
            .commands
            .send(Command::Reconfigure(Box::new(change), reply))
            .await
            .is_err()
        {
            return; // The run is ending.
        }
        let Ok(indices) = started.await else {
            return;
        };
        let _ = self.control.send(Control::Stop(stopping)).await;
        // What runs now: the kept invariants as now declared, then the started ones.
        self.running = kept;
        let mut start = Vec::with_capacity(jobs.len());
        for (index, (invariant, mut job)) in indices.into_iter().zip(jobs) {
            job.invariant = index;
            start.push(job);
            self.running.push((index, invariant));
        }
        let _ = self.control.send(Control::Start(start)).await;
    }

    /// Logs and records a refused change; nothing else changes.
    async fn refuse(&mut self, at: Timestamp, hash: Option<String>, problems: Vec<String>) {
        let files: Vec<String> = self
            .options
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        // One line, so a log search for the refusal finds every reason with it.
        let listed = problems
            .iter()
            .map(|p| p.replace('\n', " "))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::error!(
            files = %files.join(","),
            hash = hash.as_deref().unwrap_or("-"),
            problems = %listed,
            "configuration change refused; the running invariants go on unchanged. Fix the \
             files (`invariant-agent validate FILE` lists every problem); a corrected version \
             is picked up at the next poll or SIGHUP"
        );
        let revision = ConfigRevision {
            at,
            hash,
            result: RevisionResult::Refused,
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            problems,
        };
        let _ = self.commands.send(Command::RefuseConfig(revision)).await;
    }
}

async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn hangup_received(hangup: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(h) = hangup
        && h.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// Listens for SIGHUP from now on (an unhandled one would end the process); `None` with a
/// warning when it cannot.
pub fn listen_for_hangup() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; invariant files are reloaded only by polling");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(names: &[(&str, &str)]) -> String {
        let mut text =
            "apiVersion: invariant-agent/v1alpha1\nkind: InvariantSet\ninvariants:\n".to_string();
        for (name, scope) in names {
            text.push_str(&format!(
                "  - name: {name}\n    description: d\n    owner: o\n    scope: {scope}\n    \
                 probe: {{http: {{url: \"http://127.0.0.1:1/\"}}}}\n    \
                 condition: {{availability: {{target: 100, window: 1m}}}}\n"
            ));
        }
        text
    }

    struct Harness {
        reloader: Reloader,
        commands: mpsc::Receiver<Command>,
        control: mpsc::Receiver<Control>,
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn harness(election: Election) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, file(&[("a", "node")])).unwrap();
        let contents = FileContents::read(std::slice::from_ref(&path));
        let set = contents.load().unwrap();
        let (commands_tx, commands) = mpsc::channel(8);
        let (control_tx, control) = mpsc::channel(8);
        let reloader = Reloader {
            options: ReloadOptions {
                files: vec![path.clone()],
                poll: None,
                hash: contents.hash(),
                scope: crate::config::ScopeSelection::All,
                stamps: None,
            },
            running: set.invariants.into_iter().enumerate().collect(),
            probes: ProbeContext::default(),
            kube: crate::kube::KubeArgs::default(),
            election,
            commands: commands_tx,
            control: control_tx,
        };
        Harness {
            reloader,
            commands,
            control,
            path,
            _dir: dir,
        }
    }

    /// An unchanged file does nothing; an invalid one, or a cluster-scoped invariant
    /// without the leader election it needs, is refused with the problems named and
    /// nothing sent to the scheduler; the same content is not judged twice.
    #[tokio::test]
    async fn invalid_changes_are_refused_once_and_touch_nothing() {
        let mut h = harness(Election::NotStarted);
        h.reloader.check(Trigger::Poll).await;
        assert!(h.commands.try_recv().is_err(), "unchanged: nothing to do");

        std::fs::write(&h.path, "kind: Nonsense\n").unwrap();
        h.reloader.check(Trigger::Poll).await;
        let Ok(Command::RefuseConfig(revision)) = h.commands.try_recv() else {
            panic!("expected a refusal")
        };
        assert_eq!(revision.result, RevisionResult::Refused);
        assert!(
            revision
                .problems
                .iter()
                .all(|p| p.starts_with(&h.path.display().to_string())),
            "{:?}",
            revision.problems
        );
        h.reloader.check(Trigger::Poll).await;
        assert!(
            h.commands.try_recv().is_err(),
            "the same content is refused once"
        );

        std::fs::write(&h.path, file(&[("a", "node"), ("b", "cluster")])).unwrap();
        h.reloader.check(Trigger::Hangup).await;
        let Ok(Command::RefuseConfig(revision)) = h.commands.try_recv() else {
            panic!("expected a refusal")
        };
        assert_eq!(revision.problems.len(), 1);
        assert!(
            revision.problems[0]
                .contains("\"b\" is cluster-scoped, but leader election did not start"),
            "{}",
            revision.problems[0]
        );
        assert!(
            h.control.try_recv().is_err(),
            "the scheduler is not touched"
        );
        assert_eq!(h.reloader.running.len(), 1);
    }

    /// A poll skips reading while the metadata is unchanged, so the metadata must see
    /// every change: a rewrite of the same size with the old modification time restored
    /// (the change time still moves), and a ConfigMap-style swap of a symlink to a file of
    /// the same size and times (another inode).
    #[tokio::test]
    async fn a_poll_sees_changes_that_keep_the_size_and_modification_time() {
        let mut h = harness(Election::Off);
        h.reloader.check(Trigger::Poll).await;
        assert!(h.commands.try_recv().is_err(), "unchanged: nothing to do");
        let modified = std::fs::metadata(&h.path).unwrap().modified().unwrap();
        let same_size = file(&[("c", "node")]);
        assert_eq!(same_size.len(), file(&[("a", "node")]).len());
        std::fs::write(&h.path, &same_size).unwrap();
        let f = std::fs::File::options().write(true).open(&h.path).unwrap();
        f.set_modified(modified).unwrap();
        let engine = async {
            let Some(Command::Reconfigure(change, reply)) = h.commands.recv().await else {
                panic!("expected the rewrite to be applied")
            };
            assert_eq!(change.diff.added.len(), 1, "c is new");
            reply.send(vec![1]).unwrap();
        };
        tokio::join!(h.reloader.check(Trigger::Poll), engine);

        let dir = tempfile::tempdir().unwrap();
        let (old, new, link) = (
            dir.path().join("old"),
            dir.path().join("new"),
            dir.path().join("link"),
        );
        std::fs::write(&old, "x").unwrap();
        std::fs::write(&new, "y").unwrap();
        let times = std::fs::FileTimes::new().set_modified(modified);
        for p in [&old, &new] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_times(times)
                .unwrap();
        }
        std::os::unix::fs::symlink(&old, &link).unwrap();
        let before = FileStamp::of(&link).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&new, &link).unwrap();
        let after = FileStamp::of(&link).unwrap();
        assert_eq!((before.len, before.modified), (after.len, after.modified));
        assert_ne!(before, after, "another inode");
    }

    /// A valid change goes to the engine first; then the retired jobs stop and the new
    /// ones start at the indices the engine gave them.
    #[tokio::test]
    async fn a_valid_change_is_applied_by_the_engine_then_the_scheduler() {
        let mut h = harness(Election::Off);
        std::fs::write(&h.path, file(&[("b", "node"), ("a", "cluster")])).unwrap();
        let engine = async {
            let Some(Command::Reconfigure(change, reply)) = h.commands.recv().await else {
                panic!("expected a reconfiguration")
            };
            assert_eq!(change.diff.changed.len(), 1, "a's scope changed");
            assert_eq!(change.diff.added.len(), 1);
            reply.send(vec![1, 2]).unwrap();
        };
        tokio::join!(h.reloader.check(Trigger::Poll), engine);
        let Ok(Control::Stop(stopped)) = h.control.try_recv() else {
            panic!("expected stops")
        };
        assert_eq!(stopped, [0]);
        let Ok(Control::Start(jobs)) = h.control.try_recv() else {
            panic!("expected starts")
        };
        assert_eq!(jobs.iter().map(|j| j.invariant).collect::<Vec<_>>(), [1, 2]);
        let running: Vec<(usize, &str)> = h
            .reloader
            .running
            .iter()
            .map(|(i, inv)| (*i, inv.name.as_str()))
            .collect();
        assert_eq!(running, [(1, "b"), (2, "a")]);
    }
}
