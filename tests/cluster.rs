//! cacheside in front of a real Redis Cluster (3 primaries, 3 replicas): clients see one
//! non-cluster Redis; keys land on the primary of their slot; multi-key commands are split and
//! merged; slots that move are followed.

mod support;

use cacheside::tier::redis::cluster::slot;
use std::collections::{HashMap, HashSet};
use support::cluster::{cli, RedisCluster};
use support::query as q;
use support::Proxy;

async fn start() -> (RedisCluster, Proxy) {
    let cluster = RedisCluster::start();
    let proxy = Proxy::start(&cluster.url()).await;
    (cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_detects_the_cluster_and_each_key_lands_on_its_slots_primary() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let keys: Vec<String> = (0..600).map(|i| format!("spread:{i}")).collect();
    let mut p = redis::pipe();
    for (i, k) in keys.iter().enumerate() {
        p.cmd("SET").arg(k).arg(i).ignore();
    }
    let () = p.query_async(&mut c).await.unwrap();

    // Each primary holds exactly the keys of its slots.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let mut seen = HashSet::new();
    for (port, ranges) in &primaries {
        let mut node = cluster.node(*port).await;
        let held: Vec<String> = q(&mut node, &["KEYS", "spread:*"]).await;
        assert!(
            held.len() > 100,
            "node {port} holds only {} keys",
            held.len()
        );
        for k in held {
            let s = slot::of(k.as_bytes());
            assert!(
                ranges.iter().any(|&(a, b)| a <= s && s <= b),
                "{k} (slot {s}) on {port}"
            );
            assert!(seen.insert(k));
        }
    }
    assert_eq!(seen.len(), keys.len());
    // The slot function agrees with the cluster's own.
    for k in ["foo", "spread:1", "{user1000}.following"] {
        let theirs: u16 = cli(cluster.ports[0], &["CLUSTER", "KEYSLOT", k])
            .trim()
            .parse()
            .unwrap();
        assert_eq!(slot::of(k.as_bytes()), theirs, "{k}");
    }
    // Read back through cacheside, pipelined: every value, in order.
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("GET").arg(k);
    }
    let values: Vec<usize> = p.query_async(&mut c).await.unwrap();
    assert_eq!(values, (0..600).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tagged_keys_share_a_primary_and_multi_key_commands_on_them_run_whole() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: i64 = q(&mut c, &["SADD", "{user1000}.following", "a", "b"]).await;
    let _: i64 = q(&mut c, &["SADD", "{user1000}.followers", "b", "c"]).await;
    let mut both: Vec<String> = q(
        &mut c,
        &["SINTER", "{user1000}.following", "{user1000}.followers"],
    )
    .await;
    both.sort();
    assert_eq!(both, ["b"]);
    let n: i64 = q(
        &mut c,
        &[
            "SUNIONSTORE",
            "{user1000}.all",
            "{user1000}.following",
            "{user1000}.followers",
        ],
    )
    .await;
    assert_eq!(n, 3);
    let port = cluster.primary_of(slot::of(b"user1000"));
    let mut node = cluster.node(port).await;
    let n: i64 = q(
        &mut node,
        &[
            "EXISTS",
            "{user1000}.following",
            "{user1000}.followers",
            "{user1000}.all",
        ],
    )
    .await;
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_slot_mget_mset_del_exists_are_split_and_merged_in_the_clients_order() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let keys: Vec<String> = (0..50).map(|i| format!("multi:{i}")).collect();
    let nodes: HashSet<u16> = keys
        .iter()
        .map(|k| cluster.primary_of(slot::of(k.as_bytes())))
        .collect();
    assert_eq!(nodes.len(), 3, "the keys span every primary");

    let mut mset = vec!["MSET"];
    let values: Vec<String> = (0..50).map(|i| format!("v{i}")).collect();
    for (k, v) in keys.iter().zip(&values) {
        mset.push(k);
        mset.push(v);
    }
    let ok: String = q(&mut c, &mset).await;
    assert_eq!(ok, "OK");

    // MGET with misses and repeats, in the order asked.
    let mut mget = vec!["MGET", "multi:missing"];
    mget.extend(keys.iter().map(String::as_str).rev());
    mget.push("multi:3");
    let got: Vec<Option<String>> = q(&mut c, &mget).await;
    let mut want = vec![None];
    want.extend(values.iter().rev().cloned().map(Some));
    want.push(Some("v3".into()));
    assert_eq!(got, want);

    let mut exists = vec!["EXISTS", "multi:missing", "multi:1", "multi:1"];
    exists.extend(keys.iter().map(String::as_str));
    assert_eq!(q::<i64>(&mut c, &exists).await, 52);
    assert_eq!(
        q::<i64>(&mut c, &["TOUCH", "multi:1", "multi:2", "multi:nope"]).await,
        2
    );
    assert_eq!(q::<i64>(&mut c, &["UNLINK", "multi:1", "multi:2"]).await, 2);
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(q::<i64>(&mut c, &del).await, 48);
    for port in nodes {
        let mut node = cluster.node(port).await;
        let left: Vec<String> = q(&mut node, &["KEYS", "multi:*"]).await;
        assert!(left.is_empty(), "{left:?} left on {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_multi_key_commands_across_slots_get_redis_crossslot_error() {
    let (_cluster, proxy) = start().await;
    let mut raw = proxy.raw().await;
    raw.send(b"SUNION foo bar\r\nMSETNX foo 1 bar 2\r\nSUNION {x}a {x}b\r\n")
        .await;
    raw.expect(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n*0\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbsize_sums_keys_merges_and_scan_sees_every_key_exactly_once() {
    let (_cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut p = redis::pipe();
    for i in 0..1000 {
        p.cmd("SET").arg(format!("scan:{i}")).arg(i).ignore();
    }
    let () = p.query_async(&mut c).await.unwrap();
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 1000);
    let keys: Vec<String> = q(&mut c, &["KEYS", "scan:1*"]).await;
    assert_eq!(keys.len(), 111);

    let mut seen = HashMap::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, keys): (String, Vec<String>) =
            q(&mut c, &["SCAN", &cursor, "COUNT", "50"]).await;
        for k in keys {
            *seen.entry(k).or_insert(0) += 1;
        }
        cursor = next;
        rounds += 1;
        assert!(rounds < 10_000, "SCAN does not end");
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|&n| n == 1), "a key was returned twice");
    assert_eq!(q::<String>(&mut c, &["FLUSHALL"]).await, "OK");
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_is_followed_without_an_error_reaching_the_client() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "foo", "before"]).await;
    let s = slot::of(b"foo");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    assert_eq!(cluster.primary_of(s), to);
    // cacheside still maps the slot to its old primary, which answers MOVED.
    assert_eq!(q::<String>(&mut c, &["GET", "foo"]).await, "before");
    let _: () = q(&mut c, &["SET", "foo", "after"]).await;
    let mut node = cluster.node(to).await;
    assert_eq!(q::<String>(&mut node, &["GET", "foo"]).await, "after");
    // Split commands follow it too.
    let got: Vec<Option<String>> = q(&mut c, &["MGET", "bar", "foo"]).await;
    assert_eq!(got, [None, Some("after".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_half_migrated_is_followed_with_asking() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "{ask}moved", "1"]).await;
    let _: () = q(&mut c, &["SET", "{ask}stays", "2"]).await;
    let s = slot::of(b"ask");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, Some(&["{ask}moved"]));
    // The source still serves the slot: it answers ASK for the key it no longer has.
    assert_eq!(q::<String>(&mut c, &["GET", "{ask}moved"]).await, "1");
    assert_eq!(q::<String>(&mut c, &["GET", "{ask}stays"]).await, "2");
    let mut dest = cluster.node(to).await;
    let direct: redis::RedisResult<String> = redis::cmd("GET")
        .arg("{ask}moved")
        .query_async(&mut dest)
        .await;
    assert!(
        direct.is_err(),
        "the destination answers MOVED without ASKING"
    );
    cluster.migrate(s, to, Some(&["{ask}stays"]));
    cluster.finish_migration(s, to);
    assert_eq!(q::<String>(&mut c, &["GET", "{ask}stays"]).await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_key_command_on_a_slot_split_by_a_migration_is_retried_until_it_moves() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["MSET", "{try}a", "1", "{try}b", "2"]).await;
    let s = slot::of(b"try");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, Some(&["{try}a"]));
    // The source has one key of two: it answers TRYAGAIN until the slot has moved.
    let mut direct = cluster.node(from).await;
    let err = redis::cmd("MGET")
        .arg("{try}a")
        .arg("{try}b")
        .query_async::<()>(&mut direct)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("TRYAGAIN"), "{err}");
    let finish = tokio::task::spawn_blocking(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let port = to.to_string();
        cli(
            from,
            &[
                "MIGRATE",
                "127.0.0.1",
                &port,
                "",
                "0",
                "5000",
                "KEYS",
                "{try}b",
            ],
        );
        let to_id = cli(to, &["CLUSTER", "MYID"]);
        for p in [to, from] {
            cli(
                p,
                &["CLUSTER", "SETSLOT", &s.to_string(), "NODE", to_id.trim()],
            );
        }
    });
    let got: Vec<String> = q(&mut c, &["MGET", "{try}a", "{try}b"]).await;
    assert_eq!(got, ["1", "2"]);
    finish.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_mixed_commands_keep_their_order() {
    let (_cluster, proxy) = start().await;
    let mut raw = proxy.raw().await;
    raw.send(
        b"SET a 1\r\nSET b 2\r\nGET a\r\nMGET a b c\r\nPING\r\nDEL a b c\r\nGET b\r\nDBSIZE\r\nCLUSTER SLOTS\r\nSELECT 1\r\nSELECT 0\r\nECHO end\r\n",
    )
    .await;
    raw.expect(
        b"+OK\r\n+OK\r\n$1\r\n1\r\n*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n+PONG\r\n:2\r\n$-1\r\n:0\r\n-ERR This instance has cluster support disabled\r\n-ERR SELECT is not allowed in cluster mode\r\n+OK\r\n$3\r\nend\r\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_runs_on_the_primary_of_its_first_key() {
    let (cluster, proxy) = start().await;
    let mut raw = proxy.raw().await;
    // Whichever primary MULTI met first, the transaction runs where {tx} lives.
    for tag in ["tx", "a", "b", "c"] {
        let cmds =
            format!("MULTI\r\nSET {{{tag}}}k 1\r\nINCR {{{tag}}}k\r\nGET {{{tag}}}k\r\nEXEC\r\n");
        raw.send(cmds.as_bytes()).await;
        raw.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n")
            .await;
        let port = cluster.primary_of(slot::of(tag.as_bytes()));
        let mut node = cluster.node(port).await;
        assert_eq!(
            q::<String>(&mut node, &["GET", &format!("{{{tag}}}k")]).await,
            "2"
        );
    }
    // WATCH pins to its key's primary; a blocking command to its key's.
    raw.send(b"WATCH {w}k\r\nMULTI\r\nSET {w}k 1\r\nEXEC\r\nBLPOP {b}list 0.1\r\n")
        .await;
    raw.expect(b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n*-1\r\n")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mode_given_for_a_cluster_passes_its_redirections_through() {
    // The mode is the operator's to force: a cluster taken for one Redis answers MOVED.
    let cluster = RedisCluster::start();
    let proxy = Proxy::start_with(&cluster.url(), |c| c.upstream.mode = "standalone".into()).await;
    let mut raw = proxy.raw().await;
    let key = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.primary_of(slot::of(k.as_bytes())) != cluster.ports[0])
        .unwrap();
    raw.send(format!("GET {key}\r\n").as_bytes()).await;
    let got = String::from_utf8(raw.read_exact_len(6).await).unwrap();
    assert_eq!(got, "-MOVED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_without_an_endpoint_is_followed_to_the_host_that_answered() {
    let (cluster, proxy) = start().await;
    let mut c = proxy.client().await;
    let _: () = q(&mut c, &["SET", "nohost", "before"]).await;
    // Nodes behind a load balancer do not know the endpoint clients reach them by, and name
    // only the port in their redirections: `-MOVED 3999 :7001`.
    for p in cluster.primaries().into_iter().map(|(p, _)| p) {
        let out = cli(
            p,
            &[
                "CONFIG",
                "SET",
                "cluster-preferred-endpoint-type",
                "unknown-endpoint",
            ],
        );
        assert_eq!(out.trim(), "OK", "{out}");
    }
    let s = slot::of(b"nohost");
    let from = cluster.primary_of(s);
    let to = cluster.other_primary(from);
    cluster.migrate(s, to, None);
    cluster.finish_migration(s, to);
    let direct = cli(from, &["GET", "nohost"]);
    assert_eq!(
        direct.trim(),
        format!("MOVED {s} :{to}"),
        "the old primary's answer"
    );
    // cacheside still maps the slot to its old primary: the port-only MOVED is followed.
    assert_eq!(q::<String>(&mut c, &["GET", "nohost"]).await, "before");
    let _: () = q(&mut c, &["SET", "nohost", "after"]).await;
    let mut node = cluster.node(to).await;
    assert_eq!(q::<String>(&mut node, &["GET", "nohost"]).await, "after");
}
