//! Shared upstream connections: requests of many clients multiplexed on a few pipelined
//! connections, replies matched first-in first-out.
//!
//! Each connection slot has a supervisor task that connects (with exponential backoff and
//! jitter), then runs a writer and a reader side by side. The writer drains every queued batch
//! into one write; the reader frames replies and completes the oldest waiter with the exact
//! bytes of its replies (one contiguous slice of the read buffer, no copy). A dead connection
//! fails every waiter it holds, so no reply can ever reach the wrong client.

mod wire;

use super::conn::{self, Handshake};
use super::iam::{self, IamAuth};
use super::Settings;
use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::reply::Proto;
use crate::protocol::request::encode_command;
use crate::transport::{ReadHalf, WriteHalf};
use bytes::Bytes;
use rand::Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

/// The replies to one batch: `count` frames back to back, or the error that lost them.
pub type BatchResult = Result<Bytes, UpstreamError>;
pub type ReplyRx = oneshot::Receiver<BatchResult>;

/// Batches that may wait for one connection's writer before new ones are refused.
const QUEUE_PER_CONNECTION: usize = 4096;
/// Most batches the writer takes from its queue for one write.
const WRITE_BATCH: usize = 256;

struct Job {
    bytes: Bytes,
    count: u32,
    tx: oneshot::Sender<BatchResult>,
    /// Sent again after a `-READONLY` reply (see `Supervisor::serve`): never a second time.
    retried: bool,
}

struct Pending {
    /// Kept (a reference count, not a copy) so the batch can be sent again after `-READONLY`.
    bytes: Bytes,
    count: u32,
    tx: oneshot::Sender<BatchResult>,
    deadline: Instant,
    retried: bool,
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

struct Slot {
    tx: mpsc::Sender<Job>,
    state: AtomicU8,
    last_error: Mutex<Option<UpstreamError>>,
}

/// A fixed set of shared, pipelined connections to one upstream node, in one protocol version.
pub struct Pool {
    slots: Vec<Arc<Slot>>,
    addr: Arc<str>,
    up: Arc<AtomicUsize>,
}

impl Pool {
    /// Starts `settings.connections` supervisors; they connect in the background.
    pub fn start(settings: Arc<Settings>, proto: Proto, metrics: Arc<Metrics>) -> Self {
        let addr: Arc<str> = settings.url.addr().into();
        Self::start_at(settings, addr, proto, metrics)
    }

    /// Like `start`, to the node at `addr` (a cluster node) with the URL's credentials and TLS.
    pub fn start_at(
        settings: Arc<Settings>,
        addr: Arc<str>,
        proto: Proto,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::start_node(settings, addr, proto, metrics, false)
    }

    /// Like `start_at`; with `readonly`, each connection sends `READONLY` (a cluster replica
    /// that serves reads of its primary's slots).
    pub fn start_node(
        settings: Arc<Settings>,
        addr: Arc<str>,
        proto: Proto,
        metrics: Arc<Metrics>,
        readonly: bool,
    ) -> Self {
        let up = Arc::new(AtomicUsize::new(0));
        let slots = (0..settings.connections)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_PER_CONNECTION);
                let slot = Arc::new(Slot {
                    tx,
                    state: AtomicU8::new(CONNECTING),
                    last_error: Mutex::new(None),
                });
                let sup = Supervisor {
                    settings: settings.clone(),
                    proto,
                    addr: addr.clone(),
                    slot: slot.clone(),
                    metrics: metrics.clone(),
                    up: up.clone(),
                    readonly,
                };
                tokio::spawn(sup.run(rx));
                slot
            })
            .collect();
        Self { slots, addr, up }
    }

    /// Connections that are up now.
    pub fn up_count(&self) -> usize {
        self.up.load(Ordering::Relaxed)
    }

    /// Queues `bytes` (holding `count` complete requests) on one connection. The replies, or the
    /// reason there are none, arrive on the returned receiver; a failure that is known now (no
    /// connection usable, queue full) is already in it.
    ///
    /// `affinity` picks the connection: one client always uses the same one, so the upstream runs
    /// its commands in the order it sent them. Only when that connection is down does it move to
    /// the next usable one; commands queued on a down connection fail and never run, so moving
    /// cannot reorder what runs.
    pub fn send(&self, affinity: usize, bytes: Bytes, count: u32) -> ReplyRx {
        let (tx, rx) = oneshot::channel();
        let n = self.slots.len();
        let pick = (0..n)
            .map(|i| &self.slots[(affinity + i) % n])
            .find(|s| s.state.load(Ordering::Relaxed) != DOWN);
        let Some(slot) = pick else {
            let err = self.slots[affinity % n]
                .last_error
                .lock()
                .expect("last_error lock is never poisoned: no panics while held")
                .clone()
                .unwrap_or_else(|| UpstreamError::Unavailable {
                    addr: self.addr.clone(),
                    detail: "not connected".into(),
                });
            let _ = tx.send(Err(err));
            return rx;
        };
        if let Err(e) = slot.tx.try_send(Job {
            bytes,
            count,
            tx,
            retried: false,
        }) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            let _ = job.tx.send(Err(UpstreamError::Overloaded {
                addr: self.addr.clone(),
                limit: QUEUE_PER_CONNECTION,
            }));
        }
        rx
    }
}

struct Supervisor {
    settings: Arc<Settings>,
    proto: Proto,
    addr: Arc<str>,
    slot: Arc<Slot>,
    metrics: Arc<Metrics>,
    up: Arc<AtomicUsize>,
    readonly: bool,
}

impl Supervisor {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut attempt: u32 = 0;
        // Batches answered `-READONLY` by a demoted primary, sent first on the next connection.
        let mut retry: Vec<Job> = Vec::new();
        loop {
            self.slot.state.store(CONNECTING, Ordering::Relaxed);
            let hs = Handshake {
                settings: &self.settings,
                proto: self.proto,
                client_name: None,
                readonly: self.readonly,
            };
            let err = match conn::open(&hs, &self.addr, self.settings.connect_timeout).await {
                Ok(stream) => {
                    attempt = 0;
                    self.slot.state.store(UP, Ordering::Relaxed);
                    self.up.fetch_add(1, Ordering::Relaxed);
                    self.metrics.upstream_connections.inc();
                    tracing::debug!(upstream = %self.addr, proto = self.proto.number(), "upstream connection up");
                    let (rd, wr) = stream.into_split();
                    let err = self.serve(rd, wr, &mut rx, &mut retry).await;
                    self.up.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.upstream_connections.dec();
                    match err {
                        Some(e) => e,
                        None => return, // the pool was dropped
                    }
                }
                Err(e) => {
                    for job in retry.drain(..) {
                        let _ = job.tx.send(Err(e.clone()));
                    }
                    e
                }
            };
            self.metrics.upstream_failure(err.failure());
            if matches!(err, UpstreamError::ReadOnly { .. }) {
                tracing::warn!(upstream = %self.addr, "upstream answered READONLY (a failover made it a replica): reconnecting; the refused batches are sent once more");
                // Not down: batches queued meanwhile wait for the next connection, which is
                // expected to reach the new primary once the endpoint's name moves to it.
                self.slot.state.store(CONNECTING, Ordering::Relaxed);
                tokio::time::sleep(self.settings.reconnect_min).await;
                continue;
            }
            if attempt == 0 {
                tracing::warn!(upstream = %self.addr, error = %err, "upstream connection failed");
            } else {
                tracing::debug!(upstream = %self.addr, error = %err, attempt, "upstream reconnect failed");
            }
            *self
                .slot
                .last_error
                .lock()
                .expect("last_error lock is never poisoned") = Some(err.clone());
            self.slot.state.store(DOWN, Ordering::Relaxed);
            // While down, queued jobs fail at once instead of waiting for the next attempt.
            let delay = backoff(
                attempt,
                self.settings.reconnect_min,
                self.settings.reconnect_max,
            );
            attempt = attempt.saturating_add(1);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    job = rx.recv() => match job {
                        Some(job) => { let _ = job.tx.send(Err(err.clone())); }
                        None => return,
                    },
                }
            }
        }
    }
}

/// Exponential backoff with full jitter between `min` and `max`.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.min(16));
    let cap = exp.min(max);
    let lo = min.as_micros() as u64;
    let hi = (cap.as_micros() as u64).max(lo + 1);
    Duration::from_micros(rand::rng().random_range(lo..hi))
}

impl Supervisor {
    /// Runs one live connection until it fails (`Some(error)`) or the pool is dropped (`None`).
    /// Every waiter still pending when it ends gets the error.
    async fn serve(
        &self,
        rd: ReadHalf,
        wr: WriteHalf,
        rx: &mut mpsc::Receiver<Job>,
        retry: &mut Vec<Job>,
    ) -> Option<UpstreamError> {
        let (settings, addr) = (&*self.settings, &self.addr);
        let first = std::mem::take(retry);
        let timeout = settings.command_timeout;
        let pending = Mutex::new(VecDeque::<Pending>::new());
        let wake = Notify::new();
        let result = tokio::select! {
            r = wire::write_loop(wr, rx, first, &pending, &wake, timeout, addr) => r,
            r = wire::read_loop(rd, &pending, &wake, timeout, addr, &self.metrics, self.proto) => Some(r),
            r = reauth(settings.iam.as_ref(), self.slot.tx.downgrade(), addr) => Some(r),
        };
        let err = result
            .clone()
            .unwrap_or_else(|| UpstreamError::Closed { addr: addr.clone() });
        let demoted = matches!(err, UpstreamError::ReadOnly { .. });
        for p in pending
            .lock()
            .expect("pending lock is never poisoned")
            .drain(..)
        {
            // A failover demoted the node: what it held (its writes refused, its reads without
            // effect) runs once more on the new connection, which finds the new primary.
            if demoted && !p.retried {
                retry.push(Job {
                    bytes: p.bytes,
                    count: p.count,
                    tx: p.tx,
                    retried: true,
                });
            } else {
                let _ = p.tx.send(Err(err.clone()));
            }
        }
        result
    }
}

/// ElastiCache IAM: authenticates the connection again before the 12-hour limit, in band. The
/// AUTH is queued on this connection like any batch, so it lands between whole batches (shared
/// connections never hold a transaction or a subscription), and its reply comes back here, not
/// to a client. A refused AUTH closes the connection; the reconnect handshakes afresh.
async fn reauth(
    iam: Option<&IamAuth>,
    queue: mpsc::WeakSender<Job>,
    addr: &Arc<str>,
) -> UpstreamError {
    let Some(iam) = iam else {
        return std::future::pending().await;
    };
    iam::reauthenticate(iam, addr, |token| {
        let queue = queue.clone();
        async move {
            // Only a dropped pool has no sender left; the writer then ends this connection.
            let Some(tx) = queue.upgrade() else {
                return std::future::pending().await;
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            let job = Job {
                bytes: encode_command(&["AUTH", token.user(), token.secret()]),
                count: 1,
                tx: reply_tx,
                retried: false,
            };
            let closed = || UpstreamError::Closed { addr: addr.clone() };
            tx.send(job).await.map_err(|_| closed())?;
            drop(tx);
            let reply = reply_rx.await.map_err(|_| closed())??;
            if matches!(reply.first(), Some(b'-' | b'!')) {
                return Err(UpstreamError::Auth {
                    addr: addr.clone(),
                    detail: format!(
                        "re-authentication refused: {}",
                        String::from_utf8_lossy(&reply).trim()
                    )
                    .into(),
                });
            }
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds_and_grows() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            assert!(d >= min && d <= max, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(0, min, max) <= Duration::from_millis(100));
    }
}
