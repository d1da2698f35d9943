//! One client's order across redirections.
//!
//! A client's batches are queued on the nodes' pools as they arrive, so on one slot map they
//! reach each node in the client's order. Two things can break that order on a cluster whose
//! slots move:
//!
//! - a batch that meets `-MOVED`/`-ASK` is sent again once its replies are back; a later batch
//!   of the same client, routed meanwhile by a newer slot map straight to the new node, would
//!   run before the retry (a `SET k 2` overtaken by the retried `SET k 1`);
//! - two batches of one client that both meet a redirection could follow it in either order.
//!
//! So each batch takes a [`Ticket`] in its client's chain. A batch routed by another slot map
//! than the client's batches in flight, or sent while one of them follows a redirection (or
//! waits itself), waits until every earlier batch of the client is done before it is routed;
//! and a batch follows its redirections only after every earlier batch is done. While the slot
//! map does not change, nothing waits: the common path is one lock and one map entry per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

type Chains = Arc<Mutex<HashMap<u64, Chain>>>;

/// The chains of the clients with batches in flight (by the affinity the client sends with).
#[derive(Default)]
pub(super) struct Orders {
    clients: Chains,
}

struct Chain {
    /// Batches taken a ticket and not yet done.
    inflight: usize,
    /// The slot map generation they were routed by.
    generation: u64,
    /// One of them follows a redirection or waits: every later batch waits for the earlier.
    unsettled: bool,
    /// Closed when the newest batch (and so every earlier one) is done.
    last: watch::Receiver<()>,
}

/// One batch's place in its client's chain; dropping it marks the batch done.
pub(super) struct Ticket {
    clients: Chains,
    affinity: u64,
    /// Closed when every earlier batch of the client is done.
    earlier: Option<watch::Receiver<()>>,
    _done: watch::Sender<()>,
    /// The batch waits for every earlier one before it is routed.
    pub hold: bool,
}

impl Orders {
    /// A ticket for a batch of `affinity` about to be routed by slot map `generation`.
    pub fn begin(&self, affinity: u64, generation: u64) -> Ticket {
        let (done, rx) = watch::channel(());
        let mut clients = lock(&self.clients);
        let Some(c) = clients.get_mut(&affinity) else {
            clients.insert(
                affinity,
                Chain {
                    inflight: 1,
                    generation,
                    unsettled: false,
                    last: rx,
                },
            );
            return Ticket {
                clients: self.clients.clone(),
                affinity,
                earlier: None,
                _done: done,
                hold: false,
            };
        };
        let hold = c.unsettled || c.generation != generation;
        c.unsettled |= hold;
        c.inflight += 1;
        Ticket {
            clients: self.clients.clone(),
            affinity,
            earlier: Some(std::mem::replace(&mut c.last, rx)),
            _done: done,
            hold,
        }
    }

    /// The batch holding `t` met a redirection: the client's later batches wait for it.
    pub fn unsettle(&self, t: &Ticket) {
        if let Some(c) = lock(&self.clients).get_mut(&t.affinity) {
            c.unsettled = true;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.clients).len()
    }
}

fn lock(c: &Chains) -> MutexGuard<'_, HashMap<u64, Chain>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ticket {
    /// Waits until every earlier batch of the client is done. (A batch whose task ended
    /// without saying so counts as done.)
    pub async fn after_earlier(&mut self) {
        if let Some(mut rx) = self.earlier.take() {
            // Nothing is ever sent: the channel closes when the earlier batch is done.
            while rx.changed().await.is_ok() {}
        }
    }

    /// The batch is done once every earlier one is; then later batches may go. (A batch's
    /// replies are handed back before this: the session reads them in order anyway.)
    pub async fn finish(mut self) {
        self.after_earlier().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get_mut(&self.affinity) {
            c.inflight -= 1;
            if c.inflight == 0 {
                clients.remove(&self.affinity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn o_end(t: Ticket) {
        t.finish().await;
    }

    #[tokio::test]
    async fn one_slot_map_never_holds_a_batch() {
        let o = Orders::default();
        let a = o.begin(1, 7);
        let b = o.begin(1, 7);
        let other = o.begin(2, 8);
        assert!(!a.hold && !b.hold && !other.hold);
        o_end(a).await;
        o_end(b).await;
        o_end(other).await;
        assert_eq!(o.len(), 0, "a chain ends with its last batch");
    }

    #[tokio::test]
    async fn a_new_slot_map_or_a_redirection_holds_later_batches_until_earlier_ones_are_done() {
        let o = Orders::default();
        let first = o.begin(1, 7);
        let mut moved = o.begin(1, 8);
        assert!(moved.hold, "routed by another map than the batch in flight");
        let mut after = o.begin(1, 8);
        assert!(after.hold, "behind a held batch");
        let waiter = tokio::spawn(async move {
            moved.after_earlier().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits for the first batch");
        o_end(first).await;
        waiter.await.expect("released once the first batch is done");
        // `after` waits for `moved`, whose ticket ended with the waiter's task.
        after.after_earlier().await;
        o_end(after).await;

        let a = o.begin(3, 1);
        o.unsettle(&a);
        let b = o.begin(3, 1);
        assert!(b.hold, "behind a batch that follows a redirection");
        o_end(a).await;
        o_end(b).await;
    }
}
