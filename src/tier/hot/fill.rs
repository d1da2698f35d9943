//! Fills: the stamp a read takes when sent upstream, and storing its value unless a write raced it.

use super::{
    front, Cached, Entry, HotTier, Rule, Slot, Slots, View, ENTRY_OVERHEAD, VIEW_OVERHEAD,
};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The epochs a fill must find unchanged for its value to stay.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    stripe: u64,
    flush: u64,
}

/// What a fill learned upstream.
#[derive(Debug)]
pub struct Fill {
    pub key: Bytes,
    pub view: View,
    pub value: Cached,
    /// PTTL of the key upstream: ms left, -1 no expiry, -2 no key.
    pub pttl: i64,
    pub stamp: Stamp,
    pub rule: Arc<Rule>,
}

impl HotTier {
    /// Fails every fill of `key` stamped before now, and takes out what such a fill already
    /// stored: its value was loaded but never became Redis's, so no invalidation will follow a
    /// write that races it. (A read that shared the load may have stored the value before the
    /// loader learned it was not kept: the bump alone would leave that entry in place, with
    /// nothing left to remove it.)
    pub fn forget(&self, key: &[u8]) {
        self.stripe(key).epoch.fetch_add(1, SeqCst);
        self.front_remove(key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (cache, key) = (self.cache.clone(), Bytes::copy_from_slice(key));
            rt.spawn(async move { cache.invalidate(&key).await });
        }
    }

    /// Taken when a fill's read is sent upstream.
    pub fn stamp(&self, key: &[u8]) -> Stamp {
        Stamp {
            stripe: self.stripe(key).epoch.load(SeqCst),
            flush: self.flushes.load(SeqCst),
        }
    }

    fn stamp_holds(&self, key: &[u8], s: Stamp) -> bool {
        let hash = self.front.hash(key);
        !self.write_in_flight(hash)
            && self.stripe_at(hash).epoch.load(SeqCst) == s.stripe
            && self.flushes.load(SeqCst) == s.flush
    }

    /// Stores what a fill read, unless a write invalidated the key meanwhile.
    pub async fn fill(&self, f: Fill) {
        let m = &self.metrics.cache;
        match &f.value {
            Cached::Value(_) => m.upstream_hits.inc(),
            Cached::Nil => m.upstream_misses.inc(),
        }
        if !self.is_coherent() {
            return;
        }
        if f.value.len() > f.rule.max_value_size {
            m.fills_too_large.inc();
            return;
        }
        let ttl = match f.pttl {
            ms if ms > 0 => f.rule.ttl.min(Duration::from_millis(ms as u64)),
            -1 => f.rule.ttl,
            // No key upstream: only a null is consistent with that.
            -2 if f.value == Cached::Nil || f.view == View::Exists => f.rule.ttl,
            _ => {
                m.fills_expired.inc();
                return;
            }
        };
        if !self.stamp_holds(&f.key, f.stamp) {
            m.fills_raced.inc();
            return;
        }
        let now = Instant::now();
        // Stored bytes are copied out of the I/O buffers they arrived in: a slice would keep a
        // whole read buffer alive while the byte bound counted only the slice. Key, field and
        // a reply too long for the read map's bucket share one allocation; a short reply is
        // copied into the bucket (`front::Stored`), so the allocation leaves it out.
        let field = match &f.view {
            View::HGet(field) => &field[..],
            _ => &[],
        };
        let value = match &f.value {
            Cached::Value(b) if !front::Stored::fits(b) => &b[..],
            _ => &[],
        };
        let mut one = BytesMut::with_capacity(f.key.len() + field.len() + value.len());
        one.extend_from_slice(&f.key);
        one.extend_from_slice(field);
        one.extend_from_slice(value);
        let mut one = one.freeze();
        let key = one.split_to(f.key.len());
        let field = one.split_to(field.len());
        let view = match f.view {
            View::HGet(_) => View::HGet(field),
            v => v,
        };
        let value = match f.value {
            Cached::Value(b) if front::Stored::fits(&b) => Cached::Value(b),
            Cached::Value(_) => Cached::Value(one),
            Cached::Nil => Cached::Nil,
        };
        let slot = Slot {
            view,
            value: front::Stored::new(value),
            deadline: now + ttl,
        };
        let hash = self.front.hash(&f.key);
        let mut slots: Slots = self
            .front
            .with(&f.key, hash, |held| {
                held.iter()
                    .filter(|s| s.view != slot.view && s.deadline > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        slots.push(slot);
        let deadline = slots.iter().map(|s| s.deadline).max().unwrap_or(now);
        let weight = ENTRY_OVERHEAD
            + key.len()
            + slots
                .iter()
                .map(|s| VIEW_OVERHEAD + s.value.len() + view_len(&s.view))
                .sum::<usize>();
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        let id = self.ids.fetch_add(1, SeqCst) + 1;
        // The front first, with the stamp checked under its lock (see `Front::put`): moka's
        // listener may remove this entry as soon as moka has it.
        let held = front::Held {
            key: front::Key::new(&key),
            id,
            slots,
        };
        if !self
            .front
            .put(held, hash, || self.stamp_holds(&f.key, f.stamp))
        {
            m.fills_raced.inc();
            return;
        }
        self.cache
            .insert(
                key,
                Entry {
                    id,
                    weight,
                    deadline,
                },
            )
            .await;
        if self.stamp_holds(&f.key, f.stamp) {
            m.fills_stored.inc();
        } else {
            // An invalidation came after the put: it took the put out of the front, but may
            // have reached moka before this insert did. Drop what moka now holds for nothing.
            self.front.remove(&f.key, hash, id);
            self.cache.invalidate(&f.key).await;
            m.fills_raced.inc();
        }
    }
}

fn view_len(v: &View) -> usize {
    match v {
        View::HGet(f) => f.len(),
        _ => 0,
    }
}
