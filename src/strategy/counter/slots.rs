//! Cluster mode's per-slot bookkeeping: the names of a slot's dirty set and moves hash, the
//! slots this sidecar's INCRs went to, and the set of slots its flusher looks at.
//!
//! One script may only touch keys of one slot, so each slot in use has its own dirty set and
//! moves hash, named with a tag that hashes to that slot (`cacheside:counter:dirty:{t}:c`; the
//! tag comes first because a counter's name may hold braces of its own). The flusher cannot
//! list a cluster's keys cheaply, so it looks at the slots it has reason to: those its own
//! INCRs were routed to (marked lock-free here, kept a while after the last mark), and those a
//! sweep of all 16,384 slots found holding work (see `cluster.rs`). Everything is bounded by
//! the number of slots.

use crate::tier::redis::cluster::slot::slot_tag;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// `cacheside:counter:dirty:{t}:<name>`, in `slot`.
pub(super) fn dirty_key(name: &str, slot: u16) -> Bytes {
    Bytes::from(format!(
        "cacheside:counter:dirty:{{{}}}:{name}",
        slot_tag(slot)
    ))
}

/// `cacheside:counter:moves:{t}:<name>`, in `slot`.
pub(super) fn moves_key(name: &str, slot: u16) -> Bytes {
    Bytes::from(format!(
        "cacheside:counter:moves:{{{}}}:{name}",
        slot_tag(slot)
    ))
}

/// The slots a flusher looks at each cycle.
#[derive(Default)]
pub(super) struct Active {
    /// Slot -> the instant until which it is looked at even when found empty. An INCR is
    /// marked when it is routed, before it runs in Redis: one that runs just after a cycle
    /// found the slot empty is taken by a later cycle within this grace.
    slots: BTreeMap<u16, Instant>,
    /// Slots whose moves hash is read next cycle, with the age from which another sidecar's
    /// records there are applied (zero for what the start sweep found).
    recheck: BTreeMap<u16, Duration>,
    /// Where the next cycle starts when the last one ran out of its budget.
    cursor: u16,
}

impl Active {
    /// Looks at `slot` until `until` at least.
    pub(super) fn touch(&mut self, slot: u16, until: Instant) {
        let e = self.slots.entry(slot).or_insert(until);
        if *e < until {
            *e = until;
        }
    }

    /// Reads `slot`'s moves hash next cycle, applying records older than `stale` (the
    /// smaller age wins when asked twice).
    pub(super) fn recheck(&mut self, slot: u16, stale: Duration, now: Instant) {
        self.touch(slot, now);
        let e = self.recheck.entry(slot).or_insert(stale);
        if *e > stale {
            *e = stale;
        }
    }

    /// Every slot to look at, from the cursor on (then from the first).
    pub(super) fn slots(&self) -> Vec<u16> {
        let after = self.slots.range(self.cursor..).map(|(s, _)| *s);
        let before = self.slots.range(..self.cursor).map(|(s, _)| *s);
        after.chain(before).collect()
    }

    /// The age from which records in `slot` are applied, if its moves hash is to be read.
    pub(super) fn rechecked(&self, slot: u16) -> Option<Duration> {
        self.recheck.get(&slot).copied()
    }

    /// After a cycle that looked at every slot: `clean` slots no longer need their moves
    /// hash read; `empty` slots are forgotten once their grace is over.
    pub(super) fn settle(&mut self, clean: &[u16], empty: &[u16], now: Instant) {
        for s in clean {
            self.recheck.remove(s);
        }
        for s in empty {
            if self.recheck.contains_key(s) {
                continue;
            }
            if self.slots.get(s).is_some_and(|until| *until <= now) {
                self.slots.remove(s);
            }
        }
        self.cursor = 0;
    }

    /// A cycle ran out of its budget before `slot`: the next one starts there.
    pub(super) fn resume_at(&mut self, slot: u16) {
        self.cursor = slot;
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::redis::cluster::slot;

    #[test]
    fn a_slots_own_keys_hash_to_it_whatever_the_counters_name() {
        for s in [0u16, 1, 866, 5061, 12182, 16383] {
            for name in ["views", "product:{id}:views", "{x}"] {
                assert_eq!(slot::of(&dirty_key(name, s)), s);
                assert_eq!(slot::of(&moves_key(name, s)), s);
            }
        }
        assert!(dirty_key("views", 0).starts_with(b"cacheside:counter:dirty:{"));
        assert!(moves_key("views", 0).ends_with(b"}:views"));
    }

    #[test]
    fn a_slot_is_forgotten_when_found_empty_after_its_grace() {
        let now = Instant::now();
        let mut a = Active::default();
        a.touch(5, now + Duration::from_secs(1));
        a.touch(9, now);
        a.recheck(7, Duration::ZERO, now);
        a.recheck(7, Duration::from_secs(10), now);
        assert_eq!(a.rechecked(7), Some(Duration::ZERO));
        assert_eq!(a.slots(), vec![5, 7, 9]);
        a.settle(&[], &[5, 7, 9], now);
        assert_eq!(a.slots(), vec![5, 7], "5 in its grace, 7 still to be read");
        a.settle(&[7], &[7], now);
        assert_eq!(a.slots(), vec![5]);
        a.resume_at(6);
        a.touch(2, now);
        assert_eq!(a.slots(), vec![2, 5]);
        a.touch(8, now);
        assert_eq!(a.slots(), vec![8, 2, 5]);
        assert_eq!(a.len(), 3);
    }
}
