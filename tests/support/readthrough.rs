//! The `[[mapping]]`s over the seeded schema that the read-through tests share, and a sidecar
//! configured with them.

use super::postgres::PgServer;
use super::{Proxy, RedisServer};
use cacheside::config::units::Human;
use cacheside::config::{Config, MappingConfig};

pub fn mapping(name: &str, key: &str, query: &str, shape: &str) -> MappingConfig {
    MappingConfig {
        name: name.into(),
        key: key.into(),
        query: query.into(),
        shape: shape.into(),
        ttl: Human::secs(3600),
        jitter: Some("10%".into()),
        negative_ttl: Human::secs(30),
        batch_query: None,
        write: None,
        write_query: None,
        write_behind_max_attempts: None,
        write_behind_max_queue: None,
        write_behind_claim_idle: None,
    }
}

pub fn mappings() -> Vec<MappingConfig> {
    vec![
        mapping(
            "product",
            "product:{id}",
            "SELECT id, name, price, category FROM products WHERE id = $1",
            "json",
        ),
        mapping(
            "category",
            "products:category:{category}",
            "SELECT id, name FROM products WHERE category = $1 ORDER BY id",
            "json_array",
        ),
        mapping(
            "product_hash",
            "producth:{id}",
            "SELECT name, price, category FROM products WHERE id = $1",
            "hash",
        ),
        mapping(
            "product_name",
            "product-name:{id}",
            "SELECT name FROM products WHERE id = $1",
            "string",
        ),
        mapping(
            "user",
            "user:{id}",
            "SELECT email, name, active, born FROM users WHERE id = $1",
            "json",
        ),
        mapping(
            "born",
            "users:born:{day}",
            "SELECT email FROM users WHERE born = $1 ORDER BY email",
            "json_array",
        ),
        mapping(
            "slow",
            "slowproduct:{id}",
            "SELECT p.name FROM products p, pg_sleep(0.5) WHERE p.id = $1",
            "string",
        ),
    ]
}

pub fn configure(c: &mut Config, pg: &PgServer) {
    c.postgres.url = Some(pg.url());
    c.mapping = mappings();
}

pub async fn sidecar(redis: &RedisServer, pg: &PgServer) -> Proxy {
    Proxy::start_with(&redis.url(), |c| configure(c, pg)).await
}
