//! Write-behind tests' shared parts: the `item:{id}` mapping over a table of the test's own
//! (whose CHECK refuses the value "poison"), and reads of what PostgreSQL and Redis hold.

use super::postgres::PgServer;
use cacheside::config::units::Human;
use cacheside::config::{Config, MappingConfig};
use std::collections::HashMap;

pub const STREAM: &str = "cacheside:wb:item";
pub const DEAD: &str = "cacheside:wb:item:dead";
pub const WRITE_QUERY: &str =
    "INSERT INTO wb_items (id, body) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body";
/// The same, 50 ms per key: a sidecar holds a batch long enough to be killed holding it.
pub const SLOW_WRITE_QUERY: &str =
    "INSERT INTO wb_items (id, body) SELECT $1, $2 FROM pg_sleep(0.05) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body";

pub fn create_table(pg: &PgServer) {
    pg.execute(
        "CREATE TABLE IF NOT EXISTS wb_items (id int PRIMARY KEY, body text NOT NULL CHECK (body <> 'poison'))",
    );
}

pub fn item(write_query: &str) -> MappingConfig {
    MappingConfig {
        name: "item".into(),
        key: "item:{id}".into(),
        query: "SELECT body FROM wb_items WHERE id = $1".into(),
        shape: "string".into(),
        ttl: Human::secs(3600),
        jitter: None,
        negative_ttl: Human::secs(30),
        batch_query: None,
        write: "behind".into(),
        write_query: Some(write_query.into()),
        ..MappingConfig::default()
    }
}

/// In-process config with the `item` mapping.
pub fn configure(c: &mut Config, pg: &PgServer, tweak: impl FnOnce(&mut MappingConfig)) {
    create_table(pg);
    c.postgres.url = Some(pg.url());
    let mut m = item(WRITE_QUERY);
    tweak(&mut m);
    c.mapping = vec![m];
}

/// The same mapping as a config file, for a sidecar process.
pub fn toml(write_query: &str, claim_idle: &str) -> String {
    format!(
        "[[mapping]]\nname = \"item\"\nkey = \"item:{{id}}\"\nquery = \"SELECT body FROM wb_items WHERE id = $1\"\nshape = \"string\"\nttl = \"1h\"\nwrite = \"behind\"\nwrite_query = \"{write_query}\"\nwrite_behind_claim_idle = \"{claim_idle}\"\n"
    )
}

/// Every row of `wb_items`.
pub async fn rows(pg: &PgServer) -> HashMap<i32, String> {
    let c = pg.client().await;
    c.query("SELECT id, body FROM wb_items", &[])
        .await
        .expect("read wb_items")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
