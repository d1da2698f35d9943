//! Write-through and related-key invalidation against a real PostgreSQL and redis-server: SET,
//! HSET and DEL of mapped keys run their statement first and reach Redis only after the commit;
//! a failed statement answers its error and leaves every cache untouched; options and states
//! that cannot be written through are refused; related keys go for the old and new row; a load
//! in flight never fills a row older than an acknowledged write. Under concurrency:
//! write_through_coherence.rs.

mod support;

use cacheside::config::{Config, MappingConfig};
use redis::AsyncCommands;
use std::time::Duration;
use support::postgres::PgServer;
use support::readthrough::mapping;
use support::{metric, Proxy, RedisServer};

const WRITE_PRODUCT: &str = "INSERT INTO products (id, name, price, category) \
     SELECT id, name, price, category FROM json_populate_record(null::products, $2::json) \
     ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, category = EXCLUDED.category";

/// `product:{id}` written through, with its category lists as related keys.
fn product() -> MappingConfig {
    MappingConfig {
        write: "through".into(),
        write_query: Some(WRITE_PRODUCT.into()),
        // Product 13 cannot be deleted: a failing statement on demand.
        delete_query: Some(
            "DELETE FROM products WHERE id = $1 AND 1 / ($1 - 13) IS NOT NULL".into(),
        ),
        invalidates: vec!["products:category:{category}".into()],
        ..mapping(
            "product",
            "product:{id}",
            "SELECT id, name, price, category FROM products WHERE id = $1",
            "json",
        )
    }
}

fn configure(c: &mut Config, pg: &PgServer) {
    c.postgres.url = Some(pg.url());
    c.mapping = vec![
        product(),
        mapping(
            "category",
            "products:category:{category}",
            "SELECT id, name FROM products WHERE category = $1 ORDER BY id",
            "json_array",
        ),
        MappingConfig {
            write: "through".into(),
            write_query: Some(
                "UPDATE products SET name = COALESCE($2::json->>'name', name), \
                 price = COALESCE(($2::json->>'price')::numeric, price) WHERE id = $1"
                    .into(),
            ),
            ..mapping(
                "product_hash",
                "producth:{id}",
                "SELECT name, price, category FROM products WHERE id = $1",
                "hash",
            )
        },
        MappingConfig {
            write: "through".into(),
            write_query: Some("UPDATE products SET name = $2 WHERE id = $1".into()),
            ..mapping(
                "slow",
                "slowproduct:{id}",
                "SELECT p.name FROM products p, pg_sleep(0.5) WHERE p.id = $1",
                "string",
            )
        },
        // Not written through: a DEL only invalidates, related keys included.
        MappingConfig {
            invalidates: vec!["products:category:{category}".into()],
            ..mapping(
                "item",
                "item:{id}",
                "SELECT id, name, category FROM products WHERE id = $1",
                "json",
            )
        },
    ];
}

async fn sidecar(redis: &RedisServer, pg: &PgServer) -> Proxy {
    Proxy::start_with(&redis.url(), |c| configure(c, pg)).await
}

async fn row(pg: &PgServer, id: i32) -> Option<(String, String)> {
    pg.client()
        .await
        .query_opt("SELECT name, category FROM products WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

async fn counter(proxy: &Proxy, series: &str) -> f64 {
    metric(&proxy.admin_get("/metrics").await.1, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_commits_the_row_then_updates_redis_with_the_mapping_ttl() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;

    let value = r#"{"id":42,"name":"Lamp","price":12.5,"category":"home"}"#;
    let ok: String = c.set("product:42", value).await.unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(row(&pg, 42).await, Some(("Lamp".into(), "home".into())));
    let held: String = direct.get("product:42").await.unwrap();
    assert_eq!(held, value, "Redis holds exactly what the client wrote");
    let ttl: i64 = direct.ttl("product:42").await.unwrap();
    assert!(
        (3600..=3960).contains(&ttl),
        "the mapping's ttl + jitter: {ttl}"
    );
    let read: String = c.get("product:42").await.unwrap();
    assert_eq!(read, value);

    // A new row (id 500 does not exist yet) and an explicit expiry.
    let value = r#"{"id":500,"name":"Desk","price":99,"category":"home"}"#;
    let _: () = redis::cmd("SET")
        .arg("product:500")
        .arg(value)
        .arg("EX")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(row(&pg, 500).await, Some(("Desk".into(), "home".into())));
    let ttl: i64 = direct.ttl("product:500").await.unwrap();
    assert!((90..=100).contains(&ttl), "EX is kept: {ttl}");
    assert_eq!(
        counter(
            &proxy,
            "cacheside_write_through_total{mapping=\"product\",outcome=\"ok\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_answers_its_error_and_leaves_every_cache_untouched() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg);
        c.cache = vec![support::cache_rule("product:*", 60)];
        c.hot.coherence = "tracking".into();
    })
    .await;
    support::history::wait_coherent(&proxy).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    let before: String = c.get("product:7").await.unwrap();
    for _ in 0..3 {
        let again: String = c.get("product:7").await.unwrap();
        assert_eq!(again, before);
    }
    let hits = counter(
        &proxy,
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
    )
    .await;
    assert!(hits >= 1.0, "the hot tier holds the value");
    let _: () = direct
        .set("cacheside:lease:{product:7}", "someone-elses-load")
        .await
        .unwrap();

    let bad = r#"{"id":7,"name":"Lamp","price":"not a number","category":"home"}"#;
    let err = c.set::<_, _, String>("product:7", bad).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cacheside: mapping product:") && text.contains("numeric"),
        "names the mapping and the database's message: {text}"
    );
    assert_eq!(row(&pg, 7).await.unwrap().0, "Product 7");
    let held: String = direct.get("product:7").await.unwrap();
    assert_eq!(held, before, "Redis untouched");
    let lease: String = direct.get("cacheside:lease:{product:7}").await.unwrap();
    assert_eq!(lease, "someone-elses-load", "no lease disturbed");
    let read: String = c.get("product:7").await.unwrap();
    assert_eq!(read, before);
    assert!(
        counter(
            &proxy,
            "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}"
        )
        .await
            > hits,
        "the hot tier still serves the value"
    );
    assert_eq!(
        counter(
            &proxy,
            "cacheside_write_through_total{mapping=\"product\",outcome=\"error\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_runs_the_delete_statement_and_deletes_nothing_when_it_fails() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    let _: String = c.get("product:9").await.unwrap();
    let _: String = c.get("product:13").await.unwrap();

    let n: i64 = c.del("product:9").await.unwrap();
    assert_eq!(n, 1, "Redis's own count");
    assert_eq!(row(&pg, 9).await, None, "the row is deleted");
    let gone: bool = direct.exists("product:9").await.unwrap();
    assert!(!gone);
    let none: Option<String> = c.get("product:9").await.unwrap();
    assert_eq!(none, None);

    let err = c.del::<_, i64>("product:13").await.unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert!(row(&pg, 13).await.is_some());
    let kept: bool = direct.exists("product:13").await.unwrap();
    assert!(kept, "a failed statement deletes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_cannot_be_written_through_are_refused_with_a_clear_error() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let value = r#"{"id":5,"name":"Nope","price":1,"category":"home"}"#;
    for (cmd, why) in [
        (
            redis::cmd("SET")
                .arg("product:5")
                .arg(value)
                .arg("NX")
                .clone(),
            "NX",
        ),
        (
            redis::cmd("SET")
                .arg("product:5")
                .arg(value)
                .arg("GET")
                .clone(),
            "GET",
        ),
        (
            redis::cmd("APPEND").arg("product:5").arg("x").clone(),
            "APPEND",
        ),
        (
            redis::cmd("HSET")
                .arg("product:5")
                .arg("f")
                .arg("v")
                .clone(),
            "HSET",
        ),
    ] {
        let err = cmd.query_async::<redis::Value>(&mut c).await.unwrap_err();
        assert!(
            err.to_string().contains("mapping product:") && err.to_string().contains(why),
            "{why}: {err}"
        );
    }
    // In a transaction: refused when queued; the database is never skipped silently.
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\n").await;
    raw.expect(b"+OK\r\n").await;
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$9\r\nproduct:5\r\n${}\r\n{value}\r\n",
        value.len()
    );
    raw.send(set.as_bytes()).await;
    let refused = String::from_utf8(raw.read_exact_len(31).await).unwrap();
    assert!(
        refused.starts_with("-ERR cacheside: mapping product"),
        "{refused}"
    );
    assert_eq!(row(&pg, 5).await.unwrap().0, "Product 5");
    // Only the expiry: forwarded as it is.
    let _: String = c.get("product:5").await.unwrap();
    let set: bool = c.expire("product:5", 50).await.unwrap();
    assert!(set);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hset_writes_through_and_redis_holds_the_whole_row() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    let added: i64 = c.hset("producth:8", "name", "Renamed").await.unwrap();
    assert_eq!(added, 0, "name was a field of the row already");
    assert_eq!(row(&pg, 8).await.unwrap().0, "Renamed");
    let all: std::collections::HashMap<String, String> =
        direct.hgetall("producth:8").await.unwrap();
    assert_eq!(
        all.len(),
        3,
        "the whole row, not the one field written: {all:?}"
    );
    assert_eq!(all["name"], "Renamed");
    let ttl: i64 = direct.ttl("producth:8").await.unwrap();
    assert!(ttl > 3000, "{ttl}");
    let name: String = c.hget("producth:8", "name").await.unwrap();
    assert_eq!(name, "Renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_product_invalidates_both_category_lists() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let writer = sidecar(&redis, &pg).await;
    let reader = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg);
        c.cache = vec![support::cache_rule("products:category:*", 60)];
        c.hot.coherence = "tracking".into();
    })
    .await;
    support::history::wait_coherent(&reader).await;
    let mut w = writer.client().await;
    let mut r = reader.client().await;
    let ids = |list: &str| -> Vec<i64> {
        serde_json::from_str::<Vec<serde_json::Value>>(list)
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    // Product 2 is in "books"; both lists are cached in Redis and the reader's hot tier.
    for _ in 0..2 {
        let books: String = r.get("products:category:books").await.unwrap();
        assert!(ids(&books).contains(&2));
        let toys: String = r.get("products:category:toys").await.unwrap();
        assert!(!ids(&toys).contains(&2));
    }
    let moved = r#"{"id":2,"name":"Product 2","price":4.99,"category":"toys"}"#;
    let _: () = w.set("product:2", moved).await.unwrap();
    let books: String = r.get("products:category:books").await.unwrap();
    assert!(
        !ids(&books).contains(&2),
        "the old category's list was invalidated"
    );
    let toys: String = r.get("products:category:toys").await.unwrap();
    assert!(
        ids(&toys).contains(&2),
        "the new category's list was invalidated"
    );
    assert!(
        counter(
            &writer,
            "cacheside_origin_queries_total{mapping=\"category\"}"
        )
        .await
            == 0.0,
        "the writer loaded no list itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_del_invalidates_related_keys_of_the_cached_and_current_row() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;
    // The seeds' flow: read, UPDATE in the app, DEL the key.
    let _: String = c.get("item:3").await.unwrap();
    let _: String = c.get("products:category:clothing").await.unwrap();
    let _: String = c.get("products:category:home").await.unwrap();
    pg.execute("UPDATE products SET category = 'home' WHERE id = 3");
    let n: i64 = c.del("item:3").await.unwrap();
    assert_eq!(n, 1);
    for list in ["products:category:clothing", "products:category:home"] {
        let held: bool = direct.exists(list).await.unwrap();
        assert!(!held, "{list} was invalidated");
    }
    assert_eq!(row(&pg, 3).await.unwrap().1, "home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_does_not_fill_a_row_older_than_an_acknowledged_write() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let a = sidecar(&redis, &pg).await;
    let b = sidecar(&redis, &pg).await;
    let mut direct = redis.direct().await;
    // B's load reads the row as it was (its statement's snapshot), for 500 ms.
    let mut rc = b.client().await;
    let load = tokio::spawn(async move {
        let v: String = rc.get("slowproduct:11").await.unwrap();
        v
    });
    // Its lease is taken once the load has begun.
    while !direct
        .exists::<_, bool>("cacheside:lease:{slowproduct:11}")
        .await
        .unwrap()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut wc = a.client().await;
    let _: () = wc.set("slowproduct:11", "Written").await.unwrap();
    let _ = load.await.unwrap();
    let held: String = direct.get("slowproduct:11").await.unwrap();
    assert_eq!(
        held, "Written",
        "the older load did not overwrite the write"
    );
    let read: String = wc.get("slowproduct:11").await.unwrap();
    assert_eq!(read, "Written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_read_after_a_write_through_sees_it() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let _: String = c.get("product:17").await.unwrap();
    let value = r#"{"id":17,"name":"Piped","price":3,"category":"toys"}"#;
    let (ok, read, n, gone): (String, String, i64, Option<String>) = redis::pipe()
        .cmd("SET")
        .arg("product:17")
        .arg(value)
        .cmd("GET")
        .arg("product:17")
        .cmd("DEL")
        .arg("product:17")
        .cmd("GET")
        .arg("product:17")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((ok.as_str(), read.as_str(), n), ("OK", value, 1));
    assert_eq!(gone, None, "the row was deleted before the last GET loaded");
    assert_eq!(row(&pg, 17).await, None);
}
