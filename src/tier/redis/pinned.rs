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

use super::conn::{self, Handshake};
use super::Settings;
use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::reply::{self, Expect, Proto, PubSub, SubKind};
use crate::transport::{ReadHalf, WriteHalf};
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
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
        };
        let (stream, upstream_id) =
            conn::open_with_id(&hs, &addr, settings.connect_timeout, true).await?;
        let (rd, wr) = stream.into_split();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(relay(rd, ctl_rx, addr.clone(), settings.command_timeout));
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
        })
    }

    /// Whether an IAM-authenticated connection is near ElastiCache's 12-hour limit. A pinned
    /// connection carries its client's state, so it is not re-authenticated in band; the
    /// session replaces it with a new one when it next enters the pinned phase with this true,
    /// when the connection holds no state worth keeping.
    pub fn reauth_due(&self) -> bool {
        self.reauth_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
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
        self.ctl(Ctl::Begin(tx));
        rx
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
        res.map_err(|e| UpstreamError::Unavailable {
            addr: self.addr.clone(),
            detail: e.to_string().into(),
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
        let after = self.sent;
        self.ctl(Ctl::Release { after });
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

struct Relay {
    /// Work by the request number whose reply it precedes.
    before: VecDeque<(u64, BeforeReply)>,
    /// Requests whose reply drops its last element.
    trims: VecDeque<u64>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    queue: VecDeque<Ctl>,
    stream: Option<mpsc::Sender<Bytes>>,
    /// Replies still owed, one entry per request not yet fully answered.
    owed: VecDeque<Expect>,
    /// Numbers of owed requests that may block, in order.
    blocking: VecDeque<u64>,
    /// When the front request started waiting, or last saw a frame of its reply.
    since: Option<tokio::time::Instant>,
    timeout: std::time::Duration,
    /// Requests fully answered.
    completed: u64,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shards: HashSet<Bytes>,
}

impl Relay {
    /// Moves control messages already sent into place, so that they are ordered before frames
    /// that answer later requests.
    fn drain_ctl(&mut self) -> bool {
        loop {
            match self.ctl.try_recv() {
                Ok(c) => self.take(c),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn take(&mut self, c: Ctl) {
        match c {
            Ctl::Expect(e, blocking) => self.owe(e, blocking),
            Ctl::BeforeReply { at, work } => self.before.push_back((at, work)),
            Ctl::Trim { at } => self.trims.push_back(at),
            Ctl::Begin(tx) if self.queue.is_empty() => self.stream = Some(tx),
            other => self.queue.push_back(other),
        }
    }

    fn owe(&mut self, e: Expect, blocking: bool) {
        if self.owed.is_empty() {
            self.since = Some(tokio::time::Instant::now());
        }
        if blocking {
            self.blocking
                .push_back(self.completed + self.owed.len() as u64 + 1);
        }
        self.owed.push_back(e);
        self.retire_empty();
    }

    /// When the reply now awaited is overdue: `None` while nothing is owed or the front
    /// request may block.
    fn deadline(&mut self) -> Option<tokio::time::Instant> {
        while self.blocking.front().is_some_and(|&n| n <= self.completed) {
            self.blocking.pop_front();
        }
        if self.owed.is_empty() || self.blocking.front() == Some(&(self.completed + 1)) {
            return None;
        }
        Some(self.since? + self.timeout)
    }

    /// Requests that owe no frames at all are answered as soon as they are first in line.
    fn retire_empty(&mut self) {
        while self.owed.front() == Some(&Expect::Frames(0)) {
            self.owed.pop_front();
            self.completed += 1;
        }
    }

    fn subscriptions(&mut self, kind: SubKind) -> &mut HashSet<Bytes> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shards,
        }
    }

    /// Accounts for one frame from the upstream; returns whether the client gets it.
    fn account(&mut self, frame: &[u8]) -> bool {
        // A RESP2 array that reads like a message is one only on a subscribed connection;
        // otherwise it is a reply (an LRANGE of ["message", "c", "x"], say).
        let subscribed = frame.first() == Some(&b'>')
            || !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty());
        let ps = reply::pubsub(frame).filter(|p| subscribed || !matches!(p, PubSub::Message));
        if matches!(ps, Some(PubSub::Message)) || self.owed.is_empty() {
            // A message, an invalidation, MONITOR output: relayed, never a reply.
            return true;
        }
        if self.owed.front() == Some(&Expect::Hidden) {
            self.owed.pop_front();
            self.completed += 1;
            self.retire_empty();
            return false;
        }
        if let Some(PubSub::Confirm {
            kind,
            subscribe,
            name: Some(name),
        }) = &ps
        {
            let set = self.subscriptions(*kind);
            if *subscribe {
                set.insert(name.clone());
            } else {
                set.remove(name);
            }
        }
        let front = self.owed.front_mut().expect("checked non-empty above");
        if let Expect::UnsubscribeAll(kind) = *front {
            // Resolved when its first reply arrives: every earlier request has run by then.
            // This frame already removed one subscription from the set.
            let left = match kind {
                SubKind::Channel => self.channels.len(),
                SubKind::Pattern => self.patterns.len(),
                SubKind::Shard => self.shards.len(),
            };
            *self.owed.front_mut().expect("non-empty") = Expect::Frames(left as u32 + 1);
        }
        if let Some(Expect::Frames(n)) = self.owed.front_mut() {
            *n = n.saturating_sub(1);
        }
        self.retire_empty();
        true
    }

    /// Runs the work due before a reply to request number `next` is relayed.
    async fn before_due(&mut self, next: u64) {
        while self.before.front().is_some_and(|(at, _)| *at <= next) {
            if let Some((_, work)) = self.before.pop_front() {
                work.await;
            }
        }
    }

    /// The reply to request `next`, without cacheside's own last element if it has one (once
    /// the frame just accounted completed that request).
    fn trimmed(&mut self, next: u64, bytes: Bytes) -> Bytes {
        while self.trims.front().is_some_and(|&at| at < next) {
            self.trims.pop_front();
        }
        if self.completed < next || self.trims.front() != Some(&next) {
            return bytes;
        }
        self.trims.pop_front();
        crate::protocol::scan::without_last(&bytes).map_or(bytes, Bytes::from)
    }

    /// Answers every request still owed with an error (the connection is gone), keeping
    /// replies of the proxy's own in their places.
    async fn fail_owed(&mut self, err: &UpstreamError) {
        let reply = crate::error::reply_bytes(&crate::error::ProxyError::PinnedLost(err.clone()));
        // Twice: what was sent before the channel closed is answered too; after it closes, the
        // session finds the connection dead instead of sending what nobody would answer.
        for _ in 0..2 {
            self.drain_ctl();
            while let Some(e) = self.owed.pop_front() {
                self.completed += 1;
                if e != Expect::Hidden {
                    if let Some(s) = &self.stream {
                        let _ = s.send(reply.clone()).await;
                    }
                }
                self.settle().await;
            }
            self.settle().await;
            self.ctl.close();
        }
    }

    /// Applies every queued emit/release whose requests have all been answered.
    async fn settle(&mut self) {
        while let Some(front) = self.queue.front() {
            match front {
                Ctl::Emit { after, .. } | Ctl::Release { after } if *after > self.completed => {
                    return
                }
                _ => {}
            }
            match self.queue.pop_front() {
                Some(Ctl::Emit { bytes, .. }) => {
                    if let Some(s) = &self.stream {
                        let _ = s.send(bytes).await;
                    }
                }
                Some(Ctl::Release { .. }) => self.stream = None,
                Some(Ctl::Begin(tx)) => self.stream = Some(tx),
                Some(Ctl::Expect(e, blocking)) => self.owe(e, blocking),
                Some(Ctl::BeforeReply { at, work }) => self.before.push_back((at, work)),
                Some(Ctl::Trim { at }) => self.trims.push_back(at),
                None => return,
            }
        }
    }
}

/// Relays until the connection fails; then every request still owed a reply gets an error
/// reply, in order, so the client's replies stay matched to its requests.
async fn relay(
    rd: ReadHalf,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    addr: Arc<str>,
    timeout: std::time::Duration,
) -> UpstreamError {
    let mut r = Relay {
        before: VecDeque::new(),
        trims: VecDeque::new(),
        ctl,
        queue: VecDeque::new(),
        stream: None,
        owed: VecDeque::new(),
        blocking: VecDeque::new(),
        since: None,
        timeout,
        completed: 0,
        channels: HashSet::new(),
        patterns: HashSet::new(),
        shards: HashSet::new(),
    };
    let err = run(&mut r, rd, addr).await;
    r.fail_owed(&err).await;
    err
}

async fn run(r: &mut Relay, mut rd: ReadHalf, addr: Arc<str>) -> UpstreamError {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        r.settle().await;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let deadline = r.deadline();
        tokio::select! {
            c = r.ctl.recv() => match c {
                Some(c) => r.take(c),
                None => return UpstreamError::Closed { addr },
            },
            // A reply that never comes fails the client, as on shared connections.
            _ = sleep_until(deadline) => {
                return UpstreamError::Timeout { addr, after: r.timeout };
            }
            n = rd.read_buf(&mut buf) => {
                match n {
                    Ok(0) => return UpstreamError::Closed { addr },
                    Ok(_) => {}
                    Err(e) => return UpstreamError::Unavailable { addr, detail: e.to_string().into() },
                }
                loop {
                    let f = match reply::frame_any(&buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => return UpstreamError::Protocol { addr, detail: e.to_string().into() },
                    };
                    if !r.drain_ctl() {
                        return UpstreamError::Closed { addr };
                    }
                    r.settle().await;
                    let bytes = buf.split_to(f.len).freeze();
                    r.since = Some(tokio::time::Instant::now());
                    let next = r.completed + 1;
                    r.before_due(next).await;
                    if !r.account(&bytes) {
                        continue;
                    }
                    let bytes = r.trimmed(next, bytes);
                    let Some(stream) = &r.stream else {
                        return UpstreamError::Protocol { addr, detail: "reply with no request waiting for it".into() };
                    };
                    // A client that went away drops its stream: the connection is then dropped too.
                    if stream.send(bytes).await.is_err() {
                        return UpstreamError::Closed { addr };
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
