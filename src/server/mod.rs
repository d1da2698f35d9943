//! The client-facing RESP listener: accept loop with a connection limit, one session per client,
//! and the drain on shutdown.

mod queue;
mod session;
mod writer;

pub use writer::Out;

use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::router::Router;
use crate::tier::redis::Upstream;
use crate::transport::{ListenerTls, Stream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// What every session shares.
pub struct Ctx {
    pub router: Router,
    pub upstream: Option<Arc<Upstream>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub max_query_buffer: usize,
    pub max_pending_replies: usize,
    pub max_clients: usize,
    /// Set when the listener speaks TLS.
    pub tls: Option<ListenerTls>,
    next_id: AtomicU64,
}

impl Ctx {
    pub fn new(
        router: Router,
        upstream: Option<Arc<Upstream>>,
        metrics: Arc<Metrics>,
        limits: Limits,
        max_query_buffer: usize,
        max_pending_replies: usize,
        max_clients: usize,
    ) -> Self {
        Self {
            router,
            upstream,
            metrics,
            limits,
            max_query_buffer,
            max_pending_replies,
            max_clients,
            tls: None,
            next_id: AtomicU64::new(1),
        }
    }

    /// Makes the listener speak TLS with this certificate.
    pub fn with_tls(mut self, tls: Option<ListenerTls>) -> Self {
        self.tls = tls;
        self
    }

    fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts clients until `shutdown` turns true, then waits up to `grace` for sessions to finish
/// the replies they owe.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let limit = Arc::new(Semaphore::new(ctx.max_clients));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics.client_rejections_max_clients.inc();
            tokio::spawn(reject(socket, ctx.tls.clone()));
            continue;
        };
        socket.set_nodelay(true).ok();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            ctx.metrics.client_connections.inc();
            ctx.metrics.client_connections_total.inc();
            // A bug in one session closes that client only; it is counted, and the gauge and
            // the connection permit are given back all the same.
            let session = tokio::spawn(run_client(socket, peer, ctx.clone(), shutdown));
            if let Err(e) = session.await {
                if e.is_panic() {
                    ctx.metrics.session_panics.inc();
                    tracing::error!(%peer, "client session panicked; closed that client");
                }
            }
            ctx.metrics.client_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    let all = ctx.max_clients as u32;
    let drained = tokio::time::timeout(grace, limit.acquire_many(all))
        .await
        .is_ok();
    if drained {
        tracing::info!("all client connections drained");
    } else {
        tracing::warn!(
            open = ctx.max_clients - limit.available_permits(),
            "grace period over with client connections still open"
        );
    }
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wraps an accepted socket in TLS when the listener speaks it.
async fn accept(socket: TcpStream, tls: Option<&ListenerTls>) -> std::io::Result<Stream> {
    match tls {
        None => Ok(Stream::Tcp(socket)),
        Some(tls) => tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(socket))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?,
    }
}

async fn reject(socket: TcpStream, tls: Option<ListenerTls>) {
    let Ok(mut stream) = accept(socket, tls.as_ref()).await else {
        return;
    };
    let _ = stream
        .write_all(&crate::error::reply_bytes(
            &crate::error::ProxyError::MaxClients,
        ))
        .await;
    let _ = stream.shutdown().await;
}

async fn run_client(
    socket: TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    use std::os::fd::AsRawFd;
    let local = socket.local_addr().unwrap_or(peer);
    let fd = socket.as_raw_fd();
    let stream = match accept(socket, ctx.tls.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "client TLS handshake failed");
            return;
        }
    };
    let (rd, wr) = stream.into_split();
    let (out_tx, out_rx) = queue::pair(ctx.max_pending_replies);
    // The writer runs in the session's task, not its own: handing it a reply wakes no other
    // task (and no other thread), and a request read and answered at once costs one wake-up
    // (see `queue.rs`).
    let writer = writer::run(wr, out_rx, ctx.clone());
    let upstream = ctx.upstream.clone();
    let link = out_tx.link();
    let mut s = session::Session::new(ctx, rd, out_tx, (peer, local, fd));
    tracing::debug!(client = s.client_id(), %peer, "client connected");
    let id = s.client_id();
    let reading = async move {
        let stop = s.serve(&mut shutdown).await;
        if !stop.graceful {
            // Nobody is left to read what a pinned connection would still relay: closed, unless
            // it holds nothing of this client's (then kept for another).
            s.unpin();
        }
        // Closing the reply queue lets the writer deliver what is queued, then end. The pinned
        // connection (if any) lives until then so its replies get through.
        let (pinned_holder, out_dropped) = s.into_parts();
        drop(out_dropped);
        pinned_holder
    };
    let pinned_holder = queue::Together::new(link, reading, writer).await;
    // Kept for another client if it holds nothing of this one's; closed otherwise.
    if let (Some(Some(p)), Some(u)) = (pinned_holder, upstream) {
        u.unpin(p);
    }
    tracing::debug!(client = id, "client disconnected");
}
