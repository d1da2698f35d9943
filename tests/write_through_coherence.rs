//! History checker for write-through with a hot tier: writers SET rows through two sidecars
//! (write-through: the row is committed in PostgreSQL before Redis is written), and now and
//! then DEL a key (which only invalidates it, so the next read loads it from PostgreSQL under a
//! fill lease); readers GET the keys through all three sidecars, which keep them in their hot
//! tiers. A read that began after a write was acknowledged must see that write or a later one,
//! in either coherence mode.

mod support;

use cacheside::config::MappingConfig;
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
            write: "through".into(),
            write_query: Some("UPDATE products SET name = $2::json->>'name' WHERE id = $1".into()),
            on_delete: Some("invalidate".into()),
            ..MappingConfig::default()
        }];
        c.hot.coherence = coherence.into();
        c.cache = vec![support::cache_rule("item:*", 60)];
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
    pg.execute("UPDATE products SET name = 'v0' WHERE id <= 6");
    let sidecars = [
        sidecar(&redis, &pg, coherence).await,
        sidecar(&redis, &pg, coherence).await,
        sidecar(&redis, &pg, coherence).await,
    ];
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..=ROWS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // One writer per key, through sidecar 0 or 1.
    for id in 1..=ROWS {
        let writer = &sidecars[(id % 2) as usize];
        let (mut c, acked, stop) = (writer.client().await, acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut v = 0u64;
            while !stop.load(SeqCst) {
                v += 1;
                let _: () = redis::cmd("SET")
                    .arg(format!("item:{id}"))
                    .arg(format!(r#"{{"id":{id},"name":"v{v}"}}"#))
                    .query_async(&mut c)
                    .await
                    .unwrap();
                acked[id as usize].store(v, SeqCst);
                if v.is_multiple_of(3) {
                    // Only invalidates: the next reads load the row from PostgreSQL.
                    let _: i64 = redis::cmd("DEL")
                        .arg(format!("item:{id}"))
                        .query_async(&mut c)
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (0u64, 0u64)
        }));
    }
    for (n, proxy) in sidecars.iter().enumerate() {
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
                        eprintln!("stale item:{id} (sidecar {n}): saw v{seen} after v{floor} was written through");
                    }
                }
                (reads, stale)
            }));
        }
    }
    let outcome = history::finish(RUN, &stop, tasks, &sidecars).await;
    let mut loads = 0.0;
    for p in &sidecars {
        loads += support::metric(
            &p.admin_get("/metrics").await.1,
            "cacheside_origin_queries_total{mapping=\"item\"}",
        )
        .unwrap_or(0.0);
    }
    eprintln!("{coherence}: {loads} loads from PostgreSQL");
    assert!(loads > 0.0, "reads loaded rows, so fills raced writes");
    outcome.assert_clean(
        coherence,
        500,
        "returned a row older than an acknowledged write-through",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_acknowledged_write_through_with_tracking() {
    check("tracking").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_acknowledged_write_through_with_broadcast() {
    check("broadcast").await;
}
