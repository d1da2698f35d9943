//! Write-behind (`[[mapping]] write = "behind"`): a SET of a mapped key (and, with a
//! `delete_query`, a DEL) is acknowledged once it is durably queued, and a worker in every
//! sidecar applies the queue to PostgreSQL. Other writes of a mapped key are refused.
//!
//! The queue is a Redis Stream on the upstream, read through the consumer group `cacheside`:
//! on one Redis `cacheside:wb:<mapping>`; on a Redis Cluster one stream per hash slot,
//! `cacheside:wb:{<tag>}:<mapping>` in the slot of the keys it queues (the tag is
//! [`slot_tag`]), so that the write and its XADD are one script ([`scripts::SET_SCRIPT`]) on the
//! key's node. A write is never acknowledged without being queued, and a queued write is always
//! in Redis; all of a key's entries are in one stream, in the order Redis took them. The
//! stream outlives any sidecar, works on ElastiCache, and any sidecar takes over a dead one's
//! entries (XAUTOCLAIM after `write_behind_claim_idle`). See [`worker`] for how entries reach
//! the database exactly as last written, and [`cluster`] for which slots a worker reads.
//!
//! Backpressure: the script refuses a write once the key's stream holds
//! `write_behind_max_queue` entries (exact, in Redis); and while the oldest entry is older than
//! `write_behind_max_lag` (as [`gauges`] last read it, twice a second) the write is refused here,
//! before Redis. On a cluster the script's bound is per slot's stream, and the write is also
//! refused here while the depth summed over the slots this sidecar knows reaches the bound.

mod apply;
mod cluster;
mod entries;
mod gauges;
mod metrics;
mod prune;
mod scripts;
mod slots;
#[cfg(test)]
mod tests;
mod worker;

pub use scripts::QUEUE_FULL;
pub use worker::spawn;

use crate::error::ProxyError;
use crate::loader::KeyPattern;
use crate::protocol::request::encode_command;
use crate::protocol::Request;
use crate::strategy::marks::SlotMarks;
use crate::strategy::Rewritten;
use crate::tier::redis::cluster::slot::{self, slot_tag};
use bytes::Bytes;
use metrics::BehindMetrics;
use scripts::{DEL_SCRIPT, SET_SCRIPT};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Checked settings of one write-behind mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct BehindSettings {
    pub mapping: String,
    pub pattern: KeyPattern,
    pub write_query: String,
    /// Run for a queued DEL/UNLINK ($1.. = the key's captures); unset: DEL changes Redis only.
    pub delete_query: Option<String>,
    pub max_attempts: u32,
    pub max_queue: u64,
    /// Writes are refused while the oldest queued entry is older than this (`None`: no bound).
    pub max_lag: Option<Duration>,
    pub claim_idle: Duration,
    /// Cluster mode: how often one sidecar of the fleet looks in every slot for entries that
    /// no running sidecar reads (left by one that died).
    pub sweep_every: Duration,
}

/// One mapping's queue.
pub(crate) struct Queue {
    pub(crate) settings: BehindSettings,
    /// One Redis: the stream.
    pub(crate) stream: Bytes,
    /// The dead-letter stream: one for the mapping, in one slot (only the worker writes it).
    pub(crate) dead: Bytes,
    metrics: BehindMetrics,
    /// The age of the oldest queued entry in ms, as last read by [`gauges`].
    lag_ms: AtomicU64,
    /// The queue's depth, as last read by [`gauges`] (on a cluster: summed over known slots).
    depth: AtomicU64,
    /// The upstream's: set once it runs as a cluster (`auto` may find one after the start).
    cluster: Arc<AtomicBool>,
    /// Cluster mode: the slots this sidecar's writes were routed to since the worker looked.
    marks: SlotMarks,
    /// Cluster mode: the streams the worker reads now (its own slots and those a sweep
    /// found), for the gauges.
    known: Mutex<Vec<Bytes>>,
}

impl Queue {
    fn is_cluster(&self) -> bool {
        self.cluster.load(Ordering::Acquire)
    }

    /// `cacheside:wb:{t}:<mapping>`, in `slot` (the tag first: a mapping's name may hold
    /// braces of its own).
    pub(crate) fn slot_stream(&self, slot: u16) -> Bytes {
        Bytes::from(format!(
            "cacheside:wb:{{{}}}:{}",
            slot_tag(slot),
            self.settings.mapping
        ))
    }

    /// The stream `key`'s entries go to. On a cluster the key's slot is marked first, before
    /// the write is sent, so the worker reads it from its next round on.
    fn stream_for(&self, key: &[u8]) -> Bytes {
        if !self.is_cluster() {
            return self.stream.clone();
        }
        let s = slot::of(key);
        self.marks.mark(s);
        self.slot_stream(s)
    }

    /// On a cluster, the refusal a write gets while the depth over the slots this sidecar
    /// knows reaches `write_behind_max_queue` (each slot's stream is bounded by the script).
    fn full_refusal(&self) -> Option<ProxyError> {
        if !self.is_cluster() || self.depth.load(Ordering::Relaxed) < self.settings.max_queue {
            return None;
        }
        self.metrics.full_refusals.inc();
        Some(ProxyError::Command(
            "ERR cacheside: write-behind queue full".into(),
        ))
    }

    /// The refusal a write gets while the queue lags past `write_behind_max_lag`.
    fn lag_refusal(&self) -> Option<ProxyError> {
        let max = self.settings.max_lag?;
        let lag = Duration::from_millis(self.lag_ms.load(Ordering::Relaxed));
        if lag <= max {
            return None;
        }
        self.metrics.lag_refusals.inc();
        Some(ProxyError::WriteBehindLag {
            mapping: self.settings.mapping.clone(),
            lag,
            max,
        })
    }
}

/// Every write-behind mapping.
pub struct Behind {
    list: Vec<Arc<Queue>>,
}

impl Behind {
    /// `cluster` is the upstream's cluster flag ([`crate::tier::redis::Upstream::cluster_flag`]):
    /// it picks the stream of each write when it is routed.
    pub fn new(
        settings: Vec<BehindSettings>,
        registry: &prometheus::Registry,
        cluster: Arc<AtomicBool>,
    ) -> Arc<Self> {
        let families = metrics::Families::register(registry);
        // The table of slot tags, built now rather than by the first write on a cluster.
        let _ = slot_tag(0);
        let list = settings
            .into_iter()
            .map(|s| {
                Arc::new(Queue {
                    stream: Bytes::from(format!("cacheside:wb:{}", s.mapping)),
                    dead: Bytes::from(format!("cacheside:wb:{}:dead", s.mapping)),
                    metrics: families.mapping(&s.mapping),
                    lag_ms: AtomicU64::new(0),
                    depth: AtomicU64::new(0),
                    cluster: cluster.clone(),
                    marks: SlotMarks::default(),
                    known: Mutex::default(),
                    settings: s,
                })
            })
            .collect();
        Arc::new(Self { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// For SET/SETEX/PSETEX of a write-behind key (and DEL/UNLINK with a `delete_query`): the
    /// script to send instead, or the error a form that cannot be queued gets. `None` for
    /// anything else.
    pub fn rewrite(&self, command: &str, req: &Request) -> Option<Result<Rewritten, ProxyError>> {
        // Where the value is among the arguments after the key.
        let value = match (command, req.argc()) {
            ("SET", n) if n >= 3 => 0,
            ("SETEX" | "PSETEX", 4) => 1,
            ("DEL" | "UNLINK", n) if n >= 2 => return self.delete(req),
            _ => return None,
        };
        let key = req.arg(1);
        let q = self
            .list
            .iter()
            .find(|q| q.settings.pattern.matches(key).is_some())?;
        if command == "SET" && (3..req.argc()).any(|i| req.arg_is(i, "GET")) {
            // Whether a SET ... GET wrote cannot be told from its reply.
            return Some(Err(ProxyError::Command(format!(
                "ERR cacheside: mapping {} is write-behind: SET with GET is not supported",
                q.settings.mapping
            ))));
        }
        if let Some(refused) = q.lag_refusal().or_else(|| q.full_refusal()) {
            return Some(Err(refused));
        }
        let stream = q.stream_for(key);
        let max = q.settings.max_queue.to_string();
        // ARGV: max, value index, command, then the arguments after the key (from ARGV[4]).
        let index = (4 + value).to_string();
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            SET_SCRIPT.as_bytes(),
            b"2",
            key,
            &stream,
            max.as_bytes(),
            index.as_bytes(),
            req.arg(0),
        ];
        args.extend((2..req.argc()).map(|i| req.arg(i)));
        Some(Ok(Rewritten {
            bytes: encode_command(&args),
            refusals: Some(q.metrics.full_refusals.clone()),
        }))
    }

    /// For DEL/UNLINK naming keys of mappings with a `delete_query`: [`DEL_SCRIPT`], its keys
    /// in threes (key, stream, marker), so that on a cluster it can run per slot.
    fn delete(&self, req: &Request) -> Option<Result<Rewritten, ProxyError>> {
        let keys: Vec<&[u8]> = (1..req.argc()).map(|i| req.arg(i)).collect();
        let queues: Vec<Option<&Arc<Queue>>> = keys
            .iter()
            .map(|k| {
                self.list.iter().find(|q| {
                    q.settings.delete_query.is_some() && q.settings.pattern.matches(k).is_some()
                })
            })
            .collect();
        if queues.iter().all(Option::is_none) {
            return None;
        }
        let mut first: Option<&Arc<Queue>> = None;
        let mut seen: Vec<&Arc<Queue>> = Vec::new();
        for q in queues.iter().flatten() {
            if seen.iter().any(|s| Arc::ptr_eq(s, q)) {
                continue;
            }
            if let Some(refused) = q.lag_refusal().or_else(|| q.full_refusal()) {
                return Some(Err(refused));
            }
            first.get_or_insert(q);
            seen.push(q);
        }
        let mut names: Vec<Bytes> = Vec::with_capacity(keys.len() * 3);
        let mut bounds: Vec<String> = Vec::with_capacity(keys.len());
        for (k, q) in keys.iter().zip(&queues) {
            let key = Bytes::copy_from_slice(k);
            match q {
                Some(q) => {
                    names.extend([key, q.stream_for(k), crate::loader::negative_key(k)]);
                    bounds.push(q.settings.max_queue.to_string());
                }
                None => {
                    names.extend([key.clone(), key.clone(), key]);
                    bounds.push("0".to_string());
                }
            }
        }
        let numkeys = names.len().to_string();
        let mut args: Vec<&[u8]> = vec![b"EVAL", DEL_SCRIPT.as_bytes(), numkeys.as_bytes()];
        args.extend(names.iter().map(|n| &n[..]));
        args.push(req.arg(0));
        args.extend(bounds.iter().map(|b| b.as_bytes()));
        Some(Ok(Rewritten {
            bytes: encode_command(&args),
            // A refusal names no stream: counted on the first.
            refusals: first.map(|q| q.metrics.full_refusals.clone()),
        }))
    }

    /// Any other write of a write-behind key, except the expiry commands: refused, since it
    /// would change Redis and never reach the database.
    pub fn refusal(
        &self,
        info: &crate::protocol::command::CommandInfo,
        req: &Request,
    ) -> Option<ProxyError> {
        const QUEUED_OR_EXPIRY: &[&str] = &[
            "SET",
            "SETEX",
            "PSETEX",
            "DEL",
            "UNLINK",
            "EXPIRE",
            "PEXPIRE",
            "EXPIREAT",
            "PEXPIREAT",
            "PERSIST",
        ];
        if !info.is_write() || QUEUED_OR_EXPIRY.contains(&info.name) {
            return None;
        }
        let q = info.key_indices(req).into_iter().find_map(|i| {
            self.list
                .iter()
                .find(|q| q.settings.pattern.matches(req.arg(i)).is_some())
        })?;
        Some(ProxyError::Command(format!(
            "ERR cacheside: mapping {} is write-behind: {} is not queued to the database; use SET, SETEX, PSETEX or DEL",
            q.settings.mapping, info.name
        )))
    }
}
