//! The write half of a client connection: replies in request order, each ready reply encoded
//! into one buffer, written when nothing more is ready (so a pipelined batch goes out in one
//! write).

use crate::error::{reply_bytes, ProxyError};
use crate::metrics::Metrics;
use crate::tier::redis::ReplyRx;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
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
    },
    /// Frames relayed from the client's pinned connection until the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
    /// Fires once everything before it has been written.
    Barrier(oneshot::Sender<()>),
    /// Close the connection after everything before it.
    Close,
}

/// Writes until the queue ends, a `Close` comes, or the client stops reading.
pub async fn run(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Out>, metrics: Arc<Metrics>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
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
                } => {
                    let res = match rx.try_recv() {
                        Ok(r) => Some(r),
                        Err(oneshot::error::TryRecvError::Empty) => {
                            if flush(&mut wr, &mut buf).await.is_err() {
                                return;
                            }
                            (&mut rx).await.ok()
                        }
                        Err(oneshot::error::TryRecvError::Closed) => None,
                    };
                    metrics
                        .request_duration
                        .observe(started.elapsed().as_secs_f64());
                    match res {
                        Some(Ok(replies)) => buf.extend_from_slice(&replies),
                        Some(Err(e)) => {
                            let err = reply_bytes(&ProxyError::Upstream(e));
                            for _ in 0..count {
                                buf.extend_from_slice(&err);
                            }
                        }
                        None => {
                            let err = crate::protocol::reply::error_bytes(
                                "ERR cacheside: upstream reply lost",
                            );
                            for _ in 0..count {
                                buf.extend_from_slice(&err);
                            }
                        }
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
            next = rx.try_recv().ok();
        }
        if flush(&mut wr, &mut buf).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn flush(wr: &mut OwnedWriteHalf, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let r = wr.write_all(buf).await;
    buf.clear();
    r
}
