//! Write strategies: what happens to writes of declared keys besides reaching Redis.
//!
//! - [`counter`]: INCR-family commands served by Redis whose deltas a background flusher moves
//!   to PostgreSQL, exactly once across sidecars and crashes.
//! - [`behind`]: write-behind: a SET is acknowledged once queued in a Redis Stream, and a
//!   worker applies the stream to PostgreSQL, last write per key winning.
//!
//! Both work by rewriting the client's command into a script that does its work and the
//! strategy's bookkeeping in one atomic step, sent where the command would have gone.

pub mod behind;
pub mod counter;
mod keys;

pub(crate) use keys::tagged;

use crate::error::ProxyError;
use crate::protocol::Request;
use bytes::Bytes;
use std::sync::Arc;

/// The configured strategies, for the router.
#[derive(Default)]
pub struct Strategies {
    pub counters: Option<Arc<counter::Counters>>,
    pub behind: Option<Arc<behind::Behind>>,
}

impl Strategies {
    /// The bytes to send instead of `req` (or the error to answer), when a strategy owns it.
    pub fn rewrite(&self, command: &str, req: &Request) -> Option<Result<Bytes, ProxyError>> {
        if let Some(c) = &self.counters {
            if let Some(bytes) = c.rewrite(command, req) {
                return Some(Ok(bytes));
            }
        }
        self.behind.as_ref()?.rewrite(command, req)
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_none() && self.behind.is_none()
    }
}
