//! Read-through from a real PostgreSQL through real sidecars on a real redis-server: every
//! shape, typed captures, negative caching, TTLs, outages, MGET and warm-up batching, TLS, and
//! the seeds' cache-aside flows. Concurrency and races: readthrough_races.rs.

mod support;

use cacheside::config::units::Human;
use cacheside::config::Config;
use redis::AsyncCommands;
use std::time::{Duration, Instant};
use support::postgres::PgServer;
use support::readthrough::{configure, mapping, sidecar};
use support::{Proxy, RedisServer};

/// The JSON Postgres itself renders for a query (the expected value of a json shape).
async fn pg_json(pg: &PgServer, sql: &str) -> String {
    let client = pg.client().await;
    let row = client
        .query_one(&format!("SELECT row_to_json(q)::text FROM ({sql}) q"), &[])
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_is_read_through_and_filled_into_redis() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let mut direct = redis.direct().await;

    let json: String = c.get("product:7").await.unwrap();
    assert_eq!(
        json,
        pg_json(
            &pg,
            "SELECT id, name, price, category FROM products WHERE id = 7"
        )
        .await
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["id"], 7);
    let filled: String = direct.get("product:7").await.unwrap();
    assert_eq!(filled, json, "the value was written to Redis");
    let ttl: i64 = direct.ttl("product:7").await.unwrap();
    assert!(
        (3600..=3960).contains(&ttl),
        "ttl 1h plus up to 10% jitter, got {ttl}"
    );

    let category = parsed["category"].as_str().unwrap().to_string();
    let list: String = c
        .get(format!("products:category:{category}"))
        .await
        .unwrap();
    let items: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert!(items.len() > 1 && items.iter().any(|p| p["id"] == 7));

    let name: String = c.hget("producth:7", "name").await.unwrap();
    assert_eq!(serde_json::Value::String(name.clone()), parsed["name"]);
    let all: std::collections::HashMap<String, String> = c.hgetall("producth:8").await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let price: String = direct.hget("producth:8", "price").await.unwrap();
    assert!(
        price.contains('.'),
        "numeric keeps Postgres's rendering: {price}"
    );

    let only_name: String = c.get("product-name:7").await.unwrap();
    assert_eq!(only_name, name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_are_converted_to_the_parameter_types_or_passed_through() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let client = pg.client().await;
    let row = client
        .query_one(
            "SELECT id::text, email FROM users ORDER BY email LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (id, email): (String, String) = (row.get(0), row.get(1));
    let user: String = c.get(format!("user:{id}")).await.unwrap();
    assert!(user.contains(&email), "{user}");
    let born_row = client
        .query_one(
            "SELECT born::text FROM users WHERE born IS NOT NULL LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let born: String = born_row.get(0);
    let by_day: String = c.get(format!("users:born:{born}")).await.unwrap();
    assert!(by_day.starts_with('['), "{by_day}");

    pg.reset_stats();
    // A key whose capture is not a valid value for its parameter is not the mapping's key: it
    // is Redis's, like any other (the seeds keep view counters at `product:{id}:views`).
    let none: Option<String> = c.get("product:abc").await.unwrap();
    assert_eq!(none, None);
    let none: Option<String> = c.get("user:not-a-uuid").await.unwrap();
    assert_eq!(none, None);
    let none: Option<String> = c.get("product:151:views").await.unwrap();
    assert_eq!(none, None, "a capture does not run across ':'");
    let views: i64 = c.incr("product:151:views", 1).await.unwrap();
    assert_eq!(views, 1);
    let views: String = c.get("product:151:views").await.unwrap();
    assert_eq!(views, "1");
    let _: () = c.set("product:abc", "plain").await.unwrap();
    let plain: String = c.get("product:abc").await.unwrap();
    assert_eq!(plain, "plain");
    let mut direct = redis.direct().await;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("cacheside:*:product:abc*")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(
        leases.is_empty(),
        "no lease or marker for a key that is not mapped: {leases:?}"
    );
    assert_eq!(
        pg.query_count("FROM products WHERE id"),
        0,
        "keys that are not the mapping's run no query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_nil_and_remembered_until_a_write_clears_it() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    pg.reset_stats();
    for _ in 0..5 {
        let v: Option<String> = c.get("product:424242").await.unwrap();
        assert_eq!(v, None);
    }
    assert_eq!(
        pg.query_count("FROM products WHERE id"),
        1,
        "not found is remembered"
    );
    let mut direct = redis.direct().await;
    let raw: Option<String> = direct.get("product:424242").await.unwrap();
    assert_eq!(raw, None, "clients never see a marker value");
    // The app inserts the row, then invalidates as cache-aside code does.
    pg.execute(
        "INSERT INTO products (id, name, price, category) VALUES (424242, 'New', 1.00, 'new')",
    );
    let _: i64 = c.del("product:424242").await.unwrap();
    let v: String = c.get("product:424242").await.unwrap();
    assert!(v.contains("\"New\""), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_reads_come_from_postgres_and_postgres_down_fails_fast() {
    let mut redis = RedisServer::start();
    let mut pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg);
        c.postgres.breaker_failures = 2;
        c.postgres.breaker_cooldown = Human::secs(30);
    })
    .await;
    let mut c = proxy.client().await;
    let cached: String = c.get("product:3").await.unwrap();

    redis.kill();
    let degraded: String = tokio::time::timeout(Duration::from_secs(5), c.get("product:4"))
        .await
        .expect("answered promptly")
        .unwrap();
    assert!(degraded.contains("\"id\":4"), "{degraded}");
    let (_, metrics) = proxy.admin_get("/metrics").await;
    assert!(
        metrics.contains("cacheside_origin_degraded_total{mapping=\"product\"}"),
        "{metrics}"
    );
    // Both reads were answered by a load: timed as source="origin".
    assert!(
        support::metric(
            &metrics,
            "cacheside_request_duration_seconds_count{source=\"origin\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{metrics}"
    );

    redis.restart();
    // Redis restarted empty. Until cacheside has reconnected, reads stay degraded (answered
    // from Postgres, not filled); wait until a read has filled Redis again.
    let mut direct = redis.direct().await;
    let start = Instant::now();
    loop {
        if let Ok(Ok(v)) =
            tokio::time::timeout(Duration::from_secs(2), c.get::<_, String>("product:3")).await
        {
            assert!(v.contains("\"id\":3"));
        }
        if direct.exists::<_, bool>("product:3").await.unwrap_or(false) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "cacheside reconnects and fills again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.stop();
    // What Redis holds is still served.
    let again: String = c.get("product:3").await.unwrap();
    assert_eq!(again, cached);
    // Other mapped keys fail with a clear, prompt error naming the mapping.
    for _ in 0..4 {
        let started = Instant::now();
        let err = c.get::<_, Option<String>>("product:99").await.unwrap_err();
        assert!(err.to_string().contains("mapping product"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let err = c.get::<_, Option<String>>("product:98").await.unwrap_err();
    assert!(
        err.to_string().contains("circuit open"),
        "the breaker opened: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_cache_aside_flows_need_no_cache_code() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    // getProduct: GET product:{id}, JSON.parse.
    let p: serde_json::Value =
        serde_json::from_str(&c.get::<_, String>("product:12").await.unwrap()).unwrap();
    assert_eq!(p["id"], 12);
    // getMultipleProducts: MGET of several ids, nil for the missing one, order kept.
    let many: Vec<Option<String>> = c
        .mget(&["product:13", "product:999999", "product:12"])
        .await
        .unwrap();
    assert!(many[0].as_deref().unwrap().contains("\"id\":13"));
    assert_eq!(many[1], None);
    assert!(many[2].as_deref().unwrap().contains("\"id\":12"));
    // updateProduct: UPDATE then DEL the key; the next read sees the update.
    pg.execute("UPDATE products SET name = 'Renamed lamp' WHERE id = 12");
    let _: i64 = c.del("product:12").await.unwrap();
    let p: serde_json::Value =
        serde_json::from_str(&c.get::<_, String>("product:12").await.unwrap()).unwrap();
    assert_eq!(p["name"], "Renamed lamp");
    // getProductsByCategory: a query-result list.
    let cat = p["category"].as_str().unwrap().to_string();
    let list: Vec<serde_json::Value> = serde_json::from_str(
        &c.get::<_, String>(format!("products:category:{cat}"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(list.iter().any(|x| x["name"] == "Renamed lamp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_of_a_hundred_cold_keys_runs_one_query() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = sidecar(&redis, &pg).await;
    let mut c = proxy.client().await;
    let mut keys: Vec<String> = (1..=100).map(|i| format!("product:{i}")).collect();
    keys.push("product:777777".into()); // no such row
    keys.push("product:5".into()); // a duplicate
    pg.reset_stats();
    let values: Vec<Option<String>> = c.mget(&keys).await.unwrap();
    assert_eq!(values.len(), 102);
    for (i, v) in values.iter().take(100).enumerate() {
        let v = v
            .as_deref()
            .unwrap_or_else(|| panic!("product:{} missing", i + 1));
        assert!(v.contains(&format!("\"id\":{},", i + 1)), "order kept: {v}");
    }
    assert_eq!(values[100], None);
    assert_eq!(values[101], values[4]);
    assert_eq!(
        pg.query_count("= ANY"),
        1,
        "one batch query for all the misses"
    );
    assert_eq!(pg.query_count("WHERE id = $1"), 0, "no per-key query");
    // They were filled in Redis: the same MGET again runs no query at all.
    pg.reset_stats();
    let again: Vec<Option<String>> = c.mget(&keys).await.unwrap();
    assert_eq!(again, values);
    assert_eq!(pg.query_count("products"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_fills_the_most_viewed_keys_before_readiness() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    pg.reset_stats();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        configure(c, &pg);
        c.postgres.wait_for_warm = true;
        c.warm = vec![cacheside::config::WarmConfig {
            mapping: "product".into(),
            query: "SELECT id FROM products ORDER BY views DESC, id LIMIT 20".into(),
        }];
    })
    .await;
    let start = Instant::now();
    while proxy.admin_get("/readyz").await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "ready once warmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = pg.client().await;
    let ids: Vec<i32> = client
        .query(
            "SELECT id FROM products ORDER BY views DESC, id LIMIT 20",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut direct = redis.direct().await;
    for id in &ids {
        let v: Option<String> = direct.get(format!("product:{id}")).await.unwrap();
        assert!(
            v.is_some_and(|v| v.contains(&format!("\"id\":{id},"))),
            "product:{id} was warmed"
        );
    }
    assert_eq!(pg.query_count("= ANY"), 1, "warmed with one batch query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgres_is_used_and_verified() {
    let redis = RedisServer::start();
    let pg = PgServer::start_tls();
    // The mapping asks Postgres whether its own connection is encrypted.
    let whoami = mapping(
        "whoami",
        "whoami:{id}",
        "SELECT s.ssl, $1::int AS id FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
        "json",
    );
    let with = |mode: &'static str, ca: Option<std::path::PathBuf>| {
        let whoami = whoami.clone();
        let pg = &pg;
        move |c: &mut Config| {
            configure(c, pg);
            c.mapping = vec![whoami];
            c.postgres.tls = mode.into();
            c.postgres.ca_file = ca;
        }
    };
    let verified = Proxy::start_with(&redis.url(), with("verify-full", Some(pg.cert_path()))).await;
    let v: String = verified.client().await.get("whoami:1").await.unwrap();
    assert!(
        v.contains("\"ssl\":true"),
        "verify-full against the server's CA encrypts: {v}"
    );

    // The server's self-signed certificate is not in the public roots: verify-full refuses it.
    let strict = Proxy::start_with(&redis.url(), with("verify-full", None)).await;
    let err = strict
        .client()
        .await
        .get::<_, Option<String>>("whoami:2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mapping whoami"), "{err}");

    let plain = Proxy::start_with(&redis.url(), with("disable", None)).await;
    let v: String = plain.client().await.get("whoami:3").await.unwrap();
    assert!(v.contains("\"ssl\":false"), "{v}");

    let preferred = Proxy::start_with(&redis.url(), with("prefer", None)).await;
    let v: String = preferred.client().await.get("whoami:4").await.unwrap();
    assert!(
        v.contains("\"ssl\":true"),
        "prefer uses TLS when the server offers it: {v}"
    );
}
