//! Write strategies: what happens to writes of declared keys besides reaching Redis.
//!
//! - Write-through (`through.rs`, `delete.rs`, `related.rs`): SET/HSET/DEL of a mapped key run
//!   their database statement first, in a transaction that also reads the row before and after
//!   it when related keys need them; only after the commit, one script in Redis writes the key
//!   and deletes its fill lease, its "not found" marker and its related keys atomically; then
//!   the hot tier and, in broadcast mode, the other sidecars; then the reply. The session awaits
//!   it before the client's next request, so a client reads its own writes even in a pipeline.
//! - [`counter`]: INCR-family commands served by Redis whose deltas a background flusher moves
//!   to PostgreSQL, exactly once across sidecars and crashes.
//! - [`behind`]: write-behind: a SET is acknowledged once queued in a Redis Stream, and a
//!   worker applies the stream to PostgreSQL, last write per key winning.
//!
//! Counters and write-behind rewrite the client's command into a script that does its work and
//! the strategy's bookkeeping in one atomic step, sent where the command would have gone.

pub mod behind;
pub mod counter;
mod delete;
mod keys;
mod marks;
mod related;
mod set_args;
mod through;

pub(crate) use keys::tagged;
pub use related::needs_rows;
pub use through::{plan, Planned};

use crate::error::ProxyError;
use crate::protocol::Request;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A reply that needs work first (a write-through), started by the session at dispatch.
pub struct Pending(pub Pin<Box<dyn Future<Output = Bytes> + Send>>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// A client's command replaced by a strategy's script.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub bytes: Bytes,
    /// Write-behind: where a reply refusing the write for a full queue is counted.
    pub refusals: Option<prometheus::IntCounter>,
}

/// The configured strategies, for the router.
#[derive(Default)]
pub struct Strategies {
    pub counters: Option<Arc<counter::Counters>>,
    pub behind: Option<Arc<behind::Behind>>,
}

impl Strategies {
    /// The bytes to send instead of `req` (or the error to answer), when a strategy owns it.
    pub fn rewrite(
        &self,
        info: &crate::protocol::command::CommandInfo,
        req: &Request,
    ) -> Option<Result<Rewritten, ProxyError>> {
        if let Some(c) = &self.counters {
            if let Some(bytes) = c.rewrite(info.name, req) {
                return Some(Ok(Rewritten {
                    bytes,
                    refusals: None,
                }));
            }
        }
        let behind = self.behind.as_ref()?;
        behind
            .rewrite(info.name, req)
            .or_else(|| behind.refusal(info, req).map(Err))
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_none() && self.behind.is_none()
    }
}
