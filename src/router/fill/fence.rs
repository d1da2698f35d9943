//! Per read from the client: the invalidation fence and the clock hits are checked against.

use crate::tier::hot::HotTier;
use std::time::Instant;

/// What is known once per read from the client (one `read()` of its socket, every request of a
/// pipelined batch): whether invalidations are pending (see `HotTier::invalidations_pending`),
/// asked at most once, and the time the read began, which hits' freshness is checked against.
/// Every request of one read was sent after whatever reply the client had seen, so one check
/// after the read covers them all and saves a syscall per hit, and one clock read serves them.
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pending: Option<bool>,
    at: Instant,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            pending: None,
            at: Instant::now(),
        }
    }
}

impl Fence {
    /// Forgets the answer and reads the clock: the session calls this for each new read from
    /// the client.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Reads the clock again, keeping the answer: for a request handled after the session may
    /// have waited (on the upstream, the writer, a pinned connection), so no wait makes an
    /// expired entry look fresh.
    pub fn retime(&mut self) {
        self.at = Instant::now();
    }

    /// When the current read from the client began (or was last [`retime`](Self::retime)d).
    pub fn at(&self) -> Instant {
        self.at
    }

    pub(super) fn pending(&mut self, tier: &HotTier) -> bool {
        *self
            .pending
            .get_or_insert_with(|| tier.invalidations_pending())
    }
}
