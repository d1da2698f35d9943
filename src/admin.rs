//! The admin HTTP listener: `/startupz`, `/livez`, `/readyz`, `/healthz/upstream`, `/metrics` and
//! `POST /quitquitquit`, on its own port.

use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Whether cacheside should receive traffic: it is listening, warm-up (when awaited) is done and
/// no drain has begun. Upstream health is not part of it: every sidecar of a fleet shares one
/// Redis, so a Redis outage or failover would take every pod out of its Service at once, while
/// cacheside still answers hot hits and mapped reads from PostgreSQL, and answers the rest
/// promptly with an error the app already handles. Upstream health is `/healthz/upstream` and
/// `cacheside_upstream_connections`.
pub struct Readiness {
    /// Set once the client listener's accept loop runs: `/startupz` can turn 200.
    listening: AtomicBool,
    draining: AtomicBool,
    /// Set while `[[warm]]` runs, when readiness waits for it (`postgres.wait_for_warm`).
    warming: AtomicBool,
    upstream: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Readiness {
    pub fn new(upstream: Option<Arc<dyn Fn() -> bool + Send + Sync>>) -> Self {
        Self {
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            warming: AtomicBool::new(false),
            upstream,
        }
    }

    pub fn for_upstream(upstream: Option<&Arc<crate::server::Ctx>>) -> Self {
        let check = upstream.cloned().map(|ctx| {
            Arc::new(move || ctx.upstream.as_ref().is_none_or(|u| u.is_up()))
                as Arc<dyn Fn() -> bool + Send + Sync>
        });
        Self::new(check)
    }

    pub fn set_warming(&self, on: bool) {
        self.warming.store(on, Ordering::Relaxed);
    }

    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Listening, and warm-up done when readiness waits for it. It stays true through a drain:
    /// the startupProbe has done its job by then, and a kubelet restarting the container
    /// mid-drain would cut the replies being delivered.
    pub fn is_started(&self) -> bool {
        self.listening.load(Ordering::Relaxed) && !self.warming.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.is_started() && !self.draining.load(Ordering::Relaxed)
    }

    /// Whether a shared upstream connection is up (true when there is no upstream).
    pub fn upstream_up(&self) -> bool {
        self.upstream.as_ref().is_none_or(|f| f())
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain", body)
}

/// What the admin server needs to answer a request.
pub struct Admin {
    pub ready: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Fired by `POST /quitquitquit`.
    pub quit: Arc<Trigger>,
}

fn route(method: &Method, path: &str, peer: IpAddr, admin: &Admin) -> Response<Full<Bytes>> {
    let ready = &admin.ready;
    if path == "/quitquitquit" {
        if method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        // The admin port is reachable from the pod network (probes); stopping the sidecar is
        // for the pod's own containers, as linkerd's /shutdown is.
        if !peer.is_loopback() {
            return text(StatusCode::FORBIDDEN, "only from loopback\n");
        }
        tracing::info!("POST /quitquitquit received, draining");
        admin.quit.fire();
        return text(StatusCode::OK, "draining\n");
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match path {
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/startupz" if ready.is_started() => text(StatusCode::OK, "started\n"),
        "/startupz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "/readyz" if ready.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/healthz/upstream" if ready.upstream_up() => text(StatusCode::OK, "upstream up\n"),
        "/healthz/upstream" => text(StatusCode::SERVICE_UNAVAILABLE, "upstream down\n"),
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            admin.metrics.render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /startupz, /livez, /readyz, /healthz/upstream, /metrics, POST /quitquitquit\n",
        ),
    }
}

/// Serves admin requests until `shutdown` turns true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = route(req.method(), req.uri().path(), peer.ip(), &admin);
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        Admin {
            ready: Arc::new(Readiness::new(None)),
            metrics: Arc::new(Metrics::new(prometheus::Registry::new())),
            quit: Arc::new(Trigger::default()),
        }
    }

    fn status(a: &Admin, method: Method, path: &str, peer: [u8; 4]) -> u16 {
        route(&method, path, IpAddr::from(peer), a)
            .status()
            .as_u16()
    }

    #[test]
    fn startupz_turns_200_once_listening_and_stays_200_through_a_drain() {
        let a = admin();
        a.ready.set_warming(true);
        assert_eq!(status(&a, Method::GET, "/startupz", [127, 0, 0, 1]), 503);
        a.ready.set_listening();
        assert_eq!(
            status(&a, Method::GET, "/startupz", [127, 0, 0, 1]),
            503,
            "warming"
        );
        assert_eq!(status(&a, Method::GET, "/readyz", [127, 0, 0, 1]), 503);
        a.ready.set_warming(false);
        assert_eq!(status(&a, Method::GET, "/startupz", [127, 0, 0, 1]), 200);
        assert_eq!(status(&a, Method::GET, "/readyz", [127, 0, 0, 1]), 200);
        a.ready.start_drain();
        assert_eq!(status(&a, Method::GET, "/readyz", [127, 0, 0, 1]), 503);
        assert_eq!(status(&a, Method::GET, "/startupz", [127, 0, 0, 1]), 200);
        assert_eq!(status(&a, Method::GET, "/livez", [127, 0, 0, 1]), 200);
    }

    #[tokio::test]
    async fn quitquitquit_is_a_loopback_post_that_fires_the_trigger() {
        let a = admin();
        assert_eq!(
            status(&a, Method::GET, "/quitquitquit", [127, 0, 0, 1]),
            405
        );
        assert_eq!(
            status(&a, Method::POST, "/quitquitquit", [10, 1, 2, 3]),
            403
        );
        assert_eq!(status(&a, Method::POST, "/livez", [127, 0, 0, 1]), 405);
        assert_eq!(
            status(&a, Method::POST, "/quitquitquit", [127, 0, 0, 1]),
            200
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), a.quit.fired())
            .await
            .expect("the POST fired the drain");
    }
}
