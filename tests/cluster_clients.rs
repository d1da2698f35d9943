//! Clients of other kinds through cacheside on a Redis Cluster: RESP3, scripts, pub/sub, the
//! hot tier (off), transactions that begin keyless, and a cluster seeded by a replica.

mod support;

use cacheside::tier::redis::cluster::slot;
use support::cluster::RedisCluster;
use support::query as q;
use support::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_seeded_by_a_replica_routes_to_the_primaries() {
    let cluster = RedisCluster::start();
    let primaries: Vec<u16> = cluster.primaries().into_iter().map(|(p, _)| p).collect();
    let replica = *cluster
        .ports
        .iter()
        .find(|p| !primaries.contains(p))
        .unwrap();
    let proxy = Proxy::start_with(&format!("redis://127.0.0.1:{replica}"), |c| {
        c.upstream.mode = "cluster".into();
    })
    .await;
    let mut c = proxy.client().await;
    for i in 0..100 {
        let _: () = q(&mut c, &["SET", &format!("r:{i}"), &i.to_string()]).await;
    }
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 100);
    assert_eq!(q::<String>(&mut c, &["GET", "r:42"]).await, "42");
    let (status, _) = proxy.admin_get("/healthz/upstream").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_clients_get_split_replies_in_resp3() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut raw = proxy.raw().await;
    raw.send(b"HELLO 3\r\n").await;
    let mut hello = Vec::new();
    while !String::from_utf8_lossy(&hello).contains("modules") {
        hello.extend(raw.read_exact_len(1).await);
    }
    // The rest of HELLO's map: the empty modules array.
    raw.expect(b"\r\n*0\r\n").await;
    raw.send(b"MSET foo 1 bar 2\r\nMGET foo nope bar\r\nEXISTS foo bar nope\r\n")
        .await;
    raw.expect(b"+OK\r\n*3\r\n$1\r\n1\r\n_\r\n$1\r\n2\r\n:2\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_route_by_their_declared_keys() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut c = proxy.client().await;
    let script = "return redis.call('SET', KEYS[1], ARGV[1])";
    // Three keys on three primaries: each script runs where its key lives.
    let keys: Vec<String> = (0..40)
        .map(|i| format!("lua:{i}"))
        .fold(Vec::new(), |mut acc, k| {
            let p = cluster.primary_of(slot::of(k.as_bytes()));
            if !acc
                .iter()
                .any(|a: &String| cluster.primary_of(slot::of(a.as_bytes())) == p)
            {
                acc.push(k);
            }
            acc
        });
    assert_eq!(keys.len(), 3);
    for k in &keys {
        let _: () = q(&mut c, &["EVAL", script, "1", k, "v"]).await;
        let mut node = cluster
            .node(cluster.primary_of(slot::of(k.as_bytes())))
            .await;
        assert_eq!(q::<String>(&mut node, &["GET", k]).await, "v");
    }
    // SCRIPT LOAD reaches every primary, so EVALSHA works on any key.
    let sha: String = q(
        &mut c,
        &["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"],
    )
    .await;
    for k in &keys {
        assert_eq!(q::<String>(&mut c, &["EVALSHA", &sha, "1", k]).await, "v");
    }
    let err = redis::cmd("EVAL")
        .arg(script)
        .arg(2)
        .arg(&keys[0])
        .arg(&keys[1])
        .arg("v")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_hear_what_is_published_through_any_node() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut sub = proxy.raw().await;
    sub.send(b"SUBSCRIBE news\r\n").await;
    sub.expect(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
        .await;
    let mut c = proxy.client().await;
    // PUBLISH reaches subscribers on every node of a cluster (its count is of the node that
    // took it, as on a cluster).
    let _: i64 = q(&mut c, &["PUBLISH", "news", "hello"]).await;
    sub.expect(b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_subscribers_hear_spublish_on_their_channels_primary() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    // Channels on different primaries: each subscriber's connection goes to its channel's.
    for channel in ["news", "sports", "foo"] {
        let mut sub = proxy.raw().await;
        let n = channel.len();
        sub.send(format!("SSUBSCRIBE {channel}\r\n").as_bytes())
            .await;
        sub.expect(format!("*3\r\n$10\r\nssubscribe\r\n${n}\r\n{channel}\r\n:1\r\n").as_bytes())
            .await;
        let mut c = proxy.client().await;
        let heard: i64 = q(&mut c, &["SPUBLISH", channel, "hello"]).await;
        assert_eq!(
            heard, 1,
            "{channel}: SPUBLISH went to the channel's primary"
        );
        sub.expect(
            format!("*3\r\n$8\r\nsmessage\r\n${n}\r\n{channel}\r\n$5\r\nhello\r\n").as_bytes(),
        )
        .await;
    }
    support::assert_no_panics();
}

/// One reply line (status, error, integer or array header).
async fn line(raw: &mut support::Raw) -> String {
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        got.extend(raw.read_exact_len(1).await);
    }
    String::from_utf8_lossy(&got).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_keyless_command_first_runs_where_its_keys_live() {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    let mut raw = proxy.raw().await;
    // PING begins the transaction on any primary; SET's slot may live on another, which
    // redirects it there. The whole transaction then runs on the key's primary, PING
    // included: the client sees it queued and both results, as from one Redis.
    for tag in ["a", "b", "c", "d", "e", "f"] {
        let cmds = format!("MULTI\r\nPING\r\nSET {{{tag}}}k 1\r\nEXEC\r\n");
        raw.send(cmds.as_bytes()).await;
        assert_eq!(line(&mut raw).await, "+OK");
        assert_eq!(line(&mut raw).await, "+QUEUED");
        assert_eq!(line(&mut raw).await, "+QUEUED", "{tag}: SET queued");
        assert_eq!(
            line(&mut raw).await,
            "*2",
            "{tag}: EXEC after two queued commands"
        );
        assert_eq!(line(&mut raw).await, "+PONG");
        assert_eq!(line(&mut raw).await, "+OK");
        let key = format!("{{{tag}}}k");
        let port = cluster.primary_of(cacheside::tier::redis::cluster::slot::of(key.as_bytes()));
        assert_eq!(
            support::cluster::cli(port, &["GET", &key]).trim(),
            "1",
            "{tag}"
        );
    }
}
