//! End-to-end command coverage: a real redis-server, cacheside in-process in front of it, and real
//! clients (the `redis` crate, or raw RESP bytes) talking to cacheside. Every test checks the
//! results the upstream really produced, not just that a reply arrived.

mod support;

use futures::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{FromRedisValue, PushKind, RedisResult, Value};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};
use support::{Proxy, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No single step of these tests should take anywhere near this long.
const STEP: Duration = Duration::from_secs(15);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Runs a command of string arguments; `Err` is the server's (or client's) error.
async fn try_q<T: FromRedisValue, C: ConnectionLike + Send>(
    con: &mut C,
    args: &[&str],
) -> RedisResult<T> {
    let c = cmd(args);
    within(&format!("{args:?}"), c.query_async(con)).await
}

/// Runs a command of string arguments that must succeed.
async fn q<T: FromRedisValue, C: ConnectionLike + Send>(con: &mut C, args: &[&str]) -> T {
    try_q(con, args)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// A redis-server and cacheside in front of it.
async fn start() -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    (redis, proxy)
}

/// A direct client to one database of the redis-server, bypassing cacheside.
async fn direct_db(redis: &RedisServer, db: u32) -> MultiplexedConnection {
    redis::Client::open(format!("{}/{db}", redis.url()))
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server directly")
}

/// RESP encoding of one command (binary-safe).
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one line (through its CRLF) from a raw stream.
async fn read_line(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        let n = within("read a reply line", s.read(&mut byte))
            .await
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// 1. Data types and scripting
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_return_what_redis_computes() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    assert_eq!(
        q::<String, _>(&mut c, &["SET", "str:k", "hello"]).await,
        "OK"
    );
    assert_eq!(q::<String, _>(&mut c, &["GET", "str:k"]).await, "hello");
    assert_eq!(
        q::<Option<String>, _>(&mut c, &["GET", "str:absent"]).await,
        None
    );

    assert_eq!(q::<i64, _>(&mut c, &["INCR", "str:n"]).await, 1);
    assert_eq!(q::<i64, _>(&mut c, &["INCR", "str:n"]).await, 2);
    assert_eq!(q::<i64, _>(&mut c, &["INCRBY", "str:n", "40"]).await, 42);
    assert_eq!(q::<i64, _>(&mut c, &["DECR", "str:n"]).await, 41);
    let err = try_q::<i64, _>(&mut c, &["INCR", "str:k"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not an integer"),
        "INCR on a non-number: {err}"
    );

    assert_eq!(
        q::<i64, _>(&mut c, &["APPEND", "str:k", " world"]).await,
        11
    );
    assert_eq!(
        q::<String, _>(&mut c, &["GETRANGE", "str:k", "0", "4"]).await,
        "hello"
    );
    assert_eq!(
        q::<String, _>(&mut c, &["GETRANGE", "str:k", "-5", "-1"]).await,
        "world"
    );
    assert_eq!(q::<i64, _>(&mut c, &["STRLEN", "str:k"]).await, 11);

    assert_eq!(
        q::<String, _>(
            &mut c,
            &["MSET", "str:a", "1", "str:b", "two", "str:c", "3"]
        )
        .await,
        "OK"
    );
    assert_eq!(
        q::<Vec<Option<String>>, _>(&mut c, &["MGET", "str:a", "str:b", "str:none", "str:c"]).await,
        vec![Some("1".into()), Some("two".into()), None, Some("3".into())]
    );

    assert_eq!(
        q::<String, _>(&mut c, &["SETEX", "str:ttl", "100", "v"]).await,
        "OK"
    );
    let ttl: i64 = q(&mut c, &["TTL", "str:ttl"]).await;
    assert!((90..=100).contains(&ttl), "TTL after SETEX 100: {ttl}");
    assert_eq!(q::<i64, _>(&mut c, &["TTL", "str:k"]).await, -1);
    assert_eq!(q::<i64, _>(&mut c, &["TTL", "str:absent"]).await, -2);

    assert_eq!(
        q::<Option<String>, _>(&mut c, &["GETDEL", "str:k"]).await,
        Some("hello world".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut c, &["GET", "str:k"]).await,
        None
    );
    assert_eq!(
        q::<Option<String>, _>(&mut c, &["GETDEL", "str:k"]).await,
        None
    );

    // What the proxy reported is what redis-server holds.
    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "str:n"]).await, "41");
    assert_eq!(q::<String, _>(&mut d, &["GET", "str:b"]).await, "two");
    assert_eq!(q::<i64, _>(&mut d, &["EXISTS", "str:k"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_list_and_set_commands_work_through_the_proxy() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    // Hashes
    assert_eq!(
        q::<i64, _>(
            &mut c,
            &["HSET", "h:user", "name", "ada", "lang", "rust", "age", "36"]
        )
        .await,
        3
    );
    assert_eq!(
        q::<String, _>(&mut c, &["HGET", "h:user", "name"]).await,
        "ada"
    );
    assert_eq!(
        q::<Option<String>, _>(&mut c, &["HGET", "h:user", "nope"]).await,
        None
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["HINCRBY", "h:user", "age", "1"]).await,
        37
    );
    assert!(q::<bool, _>(&mut c, &["HEXISTS", "h:user", "lang"]).await);
    assert_eq!(
        q::<i64, _>(&mut c, &["HDEL", "h:user", "lang", "nope"]).await,
        1
    );
    assert_eq!(q::<i64, _>(&mut c, &["HLEN", "h:user"]).await, 2);
    let all: HashMap<String, String> = q(&mut c, &["HGETALL", "h:user"]).await;
    assert_eq!(
        all,
        HashMap::from([("name".into(), "ada".into()), ("age".into(), "37".into())])
    );
    assert_eq!(
        q::<Vec<Option<String>>, _>(&mut c, &["HMGET", "h:user", "age", "x", "name"]).await,
        vec![Some("37".into()), None, Some("ada".into())]
    );

    // Lists
    assert_eq!(
        q::<i64, _>(&mut c, &["RPUSH", "l:q", "b", "c", "d"]).await,
        3
    );
    assert_eq!(q::<i64, _>(&mut c, &["LPUSH", "l:q", "a"]).await, 4);
    assert_eq!(
        q::<Vec<String>, _>(&mut c, &["LRANGE", "l:q", "0", "-1"]).await,
        ["a", "b", "c", "d"]
    );
    assert_eq!(q::<String, _>(&mut c, &["LINDEX", "l:q", "2"]).await, "c");
    assert_eq!(q::<String, _>(&mut c, &["LPOP", "l:q"]).await, "a");
    assert_eq!(q::<String, _>(&mut c, &["RPOP", "l:q"]).await, "d");
    assert_eq!(q::<i64, _>(&mut c, &["LLEN", "l:q"]).await, 2);
    assert_eq!(
        q::<String, _>(&mut c, &["LMOVE", "l:q", "l:other", "LEFT", "RIGHT"]).await,
        "b"
    );
    assert_eq!(
        q::<Vec<String>, _>(&mut c, &["LRANGE", "l:q", "0", "-1"]).await,
        ["c"]
    );
    assert_eq!(
        q::<Vec<String>, _>(&mut c, &["LRANGE", "l:other", "0", "-1"]).await,
        ["b"]
    );

    // Sets
    assert_eq!(
        q::<i64, _>(&mut c, &["SADD", "s:a", "x", "y", "z", "x"]).await,
        3
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["SADD", "s:b", "y", "z", "w"]).await,
        3
    );
    assert!(q::<bool, _>(&mut c, &["SISMEMBER", "s:a", "y"]).await);
    assert!(!q::<bool, _>(&mut c, &["SISMEMBER", "s:a", "w"]).await);
    let members: HashSet<String> = q(&mut c, &["SMEMBERS", "s:a"]).await;
    assert_eq!(members, HashSet::from(["x".into(), "y".into(), "z".into()]));
    let inter: HashSet<String> = q(&mut c, &["SINTER", "s:a", "s:b"]).await;
    assert_eq!(inter, HashSet::from(["y".into(), "z".into()]));
    let union: HashSet<String> = q(&mut c, &["SUNION", "s:a", "s:b"]).await;
    assert_eq!(union.len(), 4);
    assert_eq!(q::<i64, _>(&mut c, &["SREM", "s:a", "x", "nope"]).await, 1);
    assert_eq!(q::<i64, _>(&mut c, &["SCARD", "s:a"]).await, 2);

    let mut d = redis.direct().await;
    assert_eq!(
        q::<String, _>(&mut d, &["HGET", "h:user", "age"]).await,
        "37"
    );
    assert_eq!(q::<i64, _>(&mut d, &["SCARD", "s:b"]).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorted_set_commands_keep_scores_and_ranks() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    assert_eq!(
        q::<i64, _>(
            &mut c,
            &["ZADD", "z:board", "10", "ann", "5", "bob", "7.5", "cid"]
        )
        .await,
        3
    );
    assert_eq!(
        q::<Vec<(String, f64)>, _>(&mut c, &["ZRANGE", "z:board", "0", "-1", "WITHSCORES"]).await,
        vec![
            ("bob".into(), 5.0),
            ("cid".into(), 7.5),
            ("ann".into(), 10.0)
        ]
    );
    assert_eq!(
        q::<f64, _>(&mut c, &["ZINCRBY", "z:board", "6", "bob"]).await,
        11.0
    );
    assert_eq!(
        q::<Option<i64>, _>(&mut c, &["ZRANK", "z:board", "bob"]).await,
        Some(2)
    );
    assert_eq!(
        q::<Option<i64>, _>(&mut c, &["ZRANK", "z:board", "cid"]).await,
        Some(0)
    );
    assert_eq!(
        q::<Option<i64>, _>(&mut c, &["ZRANK", "z:board", "zed"]).await,
        None
    );
    assert_eq!(
        q::<Option<i64>, _>(&mut c, &["ZREVRANK", "z:board", "bob"]).await,
        Some(0)
    );
    assert_eq!(
        q::<f64, _>(&mut c, &["ZSCORE", "z:board", "cid"]).await,
        7.5
    );
    assert_eq!(
        q::<Vec<String>, _>(&mut c, &["ZRANGE", "z:board", "8", "+inf", "BYSCORE"]).await,
        ["ann", "bob"]
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["ZCOUNT", "z:board", "-inf", "10"]).await,
        2
    );
    assert_eq!(
        q::<Vec<(String, f64)>, _>(&mut c, &["ZPOPMIN", "z:board"]).await,
        vec![("cid".into(), 7.5)]
    );
    assert_eq!(q::<i64, _>(&mut c, &["ZCARD", "z:board"]).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_consumer_groups_deliver_track_and_acknowledge_entries() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let mut ids = Vec::new();
    for i in 0..3 {
        let id: String = q(&mut c, &["XADD", "st:orders", "*", "n", &i.to_string()]).await;
        ids.push(id);
    }
    assert_eq!(q::<i64, _>(&mut c, &["XLEN", "st:orders"]).await, 3);
    assert_eq!(
        q::<String, _>(&mut c, &["XGROUP", "CREATE", "st:orders", "workers", "0"]).await,
        "OK"
    );
    let err = try_q::<String, _>(&mut c, &["XGROUP", "CREATE", "st:orders", "workers", "0"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("BUSYGROUP"), "{err}");

    let read: redis::streams::StreamReadReply = q(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "alice",
            "COUNT",
            "10",
            "STREAMS",
            "st:orders",
            ">",
        ],
    )
    .await;
    assert_eq!(read.keys.len(), 1);
    assert_eq!(read.keys[0].key, "st:orders");
    let got: Vec<&str> = read.keys[0].ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let n: Vec<String> = read.keys[0]
        .ids
        .iter()
        .map(|e| String::from_redis_value(&e.map["n"]).unwrap())
        .collect();
    assert_eq!(n, ["0", "1", "2"]);

    let pending: redis::streams::StreamPendingReply =
        q(&mut c, &["XPENDING", "st:orders", "workers"]).await;
    assert_eq!(pending.count(), 3);
    match &pending {
        redis::streams::StreamPendingReply::Data(d) => {
            assert_eq!(d.start_id, ids[0]);
            assert_eq!(d.end_id, ids[2]);
            assert_eq!(d.consumers.len(), 1);
            assert_eq!(d.consumers[0].name, "alice");
            assert_eq!(d.consumers[0].pending, 3);
        }
        other => panic!("XPENDING: {other:?}"),
    }

    assert_eq!(
        q::<i64, _>(&mut c, &["XACK", "st:orders", "workers", &ids[0], &ids[1]]).await,
        2
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["XACK", "st:orders", "workers", &ids[0]]).await,
        0
    );
    let pending: redis::streams::StreamPendingReply =
        q(&mut c, &["XPENDING", "st:orders", "workers"]).await;
    assert_eq!(pending.count(), 1);

    // Nothing new for the group: a non-blocking read is nil.
    let none: Option<redis::streams::StreamReadReply> = q(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "bob",
            "STREAMS",
            "st:orders",
            ">",
        ],
    )
    .await;
    assert!(none.is_none(), "{none:?}");

    // XREADGROUP ... BLOCK rides a pinned connection; it is woken by an XADD from another client.
    let url = proxy.url();
    let reader = tokio::spawn(async move {
        let mut r = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let started = Instant::now();
        let reply: Option<redis::streams::StreamReadReply> = q(
            &mut r,
            &[
                "XREADGROUP",
                "GROUP",
                "workers",
                "bob",
                "BLOCK",
                "5000",
                "COUNT",
                "1",
                "STREAMS",
                "st:orders",
                ">",
            ],
        )
        .await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late: String = q(&mut c, &["XADD", "st:orders", "*", "n", "late"]).await;
    let (reply, waited) = within("blocked XREADGROUP", reader).await.unwrap();
    let reply = reply.expect("XREADGROUP BLOCK was woken with an entry");
    assert_eq!(reply.keys[0].ids.len(), 1);
    assert_eq!(reply.keys[0].ids[0].id, late);
    assert!(
        waited < Duration::from_secs(4),
        "woken only after {waited:?}"
    );
    let pending: redis::streams::StreamPendingReply =
        q(&mut c, &["XPENDING", "st:orders", "workers"]).await;
    assert_eq!(pending.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyperloglog_counts_and_merges() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    assert_eq!(
        q::<i64, _>(&mut c, &["PFADD", "hll:a", "x", "y", "z"]).await,
        1
    );
    assert_eq!(q::<i64, _>(&mut c, &["PFADD", "hll:a", "x"]).await, 0);
    assert_eq!(
        q::<i64, _>(&mut c, &["PFADD", "hll:b", "z", "u", "v"]).await,
        1
    );
    assert_eq!(q::<i64, _>(&mut c, &["PFCOUNT", "hll:a"]).await, 3);
    assert_eq!(q::<i64, _>(&mut c, &["PFCOUNT", "hll:a", "hll:b"]).await, 5);
    assert_eq!(
        q::<String, _>(&mut c, &["PFMERGE", "hll:ab", "hll:a", "hll:b"]).await,
        "OK"
    );
    assert_eq!(q::<i64, _>(&mut c, &["PFCOUNT", "hll:ab"]).await, 5);

    // Many distinct elements: the estimate is within HyperLogLog's error.
    let items: Vec<String> = (0..1000).map(|i| format!("item{i}")).collect();
    let mut args = vec!["PFADD", "hll:big"];
    args.extend(items.iter().map(String::as_str));
    assert_eq!(q::<i64, _>(&mut c, &args).await, 1);
    let est: i64 = q(&mut c, &["PFCOUNT", "hll:big"]).await;
    assert!(
        (950..=1050).contains(&est),
        "PFCOUNT of 1000 distinct: {est}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitmap_commands_set_count_and_combine_bits() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    assert_eq!(q::<i64, _>(&mut c, &["SETBIT", "bm:a", "7", "1"]).await, 0);
    assert_eq!(q::<i64, _>(&mut c, &["SETBIT", "bm:a", "7", "1"]).await, 1);
    assert_eq!(
        q::<i64, _>(&mut c, &["SETBIT", "bm:a", "100", "1"]).await,
        0
    );
    assert_eq!(q::<i64, _>(&mut c, &["GETBIT", "bm:a", "7"]).await, 1);
    assert_eq!(q::<i64, _>(&mut c, &["GETBIT", "bm:a", "6"]).await, 0);
    assert_eq!(q::<i64, _>(&mut c, &["GETBIT", "bm:a", "100000"]).await, 0);
    assert_eq!(q::<i64, _>(&mut c, &["BITCOUNT", "bm:a"]).await, 2);
    // Bit 7 is the last bit of byte 0: "\x01".
    let first: Vec<u8> = q(&mut c, &["GETRANGE", "bm:a", "0", "0"]).await;
    assert_eq!(first, [0x01]);

    q::<i64, _>(&mut c, &["SETBIT", "bm:b", "0", "1"]).await;
    q::<i64, _>(&mut c, &["SETBIT", "bm:b", "7", "1"]).await;
    // Result length is the longest input: bm:a has 13 bytes (bit 100).
    assert_eq!(
        q::<i64, _>(&mut c, &["BITOP", "OR", "bm:or", "bm:a", "bm:b"]).await,
        13
    );
    assert_eq!(q::<i64, _>(&mut c, &["BITCOUNT", "bm:or"]).await, 3);
    assert_eq!(
        q::<i64, _>(&mut c, &["BITOP", "AND", "bm:and", "bm:a", "bm:b"]).await,
        13
    );
    assert_eq!(q::<i64, _>(&mut c, &["BITCOUNT", "bm:and"]).await, 1);
    assert_eq!(
        q::<i64, _>(&mut c, &["BITOP", "XOR", "bm:xor", "bm:a", "bm:b"]).await,
        13
    );
    assert_eq!(q::<i64, _>(&mut c, &["BITCOUNT", "bm:xor"]).await, 2);
    assert_eq!(q::<i64, _>(&mut c, &["BITPOS", "bm:xor", "1"]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_commands_measure_and_search() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    assert_eq!(
        q::<i64, _>(
            &mut c,
            &[
                "GEOADD",
                "geo:sicily",
                "13.361389",
                "38.115556",
                "Palermo",
                "15.087269",
                "37.502669",
                "Catania",
            ],
        )
        .await,
        2
    );
    let km: f64 = q(
        &mut c,
        &["GEODIST", "geo:sicily", "Palermo", "Catania", "km"],
    )
    .await;
    assert!(
        (km - 166.2742).abs() < 0.01,
        "GEODIST Palermo-Catania: {km} km"
    );
    let none: Option<f64> = q(&mut c, &["GEODIST", "geo:sicily", "Palermo", "Rome"]).await;
    assert_eq!(none, None);

    let near: Vec<String> = q(
        &mut c,
        &[
            "GEOSEARCH",
            "geo:sicily",
            "FROMLONLAT",
            "15",
            "37",
            "BYRADIUS",
            "200",
            "km",
            "ASC",
        ],
    )
    .await;
    assert_eq!(near, ["Catania", "Palermo"]);
    let nearer: Vec<String> = q(
        &mut c,
        &[
            "GEOSEARCH",
            "geo:sicily",
            "FROMLONLAT",
            "15",
            "37",
            "BYRADIUS",
            "100",
            "km",
            "ASC",
        ],
    )
    .await;
    assert_eq!(nearer, ["Catania"]);
    let with_dist: Vec<(String, f64)> = q(
        &mut c,
        &[
            "GEOSEARCH",
            "geo:sicily",
            "FROMMEMBER",
            "Palermo",
            "BYBOX",
            "400",
            "400",
            "km",
            "ASC",
            "WITHDIST",
        ],
    )
    .await;
    assert_eq!(with_dist.len(), 2);
    assert_eq!(with_dist[0].0, "Palermo");
    assert!(with_dist[0].1.abs() < 0.001);
    assert_eq!(with_dist[1].0, "Catania");
    assert!((with_dist[1].1 - 166.2742).abs() < 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_with_match_visits_every_matching_key_exactly_as_redis_has_them() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let mut expected = HashSet::new();
    let mut p = redis::pipe();
    for i in 0..2000 {
        let key = format!("scan:match:{i}");
        p.cmd("SET").arg(&key).arg(i).ignore();
        expected.insert(key);
        p.cmd("SET").arg(format!("scan:other:{i}")).arg(i).ignore();
    }
    within("fill", p.query_async::<()>(&mut c)).await.unwrap();
    assert_eq!(q::<i64, _>(&mut c, &["DBSIZE"]).await, 4000);

    let mut seen = HashSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, keys): (String, Vec<String>) = q(
            &mut c,
            &["SCAN", &cursor, "MATCH", "scan:match:*", "COUNT", "100"],
        )
        .await;
        rounds += 1;
        for k in keys {
            assert!(k.starts_with("scan:match:"), "SCAN MATCH returned {k}");
            seen.insert(k);
        }
        cursor = next;
        if cursor == "0" {
            break;
        }
        assert!(rounds < 10_000, "SCAN does not terminate");
    }
    assert!(rounds > 1, "SCAN over 4000 keys took {rounds} round(s)");
    assert_eq!(seen.len(), expected.len());
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_and_evalsha_run_scripts_with_keys_and_args() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let script = "redis.call('SET', KEYS[1], ARGV[1]); \
                  return {redis.call('INCRBY', KEYS[2], ARGV[2]), redis.call('GET', KEYS[1])}";
    let r: (i64, String) = q(
        &mut c,
        &["EVAL", script, "2", "lua:s", "lua:n", "stored", "5"],
    )
    .await;
    assert_eq!(r, (5, "stored".into()));

    let sha: String = q(&mut c, &["SCRIPT", "LOAD", script]).await;
    assert_eq!(sha.len(), 40);
    // The SHA is redis-server's own: a direct connection sees the script loaded.
    let mut d = redis.direct().await;
    assert_eq!(
        q::<Vec<bool>, _>(&mut d, &["SCRIPT", "EXISTS", &sha]).await,
        [true]
    );
    let r: (i64, String) = q(
        &mut c,
        &["EVALSHA", &sha, "2", "lua:s2", "lua:n", "again", "10"],
    )
    .await;
    assert_eq!(r, (15, "again".into()));

    let err = try_q::<Value, _>(
        &mut c,
        &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("NOSCRIPT"), "{err}");

    // The redis crate's Script: EVALSHA, falling back to SCRIPT LOAD on NOSCRIPT.
    let s = redis::Script::new("return tonumber(ARGV[1]) * 2 + #KEYS");
    let v: i64 = within(
        "Script::invoke",
        s.key("lua:a").key("lua:b").arg(20).invoke_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(v, 42);

    let err = try_q::<Value, _>(&mut c, &["EVAL", "return redis.call('NOPE')", "0"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Unknown Redis command"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_load_and_fcall_run_a_redis7_library() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let lib = "#!lua name=cmdlib\n\
               redis.register_function('cmd_incr2', function(keys, args)\n\
                 return redis.call('INCRBY', keys[1], 2)\n\
               end)\n\
               redis.register_function{function_name='cmd_get', callback=function(keys, args)\n\
                 return redis.call('GET', keys[1])\n\
               end, flags={'no-writes'}}\n\
               redis.register_function('cmd_echo', function(keys, args)\n\
                 return args[1] .. ':' .. #keys\n\
               end)\n";
    assert_eq!(
        q::<String, _>(&mut c, &["FUNCTION", "LOAD", lib]).await,
        "cmdlib"
    );
    let err = try_q::<String, _>(&mut c, &["FUNCTION", "LOAD", lib])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        q::<String, _>(&mut c, &["FUNCTION", "LOAD", "REPLACE", lib]).await,
        "cmdlib"
    );

    assert_eq!(
        q::<i64, _>(&mut c, &["FCALL", "cmd_incr2", "1", "fn:ctr"]).await,
        2
    );
    assert_eq!(
        q::<i64, _>(&mut c, &["FCALL", "cmd_incr2", "1", "fn:ctr"]).await,
        4
    );
    assert_eq!(
        q::<String, _>(&mut c, &["FCALL_RO", "cmd_get", "1", "fn:ctr"]).await,
        "4"
    );
    assert_eq!(
        q::<String, _>(&mut c, &["FCALL", "cmd_echo", "2", "fn:a", "fn:b", "hi"]).await,
        "hi:2"
    );
    let err = try_q::<Value, _>(&mut c, &["FCALL_RO", "cmd_incr2", "1", "fn:ctr"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("write flag"), "{err}");

    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "fn:ctr"]).await, "4");
    assert_eq!(
        q::<String, _>(&mut c, &["FUNCTION", "DELETE", "cmdlib"]).await,
        "OK"
    );
    let err = try_q::<Value, _>(&mut c, &["FCALL", "cmd_incr2", "1", "fn:ctr"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Function not found"), "{err}");
}

// ------------------------------------------------------------------------------------------------
// 2. Pub/sub
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_and_pattern_subscribers_receive_what_another_client_publishes() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;
    let pubsub = within(
        "connect pubsub",
        redis::Client::open(proxy.url()).unwrap().get_async_pubsub(),
    )
    .await
    .expect("pubsub through cacheside");
    let (mut sink, mut stream) = pubsub.split();
    within("SUBSCRIBE", sink.subscribe("ps:news"))
        .await
        .unwrap();
    within("PSUBSCRIBE", sink.psubscribe("ps:ev.*"))
        .await
        .unwrap();

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:news", "hello"]).await,
        1
    );
    let m = within("message", stream.next()).await.expect("a message");
    assert_eq!(m.get_channel_name(), "ps:news");
    assert_eq!(m.get_payload::<String>().unwrap(), "hello");
    assert!(!m.from_pattern());

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:ev.login", "ada"]).await,
        1
    );
    let m = within("pmessage", stream.next()).await.expect("a pmessage");
    assert!(m.from_pattern());
    assert_eq!(m.get_pattern::<String>().unwrap(), "ps:ev.*");
    assert_eq!(m.get_channel_name(), "ps:ev.login");
    assert_eq!(m.get_payload::<String>().unwrap(), "ada");

    // Binary payloads arrive intact.
    let payload: Vec<u8> = (0..=255u8).collect();
    let n: i64 = within(
        "PUBLISH binary",
        redis::cmd("PUBLISH")
            .arg("ps:news")
            .arg(&payload)
            .query_async(&mut publisher),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let m = within("binary message", stream.next()).await.unwrap();
    assert_eq!(m.get_payload_bytes(), &payload[..]);

    // After UNSUBSCRIBE the channel has no subscriber; the pattern still works.
    within("UNSUBSCRIBE", sink.unsubscribe("ps:news"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:news", "nobody"]).await,
        0
    );
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:ev.logout", "bye"]).await,
        1
    );
    let m = within("pmessage after unsubscribe", stream.next())
        .await
        .unwrap();
    assert_eq!(m.get_channel_name(), "ps:ev.logout");
    assert_eq!(m.get_payload::<String>().unwrap(), "bye");

    within("PUNSUBSCRIBE", sink.punsubscribe("ps:ev.*"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "ps:ev.login", "nobody"]).await,
        0
    );
    // And the pubsub connection still answers.
    let pong: String = within("PING in pubsub", sink.ping()).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscribers_receive_push_messages_and_can_still_run_commands() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cfg = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut sub = within(
        "connect RESP3",
        redis::Client::open(format!("{}?protocol=resp3", proxy.url()))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .expect("RESP3 client through cacheside");

    within("SUBSCRIBE", sub.subscribe("r3:chan")).await.unwrap();
    within("PSUBSCRIBE", sub.psubscribe("r3:pat.*"))
        .await
        .unwrap();

    // Returns the next push of `kind`, skipping subscribe confirmations.
    async fn next_push(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
        kind: PushKind,
    ) -> Vec<Value> {
        loop {
            let p = within("push", rx.recv()).await.expect("push channel open");
            if p.kind == kind {
                return p.data;
            }
            assert!(
                matches!(
                    p.kind,
                    PushKind::Subscribe
                        | PushKind::PSubscribe
                        | PushKind::Unsubscribe
                        | PushKind::PUnsubscribe
                ),
                "unexpected push while waiting for {kind:?}: {p:?}"
            );
        }
    }

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:chan", "one"]).await,
        1
    );
    let data = next_push(&mut rx, PushKind::Message).await;
    assert_eq!(
        data,
        vec![
            Value::BulkString(b"r3:chan".to_vec()),
            Value::BulkString(b"one".to_vec())
        ]
    );

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:pat.x", "two"]).await,
        1
    );
    let data = next_push(&mut rx, PushKind::PMessage).await;
    assert_eq!(
        data,
        vec![
            Value::BulkString(b"r3:pat.*".to_vec()),
            Value::BulkString(b"r3:pat.x".to_vec()),
            Value::BulkString(b"two".to_vec())
        ]
    );

    // RESP3 allows ordinary commands on a subscribed connection; replies and pushes interleave.
    assert_eq!(q::<String, _>(&mut sub, &["SET", "r3:k", "v"]).await, "OK");
    assert_eq!(q::<String, _>(&mut sub, &["GET", "r3:k"]).await, "v");
    assert_eq!(
        q::<Option<String>, _>(&mut sub, &["GET", "r3:absent"]).await,
        None
    );
    assert_eq!(
        q::<HashMap<String, String>, _>(&mut sub, &["HGETALL", "r3:absent"]).await,
        HashMap::new()
    );
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:chan", "three"]).await,
        1
    );
    let data = next_push(&mut rx, PushKind::Message).await;
    assert_eq!(data[1], Value::BulkString(b"three".to_vec()));
    assert_eq!(q::<String, _>(&mut sub, &["GET", "r3:k"]).await, "v");

    within("UNSUBSCRIBE", sub.unsubscribe("r3:chan"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:chan", "gone"]).await,
        0
    );
    within("PUNSUBSCRIBE", sub.punsubscribe("r3:pat.*"))
        .await
        .unwrap();
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "r3:pat.x", "gone"]).await,
        0
    );
    assert_eq!(q::<String, _>(&mut sub, &["GET", "r3:k"]).await, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_subscriber_gets_the_exact_message_frames() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;
    let mut raw = proxy.raw().await;

    raw.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nraw:ch\r\n").await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$6\r\nraw:ch\r\n:1\r\n")
        .await;

    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "raw:ch", "hi there"]).await,
        1
    );
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$6\r\nraw:ch\r\n$8\r\nhi there\r\n")
        .await;

    let n: i64 = within(
        "PUBLISH crlf",
        redis::cmd("PUBLISH")
            .arg("raw:ch")
            .arg(&b"a\r\nb\0"[..])
            .query_async(&mut publisher),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    raw.expect(b"*3\r\n$7\r\nmessage\r\n$6\r\nraw:ch\r\n$5\r\na\r\nb\0\r\n")
        .await;

    // Two subscriptions in one command: one confirmation each.
    raw.send(b"*3\r\n$9\r\nSUBSCRIBE\r\n$5\r\nraw:a\r\n$5\r\nraw:b\r\n")
        .await;
    raw.expect(b"*3\r\n$9\r\nsubscribe\r\n$5\r\nraw:a\r\n:2\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nraw:b\r\n:3\r\n")
        .await;
    raw.send(b"*1\r\n$4\r\nPING\r\n").await;
    raw.expect(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").await;

    raw.send(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n").await;
    // One confirmation per channel, in redis-server's (unspecified) order, counting down to 0.
    let frame_len = |ch: &str| {
        format!(
            "*3\r\n$11\r\nunsubscribe\r\n${}\r\n{ch}\r\n:0\r\n",
            ch.len()
        )
        .len()
    };
    let rest = raw
        .read_exact_len(frame_len("raw:ch") + frame_len("raw:a") + frame_len("raw:b"))
        .await;
    let text = String::from_utf8_lossy(&rest);
    for ch in ["raw:ch", "raw:a", "raw:b"] {
        assert!(text.contains(ch), "UNSUBSCRIBE confirmations: {text:?}");
    }
    assert!(
        text.ends_with(":0\r\n"),
        "UNSUBSCRIBE confirmations: {text:?}"
    );
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "raw:ch", "gone"]).await,
        0
    );

    // Out of subscribed mode, the connection takes ordinary commands again.
    raw.send(b"*1\r\n$4\r\nPING\r\n").await;
    raw.expect(b"+PONG\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$6\r\nraw:kk\r\n$1\r\n1\r\n")
        .await;
    raw.expect(b"+OK\r\n").await;
}

// ------------------------------------------------------------------------------------------------
// 3. Transactions
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_pipeline_runs_as_one_transaction() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;

    let (n, v, len): (i64, String, i64) = within(
        "MULTI/EXEC",
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg("tx:a")
            .arg(1)
            .ignore()
            .cmd("INCRBY")
            .arg("tx:a")
            .arg(5)
            .cmd("GET")
            .arg("tx:a")
            .cmd("RPUSH")
            .arg("tx:l")
            .arg("x")
            .arg("y")
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!((n, v.as_str(), len), (6, "6", 2));

    // The connection is usable for plain commands afterwards, and the effects are in redis.
    assert_eq!(q::<String, _>(&mut c, &["GET", "tx:a"]).await, "6");
    let mut d = redis.direct().await;
    assert_eq!(q::<i64, _>(&mut d, &["LLEN", "tx:l"]).await, 2);

    // Many transactions back to back on one multiplexed connection, interleaved with plain ones.
    for i in 0..50 {
        let (a, b): (i64, i64) = within(
            "MULTI/EXEC loop",
            redis::pipe()
                .atomic()
                .cmd("INCR")
                .arg("tx:ctr")
                .cmd("INCR")
                .arg("tx:ctr")
                .query_async(&mut c),
        )
        .await
        .unwrap();
        assert_eq!((a, b), (2 * i + 1, 2 * i + 2));
        assert_eq!(q::<i64, _>(&mut c, &["GET", "tx:ctr"]).await, 2 * i + 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_multi_exec_and_discard_reply_like_redis() {
    let (redis, proxy) = start().await;
    let mut raw = proxy.raw().await;

    raw.send(b"*1\r\n$5\r\nMULTI\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$5\r\ntx:rk\r\n$3\r\nabc\r\n")
        .await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(b"*2\r\n$4\r\nINCR\r\n$5\r\ntx:rk\r\n").await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\ntx:rk\r\n").await;
    raw.expect(b"+QUEUED\r\n").await;
    raw.send(b"*1\r\n$4\r\nEXEC\r\n").await;
    raw.expect(b"*3\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$3\r\nabc\r\n")
        .await;

    // DISCARD drops what was queued.
    raw.send(b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$5\r\ntx:dk\r\n$1\r\n1\r\n*1\r\n$7\r\nDISCARD\r\n")
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n+OK\r\n").await;
    let mut d = redis.direct().await;
    assert_eq!(q::<i64, _>(&mut d, &["EXISTS", "tx:dk"]).await, 0);

    // A queueing error aborts the whole transaction.
    raw.send(b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$5\r\ntx:ek\r\n$1\r\n1\r\n*2\r\n$3\r\nSET\r\n$5\r\ntx:ek\r\n*1\r\n$4\r\nEXEC\r\n")
        .await;
    raw.expect(b"+OK\r\n+QUEUED\r\n-ERR wrong number of arguments for 'set' command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n")
        .await;
    assert_eq!(q::<i64, _>(&mut d, &["EXISTS", "tx:ek"]).await, 0);

    // EXEC without MULTI is redis-server's error.
    raw.send(b"*1\r\n$4\r\nEXEC\r\n").await;
    raw.expect(b"-ERR EXEC without MULTI\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\ntx:rk\r\n").await;
    raw.expect(b"$3\r\nabc\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_aborts_the_transaction() {
    let (redis, proxy) = start().await;
    let mut b = proxy.client().await;
    let mut a = proxy.raw().await;

    assert_eq!(q::<String, _>(&mut b, &["SET", "w:k", "orig"]).await, "OK");

    a.send(b"*2\r\n$5\r\nWATCH\r\n$3\r\nw:k\r\n").await;
    a.expect(b"+OK\r\n").await;
    // Client B changes the watched key (on a shared connection) after A's WATCH took effect.
    assert_eq!(
        q::<String, _>(&mut b, &["SET", "w:k", "changed"]).await,
        "OK"
    );
    a.send(b"*1\r\n$5\r\nMULTI\r\n").await;
    a.expect(b"+OK\r\n").await;
    a.send(b"*3\r\n$3\r\nSET\r\n$3\r\nw:k\r\n$4\r\nmine\r\n")
        .await;
    a.expect(b"+QUEUED\r\n").await;
    a.send(b"*1\r\n$4\r\nEXEC\r\n").await;
    a.expect(b"*-1\r\n").await;

    a.send(b"*2\r\n$3\r\nGET\r\n$3\r\nw:k\r\n").await;
    a.expect(b"$7\r\nchanged\r\n").await;
    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "w:k"]).await, "changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_conflict_commits_and_unwatch_releases() {
    let (redis, proxy) = start().await;
    let mut b = proxy.client().await;
    let mut a = proxy.raw().await;

    // A change by another client *before* WATCH does not abort.
    assert_eq!(
        q::<String, _>(&mut b, &["SET", "w2:k", "before"]).await,
        "OK"
    );
    a.send(b"*2\r\n$5\r\nWATCH\r\n$4\r\nw2:k\r\n").await;
    a.expect(b"+OK\r\n").await;
    a.send(
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$4\r\nw2:k\r\n$4\r\nmine\r\n*1\r\n$4\r\nEXEC\r\n",
    )
    .await;
    a.expect(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
    let mut d = redis.direct().await;
    assert_eq!(q::<String, _>(&mut d, &["GET", "w2:k"]).await, "mine");

    // UNWATCH forgets the watch: a later change does not abort.
    a.send(b"*2\r\n$5\r\nWATCH\r\n$4\r\nw2:k\r\n*1\r\n$7\r\nUNWATCH\r\n")
        .await;
    a.expect(b"+OK\r\n+OK\r\n").await;
    assert_eq!(
        q::<String, _>(&mut b, &["SET", "w2:k", "other"]).await,
        "OK"
    );
    a.send(b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$4\r\nw2:n\r\n*1\r\n$4\r\nEXEC\r\n")
        .await;
    a.expect(b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n").await;
}

// ------------------------------------------------------------------------------------------------
// 4. Blocking commands
// ------------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------------
// 5. SELECT
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_switches_databases_for_that_client_only() {
    let (redis, proxy) = start().await;
    let mut d0 = direct_db(&redis, 0).await;
    let mut d1 = direct_db(&redis, 1).await;
    let mut other = proxy.client().await;
    let mut raw = proxy.raw().await;

    raw.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$5\r\nsel:k\r\n$3\r\none\r\n")
        .await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$3\r\none\r\n").await;

    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "sel:k"]).await,
        Some("one".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d0, &["GET", "sel:k"]).await,
        None
    );
    // Another client through the proxy still sees db 0.
    assert_eq!(
        q::<Option<String>, _>(&mut other, &["GET", "sel:k"]).await,
        None
    );
    assert_eq!(
        q::<String, _>(&mut other, &["SET", "sel:k", "zero"]).await,
        "OK"
    );
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$3\r\none\r\n").await;

    raw.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n").await;
    raw.expect(b"+OK\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$4\r\nzero\r\n").await;
    raw.send(b"*3\r\n$3\r\nSET\r\n$6\r\nsel:k0\r\n$1\r\nx\r\n")
        .await;
    raw.expect(b"+OK\r\n").await;
    assert_eq!(
        q::<Option<String>, _>(&mut d0, &["GET", "sel:k0"]).await,
        Some("x".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "sel:k0"]).await,
        None
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "sel:k"]).await,
        Some("one".into())
    );

    // Back and forth once more, pipelined in one write.
    raw.send(b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n")
        .await;
    raw.expect(b"+OK\r\n$3\r\none\r\n+OK\r\n$4\r\nzero\r\n")
        .await;

    // Errors are redis-server's.
    raw.send(b"*2\r\n$6\r\nSELECT\r\n$3\r\n999\r\n").await;
    raw.expect(b"-ERR DB index is out of range\r\n").await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsel:k\r\n").await;
    raw.expect(b"$4\r\nzero\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_database_in_its_url_works_in_that_database() {
    let (redis, proxy) = start().await;
    let mut d0 = direct_db(&redis, 0).await;
    let mut d2 = direct_db(&redis, 2).await;
    let mut c2 = within(
        "connect db 2",
        redis::Client::open(format!("{}/2", proxy.url()))
            .unwrap()
            .get_multiplexed_async_connection(),
    )
    .await
    .expect("connect through cacheside with db 2");

    assert_eq!(
        q::<String, _>(&mut c2, &["SET", "db2:k", "two"]).await,
        "OK"
    );
    assert_eq!(q::<i64, _>(&mut c2, &["INCR", "db2:n"]).await, 1);
    assert_eq!(q::<String, _>(&mut c2, &["GET", "db2:k"]).await, "two");
    assert_eq!(
        q::<Option<String>, _>(&mut d2, &["GET", "db2:k"]).await,
        Some("two".into())
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d0, &["GET", "db2:k"]).await,
        None
    );
    let (n, v): (i64, String) = within(
        "MULTI in db 2",
        redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg("db2:n")
            .cmd("GET")
            .arg("db2:k")
            .query_async(&mut c2),
    )
    .await
    .unwrap();
    assert_eq!((n, v.as_str()), (2, "two"));
    assert_eq!(q::<i64, _>(&mut d0, &["EXISTS", "db2:n"]).await, 0);
    assert_eq!(q::<String, _>(&mut d2, &["GET", "db2:n"]).await, "2");
}

// ------------------------------------------------------------------------------------------------
// 6. Large and binary values
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_value_round_trips_intact() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let big: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let ok: String = within(
        "SET 5 MB",
        redis::cmd("SET").arg("big:v").arg(&big).query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(ok, "OK");
    let back: Vec<u8> = within(
        "GET 5 MB",
        redis::cmd("GET").arg("big:v").query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "5 MB value came back different");
    assert_eq!(
        q::<i64, _>(&mut c, &["STRLEN", "big:v"]).await,
        big.len() as i64
    );

    let mut d = redis.direct().await;
    let direct: Vec<u8> = within(
        "GET direct",
        redis::cmd("GET").arg("big:v").query_async(&mut d),
    )
    .await
    .unwrap();
    assert!(direct == big, "redis-server holds a different value");

    // Several big values in one pipeline, and a plain reply right after them.
    let (a, b, n): (Vec<u8>, Vec<u8>, i64) = within(
        "pipelined big GETs",
        redis::pipe()
            .cmd("SET")
            .arg("big:w")
            .arg(&big[..3 * 1024 * 1024])
            .ignore()
            .cmd("GET")
            .arg("big:v")
            .cmd("GET")
            .arg("big:w")
            .cmd("INCR")
            .arg("big:n")
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert!(a == big);
    assert!(b[..] == big[..3 * 1024 * 1024]);
    assert_eq!(n, 1);

    // The same through raw bytes: one write, reply read back exactly.
    let mut raw = proxy.raw().await;
    raw.send(b"*2\r\n$3\r\nGET\r\n$5\r\nbig:v\r\n").await;
    let header = format!("${}\r\n", big.len());
    let got = raw.read_exact_len(header.len() + big.len() + 2).await;
    assert_eq!(&got[..header.len()], header.as_bytes());
    assert!(got[header.len()..header.len() + big.len()] == big[..]);
    assert_eq!(&got[header.len() + big.len()..], b"\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_are_binary_safe() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut d = redis.direct().await;

    let all: Vec<u8> = (0..=255u8).collect();
    let mut key = b"bin:".to_vec();
    key.extend_from_slice(&all);
    let value: Vec<u8> = all
        .iter()
        .rev()
        .copied()
        .chain(all.iter().copied())
        .collect();

    let ok: String = within(
        "SET binary",
        redis::cmd("SET").arg(&key).arg(&value).query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(ok, "OK");
    let back: Vec<u8> = within(
        "GET binary",
        redis::cmd("GET").arg(&key).query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(back, value);
    let direct: Vec<u8> = within(
        "GET direct",
        redis::cmd("GET").arg(&key).query_async(&mut d),
    )
    .await
    .unwrap();
    assert_eq!(direct, value);

    // Every single byte as its own key and value, including \r, \n and \0.
    let mut p = redis::pipe();
    for b in 0..=255u8 {
        p.cmd("SET")
            .arg(&[b'b', b'1', b':', b][..])
            .arg(&[b, b'\r', b'\n', b, b'\0'][..])
            .ignore();
    }
    within("SET 256", p.query_async::<()>(&mut c))
        .await
        .unwrap();
    let mut mget = redis::cmd("MGET");
    for b in 0..=255u8 {
        mget.arg(&[b'b', b'1', b':', b][..]);
    }
    let vals: Vec<Vec<u8>> = within("MGET 256", mget.query_async(&mut c)).await.unwrap();
    assert_eq!(vals.len(), 256);
    for (b, v) in vals.iter().enumerate() {
        let b = b as u8;
        assert_eq!(v, &[b, b'\r', b'\n', b, b'\0'], "value for byte {b}");
    }

    // Binary hash fields and list elements.
    let n: RedisResult<i64> = within(
        "HSET binary",
        redis::cmd("HSET")
            .arg(&key)
            .arg(&b"f\r\n\0"[..])
            .arg(&all)
            .query_async(&mut c),
    )
    .await;
    assert!(
        n.is_err(),
        "HSET on a string key must fail with WRONGTYPE, got {n:?}"
    );
    let n: i64 = within(
        "HSET binary",
        redis::cmd("HSET")
            .arg(&b"bin:h\r\n"[..])
            .arg(&b"f\r\n\0"[..])
            .arg(&all)
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let f: Vec<u8> = within(
        "HGET binary",
        redis::cmd("HGET")
            .arg(&b"bin:h\r\n"[..])
            .arg(&b"f\r\n\0"[..])
            .query_async(&mut c),
    )
    .await
    .unwrap();
    assert_eq!(f, all);

    // Raw bytes: a bulk string that contains a complete RESP frame is still just data.
    let mut raw = proxy.raw().await;
    let tricky: &[u8] = b"*1\r\n$4\r\nPING\r\n\0+OK\r\n";
    raw.send(&resp(&[b"SET", b"bin:tricky", tricky])).await;
    raw.expect(b"+OK\r\n").await;
    raw.send(&resp(&[b"GET", b"bin:tricky"])).await;
    let mut expected = format!("${}\r\n", tricky.len()).into_bytes();
    expected.extend_from_slice(tricky);
    expected.extend_from_slice(b"\r\n");
    raw.expect(&expected).await;
    raw.send(&resp(&[b"ECHO", tricky])).await;
    raw.expect(&expected).await;
}

// ------------------------------------------------------------------------------------------------
// 7. Many clients at once
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_clients_each_read_only_their_own_values() {
    const CLIENTS: usize = 500;
    const ROUNDS: usize = 5;
    let (redis, proxy) = start().await;
    let url = proxy.url();

    // Connect everyone first, then let them all go at once.
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let c = within(
            "connect",
            redis::Client::open(url.clone())
                .unwrap()
                .get_multiplexed_async_connection(),
        )
        .await
        .expect("connect through cacheside");
        conns.push(c);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let key = format!("many:{i}");
                for round in 0..ROUNDS {
                    let v = format!("client-{i}-round-{round}-{}", "x".repeat(i % 50));
                    let ok: String = q(&mut c, &["SET", &key, &v]).await;
                    assert_eq!(ok, "OK");
                    let got: String = q(&mut c, &["GET", &key]).await;
                    assert_eq!(got, v, "client {i} round {round} read someone else's value");
                    let n: i64 = q(&mut c, &["INCR", &format!("many:n:{i}")]).await;
                    assert_eq!(n, round as i64 + 1, "client {i} counter");
                    // A pipelined pair, too: replies must stay in order and stay ours.
                    let (a, b): (String, i64) = redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("STRLEN")
                        .arg(&key)
                        .query_async(&mut c)
                        .await
                        .unwrap();
                    assert_eq!((a.as_str(), b), (v.as_str(), v.len() as i64));
                }
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("500 clients finish within 60 s");
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} clients failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

    let mut d = redis.direct().await;
    for i in [0, 1, 249, 499] {
        let v: String = q(&mut d, &["GET", &format!("many:{i}")]).await;
        assert!(
            v.starts_with(&format!("client-{i}-round-{}-", ROUNDS - 1)),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_raw_connections_pipelining_at_once_get_their_own_replies() {
    const CLIENTS: usize = 500;
    let (_redis, proxy) = start().await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let key = format!("rawmany:{i}");
                let val = format!("{i}:{}", "v".repeat(i % 37));
                let mut req = Vec::new();
                let mut expected = Vec::new();
                for _ in 0..3 {
                    req.extend_from_slice(&resp(&[b"SET", key.as_bytes(), val.as_bytes()]));
                    req.extend_from_slice(&resp(&[b"GET", key.as_bytes()]));
                    expected.extend_from_slice(b"+OK\r\n");
                    expected.extend_from_slice(format!("${}\r\n{val}\r\n", val.len()).as_bytes());
                }
                s.write_all(&req).await.expect("write");
                let mut got = vec![0u8; expected.len()];
                tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut got))
                    .await
                    .expect("replies in time")
                    .expect("read");
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&expected),
                    "client {i}"
                );
            })
        })
        .collect();
    for (i, r) in futures::future::join_all(tasks)
        .await
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
}

// ------------------------------------------------------------------------------------------------
// 8. Deep pipelines
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_ten_thousand_incrs_replies_in_order() {
    let (_redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut p = redis::pipe();
    for _ in 0..10_000 {
        p.cmd("INCR").arg("pipe:ctr");
    }
    let replies: Vec<i64> = within("10,000 INCRs", p.query_async(&mut c)).await.unwrap();
    assert_eq!(replies.len(), 10_000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(*r, i as i64 + 1, "reply {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_ten_thousand_sets_and_gets_replies_in_order() {
    let (redis, proxy) = start().await;
    let mut c = proxy.client().await;
    let mut p = redis::pipe();
    for i in 0..5_000 {
        p.cmd("SET")
            .arg(format!("pipe:k:{i}"))
            .arg(format!("value-{i}"));
        p.cmd("GET").arg(format!("pipe:k:{i}"));
    }
    let replies: Vec<Value> = within("10,000 SET/GETs", p.query_async(&mut c))
        .await
        .unwrap();
    assert_eq!(replies.len(), 10_000);
    for i in 0..5_000 {
        assert_eq!(replies[2 * i], Value::Okay, "SET reply {i}");
        assert_eq!(
            replies[2 * i + 1],
            Value::BulkString(format!("value-{i}").into_bytes()),
            "GET reply {i}"
        );
    }
    let mut d = redis.direct().await;
    assert_eq!(q::<i64, _>(&mut d, &["DBSIZE"]).await, 5_000);

    // The same depth as raw bytes in one write, mixing local (PING/ECHO) and forwarded commands.
    let mut raw = proxy.raw().await;
    let mut req = Vec::new();
    let mut expected = Vec::new();
    for i in 0..10_000 {
        let n = i.to_string();
        match i % 4 {
            0 => {
                req.extend_from_slice(&resp(&[b"GET", format!("pipe:k:{}", i / 2).as_bytes()]));
                let v = format!("value-{}", i / 2);
                expected.extend_from_slice(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
            }
            1 => {
                req.extend_from_slice(&resp(&[b"ECHO", n.as_bytes()]));
                expected.extend_from_slice(format!("${}\r\n{n}\r\n", n.len()).as_bytes());
            }
            2 => {
                req.extend_from_slice(&resp(&[b"INCR", b"pipe:raw"]));
                expected.extend_from_slice(format!(":{}\r\n", i / 4 + 1).as_bytes());
            }
            _ => {
                req.extend_from_slice(&resp(&[b"PING"]));
                expected.extend_from_slice(b"+PONG\r\n");
            }
        }
    }
    raw.send(&req).await;
    let got = raw.read_exact_len(expected.len()).await;
    if got != expected {
        let at = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "raw pipeline differs at byte {at}: got {:?}, expected {:?}",
            String::from_utf8_lossy(&got[at.saturating_sub(40)..(at + 40).min(got.len())]),
            String::from_utf8_lossy(
                &expected[at.saturating_sub(40)..(at + 40).min(expected.len())]
            )
        );
    }
}

// ------------------------------------------------------------------------------------------------
// 9. Errors pass through byte for byte
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_return_the_upstreams_exact_error_bytes() {
    let (redis, proxy) = start().await;
    let mut via_proxy = proxy.raw().await;
    let mut direct = TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect to redis-server");

    let requests: Vec<Vec<u8>> = vec![
        resp(&[b"NOSUCHCMD42", b"arg", b"more"]),
        resp(&[b"nosuchcmd"]),
        resp(&[b"FLUBBER", b"a\r\nb"]),
        // Known commands with bad arguments: redis-server's errors too.
        resp(&[b"GET"]),
        resp(&[b"SET", b"k"]),
        resp(&[b"CONFIG", b"NOPE"]),
        resp(&[b"OBJECT", b"NOPE", b"k"]),
        // An inline unknown command.
        b"NOSUCHINLINE a b\r\n".to_vec(),
    ];
    for req in &requests {
        direct.write_all(req).await.unwrap();
        let want = read_line(&mut direct).await;
        assert!(
            want.starts_with(b"-"),
            "{:?}",
            String::from_utf8_lossy(&want)
        );
        via_proxy.send(req).await;
        let got = read_line(&mut via_proxy.0).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "for request {:?}",
            String::from_utf8_lossy(req)
        );
    }
    // The connection is still fine afterwards.
    via_proxy.send(b"*1\r\n$4\r\nPING\r\n").await;
    via_proxy.expect(b"+PONG\r\n").await;

    // And the redis crate sees the same error.
    let mut c = proxy.client().await;
    let err = try_q::<Value, _>(&mut c, &["NOSUCHCMD42", "x"])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown command 'NOSUCHCMD42'"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------------------
// Transparency: cacheside's replies are redis-server's replies
// ------------------------------------------------------------------------------------------------

/// Reads from a raw stream until the bytes read end with `suffix`; returns everything read.
async fn read_until_suffix(s: &mut TcpStream, suffix: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.ends_with(suffix) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for {:?}; got so far: {:?}",
                    String::from_utf8_lossy(suffix),
                    String::from_utf8_lossy(&out)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "closed; got so far: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&chunk[..n]);
    }
    out
}

/// Reads until `n` bytes arrived, the peer closed, or `limit` passed; returns what arrived.
async fn read_up_to(s: &mut TcpStream, n: usize, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => out.extend_from_slice(&chunk[..k]),
        }
    }
    out
}

/// Switches a raw connection to RESP3 and skips the HELLO reply (cacheside's or redis-server's).
async fn hello3(s: &mut TcpStream) {
    s.write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
        .await
        .unwrap();
    read_until_suffix(s, b"$7\r\nmodules\r\n*0\r\n").await;
}

async fn direct_raw(redis: &RedisServer) -> TcpStream {
    TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect to redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_shared_connections_are_byte_identical_to_redis_in_resp2_and_resp3() {
    let (redis, proxy) = start().await;
    let mut d = redis.direct().await;
    q::<i64, _>(&mut d, &["HSET", "same:h", "a", "1", "b", "2"]).await;
    q::<i64, _>(&mut d, &["ZADD", "same:z", "1.5", "x", "2", "y"]).await;
    q::<i64, _>(&mut d, &["SADD", "same:s", "m"]).await;
    q::<String, _>(&mut d, &["XADD", "same:x", "1-1", "f", "v"]).await;
    let mut reqs = Vec::new();
    for args in [
        &["HGETALL", "same:h"][..],
        &["ZSCORE", "same:z", "x"],
        &["ZRANGE", "same:z", "0", "-1", "WITHSCORES"],
        &["SMEMBERS", "same:s"],
        &["GET", "same:none"],
        &["HGET", "same:h", "zz"],
        &["MGET", "same:none", "same:h"],
        &["XRANGE", "same:x", "-", "+"],
        &["XINFO", "STREAM", "same:x"],
        &["CONFIG", "GET", "maxmemory"],
        &["EXISTS", "same:h"],
        &["GEOPOS", "same:none", "a"],
        &["LPOS", "same:none", "a"],
        &["ZRANK", "same:z", "nope"],
        &["OBJECT", "FREQ", "same:h"],
        &["GET", "same:h"],
        &[
            "EVAL",
            "return {1, 'two', {3.5}, redis.status_reply('OK')}",
            "0",
        ],
        &["ECHO", "END"],
    ] {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        reqs.extend(resp(&a));
    }
    for resp3 in [false, true] {
        let mut direct = direct_raw(&redis).await;
        let mut via = proxy.raw().await;
        if resp3 {
            hello3(&mut direct).await;
            hello3(&mut via.0).await;
        }
        direct.write_all(&reqs).await.unwrap();
        let want = read_until_suffix(&mut direct, b"$3\r\nEND\r\n").await;
        via.send(&reqs).await;
        let got = read_until_suffix(&mut via.0, b"$3\r\nEND\r\n").await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "resp3: {resp3}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_mixing_shared_pinned_and_local_commands_replies_in_order() {
    let (_redis, proxy) = start().await;
    let mut raw = proxy.raw().await;
    let mut req = Vec::new();
    req.extend(resp(&[b"SET", b"mx:k", b"1"]));
    req.extend(resp(&[b"BLPOP", b"mx:none", b"0.1"]));
    req.extend(resp(&[b"INCR", b"mx:k"]));
    req.extend(resp(&[b"MULTI"]));
    req.extend(resp(&[b"INCR", b"mx:k"]));
    req.extend(resp(&[b"EXEC"]));
    req.extend(resp(&[b"PING"]));
    req.extend(resp(&[b"GET", b"mx:k"]));
    req.extend(resp(&[b"SELECT", b"3"]));
    req.extend(resp(&[b"GET", b"mx:k"]));
    req.extend(resp(&[b"SELECT", b"0"]));
    req.extend(resp(&[b"INCR", b"mx:k"]));
    req.extend(resp(&[b"ECHO", b"done"]));
    raw.send(&req).await;
    raw.expect(
        b"+OK\r\n*-1\r\n:2\r\n+OK\r\n+QUEUED\r\n*1\r\n:3\r\n+PONG\r\n$1\r\n3\r\n\
          +OK\r\n$-1\r\n+OK\r\n:4\r\n$4\r\ndone\r\n",
    )
    .await;
}

// ------------------------------------------------------------------------------------------------
// Proxy bugs found while writing these tests (each test states redis-server's behaviour)
// ------------------------------------------------------------------------------------------------

/// SELECT queued inside MULTI switches the database when EXEC runs it, as in redis-server: the
/// client keeps its pinned connection, so plain commands and later transactions both see db 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_a_transaction_moves_the_client_to_that_database_like_redis() {
    let (redis, proxy) = start().await;
    let mut d0 = direct_db(&redis, 0).await;
    let mut d1 = direct_db(&redis, 1).await;
    let mut seq = Vec::new();
    seq.extend(resp(&[b"MULTI"]));
    seq.extend(resp(&[b"SELECT", b"1"]));
    seq.extend(resp(&[b"EXEC"]));
    seq.extend(resp(&[b"SET", b"txsel:k", b"v"]));
    seq.extend(resp(&[b"GET", b"txsel:k"]));
    seq.extend(resp(&[b"MULTI"]));
    seq.extend(resp(&[b"GET", b"txsel:k"]));
    seq.extend(resp(&[b"EXEC"]));
    seq.extend(resp(&[b"ECHO", b"END"]));

    // What redis-server does with these bytes...
    let mut direct = direct_raw(&redis).await;
    direct.write_all(&seq).await.unwrap();
    let want = read_until_suffix(&mut direct, b"$3\r\nEND\r\n").await;
    assert_eq!(
        String::from_utf8_lossy(&want),
        "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n+OK\r\n$1\r\nv\r\n+OK\r\n+QUEUED\r\n*1\r\n$1\r\nv\r\n$3\r\nEND\r\n"
    );
    assert_eq!(
        q::<Option<String>, _>(&mut d1, &["GET", "txsel:k"]).await,
        Some("v".into())
    );
    assert_eq!(q::<i64, _>(&mut d1, &["DEL", "txsel:k"]).await, 1);

    // ...and what it does with them through cacheside.
    let mut raw = proxy.raw().await;
    raw.send(&seq).await;
    let got = read_until_suffix(&mut raw.0, b"$3\r\nEND\r\n").await;
    let in_db0: Option<String> = q(&mut d0, &["GET", "txsel:k"]).await;
    let in_db1: Option<String> = q(&mut d1, &["GET", "txsel:k"]).await;
    assert_eq!(
        (in_db0, in_db1),
        (None, Some("v".to_string())),
        "after MULTI/SELECT 1/EXEC the SET must land in db 1 (db0, db1)"
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// UNSUBSCRIBE (and PUNSUBSCRIBE/SUNSUBSCRIBE) from a client that is not subscribed gets one
/// reply per channel, as from redis-server, and never an extra frame that a shared connection
/// could hand to the next request queued on it (here another client's GET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_from_several_channels_never_leaks_a_reply_to_another_client() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    // One shared connection, so the three clients' requests queue on it in a known order.
    let proxy = Proxy::start_with(&redis.url(), |c| c.upstream.connections = 1).await;
    let mut d = redis.direct().await;
    q::<String, _>(&mut d, &["SET", "leak:secret", "secret"]).await;
    let mut b = proxy.raw().await;
    let mut a = proxy.raw().await;
    let mut c = proxy.raw().await;

    // B holds the shared connection for a moment so that A's and C's requests queue behind it.
    b.send(&resp(&[b"DEBUG", b"SLEEP", b"0.5"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send(&resp(&[b"UNSUBSCRIBE", b"a", b"b"])).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&resp(&[b"GET", b"leak:secret"])).await;
    b.expect(b"+OK\r\n").await;

    let want_a: &[u8] = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n\
                          *3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n";
    let want_c: &[u8] = b"$6\r\nsecret\r\n";
    let got_c = read_up_to(&mut c.0, want_c.len(), Duration::from_secs(3)).await;
    let got_a = read_up_to(&mut a.0, want_a.len(), Duration::from_secs(3)).await;
    assert_eq!(
        (
            String::from_utf8_lossy(&got_a),
            String::from_utf8_lossy(&got_c)
        ),
        (
            String::from_utf8_lossy(want_a),
            String::from_utf8_lossy(want_c)
        ),
        "(client A's replies, client C's reply)"
    );
}

/// A RESP3 client's UNSUBSCRIBE while not subscribed gets its own push reply; the next reply on
/// the shared connection (another client's GET) still goes to that other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_unsubscribe_without_subscriptions_gets_its_own_reply_not_another_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| c.upstream.connections = 1).await;
    let mut d = redis.direct().await;
    q::<String, _>(&mut d, &["SET", "leak3:secret", "secret"]).await;

    // redis-server's own answer.
    let mut direct = direct_raw(&redis).await;
    hello3(&mut direct).await;
    direct.write_all(&resp(&[b"UNSUBSCRIBE"])).await.unwrap();
    let want_a = read_until_suffix(&mut direct, b":0\r\n").await;
    assert_eq!(want_a, b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");

    let mut a = proxy.raw().await;
    let mut c = proxy.raw().await;
    hello3(&mut a.0).await;
    hello3(&mut c.0).await;
    a.send(&resp(&[b"UNSUBSCRIBE"])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(&resp(&[b"GET", b"leak3:secret"])).await;
    let want_c: &[u8] = b"$6\r\nsecret\r\n";
    let got_a = read_up_to(&mut a.0, want_a.len(), Duration::from_secs(3)).await;
    let got_c = read_up_to(&mut c.0, want_c.len(), Duration::from_secs(3)).await;
    assert_eq!(
        (
            String::from_utf8_lossy(&got_a),
            String::from_utf8_lossy(&got_c)
        ),
        (
            String::from_utf8_lossy(&want_a),
            String::from_utf8_lossy(want_c)
        ),
        "(client A's UNSUBSCRIBE reply, client C's GET reply)"
    );
}

/// QUIT on a subscribed connection answers what was sent before it, then +OK, then closes, as
/// redis-server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_on_a_subscribed_connection_answers_pending_requests_and_ok_before_closing() {
    let (redis, proxy) = start().await;
    let mut seq = resp(&[b"SUBSCRIBE", b"quit:ch"]);
    seq.extend(resp(&[b"PING"]));
    seq.extend(resp(&[b"QUIT"]));

    let mut direct = direct_raw(&redis).await;
    direct.write_all(&seq).await.unwrap();
    let mut want = Vec::new();
    within("direct QUIT", direct.read_to_end(&mut want))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&want),
        "*3\r\n$9\r\nsubscribe\r\n$7\r\nquit:ch\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n+OK\r\n"
    );

    let mut raw = proxy.raw().await;
    raw.send(&seq).await;
    let got = raw.read_to_close().await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// On a RESP3 subscribed connection the SUBSCRIBE confirmation push counts as its reply, so a
/// reply cacheside answers itself (AUTH's +OK) comes before the reply to the PING sent after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_on_a_resp3_subscribed_connection_stay_in_request_order() {
    let (_redis, proxy) = start().await;
    let mut raw = proxy.raw().await;
    hello3(&mut raw.0).await;
    raw.send(&resp(&[b"SUBSCRIBE", b"ord:ch"])).await;
    raw.expect(b">3\r\n$9\r\nsubscribe\r\n$6\r\nord:ch\r\n:1\r\n")
        .await;
    // No requirepass on cacheside: AUTH is accepted locally (+OK).
    raw.send(&[resp(&[b"AUTH", b"pw"]), resp(&[b"PING"])].concat())
        .await;
    let got = read_up_to(&mut raw.0, 12, Duration::from_secs(3)).await;
    assert_eq!(String::from_utf8_lossy(&got), "+OK\r\n+PONG\r\n");
}

/// RESET on a RESP3 subscribed connection answers +RESET and leaves subscribed mode, as
/// redis-server does: the channel has no subscriber left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_a_resp3_subscribed_connection_answers_and_leaves_subscribed_mode() {
    let (_redis, proxy) = start().await;
    let mut publisher = proxy.client().await;
    let mut raw = proxy.raw().await;
    hello3(&mut raw.0).await;
    raw.send(&resp(&[b"SUBSCRIBE", b"rst:ch"])).await;
    raw.expect(b">3\r\n$9\r\nsubscribe\r\n$6\r\nrst:ch\r\n:1\r\n")
        .await;
    raw.send(&resp(&[b"RESET"])).await;
    let got = read_up_to(&mut raw.0, 8, Duration::from_secs(3)).await;
    assert_eq!(String::from_utf8_lossy(&got), "+RESET\r\n");
    assert_eq!(
        q::<i64, _>(&mut publisher, &["PUBLISH", "rst:ch", "x"]).await,
        0
    );
    raw.send(&resp(&[b"PING"])).await;
    raw.expect(b"+PONG\r\n").await;
}
