//! The upstream Redis tier: shared pipelined pools (one per protocol version) and pinned
//! connections, to one Redis or, in cluster mode, to the primary of each command's hash slot.

pub mod cluster;
pub(crate) mod conn;
pub mod iam;
mod pinned;
mod pool;

pub use crate::config::validate::ReadFrom;
pub use crate::config::validate::UpstreamMode as Mode;
pub use crate::config::validate::UpstreamSettings as Settings;
pub use pinned::{redirected_slot, BeforeReply, Pinned, Redirected, Replay};
pub(crate) use pool::backoff;
pub use pool::{BatchResult, Pool, ReplyRx};

use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::Proto;
use bytes::Bytes;
use cluster::Cluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub struct Upstream {
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    /// One Redis: the URL's node.
    standalone: OnceLock<Standalone>,
    /// A Redis Cluster seeded by the URL's node. Once set, every command goes to it.
    cluster: OnceLock<Arc<Cluster>>,
    /// Set with `cluster`, for the router (which answers SELECT as a cluster does).
    cluster_flag: Arc<AtomicBool>,
    /// Pinned connections no client holds, for the next one (see `pinned::Idle`).
    idle: pinned::Idle,
}

struct Standalone {
    primary: Pools,
    /// `upstream.reader_url`: the replicas, for read-only commands (`upstream.read_from`).
    reader: Option<Pools>,
}

/// The shared pools to one endpoint, one per protocol version.
struct Pools {
    settings: Arc<Settings>,
    resp2: Pool,
    /// Created when the first client switches to RESP3, so an upstream without HELLO is never
    /// asked for it unless a client wants it.
    resp3: OnceLock<Pool>,
}

impl Pools {
    fn start(settings: Arc<Settings>, metrics: &Arc<Metrics>) -> Self {
        Self {
            resp2: Pool::start(settings.clone(), Proto::Resp2, metrics.clone()),
            resp3: OnceLock::new(),
            settings,
        }
    }

    fn get(&self, proto: Proto, metrics: &Arc<Metrics>) -> &Pool {
        match proto {
            Proto::Resp2 => &self.resp2,
            Proto::Resp3 => self
                .resp3
                .get_or_init(|| Pool::start(self.settings.clone(), Proto::Resp3, metrics.clone())),
        }
    }
}

impl Upstream {
    /// Starts the upstream in its configured mode. `auto` asks the URL's node first
    /// (`INFO cluster`); a node that cannot be asked now is taken for one Redis, and asked
    /// again in the background until it answers (a cluster then takes over).
    pub async fn start(settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        let up = Arc::new(Self {
            settings: Arc::new(settings),
            metrics,
            standalone: OnceLock::new(),
            cluster: OnceLock::new(),
            cluster_flag: Arc::default(),
            idle: Default::default(),
        });
        let seed: Arc<str> = up.settings.url.addr().into();
        match up.settings.mode {
            Mode::Standalone => up.start_standalone(),
            Mode::Cluster => up.start_cluster().await,
            Mode::Auto => match cluster::topology::cluster_enabled(&up.settings, &seed).await {
                Ok(true) => up.start_cluster().await,
                Ok(false) => up.start_standalone(),
                Err(e) => {
                    tracing::warn!(upstream = %seed, error = %e, "upstream.mode = auto: cannot ask the upstream whether it is a cluster yet; one Redis until it answers");
                    up.start_standalone();
                    tokio::spawn(detect_later(Arc::downgrade(&up), seed));
                }
            },
        }
        up
    }

    fn start_standalone(&self) {
        self.standalone.get_or_init(|| {
            if self.settings.read_from != ReadFrom::Primary && self.settings.reader.is_none() {
                tracing::warn!("upstream.read_from is ignored: the upstream is one Redis and upstream.reader_url is not set; reads go to the primary");
            }
            self.standalone_pools()
        });
    }

    fn standalone_pools(&self) -> Standalone {
        Standalone {
            primary: Pools::start(self.settings.clone(), &self.metrics),
            reader: self
                .settings
                .reader
                .as_ref()
                .filter(|_| self.settings.read_from != ReadFrom::Primary)
                .map(|r| Pools::start(Arc::new((**r).clone()), &self.metrics)),
        }
    }

    /// Cluster mode: reads the slot map once before returning (bounded by the timeouts), so
    /// the first clients find it; it is retried in the background when that fails.
    async fn start_cluster(&self) {
        let c = self
            .cluster
            .get_or_init(|| Cluster::start(self.settings.clone(), self.metrics.clone()));
        self.cluster_flag.store(true, Ordering::Release);
        if c.topology().is_none() {
            let _ = c.refresh().await;
        }
        tracing::info!(seed = %self.settings.url.addr(), "upstream is a Redis Cluster");
        if self.settings.reader.is_some() {
            tracing::warn!("upstream.reader_url is ignored: the upstream is a Redis Cluster, whose replicas come from its slot map");
        }
        if self.settings.read_from != ReadFrom::Primary {
            tracing::info!(read_from = ?self.settings.read_from, "read-only commands go to each slot's replicas (READONLY)");
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// True once the upstream runs as a cluster (shared with the router).
    pub fn cluster_flag(&self) -> Arc<AtomicBool> {
        self.cluster_flag.clone()
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Whether the upstream answers now (at least one shared connection is up; in cluster
    /// mode, one to every primary).
    pub fn is_up(&self) -> bool {
        match (self.cluster.get(), self.standalone.get()) {
            (Some(c), _) => c.is_up(),
            (None, Some(s)) => s.primary.resp2.up_count() > 0,
            (None, None) => false,
        }
    }

    /// Sends `count` complete requests on a shared connection speaking `proto`; `affinity` (the
    /// client id) keeps one client's commands on one connection, in order.
    pub fn send(&self, proto: Proto, affinity: u64, bytes: Bytes, count: u32) -> ReplyRx {
        if let Some(c) = self.cluster.get() {
            return c.send(proto, affinity, bytes, count);
        }
        match self.standalone.get() {
            Some(s) => s
                .primary
                .get(proto, &self.metrics)
                .send(affinity as usize, bytes, count),
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(Err(UpstreamError::Unavailable {
                    addr: self.settings.url.addr().into(),
                    detail: "not started".into(),
                }));
                rx
            }
        }
    }

    /// Whether read-only commands may go to replicas (`upstream.read_from` with a reader
    /// endpoint); the session then sends them with [`Upstream::send_read`].
    pub fn reads_replicas(&self) -> bool {
        match self.cluster.get() {
            Some(_) => self.settings.read_from != ReadFrom::Primary,
            None => self.standalone.get().is_some_and(|s| s.reader.is_some()),
        }
    }

    /// Sends read-only requests to a replica as `upstream.read_from` says: `replica` always,
    /// `prefer_replica` while a replica connection is up (else the primary).
    pub fn send_read(&self, proto: Proto, affinity: u64, bytes: Bytes, count: u32) -> ReplyRx {
        if let Some(c) = self.cluster.get() {
            if self.settings.read_from != ReadFrom::Primary {
                return c.send_read(proto, affinity, bytes, count);
            }
        }
        if self.cluster.get().is_none() {
            if let Some(reader) = self.standalone.get().and_then(|s| s.reader.as_ref()) {
                let pool = reader.get(proto, &self.metrics);
                if self.settings.read_from == ReadFrom::Replica || pool.up_count() > 0 {
                    return pool.send(affinity as usize, bytes, count);
                }
            }
        }
        self.send(proto, affinity, bytes, count)
    }

    /// Opens a connection of one client's own; in cluster mode to the primary of `key`'s slot
    /// (any primary for no key).
    pub async fn pin(
        &self,
        proto: Proto,
        client_name: Option<&[u8]>,
        key: Option<&[u8]>,
    ) -> Result<Pinned, UpstreamError> {
        let addr: Arc<str> = match self.cluster.get() {
            Some(c) => c.addr_for(key)?,
            None => self.settings.url.addr().into(),
        };
        self.pin_at(proto, client_name, addr).await
    }

    /// Opens a connection of one client's own to the node at `addr` (where a cluster
    /// redirection sent a pinned request).
    pub async fn pin_at(
        &self,
        proto: Proto,
        client_name: Option<&[u8]>,
        addr: Arc<str>,
    ) -> Result<Pinned, UpstreamError> {
        while let Some(mut p) = self.idle.take(&addr, proto) {
            if p.rename(client_name).await.is_ok() {
                self.metrics.pinned_reused.inc();
                return Ok(p);
            }
        }
        Pinned::open(
            &self.settings,
            addr,
            proto,
            client_name,
            self.metrics.clone(),
        )
        .await
        .inspect_err(|e| self.metrics.upstream_failure(e.failure()))
    }

    /// Takes back a client's pinned connection it no longer needs: kept for the next client
    /// if it holds nothing of this one's (see `Pinned::idle`), closed otherwise.
    /// In cluster mode, kept connections to nodes no longer in the slot map (a primary removed
    /// from the cluster, still running) are closed then.
    pub fn unpin(&self, p: Pinned) {
        let map = self.cluster().and_then(|c| c.topology());
        self.idle.put(p, |addr| {
            map.as_ref()
                .is_none_or(|t| t.primaries.iter().any(|a| **a == *addr))
        });
    }

    pub fn settings_arc(&self) -> Arc<Settings> {
        self.settings.clone()
    }
}

/// `auto` mode after the first question went unanswered: asks again, with backoff, until the
/// node answers; a cluster then takes over from the standalone pools.
async fn detect_later(up: std::sync::Weak<Upstream>, seed: Arc<str>) {
    let mut wait = Duration::from_millis(100);
    loop {
        tokio::time::sleep(wait).await;
        let Some(u) = up.upgrade() else { return };
        match cluster::topology::cluster_enabled(&u.settings, &seed).await {
            Ok(true) => return u.start_cluster().await,
            Ok(false) => return,
            Err(_) => wait = (wait * 2).min(u.settings.reconnect_max),
        }
    }
}
