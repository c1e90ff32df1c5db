//! Writes report checkpoints to disk off the engine's task.
//!
//! The engine publishes report snapshots on a `watch` channel (newest wins; a slow disk
//! never queues stale copies). This task writes the newest one at most once per
//! checkpoint interval, and the final one as soon as the engine publishes it, atomically:
//! to a temporary file in the same directory, then renamed over the target, so a reader
//! or a kill at any moment sees either the previous or the new complete file.
//!
//! Each checkpoint writes `report.json` first (the source of truth), then the forms
//! derived from it: `report.ndjson`, `report.junit.xml` and `report.html`. An aborted run
//! therefore leaves every form of its last checkpoint behind. When the run was resumed
//! after a kill, each snapshot is merged with the previous agent's last checkpoint first
//! ([`super::resume`]), so every file covers the whole run.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::junit::JunitMode;
use super::resume::{self, Resumed};
use super::{REPORT_FILE, Report, RunStatus};

/// File name of the newline-delimited rows (one per invariant).
pub const NDJSON_FILE: &str = "report.ndjson";
/// File name of the JUnit XML.
pub const JUNIT_FILE: &str = "report.junit.xml";
/// File name of the HTML page.
pub const HTML_FILE: &str = "report.html";

/// What the writer writes besides `report.json`, and what it merges in.
#[derive(Clone, Debug, Default)]
pub struct WriterOptions {
    /// Whether violations fail their JUnit testcase.
    pub junit_mode: JunitMode,
    /// The run so far, when this agent resumed it: every snapshot is merged with it.
    pub resumed: Option<Arc<Resumed>>,
}

/// Writes every file of one checkpoint into `dir`, each atomically, `report.json` first.
/// Stops at the first failure. Each file is rendered just before it is written, so only
/// one is in memory at a time (all four of 1,000 invariants are about 5 MiB).
pub fn write_all(dir: &Path, report: &Report, junit_mode: JunitMode) -> io::Result<()> {
    write_atomically(&dir.join(REPORT_FILE), &report.to_json())?;
    write_atomically(
        &dir.join(NDJSON_FILE),
        super::ndjson::render(report).as_bytes(),
    )?;
    write_atomically(
        &dir.join(JUNIT_FILE),
        super::junit::render(report, junit_mode).as_bytes(),
    )?;
    write_atomically(&dir.join(HTML_FILE), super::html::render(report).as_bytes())
}

/// Starts the writer for `dir` with default [`WriterOptions`] (see [`spawn_with`]).
pub fn spawn(
    dir: PathBuf,
    checkpoint_interval: Duration,
    snapshots: watch::Receiver<Option<Arc<Report>>>,
) -> tokio::task::JoinHandle<()> {
    spawn_with(
        dir,
        checkpoint_interval,
        snapshots,
        WriterOptions::default(),
    )
}

/// Starts the writer for `dir`. It ends after writing a `completed` report, or when the
/// engine's sender is gone.
pub fn spawn_with(
    dir: PathBuf,
    checkpoint_interval: Duration,
    mut snapshots: watch::Receiver<Option<Arc<Report>>>,
    options: WriterOptions,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing: Option<String> = None;
        let mut last_write: Option<tokio::time::Instant> = None;
        loop {
            let closed = snapshots.changed().await.is_err();
            let latest = snapshots.borrow_and_update().clone();
            let Some(report) = latest else {
                if closed {
                    break;
                }
                continue;
            };
            let completed = report.run.status == RunStatus::Completed;
            let due = last_write.is_none_or(|t| t.elapsed() >= checkpoint_interval);
            if completed || closed || due {
                last_write = Some(tokio::time::Instant::now());
                let path = dir.join(REPORT_FILE);
                let target = dir.clone();
                let resumed = options.resumed.clone();
                let junit_mode = options.junit_mode;
                let result = tokio::task::spawn_blocking(move || {
                    let report = resume::whole_run(resumed.as_deref(), report);
                    write_all(&target, &report, junit_mode)
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                log_outcome(&path, result, &mut failing);
            }
            if completed || closed {
                break;
            }
        }
    })
}

/// Logs each distinct write failure once (a full disk must not flood the logs) and the
/// recovery after one.
fn log_outcome(path: &Path, result: io::Result<()>, failing: &mut Option<String>) {
    match (result, failing.as_ref()) {
        (Ok(()), Some(_)) => {
            tracing::info!(path = %path.display(), "report checkpoint written again");
            *failing = None;
        }
        (Ok(()), None) => {}
        (Err(e), _) => {
            let text = e.to_string();
            if failing.as_deref() != Some(text.as_str()) {
                tracing::error!(
                    path = %path.display(),
                    error = %text,
                    "cannot write the report; sampling continues and writing is retried at the next checkpoint"
                );
                *failing = Some(text);
            }
        }
    }
}

/// Writes `bytes` to `path` via a temporary file and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_string());
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&tmp, path)
}
