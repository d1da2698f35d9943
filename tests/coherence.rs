//! History checkers for the hot tier's promise "no stale read after a write": many writers
//! through one sidecar and many readers through two others, on one redis-server, for seconds.
//! Each read is compared with the newest version whose write was acknowledged before the read
//! began; one read older than that fails the test. Both coherence modes, writes by SET, MSET,
//! MULTI/EXEC and EVAL, reads by GET and MGET.

mod support;

use cacheside::config::units::{Human, Size};
use cacheside::config::CacheRule;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::{history, metric, Proxy, RedisServer};

const KEYS: usize = 8;
/// How long writers and readers run, per mode.
const RUN: Duration = Duration::from_secs(4);

async fn sidecar(redis: &RedisServer, coherence: &str) -> Proxy {
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.hot.coherence = coherence.into();
        c.cache = vec![CacheRule {
            keys: "coh:*".into(),
            ttl: Human::secs(60),
            max_value_size: Size::mib(1),
            enabled: true,
        }];
    })
    .await;
    history::wait_coherent(&proxy).await;
    proxy
}

fn key(i: usize) -> String {
    format!("coh:{i}")
}

/// One write of `version` to key `i`, in the way picked by `how`.
async fn write(c: &mut MultiplexedConnection, how: u64, i: usize, version: u64) {
    let (k, v) = (key(i), version.to_string());
    let r: redis::RedisResult<redis::Value> = match how % 4 {
        0 => redis::cmd("SET").arg(&k).arg(&v).query_async(c).await,
        1 => {
            // The neighbour is written with its own current value's key untouched: a key of
            // another namespace keeps MSET multi-key without disturbing other writers.
            redis::cmd("MSET")
                .arg(&k)
                .arg(&v)
                .arg(format!("other:{i}"))
                .arg(&v)
                .query_async(c)
                .await
        }
        2 => {
            redis::pipe()
                .atomic()
                .set(&k, &v)
                .incr(format!("other:n:{i}"), 1)
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

async fn check(coherence: &str) {
    let redis = RedisServer::start();
    let a = sidecar(&redis, coherence).await;
    let readers = [
        sidecar(&redis, coherence).await,
        sidecar(&redis, coherence).await,
    ];
    let mut direct = redis.direct().await;
    for i in 0..KEYS {
        let _: () = redis::cmd("SET")
            .arg(key(i))
            .arg(0)
            .query_async(&mut direct)
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
    if coherence == "broadcast" {
        // Writes that overlap an announcement in flight are announced in batches: the checker
        // must have covered that path as well as writes that carry their own PUBLISH.
        let m = a.admin_get("/metrics").await.1;
        let sent = metric(&m, "cacheside_broadcast_announcements_total").unwrap_or(0.0);
        let keys = metric(&m, "cacheside_broadcast_announced_keys_total").unwrap_or(0.0);
        eprintln!("broadcast: {sent} batched PUBLISHes carried {keys} keys");
        assert!(sent > 0.0, "some writes were announced in batches");
    }
    outcome.assert_clean(coherence, 1000, "were older than an acknowledged write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_broadcast() {
    check("broadcast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_tracking() {
    check("tracking").await;
}
