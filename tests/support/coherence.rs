//! The history checker for the hot tier's promise "no stale read after a write": many writers
//! through one sidecar and many readers through two others, for seconds. Each read is compared
//! with the newest version whose write was acknowledged before the read began; one read older
//! than that fails the test. Writes by SET, MSET, MULTI/EXEC and EVAL, reads by GET and MGET.
//! Used by `tests/coherence.rs` (one redis-server) and `tests/cluster_hot.rs` (a Redis Cluster).
//!
//! And its read-through form, the seeds' update flow: a writer UPDATEs a row in PostgreSQL,
//! commits, then DELs its key through one sidecar; readers GET the key through two others (one
//! GET at a time, and all keys pipelined in one write, which loads the misses together), which
//! load it and, with a hot tier, keep it there. A read that began after the DEL was acknowledged
//! must not return the row as it was before the UPDATE.

use super::postgres::PgServer;
use super::readthrough::mapping;
use super::{history, metric, Proxy};
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

const KEYS: usize = 8;
/// How long writers and readers run, per mode.
const RUN: Duration = Duration::from_secs(4);

async fn sidecar(
    upstream: &str,
    coherence: &str,
    per_prefix: bool,
    packed: bool,
    relay: bool,
) -> Proxy {
    let proxy = Proxy::start_with(upstream, |c| {
        c.hot.coherence = coherence.into();
        c.hot.channel_per_prefix = per_prefix;
        c.hot.broadcast_relay = relay;
        if packed {
            c.hot.broadcast_encoding = "packed".into();
        }
        c.cache = vec![super::cache_rule("coh:*", 60)];
        if per_prefix {
            // Announced are the keys the rules cache: with `other:` cached too, MSET and MULTI
            // name keys of two namespaces, which go on the base channel.
            c.cache.push(super::cache_rule("other:*", 60));
        }
    })
    .await;
    history::wait_coherent(&proxy).await;
    proxy
}

/// Key `i`; its hash tag keeps it in one cluster slot with its neighbours `other:{i}` and
/// `other:n:{i}`, which MSET and MULTI write beside it.
fn key(i: usize) -> String {
    format!("coh:{{{i}}}")
}

/// One write of `version` to key `i`, in the way picked by `how`.
async fn write(c: &mut MultiplexedConnection, how: u64, i: usize, version: u64) {
    let (k, v) = (key(i), version.to_string());
    let r: redis::RedisResult<redis::Value> = match how % 4 {
        0 => redis::cmd("SET").arg(&k).arg(&v).query_async(c).await,
        1 => {
            // A key of another namespace keeps MSET multi-key without disturbing other writers.
            redis::cmd("MSET")
                .arg(&k)
                .arg(&v)
                .arg(format!("other:{{{i}}}"))
                .arg(&v)
                .query_async(c)
                .await
        }
        2 => {
            redis::pipe()
                .atomic()
                .set(&k, &v)
                .incr(format!("other:n:{{{i}}}"), 1)
                .query_async(c)
                .await
        }
        _ => {
            redis::cmd("EVAL")
                .arg("return redis.call('SET', KEYS[1], ARGV[1])")
                .arg(1)
                .arg(&k)
                .arg(&v)
                .query_async(c)
                .await
        }
    };
    r.unwrap_or_else(|e| panic!("write {k}={v}: {e}"));
}

/// Reads key `i` (GET, or MGET with a neighbour); the version seen.
async fn read(c: &mut MultiplexedConnection, mget: bool, i: usize) -> u64 {
    let got: Option<String> = if mget {
        let both: Vec<Option<String>> = redis::cmd("MGET")
            .arg(key(i))
            .arg(key((i + 1) % KEYS))
            .query_async(c)
            .await
            .expect("MGET");
        both.into_iter().next().flatten()
    } else {
        redis::cmd("GET")
            .arg(key(i))
            .query_async(c)
            .await
            .expect("GET")
    };
    got.and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Runs the checker against `upstream` (one redis-server, or a cluster's seed node) in
/// `coherence` mode, with `hot.channel_per_prefix` or not, and fails on any stale read. With
/// it, SET and EVAL announce on the `coh` namespace's channel, MSET and MULTI (which also write
/// `other:` keys, cached then) on the base channel. `packed`: `hot.broadcast_encoding = "packed"`.
pub async fn check(upstream: &str, coherence: &str, per_prefix: bool, packed: bool) {
    run(upstream, coherence, per_prefix, packed, false).await;
}

/// The checker with `hot.broadcast_relay` on every sidecar (and packed announcements): the
/// writers' sidecar's requests must have been relayed, not only announced by itself.
pub async fn check_relayed(upstream: &str, per_prefix: bool) {
    let a = run(upstream, "broadcast", per_prefix, true, true).await;
    let m = a.admin_get("/metrics").await.1;
    let relayed = metric(&m, "cacheside_broadcast_relayed_total").unwrap_or(0.0);
    let fallbacks = metric(&m, "cacheside_broadcast_relay_fallbacks_total").unwrap_or(0.0);
    eprintln!(
        "relay: {relayed} requests relayed, {fallbacks} announced by the writers' sidecar itself"
    );
    assert!(
        relayed > 20.0,
        "the writers' announcements went through the relay"
    );
}

async fn run(
    upstream: &str,
    coherence: &str,
    per_prefix: bool,
    packed: bool,
    relay: bool,
) -> Proxy {
    let a = sidecar(upstream, coherence, per_prefix, packed, relay).await;
    let readers = [
        sidecar(upstream, coherence, per_prefix, packed, relay).await,
        sidecar(upstream, coherence, per_prefix, packed, relay).await,
    ];
    let mut setup = a.client().await;
    for i in 0..KEYS {
        let _: () = redis::cmd("SET")
            .arg(key(i))
            .arg(0)
            .query_async(&mut setup)
            .await
            .unwrap();
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..KEYS {
        let (mut c, acked, stop) = (a.client().await, acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut v = 0;
            while !stop.load(SeqCst) {
                v += 1;
                write(&mut c, v + i as u64, i, v).await;
                acked[i].store(v, SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (0u64, 0u64)
        }));
    }
    for proxy in &readers {
        for i in 0..KEYS {
            let (mut c, acked, stop) = (proxy.client().await, acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut reads, mut stale) = (0u64, 0u64);
                while !stop.load(SeqCst) {
                    // What was acknowledged before this read began: the read must not be older.
                    let floor = acked[i].load(SeqCst);
                    let seen = read(&mut c, reads % 3 == 0, i).await;
                    reads += 1;
                    if seen < floor {
                        stale += 1;
                        eprintln!(
                            "stale read of {}: saw {seen} after {floor} was acknowledged",
                            key(i)
                        );
                    }
                }
                (reads, stale)
            }));
        }
    }
    let outcome = history::finish(RUN, &stop, tasks, &readers).await;
    if coherence == "broadcast" && !relay {
        // Writes that overlap an announcement in flight are announced in batches: the checker
        // must have covered that path as well as writes that carry their own PUBLISH.
        let m = a.admin_get("/metrics").await.1;
        let sent = metric(&m, "cacheside_broadcast_announcements_total").unwrap_or(0.0);
        let keys = metric(&m, "cacheside_broadcast_announced_keys_total").unwrap_or(0.0);
        eprintln!("broadcast: {sent} batched PUBLISHes carried {keys} keys");
        assert!(sent > 0.0, "some writes were announced in batches");
    }
    outcome.assert_clean(coherence, 1000, "were older than an acknowledged write");
    a
}

const ROWS: u64 = 6;

/// The version in a row's JSON: names are written as `v<version>`.
fn version(json: &str) -> u64 {
    json.split("\"name\":\"v")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A sidecar with a `[[mapping]]` for `item:{id}` and, with `coherence`, a `[[cache]]` rule for
/// `item:*` (the configuration the README suggests).
async fn item_sidecar(upstream: &str, pg: &PgServer, coherence: Option<&str>) -> Proxy {
    let proxy = Proxy::start_with(upstream, |c| {
        c.postgres.url = Some(pg.url());
        let mut item = mapping(
            "item",
            "item:{id}",
            "SELECT id, name FROM products WHERE id = $1",
            "json",
        );
        item.jitter = None;
        c.mapping = vec![item];
        if let Some(mode) = coherence {
            c.hot.coherence = mode.into();
            c.cache = vec![super::cache_rule("item:*", 60)];
        }
    })
    .await;
    if coherence.is_some() {
        history::wait_coherent(&proxy).await;
    }
    proxy
}

/// Runs the read-through checker against `upstream`, with a hot tier in `coherence` mode or
/// without one (`None`), and fails on any read older than an acknowledged DEL.
pub async fn check_readthrough(upstream: &str, pg: &PgServer, coherence: Option<&str>) {
    let setup = pg.client().await;
    for id in 1..=ROWS {
        setup
            .execute(
                "UPDATE products SET name = 'v0' WHERE id = $1",
                &[&(id as i32)],
            )
            .await
            .unwrap();
    }
    let a = item_sidecar(upstream, pg, coherence).await;
    let readers = [
        item_sidecar(upstream, pg, coherence).await,
        item_sidecar(upstream, pg, coherence).await,
    ];
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..=ROWS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 1..=ROWS {
        let (mut c, acked, stop) = (a.client().await, acked.clone(), stop.clone());
        let db = pg.client().await;
        tasks.push(tokio::spawn(async move {
            let mut v = 0u64;
            while !stop.load(SeqCst) {
                v += 1;
                db.execute(
                    "UPDATE products SET name = $1 WHERE id = $2",
                    &[&format!("v{v}"), &(id as i32)],
                )
                .await
                .unwrap();
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("item:{id}"))
                    .query_async(&mut c)
                    .await
                    .unwrap();
                acked[id as usize].store(v, SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (0u64, 0u64)
        }));
    }
    // Per sidecar: a reader per key, one GET at a time, and one reader of every key pipelined in
    // one write (misses load together, one query per mapping, while hits come from the tier).
    for (n, proxy) in readers.iter().enumerate() {
        for id in 0..=ROWS {
            let (mut c, acked, stop) = (proxy.client().await, acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let ids: Vec<u64> = if id == 0 {
                    (1..=ROWS).collect()
                } else {
                    vec![id]
                };
                let (mut reads, mut stale) = (0u64, 0u64);
                while !stop.load(SeqCst) {
                    let floors: Vec<u64> =
                        ids.iter().map(|i| acked[*i as usize].load(SeqCst)).collect();
                    let mut pipe = redis::pipe();
                    for i in &ids {
                        pipe.cmd("GET").arg(format!("item:{i}"));
                    }
                    let rows: Vec<String> = pipe.query_async(&mut c).await.unwrap();
                    for ((i, json), floor) in ids.iter().zip(&rows).zip(&floors) {
                        reads += 1;
                        let seen = version(json);
                        if seen < *floor {
                            stale += 1;
                            eprintln!("stale item:{i} (sidecar {n}): saw v{seen} after v{floor} was committed and invalidated");
                        }
                    }
                }
                (reads, stale)
            }));
        }
    }
    let outcome = history::finish(RUN, &stop, tasks, &readers).await;
    let what = "returned a row older than a committed, invalidated update";
    match coherence {
        Some(mode) => outcome.assert_clean(mode, 500, what),
        None => {
            eprintln!(
                "no hot tier: {} reads, {} stale",
                outcome.reads, outcome.stale
            );
            assert!(
                outcome.reads > 500,
                "the checker ran ({} reads)",
                outcome.reads
            );
            assert_eq!(
                outcome.stale, 0,
                "{} of {} reads {what}",
                outcome.stale, outcome.reads
            );
        }
    }
}
