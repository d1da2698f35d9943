//! What starts the drain: SIGTERM/SIGINT, or a [`Trigger`] fired by `POST /quitquitquit`.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, draining"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, draining"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT will drain");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A drain started from inside the process (`POST /quitquitquit`, for Jobs whose app is done):
/// fired once, awaited beside the signal, and followed by the same sequence.
#[derive(Default)]
pub struct Trigger(tokio::sync::Notify);

impl Trigger {
    /// Starts the drain; firing again before it is awaited changes nothing.
    pub fn fire(&self) {
        // notify_one keeps a permit when nobody waits yet, so an early POST is not lost.
        self.0.notify_one();
    }

    /// Resolves once `fire` has been called.
    pub async fn fired(&self) {
        self.0.notified().await;
    }
}
