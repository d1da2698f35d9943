//! The session's end of the reply queue: its own replies in order, queued items, the barrier.

use super::{Session, Stop};
use crate::error::ProxyError;
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
        Ok(())
    }

    /// Queues the gathered replies, if any.
    pub(super) async fn flush_ready(&mut self) -> Result<(), Stop> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let ready = self.ready.split().freeze();
        self.out
            .send(Out::Ready(ready))
            .await
            .map_err(|_| Stop { graceful: false })
    }

    /// Queues `item` after every reply gathered so far.
    pub(super) async fn queue(&mut self, item: Out) -> Result<(), Stop> {
        self.flush_ready().await?;
        self.out
            .send(item)
            .await
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

    /// Waits for `rx`, reading ahead meanwhile (what is read is handled after), so that a
    /// client that leaves, or that CLIENT KILL picks, ends the wait.
    pub(super) async fn wait_reading<T>(
        &mut self,
        mut rx: oneshot::Receiver<T>,
    ) -> Result<Result<T, oneshot::error::RecvError>, Stop> {
        let me = self.me.client.clone();
        let mut killed = std::pin::pin!(me.killed());
        loop {
            tokio::select! {
                r = &mut rx => return Ok(r),
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
