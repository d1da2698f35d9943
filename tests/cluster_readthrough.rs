//! Read-through from PostgreSQL with a Redis Cluster upstream: a key's fill lease, "not found"
//! marker and stale copy live in the key's slot, so the fill scripts run on one node; loads fill
//! each key on its slot's primary; and the seeds' update flow (UPDATE, commit, DEL through one
//! sidecar, reads through two others) never returns a row older than an acknowledged DEL.

mod support;

use cacheside::config::MappingConfig;
use cacheside::tier::redis::cluster::slot;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use support::cluster::RedisCluster;
use support::postgres::PgServer;
use support::readthrough::{configure, mapping};
use support::{history, query as q, Proxy};

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

const ROWS: u64 = 6;
const RUN: Duration = Duration::from_secs(4);

fn item() -> MappingConfig {
    mapping(
        "item",
        "item:{id}",
        "SELECT id, name FROM products WHERE id = $1",
        "json",
    )
}

/// The version in a row's JSON: names are written as `v<version>`.
fn version(json: &str) -> u64 {
    json.split("\"name\":\"v")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_returns_a_row_older_than_an_invalidated_update_on_a_cluster() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let setup = pg.client().await;
    for id in 1..=ROWS {
        setup
            .execute(
                "UPDATE products SET name = 'v0' WHERE id = $1",
                &[&(id as i32)],
            )
            .await
            .unwrap();
    }
    let sidecar = || async {
        Proxy::start_with(&cluster.url(), |c| {
            c.postgres.url = Some(pg.url());
            c.mapping = vec![item()];
        })
        .await
    };
    let a = sidecar().await;
    let readers = [sidecar().await, sidecar().await];
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..=ROWS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 1..=ROWS {
        let (mut c, acked, stop) = (a.client().await, acked.clone(), stop.clone());
        let db = pg.client().await;
        tasks.push(tokio::spawn(async move {
            let mut v = 0u64;
            while !stop.load(SeqCst) {
                v += 1;
                db.execute(
                    "UPDATE products SET name = $1 WHERE id = $2",
                    &[&format!("v{v}"), &(id as i32)],
                )
                .await
                .unwrap();
                let _: i64 = q(&mut c, &["DEL", &format!("item:{id}")]).await;
                acked[id as usize].store(v, SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (0u64, 0u64)
        }));
    }
    for (n, proxy) in readers.iter().enumerate() {
        // One GET at a time per key, and every key pipelined (misses load together).
        for id in 0..=ROWS {
            let (mut c, acked, stop) = (proxy.client().await, acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut reads, mut stale) = (0u64, 0u64);
                while !stop.load(SeqCst) {
                    let ids: Vec<u64> = if id == 0 {
                        (1..=ROWS).collect()
                    } else {
                        vec![id]
                    };
                    let floors: Vec<u64> = ids.iter().map(|i| acked[*i as usize].load(SeqCst)).collect();
                    let mut pipe = redis::pipe();
                    for i in &ids {
                        pipe.cmd("GET").arg(format!("item:{i}"));
                    }
                    let rows: Vec<String> = pipe.query_async(&mut c).await.unwrap();
                    for ((i, json), floor) in ids.iter().zip(&rows).zip(&floors) {
                        reads += 1;
                        let seen = version(json);
                        if seen < *floor {
                            stale += 1;
                            eprintln!("stale item:{i} (sidecar {n}): saw v{seen} after v{floor} was committed and invalidated");
                        }
                    }
                }
                (reads, stale)
            }));
        }
    }
    let outcome = history::finish(RUN, &stop, tasks, &[]).await;
    eprintln!(
        "cluster read-through: {} reads, {} stale",
        outcome.reads, outcome.stale
    );
    assert!(outcome.reads >= 500, "too few reads to judge: {outcome:?}");
    assert_eq!(
        outcome.stale, 0,
        "a read returned a row older than a committed, invalidated update"
    );
    // Loads happened (the DELs kept the keys cold), and none left a lease behind.
    assert!(pg.query_count("FROM products WHERE id") > 10);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(keys_on_nodes(&cluster, "cacheside:lease:*")
        .await
        .is_empty());
    support::assert_no_panics();
}
