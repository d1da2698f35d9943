//! The hot tier on a Redis Cluster: coherence by broadcast on a shard channel (every sidecar
//! SSUBSCRIBEs on the primary of the channel's slot; writes are announced by SPUBLISH after
//! their replies and before the client sees them). History checkers for plain keys and for
//! read-through, and what `tracking` and `auto` do there.

mod support;

use cacheside::tier::redis::cluster::slot;
use support::cluster::RedisCluster;
use support::postgres::PgServer;
use support::{coherence, history, metric, query as q, Proxy};

async fn sidecar(cluster: &RedisCluster, coherence: &str) -> Proxy {
    Proxy::start_with(&cluster.url(), |c| {
        c.hot.coherence = coherence.into();
        c.cache = vec![support::cache_rule("hot:*", 60)];
    })
    .await
}

async fn hot_hits(p: &Proxy) -> f64 {
    metric(
        &p.admin_get("/metrics").await.1,
        "cacheside_cache_gets_total{result=\"hit\",tier=\"hot\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_served_and_a_write_through_another_sidecar_evicts_them() {
    let cluster = RedisCluster::start();
    // `auto` on a cluster: broadcast, on the shard channel's primary.
    let (a, b) = (
        sidecar(&cluster, "auto").await,
        sidecar(&cluster, "auto").await,
    );
    history::wait_coherent(&a).await;
    history::wait_coherent(&b).await;
    let channel = "cacheside:invalidate";
    let s = slot::of(channel.as_bytes());
    let (owner, _) = cluster
        .primaries()
        .into_iter()
        .find(|(_, r)| r.iter().any(|&(x, y)| x <= s && s <= y))
        .unwrap();
    let mut node = cluster.node(owner).await;
    let subs: Vec<redis::Value> = q(&mut node, &["PUBSUB", "SHARDNUMSUB", channel]).await;
    assert_eq!(
        subs.get(1),
        Some(&redis::Value::Int(2)),
        "both sidecars subscribe on the channel's primary: {subs:?}"
    );

    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // Keys on every primary.
    let keys: Vec<String> = (0..30).map(|i| format!("hot:{i}")).collect();
    for k in &keys {
        let _: () = q(&mut ca, &["SET", k, "v1"]).await;
    }
    for _ in 0..3 {
        for k in &keys {
            let v: String = q(&mut cb, &["GET", k]).await;
            assert_eq!(v, "v1");
        }
    }
    let hits = hot_hits(&b).await;
    assert!(hits >= 30.0, "b served repeats from its tier ({hits} hits)");
    // Writes through a, by SET, MSET across slots, DEL and a transaction: b never serves the
    // old value once a's reply is in.
    for (n, k) in keys.iter().enumerate() {
        match n % 4 {
            0 => {
                let _: () = q(&mut ca, &["SET", k, "v2"]).await;
            }
            1 => {
                let _: () = q(&mut ca, &["MSET", k, "v2", "other:x", "1"]).await;
            }
            2 => {
                let _: i64 = q(&mut ca, &["DEL", k]).await;
            }
            _ => {
                let _: () = redis::pipe()
                    .atomic()
                    .set(k, "v2")
                    .query_async(&mut ca)
                    .await
                    .unwrap();
            }
        }
        let v: Option<String> = q(&mut cb, &["GET", k]).await;
        let want = (n % 4 != 2).then(|| "v2".to_string());
        assert_eq!(v, want, "{k} after write {}", n % 4);
    }
    support::assert_no_panics();
}

/// Reads through `p` are answered from Redis, none from a tier that is not coherent.
async fn assert_bypassed(p: &Proxy) {
    let mut c = p.client().await;
    let _: () = q(&mut c, &["SET", "hot:t", "1"]).await;
    for _ in 0..5 {
        let v: String = q(&mut c, &["GET", "hot:t"]).await;
        assert_eq!(v, "1");
    }
    let m = p.admin_get("/metrics").await.1;
    assert_eq!(metric(&m, "cacheside_cache_coherent"), Some(0.0));
    assert_eq!(hot_hits(p).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_is_refused_on_a_cluster_and_the_tier_bypassed() {
    let cluster = RedisCluster::start();
    let p = sidecar(&cluster, "tracking").await;
    assert_bypassed(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_through_any_sidecar_is_older_than_an_acknowledged_write_on_a_cluster() {
    let cluster = RedisCluster::start();
    coherence::check(&cluster.url(), "broadcast", false, false).await;
    support::assert_no_panics();
}

/// Shard channels have no patterns: with `hot.channel_per_prefix`, a rule that can match any
/// namespace (`*`) cannot be kept coherent on a cluster found by `auto`, so the tier is bypassed
/// (an explicit `mode = "cluster"` is refused by the config check instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_a_namespace_bypasses_the_tier_on_a_cluster_with_a_channel_per_prefix() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let start = |rule: &'static str| {
        Proxy::start_with(&url, move |c| {
            c.hot.coherence = "broadcast".into();
            c.hot.channel_per_prefix = true;
            c.cache = vec![support::cache_rule(rule, 60)];
        })
    };
    // A sidecar whose rule names its namespace is coherent on this cluster.
    history::wait_coherent(&start("hot:*").await).await;
    let p = start("*").await;
    assert_bypassed(&p).await;
}

/// `hot.channel_per_prefix`: each namespace's shard channel `{channel}:<ns>` hashes to the base
/// channel's slot, so one SSUBSCRIBE on one primary still hears every announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_an_acknowledged_write_on_a_cluster_with_a_channel_per_prefix() {
    let cluster = RedisCluster::start();
    coherence::check(&cluster.url(), "broadcast", true, true).await;
    support::assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_through_with_a_hot_tier_serves_no_row_older_than_an_invalidated_update() {
    let cluster = RedisCluster::start();
    let pg = PgServer::start();
    coherence::check_readthrough(&cluster.url(), &pg, Some("broadcast")).await;
    support::assert_no_panics();
}

/// `hot.broadcast_relay` on a cluster: the relay's channel, acknowledgements and lease share the
/// base channel's hash tag, so the relay SSUBSCRIBEs on the one primary every sidecar uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_is_older_than_an_acknowledged_write_through_the_relay_on_a_cluster() {
    let cluster = RedisCluster::start();
    coherence::check_relayed(&cluster.url(), true).await;
    support::assert_no_panics();
}
