//! Slots marked by writes on a Redis Cluster: one bit per hash slot, set lock-free when a
//! write of a strategy's key is routed (before it is sent), and taken by the background task
//! that reads those slots (the counters' flusher, the write-behind worker).

use crate::tier::redis::cluster::slot::SLOTS;
use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per slot, set when a write is routed there (an INCR of a counter, a write-behind
/// SET or DEL); taken by the task that reads those slots.
pub(crate) struct SlotMarks(Box<[AtomicU64]>);

impl Default for SlotMarks {
    fn default() -> Self {
        Self((0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect())
    }
}

impl SlotMarks {
    pub(crate) fn mark(&self, slot: u16) {
        let s = slot as usize % SLOTS;
        let bit = 1u64 << (s % 64);
        let word = &self.0[s / 64];
        // A hot slot's bit is set already: a read keeps the cache line shared between cores.
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// The marked slots, in order; the marks are cleared.
    pub(crate) fn take(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, word) in self.0.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                out.push((i * 64 + b) as u16);
                bits &= bits - 1;
            }
        }
        out
    }
}

/// Takes the fleet-wide lease `lease` for one periodic sweep of every slot (`SET NX PX`, held
/// for 75% of `every`, so one sidecar of the fleet sweeps per period); whether this sidecar
/// got it.
pub(crate) async fn take_sweep_lease(
    upstream: &crate::tier::redis::Upstream,
    lease: &str,
    every: std::time::Duration,
) -> bool {
    let ttl = (every.as_millis() * 3 / 4).max(1).to_string();
    let cmd = crate::protocol::request::encode_command(&[
        &b"SET"[..],
        lease.as_bytes(),
        b"1",
        b"NX",
        b"PX",
        ttl.as_bytes(),
    ]);
    matches!(
        crate::loader::call(upstream, cmd, 1).await,
        Ok(r) if r.first().is_some_and(|r| r.starts_with(b"+OK"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_taken_once_in_slot_order() {
        let m = SlotMarks::default();
        for s in [16383u16, 0, 64, 63, 64] {
            m.mark(s);
        }
        assert_eq!(m.take(), vec![0, 63, 64, 16383]);
        assert!(m.take().is_empty());
    }
}
