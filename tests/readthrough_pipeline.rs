//! Pipelined reads of cold mapped keys, each its own command in one write from the client,
//! load together: one query per mapping (counted by PostgreSQL itself), in request order, with
//! replies already computed not held behind the load.

mod support;

use cacheside::config::units::Human;
use cacheside::config::{Config, MappingConfig};
use support::postgres::PgServer;
use support::{Proxy, RedisServer};

fn mapping(name: &str, key: &str, query: &str) -> MappingConfig {
    MappingConfig {
        name: name.into(),
        key: key.into(),
        query: query.into(),
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
    }
}

fn configure(c: &mut Config, pg: &PgServer) {
    c.postgres.url = Some(pg.url());
    c.mapping = vec![
        mapping(
            "product",
            "product:{id}",
            "SELECT id, name FROM products WHERE id = $1",
        ),
        mapping("user", "user:{id}", "SELECT email FROM users WHERE id = $1"),
    ];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_pipelined_gets_of_cold_keys_run_one_query() {
    let redis = RedisServer::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| configure(c, &pg)).await;
    let mut c = proxy.client().await;
    pg.reset_stats();
    let mut pipe = redis::pipe();
    for id in 1..=16 {
        pipe.cmd("GET").arg(format!("product:{id}"));
    }
    // An unmapped key, a repeated key and a missing row in the same pipeline.
    pipe.cmd("GET").arg("plain");
    pipe.cmd("GET").arg("product:3");
    pipe.cmd("GET").arg("product:999999");
    let values: Vec<Option<String>> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(values.len(), 19);
    for (i, v) in values.iter().take(16).enumerate() {
        let v = v
            .as_deref()
            .unwrap_or_else(|| panic!("product:{} missing", i + 1));
        assert!(
            v.contains(&format!("\"id\":{},", i + 1)),
            "in request order: {v}"
        );
    }
    assert_eq!(values[16], None);
    assert_eq!(values[17], values[2]);
    assert_eq!(values[18], None);
    assert_eq!(
        pg.query_count("= ANY"),
        1,
        "one batch query for the 17 distinct misses"
    );
    assert_eq!(pg.query_count("WHERE id = $1"), 0, "no per-key query");
    // Filled in Redis: the same pipeline again runs no query.
    pg.reset_stats();
    let again: Vec<Option<String>> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(again, values);
    assert_eq!(pg.query_count("products"), 0);
}
