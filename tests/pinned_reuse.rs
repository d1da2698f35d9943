//! Pinned connections (transactions, blocking commands) that no client holds any more are kept
//! for the next client instead of a new connection each time, and carry nothing of the client
//! before: no name, no transaction, no queued command. Counted on the real servers
//! (`INFO stats` total_connections_received).

mod support;

use cacheside::tier::redis::cluster::slot;
use std::time::Duration;
use support::cluster::{cli, RedisCluster};
use support::{eventually, metric, query as q, Proxy, RedisServer};

fn connections_received(port: u16) -> u64 {
    cli(port, &["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

async fn reused(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").await.1;
    metric(&text, "cacheside_upstream_pinned_reused_total").unwrap_or(0.0)
}

/// One transaction on its own connection, which then closes; returns once cacheside has
/// ended the session (the client's count is back to what it was).
async fn one_client_transaction(proxy: &Proxy, key: &str) -> i64 {
    let mut c = proxy.client().await;
    let (n,): (i64,) = redis::pipe()
        .atomic()
        .incr(key, 1)
        .query_async(&mut c)
        .await
        .unwrap();
    drop(c);
    n
}

async fn clients(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").await.1;
    metric(&text, "cacheside_client_connections").expect("the client gauge is exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_one_after_another_share_one_upstream_connection_for_transactions() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let port = port_of(&redis.url());
    // The shared connections and the first pinned one are opened by a first transaction.
    assert_eq!(one_client_transaction(&proxy, "tx:n").await, 1);
    assert!(
        eventually(Duration::from_secs(5), async || clients(&proxy).await
            == 0.0)
        .await
    );
    let before = connections_received(port);
    for i in 2..=41 {
        assert_eq!(one_client_transaction(&proxy, "tx:n").await, i);
        assert!(
            eventually(Duration::from_secs(5), async || clients(&proxy).await
                == 0.0)
            .await,
            "the session did not end"
        );
    }
    let opened = connections_received(port) - before;
    // One is redis-cli's own, reading the count.
    let r = reused(&proxy).await;
    assert!(
        opened <= 1,
        "{opened} upstream connections for 40 transactions ({r} reused)"
    );
    assert_eq!(r, 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_carries_nothing_of_the_client_before() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    // A client that leaves inside a transaction: its connection is not kept (its queued SET
    // must never run); the next client gets a new one.
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\nSET k left-behind\r\n").await;
    raw.expect(b"+OK\r\n+QUEUED\r\n").await;
    drop(raw);
    assert!(
        eventually(Duration::from_secs(5), async || clients(&proxy).await
            == 0.0)
        .await
    );

    let mut a = proxy.client().await;
    let _: () = q(&mut a, &["CLIENT", "SETNAME", "alice"]).await;
    let _: () = q(&mut a, &["WATCH", "k"]).await;
    let (set,): (String,) = redis::pipe()
        .atomic()
        .set("k", "a")
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(set, "OK");
    drop(a);
    assert!(
        eventually(Duration::from_secs(5), async || clients(&proxy).await
            == 0.0)
        .await
    );

    let reused_before = reused(&proxy).await;
    let mut b = proxy.client().await;
    let (info, get): (String, String) = redis::pipe()
        .atomic()
        .cmd("CLIENT")
        .arg("INFO")
        .get("k")
        .query_async(&mut b)
        .await
        .unwrap();
    assert!(info.contains(" name= "), "{info}");
    assert_eq!(get, "a");
    assert_eq!(
        reused(&proxy).await,
        reused_before + 1.0,
        "the kept connection was not used"
    );
    drop(b);
    assert!(
        eventually(Duration::from_secs(5), async || clients(&proxy).await
            == 0.0)
        .await
    );
    // A named client is given a kept connection under its own name.
    let mut carol = proxy.client().await;
    let _: () = q(&mut carol, &["CLIENT", "SETNAME", "carol"]).await;
    let (info,): (String,) = redis::pipe()
        .atomic()
        .cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut carol)
        .await
        .unwrap();
    assert!(info.contains(" name=carol "), "{info}");
    assert_eq!(reused(&proxy).await, reused_before + 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_moving_between_cluster_primaries_open_no_connection_each_time() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut c = proxy.client().await;
    // Keys of every primary, in turn.
    let keys: Vec<String> = (0..60).map(|i| format!("mv:{i}")).collect();
    let primaries: Vec<u16> = cluster.primaries().into_iter().map(|(p, _)| p).collect();
    assert!(
        keys.iter()
            .map(|k| cluster.primary_of(slot::of(k.as_bytes())))
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1
    );
    let before: u64 = primaries.iter().map(|&p| connections_received(p)).sum();
    for round in 1..=3 {
        for k in &keys {
            let (n,): (i64,) = redis::pipe()
                .atomic()
                .incr(k, 1)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(n, round);
        }
    }
    let opened = primaries
        .iter()
        .map(|&p| connections_received(p))
        .sum::<u64>()
        - before;
    // Each transaction began on its key's primary: one MULTI each, none moved (DISCARDed).
    let calls = |cmd: &str| -> u64 {
        primaries
            .iter()
            .map(|&p| support::command_calls(&cli(p, &["INFO", "commandstats"]), cmd))
            .sum()
    };
    assert_eq!(calls("multi"), 180);
    assert_eq!(calls("discard"), 0);
    // An empty transaction costs nothing upstream.
    let mut raw = proxy.raw().await;
    raw.send(b"MULTI\r\nEXEC\r\nMULTI\r\nDISCARD\r\nMULTI\r\nPING\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n*0\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+PONG\r\n")
        .await;
    assert_eq!(calls("multi"), 181);
    // A few per primary at most (slot map reads among them), where a new connection per move
    // would be over a hundred.
    assert!(
        opened <= 2 * primaries.len() as u64,
        "{opened} connections for 180 transactions"
    );
}
