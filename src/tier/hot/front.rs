//! The hot tier's read path: a sharded map that mirrors moka's entries, so a hit is one hash,
//! one shared lock and one probe, without moka's per-read bookkeeping (its access queue, deque
//! moves and pending-task runs cost more than the lookup itself).
//!
//! moka stays the store and the eviction engine: every entry is put here before it is put in
//! moka, and moka's removal listener takes it out again. Each put carries an id from one
//! counter; a removal of id `n` takes out what is here only if its id is `<= n`, so a listener
//! that runs late never removes a newer entry, and an entry moka no longer holds never stays:
//! moka holds at most one entry per key, and removing it (evicted, expired, replaced,
//! invalidated) notifies an id at least as new as whatever this map holds for the key. The map
//! may lose an entry moka still holds (a put that lost a race); that costs one miss.
//!
//! moka still learns what is read: one hit in [`SAMPLE`] per thread is also a moka read, so its
//! admission and eviction policy keeps the keys' relative popularity.

use super::{Slot, Slots};
use crate::protocol::reply::Proto;
use bytes::{Bytes, BytesMut};
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::RwLock;

/// Shards of the map: a power of two.
const SHARDS: usize = 64;
/// One hit in this many (per thread) is also recorded as a moka read.
pub(super) const SAMPLE: u32 = 32;

/// Keys up to this long are held inside the map's bucket.
const INLINE: usize = 30;

/// A key as the map holds it. A hit's probe compares the key it finds; held in the bucket the
/// probe already reads, a short key costs no second memory access (with 100,000 keys, that
/// access is a cache miss and was the largest cost of a hit).
#[derive(Debug, Clone)]
pub(super) enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Bytes),
}

impl Key {
    pub fn new(key: &Bytes) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Shared(key.clone())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(b) => b,
        }
    }
}

/// A cached reply: the upstream's bytes, or a null (rendered in each client's protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Value(Bytes),
    Nil,
}

impl Cached {
    /// The reply bytes in `proto`.
    pub fn render(&self, proto: Proto) -> Bytes {
        match self {
            Cached::Value(b) => b.clone(),
            Cached::Nil => Bytes::from_static(match proto {
                Proto::Resp2 => b"$-1\r\n",
                Proto::Resp3 => b"_\r\n",
            }),
        }
    }

    /// Appends the reply bytes in `proto` to `out`.
    pub fn render_into(&self, proto: Proto, out: &mut BytesMut) {
        match self {
            Cached::Value(b) => out.extend_from_slice(b),
            Cached::Nil => out.extend_from_slice(match proto {
                Proto::Resp2 => b"$-1\r\n",
                Proto::Resp3 => b"_\r\n",
            }),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Cached::Value(b) => b.len(),
            Cached::Nil => 0,
        }
    }
}

/// Replies up to this long are held inside the map's bucket.
const INLINE_REPLY: usize = 118;

/// A view's reply as the map holds it. A short one is held in the bucket, beside the key the
/// probe compares, so copying it out is no second memory access (with 100,000 keys, the read
/// of a value held apart was a cache miss and the largest cost of a hit); a longer one is
/// shared.
#[derive(Debug, Clone)]
pub(super) enum Stored {
    Inline { len: u8, bytes: [u8; INLINE_REPLY] },
    Shared(Cached),
}

impl Stored {
    /// Whether `reply` is held in the bucket.
    pub fn fits(reply: &[u8]) -> bool {
        reply.len() <= INLINE_REPLY
    }

    pub fn new(c: Cached) -> Self {
        match &c {
            Cached::Value(b) if Self::fits(b) => {
                let mut bytes = [0; INLINE_REPLY];
                bytes[..b.len()].copy_from_slice(b);
                Stored::Inline {
                    len: b.len() as u8,
                    bytes,
                }
            }
            _ => Stored::Shared(c),
        }
    }

    /// The reply's bytes; `None` for a null (rendered in each client's protocol).
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Stored::Inline { len, bytes } => Some(&bytes[..usize::from(*len)]),
            Stored::Shared(Cached::Value(b)) => Some(b),
            Stored::Shared(Cached::Nil) => None,
        }
    }

    pub fn is_nil(&self) -> bool {
        self.bytes().is_none()
    }

    pub fn len(&self) -> usize {
        self.bytes().map_or(0, <[u8]>::len)
    }

    /// Appends the reply in `proto` to `out`.
    pub fn render_into(&self, proto: Proto, out: &mut BytesMut) {
        match self {
            Stored::Inline { len, bytes } => out.extend_from_slice(&bytes[..usize::from(*len)]),
            Stored::Shared(c) => c.render_into(proto, out),
        }
    }

    pub fn to_cached(&self) -> Cached {
        match self {
            Stored::Inline { len, bytes } => {
                Cached::Value(Bytes::copy_from_slice(&bytes[..usize::from(*len)]))
            }
            Stored::Shared(c) => c.clone(),
        }
    }
}

/// One key's views, as put in moka with the same id.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub key: Key,
    pub id: u64,
    pub slots: Slots,
}

pub(super) struct Front {
    shards: Box<[RwLock<HashTable<Held>>]>,
    hasher: foldhash::fast::RandomState,
}

impl Front {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The key's hash: picks its shard here and its stripe of invalidation epochs.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<HashTable<Held>> {
        // Middle bits: hashbrown takes a bucket from the low bits and a tag from the top seven,
        // so a shard chosen by either would make every probe in it a key comparison.
        &self.shards[(hash >> 40) as usize & (SHARDS - 1)]
    }

    /// Whether the key's views are held.
    #[cfg(test)]
    pub fn contains(&self, key: &[u8], hash: u64) -> bool {
        self.with(key, hash, |_| ()).is_some()
    }

    /// Applies `f` to the key's views under the shard's read lock, if they are held.
    pub fn with<R>(&self, key: &[u8], hash: u64, f: impl FnOnce(&[Slot]) -> R) -> Option<R> {
        let shard = self.shard(hash).read().unwrap_or_else(|e| e.into_inner());
        shard
            .find(hash, |h| h.key.as_slice() == key)
            .map(|h| f(&h.slots))
    }

    /// Puts the key's views if `admit` holds under the shard's write lock, unless a newer put
    /// is already here; returns whether `admit` held.
    ///
    /// `admit` is the fill's epoch check. Asked under the lock, it orders the put against every
    /// invalidation: one that bumps the epoch after the check removes (under the same lock) what
    /// the put left; one that bumped before fails the check. Checked outside the lock, a fill
    /// whose check passed just before an invalidation could put its older value after the
    /// invalidation's removal, and a reader that came after the invalidation would be served it.
    pub fn put(&self, held: Held, hash: u64, admit: impl FnOnce() -> bool) -> bool {
        let mut shard = self.shard(hash).write().unwrap_or_else(|e| e.into_inner());
        if !admit() {
            return false;
        }
        match shard.find_mut(hash, |h| h.key.as_slice() == held.key.as_slice()) {
            Some(h) if h.id > held.id => {}
            Some(h) => *h = held,
            None => {
                shard.insert_unique(hash, held, |h| self.hasher.hash_one(h.key.as_slice()));
            }
        }
        true
    }

    /// Takes out the key's views if they are no newer than `id` (`u64::MAX`: whatever is here).
    pub fn remove(&self, key: &[u8], hash: u64, id: u64) {
        let mut shard = self.shard(hash).write().unwrap_or_else(|e| e.into_inner());
        if let Ok(entry) = shard.find_entry(hash, |h| h.key.as_slice() == key) {
            if entry.get().id <= id {
                entry.remove();
            }
        }
    }

    /// Empties the map.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            s.write().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

/// Whether this hit is the one in [`SAMPLE`] that moka should see.
pub(super) fn sampled() -> bool {
    thread_local! {
        static HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    HITS.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % SAMPLE == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_replies_are_held_inline_and_read_back_the_same() {
        for n in [0usize, 1, 100, INLINE_REPLY - 8, INLINE_REPLY - 7, 4096] {
            let body = vec![b'v'; n];
            let mut reply = format!("${n}\r\n").into_bytes();
            reply.extend_from_slice(&body);
            reply.extend_from_slice(b"\r\n");
            let c = Cached::Value(Bytes::from(reply.clone()));
            let s = Stored::new(c.clone());
            assert_eq!(
                matches!(s, Stored::Inline { .. }),
                reply.len() <= INLINE_REPLY,
                "{n}"
            );
            assert_eq!(s.len(), reply.len());
            assert_eq!(s.to_cached(), c);
            let mut out = BytesMut::new();
            s.render_into(Proto::Resp3, &mut out);
            assert_eq!(&out[..], &reply[..]);
            assert!(!s.is_nil());
        }
        let nil = Stored::new(Cached::Nil);
        assert!(nil.is_nil());
        assert_eq!(nil.len(), 0);
        let mut out = BytesMut::new();
        nil.render_into(Proto::Resp3, &mut out);
        assert_eq!(&out[..], b"_\r\n");
    }
}
