//! Broadcast coherence at fleet scale: writes answered while an announcement is in flight share
//! the next one, so one PUBLISH carries many keys.
//!
//! Redis spends CPU per subscriber on every PUBLISH (about 0.37 µs each on redis-server 7.0), so
//! with a PUBLISH per write a fleet of N sidecars costs Redis ~0.37·N µs per write. Here a
//! sidecar's first write with nothing announcing carries its PUBLISH in its own pipeline (no
//! added latency); writes that arrive while that or a batch is in flight are sent alone and,
//! once Redis has answered them, wait for the next batch, which takes every key queued by then.
//! A write's reply still reaches its client only after the PUBLISH naming its keys has been
//! answered, and that PUBLISH runs after the write (it is sent once the write's reply is in),
//! so the ordering argument of the fence holds unchanged.

use super::HotTier;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};

/// Sends a command (a PUBLISH, mostly); resolves to Redis's reply, `None` for an error reply or
/// none at all.
pub type Publish =
    Box<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = Option<Bytes>> + Send>> + Send + Sync>;

/// Keys per PUBLISH at most: a larger batch goes as several, pipelined. Packed keys take a few
/// bytes each, and Redis pays per message per subscriber: a packed message holds many more.
const KEYS_PER_MESSAGE: usize = 512;
const PACKED_KEYS_PER_MESSAGE: usize = 8192;

#[derive(Default)]
struct Queue {
    keys: Vec<Bytes>,
    flush: bool,
    waiters: Vec<oneshot::Sender<bool>>,
}

#[derive(Default)]
pub(super) struct Announcer {
    queue: Mutex<Queue>,
    ready: Notify,
    /// PUBLISHes in flight, inline or batched: a write sends its own only when this is zero.
    in_flight: AtomicUsize,
}

/// An inline PUBLISH in flight; dropped when its batch's reply is handled.
pub struct Inline(Arc<HotTier>);

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inline")
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        self.0.announcer.in_flight.fetch_sub(1, SeqCst);
    }
}

impl HotTier {
    /// In broadcast mode with batching on: whether a write batch should carry its PUBLISH itself
    /// (`Some`: nothing else is announcing) or leave its keys to the next batch (`None`).
    pub fn announce_inline(self: &Arc<Self>) -> Option<Inline> {
        if self.announces_after_reply() {
            return None;
        }
        let n = &self.announcer.in_flight;
        if self.batching {
            n.compare_exchange(0, 1, SeqCst, SeqCst).ok()?;
        } else {
            n.fetch_add(1, SeqCst);
        }
        Some(Inline(self.clone()))
    }

    /// Announces `keys` (or a flush) in the next batch; resolves once its PUBLISH is answered,
    /// to whether it was. Call only after the writes' replies have arrived.
    pub async fn announce(&self, keys: Vec<Bytes>, flush: bool) -> bool {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self
                .announcer
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            q.keys.extend(keys);
            q.flush |= flush;
            q.waiters.push(tx);
        }
        self.announcer.ready.notify_one();
        rx.await.unwrap_or(false)
    }

    /// The keys of a batch in the groups announced apart: all together, or with
    /// `hot.channel_per_prefix` one group per namespace (keys without one together, on the base
    /// channel), so each group's messages go on its namespace's channel.
    pub(super) fn key_groups<'k>(&self, keys: &'k [Bytes]) -> Vec<Vec<Bytes>> {
        if !self.broadcast().is_some_and(|b| b.per_prefix) {
            return vec![keys.to_vec()];
        }
        let mut groups: std::collections::BTreeMap<Option<&'k [u8]>, Vec<Bytes>> =
            Default::default();
        for k in keys {
            groups
                .entry(super::channels::namespace(k))
                .or_default()
                .push(k.clone());
        }
        groups.into_values().collect()
    }

    /// Sends batches as keys are queued, one batch in flight at a time. Runs for the tier's life.
    pub(super) async fn run_announcer(&self, publish: &Publish) {
        loop {
            self.announcer.ready.notified().await;
            // Writes whose replies are being handled now join this batch.
            tokio::task::yield_now().await;
            let q = std::mem::take(
                &mut *self
                    .announcer
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            if q.waiters.is_empty() {
                continue;
            }
            self.announcer.in_flight.fetch_add(1, SeqCst);
            let mut keys = q.keys;
            keys.sort_unstable();
            keys.dedup();
            let mut groups = self.message_groups(&keys, q.flush);
            if self.relay {
                // Through the fleet's relay; what it did not announce is announced here.
                let relayed = self.via_relay(publish, &groups).await;
                let mut done = relayed.into_iter();
                groups.retain(|_| !done.next().unwrap_or(false));
                if groups.is_empty() {
                    self.announcer.in_flight.fetch_sub(1, SeqCst);
                    for w in q.waiters {
                        let _ = w.send(true);
                    }
                    self.announce_more();
                    continue;
                }
            }
            let ok = self.publish_groups(publish, &groups, keys.len()).await;
            self.announcer.in_flight.fetch_sub(1, SeqCst);
            for w in q.waiters {
                let _ = w.send(ok);
            }
            self.announce_more();
        }
    }

    /// The messages of a batch of sorted, distinct `keys` (or of a flush): per namespace with
    /// `channel_per_prefix`, each cut at the keys a message holds.
    pub(super) fn message_groups(&self, keys: &[Bytes], flush: bool) -> Vec<(Vec<Bytes>, bool)> {
        if flush {
            return vec![(Vec::new(), true)];
        }
        let most = if self.packed {
            PACKED_KEYS_PER_MESSAGE
        } else {
            KEYS_PER_MESSAGE
        };
        self.key_groups(keys)
            .iter()
            .flat_map(|g| g.chunks(most))
            .map(|c| (c.to_vec(), false))
            .collect()
    }

    /// Announces `groups` (naming `keys` keys in all) and then sends the fence; whether Redis
    /// answered all of it.
    pub(super) async fn publish_groups(
        &self,
        publish: &Publish,
        groups: &[(Vec<Bytes>, bool)],
        keys: usize,
    ) -> bool {
        let messages: Vec<Bytes> = groups
            .iter()
            .filter_map(|(c, flush)| self.broadcast_command(c, *flush))
            .collect();
        let m = &self.metrics.cache;
        m.announcements.inc_by(messages.len() as u64);
        m.announced_keys.inc_by(keys as u64);
        // Sent together (each call queues its PUBLISH at once), then awaited.
        let sent: Vec<_> = messages.into_iter().map(publish).collect();
        let mut ok = true;
        for s in sent {
            ok &= s.await.is_some();
        }
        // Redis writes a PUBLISH's reply before the messages to the subscribers (its pending
        // writes are handled newest first), so the reply alone does not say that the other
        // sidecars' connections have the message. A command sent after that reply is read in a
        // later turn of Redis's event loop, after the turn that wrote the messages: its reply
        // does. `EXISTS <channel>` reaches the channel's node (its slot, on a cluster).
        ok && self.fence_published().await
    }

    /// Wakes the announcer again if more was queued while a batch was out.
    fn announce_more(&self) {
        let more = !self
            .announcer
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .is_empty();
        if more {
            self.announcer.ready.notify_one();
        }
    }
}
