//! The write half of a client connection: replies in request order, each ready reply encoded
//! into one buffer, written when nothing more is ready (so a pipelined batch goes out in one
//! write). Hot-tier work tied to a reply (storing a fill, evicting what a write touched) happens
//! here, before the client sees the reply.

use super::{queue, Ctx};
use crate::error::{reply_bytes, ProxyError};
use crate::protocol::reply::{self, Proto};
use crate::router::fill::{self, FillPlan};
use crate::tier::redis::{BatchResult, ReplyRx};
use crate::transport::WriteHalf;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// One item of a client's ordered reply queue.
pub enum Out {
    /// Reply bytes that are ready.
    Ready(Bytes),
    /// The replies to `count` requests sent upstream as one batch.
    Upstream {
        rx: ReplyRx,
        count: u32,
        started: Instant,
        after: Option<Box<AfterReply>>,
        proto: Proto,
    },
    /// A hot-tier miss read upstream: the client's reply, and the value to store.
    Fill {
        rx: ReplyRx,
        plan: Box<FillPlan>,
        started: Instant,
        proto: Proto,
    },
    /// The end of what the session handled from one read of the client, after reads that
    /// missed: reads up to here may load together.
    ReadEnd,
    /// Frames relayed from the client's pinned connection until the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
    /// Fires once everything before it has been written.
    Barrier(oneshot::Sender<()>),
    /// Close the connection after everything before it.
    Close,
}

impl Out {
    /// The replies the item carries, for the queue's bound (gathered replies are counted by
    /// the session, which gathers them).
    pub fn replies(&self) -> usize {
        match self {
            Out::Upstream { count, .. } => *count as usize,
            _ => 1,
        }
    }
}

/// What a batch does when its replies arrive, before the client sees them.
#[derive(Debug, Default)]
pub struct AfterReply {
    /// Its writes to cached keys: completed (keys evicted again, fills that raced them failed)
    /// before the client sees the replies.
    pub writes: Vec<crate::tier::hot::WriteGuard>,
    /// Commands of cacheside's own to send right after the batch (lease cleanup for mapped
    /// keys); the broadcast PUBLISH joins them when the batch is sent.
    pub appended: Vec<Bytes>,
    /// Replies at the end of the batch that are cacheside's own.
    pub extra: u32,
    /// Broadcast mode: the batch carries its own PUBLISH (held until its reply is handled).
    pub inline: Option<crate::tier::hot::Inline>,
    /// Broadcast mode: keys (or a flush) to announce in the next batched PUBLISH once the
    /// replies are in, before the client sees them.
    pub announce: Option<(Vec<Bytes>, bool)>,
    /// The batch is INFO: append cacheside's section.
    pub info: bool,
    /// A write-behind script: its reply refusing the write for a full queue is counted here.
    pub refusals: Option<prometheus::IntCounter>,
}

/// Writes until the queue ends, a `Close` comes, or the client stops reading.
pub async fn run(mut wr: WriteHalf, mut rx: queue::Rx, ctx: Arc<Ctx>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // An item taken from the queue while gathering reads, to handle next.
    let mut carry = None;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Take every item that is ready without waiting; wait (after writing what we have) only
        // when the next reply in order is not there yet.
        while let Some(item) = next.take() {
            match item {
                Out::Ready(b) => buf.extend_from_slice(&b),
                Out::Upstream {
                    mut rx,
                    count,
                    started,
                    after,
                    proto,
                } => {
                    let Ok(res) = wait(&mut rx, &mut wr, &mut buf, &ctx, started).await else {
                        return;
                    };
                    buf.extend_from_slice(&batch_reply(&ctx, res, count, after, proto).await);
                }
                Out::Fill {
                    rx: reply_rx,
                    plan,
                    started,
                    proto,
                } => {
                    let first = (reply_rx, plan, started, proto);
                    if fills(first, &mut rx, &mut carry, &mut wr, &mut buf, &ctx)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Out::Stream(mut frames) => loop {
                    match frames.try_recv() {
                        Ok(b) => buf.extend_from_slice(&b),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            if flush(&mut wr, &mut buf).await.is_err() {
                                return;
                            }
                            match frames.recv().await {
                                Some(b) => buf.extend_from_slice(&b),
                                None => break,
                            }
                        }
                    }
                },
                Out::ReadEnd => {}
                Out::Barrier(tx) => {
                    if flush(&mut wr, &mut buf).await.is_err() {
                        return;
                    }
                    let _ = tx.send(());
                }
                Out::Close => {
                    let _ = flush(&mut wr, &mut buf).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            }
            if buf.len() > 1024 * 1024 && flush(&mut wr, &mut buf).await.is_err() {
                return;
            }
            next = carry.take().or_else(|| rx.try_recv());
        }
        if flush(&mut wr, &mut buf).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// A read that missed the hot tier, waiting for its upstream reply.
type FillItem = (ReplyRx, Box<FillPlan>, Instant, Proto);

/// Completes reads that missed, in order: their upstream replies, then the loads they need.
/// Once a load is needed, reads queued behind it (a client's pipeline of GETs) join before the
/// loads start, so they run together: one query per mapping. Replies before them are written
/// before any load is awaited.
async fn fills(
    first: FillItem,
    queue: &mut queue::Rx,
    carry: &mut Option<Out>,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    ctx: &Ctx,
) -> Result<(), ()> {
    let mut done: Vec<Option<(Bytes, Vec<crate::tier::hot::Fill>)>> = Vec::new();
    let mut waiting = Vec::new();
    let mut at = Vec::new();
    let mut next = Some(first);
    while let Some((mut reply_rx, plan, started, proto)) = next.take() {
        let res = wait(&mut reply_rx, wr, buf, ctx, started).await?;
        let step = match res {
            Some(Ok(replies)) => match fill::complete(*plan, &replies, proto) {
                fill::Completion::Done(client, fills) => Err((client, fills)),
                fill::Completion::Load(step) => Ok((*step, false)),
            },
            // Redis unavailable: a mapped read is still answered from PostgreSQL.
            Some(Err(e)) => match (ctx.router.loader(), fill::degraded(*plan)) {
                (Some(_), Some(step)) => Ok((step, true)),
                _ => Err((failure(Some(Err(e))), Vec::new())),
            },
            None => Err((failure(None), Vec::new())),
        };
        match step {
            Ok((step, down)) => {
                at.push((done.len(), started));
                done.push(None);
                waiting.push((step, down, proto));
            }
            Err(answered) => done.push(Some(answered)),
        }
        // Once a load is needed, what the session is still queueing from the same read of the
        // client (it ends with `ReadEnd`) joins it: reads that missed load together, and the
        // replies between them are taken in order meanwhile.
        while !waiting.is_empty() && carry.is_none() && next.is_none() {
            match queue.recv().await {
                Some(Out::Fill {
                    rx,
                    plan,
                    started,
                    proto,
                }) => next = Some((rx, plan, started, proto)),
                Some(Out::Ready(b)) => done.push(Some((b, Vec::new()))),
                Some(Out::Upstream {
                    mut rx,
                    count,
                    started,
                    after,
                    proto,
                }) => {
                    let res = wait(&mut rx, wr, buf, ctx, started).await?;
                    let reply = batch_reply(ctx, res, count, after, proto).await;
                    done.push(Some((reply, Vec::new())));
                }
                Some(Out::ReadEnd) | None => break,
                Some(other) => *carry = Some(other),
            }
        }
    }
    if !waiting.is_empty() {
        flush(wr, buf).await.map_err(|_| ())?;
        let mut loaded = match ctx.router.loader() {
            Some(loader) => fill::finish_all(waiting, loader).await,
            None => Vec::new(),
        }
        .into_iter();
        for (i, started) in at {
            ctx.metrics
                .latency
                .origin
                .observe(started.elapsed().as_secs_f64());
            done[i] =
                Some(loaded.next().unwrap_or_else(|| {
                    (reply_bytes(&ProxyError::Internal("no loader")), Vec::new())
                }));
        }
    }
    for (client, fills) in done.into_iter().flatten() {
        if let Some(hot) = ctx.router.hot() {
            for f in fills {
                hot.fill(f).await;
            }
        }
        buf.extend_from_slice(&client);
    }
    Ok(())
}

/// Waits for an upstream reply, writing what is buffered first if it is not there yet, and
/// records the batch's latency. `Err` means the client is gone.
async fn wait(
    rx: &mut ReplyRx,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    ctx: &Ctx,
    started: Instant,
) -> Result<Option<BatchResult>, ()> {
    let res = match rx.try_recv() {
        Ok(r) => Some(r),
        Err(oneshot::error::TryRecvError::Empty) => {
            flush(wr, buf).await.map_err(|_| ())?;
            rx.await.ok()
        }
        Err(oneshot::error::TryRecvError::Closed) => None,
    };
    ctx.metrics
        .latency
        .upstream
        .observe(started.elapsed().as_secs_f64());
    Ok(res)
}

/// What the client sees for a batch sent upstream: its replies, after the hot-tier work tied to
/// them, or one error per request if they never came.
async fn batch_reply(
    ctx: &Ctx,
    res: Option<BatchResult>,
    count: u32,
    after: Option<Box<AfterReply>>,
    proto: Proto,
) -> Bytes {
    match res {
        Some(Ok(replies)) => match after {
            None => replies,
            Some(a) => after_reply(ctx, *a, replies, count, proto).await,
        },
        failed => {
            let err = failure(failed);
            let mut out = BytesMut::with_capacity(err.len() * count as usize);
            for _ in 0..count {
                out.extend_from_slice(&err);
            }
            out.freeze()
        }
    }
}

/// The error reply for a batch whose replies never came.
fn failure(res: Option<BatchResult>) -> Bytes {
    match res {
        Some(Err(e)) => reply_bytes(&ProxyError::Upstream(e)),
        _ => reply_bytes(&ProxyError::Internal("upstream reply lost")),
    }
}

/// Applies a batch's hot-tier work and trims cacheside's own trailing replies.
async fn after_reply(ctx: &Ctx, a: AfterReply, replies: Bytes, count: u32, proto: Proto) -> Bytes {
    let hot = ctx.router.hot();
    for w in a.writes {
        w.complete().await;
    }
    if let (Some(inline), Some(hot)) = (a.inline, hot) {
        // The PUBLISH ends the batch's pipeline. Once answered, the fence: its messages reach
        // the other sidecars in a turn of Redis's loop before the fence's, so before the client
        // has the reply.
        let published = reply::split(&replies, (count + a.extra) as usize, proto)
            .and_then(|f| f.last().map(|(_, k)| !matches!(k, reply::ReplyKind::Error)))
            .unwrap_or(false);
        let fenced = published && hot.fence_published().await;
        drop(inline);
        if !fenced {
            return announce_failed(count);
        }
    }
    if let (Some((keys, flush)), Some(hot)) = (a.announce, hot) {
        // The writes ran; other sidecars must hear of them before the client does.
        if !hot.announce(keys, flush).await {
            return announce_failed(count);
        }
    }
    if let Some(c) = a.refusals {
        if replies.starts_with(crate::strategy::behind::QUEUE_FULL) {
            c.inc();
        }
    }
    let mut replies = replies;
    if a.extra > 0 {
        let kept = reply::split(&replies, count as usize, proto)
            .map_or(replies.len(), |f| f.iter().map(|(b, _)| b.len()).sum());
        replies = replies.slice(..kept);
    }
    if let (true, Some(hot)) = (a.info, hot) {
        hot.sync().await;
        replies = crate::tier::hot::info::append_section(&replies, &hot.info_section());
    }
    replies
}

/// The replies of `count` writes whose invalidation the other sidecars may not have heard.
fn announce_failed(count: u32) -> Bytes {
    let err = reply_bytes(&ProxyError::Announce);
    let mut out = BytesMut::with_capacity(err.len() * count as usize);
    for _ in 0..count {
        out.extend_from_slice(&err);
    }
    out.freeze()
}

async fn flush(wr: &mut WriteHalf, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut r = wr.write_all(buf).await;
    if r.is_ok() {
        // TLS may hold back what the socket did not take; plain TCP flushes nothing.
        r = wr.flush().await;
    }
    buf.clear();
    r
}
