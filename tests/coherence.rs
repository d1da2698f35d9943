//! History checkers for the hot tier's promise "no stale read after a write" on one
//! redis-server, in both coherence modes (the checker: `support/coherence.rs`).

mod support;

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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start();
    let mut sub = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect to redis-server");
    sub.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$20\r\ncacheside:invalidate\r\n")
        .await
        .unwrap();
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
