//! Read-through from PostgreSQL with a Redis Cluster upstream: a key's fill lease, "not found"
//! marker and stale copy live in the key's slot, so the fill scripts run on one node; loads fill
//! each key on its slot's primary; and the seeds' update flow (UPDATE, commit, DEL through one
//! sidecar, reads through two others) never returns a row older than an acknowledged DEL.

mod support;

use cacheside::tier::redis::cluster::slot;
use support::cluster::RedisCluster;
use support::postgres::PgServer;
use support::readthrough::configure;
use support::{coherence, query as q, Proxy};

/// Every primary's keys matching `pattern`, each with the port of the node that holds it.
async fn keys_on_nodes(cluster: &RedisCluster, pattern: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for (port, _) in cluster.primaries() {
        let mut node = cluster.node(port).await;
        let keys: Vec<String> = q(&mut node, &["KEYS", pattern]).await;
        out.extend(keys.into_iter().map(|k| (port, k)));
    }
    out
}

/// The primary that serves `key`'s slot.
fn owner(cluster: &RedisCluster, key: &str) -> u16 {
    let s = slot::of(key.as_bytes());
    cluster
        .primaries()
        .into_iter()
        .find(|(_, ranges)| ranges.iter().any(|&(a, b)| a <= s && s <= b))
        .map(|(port, _)| port)
        .expect("every slot has a primary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_fill_each_key_on_its_slots_primary_with_its_lease_and_marker() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&cluster.url(), |c| {
        c.upstream.mode = "cluster".into();
        configure(c, &pg);
    })
    .await;
    let mut c = proxy.client().await;
    pg.reset_stats();

    // One GET at a time: keys over every primary.
    for id in 1..=30 {
        let json: String = q(&mut c, &["GET", &format!("product:{id}")]).await;
        assert!(json.contains(&format!("\"id\":{id}")), "{json}");
    }
    // MGET across slots, pipelined GETs, and a hash: loaded once each.
    let rows: Vec<String> = q(
        &mut c,
        &[
            "MGET",
            "product:31",
            "product:32",
            "product:33",
            "product:1",
        ],
    )
    .await;
    for (i, id) in [31, 32, 33, 1].iter().enumerate() {
        assert!(rows[i].contains(&format!("\"id\":{id}")), "{}", rows[i]);
    }
    let mut pipe = redis::pipe();
    for id in 40..56 {
        pipe.cmd("GET").arg(format!("product:{id}"));
    }
    let rows: Vec<String> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(rows.len(), 16);
    let name: String = q(&mut c, &["HGET", "producth:7", "name"]).await;
    assert!(!name.is_empty());
    // Repeats are answered by Redis: no new queries.
    let before = pg.query_count("FROM products WHERE id");
    for id in 1..=33 {
        let _: String = q(&mut c, &["GET", &format!("product:{id}")]).await;
    }
    assert_eq!(pg.query_count("FROM products WHERE id"), before);

    // Each filled key is on its slot's primary, and no lease is left.
    let filled = keys_on_nodes(&cluster, "product:*").await;
    assert!(filled.len() >= 49, "{filled:?}");
    let mut nodes = std::collections::HashSet::new();
    for (port, key) in &filled {
        assert_eq!(*port, owner(&cluster, key), "{key}");
        nodes.insert(*port);
    }
    assert_eq!(nodes.len(), 3, "the keys spread over every primary");
    assert!(keys_on_nodes(&cluster, "cacheside:lease:*")
        .await
        .is_empty());

    // Not found: nil, remembered beside the key, and cleared by a write through cacheside.
    let none: Option<String> = q(&mut c, &["GET", "product:99999"]).await;
    assert_eq!(none, None);
    let markers = keys_on_nodes(&cluster, "cacheside:neg:*").await;
    assert_eq!(
        markers,
        vec![(
            owner(&cluster, "product:99999"),
            "cacheside:neg:{product:99999}".to_string()
        )]
    );
    let _: () = q(&mut c, &["SET", "product:99999", "{\"id\":99999}"]).await;
    assert!(keys_on_nodes(&cluster, "cacheside:neg:*").await.is_empty());
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_invalidated_update_on_a_cluster() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    coherence::check_readthrough(&cluster.url(), &pg, None).await;
    // Loads happened (the DELs kept the keys cold), and none left a lease behind.
    assert!(pg.query_count("FROM products WHERE id") > 10);
    assert!(keys_on_nodes(&cluster, "cacheside:lease:*")
        .await
        .is_empty());
    support::assert_no_panics();
}
