//! Invalidation from database changes (`postgres.notify`): an UPDATE, INSERT or DELETE made
//! outside cacheside (here a plain PostgreSQL client, as psql or another service would) reaches
//! every sidecar's hot tier and Redis; a remembered "not found" is cleared by the INSERT of the
//! row; a lost LISTEN connection empties and bypasses the hot tier until it is back.

mod support;

use cacheside::config::Config;
use std::time::{Duration, Instant};
use support::postgres::PgServer;
use support::readthrough::configure;
use support::{metric, query as q, Proxy, RedisServer};

fn notify_config(c: &mut Config, pg: &PgServer) {
    configure(c, pg);
    c.postgres.notify = true;
    c.hot.coherence = "tracking".into();
    c.cache = vec![support::cache_rule("product:*", 600)];
}

async fn install(pg: &PgServer) {
    let mut c = Config::default();
    notify_config(&mut c, pg);
    let v = c.validate().expect("valid");
    let sql = cacheside::app::install_notify(&v, false)
        .await
        .expect("installed");
    assert!(
        sql.contains("ON products") && sql.contains("ON users"),
        "{sql}"
    );
}

async fn listening(proxy: &Proxy) {
    let start = Instant::now();
    loop {
        let text = proxy.admin_get("/metrics").await.1;
        if metric(&text, "cacheside_db_notify_listening") == Some(1.0)
            && metric(&text, "cacheside_cache_coherent") == Some(1.0)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never listening: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `key` through `proxy` until `want` holds; how long it took.
async fn until(proxy: &Proxy, key: &str, want: impl Fn(&Option<String>) -> bool) -> Duration {
    let mut c = proxy.client().await;
    let start = Instant::now();
    loop {
        let v: Option<String> = q(&mut c, &["GET", key]).await;
        if want(&v) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{key} stayed {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn hot_hits(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").await.1;
    metric(
        &text,
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_changes_made_outside_cacheside_reach_every_sidecar_and_redis() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    install(&pg).await;
    let a = Proxy::start_with(&redis.url(), |c| notify_config(c, &pg)).await;
    let b = Proxy::start_with(&redis.url(), |c| notify_config(c, &pg)).await;
    listening(&a).await;
    listening(&b).await;
    let db = pg.client().await;
    // Cached everywhere: Redis (filled) and both hot tiers (read until a read is a hot hit: a
    // fill can give way to the tracking echo of the fill's own write).
    for p in [&a, &b] {
        let mut c = p.client().await;
        let start = Instant::now();
        loop {
            let v: String = q(&mut c, &["GET", "product:1"]).await;
            assert!(!v.contains("Renamed"), "{v}");
            if hot_hits(p).await >= 1.0 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never a hot hit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    db.execute("UPDATE products SET name = 'Renamed' WHERE id = 1", &[])
        .await
        .unwrap();
    let renamed = |v: &Option<String>| v.as_deref().is_some_and(|s| s.contains("Renamed"));
    let (da, dbb) = (
        until(&a, "product:1", renamed).await,
        until(&b, "product:1", renamed).await,
    );
    eprintln!("UPDATE seen through sidecar A after {da:?}, B after {dbb:?}");
    let mut direct = redis.direct().await;
    let held: Option<String> = q(&mut direct, &["GET", "product:1"]).await;
    assert!(
        held.is_none() || renamed(&held),
        "Redis kept the old row: {held:?}"
    );

    // A miss is remembered as "not found"; the INSERT of the row clears it.
    for p in [&a, &b] {
        let mut c = p.client().await;
        let v: Option<String> = q(&mut c, &["GET", "product:990001"]).await;
        assert_eq!(v, None);
    }
    db.execute(
        "INSERT INTO products (id, name, price, category) VALUES (990001, 'Fresh', 1.5, 'new')",
        &[],
    )
    .await
    .unwrap();
    let fresh = |v: &Option<String>| v.as_deref().is_some_and(|s| s.contains("Fresh"));
    let (ia, ib) = (
        until(&a, "product:990001", fresh).await,
        until(&b, "product:990001", fresh).await,
    );
    eprintln!("INSERT seen through sidecar A after {ia:?}, B after {ib:?}");

    db.execute("DELETE FROM products WHERE id = 990001", &[])
        .await
        .unwrap();
    until(&a, "product:990001", Option::is_none).await;
    until(&b, "product:990001", Option::is_none).await;

    let text = a.admin_get("/metrics").await.1;
    assert!(
        metric(&text, "cacheside_invalidations_total{source=\"db_notify\"}").unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    assert!(
        metric(&text, "cacheside_db_notify_keys_total").unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    a.shutdown().await;
    b.shutdown().await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_empties_and_bypasses_the_hot_tier_until_it_is_back() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    install(&pg).await;
    let proxy = Proxy::start_with(&redis.url(), |c| notify_config(c, &pg)).await;
    listening(&proxy).await;
    let mut c = proxy.client().await;
    for _ in 0..3 {
        let _: String = q(&mut c, &["GET", "product:2"]).await;
    }
    let flushes =
        |t: &str| metric(t, "cacheside_invalidations_total{source=\"flush\"}").unwrap_or(0.0);
    let before = flushes(&proxy.admin_get("/metrics").await.1);
    let db = pg.client().await;
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one LISTEN connection");
    // The loss is seen (the tier emptied and bypassed), then the listener is back.
    let start = Instant::now();
    while flushes(&proxy.admin_get("/metrics").await.1) <= before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lost connection went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listening(&proxy).await;
    // Changes are heard again.
    for _ in 0..3 {
        let _: String = q(&mut c, &["GET", "product:2"]).await;
    }
    db.execute("UPDATE products SET name = 'Again' WHERE id = 2", &[])
        .await
        .unwrap();
    until(&proxy, "product:2", |v| {
        v.as_deref().is_some_and(|s| s.contains("Again"))
    })
    .await;
    proxy.shutdown().await;
    support::assert_no_panics();
}
