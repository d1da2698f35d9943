//! A cluster's node connections: a pipelined pool per primary, and per replica read from
//! (`upstream.read_from`), whose connections send `READONLY`.

use super::{Cluster, Topology};
use crate::protocol::reply::Proto;
use crate::tier::redis::{Pool, ReadFrom};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One node's shared connections, one pool per protocol version.
pub(super) struct Node {
    pub(super) addr: Arc<str>,
    /// A replica's connections for reads (`READONLY`).
    readonly: bool,
    pub(super) resp2: Pool,
    resp3: OnceLock<Pool>,
}

impl Cluster {
    pub(super) fn node(&self, addr: &Arc<str>) -> Arc<Node> {
        self.node_in(&self.nodes, addr, false)
    }

    /// A replica's read connections.
    fn reader(&self, addr: &Arc<str>) -> Arc<Node> {
        self.node_in(&self.readers, addr, true)
    }

    fn node_in(
        &self,
        map: &Mutex<HashMap<Arc<str>, Arc<Node>>>,
        addr: &Arc<str>,
        readonly: bool,
    ) -> Arc<Node> {
        let mut nodes = map.lock().expect("nodes lock is never poisoned");
        nodes
            .entry(addr.clone())
            .or_insert_with(|| {
                Arc::new(Node {
                    addr: addr.clone(),
                    readonly,
                    resp2: Pool::start_node(
                        self.settings.clone(),
                        addr.clone(),
                        Proto::Resp2,
                        self.metrics.clone(),
                        readonly,
                    ),
                    resp3: OnceLock::new(),
                })
            })
            .clone()
    }

    pub(super) fn pool<'a>(&self, node: &'a Node, proto: Proto) -> &'a Pool {
        match proto {
            Proto::Resp2 => &node.resp2,
            Proto::Resp3 => node.resp3.get_or_init(|| {
                Pool::start_node(
                    self.settings.clone(),
                    node.addr.clone(),
                    Proto::Resp3,
                    self.metrics.clone(),
                    node.readonly,
                )
            }),
        }
    }

    /// Where a read of primary `n`'s slots goes under `upstream.read_from`: one of its replicas
    /// (picked by `affinity`), or the primary when it has none (or, with `prefer_replica`, when
    /// the picked replica has no connection up).
    pub(super) fn read_node(&self, topo: &Topology, n: usize, affinity: u64) -> Option<Arc<Node>> {
        let replicas = topo.replicas.get(n).filter(|r| !r.is_empty())?;
        let node = self.reader(&replicas[affinity as usize % replicas.len()]);
        let prefer = self.settings.read_from == ReadFrom::PreferReplica;
        (!prefer || node.resp2.up_count() > 0).then_some(node)
    }

    /// With `upstream.read_from`: read connections to every replica of the map (started before
    /// reads need them, so `prefer_replica` finds them up), and none to replicas it dropped.
    pub(super) fn start_readers(&self, t: &Topology) {
        if self.settings.read_from == ReadFrom::Primary {
            return;
        }
        let replicas: Vec<&Arc<str>> = t.replicas.iter().flatten().collect();
        self.readers
            .lock()
            .expect("nodes lock is never poisoned")
            .retain(|a, _| replicas.contains(&a));
        for a in replicas {
            self.reader(a);
        }
    }
}
