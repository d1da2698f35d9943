//! Write-behind backpressure by lag: while the flush is stalled (a test transaction holds the
//! table locked), the queue's oldest entry ages past `write_behind_max_lag` and writes are
//! refused with an error naming the mapping; once the lock goes, the queue drains, writes are
//! accepted again, and every acknowledged write is in PostgreSQL.

mod support;

use cacheside::config::units::Human;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::behind::{configure, rows, STREAM};
use support::postgres::PgServer;
use support::{eventually, metric, query, Proxy, RedisServer};

/// SET through cacheside: `Ok` once acknowledged, else the error's text.
async fn set(c: &mut redis::aio::MultiplexedConnection, key: &str, v: &str) -> Result<(), String> {
    redis::cmd("SET")
        .arg(key)
        .arg(v)
        .query_async::<()>(c)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_while_the_flush_lags_and_accepted_once_it_catches_up() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg, |m| m.write_behind_max_lag = Some(Human::secs(2)))
    })
    .await;
    let mut c = proxy.client().await;
    // The worker's statements wait on the lock this transaction holds.
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE wb_items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut acked: HashMap<i32, String> = HashMap::new();
    let start = Instant::now();
    let mut id = 0;
    let refusal = loop {
        id += 1;
        let value = format!("v{id}");
        match set(&mut c, &format!("item:{id}"), &value).await {
            Ok(()) => {
                acked.insert(id, value);
            }
            Err(e) => break e,
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no write refused while the flush is stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "refused only past the bound: after {waited:?}"
    );
    assert!(
        refusal.contains("cacheside: mapping item is write-behind and its queue is ")
            && refusal.contains("past write_behind_max_lag (2s)"),
        "{refusal}"
    );
    let mut direct = redis.direct().await;
    let refused = format!("item:{id}");
    assert_eq!(
        query::<i64>(&mut direct, &["EXISTS", &refused]).await,
        0,
        "a refused write is not made"
    );
    let text = proxy.admin_get("/metrics").await.1;
    assert!(
        metric(
            &text,
            "cacheside_write_behind_lag_refusals_total{mapping=\"item\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "cacheside_write_behind_lag_seconds{mapping=\"item\"}"
        )
        .unwrap_or(0.0)
            > 2.0
    );
    eprintln!(
        "{} writes acknowledged, then refused after {waited:?}: {refusal}",
        acked.len()
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let value = format!("v{id}");
    let accepted = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), async || set(
            &mut c, &refused, &value
        )
        .await
        .is_ok())
        .await,
        "writes accepted again once the queue caught up"
    );
    eprintln!(
        "accepted again {:?} after the lock went",
        accepted.elapsed()
    );
    acked.insert(id, value);
    assert!(
        eventually(Duration::from_secs(30), async || rows(&pg).await == acked).await,
        "every acknowledged write is in PostgreSQL: {:?} of {}",
        rows(&pg).await.len(),
        acked.len()
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            query::<i64>(&mut direct, &["XLEN", STREAM]).await == 0
        })
        .await,
        "the queue is empty"
    );
}
