//! Write-behind on a Redis Cluster, tests' shared parts: the `item:{id}` mapping with a
//! `delete_query` on the cluster (in-process or as a process), the per-slot streams as the
//! nodes hold them, and a lock that holds the worker's statements.

use super::behind::{configure, create_table, WRITE_QUERY};
use super::cluster::RedisCluster;
use super::counters_cluster::keys_on_nodes;
use super::postgres::PgServer;
use super::{metric, query, Proxy};
use cacheside::config::units::Human;
use cacheside::tier::redis::cluster::slot;

pub const DELETE_QUERY: &str = "DELETE FROM wb_items WHERE id = $1";

/// Slot `s`'s stream of the `item` mapping.
pub fn stream(s: u16) -> String {
    format!("cacheside:wb:{{{}}}:item", slot::slot_tag(s))
}

/// The stream `key`'s entries go to.
pub fn stream_of(key: &str) -> String {
    stream(slot::of(key.as_bytes()))
}

/// A sidecar in-process on the cluster with the `item` mapping (and its `delete_query`).
pub async fn in_process(
    cluster: &RedisCluster,
    pg: &PgServer,
    claim_idle: Human,
    sweep_every: Human,
) -> Proxy {
    Proxy::start_with(&cluster.url(), |c| {
        c.upstream.mode = "cluster".into();
        configure(c, pg, |m| {
            m.delete_query = Some(DELETE_QUERY.into());
            m.write_behind_claim_idle = Some(claim_idle);
            m.write_behind_sweep_every = Some(sweep_every);
        });
    })
    .await
}

/// A config file for a sidecar process on the cluster (`mode` "cluster" or "auto").
pub fn toml(pg: &PgServer, mode: &str, claim_idle: &str, sweep_every: &str) -> String {
    create_table(pg);
    format!(
        "[upstream]\nmode = \"{mode}\"\n{}delete_query = \"{DELETE_QUERY}\"\nwrite_behind_sweep_every = \"{sweep_every}\"\n",
        super::behind::toml(WRITE_QUERY, claim_idle)
    )
}

/// Every stream of the mapping on the cluster, with the port of the node holding it.
pub async fn streams(cluster: &RedisCluster) -> Vec<(u16, String)> {
    keys_on_nodes(cluster, "cacheside:wb:{*}:item").await
}

/// Entries in every stream of the mapping.
pub async fn queued(cluster: &RedisCluster) -> i64 {
    let mut n = 0;
    for (port, s) in streams(cluster).await {
        let mut node = cluster.node(port).await;
        n += query::<i64>(&mut node, &["XLEN", &s]).await;
    }
    n
}

/// Entries read by a consumer and not yet acknowledged, over every stream of the mapping.
pub async fn pending(cluster: &RedisCluster) -> i64 {
    let mut n = 0;
    for (port, s) in streams(cluster).await {
        let mut node = cluster.node(port).await;
        let summary: (i64, redis::Value, redis::Value, redis::Value) =
            query(&mut node, &["XPENDING", &s, "cacheside"]).await;
        n += summary.0;
    }
    n
}

/// Each entry of stream `s` on the node at `port`: (id, key, value or None for a deletion).
pub async fn entries(
    cluster: &RedisCluster,
    port: u16,
    s: &str,
) -> Vec<(String, String, Option<String>)> {
    let mut node = cluster.node(port).await;
    let raw: Vec<(String, Vec<String>)> = query(&mut node, &["XRANGE", s, "-", "+"]).await;
    raw.into_iter()
        .map(|(id, f)| {
            let field = |name: &str| {
                f.chunks(2)
                    .find(|p| p.len() == 2 && p[0] == name)
                    .map(|p| p[1].clone())
            };
            (id, field("k").unwrap_or_default(), field("v"))
        })
        .collect()
}

/// A transaction holding `wb_items` locked: the workers' statements wait until it ends.
pub async fn lock(pg: &PgServer) -> tokio_postgres::Client {
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE wb_items IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock wb_items");
    holder
}

/// Sweeps of every slot this in-process sidecar completed.
pub async fn sweeps(p: &Proxy) -> f64 {
    let (_, text) = p.admin_get("/metrics").await;
    metric(
        &text,
        "cacheside_write_behind_sweeps_total{mapping=\"item\"}",
    )
    .unwrap_or(0.0)
}
