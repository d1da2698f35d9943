//! History checker for read-through with a hot tier (the seeds' update flow): a writer
//! UPDATEs a row in PostgreSQL, commits, then DELs its key through one sidecar; readers GET the
//! key through two others (one GET at a time, and all keys pipelined in one write, which loads
//! the misses together), which load it from PostgreSQL and keep it in their hot tiers. A read
//! that began after the DEL was acknowledged must not return the row as it was before the
//! UPDATE, in either coherence mode.

mod support;

use cacheside::config::units::{Human, Size};
use cacheside::config::{CacheRule, MappingConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::postgres::PgServer;
use support::{history, Proxy, RedisServer};

const ROWS: u64 = 6;
const RUN: Duration = Duration::from_secs(4);

async fn sidecar(redis: &RedisServer, pg: &PgServer, coherence: &str) -> Proxy {
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.postgres.url = Some(pg.url());
        c.mapping = vec![MappingConfig {
            name: "item".into(),
            key: "item:{id}".into(),
            query: "SELECT id, name FROM products WHERE id = $1".into(),
            shape: "json".into(),
            ttl: Human::secs(3600),
            jitter: None,
            negative_ttl: Human::secs(30),
            batch_query: None,
            write: None,
            write_query: None,
            write_behind_max_attempts: None,
            write_behind_max_queue: None,
            write_behind_claim_idle: None,
        }];
        c.hot.coherence = coherence.into();
        c.cache = vec![CacheRule {
            keys: "item:*".into(),
            ttl: Human::secs(60),
            max_value_size: Size::mib(1),
            enabled: true,
        }];
    })
    .await;
    history::wait_coherent(&proxy).await;
    proxy
}

/// The version in a row's JSON: names are written as `v<version>`.
fn version(json: &str) -> u64 {
    json.split("\"name\":\"v")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn check(coherence: &str) {
    let redis = RedisServer::start();
    let pg = PgServer::start();
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
    let a = sidecar(&redis, &pg, coherence).await;
    let readers = [
        sidecar(&redis, &pg, coherence).await,
        sidecar(&redis, &pg, coherence).await,
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
    for (n, proxy) in readers.iter().enumerate() {
        for id in 1..=ROWS {
            let (mut c, acked, stop) = (proxy.client().await, acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut reads, mut stale) = (0u64, 0u64);
                while !stop.load(SeqCst) {
                    let floor = acked[id as usize].load(SeqCst);
                    let json: String = redis::cmd("GET")
                        .arg(format!("item:{id}"))
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    reads += 1;
                    let seen = version(&json);
                    if seen < floor {
                        stale += 1;
                        eprintln!("stale item:{id} (sidecar {n}): saw v{seen} after v{floor} was committed and invalidated");
                    }
                }
                (reads, stale)
            }));
        }
    }
    // A pipelined reader per sidecar: every key's GET in one write, so misses load together
    // (one query per mapping) while hits come from the tier.
    for (n, proxy) in readers.iter().enumerate() {
        let (mut c, acked, stop) = (proxy.client().await, acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut reads, mut stale) = (0u64, 0u64);
            while !stop.load(SeqCst) {
                let floors: Vec<u64> = (1..=ROWS).map(|id| acked[id as usize].load(SeqCst)).collect();
                let mut pipe = redis::pipe();
                for id in 1..=ROWS {
                    pipe.cmd("GET").arg(format!("item:{id}"));
                }
                let rows: Vec<String> = pipe.query_async(&mut c).await.unwrap();
                for (i, json) in rows.iter().enumerate() {
                    reads += 1;
                    let seen = version(json);
                    if seen < floors[i] {
                        stale += 1;
                        eprintln!("stale item:{} (sidecar {n}, pipelined): saw v{seen} after v{} was committed and invalidated", i + 1, floors[i]);
                    }
                }
            }
            (reads, stale)
        }));
    }
    history::finish(RUN, &stop, tasks, &readers)
        .await
        .assert_clean(
            coherence,
            500,
            "returned a row older than a committed, invalidated update",
        );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_invalidated_update_with_tracking() {
    check("tracking").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_invalidated_update_with_broadcast() {
    check("broadcast").await;
}
