//! `CACHESIDE ...` on the data port, through a real sidecar with a hot tier on a real
//! redis-server: STATS shows the tier's hits, EVICT and FLUSH HOT empty it, MAPPINGS lists
//! nothing without read-through, and inside a transaction the command is queued upstream.

mod support;

use std::time::{Duration, Instant};
use support::{metric, query as q, Proxy, RedisServer};

async fn hot_sidecar(redis: &RedisServer) -> Proxy {
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.cache = vec![support::cache_rule("product:*", 30)];
    })
    .await;
    let start = Instant::now();
    while metric(
        &proxy.admin_get("/metrics").await.1,
        "cacheside_cache_coherent",
    ) != Some(1.0)
    {
        assert!(start.elapsed() < Duration::from_secs(10), "never coherent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy
}

fn field(stats: &str, name: &str) -> String {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} not in {stats}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_evict_and_flush_act_on_this_sidecars_hot_tier() {
    let redis = RedisServer::start();
    let proxy = hot_sidecar(&redis).await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "product:1", "lamp"]).await;
    let _: () = q(&mut c, &["SET", "product:2", "desk"]).await;
    for _ in 0..5 {
        let _: String = q(&mut c, &["GET", "product:1"]).await;
        let _: String = q(&mut c, &["GET", "product:2"]).await;
    }
    let stats: String = q(&mut c, &["CACHESIDE", "STATS"]).await;
    assert_eq!(field(&stats, "hot_hits"), "8", "{stats}");
    assert_eq!(field(&stats, "hot_hit_ratio"), "0.8000", "{stats}");
    assert_eq!(field(&stats, "connected_clients"), "1", "{stats}");
    assert_eq!(field(&stats, "hot_state"), "active", "{stats}");

    let held: i64 = q(&mut c, &["CACHESIDE", "EVICT", "product:1", "product:9"]).await;
    assert_eq!(held, 1);
    let _: String = q(&mut c, &["GET", "product:1"]).await;
    let stats: String = q(&mut c, &["CACHESIDE", "STATS"]).await;
    assert_eq!(
        field(&stats, "hot_misses"),
        "3",
        "an evicted key is read upstream: {stats}"
    );

    let ok: String = q(&mut c, &["CACHESIDE", "FLUSH", "HOT"]).await;
    assert_eq!(ok, "OK");
    let _: String = q(&mut c, &["GET", "product:2"]).await;
    let stats: String = q(&mut c, &["CACHESIDE", "STATS"]).await;
    assert_eq!(field(&stats, "hot_misses"), "4", "{stats}");
    // Two keys evicted, one flush: three operator invalidations. Redis kept both keys: EVICT and FLUSH HOT are local.
    let mut direct = redis.direct().await;
    let n: i64 = q(&mut direct, &["EXISTS", "product:1", "product:2"]).await;
    assert_eq!(n, 2);
    let text = proxy.admin_get("/metrics").await.1;
    assert_eq!(
        metric(&text, "cacheside_invalidations_total{source=\"operator\"}"),
        Some(3.0),
        "{text}"
    );

    let none: Vec<String> = q(&mut c, &["CACHESIDE", "MAPPINGS"]).await;
    assert!(none.is_empty());
    let help: Vec<String> = q(&mut c, &["CACHESIDE", "HELP"]).await;
    assert!(help.iter().any(|l| l == "FLUSH HOT"), "{help:?}");
    proxy.shutdown().await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_transaction_it_is_queued_upstream_and_aborts_exec_as_redis_would() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\nCACHESIDE STATS\r\nEXEC\r\n").await;
    raw.expect(b"+OK\r\n-ERR unknown command 'CACHESIDE'").await;
    proxy.shutdown().await;
    support::assert_no_panics();
}
