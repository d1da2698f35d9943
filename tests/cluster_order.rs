//! One client's order across a redirection, on a real cluster: a write that meets `-MOVED` is
//! sent again after its reply came back; a later write of the same client, routed meanwhile by
//! a newer slot map straight to the new node, must not run before that retry.

mod support;

use cacheside::tier::redis::cluster::slot;
use std::time::{Duration, Instant};
use support::cluster::{cli, RedisCluster};
use support::Proxy;

/// The first key `prefix{n}` whose slot the primary `port` serves.
fn key_on(cluster: &RedisCluster, port: u16, prefix: &str) -> (String, u16) {
    (0..100_000)
        .map(|n| format!("{prefix}{n}"))
        .map(|k| {
            let s = slot::of(k.as_bytes());
            (k, s)
        })
        .find(|(_, s)| cluster.primary_of(*s) == port)
        .expect("some key hashes to every primary")
}

async fn slot_map_reads(proxy: &Proxy) -> f64 {
    let text = proxy.admin_get("/metrics").await.1;
    support::metric(&text, "cacheside_cluster_slot_map_reads_total").unwrap_or(0.0)
}

fn set(key: &str, value: &str) -> Vec<u8> {
    format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
        key.len(),
        value.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_write_does_not_overtake_an_earlier_one_sent_again_after_moved() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    // The slot map is read from the primaries in address order: the busy node (`slow`) must
    // not be the first asked, or the refresh would wait for it.
    let mut primaries: Vec<u16> = cluster.primaries().into_iter().map(|(p, _)| p).collect();
    primaries.sort_by_key(|p| format!("127.0.0.1:{p}"));
    let (to, other, slow) = (primaries[0], primaries[1], primaries[2]);
    let (key, key_slot) = key_on(&cluster, slow, "order:");
    let (trigger, trigger_slot) = key_on(&cluster, other, "trigger:");

    let mut c = proxy.client().await;
    for k in [&key, &trigger] {
        let () = redis::cmd("SET")
            .arg(k)
            .arg("0")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Just after a periodic read of the slot map (every 10 s), so none comes in the middle.
    let before = slot_map_reads(&proxy).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while slot_map_reads(&proxy).await == before {
        assert!(
            Instant::now() < deadline,
            "no periodic slot map read in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both slots move; cacheside does not know yet. (Refreshes are at least 500 ms apart.)
    cluster.migrate(key_slot, to, None);
    cluster.finish_migration(key_slot, to);
    cluster.migrate(trigger_slot, to, None);
    cluster.finish_migration(trigger_slot, to);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The key's old node is busy for 1.2 s: its -MOVED to the first write comes back late.
    let busy = tokio::task::spawn_blocking(move || {
        cli(
            slow,
            &[
                "EVAL",
                "local s = redis.call('TIME') \
                 while true do \
                   local n = redis.call('TIME') \
                   if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 1200000 then break end \
                 end \
                 return 1",
                "0",
            ],
        )
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut raw = proxy.raw().await;
    raw.send(&set(&key, "1")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another client's command meets -MOVED from a node that is not busy: the slot map is read
    // again, and now routes the key to its new node.
    let mut other_client = proxy.client().await;
    let _: Option<String> = redis::cmd("GET")
        .arg(&trigger)
        .query_async(&mut other_client)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The same client's second write, sent before the first one's reply.
    raw.send(&set(&key, "2")).await;
    raw.expect(b"+OK\r\n+OK\r\n").await;
    busy.await.unwrap();

    let got: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        got, "2",
        "the client's second SET ran before its first, which was sent again after -MOVED"
    );
    let text = proxy.admin_get("/metrics").await.1;
    let moved = support::metric(&text, "cacheside_cluster_redirects_total{kind=\"moved\"}");
    assert!(moved.unwrap_or(0.0) >= 2.0, "both MOVED followed: {text}");
    assert_eq!(cli(to, &["GET", &key]).trim(), "2");
    support::assert_no_panics();
}
