//! Stale-if-error against a real PostgreSQL and redis-server: with the database stopped after a
//! key expired, reads are still answered with the row as it was, within the window; after the
//! window, the usual error; once the database is back, a fresh load replaces the value. Apps'
//! plain GETs of the key see the row's own encoding throughout.

mod support;

use cacheside::config::units::Human;
use cacheside::config::{Config, MappingConfig};
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use support::postgres::PgServer;
use support::{metric, Proxy, RedisServer};

fn configure(c: &mut Config, pg: &PgServer) {
    c.postgres.url = Some(pg.url());
    c.postgres.connect_timeout = Human(Duration::from_millis(300));
    c.mapping = vec![MappingConfig {
        name: "product".into(),
        key: "product:{id}".into(),
        query: "SELECT id, name, price, category FROM products WHERE id = $1".into(),
        ttl: Human::secs(1),
        stale_if_error: Some(Human::secs(3)),
        ..MappingConfig::default()
    }];
}

/// Polls Redis until `key` is gone (its TTL ran out).
async fn until_gone(direct: &mut redis::aio::MultiplexedConnection, key: &str) {
    let start = Instant::now();
    while direct.exists::<_, bool>(key).await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{key} never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stale_answers(proxy: &Proxy) -> f64 {
    metric(
        &proxy.admin_get("/metrics").await.1,
        "cacheside_stale_answers_total{mapping=\"product\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_stay_readable_past_their_ttl_while_the_database_is_down() {
    let redis = RedisServer::start();
    let mut pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| configure(c, &pg)).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;

    let fresh: String = c.get("product:30").await.unwrap();
    let held: String = direct.get("product:30").await.unwrap();
    assert_eq!(
        held, fresh,
        "Redis holds the row's own encoding, no envelope"
    );
    let ttl: i64 = direct.pttl("product:30").await.unwrap();
    assert!(ttl <= 1000, "the key keeps the mapping's ttl: {ttl} ms");

    pg.stop();
    until_gone(&mut direct, "product:30").await;
    let stale: String = c.get("product:30").await.unwrap();
    assert_eq!(stale, fresh, "answered with the row as it was");
    assert_eq!(stale_answers(&proxy).await, 1.0);
    let again: String = c.get("product:30").await.unwrap();
    assert_eq!(again, fresh);
    let none: Option<String> = direct.get("product:30").await.unwrap();
    assert_eq!(none, None, "the stale value is not written back as fresh");

    // After the window: the usual error.
    until_gone(&mut direct, "cacheside:stale:{product:30}").await;
    let err = c.get::<_, String>("product:30").await.unwrap_err();
    assert!(
        err.to_string().contains("cacheside: mapping product:"),
        "{err}"
    );

    // The database is back: a fresh load, and a stale copy again.
    pg.restart();
    pg.execute("UPDATE products SET name = 'Back' WHERE id = 30");
    let start = Instant::now();
    let back: String = loop {
        // The circuit breaker may hold reads off for its cooldown after the outage.
        match c.get::<_, String>("product:30").await {
            Ok(v) => break v,
            Err(_) => {
                assert!(start.elapsed() < Duration::from_secs(30), "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(back.contains("\"Back\""), "{back}");
    let copy: String = direct.get("cacheside:stale:{product:30}").await.unwrap();
    assert_eq!(copy, back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_removes_the_stale_copy() {
    let redis = RedisServer::start();
    let mut pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| configure(c, &pg)).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    let _: String = c.get("product:31").await.unwrap();
    assert!(direct
        .exists::<_, bool>("cacheside:stale:{product:31}")
        .await
        .unwrap());
    // The seeds' update flow: a DEL through cacheside after the UPDATE.
    let _: i64 = c.del("product:31").await.unwrap();
    assert!(
        !direct
            .exists::<_, bool>("cacheside:stale:{product:31}")
            .await
            .unwrap(),
        "a value older than an acknowledged write is never answered"
    );
    pg.stop();
    let err = c.get::<_, String>("product:31").await.unwrap_err();
    assert!(err.to_string().contains("mapping product:"), "{err}");
    assert_eq!(stale_answers(&proxy).await, 0.0);
}
