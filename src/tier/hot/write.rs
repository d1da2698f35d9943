//! Writes through this sidecar: the guard that keeps their keys out of the tier until answered.

use super::HotTier;
use crate::metrics::InvalidationSource;
use bytes::Bytes;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

/// A write through this sidecar to cached keys, from dispatch until its reply is applied.
pub struct WriteGuard {
    tier: Arc<HotTier>,
    keys: Vec<Bytes>,
    flush: bool,
    completed: bool,
}

impl std::fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGuard")
            .field("keys", &self.keys.len())
            .field("flush", &self.flush)
            .finish()
    }
}

impl WriteGuard {
    pub fn keys(&self) -> &[Bytes] {
        &self.keys
    }

    pub fn flush(&self) -> bool {
        self.flush
    }

    /// The write was answered: evict its keys again (failing fills that raced it), then let
    /// the keys be cached again.
    pub async fn complete(mut self) {
        if self.flush {
            self.tier.invalidate_all(InvalidationSource::Flush).await;
        }
        for k in &self.keys {
            self.tier.evict(k).await;
        }
        self.completed = true;
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if !self.completed {
            // Dropped unanswered (the client left, the batch failed): the write may still run
            // upstream, so fail the fills in flight and evict the keys as a completion would.
            for k in &self.keys {
                self.tier.stripe(k).epoch.fetch_add(1, SeqCst);
            }
            if self.flush {
                self.tier.flushes.fetch_add(1, SeqCst);
            }
            for k in &self.keys {
                self.tier.front_remove(k);
            }
            if self.flush {
                self.tier.front.clear();
            }
            let (tier, keys, flush) = (
                self.tier.clone(),
                std::mem::take(&mut self.keys),
                self.flush,
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let pending = keys.clone();
                rt.spawn(async move {
                    if flush {
                        tier.cache.invalidate_all();
                    }
                    for k in &pending {
                        tier.cache.invalidate(k).await;
                    }
                });
            }
            self.keys = keys;
        }
        for k in &self.keys {
            self.tier.stripe(k).writes.fetch_sub(1, SeqCst);
        }
        if self.flush {
            self.tier.flushes_in_flight.fetch_sub(1, SeqCst);
        }
        // Last: while any stripe count above is raised, so is this one.
        self.tier.guards_in_flight.fetch_sub(1, SeqCst);
    }
}

impl HotTier {
    /// Starts a write of `keys` (or a flush): until the guard is completed or dropped, those keys
    /// are neither served nor stored. The caller evicts them now as well.
    pub fn begin_write(self: &Arc<Self>, keys: Vec<Bytes>, flush: bool) -> WriteGuard {
        // First: a read that finds no guard in flight needs no look at the key's stripe.
        self.guards_in_flight.fetch_add(1, SeqCst);
        for k in &keys {
            let st = self.stripe(k);
            st.writes.fetch_add(1, SeqCst);
            st.epoch.fetch_add(1, SeqCst);
        }
        if flush {
            self.flushes_in_flight.fetch_add(1, SeqCst);
            self.flushes.fetch_add(1, SeqCst);
        }
        WriteGuard {
            tier: self.clone(),
            keys,
            flush,
            completed: false,
        }
    }
}
