//! `[[counter]]`: INCR, INCRBY, DECR and DECRBY of a counter key are served by Redis, and the
//! delta is added to the key's pending delta in the same atomic step; the flusher
//! ([`flush`]) moves pending deltas to PostgreSQL.
//!
//! The command is sent as one `EVAL` of [`INCR_SCRIPT`], on the client's own connection in the
//! client's order: the client gets exactly the reply its command gets from Redis (Redis's own
//! error for a wrong type or a bad increment, and then nothing is added to the pending delta).
//! EVAL rather than EVALSHA: the script is 200 bytes, and EVAL cannot fail with NOSCRIPT after
//! a failover or a restart of Redis.
//!
//! Keys of cacheside's own, per counter key `k` of counter `c`:
//! - `cacheside:counter:pending:{k}`: the delta not yet moved (same hash slot as `k`);
//! - `cacheside:counter:dirty:c`: the set of keys with a pending delta;
//! - `cacheside:counter:moves:c`: moves taken from Redis but not yet known applied in
//!   PostgreSQL, `id -> "<ms>:<delta>:<key>"` (see [`flush`]).
//!
//! On a Redis Cluster every key one script touches must share a slot, so the dirty set and the
//! moves hash are kept per slot (see [`slots`]): `cacheside:counter:dirty:{t}:c` and
//! `cacheside:counter:moves:{t}:c`, where `t` is a short tag that hashes to `k`'s slot.

mod apply;
mod cluster;
mod flush;
mod metrics;
mod slots;
#[cfg(test)]
mod tests;

pub use flush::spawn;

use crate::loader::KeyPattern;
use crate::protocol::request::encode_command;
use crate::protocol::Request;
use crate::strategy::marks::SlotMarks;
use bytes::Bytes;
use metrics::CounterMetrics;
use slots::Active;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

const PENDING_PREFIX: &[u8] = b"cacheside:counter:pending:";

/// The client's command on the counter key, then the same command on the pending delta, and the
/// key marked dirty. KEYS: key, pending, dirty. ARGV: INCRBY or DECRBY, the increment.
/// `pcall` so that Redis's own error reply (WRONGTYPE, not an integer, overflow) is returned
/// as it is, before anything else is changed.
pub(crate) const INCR_SCRIPT: &str = "local v = redis.pcall(ARGV[1], KEYS[1], ARGV[2])
if type(v) == 'table' and v.err then return v end
redis.call(ARGV[1], KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], KEYS[1])
return v";

/// Most keys whose local deltas are tracked for `flush_threshold` at once, and most keys
/// waiting for an early flush: memory stays bounded whatever the clients do.
const LOCAL_KEYS: usize = 100_000;
const URGENT_KEYS: usize = 10_000;

/// Checked settings of one `[[counter]]`.
#[derive(Debug, Clone)]
pub struct CounterSettings {
    pub name: String,
    pub pattern: KeyPattern,
    pub flush_query: String,
    pub flush_every: Duration,
    pub flush_threshold: Option<u64>,
    /// Cluster mode: how often one sidecar of the fleet looks in every slot for deltas and
    /// moves that no running sidecar knows of (left by one that died).
    pub sweep_every: Duration,
}

/// One counter, compiled.
pub(crate) struct Counter {
    pub(crate) settings: CounterSettings,
    /// One Redis: the counter's dirty set and moves hash.
    dirty: Bytes,
    moves: Bytes,
    metrics: CounterMetrics,
    /// `flush_threshold`: deltas sent through this sidecar since the key's last flush.
    local: Mutex<HashMap<Bytes, i64>>,
    /// Cluster mode: the slots this sidecar routed INCRs to since the flusher last looked.
    marks: SlotMarks,
    /// Cluster mode: the slots the flusher looks at (only the flusher locks it).
    active: Mutex<Active>,
}

/// Where one counter key's delta lives: its pending key, and the dirty set and moves hash it
/// is recorded in (all in the key's slot in cluster mode).
pub(crate) struct Names {
    pub(crate) pending: Bytes,
    pub(crate) dirty: Bytes,
    pub(crate) moves: Bytes,
}

impl Counter {
    /// The names for `key`: the counter's own dirty set and moves hash on one Redis (the names
    /// of every release so far), those of `key`'s slot on a cluster.
    pub(crate) fn names(&self, key: &[u8], cluster: bool) -> Names {
        if !cluster {
            return Names {
                pending: crate::strategy::tagged(PENDING_PREFIX, key),
                dirty: self.dirty.clone(),
                moves: self.moves.clone(),
            };
        }
        let slot = crate::tier::redis::cluster::slot::of(key);
        Names {
            // The same name as `tagged` gives, except for a key that cannot be wrapped into its
            // own slot (`a}b`, the empty key), which gets its slot's tag instead.
            pending: crate::tier::redis::cluster::slot::companion(PENDING_PREFIX, key).into(),
            dirty: slots::dirty_key(&self.settings.name, slot),
            moves: slots::moves_key(&self.settings.name, slot),
        }
    }
}

/// Every `[[counter]]`, and the keys waiting for an early flush.
pub struct Counters {
    list: Vec<Arc<Counter>>,
    urgent: Mutex<Vec<(usize, Bytes)>>,
    wake: Notify,
    /// The upstream's: set once it runs as a cluster (`auto` may find one after the start).
    cluster: Arc<AtomicBool>,
}

impl Counters {
    /// `cluster` is the upstream's cluster flag ([`crate::tier::redis::Upstream::cluster_flag`]):
    /// it picks the names of each INCR's keys when it is routed.
    pub fn new(
        settings: Vec<CounterSettings>,
        registry: &prometheus::Registry,
        cluster: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let families = metrics::Families::register(registry);
        // The table of slot tags, built now rather than by the first INCR on a cluster.
        let _ = crate::tier::redis::cluster::slot::slot_tag(0);
        let list = settings
            .into_iter()
            .map(|s| {
                Arc::new(Counter {
                    dirty: Bytes::from(format!("cacheside:counter:dirty:{}", s.name)),
                    moves: Bytes::from(format!("cacheside:counter:moves:{}", s.name)),
                    metrics: families.counter(&s.name),
                    local: Mutex::default(),
                    marks: SlotMarks::default(),
                    active: Mutex::default(),
                    settings: s,
                })
            })
            .collect();
        Arc::new(Self {
            list,
            urgent: Mutex::default(),
            wake: Notify::new(),
            cluster,
        })
    }

    /// Whether the upstream runs as a cluster now.
    fn is_cluster(&self) -> bool {
        self.cluster.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first counter whose pattern matches `key`.
    fn find(&self, key: &[u8]) -> Option<(usize, &Arc<Counter>)> {
        self.list
            .iter()
            .enumerate()
            .find(|(_, c)| c.settings.pattern.matches(key).is_some())
    }

    /// For INCR/INCRBY/DECR/DECRBY of a counter key: the EVAL to send instead. `None` for any
    /// other command or key (and for a wrong number of arguments, which Redis answers).
    pub fn rewrite(&self, command: &str, req: &Request) -> Option<Bytes> {
        let (op, by): (&[u8], &[u8]) = match (command, req.argc()) {
            ("INCR", 2) => (b"INCRBY", b"1"),
            ("INCRBY", 3) => (b"INCRBY", req.arg(2)),
            ("DECR", 2) => (b"DECRBY", b"1"),
            ("DECRBY", 3) => (b"DECRBY", req.arg(2)),
            _ => return None,
        };
        let key = req.arg(1);
        let (i, c) = self.find(key)?;
        if let Some(limit) = c.settings.flush_threshold {
            let delta = std::str::from_utf8(by)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .map(|d| {
                    if op == b"DECRBY" {
                        d.saturating_neg()
                    } else {
                        d
                    }
                });
            if let Some(d) = delta {
                self.track(i, c, key, d, limit);
            }
        }
        let cluster = self.is_cluster();
        if cluster {
            // Before the command is sent: the flusher looks at the slot from its next cycle
            // on, for a while (see `slots::Active`).
            c.marks.mark(crate::tier::redis::cluster::slot::of(key));
        }
        let names = c.names(key, cluster);
        Some(encode_command(&[
            b"EVAL",
            INCR_SCRIPT.as_bytes(),
            b"3",
            key,
            &names.pending,
            &names.dirty,
            op,
            by,
        ]))
    }

    /// Adds a delta sent through this sidecar; once the key's reach `limit`, it is queued for
    /// an early flush.
    fn track(&self, i: usize, c: &Counter, key: &[u8], delta: i64, limit: u64) {
        let Ok(mut local) = c.local.lock() else {
            return;
        };
        let full = local.len() >= LOCAL_KEYS;
        let due = match local.get_mut(key) {
            Some(sum) => {
                *sum = sum.saturating_add(delta);
                sum.unsigned_abs() >= limit
            }
            None if !full => {
                local.insert(Bytes::copy_from_slice(key), delta);
                delta.unsigned_abs() >= limit
            }
            None => false,
        };
        if !due {
            return;
        }
        local.remove(key);
        drop(local);
        if let Ok(mut urgent) = self.urgent.lock() {
            if urgent.len() < URGENT_KEYS {
                urgent.push((i, Bytes::copy_from_slice(key)));
                self.wake.notify_one();
            }
        }
    }

    fn take_urgent(&self) -> Vec<(usize, Bytes)> {
        self.urgent
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }
}
