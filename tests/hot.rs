//! The hot tier through real sidecars on a real redis-server: hits served in process, writes
//! through any sidecar never read stale afterwards (tracking and broadcast coherence), the
//! upstream TTL caps the tier's, the byte bound holds, and a lost invalidation connection
//! flushes and bypasses the tier until it is back.

mod support;

use cacheside::config::units::{Human, Size};
use cacheside::config::Config;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use support::{metric, Proxy, RedisServer};

fn cached(c: &mut Config, coherence: &str) {
    c.hot.coherence = coherence.into();
    c.cache = vec![
        support::cache_rule("product:*", 30),
        support::cache_rule("user:*", 30),
    ];
}

async fn sidecar(redis: &RedisServer, coherence: &str) -> Proxy {
    let proxy = Proxy::start_with(&redis.url(), |c| cached(c, coherence)).await;
    wait_coherent(&proxy).await;
    proxy
}

async fn scrape(proxy: &Proxy, series: &str) -> f64 {
    metric(&proxy.admin_get("/metrics").await.1, series).unwrap_or(0.0)
}

/// Polls until the tier reports coherent (its invalidation connection is up).
async fn wait_coherent(proxy: &Proxy) {
    let start = Instant::now();
    while scrape(proxy, "cacheside_cache_coherent").await != 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "hot tier never became coherent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn hot_hits(proxy: &Proxy) -> f64 {
    scrape(
        proxy,
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
    )
    .await
}

async fn get(c: &mut MultiplexedConnection, key: &str) -> Option<String> {
    c.get(key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_reads_are_served_from_the_hot_tier() {
    let redis = RedisServer::start();
    let proxy = sidecar(&redis, "tracking").await;
    let mut direct = redis.direct().await;
    let _: () = direct.set("product:1", "lamp").await.unwrap();
    let _: () = direct.hset("user:1", "name", "ada").await.unwrap();
    let mut c = proxy.client().await;
    assert_eq!(get(&mut c, "product:1").await.as_deref(), Some("lamp"));
    let before = hot_hits(&proxy).await;
    for _ in 0..10 {
        assert_eq!(get(&mut c, "product:1").await.as_deref(), Some("lamp"));
    }
    let exists: i64 = c.exists("product:1").await.unwrap();
    let len: i64 = c.strlen("product:1").await.unwrap();
    assert_eq!((exists, len), (1, 4));
    let name: String = c.hget("user:1", "name").await.unwrap();
    let name2: String = c.hget("user:1", "name").await.unwrap();
    let all: std::collections::HashMap<String, String> = c.hgetall("user:1").await.unwrap();
    let all2: std::collections::HashMap<String, String> = c.hgetall("user:1").await.unwrap();
    assert_eq!((name.as_str(), name2.as_str()), ("ada", "ada"));
    assert_eq!(all, all2);
    assert_eq!(all.get("name").map(String::as_str), Some("ada"));
    let hits = hot_hits(&proxy).await - before;
    assert!(
        hits >= 14.0,
        "10 GETs + EXISTS + STRLEN + HGET + HGETALL from the tier, got {hits}"
    );
    let timed = scrape(
        &proxy,
        "cacheside_request_duration_seconds_count{source=\"hot\"}",
    )
    .await;
    assert!(
        timed >= hits,
        "every hit is timed as source=hot: {timed} < {hits}"
    );
    // Keys without a rule are never cached.
    let _: () = direct.set("other:1", "x").await.unwrap();
    let before = hot_hits(&proxy).await;
    for _ in 0..3 {
        assert_eq!(get(&mut c, "other:1").await.as_deref(), Some("x"));
    }
    assert_eq!(hot_hits(&proxy).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_through_the_tier() {
    let redis = RedisServer::start();
    let proxy = sidecar(&redis, "tracking").await;
    let mut c = proxy.client().await;
    for i in 0..200 {
        let _: () = c.set("product:own", i).await.unwrap();
        let v: i64 = c.get("product:own").await.unwrap();
        assert_eq!(v, i);
        let v: i64 = c.get("product:own").await.unwrap();
        assert_eq!(
            v, i,
            "the second read may come from the tier: still the latest write"
        );
    }
    // Pipelined write then read, in one batch.
    let mut raw = proxy.raw().await;
    raw.send(b"GET product:pipe\r\nSET product:pipe a\r\nGET product:pipe\r\nDEL product:pipe\r\nGET product:pipe\r\n")
        .await;
    raw.expect(b"$-1\r\n+OK\r\n$1\r\na\r\n:1\r\n$-1\r\n").await;
}

/// Two sidecars on one Redis: after a write through A has been answered, B never serves the old
/// value. Returns how many of B's reads were served from its tier and the slowest invalidation
/// seen (time from A's reply until B stopped serving the old value; zero when B was already
/// correct at the first read).
async fn no_stale_reads_across_sidecars(coherence: &str) -> (f64, Duration) {
    let redis = RedisServer::start();
    let a = sidecar(&redis, coherence).await;
    let b = sidecar(&redis, coherence).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let mut slowest = Duration::ZERO;
    for i in 0..1000 {
        // B caches the current value...
        let _: Option<String> = cb.get("product:shared").await.unwrap();
        let _: Option<String> = cb.get("product:shared").await.unwrap();
        // ...A overwrites it...
        let _: () = ca.set("product:shared", i).await.unwrap();
        let replied = Instant::now();
        // ...and B must not serve the old value once A has answered.
        let v: i64 = cb.get("product:shared").await.unwrap();
        assert_eq!(
            v, i,
            "{coherence}: stale read through B after a write through A (iteration {i})"
        );
        slowest = slowest.max(replied.elapsed());
    }
    (hot_hits(&b).await, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_keeps_two_sidecars_coherent() {
    let (hits, window) = no_stale_reads_across_sidecars("tracking").await;
    eprintln!("tracking: 1000 writes through A, no stale read through B; B's tier hits: {hits}; slowest read after a write: {window:?}");
    assert!(
        hits >= 250.0,
        "B served its repeated reads from the tier ({hits})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_keeps_two_sidecars_coherent() {
    let (hits, window) = no_stale_reads_across_sidecars("broadcast").await;
    eprintln!("broadcast: 1000 writes through A, no stale read through B; B's tier hits: {hits}; slowest read after a write: {window:?}");
    assert!(
        hits >= 250.0,
        "B served its repeated reads from the tier ({hits})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_evicts_on_writes_that_bypass_cacheside() {
    let redis = RedisServer::start();
    let b = sidecar(&redis, "tracking").await;
    let mut direct = redis.direct().await;
    let mut cb = b.client().await;
    let _: () = direct.set("product:direct", "old").await.unwrap();
    assert_eq!(get(&mut cb, "product:direct").await.as_deref(), Some("old"));
    assert_eq!(get(&mut cb, "product:direct").await.as_deref(), Some("old"));
    let _: () = direct.set("product:direct", "new").await.unwrap();
    let written = Instant::now();
    loop {
        if get(&mut cb, "product:direct").await.as_deref() == Some("new") {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "the tracking push never evicted the key"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eprintln!(
        "tracking: a direct write was visible through the sidecar after {:?}",
        written.elapsed()
    );
    assert!(scrape(&b, "cacheside_invalidations_total{source=\"tracking\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_mode_serves_a_direct_write_late_but_never_past_the_rule_ttl() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        cached(c, "ttl");
        c.cache[0].ttl = Human::millis(300);
    })
    .await;
    wait_coherent(&proxy).await;
    let mut direct = redis.direct().await;
    let mut c = proxy.client().await;
    let _: () = direct.set("product:t", "old").await.unwrap();
    assert_eq!(get(&mut c, "product:t").await.as_deref(), Some("old"));
    let _: () = direct.set("product:t", "new").await.unwrap();
    // No messages in ttl mode: the stale value may be served, for at most the rule TTL.
    assert_eq!(get(&mut c, "product:t").await.as_deref(), Some("old"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&mut c, "product:t").await.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_stops_serving_when_the_upstream_key_expires() {
    let redis = RedisServer::start();
    let proxy = sidecar(&redis, "ttl").await;
    let mut direct = redis.direct().await;
    let mut c = proxy.client().await;
    let _: () = redis::cmd("SET")
        .arg("product:short")
        .arg("v")
        .arg("PX")
        .arg(300)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(get(&mut c, "product:short").await.as_deref(), Some("v"));
    let before = hot_hits(&proxy).await;
    assert_eq!(get(&mut c, "product:short").await.as_deref(), Some("v"));
    assert_eq!(
        hot_hits(&proxy).await,
        before + 1.0,
        "served from the tier while the key lives"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&mut c, "product:short").await,
        None,
        "the rule TTL is 30s, but the key expired upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_holds_under_a_workload_ten_times_larger() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        cached(c, "ttl");
        c.hot.max_size = Size::kib(64);
    })
    .await;
    wait_coherent(&proxy).await;
    let mut direct = redis.direct().await;
    let value = "v".repeat(600);
    let mut pipe = redis::pipe();
    for i in 0..1100 {
        pipe.set(format!("product:{i}"), &value).ignore();
    }
    let _: () = pipe.query_async(&mut direct).await.unwrap();
    let mut c = proxy.client().await;
    for round in 0..2 {
        for i in 0..1100 {
            let v: String = c.get(format!("product:{i}")).await.unwrap();
            assert_eq!(v.len(), 600, "round {round} key {i}");
        }
    }
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    let bytes: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("hot_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO has a # cacheside section");
    let entries: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("hot_entries:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    eprintln!("byte bound 64KiB, 1100 x 600B values read twice: {entries} entries, {bytes} bytes held ({} bytes per entry)", bytes / entries.max(1));
    assert!(bytes <= 64 * 1024, "{bytes} bytes held");
    assert!(entries > 10 && entries < 1100);
    assert!(scrape(&proxy, "cacheside_cache_evictions_total{reason=\"size\"}").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_invalidation_connection_flushes_then_recovers() {
    let redis = RedisServer::start();
    let proxy = sidecar(&redis, "tracking").await;
    let mut direct = redis.direct().await;
    let mut c = proxy.client().await;
    let _: () = direct.set("product:k", "1").await.unwrap();
    assert_eq!(get(&mut c, "product:k").await.as_deref(), Some("1"));
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut direct)
        .await
        .unwrap_or(0);
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut direct)
        .await
        .unwrap();
    let id = list
        .lines()
        .find(|l| l.contains("name=cacheside-invalidation"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|f| f.strip_prefix("id="))
        .map(str::to_string);
    if let Some(id) = id {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .query_async(&mut direct)
            .await
            .unwrap();
    } else {
        assert!(
            killed > 0,
            "the invalidation connection was found and killed"
        );
    }
    // While it is down the tier is bypassed: reads stay correct (served by Redis).
    let _: () = direct.set("product:k", "2").await.unwrap();
    assert_eq!(get(&mut c, "product:k").await.as_deref(), Some("2"));
    assert!(scrape(&proxy, "cacheside_invalidations_total{source=\"flush\"}").await >= 1.0);
    // Counted among the upstream errors (the killed connection reads as closed).
    assert!(scrape(&proxy, "cacheside_upstream_errors_total{kind=\"closed\"}").await >= 1.0);
    wait_coherent(&proxy).await;
    let _: () = direct.set("product:k", "3").await.unwrap();
    assert_eq!(get(&mut c, "product:k").await.as_deref(), Some("3"));
    assert_eq!(get(&mut c, "product:k").await.as_deref(), Some("3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_with_partial_hits_sends_one_upstream_mget_of_the_misses() {
    let redis = RedisServer::start();
    let proxy = sidecar(&redis, "tracking").await;
    let mut direct = redis.direct().await;
    let _: () = direct
        .mset(&[("product:a", "A"), ("product:b", "B"), ("product:c", "C")])
        .await
        .unwrap();
    let mut c = proxy.client().await;
    let _: Option<String> = c.get("product:a").await.unwrap();
    let _: Option<String> = c.get("product:c").await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut direct)
        .await
        .unwrap();
    let got: Vec<Option<String>> = c
        .mget(&[
            "product:a",
            "product:b",
            "nocache:x",
            "product:c",
            "product:b",
            "product:none",
        ])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some("A".into()),
            Some("B".into()),
            None,
            Some("C".into()),
            Some("B".into()),
            None
        ]
    );
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(support::command_calls(&stats, "mget"), 1, "{stats}");
    // Now everything cacheable is in the tier: no upstream MGET at all.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut direct)
        .await
        .unwrap();
    let again: Vec<Option<String>> = c
        .mget(&["product:a", "product:b", "product:none"])
        .await
        .unwrap();
    assert_eq!(again, vec![Some("A".into()), Some("B".into()), None]);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(!stats.contains("cmdstat_mget"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_scripts_and_flushes_invalidate() {
    let redis = RedisServer::start();
    let proxy = sidecar(&redis, "tracking").await;
    let mut c = proxy.client().await;
    let _: () = c.set("product:tx", "before").await.unwrap();
    assert_eq!(get(&mut c, "product:tx").await.as_deref(), Some("before"));
    let _: () = redis::pipe()
        .atomic()
        .set("product:tx", "after")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(get(&mut c, "product:tx").await.as_deref(), Some("after"));
    let _: () = redis::Script::new("redis.call('SET', KEYS[1], ARGV[1])")
        .key("product:tx")
        .arg("scripted")
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(get(&mut c, "product:tx").await.as_deref(), Some("scripted"));
    let _: () = redis::cmd("FLUSHDB").query_async(&mut c).await.unwrap();
    assert_eq!(get(&mut c, "product:tx").await, None);
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    assert!(
        info.contains("# Server") && info.contains("# cacheside") && info.contains("hot_hits:"),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_invalidates_when_exec_runs_not_when_its_writes_queue() {
    let redis = RedisServer::start();
    // Broadcast mode: no tracking push from Redis helps here; the proxy's own eviction must.
    let proxy = sidecar(&redis, "broadcast").await;
    let mut writer = proxy.raw().await;
    let mut reader = proxy.client().await;
    let _: () = reader.set("product:q", "old").await.unwrap();
    writer.send(b"MULTI\r\nSET product:q new\r\n").await;
    writer.expect(b"+OK\r\n+QUEUED\r\n").await;
    // Queued, not run: another client reads (and caches) the old value meanwhile.
    assert_eq!(get(&mut reader, "product:q").await.as_deref(), Some("old"));
    assert_eq!(get(&mut reader, "product:q").await.as_deref(), Some("old"));
    writer.send(b"EXEC\r\n").await;
    writer.expect(b"*1\r\n+OK\r\n").await;
    assert_eq!(
        get(&mut reader, "product:q").await.as_deref(),
        Some("new"),
        "EXEC's reply evicted the key"
    );
}
