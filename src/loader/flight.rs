//! Single-flight loads within one sidecar, ordered against the reads that share them.
//!
//! Concurrent misses of a key share one load. A read may only take a shared value that was read
//! (from Redis or PostgreSQL) after the read began: a value read before it may predate a write
//! the client saw acknowledged before sending the read. (A reader joining a load whose query was
//! already in flight when an UPDATE committed and its key's DEL was acknowledged would otherwise
//! get, and keep in its hot tier, the row as it was before the UPDATE.)
//!
//! Order is kept with tickets from one counter: a read takes one when it is planned (before its
//! upstream read is sent), a load takes one just before each read that can produce its value.
//! A shared value serves a read if its ticket is the later one; otherwise the read loads again.

use super::{LoadError, Loaded, Loader, Mapping};
use bytes::Bytes;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use tokio::sync::watch;

/// What a load shares: its result and the ticket of the read that produced it.
type Shared = Option<(Result<Loaded, LoadError>, u64)>;

/// A load in flight (or just finished) for a key.
pub(super) struct Flight {
    id: u64,
    rx: watch::Receiver<Shared>,
    /// The mapping it loads with: after a config reload, reads of the new mapping never share
    /// a load of the old one (its query may differ).
    mapping: Arc<Mapping>,
}

enum Role {
    Lead(watch::Sender<Shared>, u64),
    Follow(watch::Receiver<Shared>),
}

/// A leader's load: the value, whether Redis holds it, and when it was read.
pub(super) struct Lead {
    pub loaded: Loaded,
    pub kept: bool,
    pub read_at: u64,
}

impl Loader {
    /// A ticket: later than every ticket taken before (see the module's notes).
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, SeqCst) + 1
    }

    /// Loads `key` for a read that took ticket `begun`: one load per key at a time in this
    /// sidecar (reads share it when its value was read after they began), and across sidecars
    /// one per lease. `upstream_down` skips Redis (answered from Postgres, counted degraded).
    pub async fn load(
        &self,
        m: &Arc<Mapping>,
        key: &Bytes,
        captures: &[Bytes],
        upstream_down: bool,
        begun: u64,
    ) -> Result<Loaded, LoadError> {
        loop {
            // Decide under the lock, act outside it: the guard must not live across an await.
            let role = {
                let mut flights = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                match flights.get(key) {
                    // A finished load whose value is older than this read is of no use to it.
                    Some(f)
                        if Arc::ptr_eq(&f.mapping, m)
                            && f.rx.borrow().as_ref().is_none_or(|(_, at)| *at > begun) =>
                    {
                        Role::Follow(f.rx.clone())
                    }
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        let id = self.ticket();
                        let mapping = m.clone();
                        flights.insert(key.clone(), Flight { id, rx, mapping });
                        Role::Lead(tx, id)
                    }
                }
            };
            let mut rx = match role {
                Role::Follow(rx) => rx,
                Role::Lead(tx, id) => {
                    let (result, kept) = {
                        // Removes the flight even if this future is dropped mid-load (its client left).
                        let _flight = FlightGuard {
                            loader: self,
                            key,
                            id,
                        };
                        let led = match self.lead(m, key, captures, upstream_down).await {
                            Err(e) if m.stale_if_error.is_some() => {
                                match self.or_stale(m, key, Err(e)).await {
                                    Ok(stale) => Ok(Lead {
                                        loaded: stale,
                                        kept: false,
                                        read_at: self.ticket(),
                                    }),
                                    Err(e) => Err(e),
                                }
                            }
                            other => other,
                        };
                        match led {
                            Ok(l) => {
                                let _ = tx.send(Some((Ok(l.loaded.clone()), l.read_at)));
                                (Ok(l.loaded), l.kept)
                            }
                            // An error is shared with every read waiting: it is no older value.
                            Err(e) => {
                                let _ = tx.send(Some((Err(e.clone()), u64::MAX)));
                                (Err(e), true)
                            }
                        }
                    };
                    // After the flight is gone, so no read can take this value after its key was
                    // forgotten; reads that took it before are undone by the forgetting.
                    if !kept {
                        self.forget(key);
                    }
                    return result;
                }
            };
            let shared = loop {
                if let Some(s) = rx.borrow_and_update().clone() {
                    break Some(s);
                }
                if rx.changed().await.is_err() {
                    // The leader was dropped mid-load (its client left).
                    break None;
                }
            };
            match shared {
                Some((result, at)) if at > begun => {
                    m.metrics.coalesced.inc();
                    return result;
                }
                // Read before this read began, or never finished: load again.
                _ => continue,
            }
        }
    }
}

/// Takes a leader's flight out of the map when the leader finishes or is dropped, unless a newer
/// load has taken its place.
struct FlightGuard<'a> {
    loader: &'a Loader,
    key: &'a Bytes,
    id: u64,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .loader
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights.get(self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(self.key);
        }
    }
}
