//! An upstream connection of one client's own, for state that must not leak onto shared
//! connections: transactions, WATCH, pub/sub, MONITOR, blocking commands, a non-default db.
//!
//! The session writes the client's requests to it directly; a relay task forwards every frame the
//! upstream sends, in arrival order, into a stream that the client's writer drains.
//!
//! The relay accounts for replies per request: each request comes with an [`Expect`] (usually one
//! frame; one per channel for SUBSCRIBE; none under CLIENT REPLY OFF; for a bare UNSUBSCRIBE, one
//! per subscription the relay knows of when it runs). Pub/sub messages, tracking invalidations
//! and MONITOR output are recognised and never counted. Replies the proxy answers itself while
//! pinned (`emit`) and the end of the pinned phase (`release`) take effect once every request
//! written before them is fully answered, and before any reply to a later one.

mod idle;
mod relay;
mod txn;

pub(crate) use idle::Idle;
pub use txn::{slot as redirected_slot, Replay};

use super::conn::{self, Handshake};
use super::Settings;
use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::reply::{Expect, Proto};
use crate::transport::WriteHalf;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Frames buffered between the relay task and the client's writer.
const STREAM_CAPACITY: usize = 256;

enum Ctl {
    Begin(mpsc::Sender<Bytes>),
    /// The replies the next request written will produce, and whether it may block (no
    /// deadline for its reply).
    Expect(Expect, bool),
    /// Relay `bytes` once `after` requests are fully answered.
    Emit {
        after: u64,
        bytes: Bytes,
    },
    /// End the stream once `after` requests are fully answered.
    Release {
        after: u64,
    },
    /// Work that must finish before the reply to request number `at` is relayed.
    BeforeReply {
        at: u64,
        work: BeforeReply,
    },
    /// The reply to request number `at` (EXEC) ends with an element of cacheside's own.
    Trim {
        at: u64,
    },
    /// The reply to request number `at`, if a cluster redirection (or whatever it is, with
    /// `any`), goes to `tx` instead of the client (see `Pinned::watch`, `Pinned::take_reply`).
    Watch {
        at: u64,
        tx: oneshot::Sender<Redirected>,
        any: bool,
    },
    /// Request number `at` is a command queued in a transaction that may move (see `txn`).
    Queued {
        at: u64,
        cmd: Bytes,
        keyed: bool,
    },
    /// Request number `at` is that transaction's EXEC: an abort caused by redirections is
    /// replayed by `replay`.
    Exec {
        at: u64,
        replay: Replay,
    },
    /// Request number `at` (`cmd`, outside a transaction) is sent again where its reply, if a
    /// redirection, says, by `replay` (see `txn`).
    Reroute {
        at: u64,
        cmd: Bytes,
        replay: Replay,
    },
    /// Shard channels the node ends on its own (`sunsubscribe`: their slot moved) go to this
    /// sender, not to the client.
    ShardsGone(mpsc::UnboundedSender<Bytes>),
}

/// A reply that redirected a watched request, held back from the client, with the work that
/// was to run before that reply: it belongs to the request's next attempt.
pub struct Redirected {
    pub frame: Bytes,
    pub work: Vec<BeforeReply>,
}

/// Work tied to a request's reply, done before the client sees it (the hot tier completing a
/// write: its keys evicted again, fills that raced it failed). The connection knows nothing of
/// what it does; dropped undone if the connection dies.
pub type BeforeReply = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Pinned {
    wr: WriteHalf,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: JoinHandle<UpstreamError>,
    addr: Arc<str>,
    /// Requests written so far.
    sent: u64,
    metrics: Arc<Metrics>,
    upstream_id: Option<i64>,
    /// The relay has ended: nothing sent now could be answered.
    dead: bool,
    /// ElastiCache IAM: when this connection should authenticate again (see `reauth_due`).
    reauth_at: Option<tokio::time::Instant>,
    /// Set by the relay at a `-READONLY` reply (see `demoted`).
    demoted: Arc<std::sync::atomic::AtomicBool>,
    /// Requests fully answered, as the relay last published it (see `idle`, `room`).
    completed: Arc<std::sync::atomic::AtomicU64>,
    /// Notified by the relay when it publishes `completed`.
    answered: Arc<tokio::sync::Notify>,
    /// Requests written to the socket (`sent` counts them once declared).
    written: u64,
    /// `release` was called and no `begin` since: no client's stream is attached.
    released: bool,
    /// The stream `begin` opened, without keeping it open (see `stream`).
    stream: Option<mpsc::WeakSender<Bytes>>,
    /// Requests sent when `release` was last called: once they are answered, what follows is
    /// cacheside's own (a DISCARD, a CLIENT SETNAME), whose replies nobody sees.
    released_at: u64,
    proto: Proto,
}

impl Pinned {
    pub(super) async fn open(
        settings: &Settings,
        addr: Arc<str>,
        proto: Proto,
        client_name: Option<&[u8]>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let hs = Handshake {
            settings,
            proto,
            client_name,
            readonly: false,
        };
        let (stream, upstream_id) =
            conn::open_with_id(&hs, &addr, settings.connect_timeout, true).await?;
        let (rd, wr) = stream.into_split();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let demoted = Arc::default();
        let completed = Arc::default();
        let answered = Arc::default();
        let task = tokio::spawn(relay::relay(
            rd,
            ctl_rx,
            addr.clone(),
            settings.command_timeout,
            Arc::clone(&demoted),
            (Arc::clone(&completed), Arc::clone(&answered)),
        ));
        metrics.pinned_connections.inc();
        Ok(Self {
            wr,
            ctl,
            task,
            addr,
            sent: 0,
            metrics,
            upstream_id,
            dead: false,
            reauth_at: settings
                .iam
                .as_ref()
                .map(|iam| tokio::time::Instant::now() + iam.reauth_delay()),
            demoted,
            completed,
            answered,
            written: 0,
            released: true,
            stream: None,
            released_at: 0,
            proto,
        })
    }

    /// Whether the connection holds nothing of any client's: released, every request of its
    /// client answered (commands of cacheside's own sent since, such as `discard`, may still
    /// be in flight: they run first), still up, and neither demoted nor due to authenticate
    /// again. Such a connection can serve the next client that needs one to the same node
    /// ([`Idle`]).
    pub fn idle(&self) -> bool {
        self.released
            && self.completed.load(std::sync::atomic::Ordering::Acquire) >= self.released_at
            && !self.dead
            && !self.task.is_finished()
            && !self.reauth_due()
            && !self.demoted()
    }

    /// Ends a transaction the client left (its MULTI moved to another node), its reply unseen.
    pub async fn discard(&mut self) -> Result<(), UpstreamError> {
        self.expect(Expect::Hidden);
        self.send(&crate::protocol::request::encode_command(&["DISCARD"]))
            .await
    }

    /// Names the connection for its next client (`CLIENT SETNAME`, the empty name clearing
    /// it), its reply unseen by anyone.
    pub async fn rename(&mut self, name: Option<&[u8]>) -> Result<(), UpstreamError> {
        self.expect(Expect::Hidden);
        let cmd = crate::protocol::request::encode_command(&[
            &b"CLIENT"[..],
            b"SETNAME",
            name.unwrap_or_default(),
        ]);
        self.send(&cmd).await
    }

    /// Whether the node answered `-READONLY` (a failover demoted it; the endpoint's name now
    /// points at the new primary). The client got that error as a direct client would, and the
    /// session replaces the connection when it next enters the pinned phase, so its next
    /// transaction or blocking command runs on the new primary.
    pub fn demoted(&self) -> bool {
        self.demoted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether an IAM-authenticated connection is near ElastiCache's 12-hour limit. A pinned
    /// connection carries its client's state, so it is not re-authenticated in band; the
    /// session replaces it with a new one when it next enters the pinned phase with this true,
    /// when the connection holds no state worth keeping.
    pub fn reauth_due(&self) -> bool {
        self.reauth_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// The protocol the connection speaks (set by its handshake).
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The node this connection goes to.
    pub fn addr(&self) -> &Arc<str> {
        &self.addr
    }

    /// This connection's id upstream (`CLIENT ID` as the upstream answers it).
    pub fn upstream_id(&self) -> Option<i64> {
        self.upstream_id
    }

    /// Opens a stream of upstream frames for the client's writer; it ends at `release`.
    pub fn begin(&mut self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        self.stream = Some(tx.downgrade());
        self.begin_into(tx);
        rx
    }

    /// Relays this connection's frames into another connection's stream (a client's shard
    /// subscriptions on other cluster nodes: their messages reach the client's one stream).
    pub fn begin_into(&mut self, tx: mpsc::Sender<Bytes>) {
        self.released = false;
        self.ctl(Ctl::Begin(tx));
    }

    /// The stream of the current pinned phase, while it is open, for `begin_into`.
    pub fn stream(&self) -> Option<mpsc::Sender<Bytes>> {
        self.stream.as_ref()?.upgrade()
    }

    /// Hands the relay a control message; a relay that has ended takes none, and the
    /// connection is then dead for everything after.
    fn ctl(&mut self, c: Ctl) {
        if self.ctl.send(c).is_err() {
            self.dead = true;
        }
    }

    /// Declares the replies of the next request; call once per request, before `send` writes it.
    /// Its reply must come within the command timeout, as on shared connections.
    pub fn expect(&mut self, e: Expect) {
        self.sent += 1;
        self.ctl(Ctl::Expect(e, false));
    }

    /// Like `expect`, for a request that may block (BLPOP, XREAD BLOCK, WAIT): no deadline.
    pub fn expect_blocking(&mut self, e: Expect) {
        self.sent += 1;
        self.ctl(Ctl::Expect(e, true));
    }

    /// Writes requests, each already declared with `expect`.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        if self.dead || self.task.is_finished() {
            // Its relay has ended (and answered what it owed): these would get no reply.
            return Err(UpstreamError::Closed {
                addr: self.addr.clone(),
            });
        }
        let res = match self.wr.write_all(bytes).await {
            // TLS may hold back what the socket did not take; plain TCP flushes nothing.
            Ok(()) => self.wr.flush().await,
            e => e,
        };
        self.written = self.sent;
        res.map_err(|e| UpstreamError::Unavailable {
            addr: self.addr.clone(),
            detail: e.to_string().into(),
        })
    }

    /// `None` while at most `window` of the requests written are unanswered; else a wait until
    /// that holds again. Redis reads a client's pipeline however far it is from reading the
    /// replies; bounding what is outstanding here bounds what the relay keeps per request.
    /// A relay that ends answers everything owed (with errors), which ends the wait.
    pub fn room(&self, window: u64) -> Option<impl Future<Output = ()> + Send + 'static> {
        let (done, answered, written) = (
            Arc::clone(&self.completed),
            Arc::clone(&self.answered),
            self.written,
        );
        let has_room = move || {
            written.saturating_sub(done.load(std::sync::atomic::Ordering::Acquire)) <= window
        };
        if has_room() || self.dead || self.task.is_finished() {
            return None;
        }
        Some(async move {
            while !has_room() {
                answered.notified().await;
            }
        })
    }

    /// Runs `work` just before the reply to the last declared request is relayed.
    pub fn before_reply(&mut self, work: BeforeReply) {
        let at = self.sent;
        self.ctl(Ctl::BeforeReply { at, work });
    }

    /// The reply to the last declared request (an EXEC) is relayed without its last element,
    /// the reply to a command of cacheside's own queued in the transaction.
    pub fn trim_last(&mut self) {
        let at = self.sent;
        self.ctl(Ctl::Trim { at });
    }

    /// The last declared request's reply, if it is a cluster redirection (`-MOVED`, `-ASK`,
    /// `-TRYAGAIN`), is not relayed: it comes back on the receiver, for the session to send the
    /// request again where it is told to. Any other reply is relayed, and the receiver then
    /// fails (as it does if the connection is lost first).
    pub fn watch(&mut self) -> oneshot::Receiver<Redirected> {
        let (tx, rx) = oneshot::channel();
        let at = self.sent;
        self.ctl(Ctl::Watch { at, tx, any: false });
        rx
    }

    /// The last declared request's reply (one frame) comes back on the receiver instead of
    /// going to the client, whatever it is; the receiver fails if the connection is lost first.
    pub fn take_reply(&mut self) -> oneshot::Receiver<Redirected> {
        let (tx, rx) = oneshot::channel();
        let at = self.sent;
        self.ctl(Ctl::Watch { at, tx, any: true });
        rx
    }

    /// Cluster mode: the last declared request (`cmd`, with a key or not) is queued in a
    /// transaction that moves where its commands are redirected (see `txn`).
    pub fn queued(&mut self, cmd: Bytes, keyed: bool) {
        let at = self.sent;
        self.ctl(Ctl::Queued { at, cmd, keyed });
    }

    /// Cluster mode: the last declared request (`cmd`, one reply) is run by `replay` where its
    /// reply, if a redirection, says, and the reply of that run is the client's.
    pub fn reroute(&mut self, cmd: Bytes, replay: Replay) {
        let at = self.sent;
        self.ctl(Ctl::Reroute { at, cmd, replay });
    }

    /// Cluster mode: the last declared request is EXEC of such a transaction; if it was
    /// redirected whole, `replay` runs it where it belongs and its reply is the client's.
    pub fn exec_replay(&mut self, replay: Replay) {
        let at = self.sent;
        self.ctl(Ctl::Exec { at, replay });
    }

    /// Cluster mode: a shard channel this node stops serving (its slot moved: Redis sends
    /// `sunsubscribe` unasked) is reported on `tx` instead of reaching the client, for the
    /// session to subscribe it again where it now lives.
    pub fn report_shards_gone(&mut self, tx: mpsc::UnboundedSender<Bytes>) {
        self.ctl(Ctl::ShardsGone(tx));
    }

    /// Queues a reply of the proxy's own, after the replies to everything sent so far; an
    /// error if the connection is dead (the reply could not be placed in order).
    pub fn emit(&mut self, bytes: Bytes) -> Result<(), UpstreamError> {
        let after = self.sent;
        self.ctl(Ctl::Emit { after, bytes });
        if self.dead {
            return Err(UpstreamError::Closed {
                addr: self.addr.clone(),
            });
        }
        Ok(())
    }

    /// Ends the current stream once every reply to what was sent has been relayed.
    pub fn release(&mut self) {
        self.released = true;
        self.released_at = self.sent;
        let after = self.sent;
        self.ctl(Ctl::Release { after });
    }

    /// `lost`, polled by hand (for several connections at once).
    pub fn poll_lost(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<UpstreamError> {
        std::pin::Pin::new(&mut self.task)
            .poll(cx)
            .map(|r| match r {
                Ok(e) => e,
                Err(_) => UpstreamError::Closed {
                    addr: self.addr.clone(),
                },
            })
    }

    /// Resolves when the connection is lost, with the reason.
    pub async fn lost(&mut self) -> UpstreamError {
        match (&mut self.task).await {
            Ok(e) => e,
            Err(_) => UpstreamError::Closed {
                addr: self.addr.clone(),
            },
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics.pinned_connections.dec();
    }
}
