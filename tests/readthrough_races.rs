//! Read-through under concurrency, through real sidecars on a real redis-server: a thousand
//! concurrent misses run one query (counted by PostgreSQL itself), and a write that lands during
//! a load, plain or in a transaction, wins over the loaded value.

mod support;

use redis::AsyncCommands;
use std::time::Duration;
use support::postgres::PgServer;
use support::readthrough::sidecar;
use support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_through_three_sidecars_run_one_query() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let sidecars = [
        sidecar(&redis, &pg).await,
        sidecar(&redis, &pg).await,
        sidecar(&redis, &pg).await,
    ];
    // Warm the prepared statements so only the load itself is counted.
    for s in &sidecars {
        let mut c = s.client().await;
        let _: Option<String> = c.get("product:1").await.unwrap();
    }
    pg.reset_stats();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let url = sidecars[i % 3].url();
        tasks.push(tokio::spawn(async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let v: String = c.get("product:42").await.unwrap();
            v
        }));
    }
    let mut values = std::collections::HashSet::new();
    for t in tasks {
        values.insert(t.await.unwrap());
    }
    assert_eq!(values.len(), 1, "every client got the same value");
    assert_eq!(
        pg.query_count("FROM products WHERE id"),
        1,
        "exactly one query, counted by pg_stat_statements"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_a_load_wins_over_the_loaded_value() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = sidecar(&redis, &pg).await;
    let b = sidecar(&redis, &pg).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    // The slow mapping's query takes 500 ms: the write lands while it runs.
    let load = tokio::spawn(async move {
        let v: String = ca.get("slowproduct:5").await.unwrap();
        v
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _: () = cb
        .set("slowproduct:5", "written-during-load")
        .await
        .unwrap();
    let loaded = load.await.unwrap();
    assert!(!loaded.is_empty());
    let mut direct = redis.direct().await;
    let now: String = direct.get("slowproduct:5").await.unwrap();
    assert_eq!(
        now, "written-during-load",
        "the load did not overwrite the write"
    );
    let (_, metrics) = a.admin_get("/metrics").await;
    assert!(
        metrics
            .contains("cacheside_origin_fills_skipped_total{mapping=\"slow\",reason=\"raced\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_writing_during_a_load_wins_too() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = sidecar(&redis, &pg).await;
    let b = sidecar(&redis, &pg).await;
    let mut ca = a.client().await;
    let load = tokio::spawn(async move {
        let v: String = ca.get("slowproduct:6").await.unwrap();
        v
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut raw = b.raw().await;
    raw.send(b"MULTI\r\nSET slowproduct:6 from-tx\r\nEXEC\r\nPING\r\n")
        .await;
    // The lease cleanup cacheside sends after EXEC is never seen by the client.
    raw.expect(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n+PONG\r\n")
        .await;
    load.await.unwrap();
    let mut direct = redis.direct().await;
    let now: String = direct.get("slowproduct:6").await.unwrap();
    assert_eq!(
        now, "from-tx",
        "the load did not overwrite the transaction's write"
    );
}

/// A read that misses while a load of its key is in flight shares that load only if the load
/// read its value after the read began: here the load's query started before an UPDATE that was
/// committed, and invalidated, before the second read was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_acknowledged_update_does_not_share_an_older_load() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = sidecar(&redis, &pg).await;
    let b = sidecar(&redis, &pg).await;
    let db = pg.client().await;
    db.execute("UPDATE products SET name = 'before' WHERE id = 7", &[])
        .await
        .unwrap();
    let mut first = a.client().await;
    // The slow mapping's query takes 500 ms and reads the row as it was when it started.
    let load = tokio::spawn(async move {
        let v: String = first.get("slowproduct:7").await.unwrap();
        v
    });
    // The load's query has its snapshot before the update commits.
    pg.until_running("pg_sleep(0.5)").await;
    db.execute("UPDATE products SET name = 'after' WHERE id = 7", &[])
        .await
        .unwrap();
    let mut cb = b.client().await;
    let _: i64 = cb.del("slowproduct:7").await.unwrap();
    // Acknowledged: a read sent now must see the update.
    let mut second = a.client().await;
    let v: String = second.get("slowproduct:7").await.unwrap();
    assert_eq!(
        v, "after",
        "the second read shared a load that began before the update"
    );
    assert_eq!(
        load.await.unwrap(),
        "before",
        "the first read began before it"
    );
}
