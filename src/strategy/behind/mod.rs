//! Write-behind (`[[mapping]] write = "behind"`): a SET of a mapped key is acknowledged once it
//! is durably queued, and a worker in every sidecar applies the queue to PostgreSQL.
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
#[cfg(test)]
mod tests;
mod worker;

pub use worker::spawn;

use crate::error::ProxyError;
use crate::loader::KeyPattern;
use crate::protocol::request::encode_command;
use crate::protocol::Request;
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

/// Checked settings of one write-behind mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct BehindSettings {
    pub mapping: String,
    pub pattern: KeyPattern,
    pub write_query: String,
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

    /// For SET/SETEX/PSETEX of a write-behind key: the script to send instead, or the error a
    /// form that cannot be queued gets. `None` for anything else.
    pub fn rewrite(&self, command: &str, req: &Request) -> Option<Result<Bytes, ProxyError>> {
        // Where the value is among the arguments after the key.
        let value = match (command, req.argc()) {
            ("SET", n) if n >= 3 => 0,
            ("SETEX" | "PSETEX", 4) => 1,
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
        Some(Ok(encode_command(&args)))
    }
}
