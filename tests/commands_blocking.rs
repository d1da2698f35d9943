//! Blocking commands through cacheside: BLPOP and XREAD BLOCK woken by another client.

mod support;

use redis::aio::MultiplexedConnection;
use redis::FromRedisValue;
use std::time::{Duration, Instant};
use support::commands::{q, start, within};

async fn blocked_clients(d: &mut MultiplexedConnection) -> i64 {
    let info: String = q(d, &["INFO", "clients"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO clients has blocked_clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_is_woken_by_another_client_while_a_third_keeps_working() {
    let (redis, proxy) = start().await;
    let mut d = redis.direct().await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    let mut c = proxy.client().await;

    let blocked = tokio::spawn(async move {
        let started = Instant::now();
        let r: Option<(String, String)> = q(&mut a, &["BLPOP", "bl:k", "5"]).await;
        (r, started.elapsed(), a)
    });

    // Wait until redis-server itself reports the client as blocked.
    let t = Instant::now();
    while blocked_clients(&mut d).await != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "BLPOP never blocked upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Meanwhile, C's plain commands are not held up behind the blocked one.
    let t = Instant::now();
    for i in 0..300 {
        let v = format!("v{i}");
        assert_eq!(q::<String, _>(&mut c, &["SET", "bl:other", &v]).await, "OK");
        assert_eq!(q::<String, _>(&mut c, &["GET", "bl:other"]).await, v);
    }
    let busy = t.elapsed();
    assert!(
        busy < Duration::from_secs(4),
        "600 commands beside a blocked BLPOP took {busy:?}"
    );
    assert!(
        !blocked.is_finished(),
        "BLPOP returned before anything was pushed"
    );
    assert_eq!(blocked_clients(&mut d).await, 1);

    assert_eq!(q::<i64, _>(&mut b, &["LPUSH", "bl:k", "wake"]).await, 1);
    let (r, waited, mut a) = within("BLPOP", blocked).await.unwrap();
    assert_eq!(r, Some(("bl:k".to_string(), "wake".to_string())));
    assert!(waited < Duration::from_secs(5), "BLPOP waited {waited:?}");
    assert_eq!(q::<i64, _>(&mut d, &["LLEN", "bl:k"]).await, 0);

    // A's connection is back to normal: plain commands, and a BLPOP timing out to nil.
    assert_eq!(q::<String, _>(&mut a, &["GET", "bl:other"]).await, "v299");
    let t = Instant::now();
    let r: Option<(String, String)> = q(&mut a, &["BLPOP", "bl:empty", "0.2"]).await;
    assert_eq!(r, None);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_xread_is_woken_by_xadd_from_another_client() {
    let (_redis, proxy) = start().await;
    let mut a = proxy.client().await;
    let mut b = proxy.client().await;
    q::<String, _>(&mut b, &["XADD", "bx:s", "1-1", "f", "old"]).await;

    let reader = tokio::spawn(async move {
        let r: redis::streams::StreamReadReply =
            q(&mut a, &["XREAD", "BLOCK", "5000", "STREAMS", "bx:s", "$"]).await;
        r
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reader.is_finished());
    q::<String, _>(&mut b, &["XADD", "bx:s", "2-1", "f", "new"]).await;
    let r = within("XREAD BLOCK", reader).await.unwrap();
    assert_eq!(r.keys[0].ids.len(), 1);
    assert_eq!(r.keys[0].ids[0].id, "2-1");
    assert_eq!(
        String::from_redis_value(&r.keys[0].ids[0].map["f"]).unwrap(),
        "new"
    );
}
