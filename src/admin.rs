//! The admin HTTP listener: `/livez`, `/readyz`, `/healthz/upstream` and `/metrics`, on its own
//! port.

use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
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
    draining: AtomicBool,
    /// Set while `[[warm]]` runs, when readiness waits for it (`postgres.wait_for_warm`).
    warming: AtomicBool,
    upstream: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Readiness {
    pub fn new(upstream: Option<Arc<dyn Fn() -> bool + Send + Sync>>) -> Self {
        Self {
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

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.warming.load(Ordering::Relaxed)
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

fn route(
    req: &Request<hyper::body::Incoming>,
    ready: &Readiness,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    match req.uri().path() {
        "/livez" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if ready.is_ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/healthz/upstream" if ready.upstream_up() => {
            respond(StatusCode::OK, "text/plain", "upstream up\n")
        }
        "/healthz/upstream" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "upstream down\n",
        ),
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /livez, /readyz, /healthz/upstream, /metrics\n",
        ),
    }
}

/// Serves admin requests until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
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
        let ready = ready.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = route(&req, &ready, &metrics);
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
