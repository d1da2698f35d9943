//! cacheside in front of a Redis Cluster that speaks only TLS to its clients and on its bus,
//! as ElastiCache Serverless and clusters with encryption in transit do: the seed is reached by
//! name over `rediss://`, the slot map's TLS ports are followed to every node, each connection's
//! certificate is checked against the CA, and a plain client sees one non-cluster Redis.

mod support;

use std::collections::HashSet;
use support::certs::Certs;
use support::cluster::{ClusterTls, RedisCluster};
use support::{query as q, Proxy};

/// A TLS-only cluster whose nodes' certificate (for localhost and 127.0.0.1) `certs` signed.
fn tls_cluster() -> (Certs, RedisCluster) {
    let certs = Certs::new();
    let (cert, key) = certs.issue(
        "node",
        "DNS:localhost,IP:127.0.0.1",
        "serverAuth,clientAuth",
    );
    let cluster = RedisCluster::start_tls(&ClusterTls {
        cert,
        key,
        ca: certs.ca(),
    });
    (certs, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_reached_through_its_announced_tls_ports() {
    let (certs, cluster) = tls_cluster();
    let url = format!("rediss://localhost:{}", cluster.tls_ports[0]);
    let ca = certs.ca();
    let proxy = Proxy::start_with(&url, |c| {
        c.upstream.tls_ca_file = Some(ca);
    })
    .await;
    let mut c = proxy.client().await;
    // Keys on every primary.
    let keys: Vec<String> = (0..30).map(|i| format!("tls:{i}")).collect();
    for k in &keys {
        let _: () = q(&mut c, &["SET", k, k]).await;
    }
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let got: Vec<String> = q(&mut c, &args).await;
    assert_eq!(got, keys);
    let n: i64 = q(&mut c, &["DBSIZE"]).await;
    assert_eq!(n, 30);
    let owners: HashSet<u16> = keys
        .iter()
        .map(|k| cluster.primary_of(cacheside::tier::redis::cluster::slot::of(k.as_bytes())))
        .collect();
    assert_eq!(owners.len(), 3, "the keys span every primary");
    // A transaction, pinned to its key's node over TLS.
    let mut pipe = redis::pipe();
    pipe.atomic().incr("tls:{t}:n", 1).incr("tls:{t}:n", 1);
    let (a, b): (i64, i64) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!((a, b), (1, 2));
    proxy.shutdown().await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let (_certs, cluster) = tls_cluster();
    let other = Certs::new();
    let url = format!("rediss://localhost:{}", cluster.tls_ports[0]);
    let ca = other.ca();
    let proxy = Proxy::start_with(&url, |c| {
        c.upstream.tls_ca_file = Some(ca);
        c.upstream.mode = "cluster".into();
    })
    .await;
    let mut c = proxy.client().await;
    let err = redis::cmd("GET")
        .arg("k")
        .query_async::<Option<String>>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cacheside"), "{err}");
    proxy.shutdown().await;
    support::assert_no_panics();
}
