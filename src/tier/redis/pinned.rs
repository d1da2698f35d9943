//! An upstream connection of one client's own, for state that must not leak onto shared
//! connections: transactions, WATCH, pub/sub, MONITOR, blocking commands, a non-default db.
//!
//! The session writes the client's requests to it directly; a relay task forwards every frame the
//! upstream sends, in arrival order, into a stream that the client's writer drains. Replies the
//! proxy answers itself while pinned (`emit`) and the end of the pinned phase (`release`) are
//! ordered by reply count: each takes effect right after the replies to every request written
//! before it, and before any reply to a later one.

use super::conn::{self, Handshake};
use super::Settings;
use crate::error::UpstreamError;
use crate::metrics::Metrics;
use crate::protocol::reply::{self, Proto, ReplyKind};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Frames buffered between the relay task and the client's writer.
const STREAM_CAPACITY: usize = 256;

enum Ctl {
    Begin(mpsc::Sender<Bytes>),
    Emit { after: u64, bytes: Bytes },
    Release { after: u64 },
}

pub struct Pinned {
    wr: OwnedWriteHalf,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: JoinHandle<UpstreamError>,
    addr: Arc<str>,
    /// Replies expected for everything written so far.
    sent: u64,
    metrics: Arc<Metrics>,
}

impl Pinned {
    pub(super) async fn open(
        settings: &Settings,
        proto: Proto,
        client_name: Option<&[u8]>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        let addr: Arc<str> = settings.url.addr().into();
        let hs = Handshake {
            url: &settings.url,
            proto,
            db: settings.url.db,
            client_name,
        };
        let stream = conn::open(&hs, &addr, settings.connect_timeout).await?;
        let (rd, wr) = stream.into_split();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(relay(rd, ctl_rx, addr.clone()));
        metrics.pinned_connections.inc();
        Ok(Self {
            wr,
            ctl,
            task,
            addr,
            sent: 0,
            metrics,
        })
    }

    /// Opens a stream of upstream frames for the client's writer; it ends at `release`.
    pub fn begin(&mut self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let _ = self.ctl.send(Ctl::Begin(tx));
        rx
    }

    /// Writes requests that expect `replies` replies in all.
    pub async fn send(&mut self, bytes: &[u8], replies: u64) -> Result<(), UpstreamError> {
        self.sent += replies;
        self.wr
            .write_all(bytes)
            .await
            .map_err(|e| UpstreamError::Unavailable {
                addr: self.addr.clone(),
                detail: e.to_string().into(),
            })
    }

    /// Queues a reply of the proxy's own, after the replies to everything sent so far.
    pub fn emit(&mut self, bytes: Bytes) {
        let _ = self.ctl.send(Ctl::Emit {
            after: self.sent,
            bytes,
        });
    }

    /// Ends the current stream once every reply to what was sent has been relayed.
    pub fn release(&mut self) {
        let _ = self.ctl.send(Ctl::Release { after: self.sent });
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
    ctl: mpsc::UnboundedReceiver<Ctl>,
    queue: VecDeque<Ctl>,
    stream: Option<mpsc::Sender<Bytes>>,
    received: u64,
}

impl Relay {
    /// Moves control messages already sent into the queue (or the stream slot), so that they are
    /// ordered before frames that answer later requests.
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
            Ctl::Begin(tx) if self.queue.is_empty() => self.stream = Some(tx),
            other => self.queue.push_back(other),
        }
    }

    /// Applies every queued emit/release whose replies have all been relayed.
    async fn settle(&mut self) {
        while let Some(front) = self.queue.front() {
            match front {
                Ctl::Emit { after, .. } | Ctl::Release { after } if *after > self.received => {
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
                None => return,
            }
        }
    }
}

async fn relay(
    mut rd: OwnedReadHalf,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    addr: Arc<str>,
) -> UpstreamError {
    let mut r = Relay {
        ctl,
        queue: VecDeque::new(),
        stream: None,
        received: 0,
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        r.settle().await;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            c = r.ctl.recv() => match c {
                Some(c) => r.take(c),
                None => return UpstreamError::Closed { addr },
            },
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
                    let Some(stream) = &r.stream else {
                        return UpstreamError::Protocol { addr, detail: "reply with no request waiting for it".into() };
                    };
                    // A client that went away drops its stream: the connection is then dropped too.
                    if stream.send(bytes).await.is_err() {
                        return UpstreamError::Closed { addr };
                    }
                    if f.kind != ReplyKind::Push {
                        r.received += 1;
                    }
                }
            }
        }
    }
}
