//! Write-behind on a Redis Cluster (3 primaries): each write's entry goes to the stream of its
//! key's own slot, on the key's primary, in one script with the write; a DEL over several slots
//! runs per slot and answers Redis's count; the streams reach PostgreSQL with each key's last
//! acknowledged value through a SIGKILL, through sweeps of slots no live sidecar writes to,
//! and through a slot moved to another primary with entries queued.

mod support;

use cacheside::config::units::Human;
use cacheside::tier::redis::cluster::slot;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::behind::{rows, spawn_writers};
use support::behind_cluster::{
    entries, in_process, lock, pending, queued, stream, stream_of, streams, sweeps, toml,
};
use support::cluster::RedisCluster;
use support::counters::{eventually, Sidecar};
use support::counters_cluster::owner;
use support::postgres::PgServer;
use support::{metric, query, Proxy};

/// `cacheside_write_behind_<name>{mapping="item"}` of an in-process sidecar.
async fn gauge(p: &Proxy, name: &str) -> f64 {
    let (_, text) = p.admin_get("/metrics").await;
    metric(
        &text,
        &format!("cacheside_write_behind_{name}{{mapping=\"item\"}}"),
    )
    .unwrap_or(-1.0)
}

/// Every entry applied: the rows equal `want` within 30 s (`what` and the rows said if not),
/// and the applied entries have left their streams.
async fn applied(pg: &PgServer, cluster: &RedisCluster, want: &HashMap<i32, String>, what: &str) {
    assert!(
        reaches(pg, want, Duration::from_secs(30)).await,
        "{what}: {:?}",
        rows(pg).await
    );
    assert!(
        eventually(Duration::from_secs(10), async || queued(cluster).await == 0).await,
        "applied entries leave their streams"
    );
}

/// Rows of `wb_items` equal `want` (ids absent from `want` have no row).
async fn reaches(pg: &PgServer, want: &HashMap<i32, String>, limit: Duration) -> bool {
    eventually(limit, async || rows(pg).await == *want).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_and_dels_over_every_primary_are_queued_in_their_slots_and_reach_postgres() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let proxy = in_process(&cluster, &pg, Human::secs(30), Human::secs(3600)).await;
    let mut c = proxy.client().await;
    // Held by the lock, the entries stay in their streams to be looked at.
    let holder = lock(&pg).await;
    let mut want: HashMap<i32, String> = HashMap::new();
    let mut pipe = redis::pipe();
    for id in 1..=60 {
        for round in 0..2 {
            pipe.cmd("SET")
                .arg(format!("item:{id}"))
                .arg(format!("v{id}-{round}"));
        }
        want.insert(id, format!("v{id}-1"));
    }
    let _: Vec<()> = pipe.query_async(&mut c).await.unwrap();
    let _: () = query(&mut c, &["SETEX", "item:61", "600", "expiring"]).await;
    want.insert(61, "expiring".into());

    // Every entry is in its key's slot's stream, on that slot's primary, over every primary.
    let primaries = cluster.primaries();
    let mut nodes = HashSet::new();
    let mut queued_keys = 0;
    for (port, s) in streams(&cluster).await {
        assert_eq!(port, owner(&primaries, &s), "{s}");
        nodes.insert(port);
        for (_, k, _) in entries(&cluster, port, &s).await {
            assert_eq!(stream_of(&k), s, "{k} queued in {s}");
            queued_keys += 1;
        }
    }
    assert_eq!(nodes.len(), 3, "streams on every primary");
    assert_eq!(queued_keys, 121, "two SETs of 60 keys and a SETEX");

    // A DEL over several slots, mapped and unmapped keys: Redis's count (item:999 and
    // other:missing do not exist), and a deletion queued in each mapped key's own stream.
    let mut other = cluster.node(owner(&primaries, "other:a")).await;
    let _: () = query(&mut other, &["SET", "other:a", "x"]).await;
    let gone: i64 = query(
        &mut c,
        &[
            "DEL",
            "item:1",
            "item:2",
            "other:a",
            "other:missing",
            "item:999",
            "item:3",
        ],
    )
    .await;
    assert_eq!(gone, 4);
    let gone: i64 = query(&mut c, &["UNLINK", "item:4", "item:5", "item:4"]).await;
    assert_eq!(gone, 2);
    for id in 1..=5 {
        want.remove(&id);
        let k = format!("item:{id}");
        let s = stream_of(&k);
        let last = entries(&cluster, owner(&primaries, &s), &s).await;
        let deletion = last.iter().rev().find(|(_, key, _)| *key == k);
        assert!(matches!(deletion, Some((_, _, None))), "{k}: {last:?}");
        // Read through cacheside meanwhile: deleted, though the row may not be gone yet.
        assert_eq!(query::<Option<String>>(&mut c, &["GET", &k]).await, None);
    }
    assert_eq!(
        query::<Option<String>>(&mut other, &["GET", "other:a"]).await,
        None
    );
    // The gauges sum the streams of every slot this sidecar wrote: 121 SETs, 7 deletions.
    assert!(
        eventually(Duration::from_secs(10), async || {
            gauge(&proxy, "queue_depth").await == 128.0 && gauge(&proxy, "lag_seconds").await > 0.0
        })
        .await,
        "depth {} lag {}",
        gauge(&proxy, "queue_depth").await,
        gauge(&proxy, "lag_seconds").await
    );

    holder.batch_execute("ROLLBACK").await.unwrap();
    applied(&pg, &cluster, &want, "each key's last write").await;
    proxy.shutdown().await;
    support::assert_no_panics();
}

/// SETs, each retried until acknowledged, over 200 keys on every primary from 8 tasks through
/// a sidecar process SIGKILLed halfway with writes in flight and its worker applying, then
/// restarted; each key's database value must be its last acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_on_a_cluster_survives_a_sigkill() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 600;
    const KEYS_PER_TASK: usize = 25;
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let config = toml(&pg, "cluster", "2s", "1m");
    let a = Sidecar::start_url(&cluster.url(), &pg, &config);
    let url = Arc::new(Mutex::new(a.url()));
    let acked = Arc::new(AtomicU64::new(0));
    let last: Arc<Mutex<HashMap<i32, String>>> = Arc::default();
    let tasks = spawn_writers(&url, &acked, &last, TASKS, PER_TASK, KEYS_PER_TASK);
    let half = (TASKS * PER_TASK / 2) as u64;
    assert!(
        eventually(Duration::from_secs(120), async || acked
            .load(Ordering::Relaxed)
            >= half)
        .await
    );
    let mut a = a;
    a.kill();
    let at_kill = queued(&cluster).await;
    let a2 = Sidecar::start_url(&cluster.url(), &pg, &config);
    *url.lock().unwrap() = a2.url();
    for t in tasks {
        t.await.expect("every write acknowledged");
    }
    let want = last.lock().unwrap().clone();
    assert_eq!(want.len(), TASKS * KEYS_PER_TASK);
    let applied = reaches(&pg, &want, Duration::from_secs(60)).await;
    let got = rows(&pg).await;
    let wrong = want.iter().filter(|(k, v)| got.get(k) != Some(v)).count();
    eprintln!(
        "at the kill: {at_kill} entries queued over the slots' streams; {wrong} keys wrong at the end"
    );
    assert!(
        applied,
        "{wrong} of {} keys are not their last acknowledged value",
        want.len()
    );
    assert!(
        eventually(Duration::from_secs(20), async || queued(&cluster).await
            == 0)
        .await
    );
    support::assert_no_panics();
}

/// A sidecar process whose worker cannot apply (the table is locked) is SIGKILLed after SETs
/// over 40 keys on every primary: its entries, read and unread, wait in slots no running
/// sidecar writes to. B's periodic sweep (every second) finds them and B applies them, taking
/// over what A had read after `write_behind_claim_idle`. Then, with B gone, what the next such
/// sidecar leaves is applied by the start sweep of C (`upstream.mode = "auto"`, its periodic
/// sweep an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_slots_nobody_writes_are_applied_after_sweeps() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let b = in_process(&cluster, &pg, Human::secs(1), Human::secs(1)).await;
    assert!(
        eventually(Duration::from_secs(20), async || sweeps(&b).await >= 1.0).await,
        "B's start sweep ran"
    );
    let primaries = cluster.primaries();
    let mut want: HashMap<i32, String> = HashMap::new();
    let config = toml(&pg, "cluster", "1s", "1h");
    let leave = async |ids: std::ops::RangeInclusive<i32>, want: &mut HashMap<i32, String>| {
        let nodes: HashSet<u16> = ids
            .clone()
            .map(|id| owner(&primaries, &format!("item:{id}")))
            .collect();
        assert_eq!(nodes.len(), 3, "the keys' slots are on every primary");
        let mut a = Sidecar::start_url(&cluster.url(), &pg, &config);
        // Taken once A listens (its start prepares the mapping's query on the table).
        let holder = lock(&pg).await;
        let mut c = a.client().await;
        let mut pipe = redis::pipe();
        for id in ids.clone() {
            pipe.cmd("SET")
                .arg(format!("item:{id}"))
                .arg(format!("left{id}"));
            want.insert(id, format!("left{id}"));
        }
        let _: Vec<()> = pipe.query_async(&mut c).await.unwrap();
        // A's worker reads some (held pending, its statement waiting on the lock).
        assert!(
            eventually(Duration::from_secs(10), async || pending(&cluster).await
                > 0)
            .await,
            "A's worker read entries"
        );
        a.kill();
        let held = pending(&cluster).await;
        eprintln!(
            "A killed holding {held} of {} entries",
            queued(&cluster).await
        );
        holder.batch_execute("ROLLBACK").await.unwrap();
    };

    leave(1..=40, &mut want).await;
    applied(&pg, &cluster, &want, "B's periodic sweep found them").await;
    b.shutdown().await;

    leave(101..=140, &mut want).await;
    let left = streams(&cluster).await;
    assert!(queued(&cluster).await > 0, "nobody runs: the entries wait");
    let c = support::Proxy::start_with(&cluster.url(), |c| {
        c.upstream.mode = "auto".into();
        support::behind::configure(c, &pg, |m| {
            m.write_behind_claim_idle = Some(Human::secs(1));
            m.write_behind_sweep_every = Some(Human::secs(3600));
        });
    })
    .await;
    assert!(
        reaches(&pg, &want, Duration::from_secs(30)).await,
        "C's start sweep found them in {} streams: {:?}",
        left.len(),
        rows(&pg).await
    );
    assert_eq!(sweeps(&c).await, 1.0, "only C's start sweep ran");
    c.shutdown().await;
    support::assert_no_panics();
}

/// A slot whose stream holds entries (the worker's statements wait on a lock, holding some)
/// moves to another primary, stream, group and pending entries and all; then that primary
/// fails over to its replica. Writes after each go to the same stream, after the others, with
/// larger ids; once the lock goes, the key's last write is in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_and_failed_over_with_queued_entries_is_applied_in_order() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let proxy = in_process(&cluster, &pg, Human::secs(30), Human::secs(3600)).await;
    let mut c = proxy.client().await;
    let holder = lock(&pg).await;
    let k = "item:8";
    let mut set = async |range: std::ops::RangeInclusive<i32>| {
        for n in range {
            let _: () = query(&mut c, &["SET", k, &format!("v{n}")]).await;
        }
    };
    set(1..=5).await;
    let s = slot::of(k.as_bytes());
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    assert!(
        eventually(Duration::from_secs(10), async || pending(&cluster).await
            > 0)
        .await,
        "the worker read entries: they are pending in the group, which moves too"
    );
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    assert_eq!(
        streams(&cluster).await,
        vec![(to, stream(s))],
        "the stream moved with its slot"
    );
    set(6..=8).await;
    let now = cluster.fail_over(to);
    set(9..=10).await;
    let queued_there = entries(&cluster, now, &stream(s)).await;
    let values: Vec<String> = queued_there.iter().filter_map(|e| e.2.clone()).collect();
    assert_eq!(
        values,
        (1..=10).map(|n| format!("v{n}")).collect::<Vec<_>>()
    );
    let ids: Vec<(u64, u64)> = queued_there
        .iter()
        .map(|(id, _, _)| {
            let (ms, seq) = id.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids grow across the move and the failover: {ids:?}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    let want = HashMap::from([(8, "v10".to_string())]);
    applied(&pg, &cluster, &want, "the last write, v10").await;
    let db = pg.client().await;
    let version: (i64, i64) = db
        .query_one(
            "SELECT ms, seq FROM cacheside_write_versions WHERE mapping = 'item' AND key = 'item:8'::bytea",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let last = ids.last().unwrap();
    assert_eq!(
        (version.0 as u64, version.1 as u64),
        *last,
        "the version taken is the last entry's"
    );
    proxy.shutdown().await;
    support::assert_no_panics();
}

/// A primary killed with entries queued (read by the worker, not yet applied: the database is
/// locked): its replica takes over with the stream, the worker finds the entries on the new
/// primary and applies them, with the writes made after the failover, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_with_queued_entries_fails_over_and_loses_nothing_replicated() {
    let mut cluster = RedisCluster::start();
    let pg = PgServer::start();
    let proxy = in_process(&cluster, &pg, Human::secs(2), Human::secs(3600)).await;
    let mut c = proxy.client().await;
    let holder = lock(&pg).await;
    let k = "item:9";
    for n in 1..=5 {
        let _: () = query(&mut c, &["SET", k, &format!("v{n}")]).await;
    }
    let old = cluster.primary_of(slot::of(k.as_bytes()));
    assert!(
        eventually(Duration::from_secs(10), async || pending(&cluster).await
            > 0)
        .await,
        "the worker read entries"
    );
    // Every write reached the replica (replication is asynchronous: an entry a primary took
    // with it when it died is lost with it, as any write to it would be).
    let offset = |p: u16, field: &str| -> i64 {
        support::cluster::cli(p, &["INFO", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    let replica = *cluster
        .ports
        .iter()
        .find(|&&p| {
            p != old
                && support::cluster::cli(p, &["INFO", "replication"])
                    .contains(&format!("master_port:{old}"))
        })
        .expect("the primary has a replica");
    let primary_offset = offset(old, "master_repl_offset:");
    assert!(
        eventually(Duration::from_secs(10), async || offset(
            replica,
            "slave_repl_offset:"
        ) >= primary_offset)
        .await,
        "the replica caught up"
    );
    cluster.kill(old);
    // Writes fail while the cluster elects the replica, then succeed on it.
    let mut n = 6;
    let start = std::time::Instant::now();
    while n <= 8 {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg(k)
            .arg(format!("v{n}"))
            .query_async(&mut c)
            .await;
        if r.is_ok() {
            n += 1;
        } else {
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "never recovered: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        cluster.primary_of(slot::of(k.as_bytes())),
        replica,
        "the replica took over"
    );
    let queued_there = entries(&cluster, replica, &stream_of(k)).await;
    let values: Vec<String> = queued_there.iter().filter_map(|e| e.2.clone()).collect();
    assert_eq!(values, (1..=8).map(|n| format!("v{n}")).collect::<Vec<_>>());
    holder.batch_execute("ROLLBACK").await.unwrap();
    let want = HashMap::from([(9, "v8".to_string())]);
    applied(&pg, &cluster, &want, "the last write, v8").await;
    proxy.shutdown().await;
    support::assert_no_panics();
}

/// `write_behind_max_queue` on a cluster: each slot's stream is bounded by the script (the
/// write is not made), and the depth summed over the slots this sidecar knows is bounded here,
/// before Redis; both refusals are counted, and writes are accepted again once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_slot_stream_and_a_full_sum_of_slots_refuse_writes() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let proxy = Proxy::start_with(&cluster.url(), |c| {
        c.upstream.mode = "cluster".into();
        support::behind::configure(c, &pg, |m| m.write_behind_max_queue = Some(3));
    })
    .await;
    let mut c = proxy.client().await;
    let holder = lock(&pg).await;
    for v in ["a", "b", "c"] {
        let _: () = query(&mut c, &["SET", "item:1", v]).await;
    }
    let set = async |c: &mut redis::aio::MultiplexedConnection, k: &str| {
        redis::cmd("SET")
            .arg(k)
            .arg("late")
            .query_async::<()>(c)
            .await
            .map_err(|e| e.to_string())
    };
    let e = set(&mut c, "item:1").await.unwrap_err();
    assert!(e.contains("write-behind queue full"), "{e}");
    assert_eq!(query::<String>(&mut c, &["GET", "item:1"]).await, "c");
    // item:2 is in another slot, whose stream is empty: refused by the summed depth.
    assert_ne!(stream_of("item:2"), stream_of("item:1"));
    assert!(
        eventually(Duration::from_secs(10), async || gauge(
            &proxy,
            "queue_depth"
        )
        .await
            == 3.0)
        .await
    );
    let e = set(&mut c, "item:2").await.unwrap_err();
    assert!(e.contains("write-behind queue full"), "{e}");
    let mut node = cluster.node(cluster.primary_of(slot::of(b"item:2"))).await;
    assert!(!query::<bool>(&mut node, &["EXISTS", "item:2"]).await);
    assert_eq!(gauge(&proxy, "full_refusals_total").await, 2.0);
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || set(&mut c, "item:2")
            .await
            .is_ok())
        .await,
        "accepted again once drained"
    );
    let want = HashMap::from([(1, "c".to_string()), (2, "late".to_string())]);
    assert!(reaches(&pg, &want, Duration::from_secs(20)).await);
    proxy.shutdown().await;
    support::assert_no_panics();
}
