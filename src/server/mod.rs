//! The client-facing RESP listener: accept loop with a connection limit, one session per client,
//! and the drain on shutdown.

mod session;
mod writer;

pub use writer::Out;

use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::router::Router;
use crate::tier::redis::Upstream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// What every session shares.
pub struct Ctx {
    pub router: Router,
    pub upstream: Option<Arc<Upstream>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub max_query_buffer: usize,
    pub max_pending_replies: usize,
    pub max_clients: usize,
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
            next_id: AtomicU64::new(1),
        }
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
            tokio::spawn(reject(socket));
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

async fn reject(mut socket: TcpStream) {
    let _ = socket
        .write_all(&crate::error::reply_bytes(
            &crate::error::ProxyError::MaxClients,
        ))
        .await;
    let _ = socket.shutdown().await;
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
    let (rd, wr) = socket.into_split();
    let (out_tx, out_rx) = mpsc::channel(ctx.max_pending_replies);
    let writer = tokio::spawn(writer::run(wr, out_rx, ctx.clone()));
    let mut s = session::Session::new(ctx, rd, out_tx, (peer, local, fd));
    tracing::debug!(client = s.client_id(), %peer, "client connected");
    let stop = s.serve(&mut shutdown).await;
    if !stop.graceful {
        // Nobody is left to read what a pinned connection would still relay.
        s.drop_pinned();
    }
    let id = s.client_id();
    // Dropping the session closes the reply queue; the writer delivers what is queued, then
    // ends. The pinned connection (if any) lives until then so its replies get through.
    let (pinned_holder, out_dropped) = s.into_parts();
    drop(out_dropped);
    if let Err(e) = writer.await {
        if e.is_panic() {
            // Counted as a session panic: the session task ends normally.
            std::panic::resume_unwind(e.into_panic());
        }
    }
    drop(pinned_holder);
    tracing::debug!(client = id, "client disconnected");
}
