//! A reload that changes a `[[mapping]]`'s query must not keep serving what the old query
//! filled: not from Redis, not from the hot tier, not from a load of the old query still in
//! flight when the reload ran. A query PostgreSQL rejects fails the reload.

mod support;

use std::path::Path;
use std::time::Duration;
use support::postgres::PgServer;
use support::process::Process;
use support::{eventually, metric, query, RedisServer};

/// `product:{id}` read by `query`, cached in the hot tier too; `slow:{id}` by `slow`.
fn config(pg: &PgServer, query: &str, slow: &str) -> String {
    format!(
        "[postgres]\nurl = \"{}\"\n\n[hot]\ncoherence = \"ttl\"\n\n[[cache]]\nkeys = \"product:*\"\nttl = \"60s\"\n\n\
         [[mapping]]\nname = \"product\"\nkey = \"product:{{id}}\"\nquery = \"{query}\"\nshape = \"string\"\nttl = \"1h\"\n\n\
         [[mapping]]\nname = \"slow\"\nkey = \"slow:{{id}}\"\nquery = \"{slow}\"\nshape = \"string\"\nttl = \"1h\"\n",
        pg.url()
    )
}

const NAME: &str = "SELECT name FROM products WHERE id = $1";
const UPPER: &str = "SELECT upper(name) FROM products WHERE id = $1";
const SLOW: &str = "SELECT p.name FROM products p, pg_sleep(0.6) WHERE p.id = $1";
const SLOW_V2: &str = "SELECT 'v2 ' || p.name FROM products p, pg_sleep(0.6) WHERE p.id = $1";

async fn reloads(p: &Process, result: &str) -> f64 {
    let text = p.admin("GET", "/metrics").await.1;
    metric(
        &text,
        &format!("cacheside_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Writes the config file and sends SIGHUP (the file watch may reload it first: either way
/// one more reload with `result` is awaited).
async fn reload(p: &Process, file: &Path, content: &str, result: &str) {
    let before = reloads(p, result).await;
    std::fs::write(file, content).expect("write config");
    p.signal("HUP");
    let done = eventually(Duration::from_secs(10), async || {
        reloads(p, result).await > before
    })
    .await;
    assert!(done, "a reload with result {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_query_serves_its_own_result_at_once() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, log) = (dir.path().join("proxy.toml"), dir.path().join("log"));
    std::fs::write(&file, config(&pg, NAME, SLOW)).expect("write config");
    let p = Process::start_with_file(&file, &redis.url(), &log);
    let mut c = p.client().await;

    let v: String = query(&mut c, &["GET", "product:1"]).await;
    assert_eq!(v, "Product 1");
    // The row changes in PostgreSQL (no notification): the cached copy is still served.
    pg.execute("UPDATE products SET name = 'Renamed 1' WHERE id = 1");
    let v: String = query(&mut c, &["GET", "product:1"]).await;
    assert_eq!(v, "Product 1", "the old query's fill is cached");

    reload(&p, &file, &config(&pg, UPPER, SLOW), "ok").await;
    let v: String = query(&mut c, &["GET", "product:1"]).await;
    assert_eq!(v, "RENAMED 1", "the next GET runs the new query");
    // The second flush (once no load holds the old mapping) may remove this first fill; after
    // it, what Redis keeps is the new query's.
    let mut direct = redis.direct().await;
    let held = eventually(Duration::from_secs(5), async || {
        let v: String = query(&mut c, &["GET", "product:1"]).await;
        assert_eq!(v, "RENAMED 1");
        let held: Option<String> = query(&mut direct, &["GET", "product:1"]).await;
        held.as_deref() == Some("RENAMED 1")
    })
    .await;
    assert!(held, "Redis holds the new query's fill");

    // A query PostgreSQL rejects: the reload fails, the running mapping stays.
    let bad = "SELECT no_such_column FROM products WHERE id = $1";
    reload(&p, &file, &config(&pg, bad, SLOW), "error").await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("config reload rejected") && text.contains("mapping[0].query"),
        "the log names the mapping: {text}"
    );
    let v: String = query(&mut c, &["GET", "product:2"]).await;
    assert_eq!(v, "PRODUCT 2", "the running query still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_of_the_old_query_in_flight_during_the_reload_does_not_stay_cached() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, log) = (dir.path().join("proxy.toml"), dir.path().join("log"));
    std::fs::write(&file, config(&pg, NAME, SLOW)).expect("write config");
    let p = Process::start_with_file(&file, &redis.url(), &log);
    let url = format!("redis://127.0.0.1:{}", p.port);
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");

    // A load of the old query (0.6 s) is running when the reload swaps and flushes.
    let mut c2 = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let in_flight = tokio::spawn(async move {
        let v: String = query(&mut c2, &["GET", "slow:7"]).await;
        v
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    reload(&p, &file, &config(&pg, NAME, SLOW_V2), "ok").await;
    assert_eq!(
        in_flight.await.expect("read"),
        "Product 7",
        "it answers its own read"
    );

    // Its fill landed after the first flush; the second flush (once its load ended) removes it.
    let mut direct = redis.direct().await;
    let gone = eventually(Duration::from_secs(5), async || {
        let held: Option<String> = query(&mut direct, &["GET", "slow:7"]).await;
        held.as_deref() != Some("Product 7")
    })
    .await;
    assert!(gone, "the old query's late fill is flushed");
    let v: String = query(&mut c, &["GET", "slow:7"]).await;
    assert_eq!(v, "v2 Product 7");
}
