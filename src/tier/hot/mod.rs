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

mod announce;
mod broadcast;
mod channels;
pub mod coherence;
mod fence;
mod fill;
mod front;
pub mod info;
mod pack;
mod pattern;
mod relay;
mod rules;
pub mod settings;
mod subscribe;
#[cfg(test)]
mod tests;
mod write;

pub use announce::{Inline, Publish};
pub use broadcast::Broadcast;
pub(crate) use fence::Applying;
pub use fill::{Fill, Stamp};
pub use front::Cached;
pub use pattern::Pattern;
pub use write::WriteGuard;

use crate::metrics::{InvalidationSource, Metrics};
use crate::protocol::reply::{self, Proto};
use bytes::{Bytes, BytesMut};
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use settings::{HotSettings, RuleSettings};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stripes of invalidation epochs: a power of two, 32 KiB.
const STRIPES: usize = 4096;
/// Bytes counted per entry beyond its key and values (moka's node, our vectors, the read
/// map's bucket, which holds short replies inline: 88 bytes more than when it did not).
const ENTRY_OVERHEAD: usize = 248;
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
    pub(crate) fn from_settings(s: &RuleSettings) -> Self {
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

#[derive(Debug, Clone)]
struct Slot {
    view: View,
    value: front::Stored,
    deadline: Instant,
}

/// The views of a key: held inline, as the read path probes them.
type Slots = smallvec::SmallVec<[Slot; 1]>;

/// What moka holds for a key: its size and deadline. The views themselves live in the front
/// map (see `front`), under the same id.
#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    /// Bytes counted against `max_size`.
    weight: u32,
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

pub struct HotTier {
    cache: Cache<Bytes, Entry>,
    /// Swapped whole by a config reload (see `rules`): one atomic load per lookup, no lock.
    rules: arc_swap::ArcSwap<Vec<Arc<Rule>>>,
    /// Wakes the coherence task to track the prefixes of new rules (see `rules`).
    retrack: tokio::sync::Notify,
    /// Coherence runs (or is connecting) in tracking mode.
    tracking: AtomicBool,
    stripes: Box<[Stripe]>,
    flushes: AtomicU64,
    /// Flushes sent and not yet answered.
    flushes_in_flight: AtomicU64,
    /// Write guards alive: raised before and lowered after their stripes' `writes`, so a read
    /// that finds it zero skips the stripe (one shared word, where the stripes are 64 KiB that
    /// a hit would otherwise touch at random).
    guards_in_flight: AtomicU64,
    /// The read path in front of `cache`; also hashes keys to their stripes.
    front: Arc<front::Front>,
    /// Ids of puts into the front map and moka.
    ids: AtomicU64,
    /// False while invalidations may be missed (the coherence connection, or with
    /// `postgres.notify` the database's LISTEN connection, is down): reads and fills bypass the
    /// tier until it is back. `upstream_ok && db_ok`.
    coherent: AtomicBool,
    upstream_ok: AtomicBool,
    db_ok: AtomicBool,
    /// Set when coherence runs in broadcast mode: where writes are announced.
    broadcast: std::sync::OnceLock<Broadcast>,
    /// Sends a PUBLISH (for batched announcements, and for writes on pinned connections).
    publisher: std::sync::OnceLock<Arc<Publish>>,
    /// Batches broadcast announcements (see `announce`).
    announcer: announce::Announcer,
    /// `hot.broadcast_batching`.
    batching: bool,
    /// `hot.channel_per_prefix`, where messages are heard at all (not in `ttl` mode).
    per_prefix: bool,
    /// `hot.broadcast_encoding = "packed"`.
    packed: bool,
    /// `hot.broadcast_relay`: announcements go through the fleet's relay (see `relay`).
    relay: bool,
    /// Our requests waiting for the relay.
    origin: relay::Origin,
    /// A duplicate of the invalidation connection's socket, to peek for unread invalidations.
    watch: std::sync::RwLock<Option<std::net::TcpStream>>,
    /// Raised by the coherence task from before it reads its socket until what it read is
    /// applied; a checker that finds it raised knows invalidations are pending.
    applying: AtomicBool,
    metrics: Arc<Metrics>,
}

impl HotTier {
    pub fn new(settings: &HotSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        let m = metrics.clone();
        let front = Arc::new(front::Front::new());
        let mirror = front.clone();
        let cache = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_: &Bytes, e: &Entry| e.weight)
            .expire_after(EntryExpiry)
            .eviction_policy(if settings.lru {
                EvictionPolicy::lru()
            } else {
                EvictionPolicy::tiny_lfu()
            })
            .eviction_listener(move |k: Arc<Bytes>, v: Entry, cause| {
                mirror.remove(&k, mirror.hash(&k), v.id);
                match cause {
                    RemovalCause::Size => m.cache.evicted_size.inc(),
                    RemovalCause::Expired => m.cache.evicted_expiry.inc(),
                    RemovalCause::Explicit => m.cache.evicted_invalidation.inc(),
                    RemovalCause::Replaced => {}
                }
            })
            .build();
        let tier = Arc::new(Self {
            cache,
            rules: arc_swap::ArcSwap::from_pointee(rules::compile(&settings.rules)),
            retrack: tokio::sync::Notify::new(),
            tracking: AtomicBool::new(false),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            flushes: AtomicU64::new(0),
            flushes_in_flight: AtomicU64::new(0),
            guards_in_flight: AtomicU64::new(0),
            front,
            ids: AtomicU64::new(0),
            coherent: AtomicBool::new(false),
            upstream_ok: AtomicBool::new(false),
            db_ok: AtomicBool::new(true),
            broadcast: std::sync::OnceLock::new(),
            publisher: std::sync::OnceLock::new(),
            announcer: announce::Announcer::default(),
            batching: settings.broadcast_batching,
            per_prefix: settings.channel_per_prefix
                && settings.coherence != settings::Coherence::Ttl,
            packed: settings.broadcast_packed,
            relay: settings.broadcast_relay && settings.coherence != settings::Coherence::Ttl,
            origin: relay::Origin::default(),
            watch: std::sync::RwLock::new(None),
            applying: AtomicBool::new(false),
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

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Vec<Arc<Rule>>> {
        self.rules.load_full()
    }

    /// The rule for `key`, if the tier may hold it (first match wins).
    /// Whether a rule caches `key`: [`HotTier::rule`] without cloning the rule.
    pub fn caches(&self, key: &[u8]) -> bool {
        self.rules.load().iter().any(|r| r.pattern.matches(key))
    }

    pub fn rule(&self, key: &[u8]) -> Option<Arc<Rule>> {
        self.rules
            .load()
            .iter()
            .find(|r| r.pattern.matches(key))
            .cloned()
    }

    pub fn is_coherent(&self) -> bool {
        self.coherent.load(SeqCst)
    }

    /// Marks the tier usable (invalidations flow) or bypassed. Either way it is emptied first:
    /// what was missed while nothing listened is unknown.
    pub async fn set_coherent(&self, on: bool) {
        self.invalidate_all(InvalidationSource::Flush).await;
        self.upstream_ok.store(on, SeqCst);
        self.update_coherent();
    }

    /// `postgres.notify`: whether row changes are being heard (the LISTEN connection is up).
    /// Like `set_coherent`, the tier is emptied first and bypassed while they are not.
    pub async fn set_db_listening(&self, on: bool) {
        self.invalidate_all(InvalidationSource::Flush).await;
        self.db_ok.store(on, SeqCst);
        self.update_coherent();
    }

    fn update_coherent(&self) {
        let on = self.upstream_ok.load(SeqCst) && self.db_ok.load(SeqCst);
        self.coherent.store(on, SeqCst);
        self.metrics.cache.coherent.set(i64::from(on));
    }

    fn stripe(&self, key: &[u8]) -> &Stripe {
        self.stripe_at(self.front.hash(key))
    }

    fn stripe_at(&self, hash: u64) -> &Stripe {
        &self.stripes[(hash as usize) & (STRIPES - 1)]
    }

    /// Whether a write through this sidecar to the key (or a flush) is sent and not yet
    /// answered.
    fn write_in_flight(&self, hash: u64) -> bool {
        self.guards_in_flight.load(SeqCst) > 0
            && (self.stripe_at(hash).writes.load(SeqCst) > 0
                || self.flushes_in_flight.load(SeqCst) > 0)
    }

    /// Takes the key out of the read path, whatever put it there.
    fn front_remove(&self, key: &[u8]) {
        self.front.remove(key, self.front.hash(key), u64::MAX);
    }

    /// A view of `key`, if held and fresh. Counts a hot hit or miss.
    pub async fn get(&self, key: &[u8], view: &View) -> Option<Cached> {
        self.get_at(key, view, Instant::now()).await
    }

    /// [`get`](Self::get), fresh as of `now`.
    pub async fn get_at(&self, key: &[u8], view: &View, now: Instant) -> Option<Cached> {
        let found = self.read(key, view, now, front::Stored::to_cached);
        self.count(key, found.is_some()).await;
        found
    }

    /// Appends the reply to a view of `key` in `proto` to `out`, if held and fresh; counts a hot
    /// hit or miss. The hit path: the value is copied under the read lock, with no reference
    /// count taken on it.
    pub async fn get_into(
        &self,
        key: &[u8],
        view: &View,
        now: Instant,
        proto: Proto,
        out: &mut BytesMut,
    ) -> bool {
        let hit = self
            .read(key, view, now, |c| c.render_into(proto, out))
            .is_some();
        self.count(key, hit).await;
        hit
    }

    async fn count(&self, key: &[u8], hit: bool) {
        if hit {
            self.metrics.cache.hot_hits.inc();
            if front::sampled() {
                // moka's policy learns of the read (see `front`).
                let _ = self.cache.get(key).await;
            }
        } else {
            self.metrics.cache.hot_misses.inc();
        }
    }

    /// Applies `f` to a view of `key`, if held and fresh as of `now`.
    fn read<R>(
        &self,
        key: &[u8],
        view: &View,
        now: Instant,
        f: impl FnOnce(&front::Stored) -> R,
    ) -> Option<R> {
        let hash = self.front.hash(key);
        if !self.is_coherent() || self.write_in_flight(hash) {
            return None;
        }
        self.front
            .with(key, hash, |slots| {
                let fresh = |v: &View| {
                    slots
                        .iter()
                        .find(|s| &s.view == v && s.deadline > now)
                        .map(|s| &s.value)
                };
                match view {
                    // EXISTS is also answered by a cached GET: a value exists, a null does not.
                    View::Exists => match fresh(&View::Exists) {
                        Some(c) => Some(f(c)),
                        None => fresh(&View::Get).map(|g| {
                            f(&front::Stored::Shared(Cached::Value(Bytes::from_static(
                                if g.is_nil() { b":0\r\n" } else { b":1\r\n" },
                            ))))
                        }),
                    },
                    v => fresh(v).map(f),
                }
            })
            .flatten()
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

    /// Evicts `key` and fails fills of it in flight, without counting an invalidation (the
    /// second eviction of a write, when its reply arrives).
    pub async fn evict(&self, key: &[u8]) {
        self.stripe(key).epoch.fetch_add(1, SeqCst);
        self.front_remove(key);
        self.cache.invalidate(key).await;
    }

    /// Evicts `key` (and fails fills of it that are in flight).
    pub async fn invalidate(&self, key: &[u8], source: InvalidationSource) {
        self.stripe(key).epoch.fetch_add(1, SeqCst);
        self.front_remove(key);
        self.cache.invalidate(key).await;
        self.metrics.cache.invalidation(source);
    }

    /// Empties the tier (and fails every fill in flight).
    pub async fn invalidate_all(&self, source: InvalidationSource) {
        self.flushes.fetch_add(1, SeqCst);
        self.front.clear();
        self.cache.invalidate_all();
        self.metrics.cache.invalidation(source);
    }

    /// Whether `key` is held now (fresh or not); counts nothing.
    pub fn holds(&self, key: &[u8]) -> bool {
        self.cache.contains_key(key)
    }

    /// Hot-tier hits and misses so far.
    pub fn hit_counts(&self) -> (u64, u64) {
        let m = &self.metrics.cache;
        (m.hot_hits.get(), m.hot_misses.get())
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

/// The length in a `$<len>\r\n` bulk header.
fn bulk_len(b: &[u8]) -> Option<usize> {
    let rest = b.strip_prefix(b"$")?;
    let end = memchr::memchr(b'\r', rest)?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}
