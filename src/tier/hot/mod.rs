//! The hot tier: upstream replies for keys that `[[cache]]` rules allow, held in process (moka,
//! bounded in bytes) and served without re-encoding, kept coherent with writes.
//!
//! An entry holds one or more *views* of a key: the reply to GET, to EXISTS, to HGET of a field,
//! to HGETALL in one protocol version. Each view has its own deadline: the rule TTL, capped by
//! the key's remaining TTL upstream, so no view outlives the upstream key.
//!
//! The fill/invalidate race: a read that was in flight upstream when a write invalidated its key
//! must not store its older value. Every invalidation bumps the epoch of the key's stripe (and a
//! flush bumps a global epoch) before it removes the key; a fill takes a [`Stamp`] of both when
//! its read is sent, stores its value, and then re-reads the epochs: if either moved, it removes
//! what it stored. Whichever order the two interleave in, the older value does not survive: an
//! invalidation whose bump the fill's check missed removes the key after the fill stored it.
//!
//! Writes through this sidecar also hold a [`WriteGuard`] from the moment they are sent until
//! their reply has been applied: while a stripe has a write in flight, lookups in it miss and
//! fills in it are not kept. Without that, a fill that read the old value after the write was
//! sent but before Redis ran it could be stored and served to the writer's own next read.
//! Unrelated keys that share a stripe only cost a miss or a skipped fill.

pub mod coherence;
pub mod info;
mod pattern;
pub mod settings;

pub use pattern::Pattern;

use crate::metrics::{InvalidationSource, Metrics};
use crate::protocol::reply::{self, Proto};
use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use settings::{HotSettings, RuleSettings};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stripes of invalidation epochs: a power of two, 32 KiB.
const STRIPES: usize = 4096;
/// Bytes counted per entry beyond its key and values (moka's node, our vectors).
const ENTRY_OVERHEAD: usize = 160;
/// Bytes counted per view beyond its value.
const VIEW_OVERHEAD: usize = 48;

/// One `[[cache]]` rule, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: Pattern,
    pub ttl: Duration,
    pub max_value_size: usize,
}

impl Rule {
    fn from_settings(s: &RuleSettings) -> Self {
        Self {
            pattern: Pattern::parse(&s.pattern).expect("patterns are checked by Config::validate"),
            ttl: s.ttl,
            max_value_size: s.max_value_size,
        }
    }
}

/// Which reply of a key an entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum View {
    Get,
    Exists,
    HGet(Bytes),
    /// HGETALL is an array in RESP2 and a map in RESP3: one view per protocol.
    HGetAll(Proto),
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

    fn len(&self) -> usize {
        match self {
            Cached::Value(b) => b.len(),
            Cached::Nil => 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    view: View,
    value: Cached,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Entry {
    slots: Arc<[Slot]>,
    /// The latest slot deadline: moka drops the entry then.
    deadline: Instant,
}

struct EntryExpiry;

impl moka::Expiry<Bytes, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &Bytes, e: &Entry, now: Instant) -> Option<Duration> {
        Some(e.deadline.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _: &Bytes,
        e: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.deadline.saturating_duration_since(now))
    }
}

#[derive(Default)]
struct Stripe {
    /// Bumped by every invalidation of a key in the stripe.
    epoch: AtomicU64,
    /// Writes through this sidecar to keys in the stripe, sent and not yet answered.
    writes: AtomicU64,
}

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
    }
}

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

pub struct HotTier {
    cache: Cache<Bytes, Entry>,
    rules: Vec<Arc<Rule>>,
    stripes: Box<[Stripe]>,
    flushes: AtomicU64,
    /// Flushes sent and not yet answered.
    flushes_in_flight: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    /// False while invalidations may be missed (coherence connection down): reads and fills
    /// bypass the tier until it is back.
    coherent: AtomicBool,
    /// Set when coherence runs in broadcast mode: where writes are announced.
    broadcast: std::sync::OnceLock<Broadcast>,
    /// Sends a PUBLISH without waiting (for writes on pinned connections).
    publisher: std::sync::OnceLock<Box<dyn Fn(Bytes) + Send + Sync>>,
    /// A duplicate of the invalidation connection's socket, to peek for unread invalidations.
    watch: std::sync::Mutex<Option<std::net::TcpStream>>,
    /// Held by the coherence task from taking invalidations off its socket until they are
    /// applied; a checker that finds it held knows invalidations are pending.
    applying: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

/// Broadcast coherence: this sidecar's id and the channel it announces writes on.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub channel: Bytes,
    pub id: Bytes,
}

impl Broadcast {
    /// The message announcing that `keys` (or everything, with `flush`) changed:
    /// a RESP array `[id, "K", key...]` or `[id, "F"]`, binary safe.
    pub fn message(&self, keys: &[Bytes], flush: bool) -> Bytes {
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 2);
        args.push(&self.id);
        args.push(if flush { b"F" } else { b"K" });
        if !flush {
            args.extend(keys.iter().map(|k| &k[..]));
        }
        crate::protocol::request::encode_command(&args)
    }

    /// `PUBLISH <channel> <message>`.
    pub fn publish(&self, keys: &[Bytes], flush: bool) -> Bytes {
        crate::protocol::request::encode_command(&[
            &b"PUBLISH"[..],
            &self.channel,
            &self.message(keys, flush),
        ])
    }
}

impl HotTier {
    pub fn new(settings: &HotSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        let m = metrics.clone();
        let cache = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &Bytes, e: &Entry| {
                let bytes = ENTRY_OVERHEAD
                    + k.len()
                    + e.slots
                        .iter()
                        .map(|s| VIEW_OVERHEAD + s.value.len() + view_len(&s.view))
                        .sum::<usize>();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .eviction_policy(if settings.lru {
                EvictionPolicy::lru()
            } else {
                EvictionPolicy::tiny_lfu()
            })
            .eviction_listener(move |_k, _v, cause| match cause {
                RemovalCause::Size => m.cache.evicted_size.inc(),
                RemovalCause::Expired => m.cache.evicted_expiry.inc(),
                RemovalCause::Explicit => m.cache.evicted_invalidation.inc(),
                RemovalCause::Replaced => {}
            })
            .build();
        let tier = Arc::new(Self {
            cache,
            rules: settings
                .rules
                .iter()
                .map(|r| Arc::new(Rule::from_settings(r)))
                .collect(),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            flushes: AtomicU64::new(0),
            flushes_in_flight: AtomicU64::new(0),
            hasher: std::collections::hash_map::RandomState::new(),
            coherent: AtomicBool::new(false),
            broadcast: std::sync::OnceLock::new(),
            publisher: std::sync::OnceLock::new(),
            watch: std::sync::Mutex::new(None),
            applying: tokio::sync::Mutex::new(()),
            metrics: metrics.clone(),
        });
        let weak = Arc::downgrade(&tier);
        metrics.on_scrape(move || {
            if let Some(t) = weak.upgrade() {
                t.metrics
                    .cache
                    .size_bytes
                    .set(t.cache.weighted_size() as i64);
                t.metrics.cache.entries.set(t.cache.entry_count() as i64);
            }
        });
        tier
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// The rule for `key`, if the tier may hold it (first match wins).
    pub fn rule(&self, key: &[u8]) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.pattern.matches(key))
    }

    pub fn is_coherent(&self) -> bool {
        self.coherent.load(SeqCst)
    }

    /// Marks the tier usable (invalidations flow) or bypassed. Either way it is emptied first:
    /// what was missed while nothing listened is unknown.
    pub async fn set_coherent(&self, on: bool) {
        self.invalidate_all(InvalidationSource::Flush).await;
        self.coherent.store(on, SeqCst);
        self.metrics.cache.coherent.set(i64::from(on));
    }

    fn stripe(&self, key: &[u8]) -> &Stripe {
        &self.stripes[(self.hasher.hash_one(key) as usize) & (STRIPES - 1)]
    }

    /// Whether a write through this sidecar to `key` (or a flush) is sent and not yet answered.
    fn write_in_flight(&self, key: &[u8]) -> bool {
        self.stripe(key).writes.load(SeqCst) > 0 || self.flushes_in_flight.load(SeqCst) > 0
    }

    /// Starts a write of `keys` (or a flush): until the guard is completed or dropped, those keys
    /// are neither served nor stored. The caller evicts them now as well.
    pub fn begin_write(self: &Arc<Self>, keys: Vec<Bytes>, flush: bool) -> WriteGuard {
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

    /// Whether invalidations have arrived that are not applied yet: unread on the invalidation
    /// connection, or read and being applied. A hit is not served then (the read goes upstream):
    /// Redis sends a write's invalidation before the writer's reply, so a client that saw the
    /// reply and reads through another sidecar finds the invalidation there at least pending.
    pub fn invalidations_pending(&self) -> bool {
        // Held: invalidations were taken off the socket and are being applied.
        let Ok(_applying) = self.applying.try_lock() else {
            return true;
        };
        let Ok(guard) = self.watch.lock() else {
            return true;
        };
        match guard.as_ref() {
            Some(sock) => {
                let mut one = [0u8; 1];
                !matches!(sock.peek(&mut one), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            None => false,
        }
    }

    /// The coherence task's socket (a duplicate), or `None` when it is gone.
    pub(crate) fn watch_socket(&self, sock: Option<std::net::TcpStream>) {
        if let Ok(mut guard) = self.watch.lock() {
            *guard = sock;
        }
    }

    /// Held while invalidations taken off the socket are applied (see `invalidations_pending`).
    pub(crate) fn applying(&self) -> &tokio::sync::Mutex<()> {
        &self.applying
    }

    /// Fails every fill of `key` stamped before now: its value was loaded but never became
    /// Redis's, so no invalidation will follow a write that races it.
    pub fn forget(&self, key: &[u8]) {
        self.stripe(key).epoch.fetch_add(1, SeqCst);
    }

    /// Taken when a fill's read is sent upstream.
    pub fn stamp(&self, key: &[u8]) -> Stamp {
        Stamp {
            stripe: self.stripe(key).epoch.load(SeqCst),
            flush: self.flushes.load(SeqCst),
        }
    }

    fn stamp_holds(&self, key: &[u8], s: Stamp) -> bool {
        !self.write_in_flight(key)
            && self.stripe(key).epoch.load(SeqCst) == s.stripe
            && self.flushes.load(SeqCst) == s.flush
    }

    /// A view of `key`, if held and fresh. Counts a hot hit or miss.
    pub async fn get(&self, key: &[u8], view: &View) -> Option<Cached> {
        let found = self.lookup(key, view).await;
        if found.is_some() {
            self.metrics.cache.hot_hits.inc();
        } else {
            self.metrics.cache.hot_misses.inc();
        }
        found
    }

    async fn lookup(&self, key: &[u8], view: &View) -> Option<Cached> {
        if !self.is_coherent() || self.write_in_flight(key) {
            return None;
        }
        let entry = self.cache.get(key).await?;
        let now = Instant::now();
        let fresh = |v: &View| {
            entry
                .slots
                .iter()
                .find(|s| &s.view == v && s.deadline > now)
                .map(|s| s.value.clone())
        };
        match view {
            // EXISTS is also answered by a cached GET: a value exists, a null does not.
            View::Exists => fresh(&View::Exists).or_else(|| {
                fresh(&View::Get).map(|g| {
                    Cached::Value(Bytes::from_static(match g {
                        Cached::Value(_) => b":1\r\n",
                        Cached::Nil => b":0\r\n",
                    }))
                })
            }),
            v => fresh(v),
        }
    }

    /// STRLEN from a cached GET, if there is one.
    pub async fn strlen(&self, key: &[u8]) -> Option<Bytes> {
        let got = self.get(key, &View::Get).await?;
        let n = match got {
            Cached::Nil => 0,
            Cached::Value(b) => bulk_len(&b)?,
        };
        let mut out = BytesMut::with_capacity(16);
        reply::integer(&mut out, n as i64);
        Some(out.freeze())
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
        // whole read buffer alive while the byte bound counted only the slice.
        let view = match f.view {
            View::HGet(field) => View::HGet(Bytes::copy_from_slice(&field)),
            v => v,
        };
        let value = match f.value {
            Cached::Value(b) => Cached::Value(Bytes::copy_from_slice(&b)),
            Cached::Nil => Cached::Nil,
        };
        let key = Bytes::copy_from_slice(&f.key);
        let slot = Slot {
            view,
            value,
            deadline: now + ttl,
        };
        let mut slots: Vec<Slot> = match self.cache.get(&f.key).await {
            Some(e) => e
                .slots
                .iter()
                .filter(|s| s.view != slot.view && s.deadline > now)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        slots.push(slot);
        let deadline = slots.iter().map(|s| s.deadline).max().unwrap_or(now);
        self.cache
            .insert(
                key,
                Entry {
                    slots: slots.into(),
                    deadline,
                },
            )
            .await;
        if self.stamp_holds(&f.key, f.stamp) {
            m.fills_stored.inc();
        } else {
            self.cache.invalidate(&f.key).await;
            m.fills_raced.inc();
        }
    }

    /// Announces writes through `broadcast` from now on (coherence chose broadcast mode).
    pub fn start_broadcast(&self, b: Broadcast) {
        let _ = self.broadcast.set(b);
    }

    pub fn broadcast(&self) -> Option<&Broadcast> {
        self.broadcast.get()
    }

    /// The PUBLISH to append to a batch of writes, in broadcast mode.
    pub fn broadcast_command(&self, keys: &[Bytes], flush: bool) -> Option<Bytes> {
        let b = self.broadcast.get()?;
        (flush || !keys.is_empty()).then(|| b.publish(keys, flush))
    }

    /// How to send a PUBLISH without waiting for it.
    pub fn set_publisher(&self, f: impl Fn(Bytes) + Send + Sync + 'static) {
        let _ = self.publisher.set(Box::new(f));
    }

    /// Announces writes answered on a pinned connection, in broadcast mode, without waiting:
    /// such writes are not ordered before their reply.
    pub fn announce_pinned_writes(&self, writes: &[WriteGuard]) {
        let keys: Vec<Bytes> = writes
            .iter()
            .flat_map(|w| w.keys().iter().cloned())
            .collect();
        let flush = writes.iter().any(|w| w.flush());
        if let (Some(cmd), Some(publish)) =
            (self.broadcast_command(&keys, flush), self.publisher.get())
        {
            publish(cmd);
        }
    }

    /// Evicts `key` and fails fills of it in flight, without counting an invalidation (the
    /// second eviction of a write, when its reply arrives).
    pub async fn evict(&self, key: &[u8]) {
        self.stripe(key).epoch.fetch_add(1, SeqCst);
        self.cache.invalidate(key).await;
    }

    /// Evicts `key` (and fails fills of it that are in flight).
    pub async fn invalidate(&self, key: &[u8], source: InvalidationSource) {
        self.stripe(key).epoch.fetch_add(1, SeqCst);
        self.cache.invalidate(key).await;
        self.metrics.cache.invalidation(source);
    }

    /// Empties the tier (and fails every fill in flight).
    pub async fn invalidate_all(&self, source: InvalidationSource) {
        self.flushes.fetch_add(1, SeqCst);
        self.cache.invalidate_all();
        self.metrics.cache.invalidation(source);
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// The `# cacheside` section of INFO.
    pub fn info_section(&self) -> String {
        let m = &self.metrics.cache;
        let mode = if !self.is_coherent() {
            "bypassed"
        } else if self.broadcast.get().is_some() {
            "broadcast"
        } else {
            "active"
        };
        format!(
            "# cacheside\r\ncacheside_version:{}\r\nhot_state:{mode}\r\nhot_entries:{}\r\nhot_bytes:{}\r\nhot_hits:{}\r\nhot_misses:{}\r\nupstream_fill_hits:{}\r\nupstream_fill_misses:{}\r\nfills_stored:{}\r\nfills_raced:{}\r\nevicted_size:{}\r\nevicted_expiry:{}\r\nevicted_invalidation:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.entry_count(),
            self.weighted_size(),
            m.hot_hits.get(),
            m.hot_misses.get(),
            m.upstream_hits.get(),
            m.upstream_misses.get(),
            m.fills_stored.get(),
            m.fills_raced.get(),
            m.evicted_size.get(),
            m.evicted_expiry.get(),
            m.evicted_invalidation.get(),
        )
    }

    /// Applies moka's pending maintenance (evictions), for exact figures in tests and INFO.
    pub async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }
}

fn view_len(v: &View) -> usize {
    match v {
        View::HGet(f) => f.len(),
        _ => 0,
    }
}

/// The length in a `$<len>\r\n` bulk header.
fn bulk_len(b: &[u8]) -> Option<usize> {
    let rest = b.strip_prefix(b"$")?;
    let end = memchr::memchr(b'\r', rest)?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(max: u64) -> Arc<HotTier> {
        let settings = HotSettings {
            max_bytes: max,
            lru: false,
            coherence: settings::Coherence::Ttl,
            channel: "c".into(),
            rules: vec![RuleSettings {
                pattern: "p:*".into(),
                ttl: Duration::from_secs(30),
                max_value_size: 1024,
            }],
        };
        HotTier::new(
            &settings,
            Arc::new(Metrics::new(prometheus::Registry::new())),
        )
    }

    fn fill(t: &HotTier, key: &'static str, value: &'static [u8], stamp: Stamp) -> Fill {
        Fill {
            key: Bytes::from_static(key.as_bytes()),
            view: View::Get,
            value: Cached::Value(Bytes::from_static(value)),
            pttl: -1,
            stamp,
            rule: t.rule(key.as_bytes()).unwrap().clone(),
        }
    }

    #[tokio::test]
    async fn a_fill_that_raced_an_invalidation_is_not_stored() {
        let t = tier(1 << 20);
        t.set_coherent(true).await;
        let stamp = t.stamp(b"p:1");
        // The write's invalidation lands while the read is in flight.
        t.invalidate(b"p:1", InvalidationSource::LocalWrite).await;
        t.fill(fill(&t, "p:1", b"$3\r\nold\r\n", stamp)).await;
        assert_eq!(t.get(b"p:1", &View::Get).await, None);
        // A fill that started after the write is stored.
        let stamp = t.stamp(b"p:1");
        t.fill(fill(&t, "p:1", b"$3\r\nnew\r\n", stamp)).await;
        assert_eq!(
            t.get(b"p:1", &View::Get).await,
            Some(Cached::Value(Bytes::from_static(b"$3\r\nnew\r\n")))
        );
    }

    #[tokio::test]
    async fn nothing_is_served_or_kept_while_a_write_to_the_key_is_in_flight() {
        let t = tier(1 << 20);
        t.set_coherent(true).await;
        t.fill(fill(&t, "p:w", b"$3\r\nold\r\n", t.stamp(b"p:w")))
            .await;
        let guard = t.begin_write(vec![Bytes::from_static(b"p:w")], false);
        t.evict(b"p:w").await;
        // A fill that starts after the write was sent, but may read Redis before it runs.
        let stamp = t.stamp(b"p:w");
        t.fill(fill(&t, "p:w", b"$3\r\nold\r\n", stamp)).await;
        assert_eq!(
            t.get(b"p:w", &View::Get).await,
            None,
            "not kept while the write is in flight"
        );
        guard.complete().await;
        assert_eq!(t.get(b"p:w", &View::Get).await, None);
        let stamp = t.stamp(b"p:w");
        t.fill(fill(&t, "p:w", b"$3\r\nnew\r\n", stamp)).await;
        assert!(
            t.get(b"p:w", &View::Get).await.is_some(),
            "cached again once the write is answered"
        );
        // A guard dropped unanswered releases the key too.
        drop(t.begin_write(vec![Bytes::from_static(b"p:w")], false));
        let stamp = t.stamp(b"p:w");
        t.fill(fill(&t, "p:w", b"$1\r\nx\r\n", stamp)).await;
        assert!(t.get(b"p:w", &View::Get).await.is_some());
    }

    #[tokio::test]
    async fn exists_and_strlen_are_answered_from_a_cached_get() {
        let t = tier(1 << 20);
        t.set_coherent(true).await;
        t.fill(fill(&t, "p:2", b"$5\r\nhello\r\n", t.stamp(b"p:2")))
            .await;
        assert_eq!(
            t.get(b"p:2", &View::Exists).await,
            Some(Cached::Value(Bytes::from_static(b":1\r\n")))
        );
        assert_eq!(t.strlen(b"p:2").await.as_deref(), Some(&b":5\r\n"[..]));
    }

    #[tokio::test]
    async fn the_upstream_ttl_caps_the_view() {
        let t = tier(1 << 20);
        t.set_coherent(true).await;
        let mut f = fill(&t, "p:3", b"$1\r\nx\r\n", t.stamp(b"p:3"));
        f.pttl = 40;
        t.fill(f).await;
        assert!(t.get(b"p:3", &View::Get).await.is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(t.get(b"p:3", &View::Get).await, None);
    }

    #[tokio::test]
    async fn nothing_is_served_or_stored_while_not_coherent() {
        let t = tier(1 << 20);
        t.fill(fill(&t, "p:4", b"$1\r\nx\r\n", t.stamp(b"p:4")))
            .await;
        assert_eq!(t.get(b"p:4", &View::Get).await, None);
    }

    #[tokio::test]
    async fn the_byte_bound_holds_under_a_workload_ten_times_larger() {
        let t = tier(64 * 1024);
        t.set_coherent(true).await;
        let value = Bytes::from(vec![b'v'; 600]);
        for i in 0..1000 {
            let key = Bytes::from(format!("p:{i}"));
            t.fill(Fill {
                key: key.clone(),
                view: View::Get,
                value: Cached::Value(value.clone()),
                pttl: -1,
                stamp: t.stamp(&key),
                rule: t.rule(&key).unwrap().clone(),
            })
            .await;
        }
        t.sync().await;
        assert!(t.weighted_size() <= 64 * 1024, "{}", t.weighted_size());
        assert!(t.entry_count() > 10);
    }
}
