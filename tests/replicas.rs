//! Replicas: read-only commands to a replication group's reader endpoint (`upstream.read_from`,
//! `upstream.reader_url`), writes always to the primary, and a write refused with `-READONLY`
//! by a primary that a failover demoted sent once more to the new primary.

mod support;

use std::time::{Duration, Instant};
use support::relay::Relay;
use support::{metric, query as q, Proxy, RedisServer};

/// A primary and a replica of it, in sync.
async fn pair() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start();
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut r = replica.direct().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = q(&mut r, &["INFO", "replication"]).await;
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(Instant::now() < deadline, "replica never synced: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (primary, replica)
}

/// Waits until the replica holds `key` = `value`.
async fn replicated(replica: &RedisServer, key: &str, value: &str) {
    let mut r = replica.direct().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = q(&mut r, &["GET", key]).await;
        if v.as_deref() == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{key} never reached the replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_reader_endpoint_and_writes_to_the_primary() {
    let (primary, replica) = pair().await;
    let reader = replica.url();
    let proxy = Proxy::start_with(&primary.url(), |c| {
        c.upstream.read_from = "replica".into();
        c.upstream.reader_url = Some(reader);
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "k", "v1"]).await;
    replicated(&replica, "k", "v1").await;
    let (gets_p, gets_r) = (primary.calls("get").await, replica.calls("get").await);
    for _ in 0..20 {
        let v: String = q(&mut c, &["GET", "k"]).await;
        assert_eq!(v, "v1");
    }
    let len: i64 = q(&mut c, &["STRLEN", "k"]).await;
    assert_eq!(len, 2);
    assert_eq!(
        primary.calls("get").await,
        gets_p,
        "a read went to the primary"
    );
    assert_eq!(replica.calls("get").await - gets_r, 20);
    assert_eq!(replica.calls("strlen").await, 1);
    // Writes, read-modify-writes and transactions never go to the replica (it would refuse them).
    let n: i64 = q(&mut c, &["INCR", "n"]).await;
    assert_eq!(n, 1);
    let v: Option<String> = q(&mut c, &["GETDEL", "k"]).await;
    assert_eq!(v.as_deref(), Some("v1"));
    let mut pipe = redis::pipe();
    pipe.atomic().set("t", "1").get("t");
    let (_, t): ((), String) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(t, "1");
    assert_eq!(primary.calls("set").await, 2);
    proxy.shutdown().await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_replica_falls_back_to_the_primary_and_replica_reports_the_replicas_error() {
    let (primary, mut replica) = pair().await;
    let reader = replica.url();
    let prefer = Proxy::start_with(&primary.url(), |c| {
        c.upstream.read_from = "prefer_replica".into();
        c.upstream.reader_url = Some(reader.clone());
    })
    .await;
    let only = Proxy::start_with(&primary.url(), |c| {
        c.upstream.read_from = "replica".into();
        c.upstream.reader_url = Some(reader);
    })
    .await;
    let mut p = prefer.client().await;
    let mut o = only.client().await;
    let _: () = q(&mut p, &["SET", "k", "v"]).await;
    replicated(&replica, "k", "v").await;
    let v: String = q(&mut o, &["GET", "k"]).await;
    assert_eq!(v, "v");
    replica.kill();
    // Once the replica's connections are down, prefer_replica reads the primary.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: redis::RedisResult<String> = redis::cmd("GET").arg("k").query_async(&mut p).await;
        if got.as_deref().ok() == Some("v") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prefer_replica never fell back: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = primary.calls("get").await;
    for _ in 0..5 {
        let v: String = q(&mut p, &["GET", "k"]).await;
        assert_eq!(v, "v");
    }
    assert_eq!(primary.calls("get").await - before, 5);
    // read_from = "replica" answers the replica's unavailability, and writes still work.
    let err = redis::cmd("GET")
        .arg("k")
        .query_async::<String>(&mut o)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unavailable") || err.to_string().contains("closed"),
        "{err}"
    );
    let _: () = q(&mut o, &["SET", "k", "w"]).await;
    prefer.shutdown().await;
    only.shutdown().await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_a_demoted_primary_runs_once_on_the_new_primary() {
    let (old, new) = pair().await;
    // The endpoint name: a relay that a failover points at the new primary. Connections made
    // before it stay on the old node, as they do when ElastiCache moves its DNS name.
    let endpoint = Relay::start(old.port).await;
    let proxy = Proxy::start_with(&endpoint.url(), |c| {
        c.upstream.connections = 1;
    })
    .await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "k", "before"]).await;
    // Failover: the replica becomes the primary, the old primary its replica.
    let mut n = new.direct().await;
    let _: () = q(&mut n, &["REPLICAOF", "NO", "ONE"]).await;
    let mut o = old.direct().await;
    let port = new.port.to_string();
    let _: () = q(&mut o, &["REPLICAOF", "127.0.0.1", &port]).await;
    endpoint.switch(new.port);
    let info: String = q(&mut o, &["INFO", "replication"]).await;
    assert!(info.contains("role:slave"), "{info}");
    // Several clients pipelining writes at the moment of the failover: every one succeeds,
    // and each runs once.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut c = proxy.client().await;
        tasks.push(tokio::spawn(async move {
            let mut pipe = redis::pipe();
            for _ in 0..10 {
                pipe.cmd("INCR").arg(format!("count:{t}")).ignore();
                pipe.cmd("GET").arg("k");
            }
            let _: Vec<Option<String>> = pipe.query_async(&mut c).await.unwrap();
        }));
    }
    let _: () = q(&mut c, &["SET", "k", "after"]).await;
    for t in tasks {
        t.await.unwrap();
    }
    let v: String = q(&mut n, &["GET", "k"]).await;
    assert_eq!(v, "after");
    for t in 0..4 {
        let v: i64 = q(&mut n, &["GET", &format!("count:{t}")]).await;
        assert_eq!(v, 10, "count:{t}: each INCR runs exactly once");
    }
    let (_, text) = proxy.admin_get("/metrics").await;
    assert!(
        metric(&text, "cacheside_upstream_errors_total{kind=\"readonly\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    proxy.shutdown().await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_on_a_demoted_primary_is_replaced_after_its_readonly_error() {
    let (old, new) = pair().await;
    let endpoint = Relay::start(old.port).await;
    let proxy = Proxy::start(&endpoint.url()).await;
    let mut c = proxy.client().await;
    let tx = |v: &'static str| {
        let mut p = redis::pipe();
        p.atomic().set("t", v).ignore().get("t");
        p
    };
    let (v,): (String,) = tx("one").query_async(&mut c).await.unwrap();
    assert_eq!(v, "one");
    // Failover while the client's own (pinned) connection stays open on the old primary.
    let mut n = new.direct().await;
    let _: () = q(&mut n, &["REPLICAOF", "NO", "ONE"]).await;
    let mut o = old.direct().await;
    let port = new.port.to_string();
    let _: () = q(&mut o, &["REPLICAOF", "127.0.0.1", &port]).await;
    endpoint.switch(new.port);
    // The transaction queued on the demoted node is refused there, as it would be for a
    // client connected to it directly (a transaction is never sent twice)...
    let err = tx("two")
        .query_async::<(String,)>(&mut c)
        .await
        .unwrap_err();
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("readonly") || text.contains("execabort"),
        "{err}"
    );
    // ...and the next one runs on the new primary, on a new connection.
    let (v,): (String,) = tx("three").query_async(&mut c).await.unwrap();
    assert_eq!(v, "three");
    let v: String = q(&mut n, &["GET", "t"]).await;
    assert_eq!(v, "three");
    proxy.shutdown().await;
    support::assert_no_panics();
}
