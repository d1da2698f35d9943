//! One client batch on a cluster: its requests' parts queued on the nodes' pools, and the
//! place each reply goes back to.

use super::split::{self, Plan, Target};
use super::ReplyRx;
use super::{Cluster, Topology};
use crate::protocol::reply::{self, Proto};
use bytes::{Bytes, BytesMut};

/// One node's share of a batch: what was sent, and where each reply goes (request, part).
pub(super) struct Sent {
    pub(super) rx: ReplyRx,
    pub(super) places: Vec<(usize, usize)>,
    /// The node they went to.
    pub(super) addr: std::sync::Arc<str>,
}

/// A batch being planned, then gathered.
pub(super) struct Batch {
    pub(super) proto: Proto,
    pub(super) affinity: u64,
    /// Read-only requests under `upstream.read_from`: sent to replicas.
    read: bool,
    /// Per request: its parts and how they merge (`None`: answered in `replies` already).
    pub(super) reqs: Vec<Option<(Vec<split::Part>, split::Merge)>>,
    pub(super) replies: Vec<Vec<Option<Bytes>>>,
    /// Every request went whole to one node, as the client's bytes (set by `dispatch`): the
    /// node's replies are the client's unless one asks to be followed.
    pub(super) whole: bool,
}

impl Batch {
    pub(super) fn new(proto: Proto, affinity: u64, read: bool) -> Self {
        Self {
            proto,
            affinity,
            read,
            reqs: Vec::new(),
            replies: Vec::new(),
            whole: false,
        }
    }

    pub(super) fn add(&mut self, plan: Plan) {
        match plan {
            Plan::Parts(parts, how) => {
                self.replies.push(vec![None; parts.len()]);
                self.reqs.push(Some((parts, how)));
            }
            Plan::Reply(bytes) => {
                self.replies.push(vec![Some(bytes)]);
                self.reqs.push(Some((
                    vec![split::Part {
                        target: Target::Any,
                        frame: Bytes::new(),
                    }],
                    split::Merge::Single,
                )));
            }
        }
    }

    /// Queues every part on its node's pool; a batch whose requests all go whole to one node
    /// is sent as the client's bytes, uncopied.
    pub(super) fn dispatch(&mut self, c: &Cluster, topo: &Topology, bytes: Bytes) -> Vec<Sent> {
        let n = topo.primaries.len().max(1);
        let mut per_node: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
        for (r, req) in self.reqs.iter().enumerate() {
            let Some((parts, _)) = req else { continue };
            for (p, part) in parts.iter().enumerate() {
                if self.replies[r][p].is_some() {
                    continue;
                }
                let node = match part.target {
                    Target::Slot(s) => topo.node_of(s),
                    Target::Node(i) => Some(i),
                    Target::Any => Some(self.affinity as usize % n),
                };
                let Some(node) = node else {
                    self.replies[r][p] =
                        Some(reply::error_bytes("CLUSTERDOWN Hash slot not served"));
                    continue;
                };
                match per_node.iter_mut().find(|(i, _)| *i == node) {
                    Some((_, places)) => places.push((r, p)),
                    None => per_node.push((node, vec![(r, p)])),
                }
            }
        }
        let whole = per_node.len() == 1
            && per_node[0].1.len() == self.reqs.len()
            && self.reqs.iter().all(|r| {
                r.as_ref().is_some_and(|(parts, how)| {
                    parts.len() == 1 && *how == split::Merge::Single && !parts[0].frame.is_empty()
                })
            });
        self.whole = whole;
        per_node
            .into_iter()
            .filter_map(|(node, places)| {
                let read = match self.read {
                    true => c.read_node(topo, node, self.affinity),
                    false => None,
                };
                let node = match read {
                    Some(replica) => replica,
                    None => c.node(topo.primaries.get(node)?),
                };
                let addr = &node.addr;
                let frames = if whole {
                    bytes.clone()
                } else {
                    let mut out = BytesMut::new();
                    for &(r, p) in &places {
                        if let Some((parts, _)) = &self.reqs[r] {
                            out.extend_from_slice(&parts[p].frame);
                        }
                    }
                    out.freeze()
                };
                let rx = c.pool(&node, self.proto).send(
                    self.affinity as usize,
                    frames,
                    places.len() as u32,
                );
                Some(Sent {
                    rx,
                    places,
                    addr: addr.clone(),
                })
            })
            .collect()
    }
}
