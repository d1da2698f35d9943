//! The request lifecycle in one place: for each client command, decide where it is answered:
//! by cacheside itself (connection state lives in the proxy), on a shared upstream connection,
//! or on the client's pinned connection; and track the state that pinning depends on.

pub mod clients;
pub mod fill;
mod local;
mod operator;
mod state;
#[cfg(test)]
mod tests;

use crate::config::validate::ClientAuth;
use crate::error::ProxyError;
use crate::loader::Loader;
use crate::metrics::InvalidationSource;
use crate::protocol::command::{self, CommandInfo, Local, Pin, Route};
use crate::protocol::Request;
use crate::strategy::Strategies;
use crate::tier::hot::{HotTier, WriteGuard};
use crate::tier::store::Store;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use state::{introspection, parse_db};
pub use state::{ClientState, ReplyMode};

fn client_sub_is_sticky(req: &Request) -> bool {
    ["TRACKING", "CACHING", "NO-EVICT", "NO-TOUCH", "REPLY"]
        .iter()
        .any(|s| req.arg_is(1, s))
}

/// Where one command goes.
#[derive(Debug)]
pub enum Decision {
    /// A shared upstream connection.
    Forward,
    /// The client's pinned connection (opened and/or begun if needed).
    Pinned,
    /// The pinned connection, with these bytes instead of the request's (HELLO without AUTH,
    /// a counter's INCR).
    PinnedRewrite(Bytes),
    /// A shared upstream connection, with these bytes instead of the request's (a counter's
    /// INCR as its script).
    Rewrite(crate::strategy::Rewritten),
    /// Answered by cacheside.
    Reply(Bytes),
    /// +OK, then close.
    Quit,
    /// RESET: leave any pinned connection, reset state, +RESET.
    Reset,
    /// An error reply (or a close), mapped by `error::to_reply`.
    Fail(ProxyError),
    /// Answered from the hot tier: the reply is in the buffer given to `route`.
    Cached,
    /// A hot-tier miss: read the value and its TTL upstream, then store it.
    Fill(Box<fill::FillPlan>),
    /// INFO: forwarded, with cacheside's own section appended to the reply.
    Info,
    /// Standalone mode: answered by the in-process store.
    Store,
    /// Answered by work cacheside runs itself (a write-through): the session starts it at
    /// dispatch and awaits it before the client's next request.
    Future(crate::strategy::Pending),
}

/// A write's hold on the cached keys it touches: evicted when it is sent, kept out of the tier
/// while it is in flight, and evicted again when its reply arrives (see `HotTier::begin_write`).
pub type Invalidation = WriteGuard;

/// The per-process routing policy.
pub struct Router {
    auth: Option<ClientAuth>,
    has_upstream: bool,
    hot: Option<Arc<HotTier>>,
    /// Standalone mode (no upstream): the in-process store.
    store: Option<Arc<Store>>,
    /// Read-through mappings, when `[[mapping]]`s are configured.
    loader: Option<Arc<Loader>>,
    /// The connected clients, for CLIENT LIST/INFO/KILL.
    clients: Arc<clients::Registry>,
    /// Set once the upstream runs as a Redis Cluster (which has only database 0).
    cluster: Arc<AtomicBool>,
    /// Write strategies (counters, write-behind): commands they own are rewritten.
    strategies: Option<Arc<Strategies>>,
}

impl Router {
    pub fn new(auth: Option<ClientAuth>, has_upstream: bool, hot: Option<Arc<HotTier>>) -> Self {
        Self {
            auth,
            has_upstream,
            hot,
            store: None,
            loader: None,
            clients: Arc::default(),
            cluster: Arc::default(),
            strategies: None,
        }
    }

    /// Write strategies: the commands they own are sent as their scripts.
    pub fn with_strategies(mut self, strategies: Arc<Strategies>) -> Self {
        self.strategies = Some(strategies);
        self
    }

    /// The upstream's flag that says it is a Redis Cluster.
    pub fn with_cluster_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cluster = flag;
        self
    }

    /// The connected clients.
    pub fn clients(&self) -> &Arc<clients::Registry> {
        &self.clients
    }

    /// Read-through: misses of mapped keys are loaded from PostgreSQL.
    pub fn with_loader(mut self, loader: Arc<Loader>) -> Self {
        self.loader = Some(loader);
        self
    }

    pub fn loader(&self) -> Option<&Arc<Loader>> {
        self.loader.as_ref()
    }

    /// For a write: the commands that make loads in flight of the mapped keys it touches give
    /// way, sent in the same pipeline right after the write.
    pub fn write_cleanup(&self, info: &CommandInfo, req: &Request) -> Vec<Bytes> {
        let Some(loader) = &self.loader else {
            return Vec::new();
        };
        if !info.is_write() {
            return Vec::new();
        }
        let deleting = matches!(info.name, "DEL" | "UNLINK");
        info.key_indices(req)
            .into_iter()
            .filter_map(|i| loader.write_cleanup(req.arg(i), deleting))
            .collect()
    }

    /// Standalone mode: commands the store knows are answered by it.
    pub fn with_store(mut self, store: Arc<Store>) -> Self {
        self.store = Some(store);
        self
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    pub fn hot(&self) -> Option<&Arc<HotTier>> {
        self.hot.as_ref()
    }

    /// For a write: evicts the cached keys it touches now, and returns them so they are evicted
    /// again when its reply arrives. `None` when it touches nothing the tier may hold.
    pub async fn invalidate(&self, info: &CommandInfo, req: &Request) -> Option<Invalidation> {
        let hot = self.hot.as_ref()?;
        if info.clears_all() {
            let guard = hot.begin_write(Vec::new(), true);
            hot.invalidate_all(InvalidationSource::Flush).await;
            return Some(guard);
        }
        if !info.is_write() {
            return None;
        }
        let keys: Vec<Bytes> = info
            .key_indices(req)
            .into_iter()
            .filter(|&i| hot.caches(req.arg(i)))
            .map(|i| req.arg_bytes(i))
            .collect();
        if keys.is_empty() {
            return None;
        }
        let guard = hot.begin_write(keys, false);
        for k in guard.keys() {
            hot.invalidate(k, InvalidationSource::LocalWrite).await;
        }
        Some(guard)
    }

    pub fn needs_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Decides where `req` goes. `pinned` is true while the client's pinned connection is the
    /// one carrying its commands.
    /// Decides where `req` is answered. A hot-tier hit is appended to `hits` and answered
    /// `Decision::Cached`.
    pub async fn route(
        &self,
        st: &mut ClientState,
        req: &Request,
        pinned: bool,
        hits: &mut BytesMut,
    ) -> (Decision, &'static CommandInfo) {
        let info = command::lookup(req.arg(0));
        // Answered now, in request order; in a transaction it is queued upstream like any
        // command Redis does not know (and EXEC then fails, as it would there).
        if info.route == Route::Local(Local::Cacheside) && st.authenticated && !st.in_multi {
            return (operator::run(self, st, req).await, info);
        }
        let mut decision = self.decide(st, info, req, pinned);
        if let (Some(loader), Decision::Forward | Decision::Pinned) = (&self.loader, &decision) {
            let hot = self.hot.as_ref();
            match crate::strategy::plan(loader, hot, info, req, pinned, st.id, st.proto) {
                Some(crate::strategy::Planned::Refuse(e)) => return (Decision::Fail(e), info),
                Some(crate::strategy::Planned::Run(f)) => return (Decision::Future(f), info),
                None => {}
            }
        }
        if let Some(strategies) = &self.strategies {
            if matches!(decision, Decision::Forward | Decision::Pinned) {
                if let Some(rewritten) = strategies.rewrite(info, req) {
                    return match (rewritten, decision) {
                        (Err(e), _) => (Decision::Fail(e), info),
                        (Ok(r), Decision::Forward) => (Decision::Rewrite(r), info),
                        (Ok(r), _) => (Decision::PinnedRewrite(r.bytes), info),
                    };
                }
            }
        }
        if matches!(decision, Decision::Forward) && (self.hot.is_some() || self.loader.is_some()) {
            if info.is_read() {
                match fill::read(
                    self.hot.as_deref(),
                    self.loader.as_deref(),
                    info.name,
                    req,
                    st.proto,
                    &mut st.fence,
                    hits,
                )
                .await
                {
                    fill::Outcome::Hit => decision = Decision::Cached,
                    fill::Outcome::Miss(plan) => decision = Decision::Fill(plan),
                    fill::Outcome::Skip => {}
                }
            } else if info.name == "INFO" && self.hot.is_some() {
                decision = Decision::Info;
            }
        }
        (decision, info)
    }

    fn decide(
        &self,
        st: &mut ClientState,
        info: &'static CommandInfo,
        req: &Request,
        pinned: bool,
    ) -> Decision {
        if !st.authenticated
            && !matches!(
                info.route,
                Route::Local(Local::Auth | Local::Hello | Local::Quit)
            )
        {
            return Decision::Fail(ProxyError::NoAuth);
        }
        match info.route {
            Route::Local(Local::Auth) => local::auth(self.auth.as_ref(), st, req),
            Route::Local(Local::Quit) => Decision::Quit,
            Route::Local(Local::Reset) => Decision::Reset,
            Route::Local(Local::Hello) => local::hello(self.auth.as_ref(), st, req, pinned),
            Route::Local(Local::Client)
                if req.arg_is(1, "TRACKING") && !(pinned && st.in_multi) =>
            {
                self.clients.redirect(req)
            }
            Route::Local(Local::Client) if pinned && !st.in_multi && introspection(req) => {
                self.introspect(st, req)
            }
            // What Redis Cluster answers: it has database 0 only.
            Route::Local(Local::Select)
                if !st.in_multi
                    && self.cluster.load(Ordering::Acquire)
                    && parse_db(req.arg(1)).is_some_and(|db| db != 0)
                    && req.argc() == 2 =>
            {
                Decision::Fail(ProxyError::Command(
                    "ERR SELECT is not allowed in cluster mode".into(),
                ))
            }
            _ if pinned => match info.route {
                Route::Local(Local::Select)
                    if parse_db(req.arg(1)).is_none() && req.argc() == 2 =>
                {
                    Decision::Fail(ProxyError::Command(
                        "ERR value is not an integer or out of range".into(),
                    ))
                }
                _ => Decision::Pinned,
            },
            // Not subscribed (or it would be pinned): answered as Redis answers it, because the
            // reply is one frame per channel (a push in RESP3) that a shared connection must
            // never see.
            Route::Forward
                if matches!(info.name, "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE") =>
            {
                local::unsubscribe(st, info.name, req)
            }
            Route::Local(Local::Ping) => local::ping(st, req),
            Route::Local(Local::Cacheside) => Decision::Fail(ProxyError::Command(
                "ERR CACHESIDE is answered by cacheside itself, outside transactions".into(),
            )),
            Route::Local(Local::Echo) => local::echo(req),
            Route::Local(Local::Select) => match local::select(st, req) {
                Some(d) => d,
                None => self.upstream_or_fail(Decision::Pinned, req),
            },
            Route::Local(Local::Client) if introspection(req) => self.introspect(st, req),
            Route::Local(Local::Client) => match local::client(st, req) {
                Some(d) => d,
                None if client_sub_is_sticky(req) => self.upstream_or_fail(Decision::Pinned, req),
                None => self.upstream_or_fail(Decision::Forward, req),
            },
            Route::Pin(Pin::MaybeBlocking) => {
                let blocking = (1..req.argc()).any(|i| req.arg_is(i, "BLOCK"));
                self.upstream_or_fail(
                    if blocking {
                        Decision::Pinned
                    } else {
                        Decision::Forward
                    },
                    req,
                )
            }
            Route::Pin(_) => self.upstream_or_fail(Decision::Pinned, req),
            Route::Forward => self.upstream_or_fail(Decision::Forward, req),
        }
    }

    /// CLIENT LIST, INFO and KILL (see [`introspection`]), about cacheside's own clients.
    fn introspect(&self, st: &ClientState, req: &Request) -> Decision {
        if req.arg_is(1, "LIST") {
            self.clients.list(st, req)
        } else if req.arg_is(1, "INFO") {
            self.clients.info(st)
        } else {
            self.clients.kill(st, req)
        }
    }

    fn upstream_or_fail(&self, d: Decision, req: &Request) -> Decision {
        if self.has_upstream {
            d
        } else if self.store.is_some() && Store::supports(req.arg(0)) {
            Decision::Store
        } else {
            Decision::Fail(ProxyError::NoUpstream {
                command: String::from_utf8_lossy(req.arg(0)).to_ascii_uppercase(),
            })
        }
    }
}
