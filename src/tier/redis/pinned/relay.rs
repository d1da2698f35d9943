//! The relay task of a pinned connection: forwards every upstream frame to the client's stream
//! in arrival order, counting replies per request and applying the session's control messages
//! (emit, release, work before a reply, trims) at their place in the reply order.

use super::{BeforeReply, Ctl, Redirected};
use crate::error::UpstreamError;
use crate::protocol::reply::{self, Expect, PubSub, SubKind};
use crate::transport::ReadHalf;
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, Notify};

struct Relay {
    /// Work by the request number whose reply it precedes.
    before: VecDeque<(u64, BeforeReply)>,
    /// Requests whose reply drops its last element.
    trims: VecDeque<u64>,
    /// Requests whose redirection goes back to the session, by request number.
    watches: VecDeque<(u64, oneshot::Sender<Redirected>, bool)>,
    /// Transactions that move where the cluster redirects them.
    txn: super::txn::Txn,
    /// Where shard channels the node ends unasked are reported (see `Pinned::report_shards_gone`).
    shards_gone: Option<mpsc::UnboundedSender<Bytes>>,
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
    /// Raised at a `-READONLY` reply: the node was demoted by a failover (see `Pinned::demoted`).
    demoted: Arc<AtomicBool>,
    /// `completed`, published once the control messages due by then are applied (a release
    /// among them), for `Pinned::idle` and `Pinned::room`, which waits on `answered`.
    published: Arc<AtomicU64>,
    answered: Arc<Notify>,
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
            Ctl::Watch { at, tx, any } => self.watches.push_back((at, tx, any)),
            Ctl::Queued { at, cmd, keyed } => self.txn.mark(at, cmd, keyed),
            Ctl::Exec { at, replay } => self.txn.exec(at, replay),
            Ctl::Reroute { at, cmd, replay } => self.txn.reroute(at, cmd, replay),
            Ctl::ShardsGone(tx) => self.shards_gone = Some(tx),
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
        if let (
            Some(tx),
            Some(PubSub::Confirm {
                kind: SubKind::Shard,
                subscribe: false,
                name: Some(name),
            }),
        ) = (&self.shards_gone, &ps)
        {
            // Shard (un)subscriptions of such a client are made by the session, which takes
            // their replies back; one that comes here was not asked for: the slot moved.
            if self.shards.remove(name) && tx.send(name.clone()).is_ok() {
                return false;
            }
        }
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

    /// Takes the reply to request `next` back from the client when it is a redirection the
    /// session watches for: the request counts as answered, and the work due before its reply
    /// goes with the redirection, to run before the reply of the request's next attempt.
    fn redirected(&mut self, next: u64, frame: &Bytes) -> bool {
        self.unwatch_answered();
        // A message is never anyone's reply (on a subscribed connection, or pushed).
        let subscribed = frame.first() == Some(&b'>')
            || !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty());
        let message = subscribed && matches!(reply::pubsub(frame), Some(PubSub::Message));
        let watched = !message
            && self.watches.front().is_some_and(|(at, _, any)| {
                *at == next
                    && (*any
                        || [&b"-MOVED "[..], b"-ASK ", b"-TRYAGAIN"]
                            .iter()
                            .any(|p| frame.starts_with(p)))
            })
            && self.owed.front() == Some(&Expect::Frames(1));
        let Some((_, tx, _)) = watched.then(|| self.watches.pop_front()).flatten() else {
            return false;
        };
        // A subscription confirmed counts for the frames that follow, as if relayed.
        if let Some(PubSub::Confirm {
            kind,
            subscribe,
            name: Some(name),
        }) = reply::pubsub(frame)
        {
            let set = self.subscriptions(kind);
            if subscribe {
                set.insert(name);
            } else {
                set.remove(&name);
            }
        }
        self.owed.pop_front();
        self.completed += 1;
        self.retire_empty();
        let mut work = Vec::new();
        while self.before.front().is_some_and(|(at, _)| *at <= next) {
            if let Some((_, w)) = self.before.pop_front() {
                work.push(w);
            }
        }
        let _ = tx.send(Redirected {
            frame: frame.clone(),
            work,
        });
        true
    }

    /// Drops the watches of requests answered (their receivers fail: no redirection).
    fn unwatch_answered(&mut self) {
        while self
            .watches
            .front()
            .is_some_and(|(at, _, _)| *at <= self.completed)
        {
            self.watches.pop_front();
        }
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
                    break
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
                Some(Ctl::Watch { at, tx, any }) => self.watches.push_back((at, tx, any)),
                Some(Ctl::Queued { at, cmd, keyed }) => self.txn.mark(at, cmd, keyed),
                Some(Ctl::Exec { at, replay }) => self.txn.exec(at, replay),
                Some(Ctl::Reroute { at, cmd, replay }) => self.txn.reroute(at, cmd, replay),
                Some(Ctl::ShardsGone(tx)) => self.shards_gone = Some(tx),
                None => break,
            }
        }
        self.publish();
    }

    fn publish(&self) {
        self.published.store(self.completed, Ordering::Release);
        // A stored permit when nobody waits: a load once one is stored.
        self.answered.notify_one();
    }
}

/// Relays until the connection fails; then every request still owed a reply gets an error
/// reply, in order, so the client's replies stay matched to its requests.
pub(super) async fn relay(
    rd: ReadHalf,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    addr: Arc<str>,
    timeout: std::time::Duration,
    demoted: Arc<AtomicBool>,
    (published, answered): (Arc<AtomicU64>, Arc<Notify>),
) -> UpstreamError {
    let mut r = Relay {
        before: VecDeque::new(),
        trims: VecDeque::new(),
        watches: VecDeque::new(),
        txn: Default::default(),
        shards_gone: None,
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
        demoted,
        published,
        answered,
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
                    if bytes.starts_with(b"-READONLY") {
                        r.demoted.store(true, Ordering::Relaxed);
                    }
                    r.since = Some(tokio::time::Instant::now());
                    let next = r.completed + 1;
                    if r.redirected(next, &bytes) {
                        r.publish();
                        continue;
                    }
                    // A reply (not a message) may be a transaction's, redirected (see `txn`).
                    let bytes = if r.owed.is_empty() {
                        bytes
                    } else {
                        r.txn.reply(next, bytes).await
                    };
                    r.before_due(next).await;
                    let relayed = r.account(&bytes);
                    // Before the reply goes out: once its client has it, the connection must
                    // already read as answered (see `Pinned::idle`). Its frames still go to that
                    // client's stream: a later client's `Begin` is applied only after `Release`.
                    r.publish();
                    r.unwatch_answered();
                    if !relayed {
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
