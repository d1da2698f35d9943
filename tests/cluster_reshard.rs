//! The cluster changing under cacheside: `redis-cli --cluster reshard` moving slots while a
//! client writes and reads (no error reaches it, no write is lost), a manual failover, and a
//! primary killed.

mod support;

use cacheside::tier::redis::cluster::slot;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::cluster::{cli, RedisCluster};
use support::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_under_traffic_give_no_errors_and_lose_no_writes() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let primaries: Vec<u16> = cluster.primaries().into_iter().map(|(p, _)| p).collect();
    let id = |p: u16| cli(p, &["CLUSTER", "MYID"]).trim().to_string();
    let (from, to) = (id(primaries[0]), id(primaries[1]));
    let seed = format!("127.0.0.1:{}", cluster.ports[0]);

    let done = Arc::new(AtomicBool::new(false));
    let keys: Vec<String> = (0..300).map(|i| format!("rs:{i}")).collect();
    let writer = {
        let (done, keys) = (done.clone(), keys.clone());
        let mut c = proxy.client().await;
        tokio::spawn(async move {
            let mut last = vec![0u64; keys.len()];
            let mut round = 0u64;
            while !done.load(Ordering::Relaxed) || round < 3 {
                round += 1;
                for (i, k) in keys.iter().enumerate() {
                    let v = round * 1000 + i as u64;
                    let () = redis::cmd("SET")
                        .arg(k)
                        .arg(v)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("SET {k} in round {round}: {e}"));
                    last[i] = v;
                    let got: u64 = redis::cmd("GET")
                        .arg(k)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("GET {k} in round {round}: {e}"));
                    assert_eq!(got, v, "{k} read back");
                }
                let got: Vec<u64> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("MGET in round {round}: {e}"));
                assert_eq!(got, last, "MGET after round {round}");
            }
            (round, last)
        })
    };
    // Transactions meet the moving slots too: each runs where its key lives (redirected whole
    // when cacheside's map is stale or the key has just migrated), none fails, none runs twice.
    let counters: Vec<String> = (0..100).map(|i| format!("rt:{i}")).collect();
    let txns = {
        let (done, counters) = (done.clone(), counters.clone());
        let mut c = proxy.client().await;
        tokio::spawn(async move {
            let mut rounds = 0u64;
            while !done.load(Ordering::Relaxed) || rounds < 3 {
                rounds += 1;
                for k in &counters {
                    let (n, got): (u64, u64) = redis::pipe()
                        .atomic()
                        .incr(k, 1)
                        .get(k)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_else(|e| panic!("MULTI INCR {k} in round {rounds}: {e}"));
                    assert_eq!((n, got), (rounds, rounds), "{k}");
                }
            }
            rounds
        })
    };
    // Optimistic transactions too (WATCH, read, MULTI, write, EXEC, retried on a null EXEC),
    // three clients incrementing the same keys: a slot moved under a watch reads where the key
    // lives and fails the watch, never an error, and no increment is lost (each key ends at
    // the number of EXECs that ran on it, counted by the clients).
    // Keys in the slots the reshard below moves first (redis-cli takes a source's slots from
    // the start of its ranges), so that the watches meet the moves.
    let first = cluster.primaries()[0].1[0].0;
    let watched: Vec<String> = (0..)
        .map(|i| format!("rw:{i}"))
        .filter(|k| (first..first + 1500).contains(&slot::of(k.as_bytes())))
        .take(4)
        .collect();
    let mut cas = Vec::new();
    for t in 0..3usize {
        let (done, watched) = (done.clone(), watched.clone());
        let mut c = proxy.client().await;
        cas.push(tokio::spawn(async move {
            let (mut rounds, mut retries) = (0u64, 0u64);
            let mut ran_on = vec![0u64; watched.len()];
            while !done.load(Ordering::Relaxed) || rounds < 3 {
                rounds += 1;
                // All in the same order: the clients contend for each key.
                for i in 0..watched.len() {
                    let k = &watched[i];
                    loop {
                        let fail = |e: redis::RedisError| -> ! {
                            panic!("CAS {k} by client {t} in round {rounds}: {e}")
                        };
                        let () = redis::cmd("WATCH")
                            .arg(k)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_else(|e| fail(e));
                        let n: Option<u64> = redis::cmd("GET")
                            .arg(k)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_else(|e| fail(e));
                        // A wider window for a slot to move under the watch.
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        let ran: Option<(String,)> = redis::pipe()
                            .atomic()
                            .set(k, n.unwrap_or(0) + 1)
                            .query_async(&mut c)
                            .await
                            .unwrap_or_else(|e| fail(e));
                        if ran.is_some() {
                            ran_on[i] += 1;
                            break;
                        }
                        retries += 1;
                    }
                }
            }
            (rounds, retries, ran_on)
        }));
    }
    let reshard = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "1500", "--cluster-yes"])
            .args(["--cluster-pipeline", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run redis-cli --cluster reshard")
    })
    .await
    .unwrap();
    assert!(reshard.success(), "reshard failed");
    done.store(true, Ordering::Relaxed);
    let (rounds, last) = writer.await.unwrap();
    assert!(rounds >= 3);
    let txn_rounds = txns.await.unwrap();
    let (mut ran_on, mut nulls) = (vec![0u64; watched.len()], 0);
    for task in cas {
        let (rounds, retries, ran) = task.await.unwrap();
        eprintln!("optimistic transactions: {rounds} rounds, {retries} retried");
        for (total, n) in ran_on.iter_mut().zip(ran) {
            *total += n;
        }
        nulls += retries;
    }
    assert!(nulls > 0, "the clients contended: some watches failed");
    for (k, ran) in watched.iter().zip(ran_on) {
        let port = cluster.primary_of(cacheside::tier::redis::cluster::slot::of(k.as_bytes()));
        let got = cli(port, &["GET", k]);
        assert_eq!(got.trim(), ran.to_string(), "{k} on {port}: EXECs that ran");
    }
    for k in &counters {
        let port = cluster.primary_of(cacheside::tier::redis::cluster::slot::of(k.as_bytes()));
        let got = cli(port, &["GET", k]);
        assert_eq!(got.trim(), txn_rounds.to_string(), "{k} on {port}");
    }
    // The traffic met the moving slots: cacheside followed redirections.
    let text = proxy.admin_get("/metrics").await.1;
    let moved = support::metric(&text, "cacheside_cluster_redirects_total{kind=\"moved\"}");
    assert!(moved.unwrap_or(0.0) >= 1.0, "{text}");
    let ask = support::metric(&text, "cacheside_cluster_redirects_total{kind=\"ask\"}");
    eprintln!("redirects followed: moved {moved:?}, ask {ask:?}; rounds {rounds}");
    // Counted among the upstream errors by kind too, at the same place.
    for kind in ["moved", "ask"] {
        assert_eq!(
            support::metric(
                &text,
                &format!("cacheside_upstream_errors_total{{kind=\"{kind}\"}}")
            ),
            support::metric(
                &text,
                &format!("cacheside_cluster_redirects_total{{kind=\"{kind}\"}}")
            ),
            "{kind}"
        );
    }
    // Every last write is where the cluster now keeps its key.
    for (k, v) in keys.iter().zip(last) {
        let port = cluster.primary_of(cacheside::tier::redis::cluster::slot::of(k.as_bytes()));
        let got = cli(port, &["GET", k]);
        assert_eq!(got.trim(), v.to_string(), "{k} on {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_is_followed_without_an_error() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut c = proxy.client().await;
    let keys: Vec<String> = (0..50).map(|i| format!("fo:{i}")).collect();
    for k in &keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // A replica of the primary serving fo:0 takes over.
    let old = cluster.primary_of(cacheside::tier::redis::cluster::slot::of(b"fo:0"));
    let replica = cluster.fail_over(old);
    // The old primary, now a replica, answers MOVED: cacheside follows it to the new one.
    for k in &keys {
        let () = redis::cmd("SET")
            .arg(k)
            .arg(2)
            .query_async(&mut c)
            .await
            .unwrap();
        let v: u64 = redis::cmd("GET").arg(k).query_async(&mut c).await.unwrap();
        assert_eq!(v, 2, "{k}");
    }
    assert_eq!(cli(replica, &["GET", "fo:0"]).trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_gives_errors_only_until_its_replica_takes_over() {
    let mut cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut c = proxy.client().await;
    let slot_of = |k: &str| cacheside::tier::redis::cluster::slot::of(k.as_bytes());
    let old = cluster.primary_of(slot_of("kill:0"));
    let () = redis::cmd("SET")
        .arg("kill:0")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while !cluster.ports.iter().any(|&p| {
        p != old
            && cli(p, &["INFO", "replication"]).contains("master_link_status:up")
            && cli(p, &["ROLE"]).starts_with("slave")
            && cli(p, &["INFO", "replication"]).contains(&format!("master_port:{old}"))
    }) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "replica never synced"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    cluster.kill(old);
    let start = std::time::Instant::now();
    let mut errors = 0;
    loop {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg("kill:0")
            .arg(2)
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => break,
            Err(_) => errors += 1,
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(errors > 0, "the switch took no time at all");
    // (Meanwhile the whole cluster answers CLUSTERDOWN, as it does with its default
    // cluster-require-full-coverage.) Recovered without restarting cacheside: every later
    // command succeeds.
    for _ in 0..20 {
        let v: u64 = redis::cmd("GET")
            .arg("kill:0")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, 2);
    }
    assert_eq!(proxy.admin_get("/readyz").await.0, 200);
}
