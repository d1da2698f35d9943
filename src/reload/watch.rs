//! What asks for a reload: SIGHUP, and a change of the config file's content.
//!
//! The file's directory is watched, not the file: Kubernetes mounts a ConfigMap as a directory
//! whose `..data` symlink is swapped atomically to a new timestamped directory, so the file's
//! own inode never changes and a watch on it would hear nothing (editors that save by rename
//! do the same). Once the directory has been quiet for 200 ms after an event, the file is read
//! through its symlinks and reloaded only if its bytes differ from the last ones read (and it
//! is not empty).

use super::Reloader;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Quiet time after a file event before the file is read (a swap is several events).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Runs reloads until `stop` turns true; `file` (the config file) is watched if given.
pub fn spawn(
    file: Option<PathBuf>,
    mut reloader: Reloader,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // Set up before returning: from here on SIGHUP reloads instead of ending the process, and
    // file changes are seen.
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload on SIGHUP is off");
            None
        }
    };
    let changed = Arc::new(Notify::new());
    let watcher = file.as_deref().and_then(|f| watch_dir(f, changed.clone()));
    let file = watcher.as_ref().and(file);
    let mut last = file.as_deref().and_then(|f| std::fs::read(f).ok());
    tokio::spawn(async move {
        loop {
            let why = tokio::select! {
                _ = async { hup.as_mut()?.recv().await }, if hup.is_some() => "SIGHUP",
                () = changed.notified(), if file.is_some() => {
                    // Quiet for DEBOUNCE since the last event: a file written in place (truncated,
                    // then written) is read once it is whole.
                    while tokio::time::timeout(DEBOUNCE, changed.notified()).await.is_ok() {}
                    let Some(path) = file.as_deref() else { continue };
                    let now = std::fs::read(path).ok();
                    // An empty file is a write caught half-way (or a mistake), not a config
                    // of defaults: the next event (or SIGHUP) reads it again.
                    if now.as_ref().is_none_or(|b| b.is_empty()) || now == last {
                        continue;
                    }
                    last = now;
                    "config file changed"
                }
                _ = stop.changed() => break,
            };
            if why == "SIGHUP" {
                if let Some(path) = file.as_deref() {
                    last = std::fs::read(path).ok();
                }
            }
            reloader.reload(why).await;
        }
        drop(watcher);
    })
}

/// Watches the directory holding `file`; `None` (with a warning) if that is not possible.
fn watch_dir(file: &Path, changed: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let dir: PathBuf = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut w = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening and reading a file is no change to it, and reading the config file here
        // raises those events: heard, they would make every read ask for the next one.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            changed.notify_one();
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            return None;
        }
    };
    match w.watch(&dir, RecursiveMode::NonRecursive) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "watching the config file's directory for changes");
            Some(w)
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config file's directory; reload with SIGHUP");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::watch_dir;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::Notify;

    #[tokio::test]
    async fn reading_the_file_is_not_a_change_but_writing_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("proxy.toml");
        std::fs::write(&file, "[server]\n").unwrap();
        let changed = Arc::new(Notify::new());
        let _w = watch_dir(&file, changed.clone()).expect("inotify watch");
        for _ in 0..3 {
            std::fs::read(&file).unwrap();
        }
        let heard = tokio::time::timeout(Duration::from_millis(500), changed.notified()).await;
        assert!(
            heard.is_err(),
            "reading the config file was taken for a change"
        );
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:6380\"\n").unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), changed.notified()).await;
        assert!(heard.is_ok(), "a write to the config file was not heard");
    }
}
