//! The upstream Redis tier: shared pipelined pools (one per protocol version) and pinned
//! connections. Cluster mode will add per-node pools chosen by hash slot behind the same `send`.

pub(crate) mod conn;
pub mod iam;
mod pinned;
mod pool;

pub use crate::config::validate::UpstreamSettings as Settings;
pub use pinned::{BeforeReply, Pinned};
pub use pool::{BatchResult, Pool, ReplyRx};

use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::Proto;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

pub struct Upstream {
    settings: Arc<Settings>,
    resp2: Pool,
    /// Created when the first client switches to RESP3, so an upstream without HELLO is never
    /// asked for it unless a client wants it.
    resp3: OnceLock<Pool>,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn start(settings: Settings, metrics: Arc<Metrics>) -> Self {
        let settings = Arc::new(settings);
        let resp2 = Pool::start(settings.clone(), Proto::Resp2, metrics.clone());
        Self {
            settings,
            resp2,
            resp3: OnceLock::new(),
            metrics,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the upstream answers now (at least one shared connection is up).
    pub fn is_up(&self) -> bool {
        self.resp2.up_count() > 0
    }

    fn pool(&self, proto: Proto) -> &Pool {
        match proto {
            Proto::Resp2 => &self.resp2,
            Proto::Resp3 => self.resp3.get_or_init(|| {
                Pool::start(self.settings.clone(), Proto::Resp3, self.metrics.clone())
            }),
        }
    }

    /// Sends `count` complete requests on a shared connection speaking `proto`; `affinity` (the
    /// client id) keeps one client's commands on one connection, in order.
    pub fn send(&self, proto: Proto, affinity: u64, bytes: Bytes, count: u32) -> ReplyRx {
        self.pool(proto).send(affinity as usize, bytes, count)
    }

    /// Opens a connection of one client's own.
    pub async fn pin(
        &self,
        proto: Proto,
        client_name: Option<&[u8]>,
    ) -> Result<Pinned, UpstreamError> {
        Pinned::open(&self.settings, proto, client_name, self.metrics.clone()).await
    }

    pub fn settings_arc(&self) -> Arc<Settings> {
        self.settings.clone()
    }
}
