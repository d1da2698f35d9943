//! String-valued types through cacheside: plain strings, HyperLogLog and bitmaps.

mod support;

use support::commands::{q, start, try_q};

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
