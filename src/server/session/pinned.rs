//! The session's side of a client's pinned connection: entering it, sending a request on it
//! with what its state needs (transaction bookkeeping, broadcast PUBLISH, lease cleanup, the
//! hot tier's completion before the reply), and leaving it.

use super::run::Dest;
use super::{Session, Stop};
use crate::error::{ProxyError, UpstreamError};
use crate::metrics::Outcome;
use crate::protocol::{CommandInfo, Request};
use crate::router::Decision;
use crate::server::Out;
use bytes::Bytes;
use std::ops::Range;

impl Session {
    /// Sends one request on the client's pinned connection (opening or entering it first).
    pub(super) async fn pinned_request(
        &mut self,
        chunk: &Bytes,
        span: Option<Range<usize>>,
        req: Request,
        info: &'static CommandInfo,
        decision: Decision,
    ) -> Result<(), Stop> {
        if self.shard_command(info, &req) {
            return self.shard_request(chunk, req, info).await;
        }
        // A shard channel lives in a slot like a key (cluster mode: its primary is the one
        // that can serve the subscription).
        let key = info
            .key_indices(&req)
            .first()
            .map(|&i| req.arg_bytes(i))
            .or_else(|| (info.name == "SSUBSCRIBE" && req.argc() > 1).then(|| req.arg_bytes(1)));
        if self.defers_multi(info) {
            return self.defer_multi(&req, info).await;
        }
        if self
            .begin_deferred(chunk, key.as_deref(), &req, info)
            .await?
        {
            return Ok(());
        }
        if self.void_exec(chunk, &req, info).await? {
            return Ok(());
        }
        if info.name == "WATCH" && !self.st.watching {
            self.watch_void
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let follow = self.follows_redirects(info, key.is_some());
        let started = tokio::time::Instant::now();
        if info.name == "MULTI" {
            self.multi_homed = false;
        } else if self.st.in_multi && !self.multi_homed {
            // Only the first queued command may move the transaction: one queued before it
            // would be lost with the connection it was queued on.
            self.multi_homed = true;
            if let (true, Some(k)) = (self.pinned_active && !self.st.watching, &key) {
                self.rehome(chunk, k).await?;
            }
        }
        if !self.pinned_active {
            self.flush_run(chunk).await?;
            if let Err(e) = self.enter_pinned(key.as_deref(), None).await {
                self.ctx.metrics.command(info.family, Outcome::Rejected);
                return self
                    .reply(crate::error::reply_bytes(&ProxyError::Upstream(e)))
                    .await;
            }
        }
        self.ctx.metrics.command(info.family, Outcome::Pinned);
        let inv = self.ctx.router.invalidate(info, &req).await;
        // Inside MULTI a write only queues: what it touches is evicted again when EXEC's
        // reply arrives, after the transaction has run.
        let queued = self.st.in_multi && !matches!(info.name, "EXEC" | "DISCARD" | "MULTI");
        // Likewise the fill leases of mapped keys it writes are deleted right after it
        // runs (after EXEC, for a transaction), by commands of cacheside's own.
        let cleanup = self.ctx.router.write_cleanup(info, &req);
        let (writes, cleanup) = if queued {
            self.multi_writes.extend(inv);
            self.multi_cleanup.extend(cleanup);
            (Vec::new(), Vec::new())
        } else if info.name == "EXEC" {
            (
                std::mem::take(&mut self.multi_writes),
                std::mem::take(&mut self.multi_cleanup),
            )
        } else {
            if info.name == "DISCARD" {
                self.multi_writes.clear();
                self.multi_cleanup.clear();
            }
            (inv.into_iter().collect(), cleanup)
        };
        let replying = self.st.reply_mode == crate::router::ReplyMode::On;
        // Cluster mode: a transaction redirected whole is run again where it belongs.
        let moves = (queued || info.name == "EXEC") && self.txn_moves();
        // Under WATCH, before MULTI: a command with a key whose slot moved runs where it lives.
        let reroute = self.st.watching
            && !self.st.in_multi
            && !self.st.sticky
            && key.is_some()
            && info.route == crate::protocol::Route::Forward
            && self.st.reply_mode == crate::router::ReplyMode::On
            && self.on_cluster();
        let watched = (moves && info.name == "EXEC" && self.st.watching)
            .then(|| self.st.watched_slots.clone());
        let sent = match &decision {
            _ if !(moves && queued) => Bytes::new(),
            Decision::PinnedRewrite(bytes) => bytes.clone(),
            _ => req.frame().clone(),
        };
        let expect = self.st.note_pinned(info, &req);
        let replying = replying && self.st.reply_mode == crate::router::ReplyMode::On;
        let exec = info.name == "EXEC";
        // Broadcast coherence: a transaction's PUBLISH runs in it, on this connection, so
        // other sidecars have the invalidation before the client sees the reply: queued
        // last in the transaction (its element is cut from EXEC's reply), and fenced before
        // the reply. A write outside one is announced once its reply is in (below): a PUBLISH
        // sent after it could be read by Redis in a later turn than the write's reply.
        let publish = self
            .ctx
            .router
            .hot()
            .filter(|hot| exec && replying && !writes.is_empty() && !hot.announces_after_reply())
            .and_then(|hot| {
                let keys: Vec<Bytes> = writes.iter().flat_map(|w| w.keys().to_vec()).collect();
                hot.broadcast_command(&keys, writes.iter().any(|w| w.flush()))
            });
        if let Some(cmd) = &publish {
            self.flush_run(chunk).await?;
            if let Some(p) = &mut self.pinned {
                p.expect(crate::protocol::reply::Expect::Hidden);
            }
            self.send_to(Dest::Pinned, cmd.clone(), 1, None).await?;
        }
        if let Decision::PinnedRewrite(_) = decision {
            self.flush_run(chunk).await?;
        }
        let replay = match watched {
            _ if !(moves && exec) => None,
            Some(slots) => self.watch_replay(slots),
            None => self.replay(&cleanup),
        };
        // Moved, a watched key's read voids the watch; another key's leaves it. Only worked
        // out for a command that may be rerouted.
        let rerun = reroute
            .then(|| {
                let voids = key.as_deref().is_some_and(|k| {
                    let s = crate::tier::redis::cluster::slot::of(k);
                    self.st.watched_slots.binary_search(&s).is_ok()
                });
                self.reroute(voids, &cleanup)
            })
            .flatten();
        // The hot tier's work for this request's writes, done before its reply is relayed.
        let mut work: Option<crate::tier::redis::BeforeReply> = None;
        if let Some(p) = &mut self.pinned {
            use crate::protocol::{Pin, Route};
            match info.route {
                Route::Pin(Pin::Blocking | Pin::MaybeBlocking) => p.expect_blocking(expect),
                _ => p.expect(expect),
            }
            if publish.is_some() {
                p.trim_last();
            }
            if moves && queued {
                p.queued(sent, key.is_some());
            }
            if let Some(r) = replay {
                p.exec_replay(r);
            }
            if let (true, crate::protocol::reply::Expect::Frames(1)) = (reroute, expect) {
                if let Some(r) = rerun {
                    p.reroute(req.frame().clone(), r);
                }
            }
            if let (false, Some(hot)) = (writes.is_empty(), self.ctx.router.hot()) {
                // Before the client sees the reply: the keys evicted again (fills that
                // raced the write fail), and the transaction's PUBLISH fenced or, when none
                // went with the writes, the writes announced (fenced) once they ran.
                let broadcast = hot.broadcast().is_some();
                let (hot, fence) = (hot.clone(), publish.is_some());
                work = Some(Box::pin(async move {
                    if fence {
                        if !hot.fence_published().await {
                            tracing::warn!("a transaction's invalidation was not fenced");
                        }
                    } else if hot.broadcast().is_some() {
                        let keys: Vec<Bytes> =
                            writes.iter().flat_map(|w| w.keys().to_vec()).collect();
                        let flush = writes.iter().any(|w| w.flush());
                        if !hot.announce(keys, flush).await {
                            tracing::warn!("a pinned write's invalidation was not announced");
                        }
                    }
                    for w in writes {
                        w.complete().await;
                    }
                }));
                // Without a reply, in broadcast mode, the work waits for a probe (below);
                // otherwise it is done at this request's reply or, with none, the next one
                // (tracking mode needs no announcement: Redis invalidates by itself).
                if replying || !broadcast {
                    p.before_reply(work.take().expect("set above"));
                }
            }
        }
        // Cluster mode: a blocking command goes alone, and a redirection of it comes back here.
        let watch = follow
            .then(|| self.pinned.as_mut().map(|p| p.watch()))
            .flatten();
        match decision {
            Decision::PinnedRewrite(bytes) => self.send_to(Dest::Pinned, bytes, 1, None).await?,
            _ => self.push_run(Dest::Pinned, chunk, span, &req, None).await?,
        }
        if watch.is_some() {
            self.flush_run(chunk).await?;
        }
        if let Some(work) = work {
            // A write whose reply the client does not get (CLIENT REPLY OFF or SKIP): a
            // request of cacheside's own follows it, whose unseen reply shows it ran; the work
            // (the announcement) is done then, and anything the client sees after waits for it.
            self.flush_run(chunk).await?;
            self.probe_reply(work).await?;
        }
        // With CLIENT REPLY OFF the upstream would not answer them either: skipped.
        if !cleanup.is_empty() && self.st.reply_mode == crate::router::ReplyMode::On {
            self.flush_run(chunk).await?;
            for cmd in cleanup {
                if let Some(p) = &mut self.pinned {
                    p.expect(crate::protocol::reply::Expect::Hidden);
                }
                self.send_to(Dest::Pinned, cmd, 1, None).await?;
            }
        }
        if self.st.can_release() {
            self.flush_run(chunk).await?;
            if let Some(p) = &mut self.pinned {
                p.release();
            }
            self.pinned_active = false;
            self.release_pending = true;
        }
        if let (Some(rx), Some(key)) = (watch, &key) {
            self.follow_redirects(rx, &req, info, key, started).await?;
        }
        Ok(())
    }

    /// Sends a request of cacheside's own whose reply (unseen) follows everything sent before
    /// it, with `work` done before that reply is taken: a `PING` once replies are on again
    /// (after a SKIP), else `CLIENT REPLY ON` (answered) and `CLIENT REPLY OFF` (not).
    async fn probe_reply(&mut self, work: crate::tier::redis::BeforeReply) -> Result<(), Stop> {
        use crate::protocol::reply::Expect;
        use crate::protocol::request::encode_command;
        let Some(p) = &mut self.pinned else {
            return Ok(());
        };
        p.expect(Expect::Hidden);
        p.before_reply(work);
        let cmd = if self.st.reply_mode == crate::router::ReplyMode::On {
            encode_command(&["PING"])
        } else {
            p.expect(Expect::Frames(0));
            let mut both = encode_command(&["CLIENT", "REPLY", "ON"]).to_vec();
            both.extend_from_slice(&encode_command(&["CLIENT", "REPLY", "OFF"]));
            Bytes::from(both)
        };
        self.send_to(Dest::Pinned, cmd, 1, None).await
    }

    /// Opens (or reuses) the pinned connection and starts relaying its frames to the client,
    /// after every shared command sent before has executed.
    /// In cluster mode the connection goes to the primary of `key`'s slot, or to `at` (where a
    /// redirection sent the client's request).
    pub(super) async fn enter_pinned(
        &mut self,
        key: Option<&[u8]>,
        at: Option<std::sync::Arc<str>>,
    ) -> Result<(), UpstreamError> {
        if self.shared_dirty {
            self.barrier().await.map_err(|_| UpstreamError::Closed {
                addr: "client".into(),
            })?;
        }
        // A kept connection of the other protocol, on another primary than the key's (cluster
        // mode), near IAM's 12-hour limit, or to a node a failover demoted (it holds no state
        // between pinned phases), is replaced.
        let want = at.clone().or_else(|| {
            let c = self.ctx.upstream.as_ref()?.cluster()?;
            c.addr_for(Some(key?)).ok()
        });
        let elsewhere = matches!((&self.pinned, &want), (Some(p), Some(w)) if p.addr() != w);
        if self.pinned.as_ref().is_some_and(|p| {
            self.pinned_proto != self.st.proto || elsewhere || p.reauth_due() || p.demoted()
        }) {
            if self.release_pending {
                let _ = self.barrier().await;
            }
            self.unpin();
        }
        if self.pinned.is_none() {
            let upstream =
                self.ctx
                    .upstream
                    .as_ref()
                    .ok_or_else(|| UpstreamError::Unavailable {
                        addr: "none".into(),
                        detail: "no upstream configured".into(),
                    })?;
            let (proto, name) = (self.st.proto, self.st.name.as_deref());
            self.pinned = Some(match at {
                Some(addr) => upstream.pin_at(proto, name, addr).await?,
                None => upstream.pin(proto, name, key).await?,
            });
            self.pinned_proto = self.st.proto;
            let upstream_id = self.pinned.as_ref().and_then(|p| p.upstream_id());
            self.me.client.set_upstream_id(upstream_id);
        }
        let frames = self
            .pinned
            .as_mut()
            .expect("pinned connection opened above")
            .begin();
        self.queue(Out::Stream(frames))
            .await
            .map_err(|_| UpstreamError::Closed {
                addr: "client".into(),
            })?;
        self.pinned_active = true;
        self.release_pending = false;
        Ok(())
    }

    /// Cluster mode: a transaction's first key decides its node. MULTI went to any primary;
    /// if the key lives on another, the open transaction is left (its connection closed, which
    /// discards it) and begun again, unseen by the client, on the key's primary.
    async fn rehome(&mut self, chunk: &Bytes, key: &[u8]) -> Result<(), Stop> {
        let cluster = self.ctx.upstream.as_ref().and_then(|u| u.cluster());
        let Some(want) = cluster.and_then(|c| c.addr_for(Some(key)).ok()) else {
            return Ok(());
        };
        if self.pinned.as_ref().is_none_or(|p| *p.addr() == want) {
            return Ok(());
        }
        self.flush_run(chunk).await?;
        if let Some(p) = &mut self.pinned {
            p.release();
        }
        self.pinned_active = false;
        self.release_pending = true;
        self.barrier().await?;
        // The transaction begun there is ended, and the connection kept for another client.
        if let Some(p) = &mut self.pinned {
            if p.discard().await.is_err() {
                self.pinned = None;
            }
        }
        self.unpin();
        if let Err(e) = self.enter_pinned(Some(key), None).await {
            return Err(self.fail_and_close(ProxyError::PinnedLost(e)).await);
        }
        if let Some(p) = &mut self.pinned {
            p.expect(crate::protocol::reply::Expect::Hidden);
        }
        let multi = crate::protocol::request::encode_command(&["MULTI"]);
        self.send_to(Dest::Pinned, multi, 1, None).await
    }

    /// Whether the upstream is a Redis Cluster.
    pub(super) fn on_cluster(&self) -> bool {
        self.ctx
            .upstream
            .as_ref()
            .is_some_and(|u| u.cluster().is_some())
    }

    /// Gives the pinned connection back to the upstream, which keeps it for another client if
    /// it holds nothing of this one's (`Pinned::idle`).
    pub(in crate::server) fn unpin(&mut self) {
        if let Some(p) = self.pinned.take() {
            self.me.client.set_upstream_id(None);
            if let Some(u) = &self.ctx.upstream {
                u.unpin(p);
            }
        }
    }

    /// Ends the session during a drain: replies already queued are delivered. A pinned
    /// connection still holding state (a blocked command, an open transaction, subscriptions)
    /// is closed, which makes the upstream drop that state.
    pub(super) async fn close_for_drain(&mut self) -> Stop {
        self.drop_held_state();
        let _ = self.queue(Out::Close).await;
        Stop { graceful: true }
    }

    /// Answers `err` and closes the client, dropping what its connections hold upstream.
    pub(super) async fn fail_and_close(&mut self, err: ProxyError) -> Stop {
        let bytes = crate::error::reply_bytes(&err);
        self.drop_held_state();
        let _ = self.queue(Out::Ready(bytes)).await;
        let _ = self.queue(Out::Close).await;
        Stop { graceful: true }
    }

    /// Closes the shard subscriptions' connections and a pinned connection in use.
    fn drop_held_state(&mut self) {
        self.shards = Default::default();
        if self.pinned_active {
            self.pinned = None;
            self.pinned_active = false;
        }
    }
}

/// Resolves when the client's pinned connection is lost; never while it has none.
pub(super) async fn lost(p: &mut Option<crate::tier::redis::Pinned>) -> UpstreamError {
    match p {
        Some(p) => p.lost().await,
        None => std::future::pending().await,
    }
}
