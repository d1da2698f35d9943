//! TLS settings built from files and built again when the files change: a certificate renewed
//! by cert-manager (a Kubernetes Secret mounted as a volume is swapped in place) or a rotated CA
//! bundle takes effect without a restart. Connections already open keep the settings they were
//! made with; the next handshake uses the new ones.
//!
//! The files are read again every `tls_reload_interval` ([`watch`]); when any content differs
//! from what the current settings were built from, they are built anew and swapped in. A file
//! that does not parse, or a key that does not fit its certificate (a renewal caught between
//! writing the two files), keeps the settings in use, with a warning, and is tried again at the
//! next check.

use super::TlsSetupError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

type Build<T> = Box<dyn Fn() -> Result<T, TlsSetupError> + Send + Sync>;

/// One side's TLS settings (`T`: an acceptor or a connector, cheap to clone) and the files they
/// were built from.
pub struct Renewing<T> {
    files: Vec<PathBuf>,
    /// The files' content when the current settings were built.
    built_from: Mutex<Vec<Option<Vec<u8>>>>,
    current: RwLock<T>,
    build: Build<T>,
}

/// What a check of the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Unchanged,
    Renewed,
    /// Changed, but unusable: the settings in use stay.
    Refused(TlsSetupError),
}

impl<T: Clone> Renewing<T> {
    /// Builds the settings from `files` (read by `build` itself); an error as at start.
    pub fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsSetupError> + Send + Sync + 'static,
    ) -> Result<Self, TlsSetupError> {
        let built_from = read_all(&files);
        let current = build()?;
        Ok(Self {
            files,
            built_from: Mutex::new(built_from),
            current: RwLock::new(current),
            build: Box::new(build),
        })
    }

    /// The settings for the next handshake.
    pub fn get(&self) -> T {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again and, if any changed, builds and swaps in new settings.
    pub fn check(&self) -> Checked {
        let now = read_all(&self.files);
        let mut built_from = self.built_from.lock().unwrap_or_else(|p| p.into_inner());
        if *built_from == now {
            return Checked::Unchanged;
        }
        match (self.build)() {
            Ok(t) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = t;
                // What was read before the build: if a file changed in between, the next check
                // builds again.
                *built_from = now;
                Checked::Renewed
            }
            Err(e) => Checked::Refused(e),
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

fn read_all(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// Something whose files can be checked (both sides' settings, whatever their `T`).
pub trait Check: Send + Sync {
    fn check(&self) -> Checked;
    fn files(&self) -> &[PathBuf];
}

impl<T: Clone + Send + Sync> Check for Renewing<T> {
    fn check(&self) -> Checked {
        Renewing::check(self)
    }
    fn files(&self) -> &[PathBuf] {
        Renewing::files(self)
    }
}

/// Checks `side`'s files every `every` for the life of the process; `counted` gets each
/// renewal (`true`) and each refused change (`false`). Nothing to do for `every` of zero.
pub fn watch(
    side: &'static str,
    renewing: Arc<dyn Check>,
    every: Duration,
    counted: impl Fn(bool) + Send + 'static,
) {
    if every.is_zero() || renewing.files().is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // The last refusal logged, so a file left broken is named once, not at every check.
        let mut last_refusal: Option<TlsSetupError> = None;
        loop {
            tick.tick().await;
            let r = renewing.clone();
            let checked = match tokio::task::spawn_blocking(move || r.check()).await {
                Ok(c) => c,
                Err(_) => continue,
            };
            match checked {
                Checked::Unchanged => {}
                Checked::Renewed => {
                    last_refusal = None;
                    counted(true);
                    tracing::info!(side, files = ?renewing.files(), "TLS certificate files changed: renewed for new connections");
                }
                Checked::Refused(e) => {
                    counted(false);
                    if last_refusal.as_ref() != Some(&e) {
                        tracing::warn!(side, key = e.key, error = %e.message, "TLS certificate files changed but cannot be used: the ones in use stay");
                    }
                    last_refusal = Some(e);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn renewing(dir: &std::path::Path) -> (Renewing<String>, Arc<AtomicUsize>) {
        let file = dir.join("f");
        std::fs::write(&file, "one").unwrap();
        let builds = Arc::new(AtomicUsize::new(0));
        let (b, f) = (builds.clone(), file.clone());
        let r = Renewing::new(vec![file], move || {
            b.fetch_add(1, Ordering::SeqCst);
            let text =
                std::fs::read_to_string(&f).map_err(|e| TlsSetupError::new("f", e.to_string()))?;
            if text == "bad" {
                return Err(TlsSetupError::new("f", "bad"));
            }
            Ok(text)
        })
        .unwrap();
        (r, builds)
    }

    #[test]
    fn settings_are_built_again_only_when_a_file_changes_and_a_bad_change_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let (r, builds) = renewing(dir.path());
        assert_eq!(r.get(), "one");
        assert_eq!(r.check(), Checked::Unchanged);
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        std::fs::write(dir.path().join("f"), "two").unwrap();
        assert_eq!(r.check(), Checked::Renewed);
        assert_eq!(r.get(), "two");
        std::fs::write(dir.path().join("f"), "bad").unwrap();
        assert!(matches!(r.check(), Checked::Refused(_)));
        assert_eq!(r.get(), "two");
        // Tried again at each check until it is usable.
        assert!(matches!(r.check(), Checked::Refused(_)));
        std::fs::write(dir.path().join("f"), "three").unwrap();
        assert_eq!(r.check(), Checked::Renewed);
        assert_eq!(r.get(), "three");
        assert_eq!(r.check(), Checked::Unchanged);
    }

    #[test]
    fn a_file_that_goes_missing_keeps_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = renewing(dir.path());
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert!(matches!(r.check(), Checked::Refused(_)));
        assert_eq!(r.get(), "one");
    }
}
