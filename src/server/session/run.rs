//! Runs: contiguous requests for one upstream connection, sent as one slice with one reply waiter.

use super::{Session, Stop};
use crate::error::ProxyError;
use crate::metrics::Outcome;
use crate::protocol::CommandInfo;
use crate::protocol::Request;
use crate::router::{Decision, Invalidation};
use crate::server::writer::{AfterReply, Out};
use bytes::Bytes;
use std::ops::Range;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dest {
    Shared,
    /// A read-only command, to a replica (`upstream.read_from`).
    Replica,
    Pinned,
}

/// A run of contiguous requests of the current chunk bound for one destination.
pub(super) struct Run {
    dest: Dest,
    pub(super) span: Range<usize>,
    count: u32,
    /// Hot-tier work for when the run's replies arrive.
    pub(super) after: Option<Box<AfterReply>>,
}

/// Adds a write's invalidation to what a batch does when its replies arrive.
fn merge(after: &mut Option<Box<AfterReply>>, inv: Option<Invalidation>) {
    if let Some(inv) = inv {
        after.get_or_insert_with(Box::default).writes.push(inv);
    }
}

impl Session {
    /// Adds a request to the current run, or starts a new one.
    pub(super) async fn push_run(
        &mut self,
        dest: Dest,
        chunk: &Bytes,
        span: Option<Range<usize>>,
        req: &Request,
        inv: Option<Invalidation>,
    ) -> Result<(), Stop> {
        match span {
            Some(s) => {
                if let Some(run) = &mut self.run {
                    // A run is one item of the reply queue: at most its bound long.
                    let room = (run.count as usize) < self.ctx.max_pending_replies;
                    if run.dest == dest && run.span.end == s.start && room {
                        run.span.end = s.end;
                        run.count += 1;
                        merge(&mut run.after, inv);
                        return Ok(());
                    }
                }
                self.flush_run(chunk).await?;
                let mut after = None;
                merge(&mut after, inv);
                self.run = Some(Run {
                    dest,
                    span: s,
                    count: 1,
                    after,
                });
                Ok(())
            }
            // An inline command was re-encoded: it travels alone.
            None => {
                self.flush_run(chunk).await?;
                let mut after = None;
                merge(&mut after, inv);
                self.send_to(dest, req.frame().clone(), 1, after).await
            }
        }
    }

    pub(super) async fn flush_run(&mut self, chunk: &Bytes) -> Result<(), Stop> {
        match self.run.take() {
            Some(run) => {
                self.send_to(run.dest, chunk.slice(run.span), run.count, run.after)
                    .await
            }
            None => Ok(()),
        }
    }

    pub(super) async fn send_to(
        &mut self,
        dest: Dest,
        bytes: Bytes,
        count: u32,
        mut after: Option<Box<AfterReply>>,
    ) -> Result<(), Stop> {
        match dest {
            Dest::Shared | Dest::Replica => {
                let upstream = self
                    .ctx
                    .upstream
                    .as_ref()
                    .expect("the router forwards only when an upstream is configured");
                // Broadcast coherence: the invalidation message runs right after the writes, on
                // the same connection, and the client's replies wait for it.
                let mut bytes = bytes;
                let mut sent = count;
                if let Some(a) = after.as_mut() {
                    let mut tail = std::mem::take(&mut a.appended);
                    if let Some(hot) = self.ctx.router.hot() {
                        let keys: Vec<Bytes> = a
                            .writes
                            .iter()
                            .flat_map(|w| w.keys().iter().cloned())
                            .collect();
                        let flush = a.writes.iter().any(|w| w.flush());
                        if hot.broadcast().is_some() && (flush || !keys.is_empty()) {
                            // Nothing announcing: this batch carries its PUBLISH; otherwise its
                            // keys join the next batched one (see `tier::hot::announce`).
                            match hot.announce_inline() {
                                Some(inline) => {
                                    tail.extend(hot.broadcast_command(&keys, flush));
                                    a.inline = Some(inline);
                                }
                                None => a.announce = Some((keys, flush)),
                            }
                        }
                    }
                    if !tail.is_empty() {
                        let mut joined = bytes::BytesMut::with_capacity(
                            bytes.len() + tail.iter().map(Bytes::len).sum::<usize>(),
                        );
                        joined.extend_from_slice(&bytes);
                        for t in &tail {
                            joined.extend_from_slice(t);
                        }
                        bytes = joined.freeze();
                        a.extra = tail.len() as u32;
                        sent += a.extra;
                    }
                }
                let started = Instant::now();
                let rx = if dest == Dest::Replica {
                    upstream.send_read(self.st.proto, self.st.id, bytes, sent)
                } else {
                    upstream.send(self.st.proto, self.st.id, bytes, sent)
                };
                self.shared_dirty = true;
                self.queue(Out::Upstream {
                    rx,
                    count,
                    started,
                    after,
                    proto: self.st.proto,
                })
                .await
            }
            Dest::Pinned => {
                let window = self.ctx.max_pending_replies as u64;
                let room = self.pinned.as_ref().and_then(|p| p.room(window));
                if let Some(room) = room {
                    // A client that pipelines without reading its replies has nothing more
                    // sent until it reads (what it sends meanwhile is read, and handled after),
                    // as the reply queue holds it back on shared connections.
                    self.wait_reading(room).await?;
                }
                let p = self
                    .pinned
                    .as_mut()
                    .expect("pinned requests are sent only after enter_pinned");
                if let Err(e) = p.send(&bytes).await {
                    return Err(self.fail_and_close(ProxyError::PinnedLost(e)).await);
                }
                Ok(())
            }
        }
    }

    /// A command for a shared connection (or a replica): added to the current run, or, when a
    /// strategy rewrote it, sent alone; its write's hot-tier work and lease cleanup go with it.
    pub(super) async fn forward(
        &mut self,
        decision: Decision,
        info: &'static CommandInfo,
        chunk: &Bytes,
        span: Option<Range<usize>>,
        req: Request,
    ) -> Result<(), Stop> {
        self.ctx.metrics.command(info.family, Outcome::Forwarded);
        let inv = self.ctx.router.invalidate(info, &req).await;
        let cleanup = self.ctx.router.write_cleanup(info, &req);
        if self.release_pending {
            self.flush_run(chunk).await?;
            self.barrier().await?;
        }
        match decision {
            // Sent alone, as an inline command is: the bytes are not the chunk's.
            Decision::Rewrite(r) => {
                self.flush_run(chunk).await?;
                let after = (inv.is_some() || r.refusals.is_some()).then(|| {
                    Box::new(AfterReply {
                        writes: inv.into_iter().collect(),
                        refusals: r.refusals,
                        ..AfterReply::default()
                    })
                });
                self.send_to(Dest::Shared, r.bytes, 1, after).await?;
            }
            _ => {
                let dest = if info.is_read() && !info.is_write() && self.replica_reads {
                    Dest::Replica
                } else {
                    Dest::Shared
                };
                self.push_run(dest, chunk, span, &req, inv).await?
            }
        }
        if !cleanup.is_empty() {
            match &mut self.run {
                Some(run) => run
                    .after
                    .get_or_insert_with(Box::default)
                    .appended
                    .extend(cleanup),
                // An inline write went out alone: its cleanup follows on the same connection.
                None => {
                    let after = AfterReply {
                        appended: cleanup,
                        ..AfterReply::default()
                    };
                    self.send_to(Dest::Shared, Bytes::new(), 0, Some(Box::new(after)))
                        .await?;
                }
            }
        }
        Ok(())
    }
}
