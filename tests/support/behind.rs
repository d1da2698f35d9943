//! Write-behind tests' shared parts: the `item:{id}` mapping over a table of the test's own
//! (whose CHECK refuses the value "poison"), and reads of what PostgreSQL and Redis hold.

use super::postgres::PgServer;
use cacheside::config::units::Human;
use cacheside::config::{Config, MappingConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// `tasks` writers, each SETting `item:<id>` over its own `keys_per_task` ids `per_task` times
/// (values `t<task>-w<i>`) through the sidecar at `url` (which a test may point elsewhere, as
/// when it restarts the sidecar), every SET retried until acknowledged; each acknowledged SET
/// is counted in `acked` and its value recorded in `last`.
pub fn spawn_writers(
    url: &Arc<Mutex<String>>,
    acked: &Arc<AtomicU64>,
    last: &Arc<Mutex<HashMap<i32, String>>>,
    tasks: usize,
    per_task: usize,
    keys_per_task: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|t| {
            let (url, acked, last) = (url.clone(), acked.clone(), last.clone());
            tokio::spawn(async move {
                let mut conn = None;
                for i in 0..per_task {
                    let id = (t * keys_per_task + i % keys_per_task + 1) as i32;
                    let value = format!("t{t}-w{i}");
                    loop {
                        if conn.is_none() {
                            let u = url.lock().unwrap().clone();
                            conn = redis::Client::open(u)
                                .unwrap()
                                .get_multiplexed_async_connection()
                                .await
                                .ok();
                        }
                        let Some(c) = conn.as_mut() else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let r: redis::RedisResult<()> = redis::cmd("SET")
                            .arg(format!("item:{id}"))
                            .arg(&value)
                            .query_async(c)
                            .await;
                        match r {
                            Ok(()) => break,
                            Err(_) => conn = None,
                        }
                    }
                    last.lock().unwrap().insert(id, value);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}
