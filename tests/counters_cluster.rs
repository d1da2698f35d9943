//! `[[counter]]` on a Redis Cluster: INCR-family commands get Redis's own replies, every key of
//! cacheside's bookkeeping lives in its counter key's slot (on that slot's primary), deltas
//! reach PostgreSQL exactly once across sidecars and SIGKILLs, and what a dead sidecar left in
//! slots nobody else writes is found by the other sidecars' sweeps.

mod support;

use cacheside::config::units::Human;
use cacheside::tier::redis::cluster::slot;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::cluster::RedisCluster;
use support::counters::{db_views, eventually, Sidecar};
use support::counters_cluster::{
    in_mode, in_process, key, keys_on_nodes, moves_recorded, owner, pending, sweeps, toml, views,
};
use support::postgres::PgServer;
use support::query;

async fn read_line(raw: &mut support::Raw) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        line.extend(raw.read_exact_len(1).await);
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_on_a_cluster_get_redis_replies_and_reach_postgres_exactly() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 1..=200).await;
    // Flushed only by the drain: what is pending can be read meanwhile.
    // flush_threshold 1,000: no key but one below gets that far.
    let mut counter = views(Human::secs(3600), Human::secs(3600));
    counter.flush_threshold = Some(1_000);
    let proxy = in_process(&cluster, &pg, counter).await;
    // Its start sweep is over, so it flushes nothing before the drain (or the threshold).
    assert!(
        eventually(Duration::from_secs(20), async || sweeps(&proxy).await
            >= 1.0)
        .await
    );
    let primaries = cluster.primaries();
    for (k, cmd, arg) in [
        (key(1), "RPUSH", "x"),
        (key(2), "SET", "abc"),
        (key(3), "SET", "9223372036854775807"),
    ] {
        let mut n = cluster.node(owner(&primaries, &k)).await;
        let _: () = query(&mut n, &[cmd, k.as_str(), arg]).await;
    }
    // Each error, byte for byte as the key's own primary gives it for the command itself.
    for cmd in [
        format!("INCR {}", key(1)),
        format!("INCRBY {} 5", key(2)),
        format!("INCRBY {} five", key(4)),
        format!("INCR {}", key(3)),
        format!("DECRBY {} -9223372036854775808", key(4)),
    ] {
        let k = cmd.split(' ').nth(1).unwrap_or_default();
        let mut d = support::Raw(
            tokio::net::TcpStream::connect(("127.0.0.1", owner(&primaries, k)))
                .await
                .unwrap(),
        );
        d.send(format!("{cmd}\r\n").as_bytes()).await;
        let want = read_line(&mut d).await;
        assert!(want.starts_with('-'), "{cmd}: {want}");
        let mut raw = proxy.raw().await;
        raw.send(format!("{cmd}\r\n").as_bytes()).await;
        assert_eq!(read_line(&mut raw).await, want, "{cmd}");
    }

    // Products 5..=200, one INCRBY each, pipelined over every slot they hash to.
    let mut c = proxy.client().await;
    let mut pipe = redis::pipe();
    for id in 5..=200 {
        pipe.cmd("INCRBY").arg(key(id)).arg(id);
    }
    let got: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(got, (5..=200).map(i64::from).collect::<Vec<_>>());
    // Inside a transaction, and from a RESP3 client, with the key's own reply.
    let (v,): (i64,) = redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg(key(6))
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 9);
    let mut c3 = proxy.client_resp3().await;
    assert_eq!(query::<i64>(&mut c3, &["DECR", &key(7)]).await, 6);

    // Every key of cacheside's is on the primary of its slot, which is its counter key's.
    let own = keys_on_nodes(&cluster, "cacheside:counter:*").await;
    let mut nodes = HashSet::new();
    let mut dirty = HashSet::new();
    let mut pendings = HashSet::new();
    for (port, k) in &own {
        assert_eq!(*port, owner(&primaries, k), "{k}");
        nodes.insert(*port);
        if k.starts_with("cacheside:counter:dirty:") {
            let mut n = cluster.node(*port).await;
            let members: Vec<String> = query(&mut n, &["SMEMBERS", k]).await;
            for m in members {
                assert_eq!(slot::of(m.as_bytes()), slot::of(k.as_bytes()), "{m} in {k}");
                dirty.insert(m);
            }
        } else {
            pendings.insert(k.clone());
        }
    }
    assert_eq!(nodes.len(), 3, "spread over every primary");
    let want: HashSet<String> = (5..=200).map(key).collect();
    assert_eq!(dirty, want, "failed commands marked nothing dirty");
    let want: HashSet<String> = want.iter().map(|k| pending(k)).collect();
    assert_eq!(pendings, want, "failed commands added no pending delta");

    assert_eq!(db_views(&pg, 1..=200).await, before, "nothing flushed yet");
    // Past flush_threshold, a key is flushed at once, from its slot's dirty set and pending key.
    let nine = db_views(&pg, 9..=9).await;
    let _: i64 = query(&mut c, &["INCRBY", &key(9), "1000"]).await;
    assert!(
        eventually(Duration::from_secs(10), async || db_views(&pg, 9..=9).await
            == nine + 1009)
        .await,
        "flushed early"
    );

    // The drain flushes everything: the rows gain exactly what was acknowledged.
    proxy.shutdown().await;
    let sum: i64 = (5..=200).map(i64::from).sum::<i64>() + 3 - 1 + 1000;
    assert_eq!(db_views(&pg, 1..=200).await - before, sum);
    assert_eq!(keys_on_nodes(&cluster, "cacheside:counter:*").await, vec![]);
    support::assert_no_panics();
}

/// The shape of tests/counters.rs's crash test, on a cluster: 200 keys (half with a hash tag)
/// over every slot they hash to get 32,000 INCRs from 16 tasks through two sidecar processes.
/// A is SIGKILLed three times while B's clients keep writing, flushers running every 20 ms,
/// and restarted each time (its start sweep applies what it left recorded). Every INCR sent is
/// acknowledged, and the database must gain exactly that many views.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deltas_reach_postgres_exactly_once_on_a_cluster_across_sidecar_kills() {
    const KEYS: i32 = 200;
    const ROUNDS: usize = 4;
    const PER_TASK_A: usize = 500; // x 8 tasks x 4 rounds = 16,000
    const PER_TASK_B: usize = 2_000; // x 8 tasks = 16,000
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 1..=KEYS).await;
    let acked = Arc::new(AtomicU64::new(0));
    let config = toml("20ms", "1m");
    let mut a = Sidecar::start_url(&cluster.url(), &pg, &config);
    let b = Sidecar::start_url(&cluster.url(), &pg, &config);

    let run = |url: String, n: usize, seed: usize, acked: Arc<AtomicU64>| {
        tokio::spawn(async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for i in 0..n {
                let k = key(1 + ((i * 7 + seed) % KEYS as usize) as i32);
                let r: redis::RedisResult<i64> =
                    redis::cmd("INCR").arg(&k).query_async(&mut c).await;
                r.unwrap_or_else(|e| panic!("INCR {k}: {e}"));
                acked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let b_tasks: Vec<_> = (0..8)
        .map(|t| run(b.url(), PER_TASK_B, t, acked.clone()))
        .collect();
    let mut left_recorded = 0;
    for round in 0..ROUNDS {
        let a_tasks: Vec<_> = (0..8)
            .map(|t| run(a.url(), PER_TASK_A, 100 + t + round, acked.clone()))
            .collect();
        for t in a_tasks {
            t.await.expect("A's clients acknowledged");
        }
        if round < ROUNDS - 1 {
            a.kill();
            // Moves A took but had not finished applying: left for recovery.
            left_recorded += moves_recorded(&cluster).await;
            a = Sidecar::start_url(&cluster.url(), &pg, &config);
        }
    }
    for t in b_tasks {
        t.await.expect("B's clients acknowledged");
    }
    let acked = acked.load(Ordering::Relaxed) as i64;
    assert_eq!(acked, 32_000);
    let mut in_redis = 0;
    let primaries = cluster.primaries();
    for id in 1..=KEYS {
        let k = key(id);
        let mut n = cluster.node(owner(&primaries, &k)).await;
        in_redis += query::<Option<i64>>(&mut n, &["GET", &k])
            .await
            .unwrap_or(0);
    }
    assert_eq!(
        in_redis, acked,
        "Redis counted every acknowledged INCR once"
    );
    let synced = eventually(Duration::from_secs(60), async || {
        db_views(&pg, 1..=KEYS).await - before == acked
    })
    .await;
    let got = db_views(&pg, 1..=KEYS).await - before;
    eprintln!("moves recorded but not applied when A was killed: {left_recorded}; database gained {got} of {acked}");
    assert!(
        synced,
        "the database gained {got} views for {acked} acknowledged INCRs"
    );
    // Nothing is left dirty or recorded in any slot, and nothing more arrives.
    assert!(
        eventually(Duration::from_secs(30), async || {
            keys_on_nodes(&cluster, "cacheside:counter:dirty:*")
                .await
                .is_empty()
                && moves_recorded(&cluster).await == 0
        })
        .await
    );
    drop((a, b));
    assert_eq!(db_views(&pg, 1..=KEYS).await - before, acked);
}

/// A sidecar that never flushed (flush_every = 1h) is SIGKILLed after INCRs over 40 keys: their
/// deltas are left in slots no running sidecar writes to, beside a move record such as it would
/// have taken and never applied (written by the test, a minute old). B's periodic sweep (every
/// second) finds and flushes them; then, with B gone, what the next such sidecar leaves is flushed by the start sweep of C (`upstream.mode = "auto"`, whose
/// periodic sweep is an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_in_slots_nobody_writes_are_flushed_by_sweeps() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 1..=200).await;
    let b = in_process(&cluster, &pg, views(Human::millis(50), Human::secs(1))).await;
    // B's start sweep is over before anything is left: only a periodic one can find it.
    assert!(
        eventually(Duration::from_secs(20), async || sweeps(&b).await >= 1.0).await,
        "B's start sweep ran"
    );

    // A dead sidecar's leftovers: deltas of products `ids` (id views each) and a move record
    // of 42 views for product `moved`, taken a minute ago (stale).
    let primaries = cluster.primaries();
    let leave = async |ids: std::ops::RangeInclusive<i32>, moved: i32| {
        let nodes: HashSet<u16> = ids.clone().map(|id| owner(&primaries, &key(id))).collect();
        assert_eq!(nodes.len(), 3, "the keys' slots are on every primary");
        let mut a = Sidecar::start_url(&cluster.url(), &pg, &toml("1h", "1h"));
        let mut c = a.client().await;
        let mut pipe = redis::pipe();
        for id in ids.clone() {
            pipe.cmd("INCRBY").arg(key(id)).arg(id);
        }
        let _: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
        a.kill();
        let k = key(moved);
        let s = slot::of(k.as_bytes());
        let hash = format!("cacheside:counter:moves:{{{}}}:views", slot::slot_tag(s));
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            - 60_000;
        let mut n = cluster.node(owner(&primaries, &k)).await;
        let _: () = query(
            &mut n,
            &[
                "HSET",
                &hash,
                &format!("dead{moved}"),
                &format!("{at}:42:{k}"),
            ],
        )
        .await;
        ids.map(i64::from).sum::<i64>() + 42
    };

    let left = leave(1..=40, 60).await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            db_views(&pg, 1..=200).await - before == left
        })
        .await,
        "B's periodic sweep flushed them: {} of {left}",
        db_views(&pg, 1..=200).await - before
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            keys_on_nodes(&cluster, "cacheside:counter:dirty:*")
                .await
                .is_empty()
                && moves_recorded(&cluster).await == 0
        })
        .await
    );
    b.shutdown().await;

    let left = left + leave(101..=140, 160).await;
    // Nobody runs: the leftovers wait in every primary.
    let dirty = keys_on_nodes(&cluster, "cacheside:counter:dirty:*").await;
    let nodes: HashSet<u16> = dirty.iter().map(|(p, _)| *p).collect();
    assert_eq!(nodes.len(), 3, "{dirty:?}");
    // C finds the cluster itself (`auto`), and keeps its counters.
    let c = in_mode(
        &cluster,
        &pg,
        views(Human::millis(50), Human::secs(3600)),
        "auto",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            db_views(&pg, 1..=200).await - before == left
        })
        .await,
        "C's start sweep flushed them: {} of {left}",
        db_views(&pg, 1..=200).await - before
    );
    assert!(
        eventually(Duration::from_secs(10), async || moves_recorded(&cluster)
            .await
            == 0)
        .await
    );
    assert_eq!(sweeps(&c).await, 1.0, "only C's start sweep ran");
    c.shutdown().await;
    assert_eq!(db_views(&pg, 1..=200).await - before, left);
    support::assert_no_panics();
}

/// A resharding moves a slot's keys, cacheside's with them (the pending delta, the slot's dirty
/// set): INCRs before and after the move reach the database once, from the new primary; an INCR
/// while the slot's keys are split between two primaries gets -TRYAGAIN and counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counters_slot_moved_to_another_primary_keeps_its_pending_deltas() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    let before = db_views(&pg, 8..=8).await;
    let proxy = in_process(&cluster, &pg, views(Human::secs(3600), Human::secs(3600))).await;
    assert!(
        eventually(Duration::from_secs(20), async || sweeps(&proxy).await
            >= 1.0)
        .await
    );
    let mut c = proxy.client().await;
    let k = key(8);
    for n in 1..=10 {
        assert_eq!(query::<i64>(&mut c, &["INCR", &k]).await, n);
    }
    let s = slot::of(k.as_bytes());
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    let moved: Vec<String> = keys_on_nodes(&cluster, "cacheside:counter:*")
        .await
        .into_iter()
        .map(|(port, k)| {
            assert_eq!(port, to, "{k}");
            k
        })
        .collect();
    assert_eq!(
        moved.len(),
        2,
        "the pending delta and the dirty set: {moved:?}"
    );
    assert!(moved.contains(&pending(&k)), "{moved:?}");
    // Through cacheside, which follows the MOVED, onto the same pending delta.
    for n in 11..=15 {
        assert_eq!(query::<i64>(&mut c, &["INCR", &k]).await, n);
    }
    let mut node = cluster.node(to).await;
    assert_eq!(
        query::<Option<i64>>(&mut node, &["GET", &pending(&k)]).await,
        Some(15)
    );

    // Half way back: the counter key is on `from` already, its pending delta and dirty set
    // not yet. Redis answers the script -TRYAGAIN (its keys are split); after cacheside's
    // retries the client gets it, and nothing was counted.
    cluster.migrate(s, from, Some(&[k.as_str()]));
    let r: redis::RedisResult<i64> = redis::cmd("INCR").arg(&k).query_async(&mut c).await;
    let counted = match r {
        Ok(v) => {
            assert_eq!(v, 16);
            1
        }
        Err(e) => {
            assert!(e.to_string().to_uppercase().contains("TRYAGAIN"), "{e}");
            0
        }
    };
    let dirty = format!("cacheside:counter:dirty:{{{}}}:views", slot::slot_tag(s));
    let out = support::cluster::cli(
        to,
        &[
            "MIGRATE",
            "127.0.0.1",
            &from.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            &pending(&k),
            &dirty,
        ],
    );
    assert!(out.contains("OK"), "MIGRATE: {out}");
    cluster.finish_migration(s, from);
    for n in 16..=18 {
        assert_eq!(query::<i64>(&mut c, &["INCR", &k]).await, n + counted);
    }
    proxy.shutdown().await;
    assert_eq!(db_views(&pg, 8..=8).await - before, 18 + counted);
    assert_eq!(keys_on_nodes(&cluster, "cacheside:counter:*").await, vec![]);
    support::assert_no_panics();
}
