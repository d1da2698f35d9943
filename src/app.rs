//! Wiring: builds every component from validated config, runs the listeners, and runs the
//! shutdown sequence (not ready -> keep accepting for min_drain -> stop accepting -> deliver
//! in-flight replies -> exit).

use crate::admin::{self, Admin, Readiness};
use crate::config::Validated;
use crate::loader::{Database, DbError, Loader};
use crate::metrics::Metrics;
use crate::protocol::Proto;
use crate::router::Router;
use crate::server::{self, Ctx};
use crate::shutdown::Trigger;
use crate::strategy::behind::Behind;
use crate::strategy::counter::Counters;
use crate::strategy::Strategies;
use crate::tier::hot::{coherence, HotTier};
use crate::tier::redis::Upstream;
use crate::tier::store::{Policy, Store};
use crate::transport::Roots;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Prepares every mapping's query against the database, before anything binds: a query that
/// Postgres rejects is a configuration error naming its mapping. An unreachable database is
/// not (it may come up later): the queries are then prepared on first use.
pub async fn check_mappings(cfg: &Validated) -> Result<(), crate::config::ConfigError> {
    let Some(db) = cfg.postgres.clone() else {
        return Ok(());
    };
    let metrics = Metrics::new(prometheus::Registry::new());
    let db =
        Database::new(db).map_err(|e| crate::config::ConfigError::invalid("postgres.url", e))?;
    for (i, c) in cfg.counters.iter().enumerate() {
        if let Err(DbError::Query(msg)) = db.prepare(&c.flush_query).await {
            return Err(crate::config::ConfigError::invalid(
                format!("counter[{i}].flush_query"),
                format!("counter {:?}: {msg}", c.name),
            ));
        }
    }
    for b in &cfg.write_behind {
        if let Err(DbError::Query(msg)) = db.prepare(&b.write_query).await {
            let i = cfg
                .mappings
                .iter()
                .position(|m| m.name == b.mapping)
                .unwrap_or(0);
            return Err(crate::config::ConfigError::invalid(
                format!("mapping[{i}].write_query"),
                format!("mapping {:?}: {msg}", b.mapping),
            ));
        }
    }
    let loader = Loader::new(cfg.mappings.clone(), db, None, cfg.lease, &metrics);
    match loader.prepare_all().await {
        Ok(()) => Ok(()),
        Err((mapping, DbError::Query(msg))) => {
            let i = cfg
                .mappings
                .iter()
                .position(|m| m.name == mapping)
                .unwrap_or(0);
            Err(crate::config::ConfigError::invalid(
                format!("mapping[{i}].query"),
                format!("mapping {mapping:?}: {msg}"),
            ))
        }
        Err((mapping, e)) => {
            tracing::warn!(mapping, error = %e, "database not reachable at start; mappings will be prepared on first use");
            Ok(())
        }
    }
}

/// Binds the configured addresses and serves until `shutdown` resolves; reloads the config
/// from `reload` on SIGHUP and when its file changes.
pub async fn run(
    cfg: Validated,
    shutdown: impl Future<Output = ()> + Send,
    reload: Option<crate::reload::Source>,
) -> Result<(), AppError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })
    };
    let listener = bind(cfg.listen).await?;
    let admin = match cfg.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    serve_with(listener, admin, cfg, shutdown, reload).await;
    Ok(())
}

/// Serves on listeners the caller bound (tests bind `127.0.0.1:0`) until `shutdown` resolves or
/// `POST /quitquitquit` arrives, then drains within the configured grace period.
pub async fn serve(
    listener: TcpListener,
    admin: Option<TcpListener>,
    cfg: Validated,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_with(listener, admin, cfg, shutdown, None).await;
}

/// `serve`, reloading the config from `reload` (see [`crate::reload`]).
pub async fn serve_with(
    listener: TcpListener,
    admin: Option<TcpListener>,
    cfg: Validated,
    shutdown: impl Future<Output = ()> + Send,
    reload: Option<crate::reload::Source>,
) {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()));
    let upstream = match cfg.upstream.clone() {
        Some(s) => Some(Upstream::start(s, metrics.clone()).await),
        None => None,
    };
    match &upstream {
        Some(u) => {
            tracing::info!(upstream = %u.settings().url, connections = u.settings().connections, iam_user = u.settings().iam.as_ref().map(|i| i.settings().user_id.as_str()), "upstream configured");
            if let Some(tls) = &u.settings().tls {
                match tls.roots() {
                    Roots::Unverified => tracing::warn!(
                        "upstream.tls_insecure_skip_verify is true: the upstream's certificate is NOT verified (anyone on the path can read and change traffic); for tests only"
                    ),
                    roots => tracing::info!(?roots, client_cert = tls.has_client_cert(), "upstream TLS"),
                }
            }
        }
        None => tracing::info!("no upstream configured (upstream.url): standalone mode"),
    }
    // On a cluster (`mode = "cluster"`, or found by `auto`) the hot tier is kept coherent by
    // broadcast on a shard channel, read-through's leases and markers live in their key's
    // slot, and counters and write-behind keep their bookkeeping and queues per slot.
    let hot = match &upstream {
        Some(u) if !cfg.hot.rules.is_empty() => {
            let tier = HotTier::new(&cfg.hot, metrics.clone());
            let publisher = u.clone();
            tier.set_publisher(Box::new(move |cmd| {
                // Queued now; the future only awaits the reply.
                let rx = publisher.send(Proto::Resp2, rand::random::<u32>() as u64, cmd, 1);
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok(r)) if !r.starts_with(b"-") => Some(r),
                        _ => None,
                    }
                })
            }));
            coherence::spawn(
                tier.clone(),
                u.clone(),
                cfg.hot.coherence,
                cfg.hot.channel.clone(),
            );
            tracing::info!(
                rules = cfg.hot.rules.len(),
                max_bytes = cfg.hot.max_bytes,
                coherence = ?cfg.hot.coherence,
                "hot tier enabled"
            );
            Some(tier)
        }
        _ => None,
    };
    let mut router = Router::new(cfg.client_auth.clone(), upstream.is_some(), hot);
    if let Some(u) = &upstream {
        router = router.with_cluster_flag(u.cluster_flag());
    }
    if let Some(db) = cfg.postgres.clone() {
        let notify = db.notify.clone();
        match Database::new(db) {
            Ok(db) => {
                let loader = Loader::new(
                    cfg.mappings.clone(),
                    db,
                    upstream.clone(),
                    cfg.lease,
                    &metrics,
                );
                match loader.prepare_all().await {
                    Ok(()) => tracing::info!(
                        mappings = cfg.mappings.len(),
                        "read-through mappings prepared"
                    ),
                    Err((mapping, e)) => {
                        tracing::warn!(mapping, error = %e, "mapping not prepared yet; it will be on first use")
                    }
                }
                if let Some(tier) = router.hot().cloned() {
                    loader.on_unfilled(move |key| tier.forget(key));
                }
                let loader = Arc::new(loader);
                if let Some(channel) = notify {
                    // Bypassed until the LISTEN connection is up: changes before it are unknown.
                    if let Some(tier) = router.hot() {
                        tier.set_db_listening(false).await;
                    }
                    tokio::spawn(crate::loader::notify::listen(
                        loader.clone(),
                        router.hot().cloned(),
                        channel,
                    ));
                }
                loader.start_refresher();
                router = router.with_loader(loader);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build the PostgreSQL pool; mappings are disabled")
            }
        }
    }
    let behind = !cfg.write_behind.is_empty();
    let strategies = match (&upstream, &cfg.postgres) {
        (Some(u), Some(db)) if !cfg.counters.is_empty() || behind => {
            match Database::new(db.clone()) {
                Ok(db) => {
                    let s = Strategies {
                        counters: (!cfg.counters.is_empty()).then(|| {
                            Counters::new(
                                cfg.counters.clone(),
                                metrics.registry(),
                                u.cluster_flag(),
                            )
                        }),
                        behind: behind.then(|| {
                            Behind::new(
                                cfg.write_behind.clone(),
                                metrics.registry(),
                                u.cluster_flag(),
                            )
                        }),
                    };
                    let s = Arc::new(s);
                    router = router.with_strategies(s.clone());
                    tracing::info!(
                        counters = cfg.counters.len(),
                        write_behind = if behind { cfg.write_behind.len() } else { 0 },
                        "write strategies enabled"
                    );
                    Some((s, u.clone(), Arc::new(db)))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the PostgreSQL pool; counters and write-behind are disabled");
                    None
                }
            }
        }
        _ => None,
    };
    if upstream.is_none() {
        let policy = if cfg.hot.lru {
            Policy::Lru
        } else {
            Policy::TinyLfu
        };
        let store = Arc::new(Store::new(cfg.hot.max_bytes, policy));
        let s = store.clone();
        let m = metrics.clone();
        metrics.on_scrape(move || {
            m.cache.size_bytes.set(s.weighted_size() as i64);
            m.cache.entries.set(s.entry_count() as i64);
        });
        tracing::info!(
            max_bytes = cfg.hot.max_bytes,
            "standalone mode: the in-process store answers string commands"
        );
        router = router.with_store(store);
    }
    let ctx = Arc::new(
        Ctx::new(
            router,
            upstream,
            metrics.clone(),
            cfg.limits,
            cfg.max_query_buffer,
            cfg.max_pending_replies,
            cfg.max_clients,
        )
        .with_tls(cfg.listen_tls.clone()),
    );
    let ready = Arc::new(Readiness::for_upstream(Some(&ctx)));
    if let (Some(loader), false) = (ctx.router.loader().cloned(), cfg.warm.is_empty()) {
        ready.set_warming(cfg.wait_for_warm);
        let (warm, ready) = (cfg.warm.clone(), ready.clone());
        tokio::spawn(async move {
            for (mapping, query) in warm {
                match loader.warm(&mapping, &query).await {
                    Ok(n) => tracing::info!(mapping, keys = n, "warm-up done"),
                    Err(e) => tracing::warn!(mapping, error = %e, "warm-up failed"),
                }
            }
            ready.set_warming(false);
        });
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let quit = Arc::new(Trigger::default());
    if let Some(src) = reload {
        let reloader = crate::reload::Reloader::new(
            src.load,
            &cfg,
            ctx.router.hot().cloned(),
            ctx.router.loader().cloned(),
            metrics.clone(),
        );
        crate::reload::watch::spawn(src.file, reloader, stop_rx.clone());
    }

    watch_tls_files(&cfg, &metrics);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, auth = cfg.client_auth.is_some(), tls = cfg.listen_tls.is_some(), "listening for Redis clients");
    }
    // min_drain is spent inside the grace period (validation keeps it shorter).
    let drain = cfg.grace_period.saturating_sub(cfg.min_drain);
    let worker_stop = stop_rx.clone();
    let server_task = tokio::spawn(server::serve(listener, ctx, stop_rx, drain));
    // Before the admin server answers its first probe: the socket is bound and the accept loop
    // spawned, so a client that connects now is served.
    ready.set_listening();
    let admin_task = admin.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "admin listening (/startupz /livez /readyz /metrics)");
        }
        let admin = Admin {
            ready: ready.clone(),
            metrics: metrics.clone(),
            quit: quit.clone(),
        };
        tokio::spawn(admin::serve(l, Arc::new(admin), admin_stop_rx))
    });
    let mut workers = Vec::new();
    if let Some((s, u, db)) = strategies {
        if let Some(c) = &s.counters {
            workers.push(crate::strategy::counter::spawn(
                c.clone(),
                u.clone(),
                db.clone(),
                worker_stop.clone(),
            ));
        }
        if let Some(b) = &s.behind {
            workers.extend(crate::strategy::behind::spawn(
                b.clone(),
                u,
                db,
                worker_stop.clone(),
            ));
        }
    }

    tokio::select! {
        () = shutdown => {}
        () = quit.fired() => {}
    }
    // Not ready at once, but still accepting: endpoints and load balancers take a moment to
    // stop sending, and a client that connects meanwhile is served rather than refused.
    ready.start_drain();
    if !cfg.min_drain.is_zero() {
        tracing::info!(min_drain = ?cfg.min_drain, "not ready; still accepting clients for shutdown.min_drain");
        tokio::time::sleep(cfg.min_drain).await;
    }
    let _ = stop_tx.send(true);
    let _ = server_task.await;
    // The counters' last flush, after the clients' last INCRs; bounded like the drain.
    let _ = tokio::time::timeout(cfg.grace_period, async {
        for w in workers {
            let _ = w.await;
        }
    })
    .await;
    // The admin server outlives the drain, so /livez and /metrics answer until the end.
    let _ = admin_stop_tx.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!("stopped");
}

/// `cacheside db install-notify`: the SQL of the row-change triggers for the configured
/// mappings; run in `postgres.url`'s database unless `print_only`.
pub async fn install_notify(v: &Validated, print_only: bool) -> Result<String, String> {
    let tables: Vec<(String, Vec<String>)> = v
        .mappings
        .iter()
        .map(|m| {
            let caps = m.pattern.captures().into_iter().map(String::from).collect();
            (m.table.clone(), caps)
        })
        .collect();
    if tables.iter().all(|(t, _)| t.is_empty()) {
        return Err("no [[mapping]] names a table: nothing to install".into());
    }
    let channel = v
        .postgres
        .as_ref()
        .and_then(|p| p.notify.clone())
        .unwrap_or_else(|| "cacheside".into());
    let sql = crate::loader::notify::install_sql(&tables, &channel);
    if print_only {
        return Ok(sql);
    }
    let db = v
        .postgres
        .clone()
        .ok_or("postgres.url is not set: use --print to see the SQL")?;
    let db = Database::new(db)?;
    db.batch_execute(&sql)
        .await
        .map_err(|e| format!("installing the triggers: {e}"))?;
    Ok(sql)
}

/// Checks the listener's and the upstream's TLS files for renewals (see `transport::renew`).
fn watch_tls_files(cfg: &Validated, metrics: &Metrics) {
    use crate::transport::renew;
    let counts = crate::metrics::reload::tls_renewals(metrics.registry());
    let counted = move |side: &'static str| {
        let (ok, error) = (
            counts.with_label_values(&[side, "ok"]),
            counts.with_label_values(&[side, "error"]),
        );
        move |renewed: bool| if renewed { ok.inc() } else { error.inc() }
    };
    if let Some(tls) = &cfg.listen_tls {
        let every = cfg.listen_tls_reload_interval;
        renew::watch("listener", tls.renewing(), every, counted("listener"));
    }
    let Some(u) = &cfg.upstream else {
        return;
    };
    let sides = [("upstream", Some(u)), ("reader", u.reader.as_deref())];
    for (side, settings) in sides {
        if let Some(tls) = settings.and_then(|s| s.tls.as_ref()) {
            renew::watch(side, tls.renewing(), u.tls_reload_interval, counted(side));
        }
    }
}
