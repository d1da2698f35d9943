//! The invalidation fence: whether invalidations have arrived that are not applied yet.

use super::HotTier;
use std::sync::atomic::Ordering::SeqCst;

/// Raised from before the coherence task reads its socket until what it read is applied (see
/// `invalidations_pending`); lowered when dropped.
pub(crate) struct Applying<'t>(&'t HotTier);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.applying.store(false, SeqCst);
    }
}

impl HotTier {
    /// Whether invalidations have arrived that are not applied yet: unread on the invalidation
    /// connection, or read and being applied. A hit is not served then (the read goes upstream):
    /// Redis sends a write's invalidation before the writer's reply, so a client that saw the
    /// reply and reads through another sidecar finds the invalidation there at least pending.
    pub fn invalidations_pending(&self) -> bool {
        // The socket first, then the flag: the coherence task raises the flag before it reads
        // the socket and lowers it once what it read is applied, so an invalidation this peek
        // no longer finds on the socket is either applied or still flagged. A plain load: many
        // sessions check at once without contending with each other.
        let unread = match self.watch.read() {
            Ok(guard) => match guard.as_ref() {
                Some(sock) => {
                    let mut one = [0u8; 1];
                    !matches!(sock.peek(&mut one), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
                None => false,
            },
            Err(_) => true,
        };
        unread || self.applying.load(SeqCst)
    }

    /// The coherence task's socket (a duplicate), or `None` when it is gone.
    pub(crate) fn watch_socket(&self, sock: Option<std::net::TcpStream>) {
        if let Ok(mut guard) = self.watch.write() {
            *guard = sock;
        }
    }

    /// Held while invalidations taken off the socket are applied (see `invalidations_pending`).
    pub(crate) fn applying(&self) -> Applying<'_> {
        self.applying.store(true, SeqCst);
        Applying(self)
    }
}
