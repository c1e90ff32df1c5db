//! Writes report checkpoints to disk off the engine's task.
//!
//! The engine hands over the latest serialized report through a `watch` channel (newest
//! wins; a slow disk never queues stale copies) and this task writes it atomically: to a
//! temporary file in the same directory, then renamed over `report.json`, so a reader or
//! a kill at any moment sees either the previous or the new complete report.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

/// Sends checkpoints to the writer task.
pub type CheckpointSender = watch::Sender<Option<Arc<Vec<u8>>>>;

/// Starts the writer for `path`. The task writes every new value and, once the sender is
/// dropped, writes the last value (if not yet written) and ends.
pub fn spawn(path: PathBuf) -> (CheckpointSender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel::<Option<Arc<Vec<u8>>>>(None);
    let task = tokio::spawn(async move {
        let mut failing: Option<String> = None;
        loop {
            let closed = rx.changed().await.is_err();
            let latest = rx.borrow_and_update().clone();
            if let Some(bytes) = latest {
                let target = path.clone();
                let result =
                    tokio::task::spawn_blocking(move || write_atomically(&target, &bytes)).await;
                let result = result.unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                match (result, &failing) {
                    (Ok(()), Some(_)) => {
                        tracing::info!(path = %path.display(), "report checkpoint written again");
                        failing = None;
                    }
                    (Ok(()), None) => {}
                    (Err(e), _) => {
                        let text = e.to_string();
                        // Log each distinct failure once: a full disk must not flood logs.
                        if failing.as_deref() != Some(text.as_str()) {
                            tracing::error!(
                                path = %path.display(),
                                error = %text,
                                "cannot write the report; sampling continues and writing is retried at the next checkpoint"
                            );
                            failing = Some(text);
                        }
                    }
                }
            }
            if closed {
                break;
            }
        }
    });
    (tx, task)
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
