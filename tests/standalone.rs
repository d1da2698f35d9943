//! Standalone mode: no upstream configured, the in-process tier is the store. A new user can
//! try cacheside with nothing else installed, with an ordinary client.

mod support;

use cacheside::config::units::Size;
use cacheside::config::Config;
use redis::AsyncCommands;
use std::time::Duration;
use support::{metric, Proxy};

async fn standalone(max: Size) -> Proxy {
    let mut c = Config::default();
    c.hot.max_size = max;
    Proxy::start_config(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_work_with_no_redis_at_all() {
    let proxy = standalone(Size::mib(8)).await;
    let mut c = proxy.client().await;
    let _: () = c.set("greeting", "hello").await.unwrap();
    let _: () = c.append("greeting", " world").await.unwrap();
    let v: String = c.get("greeting").await.unwrap();
    assert_eq!(v, "hello world");
    let n: i64 = c.incr("counter", 5).await.unwrap();
    let n2: i64 = c.decr("counter", 2).await.unwrap();
    assert_eq!((n, n2), (5, 3));
    let f: f64 = redis::cmd("INCRBYFLOAT")
        .arg("counter")
        .arg("0.5")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(f, 3.5);
    let _: () = c.mset(&[("a", "1"), ("b", "2")]).await.unwrap();
    let got: Vec<Option<String>> = c.mget(&["a", "missing", "b"]).await.unwrap();
    assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
    let exists: i64 = c.exists(&["a", "b", "missing"]).await.unwrap();
    assert_eq!(exists, 2);
    let deleted: i64 = c.del(&["a", "missing"]).await.unwrap();
    assert_eq!(deleted, 1);
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(size, 3);
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    assert!(info.contains("standalone"), "{info}");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_need_redis_say_so() {
    let proxy = standalone(Size::mib(8)).await;
    let mut raw = proxy.raw().await;
    raw.send(b"LPUSH l x\r\nPING\r\nSUBSCRIBE c\r\n").await;
    raw.expect(b"-ERR LPUSH needs an upstream Redis (set upstream.url)\r\n+PONG\r\n-ERR SUBSCRIBE needs an upstream Redis (set upstream.url)\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_expire_keys_as_in_redis() {
    let proxy = standalone(Size::mib(8)).await;
    let mut c = proxy.client().await;
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("v")
        .arg("PX")
        .arg(150)
        .query_async(&mut c)
        .await
        .unwrap();
    let pttl: i64 = c.pttl("t").await.unwrap();
    assert!(pttl > 0 && pttl <= 150, "{pttl}");
    let _: () = c.set("p", "v").await.unwrap();
    let ttl: i64 = c.ttl("p").await.unwrap();
    assert_eq!(ttl, -1);
    let set: bool = c.expire("p", 100).await.unwrap();
    assert!(set);
    let _: bool = c.persist("p").await.unwrap();
    let ttl: i64 = c.ttl("p").await.unwrap();
    assert_eq!(ttl, -1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone: Option<String> = c.get("t").await.unwrap();
    assert_eq!(gone, None);
    let ttl: i64 = c.ttl("t").await.unwrap();
    assert_eq!(ttl, -2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_store_within_its_byte_bound() {
    let proxy = standalone(Size::kib(256)).await;
    let mut c = proxy.client().await;
    let value = "x".repeat(1000);
    for i in 0..2600 {
        let _: () = c.set(format!("k{i}"), &value).await.unwrap();
    }
    // moka applies evictions in the background: poll the gauge briefly.
    let mut bytes = f64::MAX;
    for _ in 0..100 {
        let (_, text) = proxy.admin_get("/metrics").await;
        bytes = metric(&text, "cacheside_cache_size_bytes").unwrap_or(f64::MAX);
        if bytes <= 256.0 * 1024.0 {
            break;
        }
        let _: Option<String> = c.get("k0").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        bytes <= 256.0 * 1024.0,
        "{bytes} bytes held with a 256KiB bound"
    );
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert!(
        size > 50 && size < 2600,
        "some keys were evicted, most recent ones kept: {size}"
    );
}
