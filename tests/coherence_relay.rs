//! `hot.broadcast_relay`: a fleet's announcements go through one elected sidecar. The history
//! checker runs with it (three sidecars, one of them the relay), and a sidecar whose requests no
//! relay acknowledges (none listening, or a listener that never answers) announces them itself,
//! so no reader is left with a stale value.

mod support;

use std::time::Duration;
use support::{cache_rule, coherence, history, metric, query, Proxy, RedisServer};

const LEASE: &str = "{cacheside:invalidate}.relay.lease";
const RELAY: &str = "{cacheside:invalidate}.relay";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_an_acknowledged_write_through_the_relay() {
    let redis = RedisServer::start();
    coherence::check_relayed(&redis.url(), false).await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_an_acknowledged_write_through_the_relay_per_prefix() {
    let redis = RedisServer::start();
    coherence::check_relayed(&redis.url(), true).await;
    support::assert_no_panics();
}

async fn sidecar(url: &str) -> Proxy {
    let p = Proxy::start_with(url, |c| {
        c.hot.coherence = "broadcast".into();
        c.hot.broadcast_relay = true;
        c.cache = vec![cache_rule("r:*", 60)];
    })
    .await;
    history::wait_coherent(&p).await;
    p
}

async fn fallbacks(p: &Proxy) -> f64 {
    metric(
        &p.admin_get("/metrics").await.1,
        "cacheside_broadcast_relay_fallbacks_total",
    )
    .unwrap_or(0.0)
}

/// Reads `key` through `p` twice (the second served by its hot tier, if it keeps it).
async fn read_twice(p: &Proxy, key: &str) -> String {
    let mut c = p.client().await;
    let _: Option<String> = query(&mut c, &["GET", key]).await;
    query(&mut c, &["GET", key]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_that_answers_a_sidecar_announces_its_writes_itself() {
    let redis = RedisServer::start();
    let mut direct = redis.direct().await;
    // Another holds the lease for long: no sidecar here becomes the relay.
    let _: () = query(&mut direct, &["SET", LEASE, "elsewhere", "PX", "600000"]).await;
    let url = redis.url();
    let (a, b) = (sidecar(&url).await, sidecar(&url).await);
    let mut through_a = a.client().await;
    let _: () = query(&mut through_a, &["SET", "r:1", "v1"]).await;
    assert_eq!(read_twice(&b, "r:1").await, "v1");

    // No relay listens: PUBLISH reaches nobody, and A announces at once.
    let _: () = query(&mut through_a, &["SET", "r:1", "v2"]).await;
    assert_eq!(read_twice(&b, "r:1").await, "v2");
    assert!(fallbacks(&a).await >= 1.0);

    // A listener that never acknowledges: A waits for it, then announces itself.
    use tokio::io::AsyncWriteExt;
    let mut deaf = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    let sub = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{RELAY}\r\n", RELAY.len());
    deaf.write_all(sub.as_bytes()).await.unwrap();
    assert!(
        support::eventually(Duration::from_secs(5), async || {
            let subs: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(RELAY)
                .query_async(&mut redis.direct().await)
                .await
                .unwrap();
            subs[0].1 == 1
        })
        .await
    );
    let before = fallbacks(&a).await;
    let _: () = query(&mut through_a, &["SET", "r:1", "v3"]).await;
    assert_eq!(read_twice(&b, "r:1").await, "v3");
    assert_eq!(fallbacks(&a).await, before + 1.0);
    support::assert_no_panics();
}
