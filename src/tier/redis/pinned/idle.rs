//! Pinned connections that no client holds any more, kept for the next client that needs one
//! to the same node with the same protocol. A transaction or a blocking command then costs no
//! new connection (a TCP and TLS handshake, AUTH or an IAM token, HELLO) each time its client
//! moves between cluster nodes or reconnects. Only a connection that holds no client state is
//! kept ([`Pinned::idle`]: released, every reply read, no subscription, transaction, WATCH or
//! other db, since those keep a connection pinned); it is renamed for its next client.

use super::Pinned;
use crate::protocol::reply::Proto;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Idle connections kept per node and protocol; more are closed.
const PER_NODE: usize = 16;

/// A node's address and the protocol its connections speak.
type Node = (Arc<str>, Proto);

#[derive(Default)]
pub(crate) struct Idle {
    conns: Mutex<HashMap<Node, Vec<Pinned>>>,
}

impl Idle {
    /// An idle connection to `addr` speaking `proto`, if one is kept and still usable.
    pub fn take(&self, addr: &Arc<str>, proto: Proto) -> Option<Pinned> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(&(addr.clone(), proto))?;
        // A kept connection may have been closed by the node meanwhile (its `timeout`).
        while let Some(p) = list.pop() {
            if p.idle() {
                return Some(p);
            }
        }
        None
    }

    /// Keeps `p` for a later client if it is idle, its node is `known` and there is room;
    /// closes it otherwise.
    pub fn put(&self, p: Pinned, known: impl Fn(&str) -> bool) {
        if !p.idle() || !known(p.addr()) {
            return;
        }
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        // Connections a node closed meanwhile go, and with them those to nodes no longer
        // `known` (a cluster's removed primaries, even still running), so the map holds only
        // what can be given out.
        conns.retain(|(addr, _), list| {
            list.retain(Pinned::idle);
            !list.is_empty() && known(addr)
        });
        let list = conns.entry((p.addr().clone(), p.proto())).or_default();
        if list.len() < PER_NODE {
            list.push(p);
        }
    }
}
