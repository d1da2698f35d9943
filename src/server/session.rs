//! One client connection: read, parse every complete request in the buffer, route each, and
//! queue replies in request order for the writer task.
//!
//! Consecutive requests bound for the same upstream connection are contiguous in the read
//! buffer, so a run of them is sent as one zero-copy slice with one reply waiter. Moving between
//! shared and pinned upstream connections waits on a barrier so the upstream executes commands
//! in the order the client sent them.

mod follow;
mod multi;
mod pinned;
mod queue;
mod run;
mod shards;

use super::writer::{AfterReply, Out};
use super::Ctx;
use crate::error::{to_reply, Disposition, ProxyError};
use crate::metrics::Outcome;
use crate::protocol::reply::{self, Proto};
use crate::protocol::request::{self, Parsed, Step};
use crate::protocol::Request;
use crate::router::clients::Registration;
use crate::router::{ClientState, Decision, Invalidation};
use crate::tier::redis::Pinned;
use crate::transport::ReadHalf;
use bytes::{Bytes, BytesMut};
use run::{Dest, Run};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a client must stay quiet during a drain before its connection is closed.
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// The session ends; `graceful` means replies already queued should still be delivered.
pub(super) struct Stop {
    pub graceful: bool,
}

pub(super) struct Session {
    ctx: Arc<Ctx>,
    st: ClientState,
    rd: ReadHalf,
    buf: BytesMut,
    out: crate::server::queue::Tx,
    pinned: Option<Pinned>,
    pinned_proto: Proto,
    /// The pinned connection carries this client's commands now.
    pinned_active: bool,
    /// The pinned phase ended but its last commands may still be executing upstream.
    release_pending: bool,
    /// Shared batches were sent since the last barrier.
    shared_dirty: bool,
    run: Option<Run>,
    parsed: Vec<Parsed>,
    /// Replies of cacheside's own not yet queued (sent as one item), and how many.
    ready: BytesMut,
    ready_n: usize,
    /// A hot-tier hit that must wait for the run before it (see `handle`).
    hits: BytesMut,
    /// Cached keys written by commands queued in the open transaction.
    multi_writes: Vec<Invalidation>,
    /// Lease cleanup for mapped keys written by commands queued in the open transaction.
    multi_cleanup: Vec<Bytes>,
    /// A wait (`barrier`) read more of the client's bytes into `buf`: they must be parsed
    /// before waiting for the client again, which may have nothing more to send.
    read_ahead: bool,
    /// This client in the registry CLIENT LIST/KILL read.
    me: Registration,
    /// Cluster mode: shard subscriptions on primaries other than the pinned connection's.
    shards: shards::Shards,
    /// The last command handled, for CLIENT LIST's `cmd`.
    last_cmd: &'static str,
    /// Read-only commands go to replicas (`upstream.read_from` with a reader endpoint).
    replica_reads: bool,
    /// A read that missed was queued since the last `ReadEnd`.
    fills_queued: bool,
    /// Cluster mode: the open transaction is on the node of its first key (see `rehome`).
    multi_homed: bool,
    /// Cluster mode: a command under the current WATCH was redirected (its slot moved), so
    /// the watch no longer guards the key where it lives (see `multi::void_exec`).
    watch_void: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Cluster mode: MULTI answered and held back (see `multi.rs`); `true` once a command
    /// could not be queued.
    multi_deferred: Option<bool>,
    /// Requests of the current read from the client answered from the hot tier: their latency
    /// is recorded once the read is handled, from when it began.
    hot_answered: u32,
    read_began: std::time::Instant,
    /// Every request of the current read so far was a hit answered at once: the session has
    /// not waited since the read's clock was read.
    hits_only: bool,
}

impl Session {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        rd: ReadHalf,
        out: crate::server::queue::Tx,
        peer: (std::net::SocketAddr, std::net::SocketAddr, i32),
    ) -> Self {
        let id = ctx.next_client_id();
        let default_db = ctx.upstream.as_ref().map_or(0, |u| u.settings().url.db);
        let replica_reads = ctx.upstream.as_ref().is_some_and(|u| u.reads_replicas());

        let mut st = ClientState::new(id, default_db, ctx.router.needs_auth());
        st.loopback = peer.0.ip().is_loopback();
        let (addr, laddr, fd) = peer;
        let me = ctx
            .router
            .clients()
            .register(id, addr, laddr, fd, default_db);
        Self {
            ctx,
            st,
            rd,
            buf: BytesMut::with_capacity(16 * 1024),
            out,
            pinned: None,
            pinned_proto: Proto::Resp2,
            pinned_active: false,
            release_pending: false,
            shared_dirty: false,
            run: None,
            parsed: Vec::new(),
            ready: BytesMut::new(),
            ready_n: 0,
            hits: BytesMut::new(),
            multi_writes: Vec::new(),
            multi_cleanup: Vec::new(),
            read_ahead: false,
            me,
            shards: Default::default(),
            last_cmd: "",
            replica_reads,
            fills_queued: false,
            multi_homed: false,
            watch_void: Default::default(),
            multi_deferred: None,
            hot_answered: 0,
            read_began: std::time::Instant::now(),
            hits_only: true,
        }
    }

    pub(super) fn client_id(&self) -> u64 {
        self.st.id
    }

    /// Splits into the pinned connection and the reply queue, so the queue can close first.
    pub(super) fn into_parts(self) -> (Option<Pinned>, crate::server::queue::Tx) {
        (self.pinned, self.out)
    }

    /// Serves the client until it leaves, misbehaves or quits. Once shutdown begins the client is
    /// still served until it goes quiet for `DRAIN_IDLE`, so requests it already sent are
    /// answered; a pub/sub or MONITOR client is closed at once.
    pub(super) async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> Stop {
        let mut need = 0usize;
        let mut draining = *shutdown.borrow();
        // Its own handle, so waiting for a kill does not borrow the session.
        let me = self.me.client.clone();
        // Both waits live as long as the loop: made anew for each read, each would join and
        // leave its waiter list (a lock each time) once per request at pipeline depth 1.
        let mut killed = std::pin::pin!(me.killed());
        let mut shutdown_seen = std::pin::pin!(shutdown.changed());
        loop {
            if self.buf.len() > self.ctx.max_query_buffer {
                let e = ProxyError::QueryBuffer {
                    size: self.buf.len(),
                    limit: self.ctx.max_query_buffer,
                };
                return self.fail_and_close(e).await;
            }
            if draining && self.st.sticky {
                return self.close_for_drain().await;
            }
            let want = need
                .saturating_sub(self.buf.len())
                .clamp(16 * 1024, 4 * 1024 * 1024);
            if self.buf.capacity() - self.buf.len() < want / 2 {
                self.buf.reserve(want);
            }
            tokio::select! {
                biased;
                // Resolves once (the drain began, or the sender is gone); not polled after.
                _ = &mut shutdown_seen, if !draining => {
                    draining = true;
                    continue;
                }
                // CLIENT KILL picked this client: closed as Redis closes it.
                () = &mut killed => return Stop { graceful: false },
                lost = pinned::lost(&mut self.pinned) => {
                    if self.pinned_active || self.release_pending {
                        return self.fail_and_close(ProxyError::PinnedLost(lost)).await;
                    }
                    self.pinned = None;
                    continue;
                }
                event = self.shards.event() => match event {
                    shards::Event::Lost(lost) => {
                        return self.fail_and_close(ProxyError::PinnedLost(lost)).await;
                    }
                    shards::Event::Gone(channel) => {
                        if let Err(stop) = self.shard_moved(channel).await {
                            return stop;
                        }
                        continue;
                    }
                },
                r = self.rd.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return Stop { graceful: false },
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(DRAIN_IDLE), if draining => return self.close_for_drain().await,
            }
            loop {
                self.read_ahead = false;
                match self.process().await {
                    Ok(n) => need = n,
                    Err(stop) => return stop,
                }
                if !self.read_ahead {
                    break;
                }
            }
        }
    }

    /// Handles every complete request in the buffer; returns a hint of the bytes the next
    /// request needs.
    async fn process(&mut self) -> Result<usize, Stop> {
        self.st.fence.reset();
        self.read_began = self.st.fence.at();
        self.hits_only = true;
        let mut parsed = std::mem::take(&mut self.parsed);
        let mut pos = 0;
        let mut need = 0;
        let mut bad = None;
        loop {
            match request::parse(&self.buf[pos..], pos, &self.ctx.limits) {
                Ok(Step::Request(p)) => {
                    pos = p.span.end;
                    parsed.push(p);
                }
                Ok(Step::Skip(n)) => pos += n,
                Ok(Step::Incomplete { need: n }) => {
                    need = n;
                    break;
                }
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        let chunk = self.buf.split_to(pos).freeze();
        let mut result = Ok(need);
        for p in parsed.drain(..) {
            let span = p.encoded.is_none().then(|| p.span.clone());
            let req = Request::from_parsed(&chunk, p);
            if let Err(stop) = self.handle(&chunk, span, req).await {
                result = Err(stop);
                break;
            }
        }
        self.parsed = parsed;
        let done = std::time::Instant::now();
        // A hot hit's latency: from the read of its request until its reply is ready, which
        // is when the read's requests are handled (two clock reads per read, not two per hit).
        for _ in 0..std::mem::take(&mut self.hot_answered) {
            self.ctx
                .metrics
                .latency
                .hot
                .observe((done - self.read_began).as_secs_f64());
        }
        let (st, cmd) = (&self.st, self.last_cmd);
        self.me.client.show(|s| {
            s.name.clone_from(&st.name);
            s.db = st.db;
            s.multi = st.in_multi;
            s.pubsub = st.subscribed;
            s.resp = st.proto.number();
            s.cmd = cmd;
            s.last = done;
        });
        if result.is_ok() {
            if let Err(stop) = self.flush_run(&chunk).await {
                result = Err(stop);
            } else if let Err(stop) = self.flush_ready().await {
                result = Err(stop);
            } else if std::mem::take(&mut self.fills_queued) {
                if let Err(stop) = self.queue(Out::ReadEnd).await {
                    result = Err(stop);
                }
            }
        }
        self.run = None;
        if let (Ok(_), Some(e)) = (&result, bad) {
            // Like Redis: commands before the malformed one run, then an error and a close.
            self.ctx.metrics.protocol_errors.inc();
            tracing::debug!(client = self.st.id, error = %e, "closing client: malformed request");
            return Err(self.fail_and_close(ProxyError::Protocol(e)).await);
        }
        result
    }

    async fn handle(
        &mut self,
        chunk: &Bytes,
        span: Option<Range<usize>>,
        req: Request,
    ) -> Result<(), Stop> {
        // A hit goes straight into the gathered replies when nothing is queued before it;
        // otherwise into `hits`, to follow the run ahead of it.
        let direct = self.run.is_none() && !self.pinned_active;
        if !self.hits_only {
            self.st.fence.retime();
        }
        let hits = if direct {
            &mut self.ready
        } else {
            &mut self.hits
        };
        let (decision, info) = self
            .ctx
            .router
            .route(
                &mut self.st,
                &req,
                self.pinned_active || self.multi_deferred.is_some(),
                hits,
            )
            .await;
        self.last_cmd = info.name;
        self.hits_only &= direct && matches!(decision, Decision::Cached);
        match decision {
            Decision::Forward | Decision::Rewrite(_) => {
                self.forward(decision, info, chunk, span, req).await
            }
            Decision::Store => {
                self.ctx.metrics.command(info.family, Outcome::Local);
                let store = self
                    .ctx
                    .router
                    .store()
                    .expect("the router picks the store only in standalone mode")
                    .clone();
                let reply = store.execute(&req, self.st.proto).await;
                self.reply(reply).await
            }
            Decision::Cached => {
                self.ctx.metrics.command(info.family, Outcome::Cached);
                self.hot_answered += 1;
                if direct {
                    return self.gathered().await;
                }
                self.flush_run(chunk).await?;
                if self.pinned_active {
                    let bytes = self.hits.split().freeze();
                    return self.reply(bytes).await;
                }
                self.ready.extend_from_slice(&self.hits);
                self.hits.clear();
                self.gathered().await
            }
            Decision::Fill(plan) => {
                self.ctx.metrics.command(info.family, Outcome::Forwarded);
                self.flush_run(chunk).await?;
                if self.release_pending {
                    self.barrier().await?;
                }
                let upstream = self
                    .ctx
                    .upstream
                    .as_ref()
                    .expect("the router plans fills only with an upstream");
                let started = Instant::now();
                let rx = upstream.send(
                    self.st.proto,
                    self.st.id,
                    plan.frame.clone(),
                    plan.upstream_replies,
                );
                self.shared_dirty = true;
                self.fills_queued = true;
                self.queue(Out::Fill {
                    rx,
                    plan,
                    started,
                    proto: self.st.proto,
                })
                .await
            }
            Decision::Info => {
                self.ctx.metrics.command(info.family, Outcome::Forwarded);
                self.flush_run(chunk).await?;
                if self.release_pending {
                    self.barrier().await?;
                }
                let after = AfterReply {
                    info: true,
                    ..AfterReply::default()
                };
                self.send_to(Dest::Shared, req.frame().clone(), 1, Some(Box::new(after)))
                    .await
            }
            Decision::Future(work) => {
                self.ctx.metrics.command(info.family, Outcome::Forwarded);
                self.flush_run(chunk).await?;
                if self.release_pending {
                    self.barrier().await?;
                }
                self.flush_ready().await?;
                // Spawned: once begun, a write completes (Redis follows the database) even if
                // the client leaves. Awaited here, so the client's next request sees it.
                let reply = tokio::spawn(work.0).await.unwrap_or_else(|_| {
                    crate::error::reply_bytes(&ProxyError::Internal("write task failed"))
                });
                self.reply(reply).await
            }
            Decision::Pinned | Decision::PinnedRewrite(_) => {
                self.pinned_request(chunk, span, req, info, decision).await
            }
            Decision::Reply(bytes) => {
                self.ctx.metrics.command(info.family, Outcome::Local);
                self.flush_run(chunk).await?;
                self.reply(bytes).await
            }
            Decision::Quit => {
                self.ctx.metrics.command(info.family, Outcome::Local);
                self.flush_run(chunk).await?;
                self.reply(Bytes::from_static(reply::OK)).await?;
                self.shards = Default::default();
                if self.pinned_active {
                    if let Some(p) = &mut self.pinned {
                        p.release();
                    }
                }
                let _ = self.queue(Out::Close).await;
                Err(Stop { graceful: true })
            }
            Decision::Reset => {
                self.ctx.metrics.command(info.family, Outcome::Local);
                self.flush_run(chunk).await?;
                // Shard subscriptions elsewhere end with their connections (and their streams).
                self.shards = Default::default();
                if self.pinned_active {
                    // The upstream drops the connection's subscriptions and transaction before
                    // it answers +RESET, as Redis does for a direct client; then the connection
                    // (now in a state cacheside did not set up) is closed.
                    if let Some(p) = &mut self.pinned {
                        p.expect(crate::protocol::reply::Expect::Frames(1));
                    }
                    self.send_to(Dest::Pinned, req.frame().clone(), 1, None)
                        .await?;
                    if let Some(p) = &mut self.pinned {
                        p.release();
                    }
                    self.pinned_active = false;
                    self.release_pending = true;
                    self.barrier().await?;
                    self.pinned = None;
                } else {
                    self.reply(Bytes::from_static(reply::RESET)).await?;
                }
                self.st.reset();
                self.multi_deferred = None;
                Ok(())
            }
            Decision::Fail(e) => {
                self.ctx.metrics.command(info.family, Outcome::Rejected);
                self.flush_run(chunk).await?;
                match to_reply(&e) {
                    Disposition::Reply(bytes) => self.reply(bytes).await,
                    Disposition::Close(_) => Err(self.fail_and_close(e).await),
                }
            }
        }
    }
}
