//! Redis Cluster upstream: the slot map, one pipelined pool per primary, and each client batch
//! routed by hash slot, split and merged where a command spans slots, with MOVED and ASK
//! followed (bounded) so the client sees one non-cluster Redis.
//!
//! A batch is planned and queued on the nodes' pools in the caller, so one client's commands
//! reach each node in the order it sent them; a task per batch then gathers the replies,
//! follows redirections and merges, and hands the batch's replies back in request order.

mod batch;
mod frames;
mod nodes;
mod order;
pub mod slot;
mod split;
pub mod topology;

use super::{ReplyRx, Settings};
use crate::error::{reply_bytes, ProxyError, UpstreamError};
use crate::metrics::{Metrics, UpstreamFailure};
use crate::protocol::reply::{self, Proto};

use crate::protocol::Request;
use batch::{Batch, Sent};
use bytes::{Bytes, BytesMut};
use frames::{parse_batch, plain, redirection, redirects, repeat, Redirect};
use nodes::Node;
pub use split::PER_KEY_SCRIPT;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
pub use topology::Topology;

/// Where a redirected request of a pinned connection is sent next (`Cluster::pinned_redirect`).
#[derive(Debug, PartialEq, Eq)]
pub struct NextHop {
    pub addr: Arc<str>,
    /// `-ASK`: `ASKING` first.
    pub asking: bool,
    /// `-TRYAGAIN`: after this pause, to the same node.
    pub pause: Duration,
}

/// Redirections followed for one command before its last error goes to the client.
const MAX_REDIRECTS: usize = 5;
/// The first pause before a `-TRYAGAIN` is retried; the next ones grow by as much.
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);
/// Slot map refreshes are at least this far apart, however many MOVED replies arrive, so a
/// fleet of sidecars cannot storm the cluster with CLUSTER SHARDS.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// The slot map is re-read this often even when nothing points at a change (failovers).
const REFRESH_PERIOD: Duration = Duration::from_secs(10);

pub struct Cluster {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    seed: Arc<str>,
    /// The slot map, and how many times it changed (see `order`).
    topology: RwLock<Option<(Arc<Topology>, u64)>>,
    /// Each client's order across redirections.
    orders: order::Orders,
    /// Every node ever routed to (primaries, and targets of MOVED/ASK), by address.
    nodes: Mutex<HashMap<Arc<str>, Arc<Node>>>,
    /// Replicas read from (`upstream.read_from`), by address.
    readers: Mutex<HashMap<Arc<str>, Arc<Node>>>,
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
}

impl Cluster {
    /// Starts with no slot map; it is read from the seed (the URL's node) in the background and
    /// every `REFRESH_PERIOD` after.
    pub fn start(settings: Arc<Settings>, metrics: Arc<Metrics>) -> Arc<Self> {
        let seed: Arc<str> = settings.url.addr().into();
        let c = Arc::new(Self {
            settings,
            metrics,
            seed,
            topology: RwLock::new(None),
            orders: order::Orders::default(),
            nodes: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
        });
        tokio::spawn(periodic(Arc::downgrade(&c)));
        c
    }

    pub fn topology(&self) -> Option<Arc<Topology>> {
        self.topology_gen().map(|(t, _)| t)
    }

    /// The slot map and its generation (one more each time it changes).
    fn topology_gen(&self) -> Option<(Arc<Topology>, u64)> {
        self.topology
            .read()
            .expect("topology lock is never poisoned")
            .clone()
    }

    /// Whether the slot map is known and every primary has a connection up.
    pub fn is_up(&self) -> bool {
        self.topology().is_some_and(|t| {
            t.primaries
                .iter()
                .all(|a| self.node(a).resp2.up_count() > 0)
        })
    }

    /// The address of the primary serving `key`'s slot (any primary for no key): where a
    /// client's pinned connection goes.
    pub fn addr_for(&self, key: Option<&[u8]>) -> Result<Arc<str>, UpstreamError> {
        let t = self.topology().ok_or_else(|| self.not_mapped())?;
        let node = match key {
            Some(k) => t.node_of(slot::of(k)),
            None => Some(0),
        };
        node.and_then(|n| t.primaries.get(n).cloned())
            .ok_or_else(|| UpstreamError::Unavailable {
                addr: self.seed.clone(),
                detail: "no primary serves the key's slot".into(),
            })
    }

    fn not_mapped(&self) -> UpstreamError {
        UpstreamError::Unavailable {
            addr: self.seed.clone(),
            detail: "the cluster's slot map is not known yet".into(),
        }
    }

    /// Reads the slot map now from a known primary or the seed; starts pools for new primaries.
    pub async fn refresh(&self) -> Result<(), UpstreamError> {
        *self
            .last_refresh
            .lock()
            .expect("refresh lock is never poisoned") = Some(Instant::now());
        self.metrics.cluster_refreshes.inc();
        let mut candidates: Vec<Arc<str>> = self
            .topology()
            .map(|t| t.primaries.clone())
            .unwrap_or_default();
        candidates.push(self.seed.clone());
        let mut last = None;
        for addr in candidates {
            match topology::fetch(&self.settings, &addr).await {
                Ok(t) => {
                    // Pools of nodes that serve nothing now end (their supervisors stop when
                    // the last batch holding them is done); new primaries get theirs now.
                    self.nodes
                        .lock()
                        .expect("nodes lock is never poisoned")
                        .retain(|a, _| t.primaries.contains(a));
                    for a in &t.primaries {
                        self.node(a);
                    }
                    self.start_readers(&t);
                    let mut cur = self
                        .topology
                        .write()
                        .expect("topology lock is never poisoned");
                    if cur.as_ref().map(|(t, _)| &**t) != Some(&t) {
                        tracing::info!(primaries = ?t.primaries, "cluster slot map read");
                        let generation = cur.as_ref().map_or(0, |(_, g)| g + 1);
                        *cur = Some((Arc::new(t), generation));
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.upstream_failure(e.failure());
                    last = Some(e);
                }
            }
        }
        let err = last.unwrap_or_else(|| self.not_mapped());
        tracing::warn!(error = %err, "cluster slot map refresh failed");
        Err(err)
    }

    /// Refreshes the slot map in the background unless one ran within `MIN_REFRESH_INTERVAL`
    /// or one is running.
    pub fn refresh_soon(self: &Arc<Self>) {
        let recent = self
            .last_refresh
            .lock()
            .expect("refresh lock is never poisoned")
            .is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL);
        if recent || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.refresh().await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Sends `count` complete requests of one client; the replies come back on the receiver in
    /// request order, one frame per request.
    pub fn send(
        self: &Arc<Self>,
        proto: Proto,
        affinity: u64,
        bytes: Bytes,
        count: u32,
    ) -> ReplyRx {
        self.send_to(proto, affinity, bytes, count, false)
    }

    /// Like `send`, for read-only requests under `upstream.read_from`: each part goes to a
    /// replica of its slot's primary (see `read_node`).
    pub fn send_read(
        self: &Arc<Self>,
        proto: Proto,
        affinity: u64,
        bytes: Bytes,
        count: u32,
    ) -> ReplyRx {
        self.send_to(proto, affinity, bytes, count, true)
    }

    fn send_to(
        self: &Arc<Self>,
        proto: Proto,
        affinity: u64,
        bytes: Bytes,
        count: u32,
        read: bool,
    ) -> ReplyRx {
        let (tx, rx) = oneshot::channel();
        let Some((topo, generation)) = self.topology_gen() else {
            self.refresh_soon();
            let _ = tx.send(Err(self.not_mapped()));
            return rx;
        };
        let Some(reqs) = parse_batch(&bytes, count) else {
            let _ = tx.send(Ok(repeat(
                &reply_bytes(&ProxyError::Internal("unparsable batch")),
                count,
            )));
            return rx;
        };
        let mut ticket = self.orders.begin(affinity, generation);
        let me = self.clone();
        if ticket.hold {
            // Routed once every earlier batch of the client is done, by the map of then.
            tokio::spawn(async move {
                ticket.after_earlier().await;
                let topo = me.topology().unwrap_or(topo);
                let (batch, sends) = me.route(proto, affinity, read, &reqs, &topo, bytes);
                let out = me.clone().gather(batch, sends, &mut ticket).await;
                let _ = tx.send(Ok(out));
                ticket.finish().await;
            });
            return rx;
        }
        let (batch, sends) = self.route(proto, affinity, read, &reqs, &topo, bytes);
        tokio::spawn(async move {
            let out = me.clone().gather(batch, sends, &mut ticket).await;
            let _ = tx.send(Ok(out));
            ticket.finish().await;
        });
        rx
    }

    /// Plans the client's requests on `topo` and queues them on the nodes' pools.
    fn route(
        &self,
        proto: Proto,
        affinity: u64,
        read: bool,
        reqs: &[Request],
        topo: &Topology,
        bytes: Bytes,
    ) -> (Batch, Vec<Sent>) {
        let mut batch = Batch::new(proto, affinity, read);
        for req in reqs {
            batch.add(split::plan(req, topo));
        }
        let sends = batch.dispatch(self, topo, bytes);
        (batch, sends)
    }

    /// Awaits every node's replies, follows redirections (after every earlier batch of the
    /// client is done, see `order`), merges each request's parts.
    async fn gather(
        self: Arc<Self>,
        mut batch: Batch,
        sends: Vec<Sent>,
        ticket: &mut order::Ticket,
    ) -> Bytes {
        let mut got = Vec::with_capacity(sends.len());
        for sent in sends {
            let r = sent.rx.await;
            got.push((sent.places, sent.addr, r));
        }
        // The common case: the client's bytes went to one node, whose replies pass as they are.
        if let [(places, _, Ok(Ok(bytes)))] = got.as_mut_slice() {
            if batch.whole && plain(bytes, places.len(), batch.proto) {
                return std::mem::take(bytes);
            }
        }
        // Where each part went: a `-TRYAGAIN` is retried there.
        let mut sent_to: Vec<Vec<Option<Arc<str>>>> =
            batch.replies.iter().map(|r| vec![None; r.len()]).collect();
        for (places, addr, result) in got {
            for place in &places {
                sent_to[place.0][place.1] = Some(addr.clone());
            }
            let replies = match result {
                Ok(Ok(bytes)) => reply::split(&bytes, places.len(), batch.proto)
                    .map(|v| v.into_iter().map(|(b, _)| b).collect::<Vec<_>>())
                    .ok_or(ProxyError::UpstreamReply),
                Ok(Err(e)) => {
                    self.refresh_soon();
                    Err(ProxyError::Upstream(e))
                }
                Err(_) => Err(ProxyError::Internal("upstream pool dropped a batch")),
            };
            match replies {
                Ok(replies) => {
                    for (place, r) in places.iter().zip(replies) {
                        batch.replies[place.0][place.1] = Some(r);
                    }
                }
                Err(e) => {
                    let err = reply_bytes(&e);
                    for place in &places {
                        batch.replies[place.0][place.1] = Some(err.clone());
                    }
                }
            }
        }
        let redirected = batch
            .replies
            .iter()
            .flatten()
            .flatten()
            .any(|r| redirects(r));
        if redirected {
            self.orders.unsettle(ticket);
            ticket.after_earlier().await;
        }
        let mut out = BytesMut::new();
        for (r, req) in batch.reqs.iter().enumerate() {
            let Some((parts, how)) = req else {
                continue;
            };
            let mut replies = Vec::with_capacity(parts.len());
            for (p, part) in parts.iter().enumerate() {
                let got = batch.replies[r][p]
                    .take()
                    .unwrap_or_else(|| reply_bytes(&ProxyError::Internal("part not answered")));
                let at = sent_to[r][p].take();
                replies.push(
                    self.follow(batch.proto, batch.affinity, &part.frame, got, at)
                        .await,
                );
            }
            out.extend_from_slice(&split::merge(how, &replies, batch.proto));
        }
        out.freeze()
    }

    /// Where a request of a client's pinned connection to `from` goes after `frame` redirected
    /// it, for its attempt number `attempt` (1 for the first redirection): counted, and the slot
    /// map refreshed, as on shared connections. `None` for a frame that is no redirection, and
    /// past `MAX_REDIRECTS` (the client then gets the frame).
    pub fn pinned_redirect(
        self: &Arc<Self>,
        frame: &[u8],
        from: &Arc<str>,
        attempt: u32,
    ) -> Option<NextHop> {
        if attempt as usize > MAX_REDIRECTS {
            return None;
        }
        Some(match redirection(frame, Some(from))? {
            Redirect::Moved(addr) => {
                self.metrics.cluster_moved.inc();
                self.metrics.upstream_failure(UpstreamFailure::Moved);
                self.refresh_soon();
                NextHop {
                    addr,
                    asking: false,
                    pause: Duration::ZERO,
                }
            }
            Redirect::Ask(addr) => {
                self.metrics.cluster_ask.inc();
                self.metrics.upstream_failure(UpstreamFailure::Ask);
                NextHop {
                    addr,
                    asking: true,
                    pause: Duration::ZERO,
                }
            }
            Redirect::TryAgain => NextHop {
                addr: from.clone(),
                asking: false,
                pause: TRYAGAIN_PAUSE * attempt,
            },
        })
    }

    /// Follows `-MOVED` (refreshing the slot map) and `-ASK` (with ASKING) replies to `frame`,
    /// and retries `-TRYAGAIN` (a multi-key command on a slot half migrated) after a pause on
    /// the node that said it (`at`); at most `MAX_REDIRECTS` times, then the last reply is the
    /// client's.
    async fn follow(
        self: &Arc<Self>,
        proto: Proto,
        affinity: u64,
        frame: &Bytes,
        mut got: Bytes,
        mut at: Option<Arc<str>>,
    ) -> Bytes {
        for attempt in 1..=MAX_REDIRECTS as u32 {
            let (ask, addr) = match redirection(&got, at.as_deref()) {
                Some(Redirect::Moved(addr)) => {
                    self.metrics.cluster_moved.inc();
                    self.metrics.upstream_failure(UpstreamFailure::Moved);
                    self.refresh_soon();
                    (false, addr)
                }
                Some(Redirect::Ask(addr)) => {
                    self.metrics.cluster_ask.inc();
                    self.metrics.upstream_failure(UpstreamFailure::Ask);
                    (true, addr)
                }
                Some(Redirect::TryAgain) => match &at {
                    Some(addr) => {
                        tokio::time::sleep(TRYAGAIN_PAUSE * attempt).await;
                        (false, addr.clone())
                    }
                    None => return got,
                },
                None => return got,
            };
            let node = self.node(&addr);
            let pool = self.pool(&node, proto);
            let sent = if ask {
                let mut b = BytesMut::with_capacity(frame.len() + 20);
                b.extend_from_slice(b"*1\r\n$6\r\nASKING\r\n");
                b.extend_from_slice(frame);
                pool.send(affinity as usize, b.freeze(), 2).await
            } else {
                pool.send(affinity as usize, frame.clone(), 1).await
            };
            at = Some(addr);
            got = match sent {
                Ok(Ok(bytes)) => {
                    let n = if ask { 2 } else { 1 };
                    match reply::split(&bytes, n, proto).and_then(|mut v| v.pop()) {
                        Some((last, _)) => last,
                        None => reply_bytes(&ProxyError::UpstreamReply),
                    }
                }
                Ok(Err(e)) => reply_bytes(&ProxyError::Upstream(e)),
                Err(_) => reply_bytes(&ProxyError::Internal("upstream pool dropped a batch")),
            };
        }
        got
    }
}

/// Re-reads the slot map until the first read succeeds, then every `REFRESH_PERIOD`, while the
/// cluster is in use.
async fn periodic(me: Weak<Cluster>) {
    let mut attempt = 0u32;
    loop {
        let ok = match me.upgrade() {
            Some(c) => c.refresh().await.is_ok(),
            None => return,
        };
        let wait = if ok {
            attempt = 0;
            REFRESH_PERIOD
        } else {
            attempt = attempt.saturating_add(1);
            (MIN_REFRESH_INTERVAL * attempt.min(10)).min(REFRESH_PERIOD)
        };
        tokio::time::sleep(wait).await;
    }
}
