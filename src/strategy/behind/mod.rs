//! Write-behind (`[[mapping]] write = "behind"`): a SET of a mapped key (and, with a
//! `delete_query`, a DEL) is acknowledged once it is durably queued, and a worker in every
//! sidecar applies the queue to PostgreSQL. Other writes of a mapped key are refused.
//!
//! The queue is a Redis Stream on the upstream, `cacheside:wb:<mapping>`, read through the
//! consumer group `cacheside`. The write and its XADD are one script ([`SET_SCRIPT`]), so a
//! write is never acknowledged without being queued, and a queued write is always in Redis.
//! The stream outlives any sidecar, works on ElastiCache, and any sidecar takes over a dead
//! one's entries (XAUTOCLAIM after `write_behind_claim_idle`). See [`worker`] for how entries
//! reach the database exactly as last written.
//!
//! Backpressure: the script refuses a write once the stream holds `write_behind_max_queue`
//! entries (exact, in Redis); and while the oldest entry is older than `write_behind_max_lag`
//! (as [`gauges`] last read it, twice a second) the write is refused here, before Redis.

mod apply;
mod gauges;
mod metrics;
mod prune;
#[cfg(test)]
mod tests;
mod worker;

pub use worker::spawn;

use crate::error::ProxyError;
use crate::loader::KeyPattern;
use crate::protocol::request::encode_command;
use crate::protocol::Request;
use crate::strategy::Rewritten;
use bytes::Bytes;
use metrics::BehindMetrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The client's SET/SETEX/PSETEX, and the XADD of the key and value, unless the queue is full.
/// KEYS: key, stream. ARGV: max queue, index in ARGV of the value, the command, its arguments
/// after the key. `pcall`: Redis's own error for a bad option is returned as it is, and nothing
/// is queued; neither is a SET NX/XX that did not set.
pub(crate) const SET_SCRIPT: &str = "if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[1]) then
  return redis.error_reply('ERR cacheside: write-behind queue full')
end
local r = redis.pcall(ARGV[3], KEYS[1], unpack(ARGV, 4))
if type(r) == 'table' and r.err then return r end
if r then redis.call('XADD', KEYS[2], '*', 'k', KEYS[1], 'v', ARGV[tonumber(ARGV[2])]) end
return r";

/// DEL or UNLINK (ARGV[1]) of the client's keys, with a deletion queued for each key of a
/// mapping that has a `delete_query`, unless a queue is full. KEYS: the client's keys, the
/// streams, then each key's "not found" marker. ARGV[2]: max queue; ARGV[2 + i]: the index in
/// KEYS of key i's stream, 0 for none. Each queued deletion sets the key's marker to the entry's
/// id, so a read-through miss does not load the row the database still holds; the worker
/// removes the marker once the row is deleted, if it still holds that id ([`UNMARK_SCRIPT`]).
/// The marker's day-long expiry is only a net for a queue no worker drains any more.
pub(crate) const DEL_SCRIPT: &str = "local n = #ARGV - 2
for i = 1, n do
  local s = tonumber(ARGV[2 + i])
  if s > 0 and redis.call('XLEN', KEYS[s]) >= tonumber(ARGV[2]) then
    return redis.error_reply('ERR cacheside: write-behind queue full')
  end
end
local gone = redis.call(ARGV[1], unpack(KEYS, 1, n))
for i = 1, n do
  local s = tonumber(ARGV[2 + i])
  if s > 0 then
    local id = redis.call('XADD', KEYS[s], '*', 'k', KEYS[i], 'd', '1')
    redis.call('SET', KEYS[#KEYS - n + i], id, 'PX', 86400000)
  end
end
return gone";

/// Removes "not found" markers (KEYS) that still hold the ids (ARGV) the worker applied.
pub(crate) const UNMARK_SCRIPT: &str = "local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then n = n + redis.call('DEL', KEYS[i]) end
end
return n";

/// The reply of a write refused by [`SET_SCRIPT`] or [`DEL_SCRIPT`] for a full queue.
pub const QUEUE_FULL: &[u8] = b"-ERR cacheside: write-behind queue full\r\n";

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
}

/// One mapping's queue.
pub(crate) struct Queue {
    pub(crate) settings: BehindSettings,
    pub(crate) stream: Bytes,
    pub(crate) dead: Bytes,
    metrics: BehindMetrics,
    /// The age of the oldest queued entry in ms, as last read by [`gauges`].
    lag_ms: AtomicU64,
}

impl Queue {
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
    pub fn new(settings: Vec<BehindSettings>, registry: &prometheus::Registry) -> Arc<Self> {
        let families = metrics::Families::register(registry);
        let list = settings
            .into_iter()
            .map(|s| {
                Arc::new(Queue {
                    stream: Bytes::from(format!("cacheside:wb:{}", s.mapping)),
                    dead: Bytes::from(format!("cacheside:wb:{}:dead", s.mapping)),
                    metrics: families.mapping(&s.mapping),
                    lag_ms: AtomicU64::new(0),
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
        if let Some(refused) = q.lag_refusal() {
            return Some(Err(refused));
        }
        let max = q.settings.max_queue.to_string();
        // ARGV: max, value index, command, then the arguments after the key (from ARGV[4]).
        let index = (4 + value).to_string();
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            SET_SCRIPT.as_bytes(),
            b"2",
            key,
            &q.stream,
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

    /// For DEL/UNLINK naming keys of mappings with a `delete_query`: [`DEL_SCRIPT`].
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
        // Each queue once; each key names its queue by its place among the streams (ARGV:
        // 0 for a key no write-behind mapping deletes, else its stream's KEYS index).
        let n = keys.len();
        let mut streams: Vec<&Arc<Queue>> = Vec::new();
        let mut indices: Vec<String> = Vec::with_capacity(n);
        for q in &queues {
            let Some(q) = q else {
                indices.push("0".to_string());
                continue;
            };
            let place = match streams.iter().position(|s| Arc::ptr_eq(s, q)) {
                Some(p) => p,
                None => {
                    if let Some(refused) = q.lag_refusal() {
                        return Some(Err(refused));
                    }
                    streams.push(q);
                    streams.len() - 1
                }
            };
            indices.push((n + 1 + place).to_string());
        }
        let markers: Vec<Bytes> = keys
            .iter()
            .map(|k| crate::loader::negative_key(k))
            .collect();
        let numkeys = (n + streams.len() + n).to_string();
        let max = streams
            .iter()
            .map(|q| q.settings.max_queue)
            .min()
            .unwrap_or(u64::MAX)
            .to_string();
        let mut args: Vec<&[u8]> = vec![b"EVAL", DEL_SCRIPT.as_bytes(), numkeys.as_bytes()];
        args.extend(&keys);
        args.extend(streams.iter().map(|q| &q.stream[..]));
        args.extend(markers.iter().map(|m| &m[..]));
        args.push(req.arg(0));
        args.push(max.as_bytes());
        args.extend(indices.iter().map(|i| i.as_bytes()));
        Some(Ok(Rewritten {
            bytes: encode_command(&args),
            // A refusal names no stream: counted on the first.
            refusals: streams.first().map(|q| q.metrics.full_refusals.clone()),
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
