//! Blocking commands on a real Redis Cluster whose slots move: the node's `-MOVED`/`-ASK` reply
//! to a blocking command on the client's pinned connection is followed, as it is for commands on
//! shared connections, and never reaches the client.

mod support;

use cacheside::tier::redis::cluster::slot;
use std::time::Duration;
use support::cluster::{cli, RedisCluster};
use support::query as q;
use support::{eventually, Proxy};

async fn start() -> (RedisCluster, Proxy) {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    (cluster, proxy)
}

/// Moves `key`'s slot (and its keys) to another primary; returns (old, new) primaries' ports.
fn move_slot_of(cluster: &RedisCluster, key: &str) -> (u16, u16) {
    let s = slot::of(key.as_bytes());
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    (from, to)
}

fn blocked_clients(port: u16) -> u64 {
    cli(port, &["INFO", "clients"])
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_sent_to_a_slots_old_primary_follows_moved() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "bm:warm", "1"]).await;
    let (_, to) = move_slot_of(&cluster, "bm:list");
    // cacheside still maps the slot to its old primary: the pinned connection opens there and
    // gets MOVED.
    let mut node = cluster.node(to).await;
    let _: i64 = q(&mut node, &["RPUSH", "bm:list", "a", "b"]).await;
    let got: Option<(String, String)> = q(&mut c, &["BLPOP", "bm:list", "2"]).await;
    assert_eq!(got, Some(("bm:list".into(), "a".into())));
    let got: (String, Vec<String>) = q(&mut c, &["BLMPOP", "2", "1", "bm:list", "LEFT"]).await;
    assert_eq!(got, ("bm:list".to_string(), vec!["b".to_string()]));
    // A timeout is answered as the node answers it, not as a redirection.
    let got: Option<(String, String)> = q(&mut c, &["BRPOP", "bm:list", "0.2"]).await;
    assert_eq!(got, None);
    let got: redis::Value = q(
        &mut c,
        &["XREAD", "BLOCK", "200", "STREAMS", "bm:list:s", "$"],
    )
    .await;
    assert_eq!(got, redis::Value::Nil);
    // The connection is usable after, and the client's other commands too.
    assert_eq!(q::<String>(&mut c, &["PING"]).await, "PONG");
    assert_eq!(q::<String>(&mut c, &["GET", "bm:warm"]).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_command_whose_slot_moves_waits_on_the_new_primary() {
    let (cluster, proxy) = start().await;
    let key = "bw:queue";
    let s = slot::of(key.as_bytes());
    let from = cluster.primary_of(s);
    let mut c = proxy.client().await;
    let waiter = tokio::spawn(async move {
        let got: Option<(String, String)> = q(&mut c, &["BLPOP", key, "0"]).await;
        got
    });
    assert!(
        eventually(Duration::from_secs(5), async || blocked_clients(from) == 1).await,
        "the BLPOP never blocked on {from}"
    );
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    // The old primary ends the wait with MOVED; cacheside blocks again on the new one.
    assert!(
        eventually(Duration::from_secs(10), async || blocked_clients(to) == 1).await,
        "the BLPOP did not move to {to} (blocked there: {}, on {from}: {})",
        blocked_clients(to),
        blocked_clients(from)
    );
    assert!(
        !waiter.is_finished(),
        "the client was answered: {:?}",
        waiter.await
    );
    let mut other = proxy.client().await;
    let _: i64 = q(&mut other, &["RPUSH", key, "job-1"]).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("BLPOP answered")
        .expect("no panic");
    assert_eq!(got, Some((key.to_string(), "job-1".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_on_a_key_already_migrated_follows_ask() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: i64 = q(&mut c, &["RPUSH", "{ba}moved", "x"]).await;
    let _: () = q(&mut c, &["SET", "{ba}stays", "1"]).await;
    let s = slot::of(b"ba");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, Some(&["{ba}moved"]));
    // The source still serves the slot and no longer has the list: it answers ASK.
    let got: Option<(String, String)> = q(&mut c, &["BLPOP", "{ba}moved", "2"]).await;
    assert_eq!(got, Some(("{ba}moved".into(), "x".into())));
    cluster.migrate(s, to, Some(&["{ba}stays"]));
    cluster.finish_migration(s, to);
    assert_eq!(q::<String>(&mut c, &["GET", "{ba}stays"]).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_ends_a_blocked_command_and_its_upstream_wait() {
    use tokio::io::AsyncReadExt;
    let (cluster, proxy) = start().await;
    let key = "bk:queue";
    let node = cluster.primary_of(slot::of(key.as_bytes()));
    let mut raw = proxy.raw().await;
    raw.send(b"CLIENT ID\r\n").await;
    let mut id = Vec::new();
    while !id.ends_with(b"\r\n") {
        let mut b = [0u8; 64];
        let n = raw.0.read(&mut b).await.expect("read CLIENT ID");
        assert!(n > 0, "closed before CLIENT ID's reply");
        id.extend_from_slice(&b[..n]);
    }
    let id = String::from_utf8_lossy(&id[1..id.len() - 2]).to_string();
    raw.send(format!("BLPOP {key} 0\r\n").as_bytes()).await;
    assert!(
        eventually(Duration::from_secs(5), async || blocked_clients(node) == 1).await,
        "the BLPOP never blocked"
    );
    let mut admin = proxy.client().await;
    assert_eq!(
        q::<i64>(&mut admin, &["CLIENT", "KILL", "ID", &id]).await,
        1
    );
    let rest = raw.read_to_close().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        eventually(Duration::from_secs(5), async || blocked_clients(node) == 0).await,
        "the upstream connection still waits"
    );
}

/// A primary whose slots all moved away (scaling in: it is removed from the cluster next, and
/// may run a while) keeps no idle pinned connection of cacheside's: the next connection put
/// back closes those to nodes no longer in the slot map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pinned_connections_to_a_primary_left_without_slots_are_closed() {
    let (cluster, proxy) = start().await;
    let gone = cluster.primary_of(slot::of(b"pr"));
    let stays = cluster.other_primary(gone);
    let named = |port| {
        cli(port, &["CLIENT", "LIST"])
            .matches("name=pr-idle ")
            .count()
    };
    {
        let mut c = proxy.client().await;
        let _: () = q(&mut c, &["CLIENT", "SETNAME", "pr-idle"]).await;
        let _: () = q(&mut c, &["WATCH", "{pr}k"]).await;
        let _: () = q(&mut c, &["UNWATCH"]).await;
    }
    // The client left: its pinned connection is kept, idle, for the next client.
    let kept = eventually(Duration::from_secs(5), async || named(gone) == 1).await;
    assert!(kept, "{}", cli(gone, &["CLIENT", "LIST"]));

    let id = |p: u16| cli(p, &["CLUSTER", "MYID"]).trim().to_string();
    let owned: usize = cluster
        .primaries()
        .into_iter()
        .find(|(p, _)| *p == gone)
        .map(|(_, ranges)| ranges.iter().map(|(a, b)| (b - a + 1) as usize).sum())
        .unwrap();
    let reshard = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{stays}")])
        .args(["--cluster-from", &id(gone), "--cluster-to", &id(stays)])
        .args(["--cluster-slots", &owned.to_string(), "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run redis-cli --cluster reshard");
    assert!(reshard.success());
    // cacheside meets the move (a -MOVED refreshes its map), and other clients' pinned
    // connections are put back afterwards.
    // Their WATCH is on a key of the primary that stays: one sent where the stale map says
    // would take the kept connection (and close it, following the redirection).
    let there = (0..)
        .map(|i| format!("{{ps{i}}}k"))
        .find(|k| cluster.primary_of(slot::of(k.as_bytes())) == stays)
        .unwrap();
    let closed = eventually(Duration::from_secs(10), async || {
        let mut other = proxy.client().await;
        let _: () = q(&mut other, &["SET", "{pr}k", "1"]).await;

        let _: () = q(&mut other, &["WATCH", &there]).await;
        let _: () = q(&mut other, &["UNWATCH"]).await;
        drop(other);
        tokio::time::sleep(Duration::from_millis(50)).await;
        named(gone) == 0
    })
    .await;
    assert!(closed, "{}", cli(gone, &["CLIENT", "LIST"]));
    support::assert_no_panics();
}
