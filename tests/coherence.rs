//! History checkers for the hot tier's promise "no stale read after a write" on one
//! redis-server, in both coherence modes (the checker: `support/coherence.rs`).

mod support;

use std::time::Duration;
use support::{coherence, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_broadcast() {
    let redis = RedisServer::start();
    coherence::check(&redis.url(), "broadcast", false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_with_tracking() {
    let redis = RedisServer::start();
    coherence::check(&redis.url(), "tracking", false, false).await;
}

/// `hot.broadcast_encoding = "packed"`: announcements carry their keys front-coded in one
/// string. The checker runs with it, and a plain subscriber on the channel sees that the
/// messages Redis relayed were packed ones (`[id, "P", keys]`), not `[id, "K", key...]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_an_acknowledged_write_with_packed_announcements() {
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start();
    let mut sub = subscribers(&redis, 1, 1).await.remove(0);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let listen = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                r = sub.read(&mut buf) => match r {
                    Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                    _ => return seen,
                },
                _ = &mut stopped => return seen,
            }
        }
    });
    coherence::check(&redis.url(), "broadcast", false, true).await;
    let _ = stop.send(());
    let seen = listen.await.unwrap();
    let count = |tag: &[u8]| seen.windows(tag.len()).filter(|w| w == &tag).count();
    let (packed, plain) = (count(b"\r\n$1\r\nP\r\n"), count(b"\r\n$1\r\nK\r\n"));
    eprintln!("announcements seen: {packed} packed, {plain} with a string per key");
    assert!(packed > 100, "packed announcements were sent");
    assert_eq!(plain, 0, "no announcement names its keys one string each");
    support::assert_no_panics();
}

/// The broadcast history checker against a Redis that writes with I/O threads, with 100 other
/// subscribers on the channel: the conditions of the fence test below, under concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_an_acknowledged_write_with_broadcast_on_io_threads() {
    let redis = RedisServer::start_with(&["--io-threads", "4"]);
    let others = subscribers(&redis, 100, 100).await;
    coherence::check(&redis.url(), "broadcast", false, false).await;
    drop(others);
}

/// Two sidecars in broadcast mode caching `keys` (TTL 60 s), each hearing announcements.
async fn broadcast_pair(redis: &RedisServer, keys: &str) -> (support::Proxy, support::Proxy) {
    let url = redis.url();
    let start = || {
        support::Proxy::start_with(&url, |c| {
            c.hot.coherence = "broadcast".into();
            c.cache = vec![support::cache_rule(keys, 60)];
        })
    };
    let (a, b) = (start().await, start().await);
    support::history::wait_coherent(&a).await;
    support::history::wait_coherent(&b).await;
    (a, b)
}

/// `n` connections subscribed to the invalidation channel that never read, once the channel
/// counts `total` subscribers.
async fn subscribers(redis: &RedisServer, n: usize, total: i64) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut others = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
            .await
            .expect("connect to redis-server");
        s.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$20\r\ncacheside:invalidate\r\n")
            .await
            .unwrap();
        others.push(s);
    }
    let mut direct = redis.direct().await;
    let subscribed = support::eventually(Duration::from_secs(10), async || {
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("cacheside:invalidate")
            .query_async(&mut direct)
            .await
            .unwrap();
        counts.first().is_some_and(|(_, c)| *c >= total)
    })
    .await;
    assert!(subscribed, "the {n} subscribers joined the channel");
    others
}

/// Redis writes a PUBLISH's reply before the message to each subscriber (its pending writes go
/// out newest first), so with many subscribers on the channel, the last ones get a write's
/// announcement well after the writer has its reply. A sidecar subscribed before 400 others is
/// written to last: a read through it right after a write acknowledged through another sidecar
/// must still not be served the old value. Writes by SET (its PUBLISH in the write's pipeline),
/// MULTI/EXEC (in the transaction) and SET under WATCH (announced after its reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_acknowledged_only_once_every_sidecar_has_its_announcement() {
    use redis::AsyncCommands;
    // With I/O threads (as ElastiCache runs larger nodes), Redis writes the pending replies and
    // messages of a turn in parallel: a PUBLISH's reply may go out before other subscribers'
    // messages even when the write's own reply made it wait behind them.
    let redis = RedisServer::start_with(&["--io-threads", "4"]);
    let (a, b) = broadcast_pair(&redis, "fan:*").await;
    // Subscribers that never read: 400 writes of each message ahead of B's.
    let others = subscribers(&redis, 400, 402).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // Stale reads after a SET, after a MULTI/EXEC, after a SET under WATCH (on the client's
    // pinned connection, outside a transaction).
    let mut stale = [0; 3];
    for i in 0..300i64 {
        for _ in 0..2 {
            let _: Option<i64> = cb.get("fan:k").await.unwrap();
        }
        match i % 3 {
            0 => ca.set::<_, _, ()>("fan:k", i).await.unwrap(),
            1 => redis::pipe()
                .atomic()
                .set("fan:k", i)
                .ignore()
                .query_async::<()>(&mut ca)
                .await
                .unwrap(),
            _ => {
                let _: () = redis::cmd("WATCH")
                    .arg("fan:k")
                    .query_async(&mut ca)
                    .await
                    .unwrap();
                ca.set::<_, _, ()>("fan:k", i).await.unwrap();
                let _: () = redis::cmd("UNWATCH").query_async(&mut ca).await.unwrap();
            }
        }
        let v: Option<i64> = cb.get("fan:k").await.unwrap();
        if v != Some(i) {
            stale[(i % 3) as usize] += 1;
        }
    }
    let hits = support::metric(
        &b.admin_get("/metrics").await.1,
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
    )
    .unwrap_or(0.0);
    eprintln!(
        "stale reads (after SET, MULTI/EXEC, SET under WATCH): {stale:?} of 300; {hits} hits"
    );
    assert_eq!(
        stale,
        [0, 0, 0],
        "reads through B older than a write acknowledged before them"
    );
    assert!(hits >= 150.0, "B's repeated reads were hits ({hits})");
    drop(others);
    support::assert_no_panics();
}

/// A write whose reply the client turned off (`CLIENT REPLY OFF`, `SKIP`) is announced once it
/// has run, though no reply of the client's follows it; and a reply the client does see after
/// it (`CLIENT REPLY ON`'s) comes only once every sidecar has the announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_reply_is_announced_and_what_follows_it_is_fenced() {
    use redis::AsyncCommands;
    let redis = RedisServer::start_with(&["--io-threads", "4"]);
    let (a, b) = broadcast_pair(&redis, "off:*").await;
    let others = subscribers(&redis, 400, 402).await;
    let mut cb = b.client().await;
    let mut direct = redis.direct().await;
    let mut raw = a.raw().await;
    let cached = async |cb: &mut redis::aio::MultiplexedConnection| {
        for _ in 0..2 {
            let _: Option<String> = cb.get("off:k").await.unwrap();
        }
    };
    // Replies off, and nothing sent after the write: it is announced all the same.
    for (mode, value) in [("OFF", "v1"), ("SKIP", "v2")] {
        cached(&mut cb).await;
        raw.send(format!("CLIENT REPLY {mode}\r\nSET off:k {value}\r\n").as_bytes())
            .await;
        assert!(
            support::eventually(Duration::from_secs(5), async || {
                direct
                    .get::<_, Option<String>>("off:k")
                    .await
                    .unwrap()
                    .as_deref()
                    == Some(value)
            })
            .await
        );
        let seen = support::eventually(Duration::from_secs(5), async || {
            cb.get::<_, Option<String>>("off:k")
                .await
                .unwrap()
                .as_deref()
                == Some(value)
        })
        .await;
        assert!(
            seen,
            "REPLY {mode}: B still serves the value before {value}"
        );
        if mode == "OFF" {
            raw.send(b"CLIENT REPLY ON\r\n").await;
            raw.expect(b"+OK\r\n").await;
        }
    }
    // The first reply after writes under REPLY OFF comes once B has their announcement.
    let mut stale = 0;
    for i in 0..100 {
        cached(&mut cb).await;
        raw.send(format!("CLIENT REPLY OFF\r\nSET off:k {i}\r\nCLIENT REPLY ON\r\n").as_bytes())
            .await;
        raw.expect(b"+OK\r\n").await;
        let v: Option<String> = cb.get("off:k").await.unwrap();
        if v != Some(i.to_string()) {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "reads through B older than the reply that followed the write"
    );
    drop(others);
    support::assert_no_panics();
}
