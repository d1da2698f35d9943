//! Collection types through cacheside: hashes, lists, sets, sorted sets and geo indexes.

mod support;

use std::collections::{HashMap, HashSet};
use support::commands::{q, start};

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
