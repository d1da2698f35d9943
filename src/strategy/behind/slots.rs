//! Cluster mode: the streams a write-behind worker reads, and when it reads each next.
//!
//! A stream joins the set when this sidecar's writes are routed to its slot (the marks) or a
//! sweep finds entries in it. It is read at the next round after a mark, again at once while
//! it yields entries, every [`BUSY`] while it holds entries this worker cannot read (another
//! sidecar holds them; that sidecar applies them, or they are taken over), and once more at
//! the end of its [`GRACE`] when found empty. It leaves the set only when it is found empty
//! (XLEN 0, so nothing is pending either) and no write of this sidecar was routed to it for
//! [`GRACE`]: a write is marked when routed, before it runs in Redis, and a mark taken after
//! the read began keeps the stream (or brings it back at the next round). So a slot costs
//! about two reads per burst of writes, not a read per round. Bounded by the number of slots,
//! plus the one stream of a single Redis that a cluster found later by `auto` may hold.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long a stream written through this sidecar is read even when found empty.
pub(super) const GRACE: Duration = Duration::from_secs(2);
/// How often a stream is read whose entries another consumer holds.
const BUSY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct State {
    /// When it is read next.
    next: Instant,
    /// Until when it is kept even when empty.
    keep: Instant,
    /// Its length at the last read.
    len: u64,
}

/// What a read of one stream found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// Entries were read: read again at once.
    Entries,
    /// The stream's length (nothing was read for this consumer).
    Len(u64),
    /// The node did not answer as expected: kept, read again soon.
    Unknown,
}

#[derive(Default)]
pub(super) struct Active {
    streams: BTreeMap<Bytes, State>,
}

impl Active {
    /// A write was routed to `stream`'s slot: read it now, keep it for [`GRACE`].
    pub(super) fn marked(&mut self, stream: Bytes, now: Instant) {
        let s = self.streams.entry(stream).or_insert(State {
            next: now,
            keep: now,
            len: 0,
        });
        s.next = now;
        s.keep = s.keep.max(now + GRACE);
    }

    /// A sweep found entries in `stream`: read it now.
    pub(super) fn found(&mut self, stream: Bytes, len: u64, now: Instant) {
        let s = self.streams.entry(stream).or_insert(State {
            next: now,
            keep: now,
            len,
        });
        s.next = now;
        s.len = s.len.max(len);
    }

    /// The streams to read now, in order.
    pub(super) fn due(&self, now: Instant) -> Vec<Bytes> {
        self.streams
            .iter()
            .filter(|(_, s)| s.next <= now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The streams that held entries at their last read (where XAUTOCLAIM may find some).
    pub(super) fn holding(&self) -> Vec<Bytes> {
        self.streams
            .iter()
            .filter(|(_, s)| s.len > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every stream in the set.
    pub(super) fn all(&self) -> Vec<Bytes> {
        self.streams.keys().cloned().collect()
    }

    /// After a read of `stream` at `now`: when to read it next, or `true` when it leaves the set.
    pub(super) fn settle(&mut self, stream: &Bytes, found: Found, now: Instant) -> bool {
        let Some(s) = self.streams.get_mut(stream) else {
            return false;
        };
        match found {
            Found::Entries => {
                s.next = now;
                s.len = s.len.max(1);
            }
            Found::Unknown => s.next = now + BUSY,
            Found::Len(n) if n > 0 => {
                s.len = n;
                s.next = now + BUSY;
            }
            Found::Len(_) if s.keep > now => {
                s.len = 0;
                s.next = s.keep;
            }
            Found::Len(_) => {
                self.streams.remove(stream);
                return true;
            }
        }
        false
    }

    pub(super) fn len(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_leaves_only_empty_and_out_of_its_grace() {
        let now = Instant::now();
        let (a, b, c) = (Bytes::from("a"), Bytes::from("b"), Bytes::from("c"));
        let mut set = Active::default();
        set.marked(a.clone(), now);
        set.found(b.clone(), 3, now);
        set.marked(c.clone(), now);
        assert_eq!(set.due(now), vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(set.holding(), vec![b.clone()]);
        // Empty within its grace: kept, read again when the grace ends.
        assert!(!set.settle(&a, Found::Len(0), now));
        // Found by a sweep, never written here: gone once found empty.
        assert!(set.settle(&b, Found::Len(0), now));
        assert_eq!(set.len(), 2);
        assert!(!set.settle(&c, Found::Entries, now));
        assert_eq!(set.due(now), vec![c.clone()]);
        assert_eq!(set.due(now + GRACE), vec![a.clone(), c.clone()]);
        let later = now + GRACE + Duration::from_millis(1);
        assert!(!set.settle(&c, Found::Unknown, later), "no answer: kept");
        assert!(
            !set.settle(&c, Found::Len(2), later),
            "entries held elsewhere: kept"
        );
        assert!(
            set.settle(&a, Found::Len(0), later),
            "empty past its grace: gone"
        );
        assert!(set.settle(&c, Found::Len(0), later));
        // A mark after the read began brings it back (it is read again at once).
        set.marked(a.clone(), later);
        assert_eq!(set.due(later), vec![a]);
    }
}
