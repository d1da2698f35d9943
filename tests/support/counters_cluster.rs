//! `[[counter]]` on a Redis Cluster, tests' shared parts: keys with and without hash tags,
//! sidecars on the cluster (in-process or as processes), and where cacheside's keys are.

use super::cluster::RedisCluster;
use super::postgres::PgServer;
use super::{metric, query, Proxy};
use cacheside::config::units::Human;
use cacheside::config::CounterConfig;
use cacheside::tier::redis::cluster::slot;

/// Keys with and without a hash tag name the same product: the braces are stripped.
pub const FLUSH_QUERY: &str =
    "UPDATE products SET views = views + $2 WHERE id = btrim($1, '{}')::int";

/// Product `id`'s counter key: even ids with a hash tag (`product:{8}:views`), odd ones without.
pub fn key(id: i32) -> String {
    if id % 2 == 0 {
        format!("product:{{{id}}}:views")
    } else {
        format!("product:{id}:views")
    }
}

/// The views counter of [`key`]'s keys.
pub fn views(flush_every: Human, sweep_every: Human) -> CounterConfig {
    CounterConfig {
        name: Some("views".into()),
        key: "product:{id}:views".into(),
        flush_query: FLUSH_QUERY.into(),
        flush_every,
        flush_threshold: None,
        sweep_every,
    }
}

/// A config file for a sidecar process on the cluster.
pub fn toml(flush_every: &str, sweep_every: &str) -> String {
    format!(
        "[upstream]\nmode = \"cluster\"\n[[counter]]\nname = \"views\"\nkey = \"product:{{id}}:views\"\nflush_query = \"{FLUSH_QUERY}\"\nflush_every = \"{flush_every}\"\nsweep_every = \"{sweep_every}\"\n"
    )
}

/// A sidecar in-process on the cluster (`upstream.mode = "cluster"`).
pub async fn in_process(cluster: &RedisCluster, pg: &PgServer, counter: CounterConfig) -> Proxy {
    in_mode(cluster, pg, counter, "cluster").await
}

/// In-process, with `upstream.mode = mode` ("auto" finds the cluster at start).
pub async fn in_mode(
    cluster: &RedisCluster,
    pg: &PgServer,
    counter: CounterConfig,
    mode: &str,
) -> Proxy {
    Proxy::start_with(&cluster.url(), |c| {
        c.upstream.mode = mode.into();
        c.postgres.url = Some(pg.url());
        c.counter = vec![counter];
    })
    .await
}

/// The pending-delta key of counter key `k` (in `k`'s slot).
pub fn pending(k: &str) -> String {
    if k.contains('{') {
        format!("cacheside:counter:pending:{k}")
    } else {
        format!("cacheside:counter:pending:{{{k}}}")
    }
}

/// The port of the primary serving `k`'s slot, from a slot map read once.
pub fn owner(primaries: &[(u16, Vec<(u16, u16)>)], k: &str) -> u16 {
    let s = slot::of(k.as_bytes());
    primaries
        .iter()
        .find(|(_, ranges)| ranges.iter().any(|&(a, b)| a <= s && s <= b))
        .map(|(port, _)| *port)
        .expect("every slot has a primary")
}

/// Every primary's keys matching `pattern`, each with the port of the node that holds it.
pub async fn keys_on_nodes(cluster: &RedisCluster, pattern: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for (port, _) in cluster.primaries() {
        let mut node = cluster.node(port).await;
        let keys: Vec<String> = query(&mut node, &["KEYS", pattern]).await;
        out.extend(keys.into_iter().map(|k| (port, k)));
    }
    out
}

/// Records in every moves hash of the cluster.
pub async fn moves_recorded(cluster: &RedisCluster) -> i64 {
    let mut n = 0;
    for (port, hash) in keys_on_nodes(cluster, "cacheside:counter:moves:*").await {
        let mut node = cluster.node(port).await;
        n += query::<i64>(&mut node, &["HLEN", &hash]).await;
    }
    n
}

/// Sweeps of every slot this in-process sidecar completed.
pub async fn sweeps(p: &Proxy) -> f64 {
    let (_, text) = p.admin_get("/metrics").await;
    metric(&text, "cacheside_counter_sweeps_total{counter=\"views\"}").unwrap_or(0.0)
}
