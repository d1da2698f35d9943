//! Refresh-ahead: a read that finds a mapped key in the last `refresh_ahead` share of its TTL
//! is answered at once and asks for a background reload. One reload per key at a time in a
//! sidecar (the queue), and one in the fleet: the reload takes the key's fill lease and checks
//! under it that no other sidecar has refreshed the key already, then queries and fills with
//! the fill script (so a write that deletes the lease meanwhile wins, as against any load).

use super::lease::{call, counted_fill, lease_key, new_token, release_command};
use super::{Loaded, Loader, Mapping};
use crate::protocol::request::encode_command;
use crate::protocol::scan::integer;
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Keys waiting for a refresh, at most this many (more are dropped: they expire and load).
const QUEUE_LIMIT: usize = 1024;

#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Bytes>,
    /// Keys queued or being refreshed.
    busy: HashSet<Bytes>,
}

impl Queue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mapping {
    /// The part of a fill's TTL, in ms, in which reads ask for a refresh; `None` without
    /// `refresh_ahead`.
    pub fn refresh_window_ms(&self) -> Option<i64> {
        self.refresh_ahead
            .map(|f| (self.ttl.as_millis() as f64 * f) as i64)
    }

    /// A read found `key` with `pttl` ms left: asks for a refresh if that is inside the window.
    pub fn maybe_refresh(&self, key: &Bytes, pttl: i64) {
        let Some(window) = self.refresh_window_ms() else {
            return;
        };
        if pttl <= 0 || pttl > window {
            return;
        }
        let mut st = self.refresher.state();
        if st.busy.len() >= QUEUE_LIMIT || !st.busy.insert(key.clone()) {
            return;
        }
        st.waiting.push_back(key.clone());
        drop(st);
        self.refresher.ready.notify_one();
    }
}

impl Loader {
    /// Runs refreshes as reads ask for them, for as long as the loader lives. Started whatever
    /// the mappings say: a reload may give one `refresh_ahead`, and an idle task costs nothing.
    pub fn start_refresher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let queue = self.refresher.clone();
        tokio::spawn(async move {
            loop {
                queue.ready.notified().await;
                let Some(loader) = weak.upgrade() else { return };
                let keys: Vec<Bytes> = queue.state().waiting.drain(..).collect();
                for key in keys {
                    let loader = loader.clone();
                    tokio::spawn(async move {
                        loader.refresh(&key).await;
                        loader.refresher.state().busy.remove(&key);
                    });
                }
            }
        });
    }

    /// One refresh of `key`, if this sidecar gets its lease and no one refreshed it meanwhile.
    async fn refresh(&self, key: &Bytes) {
        let Some((m, caps)) = self.resolve(key) else {
            return;
        };
        let (Some(upstream), Some(window)) = (self.upstream.as_ref(), m.refresh_window_ms()) else {
            return;
        };
        let token = new_token();
        let lease_ms = self.lease.as_millis().max(1).to_string();
        let mut take = encode_command(&[
            &b"SET"[..],
            &lease_key(key),
            &token,
            b"NX",
            b"PX",
            lease_ms.as_bytes(),
        ])
        .to_vec();
        take.extend_from_slice(&encode_command(&[&b"PTTL"[..], key]));
        let Ok(r) = call(upstream, Bytes::from(take), 2).await else {
            return;
        };
        if !r[0].starts_with(b"+OK") {
            // Another load or refresh holds the lease: it is the fleet's one query.
            return;
        }
        let release = || async {
            let _ = call(upstream, release_command(key, &token), 1).await;
        };
        // Under the lease: a refresh by another sidecar has filled already (or a write
        // deleted the key, and the next read loads it as usual).
        let left = integer(&r[1]).unwrap_or(-2);
        if left <= 0 || left > window {
            release().await;
            return;
        }
        let loaded = match self.params(&m, &caps).await {
            Ok(params) => self.query(&m, &params).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(loaded) if loaded != Loaded::NotFound => {
                m.strategy_metrics.refreshes.inc();
                let reply = call(upstream, self.fill_command(&m, key, &token, &loaded), 1).await;
                counted_fill(&m, reply.as_ref().ok().and_then(|r| integer(&r[0])));
            }
            // Gone from the database, or not loaded now: the value expires as it would have.
            _ => release().await,
        }
    }
}
