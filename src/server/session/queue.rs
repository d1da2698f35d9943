//! The session's end of the reply queue: its own replies in order, queued items, the barrier.

use super::{Session, Stop};
use crate::error::ProxyError;
use crate::server::queue::TrySend;
use crate::server::writer::Out;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

impl Session {
    /// A reply of the proxy's own, in order with everything before it. Consecutive ones (hot
    /// hits of a pipeline, say) are gathered into one queue item.
    pub(super) async fn reply(&mut self, bytes: Bytes) -> Result<(), Stop> {
        if self.pinned_active {
            if let Some(p) = &mut self.pinned {
                return match p.emit(bytes) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.fail_and_close(ProxyError::PinnedLost(e)).await),
                };
            }
        }
        self.ready.extend_from_slice(&bytes);
        self.gathered().await
    }

    /// Counts a reply just gathered into `ready`; a full queue's worth is queued at once (and
    /// waits for room), so a pipeline answered here is held back like one sent upstream.
    pub(super) async fn gathered(&mut self) -> Result<(), Stop> {
        self.ready_n += 1;
        if self.ready_n >= self.ctx.max_pending_replies {
            self.flush_ready().await?;
        }
        Ok(())
    }

    /// Queues the gathered replies, if any.
    pub(super) async fn flush_ready(&mut self) -> Result<(), Stop> {
        if self.ready.is_empty() {
            self.ready_n = 0;
            return Ok(());
        }
        let ready = self.ready.split().freeze();
        let n = std::mem::take(&mut self.ready_n);
        self.push(Out::Ready(ready), n).await
    }

    /// Queues `item` after every reply gathered so far.
    pub(super) async fn queue(&mut self, item: Out) -> Result<(), Stop> {
        self.flush_ready().await?;
        let replies = item.replies();
        self.push(item, replies).await
    }

    /// Queues `item`, which carries `replies` replies. While the queue is full the client's
    /// replies wait for it to read them; what it sends meanwhile is read (and handled after),
    /// so a client that writes its whole pipeline before reading a reply is not left waiting
    /// on cacheside while cacheside waits on it. Nothing more goes upstream for it meanwhile.
    async fn push(&mut self, item: Out, replies: usize) -> Result<(), Stop> {
        let item = match self.out.try_send(item, replies) {
            Ok(()) => return Ok(()),
            Err(TrySend::Closed) => return Err(Stop { graceful: false }),
            Err(TrySend::Full(item)) => item,
        };
        let room = self.out.room();
        self.wait_reading(room.send(item, replies))
            .await?
            .map_err(|_| Stop { graceful: false })
    }

    /// Waits until every reply queued so far has been written, so everything sent before has
    /// executed upstream. Reads ahead meanwhile, to notice a client that leaves.
    pub(super) async fn barrier(&mut self) -> Result<(), Stop> {
        let (tx, rx) = oneshot::channel();
        self.queue(Out::Barrier(tx)).await?;
        self.shared_dirty = false;
        self.release_pending = false;
        self.wait_reading(rx)
            .await?
            .map_err(|_| Stop { graceful: false })
    }

    /// Waits for `done`, reading ahead meanwhile (what is read is handled after), so that a
    /// client that leaves, or that CLIENT KILL picks, ends the wait.
    pub(super) async fn wait_reading<F: std::future::Future>(
        &mut self,
        done: F,
    ) -> Result<F::Output, Stop> {
        let me = self.me.client.clone();
        let mut killed = std::pin::pin!(me.killed());
        let mut done = std::pin::pin!(done);
        loop {
            tokio::select! {
                r = &mut done => return Ok(r),
                () = &mut killed => return Err(Stop { graceful: false }),
                r = self.rd.read_buf(&mut self.buf), if self.buf.len() <= self.ctx.max_query_buffer => {
                    if matches!(r, Ok(0) | Err(_)) {
                        return Err(Stop { graceful: false });
                    }
                    self.read_ahead = true;
                }
            }
        }
    }
}
