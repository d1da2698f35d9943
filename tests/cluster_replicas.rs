//! `upstream.read_from` on a Redis Cluster: plain reads go to a replica of their slot's primary
//! (over connections that sent READONLY), writes and everything else to the primary; with
//! `prefer_replica` too. Where each command ran is read from every node's INFO commandstats.

mod support;

use cacheside::tier::redis::cluster::slot;
use std::time::Duration;
use support::cluster::{cli, RedisCluster};
use support::{query as q, Proxy};

/// `calls=` of `command` in a node's INFO commandstats (0 when never called).
fn calls(port: u16, command: &str) -> u64 {
    support::command_calls(&cli(port, &["INFO", "commandstats"]), command)
}

/// The nodes that are replicas now.
fn replicas(cluster: &RedisCluster) -> Vec<u16> {
    let primaries: Vec<u16> = cluster.primaries().into_iter().map(|(p, _)| p).collect();
    cluster
        .ports
        .iter()
        .copied()
        .filter(|p| !primaries.contains(p))
        .collect()
}

/// Waits until CLUSTER SHARDS lists every replica as online: a replica that has replicated
/// nothing yet shows as `loading` (offset 0), so a write goes to each primary first.
fn until_replicas_online(cluster: &RedisCluster) {
    for (port, ranges) in cluster.primaries() {
        let key = (0..)
            .map(|i| format!("warm:{i}"))
            .find(|k| {
                let s = slot::of(k.as_bytes());
                ranges.iter().any(|&(a, b)| a <= s && s <= b)
            })
            .expect("a key for every primary");
        cli(port, &["SET", &key, "1"]);
    }
    let start = std::time::Instant::now();
    for p in replicas(cluster) {
        while !cli(p, &["INFO", "replication"]).contains("master_link_status:up") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replica {p} never synced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    loop {
        let shards = cli(cluster.ports[0], &["CLUSTER", "SHARDS"]);
        let online = shards.lines().filter(|l| *l == "online").count();
        if online == 6 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replicas never online: {shards}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn reads_go_to_replicas(read_from: &str) {
    let cluster = RedisCluster::start();
    until_replicas_online(&cluster);
    let proxy = Proxy::start_with(&cluster.url(), |c| {
        c.upstream.mode = "cluster".into();
        c.upstream.read_from = read_from.into();
    })
    .await;
    let mut c = proxy.client().await;
    let keys: Vec<String> = (0..60).map(|i| format!("r:{i}")).collect();
    for k in &keys {
        let _: () = q(&mut c, &["SET", k, k]).await;
    }
    // Replication is asynchronous: wait until the replicas hold every key.
    let replica_ports = replicas(&cluster);
    assert_eq!(replica_ports.len(), 3);
    let keys_on = |ports: &[u16]| -> u64 {
        ports
            .iter()
            .map(|p| cli(*p, &["DBSIZE"]).trim().parse::<u64>().unwrap_or(0))
            .sum()
    };
    let primary_ports: Vec<u16> = cluster.primaries().into_iter().map(|(p, _)| p).collect();
    let start = std::time::Instant::now();
    while keys_on(&replica_ports) < keys_on(&primary_ports) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replicas never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // prefer_replica reads from replicas once their connections are up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: u64 = replica_ports.iter().map(|p| calls(*p, "get")).sum();
    for k in &keys {
        let v: String = q(&mut c, &["GET", k]).await;
        assert_eq!(&v, k);
    }
    // MGET across slots: split, each part to its slot's replica, merged in order.
    let got: Vec<String> = q(&mut c, &["MGET", "r:1", "r:2", "r:3", "r:4"]).await;
    assert_eq!(got, ["r:1", "r:2", "r:3", "r:4"]);
    let on_replicas: u64 = replica_ports.iter().map(|p| calls(*p, "get")).sum::<u64>() - before;
    let on_primaries: u64 = cluster
        .primaries()
        .iter()
        .map(|(p, _)| calls(*p, "get"))
        .sum();
    assert!(
        on_replicas >= 60 && on_primaries == 0,
        "{read_from}: {on_replicas} GETs on replicas, {on_primaries} on primaries"
    );
    for p in &replica_ports {
        assert!(calls(*p, "get") > 0, "replica {p} served reads");
    }
    // Writes never reach a replica's clients: a write through cacheside runs on the primary.
    let _: i64 = q(&mut c, &["INCR", "r:counter"]).await;
    let _: () = q(&mut c, &["SET", "r:1", "changed"]).await;
    // A transaction's read stays on the primary (pinned), and sees its own write.
    let (v,): (String,) = redis::pipe()
        .atomic()
        .get("r:1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "changed");
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_replica_sends_reads_to_each_slots_replica() {
    reads_go_to_replicas("replica").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_replica_sends_reads_to_replicas_when_they_are_up() {
    reads_go_to_replicas("prefer_replica").await;
}
