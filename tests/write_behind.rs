//! Write-behind (`write = "behind"`): a SET is acknowledged once queued in the mapping's Redis
//! Stream and readable at once; the queue reaches PostgreSQL exactly as last written, through
//! a SIGKILL mid-flush and a takeover by another sidecar; a poison entry is dead-lettered; a
//! full queue refuses writes.

mod support;

use cacheside::config::units::Human;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::behind::{
    configure, rows, spawn_writers, toml, DEAD, SLOW_WRITE_QUERY, STREAM, WRITE_QUERY,
};
use support::counters::{eventually, Sidecar};
use support::postgres::PgServer;
use support::{metric, query, Proxy, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_queued_readable_at_once_and_reaches_postgres() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| configure(c, &pg, |_| {})).await;
    let mut c = proxy.client().await;
    let _: () = query(&mut c, &["SET", "item:1", "first"]).await;
    let _: () = query(&mut c, &["SET", "item:1", "second"]).await;
    assert_eq!(query::<String>(&mut c, &["GET", "item:1"]).await, "second");
    let _: () = query(&mut c, &["SETEX", "item:2", "100", "expiring"]).await;
    // NX that does not set: nil, and nothing is queued.
    let r: Option<String> = query(&mut c, &["SET", "item:1", "third", "NX"]).await;
    assert_eq!(r, None);
    // A bad option: Redis's own error, byte for byte; nothing is queued.
    let mut raw = proxy.raw().await;
    raw.send(b"SET item:3 v EX notanumber\r\n").await;
    raw.expect(b"-ERR value is not an integer or out of range\r\n")
        .await;
    raw.send(b"SET item:3 v GET\r\n").await;
    raw.expect(b"-ERR cacheside: mapping item is write-behind: SET with GET is not supported\r\n")
        .await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            let r = rows(&pg).await;
            r.get(&1).map(String::as_str) == Some("second")
                && r.get(&2).map(String::as_str) == Some("expiring")
        })
        .await,
        "the writes reach the database: {:?}",
        rows(&pg).await
    );
    let mut direct = redis.direct().await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            query::<i64>(&mut direct, &["XLEN", STREAM]).await == 0
        })
        .await,
        "applied entries leave the stream"
    );
    assert!(!rows(&pg).await.contains_key(&3));
    let (_, text) = proxy.admin_get("/metrics").await;
    assert!(
        metric(
            &text,
            "cacheside_write_behind_flushed_total{mapping=\"item\"}"
        )
        .unwrap()
            >= 3.0
    );
    assert!(metric(
        &text,
        "cacheside_write_behind_lag_seconds{mapping=\"item\"}"
    )
    .is_some());
}

/// 10,000 SETs over 200 keys from 8 tasks through a sidecar process that is SIGKILLed halfway,
/// with writes in flight and its worker flushing, then restarted. Every write is retried until
/// acknowledged; each key's last acknowledged value must be the database's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_a_sigkill_mid_flush() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 1_250;
    const KEYS_PER_TASK: usize = 25;
    let redis = RedisServer::start();
    let pg = PgServer::start();
    support::behind::create_table(&pg);
    let a = Sidecar::start_toml(&redis, &pg, &toml(WRITE_QUERY, "2s"));
    let url = Arc::new(Mutex::new(a.url()));
    let acked = Arc::new(AtomicU64::new(0));
    let last: Arc<Mutex<HashMap<i32, String>>> = Arc::default();
    let tasks = spawn_writers(&url, &acked, &last, TASKS, PER_TASK, KEYS_PER_TASK);
    assert!(
        eventually(Duration::from_secs(120), async || acked
            .load(Ordering::Relaxed)
            >= 5_000)
        .await
    );
    let mut a = a;
    a.kill();
    let mut direct = redis.direct().await;
    let queued: i64 = query(&mut direct, &["XLEN", STREAM]).await;
    let pending: Vec<redis::Value> = query(&mut direct, &["XPENDING", STREAM, "cacheside"]).await;
    eprintln!("at the kill: {queued} entries in the stream, pending summary {pending:?}");
    let a2 = Sidecar::start_toml(&redis, &pg, &toml(WRITE_QUERY, "2s"));
    *url.lock().unwrap() = a2.url();
    for t in tasks {
        t.await.expect("writer");
    }
    assert_eq!(acked.load(Ordering::Relaxed), 10_000);
    let want = last.lock().unwrap().clone();
    assert_eq!(want.len(), TASKS * KEYS_PER_TASK);
    let synced = eventually(Duration::from_secs(90), async || rows(&pg).await == want).await;
    let got = rows(&pg).await;
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(
        synced,
        "keys whose database value is not the last acknowledged: {wrong:?}"
    );
    assert_eq!(query::<i64>(&mut direct, &["XLEN", DEAD]).await, 0);
    assert!(
        eventually(Duration::from_secs(30), async || {
            query::<i64>(&mut direct, &["XLEN", STREAM]).await == 0
        })
        .await
    );
}

/// A sidecar process dies holding a batch it read (its writes are slow); another sidecar takes
/// the entries over after `write_behind_claim_idle` and applies them, except where it has
/// already applied a later write of the key: an older entry never overwrites a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sidecar_takes_over_a_dead_ones_entries() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    support::behind::create_table(&pg);
    let mut a = Sidecar::start_toml(&redis, &pg, &toml(SLOW_WRITE_QUERY, "1h"));
    let mut c = a.client().await;
    let mut pipe = redis::pipe();
    for id in 1..=100 {
        pipe.cmd("SET")
            .arg(format!("item:{id}"))
            .arg(format!("old{id}"))
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let mut direct = redis.direct().await;
    let held = async |direct: &mut redis::aio::MultiplexedConnection| {
        let summary: Vec<redis::Value> = query(direct, &["XPENDING", STREAM, "cacheside"]).await;
        match summary.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        }
    };
    assert!(
        eventually(Duration::from_secs(30), async || held(&mut direct).await
            > 0)
        .await,
        "A read a batch"
    );
    a.kill();
    // Each one is 50 ms of A's transaction: A died holding these, uncommitted.
    let held = held(&mut direct).await;
    eprintln!("A held {held} entries when it was killed");
    let b = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg, |m| m.write_behind_claim_idle = Some(Human::secs(3)))
    })
    .await;
    // Later writes of half the keys, through B, while A's entries are not yet idle long enough.
    let mut c = b.client().await;
    for id in 1..=50 {
        let _: () = query(&mut c, &["SET", &format!("item:{id}"), &format!("new{id}")]).await;
    }
    let want: HashMap<i32, String> = (1..=100)
        .map(|id| {
            (
                id,
                if id <= 50 {
                    format!("new{id}")
                } else {
                    format!("old{id}")
                },
            )
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(60), async || {
            let (_, text) = b.admin_get("/metrics").await;
            metric(
                &text,
                "cacheside_write_behind_claimed_total{mapping=\"item\"}",
            )
            .unwrap_or(0.0)
                >= held as f64
                && query::<i64>(&mut direct, &["XLEN", STREAM]).await == 0
        })
        .await,
        "B took over the entries A held and the queue drained"
    );
    let got = rows(&pg).await;
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "last writes lost: {wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_dead_lettered_and_counted() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg, |m| m.write_behind_max_attempts = Some(3))
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = query(&mut c, &["SET", "item:5", "poison"]).await;
    let _: () = query(&mut c, &["SET", "item:6", "fine"]).await;
    let mut direct = redis.direct().await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            query::<i64>(&mut direct, &["XLEN", DEAD]).await == 1
                && query::<i64>(&mut direct, &["XLEN", STREAM]).await == 0
        })
        .await,
        "the poison entry is dead-lettered and the queue drains"
    );
    let dead: Vec<(String, HashMap<String, String>)> =
        query(&mut direct, &["XRANGE", DEAD, "-", "+"]).await;
    assert_eq!(dead[0].1["k"], "item:5");
    assert_eq!(dead[0].1["v"], "poison");
    assert!(
        dead[0].1["error"].contains("check constraint"),
        "{:?}",
        dead[0].1
    );
    let r = rows(&pg).await;
    assert_eq!(r.get(&6).map(String::as_str), Some("fine"));
    assert!(!r.contains_key(&5));
    // Still readable from Redis: the cache holds what the client wrote.
    assert_eq!(query::<String>(&mut c, &["GET", "item:5"]).await, "poison");
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "cacheside_write_behind_dead_lettered_total{mapping=\"item\"}"
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            "cacheside_write_behind_retried_total{mapping=\"item\"}"
        )
        .unwrap()
            >= 2.0
    );
}

/// Past `write_behind_max_queue` entries, writes are refused rather than queued without bound;
/// once the worker drains the queue they are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_queue_limit_are_refused_until_it_drains() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg, |m| m.write_behind_max_queue = Some(3))
    })
    .await;
    // The worker cannot write while a test transaction holds the table.
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE wb_items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut raw = proxy.raw().await;
    for id in 1..=3 {
        raw.send(format!("SET item:{id} v\r\n").as_bytes()).await;
        raw.expect(b"+OK\r\n").await;
    }
    raw.send(b"SET item:4 v\r\n").await;
    raw.expect(b"-ERR cacheside: write-behind queue full\r\n")
        .await;
    let mut direct = redis.direct().await;
    assert_eq!(
        query::<i64>(&mut direct, &["EXISTS", "item:4"]).await,
        0,
        "a refused write is not made"
    );
    let (_, text) = proxy.admin_get("/metrics").await;
    assert_eq!(
        metric(
            &text,
            "cacheside_write_behind_full_refusals_total{mapping=\"item\"}"
        ),
        Some(1.0),
        "the refusal is counted"
    );
    let mut c = proxy.client().await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            redis::cmd("SET")
                .arg("item:4")
                .arg("v")
                .query_async::<()>(&mut c)
                .await
                .is_ok()
        })
        .await,
        "accepted again once the queue drained"
    );
}
