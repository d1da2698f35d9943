//! Shard channels on a real Redis Cluster through cacheside, as one Redis serves them: a client
//! subscribes to channels of every primary in one SSUBSCRIBE (a cluster node refuses that with
//! CROSSSLOT), gets its confirmations in order with its own count, and every SPUBLISH reaches
//! it; SUNSUBSCRIBE, named or bare, ends them on their nodes.

mod support;

use cacheside::tier::redis::cluster::slot;
use std::collections::HashSet;
use support::cluster::RedisCluster;
use support::{query as q, Proxy};

/// One channel per primary: `(channel, primary port)`.
fn channel_per_primary(cluster: &RedisCluster) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in 0.. {
        let ch = format!("ch:{i}");
        if seen.insert(cluster.primary_of(slot::of(ch.as_bytes()))) {
            out.push(ch);
        }
        if seen.len() == cluster.primaries().len() {
            return out;
        }
    }
    out
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

fn confirmation(head: &str, channel: &str, count: usize, resp3: bool) -> String {
    let kind = if resp3 { '>' } else { '*' };
    format!("{kind}3\r\n{}{}:{count}\r\n", bulk(head), bulk(channel))
}

/// One SSUBSCRIBE of every channel (RESP2), and its confirmations in order.
async fn subscribe_all(sub: &mut support::Raw, chans: &[String]) {
    sub.send(format!("SSUBSCRIBE {}\r\n", chans.join(" ")).as_bytes())
        .await;
    let want: String = chans
        .iter()
        .enumerate()
        .map(|(i, c)| confirmation("ssubscribe", c, i + 1, false))
        .collect();
    sub.expect(want.as_bytes()).await;
}

fn message(channel: &str, payload: &str) -> String {
    format!(
        "*3\r\n{}{}{}",
        bulk("smessage"),
        bulk(channel),
        bulk(payload)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subscribes_to_shard_channels_of_every_primary_on_one_connection() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let chans = channel_per_primary(&cluster);
    assert_eq!(chans.len(), 3);
    let mut sub = proxy.raw().await;
    subscribe_all(&mut sub, &chans).await;
    // Subscribing again to one it has changes nothing, as in Redis.
    sub.send(format!("SSUBSCRIBE {}\r\n", chans[1]).as_bytes())
        .await;
    sub.expect(confirmation("ssubscribe", &chans[1], 3, false).as_bytes())
        .await;

    let mut publisher = proxy.client().await;
    for c in &chans {
        let n: i64 = q(&mut publisher, &["SPUBLISH", c, &format!("to {c}")]).await;
        assert_eq!(n, 1, "SPUBLISH {c} reached no subscriber");
    }
    let want: Vec<String> = chans
        .iter()
        .map(|c| message(c, &format!("to {c}")))
        .collect();
    let got = sub.read_exact_len(want.iter().map(String::len).sum()).await;
    let got = String::from_utf8_lossy(&got).to_string();
    for m in &want {
        assert!(got.contains(m.as_str()), "{m:?} not in {got:?}");
    }

    // One named: ended on its node, the count goes down.
    sub.send(format!("SUNSUBSCRIBE {}\r\n", chans[1]).as_bytes())
        .await;
    sub.expect(confirmation("sunsubscribe", &chans[1], 2, false).as_bytes())
        .await;
    let n: i64 = q(&mut publisher, &["SPUBLISH", &chans[1], "gone"]).await;
    assert_eq!(n, 0);
    let n: i64 = q(&mut publisher, &["SPUBLISH", &chans[2], "still"]).await;
    assert_eq!(n, 1);
    sub.expect(message(&chans[2], "still").as_bytes()).await;

    // Bare: every one left, in the order subscribed.
    sub.send(b"SUNSUBSCRIBE\r\n").await;
    let want = confirmation("sunsubscribe", &chans[0], 1, false)
        + &confirmation("sunsubscribe", &chans[2], 0, false);
    sub.expect(want.as_bytes()).await;
    for c in &chans {
        let n: i64 = q(&mut publisher, &["SPUBLISH", c, "none"]).await;
        assert_eq!(n, 0, "{c} still has a subscriber");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_shard_subscriptions_are_confirmed_with_pushes() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let chans = channel_per_primary(&cluster);
    let mut sub = proxy.raw().await;
    // No channel: Redis's own arity error.
    sub.send(b"SSUBSCRIBE\r\n").await;
    sub.expect(b"-ERR wrong number of arguments for 'ssubscribe' command\r\n")
        .await;
    sub.send(b"HELLO 3\r\n").await;
    let hello = sub.read_exact_len(1).await;
    assert_eq!(hello, b"%");
    // The rest of HELLO's map: read until the SSUBSCRIBE confirmations can be told apart.
    sub.send(format!("SSUBSCRIBE {} {}\r\n", chans[0], chans[2]).as_bytes())
        .await;
    let want = confirmation("ssubscribe", &chans[0], 1, true)
        + &confirmation("ssubscribe", &chans[2], 2, true);
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with(want.as_str()) {
        got.extend(sub.read_exact_len(1).await);
        assert!(got.len() < 4096, "{:?}", String::from_utf8_lossy(&got));
    }
    let mut publisher = proxy.client().await;
    let n: i64 = q(&mut publisher, &["SPUBLISH", &chans[2], "pushed"]).await;
    assert_eq!(n, 1);
    let push = format!(
        ">3\r\n{}{}{}",
        bulk("smessage"),
        bulk(&chans[2]),
        bulk("pushed")
    );
    sub.expect(push.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_of_a_shard_subscription_closes_the_client_as_redis_would() {
    let mut cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let chans = channel_per_primary(&cluster);
    let mut sub = proxy.raw().await;
    subscribe_all(&mut sub, &chans).await;
    // Not the node of the first channel (the client's pinned connection): one it added.
    let node = cluster.primary_of(slot::of(chans[2].as_bytes()));
    cluster.kill(node);
    let rest = String::from_utf8_lossy(&sub.read_to_close().await).to_string();
    assert!(
        rest.starts_with("-ERR cacheside: upstream ") && rest.contains(&format!(":{node} ")),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_quit_end_shard_subscriptions_on_every_node() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let chans = channel_per_primary(&cluster);
    let mut publisher = proxy.client().await;
    let mut sub = proxy.raw().await;
    subscribe_all(&mut sub, &chans).await;
    sub.send(b"RESET\r\nPING\r\n").await;
    sub.expect(b"+RESET\r\n+PONG\r\n").await;
    for c in &chans {
        let n: i64 = q(&mut publisher, &["SPUBLISH", c, "after reset"]).await;
        assert_eq!(n, 0, "{c} still has a subscriber after RESET");
    }
    subscribe_all(&mut sub, &chans).await;
    sub.send(b"QUIT\r\n").await;
    assert_eq!(sub.read_to_close().await, b"+OK\r\n");
}

/// A channel's slot moved to another primary: its old node ends the subscription (an unasked
/// `sunsubscribe`), and cacheside subscribes it again on the new primary. The client sees none
/// of it: no `sunsubscribe`, the channel's messages keep coming, and its count is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_channel_whose_slot_moves_is_subscribed_again_where_it_lives() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let chans = channel_per_primary(&cluster);
    let (moving, staying) = (&chans[0], &chans[1]);
    for resp3 in [false, true] {
        let mut sub = proxy.raw().await;
        if resp3 {
            sub.send(b"HELLO 3\r\n").await;
            let mut hello = Vec::new();
            while !hello.ends_with(b"modules\r\n*0\r\n") {
                hello.extend(sub.read_exact_len(1).await);
            }
        }
        sub.send(format!("SSUBSCRIBE {moving} {staying}\r\n").as_bytes())
            .await;
        let want = confirmation("ssubscribe", moving, 1, resp3)
            + &confirmation("ssubscribe", staying, 2, resp3);
        sub.expect(want.as_bytes()).await;
        let s = slot::of(moving.as_bytes());
        let from = cluster.primary_of(s);
        let to = cluster.other_primary(from);
        cluster.migrate(s, to, None);
        cluster.finish_migration(s, to);
        // Published once someone listens where the slot now lives (before that, nobody does).
        let mut node = cluster.node(to).await;
        let start = std::time::Instant::now();
        while q::<i64>(&mut node, &["SPUBLISH", moving, "after the move"]).await != 1 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "never subscribed again on {to}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let kind = if resp3 { '>' } else { '*' };
        let msg = format!(
            "{kind}3\r\n{}{}{}",
            bulk("smessage"),
            bulk(moving),
            bulk("after the move")
        );
        sub.expect(msg.as_bytes()).await;
        // The count is the client's: two channels, then a third.
        let third = &chans[2];
        sub.send(format!("SSUBSCRIBE {third}\r\n").as_bytes()).await;
        sub.expect(confirmation("ssubscribe", third, 3, resp3).as_bytes())
            .await;
        sub.send(format!("SUNSUBSCRIBE {moving}\r\n").as_bytes())
            .await;
        sub.expect(confirmation("sunsubscribe", moving, 2, resp3).as_bytes())
            .await;
    }
    support::assert_no_panics();
}
